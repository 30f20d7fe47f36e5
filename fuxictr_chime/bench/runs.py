"""Resumable run directories for the paper benchmarks.

A benchmark run directory holds ``runs.csv`` (one row per finished (model, variant, seed)) and
one folder per seed. Rerunning the same command skips the rows already in ``runs.csv``;
every write of ``runs.csv`` is atomic, so an interrupted run loses at most the row in flight.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..io import atomic_path

KEY = ("model", "variant", "seed")

# files of a prepared folder that exporting a compressed column rewrites: copied, not linked
MUTABLE_FILES = ("user_info.parquet", "dataset_config.yaml")


class RunLog:
    """``runs.csv`` of a benchmark run directory: lookup of finished rows and atomic appends."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: list[dict] = []
        if self.path.exists():
            df = pd.read_csv(self.path)
            missing = [k for k in KEY if k not in df.columns]
            if missing:
                raise DataError(f"{self.path}: not a benchmark runs.csv (lacks {missing})")
            self.rows = df.to_dict("records")

    def done(self, **key) -> bool:
        return any(all(str(r.get(k)) == str(v) for k, v in key.items()) for r in self.rows)

    def append(self, row: dict) -> None:
        self.rows.append(dict(row))
        self._write()

    def find(self, **key) -> dict | None:
        """The first row matching ``key`` (as :meth:`done`), or None."""
        return next((r for r in self.rows if all(str(r.get(k)) == str(v) for k, v in key.items())), None)

    def update(self, values: dict, **key) -> None:
        """Add ``values`` to the row matching ``key`` (KeyError when there is none); atomic rewrite."""
        row = self.find(**key)
        if row is None:
            raise KeyError(f"{self.path}: no row {key}")
        row.update(values)
        self._write()

    def _write(self) -> None:
        with atomic_path(self.path) as tmp:
            pd.DataFrame(self.rows).to_csv(tmp, index=False)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def make_data_view(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """A per-seed view of a prepared folder: big files linked, the files export rewrites copied.

    Exported columns of different seeds (or compressors) then never overwrite each other, and the
    prepared data is not duplicated on disk.
    """
    src, dst = Path(src).resolve(), Path(dst)
    if not (src / "user_info.parquet").exists():
        raise DataError(f"{src}: not a prepared dataset folder (no user_info.parquet); "
                        "run `fuxictr-chime prepare` first")
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        if target.exists() or target.is_symlink():
            continue
        if item.name in MUTABLE_FILES:
            shutil.copy2(item, target)
        else:
            target.symlink_to(item)
    return dst
