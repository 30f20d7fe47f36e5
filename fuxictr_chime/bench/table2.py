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
from .table import SLICED, compute_table, format_markdown, sliced_comparison

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
               slices: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Run (or resume) the Table 2 grid; return the ``runs.csv`` frame and write ``table2.md``.

    ``slices`` (N >= 2, needs the CHIME variant): also run every model w/ CHIME on N time-sliced
    snapshots of the same seed's CHIME compressor (issue 7), as variant ``CHIME_sliced``
    (rows "X w/ CHIME (sliced)"), in a second data view ``seed_<s>/data_sliced``; the
    comparison with the single-snapshot rows goes to ``slices.md``.
    """
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    if slices is not None:
        if slices < 2:
            raise ConfigError(f"--slices must be >= 2 (1 is the plain w/ CHIME row), got {slices}")
        if "CHIME" not in variants:
            raise ConfigError("--slices needs the CHIME variant (the sliced rows reuse its compressor)")
        variants = [*variants, SLICED]
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
        compressors = {v for _, v in todo} - {"plain"}
        if SLICED in compressors:  # the sliced rows reuse the seed's CHIME compressor
            compressors = compressors - {SLICED} | {"CHIME"}
        for variant in sorted(compressors):
            job = CompressorJob(variant, f"{variant}_{dataset_id}", COLUMN_OF_VARIANT[variant], compressor_steps)
            exports[variant] = train_and_export(job, view, out_dir / f"seed_{seed}" / variant.lower(),
                                                seed=seed, zoo=zoo, progress=progress)
        if slices and any(v == SLICED for _, v in todo):
            sliced_view = sliced_data_view(data_dir, out_dir / f"seed_{seed}", exports["CHIME"], slices,
                                           progress=progress)
        for model, variant in todo:
            sliced = variant == SLICED
            result = run_ranker(model, "CHIME" if sliced else variant, dataset_id,
                                sliced_view if sliced else view,
                                out_dir / f"seed_{seed}" / ("models_sliced" if sliced else "models"),
                                seed=seed, zoo=zoo, overrides=ranking_overrides)
            log.append(_row(model, variant, seed, result, exports.get("CHIME" if sliced else variant)))
            bar.update(1)
    bar.close()
    runs = log.frame()
    write_table(runs, out_dir / "table2.md", models=list(models),
                title=f"Table 2 on {dataset_id} ({len(seeds_of(seeds))} seeds)")
    if slices:
        text = sliced_comparison(runs, models=list(models))
        write_text_atomic(out_dir / "slices.md", f"### w/ CHIME: {slices} time slices vs one snapshot "
                                                 f"({dataset_id})\n\n{text}")
    return runs


def sliced_data_view(data_dir: str | os.PathLike, seed_dir: Path, chime_export: dict, slices: int, *,
                     progress: bool = True) -> Path:
    """``seed_dir/data_sliced``: a data view with ``chime_hist`` in ``slices`` time-sliced snapshots
    of the seed's trained CHIME checkpoint (cuts evenly in time from t1; compressor not refit).
    Skipped when its marker ``slices.json`` exists."""
    from ..compressor.slices import export_time_slices, make_cuts
    from ..io import write_json_atomic

    view = make_data_view(data_dir, seed_dir / "data_sliced")
    marker = seed_dir / "data_sliced" / "slices.json"
    if not marker.exists():
        cuts = make_cuts(view, slices=slices)
        stats = export_time_slices(chime_export["checkpoint"], view, cuts=cuts, column="chime_hist",
                                   progress=progress)
        write_json_atomic(marker, {"cuts": [int(c) for c in stats["cuts"]], "checkpoint": chime_export["checkpoint"],
                                   "users_reencoded": stats.get("users_reencoded"),
                                   "samples_per_slice": stats.get("samples_per_slice")})
    return view


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
