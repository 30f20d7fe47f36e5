"""Paper Table 5 (codebook hit ratio / perplexity) and Figure 5 (t-SNE of the histograms).

Both start from a trained and exported CHIME compressor: :func:`ensure_chime` trains and exports
one per seed into ``<out>/seed_<s>/`` (or reuses one a ``bench table2`` run left in the same
``--out`` folder), so pointing these commands at a table2 run directory costs no training.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import DataError
from ..io import write_text_atomic
from .pipeline import DEFAULT_ZOO, CompressorJob, dataset_id_of, train_and_export
from .runs import make_data_view
from .table2 import seeds_of


def ensure_chime(data_dir: str | os.PathLike, out_dir: str | os.PathLike, seed: int, *,
                 zoo: str | os.PathLike = DEFAULT_ZOO, compressor_steps: int | None = None,
                 progress: bool = True) -> tuple[Path, dict]:
    """A data view of seed ``seed`` with ``chime_hist`` exported; returns (view, export stats)."""
    dataset_id = dataset_id_of(data_dir)
    base = Path(out_dir) / f"seed_{seed}"
    view = make_data_view(data_dir, base / "data")
    job = CompressorJob("CHIME", f"CHIME_{dataset_id}", "chime_hist", compressor_steps)
    stats = train_and_export(job, view, base / "chime", seed=seed, zoo=zoo, progress=progress)
    return view, stats


REFERENCE_STYLES = {  # log.csv column -> (label, colour) of the horizontal reference lines
    "ref_uniform": ("uniform scores", "0.55"),
    "ref_popularity": ("item popularity", "tab:brown"),
    "ref_cooccurrence": ("category co-occurrence", "tab:olive"),
    "ref_popularity_cooccurrence": ("popularity x co-occurrence", "tab:cyan"),
    "ref_oracle": ("oracle", "black"),
}


def draw_reference_lines(ax, logs: Sequence[pd.DataFrame], metric: str = "holistic") -> list[str]:
    """Horizontal lines at the reference scorers' eval losses (``ref_*`` columns of log.csv eval
    rows, written by ``compress train``; compressor/diagnostics.py) on an eval-``metric`` plot.

    Only the holistic loss has references; the values are taken from the first log that has
    them (runs on the same data and eval users share them). Returns the columns drawn."""
    if metric != "holistic":
        return []
    for log in logs:
        evals = log[log["split"] == "eval"] if "split" in log else log
        values = {col: pd.to_numeric(evals[col], errors="coerce").dropna() for col in REFERENCE_STYLES
                  if col in evals}
        values = {col: float(v.iloc[0]) for col, v in values.items() if len(v)}
        if not values:
            continue
        for col, value in values.items():
            label, colour = REFERENCE_STYLES[col]
            ax.axhline(value, color=colour, linestyle=":", linewidth=1.2, label=f"{label} ({value:.3f})")
        return list(values)
    return []


def codebook_table(stats: Sequence[dict]) -> str:
    """Paper Table 5 layout from export stats of one or more seeds (means over seeds)."""
    rows = [s for s in stats if s.get("hit_ratio")]
    if not rows:
        raise DataError("no codebook statistics (was the compressor exported with its ICM on?)")
    sizes = rows[0]["codebook_sizes"]
    hit = np.mean([r["hit_ratio"] for r in rows], axis=0)
    ppl = np.mean([r["perplexity"] for r in rows], axis=0)
    head = "| | " + " | ".join(f"Codebook{m + 1}" for m in range(len(sizes))) + " |"
    lines = [head, "|---" * (len(sizes) + 1) + "|",
             "| Hit Ratio | " + " | ".join(f"{100 * h:.2f}%" for h in hit) + " |",
             "| Perplexity / Codesize | " + " | ".join(f"{p:.2f} / {k}" for p, k in zip(ppl, sizes)) + " |",
             "", f"Over the exported users' representation-set codes; mean of {len(rows)} seed(s)."]
    return "\n".join(lines) + "\n"


def run_codebooks(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, seeds: int = 1,
                  zoo: str | os.PathLike = DEFAULT_ZOO, compressor_steps: int | None = None,
                  progress: bool = True) -> str:
    stats = [ensure_chime(data_dir, out_dir, s, zoo=zoo, compressor_steps=compressor_steps,
                          progress=progress)[1] for s in seeds_of(seeds)]
    text = codebook_table(stats)
    write_text_atomic(Path(out_dir) / "codebooks.md", text)
    return text


def history_lengths(view: str | os.PathLike) -> pd.Series:
    """Representation-set behavior count per user_index."""
    rep = pd.read_parquet(Path(view) / "representation.parquet", columns=["user_index", "item_seq"])
    return pd.Series(rep["item_seq"].map(len).to_numpy(), index=rep["user_index"].to_numpy())


def run_tsne(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int = 1,
             zoo: str | os.PathLike = DEFAULT_ZOO, compressor_steps: int | None = None,
             max_users: int = 5000, progress: bool = True) -> Path:
    """Figure 5: t-SNE of the exported histograms, coloured by history length (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    view, _ = ensure_chime(data_dir, out_dir, seed, zoo=zoo, compressor_steps=compressor_steps,
                           progress=progress)
    users = pd.read_parquet(Path(view) / "user_info.parquet", columns=["user_index", "chime_hist"])
    lengths = history_lengths(view)
    users = users[users["user_index"].isin(lengths.index)]
    if len(users) > max_users:
        users = users.sample(max_users, random_state=seed)
    if len(users) < 5:
        raise DataError(f"{view}: only {len(users)} users with history; t-SNE needs at least 5")
    x = np.stack(users["chime_hist"].to_numpy()).astype(np.float32)  # (U, 64)
    emb = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca",
               random_state=seed).fit_transform(x)  # (U, 2)
    color = np.log10(lengths.loc[users["user_index"]].to_numpy())
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    points = ax.scatter(emb[:, 0], emb[:, 1], c=color, cmap="viridis", s=6)
    fig.colorbar(points, ax=ax, label="log10 representation-set behaviors")
    ax.set_title(f"t-SNE of chime_hist ({len(x)} users, {dataset_id_of(data_dir)})")
    ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    path = Path(out_dir) / "tsne.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
