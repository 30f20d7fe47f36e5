"""Training samples/s (data loading included) and test AUC: our SimSoft/ETA/SDIM/TWIN vs the
public LongCTR implementation of the same model, same settings, in one run (issue 8).

The public code ships in the ``fuxictr==2.3.10`` source distribution under
``model_zoo/LongCTR/``. It is downloaded at run time into a temporary folder
(``pip download --no-binary :all: --no-deps fuxictr==2.3.10``), imported from there with
importlib (never copied, never committed) and run with the installed 2.3.10 wheel; small
shims adapt what the wheel lacks (listed in ``PUBLIC_SHIMS`` and in the CSV row).

Data: a synthetic dataset in the prepared layout (ARCHITECTURE.md section 2) written to a
temporary folder. Items belong to latent clusters (``cate_id``; ``title_emb`` = cluster
centroid + noise); each user has a Dirichlet preference over clusters; histories are drawn
from it; a sample's click probability grows with the user's preference for the target's
cluster, so models that read the long history can learn it. The public loader reads the same
files (labels written as int64 there, because it stacks all columns into one array).

Per model and implementation, with the same seed: train ``--epochs`` epochs of
``--train-batches`` batches (shuffled), timing the first epoch after ``--warmup`` batches
(samples/s, loader + forward + backward + step); then test AUC/logloss on ``--test-samples``.
Appends one CSV row per model to benchmarks/results/bench_train_throughput.csv.

**Converged mode** (issue 12, item 4): ``--data DIR`` trains on a prepared folder instead (e.g.
``data/movielens`` or ``data/synthetic``; a copy with int64 labels, read by both sides; only the
item features, never a compressed user column) on its whole train split, and ``--patience N``
evaluates valid AUC - logloss (LongCTR's monitor) after every epoch, stops after N epochs
without improvement (``--epochs`` is then a cap) and tests the best epoch's weights on the whole
test split. ``--seeds`` repeats every model per seed (one row each, with ``seed``, the epochs run
and the best epoch of both sides). ``DIN`` is LongCTR's DIN, i.e. ours over the whole sequence
(``short_len = max_len``). Samples/s is always the first epoch after ``--warmup`` batches (of a
run stopped within its first epoch and resumed with ``--state``: the batches timed before the
stop, so one process's timing).
Each epoch prints its valid AUC and logloss and appends a row to ``--curves`` as it ends (default
``<results>_curves.csv``: model, seed, side, epoch, valid AUC and logloss, mean train loss,
seconds, and ``run_utc``, the ``time_utc`` of the run's row in ``--results``), and each side's
test pass one more row (no epoch; test AUC and logloss, best epoch, epochs run) as it ends, so a
run stopped before the other side finished (a public run takes hours here) keeps what it measured.
``--state DIR`` makes such a run resumable: after every epoch each side's training state (weights,
optimizer, gradients, step counters, the best epoch's weights, the loader's epoch and the torch /
numpy / random generators) is saved to ``DIR/<model>_seed<seed>_<side>.pt``, and within an epoch
every ``--save-every-min`` minutes of it as well (in the first epoch once its warm-up batches are
done), with the batches done and the generators as the epoch began, so that a public epoch of most
of an hour is not lost when a run is stopped half-way through it; and
``DIR/<model>_seed<seed>.json`` keeps the settings, the digests of the split files, the ``run_utc`` and
each finished side's result.
The same command run again skips finished sides, continues an interrupted one after its last saved
epoch or batch (re-drawing the epoch's order and passing over the batches done) and gives the
numbers an uninterrupted run gives (tests/bench/test_bench_train_throughput.py);
its row counts the ``resumes``. A record started with other settings or split files is refused.
``--summary`` judges the goal on the mean over seeds and says so where a model has fewer than
the goal's 3 seeds; below it, the valid AUC per epoch of both sides, seed by seed, from
``--curves`` with each side's test AUC where it was recorded.

``--eta-tiebreak longctr`` builds our ETA with ``tiebreak="longctr"`` (LongCTR's top-k tie order,
docs/ARCHITECTURE.md section 6; the row's ``ours_params`` says so). Our ETA draws its SimHash
projection from ``hash_seed``, which the bench leaves at 0 on every seed (the public ETA draws it
from the seeded global RNG, so it changes with the seed); ``--eta-hash-seed seed`` passes the run's
seed (``ours_params``: ``hash_seed=seed``). Such rows form their own
line of the summary; with ``--skip-public`` (ours only) that line takes the public AUC of the same
seed from the paired rows of the default ETA (the public side does not depend on our setting) and
judges the AUC half of the goal only.

**Time-only mode**: ``--data DIR --time-only`` times ``--train-batches`` batches (after
``--warmup``) of the prepared train split for both sides and stops there: samples/s and speedup
on that folder's shapes (its sequence lengths, items and batch size) where converged runs of the
public code would take too long; no AUC, so no goal judged. ``--summary --time-only`` writes
their table to ``<results>_<data>_time_only.md``; the converged ``--summary`` ignores these rows.

    .venv/bin/python benchmarks/bench_train_throughput.py --batch-size 512
    .venv/bin/python benchmarks/bench_train_throughput.py --models TWIN --train-batches 8 --epochs 1
    .venv/bin/python benchmarks/bench_train_throughput.py --data data/movielens --batch-size 256 \
        --epochs 30 --patience 2 --seeds 2024 2025 2026 --models DIN SimSoft ETA SDIM TWIN
    .venv/bin/python benchmarks/bench_train_throughput.py --data data/synthetic --time-only \
        --batch-size 1024 --train-batches 8 --seeds 2024 2025 2026 --models DIN SimSoft ETA SDIM TWIN
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "bench_train_throughput.csv"
PUBLIC_SDIST = "fuxictr==2.3.10"
PUBLIC_NAMES = {"SimSoft": "SIM", "ETA": "ETA", "SDIM": "SDIM", "TWIN": "TWIN", "DIN": "DIN"}
DEFAULT_MODELS = ["SimSoft", "ETA", "SDIM", "TWIN"]  # + DIN (over the whole sequence) on request
COMPRESSED_COLUMNS = {"chime_hist", "learn_emb", "hist_ctrl", "stats_ctrl"}  # never fed to either side
PUBLIC_SHIMS = "none needed beyond importlib loading (no fuxictr_version import)"
# --data: LongCTR's loader pads a batch to its longest history; a batch whose histories are all
# shorter than the short window or top-k breaks its SIM/ETA/SDIM/TWIN (TWIN: a mask/score shape
# error on MovieLens-100K). The shim left-pads such batches to that width with padding items.
PUBLIC_MIN_WIDTH_SHIM = ("histories left-padded to at least max(short_len + 1, topk) columns "
                         "(LongCTR's collator pads to the batch's longest history)")
# click model: logit = LOGIT_SCALE * (pref[u, c] * C - 1) / sqrt(C) - 0.5 with Dirichlet(0.3)
# preferences; the Bayes-optimal test AUC of this generator is about 0.87 (32 clusters)
LOGIT_SCALE = 6.0
GOAL_SEEDS = 3  # issue 12's goal is judged on the mean of 3 seeds per model
TWIN_SYNC_EVERY = 100  # our TWIN's GSU refresh (the CHIME paper's setting; the model's default)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(PUBLIC_NAMES))
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--max-len", type=int, default=1000, help="long history length")
    p.add_argument("--short-len", type=int, default=30)
    p.add_argument("--train-batches", type=int, default=40, help="batches per training epoch")
    p.add_argument("--warmup", type=int, default=2, help="untimed first batches of epoch 1")
    p.add_argument("--epochs", type=int, default=2, help="training epochs before the test AUC")
    p.add_argument("--test-samples", type=int, default=8192)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=20000)
    p.add_argument("--clusters", type=int, default=32)
    p.add_argument("--dense-dim", type=int, default=64, help="item side-vector width")
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--attention-dim", type=int, default=64)
    p.add_argument("--num-heads", type=int, default=2)
    p.add_argument("--topk", type=int, default=50)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="repeat every model per seed (default: --seed only)")
    p.add_argument("--data", default=None,
                   help="a prepared folder (fuxictr-chime prepare) instead of the generated data")
    p.add_argument("--patience", type=int, default=0,
                   help="> 0: early stopping on valid AUC - logloss after this many epochs without "
                        "improvement (--epochs is the cap); the best epoch is tested")
    p.add_argument("--public-dir", default=None,
                   help="an unpacked fuxictr-2.3.10 sdist (default: download to a temp folder)")
    p.add_argument("--time-only", action="store_true",
                   help="with --data: time --train-batches batches of its train split (after --warmup) "
                        "on both sides, no convergence and no AUC")
    p.add_argument("--skip-public", action="store_true", help="measure ours only")
    p.add_argument("--eta-tiebreak", choices=["recent", "longctr"], default="recent",
                   help="our ETA's top-k tie order: most recent first (default) or LongCTR's "
                        "(torch.topk over the distances, as the public ETA)")
    p.add_argument("--simsoft-gsu", choices=["paper", "longctr"], default="paper",
                   help="our SimSoft's GSU: the paper's (scaled scores, softmax auxiliary pooling, valid "
                        "behaviours only) or LongCTR's code (model key gsu, model_zoo/README.md)")
    p.add_argument("--twin-sync-every", type=positive_int, default=TWIN_SYNC_EVERY, metavar="N",
                   help="our TWIN's GSU copies the ESU projections every N training batches (default "
                        f"{TWIN_SYNC_EVERY}, the CHIME paper's setting); 1 = LongCTR's TWIN, which retrieves with "
                        "the live ESU weights (the same losses: tests/models/test_models_longctr_compat.py)")
    p.add_argument("--eta-hash-seed", choices=["0", "seed"], default="0",
                   help="our ETA's SimHash projection: drawn with seed 0 on every run (default, as in the "
                        "committed rows) or with the run's seed (the public ETA draws it from the seeded "
                        "global RNG)")
    p.add_argument("--results", default=str(RESULTS), help="CSV to append to")
    p.add_argument("--curves", default=None,
                   help="CSV of converged runs' rows per side: one per epoch as it ends, one for the test pass "
                        "(default: --results with _curves before the suffix)")
    p.add_argument("--state", default=None, metavar="DIR",
                   help="converged mode: keep each side's training state in DIR after every epoch and "
                        "a finished side's result, so that the same command run again resumes where "
                        "a stopped run left off (same numbers as an uninterrupted run)")
    p.add_argument("--save-every-min", type=float, default=10.0, metavar="M",
                   help="with --state: also save a side's state within an epoch every M minutes of it, "
                        "so that a stopped run resumes at the last saved batch (0: only after each epoch; "
                        "a first epoch stopped and resumed keeps the samples/s timed before the stop)")
    p.add_argument("--summary", action="store_true",
                   help="only write the converged-mode table of --data's rows in --results (mean over "
                        "seeds per model, the last row of each model and seed) to <results>_<data>.md; "
                        "with --time-only, the time-only rows' table to <results>_<data>_time_only.md")
    args = p.parse_args(argv)
    if args.patience < 0 or args.epochs < 1:
        p.error("--patience must be >= 0 and --epochs >= 1")
    if args.time_only and (args.data is None or args.patience > 0):
        p.error("--time-only needs --data and no --patience (it stops after --train-batches batches)")
    if args.data is not None and not args.summary and not (Path(args.data) / "dataset_config.yaml").exists():
        p.error(f"--data {args.data}: no dataset_config.yaml (run `fuxictr-chime prepare ... --out {args.data}`)")
    if args.state is not None and (args.time_only or args.patience == 0):
        p.error("--state needs a converged run (--patience > 0, no --time-only)")
    if not args.save_every_min >= 0:
        p.error(f"--save-every-min must be >= 0 minutes, not {args.save_every_min}")
    args.seeds = args.seeds or [args.seed]
    if args.curves is None:
        results = Path(args.results)
        args.curves = str(results.with_name(f"{results.stem}_curves{results.suffix}"))
    return args


# ----------------------------------------------------------------------------- data
def copy_prepared(src: Path, out: Path) -> dict:
    """The prepared folder ``src`` copied into ``out`` with int64 labels (the public loader stacks
    every column into one array and indexes users with it); returns the dataset block of its base
    dataset (item features only: no compressed user column)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import yaml

    from fuxictr_chime.data.features import load_dataset_params

    config = yaml.safe_load((src / "dataset_config.yaml").read_text())
    dataset_id = next(iter(config))
    block = load_dataset_params(str(src / "dataset_config.yaml"), dataset_id)
    label = block["label_col"]["name"]
    for split in ("train", "valid", "test"):
        table = pq.read_table(block[f"{split}_data"])
        column = table.column(label)
        if not pc.all(pc.is_in(column.cast(pa.float64()), value_set=pa.array([0.0, 1.0]))).as_py():  # int or float labels
            raise SystemExit(f"{block[f'{split}_data']}: column '{label}' must hold 0/1 labels")
        table = table.set_column(table.schema.get_field_index(label), label, column.cast(pa.int64()))
        pq.write_table(table, out / f"{split}.parquet")
        block[f"{split}_data"] = str(out / f"{split}.parquet")
    block["feature_cols"] = [c for c in block["feature_cols"]
                             if not (isinstance(c["name"], str) and c["name"] in COMPRESSED_COLUMNS)]
    block.pop("dataset_id", None)
    return block

