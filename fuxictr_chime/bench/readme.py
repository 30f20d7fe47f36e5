"""Keep ``benchmarks/results/README.md`` equal to the tables the benchmarks write.

The README quotes each generated table between two markers::

    <!-- table2_movielens_converged/table2.md -->
    ...the file's text...
    <!-- end table2_movielens_converged/table2.md -->

where the marker names a file relative to the README's folder. :func:`fill_markers` replaces
every quoted block by the file's current text; ``benchmarks/compose_results_readme.py`` writes the
README (atomically) or, with ``--check``, only says which blocks are out of date.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import DataError
from ..io import write_text_atomic

__all__ = ["fill_markers", "stale_blocks", "compose_readme"]

_BLOCK = re.compile(r"<!-- (?!end )(?P<name>\S+) -->\n(?P<body>.*?)<!-- end (?P=name) -->", re.S)


def _quoted(root: Path, name: str, readme: str) -> str:
    path = root / name
    if not path.is_file():
        raise DataError(f"{readme}: marker '<!-- {name} -->' names {path}, which does not exist")
    text = path.read_text()
    return text if text.endswith("\n") else text + "\n"


def fill_markers(text: str, root: str | os.PathLike, *, readme: str = "README.md") -> str:
    """``text`` with every marked block replaced by the current text of the file it names
    (relative to ``root``). DataError naming the marker when the file is missing, or when a
    start marker has no matching end marker."""
    root = Path(root)
    starts = re.findall(r"<!-- (?!end )(\S+) -->", text)
    ends = set(re.findall(r"<!-- end (\S+) -->", text))
    unmatched = [name for name in starts if name not in ends]
    if unmatched:
        raise DataError(f"{readme}: marker '<!-- {unmatched[0]} -->' has no '<!-- end {unmatched[0]} -->'")
    return _BLOCK.sub(lambda m: f"<!-- {m['name']} -->\n{_quoted(root, m['name'], readme)}"
                                f"<!-- end {m['name']} -->", text)


def stale_blocks(text: str, root: str | os.PathLike, *, readme: str = "README.md") -> list[str]:
    """Names of the marked blocks whose quoted text differs from their file's."""
    root = Path(root)
    return [m["name"] for m in _BLOCK.finditer(text) if m["body"] != _quoted(root, m["name"], readme)]


def compose_readme(path: str | os.PathLike, *, check: bool = False) -> list[str]:
    """Fill the README at ``path`` from the files beside it (atomic write); return the names of the
    blocks that were (``check``: that would be) changed."""
    path = Path(path)
    text = path.read_text()
    stale = stale_blocks(text, path.parent, readme=str(path))
    if stale and not check:
        write_text_atomic(path, fill_markers(text, path.parent, readme=str(path)))
    return stale
