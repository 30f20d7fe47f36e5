"""MicroVideo1.7M (THACIL, Chen et al., MM 2018) raw files -> :class:`BehaviorLog`.

CHIME paper section 5.1: a CTR dataset of micro-video clicks with 64-d cover-image vectors.
Raw files, as THACIL publishes them, in the folder given as ``raw_dir``:

* ``train_data.csv``, ``test_data.csv``: header ``user_id,item_id,cate_id,is_click,timestamp``,
  one impression per row (``is_click`` 1 = click, 0 = no click).
* ``train_cover_image_feature.npy`` (N_train, 512) and ``test_cover_image_feature.npy``
  (N_test, 512): row r is the cover-image vector of item id r of that file's csv.

The test videos are new (no overlap with training videos) and their item ids start again at
0, so test ids are re-mapped to ``offset + id`` with ``offset`` = rows of the train vector
file (at least max train id + 1), as reczoo BARS' converter does. The paper's 64-d vectors
are the 512-d ones reduced by PCA fitted on all rows of both vector files (as BARS does);
``image_dim=None`` keeps the raw width.

BARS' converted release (MicroVideo1.7M_x1: ``train.csv``, ``test.csv`` with the same first
five columns and test ids already re-mapped, plus ``item_image_emb_dim64.h5`` with datasets
``key``/``value``) is read as well when ``train_data.csv`` is absent.

Output: events ``user_id, item_id, timestamp, label`` (+1 click / -1 no click); item
attribute ``cate_id``; dense ``image_emb``. Defaults: ``DEFAULT_T1 = "q0.4"`` (paper Table 1
implies about 39% of the log before t1), ``DEFAULT_T2 = "q0.9"`` (test about 17% of the ranking
samples, as in Table 1), ``MIN_HISTORY = 100`` actions per user.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from . import _raw
from .log import BehaviorLog

logger = logging.getLogger(__name__)

DEFAULT_T1 = "q0.4"
DEFAULT_T2 = "q0.9"
MIN_HISTORY = 100
IMAGE_DIM = 64
CSV_FILES = ("train_data.csv", "test_data.csv")
VECTOR_FILES = ("train_cover_image_feature.npy", "test_cover_image_feature.npy")
BARS_CSV_FILES = ("train.csv", "test.csv")
BARS_VECTOR_FILE = "item_image_emb_dim64.h5"
COLUMNS = ("user_id", "item_id", "cate_id", "is_click", "timestamp")
DENSE = "image_emb"


def load(raw_dir: str | os.PathLike, *, min_user_actions: int = MIN_HISTORY,
         image_emb: str | None = "auto", image_dim: int | None = IMAGE_DIM,
         strict: bool = False, chunk_rows: int = 65536) -> BehaviorLog:
    """Read THACIL's MicroVideo1.7M files into a behavior log.

    Args:
        raw_dir: folder with ``train_data.csv``, ``test_data.csv`` and the two vector files
            (THACIL), or with BARS' ``train.csv``, ``test.csv``, ``item_image_emb_dim64.h5``.
        min_user_actions: keep users with at least this many logged actions. Default 100.
        image_emb: ``"auto"`` (default): the two ``*_cover_image_feature.npy`` files of
            ``raw_dir`` (BARS layout: its ``item_image_emb_dim64.h5``); a path to one vector file in the re-mapped id space instead (``.npy``
            with row r = item r, or ``.h5`` with datasets ``key``/``value`` such as BARS'
            ``item_image_emb_dim64.h5``); None: no dense column.
        image_dim: PCA target width (default 64, the paper's); None keeps the file's width.
        strict: an item without a vector raises instead of getting zeros and a warning.
        chunk_rows: rows per block when reading vectors (memory bound).
    """
    raw = Path(raw_dir)
    bars = _is_bars_layout(raw)
    if not bars and not (raw / CSV_FILES[0]).is_file():
        raise DataError(f"{raw / CSV_FILES[0]}: MicroVideo log not found (nor BARS' "
                        f"{BARS_CSV_FILES[0]})")
    csv_files = BARS_CSV_FILES if bars else CSV_FILES
    train = _read_log(raw / csv_files[0])
    test = _read_log(raw / csv_files[1])
    parts = _vector_parts(raw, image_emb, bars)
    if not bars:  # THACIL: test ids restart at 0
        offset = int(train["item_id"].max()) + 1
        if image_emb == "auto":
            offset = max(offset, len(parts[0].matrix))
            parts[1].first_id = offset
        test["item_id"] += offset
    events = _raw.keep_long_histories(pd.concat([train, test], ignore_index=True),
                                      min_user_actions, str(raw))
    events = _raw.sort_events(events)
    items = _raw.most_frequent_per_item(events, ["cate_id"], str(raw))
    dense = {}
    if parts:
        vectors, found = _item_vectors(parts, items["item_id"].to_numpy(), image_dim, chunk_rows)
        items = _raw.attach_vectors(items, DENSE, vectors, found, source=str(raw), strict=strict)
        dense = {DENSE: vectors.shape[1]}
    log = BehaviorLog(events[["user_id", "item_id", "timestamp", "label"]], items,
                      categorical=["cate_id"], dense=dense, name="microvideo")
    return log.validate(str(raw))


def _read_log(path: Path) -> pd.DataFrame:
    """One THACIL csv as int64 columns plus ``label`` (+1 click / -1 no click)."""
    frame = _raw.read_csv(_raw.require_file(path, "MicroVideo log"), COLUMNS)
    out = pd.DataFrame({c: _raw.as_int64(frame[c], path, c) for c in COLUMNS})
    bad = ~out["is_click"].isin([0, 1])
    if bad.any():
        raise DataError(f"{path}: column 'is_click' must be 0 or 1, found "
                        f"{out.loc[bad, 'is_click'].iloc[0]}")
    out["label"] = np.where(out["is_click"].to_numpy() == 1, 1, -1).astype(np.int8)
    return out.drop(columns="is_click")


@dataclass
class _Part:
    """One vector file: row r holds item ``first_id + r``, or item ``keys[r]`` when given."""

    path: Path
    matrix: np.ndarray  # (N, d), memory-mapped for .npy
    first_id: int = 0
    keys: np.ndarray | None = None

    def rows_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each item in this file, -1 where absent. (I,)"""
        if self.keys is not None:
            return pd.Index(self.keys).get_indexer(item_ids)
        rows = item_ids - self.first_id
        return np.where((rows >= 0) & (rows < len(self.matrix)), rows, -1)


def _is_bars_layout(raw: Path) -> bool:
    """False for THACIL's files, True for BARS' MicroVideo1.7M_x1 files (test ids re-mapped)."""
    if (raw / CSV_FILES[0]).is_file() or not (raw / BARS_CSV_FILES[0]).is_file():
        return False
    logger.info("%s: BARS MicroVideo1.7M_x1 layout (%s)", raw, ", ".join(BARS_CSV_FILES))
    return True


def _vector_parts(raw: Path, image_emb: str | None, bars: bool) -> list[_Part]:
    if image_emb is None:
        return []
    if image_emb == "auto" and bars:
        return [_load_h5(_raw.require_file(raw / BARS_VECTOR_FILE, "cover-image vector file"))]
    if image_emb == "auto":
        parts = [_Part(_raw.require_file(raw / f, "cover-image vector file"),
                       _raw.load_npy(raw / f)) for f in VECTOR_FILES]
        widths = {p.matrix.shape[1] for p in parts}
        if len(widths) != 1:
            raise DataError(f"{parts[1].path}: vector width {parts[1].matrix.shape[1]} differs "
                            f"from {parts[0].matrix.shape[1]} in {parts[0].path}")
        return parts
    path = _raw.require_file(image_emb, "image vector file (option image_emb)")
    if path.suffix == ".npy":
        return [_Part(path, _raw.load_npy(path))]
    if path.suffix in (".h5", ".hdf5"):
        return [_load_h5(path)]
    raise ConfigError(f"image_emb: {path} must be a .npy or .h5 file")


def _load_h5(path: Path) -> _Part:
    import h5py

    with h5py.File(path, "r") as fh:
        _raw.require_columns(list(fh.keys()), ["key", "value"], path)
        keys = np.asarray(fh["key"][:]).astype(np.int64)
        matrix = np.asarray(fh["value"][:])
    if matrix.ndim != 2 or len(matrix) != len(keys):
        raise DataError(f"{path}: dataset 'value' must be (len(key), width), got {matrix.shape} "
                        f"for {len(keys)} keys")
    return _Part(path, matrix, keys=keys)


def _item_vectors(parts: list[_Part], item_ids: np.ndarray, image_dim: int | None,
                  chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of ``item_ids`` (I, d_out), PCA-reduced when wider than ``image_dim``."""
    width = parts[0].matrix.shape[1]
    if image_dim is not None and image_dim > width:
        raise ConfigError(f"image_dim {image_dim} exceeds the width {width} of the vectors in "
                          f"{parts[0].path}")
    pca = None
    if image_dim is not None and image_dim < width:
        pca = fit_pca(_blocks(parts, chunk_rows), image_dim)
        logger.info("image vectors: PCA %d -> %d fitted on %d rows", width, image_dim,
                    sum(len(p.matrix) for p in parts))
    out_dim = image_dim if pca is not None else width
    out = np.zeros((len(item_ids), out_dim), np.float32)  # (I, d_out)
    found = np.zeros(len(item_ids), bool)
    for part in parts:
        rows = part.rows_of(item_ids)
        for start in range(0, len(rows), chunk_rows):
            sel = np.flatnonzero(rows[start:start + chunk_rows] >= 0) + start
            if not len(sel):
                continue
            block = np.asarray(part.matrix[rows[sel]], np.float32)  # (n, d)
            _raw.check_finite(block, item_ids[sel], f"{part.path}")
            out[sel] = pca.transform(block) if pca is not None else block
            found[sel] = True
    return out, found


def _blocks(parts: list[_Part], chunk_rows: int) -> Iterator[np.ndarray]:
    """Blocks of ``chunk_rows`` rows over every vector file, finiteness checked. (n, d)"""
    for part in parts:
        for start in range(0, len(part.matrix), chunk_rows):
            block = np.asarray(part.matrix[start:start + chunk_rows], np.float64)  # (n, d)
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                raise DataError(f"{part.path}: row {start + int(np.flatnonzero(~finite)[0])} "
                                f"holds NaN or inf")
            yield block


@dataclass
class PCA:
    """A fitted principal-component projection: ``(x - mean) @ components.T``."""

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d), rows by decreasing variance

    def transform(self, x: np.ndarray) -> np.ndarray:
        centered = np.asarray(x, np.float64) - self.mean  # (N, d)
        return (centered @ self.components.T).astype(np.float32)  # (N, k)


def fit_pca(chunks: Iterator[np.ndarray], dim: int) -> PCA:
    """PCA from streamed row blocks (one pass: sums and the scatter matrix in float64).

    Components are the top ``dim`` eigenvectors of the covariance, each signed so that its
    largest-magnitude entry is positive (scikit-learn's convention), so the result equals
    ``sklearn.decomposition.PCA(dim).fit`` up to floating-point error.
    """
    count, total, scatter = 0, None, None
    for block in chunks:
        x = np.asarray(block, np.float64)  # (n, d)
        if total is None:
            total, scatter = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        count += len(x)
        total += x.sum(axis=0)
        scatter += x.T @ x  # (d, d)
    if count < 2:
        raise DataError(f"PCA needs at least 2 vectors, got {count}")
    mean = total / count
    cov = scatter / count - np.outer(mean, mean)  # (d, d)
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues; columns are eigenvectors
    comps = vecs[:, ::-1][:, :dim].T  # (k, d)
    pivot = np.abs(comps).argmax(axis=1)  # (k,)
    comps = comps * np.sign(comps[np.arange(dim), pivot])[:, None]  # (k, d)
    return PCA(mean=mean, components=comps)
