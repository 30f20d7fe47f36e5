"""Our models and the CHIME column in FuxiCTR's own workflow (issue 13), step for step as the
public LongCTR ``run_expid.py`` (fuxictr 2.3.10 sdist, ``model_zoo/LongCTR/run_expid.py``) runs an
experiment: ``load_config -> FeatureProcessor -> build_dataset -> FeatureMap.load -> model class
-> RankDataLoader(data_loader=...) -> fit -> evaluate``, from the folder that holds ``config/``,
with paths relative to the working directory as FuxiCTR reads them. The experiment blocks are the
model zoo's (``_CHIME`` ones pick the ``<dataset>_chime`` dataset id), shrunk to tiny sizes.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from fuxictr_chime.models import runner

from .test_runner_e2e import REPO, TINY, dataset_block, write_prepared, zoo_block


def _cwd_relative(block: dict) -> dict:
    """A dataset block with FuxiCTR-style paths: relative to the working directory."""
    out = dict(block)
    for key in ("train_data", "valid_data", "test_data", "user_info", "item_info"):
        out[key] = "../data/tiny/" + Path(block[key]).name
    out["data_root"] = "../data/"
    return out


@pytest.fixture(autouse=True)
def _no_ray_left():
    """FuxiCTR's own parquet loader reads through Ray Data: stop the Ray it starts."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def fuxictr_folder(tmp_path_factory) -> Path:
    """<root>/data/tiny (prepared files) and <root>/work/config (dataset + model config)."""
    root = tmp_path_factory.mktemp("stock")
    write_prepared(root / "data" / "tiny")
    config = root / "work" / "config"
    config.mkdir(parents=True)
    (config / "dataset_config.yaml").write_text(yaml.safe_dump(
        {"tiny": _cwd_relative(dataset_block("x")), "tiny_chime": _cwd_relative(dataset_block("x", chime=True))}))
    blocks = {"Base": {"model_root": "./checkpoints/"}}
    for expid in ("DIN_movielens", "DIN_CHIME_movielens", "TWIN_CHIME_movielens"):
        block = zoo_block(expid.split("_")[0], expid)
        blocks[expid.replace("movielens", "tiny")] = {
            **block, "dataset_id": block["dataset_id"].replace("movielens", "tiny"), "feature_specs": None}
    example = yaml.safe_load((REPO / "examples" / "config" / "model_config.yaml").read_text())
    blocks["DNN_tiny"] = {**example["Base"], **example["DNN_movielens"], **TINY, "dataset_id": "tiny",
                          "model": "DNN"}
    (config / "model_config.yaml").write_text(yaml.safe_dump(blocks))
    return root / "work"


def _stock_run(work: Path, expid: str, model_class=None, data_loader="ours") -> tuple[dict, dict]:
    """LongCTR's run_expid.py body (its chdir is the caller's monkeypatch.chdir)."""
    from fuxictr.features import FeatureMap
    from fuxictr.preprocess import FeatureProcessor, build_dataset
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything
    from fuxictr.utils import load_config

    import fuxictr_chime.models as zoo
    from fuxictr_chime.data.loader import LongSeqDataLoader

    params = load_config("./config/", expid)
    params["gpu"] = -1
    seed_everything(seed=params["seed"])
    data_dir = os.path.join(params["data_root"], params["dataset_id"])
    feature_encoder = FeatureProcessor(**params)
    params["train_data"], params["valid_data"], params["test_data"] = build_dataset(feature_encoder, **params)
    feature_map = FeatureMap(params["dataset_id"], data_dir)
    feature_map.load(os.path.join(data_dir, "feature_map.json"), params)
    model = (model_class or getattr(zoo, params["model"]))(feature_map, **params)
    if data_loader == "ours":
        params["data_loader"] = LongSeqDataLoader
    train_gen, valid_gen = RankDataLoader(feature_map, stage="train", **params)
    model.fit(train_gen, validation_data=valid_gen, **params)
    valid = model.evaluate(valid_gen)
    test = model.evaluate(RankDataLoader(feature_map, stage="test", **params))
    return dict(valid), dict(test)


@pytest.mark.parametrize("expid", ["DIN_tiny", "DIN_CHIME_tiny", "TWIN_CHIME_tiny"])
def test_zoo_experiments_run_in_fuxictrs_own_workflow(fuxictr_folder, monkeypatch, expid):
    monkeypatch.chdir(fuxictr_folder)
    valid, test = _stock_run(fuxictr_folder, expid)
    assert set(test) == {"AUC", "gAUC", "logloss"} and 0.0 <= test["AUC"] <= 1.0
    feature_map = yaml.safe_load((fuxictr_folder.parent / "data" / (
        "tiny_chime" if "CHIME" in expid else "tiny") / "feature_map.json").read_text())
    names = {name for spec in feature_map["features"] for name in spec}  # FuxiCTR: a list of {name: spec}
    assert ("chime_hist" in names) == ("CHIME" in expid)


def test_a_stock_fuxictr_model_reads_our_loaders_batches(fuxictr_folder, monkeypatch):
    """FuxiCTR's BaseModel.get_inputs looks every batch column up in the feature map: the loader
    declares its item_seq / seq_mask columns as meta, which get_inputs skips."""
    from .test_runner_e2e import runner as _  # noqa: F401  (same tiny data)

    monkeypatch.chdir(fuxictr_folder)
    dnn = runner.load_model_class(f"{REPO / 'examples' / 'dnn.py'}:DNN")
    valid, test = _stock_run(fuxictr_folder, "DNN_tiny", model_class=dnn)
    assert 0.0 <= test["AUC"] <= 1.0


def test_our_runner_reads_working_directory_paths_too(fuxictr_folder, monkeypatch, tmp_path):
    """The same config through `fuxictr-chime run`: its paths are not there relative to the
    YAML, so they are taken relative to the working directory, as FuxiCTR does."""
    monkeypatch.chdir(fuxictr_folder)
    params = runner.load_experiment("config", "DIN_CHIME_tiny")
    assert params["train_data"] == str(fuxictr_folder.parent / "data" / "tiny" / "train.parquet")
    result = runner.run_experiment("config", "DIN_CHIME_tiny", model_root=tmp_path)
    assert 0.0 <= result["test"]["AUC"] <= 1.0
    line = Path(result["result_log"]).read_text()
    assert Path(result["result_log"]) == tmp_path / "config.csv"
    assert ",[exp_id] DIN_CHIME_tiny,[dataset_id] tiny_chime,[train] N.A.,[val] AUC: " in line


def test_fuxictrs_default_loader_gets_a_message_that_names_the_fix(fuxictr_folder, monkeypatch):
    """FuxiCTR's parquet loader has no history: the model names the loader to set."""
    from fuxictr_chime.errors import DataError

    monkeypatch.chdir(fuxictr_folder)
    with pytest.raises(DataError, match=r"params\['data_loader'\] = LongSeqDataLoader"):
        _stock_run(fuxictr_folder, "DIN_tiny", data_loader="fuxictr")
