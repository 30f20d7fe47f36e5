"""Random behavior logs for tests and benchmarks (no real data involved)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .log import BehaviorLog


def synthetic_log(n_users: int = 100, n_items: int = 50, n_events: int = 2000, *,
                  n_times: int | None = None, n_categories: int = 5,
                  dense: dict[str, int] | None = None, positive_rate: float = 0.5,
                  seed: int = 0, name: str = "synthetic") -> BehaviorLog:
    """A random :class:`BehaviorLog`.

    Users ``u0..`` (strings) and items ``1000..`` (ints) are drawn uniformly; timestamps are
    drawn from ``n_times`` distinct values (default ``n_events // 4``, so many ties); items carry
    a ``cate_id`` attribute (strings, one missing value when ``n_items > 1``) and one dense vector
    per entry of ``dense`` (name -> width, default none). Every user and item occurs in the
    events only with high probability; the item table lists all ``n_items`` items.
    """
    rng = np.random.default_rng(seed)
    n_times = n_times or max(1, n_events // 4)
    users = np.array([f"u{i}" for i in range(n_users)], dtype=object)
    events = pd.DataFrame({
        "user_id": users[rng.integers(0, n_users, n_events)],
        "item_id": rng.integers(1000, 1000 + n_items, n_events).astype(np.int64),
        "timestamp": (rng.integers(0, n_times, n_events) * 10 + 5).astype(np.int64),
        "label": np.where(rng.random(n_events) < positive_rate, 1, -1).astype(np.int8),
    })
    categories = np.array([f"c{i}" for i in range(n_categories)], dtype=object)
    items = pd.DataFrame({
        "item_id": np.arange(1000, 1000 + n_items, dtype=np.int64),
        "cate_id": categories[rng.integers(0, n_categories, n_items)],
    })
    if n_items > 1:
        items.loc[1, "cate_id"] = None
    for col, width in (dense or {}).items():
        vectors = rng.standard_normal((n_items, width)).astype(np.float32)  # (I, d)
        items[col] = list(vectors)
    return BehaviorLog(events=events, items=items, categorical=["cate_id"],
                       dense=dict(dense or {}), name=name)