def write_dataset(out: Path, args: argparse.Namespace) -> dict:
    """Synthetic prepared folder with a learnable signal; returns the dataset block."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(args.seed)
    n_u, n_i, n_c = args.users, args.items, args.clusters
    cluster = rng.integers(0, n_c, n_i + 1)  # (I+1,)
    centroids = rng.standard_normal((n_c, args.dense_dim)).astype(np.float32)
    title = centroids[cluster] + 0.7 * rng.standard_normal((n_i + 1, args.dense_dim),
                                                            dtype=np.float32)
    title[0] = 0.0
    cate = (cluster + 1).astype(np.int64)
    cate[0] = 0
    by_cluster = [np.flatnonzero(cluster[1:] == c) + 1 for c in range(n_c)]
    pref = rng.dirichlet(np.full(n_c, 0.3), n_u + 1)  # (U+1, C)
    lengths = np.concatenate([[0], rng.integers(args.max_len // 2, args.max_len + 1, n_u)])
    seqs = [_draw_items(rng, pref[u], by_cluster, n) for u, n in enumerate(lengths)]
    pq.write_table(pa.table({
        "user_index": np.arange(n_u + 1, dtype=np.int64),
        "full_item_seq": pa.array(seqs, pa.list_(pa.int64())),
        "chime_hist": _vectors(pref.astype(np.float32))}), out / "user_info.parquet")
    pq.write_table(pa.table({
        "item_index": np.arange(n_i + 1, dtype=np.int64),
        "item_id": np.arange(n_i + 1, dtype=np.int64), "cate_id": cate,
        "title_emb": _vectors(title)}), out / "item_info.parquet")
    sizes = {"train": args.train_batches * args.batch_size, "valid": args.batch_size,
             "test": args.test_samples}
    for split, n in sizes.items():
        users = rng.integers(1, n_u + 1, n)
        own = rng.random(n) < 0.5  # half the targets from the user's own taste
        target_c = np.where(own, _sample_rows(rng, pref[users]), rng.integers(0, n_c, n))
        items = np.array([by_cluster[c][rng.integers(len(by_cluster[c]))] for c in target_c])
        logit = LOGIT_SCALE * (pref[users, target_c] * n_c - 1.0) / np.sqrt(n_c) - 0.5
        label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
        seq_len = rng.integers(lengths[users] // 2, lengths[users] + 1)
        pq.write_table(pa.table({"user_index": users.astype(np.int64),
                                 "item_index": items.astype(np.int64),
                                 "seq_len": seq_len.astype(np.int64), "label": label}),
                       out / f"{split}.parquet")
    return dataset_block(out, args)


def _draw_items(rng, pref: np.ndarray, by_cluster: list, n: int) -> list:
    clusters = rng.choice(len(pref), size=n, p=pref)
    return [int(by_cluster[c][rng.integers(len(by_cluster[c]))]) for c in clusters]


def _sample_rows(rng, probs: np.ndarray) -> np.ndarray:
    """One category index per row of ``probs`` (N, C)."""
    cum = probs.cumsum(1)  # (N, C)
    return np.minimum((cum < rng.random((len(probs), 1)) * cum[:, -1:]).sum(1),
                      probs.shape[1] - 1)


def _vectors(matrix: np.ndarray):
    import pyarrow as pa

    n, d = matrix.shape
    offsets = np.arange(0, (n + 1) * d, d, dtype=np.int32)
    return pa.ListArray.from_arrays(offsets, matrix.reshape(-1))  # (N * d,) flat


def dataset_block(out: Path, args) -> dict:
    return {
        "data_format": "parquet", "rebuild_dataset": False,
        **{f"{s}_data": str(out / f"{s}.parquet") for s in ("train", "valid", "test")},
        "user_info": str(out / "user_info.parquet"), "item_info": str(out / "item_info.parquet"),
        "feature_cols": [
            {"name": ["user_index", "item_index", "seq_len"], "active": True, "dtype": "int",
             "type": "meta"},
            {"name": "item_id", "active": True, "dtype": "int", "type": "categorical",
             "source": "item", "vocab_size": args.items + 1},
            {"name": "cate_id", "active": True, "dtype": "int", "type": "categorical",
             "source": "item", "vocab_size": args.clusters + 1},
            {"name": "title_emb", "active": True, "dtype": "list", "type": "embedding",
             "source": "item", "pretrain_dim": args.dense_dim,
             "embedding_dim": args.embedding_dim},
        ],
        "label_col": {"name": "label", "dtype": "float"},
    }


# ----------------------------------------------------------------------------- public code
def fetch_public(tmp: Path, public_dir: str | None) -> Path:
    """The LongCTR folder of the fuxictr 2.3.10 sdist (downloaded into ``tmp`` if needed)."""
    if public_dir:
        root = Path(public_dir)
    else:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary",
                        ":all:", "--no-deps", PUBLIC_SDIST, "-d", str(tmp)], check=True)
        archive = next(tmp.glob("fuxictr-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        root = tmp / archive.name[:-len(".tar.gz")]
    longctr = root / "model_zoo" / "LongCTR"
    if not (longctr / "__init__.py").exists():
        raise SystemExit(f"{longctr}: no LongCTR package in the fuxictr sdist")
    return longctr


def import_public(longctr: Path):
    """Import the LongCTR package and its loader from the unpacked sdist (no sys.path edit)."""
    name = "longctr_public"
    spec = importlib.util.spec_from_file_location(name, longctr / "__init__.py",
                                                  submodule_search_locations=[str(longctr)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    spec = importlib.util.spec_from_file_location(f"{name}.longctr_dataloader",
                                                  longctr / "longctr_dataloader.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    return package, loader.LongCTRDataLoader


# ----------------------------------------------------------------------------- models
# The settings of ETA_synthetic (batch 1024, lr 1e-3, attention 32, one head) that the ETA
# diagnostics (eta_tie_order.py, eta_lockstep.py) share with this bench's planted-log runs.
ETA_SETTINGS = (("--batch-size", int, 1024), ("--learning-rate", float, 1e-3), ("--attention-dim", int, 32),
                ("--num-heads", int, 1), ("--topk", int, 50), ("--short-len", int, 30), ("--max-len", int, 1000))


def add_eta_settings(parser: argparse.ArgumentParser) -> None:
    """The ``ETA_SETTINGS`` options, with their defaults."""
    for flag, kind, default in ETA_SETTINGS:
        parser.add_argument(flag, type=kind, default=default, help="as ETA_synthetic")


def bench_args_of(args: argparse.Namespace, seed: int) -> argparse.Namespace:
    """This bench's arguments for the ``ETA_SETTINGS`` values of ``args`` and ``seed``."""
    argv = [part for flag, _, _ in ETA_SETTINGS for part in (flag, str(getattr(args, flag[2:].replace("-", "_"))))]
    return parse_args([*argv, "--seed", str(seed)])


