"""``fuxictr-chime bench table2``: paper Table 2 on any prepared dataset.

For each seed: train the compressors (CHIME and LEARN) on the representation set, export their
columns into a per-seed view of the data, then train and test every requested ranking model
plain / w/ LEARN / w/ CHIME. Writes ``runs.csv`` (one row per (model, variant, seed) with AUC,
gAUC, logloss, the command and versions) and ``table2.md`` (paper layout, means over seeds,
bold per model group, ``*`` for a significant paired t-test). Rerunning the same command in
the same ``--out`` folder skips finished rows.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import pandas as pd
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..io import write_text_atomic
from .pipeline import COLUMN_OF_VARIANT, DEFAULT_ZOO, CompressorJob, command_line, dataset_id_of, \
    run_ranker, train_and_export
from .runs import RunLog, make_data_view
from .table import compute_table, format_markdown

logger = logging.getLogger(__name__)

MODELS = ("DIN", "SimSoft", "ETA", "SDIM", "TWIN")
VARIANTS = ("plain", "LEARN", "CHIME")


def seeds_of(n: int, base: int = 1) -> list[int]:
    if n < 1:
        raise ConfigError(f"--seeds must be >= 1, got {n}")
    return [base + i for i in range(n)]


def run_table2(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, models: Sequence[str] = MODELS,
               variants: Sequence[str] = VARIANTS, seeds: int = 5, zoo: str | os.PathLike = DEFAULT_ZOO,
               compressor_steps: int | None = None, ranking_overrides: dict | None = None,
               progress: bool = True) -> pd.DataFrame:
    """Run (or resume) the Table 2 grid; return the ``runs.csv`` frame and write ``table2.md``."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset_id = dataset_id_of(data_dir)
    log = RunLog(out_dir / "runs.csv")
    cells = [(s, m, v) for s in seeds_of(seeds) for m in models for v in variants]
    bar = tqdm(total=len(cells), desc="table2", disable=not progress)
    for seed in seeds_of(seeds):
        todo = [(m, v) for m in models for v in variants if not log.done(model=m, variant=v, seed=seed)]
        bar.update(len(models) * len(variants) - len(todo))
        if not todo:
            continue
        view = make_data_view(data_dir, out_dir / f"seed_{seed}" / "data")
        exports = {}
        for variant in sorted({v for _, v in todo} - {"plain"}):
            job = CompressorJob(variant, f"{variant}_{dataset_id}", COLUMN_OF_VARIANT[variant], compressor_steps)
            exports[variant] = train_and_export(job, view, out_dir / f"seed_{seed}" / variant.lower(),
                                                seed=seed, zoo=zoo, progress=progress)
        for model, variant in todo:
            result = run_ranker(model, variant, dataset_id, view, out_dir / f"seed_{seed}" / "models",
                                seed=seed, zoo=zoo, overrides=ranking_overrides)
            log.append(_row(model, variant, seed, result, exports.get(variant)))
            bar.update(1)
    bar.close()
    runs = log.frame()
    write_table(runs, out_dir / "table2.md", models=list(models),
                title=f"Table 2 on {dataset_id} ({len(seeds_of(seeds))} seeds)")
    return runs


def write_table(runs: pd.DataFrame, path: str | os.PathLike, *, models: list[str] | None = None,
                title: str = "") -> str:
    text = format_markdown(compute_table(runs, models=models), title=title)
    write_text_atomic(path, text)
    return text


def _row(model: str, variant: str, seed: int, result: dict, export: dict | None) -> dict:
    test, valid = result["test"], result["valid"]
    return {"model": model, "variant": variant, "seed": seed,
            "AUC": test.get("AUC"), "gAUC": test.get("gAUC"), "logloss": test.get("logloss"),
            "valid_AUC": valid.get("AUC"), "valid_gAUC": valid.get("gAUC"), "valid_logloss": valid.get("logloss"),
            "expid": result["expid"], "dataset_id": result["dataset_id"], "seconds": result.get("seconds"),
            "compressor_checkpoint": (export or {}).get("checkpoint", ""),
            "command": command_line(), "versions": _versions()}


def _versions() -> str:
    from ..models.runner import versions

    return ";".join(f"{k}={val}" for k, val in versions().items())
