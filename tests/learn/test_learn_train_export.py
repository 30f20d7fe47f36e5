"""LEARN through the generic compressor trainer and exporter (registry name ``LEARN``).

On the compressor tests' tiny prepared folder (8 users, the last two without representation
history): ``train(config, compressor="LEARN")`` logs the dense all-action loss; ``export`` writes
``learn_emb``, one 64-float row per user_info row (the L2-normalized user vector for users with a
positive behavior before t1, zeros otherwise) and its feature spec; training is reproducible per
seed; ``compress train`` / ``compress export`` work through ``cli.main``; the repository's
``model_zoo/LEARN/config`` loads with :class:`LEARNConfig` and mirrors ``model_zoo/CHIME/config``.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from fuxictr_chime.cli import main
from fuxictr_chime.compressor.config import CHIMEConfig, load_experiment, read_experiment_blocks
from fuxictr_chime.compressor.export import export
from fuxictr_chime.compressor.train import train
from fuxictr_chime.errors import ConfigError
from fuxictr_chime.learn.config import LEARNConfig
from tests.compressor.conftest import make_prepared_dir, tiny_backbone_config

REPO = Path(__file__).resolve().parents[2]
LEARN_ZOO = REPO / "model_zoo" / "LEARN" / "config"
CHIME_ZOO = REPO / "model_zoo" / "CHIME" / "config"
N_USERS, WITHOUT_HISTORY = 8, 2
TINY = {"backbone": tiny_backbone_config(num_layers=1).to_dict(),
        "learn": {"item_hidden": 16, "chunk_size": 8},  # output_dim stays 64
        "optim": {"batch_size": 2, "grad_accum_steps": 1, "max_steps": 3, "warmup_steps": 1,
                  "eval_every": 2, "eval_users": 1, "max_len": 16, "seed": 0}}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one torch thread avoids thread hand-offs on a busy machine (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return make_prepared_dir(tmp_path, n_users=N_USERS, users_without_history=WITHOUT_HISTORY, dataset_id="tiny")


def _config(data_dir: Path, output_dir: Path, seed: int = 0) -> LEARNConfig:
    values = {**TINY, "optim": {**TINY["optim"], "seed": seed}}
    return LEARNConfig.from_dict({**values, "data_dir": str(data_dir), "output_dir": str(output_dir)})


def _train_export(data_dir: Path, tmp_path: Path, name: str, seed: int) -> np.ndarray:
    """Train on ``data_dir``, export into a copy of it; return the learn_emb matrix (rows by user_index)."""
    result = train(_config(data_dir, tmp_path / f"run_{name}", seed), progress=False, compressor="LEARN")
    view = shutil.copytree(data_dir, tmp_path / f"data_{name}")
    export(result.last_checkpoint, view, progress=False)
    return _learn_emb(view)


def _learn_emb(folder: Path) -> np.ndarray:
    table = pq.read_table(folder / "user_info.parquet", columns=["user_index", "learn_emb"]).to_pandas()
    assert table["user_index"].tolist() == list(range(N_USERS + 1))
    return np.stack(table["learn_emb"].to_numpy())  # (U+1, 64)


def _users_with_a_positive(folder: Path) -> set[int]:
    rep = pd.read_parquet(folder / "representation.parquet")
    return {int(u) for u, labels in zip(rep["user_index"], rep["label_seq"]) if (np.asarray(labels) > 0).any()}


def test_train_logs_the_dense_all_action_loss(data_dir, tmp_path):
    result = train(_config(data_dir, tmp_path / "run"), progress=False, compressor="LEARN")
    assert result.compressor == "LEARN" and result.step == result.total_steps == 3
    log = pd.read_csv(result.log_path)
    # no codebooks: no hit_ratio / perplexity columns; no holistic loss: no reference columns, only
    # the collapse of its user vectors (compressor/diagnostics.py) in eval rows
    assert list(log.columns) == ["step", "split", "dense_all_action", "loss", "lr", "time", "eff_rank",
                                 "pc1_share", "mean_cosine"]
    evals_all = log[log["split"] == "eval"]
    assert ((evals_all["eff_rank"] >= 0) & (evals_all["eff_rank"] <= 64)).all()
    assert log.loc[log["split"] == "train", "eff_rank"].isna().all()
    assert log[["step", "split"]].values.tolist() == [[0, "eval"], [2, "train"], [2, "eval"],
                                                       [3, "train"], [3, "eval"]]
    assert np.isfinite(log[["dense_all_action", "loss"]].to_numpy(float)).all()
    assert (log["dense_all_action"] == log["loss"]).all()  # the only loss term
    # the monitored metric is the eval dense all-action loss: best = its minimum after step 0
    evals = log[(log["split"] == "eval") & (log["step"] > 0)]
    assert result.best_metric == pytest.approx(evals["dense_all_action"].min())
    assert result.best_step == int(evals.loc[evals["dense_all_action"].idxmin(), "step"])
    saved = yaml.safe_load((result.last_checkpoint / "config.yaml").read_text())
    assert LEARNConfig.from_dict(saved).to_dict() == _config(data_dir, tmp_path / "run").to_dict()


def test_export_writes_one_64_float_row_per_user_and_the_spec(data_dir, tmp_path):
    result = train(_config(data_dir, tmp_path / "run"), progress=False, compressor="LEARN")
    stats = export(result.best_checkpoint, data_dir, progress=False)
    assert (stats["column"], stats["width"], stats["users"]) == ("learn_emb", 64, N_USERS)
    assert stats["users_with_history"] == N_USERS - WITHOUT_HISTORY and not stats.get("hit_ratio")
    block = stats["diagnostics"]  # same export path as CHIME: collapse of the user vectors, no levels
    assert "levels" not in block and block["z"]["vectors"] == block["positions"]  # positives of the eval user(s)
    assert block["features"]["vectors"] > 1 and 0 < block["features"]["effective_rank"] <= 64
    assert set(block["coverage"]) == {"train", "valid", "test"}
    emb = _learn_emb(data_dir)
    assert emb.shape == (N_USERS + 1, 64) and emb.dtype == np.float32
    norms = np.linalg.norm(emb, axis=1)
    with_positive = _users_with_a_positive(data_dir)
    assert with_positive and not with_positive & set(range(N_USERS - WITHOUT_HISTORY + 1, N_USERS + 1))
    for user in range(N_USERS + 1):  # unit vectors for users with a positive before t1, else zeros
        assert norms[user] == pytest.approx(1.0 if user in with_positive else 0.0, abs=1e-5), user
    config = yaml.safe_load((data_dir / "dataset_config.yaml").read_text())["tiny"]
    specs = [c for c in config["feature_cols"] if c.get("name") == "learn_emb"]
    assert specs == [{"name": "learn_emb", "active": True, "dtype": "list", "type": "embedding",
                      "source": "user", "pretrain_dim": 64, "embedding_dim": 16}]
    # exporting again replaces the column and the spec instead of adding a second one
    export(result.last_checkpoint, data_dir, progress=False)
    config = yaml.safe_load((data_dir / "dataset_config.yaml").read_text())["tiny"]
    assert sum(c.get("name") == "learn_emb" for c in config["feature_cols"]) == 1
    assert pq.read_table(data_dir / "user_info.parquet").column_names.count("learn_emb") == 1


def test_same_seed_same_vectors_other_seed_differs(data_dir, tmp_path):
    first = _train_export(data_dir, tmp_path, "a", seed=0)
    again = _train_export(data_dir, tmp_path, "b", seed=0)
    other = _train_export(data_dir, tmp_path, "c", seed=1)
    assert np.array_equal(first, again)
    users = sorted(_users_with_a_positive(data_dir))
    assert not np.allclose(first[users], other[users], atol=1e-4)


def test_cli_compress_train_then_export(data_dir, tmp_path, capsys):
    base = yaml.safe_load((LEARN_ZOO / "model_config.yaml").read_text())["Base"]
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    optim = {k: v for k, v in TINY["optim"].items() if k != "seed"}
    block = {"dataset_id": "tiny", "data_dir": "../tiny", "seed": 0,  # FuxiCTR dialect: top-level seed
             **TINY, "optim": optim}  # data_dir: relative to the YAML's folder
    (config_dir / "model_config.yaml").write_text(yaml.safe_dump({"Base": base, "LEARN_tiny": block}))
    out = tmp_path / "run"
    assert main(["compress", "train", "--config", str(config_dir), "--expid", "LEARN_tiny", "--output", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "trained LEARN for 3 steps" in printed and str(out / "best") in printed
    saved = LEARNConfig.from_yaml(out / "last" / "config.yaml")
    assert Path(saved.data_dir) == data_dir and saved.optim.seed == 0 and saved.learn.output_dim == 64
    assert main(["compress", "export", "--checkpoint", str(out / "best"), "--data", str(data_dir),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote learn_emb (64 floats) for {N_USERS} users ({N_USERS - WITHOUT_HISTORY} with history)" in printed
    assert "learn_emb: no codebooks (LEARN's user vector)" in printed and "average-pooled" not in printed
    assert _learn_emb(data_dir).shape == (N_USERS + 1, 64)


def test_codebook_table_names_the_compressor_not_the_column():
    """A LEARN export under another column name (``--column``) is still LEARN's vector, and CHIME
    w/o ICM (no codebooks either) keeps its own wording."""
    from fuxictr_chime.compressor.export import format_codebook_table

    assert format_codebook_table({"compressor": "LEARN", "column": "my_vec"}) == \
        "my_vec: no codebooks (LEARN's user vector)"
    assert format_codebook_table({"compressor": "CHIME", "column": "learn_emb"}) == \
        "learn_emb: no codebooks (w/o ICM: average-pooled vector)"


def test_model_zoo_learn_experiments_load_and_mirror_chime():
    blocks, _ = read_experiment_blocks(LEARN_ZOO)
    expids = sorted(k for k in blocks if k != "Base")
    assert {"LEARN_movielens", "LEARN_microvideo", "LEARN_tmall", "LEARN_ebnerd",
            "LEARN_synthetic"} <= set(expids)
    for expid in expids:
        config, raw = load_experiment(LEARN_ZOO, expid, config_class=LEARNConfig)
        assert isinstance(config, LEARNConfig) and raw["model"] == "LEARN", expid
        assert config.learn.output_dim == 64, expid  # the width of CHIME's histogram
        dataset = raw["dataset_id"]
        assert Path(config.data_dir) == REPO / "data" / dataset and Path(config.output_dir) == REPO / "runs" / expid
        # same data, window, user-tower size and optimizer budget as CHIME_<dataset> (on the planted
        # log: as CHIME_synthetic_small_data, the setting of the committed chime_hist column)
        mirror = "CHIME_synthetic_small_data" if dataset == "synthetic" else f"CHIME_{dataset}"
        chime, _ = load_experiment(CHIME_ZOO, mirror, config_class=CHIMEConfig)
        assert config.data_dir == chime.data_dir, expid
        assert config.backbone.to_dict() == chime.backbone.to_dict(), expid
        assert config.optim.to_dict() == chime.optim.to_dict(), expid
    with pytest.raises(ConfigError, match="unknown experiment id .LEARN_nope."):
        load_experiment(LEARN_ZOO, "LEARN_nope", config_class=LEARNConfig)
    assert math.isclose(load_experiment(LEARN_ZOO, "LEARN_movielens", config_class=LEARNConfig)[0].learn.tau, 0.1)
