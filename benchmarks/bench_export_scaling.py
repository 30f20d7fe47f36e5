"""Export throughput (users/s): single-process export vs the Ray Data export with 1, 2, ... workers.

One run builds a synthetic prepared dataset (``fuxictr_chime.data.synthetic.synthetic_log`` split
by time and written with ``write_prepared``), trains a small CHIME compressor for a few steps
(so the codebooks are data-initialized), then exports ``chime_hist`` with
``fuxictr_chime.compressor.export.export`` and with ``fuxictr_chime.compressor.ray_export.export_ray``
for every ``--workers`` value, each into its own copy of the folder. Every Ray export is checked
to equal the single-process column. Ray is started once (its start-up is not timed); each
timed export includes loading the checkpoint, starting the actor pool (each actor loads the
model), reading, encoding and writing. Ray rows also split that wall time: ``worker_encode_s`` is
the workers' summed time inside the encoder (reading checks and model), ``encode_users_per_s_per_worker``
the rate of one busy worker, and ``overhead_s`` the rest (planning, actor start-up and model loading,
driver I/O, imbalance). One CSV row per export is appended to
benchmarks/results/bench_export_scaling.csv with the command line, UTC time, CPU count and the
torch and ray versions.

    python benchmarks/bench_export_scaling.py --users 4000 --workers 1 2
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

from fuxictr_chime.io import append_csv_rows

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_export_scaling.csv"
COLUMNS = ["utc_time", "command", "cpu_count", "torch", "ray", "torch_threads", "users", "users_with_history",
           "behaviors", "max_len", "hidden", "layers", "batch_size", "engine", "workers", "rows_per_task",
           "seconds", "users_per_s", "speedup_vs_local", "worker_encode_s",
           "encode_users_per_s_per_worker", "overhead_s", "equal_to_local"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=4000, help="synthetic users (default 4000)")
    ap.add_argument("--items", type=int, default=2000, help="synthetic items (default 2000)")
    ap.add_argument("--events-per-user", type=int, default=60,
                    help="mean logged actions per user; ~70%% fall before t1 (default 60)")
    ap.add_argument("--max-len", type=int, default=256, help="behaviors kept per user (optim.max_len)")
    ap.add_argument("--hidden", type=int, default=64, help="backbone hidden size (default 64)")
    ap.add_argument("--layers", type=int, default=2, help="backbone layers (default 2)")
    ap.add_argument("--batch-size", type=int, default=32, help="users per forward pass (default 32)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts (default 1 2)")
    ap.add_argument("--rows-per-task", type=int, default=None, help="users per Ray block (default 50 batches)")
    ap.add_argument("--train-steps", type=int, default=3, help="optimizer steps before exporting (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="where the data and checkpoint go (default: temp)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="CSV to append to")
    return ap.parse_args(argv)


def build_dataset(args: argparse.Namespace, root: Path) -> Path:
    from fuxictr_chime.data.split import split_by_time
    from fuxictr_chime.data.synthetic import synthetic_log
    from fuxictr_chime.data.writer import write_prepared

    log = synthetic_log(n_users=args.users, n_items=args.items, n_events=args.users * args.events_per_user,
                        n_categories=20, dense={"title_emb": 16}, seed=args.seed, name="scaling")
    folder = root / "data"
    write_prepared(log, split_by_time(log, "q0.7", "q0.9"), folder, max_len=args.max_len)
    return folder


def train_checkpoint(args: argparse.Namespace, data_dir: Path, root: Path) -> Path:
    from fuxictr_chime.compressor.config import CHIMEConfig
    from fuxictr_chime.compressor.train import train

    heads = max(1, args.hidden // 16)
    config = CHIMEConfig.from_dict({
        "backbone": {"hidden_size": args.hidden, "num_layers": args.layers, "num_attention_heads": heads,
                     "num_key_value_heads": heads, "intermediate_size": 2 * args.hidden, "bf16": False},
        "adaptation": {"embedding_dims": {"item_id": args.hidden - 24, "cate_id": 8, "label": 8},
                       "dense_dims": {"title_emb": 8}},
        "optim": {"batch_size": args.batch_size, "grad_accum_steps": 1, "max_steps": args.train_steps,
                  "warmup_steps": 1, "eval_every": args.train_steps, "eval_users": 16, "max_len": args.max_len,
                  "seed": args.seed},
        "data_dir": str(data_dir), "output_dir": str(root / "run"),
    })
    return train(config, progress=False).last_checkpoint


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import numpy as np
    import pyarrow.parquet as pq
    import ray
    import torch

    from fuxictr_chime.compressor.data import RepresentationData
    from fuxictr_chime.compressor.export import export
    from fuxictr_chime.compressor.ray_export import export_ray

    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_export_scaling."))
    root.mkdir(parents=True, exist_ok=True)
    try:
        data_dir = build_dataset(args, root)
        checkpoint = train_checkpoint(args, data_dir, root)
        data = RepresentationData(data_dir, max_len=args.max_len)
        common = {"users_with_history": len(data), "behaviors": sum(data.sequence_length(u) for u in
                                                                    data.users_with_history()),
                  "max_len": args.max_len, "hidden": args.hidden, "layers": args.layers,
                  "batch_size": args.batch_size, "torch_threads": torch.get_num_threads()}
        runs = []
        local = _copy(data_dir, root / "local")
        stats = export(checkpoint, local, batch_size=args.batch_size, progress=False)
        reference = _column(pq, np, local)
        runs.append(("local", 1, None, stats, True))
        ray.init(num_cpus=max(args.workers) + 1, include_dashboard=False)  # start-up not timed
        try:
            for workers in args.workers:
                folder = _copy(data_dir, root / f"ray{workers}")
                stats = export_ray(checkpoint, folder, num_workers=workers, batch_size=args.batch_size,
                                   rows_per_task=args.rows_per_task, progress=False)
                runs.append(("ray", workers, args.rows_per_task, stats,
                             bool(np.array_equal(_column(pq, np, folder), reference))))
        finally:
            ray.shutdown()
        _write_rows(args, common, runs, torch.__version__, ray.__version__)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _column(pq, np, folder: Path):
    return np.array(pq.read_table(folder / "user_info.parquet").column("chime_hist").to_pylist(), dtype=np.float32)


def _worker_split(stats: dict, workers: int) -> dict:
    """Ray runs: the workers' summed encode time, encode rate per worker, and the rest of the wall
    time (Ray planning, actor start-up and model loading, driver I/O, load imbalance)."""
    busy = stats.get("worker_encode_seconds")
    if busy is None:
        return {"worker_encode_s": "", "encode_users_per_s_per_worker": "", "overhead_s": ""}
    return {"worker_encode_s": round(busy, 3),
            "encode_users_per_s_per_worker": round(stats["users_with_history"] / max(busy, 1e-9), 1),
            "overhead_s": round(stats["seconds"] - busy / workers, 3)}


def _write_rows(args, common: dict, runs: list, torch_version: str, ray_version: str) -> None:
    base_rate = runs[0][3]["users_per_second"]
    rows = []
    for engine, workers, _, stats, equal in runs:
        rows.append({"utc_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "command": " ".join(["python", *map(shlex.quote, sys.argv)]), "cpu_count": os.cpu_count(),
                     "torch": torch_version, "ray": ray_version, "users": stats["users"], "engine": engine,
                     "workers": workers, "rows_per_task": stats.get("rows_per_task", ""),
                     "seconds": round(stats["seconds"], 3),
                     "users_per_s": round(stats["users_per_second"], 1),
                     "speedup_vs_local": round(stats["users_per_second"] / base_rate, 3),
                     **_worker_split(stats, workers), "equal_to_local": equal, **common})
        print(f"{engine:>5} workers={workers}: {stats['users']} users in {stats['seconds']:.1f} s "
              f"= {stats['users_per_second']:.1f} users/s (x{rows[-1]['speedup_vs_local']:.2f}); encoding "
              f"{rows[-1]['encode_users_per_s_per_worker'] or '-'} users/s per worker, overhead "
              f"{rows[-1]['overhead_s'] or '-'} s; equal={equal}")
    append_csv_rows(args.out, rows, COLUMNS)


if __name__ == "__main__":
    sys.exit(main())
