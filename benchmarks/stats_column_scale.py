"""Is it the scale of ``stats_ctrl`` that costs SDIM and MIRRN AUC w/ STATS? The column standardized.

On the planted log, "X w/ STATS" (the 2-float control ``[positive rate, log(1 + history length)]`` of
``fuxictr-chime compress controls``) falls below the plain model for SDIM and MIRRN on every seed,
while it changes little for ETA, TWIN and SimSoft. Over the 1000 users of the default log the
column's second float is 6.52 ± 0.37, its first 0.43 ± 0.08: the two differ in scale by 15x and
neither is centred, unlike ``hist_ctrl`` and ``chime_hist`` (histograms that sum to 1). This
script trains the same ``<Model>_STATS_synthetic`` experiment on a view of the data in which each
float of ``stats_ctrl`` is standardized over the users with history (zero mean, unit variance; users
without history keep zeros, i.e. the mean). If the standardized column no longer hurts, the loss is
the column's scale, not what it says about the user. With ``--zero`` the column is zero for every
user instead (``<Model>_STATS_zero_synthetic``): the same input width carrying nothing, the
control for what merely adding the input does.

1. ``<out>/runs/data``: links to every file of ``--data`` but ``user_info.parquet``, whose
   ``stats_ctrl`` is standardized (``--zero``: ``<out>/runs/data_zero``, the column zeroed);
2. ``<out>/runs/config/<Model>``: the shipped ``<Model>_STATS_synthetic`` experiment as
   ``<Model>_STATS_standardized_synthetic`` with dataset id ``synthetic_stats_standardized``
   (``--zero``: ``<out>/runs/config/<Model>_zero``, ``<Model>_STATS_zero_synthetic``,
   ``synthetic_stats_zero``);
3. ``fuxictr-chime run`` per seed; rows to ``<out>/runs.csv`` (each with its command), the table
   (each model paired by seed with the raw column's rows of ``--stats-runs`` and the plain model's
   rows of ``--baseline``) to ``<out>/stats_column_scale.md``.

    .venv/bin/python benchmarks/stats_column_scale.py --model SDIM --seeds 2024 2025
    .venv/bin/python benchmarks/stats_column_scale.py --model MIRRN --zero --seeds 2024 2025
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._known_answer import KnobsError, check_folders  # noqa: E402
from benchmarks.oracle_column import (dataset_on_view, paired_cells, read_auc, read_rows, run_seeds,  # noqa: E402
                                      write_view, zoo_with)
from fuxictr_chime.io import write_text_atomic, write_yaml_atomic  # noqa: E402

COLUMN = "stats_ctrl"
MODES = ("standardized", "zero")  # how the column is rewritten; the experiment's tag


def tag(mode: str) -> str:
    return f"_STATS_{mode}_synthetic"


def standardize(rows: np.ndarray) -> np.ndarray:
    """Each column of ``rows`` (users x floats) standardized over the rows that are not all zero
    (users with history); all-zero rows stay zero. A constant column becomes zeros."""
    rows = np.asarray(rows, dtype=np.float64)
    has = np.any(rows != 0, axis=1)
    out = np.zeros_like(rows)
    if has.any():
        mean, std = rows[has].mean(axis=0), rows[has].std(axis=0)
        out[has] = (rows[has] - mean) / np.where(std > 0, std, 1.0)
    return out.astype(np.float32)


def rewrite(rows: np.ndarray, mode: str) -> np.ndarray:
    """The column of ``mode``: ``standardized`` (:func:`standardize`) or ``zero`` (zeros, float32)."""
    return standardize(rows) if mode == "standardized" else np.zeros(np.shape(rows), dtype=np.float32)


def make_view(data: Path, view: Path, mode: str = "standardized") -> None:
    """``view``: links to every file of ``data`` but user_info.parquet, whose stats_ctrl is
    rewritten as ``mode`` says (:func:`rewrite`)."""
    import pandas as pd

    users = pd.read_parquet(data / "user_info.parquet")
    if COLUMN not in users.columns:
        raise SystemExit(f"{data}/user_info.parquet: no '{COLUMN}' column "
                         f"(run `fuxictr-chime compress controls --data {data}`)")
    users[COLUMN] = list(rewrite(np.stack(users[COLUMN].to_numpy()), mode))
    write_view(data, view, users)


def make_config(model: str, view: Path, folder: Path, data_root: Path, mode: str = "standardized") -> str:
    """A config folder with ``<model>_STATS_<mode>_synthetic``; returns its id."""
    import yaml

    zoo = zoo_with(f"{model}_STATS_synthetic")
    datasets = yaml.safe_load((ROOT / "dataset_configs" / "synthetic.yaml").read_text())
    expid, dataset_id = f"{model}{tag(mode)}", f"synthetic_stats_{mode}"
    dataset = dataset_on_view(datasets["synthetic_stats"], view, data_root)
    folder.mkdir(parents=True, exist_ok=True)
    write_yaml_atomic(folder / "model_config.yaml",
                      {"Base": zoo["Base"], expid: dict(zoo[f"{model}_STATS_synthetic"], dataset_id=dataset_id)})
    write_yaml_atomic(folder / "dataset_config.yaml", {dataset_id: dataset})
    return expid


def table(out: Path, stats_runs: Path, baseline: Path) -> str:
    """Every model and mode with rows in ``<out>/runs.csv``: against the raw column and the plain
    model, paired by seed (one-sided paired t-test, higher is better)."""
    expids = [r["expid"] for r in read_rows(out / "runs.csv")]
    pairs = list(dict.fromkeys((e[: -len(tag(m))], m) for e in expids for m in MODES if e.endswith(tag(m))))
    lines = ["Each model w/ STATS with `stats_ctrl` rewritten against the same model w/ the raw column and plain, "
             "same seeds (test AUC; one-sided paired t-test that the rewritten column is higher). `standardized`: "
             "each float to zero mean and unit variance over the users with history; `zero`: zeros for every user "
             "(the input without its information).", "",
             "| comparison | seeds | rewritten AUC | other AUC | difference (per seed) | p |", "|---|---|---|---|---|---|"]
    models = list(dict.fromkeys(model for model, _ in pairs))  # in order of their first row
    for model, mode in ((m, mode) for m in models for mode in MODES if (m, mode) in pairs):
        mine = read_auc(out / "runs.csv", f"{model}{tag(mode)}")
        for label, other in ((f"{model} w/ STATS (raw)", read_auc(stats_runs, f"{model}_STATS_synthetic")),
                             (model, read_auc(baseline, f"{model}_synthetic"))):
            paired = paired_cells(mine, other)
            if paired is not None:
                lines.append(f"| {model} w/ STATS ({mode}) vs {label} | {' | '.join(paired[0])} |")
    rows = [r for r in read_rows(out / "runs.csv") if any(r["expid"].endswith(tag(m)) for m in MODES)]
    if rows:
        stopped = sum(r["stopped_early"] == "True" for r in rows)
        below = sum(float(r["test_logloss"]) < float(r["base_rate_logloss"]) for r in rows)
        lines += ["", f"Of the {len(rows)} runs above, {stopped} stopped early (before their epoch cap) and {below} "
                      "have a test logloss below the base rate's entropy."]
    text = "\n".join([*lines, "", "Written by `python benchmarks/stats_column_scale.py --model MODEL [--zero] --seeds ...`; "
                                  "each run's command is in runs.csv."]) + "\n"
    write_text_atomic(out / "stats_column_scale.md", text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data/synthetic",
                        help="a prepared planted log with the control columns (`compress controls`)")
    parser.add_argument("--model", default="SDIM", help="zoo model with a <MODEL>_STATS_synthetic experiment")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2024, 2025, 2026])
    parser.add_argument("--stats-runs", type=Path,
                        default=ROOT / "benchmarks/results/synthetic_long_term_chime/runs.csv",
                        help="runs.csv with the raw column's <MODEL>_STATS_synthetic rows")
    parser.add_argument("--baseline", type=Path, default=ROOT / "benchmarks/results/synthetic_long_term/runs.csv",
                        help="runs.csv with the plain <MODEL>_synthetic rows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/stats_column_scale")
    parser.add_argument("--zero", action="store_true",
                        help="zero the column for every user instead of standardizing it (the plumbing control)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:  # one planted log per results folder, and the compared runs on the same log
        check_folders(args.out, args.data, [args.stats_runs, args.baseline])
    except KnobsError as error:
        parser.error(str(error))
    if not args.table_only:
        mode, suffix = ("zero", "_zero") if args.zero else ("standardized", "")
        view, config = args.out / "runs" / f"data{suffix}", args.out / "runs" / "config" / f"{args.model}{suffix}"
        expid = make_config(args.model, view, config, args.out / "runs" / "processed", mode)  # an unknown --model
        make_view(args.data, view, mode)  # stops before the view
        run_seeds(args.out, config, expid, args.seeds, args.threads)
    print(table(args.out, args.stats_runs, args.baseline))


if __name__ == "__main__":
    main()
