"""Tiny raw files in the exact published formats of MicroVideo1.7M, IJCAI-15 Tmall and EBNeRD.

Made-up values only (never real data). File names, column names, header lines and dtypes
(incl. EBNeRD's parquet list and timestamp[us] columns) follow the published releases.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

MICROVIDEO_HEADER = "user_id,item_id,cate_id,is_click,timestamp"
# (user_id, item_id, cate_id, is_click, timestamp): train ids 0..2, test ids restart at 0
MICROVIDEO_TRAIN = [
    (0, 0, 5, 1, 1000), (0, 1, 6, 0, 1001), (1, 0, 5, 0, 1002),
    (1, 2, 7, 1, 1003), (0, 2, 7, 1, 1004), (2, 1, 6, 1, 1005),
]
MICROVIDEO_TEST = [(0, 0, 8, 1, 2000), (1, 1, 5, 0, 2001), (1, 0, 8, 1, 2002)]
MICROVIDEO_WIDTH = 8


def write_microvideo(root: Path, *, train=MICROVIDEO_TRAIN, test=MICROVIDEO_TEST,
                     header: str = MICROVIDEO_HEADER, n_train_vectors: int = 3,
                     n_test_vectors: int = 2, test_width: int = MICROVIDEO_WIDTH,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """THACIL layout: train_data.csv / test_data.csv (headed) and two (N, width) .npy files.

    Returns the (train, test) vector matrices written.
    """
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train_data.csv", train), ("test_data.csv", test)):
        lines = [header] + [",".join(str(v) for v in row) for row in rows]
        (root / name).write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(seed)
    # distinct variances per axis so the PCA components are well separated
    scale = np.linspace(3.0, 0.5, MICROVIDEO_WIDTH, dtype=np.float32)
    train_vec = rng.standard_normal((n_train_vectors, MICROVIDEO_WIDTH)) * scale
    train_vec = train_vec.astype(np.float32)
    test_vec = (rng.standard_normal((n_test_vectors, test_width)) *
                np.linspace(3.0, 0.5, test_width)).astype(np.float32)
    np.save(root / "train_cover_image_feature.npy", train_vec)
    np.save(root / "test_cover_image_feature.npy", test_vec)
    return train_vec, test_vec


def write_microvideo_bars(root: Path, *, n_train_items: int = 3, width: int = 4,
                          seed: int = 1) -> np.ndarray:
    """BARS MicroVideo1.7M_x1: train.csv / test.csv (two extra history columns, test ids
    already shifted by the number of train items) and item_image_emb_dim64.h5 (key, value).

    Returns the (items, width) matrix stored under keys 0..items-1.
    """
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    header = MICROVIDEO_HEADER + ",clicked_items,clicked_categories"
    for name, rows, shift in (("train.csv", MICROVIDEO_TRAIN, 0),
                              ("test.csv", MICROVIDEO_TEST, n_train_items)):
        lines = [header] + [f"{u},{i + shift},{c},{k},{t},1^2,5^6" for u, i, c, k, t in rows]
        (root / name).write_text("\n".join(lines) + "\n")
    n_items = n_train_items + 1 + max(r[1] for r in MICROVIDEO_TEST)
    values = np.random.default_rng(seed).standard_normal((n_items, width)).astype(np.float32)
    with h5py.File(root / "item_image_emb_dim64.h5", "w") as fh:
        fh.create_dataset("key", data=np.arange(n_items))
        fh.create_dataset("value", data=values)
    return values


TMALL_HEADER = "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type"
# (user_id, item_id, cat_id, seller_id, brand_id or "", time_stamp mmdd, action_type)
TMALL_ROWS = [
    (1, 10, 3, 100, 7, 511, 0),    # click; cart next day -> +1
    (1, 10, 3, 100, 7, 512, 1),    # cart
    (1, 10, 3, 100, 7, 513, 0),    # click after the last cart -> -1
    (1, 11, 4, 101, "", 511, 0),   # click; cart the same day -> +1; brand missing
    (1, 11, 4, 101, "", 511, 1),   # cart
    (1, 12, 3, 102, 8, 601, 0),    # click; only a purchase later -> -1 (+1 if buy converts)
    (1, 12, 3, 102, 8, 602, 2),    # purchase
    (2, 10, 3, 100, 7, 1111, 0),   # click; user 1's cart does not count -> -1
    (2, 13, 5, 100, 9, 1110, 0),   # click; cart next day -> +1 (-1 with max_delay_days=0)
    (2, 13, 5, 100, 9, 1110, 0),   # identical click: one sample with dedup_clicks
    (2, 13, 5, 100, 9, 1111, 1),   # cart
    (2, 14, 5, 103, 9, 1111, 1),   # cart without a click: no sample
    (2, 13, 5, 100, 9, 1112, 3),   # favourite
]


def write_tmall(root: Path, *, rows=TMALL_ROWS, header: str = TMALL_HEADER,
                subfolder: bool = False) -> Path:
    """IJCAI-15 ``user_log_format1.csv`` (headed; empty brand_id cells as published)."""
    folder = root / "data_format1" if subfolder else root
    folder.mkdir(parents=True, exist_ok=True)
    lines = [header] + [",".join(str(v) for v in row) for row in rows]
    path = folder / "user_log_format1.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _t(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2023, 5, day, hour, minute, 0)


# impressions per split: (impression_id, user_id, time, inview, clicked)
EBNERD_BEHAVIORS = {
    "train": [
        (1, 10, _t(18, 7), [100, 101, 102], [101]),
        (2, 10, _t(18, 8), [102, 103], [103]),
        (3, 20, _t(19, 9), [100, 104], [100]),
    ],
    "validation": [(4, 10, _t(25, 12), [105, 100], [105])],
}
# history per split: user_id -> [(article_id, read time)]; the files overlap in time
EBNERD_HISTORY = {
    "train": {10: [(100, _t(1, 6)), (103, _t(2, 6))], 20: [(101, _t(3, 6))]},
    "validation": {10: [(100, _t(1, 6)), (103, _t(2, 6)), (101, _t(18, 7, 1))]},
}
# article_id -> (category, subcategory list); 104 is left out of articles.parquet on purpose
EBNERD_ARTICLES = {100: (414, [432, 433]), 101: (118, []), 102: (414, [435]),
                   103: (142, [144]), 105: (118, [129, 130])}
EBNERD_EMB_COLUMN = "google-bert/bert-base-multilingual-cased"
EBNERD_EMB_FILE = "google_bert_base_multilingual_cased/bert_base_multilingual_cased.parquet"


def ebnerd_behaviors_table(rows, *, with_clicked: bool = True):
    """``behaviors.parquet`` with the published schema (17 columns, 16 without clicks)."""
    import pyarrow as pa

    n = len(rows)
    columns = {
        "impression_id": pa.array([r[0] for r in rows], pa.uint32()),
        "article_id": pa.array([None] * n, pa.float64()),
        "impression_time": pa.array([r[2] for r in rows], pa.timestamp("us")),
        "read_time": pa.array([12.0] * n, pa.float32()),
        "scroll_percentage": pa.array([None] * n, pa.float32()),
        "device_type": pa.array([2] * n, pa.int8()),
        "article_ids_inview": pa.array([r[3] for r in rows], pa.list_(pa.int32())),
        "article_ids_clicked": pa.array([r[4] for r in rows], pa.list_(pa.int32())),
        "user_id": pa.array([r[1] for r in rows], pa.uint32()),
        "is_sso_user": pa.array([False] * n, pa.bool_()),
        "gender": pa.array([None] * n, pa.float64()),
        "postcode": pa.array([None] * n, pa.float64()),
        "age": pa.array([None] * n, pa.float64()),
        "is_subscriber": pa.array([False] * n, pa.bool_()),
        "session_id": pa.array(list(range(1, n + 1)), pa.uint32()),
        "next_read_time": pa.array([30.0] * n, pa.float32()),
        "next_scroll_percentage": pa.array([100.0] * n, pa.float32()),
    }
    if not with_clicked:
        del columns["article_ids_clicked"]
    return pa.table(columns)


def ebnerd_history_table(history: dict, *, drop_last_time: bool = False):
    """``history.parquet``: one row per user, aligned list columns (published schema)."""
    import pyarrow as pa

    users = sorted(history)
    times = [[t for _, t in history[u]] for u in users]
    if drop_last_time:
        times[0] = times[0][:-1]
    return pa.table({
        "user_id": pa.array(users, pa.uint32()),
        "impression_time_fixed": pa.array(times, pa.list_(pa.timestamp("us"))),
        "scroll_percentage_fixed": pa.array([[50.0] * len(history[u]) for u in users],
                                            pa.list_(pa.float32())),
        "article_id_fixed": pa.array([[a for a, _ in history[u]] for u in users],
                                     pa.list_(pa.int32())),
        "read_time_fixed": pa.array([[20.0] * len(history[u]) for u in users],
                                    pa.list_(pa.float32())),
    })


def ebnerd_articles_table(articles: dict = EBNERD_ARTICLES):
    """``articles.parquet`` with the published 21-column schema."""
    import pyarrow as pa

    ids = sorted(articles)
    n = len(ids)
    when = pa.array([_t(1, 0)] * n, pa.timestamp("us"))
    text = pa.array([f"text {i}" for i in ids], pa.string())
    strings = pa.array([["x"]] * n, pa.list_(pa.string()))
    return pa.table({
        "article_id": pa.array(ids, pa.int32()), "title": text, "subtitle": text,
        "last_modified_time": when, "premium": pa.array([False] * n, pa.bool_()), "body": text,
        "published_time": when, "image_ids": pa.array([[1]] * n, pa.list_(pa.int64())),
        "article_type": pa.array(["article_default"] * n, pa.string()), "url": text,
        "ner_clusters": strings, "entity_groups": strings, "topics": strings,
        "category": pa.array([articles[i][0] for i in ids], pa.int16()),
        "subcategory": pa.array([articles[i][1] for i in ids], pa.list_(pa.int16())),
        "category_str": pa.array(["nyheder"] * n, pa.string()),
        "total_inviews": pa.array([None] * n, pa.float64()),
        "total_pageviews": pa.array([None] * n, pa.float64()),
        "total_read_time": pa.array([None] * n, pa.float32()),
        "sentiment_score": pa.array([0.9] * n, pa.float32()),
        "sentiment_label": pa.array(["Neutral"] * n, pa.string()),
    })


def ebnerd_embedding_table(ids, width: int = 6, seed: int = 0):
    """Article vectors as Ekstra Bladet ships them: ``article_id`` + one list<float> column."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(ids), width)).astype(np.float32)
    return pa.table({"article_id": pa.array(ids, pa.int32()),
                     EBNERD_EMB_COLUMN: pa.array(list(vectors), pa.list_(pa.float32()))}), vectors


def write_ebnerd(root: Path, *, emb_ids=(100, 101, 102, 103, 104, 105), width: int = 6
                 ) -> tuple[Path, dict[int, np.ndarray]]:
    """An ``ebnerd_small``-shaped folder plus the BERT vector file inside it.

    Returns the dataset folder and article_id -> vector written.
    """
    import pyarrow.parquet as pq

    for split, rows in EBNERD_BEHAVIORS.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(ebnerd_behaviors_table(rows), root / split / "behaviors.parquet")
        pq.write_table(ebnerd_history_table(EBNERD_HISTORY[split]),
                       root / split / "history.parquet")
    pq.write_table(ebnerd_articles_table(), root / "articles.parquet")
    table, vectors = ebnerd_embedding_table(list(emb_ids), width)
    (root / EBNERD_EMB_FILE).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / EBNERD_EMB_FILE)
    return root, dict(zip(emb_ids, vectors))
