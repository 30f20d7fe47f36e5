"""Our ETA and the public LongCTR ETA trained in lockstep from the same weights on the same batches.

``bench_train_throughput.py`` trains each side in its own run: its own initial weights, SimHash
projection and batch order, drawn from the seed in each code's own way. Where the two sides' mean
test AUC differ, this script tells the implementation apart from those draws. Per seed it builds the
public ETA exactly as the bench does (so the public side repeats the bench's public run), copies
its initial weights and projection into our ETA (one copy per ``--variants`` tie order,
``docs/ARCHITECTURE.md`` section 6), and feeds every model the same LongCTR loader batches in the
same order. Each model keeps its own early stopping (valid AUC - logloss, ``--patience``) and is
tested at its best epoch. Per epoch it records valid AUC and logloss, the mean train loss and our
weights' relative distance to the public ones (``||ours - public|| / ||public||`` over the mapped
state); at the end, the test AUC of each model.

The histories of a prepared folder must hold at least ``short_len`` behaviours for the two models
to compute the same function (``model_zoo/README.md``, LongCTR's short-window mask): rows with a
shorter history are refused with their count.

One CSV row per (seed, model, epoch) to ``--curves`` and one per (seed, model) to ``--results``,
each with the command line; ``--summary`` writes the markdown table beside ``--results``.

    .venv/bin/python benchmarks/eta_lockstep.py --data data/synthetic --seeds 2026 \\
        --public-dir /tmp/longctr/fuxictr-2.3.10
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "eta_lockstep.csv"
PUBLIC = "public"


def parse_args(argv=None) -> argparse.Namespace:
    import bench_train_throughput as bench

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="a prepared folder (fuxictr-chime prepare)")
    p.add_argument("--seeds", nargs="+", type=int, default=[2026])
    p.add_argument("--variants", nargs="+", choices=["longctr", "recent"], default=["longctr", "recent"],
                   help="our ETA's tie orders trained beside the public model")
    p.add_argument("--perturb", type=float, default=1e-6,
                   help="also train our ETA (LongCTR tie order) from the public weights times "
                        "(1 + PERTURB * N(0, 1)): how far a change of the size of float32 rounding moves "
                        "the same function's result (0: leave it out)")
    p.add_argument("--epochs", type=int, default=30, help="epoch cap")
    p.add_argument("--patience", type=int, default=2, help="epochs without a better valid AUC - logloss")
    bench.add_eta_settings(p)
    p.add_argument("--log-every", type=int, default=50, help="print the running losses every N batches")
    p.add_argument("--public-dir", default=None,
                   help="unpacked fuxictr 2.3.10 sdist (default: pip download into a temporary folder)")
    p.add_argument("--results", default=str(RESULTS), help="CSV of test AUCs to append to")
    p.add_argument("--curves", default=None, help="CSV of per-epoch rows (default: --results with _curves)")
    p.add_argument("--summary", action="store_true", help="write the markdown table of --results and stop")
    args = p.parse_args(argv)
    if args.curves is None:
        results = Path(args.results)
        args.curves = str(results.with_name(f"{results.stem}_curves{results.suffix}"))
    if args.summary:
        return args
    if args.epochs < 1 or args.patience < 1 or args.log_every < 1:
        p.error("--epochs, --patience and --log-every must be >= 1")
    if args.perturb < 0:
        p.error("--perturb must be >= 0")
    if not (Path(args.data) / "dataset_config.yaml").exists():
        p.error(f"--data {args.data}: no dataset_config.yaml (run `fuxictr-chime prepare ... --out {args.data}`)")
    return args


def public_state_for_ours(ours, public_state: dict) -> dict:
    """Our ETA's state (names as ``ours.state_dict()``) from the public ETA's: the projection is
    LongCTR's ``random_rotations[0]``, item embeddings its ``embedding_layer``, the retrieval
    attention its ``long_attention``, and the DNN's first layer takes [target, short, long,
    context] here where LongCTR feeds [context, target, short, long]. Our item buffers
    (``item_table.item_*``) are data, not weights, and are left out."""
    import torch

    context = ours.context_dim

    def one(name):
        if name == "simhash.projection":
            return public_state["random_rotations"][0]
        if name.startswith("item_table.embedding."):
            return public_state["embedding_layer." + name[len("item_table.embedding."):]]
        if name.startswith("esu."):
            return public_state["long_attention." + name[len("esu."):]]
        if name == "dnn.mlp.0.weight":
            weight = public_state[name]
            return torch.cat([weight[:, context:], weight[:, :context]], dim=1)
        return public_state[name]
    return {name: one(name).clone() for name in ours.state_dict() if not name.startswith("item_table.item_")}


def perturbed(state: dict, scale: float, seed: int) -> dict:
    """``state`` with every floating-point entry times ``1 + scale * N(0, 1)`` (a generator seeded
    with ``seed``); other entries unchanged."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {name: value * (1 + scale * torch.randn(value.shape, generator=gen)) if value.dtype.is_floating_point
            else value.clone() for name, value in state.items()}


