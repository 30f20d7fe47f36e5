"""Data-parallel compressor training with torch.distributed (issue 6; paper section 5.1 trains on 8 GPUs).

The trainer (:mod:`.train`) calls into this module; nothing here is CHIME-specific except the
loss helpers, which the CHIME model calls. Launch with ``torchrun`` (one process per GPU, or
several CPU processes)::

    torchrun --nproc_per_node 8 -m fuxictr_chime.cli compress train --config DIR --expid ID

What each piece does:

* :func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and starts the default process group:
  ``nccl`` when CUDA is available (each process on GPU ``LOCAL_RANK``), ``gloo`` on CPU. Without
  those variables (a plain ``python`` run) it does nothing and training is single-process.
* :func:`shard_users`: rank r trains on ``users[r::W]`` of the (ascending) training users, after
  dropping the last ``n mod W`` users so that every rank runs the same number of micro-batches
  per epoch. Shards are disjoint and deterministic (the same on every restart).
* :func:`wrap_ddp` wraps the model in ``DistributedDataParallel``: DDP averages the gradients
  over ranks. Buffers are not broadcast: the residual quantizer keeps its codebooks identical
  itself (it all-reduces its EMA statistics and broadcasts k-means init and dead-code
  replacements from rank 0; see :mod:`.quantizer`).
* Loss normalization (:func:`holistic_term`, :func:`immediate_term`, :func:`mean_term`): each
  loss of paper eq. 1 is a mean over pairs or positions of the whole (global) batch. Rank r
  returns ``W * (sum of its own terms) / (global count)``, so that DDP's average over ranks is
  exactly the global mean and its gradient; the mean of the returned values over ranks is the
  global loss (the trainer logs that mean). With equal counts this equals the usual per-rank
  mean.
* Cross-rank negatives (``gather_negatives``): the holistic loss's candidates of an anchor are
  its own future items plus every valid item of the other users *of the global batch*: each
  rank all-gathers the other ranks' valid item vectors p with :func:`all_gather_rows`, whose
  backward sums the gradients of all ranks and hands each rank the part of its own rows, so the
  gradient of every p is that of the global loss. The gathered items enter
  :func:`~.losses.holistic_loss` as extra users whose items are all labelled -1: they are
  candidates of every local anchor, never anchors or positives themselves.

Two-process training with per-rank batch b then equals one-process training on the union
batch of 2b users up to float rounding, provided both start from the same initialized
codebooks and dead-code replacement is off: the k-means initialization and the replacement
vectors are drawn from rank 0's shard, not from the union (tests/compressor/
test_compressor_distributed.py states the tolerances).

Shutdown. :func:`destroy_distributed` (also registered with ``atexit``) must really free the
group, so that gloo's worker threads are joined while the interpreter is alive. PyTorch's
``torch.distributed.nn.functional`` binds ``group.WORLD`` as a default argument of ten
functions when it is first imported; ``DistributedDataParallel`` imports it lazily (through
``torch._dynamo``), i.e. after the group exists. Those defaults keep the ProcessGroup alive
after ``destroy_process_group()``: the ranks then reach interpreter shutdown with gloo's
``pt_gloo_runloop`` threads running, and a worker that drops the last reference to a
collective's Python-owned tensors (``broadcast_object_list`` in :func:`on_main`) after
finalization began must take the GIL, which ends the thread with a forced unwind through a
``noexcept`` destructor: ``terminate called without an active exception``, SIGABRT.
:func:`init_distributed` therefore imports that module *before* it creates the group (its
defaults then bind ``None``); tests/compressor/gloo_exit.py reproduces the abort on demand.

Evaluation, ``log.csv`` and checkpoints happen on rank 0 only (:func:`on_main`), with the model
in eval mode, which never communicates; the other ranks wait. Every rank loads the same
checkpoint on resume.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch
from torch import nn

from ..errors import ConfigError
from .losses import holistic_loss, immediate_loss

logger = logging.getLogger(__name__)

__all__ = ["DistInfo", "launched_distributed", "init_distributed", "destroy_distributed", "is_distributed",
           "get_rank", "get_world_size", "is_main_process", "dist_info", "barrier", "shard_users", "wrap_ddp",
           "unwrap", "gradient_sync", "on_main", "all_reduce_mean", "all_gather_rows", "holistic_pairs",
           "immediate_pairs", "holistic_term", "immediate_term", "mean_term", "global_scale"]

T = TypeVar("T")
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_OWNED = False  # True when init_distributed created the process group (it also destroys it)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank, backend (None = single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ---------------------------------------------------------------------------- process group
def launched_distributed() -> bool:
    """True when torchrun (or an equivalent launcher) set ``WORLD_SIZE`` for this process."""
    return "WORLD_SIZE" in os.environ


def init_distributed(backend: str | None = None, timeout_minutes: float = 60.0) -> DistInfo:
    """Start the default process group from torchrun's environment variables (idempotent).

    Args:
        backend: ``None`` picks ``nccl`` when CUDA is available, else ``gloo``.
        timeout_minutes: collective timeout (default 60: rank 0 evaluates while the others wait).

    Does nothing when the group already exists (e.g. started by the caller) or when the process
    was not started by a launcher. Raises ConfigError naming the variable when the environment
    is incomplete or inconsistent.
    """
    global _OWNED
    if is_distributed() or not launched_distributed():
        return dist_info()
    rank, world, local_rank = (_env_int(name) for name in _ENV)
    if not 0 <= rank < world:
        raise ConfigError(f"environment: RANK={rank} must be in [0, WORLD_SIZE={world})")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ConfigError(f"environment: {name} is not set (launch with torchrun, which sets it)")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    # Import before the group exists: this module binds group.WORLD as default arguments at
    # import time, which would keep the group (and gloo's threads) alive past destroy (see above).
    importlib.import_module("torch.distributed.nn.functional")
    torch.distributed.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(minutes=timeout_minutes))
    _OWNED = True
    atexit.register(destroy_distributed)
    logger.info("torch.distributed: rank %d of %d (local rank %d), backend %s", rank, world, local_rank, backend)
    return dist_info()


def destroy_distributed() -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    global _OWNED
    if _OWNED and is_distributed():
        torch.distributed.destroy_process_group()
    _OWNED = False


def is_distributed() -> bool:
    """True inside an initialized torch.distributed process group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def get_rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def dist_info() -> DistInfo:
    """The current :class:`DistInfo` (rank 0 of 1 outside torch.distributed)."""
    if not is_distributed():
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", torch.distributed.get_rank()))
    return DistInfo(get_rank(), get_world_size(), local, str(torch.distributed.get_backend()))


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def _env_int(name: str) -> int:
    value = os.environ.get(name, "0" if name != "WORLD_SIZE" else "")
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"environment: {name}={value!r} is not an integer") from exc


