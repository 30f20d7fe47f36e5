"""Where a ``bench table2`` difference comes from: metrics split by representation-set coverage.

Only users with behaviors before t1 (a row in the view's ``representation.parquet``) get a
non-zero ``chime_hist`` / ``learn_emb``; every other user gets the all-zero vector. On small data
most ranking samples come from such users, which dilutes the overall AUC difference between
the plain and the compressed-column models. For every row of a table2 ``runs.csv`` this module
rebuilds the ranking model exactly as the runner built it (same experiment config, data view,
seed and ``model_root``: :func:`~fuxictr_chime.models.runner.experiment_params`,
:func:`~fuxictr_chime.models.runner.build_experiment`), loads its best checkpoint on CPU,
predicts one split with the runner's loader (:func:`~fuxictr_chime.models.runner.make_loaders`)
and computes the runner's metrics (:func:`~fuxictr_chime.models.runner.evaluate_metrics`) on
all samples, on the samples of users with representation-set history, and on the others.

Defaults: split ``test``; the zoo of the repository; CPU; rows whose checkpoint is missing are
skipped with a warning. The ``all`` rows carry the metrics stored in ``runs.csv`` next to the
recomputed ones, so the rebuild can be checked (:func:`reproduction_gap`). With a ``cache`` CSV,
rows whose checkpoint is unchanged since it was analyzed (same file, same mtime) are not predicted
again. ``bench table2 --coverage`` (:func:`write_history_tables`) turns the subsets into
``table2_with_history.md``: the Table 2 layout on the users with history, and "all users | users
with history" side by side; :func:`history_share` gives the share of a split's rows whose user has
history (the header line of ``table2.md``).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from ..io import atomic_path, write_text_atomic
from .pipeline import CONTROL_OF_VARIANT, DEFAULT_ZOO, command_line, dataset_id_of, dataset_overrides, \
    ranker_experiment
from .runs import RunLog
from .table import SLICED, VARIANT_ORDER, compute_table, format_markdown as format_table, format_side_by_side, \
    row_label

logger = logging.getLogger(__name__)

SUBSETS = ("all", "history", "no_history")
SUBSET_TITLES = {"all": "all", "history": "w/ history", "no_history": "w/o history"}
SPLITS = ("test", "valid")
STORED_PREFIX = {"test": "", "valid": "valid_"}  # runs.csv column prefix of a split's metrics


@dataclass
class Prediction:
    """One split predicted by one model, in loader order."""

    y_true: np.ndarray          # (S,) float64
    y_pred: np.ndarray          # (S,) float64
    user: np.ndarray            # (S,) int64 user_index
    group_id: np.ndarray | None  # (S,) the feature map's group id (user_index), None without one


def run_layout(run_dir: str | os.PathLike, seed: int, variant: str) -> tuple[Path, Path, str]:
    """``(data view, model_root, zoo variant)`` of a table2 row, as :func:`.table2.run_table2`
    lays them out: ``seed_<s>/data`` + ``seed_<s>/models``; the sliced rows use
    ``seed_<s>/data_sliced`` + ``seed_<s>/models_sliced`` and the zoo's ``_CHIME`` experiment; the
    controls (HIST, STATS) ``seed_<s>/data`` + ``seed_<s>/models_<hist|stats>`` (they run the
    ``_CHIME`` experiment id with another model: their own checkpoint folder)."""
    base = Path(run_dir) / f"seed_{int(seed)}"
    if variant == SLICED:
        return base / "data_sliced", base / "models_sliced", "CHIME"
    if variant in CONTROL_OF_VARIANT:
        return base / "data", base / f"models_{variant.lower()}", variant
    return base / "data", base / "models", variant


def history_users(view: str | os.PathLike) -> np.ndarray:
    """Sorted user_index of every user with representation-set history (before t1) in ``view``."""
    import pyarrow.parquet as pq

    path = Path(view) / "representation.parquet"
    if not path.exists():
        raise DataError(f"{path}: missing; is {view} a data view of a prepared folder?")
    return np.unique(pq.read_table(path, columns=["user_index"]).column("user_index").to_numpy())


def predict(model, loader, *, desc: str = "predict", progress: bool = True) -> Prediction:
    """Labels, predictions, users and group ids of every batch of ``loader`` (eval mode, no
    grad), collected as FuxiCTR's ``BaseModel.evaluate`` collects them."""
    import torch

    y_true, y_pred, users, groups = [], [], [], []
    has_group = model.feature_map.group_id is not None
    model.eval()
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            y_pred.append(model.forward(batch)["y_pred"].data.cpu().numpy().reshape(-1))
            y_true.append(model.get_labels(batch).data.cpu().numpy().reshape(-1))
            users.append(batch["user_index"].numpy().reshape(-1))
            if has_group:
                groups.append(model.get_group_id(batch).numpy().reshape(-1))
    return Prediction(np.concatenate(y_true).astype(np.float64),
                      np.concatenate(y_pred).astype(np.float64),
                      np.concatenate(users).astype(np.int64),
                      np.concatenate(groups) if has_group else None)


