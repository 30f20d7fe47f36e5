"""Raw preparers (microvideo, tmall, ebnerd) on tiny files in the exact published formats.

Each test writes made-up raw files into tmp_path (tests/data/raw_fixtures.py), runs ``load``
and checks the BehaviorLog against values worked out by hand; bad inputs must name the file
and the column at fault.
"""
from __future__ import annotations

import logging

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fuxictr_chime.data import ebnerd, microvideo, tmall
from fuxictr_chime.errors import ConfigError, DataError

from . import raw_fixtures as F


def _sorted_by_user_time(events: pd.DataFrame) -> bool:
    keys = events[["user_id", "timestamp"]].to_numpy()
    return bool(np.all(np.diff(keys[:, 0]) >= 0) and all(
        np.all(np.diff(g["timestamp"].to_numpy()) >= 0) for _, g in events.groupby("user_id")))


def _vec(items: pd.DataFrame, column: str, item_id) -> np.ndarray:
    return items.set_index("item_id").loc[item_id, column]


def _event_dtypes_ok(events: pd.DataFrame) -> None:
    assert list(events.columns[:4]) == ["user_id", "item_id", "timestamp", "label"]
    assert events["timestamp"].dtype == np.int64 and events["label"].dtype == np.int8
    assert set(events["label"]) <= {1, -1}


# ----------------------------------------------------------------------------- shared helpers

def test_most_frequent_per_item_equals_groupby_reference():
    from fuxictr_chime.data import _raw

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"item_id": rng.integers(0, 40, 2000) * 7,
                          "cat": rng.integers(0, 5, 2000), "brand": rng.integers(-1, 3, 2000)})
    fast = _raw.most_frequent_per_item(frame, ["cat", "brand"], "test")
    for col in ("cat", "brand"):  # reference: count per (item, value), max count, then min value
        counts = frame.groupby(["item_id", col]).size().rename("n").reset_index()
        counts = counts.sort_values(["item_id", "n", col], ascending=[True, False, True])
        ref = counts.drop_duplicates("item_id").set_index("item_id")[col]
        assert fast.set_index("item_id")[col].to_dict() == ref.to_dict()
    assert fast["item_id"].tolist() == sorted(frame["item_id"].unique())


def test_first_occurrence_and_sort_equal_pandas():
    from fuxictr_chime.data import _raw

    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"user_id": rng.integers(0, 9, 3000), "item_id": rng.integers(0, 9, 3000),
                          "timestamp": rng.integers(0, 9, 3000), "row": np.arange(3000)})
    mask = _raw.first_occurrence(frame["user_id"], frame["item_id"], frame["timestamp"])
    np.testing.assert_array_equal(mask, ~frame.duplicated(["user_id", "item_id", "timestamp"]))
    ref = frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(_raw.sort_events(frame), ref)


# ----------------------------------------------------------------------------- microvideo

def test_microvideo_events_items_and_vectors(tmp_path):
    train_vec, test_vec = F.write_microvideo(tmp_path)
    log = microvideo.load(tmp_path, min_user_actions=0, image_dim=None)
    ev = log.events
    _event_dtypes_ok(ev)
    assert len(ev) == len(F.MICROVIDEO_TRAIN) + len(F.MICROVIDEO_TEST) == 9
    assert _sorted_by_user_time(ev)
    # test ids restart at 0 and are re-mapped after the 3 train vectors: test item 0 -> 3
    row = ev[(ev["user_id"] == 0) & (ev["timestamp"] == 2000)].iloc[0]
    assert (row["item_id"], row["label"]) == (3, 1)
    row = ev[(ev["user_id"] == 1) & (ev["timestamp"] == 2001)].iloc[0]
    assert (row["item_id"], row["label"]) == (4, -1)  # is_click 0 -> -1
    assert ev.loc[ev["timestamp"] == 1002, "label"].item() == -1
    assert ev.loc[ev["timestamp"] == 1003, "label"].item() == 1
    assert log.categorical == ["cate_id"] and log.dense == {"image_emb": F.MICROVIDEO_WIDTH}
    cates = log.items.set_index("item_id")["cate_id"].to_dict()
    assert cates == {0: 5, 1: 6, 2: 7, 3: 8, 4: 5}
    np.testing.assert_array_equal(_vec(log.items, "image_emb", 2), train_vec[2])
    np.testing.assert_array_equal(_vec(log.items, "image_emb", 4), test_vec[1])
    assert _vec(log.items, "image_emb", 0).dtype == np.float32


