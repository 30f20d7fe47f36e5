"""CSV and table helpers shared by the known-answer benchmark scripts (compressor_collapse.py,
compressor_trace.py, compressor_users_curve.py): rows appended with a fixed header, the last run
of each key, and markdown tables written atomically."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Hashable

from fuxictr_chime.io import append_csv_rows, write_text_atomic


def append_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    """Append ``rows``, ``fields`` first in a new file (atomic: :func:`fuxictr_chime.io.append_csv_rows`)."""
    append_csv_rows(path, rows, fields)


def last_runs(path: Path, key: Callable[[dict], Hashable]) -> dict[Hashable, list[dict]]:
    """Rows grouped by ``key``, keeping only each key's last run (rows sharing its ``time_utc``)."""
    runs: dict[Hashable, list[dict]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            k = key(row)
            if k in runs and runs[k][0]["time_utc"] != row["time_utc"]:
                runs[k] = []
            runs.setdefault(k, []).append(row)
    return runs


def write_table(md_path: Path, lines: list[str], commands: set[str]) -> None:
    """``lines`` plus a sorted "Commands:" line, written atomically."""
    text = "\n".join([*lines, "", "Commands: " + "; ".join(f"`{c}`" for c in sorted(commands))]) + "\n"
    write_text_atomic(md_path, text)
