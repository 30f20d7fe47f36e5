"""How much can a user column entering the final MLP give a ranker? The planted truth as the column.

On the planted log (``fuxictr-chime prepare synthetic``) each user's long-term interest is known:
the logit bonus A_u(k) of every topic k (``planted_truth.json``). This script gives a ranking
model that truth as its user column, in the place and the width of ``chime_hist`` (a 64-float
``type: embedding`` user feature projected to ``embedding_dim`` and fed to the final MLP, spec
section 5, "enters the final MLP like any other dense feature"): no compressor can put more
long-term interest into that column. Its gain over the plain model bounds what "X w/ CHIME" can
gain on this log with the spec's way of feeding the column; the gap to the oracle that remains is
what the model does not make of it.

1. ``<out>/runs/data``: a view of ``--data`` (symbolic links) whose ``user_info.parquet`` has the
   ``hist_ctrl`` column replaced by the user's A_u over the topic codes, zero-padded to 64 floats
   (users without truth: zeros);
2. ``<out>/runs/config/<Model>``: the shipped ``<Model>_HIST_synthetic`` experiment (the model
   class that reads ``hist_ctrl``) with a dataset id ``synthetic_oracle`` whose paths point at the
   view (one folder per model, one processed-data folder ``<out>/runs/processed`` for all);
3. ``fuxictr-chime run`` per seed (checkpoints under ``<out>/runs/checkpoints/seed_<s>``, so that
   instances with different seeds or models can run at once); rows to ``<out>/runs.csv`` (each with
   its command), the table (every model in runs.csv, paired by seed with the plain model's rows of
   ``--baseline``) to ``<out>/oracle_column.md``.

With ``--normalize`` each user's row is divided by its sum (it sums to 1, as ``hist_ctrl`` does;
the raw bonuses A_u(k) sum to long_affinity x n_favourites: 12 under the ``sessions`` preset of
these runs, 8 with the default knobs): the same truth at the scale of the
counting control, in its own view (``runs/data_normalized``), dataset id
``synthetic_oracle_normalized`` and experiments ``<Model>_ORACLE_normalized[_interaction]_synthetic``.

    .venv/bin/python benchmarks/oracle_column.py --model DIN --seeds 2024 2025 2026

``--model`` may also name an experiment prefix of a zoo file, e.g. ``DIN_softmax`` (the truth column
on ``DIN_softmax_HIST_synthetic``, paired with ``DIN_softmax_synthetic``).
"""
from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._known_answer import KnobsError, check_folders  # noqa: E402
from fuxictr_chime.io import write_parquet_atomic, write_text_atomic, write_yaml_atomic  # noqa: E402

WIDTH = 64
COLUMN = "hist_ctrl"


def oracle_rows(matrix: np.ndarray, user_index: np.ndarray, width: int = WIDTH,
                normalize: bool = False) -> list[list[float]]:
    """One ``width``-float row per user: row ``user_index[i]`` of the (U+1, V) oracle ``matrix``
    zero-padded to ``width`` (users outside the matrix: zeros); with ``normalize`` each non-zero
    row divided by its sum."""
    if matrix.shape[1] > width:
        raise SystemExit(f"the oracle has {matrix.shape[1]} topic codes, more than the column's {width} floats")
    padded = np.zeros((matrix.shape[0], width), dtype=np.float32)
    padded[:, : matrix.shape[1]] = matrix
    if normalize:
        total = padded.sum(axis=1, keepdims=True)
        padded = np.divide(padded, total, out=np.zeros_like(padded), where=total > 0)
    out = np.zeros((len(user_index), width), dtype=np.float32)
    inside = (user_index >= 0) & (user_index < len(padded))
    out[inside] = padded[user_index[inside]]
    return out.tolist()


def make_view(data: Path, view: Path, normalize: bool = False) -> None:
    """``view``: links to every file of ``data`` but user_info.parquet, which gets the oracle column."""
    import pandas as pd

    from fuxictr_chime.compressor.diagnostics import oracle_from_truth

    matrix = oracle_from_truth(data / "planted_truth.json")
    if matrix is None:
        raise SystemExit(f"{data}/planted_truth.json: not a planted log's truth (run `fuxictr-chime prepare synthetic`)")
    users = pd.read_parquet(data / "user_info.parquet")
    users[COLUMN] = oracle_rows(matrix, users["user_index"].to_numpy(), normalize=normalize)
    write_view(data, view, users)


