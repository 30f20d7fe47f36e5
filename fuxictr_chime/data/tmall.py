"""Tmall (IJCAI-15 repeat-buyers user log) raw file -> :class:`BehaviorLog` for CVR.

CHIME paper section 5.1: "We use it for CVR estimation, predicting if a user adds the
product to the cart after a click." Raw file, as Tianchi publishes it (``data_format1``):

* ``user_log_format1.csv`` (in ``raw_dir`` or ``raw_dir/data_format1/``): header
  ``user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type``; ``time_stamp`` is
  month and day as one integer ``mmdd`` (``511`` = May 11, ``1111`` = Nov 11), no year;
  ``action_type`` 0 click, 1 add-to-cart, 2 purchase, 3 add-to-favourite; ``brand_id`` may
  be empty.

The CVR rule (:func:`cvr_labels`): every click (action 0) is one sample; its label is +1 if
the same user performs a conversion action (default: add-to-cart, action 1) on the same item
on the click's day or any later day of the log (within ``max_delay_days`` days when given),
else -1. The log has day resolution, so a same-day cart counts as "after" the click.
Identical clicks (same user, item, day) are one sample (``dedup_clicks``).

Timestamp: ``mmdd`` -> day index within the year 2015 (Jan 1 = 0; ``511`` -> 130,
``1111`` -> 314), int64. Item attributes ``cat_id``, ``seller_id``, ``brand_id`` (an empty
brand is its own value, -1). Optional dense ``image_emb`` from ``image_emb=FILE``.
Defaults: ``DEFAULT_T1 = "q0.4"``, ``DEFAULT_T2 = "q0.9"`` (test about 16% of the ranking
samples, as in paper Table 1), ``MIN_HISTORY = 500`` clicks per user (the paper keeps
13,610 heavy users; its threshold is not published).
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
MIN_HISTORY = 500
LOG_FILE = "user_log_format1.csv"
COLUMNS = ("user_id", "item_id", "cat_id", "seller_id", "brand_id", "time_stamp", "action_type")
ATTRIBUTES = ("cat_id", "seller_id", "brand_id")
CLICK, CART, BUY, FAV = 0, 1, 2, 3
YEAR = 2015
MISSING_BRAND = -1
DENSE = "image_emb"
_MONTH_START = np.concatenate([[0], np.cumsum([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])])


def load(raw_dir: str | os.PathLike, *, min_user_actions: int = MIN_HISTORY,
         image_emb: str | os.PathLike | None = None, vector_column: str | None = None,
         conversion_actions: Sequence[int] = (CART,), max_delay_days: int | None = None,
         dedup_clicks: bool = True, strict: bool = False) -> BehaviorLog:
    """Read the IJCAI-15 user log into a CVR behavior log (one event per click).

    Args:
        raw_dir: folder holding ``user_log_format1.csv`` (or ``data_format1/`` with it).
        min_user_actions: keep users with at least this many clicks. Default 500.
        image_emb: optional item vector file: ``.parquet`` with ``item_id`` and one list
            column (or ``vector_column``), or ``.npy`` with row r = item_id r. The paper uses
            256-d CLIP vectors of the product images. Default None: no dense column.
        vector_column: the vector column of a parquet ``image_emb`` file.
        conversion_actions: action types that make a click positive. Default (1,) cart.
        max_delay_days: a conversion counts only within this many days after the click
            (None, the default: any later day of the log).
        dedup_clicks: one sample per (user, item, day) of clicks. Default True.
        strict: an item without a vector raises instead of getting zeros and a warning.
    """
    raw = Path(raw_dir)
    path = _log_path(raw)
    frame = _read_log(path)
    clicks = frame[frame["action_type"].to_numpy() == CLICK]
    if dedup_clicks:
        clicks = clicks[_raw.first_occurrence(clicks["user_id"], clicks["item_id"],
                                              clicks["timestamp"])]
    conversions = frame[frame["action_type"].isin(list(_check_actions(conversion_actions)))]
    clicks = clicks.assign(label=cvr_labels(clicks, conversions, max_delay_days))
    logger.info("%s: %d click samples, %.2f%% positive", path, len(clicks),
                100.0 * float((clicks["label"] == 1).mean()) if len(clicks) else 0.0)
    clicks = _raw.sort_events(_raw.keep_long_histories(clicks, min_user_actions, str(path)))
    items = _raw.most_frequent_per_item(clicks, ATTRIBUTES, str(path))
    dense = {}
    if image_emb is not None:
        items = _attach_images(items, Path(image_emb), vector_column, strict)
        dense = {DENSE: len(items[DENSE].iloc[0])}
    log = BehaviorLog(clicks[["user_id", "item_id", "timestamp", "label"]].reset_index(drop=True),
                      items, categorical=list(ATTRIBUTES), dense=dense, name="tmall")
    return log.validate(str(path))


def cvr_labels(clicks: pd.DataFrame, conversions: pd.DataFrame,
               max_delay_days: int | None = None) -> np.ndarray:
    """+1 / -1 (int8) per click: a conversion on the same (user, item) at day d with
    ``click_day <= d`` (and ``d - click_day <= max_delay_days`` when given).

    Vectorized: each click looks up the first conversion of its (user, item) pair on or
    after its day with one ``np.searchsorted`` over (pair, day) keys.
    """
    users = pd.factorize(np.concatenate([clicks["user_id"], conversions["user_id"]]))[0]
    items = pd.factorize(np.concatenate([clicks["item_id"], conversions["item_id"]]))[0]
    n_items = int(items.max(initial=-1)) + 1
    days = np.concatenate([clicks["timestamp"], conversions["timestamp"]])
    span = int(days.max(initial=0)) + 1
    if (int(users.max(initial=-1)) + 1) * n_items * span >= 2**62:
        raise DataError("cvr_labels: too many (user, item, day) combinations for int64 keys")
    codes = users.astype(np.int64) * n_items + items  # (C + V,) one code per (user, item)
    click_key = codes[:len(clicks)] * span + clicks["timestamp"].to_numpy()  # (C,)
    conv_key = np.sort(codes[len(clicks):] * span + conversions["timestamp"].to_numpy())  # (V,)
    pos = np.searchsorted(conv_key, click_key, side="left")  # first conversion >= click
    nxt = conv_key[np.minimum(pos, len(conv_key) - 1)] if len(conv_key) else click_key - 1
    same_pair = (pos < len(conv_key)) & (nxt // span == click_key // span)
    ok = same_pair if max_delay_days is None else same_pair & (nxt - click_key <= max_delay_days)
    return np.where(ok, 1, -1).astype(np.int8)


def day_index(mmdd: np.ndarray, path: Path, column: str = "time_stamp") -> np.ndarray:
    """``mmdd`` integers -> day index within 2015 (Jan 1 = 0); DataError on an invalid date."""
    month, day = mmdd // 100, mmdd % 100
    ok = (month >= 1) & (month <= 12)
    length = np.diff(_MONTH_START)[np.clip(month - 1, 0, 11)]
    ok &= (day >= 1) & (day <= length)
    if not ok.all():
        raise DataError(f"{path}: column '{column}' holds {mmdd[~ok][0]}, not a valid mmdd "
                        f"date of {YEAR}")
    return (_MONTH_START[month - 1] + day - 1).astype(np.int64)


def _log_path(raw: Path) -> Path:
    for path in (raw / LOG_FILE, raw / "data_format1" / LOG_FILE):
        if path.is_file():
            return path
    raise DataError(f"{raw / LOG_FILE}: Tmall user log not found (also looked in "
                    f"{raw / 'data_format1'})")


def _read_log(path: Path) -> pd.DataFrame:
    """The user log as int64 columns with ``timestamp`` (day index) instead of ``time_stamp``."""
    frame = _raw.read_csv(path, COLUMNS)
    out = pd.DataFrame({c: _raw.as_int64(frame[c], path, c,
                                         fill=MISSING_BRAND if c == "brand_id" else None)
                        for c in COLUMNS})
    bad = ~out["action_type"].isin([CLICK, CART, BUY, FAV])
    if bad.any():
        raise DataError(f"{path}: column 'action_type' must be 0..3, found "
                        f"{out.loc[bad, 'action_type'].iloc[0]}")
    out["timestamp"] = day_index(out["time_stamp"].to_numpy(), path)
    return out.drop(columns="time_stamp")


def _check_actions(actions: Sequence[int]) -> list[int]:
    actions = [int(a) for a in actions]
    if not actions or any(a not in (CART, BUY, FAV) for a in actions):
        raise ConfigError(f"conversion_actions must be a non-empty subset of (1 cart, 2 buy, "
                          f"3 fav), got {actions}")
    return actions


def _attach_images(items: pd.DataFrame, path: Path, vector_column: str | None,
                   strict: bool) -> pd.DataFrame:
    _raw.require_file(path, "image vector file (option image_emb)")
    item_ids = items["item_id"].to_numpy()
    if path.suffix == ".npy":
        vectors, found = _raw.npy_vectors(path, item_ids)
    elif path.suffix == ".parquet":
        ids, matrix, _ = _raw.vector_table(path, "item_id", vector_column)
        vectors, found = _raw.gather_vectors(item_ids, ids, matrix)
    else:
        raise ConfigError(f"image_emb: {path} must be a .parquet or .npy file")
    return _raw.attach_vectors(items, DENSE, vectors, found, source=str(path), strict=strict)