def test_microvideo_pca_matches_sklearn(tmp_path):
    from sklearn.decomposition import PCA

    train_vec, test_vec = F.write_microvideo(tmp_path, n_train_vectors=40, n_test_vectors=30)
    log = microvideo.load(tmp_path, min_user_actions=0, image_dim=3, chunk_rows=7)
    assert log.dense == {"image_emb": 3}
    ref = PCA(n_components=3, svd_solver="full").fit(np.vstack([train_vec, test_vec]))
    # fitted on all 70 rows of both files; item 3 is test row 0 (offset = 40 train rows)
    np.testing.assert_allclose(_vec(log.items, "image_emb", 1),
                               ref.transform(train_vec[1:2])[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_vec(log.items, "image_emb", 40),
                               ref.transform(test_vec[0:1])[0], rtol=1e-4, atol=1e-4)


def test_fit_pca_streamed_equals_sklearn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1]) + 2.0
    pca = microvideo.fit_pca((x[i:i + 37] for i in range(0, 200, 37)), 4)
    ref = PCA(n_components=4, svd_solver="full").fit(x)
    np.testing.assert_allclose(pca.components, ref.components_, atol=1e-8)
    np.testing.assert_allclose(pca.mean, ref.mean_, atol=1e-10)
    np.testing.assert_allclose(pca.transform(x), ref.transform(x), atol=1e-5)


def test_microvideo_missing_vector_warns_or_raises(tmp_path, caplog):
    train = F.MICROVIDEO_TRAIN + [(2, 5, 9, 1, 1006)]  # train item 5 has no vector row
    F.write_microvideo(tmp_path, train=train)
    with caplog.at_level(logging.WARNING):
        log = microvideo.load(tmp_path, min_user_actions=0, image_dim=None)
    assert "1 of 6 item(s) have no 'image_emb' vector, e.g. item_id 5" in caplog.text
    assert not _vec(log.items, "image_emb", 5).any()
    # offset = max(train rows 3, max train id 5 + 1): test item 0 -> 6
    assert ev_item(log, user=0, ts=2000) == 6
    with pytest.raises(DataError, match="have no 'image_emb' vector, e.g. item_id 5"):
        microvideo.load(tmp_path, min_user_actions=0, image_dim=None, strict=True)


def ev_item(log, *, user, ts):
    ev = log.events
    return ev.loc[(ev["user_id"] == user) & (ev["timestamp"] == ts), "item_id"].item()


def test_microvideo_h5_vectors_and_no_vectors(tmp_path):
    F.write_microvideo(tmp_path)
    keys = np.arange(5)
    values = np.arange(20, dtype=np.float32).reshape(5, 4)
    with h5py.File(tmp_path / "item_image_emb_dim64.h5", "w") as fh:  # BARS layout
        fh.create_dataset("key", data=keys)
        fh.create_dataset("value", data=values)
    log = microvideo.load(tmp_path, min_user_actions=0, image_dim=None,
                          image_emb=str(tmp_path / "item_image_emb_dim64.h5"))
    np.testing.assert_array_equal(_vec(log.items, "image_emb", 3), values[3])
    bare = microvideo.load(tmp_path, min_user_actions=0, image_emb=None)
    assert bare.dense == {} and "image_emb" not in bare.items.columns


