"""Training loop of a stage-1 compressor (CHIME; LEARN reuses it through the registry).

Implements the optimization of paper section 5.1 (Implementations) / spec 3.2:

* users of ``representation.parquet`` split into train / eval users (seeded);
* micro-batches of ``optim.batch_size`` users, ``optim.grad_accum_steps`` of them per
  optimizer step (default 8 x 4);
* AdamW with two parameter groups: ``lr_new`` 7e-4 for new parameters and ``lr_pretrained``
  7e-6 for backbone parameters loaded from a pretrained checkpoint;
* linear warm-up over ``warmup_steps`` (50) optimizer steps, then cosine decay to 0;
* gradient clipping at ``max_grad_norm``;
* every ``eval_every`` optimizer steps (and at the end): eval losses on the eval users
  (no grad) plus per-codebook hit ratio / perplexity of their codes, appended to
  ``<output_dir>/log.csv`` (a train row with the mean training losses since the previous eval,
  then an eval row), and a checkpoint: ``<output_dir>/last`` always, ``<output_dir>/best`` when
  the monitored eval loss improves (``model.monitor``: CHIME's holistic loss);
* diagnostics (:mod:`.diagnostics`): once at the start, the eval holistic loss of the
  non-learned reference scorers (uniform, popularity, co-occurrence, popularity x
  co-occurrence, oracle on a planted log) on the same eval users and batches, written to
  ``<output_dir>/references.json`` and repeated in every eval row (``ref_*`` columns; empty for a
  compressor without the holistic loss); at every eval the collapse of the eval users' user
  states z (``eff_rank``, ``pc1_share``, ``mean_cosine``); a console line puts them side by side;
* ``resume=True`` continues from ``<output_dir>/last``: weights, codebooks, optimizer,
  scheduler, step, position in the epoch and RNG states are restored, so the run ends at the
  same step count as an uninterrupted one.

A non-finite loss stops the run at once with :class:`NonFiniteLossError` naming the step and
the loss term.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ChimeError, ConfigError
from ..io import write_json_atomic, write_text_atomic
from . import diagnostics, distributed
from .checkpoint import data_fingerprint, load_checkpoint, save_checkpoint
from .data import RepresentationData
from .registry import compressor_name_of, get_compressor

logger = logging.getLogger(__name__)

__all__ = ["train", "evaluate", "TrainResult", "NonFiniteLossError", "warmup_cosine",
           "log_columns", "loss_columns", "move_batch", "pinned_cpu_threads", "LAST", "BEST", "LOG_FILE",
           "REFERENCES_FILE"]

LAST, BEST, LOG_FILE = "last", "best", "log.csv"
REFERENCES_FILE = "references.json"
DEFAULT_LOSS_NAMES = ("holistic", "immediate", "commit")


class NonFiniteLossError(ChimeError, FloatingPointError):
    """A loss term or the gradient norm became NaN or infinite during training."""


@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    output_dir: Path
    compressor: str
    step: int
    total_steps: int
    best_step: int | None
    best_metric: float | None
    last_checkpoint: Path
    best_checkpoint: Path | None
    log_path: Path
    final_eval: dict = field(default_factory=dict)
    train_tokens: int = 0
    train_seconds: float = 0.0


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float = math.inf
    best_step: int | None = None
    elapsed: float = 0.0
    tokens: int = 0


# ---------------------------------------------------------------------------- public
@contextlib.contextmanager
def pinned_cpu_threads(threads: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with torch's intra-op thread count at ``threads`` (``optim.cpu_threads``)
    when ``device`` is the CPU, and restore the previous count after it; a no-op for ``None`` or
    an accelerator. A CPU run repeats to the digit only for a fixed thread count, on one kind of CPU."""
    if threads is None or device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(config: Any, *, resume: bool = False, progress: bool = True, max_steps: int | None = None,
          compressor: str | None = None) -> TrainResult:
    """Train the compressor described by ``config`` and return where everything went.

    Args:
        config: a registered compressor config (``CHIMEConfig``); its ``data_dir`` is a prepared
            folder and ``output_dir`` receives ``log.csv``, ``last/`` and ``best/``.
        resume: continue from ``<output_dir>/last`` (ConfigError if there is none).
        progress: show a tqdm bar over optimizer steps.
        max_steps: override ``config.optim.max_steps``.
        compressor: registry name; default: looked up from the config's class.
    """
    name = compressor or compressor_name_of(config)
    spec = get_compressor(name)
    optim = config.optim
    if config.output_dir in (None, ""):
        raise ConfigError("output_dir: not set (where log.csv and the checkpoints go)")
    out = Path(config.output_dir)
    distributed.init_distributed()  # under torchrun: start the process group (no-op otherwise)
    _seed_everything(optim.seed)
    data = RepresentationData(config.data_dir, max_len=optim.max_len)
    train_ids, eval_ids = _split_users(data, optim)
    train_ids_all = train_ids  # popularity counts of the reference scorers: every training user
    train_ids = distributed.shard_users(train_ids)  # this rank's disjoint share (all users in one process)
    fingerprint = data_fingerprint(data.vocab_sizes(), data.dense_widths(), len(data.all_users()))
    device = _device()
    with pinned_cpu_threads(optim.cpu_threads, device):
        model = spec.model_class.from_config(config, data.vocab_sizes(), data.dense_widths()).to(device)
        optimizer = torch.optim.AdamW(model.param_groups(optim))
        batches_per_epoch = math.ceil(len(train_ids) / optim.batch_size)
        total = _total_steps(optim, batches_per_epoch, max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(optim.warmup_steps, total, constant=getattr(optim, "schedule", "") == "constant"))
        state = _State()
        if resume:
            state = _restore(out / LAST, model, optimizer, scheduler, config, name)
            if distributed.is_main_process():
                _truncate_log(out / LOG_FILE, state.step)
        else:
            out.mkdir(parents=True, exist_ok=True)
            if distributed.is_main_process():
                _truncate_log(out / LOG_FILE, -1)
        logger.info("%s: %d train / %d eval users, %d micro-batches per epoch, %d optimizer steps, "
                    "%d parameters, device %s, %d CPU threads, CPU capability %s (a CPU run repeats only for "
                    "a fixed thread count, which optim.cpu_threads pins, on the same CPU capability)",
                    name, len(train_ids), len(eval_ids), batches_per_epoch, total,
                    sum(p.numel() for p in model.parameters()), device, torch.get_num_threads(),
                    torch.backends.cpu.get_cpu_capability())
        ctx = _Run(config, name, model, optimizer, scheduler, data, eval_ids, fingerprint, out, device, state)
        if distributed.is_main_process():
            ctx.references = _references(config, model, data, train_ids_all, eval_ids, out)
        final = ctx.loop(train_ids, total, progress)
        return TrainResult(out, name, state.step, total, state.best_step,
                           None if math.isinf(state.best_metric) else state.best_metric, out / LAST,
                           out / BEST if (out / BEST).exists() else None, out / LOG_FILE, final,
                           state.tokens, state.elapsed)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: RepresentationData, user_ids: Sequence[int], optim: Any,
             device: torch.device | str = "cpu") -> dict:
    """Eval losses (weighted by valid positions) and codebook stats over ``user_ids``.

    Returns ``{<each of model.loss_names>, "loss", "hit_ratio": [...], "perplexity": [...]}``
    (CHIME: holistic, immediate, commit; the two lists are empty for a model without codebooks).
    """
    was_training = model.training
    model.eval()
    columns = loss_columns(model)
    sums = dict.fromkeys(columns, 0.0)
    weight, codes_all = 0.0, []
    for batch in data.batches(user_ids, optim.batch_size, shuffle=False, seed=optim.seed, bucket=True):
        batch = move_batch(batch, device)
        n = float(batch["mask"].sum())
        out = model(batch)
        for key in columns:
            sums[key] += n * _scalar(out[key])
        weight += n
        if getattr(model, "uses_codebooks", False):
            codes = model.encode(batch)  # (B, T, M)
            codes_all.append(codes[batch["mask"].bool()].cpu())  # (N, M)
    model.train(was_training)
    result = {key: value / max(weight, 1.0) for key, value in sums.items()}
    result.update({"hit_ratio": [], "perplexity": []})
    if codes_all:
        codes = torch.cat(codes_all)  # (N, M)
        result.update(model.code_stats(codes, torch.ones(codes.shape[0], dtype=torch.bool)))
    return result


