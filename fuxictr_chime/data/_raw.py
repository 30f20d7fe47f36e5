"""Plumbing shared by the raw-dataset preparers (``microvideo``, ``tmall``, ``ebnerd``).

Each preparer reads published raw files and returns a :class:`~.log.BehaviorLog`
(docs/ARCHITECTURE.md section 1). The helpers here check files and columns (every error
names the file and the column), convert columns to int64, explode parquet list columns,
keep users with long histories (paper section 5.1) and attach dense side vectors.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from ..errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

_TIME_UNITS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def scalar(value):
    """A numpy scalar as the plain Python value (readable in error messages)."""
    return value.item() if isinstance(value, np.generic) else value


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a Path; DataError naming it when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    return path


def require_columns(found: Sequence[str], needed: Sequence[str], path: str | os.PathLike) -> None:
    """DataError naming ``path`` and the missing column(s) of ``needed``."""
    missing = [c for c in needed if c not in found]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(found)}")


def csv_header(path: Path) -> list[str]:
    """Column names on the first line of a comma-separated file (BOM and spaces stripped)."""
    with open(path, "r", encoding="utf-8-sig") as fh:
        line = fh.readline()
    if not line.strip():
        raise DataError(f"{path}: empty file (expected a header line)")
    return [name.strip() for name in line.rstrip("\r\n").split(",")]


def read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Read ``columns`` of a headed CSV file with pyarrow; DataError on a missing column."""
    require_columns(csv_header(path), columns, path)
    try:
        return pd.read_csv(path, usecols=list(columns), engine="pyarrow")
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot parse as CSV: {exc}") from exc


def as_int64(values: pd.Series, path: Path, column: str, *, fill: int | None = None) -> np.ndarray:
    """Column as int64; missing cells become ``fill`` (DataError when ``fill`` is None).

    Non-numeric or fractional values raise a DataError naming the file, column and value.
    """
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna() & values.notna()
    if bad.any():
        raise DataError(f"{path}: column '{column}' holds non-numeric value "
                        f"{scalar(values[bad].iloc[0])!r}")
    missing = numeric.isna()
    if missing.any():
        if fill is None:
            raise DataError(f"{path}: column '{column}' has {int(missing.sum())} "
                            f"missing value(s)")
        numeric = numeric.fillna(fill)
    arr = numeric.to_numpy()
    if arr.dtype.kind == "f":
        frac = arr != np.floor(arr)
        if frac.any():
            raise DataError(f"{path}: column '{column}' must hold integers, found "
                            f"{scalar(arr[frac][0])!r}")
    return arr.astype(np.int64)


def parquet_table(path: Path, columns: Sequence[str]):
    """Read ``columns`` of a parquet file (pyarrow Table); DataError on a missing column."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several types for a non-parquet file
        raise DataError(f"{path}: cannot read as parquet: {exc}") from exc
    require_columns(names, columns, path)
    return pq.read_table(path, columns=list(columns))


def list_column(table, column: str, path: Path) -> tuple["pa.Array", np.ndarray]:
    """A parquet list column as (flat pyarrow values (E,), per-row lengths (R,)).

    DataError naming the file and column on a null row or a null element.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = table.column(column).combine_chunks()
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise DataError(f"{path}: column '{column}' must be a list column, got {arr.type}")
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: column '{column}' is null in row {row}")
    lengths = pc.list_value_length(arr).to_numpy().astype(np.int64)
    flat = arr.flatten()
    if flat.null_count:
        raise DataError(f"{path}: column '{column}' holds {flat.null_count} null element(s)")
    return flat, lengths


