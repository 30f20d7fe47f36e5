"""How much of the counting scorer survives a residual quantizer? An upper reference for the ICM.

The user-category co-occurrence scorer (:mod:`fuxictr_chime.compressor.diagnostics`) scores an
anchor (u, t) against a candidate of category c by log(1 + #{u's positives at s <= t in c}): a
*counting state* v_t in R^V per position (V = number of categories). CHIME's holistic loss scores
the quantized user state instead: every position passes through the ICM's residual quantizer,
so z_t is one of prod(K_m) vectors. This script measures what that bottleneck costs even a
perfect counting encoder:

1. v_t of every valid position of ``--fit-users`` training users (CHIME's own user split and
   ``max_len``; at most ``--fit-rows`` rows sampled);
2. a residual quantizer of the given codebook sizes fitted to them by k-means level by level
   (scikit-learn, ``n_init=3``; the residual of level m is quantized by level m + 1);
3. the eval holistic loss of the scorer logit = scale * Q(v_t)[c] on CHIME's eval users and batches
   (:func:`fuxictr_chime.compressor.diagnostics.reference_loss_grid`), the scale chosen among
   ``SCALES`` on 50 other training users, beside the unquantized v_t and the reference ladder.

k-means codes minimise squared error in v, not the loss, and CHIME's encoder may present the
quantizer something easier than v; so this is a reference, not a bound. It answers one question:
at a given 64-float histogram budget, how many levels of which size keep the most of counting?

One CSV row per codebook layout goes to ``<out>/quantizer_ceiling.csv`` (with the command line),
the table to ``<out>/quantizer_ceiling.md``.

    .venv/bin/python benchmarks/quantizer_ceiling.py --sizes 32,16,16 16,16,16,16 8x8 4x16
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._known_answer import append_csv, last_runs  # noqa: E402
from benchmarks._known_answer import write_table as write_known_answer_table  # noqa: E402

#: logit multipliers tried for the counting scorers (the reference ladder's grid plus 2)
SCALES = (0.125, 0.25, 0.5, 1.0, 2.0)
FIELDS = ["time_utc", "command", "data", "expid", "codebook_sizes", "levels", "histogram_floats", "fit_users",
          "fit_rows", "residual_variance_share", "scale", "quantized", "dense", "uniform", "popularity",
          "cooccurrence", "oracle", "quantized_gap_closed", "dense_gap_closed", "seconds"]


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"32,16,16"`` -> (32, 16, 16); ``"8x8"`` -> eight codebooks of 8 codes."""
    if "x" in text:
        k, m = text.split("x")
        sizes = (int(k),) * int(m)
    else:
        sizes = tuple(int(k) for k in text.split(","))
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: codebook sizes must be positive integers")
    return sizes


def counting_states(values: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, width: int) -> torch.Tensor:
    """(B, T, width) log(1 + number of positives at positions s <= t per attribute value);
    ``values`` (B, T) int in [0, width), ``labels`` (B, T) in {+1, -1, 0}, ``mask`` (B, T) bool."""
    positive = (mask & (labels == 1)).float()  # (B, T)
    onehot = torch.zeros(*values.shape, width)  # (B, T, V)
    onehot.scatter_(2, values.long().unsqueeze(-1), positive.unsqueeze(-1))
    return torch.log1p(onehot.cumsum(1))  # (B, T, V)


