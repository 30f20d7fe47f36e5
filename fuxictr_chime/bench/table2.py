"""``fuxictr-chime bench table2``: paper Table 2 on any prepared dataset.

For each seed: train the compressors (CHIME and LEARN) on the representation set, export their
columns into a per-seed view of the data, then train and test every requested ranking model
plain / w/ LEARN / w/ CHIME. Writes ``runs.csv`` (one row per (model, variant, seed) with AUC,
gAUC, logloss, the command and versions) and ``table2.md`` (paper layout, means over seeds,
bold per model group, ``*`` for a significant paired t-test; its header gives the share of test
rows whose user has representation-set history). Rerunning the same command in the same ``--out``
folder skips finished rows.

Controls (``--variants ...,HIST,STATS``): rows "X w/ HIST" / "X w/ STATS", the model with a
non-learned column of the same budget instead of CHIME's (:mod:`fuxictr_chime.compressor.controls`:
category histogram of the positives before t1; positive rate and log history length), computed per
seed into the view without training and run with the zoo's ``_CHIME`` experiment (model
``<Model>_HIST`` / ``<Model>_STATS``; checkpoints in ``seed_<s>/models_hist|models_stats``). They
are not in the default variants: they cost two more ranking runs per model and seed (+67% of the
ranking grid), and the default reproduces the paper's table. ``coverage=True`` (``--coverage``)
also writes ``table2_with_history.md`` (:func:`.coverage.write_history_tables`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import pandas as pd
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from ..io import write_text_atomic
from .pipeline import COLUMN_OF_VARIANT, CONTROL_OF_VARIANT, DEFAULT_ZOO, CompressorJob, check_experiments_exist, \
    command_line, convergence_columns, dataset_id_of, export_control, ranker_expid, run_ranker, train_and_export
from .coverage import history_note, history_share, run_layout, write_history_tables
from .runs import RunLog, make_data_view
from .table import SLICED, compute_table, format_markdown, sliced_comparison

logger = logging.getLogger(__name__)

MODELS = ("DIN", "SimSoft", "ETA", "SDIM", "TWIN")
DEFAULT_VARIANTS = ("plain", "LEARN", "CHIME")  # the paper's rows
VARIANTS = (*DEFAULT_VARIANTS, *CONTROL_OF_VARIANT)  # known: + the non-learned controls HIST, STATS
CONTROL_NOTE = ("Controls (non-learned, no compressor; the w/ CHIME experiment with another column): w/ HIST = "
                "the user's 64-bin category histogram of positive behaviors before t1; w/ STATS = the user's "
                "positive rate and log(1 + history length) before t1; zeros for users without history.")


def seeds_of(n: int, base: int = 1) -> list[int]:
    if n < 1:
        raise ConfigError(f"--seeds must be >= 1, got {n}")
    return [base + i for i in range(n)]


def run_table2(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, models: Sequence[str] = MODELS,
               variants: Sequence[str] = DEFAULT_VARIANTS, seeds: int = 5, zoo: str | os.PathLike = DEFAULT_ZOO,
               compressor_steps: int | None = None, ranking_overrides: dict | None = None,
               slices: int | None = None, coverage: bool = False, progress: bool = True) -> pd.DataFrame:
    """Run (or resume) the Table 2 grid; return the ``runs.csv`` frame and write ``table2.md``.

    ``slices`` (N >= 2, needs the CHIME variant): also run every model w/ CHIME on N time-sliced
    snapshots of the same seed's CHIME compressor (issue 7), as variant ``CHIME_sliced``
    (rows "X w/ CHIME (sliced)"), in a second data view ``seed_<s>/data_sliced``; the
    comparison with the single-snapshot rows goes to ``slices.md``.
    """
    dataset_id = check_table2_args(data_dir, models=models, variants=variants, seeds=seeds, zoo=zoo,
                                   slices=slices, compressor_steps=compressor_steps,
                                   ranking_overrides=ranking_overrides)
    if slices is not None:
        variants = [*variants, SLICED]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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
        compressors = {v for _, v in todo} - {"plain", *CONTROL_OF_VARIANT}
        if SLICED in compressors:  # the sliced rows reuse the seed's CHIME compressor
            compressors = compressors - {SLICED} | {"CHIME"}
        for variant in sorted(compressors):
            job = CompressorJob(variant, f"{variant}_{dataset_id}", COLUMN_OF_VARIANT[variant], compressor_steps)
            exports[variant] = train_and_export(job, view, out_dir / f"seed_{seed}" / variant.lower(),
                                                seed=seed, zoo=zoo, progress=progress)
        for variant in sorted({v for _, v in todo} & set(CONTROL_OF_VARIANT)):  # counting: no training
            exports[variant] = export_control(variant, view)
        if slices and any(v == SLICED for _, v in todo):
            sliced_view = sliced_data_view(data_dir, out_dir / f"seed_{seed}", exports["CHIME"], slices,
                                           progress=progress)
        for model, variant in todo:
            sliced = variant == SLICED
            _, model_root, zoo_variant = run_layout(out_dir, seed, variant)
            result = run_ranker(model, zoo_variant, dataset_id, sliced_view if sliced else view, model_root,
                                seed=seed, zoo=zoo, overrides=ranking_overrides)
            log.append(_row(model, variant, seed, result, exports.get("CHIME" if sliced else variant)))
            bar.update(1)
    bar.close()
    runs = log.frame()
    title = f"Table 2 on {dataset_id} ({len(seeds_of(seeds))} seeds)"
    controls = CONTROL_NOTE if not runs.empty and set(runs["variant"]) & set(CONTROL_OF_VARIANT) else ""
    write_table(runs, out_dir / "table2.md", models=list(models), title=title,
                note="\n\n".join(filter(None, [history_note(history_share(data_dir)), controls])))
    if coverage:
        write_history_tables(out_dir, models=list(models), title=title, zoo=zoo, progress=progress,
                             gpu=int((ranking_overrides or {}).get("gpu", -1)), overrides=ranking_overrides)
    if slices:
        text = sliced_comparison(runs, models=list(models))
        write_text_atomic(out_dir / "slices.md", f"### w/ CHIME: {slices} time slices vs one snapshot "
                                                 f"({dataset_id})\n\n{text}")
    return runs


def check_table2_args(data_dir: str | os.PathLike, *, models: Sequence[str], variants: Sequence[str],
                      seeds: int, zoo: str | os.PathLike = DEFAULT_ZOO, slices: int | None = None,
                      compressor_steps: int | None = None, ranking_overrides: dict | None = None) -> str:
    """Every argument of :func:`run_table2`, checked before anything is written or trained; returns
    the dataset id. ConfigError / DataError on: a data folder without ``dataset_config.yaml`` or
    ``user_info.parquet``; fewer than one seed; no model, an unknown model name (with
    :func:`~fuxictr_chime.models.get_model`'s "Did you mean"), a ``_CHIME`` / ``_LEARN`` name
    (``--variants`` chooses those); an unknown variant; bad ``--slices``; a ranking or compressor
    experiment ``<Model>[_<variant>]_<dataset>`` / ``<CHIME|LEARN>_<dataset>`` missing from the
    zoo; ``--epochs`` or ``--compressor-steps`` below 1."""
    import difflib

    from ..models import get_model

    dataset_id = dataset_id_of(data_dir)
    if not (Path(data_dir) / "user_info.parquet").exists():
        raise DataError(f"{data_dir}: not a prepared dataset folder (no user_info.parquet); "
                        "run `fuxictr-chime prepare` first")
    seeds_of(seeds)
    if not models:
        raise ConfigError(f"--models: no model given (e.g. {','.join(MODELS)})")
    for model in models:
        if model.endswith(tuple(f"_{v}" for v in VARIANTS if v != "plain")):
            raise ConfigError(f"--models {model}: give the base model ({model.rsplit('_', 1)[0]}); "
                              f"--variants chooses {' / '.join(VARIANTS)}")
        get_model(model)  # ConfigError with "Did you mean" for an unknown name
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        close = difflib.get_close_matches(unknown[0], VARIANTS, n=1) if unknown else []
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"--variants: unknown variant(s) {unknown or '(none given)'}.{hint} "
                          f"Known: {','.join(VARIANTS)}")
    if slices is not None:
        if slices < 2:
            raise ConfigError(f"--slices must be >= 2 (1 is the plain w/ CHIME row), got {slices}")
        if "CHIME" not in variants:
            raise ConfigError("--slices needs the CHIME variant (the sliced rows reuse its compressor)")
    epochs = (ranking_overrides or {}).get("epochs")
    if epochs is not None and int(epochs) < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if compressor_steps is not None and int(compressor_steps) < 1:
        raise ConfigError(f"--compressor-steps must be >= 1, got {compressor_steps}")
    for model in models:
        config_dir, _ = ranker_expid(model, "plain", dataset_id, zoo=zoo)
        check_experiments_exist(config_dir, [ranker_expid(model, v, dataset_id, zoo=zoo)[1] for v in variants],
                                f"model {model}")
    for variant in sorted(set(variants) - {"plain", *CONTROL_OF_VARIANT}):  # controls train nothing
        check_experiments_exist(Path(zoo) / variant / "config", [f"{variant}_{dataset_id}"],
                                f"{variant} compressor")
    return dataset_id


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
                title: str = "", note: str = "") -> str:
    text = format_markdown(compute_table(runs, models=models), title=title, note=note)
    write_text_atomic(path, text)
    return text


def _row(model: str, variant: str, seed: int, result: dict, export: dict | None) -> dict:
    test, valid = result["test"], result["valid"]
    return {"model": model, "variant": variant, "seed": seed,
            "AUC": test.get("AUC"), "gAUC": test.get("gAUC"), "logloss": test.get("logloss"),
            "valid_AUC": valid.get("AUC"), "valid_gAUC": valid.get("gAUC"), "valid_logloss": valid.get("logloss"),
            "expid": result["expid"], "dataset_id": result["dataset_id"], "seconds": result.get("seconds"),
            **convergence_columns(result),
            "compressor_checkpoint": (export or {}).get("checkpoint", ""),
            "command": command_line(), "versions": _versions()}


def _versions() -> str:
    from ..models.runner import versions

    return ";".join(f"{k}={val}" for k, val in versions().items())
