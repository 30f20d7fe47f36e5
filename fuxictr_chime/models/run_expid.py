"""Script entry in the shape FuxiCTR's autotuner calls: ``python -u run_expid.py --config DIR
--expid ID --gpu N``.

``fuxictr.autotuner.grid_search(config_dir, gpu_list, script=<this file>)`` starts one such
process per experiment id. The work is done by
:func:`fuxictr_chime.models.runner.run_experiment` (no ``os.chdir``, no ``sys.path`` edits);
results go to ``<model_root>/results.csv``, ``<model_root>/<dataset_id>/<expid>.json`` and, as
FuxiCTR's script does, one ``[val] ... [test] ...`` line to ``<config folder name>.csv`` in the
working directory.
Also runnable as ``python -m fuxictr_chime.models.run_expid``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from fuxictr_chime.errors import ChimeError
from fuxictr_chime.models.commands import add_run_arguments


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--model-root", default=None, help="override the config's model_root")
    parser.add_argument("--results", default=None, metavar="CSV", help="results CSV to append to")
    parser.add_argument("--result-log", default=None, metavar="FILE",
                        help="FuxiCTR's one-line result log to append to (default: <config folder "
                             "name>.csv in the working directory, as FuxiCTR's run_expid.py)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.expid:
        parser.error("--expid is required")
    from fuxictr_chime.models.runner import run_experiment

    try:
        log = args.result_log or Path(args.config.rstrip("/")).name.replace(".yaml", "") + ".csv"
        run_experiment(args.config, args.expid, gpu=args.gpu, seed=args.seed,
                       model_root=args.model_root, results_csv=args.results, result_log=log)
    except ChimeError as exc:
        print(f"run_expid: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
