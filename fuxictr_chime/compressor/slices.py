"""Time-sliced CHIME histogram snapshots without leakage (issue 7; paper section 5.1 remark).

The paper's compressor only sees logs before t1, so ranking samples late in the train and test
windows use a stale summary; section 5.1 notes that "splitting more time slices and updating the
compression model more frequently" should do better. This module does exactly that:

1. **Cuts** c_1 < c_2 < ... < c_N with c_1 = t1 (``summary.json``): ``--slices N`` spreads them
   evenly in time over [t1, max sample time) (``spacing="time"``, default:
   c_k = t1 + floor((k-1) (t_max - t1) / N)), or at sample-count quantiles (``spacing="quantile"``:
   c_k = the floor((k-1) S / N)-th of the S sorted ranking-sample times, a real sample time, so
   each slice serves about S/N samples), or explicitly (``--cuts t1,c2,...``; c_1 must equal t1).
2. **Compressor input per cut**: each user's logs strictly before c_k, both labels (+1/-1):
   ``representation.parquet`` (< t1) plus the user's ranking samples (train/valid/test:
   ``label`` 1/0 -> +1/-1) with ``timestamp < c_k``. Built vectorized: all logs sorted once by
   (user, time), then one ``np.searchsorted`` per cut gives every user's prefix length.
3. **Snapshots**: the trained compressor (trained only on logs before t1) runs on each cut's
   sequences through the exporter's own path (:func:`.export.compute_user_features` on a
   :class:`.data.RepresentationData` over a temporary folder view whose ``summary.json`` says
   t1 = c_k, so the data reader's leakage guard enforces "strictly before c_k"). Cut 1 *is*
   the plain single-snapshot export (:func:`.export.export`, unchanged); at later cuts only users
   with new behaviors since the previous cut are re-encoded (the others' sequences, hence
   snapshots, are identical).
4. **Storage**: ``user_info.parquet`` column ``<column>_slices`` (list<float32> of N*d per user,
   snapshot-major: ``[k*d:(k+1)*d]`` = cut k), the plain ``<column>`` (= the cut-1 snapshot) kept,
   and the feature spec in ``dataset_config.yaml`` gains ``slice_column`` and ``slice_cuts``;
   provenance (cuts, spacing, users re-encoded, samples per slice, refit checkpoints) goes to
   ``<column>_slices.json``. All writes atomic. With N = 1 exactly the plain export is written
   (and stale slice state of an earlier run is removed first).
5. **Loading**: :class:`fuxictr_chime.data.loader.LongSeqDataLoader` gives a sample at time t the
   snapshot of the latest cut c_k <= t (``searchsorted`` + fancy indexing into (U+1, N, d)).
   That snapshot holds only behaviors strictly before c_k <= t: never the sample's own time or
   later. c_k == t is safe: behaviors at time t itself (including the sample) are excluded from
   that snapshot. (The issue text says "latest cut strictly before t"; "<= t" is equally safe
   and one slice fresher.)

``refit_every=K`` (optional): at every K-th cut (k = K+1, 2K+1, ... in 1-based numbering) the
compressor is retrained from scratch with the checkpoint's config (:func:`.train.train`) on all
logs before that cut (the folder view as representation set, t1 = c_k), and that cut and the
following ones are exported with the refit model. Its training data are strictly before c_k,
and its snapshots only serve samples at t >= c_k, so refitting cannot leak either. (A refit
checkpoint's ``config.yaml`` names the temporary view as ``data_dir``; the view is deleted
after its cut is exported.)

Defaults: ``spacing="time"``, ``normalize=True`` (frequencies), ``refit_every=None``, refit runs
in ``<checkpoint>/../slices_refit/cut<k>`` with the checkpoint's ``optim.max_steps``. ``h5=True``
writes only the plain (cut-1) column to ``<column>.h5``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError, LeakageError
from ..io import write_json_atomic

logger = logging.getLogger(__name__)

__all__ = ["even_cuts", "quantile_cuts", "parse_cuts", "validate_cuts", "make_cuts", "read_t1",
           "read_sample_times", "UserLogs", "read_user_logs", "representation_table",
           "export_time_slices", "register_export_options", "export_slices", "SPLITS",
           "SPACINGS", "slices_column"]

SPLITS = ("train", "valid", "test")
SPACINGS = ("time", "quantile")
REPRESENTATION, SUMMARY, USER_INFO, DATASET_CONFIG = (
    "representation.parquet", "summary.json", "user_info.parquet", "dataset_config.yaml")
SLICE_KEYS = ("slice_column", "slice_cuts")


def slices_column(column: str) -> str:
    """Name of the user_info column holding the stacked snapshots of ``column``."""
    return f"{column}_slices"


# ---------------------------------------------------------------------------- cuts
def read_t1(data_dir: str | os.PathLike) -> int:
    """t1 of a prepared folder (``summary.json``)."""
    path = Path(data_dir) / SUMMARY
    if not path.is_file():
        raise DataError(f"{path}: missing (time slices need t1 from the prepared folder's summary)")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    t1 = summary.get("t1") if isinstance(summary, dict) else None
    if isinstance(t1, bool) or not isinstance(t1, (int, float)) or int(t1) != t1:
        raise DataError(f"{path}: key 't1' must be an integer timestamp, got {t1!r}")
    return int(t1)


def read_sample_times(data_dir: str | os.PathLike) -> np.ndarray:
    """``timestamp`` of every ranking sample (train, valid, test that exist), int64 (S,)."""
    return np.concatenate([_read_split(path, ["timestamp"])["timestamp"]
                           for path in _split_paths(Path(data_dir))])


def even_cuts(t1: int, t_max: int, n: int) -> np.ndarray:
    """N cuts evenly spread in time over [t1, t_max): c_k = t1 + floor((k-1)(t_max - t1)/N)."""
    _check_count(n)
    if n > 1 and t_max <= t1:
        raise ConfigError(f"--slices {n}: no sample after t1 = {t1} (latest sample time {t_max})")
    cuts = np.array([t1 + (k * (int(t_max) - t1)) // n for k in range(n)], dtype=np.int64)  # (N,)
    return _distinct(cuts, f"--slices {n} over [{t1}, {t_max})")


def quantile_cuts(t1: int, times: np.ndarray, n: int) -> np.ndarray:
    """c_1 = t1, c_k = the (k-1)/N quantile of the sample times (k >= 2): element
    floor((k-1) S / N) of the S sorted times, so without ties each slice serves S/N samples."""
    _check_count(n)
    if n > 1 and not len(times):
        raise ConfigError(f"--slices {n}: the prepared folder has no ranking samples")
    ordered = np.sort(np.asarray(times, dtype=np.int64))  # (S,)
    rest = ordered[(np.arange(1, n) * len(ordered)) // n]  # (N-1,) the ((k-1) S / N)-th time
    cuts = np.concatenate([[t1], rest]).astype(np.int64)  # (N,)
    return _distinct(cuts, f"--slices {n} at sample-time quantiles")


def parse_cuts(text: str) -> list[int]:
    """``"t1,c2,c3"`` -> [t1, c2, c3] (integers; spaces allowed)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"--cuts: no cut times in {text!r} (expected t1,c2,...)")
    try:
        return [int(p) for p in parts]
    except ValueError as exc:
        raise ConfigError(f"--cuts: {text!r} must be comma-separated integer timestamps") from exc


