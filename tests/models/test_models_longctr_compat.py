"""LongCTR compatibility: parameter names, the SIM alias, explicit short-attention settings,
star-import, and the tuple batches of LongCTR's own data loader.

LongCTR = the benchmark code in the FuxiCTR 2.3.10 sdist, ``model_zoo/LongCTR``. Set
``LONGCTR_ZOO`` to that folder to also check our reproduction of its batches against its
real ``LongCTRDataLoader``, and each of our models against the public one, its weights copied
into ours: the same loss and gradients for DIN over the whole sequence, SDIM, ETA
(``tiebreak: longctr``), SimSoft (``gsu: longctr``) and TWIN (``sync_every: 1``, also over
optimizer steps) (skipped otherwise).
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fuxictr_chime.errors import ConfigError
from fuxictr_chime.models import MODEL_NAMES, get_model

PARAMS_LOGGER = "fuxictr_chime.models.params"
BASES = ("DIN", "SimSoft", "ETA", "SDIM", "TWIN")
REPO = Path(__file__).resolve().parents[2]


def longctr_model_module(name: str):
    """``model_zoo/LongCTR/<name>/<name>.py`` of the sdist that ``LONGCTR_ZOO`` points to."""
    path = Path(os.environ["LONGCTR_ZOO"]) / name / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"longctr_{name.lower()}_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_losses(models: dict, batch) -> dict:
    """Each model's training loss on ``batch`` (name -> float), its gradients left in place."""
    losses = {}
    for name, model in models.items():
        model.train()
        model.zero_grad()
        loss = model.compute_loss(model(batch), model.get_labels(batch))
        loss.backward()
        losses[name] = float(loss.detach())
    return losses


def assert_same_gradients(ours, public, to_ours) -> None:
    """Every gradient of ``ours`` equals the public model's, renamed and rearranged by ``to_ours``
    (the mapping that loads the public weights into ours, applied to the public gradients)."""
    grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in public.named_parameters()}
    want = to_ours({**public.state_dict(), **grads})
    compared = 0
    for name, p in ours.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, want[name], rtol=1e-4, atol=1e-7), name
            compared += 1
    assert compared > 0


