"""EBNeRD (Ekstra Bladet News Recommendation Dataset) parquet files -> :class:`BehaviorLog`.

CHIME paper section 5.1: CTR on news impression logs with 768-d BERT article vectors.
Raw files, as published (``ebnerd_demo`` / ``ebnerd_small`` / ``ebnerd_large``), under
``raw_dir``:

* ``<split>/behaviors.parquet`` for each split (``train``, ``validation``): one impression
  per row; used columns ``impression_id`` (uint32), ``impression_time`` (timestamp[us]),
  ``article_ids_inview`` (list<int32>), ``article_ids_clicked`` (list<int32>), ``user_id``
  (uint32).
* ``<split>/history.parquet``: one row per user; ``user_id``, ``article_id_fixed``
  (list<int32>) and ``impression_time_fixed`` (list<timestamp[us]>), the user's reads in the
  21 days before that split's impressions.
* ``articles.parquet``: ``article_id`` (int32), ``category`` (int16), ``subcategory``
  (list<int16>).
* an article-vector parquet: ``article_id`` and one list column, e.g. Ekstra Bladet's
  ``google_bert_base_multilingual_cased/bert_base_multilingual_cased.parquet`` (column
  ``google-bert/bert-base-multilingual-cased``, 768 floats), searched in ``raw_dir`` and its
  parent (``article_emb="auto"``) or given as a path.

Events: one per in-view article of an impression (+1 if it is among the impression's
clicked articles, else -1, timestamp = impression time in int64 seconds) and one per history
read (+1, timestamp = read time). The two history files overlap (the validation history
covers the train week), so identical reads are counted once, and by default only reads
before the first impression are kept: later reads repeat the impressions' clicks
(``history_reads``). Item attributes ``category`` and ``subcategory`` (first element, -1
when empty); dense ``article_emb`` with the file's width.

Defaults: ``DEFAULT_T1 = "q0.4"``, ``DEFAULT_T2 = "q0.9"`` (test about 17% of the ranking
samples, as in paper Table 1), ``MIN_HISTORY = 100`` events per user.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from . import _raw
from .log import BehaviorLog

logger = logging.getLogger(__name__)

DEFAULT_T1 = "q0.4"
DEFAULT_T2 = "q0.9"
MIN_HISTORY = 100
SPLITS = ("train", "validation")
BEHAVIOR_COLUMNS = ("impression_id", "impression_time", "article_ids_inview",
                    "article_ids_clicked", "user_id")
HISTORY_COLUMNS = ("user_id", "impression_time_fixed", "article_id_fixed")
ARTICLE_COLUMNS = ("article_id", "category", "subcategory")
EMBEDDING_FILES = (
    "google_bert_base_multilingual_cased/bert_base_multilingual_cased.parquet",
    "bert_base_multilingual_cased.parquet",
    "artifacts/google_bert_base_multilingual_cased/bert_base_multilingual_cased.parquet",
)
HISTORY_READS = ("before_impressions", "all", "none")
MISSING = -1
DENSE = "article_emb"


def load(raw_dir: str | os.PathLike, *, splits: Sequence[str] = SPLITS,
         article_emb: str | os.PathLike | None = "auto", vector_column: str | None = None,
         history_reads: str = "before_impressions", min_user_actions: int = MIN_HISTORY,
         strict: bool = False) -> BehaviorLog:
    """Read EBNeRD impressions, histories, articles and article vectors into a behavior log.

    Args:
        raw_dir: the dataset folder (``articles.parquet`` and one folder per split).
        splits: split folders to read. Default ``("train", "validation")`` (the test set
            has no clicks and cannot be used).
        article_emb: ``"auto"`` (default): the BERT vector file found in ``raw_dir`` or its
            parent (:data:`EMBEDDING_FILES`); a path to a parquet of ``article_id`` + one
            list column; None: no dense column.
        vector_column: the vector column when the file has several list columns.
        history_reads: ``"before_impressions"`` (default), ``"all"`` or ``"none"``.
        min_user_actions: keep users with at least this many events. Default 100.
        strict: an article missing from ``articles.parquet`` or the vector file raises
            instead of getting -1 attributes / zeros and a warning.
    """
    raw = Path(raw_dir)
    if history_reads not in HISTORY_READS:
        raise ConfigError(f"history_reads must be one of {list(HISTORY_READS)}, "
                          f"got {history_reads!r}")
    if not splits:
        raise ConfigError("splits: name at least one split folder, e.g. ['train']")
    impressions = pd.concat([impression_events(raw / s / "behaviors.parquet") for s in splits],
                            ignore_index=True)
    reads = _select_reads([history_events(raw / s / "history.parquet") for s in splits],
                          impressions, history_reads)
    events = _raw.keep_long_histories(pd.concat([reads, impressions], ignore_index=True),
                                      min_user_actions, str(raw))
    events = _raw.sort_events(events)
    items = _articles(raw / "articles.parquet", np.unique(events["item_id"].to_numpy()), strict)
    dense = {}
    emb_path = _embedding_path(raw, article_emb)
    if emb_path is not None:
        ids, matrix, _ = _raw.vector_table(emb_path, "article_id", vector_column)
        vectors, found = _raw.gather_vectors(items["item_id"].to_numpy(), ids, matrix)
        items = _raw.attach_vectors(items, DENSE, vectors, found, source=str(emb_path),
                                    strict=strict)
        dense = {DENSE: matrix.shape[1]}
    log = BehaviorLog(events, items, categorical=["category", "subcategory"], dense=dense,
                      name="ebnerd")
    return log.validate(str(raw))


def impression_events(path: Path) -> pd.DataFrame:
    """One event per in-view article of each impression: +1 if clicked, else -1."""
    table = _raw.parquet_table(_raw.require_file(path, "EBNeRD behaviors file"),
                               BEHAVIOR_COLUMNS)
    inview, n_inview = _raw.list_column(table, "article_ids_inview", path)
    clicked, n_clicked = _raw.list_column(table, "article_ids_clicked", path)
    inview = inview.to_numpy(zero_copy_only=False).astype(np.int64)  # (E,)
    clicked = clicked.to_numpy(zero_copy_only=False).astype(np.int64)  # (K,)
    rows = np.arange(table.num_rows, dtype=np.int64)
    span = int(max(inview.max(initial=0), clicked.max(initial=0))) + 1
    view_key = np.repeat(rows, n_inview) * span + inview  # (E,) (impression row, article)
    click_key = np.repeat(rows, n_clicked) * span + clicked  # (K,)
    label = np.where(_member(view_key, click_key), 1, -1).astype(np.int8)
    unseen = int((~_member(click_key, view_key)).sum())
    if unseen:
        logger.info("%s: %d clicked article(s) are not in view of their impression; ignored",
                    path, unseen)
    seconds = _raw.to_seconds(table.column("impression_time"), path, "impression_time")
    users = _raw.as_int64(table.column("user_id").to_pandas(), path, "user_id")
    return pd.DataFrame({"user_id": np.repeat(users, n_inview), "item_id": inview,
                         "timestamp": np.repeat(seconds, n_inview), "label": label})


def _member(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``np.isin(keys, table)`` by binary search in the sorted table. (N,) bool"""
    table = np.sort(table)
    if not len(table):
        return np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(table, keys), len(table) - 1)
    return table[pos] == keys


