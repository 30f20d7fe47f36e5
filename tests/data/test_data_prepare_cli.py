"""``fuxictr-chime prepare``: registry, command line, real ml-100k, --source folders, bad input."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from fuxictr_chime import cli
from fuxictr_chime.data import preparers
from fuxictr_chime.data.commands import parse_options
from fuxictr_chime.errors import ConfigError, DataError

from .test_data_movielens import ML1M_ITEM, write_recbole
from .test_data_writer import LAYOUT

REPO = Path(__file__).resolve().parents[2]
HAS_RECBOLE = importlib.util.find_spec("recbole") is not None
# 6 users x 10 ratings at times 1..60 (user u rates at u, u+6, ...): every window has events
ML1M_INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
    f"{u}\t{[10, 20, 30][(u + k) % 3]}\t{1 + (u * k) % 5}\t{u + 6 * k}\n"
    for u in range(1, 7) for k in range(10))


def _source(tmp_path) -> Path:
    return write_recbole(tmp_path / "ml-1m-tiny", inter=ML1M_INTER, item=ML1M_ITEM)


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_source_folder_with_ml1m_headers(tmp_path, capsys):
    out = tmp_path / "prepared"
    code, stdout, _ = _run(capsys, "prepare", "movielens", "--source", str(_source(tmp_path)),
                           "--out", str(out), "--t1", "21", "--t2", "q0.8", "--valid-ratio",
                           "0.2", "--max-len", "5", "--no-text", "--dataset-id", "ml_tiny")
    assert code == 0
    assert set(os.listdir(out)) == LAYOUT
    summary = json.loads((out / "summary.json").read_text())
    assert summary["t1"] == 21 and summary["t2"] == 49 and summary["max_len"] == 5
    assert summary["users"] == 6 and summary["items"] == 3 and summary["events"] == 60
    assert sum(p["samples"] for p in summary["partitions"].values()) == 60
    assert "representation" in stdout and "p90.len" in stdout and str(out) in stdout
    config = yaml.safe_load((out / "dataset_config.yaml").read_text())
    names = [c["name"] for c in config["ml_tiny"]["feature_cols"]]
    assert "title_emb" not in names and "cate_id" in names  # --no-text
    times = pq.read_table(out / "representation.parquet").column("time_seq").to_pylist()
    assert max(max(t) for t in times) < 21


def test_option_and_registry_defaults(tmp_path, capsys):
    out = tmp_path / "prepared"
    code, _, err = _run(capsys, "prepare", "movielens", "--source", str(_source(tmp_path)),
                        "--out", str(out), "--no-text", "--option", "min_user_actions=11")
    assert code == 1 and "behavior log is empty" in err  # every user has 10 < 11 ratings
    code, _, _ = _run(capsys, "prepare", "movielens", "--source", str(_source(tmp_path)),
                      "--out", str(out), "--no-text", "--option", "min_user_actions=10")
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    # movielens defaults t1 = q0.5, t2 = q0.8 over times 1..60: sorted[30] = 31, sorted[48] = 49
    assert (summary["t1"], summary["t2"]) == (31, 49)
    assert preparers.get_preparer("movielens").thresholds() == ("q0.5", "q0.8")


def test_parse_options():
    assert parse_options(["a=1", "b=x", "c=[1, 2]", "d="]) == {"a": 1, "b": "x", "c": [1, 2],
                                                               "d": ""}
    for bad in ("novalue", "=3", "k=[1"):
        with pytest.raises(ConfigError, match="--option"):
            parse_options([bad])


@pytest.mark.parametrize("argv,message", [
    (["prepare", "netflix", "--out", "X"], "unknown preparer 'netflix'; known: ['ebnerd', "
                                           "'microvideo', 'movielens', 'synthetic', 'tmall']"),
    (["prepare", "movielens", "--out", "X", "--source", "SRC", "--t1", "40", "--t2", "30"],
     "must be smaller than t2"),
    (["prepare", "movielens", "--out", "X", "--source", "SRC", "--t1", "0", "--t2", "30"],
     "t1=0 ('0'): no event before t1 (representation set empty)"),
    (["prepare", "movielens", "--out", "X", "--source", "SRC", "--t1", "10", "--t2", "61"],
     "t2=61 ('61'): no event at or after t2 (test set empty)"),
    (["prepare", "movielens", "--out", "X", "--source", "SRC", "--t1", "q2"], "t1: quantile"),
    (["prepare", "movielens", "--out", "X", "--source", "SRC", "--option", "colour=red"],
     "unknown option(s) ['colour']"),
    (["prepare", "microvideo", "--out", "X"], "needs the raw data folder (--raw DIR)"),
])
def test_bad_input_exits_with_one_clear_error_and_writes_nothing(tmp_path, capsys, argv, message):
    src = str(_source(tmp_path))
    out = tmp_path / "out"
    argv = [str(out) if a == "X" else src if a == "SRC" else a for a in argv] + ["--no-text"]
    code, _, err = _run(capsys, *argv)
    assert code == 1
    assert message in err and err.startswith("fuxictr-chime prepare: error:")
    assert not out.exists()


def test_missing_inter_column_names_file_and_column(tmp_path, capsys):
    src = write_recbole(tmp_path / "src", inter=ML1M_INTER.replace("rating:float", "stars:float"),
                        item=ML1M_ITEM)
    code, _, err = _run(capsys, "prepare", "movielens", "--source", str(src), "--out",
                        str(tmp_path / "out"), "--no-text")
    assert code == 1 and "ml-tiny.inter: missing column(s) ['rating']" in err
    assert not (tmp_path / "out").exists()


def test_library_entry_points():
    with pytest.raises(DataError, match="unknown preparer 'x'"):
        preparers.prepare("x", "unused")
    assert preparers.PREPARERS["movielens"].text_option == "encode_titles"
    assert {p.name for p in preparers.PREPARERS.values()} == {"movielens", "microvideo", "tmall",
                                                              "ebnerd", "synthetic"}


@pytest.mark.skipif(not HAS_RECBOLE, reason="recbole wheel absent")
def test_prepare_real_ml100k_matches_the_shipped_dataset_config(tmp_path, capsys):
    out = tmp_path / "movielens"
    code, stdout, _ = _run(capsys, "prepare", "movielens", "--out", str(out), "--no-text")
    assert code == 0 and set(os.listdir(out)) == LAYOUT
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["users"], summary["items"], summary["events"]) == (943, 1682, 100_000)
    parts = summary["partitions"]
    assert sum(p["samples"] for p in parts.values()) == 100_000
    assert parts["representation"]["users"] > 400 and parts["test"]["samples"] > 15_000
    assert "943 users, 1682 items, 100000 events" in stdout
    # dataset_configs/movielens.yaml carries the vocabulary sizes this preparation produces
    written = yaml.safe_load((out / "dataset_config.yaml").read_text())["movielens"]
    shipped = yaml.safe_load((REPO / "dataset_configs" / "movielens.yaml").read_text())["movielens"]
    vocab = {c["name"]: c["vocab_size"] for c in written["feature_cols"] if "vocab_size" in c}
    shipped_vocab = {c["name"]: c["vocab_size"] for c in shipped["feature_cols"]
                     if "vocab_size" in c}
    assert vocab == shipped_vocab == {"item_id": 1683, "cate_id": 20}
    assert shipped["train_data"] == "../data/movielens/train.parquet"
    inactive = {c["name"]: c for c in shipped["feature_cols"] if not c["active"]}
    assert set(inactive) == {"chime_hist", "learn_emb"}
    assert inactive["chime_hist"] == {"name": "chime_hist", "active": False, "dtype": "list",
                                      "type": "embedding", "source": "user", "pretrain_dim": 64,
                                      "embedding_dim": 16}
    text = next(c for c in shipped["feature_cols"] if c["name"] == "title_emb")
    assert text["pretrain_dim"] == 384 and text["source"] == "item"
