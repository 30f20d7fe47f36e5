"""Export with Ray Data (issue 6): paper section 4.4 "Inference Stage" over many workers.

The single-process exporter (:func:`.export.export`) reads every user into one process. Here
Ray Data reads ``representation.parquet`` in blocks of ``rows_per_task`` users and hands them to
a pool of ``num_workers`` actors (:class:`UserEncoder`, a ``map_batches`` callable class). Each
actor loads the checkpoint and ``item_info.parquet`` once, then for every block of users runs
the model exactly as the single-process exporter does (eval mode, no gradient, micro-batches of
``batch_size`` users grouped by length) and returns one row per user with history:
``user_index``, the feature vector, and the user's raw code counts (for the paper Table 5
diagnostics, summed on the driver). The driver streams those rows into the (U+1, d) matrix and
writes it through the single-process writers: :func:`.export.write_user_column` (atomic; zeros
for users without history and for row 0), :func:`.export.update_dataset_config` (same feature
spec), optional ``<column>.h5`` and ``<column>_codebooks.json``. The result equals the
single-process export (tests/compressor/test_compressor_ray_export.py).

Ray runs locally by default (``ray.init(num_cpus=num_workers * cpus_per_worker + 1)``: one
spare CPU for Ray Data's read tasks, without which the actor pool can starve them); ``address``
joins an existing cluster (``"auto"`` or ``"ray://host:10001"``), whose nodes must have this
package installed and see ``checkpoint_dir`` and ``data_dir`` at the same paths (shared
storage). An already initialized Ray is reused and left running.

Defaults: ``num_workers=2``, ``cpus_per_worker=1``, ``gpus_per_worker=0`` (set 1 to give each
actor a GPU), ``batch_size`` = the training micro-batch size, ``rows_per_task`` = 50 micro-batches
(fewer when needed for at least 4 blocks per worker, see :func:`default_rows_per_task`).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from ..errors import ChimeError, ConfigError, DataError
from ..io import write_json_atomic
from .checkpoint import check_fingerprint, data_fingerprint, load_checkpoint
from .data import (ITEM_INFO, REPRESENTATION, REPRESENTATION_COLUMNS, RepresentationData, _check_leakage,
                   _check_sequences, flatten_representation)
from .export import (DATASET_CONFIG, USER_INFO, _rebuild, _write_h5, feature_spec, format_codebook_table,
                     update_dataset_config, write_user_column)
from .quantizer import code_histogram
from .registry import get_compressor
from .train import move_batch

logger = logging.getLogger(__name__)

__all__ = ["export_ray", "UserEncoder", "RepresentationShard", "encode_shard", "ray_session",
           "stats_from_counts", "default_rows_per_task", "flatten_representation", "REPRESENTATION_COLUMNS"]

ROWS_PER_TASK_BATCHES = 50  # default block = 50 micro-batches (the length-bucketing window of data.batches)


# ---------------------------------------------------------------------------- public entry
def export_ray(checkpoint_dir: str | os.PathLike, data_dir: str | os.PathLike, *, column: str | None = None,
               normalize: bool = True, h5: bool = False, batch_size: int | None = None, num_workers: int = 2,
               address: str | None = None, rows_per_task: int | None = None, cpus_per_worker: float = 1.0,
               gpus_per_worker: float = 0.0, progress: bool = True) -> dict:
    """Write the compressor's user vectors into ``data_dir`` with a Ray Data actor pool.

    Same files, column, feature spec and statistics as :func:`.export.export`, plus
    ``engine="ray"`` and ``num_workers`` in the returned stats. Raises ConfigError for a bad
    checkpoint, a dataset that does not match its fingerprint or bad worker settings, and
    DataError (re-raised from the worker) for malformed or leaking representation rows.
    """
    started = time.perf_counter()
    _check_settings(num_workers, cpus_per_worker, gpus_per_worker, rows_per_task, batch_size)
    ckpt = load_checkpoint(checkpoint_dir, trainer=False)
    spec, compressor = get_compressor(ckpt.compressor), ckpt.compressor
    column, data_dir = column or spec.column, Path(data_dir)
    config = ckpt.config
    items = RepresentationShard(data_dir, max_len=config.optim.max_len)
    users = items.all_users()
    _check_dataset(ckpt, items, len(users), data_dir)
    model = _rebuild(spec, config, ckpt, items)  # fail fast on the driver; kept for width/codebook sizes
    width, sizes = int(model.feature_dim), tuple(getattr(model, "codebook_sizes", ()))
    del model, ckpt
    batch_size = int(batch_size or config.optim.batch_size)
    n_rows = _num_rows(data_dir / REPRESENTATION)
    rows_per_task = int(rows_per_task or default_rows_per_task(n_rows, num_workers, batch_size))
    encoder_args = {"checkpoint_dir": str(Path(checkpoint_dir).resolve()), "data_dir": str(data_dir.resolve()),
                    "normalize": normalize, "batch_size": batch_size}
    with ray_session(num_workers, cpus_per_worker, address):
        dataset = _pipeline(data_dir, encoder_args, num_workers, rows_per_task, cpus_per_worker, gpus_per_worker,
                            progress)
        features, counts, n_history, positions, timing = _collect(dataset, max(users, default=0) + 1, width,
                                                                  sizes, n_rows, progress)
    files = {"user_info": str(write_user_column(data_dir / USER_INFO, column, features))}
    if h5:
        files["h5"] = str(_write_h5(data_dir / f"{column}.h5", column, features))
    cfg_path = update_dataset_config(data_dir / DATASET_CONFIG, feature_spec(column, width))
    if cfg_path is not None:
        files["dataset_config"] = str(cfg_path)
    stats: dict[str, Any] = {"compressor": compressor, "column": column, "width": width, "users": len(users),
                             "users_with_history": n_history, "positions": positions if sizes else None}
    if sizes and positions:
        stats["codebook_sizes"] = list(sizes)
        stats.update(stats_from_counts(counts, sizes))
        path = data_dir / f"{column}_codebooks.json"
        write_json_atomic(path, {k: stats[k] for k in ("column", "codebook_sizes", "hit_ratio", "perplexity",
                                                         "users_with_history", "positions")})
        files["codebooks"] = str(path)
    seconds = time.perf_counter() - started
    stats.update(files=files, seconds=seconds, users_per_second=len(users) / max(seconds, 1e-9),
                 checkpoint=str(checkpoint_dir), normalize=normalize, engine="ray", num_workers=num_workers,
                 rows_per_task=rows_per_task, **timing)
    logger.info("exported %s (%d floats) for %d users into %s with %d Ray workers\n%s", column, width, len(users),
                data_dir, num_workers, format_codebook_table(stats))
    return stats


@contextlib.contextmanager
def ray_session(num_workers: int, cpus_per_worker: float = 1.0, address: str | None = None) -> Iterator[None]:
    """A Ray runtime for the export: reuse a running one, join ``address``, or start a local one
    with ``num_workers * cpus_per_worker + 1`` CPUs (shut down afterwards)."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=math.ceil(num_workers * cpus_per_worker) + 1, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------- worker side
