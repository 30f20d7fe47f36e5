"""The model zoo's configs: FuxiCTR reads them unchanged and every experiment is runnable.

For every ``model_zoo/<Model>/config`` folder and every experiment id in it:
``fuxictr.utils.load_config`` merges it (FuxiCTR's own loader, through the ``dataset_config``
symlink), its ``model`` is a registered name, its ``dataset_id`` is a block of
``dataset_configs/*.yaml``, the paper settings hold, and every key is either a run/FuxiCTR key
or a parameter of the model class (a misspelled key would otherwise vanish into ``**kwargs``).
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from fuxictr_chime.models import runner

REPO = Path(__file__).resolve().parents[2]
ZOO_MODELS = ("DIN", "SimSoft", "ETA", "SDIM", "TWIN", "MIRRN")
DATASETS = ("movielens", "synthetic", "microvideo", "tmall", "ebnerd")
PAPER_DATASETS = ("microvideo", "tmall", "ebnerd")
CONFIG_DIRS = [REPO / "model_zoo" / m / "config" for m in ZOO_MODELS] + [REPO / "examples" / "config"]
# keys used by the runner, FuxiCTR's BaseModel/fit, the data loader or the autotuner
RUN_KEYS = {
    "model", "dataset_id", "model_root", "num_workers", "verbose", "early_stop_patience",
    "pickle_feature_encoder", "save_best_only", "eval_steps", "debug_mode", "group_id",
    "use_features", "feature_specs", "feature_config", "metrics", "monitor", "monitor_mode",
    "task", "loss", "optimizer", "batch_size", "epochs", "shuffle", "seed", "max_len",
    "learning_rate", "embedding_regularizer", "net_regularizer", "embedding_dim",
}


def _expids(config_dir: Path) -> list[tuple[Path, str]]:
    return [(config_dir, e) for e in runner.list_experiments(config_dir)]


ALL = [pair for d in CONFIG_DIRS for pair in _expids(d)]


def _dataset_ids() -> set[str]:
    ids = set()
    for path in (REPO / "dataset_configs").glob("*.yaml"):
        ids |= set(yaml.safe_load(path.read_text()) or {})
    return ids


def test_every_zoo_model_has_all_experiments():
    for model in ZOO_MODELS:
        ids = set(runner.list_experiments(REPO / "model_zoo" / model / "config"))
        expected = {f"{model}{v}_{d}" for v in ("", "_CHIME", "_LEARN") for d in DATASETS}
        expected |= {f"{model}_{c}_synthetic" for c in ("HIST", "STATS")}  # the controls on the planted log
        if model == "DIN":  # LongCTR's DIN: short_len = max_len (test_din_full_is_din_over_max_len)
            expected |= {f"DIN_full{v}_{d}" for v in ("", "_CHIME", "_LEARN") for d in DATASETS}
            expected |= {"DIN_softmax_synthetic", "DIN_full_softmax_synthetic",  # test_din_softmax_pair
                         "DIN_softmax_CHIME_synthetic", "DIN_softmax_HIST_synthetic",
                         "DIN_softmax_STATS_synthetic", "DIN_softmax_LEARN_synthetic",
                         "DIN_softmax_interaction_CHIME_synthetic",  # test_din_softmax_interaction_pair
                         "DIN_softmax_interaction_HIST_synthetic",
                         "DIN_10_softmax_synthetic", "DIN_100_softmax_synthetic",  # test_din_softmax_windows
                         "DIN_300_softmax_synthetic"}
        assert ids == expected, model
        assert (REPO / "model_zoo" / model / "config" / "dataset_config").resolve() == \
            (REPO / "dataset_configs").resolve()


@pytest.mark.parametrize("config_dir,expid", ALL, ids=[f"{d.parent.name}/{e}" for d, e in ALL])
def test_fuxictr_load_config_and_registry(config_dir, expid):
    from fuxictr.utils import load_config

    params = load_config(str(config_dir), expid)  # FuxiCTR's own loader, unchanged
    assert params["model_id"] == expid
    assert params["dataset_id"] in _dataset_ids()
    assert params["group_id"] == "user_index"
    assert params["metrics"] == ["AUC", "gAUC", "logloss"]
    ours = runner.load_experiment(config_dir, expid)
    model_cls = runner.load_model_class(ours["model"])
    column = {"_CHIME": "chime_hist", "_LEARN": "learn_emb", "_HIST": "hist_ctrl", "_STATS": "stats_ctrl"}
    active_cols = {n for c in params["feature_cols"] if c["active"]  # FuxiCTR's merge
                   for n in (c["name"] if isinstance(c["name"], list) else [c["name"]])}
    for suffix, name in column.items():  # "X w/ CHIME": a dataset id with the column active
        assert (name in active_cols) == (suffix in expid), (expid, params["dataset_id"], active_cols)
        assert not any(spec.get("name") == name for spec in params.get("feature_specs") or [])
    if config_dir.parent.name in ZOO_MODELS:
        # DIN_full_softmax_CHIME, DIN_100_softmax, DIN_softmax_interaction_HIST: settings of DIN_CHIME, DIN, DIN_HIST
        assert ours["model"] == re.sub(r"_(full|\d+|softmax|interaction)(?=_|$)", "", expid.rsplit("_", 1)[0])
        assert model_cls.__name__ == ours["model"]
    unknown = set(params) - RUN_KEYS - _init_parameters(model_cls) - \
        _dataset_keys(config_dir, params["dataset_id"])
    assert not unknown, f"{expid}: keys not used by {model_cls.__name__}: {sorted(unknown)}"


@pytest.mark.parametrize("model", ZOO_MODELS)
def test_paper_settings(model):
    """CHIME section 5.1: lr 5e-4, batch 2048, short 30, long 1000, SDIM 48x3, TWIN sync 100."""
    for ds in PAPER_DATASETS:
        params = runner.load_experiment(REPO / "model_zoo" / model / "config", f"{model}_{ds}")
        assert params["learning_rate"] == 5.e-4 and params["batch_size"] == 2048
        assert params["short_len"] == 30 and params["max_len"] == 1000
        assert params["early_stop_patience"] >= 1 and params["epochs"] >= 10
        if model in ("SimSoft", "ETA", "TWIN", "MIRRN"):
            assert params["topk"] == 50
        if model == "SDIM":
            assert (params["num_hashes"], params["hash_bits"]) == (48, 3)
        if model == "TWIN":
            assert params["sync_every"] == 100


@pytest.mark.parametrize("dataset,max_batch", [("movielens", 512), ("synthetic", 1024)])
@pytest.mark.parametrize("model", ZOO_MODELS)
def test_small_data_settings_let_early_stopping_end_the_run(model, dataset, max_batch):
    """MovieLens-100K (27k train samples) and the planted log (326k): small batches, an epoch cap
    early stopping reaches long before (4-6 epochs measured on MovieLens, about 10 on the planted
    log), patience 2-3; the variants share the plain settings."""
    config_dir = REPO / "model_zoo" / model / "config"
    plain = runner.load_experiment(config_dir, f"{model}_{dataset}")
    assert plain["batch_size"] <= max_batch and plain["epochs"] >= 20
    assert 2 <= plain["early_stop_patience"] <= 3 and "AUC" in str(plain["monitor"])
    for variant in ("_CHIME", "_LEARN"):
        params = runner.load_experiment(config_dir, f"{model}{variant}_{dataset}")
        assert {k: params[k] for k in ("batch_size", "epochs", "early_stop_patience", "monitor",
                                       "learning_rate")} == \
            {k: plain[k] for k in ("batch_size", "epochs", "early_stop_patience", "monitor",
                                   "learning_rate")}


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("variant", ["", "_CHIME", "_LEARN"])
def test_din_full_is_din_over_max_len(dataset, variant):
    """DIN_full[_CHIME|_LEARN]_<dataset> = DIN[...]_<dataset> with short_len = max_len (LongCTR's
    DIN attends over the whole sequence); nothing else differs."""
    config_dir = REPO / "model_zoo" / "DIN" / "config"
    full = runner.load_experiment(config_dir, f"DIN_full{variant}_{dataset}")
    din = runner.load_experiment(config_dir, f"DIN{variant}_{dataset}")
    assert full["short_len"] == full["max_len"] == din["max_len"] and din["short_len"] < din["max_len"]
    assert {k for k in set(full) | set(din) if full.get(k) != din.get(k)} == {"short_len", "model_id"}


@pytest.mark.parametrize("base", ["DIN", "DIN_full", "DIN_CHIME", "DIN_HIST", "DIN_STATS", "DIN_LEARN"])
def test_din_softmax_pair(base):
    """DIN[_full]_softmax[_CHIME|_HIST|_STATS|_LEARN]_synthetic = the same experiment without
    ``_softmax`` but with DIN's softmax weighting; nothing else differs (the pair that separates the attention's
    normalization from the sequence length, and the column's gain on either DIN)."""
    config_dir = REPO / "model_zoo" / "DIN" / "config"
    name = base.replace("DIN_full", "DIN_full_softmax") if "full" in base else base.replace("DIN", "DIN_softmax")
    soft = runner.load_experiment(config_dir, f"{name}_synthetic")
    plain = runner.load_experiment(config_dir, f"{base}_synthetic")
    assert soft["din_use_softmax"] is True and plain["din_use_softmax"] is False
    assert {k for k in set(soft) | set(plain) if soft.get(k) != plain.get(k)} == {"din_use_softmax", "model_id"}


