"""Compressor input (spec sections 2 and 3.5; ARCHITECTURE.md sections 2 and 5).

:class:`RepresentationData` reads a prepared folder's ``representation.parquet`` (each user's
actions before t1, both labels, time order) and ``item_info.parquet`` (item attributes and
dense side vectors by ``item_index``), enforces the leakage rule (every ``time_seq < t1``,
t1 from ``summary.json``), keeps the most recent ``max_len`` behaviors per user, and yields
right-padded batches::

    {"item_index": (B, T) int64, "labels": (B, T) int64 (+1 / -1 / 0 = padding),
     "attrs": {name: (B, T) int64}, "dense": {name: (B, T, d) float32},
     "user_index": (B,) int64, "mask": (B, T) bool}

with T the longest sequence of the batch. ``attrs`` holds every categorical item attribute
except ``item_id`` (which equals ``item_index``). Attributes are gathered from item_info arrays
by numpy fancy indexing; row 0 of item_info is the padding row, so padded positions get 0.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ..errors import DataError, LeakageError

logger = logging.getLogger(__name__)

__all__ = ["RepresentationData", "REPRESENTATION", "REPRESENTATION_COLUMNS", "ITEM_INFO", "USER_INFO", "SUMMARY",
           "flatten_representation"]

REPRESENTATION, ITEM_INFO = "representation.parquet", "item_info.parquet"
USER_INFO, SUMMARY = "user_info.parquet", "summary.json"
REPRESENTATION_COLUMNS = ("user_index", "item_seq", "label_seq", "time_seq")
_NOT_ATTRIBUTES = ("item_index", "item_id")


class RepresentationData:
    """Each user's representation-set behaviors, ready for the compressor.

    Args:
        data_dir: a prepared dataset folder (ARCHITECTURE.md section 2).
        max_len: keep the most recent ``max_len`` behaviors per user (default 1000).
        t1_check: enforce the leakage rule with t1 from ``summary.json`` (default True).

    Raises DataError naming the file and column for a missing file/column, ragged sequences,
    labels outside {+1, -1}, unknown item indices, a malformed item_info; LeakageError when a
    behavior is at or after t1.
    """

    def __init__(self, data_dir: str | os.PathLike, max_len: int = 1000, t1_check: bool = True) -> None:
        if max_len <= 0:
            raise DataError(f"RepresentationData: max_len must be positive, got {max_len}")
        self.data_dir, self.max_len = Path(data_dir), int(max_len)
        self._read_item_info(self.data_dir / ITEM_INFO)
        users, items, labels, times, offsets = _read_representation(self.data_dir / REPRESENTATION)
        _check_sequences(self.data_dir / REPRESENTATION, users, items, labels, times, offsets, self.num_items)
        if t1_check:
            _check_leakage(self.data_dir, users, times, offsets)
        self._store(users, items, labels, offsets)
        self._all_users: np.ndarray | None = None
        logger.info("%s: %d users with history, %d behaviors kept (max_len %d), %d items", self.data_dir,
                    len(self._users), int(self._lengths.sum()), self.max_len, self.num_items)

    # ------------------------------------------------------------------ reading
    def _read_item_info(self, path: Path) -> None:
        """Item count, categorical attribute arrays (I+1,) and dense matrices (I+1, d) by item_index."""
        table = _read_table(path)
        if "item_index" not in table.column_names:
            raise DataError(f"{path}: no column 'item_index' (columns: {', '.join(table.column_names)})")
        index = _int_column(table, "item_index", path)
        if not np.array_equal(index, np.arange(len(index))):
            raise DataError(f"{path}: column 'item_index' must equal the row number (row 0 = padding)")
        if len(index) < 2:
            raise DataError(f"{path}: no items (only the padding row)")
        if "item_id" in table.column_names and not np.array_equal(_int_column(table, "item_id", path), index):
            raise DataError(f"{path}: column 'item_id' must equal 'item_index'")
        self.num_items = len(index) - 1
        self._attrs, self._dense = _item_columns(table, path)

    def _store(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray, offsets: np.ndarray) -> None:
        """Flat arrays of the most recent ``max_len`` behaviors per user (users sorted by index)."""
        lengths = np.diff(offsets)
        keep = lengths > 0
        order = np.argsort(users[keep], kind="stable")
        ends = offsets[1:][keep][order]
        kept = np.minimum(lengths[keep][order], self.max_len)
        starts = ends - kept
        self._users = users[keep][order]
        self._lengths = kept
        self._offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
        positions = np.repeat(starts - self._offsets[:-1], kept) + np.arange(self._offsets[-1])  # (N,)
        self._items = items[positions]
        self._labels = labels[positions].astype(np.int64)
        self._row_of = {int(u): i for i, u in enumerate(self._users)}

    # ------------------------------------------------------------------ public API
    def vocab_sizes(self) -> dict[str, int]:
        """``item_id`` -> item count + 1 and each categorical attribute -> max value + 1."""
        sizes = {"item_id": self.num_items + 1}
        sizes.update({name: int(values.max()) + 1 for name, values in self._attrs.items()})
        return sizes

    def dense_widths(self) -> dict[str, int]:
        """Width of each dense side vector of item_info."""
        return {name: int(values.shape[1]) for name, values in self._dense.items()}

    def users_with_history(self) -> list[int]:
        """user_index of every user with at least one behavior before t1, ascending."""
        return [int(u) for u in self._users]

    def all_users(self) -> list[int]:
        """Every user_index of ``user_info.parquet`` (row 0 = padding excluded), including users
        without representation history (their exported vector is all zeros)."""
        if self._all_users is None:
            path = self.data_dir / USER_INFO
            table = _read_table(path, columns=["user_index"])
            index = _int_column(table, "user_index", path)
            index = np.unique(index[index > 0])
            unknown = np.setdiff1d(self._users, index)
            if unknown.size:
                raise DataError(f"{path}: users {unknown[:5].tolist()} of {REPRESENTATION} are not in user_info")
            self._all_users = index
        return [int(u) for u in self._all_users]

    def sequence_length(self, user_id: int) -> int:
        """Number of behaviors kept for ``user_id`` (0 without history)."""
        row = self._row_of.get(int(user_id))
        return 0 if row is None else int(self._lengths[row])

    def split_users(self, eval_fraction: float | None = None, eval_count: int | None = None,
                    seed: int = 0) -> tuple[list[int], list[int]]:
        """Random (train, eval) split of the users with history; both lists ascending.

        Exactly one of ``eval_fraction`` (0 < f < 1, rounded, at least 1 user) or
        ``eval_count`` (>= 0) is given. Same seed, same split."""
        if (eval_fraction is None) == (eval_count is None):
            raise DataError("split_users: give exactly one of eval_fraction or eval_count")
        n = len(self._users)
        if eval_fraction is not None:
            if not 0.0 < eval_fraction < 1.0:
                raise DataError(f"split_users: eval_fraction must be in (0, 1), got {eval_fraction}")
            count = max(1, int(round(eval_fraction * n))) if n else 0
        else:
            count = int(eval_count)
            if count < 0:
                raise DataError(f"split_users: eval_count must be >= 0, got {eval_count}")
        count = min(count, n)
        permuted = self._users[np.random.default_rng(seed).permutation(n)]
        return sorted(int(u) for u in permuted[count:]), sorted(int(u) for u in permuted[:count])

    def batches(self, user_ids: Sequence[int], batch_size: int, shuffle: bool = False, seed: int = 0,
                bucket: bool = False) -> Iterator[dict]:
        """Right-padded batches of ``batch_size`` users (the last one may be smaller).

        ``shuffle`` permutes the users with ``seed``; ``bucket`` groups users of similar length
        (sorted within windows of 50 batches, then the batches shuffled) to cut padding.
        A user without history gives an all-padding row."""
        if batch_size <= 0:
            raise DataError(f"batches: batch_size must be positive, got {batch_size}")
        users = np.asarray(list(user_ids), dtype=np.int64)
        rows = self._rows_of(users)
        order = self._batch_order(rows, batch_size, shuffle, seed, bucket)
        for chunk in order:
            yield self._make_batch(users[chunk], rows[chunk])

    def __len__(self) -> int:
        return len(self._users)

    # ------------------------------------------------------------------ batching
    def _rows_of(self, users: np.ndarray) -> np.ndarray:
        """Row of each user in the flat arrays; -1 for a known user without history."""
        rows = np.array([self._row_of.get(int(u), -1) for u in users], dtype=np.int64)
        missing = users[rows < 0]
        if missing.size:
            known = set(self.all_users()) if (self.data_dir / USER_INFO).exists() else set()
            unknown = [int(u) for u in missing if int(u) not in known]
            if unknown:
                raise DataError(f"{self.data_dir}: users {unknown[:5]} are neither in {REPRESENTATION} "
                                f"nor in {USER_INFO}")
        return rows

    def _batch_order(self, rows: np.ndarray, batch_size: int, shuffle: bool, seed: int,
                     bucket: bool) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(rows)) if shuffle else np.arange(len(rows))
        if bucket:
            lengths = np.where(rows >= 0, self._lengths[np.maximum(rows, 0)], 0)
            window = batch_size * 50
            order = np.concatenate([w[np.argsort(-lengths[w], kind="stable")]
                                    for w in np.array_split(order, max(1, math.ceil(len(order) / window)))]) \
                if len(order) else order
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        if bucket and shuffle:
            chunks = [chunks[i] for i in rng.permutation(len(chunks))]
        return chunks

    def _make_batch(self, users: np.ndarray, rows: np.ndarray) -> dict:
        valid = rows >= 0
        lengths = np.where(valid, self._lengths[np.maximum(rows, 0)], 0)  # (B,)
        width = max(1, int(lengths.max(initial=0)))
        starts = np.where(valid, self._offsets[np.maximum(rows, 0)], 0)  # (B,)
        steps = np.arange(width)  # (T,)
        mask = steps[None, :] < lengths[:, None]  # (B, T)
        flat = np.where(mask, starts[:, None] + steps[None, :], 0)  # (B, T)
        items = np.where(mask, self._items[flat], 0)  # (B, T)
        labels = np.where(mask, self._labels[flat], 0)  # (B, T)
        return {
            "item_index": torch.from_numpy(items.astype(np.int64)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "attrs": {name: torch.from_numpy(values[items]) for name, values in self._attrs.items()},  # (B, T)
            "dense": {name: torch.from_numpy(values[items]) for name, values in self._dense.items()},  # (B, T, d)
            "user_index": torch.from_numpy(users.astype(np.int64)),
            "mask": torch.from_numpy(mask),
        }


# ---------------------------------------------------------------------------- file readers
def _read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise DataError(f"{path}: missing (the compressor needs a prepared dataset folder)")
    try:
        schema = pq.read_schema(path)
        if columns:
            absent = [c for c in columns if c not in schema.names]
            if absent:
                raise DataError(f"{path}: no column {absent[0]!r} (columns: {', '.join(schema.names)})")
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc


def _item_columns(table: pa.Table, path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(categorical attributes: integer columns, dense vectors: lists of floats) of item_info."""
    attrs: dict[str, np.ndarray] = {}
    dense: dict[str, np.ndarray] = {}
    for name in table.column_names:
        kind = table.schema.field(name).type
        if name in _NOT_ATTRIBUTES:
            continue
        if pa.types.is_integer(kind):
            attrs[name] = _int_column(table, name, path)
            if attrs[name].min() < 0:
                raise DataError(f"{path}: column '{name}' has negative values (categorical values are 1..V, 0 = pad)")
        elif _is_list(kind) and pa.types.is_floating(kind.value_type):
            dense[name] = _dense_column(table, name, path)
        else:
            logger.info("%s: column '%s' (%s) is neither a categorical attribute nor a dense vector; not used",
                        path, name, kind)
    return attrs, dense


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _int_column(table: pa.Table, name: str, path: Path) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        raise DataError(f"{path}: column '{name}' has {column.null_count} nulls")
    if not pa.types.is_integer(column.type):
        raise DataError(f"{path}: column '{name}' must be integer, got {column.type}")
    return column.to_numpy().astype(np.int64)


