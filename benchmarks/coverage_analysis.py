"""AUC / gAUC / logloss of a `bench table2` run split by representation-set coverage.

For every row of <run>/runs.csv: rebuild the ranking model as the runner built it, load its best
checkpoint (seed_<s>/models[_sliced]/<dataset_id>/<expid>.model) on CPU, predict the split and
compute the runner's metrics on (a) all samples, (b) the samples of users with representation-set
history (user_index in the data view's representation.parquet), (c) the others. Rows without a
checkpoint are skipped with a warning. Writes one CSV row per (model, variant, seed, subset) with
the command line, and a markdown table (mean AUC per subset over seeds, mean paired difference vs
the plain model per subset); prints the table and the check that (a) reproduces runs.csv.

    .venv/bin/python benchmarks/coverage_analysis.py --run runs/table2_movielens
    .venv/bin/python benchmarks/coverage_analysis.py --run runs/table2_movielens --split valid \\
        --out /tmp/coverage_valid.csv --md /tmp/coverage_valid.md
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fuxictr_chime.bench.coverage import SPLITS, analyze_run, format_markdown, reproduction_gap
from fuxictr_chime.bench.pipeline import DEFAULT_ZOO
from fuxictr_chime.io import atomic_path, write_text_atomic


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--run", required=True, type=Path, help="a `bench table2` run directory (with runs.csv)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="split to predict (default: test)")
    parser.add_argument("--out", type=Path, default=None, help="CSV to write (default: <run>/coverage.csv)")
    parser.add_argument("--md", type=Path, default=None, help="markdown table to write (default: <run>/coverage.md)")
    parser.add_argument("--zoo", type=Path, default=DEFAULT_ZOO,
                        help="model_zoo folder the run used (default: the repository's model_zoo/)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    out = args.out or args.run / "coverage.csv"
    md = args.md or args.run / "coverage.md"
    frame = analyze_run(args.run, split=args.split, zoo=args.zoo, progress=not args.no_progress)
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
    text = format_markdown(frame, title=f"Coverage analysis of {args.run} ({args.split} split)")
    write_text_atomic(md, text)
    print(text)
    for metric in ("AUC", "gAUC", "logloss"):
        print(f"reproduction: max |{metric}(all) - runs.csv {metric}| = {reproduction_gap(frame, metric):.3e}")
    print(f"wrote {out} and {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