@pytest.mark.parametrize("window", [10, 100, 300])
def test_din_softmax_windows(window):
    """DIN_<window>_softmax_synthetic = DIN_softmax_synthetic over the last ``window`` behaviours:
    only ``short_len`` differs, and it is neither DIN's 30 nor the full sequence."""
    config_dir = REPO / "model_zoo" / "DIN" / "config"
    mid = runner.load_experiment(config_dir, f"DIN_{window}_softmax_synthetic")
    short = runner.load_experiment(config_dir, "DIN_softmax_synthetic")
    assert mid["short_len"] == window != short["short_len"] and window < short["max_len"] == mid["max_len"]
    assert {k for k in set(mid) | set(short) if mid.get(k) != short.get(k)} == {"short_len", "model_id"}


@pytest.mark.parametrize("variant", ["_CHIME", "_HIST"])
def test_din_softmax_interaction_pair(variant):
    """DIN_softmax_interaction{_CHIME,_HIST}_synthetic = DIN_softmax{variant}_synthetic with
    ``column_interaction: True`` and nothing else changed."""
    config_dir = REPO / "model_zoo" / "DIN" / "config"
    product = runner.load_experiment(config_dir, f"DIN_softmax_interaction{variant}_synthetic")
    concat = runner.load_experiment(config_dir, f"DIN_softmax{variant}_synthetic")
    assert product["column_interaction"] is True and not concat.get("column_interaction", False)
    assert {k for k in set(product) | set(concat) if product.get(k) != concat.get(k)} == \
        {"column_interaction", "model_id"}


def test_column_interaction_is_off_outside_the_interaction_experiments():
    for config_dir, expid in ALL:
        if "_interaction" not in expid:
            assert not runner.load_experiment(config_dir, expid).get("column_interaction", False), expid


def _init_parameters(cls: type) -> set[str]:
    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= {p for p in inspect.signature(init).parameters if p not in ("self",)}
    return names


def _dataset_keys(config_dir: Path, dataset_id: str) -> set[str]:
    from fuxictr_chime.data.features import load_dataset_params

    return set(load_dataset_params(config_dir, dataset_id))


def test_tuner_example_refers_to_a_zoo_experiment():
    from fuxictr.utils import load_model_config

    tuner = yaml.safe_load((REPO / "model_zoo" / "tuner" / "DIN_movielens_tuner.yaml").read_text())
    base = load_model_config(str(REPO / "model_zoo" / "tuner"), tuner["base_expid"])
    assert base["dataset_id"] == tuner["dataset_id"]
    assert set(tuner["tuner_space"]) <= set(base)  # enumerate_params' key check
    values = [v if isinstance(v, list) else [v] for v in tuner["tuner_space"].values()]
    n = 1
    for v in values:
        n *= len(v)
    assert n == 2  # two tiny configurations
