"""MovieLens in RecBole atomic-file format -> :class:`BehaviorLog` (the embedded demo dataset).

Input folder: exactly one ``*.inter`` and one ``*.item`` file, tab separated, header cells
``name:type`` (the ``:type`` suffix is stripped). Columns are found by name:

* ``*.inter``: ``user_id``, ``item_id``, ``rating``, ``timestamp``;
* ``*.item``: ``item_id``, ``movie_title``, and the genres in ``class`` (ml-100k) or
  ``genre`` / ``genres`` (ml-1m style), space- or ``|``-separated; other columns are ignored.

Default folder: ``recbole/dataset_example/ml-100k`` inside the installed ``recbole`` wheel
(MovieLens-100K; never imported, only located; its terms forbid redistribution, so nothing
derived from it is committed).

Behavior log (spec section 2): label +1 if rating >= 4 (a "click") else -1; each user's events
in stable (timestamp, item) order (ratings arrive in sessions with tied times); item attribute
``cate_id`` = first genre (``"unknown"`` if none); dense ``title_emb`` = the title embedded by the
frozen MiniLM (384-d, :mod:`fuxictr_chime.data.text_encoder`) unless ``encode_titles=False``.
"""
from __future__ import annotations

import csv
import importlib.util
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import DataError
from .log import BehaviorLog

logger = logging.getLogger(__name__)

RECBOLE_PACKAGE = "recbole"
RECBOLE_WHEEL = "recbole==1.2.1"
INTER_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
GENRE_COLUMNS = ("class", "genre", "genres")
CLICK_RATING = 4.0
NO_GENRE = "unknown"
DEFAULT_T1 = "q0.5"
DEFAULT_T2 = "q0.8"


def default_source() -> Path:
    """``recbole/dataset_example/ml-100k`` of the installed wheel (located, never imported)."""
    spec = importlib.util.find_spec(RECBOLE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the default MovieLens source needs the '{RECBOLE_PACKAGE}' wheel: "
                        f"pip install --no-deps {RECBOLE_WHEEL}, or pass --source DIR")
    folder = Path(spec.submodule_search_locations[0]) / "dataset_example" / "ml-100k"
    if not folder.is_dir():
        raise DataError(f"{folder}: ml-100k folder not found in the installed recbole wheel")
    return folder


def load(source_dir: str | os.PathLike | None = None, *, encode_titles: bool = True,
         text_encoder: Callable[[Sequence[str]], np.ndarray] | None = None,
         min_user_actions: int = 0, name: str = "movielens") -> BehaviorLog:
    """Read RecBole MovieLens atomic files into a :class:`BehaviorLog`.

    Args:
        source_dir: folder with one ``*.inter`` and one ``*.item``; default :func:`default_source`.
        encode_titles: add the 384-d ``title_emb`` dense column (default True).
        text_encoder: texts -> (N, d) float32; default the frozen MiniLM (cached on disk).
        min_user_actions: drop users with fewer events (default 0: keep all).
        name: dataset name (FuxiCTR dataset_id), default ``"movielens"``.
    """
    folder = Path(source_dir) if source_dir is not None else default_source()
    inter_path, item_path = _atomic_files(folder)
    events, items = _match_id_types(_read_events(inter_path), _read_items(item_path), item_path)
    items = _add_missing_items(items, events, item_path)
    if min_user_actions > 0:
        counts = events.groupby("user_id")["item_id"].transform("size")
        events = events.loc[counts >= min_user_actions]
        logger.info("kept %d events of users with >= %d actions", len(events), min_user_actions)
    events = sort_events(events)
    dense = {}
    if encode_titles:
        encoder = text_encoder or _minilm_encoder()
        vectors = np.asarray(encoder(items["movie_title"].tolist()), dtype=np.float32)  # (I, d)
        if vectors.ndim != 2 or len(vectors) != len(items):
            raise DataError(f"{item_path}: text encoder returned shape {vectors.shape} for "
                            f"{len(items)} titles")
        items["title_emb"] = list(vectors)
        dense = {"title_emb": int(vectors.shape[1])}
    items = items.drop(columns=["movie_title"])
    log = BehaviorLog(events=events, items=items, categorical=["cate_id"], dense=dense, name=name)
    return log.validate(str(folder))


def _minilm_encoder() -> Callable[[Sequence[str]], np.ndarray]:
    from .text_encoder import TextEncoder

    return TextEncoder().encode


