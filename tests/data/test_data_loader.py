"""LongSeqDataLoader: history window, padding, dtypes, joins, FuxiCTR integration, bad input."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fuxictr_chime.data.features import build_feature_map
from fuxictr_chime.data.loader import LongSeqDataLoader, UserHistories, gather_history
from fuxictr_chime.data.reference_loader import ReferenceLongSeqLoader, write_synthetic_dataset
from fuxictr_chime.errors import DataError

# A tiny behavior log (user, item, time, label): the prepared folder below is written by hand
# from it, with t1 = 3 (samples = every action at or after t1).
EVENTS = [
    (1, 3, 1, +1), (1, 5, 2, -1), (1, 2, 3, +1), (1, 4, 3, +1), (1, 1, 5, +1),
    (2, 2, 1, -1), (2, 4, 2, +1), (2, 5, 4, -1),
    (3, 1, 4, -1),
]
T1 = 3
# user_index -> all positive items, time order (ties by item)
FULL_ITEM_SEQ = [[], [3, 2, 4, 1], [4], []]
# samples: (user, item, time, label, seq_len = positives strictly before time, hour)
SAMPLES = [(1, 2, 3, 1.0, 1, 7), (1, 4, 3, 1.0, 1, 8), (2, 5, 4, 0.0, 1, 9),
           (3, 1, 4, 0.0, 0, 10), (1, 1, 5, 1.0, 3, 11)]
N_ITEMS = 5
TITLE = np.arange((N_ITEMS + 1) * 3, dtype=np.float32).reshape(N_ITEMS + 1, 3) / 10  # (I+1, 3)
TITLE[0] = 0.0
CHIME = np.arange(4 * 4, dtype=np.float32).reshape(4, 4) + 0.5  # (U+1, 4)
CATE = np.array([0, 1, 2, 1, 3, 2], dtype=np.int64)


def _vectors(matrix: np.ndarray) -> pa.Array:
    return pa.array([list(map(float, row)) for row in matrix], type=pa.list_(pa.float32()))


def write_tiny_folder(folder, *, samples=SAMPLES, full_item_seq=FULL_ITEM_SEQ, title=TITLE,
                      chime=CHIME, with_chime=True) -> dict:
    """Write the prepared layout of ARCHITECTURE.md section 2 by hand; return dataset params."""
    folder = str(folder)
    cols = list(zip(*samples))
    split = pa.table({
        "user_index": pa.array(cols[0], pa.int64()), "item_index": pa.array(cols[1], pa.int64()),
        "seq_len": pa.array(cols[4], pa.int64()), "timestamp": pa.array(cols[2], pa.int64()),
        "label": pa.array(cols[3], pa.float32()), "hour": pa.array(cols[5], pa.int32()),
        "price": pa.array([float(i) / 4 for i in range(len(samples))], pa.float32()),
    })
    user = {"user_index": pa.array(range(len(full_item_seq)), pa.int64()),
            "full_item_seq": pa.array(full_item_seq, pa.list_(pa.int64()))}
    if with_chime:
        user["chime_hist"] = _vectors(chime)
    item = pa.table({"item_index": pa.array(range(len(title)), pa.int64()),
                     "item_id": pa.array(range(len(title)), pa.int64()),
                     "cate_id": pa.array(CATE[:len(title)], pa.int64()),
                     "title_emb": _vectors(title)})
    pq.write_table(split, os.path.join(folder, "train.parquet"))
    pq.write_table(split, os.path.join(folder, "valid.parquet"))
    pq.write_table(pa.table(user), os.path.join(folder, "user_info.parquet"))
    pq.write_table(item, os.path.join(folder, "item_info.parquet"))
    return tiny_params(folder)


def tiny_params(folder) -> dict:
    return {
        "train_data": os.path.join(folder, "train.parquet"),
        "valid_data": os.path.join(folder, "valid.parquet"),
        "user_info": os.path.join(folder, "user_info.parquet"),
        "item_info": os.path.join(folder, "item_info.parquet"),
        "feature_cols": [
            {"name": ["user_index", "item_index", "seq_len"], "active": True, "dtype": "int",
             "type": "meta"},
            {"name": "hour", "active": True, "dtype": "int", "type": "categorical",
             "vocab_size": 24},
            {"name": "price", "active": True, "dtype": "float", "type": "numeric"},
            {"name": "item_id", "active": True, "dtype": "int", "type": "categorical",
             "source": "item", "vocab_size": N_ITEMS + 1},
            {"name": "cate_id", "active": True, "dtype": "int", "type": "categorical",
             "source": "item", "vocab_size": 4},
            {"name": "title_emb", "active": True, "dtype": "list", "type": "embedding",
             "source": "item", "pretrain_dim": 3, "embedding_dim": 4},
            {"name": "chime_hist", "active": True, "dtype": "list", "type": "embedding",
             "source": "user", "pretrain_dim": 4, "embedding_dim": 4},
        ],
        "label_col": {"name": "label", "dtype": "float"},
    }


@pytest.fixture
def tiny(tmp_path):
    params = write_tiny_folder(tmp_path)
    return params, build_feature_map("tiny", params, embedding_dim=4, group_id="user_index")


def make_loader(params, feature_map, *, max_len=3, batch_size=8, split="train", **kw):
    return LongSeqDataLoader(feature_map, params[f"{split}_data"], split=split,
                             batch_size=batch_size, user_info=params["user_info"],
                             item_info=params["item_info"], max_len=max_len, **kw)


def one_batch(params, feature_map, **kw) -> dict:
    batches = list(make_loader(params, feature_map, **kw))
    assert len(batches) == 1
    return batches[0]


def test_left_padding_mask_and_target_position(tiny):
    batch = one_batch(*tiny, max_len=3)
    expected = torch.tensor([[0, 0, 3, 2], [0, 0, 3, 4], [0, 0, 4, 5], [0, 0, 0, 1],
                             [3, 2, 4, 1]])
    assert torch.equal(batch["item_seq"], expected)
    assert torch.equal(batch["item_seq"][:, -1], batch["item_index"])
    assert torch.equal(batch["seq_mask"], expected[:, :-1] > 0)
    assert batch["seq_mask"].dtype == torch.bool


def test_history_is_positives_strictly_before_sample(tiny):
    assert sorted((u, i, t) for u, i, t, *_ in SAMPLES) == sorted(
        (u, i, t) for u, i, t, _ in EVENTS if t >= T1)  # fixture: samples = actions >= t1
    batch = one_batch(*tiny, max_len=10)
    for row, (user, _, time, *_rest) in enumerate(SAMPLES):
        before = sorted((t, i) for u, i, t, y in EVENTS if u == user and y > 0 and t < time)
        history = batch["item_seq"][row, :-1][batch["seq_mask"][row]].tolist()
        assert history == [i for _, i in before]


def test_truncation_keeps_most_recent(tiny):
    batch = one_batch(*tiny, max_len=2)
    assert batch["item_seq"][4].tolist() == [2, 4, 1]  # history [3, 2, 4] -> last two
    assert batch["seq_mask"][4].tolist() == [True, True]
    assert batch["seq_mask"][3].tolist() == [False, False]  # seq_len 0


def test_dtypes_and_shapes_per_column(tiny):
    batch = one_batch(*tiny)
    expected = {"user_index": torch.int64, "item_index": torch.int64, "seq_len": torch.int64,
                "hour": torch.int32, "price": torch.float32, "label": torch.float32,
                "item_id": torch.int64, "cate_id": torch.int64, "title_emb": torch.float32,
                "chime_hist": torch.float32, "item_seq": torch.int64, "seq_mask": torch.bool}
    assert {k: v.dtype for k, v in batch.items()} == expected
    assert batch["title_emb"].shape == (5, 3) and batch["chime_hist"].shape == (5, 4)
    assert "timestamp" not in batch  # not a feature: BaseModel.get_inputs would KeyError


def test_item_and_user_columns_joined_by_index(tiny):
    batch = one_batch(*tiny)
    users = np.array([s[0] for s in SAMPLES])
    items = np.array([s[1] for s in SAMPLES])
    assert np.array_equal(batch["chime_hist"].numpy(), CHIME[users])
    assert np.array_equal(batch["title_emb"].numpy(), TITLE[items])
    assert np.array_equal(batch["cate_id"].numpy(), CATE[items])
    assert np.array_equal(batch["item_id"].numpy(), items)
    assert batch["hour"].tolist() == [s[5] for s in SAMPLES]


def test_item_sequence_feature_padded_to_max_len(tiny):
    """An Ebnerd-style ``type: sequence, source: item`` column (ragged lists in item_info)."""
    params, fmap = tiny
    tags = [[], [1], [2, 3, 4], [4, 5, 6], [7], [8, 9]]
    table = pq.read_table(params["item_info"])
    pq.write_table(table.append_column("tags", pa.array(tags, pa.list_(pa.int64()))),
                   params["item_info"])
    params["feature_cols"].append({"name": "tags", "active": True, "type": "sequence",
                                   "source": "item", "max_len": 2, "vocab_size": 10})
    batch = one_batch(params, build_feature_map("tiny", params))
    padded = {1: [1, 0], 2: [2, 3], 4: [7, 0], 5: [8, 9]}  # item -> tags, padded/cut at the end
    assert batch["tags"].dtype == torch.int64
    assert batch["tags"].tolist() == [padded[s[1]] for s in SAMPLES]


def test_gather_history_matches_plain_slicing():
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(1, 50, n)) for n in rng.integers(0, 30, 40)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    hist = UserHistories(np.concatenate(seqs).astype(np.int64), offsets)
    user = rng.integers(0, len(seqs), 200)
    seq_len = np.array([rng.integers(0, len(seqs[u]) + 1) for u in user])
    for max_len in (1, 7, 40):
        items, mask = gather_history(hist, user, seq_len, max_len)
        for b, (u, n) in enumerate(zip(user, seq_len)):
            recent = seqs[u][:n][-max_len:]
            assert items[b].tolist() == [0] * (max_len - len(recent)) + recent
            assert mask[b].sum() == len(recent) and mask[b, max_len - len(recent):].all()


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("prefetch", [False, True])
def test_same_batches_as_reference_loader(tmp_path, shuffle, prefetch):
    block = write_synthetic_dataset(tmp_path, n_users=30, n_items=200, n_samples=300,
                                    max_history=40, dense_dim=5, user_dim=6, seed=1)
    params = {**block, **{k: os.path.join(tmp_path, block[k])
                          for k in ("train_data", "user_info", "item_info")}}
    feature_map = build_feature_map("synthetic", params)
    kw = dict(batch_size=64, shuffle=shuffle, seed=5, user_info=params["user_info"],
              item_info=params["item_info"], max_len=16)
    fast = LongSeqDataLoader(feature_map, params["train_data"], prefetch=prefetch, **kw)
    ref = ReferenceLongSeqLoader(feature_map, params["train_data"], **kw)
    assert len(fast) == len(ref) == 5 and fast.num_samples == ref.num_samples == 300
    for _epoch in range(2):
        pairs = list(zip(fast, ref, strict=True))
        for a, b in pairs:
            assert list(a) == list(b)
            for key in a:
                assert a[key].dtype == b[key].dtype, key
                assert torch.equal(a[key], b[key]), key
    assert sum(len(a["label"]) for a, _ in pairs) == 300


def test_shuffle_is_seeded_permutation_per_epoch(tiny):
    params, feature_map = tiny
    loader = make_loader(params, feature_map, batch_size=2, shuffle=True, seed=7)
    first = torch.cat([b["hour"] for b in loader])
    second = torch.cat([b["hour"] for b in loader])
    again = torch.cat([b["hour"] for b in make_loader(params, feature_map, batch_size=2,
                                                       shuffle=True, seed=7)])
    assert sorted(first.tolist()) == sorted(second.tolist()) == [7, 8, 9, 10, 11]
    assert torch.equal(first, again)
    test_loader = make_loader(params, feature_map, batch_size=2, shuffle=True, split="valid")
    assert test_loader.shuffle  # only split "test" never shuffles
    assert not LongSeqDataLoader(feature_map, params["valid_data"], split="test", shuffle=True,
                                 user_info=params["user_info"],
                                 item_info=params["item_info"]).shuffle


def test_abandoned_prefetch_iteration_then_full_pass(tiny):
    params, feature_map = tiny
    loader = make_loader(params, feature_map, batch_size=1, prefetch=True)
    iterator = iter(loader)
    next(iterator)
    iterator.close()  # stops the background thread
    assert len(list(loader)) == len(loader) == 5


def test_through_fuxictr_rank_dataloader_and_model(tiny, tmp_path):
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.layers import FeatureEmbedding, MLP_Block
    from fuxictr.pytorch.models import BaseModel

    params, feature_map = tiny

    class TinyDNN(BaseModel):  # FuxiCTR's DNN, assembled from its own layers
        def __init__(self, fmap, **kwargs):
            super().__init__(fmap, model_id="TinyDNN", **kwargs)
            self.embedding_layer = FeatureEmbedding(fmap, 4)
            self.mlp = MLP_Block(input_dim=fmap.sum_emb_out_dim(), output_dim=1,
                                 hidden_units=[8], output_activation=self.output_activation)
            self.compile("Adam", "binary_crossentropy", 1.e-2)

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            return {"y_pred": self.mlp(self.embedding_layer(X, flatten_emb=True))}

    train_gen, valid_gen = RankDataLoader(
        feature_map, stage="train", train_data=params["train_data"],
        valid_data=params["valid_data"], batch_size=2, shuffle=True,
        data_loader=LongSeqDataLoader, user_info=params["user_info"],
        item_info=params["item_info"], max_len=3, seed=1)
    assert isinstance(train_gen, LongSeqDataLoader) and train_gen.shuffle
    assert not valid_gen.shuffle and len(train_gen) == 3
    model = TinyDNN(feature_map, verbose=0, model_root=str(tmp_path / "ckpt"),
                    metrics=["logloss"])
    batch = next(iter(train_gen))
    inputs = model.get_inputs(batch)
    assert "item_seq" not in inputs and "seq_mask" not in inputs and "user_index" not in inputs
    loss = model.compute_loss(model.forward(batch), model.get_labels(batch))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.embedding_layer.embedding_layer.feature_encoders["chime_hist"].weight.grad \
        is not None


# ----------------------------------------------------------------------------- bad input
def _rewrite(path, **columns):
    table = pq.read_table(path)
    for name, values in columns.items():
        if values is None:
            table = table.drop([name])
        else:
            table = table.set_column(table.schema.get_field_index(name), name, values)
    pq.write_table(table, path)


def _expect(params, feature_map, *words):
    with pytest.raises(DataError) as err:
        make_loader(params, feature_map)
    for word in words:
        assert word in str(err.value)
    return str(err.value)


def test_missing_split_column(tiny):
    params, fmap = tiny
    _rewrite(params["train_data"], hour=None)
    _expect(params, fmap, "train.parquet", "'hour'")


def test_seq_len_longer_than_history(tiny):
    params, fmap = tiny
    _rewrite(params["train_data"], seq_len=pa.array([1, 1, 2, 0, 3], pa.int64()))
    _expect(params, fmap, "train.parquet", "'seq_len'", "user 2")


def test_item_index_outside_item_info(tiny):
    params, fmap = tiny
    _rewrite(params["train_data"], item_index=pa.array([2, 4, 6, 1, 1], pa.int64()))
    _expect(params, fmap, "train.parquet", "'item_index'", "item_info")


def test_user_index_outside_user_info(tiny):
    params, fmap = tiny
    _rewrite(params["train_data"], user_index=pa.array([1, 1, 2, 9, 1], pa.int64()))
    _expect(params, fmap, "train.parquet", "'user_index'", "user_info")


def test_history_item_outside_item_info(tmp_path):
    params = write_tiny_folder(tmp_path, full_item_seq=[[], [3, 2, 4, 1], [40], []])
    _expect(params, build_feature_map("tiny", params), "user_info.parquet", "'full_item_seq'",
            "40")


def test_exported_user_column_missing(tmp_path):
    params = write_tiny_folder(tmp_path, with_chime=False)
    message = _expect(params, build_feature_map("tiny", params), "user_info.parquet",
                      "'chime_hist'")
    assert "fuxictr-chime compress export" in message


def test_nan_in_dense_column(tmp_path):
    title = TITLE.copy()
    title[2, 1] = np.nan
    params = write_tiny_folder(tmp_path, title=title)
    _expect(params, build_feature_map("tiny", params), "item_info.parquet", "'title_emb'", "NaN")


def test_dense_width_differs_from_pretrain_dim(tiny):
    params, fmap = tiny
    fmap.features["chime_hist"]["pretrain_dim"] = 5
    _expect(params, fmap, "user_info.parquet", "'chime_hist'", "width 5")


def test_unencoded_string_column(tiny):
    params, fmap = tiny
    _rewrite(params["train_data"], hour=pa.array(["a", "b", "c", "d", "e"]))
    _expect(params, fmap, "train.parquet", "'hour'", "encoded")


def test_missing_user_info_file(tiny):
    params, fmap = tiny
    os.remove(params["user_info"])
    _expect(params, fmap, "user_info.parquet", "not found")
