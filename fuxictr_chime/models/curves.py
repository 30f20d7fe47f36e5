"""Learning curves and convergence facts of one ranking run (utilization stage, paper 5.1).

The paper trains every ranking model "with early stopping"; a number is a result only if the
run converged (``/work/shared/notes/evaluation.md``). :class:`TrainingMonitor` watches one
``fuxictr.pytorch.models.BaseModel.fit`` from outside the model, so it works for our
:class:`~fuxictr_chime.models.base.LongSeqBase` models and for plug-in FuxiCTR models alike
(``examples/dnn.py``): for the duration of ``fit`` it wraps four methods of the model
*instance* (the class is untouched) and restores them afterwards:

* ``train_step``: the batch loss is added to the mean training loss since the last
  evaluation (one epoch when ``eval_steps`` is null); a NaN/inf loss is a DataError naming the
  epoch and batch;
* ``compute_loss``: NaN/inf predictions are a DataError naming the epoch and batch (before the
  loss function sees them: ``binary_cross_entropy`` would fail with an unrelated message, or
  a device-side assert on CUDA);
* ``evaluate``: FuxiCTR's ``eval_step`` asks only for the monitored metric; here every metric
  of ``metrics`` is computed, and one curve row is recorded per evaluation;
* ``checkpoint_and_earlystop``: whether the evaluation improved the monitored value (and so
  saved the checkpoint ``fit`` reloads at the end).

After ``fit``: :meth:`TrainingMonitor.facts` gives ``epochs_run``, ``best_epoch`` (the epoch of
the checkpoint), ``stopped_early`` (FuxiCTR's early stopping fired: ``early_stop_patience``
evaluations without improvement) and ``evaluations``; :func:`write_curve` writes
``<expid>.curve.csv`` (``epoch, step, train_loss, valid_<metric>..., lr, improved``) and
:func:`plot_curve` its PNG. :func:`base_rate` / :func:`binary_entropy` give the constant
predictor every ranking result is compared with.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from ..io import atomic_path

logger = logging.getLogger(__name__)

WRAPPED = ("train_step", "compute_loss", "evaluate", "checkpoint_and_earlystop")


# --------------------------------------------------------------------------- the base rate
def binary_entropy(p: float) -> float:
    """Entropy in nats of a Bernoulli(p): the logloss of always predicting ``p`` on data whose
    positive rate is ``p`` (FuxiCTR's ``logloss`` is sklearn's ``log_loss``, natural log)."""
    p = min(max(float(p), 1e-7), 1 - 1e-7)  # sklearn's clipping
    return float(-(p * math.log(p) + (1 - p) * math.log(1 - p)))


def base_rate(loader: Any, label: str) -> float | None:
    """Positive rate of the training labels held by ``loader`` (``LongSeqDataLoader`` keeps
    them in ``split_arrays``); None for a loader that does not expose them."""
    arrays = getattr(loader, "split_arrays", None)
    if not isinstance(arrays, dict) or label not in arrays or not len(arrays[label]):
        return None
    return float(np.mean(arrays[label]))


# --------------------------------------------------------------------------- the monitor
class TrainingMonitor:
    """Context manager around ``model.fit(...)`` that records the learning curve.

    Args:
        model: a FuxiCTR ``BaseModel`` (any subclass).
        metrics: validation metrics of every curve row (default: ``model.validation_metrics``);
            the monitored ones are always included.
        curve_csv: if given, the curve is rewritten there (atomically) after every evaluation,
            so a long run can be watched and a crashed one keeps its curve.
    """

    def __init__(self, model: Any, *, metrics: Sequence[str] | None = None,
                 curve_csv: str | os.PathLike | None = None) -> None:
        self.model = model
        monitored = list(model._monitor.get_metrics())
        wanted = list(metrics if metrics is not None else model.validation_metrics)
        self.metrics = list(dict.fromkeys(wanted + monitored))
        self.curve_csv = curve_csv
        self.rows: list[dict] = []
        self._loss_sum = 0.0
        self._loss_count = 0
        self._epochs_seen = 0
        self._saved: dict[str, Any] = {}

    # ------------------------------------------------------------------ install / restore
    def __enter__(self) -> "TrainingMonitor":
        model = self.model
        originals = {name: getattr(model, name) for name in WRAPPED}  # bound methods
        self._saved = {name: model.__dict__[name] for name in WRAPPED if name in model.__dict__}
        model.train_step = self._wrap_train_step(originals["train_step"])
        model.compute_loss = self._wrap_compute_loss(originals["compute_loss"])
        model.evaluate = self._wrap_evaluate(originals["evaluate"])
        model.checkpoint_and_earlystop = self._wrap_checkpoint(originals["checkpoint_and_earlystop"])
        return self

    def __exit__(self, *exc: Any) -> None:
        for name in WRAPPED:
            self.model.__dict__.pop(name, None)
        self.model.__dict__.update(self._saved)

    def _where(self) -> str:
        model = self.model
        return (f"epoch {getattr(model, '_epoch_index', 0) + 1}, batch "
                f"{getattr(model, '_batch_index', 0) + 1} (step {getattr(model, '_total_steps', 0)})")

    def _wrap_train_step(self, original):
        def train_step(batch_data):
            loss = original(batch_data)
            value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
            if not math.isfinite(value):
                raise DataError(f"training loss is {value} at {self._where()}: the model diverged "
                                f"or its inputs hold NaN/inf; lower learning_rate or check the data")
            self._loss_sum += value
            self._loss_count += 1
            self._epochs_seen = max(self._epochs_seen, getattr(self.model, "_epoch_index", 0) + 1)
            return loss
        return train_step

    def _wrap_compute_loss(self, original):
        import torch

        def compute_loss(return_dict, y_true):
            y_pred = return_dict["y_pred"]
            bad = ~torch.isfinite(y_pred.detach())
            if bool(bad.any()):
                raise DataError(f"{int(bad.sum())} of {y_pred.numel()} predictions are NaN/inf at "
                                f"{self._where()}: the model diverged or its inputs hold NaN/inf; "
                                f"lower learning_rate or check the data")
            return original(return_dict, y_true)
        return compute_loss

    def _wrap_evaluate(self, original):
        def evaluate(data_generator, metrics=None):
            try:
                logs = original(data_generator, metrics=self.metrics)
            except DataError as exc:
                raise DataError(f"validation at {self._where()}: {exc}") from exc
            model = self.model
            train_loss = self._loss_sum / self._loss_count if self._loss_count else float("nan")
            self._loss_sum, self._loss_count = 0.0, 0
            row = {"epoch": getattr(model, "_epoch_index", 0) + 1,
                   "step": getattr(model, "_total_steps", 0), "train_loss": train_loss}
            row.update({f"valid_{k}": float(v) for k, v in logs.items()})
            row["lr"] = _learning_rate(model)
            row["improved"] = 0
            self.rows.append(row)
            return logs
        return evaluate

    def _wrap_checkpoint(self, original):
        def checkpoint_and_earlystop(logs, *args, **kwargs):
            result = original(logs, *args, **kwargs)
            if self.rows and getattr(self.model, "_stopping_steps", 1) == 0:
                self.rows[-1]["improved"] = 1
            if self.curve_csv is not None:
                write_curve(self.rows, self.curve_csv)
            return result
        return checkpoint_and_earlystop

    # ------------------------------------------------------------------ results
    @property
    def best_index(self) -> int | None:
        """Index of the evaluation whose weights are the checkpoint (the last improvement)."""
        improved = [i for i, row in enumerate(self.rows) if row["improved"]]
        return improved[-1] if improved else None

    def facts(self) -> dict:
        """``epochs_run``, ``best_epoch`` (None without evaluation), ``stopped_early``,
        ``evaluations`` and ``improved_after_first`` (the monitored value improved on the first
        evaluation at least once)."""
        best = self.best_index
        return {"epochs_run": int(self._epochs_seen),
                "best_epoch": int(self.rows[best]["epoch"]) if best is not None else None,
                "stopped_early": bool(getattr(self.model, "_stop_training", False)),
                "evaluations": len(self.rows),
                "improved_after_first": any(row["improved"] for row in self.rows[1:])}


def _learning_rate(model: Any) -> float:
    optimizer = getattr(model, "optimizer", None)
    groups = getattr(optimizer, "param_groups", None) or [{}]
    return float(groups[0].get("lr", float("nan")))


# --------------------------------------------------------------------------- outputs
def write_curve(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """The curve as CSV (one row per evaluation), written atomically."""
    import pandas as pd

    path = Path(path)
    with atomic_path(path) as tmp:
        pd.DataFrame(list(rows)).to_csv(tmp, index=False)
    return path


def plot_curve(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "",
               base_rate_logloss: float | None = None, metric: str = "AUC") -> Path:
    """PNG of a curve: train loss and valid logloss (left axis; the base-rate logloss dashed),
    valid ``metric`` (right axis), the checkpoint's epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    x = [r["epoch"] if _one_eval_per_epoch(rows) else r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [r["train_loss"] for r in rows], marker="o", ms=3, label="train loss")
    if rows and "valid_logloss" in rows[0]:
        ax.plot(x, [r["valid_logloss"] for r in rows], marker="o", ms=3, label="valid logloss")
    if base_rate_logloss is not None:
        ax.axhline(base_rate_logloss, color="grey", linestyle="--", lw=1, label="base-rate logloss")
    ax.set_xlabel("epoch" if _one_eval_per_epoch(rows) else "step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("logloss (nats)")
    key = f"valid_{metric}"
    if rows and key in rows[0] and metric != "logloss":
        ax2 = ax.twinx()
        ax2.plot(x, [r[key] for r in rows], color="tab:green", marker="s", ms=3,
                 label=f"valid {metric}")
        ax2.set_ylabel(f"valid {metric}")
        ax2.legend(loc="upper right", fontsize=8)
    best = [xi for xi, r in zip(x, rows) if r["improved"]]
    if best:
        ax.axvline(best[-1], color="tab:red", lw=1, alpha=0.6, label="checkpoint")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def _one_eval_per_epoch(rows: Sequence[dict]) -> bool:
    epochs = [r["epoch"] for r in rows]
    return len(set(epochs)) == len(epochs)


__all__ = ["TrainingMonitor", "base_rate", "binary_entropy", "write_curve", "plot_curve"]
