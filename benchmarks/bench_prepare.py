"""Seconds to split and write an ml-1m sized behavior log (issue 2 item 3, brief H1).

Builds a random BehaviorLog in memory (default: 6040 users, 3706 items, 1,000,000 events, a
384-d item vector as MovieLens' title_emb; no real data, no text encoder), then times
``split_by_time`` and ``write_prepared`` into a temporary folder; with ``--recbole`` it also
writes the log as RecBole atomic files (ml-1m style headers) and times the MovieLens reader
``movielens.load(encode_titles=False)`` on them. Appends a row to
benchmarks/results/bench_prepare.csv.

    .venv/bin/python benchmarks/bench_prepare.py
    .venv/bin/python benchmarks/bench_prepare.py --events 100000   # quick look
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone

import numpy as np
import torch

from fuxictr_chime.data.split import split_by_time
from fuxictr_chime.data.synthetic import synthetic_log
from fuxictr_chime.data.writer import build_tables, write_prepared
from fuxictr_chime.io import append_csv_rows

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_prepare.csv")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=6040)
    parser.add_argument("--items", type=int, default=3706)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--dense-dim", type=int, default=384, help="item vector width (0: none)")
    parser.add_argument("--t1", default="q0.5")
    parser.add_argument("--t2", default="q0.8")
    parser.add_argument("--recbole", action="store_true",
                        help="also time reading the log back from RecBole atomic files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=RESULTS, help="CSV to append to")
    return parser.parse_args(argv)


def run(args) -> dict:
    dense = {"title_emb": args.dense_dim} if args.dense_dim else {}
    log = synthetic_log(args.users, args.items, args.events, dense=dense, seed=args.seed)
    start = time.perf_counter()
    split = split_by_time(log, args.t1, args.t2)
    t_split = time.perf_counter() - start
    start = time.perf_counter()
    build_tables(log, split)  # computing only (includes log.validate)
    t_build = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as folder:
        start = time.perf_counter()
        write_prepared(log, split, folder)  # computing again + writing every file
        t_write = time.perf_counter() - start
    row = {"split_s": round(t_split, 3), "build_tables_s": round(t_build, 3),
           "write_prepared_s": round(t_write, 3),
           "events_per_s": round(args.events / (t_split + t_write), 1),
           "recbole_load_s": time_recbole_load(log) if args.recbole else ""}
    return row


def time_recbole_load(log) -> float:
    """Seconds of ``movielens.load(encode_titles=False)`` on ``log`` written as atomic files."""
    from fuxictr_chime.data import movielens

    with tempfile.TemporaryDirectory(prefix="bench_prepare_recbole_") as folder:
        ev = log.events
        inter = ev[["user_id", "item_id"]].assign(
            rating=np.where(ev["label"].to_numpy() > 0, 5, 2), timestamp=ev["timestamp"])
        inter.columns = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
        inter.to_csv(os.path.join(folder, "synthetic.inter"), sep="\t", index=False)
        items = log.items[["item_id"]].assign(movie_title="t", genre=log.items["cate_id"])
        items.columns = ["item_id:token", "movie_title:token_seq", "genre:token_seq"]
        items.to_csv(os.path.join(folder, "synthetic.item"), sep="\t", index=False)
        start = time.perf_counter()
        movielens.load(folder, encode_titles=False)
        return round(time.perf_counter() - start, 3)


def main(argv=None) -> None:
    args = parse_args(argv)
    row = {"utc_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
           "cpu_count": os.cpu_count(), "loadavg_1min": round(os.getloadavg()[0], 2),
           "torch": torch.__version__,
           "users": args.users, "items": args.items, "events": args.events,
           "dense_dim": args.dense_dim, "t1": args.t1, "t2": args.t2}
    row.update(run(args))
    append_csv_rows(args.results, [row])
    for key, value in row.items():
        print(f"{key:>18}: {value}")


if __name__ == "__main__":
    main()
