"""Convergence facts, learning curves, honest warnings and bad input of ``run_experiment``.

Tiny prepared folders (``test_runner_e2e.write_prepared``: 12 users, 288 train rows) and two
models: the zoo's DIN block shrunk to tiny sizes, and ``Constant``, a plug-in FuxiCTR
``BaseModel`` written here that knows nothing of this package (it predicts ``p`` for every
sample, and NaN from training batch ``nan_at`` on). Checks: the curve CSV has one row per
epoch and its best epoch is the checkpoint (the reloaded model's valid metrics equal that
row's); a run capped below its patience reports ``stopped_early`` False and warns "did not
converge"; a constant model stops early, warns that validation never improved and that its
test logloss is worse than the base rate; empty, NaN and diverging input raise errors naming
the experiment (and the file, or the epoch and batch) without writing a result row.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from fuxictr_chime.errors import DataError
from fuxictr_chime.models import runner
from fuxictr_chime.models.curves import binary_entropy
from tests.models.conftest import vector_column
from tests.models.test_runner_e2e import METRICS, dataset_block, write_prepared, zoo_block

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CONSTANT_MODEL = '''
import torch
from torch import nn
from fuxictr.pytorch.models import BaseModel


class Constant(BaseModel):
    """Predicts p for every sample; NaN from training batch nan_at (1-based) on."""

    def __init__(self, feature_map, model_id="Constant", gpu=-1, p=0.99, nan_at=None,
                 learning_rate=1e-3, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu, **kwargs)
        self.p, self.nan_at, self.batches = float(p), nan_at, 0
        self.w = nn.Parameter(torch.zeros(1))
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.model_to_device()

    def forward(self, inputs):
        y = torch.full_like(self.get_labels(inputs), self.p) + 0.0 * self.w  # (B, 1)
        if self.training:
            self.batches += 1
            if self.nan_at is not None and self.batches >= self.nan_at:
                y = y * float("nan")
        return {"y_pred": y}
'''


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """Config folder: DIN (2 epochs, patience 3, batch larger than the train split), Constant
    (patience 1; a NaN twin), and DIN on an empty train split and on a NaN item vector."""
    root = tmp_path_factory.mktemp("convergence")
    write_prepared(root / "data")
    write_prepared(root / "empty")
    table = pq.read_table(root / "empty" / "train.parquet")
    pq.write_table(table.slice(0, 0), root / "empty" / "train.parquet")
    write_prepared(root / "nan")
    table = pq.read_table(root / "nan" / "item_info.parquet")
    title = np.stack(table.column("title_emb").to_pylist()).astype(np.float32)  # (N, d)
    title[3] = np.nan
    table = table.set_column(table.schema.get_field_index("title_emb"), "title_emb", vector_column(title))
    pq.write_table(table, root / "nan" / "item_info.parquet")
    (root / "constant.py").write_text(CONSTANT_MODEL)
    cfg = root / "config"
    cfg.mkdir()
    (cfg / "dataset_config.yaml").write_text(yaml.safe_dump(
        {"tiny": dataset_block("../data"), "tiny_empty": dataset_block("../empty"),
         "tiny_nan": dataset_block("../nan")}))
    din = {**zoo_block("DIN", "DIN_movielens"), "dataset_id": "tiny", "epochs": 2,
           "early_stop_patience": 3, "batch_size": 512}
    constant = {**din, "model": "../constant.py:Constant", "epochs": 5, "early_stop_patience": 1,
                "batch_size": 64, "p": 0.99}
    blocks = {"Base": {"model_root": "./checkpoints/"}, "DIN_capped": din, "Constant_tiny": constant,
              "Constant_nan": {**constant, "nan_at": 2},
              "DIN_empty": {**din, "dataset_id": "tiny_empty"},
              "DIN_nan": {**din, "dataset_id": "tiny_nan"}}
    (cfg / "model_config.yaml").write_text(yaml.safe_dump(blocks))
    return cfg


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture(scope="module")
def capped(config, tmp_path_factory):
    """DIN_capped run once: (result, WARNING messages logged during the run)."""
    with _Capture() as records:
        result = runner.run_experiment(config, "DIN_capped", model_root=tmp_path_factory.mktemp("m"))
    return result, records.messages


class _Capture(logging.Handler):
    """Collect WARNING messages of the runner for a module-scoped fixture (caplog is per test)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> "_Capture":
        logging.getLogger("fuxictr_chime").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("fuxictr_chime").removeHandler(self)