def warmup_cosine(warmup_steps: int, total_steps: int, constant: bool = False):
    """LR multiplier of optimizer step ``step`` (0-based): linear warm-up over ``warmup_steps``,
    then cosine from 1 down to 0 at ``total_steps`` (or flat 1 when ``constant``)."""
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if constant:
            return 1.0
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def loss_columns(model: torch.nn.Module) -> tuple[str, ...]:
    """The model's named loss terms (``model.loss_names``; CHIME's by default) followed by ``loss``."""
    return (*getattr(model, "loss_names", DEFAULT_LOSS_NAMES), "loss")


def log_columns(num_codebooks: int, losses: Sequence[str] = (*DEFAULT_LOSS_NAMES, "loss")) -> list[str]:
    """Header of ``log.csv``: step, split, the loss columns, lr, hit_ratio_1..M, perplexity_1..M, time,
    then the diagnostics of eval rows (empty in train rows): with a holistic loss the reference
    scorers' eval losses ref_uniform, ref_popularity, ref_cooccurrence, ref_popularity_cooccurrence,
    ref_oracle (empty without a planted truth), then eff_rank, pc1_share, mean_cosine of z."""
    extra = [c for c in diagnostics.DIAGNOSTIC_COLUMNS if "holistic" in losses or not c.startswith("ref_")]
    return (["step", "split", *losses, "lr"] + [f"hit_ratio_{m + 1}" for m in range(num_codebooks)]
            + [f"perplexity_{m + 1}" for m in range(num_codebooks)] + ["time", *extra])


