"""Dataset-config loading, path resolution and FeatureMap building (ARCHITECTURE.md section 4)."""
from __future__ import annotations

import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fuxictr_chime.data.features import (build_feature_map, load_dataset_params,
                                         resolve_dataset_paths)
from fuxictr_chime.errors import ConfigError, DataError

META = {"name": ["user_index", "item_index", "seq_len"], "active": True, "dtype": "int",
        "type": "meta"}
LABEL = {"name": "label", "dtype": "float"}


def write_item_info(path, n_items=6, width=3):
    table = pa.table({
        "item_index": pa.array(range(n_items + 1), pa.int64()),
        "item_id": pa.array(range(n_items + 1), pa.int64()),
        "cate_id": pa.array([0] + [1 + i % 4 for i in range(n_items)], pa.int64()),
        "tags": pa.array([[0, 0]] + [[i, i + 7] for i in range(n_items)], pa.list_(pa.int64())),
        "image_emb": pa.array([[0.0] * width] * (n_items + 1), pa.list_(pa.float32())),
    })
    pq.write_table(table, path)
    return str(path)


def params_with(*cols, **extra):
    return {"feature_cols": [META, *cols], "label_col": LABEL, **extra}


# ------------------------------------------------------------------------- paths and configs
def test_resolve_paths_against_real_folder_of_symlinked_yaml(tmp_path):
    real = tmp_path / "repo" / "dataset_configs"
    real.mkdir(parents=True)
    (tmp_path / "repo" / "model_zoo" / "DIN" / "config").mkdir(parents=True)
    link = tmp_path / "repo" / "model_zoo" / "DIN" / "config" / "dataset_config"
    os.symlink(real, link)
    config_file = link / "movielens.yaml"
    config_file.write_text("x: 1\n")
    params = {"train_data": "../data/movielens/train.parquet", "test_data": "/abs/test.parquet",
              "item_info": "", "data_root": "../data/", "max_len": 1000}
    resolved = resolve_dataset_paths(params, config_file)
    data = os.path.realpath(tmp_path / "repo" / "data")
    assert resolved["train_data"] == os.path.join(data, "movielens", "train.parquet")
    assert resolved["data_root"] == data
    assert resolved["test_data"] == "/abs/test.parquet"
    assert resolved["item_info"] == "" and resolved["max_len"] == 1000
    assert params["train_data"] == "../data/movielens/train.parquet"  # input not modified


def _block(**kw):
    return {"train_data": "train.parquet", "feature_cols": [META], "label_col": LABEL, **kw}


def test_load_dataset_params_from_dataset_config_yaml(tmp_path):
    (tmp_path / "dataset_config.yaml").write_text(yaml.safe_dump({"a": _block(), "b": _block()}))
    params = load_dataset_params(tmp_path, "b")
    assert params["dataset_id"] == "b"
    assert params["train_data"] == os.path.join(os.path.realpath(tmp_path), "train.parquet")


def test_load_dataset_params_from_folder_of_yamls_and_from_file(tmp_path):
    folder = tmp_path / "dataset_config"
    folder.mkdir()
    (folder / "one.yaml").write_text(yaml.safe_dump({"one": _block()}))
    (folder / "two.yaml").write_text(yaml.safe_dump({"two": _block(user_info="../u.parquet")}))
    params = load_dataset_params(tmp_path, "two")
    assert params["user_info"] == os.path.join(os.path.realpath(tmp_path), "u.parquet")
    assert load_dataset_params(folder / "one.yaml", "one")["dataset_id"] == "one"


def test_unknown_dataset_id_lists_known_ones(tmp_path):
    (tmp_path / "dataset_config.yaml").write_text(yaml.safe_dump({"a": _block()}))
    with pytest.raises(ConfigError, match=r"'zzz' not found.*\['a'\]"):
        load_dataset_params(tmp_path, "zzz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no dataset_config.yaml"):
        load_dataset_params(tmp_path / "empty", "a")
    with pytest.raises(ConfigError, match="neither a file nor a folder"):
        load_dataset_params(tmp_path / "missing", "a")