def relative_distance(state: dict, reference: dict) -> float:
    """``||state - reference|| / ||reference||`` over the floating-point entries of ``reference``."""
    num = den = 0.0
    for name, ref in reference.items():
        if ref.dtype.is_floating_point:
            num += float(((state[name] - ref) ** 2).sum())
            den += float((ref ** 2).sum())
    return (num / den) ** 0.5 if den else 0.0


class Track:
    """One model's early stopping: the best valid AUC - logloss, its epoch and weights."""

    def __init__(self, model, patience: int) -> None:
        self.model, self.patience = model, patience
        self.best, self.best_epoch, self.best_state, self.epochs_run, self.stopped = -np.inf, 0, None, 0, False

    def update(self, epoch: int, auc: float, logloss: float) -> None:
        self.epochs_run = epoch
        if auc - logloss > self.best:
            self.best, self.best_epoch = auc - logloss, epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
        elif epoch - self.best_epoch >= self.patience:
            self.stopped = True


@contextlib.contextmanager
def rng_kept():
    """Leave torch's global generator as it was: a DataLoader draws its base seed from it at every
    iteration, so the extra models' evaluations would otherwise move the next epoch's shuffle."""
    import torch

    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)


def lockstep(models: dict, make_train, valid_loader, epochs: int, patience: int, distance=None,
             log_every: int = 50, on_epoch=None) -> dict:
    """Train ``models`` (name -> model) on the same batches of ``make_train()`` per epoch, each
    until its own early stop, and leave each at its best epoch. The first model draws from torch's
    global generator as if it ran alone (the others' steps and evaluations leave it as it was).
    ``distance(name)``: the number recorded beside each model's epoch (e.g. its distance to the
    public weights), or None. ``on_epoch(rows)`` gets each epoch's rows. Returns name -> ``Track``."""
    import torch

    from bench_train_throughput import init_fit_state

    tracks = {name: Track(model, patience) for name, model in models.items()}
    for model in models.values():
        init_fit_state(model)
    for epoch in range(1, epochs + 1):
        active = {name: t for name, t in tracks.items() if not t.stopped}
        if not active:
            break
        losses, start = {name: [] for name in active}, time.perf_counter()
        first = next(iter(tracks))
        for i, batch in enumerate(make_train()):
            for name, t in active.items():
                t.model.train()
                t.model._epoch_index, t.model._batch_index = epoch - 1, i
                t.model._total_steps += 1
                with contextlib.nullcontext() if name == first else rng_kept():
                    losses[name].append(float(t.model.train_step(batch).detach()))
            if log_every and (i + 1) % log_every == 0:
                print(f"  epoch {epoch} batch {i + 1}: train loss "
                      + ", ".join(f"{n} {np.mean(v[-log_every:]):.5f}" for n, v in losses.items()), flush=True)
        rows = []
        for name, t in active.items():
            with torch.no_grad(), contextlib.nullcontext() if name == first else rng_kept():
                metrics = t.model.evaluate(valid_loader, metrics=["AUC", "logloss"])
            auc, logloss = float(metrics["AUC"]), float(metrics["logloss"])
            rows.append({"model": name, "epoch": epoch, "valid_auc": round(auc, 5),
                         "valid_logloss": round(logloss, 5), "train_loss": round(float(np.mean(losses[name])), 5),
                         "distance_to_public": None if distance is None else distance(name)})
            t.update(epoch, auc, logloss)
        print(f"epoch {epoch} ({time.perf_counter() - start:.0f}s): " + " | ".join(
            f"{r['model']} valid AUC {r['valid_auc']:.5f} logloss {r['valid_logloss']:.5f}"
            + ("" if r["distance_to_public"] is None else f" distance {r['distance_to_public']:.2e}")
            for r in rows), flush=True)
        if on_epoch is not None:
            on_epoch(rows)
    for t in tracks.values():
        if t.best_state is not None:
            t.model.load_state_dict(t.best_state)
    return tracks