def test_curve_has_one_row_per_epoch_and_the_best_epoch_is_the_checkpoint(capped):
    result, _ = capped
    curve = pd.read_csv(result["curve_csv"])
    assert Path(result["curve_csv"]).name == "DIN_capped.curve.csv"
    assert list(curve["epoch"]) == [1, 2] and result["epochs_run"] == 2
    assert list(curve.columns[:3]) == ["epoch", "step", "train_loss"]
    assert [f"valid_{m}" for m in METRICS] == [c for c in curve.columns if c.startswith("valid_")]
    assert (curve["step"] == curve["epoch"]).all()  # one batch per epoch (batch 512 > 288 rows)
    assert np.isfinite(curve["train_loss"]).all()
    best = curve[curve["epoch"] == result["best_epoch"]].iloc[0]
    assert best["improved"] == 1 and curve[curve["epoch"] > result["best_epoch"]]["improved"].sum() == 0
    # fit reloads the checkpoint: the final valid evaluation is the best epoch's row
    for metric in METRICS:
        assert result["valid"][metric] == pytest.approx(best[f"valid_{metric}"], abs=1e-9), metric
    assert Path(result["curve_png"]).read_bytes()[:8] == PNG_MAGIC
    assert Path(result["curve_png"]).parent == Path(result["curve_csv"]).parent


def test_capped_run_is_not_converged_and_says_so(capped):
    result, warnings = capped
    assert result["stopped_early"] is False and result["epochs"] == 2
    assert any("'DIN_capped' did not converge: raise epochs" in w for w in warnings)
    assert result["warnings"] and all(w in warnings for w in result["warnings"])
    assert any("fewer than one batch" in w and "DIN_capped" in w for w in warnings)


def test_convergence_facts_in_json_and_results_csv(capped):
    result, _ = capped
    saved = json.loads(Path(result["result_json"]).read_text())
    row = pd.read_csv(result["results_csv"]).iloc[-1]
    for key in ("epochs_run", "best_epoch", "stopped_early", "base_rate", "base_rate_logloss"):
        assert saved[key] == result[key] and key in row.index, key
    assert row["epochs_run"] == 2 and not row["stopped_early"]
    assert 0 < result["base_rate"] < 1
    assert result["base_rate_logloss"] == pytest.approx(binary_entropy(result["base_rate"]))
    p = result["base_rate"]
    assert result["base_rate_logloss"] == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)))


def test_base_rate_is_the_train_positive_rate(capped, config):
    result, _ = capped
    labels = pq.read_table(config.parent / "data" / "train.parquet").column("label").to_numpy()
    assert result["base_rate"] == pytest.approx(float(labels.mean()))


def test_constant_plugin_stops_early_and_warns_twice(config, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    result = runner.run_experiment(config, "Constant_tiny", model_root=tmp_path)
    assert result["stopped_early"] is True
    assert (result["epochs_run"], result["best_epoch"]) == (2, 1)  # patience 1: stops at epoch 2
    curve = pd.read_csv(result["curve_csv"])
    assert list(curve["epoch"]) == [1, 2] and list(curve["improved"]) == [1, 0]
    assert result["test"]["logloss"] > result["base_rate_logloss"]
    warnings = _warnings(caplog)
    assert any("Constant_tiny" in w and "never improved over the first evaluation" in w
               for w in warnings)
    assert any("Constant_tiny" in w and "worse than predicting the base rate" in w for w in warnings)
    assert not any("did not converge" in w for w in warnings)


@pytest.mark.parametrize("expid,needles", [
    ("Constant_nan", ("NaN/inf", "epoch 1, batch 2")),  # NaN predictions: epoch and batch
    ("DIN_nan", ("item_info.parquet", "NaN")),  # NaN input vector: the file
    ("DIN_empty", ("train.parquet", "no samples")),  # empty train split: the file
])
def test_bad_runs_name_the_experiment_and_the_culprit_and_write_no_row(config, tmp_path, expid, needles):
    with pytest.raises(DataError) as err:
        runner.run_experiment(config, expid, model_root=tmp_path)
    msg = str(err.value)
    assert expid in msg and all(needle in msg for needle in needles), msg
    assert not (tmp_path / "results.csv").exists()