def _comm_device() -> torch.device:
    """Device of tensors handed to collectives: the current GPU under nccl, else the CPU."""
    if is_distributed() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------------------- data and model
def shard_users(user_ids: Sequence[int], rank: int | None = None, world_size: int | None = None) -> list[int]:
    """This rank's disjoint, deterministic share of ``user_ids``: ``sorted(ids)[:n - n % W][rank::W]``.

    Every shard has the same size, so all ranks run the same number of micro-batches per epoch
    (the last ``n mod W`` users are left out; a warning says how many). Raises ConfigError when
    there are fewer users than ranks.
    """
    rank = get_rank() if rank is None else int(rank)
    world = get_world_size() if world_size is None else int(world_size)
    if not 0 <= rank < world:
        raise ConfigError(f"shard_users: rank {rank} must be in [0, {world})")
    users = sorted(int(u) for u in user_ids)
    if world == 1:
        return users
    if len(users) < world:
        raise ConfigError(f"shard_users: {len(users)} training users (after optim.eval_users) cannot feed "
                          f"{world} ranks (use fewer processes or a larger dataset)")
    usable = len(users) - len(users) % world
    if usable < len(users) and rank == 0:
        logger.warning("shard_users: %d of %d training users left out so that %d ranks get %d users each",
                       len(users) - usable, len(users), world, usable // world)
    return users[:usable][rank::world]


def wrap_ddp(model: nn.Module, **kwargs: Any) -> nn.Module:
    """``DistributedDataParallel(model)`` inside a process group, else ``model`` itself.

    Defaults: buffers are not synchronized at every forward (codebooks are kept identical by
    the quantizer; other buffers are deterministic; DDP still copies rank 0's parameters and
    buffers once at construction) and ``find_unused_parameters=True`` (as Hugging Face's Trainer
    does by default: a config may leave a parameter unused, e.g. the immediate-loss bias when
    ``loss.immediate`` is off; the backbone's gradient checkpointing is non-reentrant, which
    allows it; ``static_graph`` would clash with ``no_sync`` accumulation). On CUDA the module
    sits on the current device.
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    import inspect

    no_buffer_sync = ("forward_sync_buffers" if "forward_sync_buffers" in
                      inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers")
    options: dict[str, Any] = {no_buffer_sync: False, "find_unused_parameters": True}
    options.update(kwargs)
    device = next(model.parameters()).device
    if device.type == "cuda":
        options.setdefault("device_ids", [device.index if device.index is not None else torch.cuda.current_device()])
    return DistributedDataParallel(model, **options)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """``model.no_sync()`` for micro-batches that only accumulate (``sync`` False) under DDP."""
    if not sync and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on rank 0 only and return its (picklable) result on every rank.

    Acts as a barrier. Outside torch.distributed this is just ``fn(*args, **kwargs)``.
    """
    if not is_distributed():
        return fn(*args, **kwargs)
    holder: list[Any] = [None]
    if is_main_process():
        holder[0] = fn(*args, **kwargs)
    torch.distributed.broadcast_object_list(holder, src=0, device=_comm_device())
    return holder[0]


def all_reduce_mean(values: Mapping[str, float]) -> dict[str, float]:
    """Mean over ranks of each value (one all-reduce); the values themselves outside a group."""
    if not is_distributed():
        return dict(values)
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device())  # (K,)
    torch.distributed.all_reduce(t)
    t /= get_world_size()
    return {key: float(v) for key, v in zip(keys, t.tolist())}


