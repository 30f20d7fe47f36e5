"""Runner end to end on a tiny prepared folder written by hand (ARCHITECTURE.md section 2).

Covers: DIN and DIN_CHIME (test-made ``chime_hist`` column) through ``run_experiment`` and the
``fuxictr-chime run`` CLI, the plug-and-play DNN of ``examples/`` consuming ``chime_hist``
through the YAML alone, the result CSV row and JSON, the one-core gAUC guard, and bad input
(unknown expid, a ``_CHIME`` model on a dataset without ``chime_hist``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fuxictr_chime.errors import ConfigError
from fuxictr_chime.models import runner

from .conftest import vector_column, write_item_info

REPO = Path(__file__).resolve().parents[2]
N_USERS, N_ITEMS, N_CATES, TITLE_DIM = 12, 30, 4, 6
METRICS = ["AUC", "gAUC", "logloss"]


def write_prepared(folder: Path, *, seed: int = 0, with_chime: bool = True) -> None:
    """Random prepared folder: users 1..12 with 3..40 positives, items 1..30, 3 splits.

    Labels follow the item's category (so a model can learn something) with noise; every
    user has both labels in every split so gAUC is defined.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lengths = np.concatenate([[0], rng.integers(3, 41, N_USERS)])  # row 0 = padding
    seqs = [rng.integers(1, N_ITEMS + 1, n).tolist() for n in lengths]
    user = {"user_index": np.arange(N_USERS + 1, dtype=np.int64),
            "full_item_seq": pa.array(seqs, pa.list_(pa.int64())),
            "full_time_seq": pa.array([list(range(n)) for n in lengths], pa.list_(pa.int64()))}
    if with_chime:
        hist = rng.random((N_USERS + 1, 64)).astype(np.float32)
        hist[0] = 0.0
        user["chime_hist"] = vector_column(hist / hist.sum(1, keepdims=True).clip(1e-6))
    pq.write_table(pa.table(user), folder / "user_info.parquet")
    cate, _ = write_item_info(folder, rng, N_ITEMS, N_CATES, TITLE_DIM)
    for split, per_user in (("train", 24), ("valid", 8), ("test", 8)):
        users = np.repeat(np.arange(1, N_USERS + 1), per_user)
        items = rng.integers(1, N_ITEMS + 1, len(users))
        labels = (cate[items] <= 2).astype(np.float32)
        flip = rng.random(len(users)) < 0.2
        labels[flip] = 1.0 - labels[flip]
        labels[::per_user] = 1.0  # both classes for every user
        labels[1::per_user] = 0.0
        pq.write_table(pa.table({
            "user_index": users.astype(np.int64), "item_index": items.astype(np.int64),
            "seq_len": rng.integers(0, lengths[users] + 1).astype(np.int64),
            "timestamp": np.arange(len(users), dtype=np.int64), "label": labels}),
            folder / f"{split}.parquet")


def dataset_block(data_dir: str, chime: bool = False) -> dict:
    """The dataset block of a prepared folder; ``chime``: the ``<id>_chime`` twin with the column on."""
    return {
        "data_root": data_dir, "data_format": "parquet", "rebuild_dataset": False,
        "train_data": f"{data_dir}/train.parquet", "valid_data": f"{data_dir}/valid.parquet",
        "test_data": f"{data_dir}/test.parquet", "user_info": f"{data_dir}/user_info.parquet",
        "item_info": f"{data_dir}/item_info.parquet",
        "feature_cols": [
            {"name": ["user_index", "item_index", "seq_len"], "active": True, "dtype": "int",
             "type": "meta"},
            {"name": "item_id", "active": True, "dtype": "int", "type": "categorical",
             "source": "item", "vocab_size": N_ITEMS + 1},
            {"name": "cate_id", "active": True, "dtype": "int", "type": "categorical",
             "source": "item", "vocab_size": N_CATES + 1},
            {"name": "title_emb", "active": True, "dtype": "list", "type": "embedding",
             "source": "item", "pretrain_dim": TITLE_DIM, "embedding_dim": 8},
            {"name": "chime_hist", "active": chime, "dtype": "list", "type": "embedding",
             "source": "user", "pretrain_dim": 64, "embedding_dim": 8},
        ],
        "label_col": {"name": "label", "dtype": "float"},
    }


TINY = {"epochs": 1, "batch_size": 64, "embedding_dim": 8, "max_len": 20, "short_len": 5,
        "dnn_hidden_units": [16], "hidden_units": [16], "attention_dim": 8, "num_heads": 1,
        "early_stop_patience": 1, "verbose": 0, "seed": 7}


