"""``fuxictr-chime run``: train and evaluate one experiment id (argument parsing only).

The work is done by :func:`fuxictr_chime.models.runner.run_experiment`.
"""
from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="train + evaluate one ranking experiment (FuxiCTR config dialect)",
        description="Train a ranking model of an experiment id in a FuxiCTR-style config folder "
                    "(model_config.yaml + dataset_config), evaluate valid and test with AUC, "
                    "gAUC and logloss, append a row to the results CSV and write a JSON result "
                    "next to the checkpoint. Example: fuxictr-chime run --config "
                    "model_zoo/DIN/config --expid DIN_CHIME_movielens")
    add_run_arguments(parser)
    parser.add_argument("--model-root", default=None,
                        help="checkpoint/log/result folder (default: the config's model_root, "
                             "relative to the model config's folder)")
    parser.add_argument("--results", default=None, metavar="CSV",
                        help="CSV to append the result row to (default: <model_root>/results.csv)")
    parser.add_argument("--list", action="store_true",
                        help="list the experiment ids of --config and exit")
    parser.set_defaults(func=_run)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config --expid --gpu --seed`` (shared with the autotuner's run_expid.py)."""
    parser.add_argument("--config", required=True, metavar="DIR",
                        help="folder with model_config.yaml and dataset_config(.yaml)")
    parser.add_argument("--expid", default=None, metavar="ID", help="experiment id to run")
    parser.add_argument("--gpu", type=int, default=-1, help="CUDA device index, -1 = CPU")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")


def _run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from .runner import list_experiments, run_experiment

    if args.list:
        print("\n".join(list_experiments(args.config)))
        return 0
    if not args.expid:
        raise ConfigError(f"--expid is required; experiment ids in {args.config}: "
                          f"{list_experiments(args.config)}")
    result = run_experiment(args.config, args.expid, gpu=args.gpu, seed=args.seed,
                            model_root=args.model_root, results_csv=args.results)
    print(json.dumps({k: result[k] for k in ("expid", "model", "dataset_id", "seed", "valid",
                                             "test", "result_json", "results_csv")}, indent=2))
    return 0