def test_microvideo_bars_layout_reads_the_same_log(tmp_path):
    F.write_microvideo(tmp_path / "thacil")
    values = F.write_microvideo_bars(tmp_path / "bars")
    thacil = microvideo.load(tmp_path / "thacil", min_user_actions=0, image_emb=None)
    bars = microvideo.load(tmp_path / "bars", min_user_actions=0, image_dim=None)
    pd.testing.assert_frame_equal(bars.events, thacil.events)
    assert bars.dense == {"image_emb": 4}
    for item in (0, 4):
        np.testing.assert_array_equal(_vec(bars.items, "image_emb", item), values[item])
    with pytest.raises(DataError, match=r"train_data\.csv: MicroVideo log not found"):
        microvideo.load(tmp_path / "empty", min_user_actions=0)


def test_microvideo_min_user_actions(tmp_path):
    F.write_microvideo(tmp_path)
    log = microvideo.load(tmp_path, min_user_actions=4, image_dim=None)
    assert set(log.events["user_id"]) == {0, 1}  # user 2 has one action
    assert set(log.items["item_id"]) == set(log.events["item_id"])
    with pytest.raises(DataError, match="min_user_actions"):
        microvideo.load(tmp_path, min_user_actions=100, image_dim=None)


def test_microvideo_bad_input(tmp_path):
    F.write_microvideo(tmp_path)
    (tmp_path / "test_data.csv").unlink()
    with pytest.raises(DataError, match=r"test_data\.csv: MicroVideo log not found"):
        microvideo.load(tmp_path, min_user_actions=0)

    bad = tmp_path / "header"
    F.write_microvideo(bad, header="user_id,item_id,cate_id,is_clik,timestamp")
    with pytest.raises(DataError, match=r"train_data\.csv: missing column\(s\) \['is_click'\]"):
        microvideo.load(bad, min_user_actions=0)

    two = tmp_path / "label"
    F.write_microvideo(two, train=[(0, 0, 5, 2, 1000)])
    with pytest.raises(DataError, match=r"train_data\.csv: column 'is_click' must be 0 or 1"):
        microvideo.load(two, min_user_actions=0)

    width = tmp_path / "width"
    F.write_microvideo(width, test_width=5)
    with pytest.raises(DataError, match=r"test_cover_image_feature\.npy: vector width 5"):
        microvideo.load(width, min_user_actions=0, image_dim=None)

    nan = tmp_path / "nan"
    train_vec, _ = F.write_microvideo(nan)
    train_vec[1, 2] = np.nan
    np.save(nan / "train_cover_image_feature.npy", train_vec)
    with pytest.raises(DataError, match=r"train_cover_image_feature\.npy.*id 1 holds NaN"):
        microvideo.load(nan, min_user_actions=0, image_dim=None)
    with pytest.raises(DataError, match=r"train_cover_image_feature\.npy: row 1 holds NaN"):
        microvideo.load(nan, min_user_actions=0, image_dim=3)  # PCA fit reads every row
    F.write_microvideo(tmp_path / "narrow")
    with pytest.raises(ConfigError, match="image_dim 64 exceeds the width 8"):
        microvideo.load(tmp_path / "narrow", min_user_actions=0)


# ----------------------------------------------------------------------------- tmall

