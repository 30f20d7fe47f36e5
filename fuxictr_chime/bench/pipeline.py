"""Steps shared by the paper benchmarks: train + export a compressor, train + test a ranker.

Every step is resumable: a compressor whose export marker exists is not trained again, a
ranking row already in ``runs.csv`` is not run again. The compressors are read from their
FuxiCTR-dialect experiment configs (``model_zoo/CHIME/config``, ``model_zoo/LEARN/config``);
the ranking models from ``model_zoo/<Model>/config``. Data always comes from a per-seed view
of the prepared folder (:func:`~.runs.make_data_view`), so exported columns of different
seeds and compressor variants never overwrite each other.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, DataError
from ..io import write_json_atomic

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ZOO = REPO_ROOT / "model_zoo"
COMPRESSOR_OF_VARIANT = {"CHIME": "CHIME", "LEARN": "LEARN"}
COLUMN_OF_VARIANT = {"CHIME": "chime_hist", "LEARN": "learn_emb", "HIST": "hist_ctrl", "STATS": "stats_ctrl"}
# Non-learned controls (compressor/controls.py): computed into the data view, no training. A control
# runs the zoo's ``<Model>_CHIME_<dataset>`` experiment with ``model: <Model>_<variant>`` overridden:
# the hyper-parameters of "X w/ CHIME" with another column, without 2 more YAML blocks per model and
# dataset that would have to be kept equal to the _CHIME ones by hand. Its checkpoints therefore go
# to their own model_root (the expid is the _CHIME one): see ``coverage.run_layout``.
CONTROL_OF_VARIANT = {"HIST": "hist", "STATS": "stats"}  # bench variant -> compress controls --which
ZOO_VARIANT_OF_CONTROL = "CHIME"


@dataclass(frozen=True)
class CompressorJob:
    """One compressor to train and export into a data view."""

    kind: str              # "CHIME" or "LEARN" (registry name)
    expid: str             # experiment id in <zoo>/<kind>/config/model_config.yaml
    column: str            # exported feature column
    max_steps: int | None = None
    overrides: tuple = ()  # ((section, key, value), ...) applied to the loaded config


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in sys.argv)


def dataset_id_of(data_dir: str | os.PathLike) -> str:
    """The dataset id of a prepared folder (the single key of its dataset_config.yaml)."""
    path = Path(data_dir) / "dataset_config.yaml"
    if not path.exists():
        raise DataError(f"{path}: missing; is {data_dir} a folder written by `fuxictr-chime prepare`?")
    ids = list((yaml.safe_load(path.read_text()) or {}).keys())
    if len(ids) != 1:
        raise DataError(f"{path}: expected exactly one dataset id, found {ids}")
    return ids[0]


def dataset_overrides(view: str | os.PathLike) -> dict[str, Any]:
    """Ranking-run parameters that point an experiment at a data view (paths resolved)."""
    from ..data.features import load_dataset_params

    view = Path(view)
    return load_dataset_params(str(view / "dataset_config.yaml"), dataset_id_of(view))


def train_and_export(job: CompressorJob, view: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int,
                     zoo: str | os.PathLike = DEFAULT_ZOO, progress: bool = True) -> dict:
    """Train ``job`` on the representation set of ``view`` (seeded), export its column into ``view``.

    Returns the export stats (incl. per-codebook hit ratio / perplexity for CHIME) plus the
    training log path. Skips both steps when ``out_dir/export.json`` exists (resume).
    """
    from ..compressor.config import load_experiment
    from ..compressor.export import export
    from ..compressor.registry import get_compressor
    from ..compressor.train import train

    out_dir, view = Path(out_dir), Path(view)
    marker = out_dir / "export.json"
    if marker.exists():
        logger.info("%s %s seed %d: already trained and exported (%s)", job.kind, job.expid, seed, marker)
        return json.loads(marker.read_text())
    spec = get_compressor(job.kind)
    config, _ = load_experiment(Path(zoo) / job.kind / "config", job.expid, config_class=spec.config_class)
    config.data_dir, config.output_dir = str(view), str(out_dir)
    config.optim.seed = int(seed)
    for section, key, value in job.overrides:
        holder = getattr(config, section)
        if not hasattr(holder, key):
            raise ConfigError(f"{job.expid}: override {section}.{key}: no such key")
        setattr(holder, key, value)
    if job.overrides:  # re-validate the section invariants after the overrides
        config = type(config).from_dict(config.to_dict())
    result = train(config, progress=progress, max_steps=job.max_steps, compressor=job.kind)
    checkpoint = result.best_checkpoint or result.last_checkpoint
    stats = export(checkpoint, view, column=job.column, progress=progress)
    stats = {**_jsonable(stats), "log": str(result.log_path), "checkpoint": str(checkpoint),
             "expid": job.expid, "seed": int(seed), "final_eval": _jsonable(result.final_eval)}
    write_json_atomic(marker, stats)
    return stats


def ranker_experiment(model: str, variant: str, dataset_id: str, view: str | os.PathLike, *,
                      zoo: str | os.PathLike = DEFAULT_ZOO,
                      overrides: dict | None = None) -> tuple[Path, str, dict[str, Any]]:
    """``(config folder, experiment id, parameter overrides)`` of ``<model>[_<variant>]_<dataset_id>``
    of the model zoo pointed at ``view`` (the arguments :func:`run_ranker` runs it with)."""
    config_dir, expid = ranker_expid(model, variant, dataset_id, zoo=zoo)
    if not config_dir.exists():
        raise ConfigError(f"{config_dir}: no model_zoo config for model {model!r}")
    control = {"model": f"{model}_{variant}"} if variant in CONTROL_OF_VARIANT else {}
    return config_dir, expid, {**dataset_overrides(view), **(overrides or {}), **control}


def ranker_expid(model: str, variant: str, dataset_id: str, *,
                 zoo: str | os.PathLike = DEFAULT_ZOO) -> tuple[Path, str]:
    """``(model_zoo/<model>/config, <model>[_<variant>]_<dataset_id>)``; a control (HIST, STATS)
    names the ``_CHIME`` experiment (:data:`ZOO_VARIANT_OF_CONTROL`)."""
    variant = ZOO_VARIANT_OF_CONTROL if variant in CONTROL_OF_VARIANT else variant
    expid = f"{model}_{dataset_id}" if variant == "plain" else f"{model}_{variant}_{dataset_id}"
    return Path(zoo) / model / "config", expid


def check_experiments_exist(config_dir: str | os.PathLike, expids: list[str], what: str) -> None:
    """ConfigError naming the first of ``expids`` missing from the FuxiCTR-dialect config folder
    ``config_dir`` (with the closest known ids), before anything is trained."""
    import difflib

    from ..models.runner import list_experiments

    config_dir = Path(config_dir)
    if not config_dir.is_dir():
        raise ConfigError(f"{what}: no config folder {config_dir}")
    known = list_experiments(config_dir)
    for expid in expids:
        if expid not in known:
            close = difflib.get_close_matches(expid, known, n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise ConfigError(f"{what}: experiment '{expid}' not in {config_dir}.{hint} "
                              f"Known: {known}")


def export_control(variant: str, view: str | os.PathLike) -> dict:
    """Compute the control column of ``variant`` (HIST / STATS) into ``view`` (no training; seconds);
    skipped when the view has its ``<column>.json`` (written last by the export)."""
    from ..compressor.controls import export_controls

    marker = Path(view) / f"{COLUMN_OF_VARIANT[variant]}.json"
    if marker.exists():
        return json.loads(marker.read_text())
    return export_controls(view, which=[CONTROL_OF_VARIANT[variant]])[CONTROL_OF_VARIANT[variant]]


def run_ranker(model: str, variant: str, dataset_id: str, view: str | os.PathLike, out_dir: str | os.PathLike,
               *, seed: int, zoo: str | os.PathLike = DEFAULT_ZOO, overrides: dict | None = None) -> dict:
    """Train and test ``<model>[_<variant>]_<dataset_id>`` of the model zoo on ``view``."""
    from ..models.runner import run_experiment

    config_dir, expid, params = ranker_experiment(model, variant, dataset_id, view, zoo=zoo,
                                                  overrides=overrides)
    gpu = int(params.pop("gpu", -1))  # ``bench --gpu N``: the CUDA device of the ranking runs
    result = run_experiment(config_dir, expid, gpu=gpu, seed=seed, model_root=Path(out_dir),
                            results_csv=Path(out_dir) / "results.csv", overrides=params)
    return result


CONVERGENCE_COLUMNS = ("epochs_run", "best_epoch", "stopped_early", "base_rate", "base_rate_logloss")


def convergence_columns(result: dict) -> dict[str, Any]:
    """The convergence facts of a :func:`run_ranker` result for a ``runs.csv`` row: epochs run,
    the checkpoint's epoch, whether early stopping ended the run, the train positive rate and
    its entropy (the logloss of a constant prediction), and the run's learning-curve CSV."""
    row = {key: result.get(key) for key in CONVERGENCE_COLUMNS}
    row["curve_csv"] = result.get("curve_csv", "")
    return row


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
