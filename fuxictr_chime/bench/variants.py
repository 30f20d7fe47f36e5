"""Compressor variants feeding one ranking model: paper Table 3 (ablation) and Table 4 (depth).

Each variant is a CHIME experiment (optionally with config overrides) trained on the
representation set and exported into its own per-seed data view; the ranking model
(``<model>_CHIME_<dataset>``, DIN by default as in the paper) is then trained and tested on
that view. ``runs.csv`` holds one row per (variant, seed); the markdown table lists the means
over seeds (and the standard deviation when there are several seeds).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..io import write_text_atomic
from .pipeline import (DEFAULT_ZOO, CompressorJob, command_line, convergence_columns, dataset_id_of, ranker_expid,
                       run_ranker, train_and_export)
from .runs import RunLog, make_data_view
from .table2 import seeds_of

logger = logging.getLogger(__name__)

METRICS = (("AUC", "AUC (↑)"), ("gAUC", "gAUC (↑)"), ("logloss", "LogLoss (↓)"))


@dataclass(frozen=True)
class Variant:
    label: str                 # row label, e.g. "CHIME w/o IL"
    expid: str                 # CHIME experiment id
    overrides: tuple = ()      # ((section, key, value), ...)

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "_" for c in self.label).strip("_").lower()


def ablation_variants(dataset_id: str) -> list[Variant]:
    """Paper Table 3: CHIME and its three ablations."""
    return [Variant("CHIME", f"CHIME_{dataset_id}"),
            Variant("CHIME w/o IL", f"CHIME_{dataset_id}_wo_il"),
            Variant("CHIME w/o ICM", f"CHIME_{dataset_id}_wo_icm"),
            Variant("CHIME w/o IAM", f"CHIME_{dataset_id}_wo_iam")]


def depth_variants(dataset_id: str, layers: Sequence[int], arch: dict,
                   pretrained_path: str | None = None) -> list[Variant]:
    """Paper Table 4 / Figure 4: L decoder layers, random vs pretrained initialization.

    ``arch`` holds the pretrained checkpoint's backbone shape (arch, hidden_size, heads, ...);
    the random variant has exactly that shape with ``L`` layers, the pretrained one loads the
    checkpoint's first ``L`` layers: the checkpoint ``pretrained_path`` (the one ``arch`` was
    read from), or, when None, the one ``CHIME_<dataset>_pretrained`` names.
    """
    checkpoint = (("backbone", "pretrained_path", pretrained_path),) if pretrained_path is not None else ()
    out = []
    for n in layers:
        shape = tuple(("backbone", k, v) for k, v in arch.items())
        out.append(Variant(f"L={n} Random", f"CHIME_{dataset_id}_pretrained",
                           shape + (("backbone", "pretrained_path", None), ("backbone", "num_layers", n))))
        out.append(Variant(f"L={n} Pretrain", f"CHIME_{dataset_id}_pretrained",
                           checkpoint + (("backbone", "num_pretrained_layers", n),)))
    return out


def run_variants(data_dir: str | os.PathLike, out_dir: str | os.PathLike, variants: Sequence[Variant], *,
                 model: str = "DIN", seeds: int = 1, zoo: str | os.PathLike = DEFAULT_ZOO,
                 compressor_steps: int | None = None, ranking_overrides: dict | None = None,
                 progress: bool = True, title: str = "", table_name: str = "table.md") -> pd.DataFrame:
    """Train/export every variant per seed, run ``<model>_CHIME`` on each, write runs.csv + table."""
    if not variants:
        raise ConfigError("no variants to run")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset_id = dataset_id_of(data_dir)
    log = RunLog(out_dir / "runs.csv")
    cells = [(s, v) for s in seeds_of(seeds) for v in variants]
    for seed, variant in tqdm(cells, desc=table_name, disable=not progress):
        base = out_dir / f"seed_{seed}" / variant.slug
        key = {"model": model, "variant": variant.label, "seed": seed}
        if log.done(**key):
            _backfill_convergence(log, key, base / "models", model, dataset_id, zoo=zoo)
            continue
        view = make_data_view(data_dir, base / "data")
        job = CompressorJob("CHIME", variant.expid, "chime_hist", compressor_steps, variant.overrides)
        export = train_and_export(job, view, base / "chime", seed=seed, zoo=zoo, progress=progress)
        result = run_ranker(model, "CHIME", dataset_id, view, base / "models", seed=seed, zoo=zoo,
                            overrides=ranking_overrides)
        test = result["test"]
        log.append({**key, "AUC": test.get("AUC"), "gAUC": test.get("gAUC"), "logloss": test.get("logloss"),
                    "expid": variant.expid, **_valid_and_convergence(result),
                    "compressor_log": export.get("log", ""), "hit_ratio": export.get("hit_ratio", ""),
                    "perplexity": export.get("perplexity", ""), "command": command_line()})
    runs = log.frame()
    text = format_variant_table(runs, [v.label for v in variants], title=title or f"{model} w/ CHIME variants")
    write_text_atomic(out_dir / table_name, text)
    return runs


def _valid_and_convergence(result: dict) -> dict:
    """Valid metrics and the convergence columns (epochs run, best epoch, stopped early, base rate,
    learning-curve CSV) of a ranking result, as Table 2's rows have them."""
    valid = result.get("valid") or {}
    return {"valid_AUC": valid.get("AUC"), "valid_gAUC": valid.get("gAUC"),
            "valid_logloss": valid.get("logloss"), **convergence_columns(result)}


