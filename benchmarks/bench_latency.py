"""Per-sample inference latency of every ranking model, plain vs w/ CHIME, at history lengths
50, 100, 200, 500, 1000, in one run (issue 8 acceptance; CHIME paper section 1: the compressed
interest is precomputed offline, so serving it should cost almost nothing).

Synthetic feature map and batches: a random prepared folder (``write_synthetic_dataset``:
item_id, cate_id, a 64-d item vector and a 64-d ``chime_hist`` per user) in a temporary
folder; for each length L one batch of ``--batch-size`` samples whose histories are FULL
(all L positions valid, random items). Models are built with ``max_len = L``, in eval mode,
under ``torch.inference_mode()``; plain and CHIME forwards are timed alternately (same
batch, same thread count) and the median of ``--reps`` repetitions divided by the batch size
is the per-sample latency. Goal: w/ CHIME <= 1.10 x its base model at every length.
Appends one row per (model, length) to benchmarks/results/bench_latency.csv.

    .venv/bin/python benchmarks/bench_latency.py
    .venv/bin/python benchmarks/bench_latency.py --models DIN TWIN --lengths 50 1000 --reps 5
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "bench_latency.csv"
MODELS = ("DIN", "SimSoft", "ETA", "SDIM", "TWIN")
GOAL = 1.10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--lengths", nargs="+", type=int, default=[50, 100, 200, 500, 1000])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--reps", type=int, default=15, help="timed repetitions per model (median)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--items", type=int, default=20000)
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=str(RESULTS), help="CSV to append to")
    return p.parse_args(argv)


def model_params(model: str, length: int, args, model_root: str, item_info: str) -> dict:
    """Paper settings (CHIME section 5.1) except the history length under test."""
    params = {"embedding_dim": args.embedding_dim, "dnn_hidden_units": [512, 128, 64],
              "dnn_activations": "ReLU", "short_len": 30, "max_len": length, "topk": 50,
              "attention_dim": 64, "num_heads": 2, "attention_dropout": 0, "net_dropout": 0,
              "batch_norm": False, "learning_rate": 5.e-4, "optimizer": "adam",
              "loss": "binary_crossentropy", "metrics": ["AUC"], "verbose": 0,
              "model_root": model_root, "item_info": item_info, "accumulation_steps": 1}
    if model == "SDIM":
        params.update(num_hashes=48, hash_bits=3)
    if model == "ETA":
        params.update(hash_bits=32)
    if model == "TWIN":
        params.update(sync_every=100)
    return params


def full_history_batch(loader, length: int, batch_size: int, n_items: int, seed: int) -> dict:
    """One loader batch whose histories are replaced by L random valid items."""
    import torch

    batch = loader.make_batch(np.arange(batch_size))
    gen = torch.Generator().manual_seed(seed)
    batch["item_seq"][:, :-1] = torch.randint(1, n_items + 1, (batch_size, length),
                                              generator=gen)  # (B, L) + target at [:, -1]
    batch["seq_mask"][:] = True  # (B, L)
    batch["seq_len"][:] = length
    return batch


def time_pair(base, chime, batch: dict, reps: int, warmup: int) -> tuple[float, float]:
    """Median seconds per forward of ``base`` and ``chime``, timed alternately."""
    import torch

    times = {0: [], 1: []}
    with torch.inference_mode():
        for rep in range(warmup + reps):
            order = (0, 1) if rep % 2 == 0 else (1, 0)
            for which in order:
                net = base if which == 0 else chime
                start = time.perf_counter()
                out = net(batch)["y_pred"]
                elapsed = time.perf_counter() - start
                assert torch.isfinite(out).all()
                if rep >= warmup:
                    times[which].append(elapsed)
    return float(np.median(times[0])), float(np.median(times[1]))


def main(argv=None) -> int:
    import torch
    from fuxictr.pytorch.torch_utils import seed_everything

    from fuxictr_chime.data.features import build_feature_map
    from fuxictr_chime.data.loader import LongSeqDataLoader
    from fuxictr_chime.data.reference_loader import write_synthetic_dataset
    from fuxictr_chime.models import get_model
    from fuxictr_chime.io import append_csv_rows

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    with tempfile.TemporaryDirectory(prefix="bench_latency_") as tmp_name:
        tmp = Path(tmp_name)
        block = write_synthetic_dataset(tmp, n_users=max(args.batch_size, 300),
                                        n_items=args.items, n_samples=args.batch_size,
                                        max_history=max(args.lengths), seed=args.seed)
        data = {**block, **{k: str(tmp / v) for k, v in block.items()
                            if k in ("train_data", "user_info", "item_info")}}
        fmap = build_feature_map("synthetic", data, embedding_dim=args.embedding_dim)
        os.makedirs(tmp / "ckpt" / "synthetic", exist_ok=True)
        met_all = True
        for length in args.lengths:
            loader = LongSeqDataLoader(fmap, data["train_data"], split="test",
                                       batch_size=args.batch_size, user_info=data["user_info"],
                                       item_info=data["item_info"], max_len=length,
                                       prefetch=False)
            batch = full_history_batch(loader, length, args.batch_size, args.items, args.seed)
            for model in args.models:
                params = model_params(model, length, args, str(tmp / "ckpt"), data["item_info"])
                nets = []
                for name in (model, f"{model}_CHIME"):
                    seed_everything(args.seed)
                    nets.append(get_model(name)(fmap, model_id=name, **params).eval())
                base_s, chime_s = time_pair(nets[0], nets[1], batch, args.reps, args.warmup)
                ratio = chime_s / base_s
                met_all &= ratio <= GOAL
                row = {"time_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "command": command, "cpu_count": os.cpu_count(),
                       "torch_version": torch.__version__,
                       "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
                       "model": model, "history_len": length, "batch_size": args.batch_size,
                       "reps": args.reps, "base_us_per_sample": round(base_s / args.batch_size * 1e6, 3),
                       "chime_us_per_sample": round(chime_s / args.batch_size * 1e6, 3),
                       "chime_over_base": round(ratio, 4), "goal_met": bool(ratio <= GOAL)}
                append_csv_rows(args.results, [row])
                print(f"L={length:5d} {model:8s} base {row['base_us_per_sample']:9.1f} us  "
                      f"CHIME {row['chime_us_per_sample']:9.1f} us  x{ratio:.3f}", flush=True)
    print(f"goal (w/ CHIME <= {GOAL}x base at every length) met: {met_all}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
