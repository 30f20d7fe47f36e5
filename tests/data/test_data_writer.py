"""write_prepared: the folder of ARCHITECTURE.md section 2, checked against brute-force loops."""
from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fuxictr_chime.data.split import REPRESENTATION, Split, split_by_time
from fuxictr_chime.data.synthetic import synthetic_log
from fuxictr_chime.data.writer import build_tables, write_prepared
from fuxictr_chime.errors import ConfigError, DataError, LeakageError

from .conftest import TINY_EXPECTED, TINY_T1, TINY_T2, make_tiny_log

LAYOUT = {"train.parquet", "valid.parquet", "test.parquet", "user_info.parquet",
          "item_info.parquet", "representation.parquet", "dataset_config.yaml", "summary.json"}
I64, F32 = pa.int64(), pa.float32()
SPLIT_SCHEMA = {"user_index": I64, "item_index": I64, "seq_len": I64, "timestamp": I64,
                "label": F32}


def _read(folder, name) -> pa.Table:
    return pq.read_table(os.path.join(folder, f"{name}.parquet"))


def _prepare(log, folder, t1=TINY_T1, t2=TINY_T2, valid_ratio=0.3, **kwargs) -> dict:
    return write_prepared(log, split_by_time(log, t1, t2, valid_ratio), folder, **kwargs)


def _index_maps(log):
    users = {u: i + 1 for i, u in enumerate(sorted(log.events["user_id"].unique()))}
    items = {x: i + 1 for i, x in enumerate(sorted(log.events["item_id"].unique()))}
    return users, items


def test_tiny_log_layout_and_hand_computed_values(tmp_path):
    summary = _prepare(make_tiny_log(), tmp_path)
    assert set(os.listdir(tmp_path)) == LAYOUT  # nothing else (no temporary files left)
    user_info = _read(tmp_path, "user_info").to_pydict()
    assert user_info["user_index"] == [0, 1, 2, 3, 4]
    assert user_info["full_item_seq"] == TINY_EXPECTED["full_item_seq"]
    rep = _read(tmp_path, "representation").to_pydict()
    got = {u: (i, lab, t) for u, i, lab, t in
           zip(rep["user_index"], rep["item_seq"], rep["label_seq"], rep["time_seq"])}
    assert got == TINY_EXPECTED["representation"]  # user 3 ("c") starts at t=4 >= t1: absent
    item_info = _read(tmp_path, "item_info").to_pydict()
    assert item_info["item_index"] == item_info["item_id"] == list(range(7))  # item 16 unused
    assert item_info["cate_id"][0] == 0 and item_info["title_emb"][0] == [0.0] * 4
    assert item_info["cate_id"][4] == 0  # item 13 has no category -> 0 (unknown)
    assert max(item_info["cate_id"]) + 1 == TINY_EXPECTED["cate_vocab"]
    assert summary["t1"] == 3 and summary["t2"] == 7 and summary["users"] == 4
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_every_written_column_has_its_dtype(tmp_path):
    log = make_tiny_log()
    log.events["hour"] = np.arange(len(log.events)) % 3  # int context -> categorical
    log.events["price"] = np.linspace(0, 1, len(log.events))  # float context -> numeric
    _prepare(log, tmp_path)
    for part in ("train", "valid", "test"):
        schema = _read(tmp_path, part).schema
        assert {f.name: f.type for f in schema} == {**SPLIT_SCHEMA, "hour": I64, "price": F32}
    assert {f.name: f.type for f in _read(tmp_path, "user_info").schema} == {
        "user_index": I64, "full_item_seq": pa.list_(I64), "full_time_seq": pa.list_(I64)}
    assert {f.name: f.type for f in _read(tmp_path, "item_info").schema} == {
        "item_index": I64, "item_id": I64, "cate_id": I64, "title_emb": pa.list_(F32)}
    assert {f.name: f.type for f in _read(tmp_path, "representation").schema} == {
        "user_index": I64, "item_seq": pa.list_(I64), "label_seq": pa.list_(pa.int8()),
        "time_seq": pa.list_(I64)}
    test = _read(tmp_path, "test").to_pydict()
    assert set(test["label"]) <= {0.0, 1.0} and min(test["hour"]) >= 1  # 0 = padding


