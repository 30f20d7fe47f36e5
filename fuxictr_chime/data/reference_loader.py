"""Plain reference loader (the kind the public LongCTR code uses) and a synthetic dataset.

:class:`ReferenceLongSeqLoader` is the readable baseline beside the fast
:class:`fuxictr_chime.data.loader.LongSeqDataLoader` (STYLE.md: a reference path beside
every fast path). Like reczoo LongCTR's ``ParquetDataset`` + ``BatchCollator`` it stacks all
columns of the split file in one array, then per batch looks up each row's user_info
sequence and the target's item_info row with pandas, slices and left-pads the histories
with Python lists. Unlike the public code it casts every column back to its own dtype
and returns exactly the batch dict of ARCHITECTURE.md section 3, so tests can compare the
two loaders batch by batch and the benchmark compares equal work.

:func:`write_synthetic_dataset` writes a random prepared folder (ARCHITECTURE.md section 2)
for the loader benchmark and for tests.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from ..io import write_parquet_atomic, write_yaml_atomic


class ReferenceLongSeqLoader:
    """Per-batch pandas lookups and Python padding; same batches as LongSeqDataLoader.

    Supports fixed-width list columns only. Shuffling uses the same seeded permutation as
    the fast loader (``numpy.random.default_rng((seed, epoch))``) so orders match.
    """

    def __init__(self, feature_map, data_path: str, split: str = "train", batch_size: int = 32,
                 shuffle: bool = False, *, user_info: str, item_info: str, max_len: int = 1000,
                 seed: int | None = None, **kwargs: Any) -> None:
        self.feature_map = feature_map
        self.batch_size = batch_size
        self.shuffle = shuffle and split != "test"
        self.max_len = max_len
        self.seed = 0 if seed is None else seed
        self.epoch = 0
        self.user_info = pd.read_parquet(user_info)
        self.item_info = pd.read_parquet(item_info)
        self.darray, self.column_index, self.dtypes = self.load_split(data_path)
        self.num_samples = len(self.darray)
        self.num_blocks = 1
        self.num_batches = int(np.ceil(self.num_samples / batch_size))

    def load_split(self, data_path: str):
        """All columns of the split file stacked in one float64 array (as the public code)."""
        df = pd.read_parquet(data_path)
        arrays, column_index, dtypes, idx = [], {}, {}, 0
        for col in df.columns:
            if df[col].dtype == "object":  # list column -> several array columns
                array = np.array(df[col].to_list())  # (N, d)
                column_index[col] = list(range(idx, idx + array.shape[1]))
                idx += array.shape[1]
            else:
                array = df[col].to_numpy()
                column_index[col] = idx
                idx += 1
            dtypes[col] = array.dtype
            arrays.append(array)
        return np.column_stack(arrays).astype(np.float64), column_index, dtypes

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        self.epoch += 1
        for start in range(0, self.num_samples, self.batch_size):
            yield self.collate(self.darray[order[start:start + self.batch_size]])

    def collate(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        features = self.feature_map.features
        labels = self.feature_map.labels
        batch = {}
        item_cols, user_cols = [], []
        for name, spec in features.items():
            if spec.get("source") == "item" and name in self.item_info.columns \
                    and name != "item_index":
                item_cols.append(name)
            elif spec.get("source") == "user" and name in self.user_info.columns \
                    and name != "user_index":
                user_cols.append(name)
        for col, idx in self.column_index.items():
            if col in item_cols or col in user_cols:
                continue
            if col in labels:
                batch[col] = torch.tensor(rows[:, idx].astype(np.float32))
            elif col in features:
                dtype = np.float32 if features[col]["type"] == "embedding" else self.dtypes[col]
                batch[col] = torch.tensor(rows[:, idx].astype(dtype))
        user_index = rows[:, self.column_index["user_index"]].astype(np.int64)
        item_index = rows[:, self.column_index["item_index"]].astype(np.int64)
        seq_len = rows[:, self.column_index["seq_len"]].astype(np.int64)
        # target-item features: one pandas lookup of the item_info rows
        items = self.item_info.iloc[item_index]
        for col in item_cols:
            values = np.array(items[col].to_list())  # (B,) or (B, d)
            if features[col]["type"] == "embedding":
                values = values.astype(np.float32)
            batch[col] = torch.tensor(values)
        # user features: one pandas lookup of the user_info rows
        users = self.user_info.iloc[user_index]
        for col in user_cols:
            values = np.array(users[col].to_list())  # (B, d)
            if features[col]["type"] == "embedding":
                values = values.astype(np.float32)
            batch[col] = torch.tensor(values)
        item_seq, seq_mask = self.padding_seqs(users["full_item_seq"].to_list(), seq_len)
        for row, target in zip(item_seq, item_index):
            row.append(int(target))
        batch["item_seq"] = torch.tensor(item_seq, dtype=torch.int64)  # (B, L+1)
        batch["seq_mask"] = torch.tensor(seq_mask, dtype=torch.bool)
        return batch

    def padding_seqs(self, user_seqs: list, seq_lens: np.ndarray) -> tuple[list, list]:
        """History = the last max_len of seq[:seq_len]; zeros on the left; mask True on items."""
        batch_seqs, batch_mask = [], []
        for seq, n in zip(user_seqs, seq_lens):
            history = [int(x) for x in seq[:n]][-self.max_len:]
            pad = self.max_len - len(history)
            batch_seqs.append([0] * pad + history)
            batch_mask.append([False] * pad + [True] * len(history))
        return batch_seqs, batch_mask


def write_synthetic_dataset(out_dir: str | os.PathLike, *, n_users: int = 5000,
                            n_items: int = 50000, n_samples: int = 200000,
                            max_history: int = 1000, dense_dim: int = 64,
                            n_categories: int = 100, user_dim: int = 64, seed: int = 0,
                            dataset_id: str = "synthetic") -> dict:
    """Write a random prepared folder (train.parquet, user_info, item_info, dataset_config).

    Users 1..n_users have ``full_item_seq`` of random length in [1, max_history]; items
    1..n_items have ``item_id``, ``cate_id`` (1..n_categories) and a ``title_emb`` vector
    of ``dense_dim`` floats; users carry a ``chime_hist`` vector of ``user_dim`` floats.
    Each sample draws a user, a ``seq_len`` in [0, history length], a target and a label.
    Returns the dataset block written to ``dataset_config.yaml`` (paths relative to it).
    """
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    out_dir = str(out_dir)
    lengths = np.concatenate([[0], rng.integers(1, max_history + 1, n_users)])  # row 0 padding
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    history = rng.integers(1, n_items + 1, int(lengths.sum()), dtype=np.int64)
    times = np.arange(len(history), dtype=np.int64)
    hist_vec = rng.random((n_users + 1, user_dim), dtype=np.float32)
    hist_vec[0] = 0.0
    user_info = pa.table({
        "user_index": np.arange(n_users + 1, dtype=np.int64),
        "full_item_seq": pa.ListArray.from_arrays(offsets, history),
        "full_time_seq": pa.ListArray.from_arrays(offsets, times),
        "chime_hist": _list_array(hist_vec),
    })
    emb = rng.standard_normal((n_items + 1, dense_dim), dtype=np.float32)
    emb[0] = 0.0
    cate = rng.integers(1, n_categories + 1, n_items + 1, dtype=np.int64)
    cate[0] = 0
    item_info = pa.table({
        "item_index": np.arange(n_items + 1, dtype=np.int64),
        "item_id": np.arange(n_items + 1, dtype=np.int64),
        "cate_id": cate,
        "title_emb": _list_array(emb),
    })
    user = rng.integers(1, n_users + 1, n_samples, dtype=np.int64)
    samples = pa.table({
        "user_index": user,
        "item_index": rng.integers(1, n_items + 1, n_samples, dtype=np.int64),
        "seq_len": rng.integers(0, lengths[user] + 1).astype(np.int64),
        "timestamp": np.arange(n_samples, dtype=np.int64),
        "label": (rng.random(n_samples) < 0.3).astype(np.float32),
    })
    os.makedirs(out_dir, exist_ok=True)
    write_parquet_atomic(user_info, os.path.join(out_dir, "user_info.parquet"))
    write_parquet_atomic(item_info, os.path.join(out_dir, "item_info.parquet"))
    write_parquet_atomic(samples, os.path.join(out_dir, "train.parquet"))
    block = _synthetic_config(n_items, n_categories, dense_dim, user_dim, max_history)
    write_yaml_atomic(os.path.join(out_dir, "dataset_config.yaml"), {dataset_id: block})
    return block


def _list_array(matrix: np.ndarray):
    """(N, d) array -> pyarrow list<...> column with one d-vector per row."""
    import pyarrow as pa

    n, d = matrix.shape
    offsets = np.arange(0, (n + 1) * d, d, dtype=np.int32)
    return pa.ListArray.from_arrays(offsets, matrix.reshape(-1))  # (N * d,) flat


def _synthetic_config(n_items: int, n_categories: int, dense_dim: int, user_dim: int,
                      max_len: int) -> dict:
    return {
        "data_root": "./", "data_format": "parquet", "rebuild_dataset": False,
        "train_data": "train.parquet", "valid_data": "train.parquet",
        "test_data": "train.parquet", "user_info": "user_info.parquet",
        "item_info": "item_info.parquet", "max_len": max_len,
        "feature_cols": [
            {"name": ["user_index", "item_index", "seq_len"], "active": True, "dtype": "int",
             "type": "meta"},
            {"name": "item_id", "active": True, "dtype": "int", "type": "categorical",
             "source": "item", "vocab_size": n_items + 1},
            {"name": "cate_id", "active": True, "dtype": "int", "type": "categorical",
             "source": "item", "vocab_size": n_categories + 1},
            {"name": "title_emb", "active": True, "dtype": "list", "type": "embedding",
             "source": "item", "pretrain_dim": dense_dim, "embedding_dim": 16},
            {"name": "chime_hist", "active": True, "dtype": "list", "type": "embedding",
             "source": "user", "pretrain_dim": user_dim, "embedding_dim": 16},
        ],
        "label_col": {"name": "label", "dtype": "float"},
    }
