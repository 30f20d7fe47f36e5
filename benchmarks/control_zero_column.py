"""Control for a `bench table2` run: train "X w/ CHIME" again with chime_hist zeroed for every user.

Separates the effect of the column's information from the effect of merely adding an input
(the model, the seed and the data are otherwise identical). Writes
<run>/control_chime_zero.csv (resumable) and <run>/control_chime_zero.md.

    .venv/bin/python benchmarks/control_zero_column.py --run runs/table2_movielens --models DIN
"""
from __future__ import annotations

import argparse
import logging

from fuxictr_chime.bench.control import run_zero_control


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a `fuxictr-chime bench table2` run directory")
    p.add_argument("--models", default="DIN", help="comma-separated models (default DIN)")
    p.add_argument("--variant", default="CHIME", choices=("CHIME", "LEARN"), help="column to zero (default CHIME)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: those of the run)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    print(run_zero_control(args.run, models=[m for m in args.models.split(",") if m], variant=args.variant,
                           seeds=seeds, progress=not args.no_progress))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