def _backfill_convergence(log: RunLog, key: dict, model_root: Path, model: str, dataset_id: str, *,
                          zoo: str | os.PathLike) -> None:
    """A finished row written before runs.csv had the convergence columns gets them from its run's
    result JSON (written by the runner next to the checkpoint), when that file is there."""
    row = log.find(**key)
    if row is not None and not pd.isna(row.get("stopped_early", float("nan"))):
        return
    _, expid = ranker_expid(model, "CHIME", dataset_id, zoo=zoo)
    path = Path(model_root) / dataset_id / f"{expid}.json"
    if path.is_file():
        log.update(_valid_and_convergence(json.loads(path.read_text())), **key)


def format_variant_table(runs: pd.DataFrame, order: Sequence[str], title: str = "") -> str:
    """Markdown: one row per variant, metric means over seeds in % (± std over seeds)."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| | " + " | ".join(name for _, name in METRICS) + " | seeds |", "|---" * (len(METRICS) + 2) + "|"]
    for label in order:
        sub = runs[runs["variant"] == label]
        if sub.empty:
            continue
        parts = []
        for metric, _ in METRICS:
            values = 100 * sub[metric].astype(float)
            text = f"{values.mean():.2f}"
            if len(values) > 1:
                text += f" ± {values.std(ddof=1):.2f}"
            parts.append(text)
        lines.append(f"| {label} | " + " | ".join(parts) + f" | {len(sub)} |")
    lines += ["", "Test metrics in %, mean (± standard deviation) over seeds."]
    lines += _paired_against_first(runs, [label for label in order if (runs["variant"] == label).any()])
    return "\n".join(lines) + "\n"


def _paired_against_first(runs: pd.DataFrame, order: Sequence[str]) -> list[str]:
    """Markdown lines: every later variant against the first (e.g. full CHIME), per metric the mean
    over common seeds of (variant - first) in points and the two-sided paired t-test p-value (scipy
    ``ttest_rel``); nothing when no variant shares two seeds with the first."""
    from scipy import stats

    if len(order) < 2:
        return []
    first = runs[runs["variant"] == order[0]].set_index("seed")
    rows = []
    for label in order[1:]:
        other = runs[runs["variant"] == label].set_index("seed")
        seeds = sorted(first.index.intersection(other.index))
        if len(seeds) < 2:
            continue
        parts = []
        for metric, _ in METRICS:
            diff = 100 * (other.loc[seeds, metric].to_numpy(float) - first.loc[seeds, metric].to_numpy(float))
            p = float("nan") if np.allclose(diff, diff[0]) else float(stats.ttest_1samp(diff, 0.0).pvalue)
            parts.append(f"{diff.mean():+.2f} (p={p:.2f})")
        rows.append(f"| {label} | " + " | ".join(parts) + f" | {len(seeds)} |")
    if not rows:
        return []
    return ["", f"Against {order[0]}, paired by seed:", "",
            "| | " + " | ".join(f"Δ{name}" for _, name in METRICS) + " | seeds |",
            "|---" * (len(METRICS) + 2) + "|", *rows, "",
            f"Δ: mean over seeds of (variant − {order[0]}) in points; p: two-sided paired t-test."]


def plot_eval_curves(curves: dict[str, pd.DataFrame], path: str | os.PathLike, *,
                     metric: str = "holistic", title: str = "") -> Path:
    """Eval-loss curves (paper Figure 4): one line per label from each run's log.csv eval rows, and
    for the holistic loss dotted horizontal lines at the reference scorers' losses where the logs
    have them (uniform, popularity, co-occurrence, oracle: :func:`.figures.draw_reference_lines`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, log in curves.items():
        ev = log[log["split"] == "eval"]
        ax.plot(ev["step"], ev[metric], marker="o", ms=3, label=label,
                linestyle="--" if "Random" in label else "-")
    from .figures import draw_reference_lines  # reference scorers' losses (log.csv ref_* columns)

    draw_reference_lines(ax, list(curves.values()), metric)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"eval {metric} loss")
    ax.set_title(title or f"eval {metric} loss during training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pretrained_shape(pretrained_path: str) -> tuple[dict, int]:
    """(backbone shape keys, number of decoder layers) of a local pretrained checkpoint."""
    import json

    from ..compressor.gguf import resolve_pretrained_path

    folder = resolve_pretrained_path(pretrained_path)
    cfg = json.loads((Path(folder) / "config.json").read_text())
    # transformers >= 5 writes rope_theta inside rope_parameters
    rope_theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    arch = {"arch": cfg["model_type"], "hidden_size": cfg["hidden_size"],
            "num_attention_heads": cfg["num_attention_heads"],
            "num_key_value_heads": cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
            "intermediate_size": cfg["intermediate_size"], "rope_theta": float(rope_theta),
            "rms_norm_eps": float(cfg.get("rms_norm_eps", 1e-6))}
    return arch, int(cfg["num_hidden_layers"])


def run_depth(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, layers: Sequence[int] | None = None,
              pretrained_path: str = "smollm2", seeds: int = 1, model: str = "DIN",
              zoo: str | os.PathLike = DEFAULT_ZOO, compressor_steps: int | None = None,
              ranking_overrides: dict | None = None, progress: bool = True) -> tuple[pd.DataFrame, Path]:
    """Paper Table 4 (DIN w/ CHIME per depth and init) and Figure 4 (eval holistic-loss curves).

    The pretrained rows load ``pretrained_path`` (replacing the checkpoint that
    ``CHIME_<dataset>_pretrained`` names); the random rows take its shape."""
    from ..compressor.config import SMOLLM2

    arch, max_layers = pretrained_shape(pretrained_path)
    layers = list(layers or (1, 4, max_layers))
    bad = [n for n in layers if not 1 <= n <= max_layers]
    if bad:
        raise ConfigError(f"--layers {bad}: the checkpoint has {max_layers} decoder layers")
    dataset_id = dataset_id_of(data_dir)
    if str(pretrained_path) != SMOLLM2:  # a folder or .gguf given on the command line: absolute
        pretrained_path = str(Path(pretrained_path).expanduser().resolve())
    variants = depth_variants(dataset_id, layers, arch, pretrained_path=str(pretrained_path))
    runs = run_variants(data_dir, out_dir, variants, model=model, seeds=seeds, zoo=zoo,
                        compressor_steps=compressor_steps, ranking_overrides=ranking_overrides,
                        progress=progress, title=f"{model} w/ CHIME: depth x initialization ({dataset_id})",
                        table_name="table4.md")
    curves = {}
    for v in variants:
        log = Path(out_dir) / f"seed_{seeds_of(seeds)[0]}" / v.slug / "chime" / "log.csv"
        if log.exists():
            curves[v.label] = pd.read_csv(log)
    png = plot_eval_curves(curves, Path(out_dir) / "figure4_eval_holistic.png",
                           title=f"eval holistic loss ({dataset_id}, seed {seeds_of(seeds)[0]})")
    return runs, png