def _dense_column(table: pa.Table, name: str, path: Path) -> np.ndarray:
    column = table.column(name).combine_chunks()
    if column.null_count:
        raise DataError(f"{path}: column '{name}' has {column.null_count} null vectors")
    lengths = pc.list_value_length(column).to_numpy()
    if len(set(lengths.tolist())) != 1 or lengths[0] == 0:
        raise DataError(f"{path}: dense column '{name}' has vectors of different or zero widths "
                        f"({sorted(set(lengths.tolist()))[:5]})")
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32)
    if not np.isfinite(values).all():
        raise DataError(f"{path}: dense column '{name}' has NaN or infinite values")
    return values.reshape(len(column), int(lengths[0]))  # (I+1, d)


def _read_representation(path: Path) -> tuple[np.ndarray, ...]:
    """(users (U,), items (N,), labels (N,), times (N,), offsets (U+1,)) of representation.parquet."""
    return flatten_representation(_read_table(path, columns=list(REPRESENTATION_COLUMNS)), path)


def flatten_representation(table: pa.Table, source: Path | str = REPRESENTATION) -> tuple[np.ndarray, ...]:
    """(users (U,), items (N,), labels (N,), times (N,), offsets (U+1,)) of representation rows.

    DataError naming ``source`` and the column for a missing column, a non-integer list column,
    null lists or list columns of different lengths.
    """
    absent = [c for c in REPRESENTATION_COLUMNS if c not in table.column_names]
    if absent:
        raise DataError(f"{source}: no column {absent[0]!r} (columns: {', '.join(table.column_names)})")
    user_col = table.column("user_index")
    if not pa.types.is_integer(user_col.type) or user_col.null_count:
        raise DataError(f"{source}: column 'user_index' must be integer without nulls, got {user_col.type}")
    users = user_col.to_numpy().astype(np.int64)
    flat, offsets = {}, None
    for name in REPRESENTATION_COLUMNS[1:]:
        column = table.column(name).combine_chunks()
        kind = column.type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_integer(kind.value_type):
            raise DataError(f"{source}: column '{name}' must be a list of integers, got {kind}")
        if column.null_count:
            raise DataError(f"{source}: column '{name}' has {column.null_count} null lists")
        own = column.offsets.to_numpy().astype(np.int64)
        own = own - own[0]
        if offsets is not None and not np.array_equal(own, offsets):
            bad = users[np.flatnonzero(np.diff(own) != np.diff(offsets))[0]]
            raise DataError(f"{source}: user_index {bad}: '{name}' and 'item_seq' have different lengths")
        offsets = own
        flat[name] = pc.list_flatten(column).to_numpy().astype(np.int64)
    return users, flat["item_seq"], flat["label_seq"], flat["time_seq"], offsets