def validate_cuts(cuts: Sequence[int], t1: int, *, latest: int | None = None) -> np.ndarray:
    """Explicit cuts as int64 (N,): c_1 must equal t1 and the cuts must strictly increase.

    A cut after ``latest`` (the latest sample time) serves no sample: logged as a warning.
    """
    cuts = np.asarray(list(cuts), dtype=np.int64)  # (N,)
    if not len(cuts):
        raise ConfigError("cuts: empty (need at least c_1 = t1)")
    if cuts[0] != t1:
        raise ConfigError(f"cuts: c_1 = {int(cuts[0])} must equal t1 = {t1} (the compressor is "
                          f"trained on logs before t1; samples start at t1)")
    bad = np.flatnonzero(np.diff(cuts) <= 0)
    if len(bad):
        i = int(bad[0])
        raise ConfigError(f"cuts: must be strictly increasing; c_{i + 1} = {int(cuts[i])} >= "
                          f"c_{i + 2} = {int(cuts[i + 1])}")
    if latest is not None and cuts[-1] > latest:
        logger.warning("cuts after the latest sample time %d serve no sample: %s", latest,
                       cuts[cuts > latest].tolist())
    return cuts


def make_cuts(data_dir: str | os.PathLike, *, slices: int | None = None,
              cuts: Sequence[int] | str | None = None, spacing: str = "time") -> np.ndarray:
    """The cut times of a prepared folder: ``slices`` N (spread by ``spacing``) or explicit ``cuts``."""
    if (slices is None) == (cuts is None):
        raise ConfigError("time slices: give either --slices N or --cuts t1,c2,... (exactly one)")
    if spacing not in SPACINGS:
        raise ConfigError(f"--slice-spacing {spacing!r}: one of {', '.join(SPACINGS)}")
    t1 = read_t1(data_dir)
    times = read_sample_times(data_dir)
    latest = int(times.max()) if len(times) else t1
    if cuts is not None:
        return validate_cuts(parse_cuts(cuts) if isinstance(cuts, str) else cuts, t1, latest=latest)
    if spacing == "quantile":
        return quantile_cuts(t1, times, int(slices))
    return even_cuts(t1, latest, int(slices))