def test_tmall_cvr_labels_by_hand(tmp_path):
    F.write_tmall(tmp_path)
    log = tmall.load(tmp_path, min_user_actions=0)
    ev = log.events
    _event_dtypes_ok(ev)
    assert _sorted_by_user_time(ev)
    got = {(r.user_id, r.item_id, r.timestamp): r.label for r in ev.itertuples()}
    # mmdd -> day of 2015 (Jan 1 = 0): 511 -> 130, 513 -> 132, 601 -> 151, 1110 -> 313
    assert got == {
        (1, 10, 130): 1,    # cart on 512, one day later
        (1, 11, 130): 1,    # cart on the same day counts as "after"
        (1, 10, 132): -1,   # the only cart (512) is before this click
        (1, 12, 151): -1,   # purchase is not a conversion by default
        (2, 13, 313): 1,    # duplicate click row collapsed into one sample
        (2, 10, 314): -1,   # user 1's cart on item 10 is not user 2's
    }
    items = log.items.set_index("item_id")
    assert items.loc[11, "brand_id"] == tmall.MISSING_BRAND  # empty brand -> its own value
    assert items.loc[10, ["cat_id", "seller_id", "brand_id"]].tolist() == [3, 100, 7]
    assert 14 not in items.index  # carted but never clicked: no sample, no item row
    assert log.categorical == ["cat_id", "seller_id", "brand_id"] and log.dense == {}


def test_tmall_options_change_the_rule(tmp_path):
    F.write_tmall(tmp_path, subfolder=True)  # data_format1/user_log_format1.csv
    buy = tmall.load(tmp_path, min_user_actions=0, conversion_actions=(1, 2))
    assert buy.events.query("item_id == 12")["label"].tolist() == [1]
    same_day = tmall.load(tmp_path, min_user_actions=0, max_delay_days=0)
    lab = {(r.item_id, r.timestamp): r.label for r in same_day.events.itertuples()}
    assert lab[(11, 130)] == 1 and lab[(10, 130)] == -1 and lab[(13, 313)] == -1
    raw_rows = tmall.load(tmp_path, min_user_actions=0, dedup_clicks=False)
    assert len(raw_rows.events) == 7
    assert set(tmall.load(tmp_path, min_user_actions=3).events["user_id"]) == {1}
    with pytest.raises(ConfigError, match="conversion_actions"):
        tmall.load(tmp_path, min_user_actions=0, conversion_actions=(0,))


def test_cvr_labels_equal_brute_force():
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame({"user_id": rng.integers(0, 5, n), "item_id": rng.integers(0, 6, n),
                          "timestamp": rng.integers(0, 30, n), "action": rng.integers(0, 3, n)})
    clicks, carts = frame[frame.action == 0], frame[frame.action == 1]
    for delay in (None, 0, 3):
        fast = tmall.cvr_labels(clicks, carts, delay)
        slow = [1 if any((c.user_id == k.user_id) & (c.item_id == k.item_id) &
                         (k.timestamp <= c.timestamp) &
                         (delay is None or c.timestamp - k.timestamp <= delay)
                         for c in carts.itertuples()) else -1
                for k in clicks.itertuples()]
        np.testing.assert_array_equal(fast, slow)
    assert (tmall.cvr_labels(clicks, carts.iloc[:0]) == -1).all()


def test_tmall_image_vectors(tmp_path, caplog):
    F.write_tmall(tmp_path)
    vec = {10: [1.0, 2.0, 3.0], 11: [4.0, 5.0, 6.0], 12: [0.5, 0.5, 0.5]}
    path = tmp_path / "images.parquet"
    pq.write_table(pa.table({"item_id": pa.array(list(vec), pa.int64()),
                             "clip": pa.array(list(vec.values()), pa.list_(pa.float32()))}), path)
    with caplog.at_level(logging.WARNING):
        log = tmall.load(tmp_path, min_user_actions=0, image_emb=path)
    assert log.dense == {"image_emb": 3}
    np.testing.assert_array_equal(_vec(log.items, "image_emb", 11), [4.0, 5.0, 6.0])
    assert not _vec(log.items, "image_emb", 13).any()
    assert "1 of 4 item(s) have no 'image_emb' vector, e.g. item_id 13" in caplog.text
    npy = tmp_path / "images.npy"
    np.save(npy, np.arange(14 * 2, dtype=np.float32).reshape(14, 2))  # row r = item r
    log = tmall.load(tmp_path, min_user_actions=0, image_emb=npy, strict=True)
    np.testing.assert_array_equal(_vec(log.items, "image_emb", 13), [26.0, 27.0])