def _brute_force_samples(log, split):
    """Per-row reference: every event at or after t1 with seq_len = #positives strictly before."""
    users, items = _index_maps(log)
    ev = log.events.reset_index(drop=True)
    positives = defaultdict(list)
    for row in ev.itertuples():
        if row.label == 1:
            positives[row.user_id].append(row.timestamp)
    expected, ties = {}, 0
    for pos, row in enumerate(ev.itertuples()):
        if split.parts[pos] == REPRESENTATION:
            continue
        part = ("train", "valid", "test")[split.parts[pos] - 1]
        n_before = sum(t < row.timestamp for t in positives[row.user_id])
        ties += sum(t == row.timestamp for t in positives[row.user_id]) > int(row.label == 1)
        key = (part, users[row.user_id], items[row.item_id], row.timestamp, float(row.label > 0))
        expected.setdefault(key, []).append(n_before)
    return expected, ties


@pytest.mark.parametrize("seed", [0, 1])
def test_seq_len_counts_positives_strictly_before_the_sample(tmp_path, seed):
    # 40 distinct times over 500 events: many ties, incl. a user's positives at a sample's time
    log = synthetic_log(n_users=15, n_items=12, n_events=500, n_times=40, seed=seed)
    split = split_by_time(log, "q0.3", "q0.8", valid_ratio=0.2)
    write_prepared(log, split, tmp_path, max_len=1000)
    got = {}
    for part in ("train", "valid", "test"):
        df = _read(tmp_path, part).to_pandas()
        assert df["timestamp"].is_monotonic_increasing  # chronological
        for row in df.itertuples():
            key = (part, row.user_index, row.item_index, row.timestamp, row.label)
            got.setdefault(key, []).append(row.seq_len)
    expected, ties = _brute_force_samples(log, split)
    assert ties > 10  # samples with another positive of the same user at the same time
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in expected.items()}


def test_history_prefix_is_the_positives_before_the_sample(tmp_path):
    log = synthetic_log(n_users=10, n_items=9, n_events=300, n_times=30, seed=3)
    write_prepared(log, split_by_time(log, "q0.3", "q0.8"), tmp_path)
    users, items = _index_maps(log)
    ev = log.events.reset_index(drop=True)
    full = _read(tmp_path, "user_info").to_pydict()
    for user, u in users.items():
        mine = ev[(ev["user_id"] == user) & (ev["label"] == 1)]
        mine = mine.iloc[np.argsort(mine["timestamp"].to_numpy(), kind="stable")]  # ties: log order
        assert full["full_item_seq"][u] == [items[i] for i in mine["item_id"]]
        assert full["full_time_seq"][u] == mine["timestamp"].tolist()
    test = _read(tmp_path, "test").to_pandas()
    for row in test.itertuples():
        prefix_times = full["full_time_seq"][row.user_index][:row.seq_len]
        rest = full["full_time_seq"][row.user_index][row.seq_len:]
        assert all(t < row.timestamp for t in prefix_times)
        assert all(t >= row.timestamp for t in rest)


def test_representation_holds_exactly_the_events_before_t1(tmp_path):
    log = synthetic_log(n_users=12, n_items=10, n_events=400, n_times=60, seed=4)
    split = split_by_time(log, "q0.5", "q0.8")
    write_prepared(log, split, tmp_path)
    users, items = _index_maps(log)
    ev = log.events.reset_index(drop=True)
    before = ev[ev["timestamp"] < split.t1]
    rep = _read(tmp_path, "representation").to_pandas()
    assert sorted(rep["user_index"]) == sorted(users[u] for u in before["user_id"].unique())
    for row in rep.itertuples():
        assert all(t < split.t1 for t in row.time_seq)
        assert list(row.time_seq) == sorted(row.time_seq)
        user = [k for k, v in users.items() if v == row.user_index][0]
        mine = before[before["user_id"] == user]
        mine = mine.iloc[np.argsort(mine["timestamp"].to_numpy(), kind="stable")]
        assert list(row.item_seq) == [items[i] for i in mine["item_id"]]
        assert list(row.label_seq) == mine["label"].tolist()  # both labels, +1 / -1


