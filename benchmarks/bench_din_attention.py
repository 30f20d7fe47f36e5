"""Time of DIN's target attention, forward + backward: FuxiCTR's DIN_Attention vs FusedDINAttention.

Three paths get the same parameters (``load_state_dict``) and the same seeded inputs, in training
mode (Dice's BatchNorm uses the batch statistics, as in a training step): a target (B, D) and a
left-padded history of rows of a table of ``--items`` distinct items (B, L), whose lengths fill ``--valid-share`` of the window on
average (padding is the zero row, as in the models). ``stock`` (FuxiCTR) and ``fused``
(:meth:`FusedDINAttention.forward`) gather the dense (B, L, D) history from the table;
``packed`` (:meth:`FusedDINAttention.forward_packed`, what the models run) gathers the valid
positions only. Interleaved repetitions (stock, fused, packed, stock, ...) after ``--warmup``
untimed ones; the median of ``--reps`` per path is reported, with the largest output difference
to the stock path. One CSV row per (B, L) is appended to
benchmarks/results/bench_din_attention.csv with the command line, UTC time, CPU count, torch
version and threads (rows before ``valid_share`` existed had random 20% padding and no packed
path). The defaults are the DIN experiments of the planted log (item width 48 =
item id + category + side vector at 16 each, attention MLP (32,) with Dice, batch 1024): L = 30
is DIN, L = 1000 is LongCTR's DIN over the whole sequence (``DIN_full_*``).

    python benchmarks/bench_din_attention.py --batch 1024 --lengths 30 1000 --threads 1

``--valid-share 0.41`` is the planted log's training split (mean history 408 of 1,000).
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._known_answer import append_csv  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_din_attention.csv"
FIELDS = ["time_utc", "command", "cpu_count", "torch_version", "threads", "batch", "seq_len", "dim",
          "units", "activation", "reps", "stock_median_s", "fused_median_s", "speedup", "max_abs_diff",
          "valid_share", "items", "packed_median_s", "packed_speedup", "packed_max_abs_diff"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1024, help="samples per batch B (default 1024)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[30, 1000], help="history lengths L")
    ap.add_argument("--dim", type=int, default=48, help="item width D (default 48)")
    ap.add_argument("--units", type=int, nargs="+", default=[32], help="attention MLP hidden units")
    ap.add_argument("--activation", default="Dice", help="hidden activation (default Dice)")
    ap.add_argument("--valid-share", type=float, default=0.8,
                    help="mean share of the window that holds behaviours (default 0.8)")
    ap.add_argument("--items", type=int, default=4000,
                    help="distinct items of the batch, rows of the table (default 4000)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS, help="CSV to append to")
    args = ap.parse_args(argv)
    for name in ("batch", "dim", "reps", "items"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if not 0 < args.valid_share <= 1:
        ap.error("--valid-share must be in (0, 1]")
    if min(args.lengths) < 1 or min(args.units) < 1:
        ap.error("--lengths and --units must be >= 1")
    return args


def measure(args: argparse.Namespace, seq_len: int) -> dict:
    import torch
    from fuxictr.pytorch.layers import DIN_Attention

    from fuxictr_chime.models.din_attention import FusedDINAttention

    kwargs = {"attention_units": list(args.units), "hidden_activations": args.activation}
    torch.manual_seed(args.seed)
    stock = DIN_Attention(args.dim, **kwargs).train()
    fused = FusedDINAttention(args.dim, **kwargs).train()
    fused.load_state_dict(stock.state_dict())
    g = torch.Generator().manual_seed(args.seed)
    B, L = args.batch, seq_len
    target = torch.randn(B, args.dim, generator=g).requires_grad_()
    table = torch.randn(args.items + 1, args.dim, generator=g)  # the batch's distinct items
    table[0] = 0  # padding
    table.requires_grad_()
    share, spread = args.valid_share, min(args.valid_share, 1 - args.valid_share)
    lengths = (L * (share + spread * (2 * torch.rand(B, generator=g) - 1))).round().long()
    mask = torch.arange(L).unsqueeze(0) >= (L - lengths).unsqueeze(1)  # (B, L) left padding
    index = torch.randint(1, args.items + 1, (B, L), generator=g) * mask
    paths = {"stock": lambda: stock(target, torch.nn.functional.embedding(index, table), mask),
             "fused": lambda: fused(target, torch.nn.functional.embedding(index, table), mask),
             "packed": lambda: fused.forward_packed(target, table, index, mask)}
    times: dict[str, list[float]] = {name: [] for name in paths}
    outputs = {}
    for rep in range(args.warmup + args.reps):
        for name, path in paths.items():
            target.grad = table.grad = None
            stock.zero_grad(set_to_none=True), fused.zero_grad(set_to_none=True)
            start = time.perf_counter()
            out = path()
            out.sum().backward()
            elapsed = time.perf_counter() - start
            if rep >= args.warmup:
                times[name].append(elapsed)
            outputs[name] = out.detach()
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"seq_len": seq_len, "stock_median_s": round(median["stock"], 5),
            "fused_median_s": round(median["fused"], 5),
            "speedup": round(median["stock"] / median["fused"], 3),
            "max_abs_diff": float((outputs["stock"] - outputs["fused"]).abs().max()),
            "valid_share": round(float(mask.float().mean()), 4), "items": args.items,
            "output_max_abs": float(outputs["stock"].abs().max()),
            "packed_median_s": round(median["packed"], 5),
            "packed_speedup": round(median["stock"] / median["packed"], 3),
            "packed_max_abs_diff": float((outputs["stock"] - outputs["packed"]).abs().max()),
            "threads": torch.get_num_threads(), "torch_version": torch.__version__}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/bench_din_attention.py", *argv])
    for seq_len in args.lengths:
        row = measure(args, seq_len)
        row.update({"time_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "command": command,
                    "cpu_count": os.cpu_count(), "batch": args.batch, "dim": args.dim,
                    "units": " ".join(map(str, args.units)), "activation": args.activation, "reps": args.reps})
        append_csv(args.out, FIELDS, [row])
        print(f"B={args.batch} L={seq_len} ({row['valid_share']:.0%} valid): DIN_Attention "
              f"{row['stock_median_s']:.4f} s, fused {row['fused_median_s']:.4f} s "
              f"({row['speedup']:.2f}x), packed {row['packed_median_s']:.4f} s "
              f"({row['packed_speedup']:.2f}x; max |diff| {row['packed_max_abs_diff']:.2e})",
              flush=True)


if __name__ == "__main__":
    main()