def subset_metrics(pred: Prediction, mask: np.ndarray, metrics: list[str]) -> dict[str, float]:
    """The runner's metrics on the samples where ``mask`` is True (NaN where undefined: no
    samples, or only one class)."""
    from ..models.runner import evaluate_metrics

    y_true = pred.y_true[mask]
    if len(y_true) == 0 or y_true.min() == y_true.max():
        return {m: float("nan") for m in metrics}
    group = pred.group_id[mask] if pred.group_id is not None else None
    return {k: float(v) for k, v in evaluate_metrics(y_true, pred.y_pred[mask], metrics, group).items()}


def coverage_rows(pred: Prediction, users_with_history: np.ndarray, metrics: list[str]) -> list[dict]:
    """One dict per subset (all / history / no_history): sample and user counts, share, metrics."""
    has_history = np.isin(pred.user, users_with_history)  # (S,)
    masks = {"all": np.ones(len(pred.user), bool), "history": has_history, "no_history": ~has_history}
    return [{"subset": name, "n_samples": int(mask.sum()), "share": float(mask.mean()) if len(mask) else 0.0,
             "n_users": int(len(np.unique(pred.user[mask]))), **subset_metrics(pred, mask, metrics)}
            for name, mask in masks.items()]


def row_params(run_dir: str | os.PathLike, row: dict, *, zoo: str | os.PathLike = DEFAULT_ZOO, gpu: int = -1,
               overrides: dict | None = None) -> dict:
    """The runner's resolved parameters of one ``runs.csv`` row on device ``gpu`` (-1: CPU), with the
    ranking ``overrides`` the run had (``bench --epochs``: ``{"epochs": N}``)."""
    from ..models.runner import experiment_params

    view, model_root, variant = run_layout(run_dir, int(row["seed"]), str(row["variant"]))
    overrides = {k: v for k, v in (overrides or {}).items() if k != "gpu"}  # as run_ranker pops it
    config_dir, expid, overrides = ranker_experiment(str(row["model"]), variant, dataset_id_of(view), view,
                                                     zoo=zoo, overrides=overrides)
    if str(row.get("expid", expid)) != expid:
        raise ConfigError(f"runs.csv row {row['model']}/{row['variant']}/seed {row['seed']}: expid "
                          f"{row['expid']!r}, but the layout gives {expid!r}")
    return experiment_params(config_dir, expid, gpu=gpu, seed=int(row["seed"]), model_root=model_root,
                             overrides=overrides)


def config_drift(params: dict, result_json: str | os.PathLike) -> list[str]:
    """Keys whose value differs between ``params`` and the ``params`` saved in the run's result
    JSON (empty when the config used for training is the one rebuilt now)."""
    path = Path(result_json)
    if not path.exists():
        return ["<no result json>"]
    saved = json.loads(path.read_text()).get("params", {})
    now = json.loads(json.dumps(params, default=str))
    ignore = {"data_loader"}  # set by the runner after the model is built
    return sorted(k for k in set(saved) | set(now) if k not in ignore and saved.get(k) != now.get(k))