def test_tmall_bad_input(tmp_path):
    with pytest.raises(DataError, match=r"user_log_format1\.csv: Tmall user log not found"):
        tmall.load(tmp_path)
    F.write_tmall(tmp_path, header=F.TMALL_HEADER.replace("action_type", "action"))
    with pytest.raises(DataError, match=r"user_log_format1\.csv: missing column\(s\) "
                                        r"\['action_type'\]"):
        tmall.load(tmp_path, min_user_actions=0)
    F.write_tmall(tmp_path, rows=F.TMALL_ROWS + [(3, 10, 3, 100, 7, 1332, 0)])
    with pytest.raises(DataError, match=r"column 'time_stamp' holds 1332, not a valid mmdd"):
        tmall.load(tmp_path, min_user_actions=0)
    F.write_tmall(tmp_path, rows=F.TMALL_ROWS + [(3, 10, "", 100, 7, 511, 0)])
    with pytest.raises(DataError, match=r"user_log_format1\.csv: column 'cat_id' has 1 missing"):
        tmall.load(tmp_path, min_user_actions=0)
    F.write_tmall(tmp_path, rows=F.TMALL_ROWS + [(3, 10, 3, 100, 7, 511, 4)])
    with pytest.raises(DataError, match=r"column 'action_type' must be 0\.\.3, found 4"):
        tmall.load(tmp_path, min_user_actions=0)

    F.write_tmall(tmp_path)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"item_id": pa.array([10, 11], pa.int64()),
                             "clip": pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32()))}), bad)
    with pytest.raises(DataError, match=r"bad\.parquet: column 'clip'.*id 11 has 1"):
        tmall.load(tmp_path, min_user_actions=0, image_emb=bad)
    pq.write_table(pa.table({"item_id": pa.array([10, 11], pa.int64()),
                             "clip": pa.array([[1.0, 2.0], [3.0, np.nan]],
                                              pa.list_(pa.float32()))}), bad)
    with pytest.raises(DataError, match=r"bad\.parquet: column 'clip': vector of id 11 holds NaN"):
        tmall.load(tmp_path, min_user_actions=0, image_emb=bad)
    with pytest.raises(DataError, match=r"nope\.parquet: image vector file"):
        tmall.load(tmp_path, min_user_actions=0, image_emb=tmp_path / "nope.parquet")


# ----------------------------------------------------------------------------- ebnerd

def test_ebnerd_impressions_and_history(tmp_path, caplog):
    root, vectors = F.write_ebnerd(tmp_path / "ebnerd_small")
    with caplog.at_level(logging.WARNING):
        log = ebnerd.load(root, min_user_actions=0)
    ev = log.events
    _event_dtypes_ok(ev)
    assert _sorted_by_user_time(ev)
    # 3 + 2 + 2 + 2 in-view events; history reads before the first impression, each once:
    # user 10: 100, 103 (in both history files); user 20: 101. The validation history's read
    # during the train week (101 at May 18 07:01) repeats impression clicks and is dropped.
    assert len(ev) == 9 + 3
    t0 = int(pd.Timestamp("2023-05-18 07:00").timestamp())
    imp1 = ev[ev["timestamp"] == t0]
    assert imp1[["user_id", "item_id", "label"]].values.tolist() == \
        [[10, 100, -1], [10, 101, 1], [10, 102, -1]]
    reads = ev[ev["timestamp"] < t0]
    assert sorted(reads[["user_id", "item_id"]].values.tolist()) == \
        [[10, 100], [10, 103], [20, 101]]
    assert (reads["label"] == 1).all()
    assert int(pd.Timestamp("2023-05-01 06:00").timestamp()) in set(reads["timestamp"])
    val = ev[ev["timestamp"] == int(pd.Timestamp("2023-05-25 12:00").timestamp())]
    assert val[["item_id", "label"]].values.tolist() == [[105, 1], [100, -1]]
    assert int((ev["label"] == 1).sum()) == 3 + 4

    items = log.items.set_index("item_id")
    assert items.loc[100, ["category", "subcategory"]].tolist() == [414, 432]
    assert items.loc[101, "subcategory"] == ebnerd.MISSING  # empty subcategory list
    assert items.loc[104, ["category", "subcategory"]].tolist() == [-1, -1]  # not in articles
    assert "1 of 6 event article(s) are missing, e.g. article_id 104" in caplog.text
    assert log.dense == {"article_emb": 6}
    np.testing.assert_array_equal(items.loc[103, "article_emb"], vectors[103])