def common_kwargs(args, model_root: str) -> dict:
    return {"learning_rate": args.learning_rate, "embedding_dim": args.embedding_dim,
            "dnn_hidden_units": [512, 128, 64], "dnn_activations": "ReLU",
            "attention_dim": args.attention_dim, "num_heads": args.num_heads,
            "attention_dropout": 0, "net_dropout": 0, "batch_norm": False, "topk": args.topk,
            "hash_bits": 32, "num_hashes": 48, "optimizer": "adam",
            "loss": "binary_crossentropy", "metrics": ["AUC", "logloss"], "verbose": 0,
            "model_root": model_root, "accumulation_steps": 1, "embedding_regularizer": 0,
            "net_regularizer": 0}


def model_kwargs(model: str, impl: str, args) -> dict:
    """Model-specific settings, the same for both implementations (names differ)."""
    if model == "DIN":  # LongCTR's DIN: attention over the whole sequence
        kw = {"attention_hidden_units": [64], "attention_hidden_activations": "Dice",
              "din_use_softmax": False}
        return kw if impl == "public" else {**kw, "short_len": args.max_len, "max_len": args.max_len}
    if impl == "public":
        kw = {"short_seq_len": args.short_len + 1}  # theirs slices [-short_seq_len:-1]
        if model == "SDIM":  # both: num_hashes signatures of hash_bits bits each (48 x 3)
            kw.update(num_hashes=48, hash_bits=3, l2_norm=True)
        return kw
    kw = {"short_len": args.short_len, "max_len": args.max_len}
    if model == "SDIM":
        kw.update(num_hashes=48, hash_bits=3)
    if model == "TWIN":
        kw["sync_every"] = TWIN_SYNC_EVERY
    return kw