def zoo_block(model: str, expid: str) -> dict:
    """An experiment block of the model zoo's config, shrunk to tiny sizes."""
    path = REPO / "model_zoo" / model / "config" / "model_config.yaml"
    config = yaml.safe_load(path.read_text())
    return {**config["Base"], **config[expid], **TINY}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    """Config folder: model_config.yaml (zoo's DIN blocks, tiny) + dataset_config.yaml."""
    root = tmp_path_factory.mktemp("runner")
    write_prepared(root / "data")
    cfg = root / "config"
    cfg.mkdir()
    (cfg / "dataset_config.yaml").write_text(yaml.safe_dump(
        {"tiny": dataset_block("../data"), "tiny_chime": dataset_block("../data", chime=True),
         "tiny_nochime": {**dataset_block("../data_nochime")}}))
    write_prepared(root / "data_nochime", with_chime=False)
    blocks = {"Base": {"model_root": "./checkpoints/"}}
    for expid, base in (("DIN_tiny", "DIN_movielens"), ("DIN_CHIME_tiny", "DIN_CHIME_movielens")):
        block = zoo_block("DIN", base)  # the zoo's CHIME block names movielens_chime
        blocks[expid] = {**block, "dataset_id": block["dataset_id"].replace("movielens", "tiny")}
    blocks["DIN_CHIME_nochime"] = {**blocks["DIN_CHIME_tiny"], "dataset_id": "tiny_nochime",
                                   "feature_specs": None}
    example = yaml.safe_load((REPO / "examples" / "config" / "model_config.yaml").read_text())
    dnn = {**example["Base"], **example["DNN_CHIME_movielens"], **TINY, "dataset_id": "tiny_chime",
           "model": f"{REPO / 'examples' / 'dnn.py'}:DNN"}
    blocks["DNN_CHIME_tiny"] = dnn
    (cfg / "model_config.yaml").write_text(yaml.safe_dump(blocks))
    return cfg


def _check_outputs(result: dict, expid: str) -> None:
    for split in ("valid", "test"):
        assert list(result[split]) == METRICS
        assert 0.0 <= result[split]["AUC"] <= 1.0 and result[split]["logloss"] > 0
    saved = json.loads(Path(result["result_json"]).read_text())
    assert saved["expid"] == expid and saved["test"] == result["test"]
    assert Path(result["result_json"]).with_suffix(".model") == Path(result["checkpoint"])
    assert Path(result["checkpoint"]).exists()
    rows = pd.read_csv(result["results_csv"])
    row = rows[rows["expid"] == expid].iloc[-1]
    assert row["test_AUC"] == pytest.approx(result["test"]["AUC"])
    assert row["valid_gAUC"] == pytest.approx(result["valid"]["gAUC"])
    assert {"time_utc", "command", "model", "dataset_id", "seed",
            "fuxictr_chime_version"} <= set(rows.columns)


@pytest.mark.parametrize("expid", ["DIN_tiny", "DIN_CHIME_tiny"])
def test_run_experiment_din_and_chime(tiny_config, tmp_path, expid):
    result = runner.run_experiment(tiny_config, expid, model_root=tmp_path / "ckpt")
    _check_outputs(result, expid)
    assert result["model"] == ("DIN" if expid == "DIN_tiny" else "DIN_CHIME")
    assert result["seed"] == 7
    assert Path(result["results_csv"]) == tmp_path / "ckpt" / "results.csv"
    dataset_id = "tiny" if expid == "DIN_tiny" else "tiny_chime"
    assert result["dataset_id"] == dataset_id
    assert (tmp_path / "ckpt" / dataset_id / f"{expid}.log").stat().st_size > 0


def test_plain_and_chime_differ_only_by_the_column(tiny_config):
    plain = runner.load_experiment(tiny_config, "DIN_tiny")
    chime = runner.load_experiment(tiny_config, "DIN_CHIME_tiny")
    assert chime["dataset_id"] == "tiny_chime" and chime["feature_specs"] == plain["feature_specs"]
    active = [c for c in chime["feature_cols"] if c != plain["feature_cols"][chime["feature_cols"].index(c)]]
    assert active == [{**plain["feature_cols"][-1], "active": True}]  # only chime_hist switched on
    differ = {k for k in set(plain) | set(chime) if plain.get(k) != chime.get(k)}
    assert differ == {"model", "model_id", "dataset_id", "feature_cols"}


def test_cli_run_appends_row_and_prints_metrics(tiny_config, tmp_path, capsys):
    from fuxictr_chime.cli import main

    csv = tmp_path / "res.csv"
    argv = ["run", "--config", str(tiny_config), "--expid", "DIN_tiny", "--seed", "3",
            "--model-root", str(tmp_path / "m"), "--results", str(csv)]
    assert main(argv) == 0
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert '"test"' in printed and '"gAUC"' in printed
    rows = pd.read_csv(csv)
    assert len(rows) == 2 and set(rows["seed"]) == {3}
    # the same seed gives the same result (seed_everything + seeded loader shuffle)
    assert rows["test_AUC"].iloc[0] == pytest.approx(rows["test_AUC"].iloc[1], abs=1e-6)


