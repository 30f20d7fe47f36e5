"""Copy the generated tables into ``benchmarks/results/README.md`` (between its markers).

    .venv/bin/python benchmarks/compose_results_readme.py            # rewrite the stale blocks
    .venv/bin/python benchmarks/compose_results_readme.py --check    # exit 1 if any block is stale

A marker ``<!-- NAME -->`` ... ``<!-- end NAME -->`` quotes the file NAME, relative to the
README's folder (:mod:`fuxictr_chime.bench.readme`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fuxictr_chime.bench.readme import compose_readme

README = Path(__file__).resolve().parent / "results" / "README.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default=str(README), help="the README to fill (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="only report stale blocks; exit 1 if any")
    args = parser.parse_args(argv)
    stale = compose_readme(args.readme, check=args.check)
    verb = "stale" if args.check else "updated"
    print(f"{args.readme}: {len(stale)} block(s) {verb}" + "".join(f"\n  {name}" for name in stale))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
