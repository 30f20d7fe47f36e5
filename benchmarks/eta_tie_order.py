"""Which behaviours ETA's top-k keeps under each tie order, on a trained ETA.

ETA keeps the ``topk`` (50) behaviours whose ``hash_bits`` (32) bit signatures are nearest in
Hamming distance to the target's (docs/ARCHITECTURE.md section 6); with 33 possible distances and
up to 1,000 behaviours, many tie at the cut-off distance and the tie order decides part of the
top-k. This script trains our ETA (the settings of ``bench_train_throughput.py``: batch
``--batch-size``, lr ``--learning-rate``, ``--epochs`` epochs without early stopping, default tie
order) on a prepared folder, then on ``--batches`` valid batches selects the top-k of every row
under both orders from the same distances and reports per order:

* ``in_short_window``: share of the kept behaviours among the last ``--short-len`` (30), the ones
  the short-term attention reads anyway;
* ``mean_age``: mean position of the kept behaviours counted from the most recent (0);
* ``decided_by_ties``: share of the top-k slots filled at the cut-off distance (the same for both
  orders; the orders differ only there), and ``overlap``: share of the kept behaviours that the
  other order keeps too.

Rows with more valid behaviours than ``topk`` only (shorter ones keep all under both orders); each
batch in its own layout (LongCTR's tie order depends on it), shares weighted by rows. One CSV row
per order, with the command line, to ``--results``.

    .venv/bin/python benchmarks/eta_tie_order.py --data data/synthetic --epochs 3
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "eta_tie_order.csv"


def parse_args(argv=None) -> argparse.Namespace:
    import bench_train_throughput as bench

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="a prepared folder (fuxictr-chime prepare)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs before measuring (no early stopping)")
    bench.add_eta_settings(p)
    p.add_argument("--seed", type=int, default=2025)
    p.add_argument("--batches", type=int, default=10, help="valid batches measured")
    p.add_argument("--results", default=str(RESULTS), help="CSV to append to")
    args = p.parse_args(argv)
    if args.epochs < 0 or args.batches < 1 or args.topk < 1:
        p.error("--epochs must be >= 0, --batches and --topk >= 1")
    if not (Path(args.data) / "dataset_config.yaml").exists():
        p.error(f"--data {args.data}: no dataset_config.yaml (run `fuxictr-chime prepare ... --out {args.data}`)")
    return args


def tie_order_stats(distance, mask, topk: int, short_len: int, fill: int) -> dict[str, dict[str, float]]:
    """Per order (``recent``, ``longctr``): the shares above over rows with more than ``topk`` valid
    behaviours. ``distance`` (B, L) integer, ``mask`` (B, L) bool, histories left-padded."""
    import torch

    from fuxictr_chime.models.retrieval import longctr_topk_gather, recency_tiebreak, topk_gather

    rows = mask.sum(1) > topk
    if not rows.any():
        return {order: {"in_short_window": 0.0, "mean_age": 0.0, "decided_by_ties": 0.0, "overlap": 0.0,
                        "rows": 0} for order in ("recent", "longctr")}
    distance, mask = distance[rows], mask[rows]
    length = distance.shape[1]
    age = torch.arange(length - 1, -1, -1).expand_as(distance)  # (B, L): 0 = the most recent
    kept = {"recent": topk_gather(recency_tiebreak(distance), mask, topk, age)[0],
            "longctr": longctr_topk_gather(distance, mask, topk, age, fill=fill)[0]}  # (B, k) ages
    kept_distance = distance.gather(1, length - 1 - kept["recent"])  # (B, k); the same multiset for both orders
    at_cutoff = (kept_distance == kept_distance.max(1, keepdim=True).values).float().mean()
    stats = {}
    for order, ages in kept.items():
        other = kept["longctr" if order == "recent" else "recent"]
        overlap = (ages.unsqueeze(2) == other.unsqueeze(1)).any(2).float().mean()
        stats[order] = {"in_short_window": float((ages < short_len).float().mean()),
                        "mean_age": float(ages.float().mean()), "decided_by_ties": float(at_cutoff),
                        "overlap": float(overlap), "rows": int(rows.sum())}
    return stats


def _weighted(parts: list[dict]) -> dict:
    """Row-weighted mean of per-batch shares; ``rows`` summed."""
    rows = sum(p["rows"] for p in parts)
    if rows == 0:
        raise SystemExit("no measured row has more valid behaviours than --topk")
    return {**{k: sum(p[k] * p["rows"] for p in parts) / rows for k in parts[0] if k != "rows"}, "rows": rows}


def main(argv=None) -> int:
    import torch
    from fuxictr.pytorch.torch_utils import seed_everything

    import bench_train_throughput as bench
    from fuxictr_chime.data.features import build_feature_map
    from fuxictr_chime.data.loader import LongSeqDataLoader
    from fuxictr_chime.io import append_csv_rows

    args = parse_args(argv)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    bench_args = bench.bench_args_of(args, args.seed)
    with tempfile.TemporaryDirectory(prefix="eta_ties_") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "data").mkdir()
        data = bench.copy_prepared(Path(args.data), tmp / "data")
        seed_everything(args.seed)
        fmap = build_feature_map("bench", data, embedding_dim=bench_args.embedding_dim)
        params = {**bench.common_kwargs(bench_args, str(tmp / "ckpt")), **bench.model_kwargs("ETA", "ours", bench_args)}
        os.makedirs(tmp / "ckpt" / "bench", exist_ok=True)
        model = bench.build_ours("ETA", fmap, {**params, "item_info": data["item_info"]})

        def loader(split, shuffle=False):
            return LongSeqDataLoader(fmap, data[f"{split}_data"], split=split, batch_size=args.batch_size,
                                     shuffle=shuffle, user_info=data["user_info"], item_info=data["item_info"],
                                     max_len=args.max_len, seed=args.seed)
        start = time.perf_counter()
        if args.epochs:
            train = loader("train", shuffle=True)
            bench.train(model, lambda: train, args.epochs, warmup=0)
        print(f"ETA trained {args.epochs} epoch(s) in {time.perf_counter() - start:.0f}s", flush=True)
        model.eval()
        per_batch = []  # each batch in its own layout (LongCTR's tie order depends on it)
        with torch.no_grad():
            for i, batch in enumerate(loader("valid")):
                if i == args.batches:
                    break
                history = model.get_history(batch)
                per_batch.append(tie_order_stats(model.hamming_distances(history), history.mask, args.topk, args.short_len,
                                                 fill=model.simhash.num_bits + 1))
        stats = {order: _weighted([b[order] for b in per_batch]) for order in per_batch[0]}
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = [{"time_utc": now, "command": command, "data": args.data, "seed": args.seed, "epochs": args.epochs,
             "topk": args.topk, "short_len": args.short_len, "order": order,
             **{k: round(v, 5) if isinstance(v, float) else v for k, v in s.items()}}
            for order, s in stats.items()]
    append_csv_rows(args.results, rows)
    for r in rows:
        print(f"{r['order']:8s} in the last {args.short_len}: {r['in_short_window']:.1%}, mean age {r['mean_age']:.0f}, "
              f"decided by ties {r['decided_by_ties']:.1%}, kept by the other order too {r['overlap']:.1%} "
              f"({r['rows']} rows)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
