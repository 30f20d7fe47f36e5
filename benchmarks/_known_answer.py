"""Helpers shared by the known-answer benchmark scripts (compressor_collapse.py,
compressor_trace.py, compressor_users_curve.py, synthetic_rankers.py, oracle_column.py): rows
appended with a fixed header, the last run of each key, markdown tables written atomically, and
the guard that keeps one planted log per results folder."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable, Hashable, Iterable

from fuxictr_chime.data.planted import PRESETS, PlantedKnobs
from fuxictr_chime.io import append_csv_rows, write_json_atomic, write_text_atomic


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


KNOBS_FILE = "planted_knobs.json"


class KnobsError(ValueError):
    """The prepared log's knobs differ from those of the runs already in the results folder."""


def check_knobs(out: Path, data: Path, *, write: bool = True) -> None:
    """Runs of one results folder must share one planted log: ``<out>/planted_knobs.json`` keeps
    the generator knobs of ``<data>/summary.json`` (block ``planted``), written by the first call;
    a later call with other knobs (e.g. ``prepare synthetic --option preset=sessions`` into the
    same data folder) raises :class:`KnobsError` naming the knobs that differ, and the preset
    that prepares the folder's log when its knobs are one."""
    knobs = json.loads((data / "summary.json").read_text()).get("planted")
    if knobs is None:
        raise KnobsError(f"{data / 'summary.json'} has no 'planted' block: not a `prepare synthetic` folder")
    path = out / KNOBS_FILE
    if path.exists():
        kept = json.loads(path.read_text())
        differ = sorted(k for k in set(kept) | set(knobs) if kept.get(k) != knobs.get(k))
        if differ:
            cells = ", ".join(f"{k}: {kept.get(k)!r} in {path.name}, {knobs.get(k)!r} in the data" for k in differ)
            hint = next((f" (`fuxictr-chime prepare synthetic --out {data} --option preset={name}`)"
                         for name in PRESETS if PlantedKnobs.from_options(preset=name).as_dict() == kept), "")
            raise KnobsError(f"{path} was written for another planted log than {data / 'summary.json'} ({cells}); "
                             f"prepare the data with the folder's knobs{hint}, or use another --out")
    elif write:
        write_json_atomic(path, knobs)


def check_folders(out: Path, data: Path, compared: Iterable[Path | None] = ()) -> None:
    """:func:`check_knobs` for a results folder (its knobs written on first use) and, read only,
    for the folder of every existing runs.csv in ``compared`` (the runs its table pairs with)."""
    check_knobs(out, data)
    for runs in compared:
        if runs is not None and runs.exists():
            check_knobs(runs.parent, data, write=False)