def our_params(model: str, args) -> dict:
    """Settings of our model only, away from the bench's defaults (the row's ``ours_params`` names
    them, :func:`our_params_label`)."""
    params = {}
    if model == "ETA" and args.eta_tiebreak != "recent":
        params["tiebreak"] = args.eta_tiebreak
    if model == "ETA" and args.eta_hash_seed == "seed":
        params["hash_seed"] = args.seed
    if model == "SimSoft" and args.simsoft_gsu != "paper":
        params["gsu"] = args.simsoft_gsu
    if model == "TWIN" and args.twin_sync_every != TWIN_SYNC_EVERY:
        params["sync_every"] = args.twin_sync_every
    return params


def our_params_label(model: str, args) -> str:
    """``ours_params`` of a row: the same for every seed (``hash_seed=seed``, not its value)."""
    return " ".join(f"{k}={'seed' if k == 'hash_seed' else v}" for k, v in our_params(model, args).items())


def build_ours(model: str, feature_map, params: dict):
    from fuxictr_chime.models import get_model

    return get_model(model)(feature_map, model_id=f"ours_{model}", **params)


def build_public(package, model: str, feature_map, params: dict):
    return getattr(package, PUBLIC_NAMES[model])(feature_map, model_id=f"public_{model}",
                                                 **params)


def pad_public_histories(collator, width: int) -> None:
    """PUBLIC_MIN_WIDTH_SHIM: the collator's padded history batch gets at least ``width``
    columns (extra padding item 0 on the left, i.e. masked)."""
    padding_seqs = collator.padding_seqs

    def padded(user_seqs, seq_lens):
        seqs = padding_seqs(user_seqs, seq_lens)  # (B, w)
        if seqs.shape[1] < width:
            seqs = np.pad(seqs, ((0, 0), (width - seqs.shape[1], 0)))
        return seqs
    collator.padding_seqs = padded


def init_fit_state(model) -> None:
    """Attributes ``BaseModel.fit`` sets before ``train_step`` may be called."""
    model._max_gradient_norm = 10.0
    model._best_metric, model._stopping_steps, model._stop_training = -np.inf, 0, False
    model._steps_per_epoch = model._eval_steps = 10 ** 9
    model._total_steps = model._batch_index = model._epoch_index = 0


def _counters(model) -> dict:
    """The plain-number attributes of every submodule (step counters such as ``_train_batches``,
    which drives TWIN's GSU copies, and the fit attributes), by module name."""
    return {name: {k: v for k, v in vars(m).items() if type(v) in (int, float, bool)}
            for name, m in model.named_modules()}


def rng_states() -> dict:
    """The torch / numpy / random generators' states (the public loader's order, dropout)."""
    import random

    import torch

    return {"torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
            "random_rng": random.getstate()}


def set_rng_states(states: dict) -> None:
    import random

    import torch

    torch.set_rng_state(states["torch_rng"])
    np.random.set_state(states["numpy_rng"])
    random.setstate(states["random_rng"])


def save_state(path: Path, model, loader, **fit) -> None:
    """A side's training state after an evaluated epoch, or within one (then ``fit["in_epoch"]``
    holds the batches done, their loss sum and seconds, and the loader's epoch and the generators
    as the epoch began), written atomically: weights, optimizer, gradients, counters, the loader's
    epoch (our loader's shuffle order), the generators (``rng_states``) and ``fit``, the loop's own
    variables."""
    import torch

    from fuxictr_chime.io import atomic_path

    state = {"model": model.state_dict(), "optimizer": model.optimizer.state_dict(),
             "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
             "counters": _counters(model), "loader_epoch": getattr(loader, "epoch", None),
             **rng_states(), **fit}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, model, loader) -> dict:
    """Restore what ``save_state`` wrote into ``model``, ``loader`` and the generators; returns the
    loop's variables (``in_epoch`` None for a state saved after an epoch)."""
    import torch

    state = torch.load(path, weights_only=False)
    model.load_state_dict(state.pop("model"))
    model.optimizer.load_state_dict(state.pop("optimizer"))
    grads = state.pop("grads")
    for name, param in model.named_parameters():
        param.grad = grads.get(name)
    modules = dict(model.named_modules())
    for name, values in state.pop("counters").items():
        for key, value in values.items():
            setattr(modules[name], key, value)
    if (loader_epoch := state.pop("loader_epoch")) is not None:
        loader.epoch = loader_epoch
    set_rng_states({k: state.pop(k) for k in ("torch_rng", "numpy_rng", "random_rng")})
    state.setdefault("in_epoch", None)  # states saved before within-epoch saves existed
    return state