def eta_lockstep():
    """benchmarks/eta_lockstep.py, whose weight mapping from the public ETA the parity test uses."""
    spec = importlib.util.spec_from_file_location("eta_lockstep_in_tests", REPO / "benchmarks" / "eta_lockstep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def kwargs(tmp_path, tiny_dataset) -> dict:
    """Tiny settings with only names every long-sequence model takes."""
    return {"model_root": str(tmp_path / "ckpt"), "item_info": tiny_dataset.params["item_info"],
            "embedding_dim": 4, "dnn_hidden_units": [8], "short_len": 4, "max_len": 50,
            "learning_rate": 1.e-2, "optimizer": "adam", "loss": "binary_crossentropy",
            "metrics": ["AUC", "logloss"], "verbose": 0, "seed": 11}


def build(name, make_feature_map, kwargs, **extra):
    torch.manual_seed(0)
    return get_model(name)(make_feature_map(), **{**kwargs, **extra})


def records(caplog, level):
    return [r.getMessage() for r in caplog.records
            if r.name == PARAMS_LOGGER and r.levelno == level]


# --------------------------------------------------------------------------- parameter names
@pytest.mark.parametrize("name", ["SimSoft", "ETA", "SDIM", "TWIN"])
def test_short_seq_len_maps_to_short_len_with_an_info_line(name, make_feature_map, kwargs,
                                                            caplog):
    """LongCTR's item_feat_emb[:, -short_seq_len:-1] (target last) holds short_seq_len - 1
    behaviors."""
    del kwargs["short_len"]
    with caplog.at_level(logging.INFO, logger=PARAMS_LOGGER):
        model = build(name, make_feature_map, kwargs, short_seq_len=11)
    assert model.short_len == 10
    assert any("short_seq_len" in m and "short_len=10" in m for m in records(caplog, logging.INFO))
    assert not records(caplog, logging.WARNING)


def test_short_seq_len_conflicts_and_bounds(make_feature_map, kwargs):
    assert build("ETA", make_feature_map, {**kwargs, "short_len": 10}, short_seq_len=11) \
        .short_len == 10  # both given, same meaning: fine
    with pytest.raises(ConfigError, match="short_seq_len"):
        build("ETA", make_feature_map, kwargs, short_seq_len=11)  # short_len 4 != 10
    with pytest.raises(ConfigError, match="short_seq_len"):
        build("ETA", make_feature_map, {k: v for k, v in kwargs.items() if k != "short_len"},
              short_seq_len=1)


def test_din_ignores_short_seq_len_like_longctr_din(make_feature_map, kwargs, caplog):
    with caplog.at_level(logging.INFO, logger=PARAMS_LOGGER):
        model = build("DIN", make_feature_map, kwargs, short_seq_len=11)
    assert model.short_len == 4
    (warning,) = records(caplog, logging.WARNING)
    assert "'short_seq_len'" in warning and "DIN" in warning and "ignored" in warning


def test_sim_alpha_beta_weight_the_gsu_and_esu_losses(make_feature_map, make_batch, kwargs):
    model = build("SIM", make_feature_map, kwargs, alpha=0.25, beta=2.0)
    assert model.aux_outputs == {"y_aux": 0.25} and model.main_weight == 2.0
    batch = make_batch(model.feature_map)
    out, y = model(batch), model.get_labels(batch)
    expected = 2.0 * model.loss_fn(out["y_pred"], y) + 0.25 * model.loss_fn(out["y_aux"], y)
    assert torch.allclose(model.add_loss(out, y), expected)
    with pytest.raises(ConfigError, match="aux_weight"):
        build("SIM", make_feature_map, kwargs, alpha=0.25, aux_weight=1.0)


@pytest.mark.parametrize("name, key, good, bad", [
    ("SDIM", "use_qkvo", True, False),
    ("TWIN", "Kc_cross_features", 0, 2),
    ("SimSoft", "gsu_type", "soft", "hard"),
    ("ETA", "padding", "pre", "post"),
    ("DIN", "padding", "pre", "post"),
])
def test_longctr_values_we_reproduce_are_accepted_others_refused(name, key, good, bad,
                                                                  make_feature_map, kwargs,
                                                                  caplog):
    with caplog.at_level(logging.INFO, logger=PARAMS_LOGGER):
        build(name, make_feature_map, kwargs, **{key: good})
    assert any(key in m and "accepted" in m for m in records(caplog, logging.INFO))
    assert not records(caplog, logging.WARNING)
    with pytest.raises(ConfigError, match=key):
        build(name, make_feature_map, kwargs, **{key: bad})


def test_reuse_hash_false_is_implemented_by_eta_and_sdim(make_feature_map, kwargs, caplog):
    with caplog.at_level(logging.INFO, logger=PARAMS_LOGGER):
        assert build("ETA", make_feature_map, kwargs, reuse_hash=False).reuse_hash is False
        assert build("SDIM", make_feature_map, kwargs, reuse_hash=False).reuse_hash is False
    assert not records(caplog, logging.WARNING) and not records(caplog, logging.INFO)


@pytest.mark.parametrize("name, key, value", [
    ("DIN", "topk", 50), ("SDIM", "topk", 50), ("SimSoft", "hash_bits", 4),
    ("TWIN", "num_hashes", 2), ("DIN", "attention_dim", 32), ("TWIN", "use_qkvo", False),
    ("SDIM", "short_target_field", [["item_id", "cate_id"]]), ("DIN", "din_target_field", "x"),
    ("SimSoft", "long_sequence_field", "x"), ("ETA", "alpha", 0.5),
])
def test_longctr_names_without_equivalent_warn_once_naming_param_and_model(
        name, key, value, make_feature_map, kwargs, caplog):
    with caplog.at_level(logging.INFO, logger=PARAMS_LOGGER):
        build(name, make_feature_map, kwargs, **{key: value})
    (warning,) = records(caplog, logging.WARNING)
    assert f"'{key}'" in warning and name in warning and "ignored" in warning


@pytest.mark.parametrize("typo, suggestion", [
    ("num_hashs", "num_hashes"), ("learning_rat", "learning_rate"),
    ("short_seq_length", "short_seq_len"), ("embeding_dim", "embedding_dim"),
])
def test_unknown_names_warn_with_the_closest_known_name(typo, suggestion, make_feature_map,
                                                        kwargs, caplog):
    with caplog.at_level(logging.WARNING, logger=PARAMS_LOGGER):
        build("SDIM", make_feature_map, kwargs, **{typo: 1})
    (warning,) = records(caplog, logging.WARNING)
    assert f"'{typo}'" in warning and f"did you mean '{suggestion}'" in warning


@pytest.mark.parametrize("name", ["ETA", "ETA_CHIME", "ETA_LEARN", "ETA_HIST"])
def test_eta_tiebreak_is_a_known_key_of_eta_and_its_variants(name, make_feature_map, kwargs, caplog):
    column = name.rpartition("_")[2].lower() if "_" in name else None
    with caplog.at_level(logging.WARNING, logger=PARAMS_LOGGER):
        torch.manual_seed(0)
        model = get_model(name)(make_feature_map(**({column: True} if column else {})),
                                **{**kwargs, "tiebreak": "longctr"})
    assert model.tiebreak == "longctr" and records(caplog, logging.WARNING) == []
    with caplog.at_level(logging.WARNING, logger=PARAMS_LOGGER):
        build("TWIN", make_feature_map, kwargs, tiebreak="longctr")
    assert any("'tiebreak'" in w and "ETA" in w for w in records(caplog, logging.WARNING))


def test_simsoft_gsu_is_a_known_key_and_a_bad_value_is_refused(make_feature_map, kwargs, caplog):
    with caplog.at_level(logging.WARNING, logger=PARAMS_LOGGER):
        model = build("SIM", make_feature_map, kwargs, gsu="longctr")
    assert model.gsu == "longctr" and records(caplog, logging.WARNING) == []
    with pytest.raises(ConfigError, match="gsu must be one of paper, longctr"):
        build("SimSoft", make_feature_map, kwargs, gsu="hard")


def test_a_parameter_of_another_model_names_its_owner(make_feature_map, kwargs, caplog):
    with caplog.at_level(logging.WARNING, logger=PARAMS_LOGGER):
        build("SDIM", make_feature_map, kwargs, sync_every=3, aux_weight=0.5)
    warnings = records(caplog, logging.WARNING)
    assert any("'sync_every'" in w and "TWIN" in w for w in warnings)
    assert any("'aux_weight'" in w and "SimSoft" in w for w in warnings)


FUXICTR_PARAMS = {
    "model": "SDIM", "model_id": "SDIM_test", "expid": "SDIM_test", "task": "binary_classification",
    "gpu": -1, "embedding_regularizer": 0, "net_regularizer": 0, "monitor": "AUC",
    "monitor_mode": "max", "early_stop_patience": 2, "save_best_only": True, "eval_steps": None,
    "debug_mode": False, "group_id": "user_index", "use_features": None, "feature_specs": None,
    "feature_config": None, "dataset_id": "tiny", "data_root": "../data/",
    "data_format": "parquet", "train_data": "train.parquet", "valid_data": "valid.parquet",
    "test_data": "test.parquet", "user_info": "user_info.parquet", "rebuild_dataset": False,
    "num_workers": 3, "shuffle": True, "pickle_feature_encoder": True, "data_loader": object,
    "max_gradient_norm": 10.0, "epochs": 100, "batch_size": 2048, "feature_cols": [],
    "label_col": {"name": "label", "dtype": "float"}, "ordered_features": None,
    "reduce_lr_on_plateau": True, "min_categr_count": 1,
}


@pytest.mark.parametrize("name", BASES)
def test_fuxictr_keys_stay_silent(name, make_feature_map, kwargs, caplog):
    with caplog.at_level(logging.INFO, logger=PARAMS_LOGGER):
        model = build(name, make_feature_map, {**kwargs, **FUXICTR_PARAMS, "model": name})
    assert not records(caplog, logging.WARNING) and not records(caplog, logging.INFO)
    assert model.model_id == "SDIM_test"


@pytest.mark.parametrize("name", BASES)
def test_model_zoo_experiments_as_the_runner_builds_them_stay_silent(name, make_feature_map,
                                                                     tiny_dataset, tmp_path,
                                                                     caplog):
    """Every key of Base + experiment block + dataset block (runner.experiment_params)."""
    from fuxictr_chime.models.runner import experiment_params

    params = experiment_params(REPO / "model_zoo" / name / "config", f"{name}_movielens",
                               model_root=tmp_path / "ckpt")
    params["item_info"] = tiny_dataset.params["item_info"]  # build on the tiny feature map
    with caplog.at_level(logging.WARNING, logger=PARAMS_LOGGER):
        get_model(params["model"])(make_feature_map(), **params)
    assert not records(caplog, logging.WARNING)


def test_longctr_sdim_experiment_params_map(make_feature_map, kwargs, caplog):
    """The constructor arguments of LongCTR's SDIM.py with its defaults."""
    longctr = {"dnn_hidden_units": [16, 8], "dnn_activations": "ReLU", "attention_dim": 8,
               "use_qkvo": True, "num_heads": 2, "use_scale": True, "attention_dropout": 0,
               "reuse_hash": True, "num_hashes": 1, "hash_bits": 4, "learning_rate": 1.e-3,
               "embedding_dim": 4, "net_dropout": 0, "batch_norm": False, "l2_norm": False,
               "short_seq_len": 50, "accumulation_steps": 1, "embedding_regularizer": None,
               "net_regularizer": None}
    del kwargs["short_len"]
    with caplog.at_level(logging.INFO, logger=PARAMS_LOGGER):
        model = build("SDIM", make_feature_map, {**kwargs, **longctr})
    assert not records(caplog, logging.WARNING)
    assert (model.num_hashes, model.hash_bits, model.short_len, model.l2_norm) == (1, 4, 49, False)
    assert model.short_attention.W_q.out_features == 8 and model.short_attention.num_heads == 2


# --------------------------------------------------------------------------- SIM alias
def test_sim_is_simsoft_and_not_a_table_name():
    from fuxictr_chime.models import registry

    for suffix in ("", "_CHIME", "_LEARN"):
        assert get_model("SIM" + suffix) is get_model("SimSoft" + suffix)
        assert registry.ALIASES["SIM" + suffix] == "SimSoft" + suffix
        assert "SIM" + suffix not in MODEL_NAMES
    assert registry.MODEL_NAMES == MODEL_NAMES
    with pytest.raises(ConfigError, match="alias"):
        registry.register_model("SIM", get_model("DIN"))


def test_model_sim_in_a_config_builds_simsoft(make_feature_map, kwargs):
    from fuxictr_chime.models.runner import build_model

    params = {**kwargs, "model": "SIM", "dataset_id": "tiny", "model_id": "SIM_tiny"}
    model = build_model(params, make_feature_map())
    assert type(model) is get_model("SimSoft") and model.model_id == "SIM_tiny"


# --------------------------------------------------------------------------- short attention
@pytest.mark.parametrize("name, extra", [("SimSoft", {}), ("ETA", {}), ("SDIM", {}),
                                         ("TWIN", {}), ("DIN", {"short_attention": "target"})])
def test_explicit_short_attention_settings_win(name, extra, make_feature_map, make_batch,
                                               kwargs):
    model = build(name, make_feature_map, {**kwargs, "attention_dim": 8, "num_heads": 2},
                  short_attention_dim=12, short_num_heads=3, **extra)
    assert model.short_attention.W_q.out_features == 12 and model.short_attention.num_heads == 3
    if hasattr(model, "esu"):  # the long part keeps attention_dim / num_heads
        assert model.esu.W_q.out_features == 8 and model.esu.num_heads == 2
    assert model(make_batch(model.feature_map))["y_pred"].shape == (6, 1)
    default = build(name, make_feature_map, {**kwargs, "attention_dim": 8}, **extra)
    assert default.short_attention.W_q.out_features == (64 if name == "DIN" else 8)


def test_use_scale_reaches_every_target_attention(make_feature_map, kwargs):
    model = build("ETA", make_feature_map, kwargs, use_scale=False)
    assert model.short_attention.scale == 1.0 and model.esu.scale == 1.0
    assert build("ETA", make_feature_map, kwargs).esu.scale == pytest.approx(8.0)  # sqrt(64)


# --------------------------------------------------------------------------- star-import
def test_star_import_brings_the_model_classes():
    namespace: dict = {}
    exec("from fuxictr_chime.models import *", namespace)
    assert namespace["TWIN"] is get_model("TWIN")
    assert namespace["SIM"] is get_model("SimSoft")
    assert all(namespace[name] is get_model(name) for name in MODEL_NAMES)
    assert namespace["LongSeqBase"].__name__ == "LongSeqBase"
    assert {"get_model", "register_model", "MODEL_NAMES"} <= set(namespace)


# --------------------------------------------------------------------------- LongCTR batches
def longctr_split(tiny_dataset, split: str, folder: Path) -> Path:
    """The tiny split with an integer label, as LongCTR's datasets store it: its loader stacks
    every column into one array, and a float label would make ``user_index`` float, which
    BatchCollator cannot index user_info with."""
    frame = pd.read_parquet(tiny_dataset.folder / f"{split}.parquet")
    frame["label"] = frame["label"].astype(np.int64)
    path = folder / f"{split}.parquet"
    frame.to_parquet(path)
    return path


def longctr_batch(feature_map, data_path, user_info, item_info, rows, max_len):
    """The batch LongCTR's loader yields for ``rows`` of a split (layout reproduced from the
    FuxiCTR 2.3.10 sdist, model_zoo/LongCTR/longctr_dataloader.py):

    * ``ParquetDataset.load_data`` (lines 55-78): all columns of the split in one
      ``np.column_stack`` array (one dtype), scalar columns one slot each;
    * ``BatchCollator.__call__`` (lines 142-169): ``batch_dict`` = the columns that are
      features or labels, (B,); the history = ``full_item_seq[:seq_len]`` of the user
      (``padding_seqs``, lines 171-187: ``pad_sequences`` to ``min(max(seq_len), max_len)``,
      pre padding and pre truncating); ``mask`` = (history > 0) as float (B, L);
      ``item_dict`` = for every item_info column that is a feature, the rows
      ``item_info.set_index('item_index').iloc[[history..., item_index] per sample]``,
      flattened to (B * (L+1), ...).
    """
    from fuxictr.preprocess.tokenizer import pad_sequences
    from torch.utils.data.dataloader import default_collate

    frame = pd.read_parquet(data_path)
    stacked = np.column_stack([frame[col].to_numpy() for col in frame.columns])
    batch_tensor = default_collate([stacked[r] for r in rows])  # (B, C)
    wanted = set(feature_map.features) | set(feature_map.labels)
    batch_dict = {col: batch_tensor[:, i] for i, col in enumerate(frame.columns) if col in wanted}
    full_seqs = pd.read_parquet(user_info)["full_item_seq"].values
    lengths = batch_dict["seq_len"].int().numpy()
    histories = [seq[:n] for seq, n in zip(full_seqs[batch_dict["user_index"].numpy()], lengths)]
    seqs = pad_sequences(histories, maxlen=min(max(lengths), max_len), value=0,
                         padding="pre", truncating="pre")  # (B, L)
    mask = (torch.from_numpy(seqs) > 0).float()
    positions = np.hstack([seqs, batch_dict["item_index"].numpy().reshape(-1, 1)]).flatten()
    items = pd.read_parquet(item_info).set_index("item_index").iloc[positions]
    item_dict = {col: torch.from_numpy(np.array(items[col].to_list()))
                 for col in items.columns if col in wanted}
    return batch_dict, item_dict, mask


@pytest.fixture
def longctr_data(tiny_dataset, tmp_path):
    folder = tmp_path / "longctr"
    folder.mkdir()
    return {split: longctr_split(tiny_dataset, split, folder) for split in ("train", "valid")}


def our_batch(feature_map, tiny_dataset, split="valid", max_len=20):
    from fuxictr_chime.data.loader import LongSeqDataLoader

    params = tiny_dataset.params
    loader = LongSeqDataLoader(feature_map, params[f"{split}_data"], split=split, batch_size=32,
                               shuffle=False, user_info=params["user_info"],
                               item_info=params["item_info"], max_len=max_len, prefetch=False)
    return next(iter(loader))


def test_longctr_batch_converts_to_our_batch_format(make_feature_map, tiny_dataset,
                                                    longctr_data, kwargs):
    params = tiny_dataset.params
    model = build("SDIM", make_feature_map, kwargs)
    fmap = model.feature_map
    ours = our_batch(fmap, tiny_dataset)
    theirs = longctr_batch(fmap, longctr_data["valid"], params["user_info"],
                           params["item_info"], range(32), max_len=20)
    assert theirs[0]["user_index"].dtype == torch.int64 and theirs[2].dtype == torch.float32
    converted = model.batch_dict(theirs)
    length = theirs[2].shape[1]  # min(max seq_len, 20) <= our 20 slots
    assert torch.equal(converted["item_seq"], ours["item_seq"][:, -length - 1:])
    assert torch.equal(converted["seq_mask"], ours["seq_mask"][:, -length:])
    assert not ours["seq_mask"][:, :-length].any()  # the rest is padding
    for name in ("item_id", "cate_id", "title_emb", "hour", "user_index", "item_index"):
        assert torch.equal(converted[name].to(ours[name].dtype), ours[name]), name
    assert torch.equal(model.get_labels(theirs), model.get_labels(ours))
    assert torch.equal(model.get_group_id(theirs), model.get_group_id(ours))


@pytest.mark.parametrize("name", BASES)
def test_predictions_on_longctr_batches_equal_ours(name, make_feature_map, tiny_dataset,
                                                   longctr_data, kwargs):
    params = tiny_dataset.params
    model = build(name, make_feature_map, {**kwargs, "attention_dim": 8, "topk": 5})
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # larger weights than the tiny init, so every path matters
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.sync_copies()
    model.eval()
    theirs = longctr_batch(model.feature_map, longctr_data["valid"], params["user_info"],
                           params["item_info"], range(32), max_len=20)
    with torch.no_grad():
        expected = model(our_batch(model.feature_map, tiny_dataset))["y_pred"]
        assert torch.allclose(model(theirs)["y_pred"], expected, atol=1e-5)


def test_fit_and_evaluate_on_longctr_batches(make_feature_map, tiny_dataset, longctr_data,
                                             kwargs):
    params = tiny_dataset.params
    model = build("TWIN", make_feature_map, {**kwargs, "attention_dim": 8, "topk": 5,
                                             "sync_every": 2})
    fmap = model.feature_map

    def batches(split, n_rows, size=16):
        return [longctr_batch(fmap, longctr_data[split], params["user_info"],
                              params["item_info"], range(i, min(i + size, n_rows)), 20)
                for i in range(0, n_rows, size)]
    train, valid = batches("train", 96), batches("valid", 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fit(train, epochs=1, validation_data=valid)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    result = model.evaluate(valid)
    assert set(result) == {"AUC", "logloss"} and np.isfinite(result["logloss"])


def test_longctr_batch_errors_name_the_problem(make_feature_map, tiny_dataset, longctr_data,
                                               kwargs):
    from fuxictr_chime.errors import DataError

    params = tiny_dataset.params
    model = build("DIN", make_feature_map, kwargs)
    theirs = longctr_batch(model.feature_map, longctr_data["valid"], params["user_info"],
                           params["item_info"], range(8), max_len=20)
    bad_items = {**theirs[1], "item_id": theirs[1]["item_id"] + 1000}
    del theirs[0]["item_index"]  # rows of the target then come from item_id too
    with pytest.raises(DataError, match="not in"):
        model((theirs[0], bad_items, theirs[2]))
    with pytest.raises(DataError, match="item_id"):
        model((theirs[0], {k: v for k, v in theirs[1].items() if k != "item_id"}, theirs[2]))
    with pytest.raises(DataError, match="tuple"):
        model([theirs[0]])


@pytest.mark.skipif(not os.environ.get("LONGCTR_ZOO"),
                    reason="set LONGCTR_ZOO to the sdist's model_zoo/LongCTR folder")
def test_reproduced_layout_equals_longctr_loader(make_feature_map, tiny_dataset, longctr_data,
                                                 kwargs):
    path = Path(os.environ["LONGCTR_ZOO"]) / "longctr_dataloader.py"
    spec = importlib.util.spec_from_file_location("longctr_dataloader_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    params = tiny_dataset.params
    model = build("SDIM", make_feature_map, kwargs).eval()
    loader = module.LongCTRDataLoader(model.feature_map, str(longctr_data["valid"]),
                                      params["user_info"], params["item_info"], batch_size=32,
                                      shuffle=False, num_workers=0, max_len=20)
    real = next(iter(loader))
    mine = longctr_batch(model.feature_map, longctr_data["valid"], params["user_info"],
                         params["item_info"], range(32), max_len=20)
    for got, want in zip(real[:2], mine[:2]):
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in got)
    assert torch.equal(real[2], mine[2])
    with torch.no_grad():
        assert torch.equal(model(real)["y_pred"], model(mine)["y_pred"])


# --------------------------------------------------------------------------- the public models
LONGCTR_KWARGS = ("model_root", "learning_rate", "optimizer", "loss", "metrics", "verbose")


def longctr_state(ours, public_state: dict, renames: dict, layers: dict, extra=None) -> dict:
    """Our state (names as ``ours.state_dict()``, item buffers left out: data, not weights) from a
    LongCTR model's. ``renames``: our name prefix -> theirs, the longest matching prefix wins.
    ``layers``: our layer -> LongCTR's order of its input blocks, context first (SDIM's DNN:
    ``("context", "target", "long", "short")``); ours takes them as target, short, long (or the
    pooled sequence), context. ``extra``: our name -> function of the public state, for weights
    LongCTR holds in another shape."""
    widths = {"context": ours.context_dim, "target": ours.item_dim, "short": ours.item_dim,
              "long": ours.item_dim, "pooling": ours.item_dim}

    def public_name(name):
        for mine in sorted(renames, key=len, reverse=True):
            if name.startswith(mine):
                return renames[mine] + name[len(mine):]
        return name

    def one(name):
        if extra and name in extra:
            return extra[name](public_state)
        value = public_state[public_name(name)]
        if name not in layers:
            return value
        order = layers[name]
        starts = dict(zip(order, np.cumsum([0] + [widths[b] for b in order])))
        ours_order = [b for b in ("target", "short", "long", "pooling") if b in order] + ["context"]
        return torch.cat([value[:, starts[b]:starts[b] + widths[b]] for b in ours_order], dim=1)
    return {name: one(name).clone() for name in ours.state_dict() if not name.startswith("item_table.item_")}


def public_model(name: str, feature_map, kwargs: dict, **settings):
    """LongCTR's ``name`` on ``feature_map`` with the tiny settings and weights N(0, 0.3^2), larger
    than the tiny init, so every path matters; embedding rows at ``padding_idx`` stay zero, as
    FuxiCTR initializes them and as their (zero) gradient keeps them."""
    torch.manual_seed(3)
    model = getattr(longctr_model_module(name), name)(
        feature_map, embedding_dim=4, dnn_hidden_units=[8], **settings,
        **{k: kwargs[k] for k in LONGCTR_KWARGS})
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx] = 0.0
    return model


def load_public(models, state: dict) -> None:
    for model in models:
        missing = model.load_state_dict(state, strict=False).missing_keys
        assert all(name.startswith("item_table.") for name in missing), missing  # only item buffers


def assert_parity(public, ours, other, batch, to_ours) -> None:
    """On ``batch``: ``ours`` (the public weights loaded through ``to_ours``) gives the public model's
    training loss and gradients; ``other``, ours with the setting under test changed, another loss
    (so the batch exercises that setting)."""
    losses = train_losses({"public": public, "ours": ours, "other": other}, batch)
    assert losses["ours"] == pytest.approx(losses["public"], rel=1e-6)
    assert abs(losses["other"] - losses["public"]) > 1e-4
    assert_same_gradients(ours, public, to_ours)


def long_rows_batches(model, tiny_dataset, longctr_data, size: int = 32, count: int = 1):
    """``count`` LongCTR batches of ``size`` train rows with at least 5 behaviours: LongCTR masks its
    short window with ``mask[:, -short_seq_len:-1]``, one position older than the behaviours it
    takes, which only matters on shorter rows (the ETA test above)."""
    params = tiny_dataset.params
    lengths = pd.read_parquet(longctr_data["train"])["seq_len"].to_numpy()
    rows = np.flatnonzero(lengths >= 5)
    assert len(rows) >= size * count
    return [longctr_batch(model.feature_map, longctr_data["train"], params["user_info"],
                          params["item_info"], rows[start:start + size], max_len=20)
            for start in range(0, size * count, size)]


@pytest.mark.skipif(not os.environ.get("LONGCTR_ZOO"),
                    reason="set LONGCTR_ZOO to the sdist's model_zoo/LongCTR folder")
def test_eta_with_longctr_tiebreak_equals_the_public_eta_in_loss_and_gradients(
        make_feature_map, tiny_dataset, longctr_data, kwargs):
    """The public ETA and ours with ``tiebreak="longctr"``, the public weights copied into ours:
    same loss and gradients on a LongCTR batch with Hamming ties (hash_bits 4, top-5 of up to 20);
    our default tie order (most recent first) gives another loss. Rows with at least
    ``short_seq_len`` (5) behaviours: on shorter ones two known differences show (an empty
    history gives zeros here, LongCTR's attention averages padding; LongCTR masks its short
    window with ``mask[:, -short_seq_len:-1]``, one position older than the behaviours it takes)."""
    settings = {"attention_dim": 8, "topk": 5, "hash_bits": 4}
    ours = build("ETA", make_feature_map, {**kwargs, **settings}, tiebreak="longctr")
    recent = build("ETA", make_feature_map, {**kwargs, **settings})
    public = public_model("ETA", ours.feature_map, kwargs, short_seq_len=5, **settings)
    to_ours = eta_lockstep().public_state_for_ours  # renames; moves the DNN's context columns last
    load_public((ours, recent), to_ours(ours, public.state_dict()))
    batch, = long_rows_batches(ours, tiny_dataset, longctr_data)  # see the docstring
    assert_parity(public, ours, recent, batch, lambda public_state: to_ours(ours, public_state))


@pytest.mark.skipif(not os.environ.get("LONGCTR_ZOO"),
                    reason="set LONGCTR_ZOO to the sdist's model_zoo/LongCTR folder")
def test_simsoft_with_longctr_gsu_equals_the_public_sim_in_loss_and_gradients(
        make_feature_map, tiny_dataset, longctr_data, kwargs):
    """The public SIM and ours with ``gsu="longctr"``, the public weights copied into ours: same
    loss (GSU + ESU) and gradients on a LongCTR batch; the default GSU (scaled scores, softmax
    pooling, valid behaviours only) gives another loss. Rows with at least ``short_seq_len``
    behaviours, as in the ETA test above, and whose top-k keeps at least one valid behaviour: where
    every kept slot is padding (all valid scores negative), LongCTR's attention averages the padding
    rows and ours gives zeros, the difference of an empty history."""
    params = tiny_dataset.params
    settings = {"attention_dim": 8, "topk": 5}
    ours = build("SimSoft", make_feature_map, {**kwargs, **settings}, gsu="longctr")
    paper = build("SimSoft", make_feature_map, {**kwargs, **settings})
    public = public_model("SIM", ours.feature_map, kwargs, short_seq_len=5, **settings)
    renames = {"item_table.embedding.": "embedding_layer.", "gsu_query.": "W_a.", "gsu_key.": "W_b.",
               "esu.": "long_attention.", "aux_head.": "dnn_aux."}

    def ours_state(public_state):
        return longctr_state(ours, public_state, renames,
                             {"dnn.mlp.0.weight": ("context", "target", "short", "long"),
                              "aux_head.mlp.0.weight": ("context", "target", "pooling")})
    load_public((ours, paper), ours_state(public.state_dict()))
    lengths = pd.read_parquet(longctr_data["train"])["seq_len"].to_numpy()
    candidates = np.flatnonzero(lengths >= 5)[:64]
    selected = {}  # rows whose top-k keeps at least one behaviour (see the docstring)
    hook = public.long_attention.register_forward_hook(lambda m, args, out: selected.update(mask=args[2]))
    with torch.no_grad():
        public(longctr_batch(ours.feature_map, longctr_data["train"], params["user_info"],
                             params["item_info"], candidates, max_len=20))
    hook.remove()
    rows = candidates[selected["mask"].bool().any(1).numpy()][:32]
    assert len(rows) >= 16
    batch = longctr_batch(ours.feature_map, longctr_data["train"], params["user_info"],
                          params["item_info"], rows, max_len=20)
    assert_parity(public, ours, paper, batch, ours_state)


@pytest.mark.skipif(not os.environ.get("LONGCTR_ZOO"),
                    reason="set LONGCTR_ZOO to the sdist's model_zoo/LongCTR folder")
def test_twin_synced_every_batch_trains_as_the_public_twin(make_feature_map, tiny_dataset,
                                                           longctr_data, kwargs):
    """LongCTR's TWIN retrieves with the live ESU projections (top-k of the ESU's own scores, one
    attention); ours retrieves with copies refreshed every ``sync_every`` batches (the TWIN paper,
    100 by default). With ``sync_every=1`` the two are one function: the same loss and gradients
    from the public weights, and the same losses over three optimizer steps (Adam, clipping). A GSU
    copy that disagrees with the ESU gives another loss: the retrieval matters on these batches."""
    settings = {"attention_dim": 8, "topk": 5}
    ours = build("TWIN", make_feature_map, {**kwargs, **settings}, sync_every=1)
    stale = build("TWIN", make_feature_map, {**kwargs, **settings})
    public = public_model("TWIN", ours.feature_map, kwargs, short_seq_len=5, **settings)
    renames = {"item_table.embedding.": "embedding_layer.", "esu.": "long_attention.",
               "esu.W_k.": "long_attention.W_h.", "gsu_query_weight": "long_attention.W_q.weight",
               "gsu_key_weight": "long_attention.W_h.weight"}

    def to_ours(public_state):
        return longctr_state(ours, public_state, renames,
                             {"dnn.mlp.0.weight": ("context", "target", "short", "long")})
    load_public((ours, stale), to_ours(public.state_dict()))
    with torch.no_grad():
        stale.gsu_key_weight.copy_(torch.randn(stale.gsu_key_weight.shape,
                                               generator=torch.Generator().manual_seed(5)))
    batches = long_rows_batches(ours, tiny_dataset, longctr_data, size=15, count=3)
    assert_parity(public, ours, stale, batches[0], to_ours)
    public._batch_index, public._max_gradient_norm = 0, 10.  # LongCTR's fit() sets them
    for model in (ours, public):
        model.optimizer.zero_grad()
    for batch in batches:
        ours_loss, public_loss = float(ours.train_step(batch)), float(public.train_step(batch).detach())
        assert ours_loss == pytest.approx(public_loss, rel=1e-5)
    assert torch.allclose(ours.gsu_key_weight, ours.esu.W_k.weight)  # refreshed after each step


@pytest.mark.skipif(not os.environ.get("LONGCTR_ZOO"),
                    reason="set LONGCTR_ZOO to the sdist's model_zoo/LongCTR folder")
@pytest.mark.parametrize("l2_norm", [False, True])
def test_sdim_equals_the_public_sdim_in_loss_and_gradients(l2_norm, make_feature_map, tiny_dataset,
                                                           longctr_data, kwargs):
    """LongCTR's SDIM (``l2_norm`` False, its default, and True, the bench's and our default; 3
    signatures of 2 bits, so behaviours collide with the target) and ours with its random
    rotations as our projection: the same loss and gradients. Another projection gives another
    loss: the collisions matter."""
    settings = {"attention_dim": 8, "num_hashes": 3, "hash_bits": 2, "l2_norm": l2_norm}
    ours = build("SDIM", make_feature_map, {**kwargs, **settings})
    other = build("SDIM", make_feature_map, {**kwargs, **settings})
    public = public_model("SDIM", ours.feature_map, kwargs, short_seq_len=5, **settings)

    def projection(public_state):  # (1, D, hashes, bits) -> (D, hashes * bits): signature-major
        return public_state["random_rotations"][0].reshape(ours.item_dim, -1)

    def to_ours(public_state):
        return longctr_state(ours, public_state, {"item_table.embedding.": "embedding_layer."},
                             {"dnn.mlp.0.weight": ("context", "target", "long", "short")},
                             extra={"simhash.projection": projection})
    state = to_ours(public.state_dict())
    load_public((ours, other), state)
    with torch.no_grad():
        other.simhash.projection.copy_(torch.randn(other.simhash.projection.shape,
                                                   generator=torch.Generator().manual_seed(5)))
    batch, = long_rows_batches(ours, tiny_dataset, longctr_data)
    assert_parity(public, ours, other, batch, to_ours)


@pytest.mark.skipif(not os.environ.get("LONGCTR_ZOO"),
                    reason="set LONGCTR_ZOO to the sdist's model_zoo/LongCTR folder")
@pytest.mark.parametrize("softmax", [False, True])
def test_din_over_the_whole_sequence_equals_the_public_din(softmax, make_feature_map, tiny_dataset,
                                                           longctr_data, kwargs):
    """LongCTR's DIN attends over every behaviour of the batch (Dice's batch statistics over every
    padded position); ours with ``short_len`` = ``max_len`` (``DIN_full_<dataset>``) gives the same
    loss and gradients from the public weights, with sum pooling (DIN's, LongCTR's default) and
    with ``din_use_softmax``. Ours over the last 4 behaviours gives another loss."""
    ours = build("DIN", make_feature_map, kwargs, short_len=50, din_use_softmax=softmax)
    short = build("DIN", make_feature_map, kwargs, din_use_softmax=softmax)
    public = public_model("DIN", ours.feature_map, kwargs, din_use_softmax=softmax)

    def to_ours(public_state):
        return longctr_state(ours, public_state, {"item_table.embedding.": "embedding_layer.",
                                                  "short_attention.": "attention_layers."},
                             {"dnn.mlp.0.weight": ("context", "target", "pooling")})
    load_public((ours, short), to_ours(public.state_dict()))
    batch, = long_rows_batches(ours, tiny_dataset, longctr_data)
    assert_parity(public, ours, short, batch, to_ours)
