"""How much data does the compressor want? Eval holistic loss against the number of users.

For each size N, ``fuxictr-chime prepare synthetic --option n_users=N`` writes a planted log with
the default per-user knobs or those of ``--option`` (so only the number of users changes), then

* ``fuxictr-chime compress train --config model_zoo/CHIME/config --expid CHIME_synthetic --data D
  --max-steps S`` trains the shipped CHIME experiment; its best eval holistic loss is read from
  ``log.csv`` beside the reference scorers of the same eval users and batches (uniform,
  popularity, user-category co-occurrence, the planted oracle: :mod:`fuxictr_chime.compressor.
  diagnostics`), with the effective rank and mean cosine of z at that step;
* a **transparent probe** is trained on the same training users, batches and loss: the structure
  of the co-occurrence scorer with learned parameters, z_t = normalize(A mean_{s<=t, y_s=+1}
  E[c_s] + u), p = normalize(F[c]) over the item's category c only (about 20k parameters, no item
  ids, no backbone, no quantizer). It separates "CHIME cannot learn this" from "this much data
  does not teach even the right structure": where the probe does not beat the uniform scorer,
  the data are too few for any learned compressor at that budget.

One CSV row per size goes to ``<out>/compressor_users_curve.csv`` (with the command line), the
table to ``<out>/compressor_users_curve.md``; runs go to ``<out>/runs/`` (not committed) and logs
to ``<data-root>/u<N>``.

    .venv/bin/python benchmarks/compressor_users_curve.py --sizes 1000 3000 10000
    .venv/bin/python benchmarks/compressor_users_curve.py --expid CHIME_synthetic_small_data
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._known_answer import append_csv  # noqa: E402
from benchmarks._known_answer import write_table as write_known_answer_table  # noqa: E402
from fuxictr_chime.data.planted import PRESETS, PlantedKnobs  # noqa: E402
from fuxictr_chime.io import atomic_path  # noqa: E402

#: the preset whose knobs are the PlantedKnobs defaults (``long_term``)
DEFAULT_PRESET = next(name for name in PRESETS if PlantedKnobs.from_options(preset=name) == PlantedKnobs())

FIELDS = ["time_utc", "command", "expid", "knobs", "n_users", "train_users", "eval_users", "max_steps", "best_step",
          "chime_best", "chime_last", "probe_best", "uniform", "popularity", "cooccurrence", "oracle",
          "chime_gap_closed", "probe_gap_closed", "eff_rank_at_best", "mean_cosine_at_best", "seconds"]


def knobs_label(options: list[str]) -> str:
    """The ``knobs`` column: the options, led by the preset (``preset=long_term``, the default,
    when none is given), so a row says its knob set across changes of the defaults."""
    if any(o.startswith("preset=") for o in options):
        return " ".join(options)
    return " ".join([f"preset={DEFAULT_PRESET}", *options])


def expected_knobs(n_users: int, options: list[str]) -> dict:
    """The knobs ``prepare synthetic --option n_users=N --option ...`` generates with."""
    parsed = {key: yaml.safe_load(value) for key, _, value in (o.partition("=") for o in options)}
    return PlantedKnobs.from_options(**{**parsed, "n_users": n_users}).as_dict()


def prepare(n_users: int, options: list[str], data_root: Path) -> Path:
    """The planted log of ``n_users`` users and ``options`` under ``data_root`` (prepared when
    missing). A folder prepared earlier with other knobs (e.g. before a change of the defaults)
    is refused with the knobs that differ, never silently reused."""
    folder = data_root / "_".join([f"u{n_users}", *(o.replace("=", "") for o in options)])
    if not (folder / "summary.json").exists():
        knobs = [arg for option in [f"n_users={n_users}", *options] for arg in ("--option", option)]
        subprocess.check_call([sys.executable, "-m", "fuxictr_chime.cli", "prepare", "synthetic", "--out",
                               str(folder), *knobs], cwd=ROOT)
    found = json.loads((folder / "summary.json").read_text()).get("planted", {})
    wanted = expected_knobs(n_users, options)
    differ = [f"{k}: {found.get(k)!r} in the folder, {v!r} wanted" for k, v in wanted.items() if found.get(k) != v]
    if differ:
        raise SystemExit(f"{folder} was prepared with other knobs ({'; '.join(differ)}): remove it "
                         "or pass --data-root to prepare the log afresh")
    return folder


def train_chime(folder: Path, run_dir: Path, args: argparse.Namespace) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "fuxictr_chime.cli", "compress", "train", "--config",
               str(ROOT / "model_zoo/CHIME/config"), "--expid", args.expid, "--data", str(folder),
               "--output", str(run_dir), "--max-steps", str(args.max_steps), "--no-progress"]
    with open(run_dir.with_suffix(".log"), "w") as log:
        subprocess.check_call(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def read_log(run_dir: Path) -> dict:
    with (run_dir / "log.csv").open(newline="") as f:
        evals = [row for row in csv.DictReader(f) if row["split"] == "eval"]
    best = min(evals, key=lambda row: float(row["holistic"]))
    return {"best": best, "last": evals[-1]}


def train_probe(folder: Path, args: argparse.Namespace) -> tuple[float, int, int]:
    """The transparent probe (module docstring); returns (best eval holistic, #train, #eval users)."""
    import torch
    import torch.nn.functional as F

    from fuxictr_chime.compressor.config import load_experiment
    from fuxictr_chime.compressor.data import RepresentationData
    from fuxictr_chime.compressor.losses import holistic_loss
    from fuxictr_chime.compressor.train import _split_users

    torch.set_num_threads(args.threads)
    config, _ = load_experiment(ROOT / "model_zoo/CHIME/config", args.expid)
    optim, tau = config.optim, config.loss.tau_holistic
    data = RepresentationData(folder, max_len=optim.max_len)
    train_ids, eval_ids = _split_users(data, optim)  # CHIME's own split
    torch.manual_seed(optim.seed)
    n_cat, width = data.vocab_sizes()["cate_id"], 64
    user_emb, item_emb = torch.nn.Embedding(n_cat, width), torch.nn.Embedding(n_cat, width)
    for table in (user_emb, item_emb):
        torch.nn.init.normal_(table.weight, std=0.1)
    mix, offset = torch.nn.Linear(width, width), torch.nn.Parameter(0.1 * torch.randn(width))
    params = [*user_emb.parameters(), *item_emb.parameters(), *mix.parameters(), offset]
    optimizer = torch.optim.Adam(params, lr=args.probe_lr)

    def states(batch):
        cate, labels = batch["attrs"]["cate_id"], batch["labels"]  # (B, T)
        positive = (labels == 1).float().unsqueeze(-1)  # (B, T, 1)
        mean = (user_emb(cate) * positive).cumsum(1) / positive.cumsum(1).clamp_min(1)  # (B, T, W)
        return F.normalize(mix(mean) + offset, dim=-1), F.normalize(item_emb(cate), dim=-1)

    @torch.no_grad()
    def evaluate() -> float:
        total = weight = 0.0
        for batch in data.batches(eval_ids, optim.batch_size, shuffle=False, seed=optim.seed, bucket=True):
            z, p = states(batch)
            n = float(batch["mask"].sum())
            total += n * float(holistic_loss(z, p, batch["labels"], tau=tau, chunk_size=256))
            weight += n
        return total / weight

    best, step, epoch = evaluate(), 0, 0
    while step < args.probe_steps:
        for batch in data.batches(train_ids, 2 * optim.batch_size, shuffle=True, seed=epoch, bucket=True):
            z, p = states(batch)
            loss = holistic_loss(z, p, batch["labels"], tau=tau, chunk_size=256)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % 50 == 0:
                best = min(best, evaluate())
            if step >= args.probe_steps:
                break
        epoch += 1
    return best, len(train_ids), len(eval_ids)


def gap(loss: float, popularity: float, oracle: float) -> float:
    """Share of the popularity-to-oracle gap closed by ``loss`` (eval holistic, lower is better)."""
    return (popularity - loss) / (popularity - oracle)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 3000, 10000])
    parser.add_argument("--expid", default="CHIME_synthetic")
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--probe-steps", type=int, default=600)
    parser.add_argument("--probe-lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--option", action="append", default=[], metavar="KNOB=VALUE",
                        help="a `prepare synthetic` knob for every size (repeatable; default: the defaults)")
    parser.add_argument("--data-root", type=Path, default=ROOT / "data/synthetic_users")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/compressor_users_curve")
    parser.add_argument("--table-only", action="store_true", help="only rewrite the table from the CSV")
    args = parser.parse_args(argv)
    csv_path = args.out / "compressor_users_curve.csv"
    if args.table_only:
        migrate(csv_path)
        write_table(csv_path, args.out / "compressor_users_curve.md")
        return
    if any(n < 100 for n in args.sizes):
        parser.error("--sizes: at least 100 users each (50 are held out for eval)")
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/compressor_users_curve.py", *(argv or sys.argv[1:])])
    for n in args.sizes:
        started = time.perf_counter()
        folder = prepare(n, args.option, args.data_root)
        run_dir = args.out / "runs" / folder.name
        train_chime(folder, run_dir, args)
        log = read_log(run_dir)
        probe, n_train, n_eval = train_probe(folder, args)
        best = log["best"]
        refs = {name: float(best[f"ref_{name}"]) for name in ("uniform", "popularity", "cooccurrence", "oracle")}
        row = {"time_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "command": command,
               "knobs": knobs_label(args.option), "n_users": n, "train_users": n_train, "eval_users": n_eval, "max_steps": args.max_steps,
               "best_step": best["step"], "chime_best": float(best["holistic"]),
               "chime_last": float(log["last"]["holistic"]), "probe_best": probe, **refs,
               "chime_gap_closed": gap(float(best["holistic"]), refs["popularity"], refs["oracle"]),
               "probe_gap_closed": gap(probe, refs["popularity"], refs["oracle"]),
               "eff_rank_at_best": float(best["eff_rank"]), "mean_cosine_at_best": float(best["mean_cosine"]),
               "seconds": round(time.perf_counter() - started, 1)}
        append_row(csv_path, {**row, "expid": args.expid})
        print(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                        if k != "command"), flush=True)
    write_table(csv_path, args.out / "compressor_users_curve.md")