def analyze_row(run_dir: str | os.PathLike, row: dict, *, split: str = "test",
                zoo: str | os.PathLike = DEFAULT_ZOO, progress: bool = True, gpu: int = -1,
                overrides: dict | None = None, cached: pd.DataFrame | None = None) -> list[dict] | None:
    """The subset rows of one ``runs.csv`` row; None (with a warning) when its checkpoint is missing.
    ``cached``: earlier output; its rows of the same run, split and unchanged checkpoint are returned
    instead of predicting again."""
    from ..models.runner import build_experiment, make_loaders

    label = f"{row_label(row['model'], row['variant'])} seed {row['seed']}"
    view = run_layout(run_dir, int(row["seed"]), str(row["variant"]))[0]
    if not (view / "dataset_config.yaml").exists():
        logger.warning("%s: data view %s missing; row skipped", label, view)
        return None
    params = row_params(run_dir, row, zoo=zoo, gpu=gpu, overrides=overrides)
    checkpoint = Path(params["model_root"]) / params["dataset_id"] / f"{params['model_id']}.model"
    if not checkpoint.exists():
        logger.warning("%s: checkpoint %s missing; row skipped", label, checkpoint)
        return None
    mtime = checkpoint.stat().st_mtime_ns
    if cached is not None and not cached.empty:
        same = cached[(cached["model"].astype(str) == str(row["model"])) & (cached["seed"] == int(row["seed"]))
                      & (cached["variant"].astype(str) == str(row["variant"])) & (cached["split"] == split)
                      & (cached["checkpoint"] == str(checkpoint)) & (cached["checkpoint_mtime_ns"] == mtime)]
        if len(same) == len(SUBSETS):
            logger.info("%s: checkpoint unchanged since its coverage rows were computed; reused", label)
            return same.to_dict("records")
    if not params.get(f"{split}_data"):
        raise ConfigError(f"{label}: no {split}_data in the dataset config")
    feature_map, model = build_experiment(params)
    model.load_weights(str(checkpoint))
    # the split alone, as a test loader (shuffle off, as the runner's valid loader)
    loader = make_loaders(feature_map, {**params, "test_data": params[f"{split}_data"]}, "test")
    pred = predict(model, loader, desc=label, progress=progress)
    rows = coverage_rows(pred, history_users(view), list(params["metrics"]))
    drift = config_drift(params, checkpoint.with_suffix(".json"))
    prefix = STORED_PREFIX[split]
    common = {"model": row["model"], "variant": row["variant"], "seed": int(row["seed"]), "split": split,
              "expid": params["model_id"], "checkpoint": str(checkpoint), "checkpoint_mtime_ns": mtime,
              "trained_commit": _commit_of(row.get("versions")), "config_drift": ";".join(drift)}
    out = []
    for sub in rows:
        stored = {f"stored_{m}": float(row[f"{prefix}{m}"]) if sub["subset"] == "all" and f"{prefix}{m}" in row
                  else float("nan") for m in params["metrics"]}
        out.append({**common, **sub, **stored})
    logger.info("%s: AUC all %.5f (stored %.5f), w/ history %.5f (%.1f%% of samples), w/o %.5f", label,
                out[0].get("AUC", float("nan")), out[0].get("stored_AUC", float("nan")),
                out[1].get("AUC", float("nan")), 100 * out[1]["share"], out[2].get("AUC", float("nan")))
    return out


def analyze_run(run_dir: str | os.PathLike, *, split: str = "test", zoo: str | os.PathLike = DEFAULT_ZOO,
                progress: bool = True, gpu: int = -1, overrides: dict | None = None,
                cache: str | os.PathLike | None = None) -> pd.DataFrame:
    """Subset metrics of every row of ``<run_dir>/runs.csv`` (one row per model, variant, seed,
    subset), with the command line and the versions that computed them. ``gpu`` / ``overrides``:
    as :func:`row_params`. ``cache``: a CSV of earlier output, reused for unchanged checkpoints and
    rewritten (atomically) after every newly analyzed row."""
    from ..models.runner import versions

    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    runs_csv = Path(run_dir) / "runs.csv"
    if not runs_csv.exists():
        raise DataError(f"{runs_csv}: missing; is {run_dir} a `bench table2` run directory?")
    rows = RunLog(runs_csv).rows
    cached = pd.read_csv(cache, float_precision="round_trip") if cache is not None and Path(cache).exists() else None
    if cached is not None and "checkpoint_mtime_ns" not in cached:  # written before the column existed
        cached = None
    stamp = {"command": command_line(), "versions": ";".join(f"{k}={v}" for k, v in versions().items())}
    out: list[dict] = []
    for row in tqdm(rows, desc="coverage", disable=not progress):
        result = analyze_row(run_dir, row, split=split, zoo=zoo, progress=progress, gpu=gpu, overrides=overrides,
                             cached=cached)
        fresh = bool(result) and "command" not in result[0]  # reused rows carry the command that made them
        out.extend({**r, **stamp} if fresh else r for r in result or [])
        if cache is not None and fresh:
            with atomic_path(cache) as tmp:
                pd.DataFrame(out).to_csv(tmp, index=False)
    return pd.DataFrame(out)


