"""Watch the compressor's representations step by step: where does the user vector collapse?

Trains a compressor experiment (default ``CHIME_synthetic`` on ``data/synthetic``) for
``--steps`` optimizer steps with the library's model, optimizer groups and schedule (one
micro-batch per step, no accumulation), and every ``--every`` steps measures on a fixed batch of
held-out users, over their valid positions, the norm of the mean vector and the mean distance to
it ("spread") of each stage: the IRM output h_t, the projected b_t (standardized when
``compression.standardize``), the quantized q_t, the user state z_t (before normalization), and the
mean pairwise cosine of the normalized z_t; beside the training losses of that step. A spread that
falls while the mean grows is the collapse (every user state the same vector).

``--set section.key=value`` changes the experiment (repeatable; values are YAML). Rows go to
``<out>/compressor_trace.csv`` with the command line.

    .venv/bin/python benchmarks/compressor_trace.py --steps 60 --tag paper
    .venv/bin/python benchmarks/compressor_trace.py --steps 60 --tag standardize --set compression.standardize=true
"""
from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._known_answer import append_csv, last_runs  # noqa: E402
from benchmarks._known_answer import write_table as write_known_answer_table  # noqa: E402

FIELDS = ["time_utc", "command", "tag", "changes", "step", "holistic", "commit", "h_mean", "h_spread", "b_mean",
          "b_spread", "q_mean", "q_spread", "z_mean", "z_spread", "z_mean_cosine"]


def spread(x, mask) -> tuple[float, float]:
    """(|mean|, mean |x - mean|) over the valid positions of x (B, T, D)."""
    x = x[mask]
    mu = x.mean(0)
    return float(mu.norm()), float((x - mu).norm(dim=-1).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data/synthetic")
    parser.add_argument("--expid", default="CHIME_synthetic")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="changes")
    parser.add_argument("--tag", default="", help="name of the run in the CSV")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/compressor_collapse")
    args = parser.parse_args(argv)
    if not (args.data / "representation.parquet").exists():
        parser.error(f"--data {args.data}: no representation.parquet (run `fuxictr-chime prepare ...`)")

    import torch
    import torch.nn.functional as F
    import yaml

    from fuxictr_chime.compressor.config import load_experiment
    from fuxictr_chime.compressor.data import RepresentationData
    from fuxictr_chime.compressor.model import CHIMECompressor
    from fuxictr_chime.compressor.train import _seed_everything, _split_users, warmup_cosine

    torch.set_num_threads(args.threads)
    config, _ = load_experiment(ROOT / "model_zoo/CHIME/config", args.expid)
    config.data_dir = str(args.data)
    for change in args.changes:
        key, _, value = change.partition("=")
        section, _, name = key.partition(".")
        target = getattr(config, section, None)
        if target is None or not hasattr(target, name):
            parser.error(f"--set {change}: the experiment has no {key}")
        setattr(target, name, yaml.safe_load(value))
    optim = config.optim
    _seed_everything(optim.seed)
    data = RepresentationData(config.data_dir, max_len=optim.max_len)
    train_ids, eval_ids = _split_users(data, optim)
    model = CHIMECompressor(config, data.vocab_sizes(), data.dense_widths())
    optimizer = torch.optim.AdamW(model.param_groups(optim))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(optim.warmup_steps, args.steps, constant=optim.schedule == "constant"))
    probe = next(iter(data.batches(eval_ids[:16], 16, shuffle=False, seed=0, bucket=True)))

    changes = " ".join(([f"expid={args.expid}"] if args.expid != parser.get_default("expid") else []) + args.changes)
    command = shlex.join(["python", "benchmarks/compressor_trace.py", *(argv if argv is not None else sys.argv[1:])])
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = []

    @torch.no_grad()
    def measure(step: int, losses: dict) -> None:
        model.eval()
        hidden, _, mask = model._represent(probe)
        row = {"time_utc": now, "command": command, "tag": args.tag, "changes": changes,
               "step": step, "holistic": losses.get("holistic", ""), "commit": losses.get("commit", "")}
        row["h_mean"], row["h_spread"] = spread(hidden, mask)
        if model.quantizer is not None:
            b = model._project(hidden, mask)
            q = model.quantizer(b, mask).quantized
            row["b_mean"], row["b_spread"] = spread(b, mask)
            row["q_mean"], row["q_spread"] = spread(q, mask)
            z = model.user_glu(q)
        else:
            z = model.user_glu(hidden)
        row["z_mean"], row["z_spread"] = spread(z, mask)
        zn = F.normalize(z[mask], dim=-1)
        n = zn.shape[0]
        row["z_mean_cosine"] = float((zn.sum(0).norm() ** 2 - n) / (n * (n - 1)))
        rows.append(row)
        print(", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                        if k not in ("time_utc", "command", "changes")), flush=True)
        model.train()

    measure(0, {})
    step, epoch = 0, 0
    model.train()
    while step < args.steps:
        for batch in data.batches(train_ids, optim.batch_size, shuffle=True, seed=optim.seed + epoch, bucket=True):
            out = model(batch)
            out["loss"].backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % args.every == 0 or step == args.steps:
                measure(step, out)
            if step >= args.steps:
                break
        epoch += 1
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "compressor_trace.csv"
    append_csv(csv_path, FIELDS, rows)
    write_table(csv_path, args.out / "compressor_trace.md")


def write_table(csv_path: Path, md_path: Path) -> None:
    """The last run of each tag, one line per measured step."""
    runs = last_runs(csv_path, lambda row: row["tag"])

    def num(value: str, digits: int) -> str:
        return f"{float(value):.{digits}f}" if value not in ("", None) else "-"

    lines = ["On 16 held-out users' valid positions: |mean| and spread (mean distance to the mean) of the IRM "
             "output h, the RVQ input b and the user state z before normalization; mean pairwise cosine of the "
             "normalized z (1 = every position the same vector). Losses are the training step's.", "",
             "| tag | changes | step | holistic | commit | h mean / spread | b mean / spread | z mean / spread | "
             "z mean cos |", "|---|---|---|---|---|---|---|---|---|"]
    for tag, rows in runs.items():
        for r in rows:
            lines.append(f"| {tag} | {r['changes'] or '-'} | {r['step']} | {num(r['holistic'], 3)} | {num(r['commit'], 3)} | "
                         f"{num(r['h_mean'], 2)} / {num(r['h_spread'], 2)} | {num(r['b_mean'], 2)} / {num(r['b_spread'], 2)} | "
                         f"{num(r['z_mean'], 2)} / {num(r['z_spread'], 2)} | {num(r['z_mean_cosine'], 3)} |")
    write_known_answer_table(md_path, lines, {rows[0]["command"] for rows in runs.values()})


if __name__ == "__main__":
    main()