def _check_count(n: int) -> None:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ConfigError(f"--slices: must be an integer >= 1, got {n!r}")


def _distinct(cuts: np.ndarray, what: str) -> np.ndarray:
    if np.any(np.diff(cuts) <= 0):
        raise ConfigError(f"{what}: cuts {cuts.tolist()} are not strictly increasing (too few "
                          f"distinct times for this many slices); use fewer slices or --cuts")
    return cuts


# ---------------------------------------------------------------------------- per-user logs
@dataclass
class UserLogs:
    """Every user's whole log (representation + ranking samples), sorted by (user, time).

    CSR over user_index: user u's logs are ``item[offsets[u]:offsets[u+1]]`` (same for ``label``
    +1/-1 and ``time``), in time order; ties keep representation.parquet's order, then samples
    by item. ``keys`` (user * (R+1) + rank of time among the R distinct times) is sorted and lets
    :meth:`lengths_before` find every user's prefix before a cut with one searchsorted.
    """

    item: np.ndarray      # (E,) int64
    label: np.ndarray     # (E,) int8, +1 / -1
    time: np.ndarray      # (E,) int64
    offsets: np.ndarray   # (U+2,) int64: rows 0..U of user_info (row 0 = padding, empty)
    distinct_times: np.ndarray  # (R,) int64, sorted
    keys: np.ndarray      # (E,) int64, sorted

    @property
    def num_users(self) -> int:
        """Rows of user_info (U+1, row 0 = padding)."""
        return len(self.offsets) - 1

    def lengths_before(self, cut: int) -> np.ndarray:
        """Per user, how many logs are strictly before ``cut``: (U+1,) int64."""
        rank = np.searchsorted(self.distinct_times, cut, side="left")  # distinct times < cut
        users = np.arange(self.num_users, dtype=np.int64)  # (U+1,)
        ends = np.searchsorted(self.keys, users * (len(self.distinct_times) + 1) + rank)  # (U+1,)
        return ends - self.offsets[:-1]


def read_user_logs(data_dir: str | os.PathLike, *, t1: int | None = None,
                   label_column: str = "label") -> UserLogs:
    """Read representation.parquet and every split into a :class:`UserLogs` (vectorized).

    Checks: representation times < t1 (LeakageError), sample labels in {0, 1}, user indices
    inside user_info (DataError naming the file and column).
    """
    data_dir = Path(data_dir)
    t1 = read_t1(data_dir) if t1 is None else t1
    n_rows = _user_rows(data_dir / USER_INFO)
    rep = _read_representation(data_dir / REPRESENTATION, t1)
    parts = [rep] + [_read_samples(path, label_column) for path in _split_paths(data_dir)]
    user, item, label, tim = (np.concatenate([p[k] for p in parts])
                              for k in ("user", "item", "label", "time"))
    for part, path in zip(parts, [data_dir / REPRESENTATION, *_split_paths(data_dir)]):
        bad = (part["user"] < 1) | (part["user"] >= n_rows)
        if bad.any():
            raise DataError(f"{path}: user_index {int(part['user'][bad][0])} outside user_info "
                            f"(rows 1..{n_rows - 1} of {data_dir / USER_INFO})")
    n_rep = len(rep["user"])
    tiebreak = np.concatenate([np.arange(n_rep), n_rep + item[n_rep:]])  # rep: file order
    order = np.lexsort((tiebreak, tim, user))  # (E,) by user, time, tie-break
    user, item, label, tim = user[order], item[order], label[order], tim[order]
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(user, minlength=n_rows), out=offsets[1:])  # (U+2,)
    distinct = np.unique(tim)  # (R,)
    keys = user * (len(distinct) + 1) + np.searchsorted(distinct, tim)  # (E,)
    return UserLogs(item, label.astype(np.int8), tim, offsets, distinct, keys)


