"""Training tokens/s and export users/s of a CHIME compressor (issue 3 benchmark).

Measures through the library's own entry points, :func:`fuxictr_chime.compressor.train.train`
(tokens = valid behaviors of the micro-batches; seconds = the trainer's training time, evals
excluded) and :func:`fuxictr_chime.compressor.export.export` (all users of user_info, from
loading the checkpoint to the written column). Runs:

* ``demo``: an experiment of model_zoo/CHIME/config (default CHIME_movielens) on its prepared
  data (a temporary copy receives the export);
* ``large`` (on by default when CUDA is available, or with --large): a Qwen2.5-0.5B-sized random
  backbone (hidden 896, 24 layers, 14/2 heads, MLP 4864) at T = --large-len (1000) behaviors per
  user, batch 8, bf16 autocast, on a synthetic prepared folder (random log, no real data).

One CSV row per run is appended to benchmarks/results/bench_compressor.csv with the full command
line, UTC time, CPU count and torch version.

    python benchmarks/bench_compressor.py --steps 20
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from fuxictr_chime.compressor.config import CHIMEConfig, load_experiment
from fuxictr_chime.compressor.export import export
from fuxictr_chime.compressor.train import train
from fuxictr_chime.io import append_csv_rows

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "bench_compressor.csv"
COLUMNS = ["utc_time", "command", "cpu_count", "torch_version", "device", "threads", "run", "expid",
           "hidden_size", "num_layers", "max_len", "batch_size", "grad_accum_steps", "bf16", "steps",
           "train_tokens", "train_seconds", "train_tokens_per_s", "export_users", "export_seconds",
           "export_users_per_s"]
PREPARED = ("item_info.parquet", "representation.parquet", "user_info.parquet", "summary.json",
            "dataset_config.yaml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "model_zoo" / "CHIME" / "config",
                    help="experiment folder (default model_zoo/CHIME/config)")
    ap.add_argument("--expid", default="CHIME_movielens", help="demo experiment id (default CHIME_movielens)")
    ap.add_argument("--data", type=Path, help="prepared folder (default: the experiment's data_dir)")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps to time (default 20)")
    ap.add_argument("--no-demo", action="store_true", help="skip the demo run")
    ap.add_argument("--large", action="store_true", help="run the Qwen2.5-0.5B-sized config even without CUDA")
    ap.add_argument("--no-large", action="store_true", help="skip it even with CUDA")
    ap.add_argument("--large-len", type=int, default=1000, help="behaviors per user, large run (default 1000)")
    ap.add_argument("--large-users", type=int, default=96, help="synthetic users, large run (default 96)")
    ap.add_argument("--large-steps", type=int, default=10, help="optimizer steps, large run (default 10)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="CSV to append to")
    return ap.parse_args(argv)


def run_once(name: str, config: CHIMEConfig, data_dir: Path, work: Path) -> dict:
    """Train ``config`` for its max_steps and export; the numbers of one CSV row."""
    raw = config.to_dict()
    raw["optim"].update(eval_every=raw["optim"]["max_steps"], eval_users=min(8.0, raw["optim"]["eval_users"]))
    raw.update(data_dir=str(data_dir), output_dir=str(work / f"{name}_run"))
    config = CHIMEConfig.from_dict(raw)
    result = train(config, progress=False)
    copy = work / f"{name}_data"
    copy.mkdir()
    for file in PREPARED:
        if (data_dir / file).exists():
            shutil.copy2(data_dir / file, copy / file)
    stats = export(result.last_checkpoint, copy, progress=False)
    b, o = config.backbone, config.optim
    return {"run": name, "hidden_size": b.hidden_size, "num_layers": b.num_layers, "max_len": o.max_len,
            "batch_size": o.batch_size, "grad_accum_steps": o.grad_accum_steps,
            "bf16": b.bf16 and torch.cuda.is_available(), "steps": result.step,
            "train_tokens": result.train_tokens, "train_seconds": round(result.train_seconds, 3),
            "train_tokens_per_s": round(result.train_tokens / max(result.train_seconds, 1e-9), 1),
            "export_users": stats["users"], "export_seconds": round(stats["seconds"], 3),
            "export_users_per_s": round(stats["users_per_second"], 2)}


def demo_config(args: argparse.Namespace) -> tuple[CHIMEConfig, Path]:
    config, _ = load_experiment(args.config, args.expid)
    config.optim.max_steps = args.steps
    return config, Path(args.data or config.data_dir)


def large_config(args: argparse.Namespace, work: Path) -> tuple[CHIMEConfig, Path]:
    """Qwen2.5-0.5B-sized random backbone on a synthetic folder with ~large_len behaviors per user."""
    from fuxictr_chime.data.split import split_by_time
    from fuxictr_chime.data.synthetic import synthetic_log
    from fuxictr_chime.data.writer import write_prepared

    per_user = int(args.large_len / 0.75) + 50  # ~75% of each user's events fall before t1
    log = synthetic_log(n_users=args.large_users, n_items=20000, n_events=args.large_users * per_user,
                        n_times=per_user * 4, dense={"image_emb": 64}, seed=0, name="synthetic")
    data_dir = work / "synthetic"
    write_prepared(log, split_by_time(log, "q0.75", "q0.9"), data_dir, max_len=args.large_len)
    config = CHIMEConfig.from_dict({
        "adaptation": {"embedding_dims": {"item_id": 512, "cate_id": 64, "label": 64},
                       "dense_dims": {"image_emb": 256}},
        "optim": {"batch_size": 8, "grad_accum_steps": 4, "max_len": args.large_len,
                  "max_steps": args.large_steps, "warmup_steps": 2, "eval_users": 8},
    })
    return config, data_dir


def append_rows(path: Path, rows: list[dict]) -> None:
    common = {"utc_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join([sys.executable, *sys.argv]), "cpu_count": os.cpu_count(),
              "torch_version": torch.__version__,
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "threads": torch.get_num_threads()}
    append_csv_rows(path, [{**common, **row} for row in rows], COLUMNS)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_compressor_") as tmp:
        work = Path(tmp)
        if not args.no_demo:
            config, data_dir = demo_config(args)
            rows.append({**run_once("demo", config, data_dir, work), "expid": args.expid})
        if not args.no_large and (args.large or torch.cuda.is_available()):
            config, data_dir = large_config(args, work)
            rows.append({**run_once("large", config, data_dir, work), "expid": "qwen2.5-0.5b-random"})
    append_rows(args.out, rows)
    for row in rows:
        print(f"{row['run']}: {row['train_tokens_per_s']:.0f} training tokens/s "
              f"({row['train_tokens']} tokens in {row['train_seconds']:.1f} s), "
              f"export {row['export_users_per_s']:.1f} users/s ({row['export_users']} users)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
