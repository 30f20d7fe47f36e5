"""Long-sequence FuxiCTR data loader over the prepared LongCTR layout (ARCHITECTURE.md section 3).

Utilization stage (paper section 5.1): a ranking sample at time t has as behavior sequence
the user's positive actions strictly before t, i.e. ``full_item_seq[:seq_len]`` of its user;
the most recent ``max_len`` (default 1000) of them are used, padded on the left, with the
target item appended last. Every parquet file is read once into numpy arrays (each column
keeps its dtype); each batch is then assembled with vectorized numpy fancy indexing, with no
per-row Python and no pandas.

Time-sliced user features (``compress export --slices``): a ``source: user`` vector whose spec
carries ``slice_column`` and ``slice_cuts`` c_1 < ... < c_N holds N snapshots per user; the
snapshot for cut c_k was built from the user's behaviors strictly before c_k. A sample at time
t receives the snapshot of the latest cut c_k <= t (:func:`snapshot_index`), so it only ever
sees behaviors strictly before c_k <= t, never its own time or later. c_k == t is safe for the
same reason: behaviors at time t itself are excluded from that snapshot. Samples before c_1
(= t1) cannot exist in a prepared folder and are a DataError.

Use it through FuxiCTR (``RankDataLoader(feature_map, ..., data_loader=LongSeqDataLoader,
user_info=..., item_info=..., max_len=...)``) or directly. A plain per-row reference
implementation lives in :mod:`fuxictr_chime.data.reference_loader`.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .features import slice_cuts_of

if TYPE_CHECKING:
    import pyarrow as pa
    from fuxictr.features import FeatureMap

logger = logging.getLogger(__name__)

SEQ_COLUMNS = ("user_index", "item_index", "seq_len")  # needed in every split file
HISTORY_COLUMN = "full_item_seq"
TIME_COLUMN = "timestamp"  # sample time, read when a user feature has time slices
EXPORTED_USER_COLUMNS = ("chime_hist", "learn_emb")
CONTROL_COLUMNS = ("hist_ctrl", "stats_ctrl")  # non-learned controls (compress controls)


def resolve_parquet_path(path: str | os.PathLike | None, what: str) -> str:
    """Return an existing parquet file or folder for ``path`` (``.parquet`` may be omitted)."""
    if path is None or not str(path):
        raise ConfigError(f"{what}: no path given")
    path = str(path)
    if not os.path.exists(path) and os.path.exists(path + ".parquet"):
        path += ".parquet"
    if not os.path.exists(path):
        raise DataError(f"{path}: {what} file not found")
    return path


def read_parquet_columns(path: str, columns: Iterable[str], what: str) -> "pa.Table":
    """Read ``columns`` of a parquet file or folder; DataError naming the first missing one."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(path, format="parquet")
    names = dataset.schema.names
    columns = list(dict.fromkeys(columns))
    for name in columns:
        if name not in names:
            raise DataError(f"{path}: {what} lacks column '{name}'; columns: {names}")
    return dataset.to_table(columns=columns)


def parquet_column_names(path: str) -> list[str]:
    import pyarrow.dataset as ds

    return ds.dataset(path, format="parquet").schema.names


def _is_list(pa_type) -> bool:
    import pyarrow as pa

    return pa.types.is_list(pa_type) or pa.types.is_large_list(pa_type) \
        or pa.types.is_fixed_size_list(pa_type)


