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

import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import DataError
from .log import BehaviorLog

if TYPE_CHECKING:
    import pyarrow as pa

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


def read_atomic(path: Path) -> "pa.Table":
    """A RecBole atomic file as a table of strings, header ``name:type`` reduced to ``name``."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    if not header.strip():
        raise DataError(f"{path}: empty file (expected a header of 'name:type' cells)")
    names = [cell.split(":", 1)[0].strip() for cell in header.split("\t")]
    try:
        return pcsv.read_csv(
            path, read_options=pcsv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pcsv.ConvertOptions(
                column_types={name: pa.string() for name in names}, strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return pa.table({name: pa.array([], pa.string()) for name in names})
        raise DataError(f"{path}: cannot parse as a tab-separated RecBole atomic file: "
                        f"{exc}") from exc


def _require(table: "pa.Table", path: Path, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {table.column_names} "
                        f"(header cells 'name:type', e.g. 'user_id:token')")


def _tokens(table: "pa.Table", column: str, path: Path):
    """Column ``column`` with surrounding blanks removed; DataError if a value is empty."""
    import pyarrow.compute as pc

    values = pc.utf8_trim_whitespace(table.column(column))
    if len(values) and pc.any(pc.equal(values, "")).as_py():
        raise DataError(f"{path}: column '{column}' has empty values")
    return values


def _ids(tokens) -> np.ndarray:
    """Raw id tokens: int64 when every token is an integer, else the strings (object array)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return pc.cast(tokens, pa.int64()).to_numpy()
    except pa.ArrowInvalid:
        return tokens.to_numpy(zero_copy_only=False).astype(object)


def _plain(value: object) -> object:
    """numpy scalars as Python values (for messages)."""
    return value.item() if isinstance(value, np.generic) else value


def _numbers(table: "pa.Table", column: str, path: Path) -> np.ndarray:
    """Column ``column`` as float64; DataError naming the first row that is not a number."""
    import pyarrow as pa
    import pyarrow.compute as pc

    tokens = pc.utf8_trim_whitespace(table.column(column))
    try:
        values = pc.cast(tokens, pa.float64()).to_numpy()
    except pa.ArrowInvalid:
        values = pd.to_numeric(pd.Series(tokens.to_numpy(zero_copy_only=False)),
                               errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise DataError(f"{path}: column '{column}' row {int(bad[0]) + 1} is not a number: "
                        f"{tokens[int(bad[0])].as_py()!r}")
    return values


def _read_events(path: Path) -> pd.DataFrame:
    table = read_atomic(path)
    _require(table, path, INTER_COLUMNS)
    if table.num_rows == 0:
        raise DataError(f"{path}: no interactions")
    rating = _numbers(table, "rating", path)
    return pd.DataFrame({
        "user_id": _ids(_tokens(table, "user_id", path)),
        "item_id": _ids(_tokens(table, "item_id", path)),
        "timestamp": _numbers(table, "timestamp", path).astype(np.int64),
        "label": np.where(rating >= CLICK_RATING, 1, -1).astype(np.int8),
    })


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Events grouped by user, each user's events in stable (timestamp, item) order."""
    user = pd.factorize(events["user_id"], sort=True)[0].astype(np.int64)  # (N,)
    item = pd.factorize(events["item_id"], sort=True)[0].astype(np.int64)  # (N,)
    times, time_rank = np.unique(events["timestamp"].to_numpy(), return_inverse=True)
    sizes = (int(user.max(initial=0)) + 1, len(times), int(item.max(initial=0)) + 1)
    if sizes[0] * sizes[1] * sizes[2] < np.iinfo(np.int64).max:
        key = (user * sizes[1] + time_rank.reshape(-1)) * sizes[2] + item  # (N,) one int64 key
        order = np.argsort(key, kind="stable")  # exact duplicates keep the file order
    else:
        order = np.lexsort((np.arange(len(user)), item, time_rank.reshape(-1), user))
    return events.iloc[order].reset_index(drop=True)


def _read_items(path: Path) -> pd.DataFrame:
    table = read_atomic(path)
    genre = next((c for c in GENRE_COLUMNS if c in table.column_names), None)
    _require(table, path, ("item_id", "movie_title", genre or "class (or genre)"))
    genres = pd.Series(table.column(genre).to_pylist(), dtype=object)
    first = genres.str.replace("|", " ", regex=False).str.split().str[0]
    items = pd.DataFrame({
        "item_id": _ids(_tokens(table, "item_id", path)),
        "cate_id": first.fillna(NO_GENRE).astype(object),
        "movie_title": [t.strip() for t in table.column("movie_title").to_pylist()],
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