def train(model, make_loader, epochs: int, warmup: int, valid_loader=None,
          patience: int = 0, max_batches: int | None = None, on_epoch=None,
          state_path: Path | None = None, save_every_s: float = 0.0) -> dict:
    """Train up to ``epochs`` epochs. Returns the seconds and samples of epoch 1 after ``warmup``
    batches, the epochs run and the best epoch (1-based). With ``patience`` > 0 and a
    ``valid_loader``: valid AUC - logloss after every epoch, stop after ``patience`` epochs
    without improvement, and leave the best epoch's weights in ``model``; ``on_epoch`` (if given)
    is then called after each evaluation with ``epoch`` (1-based), ``valid_auc``,
    ``valid_logloss``, ``train_loss`` (the epoch's mean batch loss) and ``epoch_seconds``.
    ``max_batches``: an epoch ends after that many batches (time-only mode). ``state_path``: the
    training state is saved there after every evaluated epoch and after the first batch that ends
    ``save_every_s`` seconds or more after the epoch began or the last save (0: never within an
    epoch; in the first epoch not before its warm-up is over); where the file exists, training
    resumes from it (``save_state``): within an epoch by setting the loader's epoch and the
    generators back to the epoch's start, passing over the batches done and then restoring the
    generators saved after them, so the rest of the epoch draws what an uninterrupted run draws.
    A first epoch resumed within keeps the samples and seconds timed before the stop."""
    import copy

    import torch

    init_fit_state(model)
    seconds, samples = 0.0, 0
    best, best_epoch, best_state, epochs_run = -np.inf, epochs, None, 0
    stopped, in_epoch = False, None
    if state_path is not None and state_path.exists():
        fit = load_state(state_path, model, make_loader())
        seconds, samples, best, best_epoch = fit["seconds"], fit["samples"], fit["best"], fit["best_epoch"]
        best_state, epochs_run, stopped = fit["best_state"], fit["epochs_run"], fit["stopped"]
        if (in_epoch := fit["in_epoch"]) is not None:
            print(f"  resumed from {state_path} in epoch {epochs_run + 1} after {in_epoch['batches_done']} "
                  "batches", flush=True)
        else:
            print(f"  resumed from {state_path} after epoch {epochs_run}", flush=True)
    for epoch in range(epochs_run, epochs):
        if stopped:
            break
        model.train()
        model._epoch_index = epoch
        loader = make_loader()
        done, after, loss_sum, batches, elapsed_before = 0, None, 0.0, 0, 0.0
        if in_epoch is not None:  # back to the epoch's start; the generators after the done batches wait
            after, done = rng_states(), in_epoch["batches_done"]
            loss_sum, batches, elapsed_before = in_epoch["loss_sum"], in_epoch["batches"], in_epoch["seconds"]
            set_rng_states(in_epoch["start_rng"])
            if in_epoch["loader_epoch"] is not None:
                loader.epoch = in_epoch["loader_epoch"]
            in_epoch = None
        timing = epoch == 0 and done == 0  # a first epoch resumed after a stop keeps its first part's timing
        save_within = state_path is not None and save_every_s > 0
        epoch_begins = {"loader_epoch": getattr(loader, "epoch", None), "start_rng": rng_states()}
        start = epoch_start = last_save = time.perf_counter()
        for i, batch in enumerate(loader):
            if i < done:  # done before the run was stopped
                continue
            if after is not None:
                set_rng_states(after)
                after, epoch_start = None, time.perf_counter()
            if max_batches is not None and i == max_batches:
                break
            if timing and i == warmup:
                start, samples = time.perf_counter(), 0
            model._batch_index = i
            model._total_steps += 1
            loss = model.train_step(batch)
            if loss is not None:  # summed as a tensor: no device sync per step in the timed epoch
                loss_sum, batches = loss_sum + loss.detach(), batches + 1  # the public step returns a graph
            if timing:  # the timed epoch (before this fix every epoch's samples were counted)
                samples += _batch_size(batch)
            if save_within and (i >= warmup or not timing) and time.perf_counter() - last_save >= save_every_s:
                seconds_so_far = elapsed_before + time.perf_counter() - epoch_start
                if timing:  # the samples/s of the batches timed so far, kept if the run stops here
                    seconds = time.perf_counter() - start
                save_state(state_path, model, loader, seconds=seconds, samples=samples, best=best,
                           best_epoch=best_epoch, best_state=best_state, epochs_run=epochs_run,
                           stopped=stopped, in_epoch={"batches_done": i + 1, "loss_sum": loss_sum,
                                                      "batches": batches, "seconds": seconds_so_far,
                                                      **epoch_begins})
                last_save = time.perf_counter()
        if after is not None:  # every batch was done before the stop
            set_rng_states(after)
            epoch_start = time.perf_counter()
        if timing:
            seconds = time.perf_counter() - start
        epochs_run = epoch + 1
        if patience > 0 and valid_loader is not None:
            with torch.no_grad():
                metrics = model.evaluate(valid_loader, metrics=["AUC", "logloss"])
            auc, logloss = float(metrics["AUC"]), float(metrics["logloss"])
            score = auc - logloss
            elapsed = elapsed_before + time.perf_counter() - epoch_start
            print(f"  epoch {epoch + 1}: valid AUC {auc:.5f}, logloss {logloss:.5f} "
                  f"({elapsed:.0f}s)", flush=True)  # a public epoch takes minutes
            if on_epoch is not None:
                on_epoch(epoch=epoch + 1, valid_auc=round(auc, 5), valid_logloss=round(logloss, 5),
                         train_loss=round(float(loss_sum) / batches, 5) if batches else None,
                         epoch_seconds=round(elapsed, 1))
            if score > best:
                best, best_epoch, best_state = score, epoch + 1, copy.deepcopy(model.state_dict())
            elif epoch + 1 - best_epoch >= patience:
                stopped = True
            if state_path is not None:
                save_state(state_path, model, loader, seconds=seconds, samples=samples, best=best,
                           best_epoch=best_epoch, best_state=best_state, epochs_run=epochs_run,
                           stopped=stopped)
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"timed_seconds": seconds, "timed_samples": samples, "epochs_run": epochs_run,
            "best_epoch": best_epoch if best_state is not None else epochs_run}


def _batch_size(batch) -> int:
    if isinstance(batch, dict):
        return len(batch["item_seq"])
    return len(batch[2])  # public: (batch_dict, item_dict, mask)


