"""Shared fixtures of the compressor tests: a tiny prepared folder and tiny backbones.

``make_prepared_dir`` simulates a small behavior log (random items, +1/-1 labels, increasing
times) and writes it in the prepared layout of ARCHITECTURE.md section 2: representation set =
actions before t1; ranking samples = actions at or after t1 (train [t1, t2) with its last part
as valid, test from t2). Some users have no action before t1 (no representation history).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fuxictr_chime.compressor.config import BackboneConfig, CHIMEConfig

T1, T2 = 1000, 1500
TINY_HIDDEN = 32


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running (skipped unless FUXICTR_CHIME_SLOW=1)")


def make_prepared_dir(tmp_path: Path, n_users: int = 6, n_items: int = 20, dense: dict | None = None,
                      seed: int = 0, *, categorical: dict | None = None, max_events: int = 12,
                      users_without_history: int = 1, dataset_id: str = "tiny") -> Path:
    """Write a prepared dataset folder under ``tmp_path / dataset_id``; returns the folder.

    Args:
        n_users: users 1..n_users; the last ``users_without_history`` act only after t1.
        n_items: items 1..n_items.
        dense: dense side vectors of item_info, name -> width (default ``{"title_emb": 8}``).
        categorical: item attributes, name -> number of values V (encoded 1..V; default
            ``{"cate_id": 5}``).
        max_events: each user has 1..max_events actions before t1 and 1..4 after.
    """
    dense = {"title_emb": 8} if dense is None else dense
    categorical = {"cate_id": 5} if categorical is None else categorical
    rng = np.random.default_rng(seed)
    folder = Path(tmp_path) / dataset_id
    folder.mkdir(parents=True, exist_ok=True)
    events = _simulate(rng, n_users, n_items, max_events, users_without_history)
    _write_item_info(folder, rng, n_items, dense, categorical)
    _write_representation(folder, events)
    full = _write_user_info(folder, events, n_users)
    counts = _write_splits(folder, events, full)
    _write_dataset_config(folder, dataset_id, n_items, n_users, dense, categorical)
    lengths = [sum(1 for e in evs if e[1] < T1) for evs in events.values()]
    summary = {"dataset": dataset_id, "users": n_users, "items": n_items, "t1": T1, "t2": T2,
               "samples": counts, "history_mean": float(np.mean(lengths)),
               "history_p90": float(np.percentile(lengths, 90))}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return folder


def _simulate(rng, n_users: int, n_items: int, max_events: int, without: int) -> dict[int, list[tuple]]:
    """user -> [(item, time, label)] in time order (ties broken by item)."""
    events = {}
    for user in range(1, n_users + 1):
        before = 0 if user > n_users - without else int(rng.integers(1, max_events + 1))
        after = int(rng.integers(1, 5))
        times = np.concatenate([np.sort(rng.integers(0, T1, before)), np.sort(rng.integers(T1, T1 + 800, after))])
        items = rng.integers(1, n_items + 1, before + after)
        labels = np.where(rng.random(before + after) < 0.6, 1, -1)
        rows = sorted(zip(items.tolist(), times.tolist(), labels.tolist()), key=lambda e: (e[1], e[0]))
        events[user] = rows
    return events


def _vectors(matrix: np.ndarray) -> pa.Array:
    return pa.array(list(matrix.astype(np.float32)), type=pa.list_(pa.float32()))


def _write_item_info(folder: Path, rng, n_items: int, dense: dict, categorical: dict) -> None:
    columns = {"item_index": pa.array(np.arange(n_items + 1), pa.int64()),
               "item_id": pa.array(np.arange(n_items + 1), pa.int64())}
    for name, values in categorical.items():
        codes = rng.integers(1, values + 1, n_items + 1)
        codes[0] = 0
        columns[name] = pa.array(codes, pa.int64())
    for name, width in dense.items():
        vectors = rng.normal(size=(n_items + 1, width)).astype(np.float32)  # (I+1, d)
        vectors[0] = 0.0
        columns[name] = _vectors(vectors)
    pq.write_table(pa.table(columns), folder / "item_info.parquet")


def _write_representation(folder: Path, events: dict) -> None:
    rows = {"user_index": [], "item_seq": [], "label_seq": [], "time_seq": []}
    for user, evs in events.items():
        before = [e for e in evs if e[1] < T1]
        if not before:
            continue
        rows["user_index"].append(user)
        rows["item_seq"].append([e[0] for e in before])
        rows["label_seq"].append([e[2] for e in before])
        rows["time_seq"].append([e[1] for e in before])
    table = pa.table({"user_index": pa.array(rows["user_index"], pa.int64()),
                      "item_seq": pa.array(rows["item_seq"], pa.list_(pa.int64())),
                      "label_seq": pa.array(rows["label_seq"], pa.list_(pa.int8())),
                      "time_seq": pa.array(rows["time_seq"], pa.list_(pa.int64()))})
    pq.write_table(table, folder / "representation.parquet")


def _write_user_info(folder: Path, events: dict, n_users: int) -> dict[int, list[tuple]]:
    full = {u: [(e[0], e[1]) for e in evs if e[2] == 1] for u, evs in events.items()}
    items = [[]] + [[i for i, _ in full[u]] for u in range(1, n_users + 1)]
    times = [[]] + [[t for _, t in full[u]] for u in range(1, n_users + 1)]
    table = pa.table({"user_index": pa.array(np.arange(n_users + 1), pa.int64()),
                      "full_item_seq": pa.array(items, pa.list_(pa.int64())),
                      "full_time_seq": pa.array(times, pa.list_(pa.int64()))})
    pq.write_table(table, folder / "user_info.parquet")
    return full


def _write_splits(folder: Path, events: dict, full: dict) -> dict[str, int]:
    samples = []
    for user, evs in events.items():
        for item, time, label in evs:
            if time >= T1:
                seq_len = sum(1 for _, t in full[user] if t < time)
                samples.append((user, item, seq_len, time, 1.0 if label == 1 else 0.0))
    samples.sort(key=lambda s: (s[3], s[0], s[1]))
    train = [s for s in samples if s[3] < T2]
    cut = max(1, int(len(train) * 0.8))
    splits = {"train": train[:cut], "valid": train[cut:], "test": [s for s in samples if s[3] >= T2]}
    for name, rows in splits.items():
        cols = list(zip(*rows)) if rows else [[] for _ in range(5)]
        table = pa.table({"user_index": pa.array(cols[0], pa.int64()), "item_index": pa.array(cols[1], pa.int64()),
                          "seq_len": pa.array(cols[2], pa.int64()), "timestamp": pa.array(cols[3], pa.int64()),
                          "label": pa.array(cols[4], pa.float32())})
        pq.write_table(table, folder / f"{name}.parquet")
    return {name: len(rows) for name, rows in splits.items()}


def _write_dataset_config(folder: Path, dataset_id: str, n_items: int, n_users: int, dense: dict,
                          categorical: dict) -> None:
    features = [{"name": ["user_index", "item_index", "seq_len"], "active": True, "dtype": "int", "type": "meta"},
                {"name": "item_id", "active": True, "dtype": "int", "type": "categorical", "source": "item",
                 "vocab_size": n_items + 1}]
    features += [{"name": name, "active": True, "dtype": "int", "type": "categorical", "source": "item",
                  "vocab_size": values + 1} for name, values in categorical.items()]
    features += [{"name": name, "active": True, "dtype": "list", "type": "embedding", "source": "item",
                  "pretrain_dim": width, "embedding_dim": 4} for name, width in dense.items()]
    block = {"data_format": "parquet", "train_data": "train.parquet", "valid_data": "valid.parquet",
             "test_data": "test.parquet", "user_info": "user_info.parquet", "item_info": "item_info.parquet",
             "rebuild_dataset": False, "feature_cols": features,
             "label_col": {"name": "label", "dtype": "float"}}
    (folder / "dataset_config.yaml").write_text(yaml.safe_dump({dataset_id: block}, sort_keys=False))


def tiny_widths(categorical: dict | None = None, dense: dict | None = None,
                hidden: int = TINY_HIDDEN) -> tuple[dict[str, int], dict[str, int]]:
    """(embedding_dims, dense_dims) that add up to ``hidden`` for the default tiny folder:
    4 per categorical attribute, 8 per dense vector, label 4, item_id the rest."""
    categorical = {"cate_id": 5} if categorical is None else categorical
    dense = {"title_emb": 8} if dense is None else dense
    emb = {name: 4 for name in categorical}
    dense_dims = {name: 8 for name in dense}
    emb["label"] = 4
    emb["item_id"] = hidden - sum(emb.values()) - sum(dense_dims.values())
    assert emb["item_id"] > 0, "tiny_widths: hidden too small for these attributes"
    return emb, dense_dims


def tiny_backbone_config(arch: str = "qwen2", **overrides) -> BackboneConfig:
    """A 2-layer, hidden-32 backbone (4 heads, 2 key-value heads), fp32, SDPA."""
    values = dict(arch=arch, hidden_size=TINY_HIDDEN, num_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, rope_theta=10000.0, bf16=False)
    values.update(overrides)
    return BackboneConfig(**values)


def tiny_chime_config(data_dir: Path, output_dir: Path | None = None) -> CHIMEConfig:
    """A CHIMEConfig for the default tiny folder: tiny backbone, widths adding up, small
    codebooks (8, 4, 4) of width 16, batches of 4 users, 3 optimizer steps."""
    emb, dense_dims = tiny_widths()
    return CHIMEConfig.from_dict({
        "backbone": tiny_backbone_config().to_dict(),
        "adaptation": {"embedding_dims": emb, "dense_dims": dense_dims},
        "compression": {"codebook_dim": 16, "codebook_sizes": [8, 4, 4]},
        "loss": {"chunk_size": 8},
        "optim": {"batch_size": 4, "grad_accum_steps": 1, "max_steps": 3, "warmup_steps": 1,
                  "eval_every": 2, "eval_users": 1, "max_len": 16, "seed": 0},
        "data_dir": str(data_dir), "output_dir": str(output_dir) if output_dir else None,
    })


@pytest.fixture
def prepared_dir(tmp_path) -> Path:
    """The default tiny prepared folder (6 users, one without history; 20 items; cate_id; title_emb 8)."""
    return make_prepared_dir(tmp_path)


@pytest.fixture
def tiny_qwen2_config():
    """A tiny ``transformers.Qwen2Config`` (3 layers, hidden 32, SDPA)."""
    from transformers import Qwen2Config

    config = Qwen2Config(vocab_size=50, hidden_size=TINY_HIDDEN, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                         max_position_embeddings=256, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    return config


@pytest.fixture
def tiny_config(prepared_dir, tmp_path) -> CHIMEConfig:
    """:func:`tiny_chime_config` on :func:`prepared_dir`, output under ``tmp_path / "run"``."""
    return tiny_chime_config(prepared_dir, tmp_path / "run")