def expid_of(command: str) -> str:
    """The ``--expid`` of a command line of this script (its default when absent)."""
    words = shlex.split(command)
    return words[words.index("--expid") + 1] if "--expid" in words[:-1] else "CHIME_synthetic"


def migrate(csv_path: Path) -> None:
    """Rewrite a CSV written before a column of ``FIELDS`` existed (atomically; the ``expid`` of
    older rows is read from their command line). No-op when the header is current."""
    if not csv_path.exists():
        return
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames == FIELDS:
            return
        rows = [{**r, "expid": r.get("expid") or expid_of(r["command"])} for r in reader]
    with atomic_path(csv_path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def append_row(csv_path: Path, row: dict) -> None:
    """Append ``row`` to the CSV (header written when new; an older CSV migrated first)."""
    migrate(csv_path)
    append_csv(csv_path, FIELDS, [row])


def write_table(csv_path: Path, md_path: Path) -> None:
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    lines = ["Eval holistic loss (lower is better) on 50 held-out users of `prepare synthetic --option "
             "n_users=N` and the row's knobs (its preset: `long_term` is the default, `sessions` the default "
             "until 2026-12-04), same eval batches for every scorer. Gap = share of the "
             "popularity-to-oracle gap closed.", "",
             "| experiment | knobs | users | CHIME best (step of max) | CHIME gap | probe best | probe gap | uniform | "
             "popularity | co-occurrence | oracle | eff. rank / mean cos of z at best |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = {k: float(r[k]) for k in ("chime_best", "probe_best", "uniform", "popularity", "cooccurrence",
                                      "oracle", "chime_gap_closed", "probe_gap_closed", "eff_rank_at_best",
                                      "mean_cosine_at_best")}
        lines.append(f"| {r.get('expid') or expid_of(r['command'])} | {r['knobs']} | {r['n_users']} | {f['chime_best']:.3f} ({r['best_step']} of {r['max_steps']}) | {f['chime_gap_closed']:.0%} | "
                     f"{f['probe_best']:.3f} | {f['probe_gap_closed']:.0%} | {f['uniform']:.3f} | "
                     f"{f['popularity']:.3f} | {f['cooccurrence']:.3f} | {f['oracle']:.3f} | "
                     f"{f['eff_rank_at_best']:.2f} / {f['mean_cosine_at_best']:.3f} |")
    write_known_answer_table(md_path, lines, {r["command"] for r in rows})


if __name__ == "__main__":
    main()