def _atomic_files(folder: Path) -> tuple[Path, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: MovieLens source folder not found")
    found = {}
    for suffix in ("inter", "item"):
        files = sorted(folder.glob(f"*.{suffix}"))
        if len(files) != 1:
            raise DataError(f"{folder}: expected exactly one *.{suffix} file (RecBole atomic "
                            f"format), found {[f.name for f in files]}")
        found[suffix] = files[0]
    return found["inter"], found["item"]


def read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file as strings, header ``name:type`` reduced to ``name``."""
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False,
                            quoting=csv.QUOTE_NONE, engine="c")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot parse as a tab-separated RecBole atomic file: "
                        f"{exc}") from exc
    frame.columns = [str(c).split(":", 1)[0].strip() for c in frame.columns]
    return frame


def _require(frame: pd.DataFrame, path: Path, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)} "
                        f"(header cells 'name:type', e.g. 'user_id:token')")


def _ids(values: pd.Series) -> pd.Series:
    """Raw id tokens: int64 when every token is an integer, else the strings."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().all() and (numbers == np.floor(numbers)).all():
        return numbers.astype(np.int64)
    return values.astype(object)


def _plain(value: object) -> object:
    """numpy scalars as Python values (for messages)."""
    return value.item() if isinstance(value, np.generic) else value


def _numbers(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise DataError(f"{path}: column '{column}' row {int(bad[0]) + 1} is not a number: "
                        f"{frame[column].iloc[bad[0]]!r}")
    return values


def _read_events(path: Path) -> pd.DataFrame:
    frame = read_atomic(path)
    _require(frame, path, INTER_COLUMNS)
    if len(frame) == 0:
        raise DataError(f"{path}: no interactions")
    for col in ("user_id", "item_id"):
        if (frame[col].str.strip() == "").any():
            raise DataError(f"{path}: column '{col}' has empty values")
    rating = _numbers(frame, "rating", path)
    events = pd.DataFrame({
        "user_id": _ids(frame["user_id"].str.strip()),
        "item_id": _ids(frame["item_id"].str.strip()),
        "timestamp": _numbers(frame, "timestamp", path).astype(np.int64),
        "label": np.where(rating >= CLICK_RATING, 1, -1).astype(np.int8),
    })
    return events


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Events grouped by user, each user's events in stable (timestamp, item) order."""
    order = np.lexsort((np.arange(len(events)),
                        pd.factorize(events["item_id"], sort=True)[0],
                        events["timestamp"].to_numpy(),
                        pd.factorize(events["user_id"], sort=True)[0]))
    return events.iloc[order].reset_index(drop=True)


def _read_items(path: Path) -> pd.DataFrame:
    frame = read_atomic(path)
    genre = next((c for c in GENRE_COLUMNS if c in frame.columns), None)
    _require(frame, path, ("item_id", "movie_title", genre or "class (or genre)"))
    first = frame[genre].str.replace("|", " ", regex=False).str.split().str[0]
    items = pd.DataFrame({
        "item_id": _ids(frame["item_id"].str.strip()),
        "cate_id": first.fillna(NO_GENRE).astype(object),
        "movie_title": frame["movie_title"].str.strip(),
    })
    if items["item_id"].duplicated().any():
        dup = items.loc[items["item_id"].duplicated(), "item_id"].iloc[0]
        raise DataError(f"{path}: column 'item_id' has duplicate value {_plain(dup)!r}")
    return items


def _match_id_types(events: pd.DataFrame, items: pd.DataFrame,
                    path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Integer item ids in one file and non-integer ones in the other: compare as strings."""
    if events["item_id"].dtype == items["item_id"].dtype:
        return events, items
    logger.info("%s: item ids are integers in one file only; comparing them as strings", path)
    events = events.assign(item_id=events["item_id"].astype(str).astype(object))
    items = items.assign(item_id=items["item_id"].astype(str).astype(object))
    return events, items


def _add_missing_items(items: pd.DataFrame, events: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Items rated in the .inter file but absent from the .item file: no title, no genre."""
    missing = pd.unique(events.loc[~events["item_id"].isin(items["item_id"]), "item_id"])
    if len(missing) == 0:
        return items
    logger.warning("%s: %d rated item(s) have no row (e.g. %r); using an empty title and "
                   "genre '%s'", path, len(missing), _plain(missing[0]), NO_GENRE)
    extra = pd.DataFrame({"item_id": missing, "cate_id": NO_GENRE, "movie_title": ""})
    return pd.concat([items, extra], ignore_index=True)