# ------------------------------------------------------------------------------ feature map
def test_feature_map_as_fuxictr_expects(tmp_path):
    params = params_with(
        {"name": ["hour", "weekday"], "active": True, "dtype": "int", "type": "categorical",
         "vocab_size": 25, "embedding_dim": 6},
        {"name": "price", "active": True, "dtype": "float", "type": "numeric"},
        {"name": "unused", "active": False, "dtype": "int", "type": "categorical",
         "vocab_size": 3},
        {"name": "chime_hist", "active": True, "dtype": "list", "type": "embedding",
         "source": "user", "pretrain_dim": 64, "embedding_dim": 16},
        train_data=str(tmp_path / "d" / "train.parquet"), group_id="user_index",
        embedding_dim=8)
    fmap = build_feature_map("toy", params)
    assert list(fmap.features) == ["user_index", "item_index", "seq_len", "hour", "weekday",
                                   "price", "chime_hist", "item_seq", "seq_mask"]
    assert fmap.features["weekday"] == {"source": "", "type": "categorical",
                                        "embedding_dim": 6, "vocab_size": 25, "padding_idx": 0}
    assert fmap.features["chime_hist"] == {"source": "user", "type": "embedding",
                                           "embedding_dim": 16, "pretrain_dim": 64}
    assert fmap.features["item_seq"]["type"] == fmap.features["seq_mask"]["type"] == "meta"
    assert fmap.labels == ["label"] and fmap.group_id == "user_index"
    assert fmap.dataset_id == "toy" and fmap.default_emb_dim == 8
    assert fmap.data_dir == str(tmp_path / "d")
    assert fmap.num_fields == 4  # hour, weekday, price, chime_hist
    assert fmap.sum_emb_out_dim() == 6 + 6 + 8 + 16
    # column index: 5 meta + 2 categorical + 1 numeric = 8 scalars, then 64 for chime_hist
    assert fmap.column_index["chime_hist"] == list(range(6, 70))
    assert fmap.input_length == 72 and fmap.column_index["label"] == 72


def test_fuxictr_embedding_layer_builds_from_map():
    import torch
    from fuxictr.pytorch.layers import FeatureEmbedding

    params = params_with(
        {"name": "hour", "active": True, "dtype": "int", "type": "categorical",
         "vocab_size": 25},
        {"name": "chime_hist", "active": True, "dtype": "list", "type": "embedding",
         "source": "user", "pretrain_dim": 64, "embedding_dim": 16})
    fmap = build_feature_map("toy", params, embedding_dim=4)
    layer = FeatureEmbedding(fmap, 4)
    out = layer({"hour": torch.tensor([0, 3]), "chime_hist": torch.rand(2, 64)},
                flatten_emb=True)
    assert out.shape == (2, 4 + 16)  # (B, sum of embedding dims)
    assert torch.equal(out[0, :4], torch.zeros(4))  # padding_idx 0


def test_vocab_size_and_pretrain_dim_read_from_item_info(tmp_path, caplog):
    item_info = write_item_info(tmp_path / "item_info.parquet", n_items=6, width=5)
    params = params_with(
        {"name": ["item_id", "cate_id"], "active": True, "dtype": "int", "type": "categorical",
         "source": "item"},
        {"name": "tags", "active": True, "dtype": "int", "type": "sequence", "source": "item",
         "max_len": 2},
        {"name": "image_emb", "active": True, "dtype": "float", "type": "embedding",
         "source": "item", "embedding_dim": 5, "feature_encoder": "nn.Identity()"},
        item_info=item_info)
    with caplog.at_level(logging.INFO, logger="fuxictr_chime.data.features"):
        fmap = build_feature_map("toy", params)
    assert fmap.features["item_id"]["vocab_size"] == 7  # max 6 + 1
    assert fmap.features["cate_id"]["vocab_size"] == 5  # max 4 + 1
    assert fmap.features["tags"]["vocab_size"] == 13  # max 5 + 7 + 1
    assert fmap.features["tags"]["feature_encoder"] == "layers.MaskedAveragePooling()"
    assert fmap.features["image_emb"]["pretrain_dim"] == 5
    assert "vocab_size 7 computed from" in caplog.text
    assert "pretrain_dim 5 read from" in caplog.text