def test_ebnerd_member_equals_isin():
    rng = np.random.default_rng(4)
    keys, table = rng.integers(0, 50, 300), rng.integers(0, 50, 40)
    np.testing.assert_array_equal(ebnerd._member(keys, table), np.isin(keys, table))
    assert not ebnerd._member(keys, table[:0]).any()


def test_ebnerd_history_modes_and_filters(tmp_path):
    root, _ = F.write_ebnerd(tmp_path)
    assert len(ebnerd.load(root, min_user_actions=0, history_reads="all").events) == 13
    assert len(ebnerd.load(root, min_user_actions=0, history_reads="none").events) == 9
    only_train = ebnerd.load(root, min_user_actions=0, splits=["train"], article_emb=None)
    assert len(only_train.events) == 7 + 3 and only_train.dense == {}
    assert set(ebnerd.load(root, min_user_actions=4).events["user_id"]) == {10}
    with pytest.raises(ConfigError, match="history_reads"):
        ebnerd.load(root, history_reads="later")
    with pytest.raises(DataError, match="e.g. article_id 104"):
        ebnerd.load(root, min_user_actions=0, strict=True)


def test_ebnerd_embedding_file_found_beside_the_dataset(tmp_path):
    root, vectors = F.write_ebnerd(tmp_path / "ebnerd_small")
    beside = tmp_path / F.EBNERD_EMB_FILE
    beside.parent.mkdir(parents=True)
    (root / F.EBNERD_EMB_FILE).rename(beside)
    log = ebnerd.load(root, min_user_actions=0)
    np.testing.assert_array_equal(_vec(log.items, "article_emb", 105), vectors[105])
    beside.unlink()
    with pytest.raises(DataError, match="article vector file not found"):
        ebnerd.load(root, min_user_actions=0)


def test_ebnerd_bad_input(tmp_path):
    root, _ = F.write_ebnerd(tmp_path)
    (root / "validation" / "history.parquet").unlink()
    with pytest.raises(DataError,
                       match=r"validation/history\.parquet: EBNeRD history file not found"):
        ebnerd.load(root, min_user_actions=0)

    root, _ = F.write_ebnerd(tmp_path / "noclick")
    pq.write_table(F.ebnerd_behaviors_table(F.EBNERD_BEHAVIORS["train"], with_clicked=False),
                   root / "train" / "behaviors.parquet")  # the test set's schema: no clicks
    with pytest.raises(DataError, match=r"train/behaviors\.parquet: missing column\(s\) "
                                        r"\['article_ids_clicked'\]"):
        ebnerd.load(root, min_user_actions=0)

    root, _ = F.write_ebnerd(tmp_path / "ragged")
    pq.write_table(F.ebnerd_history_table(F.EBNERD_HISTORY["train"], drop_last_time=True),
                   root / "train" / "history.parquet")
    with pytest.raises(DataError, match=r"train/history\.parquet: row 0: columns "
                                        r"'article_id_fixed' and 'impression_time_fixed'"):
        ebnerd.load(root, min_user_actions=0)

    root, _ = F.write_ebnerd(tmp_path / "width")
    table, _ = F.ebnerd_embedding_table([100, 101, 102], width=4)
    vecs = table.column(F.EBNERD_EMB_COLUMN).to_pylist()
    vecs[1] = vecs[1][:3]
    pq.write_table(table.set_column(1, F.EBNERD_EMB_COLUMN, pa.array(vecs, pa.list_(pa.float32()))),
                   root / F.EBNERD_EMB_FILE)
    with pytest.raises(DataError, match=r"bert_base_multilingual_cased\.parquet: column "
                                        r"'google-bert/bert-base-multilingual-cased'.*"
                                        r"id 101 has 3"):
        ebnerd.load(root, min_user_actions=0)
    vecs[1] = [float("nan")] * 4
    pq.write_table(table.set_column(1, F.EBNERD_EMB_COLUMN, pa.array(vecs, pa.list_(pa.float32()))),
                   root / F.EBNERD_EMB_FILE)
    with pytest.raises(DataError, match=r"'google-bert/bert-base-multilingual-cased': vector of "
                                        r"id 101 holds NaN"):
        ebnerd.load(root, min_user_actions=0)