def run_one(model: str, impl: str, args, data: dict, tmp: Path, public, on_epoch=None,
            state_path: Path | None = None) -> dict:
    import torch
    from fuxictr.pytorch.torch_utils import seed_everything

    from fuxictr_chime.data.features import build_feature_map
    from fuxictr_chime.data.loader import LongSeqDataLoader

    seed_everything(args.seed)
    fmap = build_feature_map("bench", data, embedding_dim=args.embedding_dim)
    if fmap.num_fields == 0:
        raise SystemExit("no feature to train on")
    params = {**common_kwargs(args, str(tmp / "ckpt")), **model_kwargs(model, impl, args),
              **(our_params(model, args) if impl == "ours" else {})}
    os.makedirs(tmp / "ckpt" / "bench", exist_ok=True)
    if impl == "ours":
        net = build_ours(model, fmap, {**params, "item_info": data["item_info"]})

        def make(split, shuffle=False):
            return LongSeqDataLoader(fmap, data[f"{split}_data"], split=split,
                                     batch_size=args.batch_size, shuffle=shuffle,
                                     user_info=data["user_info"], item_info=data["item_info"],
                                     max_len=args.max_len, seed=args.seed)
    else:
        package, loader_cls = public
        net = build_public(package, model, fmap, params)

        def make(split, shuffle=False):
            loader = loader_cls(fmap, data[f"{split}_data"], data["user_info"], data["item_info"],
                                batch_size=args.batch_size, shuffle=shuffle, num_workers=1,
                                max_len=args.max_len)
            if args.data is not None:
                pad_public_histories(loader.collate_fn, min(args.max_len, max(args.short_len + 1, args.topk)))
            return loader
    train_loader = make("train", shuffle=True)
    valid_loader = make("valid") if args.patience > 0 else None
    if args.time_only:
        fit = train(net, lambda: train_loader, 1, args.warmup, max_batches=args.warmup + args.train_batches)
        return {"samples_per_s": fit["timed_samples"] / fit["timed_seconds"], **fit}
    fit = train(net, lambda: train_loader, args.epochs, args.warmup, valid_loader, args.patience,
                on_epoch=on_epoch, state_path=state_path, save_every_s=60 * args.save_every_min)
    with torch.no_grad():
        metrics = net.evaluate(make("test"), metrics=["AUC", "logloss"])
    return {"samples_per_s": fit["timed_samples"] / fit["timed_seconds"], "auc": float(metrics["AUC"]),
            "logloss": float(metrics["logloss"]), **fit}


# ----------------------------------------------------------------------------- resumable runs
STATE_FREE_ARGS = {"seed", "seeds", "models", "results", "curves", "state", "summary", "public_dir",
                   "save_every_min"}  # none of these changes a side's numbers


def split_digests(data: str | None) -> dict[str, str]:
    """sha256 of the train / valid / test files of the prepared folder ``data`` (what both sides
    train and test on; a column export into its user table leaves them as they are)."""
    import hashlib

    if data is None:
        return {}
    digests = {}
    for split in ("train", "valid", "test"):
        path = Path(data) / f"{split}.parquet"
        if path.exists():
            digests[split] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def run_state(args, model: str, seed: int) -> tuple[Path, dict]:
    """The ``--state`` record of one model and seed (``<DIR>/<model>_seed<seed>.json``: the settings
    it was started with, the digests of the data's splits, its ``run_utc``, the finished sides'
    results, the resumes) and its path; a new record where none exists. A record started with other
    settings or other split files is refused, naming the file and what differs."""
    import json

    path = Path(args.state) / f"{model}_seed{seed}.json"
    settings = json.loads(json.dumps({k: v for k, v in sorted(vars(args).items()) if k not in STATE_FREE_ARGS}))
    digests = split_digests(args.data)
    if not path.exists():
        return path, {"settings": settings, "data_digests": digests, "run_utc": None, "sides": {}, "resumes": 0,
                      "row_written": False}
    try:
        record = json.loads(path.read_text())
        differ = sorted(k for k in {*settings, *record["settings"]}
                        if settings.get(k) != record["settings"].get(k))
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"--state: {path} is not a run record of this bench ({exc})") from exc
    if differ:
        raise SystemExit(f"--state: {path} was started with other settings ("
                         + ", ".join(f"{k}: {record['settings'].get(k)!r} there, {settings.get(k)!r} now"
                                     for k in differ) + "); use another --state folder")
    changed = sorted(k for k, v in record.setdefault("data_digests", digests).items() if digests.get(k) != v)
    if changed:  # (a record written before the digests takes today's)
        raise SystemExit(f"--state: {path} was started on other data: {', '.join(changed)} of {args.data} "
                         "changed since; use another --state folder")
    record["resumes"] += 1
    return path, record


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    import torch

    from fuxictr_chime.io import append_csv_rows, write_json_atomic, write_text_atomic

    args = parse_args(argv)
    if args.summary:
        if args.data is None:
            raise SystemExit("--summary needs --data (the rows' data folder)")
        results = Path(args.results)
        suffix = "_time_only" if args.time_only else ""
        target = results.with_name(f"{results.stem}_{Path(args.data).name}{suffix}.md")
        text = (time_only_table if args.time_only else summary_table)(results, args.data)
        if not args.time_only and (curves := curves_table(results, Path(args.curves), args.data)):
            text = f"{text}\n{curves}"
        write_text_atomic(target, f"Table written by `python benchmarks/bench_train_throughput.py --data "
                                  f"{args.data} --summary{' --time-only' if args.time_only else ''}`.\n\n{text}")
        print(text)
        return 0
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    with tempfile.TemporaryDirectory(prefix="bench_tp_") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "data").mkdir()
        start = time.perf_counter()
        if args.data is None:
            data = write_dataset(tmp / "data", args)
            print(f"synthetic data written in {time.perf_counter() - start:.1f}s", flush=True)
        else:
            data = copy_prepared(Path(args.data), tmp / "data")
            print(f"{args.data} copied with int64 labels in {time.perf_counter() - start:.1f}s", flush=True)
        public = None if args.skip_public else import_public(fetch_public(tmp, args.public_dir))
        for seed in args.seeds:
            args.seed = seed
            for model in args.models:
                state_file, record = run_state(args, model, seed) if args.state else (None, None)
                if record is not None and record["row_written"]:
                    print(f"{model} seed {seed}: finished in {state_file} (row {record['run_utc']} "
                          f"in its --results), not run again", flush=True)
                    continue
                row = {"time_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "command": command, "cpu_count": os.cpu_count(),
                       "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
                       "machine": platform.machine(), "model": model,
                       "public_class": f"LongCTR.{PUBLIC_NAMES[model]} ({PUBLIC_SDIST} sdist)",
                       "public_shims": PUBLIC_SHIMS if args.data is None else
                       f"{PUBLIC_SHIMS}; {PUBLIC_MIN_WIDTH_SHIM}", "batch_size": args.batch_size,
                       "max_len": args.max_len, "train_batches": args.train_batches,
                       "warmup": args.warmup, "epochs": args.epochs,
                       "test_samples": args.test_samples, "data": args.data or "generated",
                       "seed": seed, "patience": args.patience, "time_only": args.time_only,
                       "ours_params": our_params_label(model, args)}
                if record is not None:
                    record["run_utc"] = row["time_utc"] = record["run_utc"] or row["time_utc"]
                    row["resumes"] = record["resumes"]
                    write_json_atomic(state_file, record)
                for impl in ("ours", "public"):
                    if impl == "public" and public is None:
                        continue
                    if record is not None and impl in record["sides"]:
                        res = record["sides"][impl]
                        print(f"{model} seed {seed} {impl}: finished before (--state), test AUC "
                              f"{res['auc']:.4f}", flush=True)
                        row.update(side_columns(impl, res))
                        continue
                    def curve_row(_row=row, _impl=impl, **curve):  # one curve row per epoch, as it ends
                        append_csv_rows(args.curves, [{
                            "time_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "command": command, "run_utc": _row["time_utc"], "data": args.data,
                            "model": model, "ours_params": _row["ours_params"], "seed": seed, "impl": _impl,
                            **curve}])
                    side_state = state_file.with_name(f"{model}_seed{seed}_{impl}.pt") if state_file else None
                    res = run_one(model, impl, args, data, tmp, public, on_epoch=curve_row,
                                  state_path=side_state)
                    if args.patience > 0 and not args.time_only:  # the side's test pass, on its own row
                        curve_row(test_auc=round(res["auc"], 5), test_logloss=round(res["logloss"], 5),
                                  best_epoch=res["best_epoch"], epochs_run=res["epochs_run"])
                    if record is not None:  # the side is done: its result kept, its weights dropped
                        record["sides"][impl] = res
                        write_json_atomic(state_file, record)
                        side_state.unlink(missing_ok=True)
                    row.update(side_columns(impl, res))
                    if args.time_only:
                        print(f"{model} seed {seed} {impl}: {res['samples_per_s']:.0f} samples/s over "
                              f"{res['timed_samples']} samples", flush=True)
                    else:
                        print(f"{model} seed {seed} {impl}: {res['samples_per_s']:.0f} samples/s, test AUC "
                              f"{res['auc']:.4f}, {res['epochs_run']} epochs (best {res['best_epoch']})", flush=True)
                if public is not None:
                    row["speedup"] = round(row["ours_samples_per_s"] / row["public_samples_per_s"], 3)
                if public is not None and not args.time_only:  # time-only rows have no AUC
                    row["auc_diff"] = round(row["ours_auc"] - row["public_auc"], 5)
                    row["goal_met"] = bool(row["speedup"] >= 5.0 and row["auc_diff"] >= -0.002) if args.data else \
                        bool(row["speedup"] >= 3.0 and abs(row["auc_diff"]) <= 0.003)  # issue 12 / issue 8 goal
                append_csv_rows(args.results, [row])
                if record is not None:
                    record["row_written"] = True
                    write_json_atomic(state_file, record)
    return 0


