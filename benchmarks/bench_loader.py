"""Samples/s of LongSeqDataLoader vs the per-batch pandas reference loader (issue 2 item 5).

Writes a synthetic prepared dataset (ARCHITECTURE.md section 2) into a temporary folder,
then makes one pass (or --max-batches batches) with each loader at the same history length
and batch size, in one run, and appends a row to benchmarks/results/bench_loader.csv.
Both loaders return identical batches (checked on the first batch here, and in the tests).

    .venv/bin/python benchmarks/bench_loader.py            # 5k users, 50k items, 200k samples
    .venv/bin/python benchmarks/bench_loader.py --samples 20000 --max-batches 5   # quick look
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone

import torch

from fuxictr_chime.data.features import build_feature_map, load_dataset_params
from fuxictr_chime.data.loader import LongSeqDataLoader
from fuxictr_chime.data.reference_loader import ReferenceLongSeqLoader, write_synthetic_dataset
from fuxictr_chime.io import append_csv_rows

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_loader.csv")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=50000)
    parser.add_argument("--samples", type=int, default=200000)
    parser.add_argument("--max-history", type=int, default=1000,
                        help="longest full_item_seq of a user (lengths uniform in 1..this)")
    parser.add_argument("--dense-dim", type=int, default=64, help="item side-vector width")
    parser.add_argument("--max-len", type=int, default=1000, help="history length L")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--max-batches", type=int, default=None,
                        help="batches per loader (default: one full pass)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=RESULTS, help="CSV to append to")
    return parser.parse_args(argv)


def timed_pass(loader, max_batches: int | None) -> tuple[int, float]:
    """(samples, seconds) of iterating ``loader`` for at most ``max_batches`` batches."""
    samples, start = 0, time.perf_counter()
    for i, batch in enumerate(loader):
        samples += len(batch["item_seq"])
        if max_batches is not None and i + 1 >= max_batches:
            break
    return samples, time.perf_counter() - start


def build(cls, feature_map, params: dict, args, **kw):
    start = time.perf_counter()
    loader = cls(feature_map, params["train_data"], split="train", batch_size=args.batch_size,
                 shuffle=True, seed=args.seed, user_info=params["user_info"],
                 item_info=params["item_info"], max_len=args.max_len, **kw)
    return loader, time.perf_counter() - start


def check_same_first_batch(fast, ref) -> None:
    a, b = next(iter(fast)), next(iter(ref))
    fast.epoch = ref.epoch = 0
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), "loaders differ"


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as folder:
        write_synthetic_dataset(folder, n_users=args.users, n_items=args.items,
                                n_samples=args.samples, max_history=args.max_history,
                                dense_dim=args.dense_dim, seed=args.seed)
        params = load_dataset_params(folder, "synthetic")
        feature_map = build_feature_map("synthetic", params)
        fast, fast_build = build(LongSeqDataLoader, feature_map, params, args)
        plain, _ = build(LongSeqDataLoader, feature_map, params, args, prefetch=False)
        ref, ref_build = build(ReferenceLongSeqLoader, feature_map, params, args)
        check_same_first_batch(fast, ref)
        n_fast, t_fast = timed_pass(fast, args.max_batches)
        n_plain, t_plain = timed_pass(plain, args.max_batches)
        n_ref, t_ref = timed_pass(ref, args.max_batches)
    return {"fast_build_s": round(fast_build, 3), "fast_samples_per_s": round(n_fast / t_fast, 1),
            "fast_noprefetch_samples_per_s": round(n_plain / t_plain, 1),
            "reference_build_s": round(ref_build, 3),
            "reference_samples_per_s": round(n_ref / t_ref, 1),
            "speedup": round((n_fast / t_fast) / (n_ref / t_ref), 2),
            "speedup_noprefetch": round((n_plain / t_plain) / (n_ref / t_ref), 2),
            "samples_timed": n_fast}


def main(argv=None) -> None:
    args = parse_args(argv)
    row = {"utc_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
           "cpu_count": os.cpu_count(), "torch": torch.__version__,
           "users": args.users, "items": args.items, "samples": args.samples,
           "max_history": args.max_history, "dense_dim": args.dense_dim,
           "max_len": args.max_len, "batch_size": args.batch_size,
           "max_batches": args.max_batches if args.max_batches is not None else "all"}
    row.update(run(args))
    append_csv_rows(args.results, [row])
    for key, value in row.items():
        print(f"{key:>30}: {value}")


if __name__ == "__main__":
    main()