def representation_table(logs: UserLogs, lengths: np.ndarray, users: np.ndarray):
    """A ``representation.parquet`` table (ARCHITECTURE.md section 2) of ``users``' first
    ``lengths[u]`` logs: user_index int64, item_seq list<int64>, label_seq list<int8>,
    time_seq list<int64>. Vectorized gather, no per-row Python."""
    import pyarrow as pa

    users = np.asarray(users, dtype=np.int64)  # (V,)
    count = lengths[users]  # (V,)
    out = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(count, out=out[1:])  # (V+1,) output offsets
    within = np.arange(out[-1], dtype=np.int64) - np.repeat(out[:-1], count)  # (n,)
    src = np.repeat(logs.offsets[users], count) + within  # (n,) positions in the sorted logs
    offsets = pa.array(out, type=pa.int64())

    def lists(values, pa_type):
        return pa.LargeListArray.from_arrays(offsets, pa.array(values, type=pa_type)).cast(
            pa.list_(pa_type))

    return pa.table({"user_index": pa.array(users, type=pa.int64()),
                     "item_seq": lists(logs.item[src], pa.int64()),
                     "label_seq": lists(logs.label[src], pa.int8()),
                     "time_seq": lists(logs.time[src], pa.int64())})


def _split_paths(data_dir: Path) -> list[Path]:
    paths = [data_dir / f"{name}.parquet" for name in SPLITS if (data_dir / f"{name}.parquet").exists()]
    if not paths:
        raise DataError(f"{data_dir}: no train.parquet / valid.parquet / test.parquet")
    return paths


def _read_split(path: Path, columns: list[str]) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    for name in columns:
        if name not in names:
            raise DataError(f"{path}: no column '{name}' (needed for time slices); columns: {names}")
    table = pq.read_table(path, columns=columns)
    out = {}
    for name in columns:
        column = table.column(name)
        if column.null_count:
            raise DataError(f"{path}: column '{name}' has {column.null_count} missing value(s)")
        out[name] = column.to_numpy()
    return out


def _read_samples(path: Path, label_column: str) -> dict[str, np.ndarray]:
    cols = _read_split(path, ["user_index", "item_index", "timestamp", label_column])
    label = cols[label_column]
    bad = (label != 0) & (label != 1)
    if bad.any():
        raise DataError(f"{path}: column '{label_column}' must be 1/0, row {int(np.argmax(bad))} "
                        f"holds {label[bad][0]}")
    return {"user": cols["user_index"].astype(np.int64), "item": cols["item_index"].astype(np.int64),
            "time": cols["timestamp"].astype(np.int64), "label": np.where(label == 1, 1, -1).astype(np.int8)}


def _read_representation(path: Path, t1: int) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    from ..data.loader import list_column_csr

    if not path.exists():
        raise DataError(f"{path}: missing (the prepared folder's representation set)")
    columns = ["user_index", "item_seq", "label_seq", "time_seq"]
    names = pq.read_schema(path).names
    for name in columns:
        if name not in names:
            raise DataError(f"{path}: no column '{name}'; columns: {names}")
    table = pq.read_table(path, columns=columns)
    flat = {name: list_column_csr(table.column(name), f"{path}: column '{name}'")
            for name in columns[1:]}
    offsets = flat["item_seq"][1]
    for name in columns[2:]:
        if not np.array_equal(flat[name][1], offsets):
            raise DataError(f"{path}: column '{name}' has other lengths than 'item_seq'")
    user = np.repeat(table.column("user_index").to_numpy().astype(np.int64), np.diff(offsets))
    tim, label = flat["time_seq"][0], flat["label_seq"][0]
    if len(tim) and tim.max() >= t1:
        raise LeakageError(f"{path}: time {int(tim.max())} >= t1 = {t1} in the representation set")
    if np.any((label != 1) & (label != -1)):
        raise DataError(f"{path}: column 'label_seq' must hold +1/-1")
    return {"user": user, "item": flat["item_seq"][0], "label": label.astype(np.int8), "time": tim}