def side_columns(impl: str, res: dict) -> dict:
    """One side's result as the row's ``<impl>_<key>`` columns, floats to 5 decimals."""
    return {f"{impl}_{k}": round(v, 5) if isinstance(v, float) else v for k, v in res.items()}


def _rows_of(results: Path, data: str, time_only: bool):
    """The rows of ``data`` in ``results`` of one mode (time-only or converged), the last one of
    each (model, seed)."""
    import pandas as pd

    rows = pd.read_csv(results)
    rows = rows[rows.get("data", pd.Series(dtype=str)).astype(str) == str(data)]
    if "time_only" in rows:  # rows written before the option have no such column: converged
        flags = rows["time_only"].astype(str).str.lower() == "true"
    else:
        flags = pd.Series(False, index=rows.index)
    rows = rows[flags if time_only else ~flags]
    if rows.empty:
        mode = "time-only" if time_only else "converged"
        raise SystemExit(f"{results}: no {mode} rows with data == {data!r}")
    rows = rows.assign(ours_params=rows.get("ours_params", pd.Series("", index=rows.index)).fillna(""))
    for col in ("public_auc", "public_samples_per_s", "public_epochs_run", "speedup", "auc_diff"):
        if col not in rows:  # a CSV of ours-only rows (--skip-public)
            rows[col] = np.nan
    rows = rows.assign(_paired=rows["public_auc"].notna())  # a paired row wins over an ours-only one
    last = rows.sort_values(["_paired", "time_utc"]).groupby(["model", "ours_params", "seed"], sort=False).tail(1)
    for (model, params), group in last.groupby(["model", "ours_params"]):
        if not time_only and 0 < group["_paired"].sum() < len(group):
            raise SystemExit(f"{results}: {model} {params or '(default settings)'} has paired rows for some seeds and "
                             f"ours-only rows (--skip-public) for others ({sorted(int(x) for x in group['seed'])}); "
                             "keep ours-only rows of a paired setting in another --results file")
    return last.drop(columns="_paired")


def _groups(rows):
    """(label, rows sorted by seed) per model in table order, then per ``ours_params`` (the
    default first): ``ETA`` and ``ETA (tiebreak=longctr)``."""
    for model in [m for m in PUBLIC_NAMES if m in set(rows["model"])]:
        of_model = rows[rows["model"] == model]
        for params in sorted(set(of_model["ours_params"]), key=lambda p: (p != "", p)):
            yield (f"{model} ({params})" if params else model,
                   of_model[of_model["ours_params"] == params].sort_values("seed"))


def time_only_table(results: Path, data: str) -> str:
    """Markdown: per model, the mean over seeds of the time-only rows of ``data`` (samples/s and
    speedup; no AUC, no goal)."""
    rows = _rows_of(results, data, time_only=True)
    settings = rows[["train_batches", "batch_size", "warmup"]].drop_duplicates()
    if len(settings) > 1:
        raise SystemExit(f"{results}: time-only rows of {data!r} mix train_batches/batch_size/warmup settings "
                         f"({settings.to_dict('records')}); keep one setting per --results file")
    first = rows.iloc[0]
    timed, warmup = int(first["train_batches"]), int(first["warmup"])
    lines = [f"Time-only rows on `{data}` (`--time-only`): {timed} timed batch{'es' * (timed != 1)} of "
             f"{int(first['batch_size'])} after {warmup} warm-up batch{'es' * (warmup != 1)} of the same "
             "prepared train split on both sides; mean over seeds. Not converged runs: no AUC, so issue 12's goal is not "
             "judged here.", "",
             "| model | seeds | ours samples/s | public samples/s | speedup (per seed) |", "|---|---|---|---|---|"]
    for label, r in _groups(rows):
        lines.append(f"| {label} | {', '.join(str(int(x)) for x in r['seed'])} | {r['ours_samples_per_s'].mean():,.0f} | "
                     f"{r['public_samples_per_s'].mean():,.0f} | {r['speedup'].mean():.1f}x "
                     f"({', '.join(f'{x:.1f}x' for x in r['speedup'])}) |")
    return "\n".join(lines) + "\n"


