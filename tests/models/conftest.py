"""Tiny prepared dataset, feature maps, batches and model settings for the model tests.

Everything is random and tiny (40 items, 10 users, histories up to 30) and written to a
temporary folder in the layout of ARCHITECTURE.md section 2: ``item_info.parquet``
(``item_id``, ``cate_id``, a 6-d ``title_emb``), ``user_info.parquet`` (``full_item_seq``,
``chime_hist``, ``learn_emb``, the controls ``hist_ctrl`` (64-d) and ``stats_ctrl`` (2-d)),
``train/valid/test.parquet`` (with an ``hour`` context
column). Fixtures:

* ``tiny_dataset``: namespace with ``folder``, ``params`` (FuxiCTR dataset block, paths
  absolute; ``chime_hist`` / ``learn_emb`` / ``hist_ctrl`` / ``stats_ctrl`` declared inactive)
  and the item/user arrays;
* ``make_feature_map(chime=False, learn=False, context=True, hist=False, stats=False)``: a
  FuxiCTR FeatureMap built
  by ``fuxictr_chime.data.features.build_feature_map``;
* ``make_batch(feature_map, batch_size=6, length=12, seed=0, lengths=None)``: a batch dict
  as ``LongSeqDataLoader`` yields it (left-padded ``item_seq`` with the target last);
* ``model_kwargs``: tiny model settings (``model_root`` in ``tmp_path``).
"""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

N_ITEMS, N_CATES, TITLE_DIM, N_USERS, N_HOURS, USER_DIM = 40, 5, 6, 10, 24, 64
STATS_DIM = 2  # stats_ctrl: [positive rate, log(1 + history length)]
MAX_HISTORY = 30


def vector_column(matrix: np.ndarray) -> pa.Array:
    n, d = matrix.shape
    offsets = np.arange(0, (n + 1) * d, d, dtype=np.int32)
    return pa.ListArray.from_arrays(offsets, matrix.astype(np.float32).reshape(-1))