def check_histories(data: dict, short_len: int) -> None:
    """Refuse a folder with ranking rows whose history is shorter than the short window (there the
    public ETA and ours compute different functions; see the module docstring)."""
    import pandas as pd

    for split in ("train", "valid", "test"):
        lengths = pd.read_parquet(data[f"{split}_data"], columns=["seq_len"])["seq_len"].to_numpy()
        short = int((lengths < short_len).sum())
        if short:
            raise SystemExit(f"{data[f'{split}_data']}: {short} rows have fewer than --short-len {short_len} "
                             "behaviours; the public ETA masks its short window one position off there, "
                             "so the two models differ on those rows and lockstep would not compare like for like")


def run_seed(seed: int, args, data: dict, tmp: Path, public, command: str) -> list[dict]:
    import torch
    from fuxictr.pytorch.torch_utils import seed_everything

    import bench_train_throughput as bench
    from fuxictr_chime.data.features import build_feature_map
    from fuxictr_chime.io import append_csv_rows

    bench_args = bench.bench_args_of(args, seed)
    package, loader_cls = public
    seed_everything(seed)  # as bench_train_throughput.run_one: the public side repeats its public run
    fmap = build_feature_map("bench", data, embedding_dim=bench_args.embedding_dim)
    common = bench.common_kwargs(bench_args, str(tmp / "ckpt"))
    public_model = bench.build_public(package, "ETA", fmap, {**common, **bench.model_kwargs("ETA", "public", bench_args)})
    rng = torch.get_rng_state()  # our models' own init draws must not move the public loader's shuffle
    ours = {f"ours tiebreak={v}": bench.build_ours("ETA", fmap, {**common, **bench.model_kwargs("ETA", "ours", bench_args),
                                                                "tiebreak": v, "item_info": data["item_info"]})
            for v in args.variants}
    if args.perturb:
        ours[f"ours tiebreak=longctr perturb={args.perturb:g}"] = bench.build_ours(
            "ETA", fmap, {**common, **bench.model_kwargs("ETA", "ours", bench_args), "tiebreak": "longctr",
                          "item_info": data["item_info"]})
    torch.set_rng_state(rng)
    for name, model in ours.items():
        state = public_state_for_ours(model, public_model.state_dict())
        if "perturb=" in name:
            state = perturbed(state, args.perturb, seed)
        missing = model.load_state_dict(state, strict=False).missing_keys
        if any(not key.startswith("item_table.item_") for key in missing):
            raise SystemExit(f"public ETA weights do not cover ours: {missing}")

    def make(split, shuffle=False):
        loader = loader_cls(fmap, data[f"{split}_data"], data["user_info"], data["item_info"],
                            batch_size=args.batch_size, shuffle=shuffle, num_workers=1, max_len=args.max_len)
        bench.pad_public_histories(loader.collate_fn, min(args.max_len, max(args.short_len + 1, args.topk)))
        return loader

    def distance(name):
        if name == PUBLIC:
            return None
        model = ours[name]
        return round(relative_distance(model.state_dict(), public_state_for_ours(model, public_model.state_dict())), 6)

    def record(rows):
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        append_csv_rows(args.curves, [{"time_utc": now, "command": command, "data": args.data, "seed": seed, **r}
                                      for r in rows])
    train_loader = make("train", shuffle=True)
    tracks = lockstep({PUBLIC: public_model, **ours}, lambda: train_loader, make("valid"), args.epochs,
                      args.patience, distance, args.log_every, record)
    rows = []
    for name, t in tracks.items():
        with torch.no_grad():
            metrics = t.model.evaluate(make("test"), metrics=["AUC", "logloss"])
        rows.append({"time_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "command": command,
                     "data": args.data, "seed": seed, "model": name, "epochs_run": t.epochs_run,
                     "best_epoch": t.best_epoch, "test_auc": round(float(metrics["AUC"]), 5),
                     "test_logloss": round(float(metrics["logloss"]), 5), "torch_threads": torch.get_num_threads()})
    public_auc = next(r["test_auc"] for r in rows if r["model"] == PUBLIC)
    for r in rows:
        r["auc_diff"] = round(r["test_auc"] - public_auc, 5)
        print(f"seed {seed} {r['model']}: test AUC {r['test_auc']:.4f} ({r['auc_diff']:+.4f} against public), "
              f"{r['epochs_run']} epochs (best {r['best_epoch']})", flush=True)
    append_csv_rows(args.results, rows)
    return rows