class RepresentationShard(RepresentationData):
    """:class:`.data.RepresentationData` over a shard of representation rows.

    Construction reads ``item_info.parquet`` only; :meth:`load` then takes one shard of users
    (flat arrays as in representation.parquet) with the same checks as the single-process reader
    (labels, item range, time order, leakage rule with t1 from ``summary.json``) and the same
    ``max_len`` truncation, so :meth:`batches` yields exactly the batches the single-process
    reader builds for those users.
    """

    def __init__(self, data_dir: str | os.PathLike, max_len: int = 1000, t1_check: bool = True) -> None:
        # RepresentationData.__init__ would read the whole representation.parquet: not called on purpose
        if max_len <= 0:
            raise DataError(f"RepresentationShard: max_len must be positive, got {max_len}")
        self.data_dir, self.max_len, self.t1_check = Path(data_dir), int(max_len), t1_check
        self._read_item_info(self.data_dir / ITEM_INFO)
        self._all_users = None
        empty = np.zeros(0, dtype=np.int64)
        self.load(empty, empty, empty, empty, np.zeros(1, dtype=np.int64))

    def load(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray, times: np.ndarray,
             offsets: np.ndarray) -> "RepresentationShard":
        """Replace the held users by this shard: users (U,), items/labels/times (N,), offsets (U+1,)."""
        path = self.data_dir / REPRESENTATION
        _check_sequences(path, users, items, labels, times, offsets, self.num_items)
        if self.t1_check and len(users):
            _check_leakage(self.data_dir, users, times, offsets)
        self._store(users, items, labels, offsets)
        return self

    def load_table(self, table: pa.Table) -> "RepresentationShard":
        """:meth:`load` from a pyarrow table with the representation.parquet columns."""
        return self.load(*flatten_representation(table, self.data_dir / REPRESENTATION))


