"""``fuxictr-chime demo``: the whole pipeline, short, on the embedded MovieLens-100K data.

Steps (each resumable: rerunning with the same ``--out`` reuses what is already there):

1. ``prepare movielens`` (the ml-100k atomic files of the ``recbole`` wheel, MiniLM title
   vectors) into ``<out>/data/movielens``, and its Table-1-style summary;
2. ``bench table2`` with one seed: train the CHIME and LEARN compressors on the representation
   set, export ``chime_hist`` and ``learn_emb``, train and test DIN plain / w/ LEARN / w/ CHIME;
   prints the Table-2-style table (``<out>/bench/table2.md``);
3. the codebook table of the exported CHIME compressor (paper Table 5, ``codebooks.md``);
4. each compressor's eval loss at its first, last and best (exported) step, CHIME's beside the
   reference scorers; PNGs: eval-loss curves of both compressors and the t-SNE of the histograms
   (Figure 5); then the wall time of each step.

The demo is the quick tour, not the result: ``benchmarks/results/`` holds the 5-seed runs.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="prepare MovieLens-100K, train CHIME + LEARN, DIN plain / w/ LEARN / w/ CHIME",
        description="Run the short end-to-end pipeline on the embedded MovieLens-100K data: prepare, train and "
        "export CHIME and LEARN, train DIN plain / w/ LEARN / w/ CHIME (one seed), print the "
        "Table-2-style and codebook tables, write eval-loss and t-SNE PNGs. Resumable.")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--models", default="DIN", help="comma-separated ranking models (default DIN)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (default 1)")
    p.add_argument("--compressor-steps", type=int, default=None,
                   help="cap on compressor optimizer steps (default: the experiment configs', 300)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import pandas as pd

    from .bench.figures import run_codebooks, run_tsne
    from .bench.table2 import run_table2
    from .bench.variants import plot_eval_curves
    from .data.preparers import prepare
    from .data.summary import format_summary

    out = Path(args.out)
    data = out / "data" / "movielens"
    bench = out / "bench"
    progress = not args.no_progress
    seconds, start = {}, time.perf_counter()
    summary_path = data / "summary.json"
    if summary_path.exists():
        import json

        summary = json.loads(summary_path.read_text())
        print(f"[1/4] reusing prepared data in {data}")
    else:
        print(f"[1/4] preparing the embedded MovieLens-100K into {data}")
        summary = prepare("movielens", data)
    print(format_summary(summary))
    seconds["prepare"], start = time.perf_counter() - start, time.perf_counter()

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"[2/4] compressors (CHIME, LEARN) and {', '.join(models)} plain / w/ LEARN / w/ CHIME "
          f"({args.seeds} seed(s)) in {bench}")
    run_table2(data, bench, models=models, seeds=args.seeds, compressor_steps=args.compressor_steps,
               progress=progress)
    print((bench / "table2.md").read_text())
    seconds["compressors and rankers"], start = time.perf_counter() - start, time.perf_counter()

    print("[3/4] codebooks of the exported CHIME compressor (paper Table 5)")
    print(run_codebooks(data, bench, seeds=args.seeds, compressor_steps=args.compressor_steps, progress=progress))
    seconds["codebooks"], start = time.perf_counter() - start, time.perf_counter()

    print("[4/4] figures")
    for kind, metric in (("chime", "holistic"), ("learn", "dense_all_action")):
        log_path = bench / "seed_1" / kind / "log.csv"
        if not log_path.exists():
            continue
        log = pd.read_csv(log_path)
        ev = log[log["split"] == "eval"]
        png = plot_eval_curves({kind.upper(): log}, bench / f"{kind}_eval_loss.png", metric=metric,
                               title=f"{kind.upper()} eval {metric} loss (MovieLens-100K, seed 1)")
        if len(ev):
            print(f"{eval_curve_line(kind.upper(), log, metric)}; curve: {png}")
    print(f"t-SNE of chime_hist (Figure 5): {run_tsne(data, bench, progress=progress)}")
    seconds["figures"] = time.perf_counter() - start
    print(f"done; everything is under {out}")
    print(timing_line(seconds))
    return 0


def timing_line(seconds: dict) -> str:
    """Wall time of each demo step and in all, e.g. ``wall time: prepare 12 s, compressors and
    rankers 9.5 min, codebooks 40 s, figures 25 s; in all 10.8 min`` (a resumed step counts the
    time it took to reuse what was there)."""
    def fmt(value: float) -> str:
        return f"{value:.0f} s" if value < 90 else f"{value / 60:.1f} min"

    parts = ", ".join(f"{name} {fmt(value)}" for name, value in seconds.items())
    return f"wall time: {parts}; in all {fmt(sum(seconds.values()))}"


def eval_curve_line(name: str, log, metric: str) -> str:
    """One line on a compressor's ``log.csv``: its eval ``metric`` at the first and last eval, the best
    eval after step 0 (the trainer's rule for ``best/``, the checkpoint the demo exports) and the
    reference scorers logged beside it (``ref_*`` columns; CHIME only), e.g.
    ``CHIME eval holistic loss: 6.7469 (step 0) -> 6.6743 (step 300), best 6.6743 at step 300 (exported);
    references on the same eval users: uniform 6.7416, popularity 6.7333, ...``."""
    import pandas as pd

    from .compressor.diagnostics import REFERENCE_LABELS, REFERENCE_NAMES

    ev = log[log["split"] == "eval"]
    first, last = ev.iloc[0], ev.iloc[-1]
    line = (f"{name} eval {metric} loss: {first[metric]:.4f} (step {int(first['step'])}) "
            f"-> {last[metric]:.4f} (step {int(last['step'])})")
    after = ev[ev["step"] > 0]
    if len(after):
        best = after.loc[after[metric].idxmin()]
        line += f", best {best[metric]:.4f} at step {int(best['step'])} (exported)"
    refs = [f"{REFERENCE_LABELS.get(r, r)} {first[f'ref_{r}']:.4f}" for r in REFERENCE_NAMES
            if f"ref_{r}" in ev.columns and pd.notna(first[f"ref_{r}"])]  # NaN: not logged (e.g. no oracle)
    if refs:
        line += "; references on the same eval users: " + ", ".join(refs)
    return line