def test_item_info_rows_follow_item_index(tmp_path):
    log = synthetic_log(n_users=8, n_items=7, n_events=200, dense={"img": 5}, seed=5)
    write_prepared(log, split_by_time(log, "q0.3", "q0.8"), tmp_path)
    _, items = _index_maps(log)
    info = _read(tmp_path, "item_info").to_pandas()
    assert len(info) == len(items) + 1 and (info["item_index"] == np.arange(len(info))).all()
    assert np.array_equal(np.stack(info["img"]), np.vstack(
        [np.zeros(5, np.float32)] + [log.items.set_index("item_id").loc[i, "img"] for i in items]))
    cates = log.items.set_index("item_id")["cate_id"]
    names = sorted({c for c in cates.loc[list(items)] if pd.notna(c)})
    for raw, i in items.items():
        c = cates.loc[raw]
        assert info["cate_id"][i] == (0 if pd.isna(c) else names.index(c) + 1)


def test_dataset_config_and_summary(tmp_path):
    log = make_tiny_log(dense_width=3)
    summary = _prepare(log, tmp_path, max_len=2, dataset_id="tiny_ds")
    config = yaml.safe_load((tmp_path / "dataset_config.yaml").read_text())
    assert config == build_tables(log, split_by_time(log, TINY_T1, TINY_T2, 0.3), max_len=2,
                                  dataset_id="tiny_ds").config  # YAML round trip keeps types
    block = config["tiny_ds"]
    assert block["rebuild_dataset"] is False and block["data_format"] == "parquet"
    assert block["max_len"] == 2 and block["label_col"] == {"name": "label", "dtype": "float"}
    for key in ("train_data", "valid_data", "test_data", "user_info", "item_info"):
        assert not os.path.isabs(block[key]) and (tmp_path / block[key]).exists()
    specs = {c["name"] if isinstance(c["name"], str) else tuple(c["name"]): c
             for c in block["feature_cols"]}
    assert specs[("user_index", "item_index", "seq_len")]["type"] == "meta"
    assert specs["item_id"] == {"name": "item_id", "active": True, "dtype": "int",
                                "type": "categorical", "source": "item", "vocab_size": 7}
    assert specs["cate_id"]["vocab_size"] == TINY_EXPECTED["cate_vocab"]
    assert specs["title_emb"] == {"name": "title_emb", "active": True, "dtype": "list",
                                  "type": "embedding", "source": "item", "pretrain_dim": 3,
                                  "embedding_dim": 64}
    # the summary agrees with the written files; history capped at max_len = 2
    test = _read(tmp_path, "test").to_pandas()
    part = summary["partitions"]["test"]
    capped = np.minimum(test["seq_len"], 2)
    assert part == {"users": test["user_index"].nunique(), "items": test["item_index"].nunique(),
                    "samples": len(test), "positive_rate": round(test["label"].mean(), 4),
                    "avg_len": round(capped.mean(), 4),
                    "p90_len": round(float(np.percentile(capped, 90)), 4)}
    assert summary["partitions"]["representation"]["samples"] == 5
    assert summary["dataset_id"] == "tiny_ds" and summary["t_valid"] == 5


