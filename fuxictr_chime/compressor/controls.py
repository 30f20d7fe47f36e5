"""Non-learned controls for the compressed user column: does CHIME beat counting?

The evaluation notes ("Controls that separate information from plumbing") ask every compressed
column to be compared with trivial features of the same budget, built from the same input. Both
controls read the representation set exactly as the compressors do (:class:`.data.RepresentationData`:
``representation.parquet``, every behavior before t1, leakage-checked against ``summary.json``;
item attributes from ``item_info.parquet``), but keep *all* of a user's behaviors (no ``max_len``
cut) and learn nothing:

* ``hist_ctrl`` (64 float32): the frequency histogram of the categories of the user's
  **positive** behaviors (label +1) before t1; the row sums to 1 (``normalize=False``: raw
  counts). Negatives are left out: a histogram of what the user liked, as a category-count
  scorer would build it (the positive rate is the STATS control's job). Binning, fixed per data
  folder and deterministic (:func:`category_bins`, :func:`popularity_bins`):

  - the item attribute is ``attribute`` or, by default, the first categorical (integer) column
    of ``item_info.parquet`` besides ``item_index`` / ``item_id`` (``cate_id`` for MovieLens,
    MicroVideo and the synthetic logs, ``cat_id`` for Tmall, ``category`` for EBNeRD);
  - categories are ranked by their number of representation-set positives (most first, ties by
    the smaller value); with at most 64 categories among the positives each gets its own bin
    (bin = rank, unused bins stay 0); with more, the 63 most frequent get bins 0..62 and all
    others share bin 63 ("other");
  - without a categorical attribute, item ids are binned by popularity rank: at most 64 items:
    one bin per item (bin = rank); more: items sorted by positive count (most first, ties by
    the smaller id) cut into 64 bins of about equal positive mass (bin = floor(64 x positives of
    the items ranked before / all positives)); items never positive fall in bin 63.

* ``stats_ctrl`` (2 float32): ``[positive rate, log(1 + history length)]`` of the user before
  t1, with history length = number of behaviors (both labels) and positive rate = positives /
  history length.

Users without history before t1 (and row 0, the padding row) get all zeros in both columns, as
they do in ``chime_hist``; a user whose history has no positive gets a zero histogram (its STATS
row, ``[0, log(1 + n)]``, still tells it from a user without history).

:func:`export_controls` writes the columns into a prepared folder (or a benchmark's data view)
as ``compress export`` writes ``chime_hist`` (:func:`.export.write_user_column`,
:func:`.export.update_dataset_config` with :func:`.export.feature_spec`, all atomic), plus
``<column>.json`` (definition, binning, counts), written last. CLI: ``fuxictr-chime compress
controls --data DIR [--which hist,stats]``. Model variants ``<Model>_HIST`` / ``<Model>_STATS``
(:mod:`fuxictr_chime.models.registry`) read the columns; ``bench table2 --variants ...,HIST,STATS``
adds the rows "X w/ HIST" / "X w/ STATS". No FuxiCTR import here.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError
from ..io import write_json_atomic
from .data import RepresentationData

logger = logging.getLogger(__name__)

__all__ = ["CONTROLS", "HIST_COLUMN", "STATS_COLUMN", "N_BINS", "category_bins", "popularity_bins",
           "hist_features", "stats_features", "export_controls"]

HIST_COLUMN, STATS_COLUMN = "hist_ctrl", "stats_ctrl"
CONTROLS = {"hist": HIST_COLUMN, "stats": STATS_COLUMN}  # --which name -> exported column
N_BINS = 64  # chime_hist's budget: 32 + 16 + 16 floats
DEFINITIONS = {
    "hist": "frequency histogram of the categories of the user's positive behaviors before t1 "
            "(representation set); zeros without a positive",
    "stats": "[positive rate, log(1 + number of behaviors)] of the user's behaviors before t1; "
             "zeros without history",
}


def read_representation(data_dir: str | os.PathLike) -> RepresentationData:
    """Every behavior before t1 of every user (no ``max_len`` cut), checked as the compressors check it."""
    return RepresentationData(data_dir, max_len=sys.maxsize)


def category_bins(counts: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Bin of each category value (``counts[v]``: positives of value v); -1 where unused.

    Ranked by count (most first, ties by the smaller value); at most ``n_bins`` categories with
    a positive: bin = rank; more: the ``n_bins - 1`` most frequent get bins 0..n_bins-2, every
    other value (also those without positives) the last bin ("other")."""
    counts = np.asarray(counts, dtype=np.int64)
    order = np.lexsort((np.arange(len(counts)), -counts))  # count desc, then value asc
    seen = int((counts > 0).sum())
    bins = np.full(len(counts), -1 if seen <= n_bins else n_bins - 1, dtype=np.int64)
    top = order[:seen] if seen <= n_bins else order[:n_bins - 1]
    bins[top] = np.arange(len(top))
    return bins


