"""Where does the compressor's user vector collapse? One shipped experiment, one switch at a time.

Each variant is the compressor experiment ``--expid`` (default ``CHIME_synthetic``) with a few
config values changed (table ``VARIANTS``), trained for ``--steps`` optimizer steps on ``--data``
(default: the planted log of ``fuxictr-chime prepare synthetic --out data/synthetic``) through the
library's own ``compress train`` loop. Every eval row (eval holistic loss on the held-out users,
effective rank and mean pairwise cosine of z, commitment) goes to
``<out>/compressor_collapse.csv`` with the command line; ``<out>/compressor_collapse.md`` gives
per variant the best eval holistic loss, its step, the last row's mean cosine, and the
reference scorers of the same eval batches (uniform, popularity, co-occurrence, oracle).

    .venv/bin/python benchmarks/compressor_collapse.py --variants paper wo_icm quantizer_warmup
    .venv/bin/python benchmarks/compressor_collapse.py --data data/strong --variants paper --tag strong
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._known_answer import append_csv, last_runs  # noqa: E402
from benchmarks._known_answer import write_table as write_known_answer_table  # noqa: E402

#: variant -> {section: {key: value}} applied on top of the experiment ("{steps/2}" = half the budget)
VARIANTS = {
    "paper": {},
    "wo_icm": {"compression": {"enabled": False}},
    "wo_il": {"loss": {"immediate": False}},
    "no_commitment": {"compression": {"commitment_weight": 0.0}},
    "straight_through": {"compression": {"rotation_trick": False}},
    "straight_through_no_commitment": {"compression": {"rotation_trick": False, "commitment_weight": 0.0}},
    "quantizer_warmup": {"compression": {"warmup_steps": "{steps/2}"}},
    "standardize": {"compression": {"standardize": True}},
    "standardize_lr_3e-3": {"compression": {"standardize": True}, "optim": {"lr_new": 3e-3, "schedule": "constant"}},
    "standardize_cate_only_lr_3e-3": {
        "compression": {"standardize": True}, "optim": {"lr_new": 3e-3, "schedule": "constant"},
        "adaptation": {"embedding_dims": {"item_id": 0, "cate_id": 112, "label": 16}, "dense_dims": {"side_emb": 0}}},
    "standardize_cate_only_lr_3e-3_warmup": {
        "compression": {"standardize": True, "warmup_steps": "{steps/2}"}, "optim": {"lr_new": 3e-3, "schedule": "constant"},
        "adaptation": {"embedding_dims": {"item_id": 0, "cate_id": 112, "label": 16}, "dense_dims": {"side_emb": 0}}},
    "standardize_cate_only_lr_3e-3_dim16": {
        "compression": {"standardize": True, "codebook_dim": 16}, "optim": {"lr_new": 3e-3, "schedule": "constant"},
        "adaptation": {"embedding_dims": {"item_id": 0, "cate_id": 112, "label": 16}, "dense_dims": {"side_emb": 0}}},
    "standardize_cate_only_lr_3e-3_dim8": {
        "compression": {"standardize": True, "codebook_dim": 8}, "optim": {"lr_new": 3e-3, "schedule": "constant"},
        "adaptation": {"embedding_dims": {"item_id": 0, "cate_id": 112, "label": 16}, "dense_dims": {"side_emb": 0}}},
    "standardize_cate_only_lr_3e-3_no_commitment": {
        "compression": {"standardize": True, "commitment_weight": 0.0}, "optim": {"lr_new": 3e-3, "schedule": "constant"},
        "adaptation": {"embedding_dims": {"item_id": 0, "cate_id": 112, "label": 16}, "dense_dims": {"side_emb": 0}}},
    "standardize_cate_only_lr_3e-3_no_commitment_warmup": {
        "compression": {"standardize": True, "commitment_weight": 0.0, "warmup_steps": "{steps/2}"},
        "optim": {"lr_new": 3e-3, "schedule": "constant"},
        "adaptation": {"embedding_dims": {"item_id": 0, "cate_id": 112, "label": 16}, "dense_dims": {"side_emb": 0}}},
    "cate_only_lr_3e-3_no_commitment": {  # the previous variant without standardize
        "compression": {"commitment_weight": 0.0}, "optim": {"lr_new": 3e-3, "schedule": "constant"},
        "adaptation": {"embedding_dims": {"item_id": 0, "cate_id": 112, "label": 16}, "dense_dims": {"side_emb": 0}}},
    "standardize_lr_3e-3_no_commitment": {  # with the paper's IAM inputs (item id and side vector)
        "compression": {"standardize": True, "commitment_weight": 0.0}, "optim": {"lr_new": 3e-3, "schedule": "constant"}},
    "standardize_no_id_lr_3e-3_no_commitment": {  # category, side vector and label; no item id
        "compression": {"standardize": True, "commitment_weight": 0.0}, "optim": {"lr_new": 3e-3, "schedule": "constant"},
        "adaptation": {"embedding_dims": {"item_id": 0, "cate_id": 96, "label": 16}, "dense_dims": {"side_emb": 16}}},
    "init_std_1": {"adaptation": {"init_std": 1.0}},
    "tau_1": {"loss": {"tau_holistic": 1.0, "tau_immediate": 1.0}},
    "lr_2e-3": {"optim": {"lr_new": 2e-3, "schedule": "constant"}},
    # the holistic score's confidence: a softer temperature, or |z| and |p| kept (confidence can
    # grow with the evidence a user has shown; with L2-normalized z, p it is fixed by tau)
    "tau_h_0.5": {"loss": {"tau_holistic": 0.5}},
    "unnormalized": {"loss": {"normalize": False}},
    # the IRM alone, made easy: no quantizer, no immediate loss, a 16-d item id, 80-d category
    "wo_icm_wo_il_small_id_lr_2e-3": {
        "compression": {"enabled": False}, "loss": {"immediate": False},
        "optim": {"lr_new": 2e-3, "schedule": "constant"},
        "adaptation": {"embedding_dims": {"item_id": 16, "cate_id": 80, "label": 16}, "dense_dims": {"side_emb": 16}}},
    "wo_icm_wo_il_lr_3e-3": {"compression": {"enabled": False}, "loss": {"immediate": False},
                             "optim": {"lr_new": 3e-3, "schedule": "constant"}},
    # the IRM with the probe's information only: category (and label) in, no item id, no side vector
    "irm_cate_only": {
        "compression": {"enabled": False}, "loss": {"immediate": False},
        "optim": {"lr_new": 3e-3, "schedule": "constant"},
        "adaptation": {"embedding_dims": {"item_id": 0, "cate_id": 112, "label": 16}, "dense_dims": {"side_emb": 0}}},
    # the same 64-float histogram spread over more, smaller codebooks (benchmarks/quantizer_ceiling.py:
    # a k-means RVQ of the counting state loses less with more levels)
    "rvq_16x4": {"compression": {"codebook_sizes": [16, 16, 16, 16]}},
    "rvq_8x8": {"compression": {"codebook_sizes": [8] * 8}},
    "rvq_4x16": {"compression": {"codebook_sizes": [4] * 16}},
    # the IRM alone (no quantizer) made smaller or regularized, against its overfitting after ~1,350 steps
    "wo_icm_1_layer": {"compression": {"enabled": False}, "backbone": {"num_layers": 1}},
    "wo_icm_weight_decay": {"compression": {"enabled": False}, "optim": {"weight_decay": 0.1}},
}
FIELDS = ["time_utc", "command", "data", "tag", "variant", "changes", "step", "holistic", "commit",
          "eff_rank", "mean_cosine", "ref_uniform", "ref_popularity", "ref_cooccurrence", "ref_oracle"]


def apply(config, changes: dict, steps: int) -> dict:
    resolved = {}
    for section, values in changes.items():
        target = getattr(config, section)
        for key, value in values.items():
            if value == "{steps/2}":
                value = steps // 2
            if not hasattr(target, key):
                raise SystemExit(f"variant changes unknown key {section}.{key}")
            setattr(target, key, value)
            resolved.setdefault(section, {})[key] = value
    return resolved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data/synthetic")
    parser.add_argument("--expid", default="CHIME_synthetic")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--tag", default="", help="label of the data in the table (e.g. strong)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/compressor_collapse")
    args = parser.parse_args(argv)
    if not (args.data / "representation.parquet").exists():
        parser.error(f"--data {args.data}: no representation.parquet (run `fuxictr-chime prepare ...`)")

    import torch

    from fuxictr_chime.compressor import train as training
    from fuxictr_chime.compressor.config import load_experiment

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/compressor_collapse.py", *(argv if argv is not None else sys.argv[1:])])
    csv_path = args.out / "compressor_collapse.csv"
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        config, _ = load_experiment(ROOT / "model_zoo/CHIME/config", args.expid)
        config.data_dir = str(args.data)
        config.output_dir = str(args.out / "runs" / f"{args.tag or args.data.name}_{variant}")
        changes = apply(config, VARIANTS[variant], args.steps)
        training.train(config, progress=False, max_steps=args.steps)
        with (Path(config.output_dir) / "log.csv").open(newline="") as f:
            evals = [row for row in csv.DictReader(f) if row["split"] == "eval"]
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        append_csv(csv_path, FIELDS, [{"time_utc": now, "command": command, "data": args.data.name,
                                       "tag": args.tag or args.data.name, "variant": variant,
                                       "changes": json.dumps(changes, sort_keys=True),
                                       **{k: row.get(k, "") for k in FIELDS[6:]}} for row in evals])
    write_table(csv_path, args.out / "compressor_collapse.md")


def write_table(csv_path: Path, md_path: Path) -> None:
    """Last run of each (tag, variant): best eval holistic, its step, z at the last eval."""
    runs = last_runs(csv_path, lambda row: (row["tag"], row["variant"]))
    lines = ["Eval holistic loss on the held-out users (lower is better) beside the reference scorers "
             "of the same batches; z = the user states (mean pairwise cosine near 1 = collapsed).", "",
             "| data | variant | changes | best eval holistic (step) | last: holistic / eff. rank / mean cos | "
             "uniform | popularity | co-occurrence | oracle |", "|---|---|---|---|---|---|---|---|---|"]
    for (tag, variant), rows in runs.items():
        best = min(rows, key=lambda r: float(r["holistic"]))
        last = rows[-1]
        ref = {k: (f"{float(last[k]):.3f}" if last[k] else "-") for k in FIELDS[11:]}
        lines.append(f"| {tag} | {variant} | `{rows[0]['changes']}` | {float(best['holistic']):.3f} ({best['step']}) | "
                     f"{float(last['holistic']):.3f} / {float(last['eff_rank']):.2f} / {float(last['mean_cosine']):.3f} | "
                     f"{ref['ref_uniform']} | {ref['ref_popularity']} | {ref['ref_cooccurrence']} | {ref['ref_oracle']} |")
    write_known_answer_table(md_path, lines, {rows[0]["command"] for rows in runs.values()})


if __name__ == "__main__":
    main()
