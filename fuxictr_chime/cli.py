"""The ``fuxictr-chime`` command line: argument parsing only.

Each sub-command lives in a ``commands`` module next to the library code it calls and
exposes ``register(subparsers)``; this file only wires them together. Heavy imports
(torch, transformers, fuxictr) happen inside the command functions, so ``--help`` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from . import __version__
from .errors import ChimeError

# sub-command name -> module that registers it (order = order in --help)
COMMAND_MODULES = (
    "fuxictr_chime.data.commands",        # prepare
    "fuxictr_chime.compressor.commands",  # compress train / export
    "fuxictr_chime.models.commands",      # run
    "fuxictr_chime.bench.commands",       # bench table2 / ablation / depth / codebooks / tsne
    "fuxictr_chime.demo",                 # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fuxictr-chime",
        description="CHIME long-term user-interest compression for FuxiCTR "
                    "(prepare data, train/export compressors, run ranking models, benchmarks).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a part of the package that is not built yet
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except ChimeError as exc:
        logging.getLogger("fuxictr_chime").debug("error", exc_info=True)
        print(f"fuxictr-chime {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