def history_events(path: Path) -> pd.DataFrame:
    """One +1 event per read of a history file (``article_id_fixed``, ``impression_time_fixed``)."""
    table = _raw.parquet_table(_raw.require_file(path, "EBNeRD history file"), HISTORY_COLUMNS)
    articles, n_articles = _raw.list_column(table, "article_id_fixed", path)
    times, n_times = _raw.list_column(table, "impression_time_fixed", path)
    if not np.array_equal(n_articles, n_times):
        row = int(np.flatnonzero(n_articles != n_times)[0])
        raise DataError(f"{path}: row {row}: columns 'article_id_fixed' and "
                        f"'impression_time_fixed' differ in length "
                        f"({n_articles[row]} vs {n_times[row]})")
    users = _raw.as_int64(table.column("user_id").to_pandas(), path, "user_id")
    items = _raw.as_int64(pd.Series(articles.to_numpy(zero_copy_only=False)), path,
                          "article_id_fixed")
    return pd.DataFrame({"user_id": np.repeat(users, n_articles), "item_id": items,
                         "timestamp": _raw.to_seconds(times, path, "impression_time_fixed"),
                         "label": np.ones(len(items), np.int8)})


def _select_reads(parts: list[pd.DataFrame], impressions: pd.DataFrame, mode: str) -> pd.DataFrame:
    """History reads, each counted once; by default only those before the first impression."""
    reads = pd.concat(parts, ignore_index=True)
    reads = reads[_raw.first_occurrence(reads["user_id"], reads["item_id"], reads["timestamp"])]
    if mode == "none":
        return reads.iloc[:0]
    if mode == "before_impressions" and len(impressions):
        first = int(impressions["timestamp"].min())
        logger.info("history reads: kept %d of %d (before the first impression, t=%d)",
                    int((reads["timestamp"] < first).sum()), len(reads), first)
        reads = reads[reads["timestamp"].to_numpy() < first]
    return reads