def list_column_csr(column: "pa.ChunkedArray", where: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column as CSR: (flat values int64, offsets int64 of length N+1); null rows = empty."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(column).fill_null(0).to_numpy().astype(np.int64)
    flat = pc.list_flatten(column)
    if flat.null_count:
        raise DataError(f"{where}: lists contain null elements")
    values = np.asarray(flat.to_numpy(), dtype=np.int64) if len(flat) else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return values, offsets


def _list_matrix(column: "pa.ChunkedArray", width: int, where: str, *, exact: bool) -> np.ndarray:
    """A list column as an (N, width) array; ragged rows are padded/truncated at the end
    unless ``exact`` (then any row of another width is a DataError)."""
    import pyarrow.compute as pc

    if column.null_count:
        raise DataError(f"{where}: {column.null_count} row(s) are null")
    lengths = pc.list_value_length(column).to_numpy().astype(np.int64)
    flat = pc.list_flatten(column)
    if flat.null_count:
        raise DataError(f"{where}: vectors contain null elements")
    values = flat.to_numpy(zero_copy_only=False)
    if np.all(lengths == width):
        return values.reshape(len(lengths), width).copy()  # (N, width)
    if exact:
        row = int(np.flatnonzero(lengths != width)[0])
        raise DataError(f"{where}: expected width {width}, row {row} has {lengths[row]}")
    offsets = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    pos = np.arange(width)[None, :]  # (1, width)
    valid = pos < lengths[:, None]  # (N, width)
    out = np.zeros((len(lengths), width), dtype=values.dtype)
    out[valid] = values[(offsets[:, None] + pos)[valid]]  # (N, width) <- (nnz,)
    return out


def column_to_numpy(column: "pa.ChunkedArray", spec: dict | None, where: str, *, label: bool = False) -> np.ndarray:
    """One parquet column as a numpy array that keeps its dtype.

    Scalars keep their dtype (labels become float32). ``type: embedding`` vectors become
    (N, pretrain_dim) float32; ``type: sequence`` lists (N, max_len), padded at the end;
    other list columns must have one width. Strings (not encoded) and NaN in float
    features or labels are DataErrors.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    spec = spec or {}
    ftype = spec.get("type")
    if _is_list(column.type):
        if ftype == "embedding":
            arr = _list_matrix(column, int(spec["pretrain_dim"]), where, exact=True)
            arr = arr.astype(np.float32, copy=False)
        elif ftype == "sequence":
            arr = _list_matrix(column, int(spec["max_len"]), where, exact=False)
        else:
            width = int(pc.max(pc.list_value_length(column)).as_py() or 0)
            arr = _list_matrix(column, width, where, exact=True)
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type) \
            or pa.types.is_binary(column.type):
        raise DataError(f"{where}: holds {column.type} values; prepared data must be encoded "
                        f"as integer indices")
    else:
        if column.null_count:
            raise DataError(f"{where}: {column.null_count} missing value(s)")
        arr = column.to_numpy()
        if ftype == "embedding":
            raise DataError(f"{where}: type embedding needs vectors (list<float>), "
                            f"got {column.type}")
    if label:
        arr = arr.astype(np.float32, copy=False)
    if arr.dtype.kind == "f" and (label or ftype in ("embedding", "numeric")):
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(f"{where}: NaN/inf value at row {row}")
    return np.require(arr, requirements=["C", "W"])


def snapshot_index(cuts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index k of the latest cut ``cuts[k] <= t`` for every time (-1 when t < cuts[0]).

    ``cuts`` (N,) strictly increasing; ``times`` (S,). Vectorized: one ``np.searchsorted``.
    """
    return np.searchsorted(cuts, times, side="right").astype(np.int64) - 1  # (S,)


@dataclass
class UserSlices:
    """Time-sliced snapshots of one user feature: ``values[u, k]`` was built from user u's
    behaviors strictly before ``cuts[k]``."""

    column: str          # user_info column holding the stacked snapshots
    cuts: np.ndarray     # (N,) int64, strictly increasing
    values: np.ndarray   # (U+1, N, d) float32


@dataclass
class UserHistories:
    """``full_item_seq`` of user_info as CSR: ``values[offsets[u]:offsets[u+1]]`` = user u."""

    values: np.ndarray   # (nnz,) int64
    offsets: np.ndarray  # (U+1 rows + 1,) int64

    def __post_init__(self) -> None:
        # values shifted by one: index 0 reads the padding item 0 (used for masked positions)
        self.shifted = np.concatenate([np.zeros(1, np.int64), self.values])  # (nnz + 1,)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def gather_history(hist: UserHistories, user: np.ndarray, seq_len: np.ndarray,
                   max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded window of the last ``min(seq_len, max_len)`` history items per sample.

    ``idx = offsets[u] + seq_len - L + arange(L)``, masked where it falls before the
    user's sequence start. Returns (items (B, L) int64, mask (B, L) bool).
    """
    start = hist.offsets[user]  # (B,)
    steps = np.arange(max_len, dtype=np.int64)[None, :]  # (1, L)
    idx = (start + seq_len - max_len + 1)[:, None] + steps  # (B, L), +1: shifted values
    mask = idx > start[:, None]  # (B, L): position idx-1 lies in the user's own sequence
    idx *= mask  # masked -> 0 -> padding item
    return hist.shifted[idx], mask  # (B, L), (B, L)


class LongSeqDataLoader:
    """FuxiCTR data loader for long behavior sequences in the prepared LongCTR layout.

    Constructed as ``LongSeqDataLoader(feature_map, data_path, split=..., batch_size=...,
    shuffle=..., user_info=..., item_info=..., max_len=1000, **params)``. Each batch is a
    dict of CPU tensors (ARCHITECTURE.md section 3): the split file's feature columns and
    labels (float32); target-item features (``source: item``) gathered from item_info by
    ``item_index``; user features (``source: user``, e.g. ``chime_hist``) gathered from
    user_info by ``user_index``; ``item_seq`` (B, max_len+1) int64 (history left-padded
    with 0, target last) and ``seq_mask`` (B, max_len) bool. Histories longer than
    ``max_len`` keep the most recent ``max_len`` items.

    A ``source: item`` / ``source: user`` feature absent from item_info / user_info is read
    from the split file if it is there. A user feature with time slices (``slice_column``,
    ``slice_cuts`` in its spec) is gathered per sample from the snapshot of the latest cut at
    or before the sample's ``timestamp`` (module docstring). Defaults: ``shuffle`` per epoch with
    ``numpy.random.default_rng((seed, epoch))``, ``seed`` 0, never on split "test";
    ``prefetch=True`` assembles the next batches in a background thread (depth 2).
    """

    def __init__(self, feature_map: "FeatureMap", data_path: str, split: str = "train",
                 batch_size: int = 32,
                 shuffle: bool = False, *, user_info: str | None = None,
                 item_info: str | None = None, max_len: int | None = 1000,
                 seed: int | None = None, prefetch: bool = True, **kwargs: Any) -> None:
        self.feature_map = feature_map
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle) and split != "test"
        self.max_len = 1000 if max_len is None else int(max_len)
        if self.max_len < 1 or self.batch_size < 1:
            raise ConfigError(f"max_len ({self.max_len}) and batch_size ({self.batch_size}) "
                              f"must be >= 1")
        self.seed = 0 if seed is None else int(seed)
        self.prefetch = bool(prefetch)
        self.epoch = 0
        self.data_path = resolve_parquet_path(data_path, f"{split} data")
        self.user_info = resolve_parquet_path(user_info, "user_info")
        self.item_info = resolve_parquet_path(item_info, "item_info")
        self._load()
        self.num_blocks = 1
        self.num_batches = int(np.ceil(self.num_samples / self.batch_size))
        logger.info("%s: %d samples, %d users, %d items, max_len %d", self.data_path,
                    self.num_samples, self.n_users, self.n_items, self.max_len)

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        split_cols, item_cols, user_cols = self._route_features()
        self._load_item_info(item_cols)
        self._load_user_info(user_cols)
        self._load_split(split_cols)
        self._check_indices()

    def _route_features(self) -> tuple[list[str], list[str], list[str]]:
        """Which file each feature comes from: split, item_info or user_info."""
        features = self.feature_map.features
        item_names = set(parquet_column_names(self.item_info))
        user_names = set(parquet_column_names(self.user_info))
        split_names = set(parquet_column_names(self.data_path))
        split_cols, item_cols, user_cols = [], [], []
        for name, spec in features.items():
            if name in ("item_seq", "seq_mask"):
                continue
            source = spec.get("source")
            if source == "item" and name in item_names and name != "item_index":
                item_cols.append(name)
            elif source == "user" and name in user_names and name != "user_index":
                user_cols.append(name)
            elif source == "item" and name not in split_names:
                raise DataError(f"{self.item_info}: item_info lacks column '{name}' (declared "
                                f"'source: item' in the feature map; not in {self.data_path} "
                                f"either)")
            elif source == "user" and name not in split_names:
                hint = (" run `fuxictr-chime compress export` first" if name in EXPORTED_USER_COLUMNS
                        else " run `fuxictr-chime compress controls` first" if name in CONTROL_COLUMNS
                        else "")
                raise DataError(f"{self.user_info}: user_info lacks column '{name}' (declared "
                                f"'source: user' in the feature map; not in {self.data_path} "
                                f"either);{hint}")
            else:
                split_cols.append(name)
        self._declare_sequence_columns()
        return split_cols, item_cols, user_cols

    def _declare_sequence_columns(self) -> None:
        """Give ``item_seq`` / ``seq_mask`` meta specs in the feature map if it lacks them.

        A feature map from FuxiCTR's own ``FeatureMap.load`` (the stock ``run_expid.py``
        workflow) only knows the dataset's columns; FuxiCTR's ``BaseModel.get_inputs`` looks
        every batch column up in it (KeyError otherwise) and skips ``type: meta`` ones. The
        model holds the same FeatureMap object, so declaring the loader's two extra columns
        here lets any FuxiCTR model read these batches."""
        features = self.feature_map.features
        added = [name for name in ("item_seq", "seq_mask") if name not in features]
        for name in added:
            features[name] = {"source": "", "type": "meta"}
        if added:
            logger.info("feature map: declared the loader's columns %s as type: meta", added)

    def _load_item_info(self, item_cols: list[str]) -> None:
        table = read_parquet_columns(self.item_info, item_cols, "item_info")
        self.n_items = _n_rows(self.item_info, "item_index")
        self.item_arrays = {name: self._to_numpy(table.column(name), name, self.item_info)
                            for name in item_cols}

    def _load_user_info(self, user_cols: list[str]) -> None:
        table = read_parquet_columns(self.user_info, [HISTORY_COLUMN] + user_cols, "user_info")
        self.n_users = _n_rows(self.user_info, "user_index")
        where = f"{self.user_info}: column '{HISTORY_COLUMN}'"
        if not _is_list(table.column(HISTORY_COLUMN).type):
            raise DataError(f"{where} must be list<int64>, got {table.column(HISTORY_COLUMN).type}")
        self.histories = UserHistories(*list_column_csr(table.column(HISTORY_COLUMN), where))
        bad = (self.histories.values < 0) | (self.histories.values >= self.n_items)
        if bad.any():
            raise DataError(f"{where}: item_index {int(self.histories.values[bad][0])} outside "
                            f"item_info ({self.item_info}: rows 0..{self.n_items - 1})")
        self.user_arrays = {name: self._to_numpy(table.column(name), name, self.user_info)
                            for name in user_cols}
        self.user_slices = {name: self._load_slices(name) for name in user_cols
                            if slice_cuts_of(name, self.feature_map.features[name]) is not None}

    def _load_slices(self, name: str) -> UserSlices:
        """The (U+1, N, d) snapshots of a sliced user feature; its first snapshot (cut c_1 = t1)
        must equal the plain column (else the slices are stale: a newer plain export)."""
        spec = self.feature_map.features[name]
        cuts = slice_cuts_of(name, spec)
        column, width = spec["slice_column"], int(spec["pretrain_dim"])
        table = read_parquet_columns(self.user_info, [column], "user_info")
        where = f"{self.user_info}: column '{column}' (time slices of '{name}')"
        flat = _list_matrix(table.column(column), len(cuts) * width, where, exact=True)
        values = flat.astype(np.float32, copy=False).reshape(-1, len(cuts), width)  # (U+1, N, d)
        if not np.all(np.isfinite(values)):
            raise DataError(f"{where}: NaN/inf values")
        if not np.array_equal(values[:, 0], self.user_arrays[name]):
            raise DataError(f"{where}: the first snapshot differs from column '{name}': the "
                            f"slices are stale (written before the last plain export); re-run "
                            f"`fuxictr-chime compress export --slices ...` or set "
                            f"slice_cuts: null")
        return UserSlices(column, cuts, np.ascontiguousarray(values))

    def _load_split(self, split_cols: list[str]) -> None:
        labels = list(self.feature_map.labels)
        if not labels:
            raise ConfigError("feature map has no label (label_col)")
        columns = list(dict.fromkeys(list(SEQ_COLUMNS) + split_cols + labels))
        table = read_parquet_columns(self.data_path, columns, f"{self.split} data")
        self.num_samples = table.num_rows
        arrays = {name: self._to_numpy(table.column(name), name, self.data_path,
                                       label=name in labels) for name in columns}
        for name in SEQ_COLUMNS:
            if arrays[name].dtype.kind not in "iu":
                raise DataError(f"{self.data_path}: column '{name}' must be integer, "
                                f"got {arrays[name].dtype}")
        self._user = arrays["user_index"].astype(np.int64, copy=False)
        self._item = arrays["item_index"].astype(np.int64, copy=False)
        self._seq_len = arrays["seq_len"].astype(np.int64, copy=False)
        emitted = set(self.feature_map.features) | set(labels)
        self.split_arrays = {name: arr for name, arr in arrays.items() if name in emitted}
        self._slice_rows = {name: self._slice_rows_of(slices)
                            for name, slices in self.user_slices.items()}

    def _slice_rows_of(self, slices: UserSlices) -> np.ndarray:
        """Per sample, the snapshot index k of the latest cut c_k <= timestamp: (S,) int64."""
        table = read_parquet_columns(self.data_path, [TIME_COLUMN], f"{self.split} data")
        times = table.column(TIME_COLUMN)
        where = f"{self.data_path}: column '{TIME_COLUMN}'"
        if times.null_count or not _is_integer(times.type):
            raise DataError(f"{where} must be integer without nulls (needed by the time slices "
                            f"of '{slices.column}'), got {times.type}")
        times = times.to_numpy().astype(np.int64, copy=False)  # (S,)
        k = snapshot_index(slices.cuts, times)  # (S,)
        if self.num_samples and k.min() < 0:
            r = int(np.argmin(k))
            raise DataError(f"{where}: sample at row {r} has time {int(times[r])} before the first "
                            f"cut c_1 = {int(slices.cuts[0])} (= t1) of '{slices.column}'; "
                            f"ranking samples start at t1")
        return k

    def _to_numpy(self, column, name: str, path: str, *, label: bool = False) -> np.ndarray:
        spec = self.feature_map.features.get(name)
        return column_to_numpy(column, spec, f"{path}: column '{name}'", label=label)

    def _check_indices(self) -> None:
        path = self.data_path
        _check_range(self._user, self.n_users, f"{path}: column 'user_index'",
                     f"user_info ({self.user_info})")
        _check_range(self._item, self.n_items, f"{path}: column 'item_index'",
                     f"item_info ({self.item_info})")
        lengths = self.histories.lengths[self._user]
        bad = np.flatnonzero((self._seq_len < 0) | (self._seq_len > lengths))
        if len(bad):
            r = int(bad[0])
            raise DataError(f"{path}: column 'seq_len' = {int(self._seq_len[r])} at row {r} but "
                            f"user {int(self._user[r])} has {int(lengths[r])} items in "
                            f"'{HISTORY_COLUMN}' of {self.user_info}")

    # ---------------------------------------------------------------- iteration
    def __len__(self) -> int:
        return self.num_batches

    def epoch_order(self) -> np.ndarray:
        """Sample order of the next epoch (a seeded permutation when shuffling)."""
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.int64)
        rng = np.random.default_rng((self.seed, self.epoch))
        return rng.permutation(self.num_samples)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self.epoch_order()
        self.epoch += 1
        chunks = (order[i:i + self.batch_size] for i in range(0, self.num_samples, self.batch_size))
        batches = map(self.make_batch, chunks)
        return _prefetch(batches, depth=2) if self.prefetch else batches

    def make_batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch of the given sample rows (ARCHITECTURE.md section 3)."""
        user, item = self._user[rows], self._item[rows]  # (B,)
        batch = {name: torch.from_numpy(arr[rows]) for name, arr in self.split_arrays.items()}
        for name, arr in self.item_arrays.items():
            batch[name] = torch.from_numpy(arr[item])  # (B,) or (B, d)
        for name, arr in self.user_arrays.items():
            batch[name] = torch.from_numpy(arr[user])  # (B, d)
        for name, slices in self.user_slices.items():  # latest snapshot at or before the sample
            batch[name] = torch.from_numpy(slices.values[user, self._slice_rows[name][rows]])  # (B, d)
        history, mask = gather_history(self.histories, user, self._seq_len[rows], self.max_len)
        item_seq = np.empty((len(rows), self.max_len + 1), dtype=np.int64)  # (B, L+1)
        item_seq[:, :-1] = history
        item_seq[:, -1] = item
        batch["item_seq"] = torch.from_numpy(item_seq)
        batch["seq_mask"] = torch.from_numpy(mask)  # (B, L)
        return batch