def popularity_bins(counts: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Bin of each item id (``counts[i]``: positives of item i; index 0 = padding, bin -1).

    Items ranked by count (most first, ties by the smaller id); at most ``n_bins`` items:
    bin = rank; more: ``floor(n_bins * positives of the items ranked before / all positives)``
    (about equal positive mass per bin), items without a positive in the last bin."""
    counts = np.asarray(counts, dtype=np.int64).copy()
    counts[0] = 0
    items = np.arange(1, len(counts))
    order = items[np.lexsort((items, -counts[items]))]  # (I,) count desc, then id asc
    bins = np.full(len(counts), -1, dtype=np.int64)
    if len(items) <= n_bins:
        bins[order] = np.arange(len(order))
        return bins
    total = int(counts.sum())
    before = np.cumsum(counts[order]) - counts[order]  # (I,) positives of the items ranked before
    ranked = (n_bins * before) // max(total, 1)
    bins[order] = np.where(counts[order] > 0, np.minimum(ranked, n_bins - 1), n_bins - 1)
    return bins


def hist_features(data: RepresentationData, *, attribute: str | None = None, n_bins: int = N_BINS,
                  normalize: bool = True) -> tuple[np.ndarray, dict]:
    """``hist_ctrl``: (max user_index + 1, n_bins) float32 by user_index, and the binning
    (``{"attribute", "binning", "bin_of" or "items_per_bin", ...}``). See the module docstring."""
    users, offsets, items, labels = _behaviors(data)
    attrs = _attributes(data)
    if attribute is not None and attribute not in attrs:
        raise ConfigError(f"{data.data_dir / 'item_info.parquet'}: no categorical attribute {attribute!r} "
                          f"(categorical: {sorted(attrs) or 'none'})")
    name = attribute or next(iter(attrs), None)
    positive = labels == 1  # (N,)
    if name is None:  # no categorical attribute: item ids by popularity rank
        keys = items  # (N,)
        bin_of = popularity_bins(np.bincount(keys[positive], minlength=data.num_items + 1), n_bins)
    else:
        keys = attrs[name][items]  # (N,) the category of every behavior
        bin_of = category_bins(np.bincount(keys[positive], minlength=int(attrs[name].max()) + 1), n_bins)
    owner = np.repeat(np.arange(len(users)), np.diff(offsets))  # (N,) row of each behavior's user
    flat = owner[positive] * n_bins + bin_of[keys[positive]]  # (P,)
    counts = np.bincount(flat, minlength=len(users) * n_bins).reshape(len(users), n_bins)  # (U, n_bins)
    hist = counts.astype(np.float64)
    if normalize:
        hist /= np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    features = _by_user_index(data, users, hist)
    info = {"attribute": name or "item_id", "binning": "popularity rank" if name is None else "category",
            "values_with_positives": int((np.bincount(keys[positive], minlength=len(bin_of)) > 0).sum()),
            "bins": n_bins, "normalize": bool(normalize)}
    if name is None:  # one entry per item would be large: the number of items per bin
        info["items_per_bin"] = np.bincount(bin_of[bin_of >= 0], minlength=n_bins).tolist()
    else:  # category value -> bin, for every value with a bin (string keys, as in the JSON)
        info["bin_of"] = {str(v): int(bin_of[v]) for v in np.flatnonzero(bin_of >= 0)}
    return features, info


def stats_features(data: RepresentationData) -> np.ndarray:
    """``stats_ctrl``: (max user_index + 1, 2) float32 ``[positive rate, log(1 + history length)]``."""
    users, offsets, _, labels = _behaviors(data)
    lengths = np.diff(offsets)  # (U,)
    owner = np.repeat(np.arange(len(users)), lengths)  # (N,)
    positives = np.bincount(owner, weights=(labels == 1).astype(np.float64), minlength=len(users))  # (U,)
    rows = np.stack([positives / np.maximum(lengths, 1), np.log1p(lengths)], axis=1)  # (U, 2)
    return _by_user_index(data, users, rows)


def export_controls(data_dir: str | os.PathLike, *, which: Sequence[str] = tuple(CONTROLS),
                    attribute: str | None = None, normalize: bool = True) -> dict[str, dict]:
    """Write the controls ``which`` (``hist``, ``stats``) into the prepared folder ``data_dir``.

    Per control: its column in ``user_info.parquet`` (one row per user_info user, as before),
    its feature spec in ``dataset_config.yaml`` (``active: true``, ``pretrain_dim`` = width) and
    ``<column>.json`` (definition, binning, counts; written last, so it marks a finished export).
    Returns ``{name: stats}``.
    """
    from .export import DATASET_CONFIG, USER_INFO, feature_spec, update_dataset_config, write_user_column

    unknown = [w for w in which if w not in CONTROLS]
    if unknown or not which:
        raise ConfigError(f"unknown control(s) {unknown or list(which)}; known: {', '.join(CONTROLS)}")
    data_dir = Path(data_dir)
    started = time.perf_counter()
    data = read_representation(data_dir)
    out = {}
    for name in dict.fromkeys(which):
        column = CONTROLS[name]
        if name == "hist":
            features, info = hist_features(data, attribute=attribute, normalize=normalize)
        else:
            features, info = stats_features(data), {"values": ["positive rate", "log(1 + history length)"]}
        write_user_column(data_dir / USER_INFO, column, features)
        update_dataset_config(data_dir / DATASET_CONFIG, feature_spec(column, features.shape[1]))
        stats = {"column": column, "width": int(features.shape[1]), "users": len(data.all_users()),
                 "users_with_history": len(data), "definition": DEFINITIONS[name], **info,
                 "seconds": round(time.perf_counter() - started, 3)}
        write_json_atomic(data_dir / f"{column}.json", stats)
        logger.info("exported %s (%d floats) for %d users (%d with history) into %s", column, stats["width"],
                    stats["users"], stats["users_with_history"], data_dir)
        out[name] = stats
    return out



# ---------------------------------------------------------------------------- helpers
def _behaviors(data: RepresentationData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(users (U,), offsets (U+1,), items (N,), labels (N,) +1/-1) as RepresentationData stores
    them (users ascending, each user's behaviors in time order; all of them with max_len=maxsize)."""
    return data._users, data._offsets, data._items, data._labels


def _attributes(data: RepresentationData) -> dict[str, np.ndarray]:
    """Categorical item attributes by item_index (I+1,), in item_info column order."""
    return data._attrs


def _by_user_index(data: RepresentationData, users: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(max user_index + 1, d) float32: ``rows`` at ``users``, zeros elsewhere (row 0 = padding)."""
    known = data.all_users()  # every user_info user (DataError if a history user is not among them)
    features = np.zeros((max(known, default=0) + 1, rows.shape[1]), dtype=np.float32)
    features[users] = rows
    return features