def to_seconds(arr, path: Path, column: str) -> np.ndarray:
    """A pyarrow timestamp (any unit) or integer array as int64 seconds since the epoch."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise DataError(f"{path}: column '{column}' has {arr.null_count} missing time(s)")
    if pa.types.is_timestamp(arr.type):
        raw = pc.cast(arr, pa.int64()).to_numpy()
        return np.floor_divide(raw, _TIME_UNITS[arr.type.unit]).astype(np.int64)
    if pa.types.is_integer(arr.type):
        return arr.to_numpy().astype(np.int64)
    raise DataError(f"{path}: column '{column}' must hold timestamps, got {arr.type}")


def keep_long_histories(events: pd.DataFrame, min_user_actions: int, source: str) -> pd.DataFrame:
    """Keep users with at least ``min_user_actions`` logged actions (paper section 5.1)."""
    if min_user_actions <= 0:
        return events
    counts = events.groupby("user_id", sort=False)["user_id"].transform("size")
    kept = events[counts.to_numpy() >= min_user_actions]
    logger.info("%s: kept %d of %d users with >= %d actions (%d of %d events)", source,
                kept["user_id"].nunique(), events["user_id"].nunique(), min_user_actions,
                len(kept), len(events))
    if kept.empty:
        raise DataError(f"{source}: no user has >= {min_user_actions} actions "
                        f"(option min_user_actions)")
    return kept


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Events in (user_id, timestamp) order; ties keep their input order (stable)."""
    users = events["user_id"].to_numpy()
    if users.dtype.kind not in "iu":
        return events.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    order = np.lexsort((events["timestamp"].to_numpy(), users))  # stable, last key primary
    return events.take(order).reset_index(drop=True)


def check_finite(matrix: np.ndarray, ids: np.ndarray, where: str) -> None:
    """DataError naming ``where`` (file and column) and the first id whose vector is not finite."""
    finite = np.isfinite(matrix).all(axis=1)  # (N,)
    if not finite.all():
        raise DataError(f"{where}: vector of id {scalar(ids[~finite][0])!r} holds NaN or inf")


def vector_table(path: Path, id_column: str, vector_column: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray, str]:
    """Read a parquet file of (id, vector) rows: returns (ids (N,), vectors (N, d), column).

    ``vector_column`` defaults to the file's only list column besides ``id_column``.
    Vectors of differing widths, null vectors, NaN/inf and duplicate ids raise a DataError
    naming the file and the column.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    require_columns(names, [id_column], path)
    if vector_column is None:
        schema = pq.read_schema(path)
        lists = [n for n in names if n != id_column and (
            pa.types.is_list(schema.field(n).type) or pa.types.is_large_list(schema.field(n).type)
            or pa.types.is_fixed_size_list(schema.field(n).type))]
        if len(lists) != 1:
            raise DataError(f"{path}: cannot tell the vector column (list columns {lists}); "
                            f"name it with the vector_column option")
        vector_column = lists[0]
    table = parquet_table(path, [id_column, vector_column])
    ids = table.column(id_column).to_numpy()
    if pa.types.is_fixed_size_list(table.schema.field(vector_column).type):
        table = table.set_column(1, vector_column, table.column(vector_column).cast(
            pa.list_(table.schema.field(vector_column).type.value_type)))
    flat, lengths = list_column(table, vector_column, path)
    width = int(lengths[0]) if len(lengths) else 0
    wrong = np.flatnonzero(lengths != width)
    if len(wrong) or width == 0:
        row = int(wrong[0]) if len(wrong) else 0
        raise DataError(f"{path}: column '{vector_column}': vectors must share one non-zero "
                        f"width; id {scalar(ids[row])!r} has {lengths[row] if len(lengths) else 0} "
                        f"(first has {width})")
    matrix = np.asarray(flat.to_numpy(zero_copy_only=False), np.float32)
    matrix = matrix.reshape(-1, width)  # (N, d)
    check_finite(matrix, ids, f"{path}: column '{vector_column}'")
    dup = pd.Index(ids).duplicated()
    if dup.any():
        raise DataError(f"{path}: column '{id_column}' repeats id {scalar(ids[dup][0])!r}")
    return ids, matrix, vector_column


def gather_vectors(item_ids: np.ndarray, ids: np.ndarray, matrix: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``matrix`` for ``item_ids`` (zeros where absent) and the found mask."""
    pos = pd.Index(ids).get_indexer(item_ids)  # (I,), -1 = no vector
    found = pos >= 0
    out = np.zeros((len(item_ids), matrix.shape[1]), np.float32)  # (I, d)
    out[found] = matrix[pos[found]]
    return out, found