def write_view(data: Path, view: Path, users) -> None:
    """``view``: symbolic links to every file of ``data`` but ``user_info.parquet``, which is
    ``users`` (a DataFrame), written atomically under a unique temporary name (instances may run at once)."""
    view.mkdir(parents=True, exist_ok=True)
    for item in data.iterdir():
        link = view / item.name
        if item.name != "user_info.parquet" and not link.exists():
            link.symlink_to(item.resolve())
    write_parquet_atomic(users, view / "user_info.parquet")


def dataset_on_view(dataset: dict, view: Path, data_root: Path) -> dict:
    """A copy of the dataset config ``dataset`` whose data files are those of ``view`` and whose
    processed data goes under ``data_root``."""
    dataset = dict(dataset, data_root=str(data_root) + "/")
    for key in ("train_data", "valid_data", "test_data", "user_info", "item_info"):
        dataset[key] = str(view / Path(dataset[key]).name)
    return dataset


def zoo_with(expid: str) -> dict:
    """The experiments of the zoo file (``model_zoo/<Model>/config/model_config.yaml``) that
    defines ``expid``; the file of the model named by ``expid``'s first word is read first."""
    import yaml

    first = ROOT / "model_zoo" / expid.split("_")[0] / "config" / "model_config.yaml"
    files = [first] + sorted(f for f in (ROOT / "model_zoo").glob("*/config/model_config.yaml") if f != first)
    for zoo_file in (f for f in files if f.exists()):
        zoo = yaml.safe_load(zoo_file.read_text()) or {}
        if expid in zoo:
            return zoo
    raise SystemExit(f"{ROOT / 'model_zoo'}/*/config/model_config.yaml: no {expid} experiment "
                     "(--model must be a zoo model or experiment prefix, e.g. DIN or DIN_softmax)")


def make_config(model: str, view: Path, folder: Path, data_root: Path, normalized: bool = False) -> list[str]:
    """A config folder with ``<model>_ORACLE_synthetic`` (the spec's column) and
    ``<model>_ORACLE_interaction_synthetic`` (``column_interaction: True``), its processed data
    under ``data_root``; returns both ids. ``normalized``: ``_ORACLE_normalized`` in the ids and
    dataset id ``synthetic_oracle_normalized`` (the view of ``--normalize``)."""
    import yaml

    zoo = zoo_with(f"{model}_HIST_synthetic")
    datasets = yaml.safe_load((ROOT / "dataset_configs" / "synthetic.yaml").read_text())
    tag = "_normalized" if normalized else ""
    expid, interaction = f"{model}_ORACLE{tag}_synthetic", f"{model}_ORACLE{tag}_interaction_synthetic"
    dataset_id = f"synthetic_oracle{tag}"
    experiment = dict(zoo[f"{model}_HIST_synthetic"], dataset_id=dataset_id)
    dataset = dataset_on_view(datasets["synthetic_hist"], view, data_root)
    folder.mkdir(parents=True, exist_ok=True)
    write_yaml_atomic(folder / "model_config.yaml",
                      {"Base": zoo["Base"], expid: experiment, interaction: {**experiment, "column_interaction": True}})
    write_yaml_atomic(folder / "dataset_config.yaml", {dataset_id: dataset})
    return [expid, interaction]


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_auc(path: Path, expid: str) -> dict[int, float]:
    return {int(r["seed"]): float(r["test_AUC"]) for r in read_rows(path) if r["expid"] == expid}


def paired_cells(mine: dict[int, float], other: dict[int, float]) -> tuple[list[str], float, float] | None:
    """The cells ``seeds | mine's mean | other's mean | difference (per seed) | p`` of a markdown row
    comparing two experiments' test AUCs paired by seed (one-sided paired t-test that ``mine`` is
    higher; ``-`` below two seeds), then the two means; None without a common seed."""
    from fuxictr_chime.bench.table import paired_pvalue

    seeds = sorted(set(mine) & set(other))
    if not seeds:
        return None
    a, b = np.array([mine[s] for s in seeds]), np.array([other[s] for s in seeds])
    p = paired_pvalue(a, b, higher_is_better=True)
    return [", ".join(map(str, seeds)), f"{a.mean():.4f}", f"{b.mean():.4f}",
            f"{a.mean() - b.mean():+.4f} ({', '.join(f'{d:+.4f}' for d in a - b)})",
            "-" if p is None else f"{p:.3f}"], float(a.mean()), float(b.mean())