def test_preparer_defaults_are_declared():
    for module in (microvideo, tmall, ebnerd):
        for name in ("DEFAULT_T1", "DEFAULT_T2"):
            value = getattr(module, name)
            assert value.startswith("q") and 0.0 < float(value[1:]) < 1.0
        assert float(module.DEFAULT_T1[1:]) < float(module.DEFAULT_T2[1:])
        assert module.MIN_HISTORY > 0


# ----------------------------------------------------------------------------- dataset configs

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def _fixture_log(name, tmp_path):
    if name == "microvideo":
        F.write_microvideo(tmp_path / "raw")
        return {"image_dim": 4}, microvideo.load(tmp_path / "raw", min_user_actions=0, image_dim=4)
    if name == "tmall":
        F.write_tmall(tmp_path / "raw")
        return {}, tmall.load(tmp_path / "raw", min_user_actions=0)
    F.write_ebnerd(tmp_path / "raw")
    return {}, ebnerd.load(tmp_path / "raw", min_user_actions=0)


@pytest.mark.parametrize("name", ["microvideo", "tmall", "ebnerd"])
def test_dataset_config_matches_the_preparer(name, tmp_path):
    import yaml

    config = yaml.safe_load((REPO / "dataset_configs" / f"{name}.yaml").read_text())
    assert list(config) == [name, f"{name}_chime", f"{name}_learn"]
    block = config[name]
    for variant, column in (("chime", "chime_hist"), ("learn", "learn_emb")):  # same files, one column on
        twin = config[f"{name}_{variant}"]
        assert {k: v for k, v in twin.items() if k != "feature_cols"} == \
            {k: v for k, v in block.items() if k != "feature_cols"}
        expected = [{**c, "active": True} if c["name"] == column else c
                    for c in block["feature_cols"]
                    if str(c["name"]) not in ({"chime_hist", "learn_emb"} - {column})]
        assert twin["feature_cols"] == expected
    assert block["label_col"] == {"name": "label", "dtype": "float"}
    assert block["rebuild_dataset"] is False and block["max_len"] == 1000
    for key in ("train_data", "valid_data", "test_data", "user_info", "item_info"):
        assert block[key] == f"../data/{name}/{key.replace('_data', '')}.parquet"
    cols = {}
    for col in block["feature_cols"]:
        for n in (col["name"] if isinstance(col["name"], list) else [col["name"]]):
            cols[n] = col
    assert {n for n, c in cols.items() if c["type"] == "meta"} == \
        {"user_index", "item_index", "seq_len"}
    for user_col in ("chime_hist", "learn_emb"):
        assert cols[user_col]["active"] is False and cols[user_col]["source"] == "user"
        assert cols[user_col]["pretrain_dim"] == 64 and cols[user_col]["dtype"] == "list"
    _, log = _fixture_log(name, tmp_path)
    categorical = {n for n, c in cols.items() if c["type"] == "categorical"}
    assert categorical == {"item_id", *log.categorical}
    dense = {n: c for n, c in cols.items() if c["type"] == "embedding" and c["source"] == "item"}
    assert set(log.dense) <= set(dense)
    for col in dense.values():
        assert col["dtype"] == "list" and col["embedding_dim"] == 64
    widths = {"microvideo": ("image_emb", microvideo.IMAGE_DIM), "tmall": ("image_emb", 256),
              "ebnerd": ("article_emb", 768)}[name]
    assert dense[widths[0]]["pretrain_dim"] == widths[1]


