"""RepresentationData: batches as ARCHITECTURE.md section 5 says, joins, truncation, splits,
leakage rule, bad input."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fuxictr_chime.compressor.data import RepresentationData
from fuxictr_chime.errors import DataError, LeakageError

from .conftest import T1, make_prepared_dir


def _sequences(folder) -> dict[int, tuple[list, list, list]]:
    """user -> (items, labels, times) straight from representation.parquet."""
    table = pq.read_table(folder / "representation.parquet").to_pydict()
    return {u: (i, l, t) for u, i, l, t in zip(table["user_index"], table["item_seq"], table["label_seq"],
                                                 table["time_seq"])}


def _item_info(folder) -> dict:
    table = pq.read_table(folder / "item_info.parquet").to_pydict()
    return {"cate_id": np.array(table["cate_id"]), "title_emb": np.array(table["title_emb"], dtype=np.float32)}


def test_batches_hold_each_users_most_recent_behaviors(prepared_dir):
    max_len = 5
    data = RepresentationData(prepared_dir, max_len=max_len)
    seqs, info = _sequences(prepared_dir), _item_info(prepared_dir)
    users = data.users_with_history()
    seen = []
    for batch in data.batches(users, batch_size=2):
        b, t = batch["item_index"].shape
        assert set(batch) == {"item_index", "labels", "attrs", "dense", "user_index", "mask"}
        assert batch["item_index"].dtype == batch["labels"].dtype == torch.int64
        assert batch["user_index"].dtype == torch.int64 and batch["mask"].dtype == torch.bool
        assert batch["attrs"]["cate_id"].dtype == torch.int64 and batch["dense"]["title_emb"].dtype == torch.float32
        assert batch["dense"]["title_emb"].shape == (b, t, 8)
        lengths = batch["mask"].sum(1)
        assert t == int(lengths.max())  # T = the longest sequence of the batch
        for row, user in enumerate(batch["user_index"].tolist()):
            items, labels, _ = seqs[user]
            n = min(len(items), max_len)
            assert int(lengths[row]) == n == data.sequence_length(user)
            assert batch["item_index"][row, :n].tolist() == items[-n:]  # most recent, time order
            assert batch["labels"][row, :n].tolist() == labels[-n:]
            assert batch["mask"][row, :n].all() and not batch["mask"][row, n:].any()  # right padding
            assert (batch["item_index"][row, n:] == 0).all() and (batch["labels"][row, n:] == 0).all()
            idx = batch["item_index"][row].numpy()
            assert batch["attrs"]["cate_id"][row].tolist() == info["cate_id"][idx].tolist()  # joined by item_index
            np.testing.assert_array_equal(batch["dense"]["title_emb"][row].numpy(), info["title_emb"][idx])
            seen.append(user)
    assert seen == users


def test_truncation_keeps_the_latest(prepared_dir):
    data = RepresentationData(prepared_dir, max_len=2)
    seqs = _sequences(prepared_dir)
    user = max(seqs, key=lambda u: len(seqs[u][0]))
    assert len(seqs[user][0]) > 2
    batch = next(data.batches([user], 1))
    assert batch["item_index"][0].tolist() == seqs[user][0][-2:]


def test_vocab_sizes_dense_widths_and_users(tmp_path):
    folder = make_prepared_dir(tmp_path, n_users=7, n_items=13, dense={"title_emb": 3, "image_emb": 5},
                               categorical={"cate_id": 4, "brand_id": 9}, users_without_history=2)
    data = RepresentationData(folder)
    info = pq.read_table(folder / "item_info.parquet").to_pydict()
    assert data.vocab_sizes() == {"item_id": 14, "cate_id": max(info["cate_id"]) + 1,
                                  "brand_id": max(info["brand_id"]) + 1}
    assert data.dense_widths() == {"title_emb": 3, "image_emb": 5}
    assert data.users_with_history() == [1, 2, 3, 4, 5] and len(data) == 5
    assert data.all_users() == [1, 2, 3, 4, 5, 6, 7]
    batch = next(data.batches([6, 2], 2))  # a user without history is an all-padding row
    assert not batch["mask"][0].any() and batch["mask"][1].any()
    assert set(batch["attrs"]) == {"cate_id", "brand_id"}  # item_id is item_index


def test_split_users_is_a_seeded_partition(tmp_path):
    folder = make_prepared_dir(tmp_path, n_users=20, users_without_history=0)
    data = RepresentationData(folder)
    train, evals = data.split_users(eval_fraction=0.25, seed=3)
    assert len(evals) == 5 and sorted(train + evals) == data.users_with_history()
    assert (train, evals) == data.split_users(eval_fraction=0.25, seed=3)
    assert evals != data.split_users(eval_fraction=0.25, seed=4)[1]
    assert len(data.split_users(eval_count=3, seed=0)[1]) == 3
    assert len(data.split_users(eval_fraction=0.01, seed=0)[1]) == 1  # at least one eval user
    with pytest.raises(DataError, match="exactly one"):
        data.split_users(seed=0)
    with pytest.raises(DataError, match="eval_fraction"):
        data.split_users(eval_fraction=1.5)


@pytest.mark.parametrize("bucket", [False, True])
def test_shuffled_batches_cover_every_user_once(tmp_path, bucket):
    folder = make_prepared_dir(tmp_path, n_users=23, users_without_history=0)
    data = RepresentationData(folder)
    users = data.users_with_history()

    def order(seed):
        return [u for b in data.batches(users, 4, shuffle=True, seed=seed, bucket=bucket)
                for u in b["user_index"].tolist()]

    assert sorted(order(0)) == users and order(0) == order(0) and order(0) != order(1)
    plain = [u for b in data.batches(users, 4) for u in b["user_index"].tolist()]
    assert plain == users


def test_bucketing_reduces_padding(tmp_path):
    folder = make_prepared_dir(tmp_path, n_users=40, max_events=30, users_without_history=0)
    data = RepresentationData(folder)
    users = data.users_with_history()

    def padding(bucket):
        return sum(int((~b["mask"]).sum()) for b in data.batches(users, 4, shuffle=True, seed=0, bucket=bucket))

    assert padding(True) < padding(False)


def _rewrite_representation(folder, **columns):
    table = pq.read_table(folder / "representation.parquet")
    for name, array in columns.items():
        table = table.set_column(table.column_names.index(name), name, array)
    pq.write_table(table, folder / "representation.parquet")


def test_leakage_rule(prepared_dir):
    times = pq.read_table(prepared_dir / "representation.parquet").column("time_seq").to_pylist()
    times[0][-1] = T1  # one behavior at t1
    _rewrite_representation(prepared_dir, time_seq=pa.array(times, pa.list_(pa.int64())))
    with pytest.raises(LeakageError, match=r"representation\.parquet: 1 behaviors at or after t1=1000"):
        RepresentationData(prepared_dir)
    assert len(RepresentationData(prepared_dir, t1_check=False)) == 5
    (prepared_dir / "summary.json").unlink()
    with pytest.raises(DataError, match=r"summary\.json: missing"):
        RepresentationData(prepared_dir)
    (prepared_dir / "summary.json").write_text(json.dumps({"t2": 5}))
    with pytest.raises(DataError, match="'t1' must be a number"):
        RepresentationData(prepared_dir)


def test_missing_files_and_columns_are_named(prepared_dir):
    table = pq.read_table(prepared_dir / "representation.parquet")
    pq.write_table(table.drop_columns(["label_seq"]), prepared_dir / "representation.parquet")
    with pytest.raises(DataError, match=r"representation\.parquet: no column 'label_seq'"):
        RepresentationData(prepared_dir)
    (prepared_dir / "representation.parquet").unlink()
    with pytest.raises(DataError, match=r"representation\.parquet: missing"):
        RepresentationData(prepared_dir)
    (prepared_dir / "item_info.parquet").unlink()
    with pytest.raises(DataError, match=r"item_info\.parquet: missing"):
        RepresentationData(prepared_dir)


@pytest.mark.parametrize("case, match", [
    ("ragged", "user_index 1: 'label_seq' and 'item_seq' have different lengths"),
    ("label", r"'label_seq' must hold \+1/-1; user_index 1 has 0"),
    ("item", "user_index 1 has item_index 99 outside item_info"),
    ("order", "'time_seq' of user_index 1 is not in time order"),
    ("duplicate", "duplicate users"),
])
def test_bad_sequences_name_file_column_and_user(prepared_dir, case, match):
    table = pq.read_table(prepared_dir / "representation.parquet").to_pydict()
    first = table["item_seq"][0]
    if case == "ragged":
        table["label_seq"][0] = table["label_seq"][0] + [1]
    elif case == "label":
        table["label_seq"][0][0] = 0
    elif case == "item":
        table["item_seq"][0][0] = 99
    elif case == "order":
        assert len(first) > 1
        table["time_seq"][0] = table["time_seq"][0][::-1]
        table["time_seq"][0][0] += 1  # strictly out of order even with ties
    elif case == "duplicate":
        table["user_index"][1] = table["user_index"][0]
    schema = pq.read_schema(prepared_dir / "representation.parquet")
    pq.write_table(pa.table(table, schema=schema), prepared_dir / "representation.parquet")
    with pytest.raises(DataError, match=match) as err:
        RepresentationData(prepared_dir)
    assert "representation.parquet" in str(err.value)


@pytest.mark.parametrize("case, match", [
    ("index", "'item_index' must equal the row number"),
    ("nan", "'title_emb' has NaN"),
    ("width", "'title_emb' has vectors of different"),
    ("negative", "'cate_id' has negative values"),
])
def test_bad_item_info(prepared_dir, case, match):
    path = prepared_dir / "item_info.parquet"
    table = pq.read_table(path).to_pydict()
    if case == "index":
        table["item_index"][3] = 7
    elif case == "nan":
        table["title_emb"][2][0] = float("nan")
    elif case == "width":
        table["title_emb"][2] = table["title_emb"][2][:3]
    elif case == "negative":
        table["cate_id"][2] = -1
    pq.write_table(pa.table(table, schema=pq.read_schema(path)), path)
    with pytest.raises(DataError, match=match) as err:
        RepresentationData(prepared_dir)
    assert "item_info.parquet" in str(err.value)


def test_unknown_users_are_errors(prepared_dir):
    data = RepresentationData(prepared_dir)
    with pytest.raises(DataError, match=r"users \[77\] are neither"):
        next(data.batches([1, 77], 2))
    table = pq.read_table(prepared_dir / "user_info.parquet")
    pq.write_table(table.slice(0, 3), prepared_dir / "user_info.parquet")  # users 1, 2 only
    with pytest.raises(DataError, match=r"user_info.parquet: users \[3, 4, 5\] of representation.parquet"):
        RepresentationData(prepared_dir).all_users()


def test_fixed_size_list_dense_vectors(prepared_dir):
    path = prepared_dir / "item_info.parquet"
    table = pq.read_table(path)
    plain = RepresentationData(prepared_dir)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(np.array(table.column("title_emb").to_pylist(),
                                                                dtype=np.float32).ravel()), 8)
    pq.write_table(table.set_column(table.column_names.index("title_emb"), "title_emb", fixed), path)
    data = RepresentationData(prepared_dir)
    assert data.dense_widths() == {"title_emb": 8}
    users = data.users_with_history()
    torch.testing.assert_close(next(data.batches(users, 3))["dense"]["title_emb"],
                               next(plain.batches(users, 3))["dense"]["title_emb"])
