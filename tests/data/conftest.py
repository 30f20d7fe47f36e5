"""Tiny behavior logs shared by the data tests.

``tiny_log`` (fixture) / :func:`make_tiny_log`: 4 users, 6 items used (+ one unused item in the
item table), tied timestamps, a missing category, a 4-d dense ``title_emb``. Hand-computed
expectations for t1 = 3, t2 = 7 are in :data:`TINY_EXPECTED`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fuxictr_chime.data.log import BehaviorLog

# (user, item, time, label); user "d" acts only before t1 = 3, item 16 is never used
# (not in time order; the tie (a, 12, 3) / (a, 13, 3) keeps this order)
TINY_EVENTS = [
    ("a", 10, 1, +1), ("a", 14, 5, +1), ("a", 11, 2, -1), ("a", 12, 3, +1), ("a", 13, 3, +1),
    ("a", 15, 8, +1), ("a", 10, 7, -1),
    ("b", 12, 1, -1), ("b", 13, 2, +1), ("b", 14, 4, -1), ("b", 11, 6, +1), ("b", 12, 8, +1),
    ("c", 10, 4, -1), ("c", 15, 6, +1), ("c", 11, 7, +1),
    ("d", 13, 2, +1),
]
TINY_ITEMS = [(10, "drama"), (11, "comedy"), (12, "drama"), (13, None), (14, "action"),
              (15, "comedy"), (16, "horror")]
TINY_T1, TINY_T2 = 3, 7
TINY_EXPECTED = {
    # user_index: a=1, b=2, c=3, d=4 (sorted raw ids); item_index: 10->1 ... 15->6
    "full_item_seq": [[], [1, 3, 4, 5, 6], [4, 2, 3], [6, 2], [4]],
    "representation": {1: ([1, 2], [1, -1], [1, 2]), 2: ([3, 4], [-1, 1], [1, 2]),
                       4: ([4], [1], [2])},
    "cate_vocab": 4,  # action, comedy, drama (+ 0 for padding / missing)
}


def make_tiny_log(*, dense_width: int = 4, name: str = "tiny") -> BehaviorLog:
    """The tiny hand-made log described in the module docstring."""
    events = pd.DataFrame(TINY_EVENTS, columns=["user_id", "item_id", "timestamp", "label"])
    events["timestamp"] = events["timestamp"].astype(np.int64)
    events["label"] = events["label"].astype(np.int8)
    items = pd.DataFrame(TINY_ITEMS, columns=["item_id", "cate_id"])
    dense = {}
    if dense_width:
        vectors = np.arange(len(TINY_ITEMS) * dense_width, dtype=np.float32)
        items["title_emb"] = list(vectors.reshape(len(TINY_ITEMS), dense_width) / 10)  # (I, d)
        dense = {"title_emb": dense_width}
    return BehaviorLog(events=events, items=items, categorical=["cate_id"], dense=dense, name=name)


@pytest.fixture
def tiny_log() -> BehaviorLog:
    return make_tiny_log()