def fit_rvq(x: np.ndarray, sizes: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """Codebooks (K_m, V) of a residual quantizer fitted to the rows of ``x`` by k-means per level."""
    from sklearn.cluster import KMeans

    books, residual = [], np.asarray(x, dtype=np.float64)
    for k in sizes:
        k_eff = min(int(k), len(np.unique(residual, axis=0)))  # k-means needs k distinct points
        model = KMeans(k_eff, n_init=3, random_state=seed).fit(residual)
        centres = np.zeros((int(k), residual.shape[1]))
        centres[:k_eff] = model.cluster_centers_
        centres[k_eff:] = model.cluster_centers_[0]  # unused duplicates keep the book at K_m codes
        books.append(centres.astype(np.float32))
        residual = residual - model.cluster_centers_[model.labels_]
    return books


def quantize(x: torch.Tensor, books: Sequence[np.ndarray]) -> torch.Tensor:
    """Sum of the nearest code of each level applied to the running residual, same shape as ``x`` (N, V)."""
    out, residual = torch.zeros_like(x), x.clone()
    for book in books:
        codes = torch.as_tensor(book, dtype=x.dtype)  # (K, V)
        nearest = codes[torch.cdist(residual, codes).argmin(1)]  # (N, V)
        out += nearest
        residual -= nearest
    return out


def counting_scorer(attribute: str, width: int, books: Sequence[np.ndarray] | None):
    """A reference scorer (diagnostics' protocol): logit = v_t[c] (``books`` None) or Q(v_t)[c]."""
    from fuxictr_chime.compressor.diagnostics import _mask

    def prepare(batch):
        values = batch["attrs"][attribute].cpu()  # (B, T)
        states = counting_states(values, batch["labels"].cpu(), _mask(batch).cpu(), width)  # (B, T, V)
        flat = states.reshape(-1, width)  # (B*T, V)
        if books is not None:
            flat = quantize(flat, books)
        column = values.reshape(-1).long()  # (B*T,)
        return lambda anchors, items: flat[anchors][:, column[items]]  # (C, Nv)
    return prepare


def gap(loss: float, popularity: float, oracle: float) -> float:
    """Share of the popularity-to-oracle gap closed by ``loss`` (lower is better)."""
    return (popularity - loss) / (popularity - oracle)


def measure(args: argparse.Namespace) -> list[dict]:
    from fuxictr_chime.compressor import diagnostics as D
    from fuxictr_chime.compressor.config import load_experiment
    from fuxictr_chime.compressor.data import RepresentationData
    from fuxictr_chime.compressor.train import _split_users

    torch.set_num_threads(args.threads)
    config, _ = load_experiment(ROOT / "model_zoo/CHIME/config", args.expid)
    optim = config.optim
    data = RepresentationData(args.data, max_len=optim.max_len)
    attribute = D.category_attribute(data.vocab_sizes())
    if attribute is None or attribute == "item_id":
        raise SystemExit(f"{args.data}: the representation items have no categorical attribute to count")
    width = data.vocab_sizes()[attribute] + 1
    train_ids, eval_ids = _split_users(data, optim)
    rng = np.random.default_rng(args.seed)
    fit_users = sorted(rng.choice(train_ids, min(args.fit_users, len(train_ids)), replace=False).tolist())
    rest = sorted(set(train_ids) - set(fit_users)) or list(train_ids)
    scale_users = sorted(rng.choice(rest, min(50, len(rest)), replace=False).tolist())
    rows = []
    for batch in data.batches(fit_users, 16, shuffle=False, seed=args.seed, bucket=True):
        mask = D._mask(batch)
        rows.append(counting_states(batch["attrs"][attribute], batch["labels"], mask, width)[mask].numpy())
    x = np.concatenate(rows)
    x = x[rng.choice(len(x), min(len(x), args.fit_rows), replace=False)]
    refs = D.run_references(data, train_ids, eval_ids, batch_size=optim.batch_size, seed=optim.seed)["losses"]

    def fitted_loss(scorer) -> tuple[float, float]:
        grid = {"uniform": D.uniform_scorer(), "s": scorer}
        fit = D.reference_loss_grid(data, scale_users, grid, batch_size=optim.batch_size, seed=optim.seed,
                                    scales=SCALES)["s"]
        scale = SCALES[int(np.argmin(fit))]
        loss = D.reference_loss_grid(data, eval_ids, {"s": scorer}, batch_size=optim.batch_size, seed=optim.seed,
                                     scales=(scale,))["s"][0]
        return float(loss), scale

    dense, _ = fitted_loss(counting_scorer(attribute, width, None))
    out = []
    for sizes in args.sizes:
        start = time.time()
        books = fit_rvq(x, sizes, seed=args.seed)
        residual = x - quantize(torch.as_tensor(x), books).numpy()
        loss, scale = fitted_loss(counting_scorer(attribute, width, books))
        pop, oracle = refs["popularity"], refs.get("oracle", float("nan"))
        out.append({"data": args.data.name, "expid": args.expid, "codebook_sizes": ",".join(map(str, sizes)),
                    "levels": len(sizes), "histogram_floats": sum(sizes), "fit_users": len(fit_users),
                    "fit_rows": len(x), "residual_variance_share": float(residual.var(0).sum() / x.var(0).sum()),
                    "scale": scale, "quantized": loss, "dense": dense, "uniform": refs["uniform"],
                    "popularity": pop, "cooccurrence": refs["cooccurrence"], "oracle": oracle,
                    "quantized_gap_closed": gap(loss, pop, oracle), "dense_gap_closed": gap(dense, pop, oracle),
                    "seconds": round(time.time() - start, 1)})
        print(f"{sizes}: quantized {loss:.4f} (scale {scale}) dense {dense:.4f} "
              f"gap {out[-1]['quantized_gap_closed']:.0%}", flush=True)
    return out


def write_table(csv_path: Path, md_path: Path) -> None:
    """Last run of each (data, codebook layout)."""
    runs = last_runs(csv_path, lambda row: (row["data"], row["codebook_sizes"]))
    lines = ["Eval holistic loss (lower is better) of the user-category counting state quantized by a k-means "
             "residual quantizer fitted to it, beside the unquantized state and the reference ladder (same "
             "eval users and batches as CHIME). Gap = share of the popularity-to-oracle gap closed.", "",
             "| data | codebooks | histogram floats | residual variance | quantized counting (gap) | "
             "counting, unquantized (gap) | uniform | popularity | oracle |", "|---|---|---|---|---|---|---|---|---|"]
    for (data, sizes), rows in runs.items():
        r = rows[-1]
        f = {k: float(r[k]) for k in ("residual_variance_share", "quantized", "dense", "uniform", "popularity",
                                      "oracle", "quantized_gap_closed", "dense_gap_closed")}
        lines.append(f"| {data} | ({sizes}) | {r['histogram_floats']} | {f['residual_variance_share']:.0%} | "
                     f"{f['quantized']:.3f} ({f['quantized_gap_closed']:.0%}) | {f['dense']:.3f} "
                     f"({f['dense_gap_closed']:.0%}) | {f['uniform']:.3f} | {f['popularity']:.3f} | {f['oracle']:.3f} |")
    write_known_answer_table(md_path, lines, {rows[0]["command"] for rows in runs.values()})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data/synthetic",
                        help="a prepared dataset with a categorical item attribute (default data/synthetic)")
    parser.add_argument("--expid", default="CHIME_synthetic_small_data",
                        help="CHIME experiment whose user split, max_len, batch size and seed are used")
    parser.add_argument("--sizes", nargs="+", type=parse_sizes, default=[(32, 16, 16)],
                        help="codebook layouts: 32,16,16 or KxM (M codebooks of K codes)")
    parser.add_argument("--fit-users", type=int, default=300)
    parser.add_argument("--fit-rows", type=int, default=40000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/quantizer_ceiling")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = measure(args)
    command = shlex.join(["python", "benchmarks/quantizer_ceiling.py", *(sys.argv[1:] if argv is None else argv)])
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    csv_path = args.out / "quantizer_ceiling.csv"
    append_csv(csv_path, FIELDS, [{"time_utc": now, "command": command, **row} for row in rows])
    write_table(csv_path, args.out / "quantizer_ceiling.md")


if __name__ == "__main__":
    main()
