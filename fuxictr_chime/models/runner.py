"""Experiment runner: FuxiCTR's ``run_expid.py`` as a library function (utilization stage).

Paper section 5.1 trains every ranking model (DIN, SimSoft, ETA, SDIM, TWIN; plain, w/ CHIME,
w/ LEARN) with early stopping and reports AUC, gAUC (per user, impression weighted) and
logloss on the test set. :func:`run_experiment` does what FuxiCTR's ``run_expid.py`` does, in
the same YAML dialect (``model_config.yaml`` = ``Base:`` + one block per experiment id;
``dataset_config.yaml`` or ``dataset_config/*.yaml``), without ``os.chdir`` or ``sys.path``
edits: relative paths resolve against the folder of the YAML file that holds them.

Steps: load the config, seed everything, log to ``<model_root>/<dataset_id>/<expid>.log``,
build the feature map (:func:`fuxictr_chime.data.features.build_feature_map`), construct
``get_model(params["model"])``, train through ``RankDataLoader(..., data_loader=
LongSeqDataLoader)`` with early stopping (FuxiCTR's ``BaseModel.fit`` reloads the best
checkpoint), evaluate valid and test, append a row to the results CSV and write
``<model_root>/<dataset_id>/<expid>.json`` next to the checkpoint ``<expid>.model``.

Every run keeps its learning curve (:mod:`~fuxictr_chime.models.curves`, watching ``fit`` from
outside the model, so plug-in FuxiCTR models get it too): ``<expid>.curve.csv`` (one row per
validation evaluation: epoch, step, mean train loss, every metric) and ``<expid>.curve.png``,
and the convergence facts ``epochs_run``, ``best_epoch``, ``stopped_early``, ``base_rate`` and
``base_rate_logloss`` in the JSON and the CSV row. WARNINGs name the experiment when it did
not converge (epoch cap reached without early stopping), when the monitored metric never
improved on the first evaluation, and when the test logloss is worse than predicting the base
rate. Errors of a run (empty split, NaN/inf predictions or loss with epoch and batch, bad
data) name the experiment, and no result row is written.

Defaults: ``gpu=-1`` (CPU), seed from the config, ``model_root`` from the config (resolved
against the model config's folder), results CSV ``<model_root>/results.csv``.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import glob
import json
import logging
import multiprocessing as mp
import os
import shlex
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .. import __version__
from ..errors import ChimeError, ConfigError, DataError
from ..io import append_csv_rows, file_lock, read_yaml_mapping, write_json_atomic

logger = logging.getLogger(__name__)

GROUP_METRICS = ("gAUC", "avgAUC", "MRR")  # FuxiCTR metrics evaluated per group_id
COMPRESSED_COLUMNS = {"_CHIME": "chime_hist", "_LEARN": "learn_emb"}  # model suffix -> column
LOG_FORMAT = "%(asctime)s P%(process)d %(levelname)s %(message)s"  # as fuxictr.utils.set_logger


# --------------------------------------------------------------------------- configuration
def model_config_files(config_dir: str | os.PathLike) -> list[str]:
    """``<dir>/model_config.yaml``, else ``<dir>/model_config/*.yaml`` (sorted), as FuxiCTR."""
    config_dir = str(config_dir)
    files = glob.glob(os.path.join(config_dir, "model_config.yaml"))
    if not files:
        files = sorted(glob.glob(os.path.join(config_dir, "model_config", "*.yaml")))
    if not files:
        raise ConfigError(f"{config_dir}: no model_config.yaml and no model_config/*.yaml")
    return files


def list_experiments(config_dir: str | os.PathLike) -> list[str]:
    """Every experiment id of a config folder (all top-level keys except ``Base``)."""
    ids: list[str] = []
    for path in model_config_files(config_dir):
        ids.extend(k for k in _read_yaml(path) if k != "Base")
    return sorted(set(ids))


def load_experiment(config_dir: str | os.PathLike, expid: str,
                    overrides: Mapping[str, Any] | None = None) -> dict:
    """Merged parameters of one experiment, as ``fuxictr.utils.load_config`` merges them.

    Order (later wins, as FuxiCTR): ``Base``, the ``expid`` block, the dataset block of its
    ``dataset_id`` (paths resolved against the dataset YAML), then ``overrides``.
    ``model_root`` is resolved against the folder of the model config that defines the
    experiment. Unknown ``expid`` -> ConfigError listing the known ones.
    """
    from ..data.features import load_dataset_params

    base, block, source = _find_experiment(config_dir, expid)
    params = {**base, **block}
    if overrides:
        params.update(overrides)
    dataset_id = params.get("dataset_id")
    if not dataset_id:
        raise ConfigError(f"{source}: experiment '{expid}' has no 'dataset_id'")
    params.update(load_dataset_params(config_dir, str(dataset_id)))
    if overrides:  # overrides also win over dataset keys
        params.update(overrides)
    params["model_id"] = expid
    params["model_root"] = _resolve(params.get("model_root") or "./checkpoints/", source)
    if _is_file_model(params.get("model")):  # "path/to/file.py:Class", relative to the YAML
        path, cls = str(params["model"]).rsplit(":", 1)
        params["model"] = f"{_resolve(path, source)}:{cls}"
    _check_floats(params, source)
    if not params.get("model"):
        raise ConfigError(f"{source}: experiment '{expid}' has no 'model'")
    return params


def _find_experiment(config_dir: str | os.PathLike, expid: str) -> tuple[dict, dict, str]:
    base: dict | None = None
    found: tuple[dict, str] | None = None
    known: list[str] = []
    for path in model_config_files(config_dir):
        config = _read_yaml(path)
        if base is None and isinstance(config.get("Base"), dict):
            base = config["Base"]
        if found is None and expid in config:
            if not isinstance(config[expid], dict):
                raise ConfigError(f"{path}: experiment '{expid}' must be a mapping")
            found = (config[expid], path)
        known.extend(k for k in config if k != "Base")
    if found is None:
        close = difflib.get_close_matches(expid, known, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ConfigError(f"experiment id '{expid}' not found in {config_dir}.{hint} "
                          f"Known: {sorted(set(known))}")
    return dict(base or {}), dict(found[0]), found[1]


def _read_yaml(path: str) -> dict:
    return read_yaml_mapping(path, "experiment ids")


def _resolve(path: str | os.PathLike, yaml_file: str) -> str:
    path = os.path.expanduser(str(path))
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(os.path.dirname(os.path.realpath(yaml_file)), path))


def _check_floats(params: dict, source: str) -> None:
    """PyYAML reads ``1e-3`` as a string: refuse such values instead of failing later."""
    for key, value in params.items():
        if isinstance(value, str) and _looks_like_float(value):
            raise ConfigError(f"{source}: '{key}: {value}' is read as a string by YAML; "
                              f"write it with a dot, e.g. '{value.replace('e', '.e', 1)}'")


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return any(c in text.lower() for c in "e.") and text.lower() not in ("nan", "inf", "-inf")


# --------------------------------------------------------------------------- features / model
def required_features(model_name: str, model_cls: type | None = None) -> list[str]:
    """Feature columns a model needs beyond the dataset's basics.

    ``<Model>_CHIME`` needs ``chime_hist``, ``<Model>_LEARN`` needs ``learn_emb`` (spec
    section 5); a class may declare more through its ``compressed_column`` (the
    registry's variants do) or a ``required_features`` list attribute.
    """
    needed = [col for suffix, col in COMPRESSED_COLUMNS.items() if model_name.endswith(suffix)]
    column = getattr(model_cls, "compressed_column", None)
    extra = list(getattr(model_cls, "required_features", None) or []) + \
        ([column] if isinstance(column, str) else [])
    needed.extend(str(x) for x in extra if str(x) not in needed)
    return needed


def check_required_features(model_name: str, feature_map, dataset_id: str,
                            model_cls: type | None = None) -> None:
    """ConfigError naming a needed feature that is not active in the dataset config."""
    for name in required_features(model_name, model_cls):
        if name not in feature_map.features:
            if name in ("chime_hist", "learn_emb"):
                where = (f"or use its '<dataset>_{'chime' if name == 'chime_hist' else 'learn'}' "
                         f"dataset id as dataset_configs/*.yaml define it ")
                width, command = 64, "compress export"
            else:  # the non-learned controls of `compress controls` (hist_ctrl, stats_ctrl)
                where, width, command = "", 2 if name == "stats_ctrl" else 64, "compress controls"
            raise ConfigError(
                f"model '{model_name}' needs feature '{name}', which is not active in dataset "
                f"'{dataset_id}': add {{name: {name}, active: true, dtype: list, type: embedding, "
                f"source: user, pretrain_dim: {width}, embedding_dim: 16}} to the dataset config, "
                f"{where}(this runner also takes 'feature_specs: [{{name: {name}, active: true}}]'; "
                f"FuxiCTR's own workflow does not), and run `fuxictr-chime {command}` so "
                f"user_info.parquet has the column")


def apply_use_features(feature_map, use_features: list[str] | None, dataset_id: str) -> None:
    """FuxiCTR's ``use_features``: keep only the listed features (and every meta column).

    Meta columns (``user_index``, ``item_index``, ``seq_len``, ``item_seq``, ``seq_mask``) are
    kept because the long-sequence loader and the group id need them.
    """
    if not use_features:
        return
    features = feature_map.features
    unknown = [name for name in use_features if name not in features]
    if unknown:
        raise ConfigError(f"use_features: {unknown} not active in dataset '{dataset_id}'; "
                          f"active: {sorted(features)}")
    keep = set(use_features)
    for name in list(features):
        if name not in keep and features[name]["type"] != "meta":
            del features[name]
    feature_map.num_fields = feature_map.get_num_fields()
    feature_map.set_column_index()


def _is_file_model(name: Any) -> bool:
    return isinstance(name, str) and ":" in name and name.rsplit(":", 1)[0].endswith(".py")


def load_model_class(name: str) -> type:
    """The model class of ``params["model"]``.

    A registered name (``DIN``, ``TWIN_CHIME``, ...) or ``"module.path:Class"`` goes through
    :func:`fuxictr_chime.models.get_model`; ``"/path/to/file.py:Class"`` (a plug-in model file,
    e.g. ``examples/dnn.py``) is imported from that file with importlib (no ``sys.path``
    edit). The class must be a ``fuxictr.pytorch.models.BaseModel`` subclass.
    """
    if not _is_file_model(name):
        from . import get_model

        return get_model(name)
    import hashlib
    import importlib.util

    from fuxictr.pytorch.models import BaseModel

    path, cls_name = name.rsplit(":", 1)
    if not os.path.isfile(path):
        raise ConfigError(f"model '{name}': file {path} not found")
    module_name = f"fuxictr_chime_plugin_{Path(path).stem}_" \
                  f"{hashlib.sha1(path.encode()).hexdigest()[:8]}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception:
            del sys.modules[module_name]
            raise
    model_cls = getattr(module, cls_name, None)
    if not (isinstance(model_cls, type) and issubclass(model_cls, BaseModel)):
        raise ConfigError(f"model '{name}': {path} has no BaseModel subclass '{cls_name}'")
    return model_cls


def build_model(params: dict, feature_map):
    """``load_model_class(params["model"])(feature_map, **params)`` after the feature check."""
    name = str(params["model"])
    model_cls = load_model_class(name)
    check_required_features(name, feature_map, params["dataset_id"], model_cls)
    model = model_cls(feature_map, **params)
    guard_group_metrics(model)
    return model


# --------------------------------------------------------------------------- metrics
def evaluate_metrics(y_true: np.ndarray, y_pred: np.ndarray, metrics: list[str],
                     group_id: np.ndarray | None = None) -> OrderedDict:
    """FuxiCTR's ``evaluate_metrics``, safe on a one-core machine; NaN/inf predictions are a
    DataError.

    FuxiCTR computes group metrics (gAUC, ...) in ``mp.Pool(cpu_count() // 2)``, which is
    ``Pool(0)`` (ValueError) on one core. There the same per-group functions of
    ``fuxictr.metrics`` are evaluated in this process; elsewhere FuxiCTR's code runs as is.
    """
    from fuxictr import metrics as fm

    bad = ~np.isfinite(np.asarray(y_pred, dtype=np.float64))
    if bad.any():  # sklearn would fail with "Input contains NaN"
        raise DataError(f"{int(bad.sum())} of {bad.size} predictions are NaN/inf: the model "
                        f"diverged or its inputs hold NaN/inf")
    if mp.cpu_count() // 2 >= 1 or not any(m in GROUP_METRICS or m.startswith("NDCG")
                                          for m in metrics):
        return fm.evaluate_metrics(y_true, y_pred, metrics, group_id)
    plain = [m for m in metrics if m not in GROUP_METRICS and not m.startswith("NDCG")]
    result = fm.evaluate_metrics(y_true, y_pred, plain) if plain else OrderedDict()
    grouped = [m for m in metrics if m not in plain]
    result.update(group_metrics_in_process(y_true, y_pred, grouped, group_id))
    return OrderedDict((m, result[m]) for m in metrics)


def group_metrics_in_process(y_true: np.ndarray, y_pred: np.ndarray, metrics: list[str],
                             group_id: np.ndarray | None) -> dict:
    """Weighted means of FuxiCTR's per-group metric functions, one group at a time."""
    from fuxictr import metrics as fm

    if group_id is None:
        raise ConfigError(f"metrics {metrics} need 'group_id' (e.g. user_index) in the config")
    funcs = [fm.NDCG(k=int(m.split("@")[1])) if m.startswith("NDCG@") else getattr(fm, m)
             for m in metrics]
    order = np.argsort(group_id, kind="stable")
    _, starts = np.unique(np.asarray(group_id)[order], return_index=True)
    totals = np.zeros((len(funcs), 2))
    for rows in np.split(order, starts[1:]):
        for j, fn in enumerate(funcs):
            value = fn(y_true[rows], y_pred[rows])
            totals[j] += value if isinstance(value, tuple) else (value, 1)
    return {m: float(totals[j, 0] / totals[j, 1]) if totals[j, 1] else 0.0
            for j, m in enumerate(metrics)}


def guard_group_metrics(model) -> None:
    """Route the model's ``evaluate_metrics`` through :func:`evaluate_metrics`."""
    def _evaluate(y_true, y_pred, metrics, group_id=None):
        return evaluate_metrics(y_true, y_pred, metrics, group_id)

    model.evaluate_metrics = _evaluate


# --------------------------------------------------------------------------- logging / results
@contextlib.contextmanager
def run_log(log_file: str) -> Iterator[None]:
    """Log INFO and above to ``log_file`` (format of fuxictr.utils.set_logger) during a run.

    Unlike ``set_logger`` it leaves the handlers already installed (CLI, pytest) in place and
    restores the root level afterwards.
    """
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    handler = logging.FileHandler(log_file, mode="w")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level, logging.INFO) if old_level else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def append_result_row(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append ``row`` to a results CSV (atomic, locked against parallel runs; columns are the
    union of old and new ones: :func:`fuxictr_chime.io.append_csv_rows`)."""
    append_csv_rows(path, [row])


def fuxictr_result_line(params: dict, valid: Mapping[str, float], test: Mapping[str, float],
                        command: str, when: dt.datetime | None = None) -> str:
    """The one-line result record of FuxiCTR's ``run_expid.py`` (same fields and formatting:
    ``print_to_list``'s ``key: value`` with 6 decimals joined by `` - ``)."""
    def listed(values: Mapping[str, float]) -> str:
        return " - ".join(f"{k}: {float(v):.6f}" for k, v in values.items())

    stamp = (when or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return (f" {stamp},[command] python {command},[exp_id] {params['model_id']},"
            f"[dataset_id] {params['dataset_id']},[train] N.A.,[val] {listed(valid)},"
            f"[test] {listed(test)}\n")


def append_result_line(path: str | os.PathLike, line: str) -> None:
    """Append one FuxiCTR result line to ``path`` (locked against parallel autotuner runs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")), open(path, "a") as fh:
        fh.write(line)


def versions() -> dict:
    """Package versions and the git commit of this checkout (None outside a git tree)."""
    import fuxictr
    import torch

    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__),
                             capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() or None if out.returncode == 0 else None
    return {"fuxictr_chime": __version__, "fuxictr": fuxictr.__version__,
            "torch": torch.__version__, "python": sys.version.split()[0], "git_commit": commit}


CONVERGENCE_KEYS = ("epochs_run", "best_epoch", "stopped_early", "base_rate", "base_rate_logloss")


def _result_row(params: dict, valid: dict, test: dict, command: str, seconds: float,
                convergence: Mapping[str, Any] | None = None) -> dict:
    row = {"time_utc": _utc_now(),
           "command": command, "expid": params["model_id"], "model": params["model"],
           "dataset_id": params["dataset_id"], "seed": params.get("seed")}
    row.update({f"valid_{k}": float(v) for k, v in valid.items()})
    row.update({f"test_{k}": float(v) for k, v in test.items()})
    row.update({k: (convergence or {}).get(k) for k in CONVERGENCE_KEYS})
    row.update({"train_eval_seconds": round(seconds, 3), "fuxictr_chime_version": __version__})
    return row


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _jsonable(params: dict) -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, (str, int, float, bool, type(None), list, dict)):
            out[key] = value
        else:
            out[key] = f"{type(value).__module__}.{type(value).__name__}" \
                if not isinstance(value, type) else f"{value.__module__}.{value.__name__}"
    return out


# --------------------------------------------------------------------------- the run
def run_experiment(config_dir: str | os.PathLike, expid: str, *, gpu: int = -1,
                   seed: int | None = None, model_root: str | os.PathLike | None = None,
                   results_csv: str | os.PathLike | None = None,
                   result_log: str | os.PathLike | None = None,
                   overrides: Mapping[str, Any] | None = None) -> dict:
    """Train and evaluate one experiment id of a FuxiCTR-dialect config folder.

    Args:
        config_dir: folder with ``model_config.yaml`` (or ``model_config/*.yaml``) and
            ``dataset_config.yaml`` (or ``dataset_config/*.yaml``; may be a symlink).
        expid: experiment id (a top-level key of the model config).
        gpu: CUDA device index, -1 for CPU (default).
        seed: overrides the config's ``seed``.
        model_root: overrides the config's ``model_root`` (checkpoints, logs, JSON results).
        results_csv: CSV to append the result row to; default ``<model_root>/results.csv``.
        result_log: file to append FuxiCTR's one-line ``[val] ... [test] ...`` record to
            (what FuxiCTR's ``run_expid.py`` writes); default ``<model_root>/<config folder
            name>.csv``, e.g. ``checkpoints/config.csv``.
        overrides: any further parameter overrides (applied last).

    Returns:
        ``{"expid", "model", "dataset_id", "seed", "valid": {...}, "test": {...},
        "checkpoint", "result_json", "results_csv", "seconds"}`` plus the convergence facts
        ``epochs_run``, ``best_epoch`` (the checkpoint's epoch), ``stopped_early`` (FuxiCTR's
        early stopping fired: ``early_stop_patience`` evaluations without improvement of
        ``monitor``), ``base_rate`` (train positive rate), ``base_rate_logloss`` (its entropy
        in nats: the logloss of a constant prediction), ``curve_csv`` / ``curve_png``
        (``<expid>.curve.csv``: one row per validation evaluation) and ``warnings`` (the
        WARNING lines logged: did not converge, never improved, worse than the base rate).

    Raises:
        ChimeError (DataError, ConfigError, ...) naming the experiment: bad config, a split
        without samples, NaN/inf predictions or loss during training (with epoch and batch).
    """
    command = " ".join(shlex.quote(a) for a in sys.argv)
    params = experiment_params(config_dir, expid, gpu=gpu, seed=seed, model_root=model_root,
                               overrides=overrides)
    model_dir = os.path.join(params["model_root"], params["dataset_id"])
    with run_log(os.path.join(model_dir, f"{expid}.log")):
        start = time.perf_counter()
        try:
            outcome = _train_and_evaluate(params)
        except ChimeError as exc:  # name the experiment in every error of the run
            named = _naming_experiment(exc, expid)
            if named is None:
                raise
            raise named from exc
        seconds = time.perf_counter() - start
        warnings = convergence_warnings(expid, params, outcome)
    valid, test = outcome["valid"], outcome["test"]
    convergence = {k: outcome[k] for k in CONVERGENCE_KEYS}
    csv_path = str(results_csv) if results_csv else os.path.join(params["model_root"],
                                                                 "results.csv")
    append_result_row(csv_path, _result_row(params, valid, test, command, seconds, convergence))
    log_path = str(result_log) if result_log else os.path.join(
        params["model_root"], Path(os.path.abspath(str(config_dir))).name.replace(".yaml", "") + ".csv")
    append_result_line(log_path, fuxictr_result_line(params, valid, test, command))
    result = {"expid": expid, "model": params["model"], "dataset_id": params["dataset_id"],
              "seed": params["seed"], "valid": valid, "test": test,
              "checkpoint": outcome["checkpoint"],
              "result_json": os.path.join(model_dir, f"{expid}.json"),
              "results_csv": os.path.abspath(csv_path), "result_log": os.path.abspath(log_path),
              "seconds": round(seconds, 3), "epochs": outcome["epochs"], **convergence,
              "curve_csv": outcome["curve_csv"], "curve_png": outcome["curve_png"],
              "warnings": warnings}
    write_json_atomic(result["result_json"], {**result, "command": command, "time_utc": _utc_now(),
                                              "versions": versions(), "params": _jsonable(params)})
    logger.info("results: %s (row appended to %s)", result["result_json"], csv_path)
    return result


def _naming_experiment(exc: ChimeError, expid: str) -> ChimeError | None:
    """``exc``'s class with the message prefixed by the experiment id (None if the class takes
    other constructor arguments)."""
    try:
        return type(exc)(f"experiment '{expid}': {exc}")
    except TypeError:
        return None


def experiment_params(config_dir: str | os.PathLike, expid: str, *, gpu: int = -1,
                      seed: int | None = None, model_root: str | os.PathLike | None = None,
                      overrides: Mapping[str, Any] | None = None) -> dict:
    """The parameters :func:`run_experiment` runs ``expid`` with (same arguments, same defaults):
    :func:`load_experiment` with ``seed`` / ``model_root`` (made absolute) / ``overrides``,
    plus ``gpu`` and ``seed`` 2024 where the config has none."""
    extra = dict(overrides or {})
    if seed is not None:
        extra["seed"] = int(seed)
    if model_root is not None:
        extra["model_root"] = os.path.abspath(os.path.expanduser(str(model_root)))
    params = load_experiment(config_dir, expid, extra)
    params["gpu"] = gpu
    params.setdefault("seed", 2024)
    return params


def build_experiment(params: dict) -> tuple[Any, Any]:
    """Seed everything, build the feature map (``use_features`` applied) and the model of
    resolved ``params`` (:func:`experiment_params`), exactly as a run does before training.
    Returns ``(feature_map, model)``; the model's ``checkpoint`` is
    ``<model_root>/<dataset_id>/<expid>.model``."""
    from fuxictr.pytorch.torch_utils import seed_everything

    from ..data.features import build_feature_map

    seed_everything(seed=int(params["seed"]))
    feature_map = build_feature_map(params["dataset_id"], params,
                                    embedding_dim=params.get("embedding_dim"),
                                    group_id=params.get("group_id"),
                                    feature_specs=params.get("feature_specs"))
    apply_use_features(feature_map, params.get("use_features"), params["dataset_id"])
    os.makedirs(os.path.join(params["model_root"], params["dataset_id"]), exist_ok=True)
    return feature_map, build_model(params, feature_map)


def make_loaders(feature_map, params: dict, stage: str):
    """FuxiCTR's ``RankDataLoader(feature_map, stage=stage, **params)`` over
    :class:`~fuxictr_chime.data.loader.LongSeqDataLoader`: ``(train, valid)`` for stage
    "train", the test loader (None without ``test_data``) for stage "test"."""
    from fuxictr.pytorch.dataloaders import RankDataLoader

    from ..data.loader import LongSeqDataLoader

    return RankDataLoader(feature_map, stage=stage, **{**params, "data_loader": LongSeqDataLoader})


def _train_and_evaluate(params: dict) -> dict:
    """Build, fit (watched by :class:`~.curves.TrainingMonitor`), evaluate valid and test.
    Returns valid, test, checkpoint, epochs, the convergence facts and the curve paths."""
    from ..data.loader import LongSeqDataLoader
    from .curves import TrainingMonitor, base_rate, binary_entropy, plot_curve, write_curve

    logger.info("FuxiCTR-CHIME %s; experiment %s (model %s, dataset %s, seed %s)", __version__,
                params["model_id"], params["model"], params["dataset_id"], params["seed"])
    feature_map, model = build_experiment(params)
    model.count_parameters()
    params["data_loader"] = LongSeqDataLoader  # recorded in the result JSON's params
    train_gen, valid_gen = make_loaders(feature_map, params, "train")
    check_splits(params, train_gen, valid_gen)
    rate = base_rate(train_gen, feature_map.labels[0])
    entropy = binary_entropy(rate) if rate is not None else None
    stem = os.path.join(params["model_root"], params["dataset_id"], params["model_id"])
    epochs = int(params.get("epochs", 1))
    with TrainingMonitor(model, curve_csv=f"{stem}.curve.csv") as monitor:
        model.fit(train_gen, validation_data=valid_gen, **params)
    facts = monitor.facts()
    curve_csv = str(write_curve(monitor.rows, f"{stem}.curve.csv"))
    curve_png = str(plot_curve(monitor.rows, f"{stem}.curve.png", base_rate_logloss=entropy,
                               title=f"{params['model_id']} (seed {params['seed']}; "
                                     f"monitor {_monitor_name(params)})"))
    logger.info("convergence: %d epoch(s) run of %d, best epoch %s, stopped early: %s; "
                "curve %s", facts["epochs_run"], epochs, facts["best_epoch"],
                facts["stopped_early"], curve_csv)
    logger.info("****** Validation evaluation ******")
    valid = dict(model.evaluate(valid_gen))
    test: dict = {}
    if params.get("test_data"):
        logger.info("******** Test evaluation ********")
        test_gen = make_loaders(feature_map, params, "test")
        if test_gen.num_samples == 0:
            raise DataError(f"{params['test_data']}: the test split has no samples")
        test = dict(model.evaluate(test_gen))
    return {"valid": {k: float(v) for k, v in valid.items()},
            "test": {k: float(v) for k, v in test.items()}, "checkpoint": model.checkpoint,
            "epochs": epochs, **facts, "base_rate": rate, "base_rate_logloss": entropy,
            "curve_csv": curve_csv, "curve_png": curve_png}


def check_splits(params: dict, train_gen, valid_gen) -> None:
    """A training or validation split without samples is a DataError naming its file (FuxiCTR
    would train nothing and then fail to load a checkpoint that was never written); a missing
    validation split is a ConfigError (early stopping evaluates on it). A training split
    smaller than one batch trains on one short batch per epoch (WARNING)."""
    if valid_gen is None:
        raise ConfigError("no 'valid_data': early stopping needs a validation split")
    for split, gen in (("train", train_gen), ("valid", valid_gen)):
        if int(getattr(gen, "num_samples", 1)) == 0:
            raise DataError(f"{params.get(f'{split}_data')}: the {split} split has no samples")
    n, batch = int(getattr(train_gen, "num_samples", 0)), int(params.get("batch_size", 1))
    if 0 < n < batch:
        logger.warning("experiment '%s': the training split (%s) has %d samples, fewer than one "
                       "batch (batch_size %d): every epoch is one batch of %d samples",
                       params["model_id"], params.get("train_data"), n, batch, n)


def _monitor_name(params: dict) -> str:
    """``AUC`` or, for FuxiCTR's weighted monitor ``{AUC: 1, logloss: -1}``, ``AUC - logloss``."""
    monitor = params.get("monitor", "AUC")
    if isinstance(monitor, str):
        return monitor
    terms = [f"{'-' if float(w) < 0 else '+'} {'' if abs(float(w)) == 1 else f'{abs(float(w)):g} '}{k}"
             for k, w in dict(monitor).items()]
    return " ".join(terms).lstrip("+ ")


def convergence_warnings(expid: str, params: dict, outcome: Mapping[str, Any]) -> list[str]:
    """Log (WARNING) and return what makes a result untrustworthy (evaluation notes): the run
    ended at its epoch cap without early stopping; the monitored metric never improved on the
    first evaluation; the test (else valid) logloss is above the base-rate logloss."""
    out = []
    monitor = _monitor_name(params)
    if not outcome["stopped_early"]:
        out.append(f"experiment '{expid}' did not converge: raise epochs (it ran its cap of "
                   f"{outcome['epochs']} epoch(s) without early stopping; best {monitor} at "
                   f"epoch {outcome['best_epoch']}, early_stop_patience "
                   f"{params.get('early_stop_patience', 2)})")
    if outcome["evaluations"] > 1 and not outcome["improved_after_first"]:
        out.append(f"experiment '{expid}': validation {monitor} never improved over the first "
                   f"evaluation in {outcome['evaluations']} evaluations; the checkpoint is the "
                   f"first one (check learning_rate, the data and the labels)")
    split, metrics = ("test", outcome["test"]) if outcome["test"] else ("valid", outcome["valid"])
    entropy = outcome["base_rate_logloss"]
    if entropy is not None and "logloss" in metrics and metrics["logloss"] > entropy:
        out.append(f"experiment '{expid}': {split} logloss {metrics['logloss']:.4f} is worse than "
                   f"predicting the base rate ({entropy:.4f} nats = entropy of the train positive "
                   f"rate {outcome['base_rate']:.4f})")
    for line in out:
        logger.warning(line)
    return out


# --------------------------------------------------------------------------- autotuner
def tune(tuner_config: str | os.PathLike, gpu_list: list[int] | tuple[int, ...] = (-1,), *,
         expid_tag: str | None = None) -> list[dict]:
    """Grid search with FuxiCTR's autotuner, each configuration run by ``run_expid.py``.

    ``fuxictr.autotuner.enumerate_params(tuner_config)`` writes every combination of
    ``tuner_space`` to the folder ``<tuner_config without .yaml>/``; the relative data paths it
    copied from the dataset config are then made absolute (they were relative to the dataset
    YAML, not to that folder); ``fuxictr.autotuner.grid_search(..., script=run_expid.py)``
    runs them, ``len(gpu_list)`` at a time (``-1`` = a CPU slot). The base config folder is
    ``base_config`` (FuxiCTR reads it relative to the working directory) or the tuner file's
    folder. Returns the JSON result of every run; ConfigError naming the runs that failed.
    """
    from fuxictr import autotuner

    from . import run_expid

    tuner_config = os.path.abspath(str(tuner_config))
    spec = _read_yaml(tuner_config)
    started = time.time()
    config_dir = autotuner.enumerate_params(tuner_config)
    _absolutize_tuner_paths(config_dir, tuner_config, spec)
    expids = [e for e in list_experiments(config_dir) if expid_tag is None or expid_tag in e]
    # grid_search starts "python -u script ...": make "python" the interpreter running this
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + old_path
    try:
        autotuner.grid_search(config_dir, list(gpu_list), expid_tag, script=run_expid.__file__)
    finally:
        os.environ["PATH"] = old_path
    results, failed = [], []
    for expid in expids:
        params = load_experiment(config_dir, expid)
        path = os.path.join(params["model_root"], params["dataset_id"], f"{expid}.json")
        if os.path.exists(path) and os.path.getmtime(path) >= started:
            with open(path) as fh:
                results.append(json.load(fh))
        else:
            failed.append(expid)
    if failed:
        raise ConfigError(f"{tuner_config}: {len(failed)} of {len(expids)} runs wrote no result "
                          f"(see their logs under the model_root): {failed}")
    return results


def _absolutize_tuner_paths(config_dir: str, tuner_config: str, spec: dict) -> None:
    """Rewrite relative data paths of the generated dataset_config.yaml as absolute paths."""
    from ..data.features import DATA_PATH_KEYS, load_dataset_params, resolve_dataset_paths
    from ..io import write_yaml_atomic

    generated = os.path.join(config_dir, "dataset_config.yaml")
    blocks = _read_yaml(generated)
    for dataset_id, block in blocks.items():
        if "dataset_config" in spec:  # given inline: relative to the tuner file
            resolved = resolve_dataset_paths(block, tuner_config)
        else:
            base_dir = spec.get("base_config", os.path.dirname(tuner_config))
            resolved = load_dataset_params(base_dir, str(dataset_id))
        for key in DATA_PATH_KEYS:
            value = block.get(key)
            if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
                block[key] = resolved.get(key, value)
    write_yaml_atomic(generated, blocks)