def _is_integer(pa_type) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(pa_type)


def _n_rows(path: str, index_column: str) -> int:
    """Rows of an info file; if it has its index column, row r must hold index r."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(path, format="parquet")
    if index_column not in dataset.schema.names:
        return dataset.count_rows()
    index = dataset.to_table(columns=[index_column]).column(index_column).to_numpy()
    wrong = np.flatnonzero(index != np.arange(len(index)))
    if len(wrong):
        r = int(wrong[0])
        raise DataError(f"{path}: column '{index_column}' must equal the row number "
                        f"(row 0 = padding); row {r} holds {index[r]}")
    return len(index)


def _check_range(index: np.ndarray, n_rows: int, where: str, target: str) -> None:
    bad = np.flatnonzero((index < 0) | (index >= n_rows))
    if len(bad):
        r = int(bad[0])
        raise DataError(f"{where}: value {int(index[r])} at row {r} is outside {target}, "
                        f"which has rows 0..{n_rows - 1}")


_DONE = object()


def _prefetch(batches: Iterator, depth: int) -> Iterator:
    """Produce ``batches`` in a background thread, ``depth`` ahead of the consumer."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for batch in batches:
                if not offer(batch):
                    return
            offer(_DONE)
        except BaseException as exc:  # handed to the consumer, re-raised there
            offer(exc)

    thread = threading.Thread(target=work, name="LongSeqDataLoader-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