def _user_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    if not path.exists():
        raise DataError(f"{path}: missing (export needs the prepared folder's user_info.parquet)")
    index = pq.read_table(path, columns=["user_index"]).column("user_index").to_numpy()
    if not np.array_equal(index, np.arange(len(index))):
        raise DataError(f"{path}: column 'user_index' must equal the row number (row 0 = padding)")
    return len(index)


# ---------------------------------------------------------------------------- export
def export_time_slices(checkpoint_dir: str | os.PathLike, data_dir: str | os.PathLike, *,
                       cuts: Sequence[int] | np.ndarray, column: str | None = None,
                       normalize: bool = True, h5: bool = False, batch_size: int | None = None,
                       refit_every: int | None = None, refit_dir: str | os.PathLike | None = None,
                       refit_steps: int | None = None, progress: bool = True) -> dict:
    """Write one snapshot per (user, cut) of the compressor's user vector into ``data_dir``.

    ``cuts`` (c_1 = t1, strictly increasing; see :func:`make_cuts`). With one cut this is exactly
    :func:`.export.export`. Returns export's stats plus ``cuts``, ``slice_column``,
    ``users_reencoded`` (per cut), ``samples_per_slice`` and ``refit_checkpoints``.
    """
    from .export import export, update_dataset_config, feature_spec, write_user_column

    started = time.perf_counter()
    data_dir = Path(data_dir)
    t1 = read_t1(data_dir)
    cuts = validate_cuts(cuts, t1)
    if refit_every is not None and (isinstance(refit_every, bool) or int(refit_every) < 1):
        raise ConfigError(f"--refit-every: must be an integer >= 1, got {refit_every!r}")
    _clear_slices(data_dir, column, checkpoint_dir, drop_column=len(cuts) == 1)
    stats = export(checkpoint_dir, data_dir, column=column, normalize=normalize, h5=h5,
                   batch_size=batch_size, progress=progress)
    column = stats["column"]
    if len(cuts) == 1:
        stats.update(cuts=cuts.tolist(), slice_column=None)
        return stats
    snapshots, info = _snapshots(checkpoint_dir, data_dir, cuts, column, normalize=normalize,
                                 batch_size=batch_size, refit_every=refit_every, refit_dir=refit_dir,
                                 refit_steps=refit_steps, progress=progress)
    n_rows, n_cuts, width = snapshots.shape
    name = slices_column(column)
    write_user_column(data_dir / USER_INFO, name, snapshots.reshape(n_rows, n_cuts * width))  # (U+1, N*d)
    spec = {**feature_spec(column, width), "slice_column": name, "slice_cuts": cuts.tolist()}
    update_dataset_config(data_dir / DATASET_CONFIG, spec)
    info.update(column=column, slice_column=name, cuts=cuts.tolist(), t1=t1, normalize=normalize,
                checkpoint=str(checkpoint_dir), refit_every=refit_every,
                samples_per_slice=_samples_per_slice(data_dir, cuts))
    path = data_dir / f"{name}.json"
    write_json_atomic(path, info)
    stats["files"].update(slices=str(path))
    stats.update(info, seconds=time.perf_counter() - started)
    logger.info("wrote %d snapshots of %s per user (cuts %s) into %s", n_cuts, column, cuts.tolist(),
                data_dir)
    return stats


def _snapshots(checkpoint_dir, data_dir: Path, cuts: np.ndarray, column: str, *, normalize: bool,
               batch_size: int | None, refit_every: int | None, refit_dir, refit_steps: int | None,
               progress: bool) -> tuple[np.ndarray, dict]:
    """(U+1, N, d) snapshots: cut 1 from the plain export, later cuts re-encoded where needed."""
    base = _read_user_column(data_dir / USER_INFO, column)  # (U+1, d)
    logs = read_user_logs(data_dir)
    if logs.num_users != len(base):
        raise DataError(f"{data_dir / USER_INFO}: {len(base)} rows but {logs.num_users} users")
    snapshots = np.zeros((len(base), len(cuts), base.shape[1]), dtype=np.float32)  # (U+1, N, d)
    snapshots[:, 0] = base
    encoder = _Encoder(checkpoint_dir, data_dir, normalize=normalize, batch_size=batch_size,
                       progress=progress)
    previous = logs.lengths_before(int(cuts[0]))  # (U+1,)
    reencoded, refits = [int((previous > 0).sum())], {}
    for k in range(1, len(cuts)):
        cut = int(cuts[k])
        lengths = logs.lengths_before(cut)  # (U+1,)
        refit = bool(refit_every) and k % int(refit_every) == 0
        users = np.flatnonzero(lengths > 0) if refit else np.flatnonzero(lengths != previous)
        snapshots[:, k] = 0.0 if refit else snapshots[:, k - 1]
        with _FolderView(data_dir, representation_table(logs, lengths, users), cut) as view:
            if refit:
                refits[cut] = str(encoder.refit(view, _refit_root(checkpoint_dir, refit_dir) / f"cut{k + 1}",
                                                refit_steps))
            if len(users):
                snapshots[users, k] = encoder.features(view)[users]  # (V, d)
        reencoded.append(int(len(users)))
        previous = lengths
    return snapshots, {"users_reencoded": reencoded, "refit_checkpoints": refits,
                       "users_with_history": [int((logs.lengths_before(int(c)) > 0).sum()) for c in cuts]}