def move_batch(batch: Any, device: torch.device | str) -> Any:
    """A batch (nested dicts of tensors) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: move_batch(value, device) for key, value in batch.items()}
    return batch


# ---------------------------------------------------------------------------- the loop
class _Run:
    """One training run: the loop, eval/log/checkpoint bookkeeping."""

    def __init__(self, config, name, model, optimizer, scheduler, data, eval_ids, fingerprint, out, device,
                 state: _State):
        self.config, self.name, self.model = config, name, model
        self.optimizer, self.scheduler, self.data = optimizer, scheduler, data
        self.eval_ids, self.fingerprint, self.out, self.device, self.state = (
            eval_ids, fingerprint, out, device, state)
        self.optim = config.optim
        self.num_codebooks = len(getattr(model, "codebook_sizes", ()))
        self.losses = loss_columns(model)
        self.monitor = getattr(model, "monitor", None) or "loss"
        self.train_sums = dict.fromkeys(self.losses, 0.0)
        self.train_count = 0
        self.train_model = distributed.wrap_ddp(model)  # DDP under torch.distributed, else the model
        self.references: dict = {}  # reference-scorer eval losses (rank 0), set by train()

    def loop(self, train_ids: Sequence[int], total: int, progress: bool) -> dict:
        state, optim = self.state, self.optim
        final: dict = {}
        if state.step == 0:
            final = self._evaluate_and_log(checkpoint=False)
        bar = tqdm(total=total, initial=state.step, disable=not (progress and distributed.is_main_process()),
                   desc=f"{self.name} train", dynamic_ncols=True)
        stream = _micro_batches(self.data, train_ids, optim, state.epoch, state.batch_in_epoch)
        self.model.train()
        started = time.perf_counter() - state.elapsed
        while state.step < total:
            losses = self._optimizer_step(stream)
            state.elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{self._lr():.2e}")
            if state.step % optim.eval_every == 0 or state.step == total:
                final = self._evaluate_and_log(checkpoint=True)
                started = time.perf_counter() - state.elapsed  # eval time is not training time
        bar.close()
        return final

    def _optimizer_step(self, stream: Iterator) -> dict:
        """One optimizer step over ``grad_accum_steps`` micro-batches; returns their mean losses."""
        state, optim, accum = self.state, self.optim, self.optim.grad_accum_steps
        means = dict.fromkeys(self.losses, 0.0)
        tokens = 0
        for i in range(accum):
            epoch, index, batch = next(stream)
            batch = move_batch(batch, self.device)
            with distributed.gradient_sync(self.train_model, i == accum - 1):  # DDP all-reduces on the last
                out = self.train_model(batch)
                _check_finite(out, state.step + 1, epoch, index)
                (out["loss"] / accum).backward()
            for key in self.losses:
                means[key] += _scalar(out[key]) / accum
            state.epoch, state.batch_in_epoch = epoch, index + 1
            tokens += int(batch["mask"].sum())
        means = distributed.all_reduce_mean({**means, "tokens": tokens})  # DDP: global-batch losses
        state.tokens += round(means.pop("tokens") * distributed.get_world_size())
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), optim.max_grad_norm or math.inf)
        if not torch.isfinite(norm):
            raise NonFiniteLossError(f"step {state.step + 1}: gradient norm is {float(norm)} "
                                     "(losses were finite; try a lower lr_new or max_grad_norm)")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        for key in self.losses:
            self.train_sums[key] += means[key]
        self.train_count += 1
        return means

    def _evaluate_and_log(self, checkpoint: bool) -> dict:
        """Under DDP rank 0 evaluates, logs and saves (eval mode never communicates) while the
        others wait; every rank gets the result and the best step."""
        result, (self.state.best_metric, self.state.best_step) = distributed.on_main(
            self._evaluate_log_save, checkpoint)
        return result

    def _evaluate_log_save(self, checkpoint: bool) -> tuple[dict, tuple[float, int | None]]:
        state = self.state
        result = evaluate(self.model, self.data, self.eval_ids, self.optim, self.device)
        collapse = diagnostics.state_diagnostics(self.model, self.data, self.eval_ids,
                                                 batch_size=self.optim.batch_size, seed=self.optim.seed)
        rows = []
        if self.train_count:
            rows.append(self._row("train", {k: v / self.train_count for k, v in self.train_sums.items()}))
            self.train_sums, self.train_count = dict.fromkeys(self.losses, 0.0), 0
        eval_row = self._row("eval", result)
        eval_row.update({f"ref_{name}": value for name, value in self.references.items()}, **collapse)
        rows.append(eval_row)
        _append_log(self.out / LOG_FILE, log_columns(self.num_codebooks, self.losses), rows)
        logger.info("step %d eval: %s", state.step, _describe(result, self.losses))
        logger.info("step %d %s", state.step, diagnostics.format_eval_summary(
            result, self.references, collapse, self.monitor if self.monitor in result else "loss"))
        if checkpoint:
            metric = result[self.monitor]
            improved = metric < state.best_metric
            if improved:
                state.best_metric, state.best_step = metric, state.step
            self._save(LAST)
            if improved:
                self._save(BEST)
        return result, (state.best_metric, state.best_step)

    def _row(self, split: str, values: Mapping[str, Any]) -> dict:
        row = {"step": self.state.step, "split": split, "lr": self._lr(), "time": round(self.state.elapsed, 3)}
        row.update({key: values[key] for key in self.losses})
        for m in range(self.num_codebooks):
            hits, ppl = values.get("hit_ratio") or [], values.get("perplexity") or []
            row[f"hit_ratio_{m + 1}"] = hits[m] if m < len(hits) else ""
            row[f"perplexity_{m + 1}"] = ppl[m] if m < len(ppl) else ""
        return row

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _save(self, which: str) -> None:
        state = self.state
        trainer_state = {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
            "best_metric": state.best_metric, "best_step": state.best_step, "elapsed": state.elapsed,
            "tokens": state.tokens, "rng": _rng_state(),
        }
        save_checkpoint(self.out / which, model=self.model, config=self.config, compressor=self.name,
                        fingerprint=self.fingerprint, trainer_state=trainer_state)


# ---------------------------------------------------------------------------- helpers
def _micro_batches(data: RepresentationData, train_ids: Sequence[int], optim: Any, epoch: int,
                   skip: int) -> Iterator[tuple[int, int, dict]]:
    """Endless (epoch, index, batch) stream; epoch e is shuffled with seed + e; resumes at (epoch, skip)."""
    if len(train_ids) == 0:
        raise ConfigError("optim.eval_users: no training users left after the eval split")
    while True:
        batches = data.batches(train_ids, optim.batch_size, shuffle=True, seed=optim.seed + epoch, bucket=True)
        for index, batch in enumerate(batches):
            if index >= skip:
                yield epoch, index, batch
        epoch, skip = epoch + 1, 0


def _split_users(data: RepresentationData, optim: Any) -> tuple[list[int], list[int]]:
    eval_users = optim.eval_users
    kwargs = {"eval_count": int(eval_users)} if eval_users >= 1 else {"eval_fraction": float(eval_users)}
    train_ids, eval_ids = data.split_users(seed=optim.seed, **kwargs)
    if len(eval_ids) == 0:
        raise ConfigError(f"optim.eval_users={eval_users}: no eval users (need at least one)")
    return list(train_ids), list(eval_ids)


def _total_steps(optim: Any, batches_per_epoch: int, max_steps: int | None) -> int:
    steps = max_steps if max_steps is not None else optim.max_steps
    if steps is None or steps <= 0:
        if not optim.epochs:
            raise ConfigError("optim: set max_steps or epochs (both are empty)")
        steps = math.ceil(optim.epochs * batches_per_epoch / optim.grad_accum_steps)
    return int(steps)


def _check_finite(out: Mapping[str, Any], step: int, epoch: int, index: int) -> None:
    for key in (*[k for k in out if k != "loss"], "loss"):
        value = _scalar(out[key])
        if not math.isfinite(value):
            raise NonFiniteLossError(f"step {step} (epoch {epoch}, micro-batch {index}): {key} loss is "
                                     f"{value}; stopping (check the data for extreme values, lower lr_new, "
                                     "or keep loss.normalize on)")


def _scalar(value: Any) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _restore(path: Path, model, optimizer, scheduler, config, name: str) -> _State:
    """Load ``<output_dir>/last`` into the live objects; returns the saved loop state."""
    if not path.exists() and not path.with_name(f".{path.name}.old").exists():
        raise ConfigError(f"--resume: no checkpoint at {path} (start without --resume)")
    ckpt = load_checkpoint(path)
    if ckpt.compressor != name:
        raise ConfigError(f"--resume: {path} holds a {ckpt.compressor} checkpoint, not {name}")
    if ckpt.trainer_state is None:
        raise ConfigError(f"--resume: {path} has no trainer.pt (optimizer/scheduler state)")
    if ckpt.config.to_dict() != config.to_dict():
        logger.warning("--resume: the config differs from the one saved in %s; using the new one", path)
    model.load_state_dict(ckpt.model_state)
    saved = ckpt.trainer_state
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    _set_rng_state(saved["rng"])
    logger.info("resuming from %s at step %d", path, saved["step"])
    return _State(step=saved["step"], epoch=saved["epoch"], batch_in_epoch=saved["batch_in_epoch"],
                  best_metric=saved["best_metric"], best_step=saved["best_step"],
                  elapsed=saved.get("elapsed", 0.0), tokens=saved.get("tokens", 0))


def _append_log(path: Path, columns: list[str], rows: list[dict]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    if not new:  # resuming a log written with other columns: keep its header
        with open(path, newline="") as handle:
            columns = next(csv.reader(handle), None) or columns
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _references(config: Any, model: torch.nn.Module, data: RepresentationData, train_ids: Sequence[int],
                eval_ids: Sequence[int], out: Path) -> dict[str, float]:
    """Eval holistic loss of the reference scorers (same eval users, batches, weighting as
    :func:`evaluate`), written to ``references.json``; {} for a model without the holistic loss."""
    loss_cfg = getattr(config, "loss", None)
    if "holistic" not in loss_columns(model) or not getattr(loss_cfg, "holistic", False):
        return {}
    optim = config.optim
    refs = diagnostics.run_references(data, train_ids, eval_ids, batch_size=optim.batch_size, seed=optim.seed,
                                      chunk_size=getattr(loss_cfg, "chunk_size", None) or 256)
    write_json_atomic(out / REFERENCES_FILE, {**refs, "metric": "holistic", "tau": loss_cfg.tau_holistic,
                                              "note": "eval holistic loss of non-learned scorers (logit = fitted "
                                                      "scale x log of a smoothed count); see "
                                                      "compressor/diagnostics.py"})
    logger.info("reference eval holistic losses: %s",
                " ".join(f"{name}={value:.4f}" for name, value in refs["losses"].items()))
    return refs["losses"]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows after ``step`` (rows a crashed run wrote after its last checkpoint); -1 = all."""
    if not path.exists():
        return
    if step < 0:
        path.unlink()
        return
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames or [], [row for row in reader if int(row["step"]) <= step]
    lines = [",".join(columns)] + [",".join(_csv_cell(row[c]) for c in columns) for row in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def _csv_cell(value: str) -> str:
    return f'"{value}"' if "," in value else value


def _describe(result: Mapping[str, Any], losses: Sequence[str]) -> str:
    text = " ".join(f"{key}={result[key]:.4f}" for key in losses)
    if result.get("hit_ratio"):
        text += " hit_ratio=" + "/".join(f"{v:.2f}" for v in result["hit_ratio"])
        text += " perplexity=" + "/".join(f"{v:.1f}" for v in result["perplexity"])
    return text