def history_share(data_dir: str | os.PathLike, split: str = "test") -> dict | None:
    """Rows of ``split`` of a prepared folder (or data view) whose user has representation-set history:
    ``{"rows", "rows_with_history", "users", "users_with_history", "share"}``; None without the split or
    without a ``representation.parquet``."""
    import pyarrow.parquet as pq

    from ..data.loader import resolve_parquet_path

    path = dataset_overrides(data_dir).get(f"{split}_data")
    if not path or not (Path(data_dir) / "representation.parquet").exists():
        return None
    users = pq.read_table(resolve_parquet_path(path, f"{split}_data"), columns=["user_index"])
    users = users.column("user_index").to_numpy()  # (S,)
    has = np.isin(users, history_users(data_dir))  # (S,)
    return {"rows": int(len(users)), "rows_with_history": int(has.sum()), "users": int(len(np.unique(users))),
            "users_with_history": int(len(np.unique(users[has]))), "share": float(has.mean()) if len(has) else 0.0}


def history_note(share: dict | None, split: str = "test") -> str:
    """The ``table2.md`` header line of :func:`history_share` ("" without the split)."""
    if not share:
        return ""
    return (f"{split.capitalize()} rows whose user has representation-set history (behaviors before t1; the other "
            f"users' compressed and control columns are all zeros): {100 * share['share']:.2f}% "
            f"({share['rows_with_history']} of {share['rows']} rows; {share['users_with_history']} of "
            f"{share['users']} users).")


def subset_runs(frame: pd.DataFrame, subset: str) -> pd.DataFrame:
    """The rows of one subset of :func:`analyze_run` output, shaped like ``runs.csv`` (model, variant,
    seed, metrics) for :func:`~.table.compute_table`."""
    return frame[frame["subset"] == subset].reset_index(drop=True)


def write_history_tables(run_dir: str | os.PathLike, *, models: list[str] | None = None, title: str = "",
                         zoo: str | os.PathLike = DEFAULT_ZOO, gpu: int = -1, overrides: dict | None = None,
                         progress: bool = True) -> str:
    """``bench table2 --coverage``: analyze every finished run of ``run_dir`` on its test split (cache
    ``coverage.csv``) and write ``table2_with_history.md``: the Table 2 layout on the test rows of
    users with representation-set history, then "all users | users with history" side by side
    (both recomputed from the checkpoints; the "all" column reproduces ``runs.csv``, checked in the
    last line). Returns the markdown."""
    run_dir = Path(run_dir)
    frame = analyze_run(run_dir, zoo=zoo, progress=progress, gpu=gpu, overrides=overrides,
                        cache=run_dir / "coverage.csv")
    if frame.empty:
        text = f"### {title}\n\nNo run with a checkpoint was found.\n"
    else:
        hist, every = subset_runs(frame, "history"), subset_runs(frame, "all")
        first = hist.iloc[0]
        note = (f"Test rows of users with representation-set history (behaviors before t1): "
                f"{int(first['n_samples'])} of {int(every.iloc[0]['n_samples'])} "
                f"({100 * first['share']:.2f}%), {int(first['n_users'])} users. Metrics recomputed from each "
                f"run's best checkpoint; gAUC over these users only.")
        side = format_side_by_side({"all": compute_table(every, models=models),
                                    "w/ history": compute_table(hist, models=models)},
                                   title=f"{title}: all users | users with history")
        gaps = ", ".join(f"{m} {reproduction_gap(frame, m):.1e}" for m in ("AUC", "gAUC", "logloss"))
        text = (format_table(compute_table(hist, models=models), title=f"{title}: users with history",
                             note=note)
                + "\n" + side + f"\nRebuild check, max |recomputed (all) − runs.csv| over runs: {gaps}.\n")
    write_text_atomic(run_dir / "table2_with_history.md", text)
    return text


