"""Seconds and peak memory of the raw preparers (microvideo, tmall, ebnerd) on synthetic files.

Writes made-up raw files in each dataset's published format (same file names, columns and
dtypes as tests/data/raw_fixtures.py, random values) into a temporary folder, times
``fuxictr_chime.data.<name>.load`` on them and appends one row per dataset to
benchmarks/results/bench_raw_preparers.csv. Peak memory is the process's max RSS after the
load (``ru_maxrss``), so run one dataset per process for a clean number.

    .venv/bin/python benchmarks/bench_raw_preparers.py --dataset tmall --rows 2000000
    .venv/bin/python benchmarks/bench_raw_preparers.py --dataset microvideo --rows 1000000
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fuxictr_chime.io import append_csv_rows

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "bench_raw_preparers.csv")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["microvideo", "tmall", "ebnerd"], required=True)
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="log rows (microvideo, tmall) or in-view events (ebnerd)")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--width", type=int, default=0,
                        help="vector width (default: microvideo 512, tmall 256, ebnerd 768)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=RESULTS, help="CSV to append to")
    return parser.parse_args(argv)


def write_microvideo(folder: Path, args, rng) -> dict:
    rows, half = args.rows, args.items // 2
    for name, n, n_items, t0 in (("train_data.csv", rows * 4 // 5, half, 0),
                                 ("test_data.csv", rows - rows * 4 // 5, half, 10**8)):
        pd.DataFrame({"user_id": rng.integers(0, args.users, n),
                      "item_id": rng.integers(0, n_items, n),
                      "cate_id": rng.integers(0, 512, n), "is_click": rng.integers(0, 2, n),
                      "timestamp": t0 + rng.integers(0, 10**8, n)}).to_csv(folder / name,
                                                                           index=False)
        vectors = rng.standard_normal((n_items, args.width or 512), dtype=np.float32)
        np.save(folder / name.replace("_data.csv", "_cover_image_feature.npy"), vectors)
    return {"min_user_actions": 0}


def write_tmall(folder: Path, args, rng) -> dict:
    n = args.rows
    month = rng.integers(5, 12, n)
    frame = pd.DataFrame({"user_id": rng.integers(1, args.users + 1, n),
                          "item_id": rng.integers(1, args.items + 1, n),
                          "cat_id": rng.integers(1, 1600, n), "seller_id": rng.integers(1, 5000, n),
                          "brand_id": rng.integers(1, 8000, n).astype(float),
                          "time_stamp": month * 100 + rng.integers(1, 29, n),
                          "action_type": rng.choice(4, n, p=[0.85, 0.05, 0.05, 0.05])})
    frame.loc[rng.random(n) < 0.01, "brand_id"] = np.nan
    frame["brand_id"] = frame["brand_id"].astype("Int64")
    frame.to_csv(folder / "user_log_format1.csv", index=False)
    vectors = rng.standard_normal((args.items, args.width or 256), dtype=np.float32)
    ids = np.arange(1, args.items + 1)
    _write_vectors(folder / "images.parquet", "item_id", ids, "clip", vectors)
    return {"min_user_actions": 0, "image_emb": str(folder / "images.parquet")}


def write_ebnerd(folder: Path, args, rng) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n_imp = max(args.rows // 12, 1)
    start = np.datetime64("2023-05-18T00:00:00", "us")
    for split, offset in (("train", 0), ("validation", 7)):
        (folder / split).mkdir()
        lengths = rng.integers(5, 20, n_imp)
        inview = [list(map(int, v)) for v in np.split(rng.integers(0, args.items, int(lengths.sum())),
                                                      np.cumsum(lengths)[:-1])]
        times = start + np.timedelta64(offset, "D") + rng.integers(0, 7 * 86400 * 10**6, n_imp)
        pq.write_table(pa.table({
            "impression_id": pa.array(np.arange(n_imp), pa.uint32()),
            "impression_time": pa.array(times, pa.timestamp("us")),
            "article_ids_inview": pa.array(inview, pa.list_(pa.int32())),
            "article_ids_clicked": pa.array([v[:1] for v in inview], pa.list_(pa.int32())),
            "user_id": pa.array(rng.integers(0, args.users, n_imp), pa.uint32())}),
            folder / split / "behaviors.parquet")
        per_user = 100
        users = np.arange(args.users)
        reads = rng.integers(0, args.items, (args.users, per_user))
        read_t = start - np.timedelta64(21 - offset, "D") + np.sort(
            rng.integers(0, 21 * 86400 * 10**6, (args.users, per_user)), axis=1)
        pq.write_table(pa.table({
            "user_id": pa.array(users, pa.uint32()),
            "impression_time_fixed": pa.array(list(read_t), pa.list_(pa.timestamp("us"))),
            "article_id_fixed": pa.array(list(reads.astype(np.int32)), pa.list_(pa.int32()))}),
            folder / split / "history.parquet")
    ids = np.arange(args.items)
    pq.write_table(pa.table({
        "article_id": pa.array(ids, pa.int32()),
        "category": pa.array(rng.integers(0, 30, args.items), pa.int16()),
        "subcategory": pa.array([[int(s)] for s in rng.integers(0, 300, args.items)],
                                pa.list_(pa.int16()))}), folder / "articles.parquet")
    vectors = rng.standard_normal((args.items, args.width or 768), dtype=np.float32)
    _write_vectors(folder / "bert_base_multilingual_cased.parquet", "article_id", ids,
                   "google-bert/bert-base-multilingual-cased", vectors)
    return {"min_user_actions": 0}


def _write_vectors(path: Path, id_col: str, ids: np.ndarray, col: str, vectors: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(vectors.reshape(-1))
    offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1], dtype=np.int32))
    pq.write_table(pa.table({id_col: pa.array(ids), col: pa.ListArray.from_arrays(offsets, flat)}),
                   path)


WRITERS = {"microvideo": write_microvideo, "tmall": write_tmall, "ebnerd": write_ebnerd}


def main(argv=None) -> None:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    module = importlib.import_module(f"fuxictr_chime.data.{args.dataset}")
    with tempfile.TemporaryDirectory(prefix="bench_raw_") as folder:
        options = WRITERS[args.dataset](Path(folder), args, rng)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        log = module.load(folder, **options)
        seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row = {"utc_time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "dataset": args.dataset,
           "rows": args.rows, "users": args.users, "items": args.items,
           "events": len(log.events), "log_items": len(log.items), "dense": str(log.dense),
           "load_s": round(seconds, 2), "events_per_s": round(len(log.events) / seconds),
           "max_rss_mb_before_load": round(rss_before / 1024),
           "max_rss_mb_after_load": round(rss / 1024)}
    append_csv_rows(args.results, [row])
    for key, value in row.items():
        print(f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
