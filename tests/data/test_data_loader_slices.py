"""LongSeqDataLoader with time-sliced user features (``slice_column`` / ``slice_cuts``).

Each sample at time t must receive the snapshot of the latest cut c_k <= t; these tests build
user_info by hand (no compressor) and compare the loader with a per-row Python lookup.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fuxictr_chime.data.features import build_feature_map, slice_cuts_of
from fuxictr_chime.data.loader import LongSeqDataLoader, snapshot_index
from fuxictr_chime.data.reference_loader import write_synthetic_dataset
from fuxictr_chime.errors import ConfigError, DataError

WIDTH = 6
CUTS = [0, 50, 120, 200]  # sample times are 0..299 (write_synthetic_dataset: timestamp = row)


def _vectors(matrix: np.ndarray) -> pa.Array:
    n, d = matrix.shape
    offsets = np.arange(0, (n + 1) * d, d, dtype=np.int32)
    return pa.ListArray.from_arrays(offsets, matrix.reshape(-1).astype(np.float32))  # (N * d,)


def write_sliced_folder(folder, *, cuts=CUTS, seed=3) -> tuple[dict, np.ndarray]:
    """Synthetic prepared folder plus a ``chime_hist_slices`` column (snapshot 0 = chime_hist).

    Returns the dataset params (absolute paths, sliced chime_hist spec) and the snapshots
    (U+1, N, WIDTH)."""
    block = write_synthetic_dataset(folder, n_users=30, n_items=200, n_samples=300,
                                    max_history=40, dense_dim=5, user_dim=WIDTH, seed=seed)
    params = {**block, **{k: os.path.join(folder, block[k])
                          for k in ("train_data", "valid_data", "test_data", "user_info",
                                    "item_info")}}
    table = pq.read_table(params["user_info"])
    plain = np.array(table.column("chime_hist").to_pylist(), dtype=np.float32)  # (U+1, d)
    rng = np.random.default_rng(seed)
    snapshots = rng.random((len(plain), len(cuts), WIDTH), dtype=np.float32)  # (U+1, N, d)
    snapshots[:, 0] = plain
    flat = snapshots.reshape(len(plain), len(cuts) * WIDTH)  # (U+1, N*d)
    pq.write_table(table.append_column("chime_hist_slices", _vectors(flat)), params["user_info"])
    spec = next(c for c in params["feature_cols"] if c["name"] == "chime_hist")
    spec.update(slice_column="chime_hist_slices", slice_cuts=list(cuts))
    return params, snapshots


def make_loader(params, feature_map=None, **kw) -> LongSeqDataLoader:
    feature_map = feature_map or build_feature_map("synthetic", params)
    kw = {"batch_size": 64, "max_len": 8, **kw}
    return LongSeqDataLoader(feature_map, params["train_data"], split="train",
                             user_info=params["user_info"], item_info=params["item_info"], **kw)


def all_rows(loader) -> dict[str, np.ndarray]:
    batches = list(loader)
    return {k: torch.cat([b[k] for b in batches]).numpy() for k in ("user_index", "chime_hist")}


def brute_force_snapshot(snapshots, cuts, user: int, time: int) -> np.ndarray:
    """Per-row lookup: the latest cut at or before ``time``."""
    k = max(i for i, c in enumerate(cuts) if c <= time)
    return snapshots[user, k]


@pytest.mark.parametrize("shuffle", [False, True])
def test_join_equals_brute_force_per_row(tmp_path, shuffle):
    params, snapshots = write_sliced_folder(tmp_path)
    loader = make_loader(params, shuffle=shuffle, seed=7)
    order = loader.epoch_order()  # the permutation of the first epoch
    rows = all_rows(loader)
    times = pq.read_table(params["train_data"]).column("timestamp").to_numpy()[order]
    assert np.array_equal(rows["user_index"], loader._user[order])
    for b, (user, time) in enumerate(zip(rows["user_index"], times)):
        assert np.array_equal(rows["chime_hist"][b],
                              brute_force_snapshot(snapshots, CUTS, int(user), int(time)))
    used = {int(snapshot_index(np.array(CUTS), np.array([t]))[0]) for t in times}
    assert used == set(range(len(CUTS)))  # every snapshot is exercised


def test_cut_equal_to_sample_time_uses_that_cut():
    cuts = np.array([10, 20, 30], dtype=np.int64)
    times = np.array([10, 19, 20, 21, 29, 30, 99], dtype=np.int64)
    assert snapshot_index(cuts, times).tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert snapshot_index(cuts, np.array([9])).tolist() == [-1]


def test_single_cut_equals_plain_column(tmp_path):
    params, _ = write_sliced_folder(tmp_path, cuts=[0])
    sliced = all_rows(make_loader(params))
    spec = next(c for c in params["feature_cols"] if c["name"] == "chime_hist")
    del spec["slice_column"], spec["slice_cuts"]
    plain = all_rows(make_loader(params))
    assert np.array_equal(sliced["chime_hist"], plain["chime_hist"])


def test_slice_cuts_null_switches_slicing_off(tmp_path):
    params, snapshots = write_sliced_folder(tmp_path)
    fmap = build_feature_map("synthetic", params,
                             feature_specs=[{"name": "chime_hist", "slice_cuts": None}])
    assert "slice_cuts" not in fmap.features["chime_hist"]
    assert "slice_column" not in fmap.features["chime_hist"]
    rows = all_rows(make_loader(params, fmap))
    assert np.array_equal(rows["chime_hist"], snapshots[rows["user_index"], 0])


def test_batch_dtype_and_shape_unchanged(tmp_path):
    params, _ = write_sliced_folder(tmp_path)
    batch = next(iter(make_loader(params, batch_size=16)))
    assert batch["chime_hist"].dtype == torch.float32
    assert batch["chime_hist"].shape == (16, WIDTH)
    assert "timestamp" not in batch and "chime_hist_slices" not in batch


def _expect(params, *words, fmap=None) -> str:
    with pytest.raises(DataError) as err:
        make_loader(params, fmap)
    for word in words:
        assert word in str(err.value)
    return str(err.value)


def test_sample_before_first_cut_is_an_error(tmp_path):
    params, _ = write_sliced_folder(tmp_path, cuts=[5, 50])
    _expect(params, "train.parquet", "'timestamp'", "row 0", "c_1 = 5")


def test_slice_width_differs_from_cuts_times_width(tmp_path):
    params, _ = write_sliced_folder(tmp_path)
    spec = next(c for c in params["feature_cols"] if c["name"] == "chime_hist")
    spec["slice_cuts"] = CUTS[:3]  # 3 cuts but 4 snapshots stored
    _expect(params, "user_info.parquet", "'chime_hist_slices'", f"width {3 * WIDTH}")


def test_missing_slice_column(tmp_path):
    params, _ = write_sliced_folder(tmp_path)
    spec = next(c for c in params["feature_cols"] if c["name"] == "chime_hist")
    spec["slice_column"] = "nope"
    _expect(params, "user_info.parquet", "'nope'")


def test_missing_timestamp_column(tmp_path):
    params, _ = write_sliced_folder(tmp_path)
    table = pq.read_table(params["train_data"])
    pq.write_table(table.drop_columns(["timestamp"]), params["train_data"])
    _expect(params, "train.parquet", "'timestamp'")


def test_stale_slices_after_a_plain_export(tmp_path):
    params, snapshots = write_sliced_folder(tmp_path)
    table = pq.read_table(params["user_info"])
    fresh = snapshots[:, 0] + 1.0  # a newer plain export rewrote chime_hist only
    table = table.set_column(table.column_names.index("chime_hist"), "chime_hist", _vectors(fresh))
    pq.write_table(table, params["user_info"])
    message = _expect(params, "'chime_hist_slices'", "stale")
    assert "slice_cuts: null" in message


@pytest.mark.parametrize("update, words", [
    ({"slice_cuts": [0, 50, 50]}, ["strictly increasing"]),
    ({"slice_cuts": [0, 2.5]}, ["integer"]),
    ({"slice_cuts": []}, ["non-empty"]),
    ({"slice_column": None}, ["go together"]),
    ({"source": "item"}, ["source: user"]),
])
def test_bad_slice_spec_names_the_feature(tmp_path, update, words):
    params, _ = write_sliced_folder(tmp_path)
    spec = next(c for c in params["feature_cols"] if c["name"] == "chime_hist")
    spec.update(update)
    with pytest.raises(ConfigError) as err:
        build_feature_map("synthetic", params)
    for word in ["'chime_hist'", *words]:
        assert word in str(err.value)


def test_slice_cuts_of_plain_spec_is_none():
    assert slice_cuts_of("x", {"type": "embedding", "source": "user"}) is None
    cuts = slice_cuts_of("x", {"type": "embedding", "source": "user", "slice_column": "x_slices",
                               "slice_cuts": [np.int64(3), 7]})
    assert cuts.dtype == np.int64 and cuts.tolist() == [3, 7]


def test_fuxictr_embedding_layer_consumes_sliced_feature(tmp_path):
    """FuxiCTR's FeatureEmbedding ignores the extra spec keys; the sliced vector trains as usual."""
    from fuxictr.pytorch.layers import FeatureEmbedding

    params, snapshots = write_sliced_folder(tmp_path)
    fmap = build_feature_map("synthetic", params, embedding_dim=4)
    layer = FeatureEmbedding(fmap, 4)
    batch = next(iter(make_loader(params, fmap, batch_size=16)))
    inputs = {name: batch[name] for name in ("item_id", "cate_id", "title_emb", "chime_hist")}
    out = layer(inputs, flatten_emb=True)  # (B, sum of embedding dims)
    assert out.shape == (16, fmap.sum_emb_out_dim())
    out.sum().backward()
    assert layer.embedding_layer.feature_encoders["chime_hist"].weight.grad is not None
