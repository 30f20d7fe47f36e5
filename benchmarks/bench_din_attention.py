"""Time of DIN's target attention, forward + backward: FuxiCTR's DIN_Attention vs FusedDINAttention.

Both modules get the same parameters (``load_state_dict``) and the same seeded inputs: a target
(B, D), a history (B, L, D) and a mask with about 20% padding, in training mode (Dice's
BatchNorm uses the batch statistics, as in a training step). Interleaved repetitions (stock,
fused, stock, ...) after ``--warmup`` untimed ones; the median of ``--reps`` per module is
reported, with the largest output difference between the two. One CSV row per (B, L) is appended
to benchmarks/results/bench_din_attention.csv with the command line, UTC time, CPU count, torch
version and threads. The defaults are the DIN experiments of the planted log (item width 48 =
item id + category + side vector at 16 each, attention MLP (32,) with Dice, batch 1024): L = 30
is DIN, L = 1000 is LongCTR's DIN over the whole sequence (``DIN_full_*``).

    python benchmarks/bench_din_attention.py --batch 1024 --lengths 30 1000 --threads 1
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
          "units", "activation", "reps", "stock_median_s", "fused_median_s", "speedup", "max_abs_diff"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1024, help="samples per batch B (default 1024)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[30, 1000], help="history lengths L")
    ap.add_argument("--dim", type=int, default=48, help="item width D (default 48)")
    ap.add_argument("--units", type=int, nargs="+", default=[32], help="attention MLP hidden units")
    ap.add_argument("--activation", default="Dice", help="hidden activation (default Dice)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS, help="CSV to append to")
    args = ap.parse_args(argv)
    for name in ("batch", "dim", "reps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
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
    target = torch.randn(args.batch, args.dim, generator=g).requires_grad_()
    history = torch.randn(args.batch, seq_len, args.dim, generator=g).requires_grad_()
    mask = torch.rand(args.batch, seq_len, generator=g) > 0.2
    times: dict[str, list[float]] = {"stock": [], "fused": []}
    outputs = {}
    for rep in range(args.warmup + args.reps):
        for name, module in (("stock", stock), ("fused", fused)):
            target.grad = history.grad = None
            module.zero_grad(set_to_none=True)
            start = time.perf_counter()
            out = module(target, history, mask)
            out.sum().backward()
            elapsed = time.perf_counter() - start
            if rep >= args.warmup:
                times[name].append(elapsed)
            outputs[name] = out.detach()
    stock_s, fused_s = statistics.median(times["stock"]), statistics.median(times["fused"])
    return {"seq_len": seq_len, "stock_median_s": round(stock_s, 5), "fused_median_s": round(fused_s, 5),
            "speedup": round(stock_s / fused_s, 3),
            "max_abs_diff": float((outputs["stock"] - outputs["fused"]).abs().max()),
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
        print(f"B={args.batch} L={seq_len}: DIN_Attention {row['stock_median_s']:.4f} s, fused "
              f"{row['fused_median_s']:.4f} s, speed-up {row['speedup']:.2f}x (max |diff| "
              f"{row['max_abs_diff']:.2e})", flush=True)


if __name__ == "__main__":
    main()