def _check_sequences(path: Path, users: np.ndarray, items: np.ndarray, labels: np.ndarray, times: np.ndarray,
                     offsets: np.ndarray, num_items: int) -> None:
    if len(np.unique(users)) != len(users):
        raise DataError(f"{path}: column 'user_index' has duplicate users")
    if users.size and users.min() <= 0:
        raise DataError(f"{path}: column 'user_index' must be >= 1 (0 is padding)")
    owner = np.repeat(users, np.diff(offsets))  # (N,)
    bad = ~np.isin(labels, (1, -1))
    if bad.any():
        raise DataError(f"{path}: column 'label_seq' must hold +1/-1; user_index {owner[bad][0]} has "
                        f"{labels[bad][0]}")
    bad = (items < 1) | (items > num_items)
    if bad.any():
        raise DataError(f"{path}: column 'item_seq': user_index {owner[bad][0]} has item_index {items[bad][0]} "
                        f"outside item_info (1..{num_items})")
    same_user = owner[1:] == owner[:-1]  # (N-1,)
    bad = (np.diff(times) < 0) & same_user
    if bad.any():
        raise DataError(f"{path}: column 'time_seq' of user_index {owner[1:][bad][0]} is not in time order")


def _check_leakage(data_dir: Path, users: np.ndarray, times: np.ndarray, offsets: np.ndarray) -> None:
    """Spec section 2: no compressor input may come from t1 or later."""
    summary = data_dir / SUMMARY
    if not summary.is_file():
        raise DataError(f"{summary}: missing; it holds t1 for the leakage check "
                        "(or build RepresentationData with t1_check=False)")
    try:
        t1 = json.loads(summary.read_text()).get("t1")
    except json.JSONDecodeError as exc:
        raise DataError(f"{summary}: not valid JSON ({exc})") from exc
    if not isinstance(t1, (int, float)) or isinstance(t1, bool):
        raise DataError(f"{summary}: key 't1' must be a number, got {t1!r}")
    late = times >= t1
    if late.any():
        owner = np.repeat(users, np.diff(offsets))[late]
        raise LeakageError(f"{data_dir / REPRESENTATION}: {int(late.sum())} behaviors at or after t1={t1} "
                           f"(first: user_index {owner[0]}, time {times[late][0]}); the compressor may only "
                           "see logs before t1")