def test_feature_map_and_loader_read_the_folder(tmp_path):
    from fuxictr_chime.data.features import build_feature_map, load_dataset_params
    from fuxictr_chime.data.loader import LongSeqDataLoader

    _prepare(make_tiny_log(), tmp_path, max_len=3)
    params = load_dataset_params(tmp_path, "tiny")
    feature_map = build_feature_map("tiny", params)
    loader = LongSeqDataLoader(feature_map, params["test_data"], split="test", batch_size=8,
                               shuffle=False, **params)
    batch = next(iter(loader))
    # test samples (time order): (a,10,t7) (c,11,t7) (a,15,t8) (b,12,t8); a's positives before 7:
    # 10@1, 12@3, 13@3, 14@5 -> last 3 = items 3, 4, 5, then the target 1
    assert batch["item_seq"][0].tolist() == [3, 4, 5, 1]
    assert batch["seq_mask"][0].tolist() == [True, True, True]
    assert batch["item_seq"][1].tolist() == [0, 0, 6, 2]  # c: 15@6 before 7, target 11
    assert batch["title_emb"].shape == (4, 4)


def test_failed_prepare_writes_nothing(tmp_path):
    log = make_tiny_log()
    log.items.at[2, "title_emb"] = np.array([np.nan, 0, 0, 0], np.float32)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="'title_emb'.*NaN"):
        _prepare(log, out)
    assert not out.exists()
    # an existing folder keeps its files untouched
    out.mkdir()
    (out / "summary.json").write_text("old")
    log.items.at[2, "title_emb"] = np.zeros(3, np.float32)  # wrong width
    with pytest.raises(DataError, match="'title_emb'.*width 4"):
        _prepare(log, out)
    assert os.listdir(out) == ["summary.json"] and (out / "summary.json").read_text() == "old"
    log.items["title_emb"] = log.items["title_emb"].astype(object)
    log.items.at[2, "title_emb"] = np.nan  # an item without a vector at all
    with pytest.raises(DataError, match="'title_emb'.*row 2 has none"):
        _prepare(log, out)


def test_leakage_guard_runs_before_writing(tmp_path):
    log = make_tiny_log()
    split = split_by_time(log, TINY_T1, TINY_T2)
    parts = split.parts.copy()
    late = int(np.flatnonzero(log.events["timestamp"].to_numpy() >= TINY_T2)[0])
    parts[late] = REPRESENTATION  # a forged split that puts a test event into the compressor input
    forged = Split(t1=split.t1, t2=split.t2, t_valid=split.t_valid, parts=parts)
    with pytest.raises(LeakageError, match="representation.parquet"):
        write_prepared(log, forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_inputs(tmp_path):
    log = make_tiny_log()
    split = split_by_time(log, TINY_T1, TINY_T2)
    with pytest.raises(DataError, match="split has 3 entries"):
        write_prepared(log, Split(3, 7, 5, split.parts[:3]), tmp_path)
    with pytest.raises(ConfigError, match="max_len"):
        write_prepared(log, split, tmp_path, max_len=0)
    clash = make_tiny_log()
    clash.events["seq_len"] = 1
    with pytest.raises(DataError, match="'seq_len' clashes"):
        write_prepared(clash, split, tmp_path)
    nan_context = make_tiny_log()
    nan_context.events["price"] = np.nan
    with pytest.raises(DataError, match="context column 'price'"):
        write_prepared(nan_context, split, tmp_path)
    missing = make_tiny_log()
    missing.items = missing.items[missing.items["item_id"] != 12]
    with pytest.raises(DataError, match="missing from the item table"):
        write_prepared(missing, split, tmp_path)
    assert os.listdir(tmp_path) == []
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        write_prepared(log, split, not_a_folder)


def test_string_and_int_ids_are_numbered_in_sorted_order(tmp_path):
    log = make_tiny_log(dense_width=0)
    log.events["user_id"] = log.events["user_id"].map({"a": 30, "b": 4, "c": 100, "d": 7})
    _prepare(log, tmp_path)
    rep = _read(tmp_path, "representation").to_pydict()
    # sorted raw ids 4 (b) -> 1, 7 (d) -> 2, 30 (a) -> 3, 100 (c) -> 4
    assert rep["user_index"] == [1, 2, 3] and rep["item_seq"] == [[3, 4], [4], [1, 2]]
    assert pd.api.types.is_integer_dtype(_read(tmp_path, "item_info").schema.field(
        "cate_id").type.to_pandas_dtype())