# ---------------------------------------------------------------------------- all-gather with gradient
class _AllGather(torch.autograd.Function):
    """All-gather of equal-shaped tensors; backward sums every rank's gradient of each part and
    returns this rank's part (so the gradient is that of the sum of all ranks' losses)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(get_world_size())]
        torch.distributed.all_gather(parts, x)
        return torch.stack(parts)  # (W, *x.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.contiguous()  # (W, *x.shape)
        torch.distributed.all_reduce(grad)
        return grad[get_rank()]


def all_gather_rows(x: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``x`` (n_r, ...) with n_r differing by rank, as a list indexed by rank.

    Rows are padded to the largest n_r for the collective and cut back afterwards. The
    gradient is correct across ranks: the backward of the gather sums the gradients that all
    ranks' losses send to each rank's rows. Every rank must call this (and later run backward)
    the same number of times.
    """
    if not is_distributed():
        return [x]
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(get_world_size())]
    torch.distributed.all_gather(sizes, n)
    sizes_list = [int(s) for s in sizes]
    pad = max(sizes_list) - x.shape[0]
    padded = torch.cat([x, x.new_zeros(pad, *x.shape[1:])]) if pad else x  # (n_max, ...)
    gathered = _AllGather.apply(padded)  # (W, n_max, ...)
    return [gathered[r, :sizes_list[r]] for r in range(len(sizes_list))]


# ---------------------------------------------------------------------------- globally normalized losses
def holistic_pairs(labels: torch.Tensor) -> torch.Tensor:
    """N_h of the holistic loss: number of (anchor, future positive) pairs of a (B, T) label batch."""
    positive = (labels == 1).long()  # (B, T)
    later = positive.flip(1).cumsum(1).flip(1) - positive  # (B, T) positives at s > t
    return (later * (labels != 0).long()).sum()


def immediate_pairs(labels: torch.Tensor) -> torch.Tensor:
    """N_i of the immediate loss: number of (t, t + 1) pairs with both positions valid."""
    return ((labels[:, :-1] != 0) & (labels[:, 1:] != 0)).sum()