def _with_paired_public(r, rows):
    """Ours-only rows (``--skip-public``) of one group, their public columns taken from the paired
    row (public side measured) of the same model and seed; seeds without one are dropped."""
    paired = rows[(rows["model"] == r["model"].iloc[0]) & rows["public_auc"].notna()]
    paired = paired.sort_values("time_utc").groupby("seed").tail(1).set_index("seed")
    r = r[r["seed"].isin(paired.index)].copy()
    for col in ("public_auc", "public_samples_per_s", "public_epochs_run"):
        r[col] = r["seed"].map(paired[col])
    r["auc_diff"] = r["ours_auc"] - r["public_auc"]
    return r


def summary_table(results: Path, data: str) -> str:
    """Markdown: per model, the mean over seeds of the converged rows of ``data`` (the last row of
    each (model, ours_params, seed)) and issue 12's goal (speedup >= 5, auc_diff >= -0.002, both
    means). A group of ours-only rows is compared with the public AUC of the paired rows of the
    same seeds; it judges the AUC only (its samples/s were not measured beside the public code)."""
    rows = _rows_of(results, data, time_only=False)
    lines = [f"Converged runs on `{data}` (`--patience`, best epoch tested), mean over seeds; samples/s of "
             "the first epoch; goal: speedup >= 5 and AUC difference >= -0.002.", "",
             "| model | seeds | ours samples/s | public samples/s | speedup | ours AUC | public AUC | "
             "AUC diff (per seed) | epochs ours / public | goal |", "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for label, r in _groups(rows):
        ours_only = r["public_auc"].isna().all()
        if ours_only:
            seeds = set(r["seed"])
            r = _with_paired_public(r, rows)
            unpaired = sorted(seeds - set(r["seed"]))
            if unpaired:
                notes.append(f"{label}: ours-only rows of seed{'s' * (len(unpaired) > 1)} "
                             f"{', '.join(str(int(x)) for x in unpaired)} have no paired row of the same seed (not shown)")
            if r.empty:
                continue
        speedup, diff = r["speedup"].mean(), r["auc_diff"].mean()
        epochs = ", ".join(f"{int(a)}/{int(b)}" for a, b in zip(r["ours_epochs_run"], r["public_epochs_run"]))
        if ours_only:
            met = "AUC " + ("met" if diff >= -0.002 else "**not met**")
            speed = "- (ours only)"
        else:
            met = "met" if speedup >= 5 and diff >= -0.002 else "**not met**"
            speed = f"{speedup:.1f}x"
        if len(r) < GOAL_SEEDS:  # the goal is a mean over 3 seeds: fewer do not judge it
            met = f"{met} on {len(r)} seed{'s' * (len(r) > 1)} (goal: {GOAL_SEEDS})"
        public = "public AUC of the paired rows" if ours_only else ""
        lines.append(f"| {label} | {', '.join(str(int(x)) for x in r['seed'])} | {r['ours_samples_per_s'].mean():,.0f} | "
                     f"{r['public_samples_per_s'].mean():,.0f} | {speed} | {r['ours_auc'].mean():.4f} | "
                     f"{r['public_auc'].mean():.4f}{' (' + public + ')' if public else ''} | "
                     f"{diff:+.4f} ({', '.join(f'{d:+.4f}' for d in r['auc_diff'])}) | {epochs} | {met} |")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def curves_table(results: Path, curves: Path, data: str) -> str:
    """Markdown: per model setting and seed, the valid AUC per epoch of each side in the latest run
    of ``curves`` on ``data`` (its ``run_utc``), the side's test AUC (its test row in ``curves``,
    else its column in the run's row of ``results``) or "no test AUC recorded", and the two
    sides' difference over the epochs both ran. Empty when ``curves`` holds no row of ``data``."""
    import pandas as pd

    if not curves.exists():
        return ""
    rows = pd.read_csv(curves, dtype={"data": str, "ours_params": str, "run_utc": str})
    rows = rows[rows["data"] == str(data)].assign(ours_params=lambda r: r["ours_params"].fillna(""))
    if rows.empty:
        return ""
    for col in ("test_auc", "best_epoch"):
        if col not in rows:  # curves written before the test rows
            rows[col] = np.nan
    done = pd.read_csv(results) if results.exists() else pd.DataFrame(columns=["time_utc", "model", "seed"])
    lines = ["Valid AUC per epoch of both sides (`--curves`, the latest run of each model and seed) and each side's test "
             "AUC at its best epoch; the diff is ours - public valid AUC over the epochs both ran. A learning curve "
             "beside the goal's test AUCs above, not a judgement of the goal.", "",
             "| model | seed | run (UTC) | ours valid AUC per epoch | public valid AUC per epoch | diff per shared epoch |",
             "|---|---|---|---|---|---|"]
    for (model, params, seed), group in rows.groupby(["model", "ours_params", "seed"], sort=True):
        run_utc = group["run_utc"].max()
        run = group[group["run_utc"] == run_utc]
        row = done[(done["time_utc"].astype(str) == str(run_utc)) & (done["model"] == model) & (done["seed"] == seed)]
        cells, by_impl = [], {}
        for impl in ("ours", "public"):
            side = run[run["impl"] == impl]
            epochs = side[side["epoch"].notna()].sort_values("epoch").drop_duplicates("epoch", keep="last")
            by_impl[impl] = epochs.set_index("epoch")["valid_auc"]
            if side.empty:
                cells.append("-")
                continue
            tested = side[side["test_auc"].notna()]
            if not tested.empty:
                test = f"test AUC {tested['test_auc'].iloc[-1]:.4f} (best epoch {int(tested['best_epoch'].iloc[-1])})"
            elif f"{impl}_auc" in row and row[f"{impl}_auc"].notna().any():
                test = f"test AUC {row[f'{impl}_auc'].dropna().iloc[-1]:.4f}"
            else:
                test = "no test AUC recorded"
            cells.append(", ".join(f"{a:.4f}" for a in epochs["valid_auc"]) + f"; {test}")
        shared = by_impl["ours"].index.intersection(by_impl["public"].index)
        diff = ", ".join(f"{by_impl['ours'][e] - by_impl['public'][e]:+.4f}" for e in shared) or "-"
        label = f"{model} ({params})" if params else model
        lines.append(f"| {label} | {int(seed)} | {run_utc} | {cells[0]} | {cells[1]} | {diff} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