def test_published_longctr_config_builds(tmp_path):
    """reczoo LongCTR's MicroVideo1.7M_x2 block (benchmark/DCNv2_microvideo1.7m_x2/...yaml),
    with the dense column's width shrunk to 3: dtype float and no pretrain_dim."""
    text = """
MicroVideo1.7M_x2:
    data_root: ./data/
    data_format: parquet
    train_data: ./data/MicroVideo1.7M_x2/train.parquet
    item_info: ./data/MicroVideo1.7M_x2/item_info.parquet
    rebuild_dataset: False
    feature_cols:
        - {name: user_index, active: True, dtype: int, type: meta}
        - {name: item_index, active: True, dtype: int, type: meta}
        - {name: seq_len, active: True, dtype: int, type: meta}
        - {name: item_id, active: True, dtype: int, type: categorical, vocab_size: 24323, source: item}
        - {name: cate_id, active: True, dtype: int, type: categorical, vocab_size: 514, source: item}
        - {name: image_emb, active: True, dtype: float, type: embedding, source: item,
           embedding_dim: 64, feature_encoder: "nn.Identity()"}
    label_col: {name: is_click, dtype: float}
"""
    (tmp_path / "dataset_config.yaml").write_text(text)
    (tmp_path / "data" / "MicroVideo1.7M_x2").mkdir(parents=True)
    write_item_info(tmp_path / "data" / "MicroVideo1.7M_x2" / "item_info.parquet", width=3)
    params = load_dataset_params(tmp_path, "MicroVideo1.7M_x2")
    fmap = build_feature_map("MicroVideo1.7M_x2", params, group_id="user_index")
    assert fmap.labels == ["is_click"]
    assert fmap.features["image_emb"]["pretrain_dim"] == 3
    assert fmap.features["item_id"]["vocab_size"] == 24323
    assert fmap.data_dir == os.path.join(os.path.realpath(tmp_path), "data", "MicroVideo1.7M_x2")


def test_feature_specs_switch_on_exported_column():
    params = params_with({"name": "chime_hist", "active": False, "dtype": "list",
                          "type": "embedding", "source": "user", "pretrain_dim": 64})
    assert "chime_hist" not in build_feature_map("toy", params).features
    fmap = build_feature_map("toy", params, feature_specs=[{"name": "chime_hist",
                                                            "active": True, "embedding_dim": 8}])
    assert fmap.features["chime_hist"]["embedding_dim"] == 8
    assert params["feature_cols"][1]["active"] is False  # caller's config untouched
    with pytest.raises(ConfigError, match="'nope'"):
        build_feature_map("toy", params, feature_specs=[{"name": "nope", "active": True}])


def test_share_embedding_uses_larger_vocab():
    params = params_with(
        {"name": "a", "active": True, "dtype": "int", "type": "categorical", "vocab_size": 5},
        {"name": "b", "active": True, "dtype": "int", "type": "categorical", "vocab_size": 9,
         "share_embedding": "a"})
    fmap = build_feature_map("toy", params)
    assert fmap.features["a"]["vocab_size"] == fmap.features["b"]["vocab_size"] == 9


@pytest.mark.parametrize("col, words", [
    ({"name": "img", "active": True, "dtype": "list", "type": "embedding", "source": "user"},
     ["'img'", "pretrain_dim"]),
    ({"name": "hour", "active": True, "dtype": "int", "vocab_size": 3}, ["'hour'", "'type'"]),
    ({"name": "hour", "active": True, "type": "dense"}, ["'hour'", "unknown type"]),
    ({"name": "hour", "dtype": "int", "type": "categorical", "vocab_size": 3},
     ["'hour'", "'active'"]),
    ({"name": "tags", "active": True, "type": "sequence", "vocab_size": 3},
     ["'tags'", "max_len"]),
    ({"name": "cate", "active": True, "type": "categorical"}, ["'cate'", "vocab_size",
                                                               "source: item"]),
    ({"name": "cate", "active": True, "type": "categorical", "vocab_size": 3,
      "pretrained_emb": "x.h5"}, ["'cate'", "pretrained_emb"]),
    ({"name": "item_seq", "active": True, "type": "categorical", "vocab_size": 3},
     ["'item_seq'", "reserved"]),
])
def test_bad_feature_spec_names_the_feature(col, words):
    with pytest.raises(ConfigError) as err:
        build_feature_map("toy", params_with(col))
    for word in words:
        assert word in str(err.value)


def test_bad_top_level_config():
    with pytest.raises(ConfigError, match="feature_cols"):
        build_feature_map("toy", {"label_col": LABEL})
    with pytest.raises(ConfigError, match="label_col"):
        build_feature_map("toy", {"feature_cols": [META]})
    with pytest.raises(ConfigError, match="group_id 'user_id'"):
        build_feature_map("toy", params_with(), group_id="user_id")


def test_item_info_column_missing_for_inferred_vocab(tmp_path):
    item_info = write_item_info(tmp_path / "item_info.parquet")
    params = params_with({"name": "brand", "active": True, "type": "categorical",
                          "source": "item"}, item_info=item_info)
    with pytest.raises(DataError, match=r"item_info.parquet: no column 'brand'"):
        build_feature_map("toy", params)
