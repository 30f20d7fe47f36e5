"""Grid search over a FuxiCTR tuner config with FuxiCTR's own autotuner (thin entry).

    .venv/bin/python model_zoo/tuner/run_param_tuner.py --config model_zoo/tuner/DIN_movielens_tuner.yaml --gpu -1

``--gpu`` takes one slot per value (``-1`` = CPU; ``--gpu -1 -1`` runs two at a time). The work
is :func:`fuxictr_chime.models.runner.tune`: ``fuxictr.autotuner.enumerate_params`` then
``fuxictr.autotuner.grid_search(..., script=fuxictr_chime/models/run_expid.py)``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from fuxictr_chime.errors import ChimeError
from fuxictr_chime.models.runner import tune


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="tuner YAML (base_expid + tuner_space)")
    parser.add_argument("--gpu", type=int, nargs="+", default=[-1],
                        help="device slots, -1 = CPU (default: one CPU slot)")
    parser.add_argument("--tag", default=None, help="only run expids containing this string")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        results = tune(args.config, args.gpu, expid_tag=args.tag)
    except ChimeError as exc:
        print(f"run_param_tuner: error: {exc}", file=sys.stderr)
        return 1
    for res in sorted(results, key=lambda r: -r["valid"].get("AUC", 0.0)):
        print(json.dumps({"expid": res["expid"], "valid": res["valid"], "test": res["test"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