@pytest.mark.parametrize("name", ["microvideo", "tmall", "ebnerd"])
def test_dataset_config_loads_prepared_fixture(name, tmp_path):
    """prepare on the tiny raw fixture into data/<name>/, then the repository's YAML (copied
    beside it as dataset_configs/<name>.yaml) builds a feature map and feeds the loader."""
    preparers = pytest.importorskip("fuxictr_chime.data.preparers")
    from fuxictr_chime.data.features import build_feature_map, load_dataset_params
    from fuxictr_chime.data.loader import LongSeqDataLoader

    options, log = _fixture_log(name, tmp_path)
    preparers.prepare(name, tmp_path / "data" / name, raw_dir=tmp_path / "raw", t1="q0.4",
                      t2="q0.8", min_user_actions=0, **options)
    (tmp_path / "dataset_configs").mkdir()
    yaml_path = tmp_path / "dataset_configs" / f"{name}.yaml"
    yaml_path.write_text((REPO / "dataset_configs" / f"{name}.yaml").read_text())
    params = load_dataset_params(yaml_path, name)
    specs = [{"name": col, "pretrain_dim": width} for col, width in log.dense.items()]
    fmap = build_feature_map(name, params, feature_specs=specs)
    for col in log.categorical:
        assert fmap.features[col]["vocab_size"] >= 2
    loader = LongSeqDataLoader(fmap, params["train_data"], split="train", batch_size=64,
                               user_info=params["user_info"], item_info=params["item_info"],
                               max_len=5, prefetch=False)
    batch = next(iter(loader))
    n = loader.num_samples
    assert batch["item_seq"].shape == (n, 6) and batch["label"].shape[0] == n
    for col, width in log.dense.items():
        assert batch[col].shape == (n, width)


@pytest.mark.parametrize("name", ["microvideo", "tmall", "ebnerd"])
def test_prepared_config_runs_fuxictrs_own_feature_processor(name, tmp_path, monkeypatch):
    """The config `prepare` writes beside the data has every vocab_size, so FuxiCTR's own
    FeatureProcessor -> build_dataset(rebuild_dataset=False) -> FeatureMap.load accepts it
    (the repository's generic YAML cannot: its sizes depend on the raw files)."""
    import os

    import yaml
    from fuxictr.features import FeatureMap
    from fuxictr.preprocess import FeatureProcessor, build_dataset

    preparers = pytest.importorskip("fuxictr_chime.data.preparers")
    options, log = _fixture_log(name, tmp_path)
    data = tmp_path / "data" / name
    preparers.prepare(name, data, raw_dir=tmp_path / "raw", t1="q0.4", t2="q0.8", min_user_actions=0,
                      **options)
    params = {"dataset_id": name, **yaml.safe_load((data / "dataset_config.yaml").read_text())[name]}
    monkeypatch.chdir(data)  # the written paths are relative to the folder
    encoder = FeatureProcessor(**params)
    build_dataset(encoder, **params)
    data_dir = os.path.join(params["data_root"], name)
    feature_map = FeatureMap(name, data_dir)
    feature_map.load(os.path.join(data_dir, "feature_map.json"), params)
    for col in ["item_id", *log.categorical]:
        assert feature_map.features[col]["vocab_size"] >= 2