class _Encoder:
    """The trained compressor (or its latest refit), run through the exporter's own path."""

    def __init__(self, checkpoint_dir, data_dir: Path, *, normalize: bool, batch_size: int | None,
                 progress: bool) -> None:
        from .checkpoint import load_checkpoint

        self.ckpt = load_checkpoint(checkpoint_dir, trainer=False)
        self.normalize, self.progress = normalize, progress
        self.batch_size = batch_size or self.ckpt.config.optim.batch_size
        self.model = None

    def features(self, view: Path) -> np.ndarray:
        """User vectors (U+1, d) of every user in the view's representation.parquet."""
        from .data import RepresentationData
        from .export import _rebuild, compute_user_features
        from .registry import get_compressor

        data = RepresentationData(view, max_len=self.ckpt.config.optim.max_len)
        if self.model is None:
            self.model = _rebuild(get_compressor(self.ckpt.compressor), self.ckpt.config, self.ckpt, data)
        features, _ = compute_user_features(self.model, data, normalize=self.normalize,
                                            batch_size=self.batch_size, progress=self.progress)
        return features

    def refit(self, view: Path, output_dir: Path, max_steps: int | None) -> Path:
        """Retrain from scratch with the checkpoint's config on the view (logs before its cut)."""
        from .checkpoint import load_checkpoint
        from .train import train

        config = type(self.ckpt.config).from_dict(self.ckpt.config.to_dict())
        config.data_dir, config.output_dir = str(view), str(output_dir)
        result = train(config, progress=self.progress, max_steps=max_steps, compressor=self.ckpt.compressor)
        path = result.best_checkpoint or result.last_checkpoint
        logger.info("refit on logs before the cut: %s (step %d)", path, result.step)
        self.ckpt, self.model = load_checkpoint(path, trainer=False), None
        return Path(path)


class _FolderView:
    """A temporary folder that looks like ``data_dir`` (symlinks) but holds another
    representation.parquet and a summary.json whose t1 is the cut (so the compressor's data
    reader refuses any log at or after the cut)."""

    def __init__(self, data_dir: Path, table, cut: int) -> None:
        self.data_dir, self.table, self.cut = Path(data_dir).resolve(), table, int(cut)

    def __enter__(self) -> Path:
        from ..io import write_parquet_atomic

        self.path = Path(tempfile.mkdtemp(prefix=".chime-slice-"))
        for entry in self.data_dir.iterdir():
            if entry.name not in (REPRESENTATION, SUMMARY):
                os.symlink(entry, self.path / entry.name)
        summary = json.loads((self.data_dir / SUMMARY).read_text())
        summary.update(t1=self.cut, slice_view_of=str(self.data_dir))
        write_json_atomic(self.path / SUMMARY, summary)
        write_parquet_atomic(self.table, self.path / REPRESENTATION)
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _refit_root(checkpoint_dir, refit_dir) -> Path:
    return Path(refit_dir) if refit_dir else Path(checkpoint_dir).resolve().parent / "slices_refit"