def reproduction_gap(frame: pd.DataFrame, metric: str = "AUC") -> float:
    """max |recomputed - stored| of ``metric`` over the ``all`` rows (NaN when there are none)."""
    rows = frame[frame["subset"] == "all"] if not frame.empty else frame
    if rows.empty or f"stored_{metric}" not in rows:
        return float("nan")
    return float((rows[metric] - rows[f"stored_{metric}"]).abs().max())


def paired_differences(frame: pd.DataFrame, metric: str = "AUC") -> pd.DataFrame:
    """Per (model, variant, subset): mean over seeds of ``metric``, and the mean over the seeds
    shared with the plain model of (variant - plain), with the number of such pairs."""
    plain = frame[frame["variant"] == "plain"].set_index(["model", "seed", "subset"])[metric]
    records = []
    for (model, variant, subset), group in frame.groupby(["model", "variant", "subset"], sort=False):
        values = group.set_index("seed")[metric]
        keys = [(model, s, subset) for s in values.index if (model, s, subset) in plain.index]
        diffs = np.array([values[k[1]] - plain[k] for k in keys], dtype=float)
        records.append({"model": model, "variant": variant, "subset": subset, "seeds": len(values),
                        "mean": float(values.mean()), "pairs": len(keys),
                        "diff": float(diffs.mean()) if len(diffs) and variant != "plain" else float("nan")})
    return pd.DataFrame(records)


def format_markdown(frame: pd.DataFrame, *, title: str = "", metric: str = "AUC") -> str:
    """Per model and variant: mean ``metric`` over seeds on each subset and the mean paired
    difference vs the plain model on each subset (percent / percentage points)."""
    lines = [f"### {title}", ""] if title else []
    if frame.empty:
        return "\n".join(lines + ["No row with a checkpoint was found.", ""])
    stats = paired_differences(frame, metric).set_index(["model", "variant", "subset"])
    share = frame[frame["subset"] == "history"]
    lines += [f"Samples whose user has representation-set history: {100 * share['share'].mean():.2f}% "
              f"({int(share['n_samples'].iloc[0])} of {int(frame[frame['subset'] == 'all']['n_samples'].iloc[0])} "
              f"{frame['split'].iloc[0]} samples, {int(share['n_users'].iloc[0])} users).", ""]
    cols = [f"{metric} {SUBSET_TITLES[s]}" for s in SUBSETS] + [f"Δ{metric} {SUBSET_TITLES[s]}" for s in SUBSETS]
    lines += ["| | seeds | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    models = list(dict.fromkeys(frame["model"]))
    for model in models:
        for variant in VARIANT_ORDER:
            if (model, variant, "all") not in stats.index:
                continue
            cells = [f"{100 * stats.loc[(model, variant, s), 'mean']:.2f}" for s in SUBSETS]
            cells += ["—" if variant == "plain" else _pp(stats.loc[(model, variant, s)]) for s in SUBSETS]
            seeds = int(stats.loc[(model, variant, "all"), "seeds"])
            lines.append(f"| {row_label(model, variant)} | {seeds} | " + " | ".join(cells) + " |")
    gap = reproduction_gap(frame, metric)
    lines += ["", f"{metric} in %, mean over seeds. Δ: mean over seeds of (variant − plain), paired by seed, "
              f"in percentage points (pairs in brackets when fewer than the seeds). 'w/ history': samples of "
              f"users in representation.parquet (history before t1, hence a non-zero chime_hist / learn_emb); "
              f"'w/o history': the others (all-zero column; in a sliced view a later snapshot may be non-zero).",
              f"Rebuild check: max |{metric}(all) − runs.csv {metric}| = {gap:.2e}."]
    return "\n".join(lines) + "\n"


def _pp(stat: pd.Series) -> str:
    if np.isnan(stat["diff"]):
        return "n/a"
    text = f"{100 * stat['diff']:+.2f}"
    return text if stat["pairs"] == stat["seeds"] else f"{text} ({int(stat['pairs'])})"


def _commit_of(versions: Any) -> str:
    """``git_commit`` of a runs.csv ``versions`` cell (``k=v;k=v``), '' when absent."""
    if not isinstance(versions, str):
        return ""
    parts = dict(p.split("=", 1) for p in versions.split(";") if "=" in p)
    return parts.get("git_commit", "")