def test_example_dnn_consumes_chime_hist_through_yaml(tiny_config, tmp_path):
    """examples/dnn.py (FuxiCTR's DNN, unaware of CHIME) gets chime_hist from the YAML alone."""
    result = runner.run_experiment(tiny_config, "DNN_CHIME_tiny", model_root=tmp_path)
    _check_outputs(result, "DNN_CHIME_tiny")
    import torch

    state = torch.load(result["checkpoint"], map_location="cpu")
    # FuxiCTR's embedding layer projects the 64-float histogram: Linear(64, embedding_dim)
    assert state["embedding_layer.embedding_layer.feature_encoders.chime_hist.weight"].shape \
        == (8, 64)


def test_example_config_points_at_the_example_model():
    params = runner.load_experiment(REPO / "examples" / "config", "DNN_CHIME_movielens")
    path, cls = params["model"].rsplit(":", 1)
    assert Path(path) == REPO / "examples" / "dnn.py" and cls == "DNN"
    assert params["dataset_id"] == "movielens_chime"
    assert any(c["name"] == "chime_hist" and c["active"] for c in params["feature_cols"])
    model_cls = runner.load_model_class(params["model"])
    assert model_cls.__name__ == "DNN" and "chime" not in Path(path).read_text().split(
        '"""')[2].lower()  # the model code itself knows nothing about CHIME


def test_unknown_expid_lists_known_ones(tiny_config):
    with pytest.raises(ConfigError) as err:
        runner.run_experiment(tiny_config, "DIN_tinny")
    msg = str(err.value)
    assert "DIN_tinny" in msg and "DIN_CHIME_tiny" in msg and "Did you mean" in msg


def test_chime_model_without_the_column_names_it(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="chime_hist"):
        runner.run_experiment(tiny_config, "DIN_CHIME_nochime", model_root=tmp_path)


def test_float_written_as_string_is_a_config_error(tmp_path, tiny_config):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "dataset_config.yaml").symlink_to(tiny_config / "dataset_config.yaml")
    (cfg / "model_config.yaml").write_text("X:\n  model: DIN\n  dataset_id: tiny\n"
                                           "  learning_rate: 5e-4\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        runner.load_experiment(cfg, "X")


def test_group_metrics_in_process_equal_fuxictr_pool(monkeypatch):
    from fuxictr.metrics import evaluate_metrics as fuxictr_metrics

    rng = np.random.default_rng(0)
    group = rng.integers(0, 15, 400)
    y_true = (rng.random(400) < 0.4).astype(float)
    y_pred = np.clip(0.3 * y_true + 0.7 * rng.random(400), 1e-6, 1 - 1e-6)
    expected = fuxictr_metrics(y_true, y_pred, METRICS, group)
    monkeypatch.setattr(runner.mp, "cpu_count", lambda: 1)  # FuxiCTR would build Pool(0)
    got = runner.evaluate_metrics(y_true, y_pred, METRICS, group)
    assert list(got) == METRICS
    for name in METRICS:
        assert got[name] == pytest.approx(expected[name], rel=1e-12)


def test_fuxictr_autotuner_grid_runs_two_configurations(tiny_config, tmp_path, monkeypatch):
    """enumerate_params + grid_search(script=run_expid.py), 2 configurations, real processes;
    each run appends FuxiCTR's one-line result record to <tuner config name>.csv in the
    working directory, as FuxiCTR's run_expid.py does."""
    monkeypatch.chdir(tmp_path)
    tuner = tmp_path / "DNN_tiny_tuner.yaml"
    tuner.write_text(yaml.safe_dump({
        "base_config": str(tiny_config), "base_expid": "DNN_CHIME_tiny", "dataset_id": "tiny_chime",
        "tuner_space": {"embedding_dim": [4, 8], "verbose": 0}}))
    results = runner.tune(tuner, [-1, -1])  # two CPU slots: both configurations at once
    assert len(results) == 2
    assert sorted(r["params"]["embedding_dim"] for r in results) == [4, 8]
    generated = yaml.safe_load((tmp_path / "DNN_tiny_tuner" / "dataset_config.yaml").read_text())
    assert os.path.isabs(generated["tiny_chime"]["train_data"])  # copied relative paths fixed
    lines = (tmp_path / "DNN_tiny_tuner.csv").read_text().splitlines()
    assert sorted(line.split(",[exp_id] ")[1].split(",")[0] for line in lines) == \
        sorted(r["expid"] for r in results)
    for line in lines:  # FuxiCTR's fields, print_to_list formatting
        assert ",[dataset_id] tiny_chime,[train] N.A.,[val] AUC: " in line and " - gAUC: " in line
        assert ",[test] AUC: " in line and line.startswith(" 20")
    rows = pd.read_csv(Path(results[0]["results_csv"]))
    assert sorted(rows["expid"]) == sorted(r["expid"] for r in results)
    assert all(0.0 <= r["test"]["AUC"] <= 1.0 for r in results)
