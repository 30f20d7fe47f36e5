"""Plain ranking models on the planted-interest log against its oracle (issue 12 acceptance).

For each model and seed, ``fuxictr-chime run --config model_zoo/<M>/config --expid
<expid>_synthetic --seed S`` trains to early stopping on the prepared folder (default
``data/synthetic`` from ``fuxictr-chime prepare synthetic --out data/synthetic``; default results
folder ``benchmarks/results/synthetic_long_term``, named after the preset that is the default).
Every run's row
goes to ``<out>/runs.csv`` (the runner's result CSV: test AUC, logloss, epochs run, best epoch,
stopped early, base-rate logloss); finished (expid, seed) pairs are skipped, so a rerun resumes.
Then ``<out>/synthetic_rankers.md`` gives, per experiment of runs.csv (those of ``--experiments``
first), the mean and standard deviation of the test AUC over seeds and the share of the gap
between 0.5 and the oracle's test AUC that it closes (``summary.json``), beside the references of
the same file (popularity, count, partial oracles).

The default grid is the acceptance of issue 12: SimSoft, ETA, SDIM and TWIN (each must close at
least half of the gap, mean of 3 seeds) and DIN over the last 30 behaviours next to DIN over the
whole sequence (``DIN_full``).

    .venv/bin/python benchmarks/synthetic_rankers.py
    .venv/bin/python benchmarks/synthetic_rankers.py --experiments TWIN DIN_full --seeds 1 --table-only

With ``--baseline RUNS_CSV`` (the runs.csv of the plain models, e.g. the default grid's), every
"w/ X" experiment (``<Model>_CHIME|_LEARN|_HIST|_STATS``) also gets a paired comparison with its
plain model over the seeds both have: mean test-AUC difference, one-sided paired t-test p-value
(higher is better), and the share of the gap between the plain model's AUC and the oracle's
that the variant closes (issue 14's acceptance: significant at 5% and at least half the gap).

    .venv/bin/python benchmarks/synthetic_rankers.py --out benchmarks/results/synthetic_long_term_chime \
        --experiments DIN_CHIME DIN_HIST --baseline benchmarks/results/synthetic_long_term/runs.csv

A results folder belongs to one planted log: ``<out>/planted_knobs.json`` records the generator
knobs of the data its runs used, and a run or table with data of other knobs is refused. The
runs on the ``sessions`` preset (the default until 2026-12-04) live in their own folders:

    fuxictr-chime prepare synthetic --out data/synthetic --option preset=sessions
    .venv/bin/python benchmarks/synthetic_rankers.py --out benchmarks/results/synthetic_rankers

``--pairs A:B`` compares any two experiments of ``<out>/runs.csv`` the same way (A against B), e.g.
the softmax DIN over the last 30 behaviours against longer windows:

    .venv/bin/python benchmarks/synthetic_rankers.py --table-only --pairs DIN_softmax:DIN_100_softmax

Below the pairs, for the seeds whose runs have learning curves (``<out>/curves/``), a second table
says where early stopping landed: A - B in test AUC, in valid AUC at the epoch each run kept and in
the highest valid AUC of any epoch each run evaluated.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._known_answer import KnobsError, check_folders  # noqa: E402
from fuxictr_chime.io import write_text_atomic  # noqa: E402

DEFAULT_EXPERIMENTS = ("SimSoft", "ETA", "SDIM", "TWIN", "DIN", "DIN_full")
DEFAULT_SEEDS = (2024, 2025, 2026)
VARIANT_SUFFIXES = ("_CHIME", "_LEARN", "_HIST", "_STATS")


def plain_of(experiment: str) -> str | None:
    """The plain experiment of a "w/ X" experiment (DIN_full_CHIME -> DIN_full); None when plain.
    An ``_interaction`` before the suffix (``column_interaction: True``, which only acts on the
    column) has the same plain model: DIN_softmax_interaction_CHIME -> DIN_softmax."""
    for suffix in VARIANT_SUFFIXES:
        if experiment.endswith(suffix):
            plain = experiment[: -len(suffix)]
            return plain[: -len("_interaction")] if plain.endswith("_interaction") else plain
    return None


def model_of(experiment: str) -> str:
    """Zoo folder of an experiment prefix: DIN_full lives in model_zoo/DIN."""
    return experiment.split("_")[0]


def finished(runs_csv: Path) -> set[tuple[str, int]]:
    if not runs_csv.exists():
        return set()
    with runs_csv.open(newline="") as f:
        return {(row["expid"], int(row["seed"])) for row in csv.DictReader(f)}


def run_grid(args: argparse.Namespace, out: Path) -> None:
    """Run every missing (experiment, seed). A run is claimed by creating its log file, so several
    instances of this script can share one grid (e.g. one per CPU core); an interrupted run's log
    is renamed ``*.interrupted.log``, which releases the claim. Checkpoints go to
    ``<out>/checkpoints/seed_<s>``: two instances running one experiment with different seeds
    would otherwise write and reload the same checkpoint file."""
    runs_csv = out / "runs.csv"
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    for seed in args.seeds:  # seed-major: a partial grid still has every model at the first seeds
        for experiment in args.experiments:
            expid = f"{experiment}_{args.dataset_id}"
            log_path = out / "logs" / f"{expid}_{seed}.log"
            if (expid, seed) in finished(runs_csv):
                continue
            try:
                log = log_path.open("x")  # claimed by another instance when it exists
            except FileExistsError:
                continue
            command = [sys.executable, "-m", "fuxictr_chime.cli", "run",
                       "--config", str(ROOT / "model_zoo" / model_of(experiment) / "config"),
                       "--expid", expid, "--seed", str(seed),
                       "--model-root", str(out / "checkpoints" / f"seed_{seed}"),  # one checkpoint file per run
                       "--results", str(runs_csv)]
            print("+", shlex.join(command), flush=True)
            try:
                with log:
                    rc = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            except BaseException:  # Ctrl-C or SIGTERM: release the claim so a rerun takes this run again
                log_path.replace(log_path.with_suffix(".interrupted.log"))
                raise
            if rc != 0:
                log_path.replace(log_path.with_suffix(".failed.log"))
                raise SystemExit(f"{expid} seed {seed} failed (exit {rc}); see {log_path.with_suffix('.failed.log')}")


def read_runs(path: Path) -> dict[str, list[dict]]:
    """runs.csv rows grouped by experiment id (empty when the file does not exist)."""
    rows: dict[str, list[dict]] = {}
    if path.exists():
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                rows.setdefault(row["expid"], []).append(row)
    return rows


def _paired_row(mine: dict[int, float], base: dict[int, float], label: str, oracle: float) -> str | None:
    """One markdown row comparing two experiments' test AUC over the seeds both have (None if none):
    means, difference per seed, one-sided paired t-test that ``mine`` is higher, and the share of
    the gap between ``base`` and the oracle that ``mine`` closes."""
    from fuxictr_chime.bench.table import paired_pvalue

    seeds = sorted(set(mine) & set(base))
    if not seeds:
        return None
    a, b = np.array([mine[s] for s in seeds]), np.array([base[s] for s in seeds])
    p = paired_pvalue(a, b, higher_is_better=True)
    share = (a.mean() - b.mean()) / (oracle - b.mean())
    return (f"| {label} | {', '.join(map(str, seeds))} | {a.mean():.4f} | {b.mean():.4f} | "
            f"{a.mean() - b.mean():+.4f} ({', '.join(f'{d:+.4f}' for d in a - b)}) | "
            f"{'-' if p is None else f'{p:.3f}'} | {share:.0%} |")


def _aucs(rows: dict[str, list[dict]], expid: str) -> dict[int, float]:
    return {int(r["seed"]): float(r["test_AUC"]) for r in rows.get(expid, [])}


def paired_lines(rows: dict[str, list[dict]], baseline: dict[str, list[dict]], dataset_id: str,
                 experiments: list[str], oracle: float) -> list[str]:
    """Markdown rows: each "w/ X" experiment against its plain model, paired by seed."""
    lines = []
    for experiment in experiments:
        plain = plain_of(experiment)
        if plain is None:
            continue
        line = _paired_row(_aucs(rows, f"{experiment}_{dataset_id}"), _aucs(baseline, f"{plain}_{dataset_id}"),
                           f"{experiment} vs {plain}", oracle)
        if line is not None:
            lines.append(line)
    if not lines:
        return []
    return ["", "Paired by seed against the plain model of the baseline runs (one-sided paired t-test that "
            "the variant's test AUC is higher; share = (variant - plain) / (oracle - plain)):", "",
            "| comparison | seeds | variant AUC | plain AUC | difference (per seed) | p | share of plain-to-oracle gap |",
            "|---|---|---|---|---|---|---|", *lines]


class PairError(ValueError):
    """A ``--pairs`` pair whose experiments share no seed in runs.csv."""


def pair_lines(rows: dict[str, list[dict]], dataset_id: str, pairs: list[tuple[str, str]],
               oracle: float) -> list[str]:
    """Markdown rows for ``--pairs A:B``: experiment A against experiment B of the same runs.csv,
    paired by seed (e.g. DIN_softmax:DIN, TWIN:DIN_softmax). PairError names a pair without a
    common seed."""
    lines = []
    for a, b in pairs:
        line = _paired_row(_aucs(rows, f"{a}_{dataset_id}"), _aucs(rows, f"{b}_{dataset_id}"), f"{a} vs {b}", oracle)
        if line is None:
            raise PairError(f"--pairs {a}:{b}: no seed has a run of both {a}_{dataset_id} and {b}_{dataset_id}")
        lines.append(line)
    if not lines:
        return []
    return ["", "Pairs of experiments, paired by seed (one-sided paired t-test that A's test AUC is higher; "
            "share = (A - B) / (oracle - B)):", "",
            "| A vs B | seeds | A AUC | B AUC | difference (per seed) | p | share of B-to-oracle gap |",
            "|---|---|---|---|---|---|---|", *lines]


def _peak_valid_auc(out: Path, expid: str, seed: int) -> float | None:
    """The highest valid AUC of any evaluated epoch in the run's learning curve
    (``<out>/curves/<expid>_<seed>.curve.csv``, written by ``fuxictr-chime run``); None without it."""
    path = out / "curves" / f"{expid}_{seed}.curve.csv"
    if not path.exists():
        return None
    with path.open(newline="") as f:
        aucs = [float(r["valid_AUC"]) for r in csv.DictReader(f) if r.get("valid_AUC")]
    return max(aucs) if aucs else None


def stop_point_lines(out: Path, rows: dict[str, list[dict]], dataset_id: str,
                     pairs: list[tuple[str, str]]) -> list[str]:
    """Markdown rows for ``--pairs A:B`` over the seeds where both runs have a learning curve: A - B
    in test AUC, in valid AUC at the epoch early stopping kept (runs.csv) and in the highest valid AUC
    of any epoch either run evaluated (its curve). Where the last two disagree in sign, the pair's
    order is decided by where early stopping landed rather than by what the two models reach."""
    lines = []
    for a, b in pairs:
        runs = {e: {int(r["seed"]): r for r in rows.get(f"{e}_{dataset_id}", [])} for e in (a, b)}
        peaks = {e: {s: _peak_valid_auc(out, f"{e}_{dataset_id}", s) for s in runs[e]} for e in (a, b)}
        seeds = sorted(s for s in set(runs[a]) & set(runs[b]) if peaks[a][s] is not None and peaks[b][s] is not None)
        if not seeds:
            continue

        def diffs(value) -> str:
            d = np.array([value(a, s) - value(b, s) for s in seeds])
            return f"{d.mean():+.4f} ({', '.join(f'{x:+.4f}' for x in d)})"

        epochs = "; ".join(", ".join(f"{runs[e][s]['epochs_run']} ({runs[e][s]['best_epoch']})" for s in seeds)
                           for e in (a, b))
        lines.append(f"| {a} vs {b} | {', '.join(map(str, seeds))} | "
                     f"{diffs(lambda e, s: float(runs[e][s]['test_AUC']))} | "
                     f"{diffs(lambda e, s: float(runs[e][s]['valid_AUC']))} | "
                     f"{diffs(lambda e, s: peaks[e][s])} | {epochs} |")
    if not lines:
        return []
    return ["", "Where early stopping landed, for the pairs above whose runs have learning curves (`curves/`): "
            "A - B in test AUC, in valid AUC at the epoch each run kept, and in the highest valid AUC of any "
            "epoch each run evaluated. A sign that differs between the last two columns means the order of the "
            "pair was set by where the monitor (valid AUC - logloss) stopped, not by what the two runs reached.",
            "", "| A vs B | seeds | test AUC | valid AUC, kept epoch | highest valid AUC | epochs run (best), A; B |",
            "|---|---|---|---|---|---|", *lines]


def table(out: Path, data: Path, dataset_id: str, experiments: list[str], baseline: Path | None = None,
          pairs: list[tuple[str, str]] = ()) -> str:
    """``experiments`` first, then every other experiment of ``dataset_id`` in ``<out>/runs.csv`` (in
    order of its first row): a run of a few experiments rewrites the whole table, not a part."""
    summary = json.loads((data / "summary.json").read_text())
    oracle = summary["oracle"]["test"]["auc"]
    rows = read_runs(out / "runs.csv")
    suffix = f"_{dataset_id}"
    experiments = list(dict.fromkeys([*experiments, *(e[: -len(suffix)] for e in rows if e.endswith(suffix))]))

    def gap(auc: float) -> float:
        return (auc - 0.5) / (oracle - 0.5)

    shown = data.resolve().relative_to(ROOT) if data.resolve().is_relative_to(ROOT) else data
    lines = [f"Ranking models on `{shown}` (test rows; oracle AUC {oracle:.4f}, base-rate logloss "
             f"{summary['oracle']['test']['base_logloss']:.4f}). Gap = share of the 0.5-to-oracle AUC gap "
             "closed, of the mean AUC.", "",
             "| experiment | seeds | test AUC (mean ± sd) | gap closed | test logloss | epochs run (best) | "
             "stopped early |", "|---|---|---|---|---|---|---|"]
    for experiment in experiments:
        found = rows.get(f"{experiment}_{dataset_id}", [])
        if not found:
            continue
        aucs = [float(r["test_AUC"]) for r in found]
        losses = [float(r["test_logloss"]) for r in found]
        sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        epochs = ", ".join(f"{r['epochs_run']} ({r['best_epoch']})" for r in found)
        stopped = sum(r["stopped_early"] in ("True", "true", "1") for r in found)
        lines.append(f"| {experiment} | {len(found)} | {statistics.mean(aucs):.4f} ± {sd:.4f} | "
                     f"{gap(statistics.mean(aucs)):.0%} | {statistics.mean(losses):.4f} | {epochs} | "
                     f"{stopped}/{len(found)} |")
    lines += ["", "| reference (summary.json) | test AUC | gap closed |", "|---|---|---|",
              f"| oracle | {oracle:.4f} | 100% |"]
    for name, ref in summary.get("references", {}).get("test", {}).items():
        lines.append(f"| {name} | {ref['auc']:.4f} | {gap(ref['auc']):.0%} |")
    lines.append("| chance | 0.5000 | 0% |")
    if baseline is not None:
        lines += paired_lines(rows, read_runs(baseline), dataset_id, experiments, oracle)
    lines += pair_lines(rows, dataset_id, list(pairs), oracle)
    lines += stop_point_lines(out, rows, dataset_id, list(pairs))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/synthetic_long_term",
                        help="results folder (default benchmarks/results/synthetic_long_term: the default "
                             "knobs; benchmarks/results/synthetic_rankers and synthetic_chime hold the runs "
                             "on --option preset=sessions)")
    parser.add_argument("--data", type=Path, default=ROOT / "data/synthetic",
                        help="the prepared planted log that dataset_configs/<dataset-id>.yaml points at (its summary.json holds the oracle; default data/synthetic)")
    parser.add_argument("--dataset-id", default="synthetic", help="experiment suffix (<Model>_<dataset_id>)")
    parser.add_argument("--experiments", nargs="+", default=list(DEFAULT_EXPERIMENTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run (default 1)")
    parser.add_argument("--table-only", action="store_true", help="only rewrite the table from runs.csv")
    parser.add_argument("--baseline", type=Path, default=None, metavar="RUNS_CSV",
                        help="runs.csv of the plain models: adds a paired comparison of every w/ X experiment")
    parser.add_argument("--pairs", nargs="+", default=[], metavar="A:B",
                        help="also compare experiment A with experiment B of runs.csv, paired by seed "
                             "(e.g. DIN_softmax:DIN_100_softmax)")
    args = parser.parse_args(argv)
    pairs = []
    for pair in args.pairs:
        a, sep, b = pair.partition(":")
        if not sep or not a or not b or ":" in b:
            parser.error(f"--pairs {pair!r}: expected A:B, two experiment prefixes such as DIN_softmax:DIN")
        pairs.append((a, b))
    if not (args.data / "summary.json").exists():
        parser.error(f"{args.data}/summary.json not found: run `fuxictr-chime prepare synthetic --out {args.data}`")
    for experiment in args.experiments:
        if not (ROOT / "model_zoo" / model_of(experiment) / "config").is_dir():
            parser.error(f"--experiments: no model_zoo/{model_of(experiment)}/config for '{experiment}'")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    try:
        check_folders(args.out, args.data, [args.baseline])
    except KnobsError as error:
        parser.error(str(error))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unwinds like Ctrl-C
    if not args.table_only:
        run_grid(args, args.out)
    if args.baseline is not None and not args.baseline.exists():
        parser.error(f"--baseline {args.baseline}: no such file")
    try:
        text = table(args.out, args.data, args.dataset_id, args.experiments, args.baseline, pairs)
    except PairError as error:
        parser.error(f"{error} in {args.out / 'runs.csv'}")
    write_text_atomic(args.out / "synthetic_rankers.md",
                      f"Table written by `python benchmarks/synthetic_rankers.py {shlex.join(sys.argv[1:])}`; "
                      "each run's own command is in runs.csv.\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
