"""Write a split behavior log as a prepared dataset folder (docs/ARCHITECTURE.md section 2).

Data protocol of CHIME (spec section 2, paper section 5.1): every logged action at or after t1
becomes a ranking sample whose behavior sequence is the user's positive actions strictly before
the sample's time; every action before t1 becomes compressor input (``representation.parquet``).
The folder is the reczoo LongCTR layout plus the compressor input:

``train/valid/test.parquet``, ``user_info.parquet``, ``item_info.parquet``,
``representation.parquet``, ``dataset_config.yaml`` (FuxiCTR dialect), ``summary.json``;
a preparer may add files and summary blocks of its own (``extra_files`` / ``extra_summary`` of
:func:`write_prepared`: the synthetic preparer's oracle and planted truth).

Indices are 1-based with 0 as padding: users ``user_index`` 1..U, items ``item_index`` 1..I
(items that occur in the events), categorical values 1..V (0 = missing). Users and items are
numbered in sorted order of their raw ids (first-seen order if the ids cannot be sorted).
Events of a user are ordered by (timestamp, position in the log); ties keep the log's order.

Everything is computed with numpy / pyarrow array operations (no Python loop over events), then
written file by file through :mod:`fuxictr_chime.io` (temporary file, then rename), and only
after every table has been built, so a failed run writes nothing.

Context columns (event columns besides user_id, item_id, timestamp, label) are copied into the
split files: float columns as ``numeric`` float32 features, any other column encoded 1..V as a
``categorical`` feature.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import ConfigError, DataError
from ..io import write_json_atomic, write_parquet_atomic, write_yaml_atomic
from .log import EVENT_COLUMNS, BehaviorLog, check_dense_column
from .split import PART_NAMES, REPRESENTATION, Split, assert_no_leakage
from .summary import sample_stats, sequence_stats

logger = logging.getLogger(__name__)

RANKING_PARTS = ("train", "valid", "test")
META_COLUMNS = ("user_index", "item_index", "seq_len")
RESERVED = frozenset(META_COLUMNS + ("timestamp", "label", "item_id", "item_seq", "seq_mask",
                                     "full_item_seq", "full_time_seq", "chime_hist", "learn_emb"))
DENSE_EMBEDDING_DIM = 64  # FuxiCTR embedding_dim of an item-side dense vector feature


@dataclass
class PreparedTables:
    """Everything a prepared folder holds, built in memory before any file is written."""

    splits: dict[str, pa.Table]
    user_info: pa.Table
    item_info: pa.Table
    representation: pa.Table
    config: dict
    summary: dict
    representation_times: np.ndarray  # (R,) time of every representation event (leakage guard)


@dataclass
class _Encoded:
    """The log as integer arrays, one entry per event, plus the item table in index order."""

    user: np.ndarray      # (N,) int64 user_index 1..U
    item: np.ndarray      # (N,) int64 item_index 1..I
    time: np.ndarray      # (N,) int64
    label: np.ndarray     # (N,) int8 +1 / -1
    key: np.ndarray       # (N,) int64 user * R + rank(time), R = number of distinct times
    order: np.ndarray     # (N,) rows sorted by (user, time, log position)
    chrono: np.ndarray    # (N,) rows sorted by (time, user, log position)
    n_users: int
    item_rows: np.ndarray  # (I,) row of log.items for item_index 1..I


def write_prepared(log: BehaviorLog, split: Split, out_dir: str | os.PathLike, *,
                   max_len: int = 1000, dataset_id: str | None = None,
                   extra_summary: dict | None = None,
                   extra_files: dict[str, object] | None = None) -> dict:
    """Write the prepared folder of ``log`` split by ``split`` into ``out_dir``.

    Args:
        log: the behavior log (validated here).
        split: :func:`fuxictr_chime.data.split.split_by_time` of the same log.
        out_dir: target folder (created if missing; existing files of the layout are replaced).
        max_len: long-sequence length the ranking models use (dataset config ``max_len``
            and the cap of the history statistics); default 1000.
        dataset_id: FuxiCTR dataset id; default ``log.name``.
        extra_summary: more top-level blocks for ``summary.json`` (e.g. the synthetic
            preparer's ``oracle``); a key of the standard summary is a DataError.
        extra_files: more files of the folder, name -> content: ``*.json`` a JSON-ready dict,
            ``*.parquet`` a pyarrow Table or pandas DataFrame; a name of the layout is a
            DataError. Written before ``summary.json``.

    Returns:
        The summary dict also saved as ``summary.json``.
    """
    tables = build_tables(log, split, max_len=max_len, dataset_id=dataset_id)
    extra_files = _check_extras(tables.summary, extra_summary or {}, extra_files or {})
    tables.summary.update(extra_summary or {})
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output path exists and is not a folder")
    assert_no_leakage(tables.representation_times, split.t1, str(out / "representation.parquet"))
    for name, table in tables.splits.items():
        write_parquet_atomic(table, out / f"{name}.parquet")
    write_parquet_atomic(tables.item_info, out / "item_info.parquet")
    write_parquet_atomic(tables.user_info, out / "user_info.parquet")
    write_parquet_atomic(tables.representation, out / "representation.parquet")
    write_yaml_atomic(out / "dataset_config.yaml", tables.config)
    for name, content in extra_files.items():
        if name.endswith(".json"):
            write_json_atomic(out / name, content)
        else:
            write_parquet_atomic(content, out / name)
    write_json_atomic(out / "summary.json", tables.summary)
    logger.info("wrote prepared dataset '%s' to %s", tables.summary["dataset_id"], out)
    return tables.summary


LAYOUT_FILES = frozenset({f"{name}.parquet" for name in RANKING_PARTS + (
    "user_info", "item_info", "representation")} | {"dataset_config.yaml", "summary.json"})


def _check_extras(summary: dict, extra_summary: dict, extra_files: dict) -> dict:
    """DataError on an extra summary key or file name that clashes with the standard ones."""
    clash = sorted(set(extra_summary) & set(summary))
    if clash:
        raise DataError(f"extra summary block(s) {clash} clash with the standard summary keys")
    for name in extra_files:
        if name in LAYOUT_FILES or Path(name).name != name:
            raise DataError(f"extra file {name!r}: must be a plain file name outside the "
                            f"prepared layout {sorted(LAYOUT_FILES)}")
        if not name.endswith((".json", ".parquet")):
            raise DataError(f"extra file {name!r}: only .json and .parquet files are written")
    return dict(extra_files)


def build_tables(log: BehaviorLog, split: Split, *, max_len: int = 1000,
                 dataset_id: str | None = None) -> PreparedTables:
    """Compute every table of the prepared folder in memory (see :func:`write_prepared`)."""
    dataset_id = str(dataset_id or log.name)
    if int(max_len) < 1:
        raise ConfigError(f"max_len must be a positive integer, got {max_len!r}")
    log.validate(f"{dataset_id} behavior log")
    if len(split.parts) != len(log.events):
        raise DataError(f"{dataset_id}: split has {len(split.parts)} entries but the log has "
                        f"{len(log.events)} events (split of another log?)")
    _check_reserved(log, dataset_id)
    enc = _encode_events(log)
    seq_len, user_info = _histories(enc)
    item_info, item_specs = _item_info(log, enc, dataset_id)
    context, context_specs = _context_columns(log, dataset_id)
    splits, stats = {}, {}
    for part in RANKING_PARTS:
        rows = enc.chrono[split.parts[enc.chrono] == PART_NAMES.index(part)]  # time order
        splits[part] = _split_table(rows, enc, seq_len, context)
        stats[part] = sample_stats(enc.user[rows], enc.item[rows], seq_len[rows],
                                   enc.label[rows] > 0, int(max_len))
    representation, rep_rows, rep_lengths = _representation(enc, split)
    stats["representation"] = sequence_stats(rep_lengths, enc.item[rep_rows])
    config = {dataset_id: _dataset_block(item_specs, context_specs, int(max_len))}
    summary = {
        "dataset_id": dataset_id, "t1": split.t1, "t2": split.t2, "t_valid": split.t_valid,
        "max_len": int(max_len), "users": enc.n_users, "items": len(enc.item_rows),
        "events": len(enc.time),
        "partitions": {name: stats[name] for name in PART_NAMES},
    }
    return PreparedTables(splits=splits, user_info=user_info, item_info=item_info,
                          representation=representation, config=config, summary=summary,
                          representation_times=enc.time[rep_rows])


def _check_reserved(log: BehaviorLog, dataset_id: str) -> None:
    item_cols = list(log.categorical) + list(log.dense)
    context = [c for c in log.events.columns if c not in EVENT_COLUMNS]
    for col in item_cols + context:
        if col in RESERVED:
            raise DataError(f"{dataset_id}: column '{col}' clashes with a column of the "
                            f"prepared layout; rename it")
    both = sorted(set(item_cols) & set(context))
    if both:
        raise DataError(f"{dataset_id}: column(s) {both} are both item attributes and "
                        f"event context columns")


def encode_values(values: pd.Series | np.ndarray) -> tuple[np.ndarray, int]:
    """Codes 1..V of raw values (sorted order when sortable; missing -> 0), and V + 1."""
    codes, uniques = _factorize(values)
    return codes, len(uniques) + 1


def _factorize(values: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1-based codes int64, raw value of code k + 1 at position k)."""
    try:
        codes, uniques = pd.factorize(values, sort=True)
    except TypeError:  # mixed types that cannot be compared
        codes, uniques = pd.factorize(values, sort=False)
    return codes.astype(np.int64) + 1, np.asarray(uniques)


def _encode_events(log: BehaviorLog) -> _Encoded:
    events = log.events
    user, raw_users = _factorize(events["user_id"])
    item, raw_items = _factorize(events["item_id"])
    item_rows = pd.Index(log.items["item_id"]).get_indexer(raw_items)  # (I,)
    if (item_rows < 0).any():
        missing = raw_items[item_rows < 0][0]
        missing = missing.item() if isinstance(missing, np.generic) else missing
        raise DataError(f"{log.name}: item_id {missing!r} of the events not "
                        f"found in the item table (check the item_id dtypes of both tables)")
    time = events["timestamp"].to_numpy().astype(np.int64)
    label = events["label"].to_numpy().astype(np.int8)
    distinct, time_rank = np.unique(time, return_inverse=True)  # (R,), (N,)
    n_users = len(raw_users)
    if (n_users + 1) * len(distinct) >= np.iinfo(np.int64).max:
        raise DataError(f"{log.name}: too many users x distinct timestamps to index "
                        f"({n_users} x {len(distinct)})")
    time_rank = time_rank.astype(np.int64).reshape(-1)  # (N,)
    key = user * np.int64(len(distinct)) + time_rank  # (N,) orders by (user, time)
    order = np.argsort(key, kind="stable")  # stable: ties keep the log order
    chrono = np.argsort(time_rank * np.int64(n_users + 1) + user, kind="stable")
    return _Encoded(user=user, item=item, time=time, label=label, key=key, order=order,
                    chrono=chrono, n_users=n_users, item_rows=item_rows)


def _histories(enc: _Encoded) -> tuple[np.ndarray, pa.Table]:
    """seq_len of every event and user_info (positives of each user, whole log, time order).

    seq_len(u, t) = #{positives of u with time < t}: positives sorted by the key
    user * R + rank(time) (R distinct times), so a left searchsorted of the sample's key
    counts exactly the user's positives strictly before t (same time is not before).
    """
    positives = enc.order[enc.label[enc.order] > 0]  # (P,) sorted by (user, time, log order)
    counts = np.bincount(enc.user[positives], minlength=enc.n_users + 1)  # (U+1,)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # (U+2,)
    sorted_keys = enc.key[enc.order]  # (N,) ascending: queries in order run cache-friendly
    before = np.searchsorted(enc.key[positives], sorted_keys, side="left")  # (N,)
    seq_len = np.empty(len(enc.key), dtype=np.int64)
    seq_len[enc.order] = before - offsets[enc.user[enc.order]]  # (N,)
    user_info = pa.table({
        "user_index": np.arange(enc.n_users + 1, dtype=np.int64),
        "full_item_seq": list_column(offsets, enc.item[positives], pa.int64()),
        "full_time_seq": list_column(offsets, enc.time[positives], pa.int64()),
    })
    return seq_len, user_info


def _item_info(log: BehaviorLog, enc: _Encoded, dataset_id: str) -> tuple[pa.Table, list[dict]]:
    """item_info (row i = item_index i, row 0 padding) and the item feature specs."""
    n_items = len(enc.item_rows)
    index = np.arange(n_items + 1, dtype=np.int64)
    columns = {"item_index": index, "item_id": index}
    specs = [{"name": "item_id", "active": True, "dtype": "int", "type": "categorical",
              "source": "item", "vocab_size": n_items + 1}]
    items = log.items.iloc[enc.item_rows]
    for col in log.categorical:
        codes, vocab = encode_values(items[col])
        columns[col] = np.concatenate([[0], codes]).astype(np.int64)  # (I+1,)
        specs.append({"name": col, "active": True, "dtype": "int", "type": "categorical",
                      "source": "item", "vocab_size": int(vocab)})
    for col, width in log.dense.items():
        matrix = check_dense_column(items[col], int(width),
                                    f"{dataset_id}: item column '{col}'")  # (I, d)
        padded = np.vstack([np.zeros((1, int(width)), np.float32), matrix])  # (I+1, d)
        columns[col] = vector_column(padded)
        specs.append({"name": col, "active": True, "dtype": "list", "type": "embedding",
                      "source": "item", "pretrain_dim": int(width),
                      "embedding_dim": DENSE_EMBEDDING_DIM})
    return pa.table(columns), specs


def list_column(offsets: np.ndarray, values: np.ndarray, kind: pa.DataType) -> pa.Array:
    """CSR (offsets (N+1,) int64, flat values) -> pyarrow ``list<kind>`` column of N rows."""
    large = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(values, kind))
    return large.cast(pa.list_(kind))