def table(out: Path, baseline: Path, data: Path) -> str:
    """Every model with rows in ``<out>/runs.csv`` (in order of its first row), each variant
    paired by seed with the plain model's rows of ``baseline``."""
    import json

    oracle = json.loads((data / "summary.json").read_text())["oracle"]["test"]["auc"]
    models = list(dict.fromkeys(r["expid"].split("_ORACLE")[0] for r in read_rows(out / "runs.csv")
                                if "_ORACLE" in r["expid"]))
    lines = ["Each model with the planted long-term interest as its 64-float user column, against the plain "
             f"model with the same seeds (test AUC; oracle {oracle:.4f}; one-sided paired t-test; share = (w/ truth - "
             "plain) / (oracle - plain)). `concatenated`: the column enters the final MLP like `chime_hist` (the "
             "spec); `column_interaction`: the MLP also gets the column's embedding times a projection of the "
             "target item; `normalized`: each user's row divided by its sum (1, as `hist_ctrl`; the raw bonuses "
             "sum to long_affinity x n_favourites: 12 under the `sessions` preset, 8 with the default knobs).", "",
             "| comparison | seeds | w/ truth AUC | plain AUC | difference (per seed) | p | share of plain-to-oracle gap |",
             "|---|---|---|---|---|---|---|"]
    variants = {"concatenated": "", "column_interaction": "_interaction", "normalized, concatenated": "_normalized",
                "normalized, column_interaction": "_normalized_interaction"}
    for model, label in ((m, label) for m in models for label in variants):
        expid = f"{model}_ORACLE{variants[label]}_synthetic"
        paired = paired_cells(read_auc(out / "runs.csv", expid), read_auc(baseline, f"{model}_synthetic"))
        if paired is None:
            continue
        cells, truth, plain = paired
        share = (truth - plain) / (oracle - plain)
        lines.append(f"| {model} w/ truth ({label}) vs {model} | {' | '.join(cells)} | {share:.0%} |")
    text = "\n".join([*lines, "", "Written by `python benchmarks/oracle_column.py --model MODEL [--interaction] "
                                  "[--normalize] --seeds ...`; each run's command is in runs.csv."]) + "\n"
    write_text_atomic(out / "oracle_column.md", text)
    return text


def run_seeds(out: Path, config: Path, expid: str, seeds: list[int], threads: int) -> None:
    """``fuxictr-chime run`` of ``expid`` from ``config`` for each seed without a row in
    ``<out>/runs.csv`` (checkpoints under ``<out>/runs/checkpoints/seed_<s>``, so that instances with
    other seeds can run at once; each log to ``<out>/logs/<expid>_<seed>.log``)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = read_auc(out / "runs.csv", expid)
    for seed in (s for s in seeds if s not in done):
        command = [sys.executable, "-m", "fuxictr_chime.cli", "run", "--config", str(config), "--expid", expid,
                   "--seed", str(seed), "--model-root", str(out / "runs" / "checkpoints" / f"seed_{seed}"),
                   "--results", str(out / "runs.csv")]
        print("+", shlex.join(command), flush=True)
        (out / "logs").mkdir(exist_ok=True)
        with open(out / "logs" / f"{expid}_{seed}.log", "w") as log:
            subprocess.check_call(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data/synthetic", help="a prepared planted log")
    parser.add_argument("--model", default="DIN",
                        help="zoo model or experiment prefix (e.g. DIN_softmax) with a <MODEL>_HIST_synthetic "
                             "experiment; --baseline must hold its plain <MODEL>_synthetic rows")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2024, 2025, 2026])
    parser.add_argument("--baseline", type=Path, default=ROOT / "benchmarks/results/synthetic_rankers/runs.csv",
                        help="runs.csv with the plain <Model>_synthetic rows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/oracle_column")
    parser.add_argument("--interaction", action="store_true",
                        help="run the column_interaction experiment instead of the spec's concatenation")
    parser.add_argument("--normalize", action="store_true",
                        help="divide each user's truth row by its sum (the scale of hist_ctrl)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:  # one planted log per results folder, and the baseline's runs on the same log
        check_folders(args.out, args.data, [args.baseline])
    except KnobsError as error:
        parser.error(str(error))
    if not args.table_only:
        tag = "_normalized" if args.normalize else ""
        view, config = args.out / "runs" / f"data{tag}", args.out / "runs" / "config" / f"{args.model}{tag}"
        expid = make_config(args.model, view, config, args.out / "runs" / "processed",  # an unknown --model
                            normalized=args.normalize)[1 if args.interaction else 0]  # stops before the view
        make_view(args.data, view, normalize=args.normalize)
        run_seeds(args.out, config, expid, args.seeds, args.threads)
    print(table(args.out, args.baseline, args.data))


if __name__ == "__main__":
    main()