def attach_vectors(items: pd.DataFrame, column: str, vectors: np.ndarray, found: np.ndarray,
                   *, source: str, strict: bool) -> pd.DataFrame:
    """Put ``vectors`` (I, d) into ``items[column]`` (one float32 array per cell).

    Items without a vector (``~found``) keep the zeros vector and a warning gives their
    count; with ``strict`` they raise a DataError instead.
    """
    missing = int((~found).sum())
    if missing:
        example = scalar(items["item_id"].to_numpy()[~found][0])
        message = (f"{source}: {missing} of {len(items)} item(s) have no '{column}' vector, "
                   f"e.g. item_id {example!r}")
        if strict:
            raise DataError(message)
        logger.warning("%s; they get the zeros vector", message)
    items = items.copy()
    items[column] = list(np.ascontiguousarray(vectors, dtype=np.float32))
    return items


def most_frequent_per_item(frame: pd.DataFrame, columns: Sequence[str], source: str
                           ) -> pd.DataFrame:
    """One row per ``item_id`` (sorted): each attribute's most frequent value, ties -> smallest.

    Vectorized: (item, value) codes -> ``np.unique`` counts -> first maximum per item group.
    Logs how many items carry several values in the raw log.
    """
    item_codes, item_ids = pd.factorize(frame["item_id"], sort=True)
    out = {"item_id": np.asarray(item_ids)}
    for col in columns:
        value_codes, values = pd.factorize(frame[col], sort=True)
        if (value_codes < 0).any():
            raise DataError(f"{source}: item attribute '{col}' has missing values")
        pairs, counts = np.unique(item_codes.astype(np.int64) * len(values) + value_codes,
                                  return_counts=True)  # sorted by (item, value)
        item_of = pairs // len(values)  # (P,)
        starts = np.flatnonzero(np.r_[True, item_of[1:] != item_of[:-1]])  # (I,)
        sizes = np.diff(np.r_[starts, len(pairs)])  # (I,)
        best = np.repeat(np.maximum.reduceat(counts, starts), sizes)  # (P,)
        top = np.flatnonzero(counts == best)
        top = top[np.r_[True, item_of[top][1:] != item_of[top][:-1]]]  # first max per item
        out[col] = np.asarray(values)[pairs[top] % len(values)]
        conflicts = int((sizes > 1).sum())
        if conflicts:
            logger.info("%s: %d item(s) have several '%s' values; kept the most frequent",
                        source, conflicts, col)
    return pd.DataFrame(out)


def first_occurrence(*columns: pd.Series | np.ndarray) -> np.ndarray:
    """Bool mask (N,): True at the first occurrence of each row tuple of ``columns``."""
    key = np.zeros(len(columns[0]), np.int64)
    for col in columns:
        codes, uniques = pd.factorize(col)
        if len(key) and (int(key.max()) + 1) * max(len(uniques), 1) >= 2**62:
            key = pd.factorize(key)[0].astype(np.int64)  # compress before widening
        key = key * max(len(uniques), 1) + codes
    return ~pd.Series(key).duplicated().to_numpy()


def load_npy(path: Path) -> np.ndarray:
    """A (N, d) numeric ``.npy`` array, memory-mapped; DataError naming the file otherwise."""
    try:
        matrix = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot read as a .npy array: {exc}") from exc
    if matrix.ndim != 2 or matrix.shape[1] == 0 or matrix.dtype.kind not in "fiu":
        raise DataError(f"{path}: expected a 2-D numeric array (items, width), got shape "
                        f"{matrix.shape} dtype {matrix.dtype}")
    return matrix


def npy_vectors(path: Path, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``item_ids`` of a (N, d) ``.npy`` array (row r = item r): (vectors (I, d), found).

    Items outside [0, N) are not found (zeros). Non-finite rows raise a DataError naming
    the file and the item.
    """
    matrix = load_npy(path)
    ids = np.asarray(item_ids, np.int64)
    found = (ids >= 0) & (ids < len(matrix))
    out = np.zeros((len(ids), matrix.shape[1]), np.float32)  # (I, d)
    out[found] = matrix[ids[found]]
    check_finite(out, ids, str(path))
    return out, found