def summary_table(results: Path, curves: Path, data: str) -> str:
    """Rows of ``data``, per model: seeds, mean test AUC, the difference to the public model per
    seed, best epochs; then, over the epochs a model ran beside the public one, the largest
    distance of its weights to the public ones and the largest valid-AUC difference."""
    import csv

    if not results.exists():
        raise SystemExit(f"{results}: no rows yet (run without --summary first)")
    last = {}
    for r in csv.DictReader(results.open()):
        if r["data"] == data:
            last[(r["seed"], r["model"])] = r  # a re-run of a seed replaces the earlier row
    if not last:
        raise SystemExit(f"{results}: no row for --data {data}")
    epochs = {}
    if curves.exists():
        for r in csv.DictReader(curves.open()):
            if r["data"] == data:
                epochs[(r["seed"], r["model"], r["epoch"])] = r
    lines = ["| model | seeds | test AUC (mean) | diff vs public (per seed) | best epoch (epochs run) | "
             "max distance to public | max abs valid AUC diff |", "|---|---|---|---|---|---|---|"]
    for model in sorted({m for _, m in last}, key=lambda m: (m != PUBLIC, m)):
        rows = sorted((r for (_, m), r in last.items() if m == model), key=lambda r: int(r["seed"]))
        diffs = [float(r["auc_diff"]) for r in rows]
        dist, vdiff = [], []
        for (seed, m, epoch), c in epochs.items():
            other = epochs.get((seed, PUBLIC, epoch))
            if m == model != PUBLIC and other is not None and (seed, model) in last:
                dist.append(float(c["distance_to_public"]))
                vdiff.append(abs(float(c["valid_auc"]) - float(other["valid_auc"])))
        ours = model != PUBLIC
        lines.append(f"| {model} | {', '.join(r['seed'] for r in rows)} | "
                     f"{np.mean([float(r['test_auc']) for r in rows]):.4f} | "
                     + (f"{np.mean(diffs):+.4f} (" + ", ".join(f"{d:+.4f}" for d in diffs) + ")" if ours else "-")
                     + " | " + ", ".join(f"{r['best_epoch']} ({r['epochs_run']})" for r in rows)
                     + " | " + (f"{max(dist):.2e}" if ours and dist else "-")
                     + " | " + (f"{max(vdiff):.4f}" if ours and vdiff else "-") + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import torch

    import bench_train_throughput as bench
    from fuxictr_chime.io import write_text_atomic

    args = parse_args(argv)
    if args.summary:
        results = Path(args.results)
        text = summary_table(results, Path(args.curves), args.data)
        write_text_atomic(results.with_suffix(".md"),
                          f"Table written by `python benchmarks/eta_lockstep.py --data {args.data} --summary`.\n\n"
                          f"{text}")
        print(text)
        return 0
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    with tempfile.TemporaryDirectory(prefix="eta_lockstep_") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "data").mkdir()
        data = bench.copy_prepared(Path(args.data), tmp / "data")
        check_histories(data, args.short_len)
        public = bench.import_public(bench.fetch_public(tmp, args.public_dir))
        os.makedirs(tmp / "ckpt" / "bench", exist_ok=True)
        print(f"torch threads: {torch.get_num_threads()}", flush=True)
        for seed in args.seeds:
            run_seed(seed, args, data, tmp, public, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