def _read_user_column(path: Path, column: str) -> np.ndarray:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["user_index", column])
    flat = table.column(column).combine_chunks()
    width = len(flat[0]) if len(flat) else 0
    values = np.asarray(flat.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    matrix = values.reshape(len(flat), width)  # (U+1, d)
    out = np.zeros_like(matrix)
    out[table.column("user_index").to_numpy()] = matrix
    return out


def _samples_per_slice(data_dir: Path, cuts: np.ndarray) -> dict[str, list[int]]:
    """Per split, how many samples receive each snapshot (latest cut <= sample time)."""
    from ..data.loader import snapshot_index

    counts = {}
    for path in _split_paths(data_dir):
        k = snapshot_index(cuts, _read_split(path, ["timestamp"])["timestamp"].astype(np.int64))  # (S,)
        if len(k) and k.min() < 0:
            raise DataError(f"{path}: a sample before c_1 = t1 = {int(cuts[0])}")
        counts[path.stem] = np.bincount(k, minlength=len(cuts)).tolist()
    return counts


def _clear_slices(data_dir: Path, column: str | None, checkpoint_dir, *, drop_column: bool) -> None:
    """Remove an earlier run's slice keys from dataset_config.yaml (and, for N = 1, its column
    and JSON) so the folder is in the plain single-snapshot state while this run writes."""
    import pyarrow.parquet as pq
    import yaml

    from ..io import write_parquet_atomic, write_yaml_atomic
    from .checkpoint import read_versions
    from .registry import get_compressor

    column = column or get_compressor(read_versions(checkpoint_dir).get("compressor", "CHIME")).column
    path = data_dir / DATASET_CONFIG
    if path.exists():
        config = yaml.safe_load(path.read_text()) or {}
        changed = False
        for block in config.values():
            for entry in (block or {}).get("feature_cols", []) if isinstance(block, dict) else []:
                if isinstance(entry, dict) and entry.get("name") == column:
                    removed = [entry.pop(key) for key in SLICE_KEYS if key in entry]
                    changed = changed or bool(removed)
        if changed:
            write_yaml_atomic(path, config)
    if drop_column:
        name = slices_column(column)
        user_info = data_dir / USER_INFO
        if user_info.exists() and name in pq.read_schema(user_info).names:
            write_parquet_atomic(pq.read_table(user_info).drop_columns([name]), user_info)
        (data_dir / f"{name}.json").unlink(missing_ok=True)


# ---------------------------------------------------------------------------- CLI
def register_export_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--slices``, ``--cuts``, ``--slice-spacing``, ``--refit-every`` (and its output/steps)
    to the ``compress export`` parser."""
    group = parser.add_argument_group(
        "time slices", "one snapshot per (user, cut): each ranking sample at time t gets the "
                       "snapshot of the latest cut <= t, built from behaviors strictly before "
                       "that cut (paper section 5.1)")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--slices", type=int, metavar="N",
                        help="N cuts from t1 to the latest sample time (1 = plain export)")
    choice.add_argument("--cuts", metavar="T1,C2,...",
                        help="explicit increasing cut times; the first must equal t1")
    group.add_argument("--slice-spacing", choices=SPACINGS, default="time",
                       help="--slices spread evenly in time (default) or at sample-time quantiles")
    group.add_argument("--refit-every", type=int, metavar="K",
                       help="retrain the compressor on logs before every K-th cut and export "
                            "that cut and the next ones with it (slow)")
    group.add_argument("--refit-output", metavar="DIR",
                       help="where refit runs go (default: CHECKPOINT/../slices_refit)")
    group.add_argument("--refit-steps", type=int, metavar="N",
                       help="optimizer steps of each refit (default: the config's max_steps)")


def export_slices(args: argparse.Namespace) -> int:
    """``compress export --slices N | --cuts ...``: compute the cuts, export, print a summary."""
    cuts = make_cuts(args.data, slices=args.slices, cuts=args.cuts,
                     spacing=getattr(args, "slice_spacing", "time"))
    stats = export_time_slices(
        args.checkpoint, args.data, cuts=cuts, column=getattr(args, "column", None),
        normalize=not getattr(args, "counts", False), h5=getattr(args, "h5", False),
        batch_size=getattr(args, "batch_size", None), refit_every=getattr(args, "refit_every", None),
        refit_dir=getattr(args, "refit_output", None), refit_steps=getattr(args, "refit_steps", None),
        progress=not getattr(args, "no_progress", False))
    print(f"wrote {stats['column']} ({stats['width']} floats) for {stats['users']} users at "
          f"{len(stats['cuts'])} cut(s) {stats['cuts']}")
    if stats.get("slice_column"):
        print(f"snapshots in column {stats['slice_column']}; users re-encoded per cut: "
              f"{stats['users_reencoded']}; samples per slice: {stats['samples_per_slice']}")
    print(json.dumps(stats["files"], indent=2))
    return 0