class UserEncoder:
    """Ray Data ``map_batches`` callable class: the trained compressor on one worker.

    Loads the checkpoint and item_info once (constructor); each call encodes one block of
    representation rows (a pyarrow table) and returns ``{"user_index": (n,), "feature": (n, d),
    "positions": (n,), "encode_seconds": (n,)}`` plus ``"code_counts": (n, sum K)`` for a model
    with codebooks, for its n users with history (``encode_seconds``: the block's time spent in
    this call, spread over its users, so that the driver can sum the workers' busy time).
    """

    def __init__(self, checkpoint_dir: str, data_dir: str, normalize: bool = True, batch_size: int = 8) -> None:
        ckpt = load_checkpoint(checkpoint_dir, trainer=False)
        self.shard = RepresentationShard(data_dir, max_len=ckpt.config.optim.max_len)
        self.model = _rebuild(get_compressor(ckpt.compressor), ckpt.config, ckpt, self.shard)
        self.normalize, self.batch_size = normalize, int(batch_size)

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        out = encode_shard(self.model, self.shard.load_table(table), normalize=self.normalize,
                           batch_size=self.batch_size)
        n = len(out["user_index"])
        out["encode_seconds"] = np.full(n, (time.perf_counter() - started) / max(n, 1))  # block time, per user
        return out


@torch.no_grad()
def encode_shard(model: torch.nn.Module, data: RepresentationData, *, normalize: bool = True,
                 batch_size: int = 8) -> dict[str, np.ndarray]:
    """Features of every user with history in ``data``, in the single-process exporter's batches.

    Mirrors :func:`.export.compute_user_features` (eval mode, ``user_features`` then ``encode``
    per micro-batch of length-bucketed users) and adds each user's raw code counts per codebook.
    """
    model.eval()
    device = next(model.parameters()).device
    sizes = tuple(getattr(model, "codebook_sizes", ()))
    uses_codes = bool(getattr(model, "uses_codebooks", False))
    users, feats, counts, positions = [], [], [], []
    for batch in data.batches(data.users_with_history(), batch_size, shuffle=False, seed=0, bucket=True):
        batch = move_batch(batch, device)
        users.append(batch["user_index"].cpu().numpy())
        feats.append(model.user_features(batch, normalize=normalize).float().cpu().numpy())  # (B, d)
        mask = batch["mask"].bool()  # (B, T)
        positions.append(mask.sum(1).cpu().numpy())
        if uses_codes:
            codes = model.encode(batch)  # (B, T, M)
            counts.append(code_histogram(codes, sizes, mask, normalize=False).cpu().numpy())  # (B, sum K)
    out = {"user_index": _cat(users, (0,), np.int64), "feature": _cat(feats, (0, int(model.feature_dim)), np.float32),
           "positions": _cat(positions, (0,), np.int64)}
    if uses_codes:
        out["code_counts"] = _cat(counts, (0, sum(sizes)), np.float32)  # counts <= max_len: exact in float32
    return out


# ---------------------------------------------------------------------------- driver side
def stats_from_counts(counts: np.ndarray, codebook_sizes: tuple[int, ...]) -> dict[str, list[float]]:
    """Per-codebook hit ratio and perplexity 2^H (paper Table 5) from summed code counts (sum K,).

    Same arithmetic as :func:`.quantizer.code_stats` on the codes themselves (float64; hit ratio
    0 and perplexity nan for a codebook without data).
    """
    hits, ppls = [], []
    start = 0
    for k_m in codebook_sizes:
        block = torch.as_tensor(np.asarray(counts[start:start + k_m]), dtype=torch.float64)  # (K,)
        start += k_m
        n = block.sum()
        if n == 0:
            hits.append(0.0)
            ppls.append(float("nan"))
            continue
        prob = block[block > 0] / n
        entropy_bits = -(prob * prob.log2()).sum()
        hits.append(float((block > 0).double().mean()))
        ppls.append(float(2.0 ** entropy_bits))
    return {"hit_ratio": hits, "perplexity": ppls}


