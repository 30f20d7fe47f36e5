"""The canonical behavior log every preparer produces (docs/ARCHITECTURE.md section 1)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import DataError

EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "label")


@dataclass
class BehaviorLog:
    """A time-stamped log of (user, item, label) actions plus an item attribute table.

    Attributes:
        events: one row per action: ``user_id``, ``item_id``, ``timestamp`` (int64),
            ``label`` (int8, +1 / -1), optional context columns.
        items: one row per raw ``item_id``: categorical attributes and dense side vectors
            (each cell a 1-D float32 array of the column's width).
        categorical: item attribute columns of ``items`` (besides ``item_id``).
        dense: dense column name -> width.
        name: dataset name (used as FuxiCTR ``dataset_id``).
    """

    events: pd.DataFrame
    items: pd.DataFrame
    categorical: list[str] = field(default_factory=list)
    dense: dict[str, int] = field(default_factory=dict)
    name: str = "dataset"

    def validate(self, source: str) -> "BehaviorLog":
        """Check the log; raise :class:`DataError` naming ``source`` and the column at fault."""
        missing = [c for c in EVENT_COLUMNS if c not in self.events.columns]
        if missing:
            raise DataError(f"{source}: behavior log lacks column(s) {missing}; "
                            f"found {list(self.events.columns)}")
        if len(self.events) == 0:
            raise DataError(f"{source}: behavior log is empty")
        labels = pd.unique(self.events["label"])
        bad = sorted(set(np.asarray(labels).tolist()) - {1, -1})
        if bad:
            raise DataError(f"{source}: column 'label' must hold +1/-1, found {bad[:5]}")
        if not np.issubdtype(self.events["timestamp"].dtype, np.integer):
            raise DataError(f"{source}: column 'timestamp' must be integer, "
                            f"got {self.events['timestamp'].dtype}")
        for col in ("user_id", "item_id", "timestamp"):
            if self.events[col].isna().any():
                raise DataError(f"{source}: column '{col}' has missing values")
        if "item_id" not in self.items.columns:
            raise DataError(f"{source}: item table lacks column 'item_id'")
        if self.items["item_id"].duplicated().any():
            dup = self.items.loc[self.items["item_id"].duplicated(), "item_id"].iloc[0]
            raise DataError(f"{source}: item table has duplicate item_id {dup!r}")
        for col in list(self.categorical) + list(self.dense):
            if col not in self.items.columns:
                raise DataError(f"{source}: item table lacks column '{col}'; "
                                f"found {list(self.items.columns)}")
        unknown = ~self.events["item_id"].isin(self.items["item_id"])
        if unknown.any():
            raise DataError(f"{source}: {int(unknown.sum())} event(s) name an item_id missing "
                            f"from the item table, e.g. {self.events.loc[unknown, 'item_id'].iloc[0]!r}")
        for col, width in self.dense.items():
            check_dense_column(self.items[col], width, f"{source}: column '{col}'")
        return self


def check_dense_column(values: pd.Series, width: int, where: str) -> np.ndarray:
    """Stack a column of 1-D vectors into (N, width) float32; DataError on bad width / NaN."""
    lengths = values.map(lambda v: len(v) if hasattr(v, "__len__") else -1).to_numpy()
    wrong = np.flatnonzero(lengths != width)
    if len(wrong):
        i = int(wrong[0])
        raise DataError(f"{where}: expected vectors of width {width}, row {i} has "
                        f"{'none' if lengths[i] < 0 else lengths[i]}")
    if len(values) == 0:
        return np.zeros((0, width), np.float32)
    mat = np.stack(values.to_numpy()).astype(np.float32, copy=False)
    finite = np.isfinite(mat).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{where}: row {i} holds NaN or inf")
    return mat
