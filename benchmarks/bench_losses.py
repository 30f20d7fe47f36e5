"""Peak memory and time of CHIME's holistic loss, forward + backward: chunked vs full score matrix.

Each variant (``full`` = chunk_size None, and every --chunks value) runs in its own fresh
subprocess on the same seeded inputs. Memory is the growth of peak memory over a baseline taken
after the inputs are allocated: peak RSS (VmHWM) minus current RSS (VmRSS) on CPU,
torch.cuda.max_memory_allocated minus the allocated bytes on CUDA. Time is the median of
--reps forward + backward runs after --warmup runs. One CSV row per variant is appended to
benchmarks/results/bench_losses.csv with the command line, UTC time, CPU count and torch version;
the ratios are relative to the ``full`` variant of the same invocation.

    python benchmarks/bench_losses.py --batch 8 --seq-len 1024 --dim 64 --chunks 256 512
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_losses.csv"
COLUMNS = ["utc_time", "command", "cpu_count", "torch_version", "device", "threads", "batch", "seq_len",
           "dim", "variant", "chunk_size", "anchors", "reps", "median_s", "min_s", "peak_mem_mb",
           "loss", "mem_ratio_vs_full", "time_ratio_vs_full"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8, help="users per batch B (default 8)")
    ap.add_argument("--seq-len", type=int, default=1024, help="positions per user T (default 1024)")
    ap.add_argument("--dim", type=int, default=64, help="hidden width D (default 64)")
    ap.add_argument("--chunks", type=int, nargs="+", default=[256, 512], help="chunk sizes to compare with full")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per variant (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    ap.add_argument("--pos-rate", type=float, default=0.5, help="share of +1 labels (default 0.5)")
    ap.add_argument("--pad-rate", type=float, default=0.0, help="share of right padding per user, at most")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="CSV to append to")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one variant
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------ worker


def _rss_mb(field: str) -> float:
    """VmRSS (current) or VmHWM (peak) of this process in MiB, from /proc/self/status."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _make_inputs(args: argparse.Namespace, torch):
    g = torch.Generator().manual_seed(args.seed)
    B, T, D = args.batch, args.seq_len, args.dim
    labels = torch.where(torch.rand(B, T, generator=g) < args.pos_rate, 1, -1)
    if args.pad_rate > 0:
        lengths = T - (torch.rand(B, generator=g) * args.pad_rate * T).long()
        labels[torch.arange(T).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    z = torch.nn.functional.normalize(torch.randn(B, T, D, generator=g), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(B, T, D, generator=g), dim=-1)
    dev = torch.device(args.device)
    return (z.to(dev).requires_grad_(), p.to(dev).requires_grad_(), labels.to(dev))


def run_worker(args: argparse.Namespace) -> dict:
    import torch

    from fuxictr_chime.compressor.losses import holistic_loss

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    chunk = None if args.worker == "full" else int(args.worker)
    z, p, labels = _make_inputs(args, torch)
    cuda = z.is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mb("VmRSS")
    times, loss = [], None
    for rep in range(args.warmup + args.reps):
        z.grad = p.grad = None
        start = time.perf_counter()
        loss = holistic_loss(z, p, labels, tau=0.2, chunk_size=chunk)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        if rep >= args.warmup:
            times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else _rss_mb("VmHWM") - base
    positive = labels.eq(1).long()                                        # (B, T)
    later_positives = positive.flip(1).cumsum(1).flip(1) - positive       # (B, T) positives after t
    anchors = int(((labels != 0) & (later_positives > 0)).sum())
    return {"variant": args.worker, "chunk_size": "" if chunk is None else chunk, "anchors": anchors,
            "median_s": statistics.median(times), "min_s": min(times), "peak_mem_mb": peak,
            "loss": float(loss), "threads": torch.get_num_threads(), "torch_version": torch.__version__}


# ------------------------------------------------------------------------------------ driver


def run_variant(variant: str, argv: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", variant]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"variant {variant} failed (rc {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_worker(args)))
        return
    command = shlex.join(["python", "benchmarks/bench_losses.py", *argv])
    results = [run_variant(v, argv) for v in ["full", *map(str, args.chunks)]]
    full = results[0]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = []
    for r in results:
        row = {"utc_time": now, "command": command, "cpu_count": os.cpu_count(), "device": args.device,
               "batch": args.batch, "seq_len": args.seq_len, "dim": args.dim, "reps": args.reps, **r,
               "mem_ratio_vs_full": r["peak_mem_mb"] / full["peak_mem_mb"],
               "time_ratio_vs_full": r["median_s"] / full["median_s"]}
        rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        print(f"{r['variant']:>6}: median {r['median_s']:.3f} s (x{row['time_ratio_vs_full']:.2f}), "
              f"peak +{r['peak_mem_mb']:.1f} MiB (x{row['mem_ratio_vs_full']:.3f}), loss {r['loss']:.6f}")
    from fuxictr_chime.io import append_csv_rows

    append_csv_rows(args.out, rows, COLUMNS)
    print(f"appended {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