def default_rows_per_task(n_rows: int, num_workers: int, batch_size: int) -> int:
    """Users per Ray block: 50 micro-batches (the single-process bucketing window), but small
    enough that every worker gets at least 4 blocks, and at least one micro-batch."""
    spread = math.ceil(max(n_rows, 1) / (4 * max(num_workers, 1)))
    return max(batch_size, min(ROWS_PER_TASK_BATCHES * batch_size, spread))


def _pipeline(data_dir: Path, encoder_args: dict, num_workers: int, rows_per_task: int, cpus_per_worker: float,
              gpus_per_worker: float, progress: bool):
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.raise_original_map_exception = True  # a worker's DataError reaches the driver as one
    dataset = ray.data.read_parquet(str((data_dir / REPRESENTATION).resolve()), columns=list(REPRESENTATION_COLUMNS))
    # split big read blocks (one file = one block) so that every actor gets work; streaming, no shuffle
    dataset = dataset.repartition(target_num_rows_per_block=rows_per_task)
    return dataset.map_batches(UserEncoder, fn_constructor_kwargs=encoder_args, batch_size=rows_per_task,
                               batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=num_workers),
                               num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None)


def _collect(dataset, rows: int, width: int, sizes: tuple[int, ...], total: int, progress: bool):
    """Stream the workers' rows into the (rows, width) matrix; sum code counts and positions.

    Also returns ``{"worker_encode_seconds": ...}``: the summed time the workers spent encoding
    (reading, checks, model), without start-up and model loading.
    """
    features = np.zeros((rows, width), dtype=np.float32)
    counts = np.zeros(sum(sizes), dtype=np.float64)
    n_history = positions = 0
    busy = 0.0
    bar = tqdm(total=total, disable=not progress, desc="export (ray)", dynamic_ncols=True)
    try:
        for out in dataset.iter_batches(batch_format="numpy", batch_size=None):
            users = np.asarray(out["user_index"], dtype=np.int64)
            if users.size == 0:
                continue
            busy += float(np.asarray(out["encode_seconds"]).sum())
            features[users] = np.asarray(out["feature"], dtype=np.float32).reshape(len(users), width)  # (n, d)
            if sizes:
                counts += np.asarray(out["code_counts"], dtype=np.float64).reshape(len(users), -1).sum(0)
            n_history += int(users.size)
            positions += int(np.asarray(out["positions"]).sum())
            bar.update(int(users.size))
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors; surface ours as they are
        cause = _chime_cause(exc)
        if cause is not None:
            raise type(cause)(str(cause)) from exc
        raise
    finally:
        bar.close()
    return features, counts, n_history, positions, {"worker_encode_seconds": busy}


def _chime_cause(exc: BaseException | None) -> ChimeError | None:
    """The worker's ChimeError inside a Ray error, if any: with ``raise_original_map_exception``
    Ray raises ``RayTaskError(<class>)`` whose ``cause`` is the worker's exception."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None)
        if isinstance(inner, BaseException):
            exc = inner
            continue
        if isinstance(exc, ChimeError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _check_dataset(ckpt, items: RepresentationData, n_users: int, data_dir: Path) -> None:
    if not (data_dir / REPRESENTATION).is_file():
        raise DataError(f"{data_dir / REPRESENTATION}: missing (the compressor needs a prepared dataset folder)")
    expected = ckpt.versions.get("data_fingerprint")
    if expected:
        actual = data_fingerprint(items.vocab_sizes(), items.dense_widths(), n_users)
        check_fingerprint(expected, actual, checkpoint=ckpt.path, data_dir=data_dir)
    else:
        logger.warning("%s has no data fingerprint in versions.json; not checking the dataset", ckpt.path)


def _check_settings(num_workers, cpus_per_worker, gpus_per_worker, rows_per_task, batch_size) -> None:
    if int(num_workers) < 1:
        raise ConfigError(f"--num-workers must be >= 1, got {num_workers}")
    if not float(cpus_per_worker) > 0 or float(gpus_per_worker) < 0:
        raise ConfigError(f"cpus_per_worker must be > 0 and gpus_per_worker >= 0, got {cpus_per_worker}, "
                          f"{gpus_per_worker}")
    for name, value in (("rows_per_task", rows_per_task), ("--batch-size", batch_size)):
        if value is not None and int(value) < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")


def _num_rows(path: Path) -> int:
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc


def _cat(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(empty_shape, dtype=dtype)