def _articles(path: Path, item_ids: np.ndarray, strict: bool) -> pd.DataFrame:
    """``category`` and first ``subcategory`` of each event article (-1 when unknown)."""
    table = _raw.parquet_table(_raw.require_file(path, "EBNeRD articles file"), ARTICLE_COLUMNS)
    ids = _raw.as_int64(table.column("article_id").to_pandas(), path, "article_id")
    category = _raw.as_int64(table.column("category").to_pandas(), path, "category", fill=MISSING)
    sub_values, n_sub = _first_subcategory(table, path)
    pos = pd.Index(ids).get_indexer(item_ids)  # (I,), -1 = not in articles.parquet
    missing = int((pos < 0).sum())
    if missing:
        message = (f"{path}: {missing} of {len(item_ids)} event article(s) are missing, "
                   f"e.g. article_id {item_ids[pos < 0][0]}")
        if strict:
            raise DataError(message)
        logger.warning("%s; they get category/subcategory %d", message, MISSING)
    take = np.maximum(pos, 0)
    return pd.DataFrame({
        "item_id": item_ids,
        "category": np.where(pos >= 0, category[take], MISSING),
        "subcategory": np.where((pos >= 0) & (n_sub[take] > 0), sub_values[take], MISSING),
    })


def _first_subcategory(table, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """First element of each ``subcategory`` list (-1 when empty or null) and list lengths."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = table.column("subcategory").combine_chunks()
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise DataError(f"{path}: column 'subcategory' must be a list column, got {arr.type}")
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype(np.int64)  # (A,)
    values = pc.fill_null(arr.values, MISSING).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = arr.offsets.to_numpy()[:-1].astype(np.int64)  # (A,) absolute positions in values
    first = np.full(len(arr), MISSING, np.int64)
    has = lengths > 0
    first[has] = values[starts[has]]
    return first, lengths


def _embedding_path(raw: Path, article_emb: str | os.PathLike | None) -> Path | None:
    if article_emb is None:
        return None
    if str(article_emb) != "auto":
        return _raw.require_file(article_emb, "article vector file (option article_emb)")
    tried = [base / name for base in (raw, raw.parent) for name in EMBEDDING_FILES]
    for path in tried:
        if path.is_file():
            return path
    raise DataError(f"article vector file not found; looked for {[str(p) for p in tried]}; "
                    f"pass article_emb=PATH or article_emb=None")