def write_item_info(folder: Path, rng: np.random.Generator, n_items: int, n_cates: int,
                    title_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Write ``item_info.parquet`` for items 1..n_items (row 0 = padding) with a random
    ``cate_id`` in 1..n_cates and a Gaussian ``title_emb``; return (cate, title)."""
    cate = np.concatenate([[0], rng.integers(1, n_cates + 1, n_items)]).astype(np.int64)
    title = rng.standard_normal((n_items + 1, title_dim)).astype(np.float32)
    title[0] = 0.0
    pq.write_table(pa.table({"item_index": np.arange(n_items + 1, dtype=np.int64),
                             "item_id": np.arange(n_items + 1, dtype=np.int64),
                             "cate_id": cate, "title_emb": vector_column(title)}),
                   folder / "item_info.parquet")
    return cate, title


def write_tiny_dataset(folder: Path, seed: int = 0) -> types.SimpleNamespace:
    """Write the tiny prepared folder; return its dataset block and arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cate, title = write_item_info(folder, rng, N_ITEMS, N_CATES, TITLE_DIM)
    lengths = np.concatenate([[0], rng.integers(0, MAX_HISTORY + 1, N_USERS)])
    seqs = [rng.integers(1, N_ITEMS + 1, n).tolist() for n in lengths]
    chime = rng.random((N_USERS + 1, USER_DIM)).astype(np.float32)
    learn = rng.standard_normal((N_USERS + 1, USER_DIM)).astype(np.float32)
    chime[0] = learn[0] = 0.0
    controls = np.random.default_rng(seed + 100)  # own stream: the draws above and below are unchanged
    hist = controls.random((N_USERS + 1, USER_DIM)).astype(np.float32)
    stats = controls.random((N_USERS + 1, STATS_DIM)).astype(np.float32)
    hist[0] = stats[0] = 0.0
    pq.write_table(pa.table({"user_index": np.arange(N_USERS + 1, dtype=np.int64),
                             "full_item_seq": pa.array(seqs, pa.list_(pa.int64())),
                             "chime_hist": vector_column(chime), "learn_emb": vector_column(learn),
                             "hist_ctrl": vector_column(hist), "stats_ctrl": vector_column(stats)}),
                   folder / "user_info.parquet")
    for split, n in (("train", 96), ("valid", 32), ("test", 32)):
        users = rng.integers(1, N_USERS + 1, n)
        items = rng.integers(1, N_ITEMS + 1, n)
        labels = (cate[items] <= 2).astype(np.float32)
        labels[:2] = [0.0, 1.0]  # both classes present
        pq.write_table(pa.table({
            "user_index": users.astype(np.int64), "item_index": items.astype(np.int64),
            "seq_len": rng.integers(0, lengths[users] + 1).astype(np.int64),
            "timestamp": np.arange(n, dtype=np.int64),
            "hour": rng.integers(0, N_HOURS, n).astype(np.int64), "label": labels}),
            folder / f"{split}.parquet")
    return types.SimpleNamespace(folder=folder, params=dataset_block(folder), cate=cate,
                                 title=title, chime=chime, learn=learn, hist=hist, stats=stats,
                                 seqs=seqs)


def dataset_block(folder: Path) -> dict:
    """FuxiCTR dataset block of the tiny folder (absolute paths)."""
    return {
        "data_root": str(folder.parent), "data_format": "parquet", "rebuild_dataset": False,
        "train_data": str(folder / "train.parquet"), "valid_data": str(folder / "valid.parquet"),
        "test_data": str(folder / "test.parquet"), "user_info": str(folder / "user_info.parquet"),
        "item_info": str(folder / "item_info.parquet"), "group_id": "user_index",
        "feature_cols": [
            {"name": ["user_index", "item_index", "seq_len"], "active": True, "dtype": "int",
             "type": "meta"},
            {"name": "hour", "active": True, "dtype": "int", "type": "categorical",
             "source": "context", "vocab_size": N_HOURS},
            {"name": "item_id", "active": True, "dtype": "int", "type": "categorical",
             "source": "item", "vocab_size": N_ITEMS + 1},
            {"name": "cate_id", "active": True, "dtype": "int", "type": "categorical",
             "source": "item", "vocab_size": N_CATES + 1},
            {"name": "title_emb", "active": True, "dtype": "list", "type": "embedding",
             "source": "item", "pretrain_dim": TITLE_DIM, "embedding_dim": 4},
            {"name": "chime_hist", "active": False, "dtype": "list", "type": "embedding",
             "source": "user", "pretrain_dim": USER_DIM, "embedding_dim": 4},
            {"name": "learn_emb", "active": False, "dtype": "list", "type": "embedding",
             "source": "user", "pretrain_dim": USER_DIM, "embedding_dim": 4},
            {"name": "hist_ctrl", "active": False, "dtype": "list", "type": "embedding",
             "source": "user", "pretrain_dim": USER_DIM, "embedding_dim": 4},
            {"name": "stats_ctrl", "active": False, "dtype": "list", "type": "embedding",
             "source": "user", "pretrain_dim": STATS_DIM, "embedding_dim": 4},
        ],
        "label_col": {"name": "label", "dtype": "float"},
    }


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> types.SimpleNamespace:
    return write_tiny_dataset(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def make_feature_map(tiny_dataset):
    """``make_feature_map(chime=False, learn=False, context=True, hist=False, stats=False)`` ->
    FuxiCTR FeatureMap."""
    from fuxictr_chime.data.features import build_feature_map

    def make(chime: bool = False, learn: bool = False, context: bool = True, hist: bool = False,
             stats: bool = False):
        specs = [{"name": "chime_hist", "active": chime}, {"name": "learn_emb", "active": learn},
                 {"name": "hour", "active": context}, {"name": "hist_ctrl", "active": hist},
                 {"name": "stats_ctrl", "active": stats}]
        return build_feature_map("tiny", tiny_dataset.params, embedding_dim=4,
                                 feature_specs=specs)
    return make


@pytest.fixture
def make_batch(tiny_dataset):
    """``make_batch(feature_map, batch_size=6, length=12, seed=0, lengths=None)``.

    Histories are random items, ``lengths[b]`` valid positions (default random in
    0..length) left-padded to ``length``; the target is ``item_seq[:, -1]``. Every column
    of the feature map is present, as the long-sequence loader delivers it.
    """
    def make(feature_map, batch_size: int = 6, length: int = 12, seed: int = 0,
             lengths=None) -> dict:
        gen = torch.Generator().manual_seed(seed)
        if lengths is None:
            lengths = torch.randint(0, length + 1, (batch_size,), generator=gen)
        lengths = torch.as_tensor(lengths, dtype=torch.int64)
        batch_size = len(lengths)
        items = torch.randint(1, N_ITEMS + 1, (batch_size, length + 1), generator=gen)
        mask = torch.arange(length).unsqueeze(0) >= (length - lengths).unsqueeze(1)  # (B, L)
        items[:, :-1] = items[:, :-1] * mask  # left padding = item 0
        users = torch.randint(1, N_USERS + 1, (batch_size,), generator=gen)
        target = items[:, -1]
        batch = {"user_index": users, "item_index": target.clone(), "seq_len": lengths,
                 "label": torch.randint(0, 2, (batch_size,), generator=gen).float(),
                 "item_id": target.clone(),
                 "cate_id": torch.from_numpy(tiny_dataset.cate)[target],
                 "title_emb": torch.from_numpy(tiny_dataset.title)[target],
                 "hour": torch.randint(0, N_HOURS, (batch_size,), generator=gen),
                 "chime_hist": torch.from_numpy(tiny_dataset.chime)[users],
                 "learn_emb": torch.from_numpy(tiny_dataset.learn)[users],
                 "hist_ctrl": torch.from_numpy(tiny_dataset.hist)[users],
                 "stats_ctrl": torch.from_numpy(tiny_dataset.stats)[users],
                 "item_seq": items, "seq_mask": mask}
        keep = set(feature_map.features) | set(feature_map.labels)
        return {k: v for k, v in batch.items() if k in keep}
    return make


def left_pad(batch: dict, extra: int) -> dict:
    """The same batch with ``extra`` more masked (padding) positions on the left."""
    out = dict(batch)
    b = batch["item_seq"].shape[0]
    out["item_seq"] = torch.cat([torch.zeros(b, extra, dtype=torch.int64), batch["item_seq"]], 1)
    out["seq_mask"] = torch.cat([torch.zeros(b, extra, dtype=torch.bool), batch["seq_mask"]], 1)
    return out


@pytest.fixture
def model_kwargs(tmp_path, tiny_dataset) -> dict:
    """Tiny settings accepted by every registered model."""
    return {"model_root": str(tmp_path / "ckpt"), "item_info": tiny_dataset.params["item_info"],
            "embedding_dim": 4, "dnn_hidden_units": [8], "attention_hidden_units": [8],
            "attention_dim": 8, "num_heads": 2, "topk": 5, "short_len": 4, "max_len": 50,
            "hash_bits": 3, "num_hashes": 12, "sync_every": 3, "learning_rate": 1.e-2,
            "optimizer": "adam", "loss": "binary_crossentropy", "metrics": ["AUC", "logloss"],
            "verbose": 0, "seed": 11}