def vector_column(matrix: np.ndarray) -> pa.Array:
    """(N, d) float matrix -> pyarrow list<float32> column, one d-vector per row."""
    n, d = matrix.shape
    flat = np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1)  # (N * d,)
    offsets = np.arange(0, (n + 1) * d, d, dtype=np.int32)  # (N + 1,)
    return pa.ListArray.from_arrays(offsets, flat)


def _context_columns(log: BehaviorLog, dataset_id: str) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Encoded context columns (one value per event) and their feature specs."""
    columns, specs = {}, []
    for col in (c for c in log.events.columns if c not in EVENT_COLUMNS):
        values = log.events[col]
        if pd.api.types.is_float_dtype(values.dtype):
            data = values.to_numpy(dtype=np.float32)
            if not np.isfinite(data).all():
                raise DataError(f"{dataset_id}: context column '{col}' holds NaN or inf")
            columns[col] = data
            specs.append({"name": col, "active": True, "dtype": "float", "type": "numeric"})
        else:
            codes, vocab = encode_values(values)
            columns[col] = codes
            specs.append({"name": col, "active": True, "dtype": "int", "type": "categorical",
                          "vocab_size": int(vocab)})
    return columns, specs


def _split_table(rows: np.ndarray, enc: _Encoded, seq_len: np.ndarray,
                 context: dict[str, np.ndarray]) -> pa.Table:
    columns = {
        "user_index": enc.user[rows],
        "item_index": enc.item[rows],
        "seq_len": seq_len[rows],
        "timestamp": enc.time[rows],
        "label": (enc.label[rows] > 0).astype(np.float32),
    }
    columns.update({name: values[rows] for name, values in context.items()})
    return pa.table(columns)


def _representation(enc: _Encoded, split: Split) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """One row per user with events before t1: all of them (both labels) in time order.

    Returns the table, the event rows it holds (in table order) and each user's length.
    """
    rows = enc.order[split.parts[enc.order] == REPRESENTATION]  # (R,) sorted by (user, time)
    users, counts = np.unique(enc.user[rows], return_counts=True)  # (U_r,)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # (U_r + 1,)

    table = pa.table({
        "user_index": users.astype(np.int64),
        "item_seq": list_column(offsets, enc.item[rows], pa.int64()),
        "label_seq": list_column(offsets, enc.label[rows], pa.int8()),
        "time_seq": list_column(offsets, enc.time[rows], pa.int64()),
    })
    return table, rows, counts


def _dataset_block(item_specs: list[dict], context_specs: list[dict], max_len: int) -> dict:
    """FuxiCTR dataset config block; paths relative to the YAML's folder."""
    return {
        "data_root": "./",
        "data_format": "parquet",
        "train_data": "./train.parquet",
        "valid_data": "./valid.parquet",
        "test_data": "./test.parquet",
        "user_info": "./user_info.parquet",
        "item_info": "./item_info.parquet",
        "rebuild_dataset": False,
        "feature_cols": [{"name": list(META_COLUMNS), "active": True, "dtype": "int",
                          "type": "meta"}] + item_specs + context_specs,
        "label_col": {"name": "label", "dtype": "float"},
        "max_len": max_len,
    }
