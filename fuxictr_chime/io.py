"""Atomic file writing: write to a temporary name in the same folder, then rename.

A crash in the middle of a write leaves the previous file (if any) untouched and no
half-written file behind.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import yaml


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary file keeps ``path``'s suffix so writers that dispatch on it work.
    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _mode_for(path))  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _mode_for(path: Path) -> int:
    """The replaced file's permission bits, or 0666 minus the umask for a new file."""
    if path.exists():
        return path.stat().st_mode & 0o7777
    return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, briefly, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict:
    """The mapping at the top of a YAML file (``{}`` for an empty file); ConfigError naming the file
    for invalid YAML or another top level (``what`` says what the mapping's keys are)."""
    from .errors import ConfigError

    try:
        with open(path, "r") as fh:
            config = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: top level must be a mapping of {what}")
    return config


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_yaml_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, yaml.safe_dump(obj, sort_keys=False, default_flow_style=None))


def write_parquet_atomic(df, path: str | os.PathLike, **kwargs) -> None:
    """Write a pandas DataFrame (or pyarrow Table) to parquet atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)


@contextlib.contextmanager
def file_lock(lock_path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock on ``lock_path`` (POSIX ``flock``; no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def append_csv_rows(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
                    fields: Sequence[str] | None = None) -> None:
    """Append ``rows`` to the CSV at ``path``, atomically and under ``<name>.lock``.

    The columns are the file's header followed by any key of ``rows`` it lacks (older rows get
    empty cells there); a new file takes ``fields`` first, then the remaining keys in the order
    the rows name them. Cells already in the file are copied as text, never re-parsed. ``None``
    and NaN are written as empty cells (as pandas writes them). Parallel writers (two runs of a
    grid, an autotuner) each add their rows; a crash leaves the previous file as it was.
    """
    path = Path(path)
    rows = [dict(r) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        old: list[list[str]] = []
        if path.exists() and path.stat().st_size:
            with path.open(newline="") as f:
                old = [r for r in csv.reader(f) if r]
        header = list(old[0]) if old else []
        for key in [*(fields or []), *(k for r in rows for k in r)]:
            if key not in header:
                header.append(key)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        for cells in old[1:]:
            writer.writerow(cells + [""] * (len(header) - len(cells)))
        for r in rows:
            writer.writerow([_csv_cell(r.get(k)) for k in header])
        write_text_atomic(path, buffer.getvalue())


def _csv_cell(value: Any) -> Any:
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
        return ""
    return value


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
