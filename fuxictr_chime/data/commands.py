"""``fuxictr-chime prepare NAME --out DIR``: raw data -> prepared folder (argument parsing only).

The work is done by :func:`fuxictr_chime.data.preparers.prepare`; heavy imports (pandas,
transformers) happen inside the command function so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import logging

import yaml

from ..errors import ConfigError
from .preparers import PREPARERS

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` sub-command."""
    names = "\n".join(f"  {p.name:<11} {p.description} (default t1={p.t1}, t2={p.t2})"
                      for p in PREPARERS.values())
    parser = subparsers.add_parser(
        "prepare", help="prepare a dataset: time split, LongCTR layout, compressor input",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read raw logs, split them by time (representation < t1 <= train < t2 <= "
                    "test, valid = the last part of train by time) and write the prepared "
                    "folder: train/valid/test.parquet, user_info.parquet, item_info.parquet, "
                    "representation.parquet, dataset_config.yaml, summary.json (plus the "
                    "preparer's own files: synthetic writes planted_truth.json and "
                    "planted_events.parquet, and the oracle in summary.json).",
        epilog=f"preparers:\n{names}\n\nThresholds: a timestamp (integer) or a quantile of the "
               f"log's event times written qF, 0 < F < 1 (q0.6 = the time before which 60% of "
               f"the events lie).")
    parser.add_argument("name", metavar="NAME", help=f"preparer, one of {sorted(PREPARERS)}")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--raw", metavar="DIR", help="raw data folder")
    source.add_argument("--source", metavar="DIR",
                        help="same as --raw (movielens: a RecBole-format folder; "
                             "default the ml-100k folder of the recbole wheel)")
    parser.add_argument("--t1", metavar="X",
                        help="start of the train window (default per preparer)")
    parser.add_argument("--t2", metavar="X", help="start of the test window (default per preparer)")
    parser.add_argument("--valid-ratio", type=float, default=0.1, metavar="F",
                        help="share of the train window held out as valid, by time (default 0.1)")
    parser.add_argument("--max-len", type=int, default=1000, metavar="N",
                        help="long-sequence length of the ranking models (default 1000)")
    parser.add_argument("--no-text", action="store_true",
                        help="do not embed item text (movielens: no title_emb column)")
    parser.add_argument("--dataset-id", metavar="ID", help="FuxiCTR dataset_id (default NAME)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="extra keyword for the preparer's loader (VALUE read as YAML), "
                             "e.g. --option min_user_actions=20; for synthetic a generator "
                             "knob, e.g. --option n_users=200, or a knob set, "
                             "--option preset=sessions; repeatable")
    parser.set_defaults(func=run_prepare)


def parse_options(items: list[str]) -> dict:
    """``["k=v", ...]`` -> ``{k: yaml.safe_load(v)}``; ConfigError on a malformed item."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--option {item!r}: value is not valid YAML: {exc}") from exc
    return options


def run_prepare(args: argparse.Namespace) -> int:
    from .preparers import prepare
    from .summary import format_summary

    summary = prepare(args.name, args.out, raw_dir=args.raw or args.source, t1=args.t1,
                      t2=args.t2, valid_ratio=args.valid_ratio, max_len=args.max_len,
                      encode_text=not args.no_text, dataset_id=args.dataset_id,
                      **parse_options(args.option))
    print(format_summary(summary))
    print(f"prepared dataset written to {args.out}")
    return 0