def global_scale(local_count: torch.Tensor | int, sync: bool = True) -> torch.Tensor:
    """``W * n_local / n_global`` (1 outside a group or when ``sync`` is False; 0 if n_global = 0).

    Multiplying a rank's local mean by it gives that rank's share of the global mean, times W.
    """
    local = torch.as_tensor(local_count, dtype=torch.float64).reshape(1)  # (1,)
    if not (sync and is_distributed()):
        return torch.ones((), dtype=torch.float64)
    total = local.to(_comm_device(), copy=True)  # (1,) all_reduce works in place
    torch.distributed.all_reduce(total)
    total = float(total.item())
    return torch.tensor(0.0 if total == 0 else get_world_size() * float(local.item()) / total, dtype=torch.float64)


def mean_term(value: torch.Tensor, count: torch.Tensor | int, sync: bool) -> torch.Tensor:
    """A local mean over ``count`` items turned into this rank's W-scaled share of the global mean."""
    if not (sync and is_distributed()):
        return value
    return value * global_scale(count).to(value.dtype).to(value.device)


def holistic_term(z: torch.Tensor, p: torch.Tensor, labels: torch.Tensor, *, tau: float = 0.2,
                  chunk_size: int | None = None, sync: bool = False,
                  gather_negatives: bool = False) -> torch.Tensor:
    """Holistic loss (paper eq. 1 a) of this rank's anchors, normalized over the global batch.

    Outside a process group or with ``sync`` False (evaluation) this is
    ``holistic_loss(z, p, labels, tau, chunk_size)``. Otherwise every local anchor also gets
    the other ranks' valid items as candidates when ``gather_negatives`` is set, and the result
    is scaled by :func:`global_scale` of the local pair count (see the module docstring).
    z, p (B, T, D); labels (B, T) in {+1, -1, 0}.
    """
    if not (sync and is_distributed()):
        return holistic_loss(z, p, labels, tau=tau, chunk_size=chunk_size)
    if gather_negatives:
        z, p, labels = _with_remote_candidates(z, p, labels)
    local = holistic_loss(z, p, labels, tau=tau, chunk_size=chunk_size)
    return local * global_scale(holistic_pairs(labels)).to(local.dtype).to(local.device)


def immediate_term(z: torch.Tensor, p: torch.Tensor, labels: torch.Tensor, *, tau: float = 0.07,
                   bias: float | torch.Tensor = 0.0, sync: bool = False) -> torch.Tensor:
    """Immediate loss (paper eq. 1 b) normalized over the global batch (see :func:`holistic_term`)."""
    local = immediate_loss(z, p, labels, tau=tau, bias=bias)
    return mean_term(local, immediate_pairs(labels), sync)


def _with_remote_candidates(z: torch.Tensor, p: torch.Tensor, labels: torch.Tensor):
    """Append the other ranks' valid items as extra users labelled -1 (candidates only).

    Remote items are laid out in rows of width T (right-padded with label 0); their z rows are
    zeros (they are never anchors: no positive follows them). Returns (z, p, labels) with
    B + ceil(n_remote / T) rows.
    """
    B, T, D = p.shape
    valid = labels != 0  # (B, T)
    mine = p[valid]  # (n_local, D)
    parts = all_gather_rows(mine)
    remote = torch.cat([part for r, part in enumerate(parts) if r != get_rank()])  # (n_remote, D)
    n_remote = remote.shape[0]
    if n_remote == 0:
        return z, p, labels
    rows = -(-n_remote // T)
    pad = rows * T - n_remote
    p_extra = torch.cat([remote, remote.new_zeros(pad, D)]).reshape(rows, T, D)  # (R, T, D)
    l_extra = torch.cat([torch.full((n_remote,), -1, dtype=labels.dtype, device=labels.device),
                         torch.zeros(pad, dtype=labels.dtype, device=labels.device)]).reshape(rows, T)  # (R, T)
    z_extra = z.new_zeros(rows, T, D)  # (R, T, D)
    return torch.cat([z, z_extra]), torch.cat([p, p_extra.to(p.dtype)]), torch.cat([labels, l_extra])

