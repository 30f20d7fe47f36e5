"""Non-learned controls (``hist_ctrl``, ``stats_ctrl``) and ``bench table2`` with them and ``--coverage``.

A hand-made prepared folder (4 users, items with a ``cate_id``; user 3 has no history before t1,
user 2 only negatives) checks the columns against hand counts: the category histogram of the
positives (incl. folding 70 categories into 63 + "other"), popularity-rank bins without a
categorical attribute, [positive rate, log(1 + length)], and that the export keeps one row per
user_info user and writes the feature spec. On the tiny prepared data of ``test_bench_e2e``
(some users' representation rows removed, so they have no history): ``DIN_HIST`` trains through
the bench's runner call, and ``bench table2 --variants plain,HIST,STATS --coverage`` writes the
control rows without training any compressor, the history share in the header, and
``table2_with_history.md`` whose "all" column reproduces runs.csv.
"""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from fuxictr_chime.cli import main
from fuxictr_chime.compressor import controls
from fuxictr_chime.errors import ConfigError
from tests.bench.test_bench_e2e import DATASET, METRICS, _bench, _table_row, _write_data, _write_zoo

T1 = 100


# ---------------------------------------------------------------------------- a hand-made folder
def _write_hand_folder(folder: Path, sequences: dict[int, list[tuple[int, int]]], cate: list[int] | None,
                       n_users: int = 4) -> Path:
    """``sequences``: user -> [(item, label), ...] before t1; ``cate``: cate_id of items 1..I (None:
    no categorical attribute, 70 items)."""
    folder.mkdir(parents=True)
    n_items = len(cate) if cate is not None else 70
    items = {"item_index": np.arange(n_items + 1), "item_id": np.arange(n_items + 1)}
    if cate is not None:
        items["cate_id"] = np.array([0, *cate], np.int64)
    pq.write_table(pa.table(items), folder / "item_info.parquet")
    users = sorted(sequences)
    pq.write_table(pa.table({
        "user_index": np.array(users, np.int64),
        "item_seq": pa.array([[i for i, _ in sequences[u]] for u in users], pa.list_(pa.int64())),
        "label_seq": pa.array([[y for _, y in sequences[u]] for u in users], pa.list_(pa.int8())),
        "time_seq": pa.array([list(range(len(sequences[u]))) for u in users], pa.list_(pa.int64()))}),
        folder / "representation.parquet")
    pq.write_table(pa.table({"user_index": np.arange(n_users + 1, dtype=np.int64),
                             "age": np.arange(n_users + 1, dtype=np.int64) * 10}), folder / "user_info.parquet")
    (folder / "summary.json").write_text(json.dumps({"t1": T1}))
    (folder / "dataset_config.yaml").write_text(yaml.safe_dump({"hand": {"feature_cols": [
        {"name": "user_index", "active": True, "dtype": "int", "type": "meta"}]}}))
    return folder


SMALL = {1: [(1, 1), (2, 1), (1, -1), (3, 1), (2, -1)],  # items 1, 2 in category 2, item 3 in category 1
         2: [(4, -1), (1, -1)],                           # only negatives
         4: [(2, 1), (3, 1), (3, 1), (4, -1)]}             # user 3: no history
SMALL_CATE = [2, 2, 1, 3]  # cate_id of items 1..4


def test_histogram_of_few_categories_is_the_hand_count(tmp_path):
    data = controls.read_representation(_write_hand_folder(tmp_path / "d", SMALL, SMALL_CATE))
    counts, info = controls.hist_features(data, normalize=False)
    # positives: category 2 x 3 (items 1, 2, 2), category 1 x 3 (item 3 three times): a tie, the
    # smaller value first -> category 1 = bin 0, category 2 = bin 1; category 3 never positive
    assert info["attribute"] == "cate_id" and info["bin_of"] == {"1": 0, "2": 1}
    expected = np.zeros((5, 64), np.float32)
    expected[1, [0, 1]] = [1, 2]  # user 1: item 3 (cat 1), items 1 and 2 (cat 2)
    expected[4, [0, 1]] = [2, 1]  # user 4: item 3 twice, item 2
    np.testing.assert_array_equal(counts, expected)  # users 2 (negatives only), 3 (no history), 0: zeros
    freq, _ = controls.hist_features(data)
    np.testing.assert_allclose(freq[1, :2], [1 / 3, 2 / 3])
    np.testing.assert_allclose(freq[4, :2], [2 / 3, 1 / 3])
    assert freq.dtype == np.float32 and not freq[[0, 2, 3]].any()


def test_more_than_64_categories_fold_into_63_and_other(tmp_path):
    # item c has category c (70 categories); user 1 likes categories 1..35 and 5 once more, user 2
    # 36..70; user 2 dislikes category 5 (ignored). Ranking: category 5 (2 positives) first, then by
    # value: 1-4, 6-63 -> bins 1..62; 64..70 share bin 63
    sequences = {1: [(c, 1) for c in range(1, 36)] + [(5, 1)], 2: [(c, 1) for c in range(36, 71)] + [(5, -1)]}
    data = controls.read_representation(_write_hand_folder(tmp_path / "d", sequences, list(range(1, 71))))
    counts, info = controls.hist_features(data, normalize=False)
    bin_of = {5: 0, **{c: c for c in range(1, 5)}, **{c: c - 1 for c in range(6, 64)}, **{c: 63 for c in range(64, 71)},
              0: 63}  # value 0 (no positive) is "other" too
    assert info["bin_of"] == {str(c): b for c, b in bin_of.items()}
    user1, user2 = np.zeros(64), np.zeros(64)
    user1[0] = 2
    user1[1:5] = 1      # categories 1..4
    user1[5:35] = 1     # categories 6..35
    user2[35:63] = 1    # categories 36..63
    user2[63] = 7       # 64..70: "other"
    np.testing.assert_array_equal(counts[1], user1)
    np.testing.assert_array_equal(counts[2], user2)
    assert not counts[[0, 3, 4]].any()


def test_bins_by_hand():
    # category values 0..5 with positives [0, 2, 5, 5, 1, 0], 3 bins: 4 values seen > 3 -> values 2, 3
    # (5 each; the smaller first) own bins 0, 1; everything else is "other"
    np.testing.assert_array_equal(controls.category_bins(np.array([0, 2, 5, 5, 1, 0]), 3), [2, 2, 0, 1, 2, 2])
    np.testing.assert_array_equal(controls.category_bins(np.array([0, 2, 5, 0]), 3), [-1, 1, 0, -1])
    # items 1..6 with positives 5, 1, 0, 2, 1, 1 (10), 4 bins: ranked 1, 4, 2, 5, 6, 3; positives ranked
    # before: 0, 5, 7, 8, 9 -> floor(4 * . / 10) = 0, 2, 2, 3, 3; item 3 (none) -> last bin
    np.testing.assert_array_equal(controls.popularity_bins(np.array([0, 5, 1, 0, 2, 1, 1]), 4),
                                  [-1, 0, 2, 3, 2, 3, 3])
    np.testing.assert_array_equal(controls.popularity_bins(np.array([0, 1, 3, 0]), 64), [-1, 1, 0, 2])


def test_without_a_categorical_attribute_items_are_binned_by_popularity(tmp_path):
    sequences = {1: [(7, 1), (7, 1), (3, 1)], 2: [(3, 1), (9, -1)]}
    data = controls.read_representation(_write_hand_folder(tmp_path / "d", sequences, None))
    counts, info = controls.hist_features(data, normalize=False)
    assert info["attribute"] == "item_id" and info["binning"] == "popularity rank"
    # 70 items > 64: equal-mass bins; positives: item 7 x 2, item 3 x 2 (tie: 3 first) of 4 ->
    # item 3: floor(64 * 0 / 4) = 0, item 7: floor(64 * 2 / 4) = 32
    expected = np.zeros((5, 64))
    expected[1, [0, 32]] = [1, 2]
    expected[2, 0] = 1
    np.testing.assert_array_equal(counts, expected)
    with pytest.raises(ConfigError, match="no categorical attribute 'cate_id'"):
        controls.hist_features(data, attribute="cate_id")


def test_stats_are_positive_rate_and_log_length(tmp_path):
    data = controls.read_representation(_write_hand_folder(tmp_path / "d", SMALL, SMALL_CATE))
    stats = controls.stats_features(data)
    expected = np.array([[0, 0], [3 / 5, np.log(6)], [0, np.log(3)], [0, 0], [3 / 4, np.log(5)]], np.float32)
    np.testing.assert_allclose(stats, expected, rtol=1e-6)
    assert stats.dtype == np.float32


def test_export_writes_one_row_per_user_and_the_spec(tmp_path, capsys):
    folder = _write_hand_folder(tmp_path / "d", SMALL, SMALL_CATE)
    out = controls.export_controls(folder)
    table = pq.read_table(folder / "user_info.parquet").to_pydict()
    assert table["user_index"] == [0, 1, 2, 3, 4] and table["age"] == [0, 10, 20, 30, 40]  # rows and columns kept
    assert [len(v) for v in table["hist_ctrl"]] == [64] * 5 and [len(v) for v in table["stats_ctrl"]] == [2] * 5
    assert table["hist_ctrl"][3] == [0.0] * 64 and table["stats_ctrl"][3] == [0.0, 0.0]  # no history
    assert table["stats_ctrl"][1] == pytest.approx([0.6, np.log(6)])
    specs = {c["name"]: c for c in yaml.safe_load((folder / "dataset_config.yaml").read_text())["hand"]["feature_cols"]}
    for column, width in (("hist_ctrl", 64), ("stats_ctrl", 2)):
        assert specs[column] == {"name": column, "active": True, "dtype": "list", "type": "embedding",
                                 "source": "user", "pretrain_dim": width, "embedding_dim": 16}
        saved = json.loads((folder / f"{column}.json").read_text())
        assert saved["users"] == 4 and saved["users_with_history"] == 3 and saved["width"] == width
    assert out["hist"]["bin_of"] == {"1": 0, "2": 1} and out["stats"]["width"] == 2
    # the CLI: --which, --counts, and a real --help
    assert main(["compress", "controls", "--data", str(folder), "--which", "hist", "--counts"]) == 0
    assert "wrote hist_ctrl (64 floats) for 4 users (3 with history)" in capsys.readouterr().out
    assert pq.read_table(folder / "user_info.parquet").column("hist_ctrl")[1].as_py()[:2] == [1.0, 2.0]
    with pytest.raises(SystemExit) as done:
        main(["compress", "controls", "--help"])
    assert done.value.code == 0 and "hist_ctrl" in capsys.readouterr().out
    assert main(["compress", "controls", "--data", str(folder), "--which", "hist,bogus"]) == 1


# ---------------------------------------------------------------------------- the bench on tiny data
NO_HISTORY = (1, 2, 3, 4, 5, 6)  # users whose representation rows are removed


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> types.SimpleNamespace:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("controls")
    data = _write_data(root)
    path = data / "representation.parquet"
    table = pq.read_table(path)
    keep = ~np.isin(table.column("user_index").to_numpy(), NO_HISTORY)
    pq.write_table(table.filter(pa.array(keep)), path)
    yield types.SimpleNamespace(root=root, data=data, zoo=_write_zoo(root, data))
    torch.set_num_threads(threads)


def _no_compressor(mp: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("a compressor was trained or exported for a control")

    import fuxictr_chime.compressor.export as export
    import fuxictr_chime.compressor.train as train

    mp.setattr(train, "train", boom)
    mp.setattr(export, "export", boom)


def test_model_hist_trains_on_a_view(world, tmp_path):
    from fuxictr_chime.bench.pipeline import export_control, run_ranker
    from fuxictr_chime.bench.runs import make_data_view

    view = make_data_view(world.data, tmp_path / "view")
    stats = export_control("HIST", view)
    assert stats["users_with_history"] == 16 - len(NO_HISTORY) and export_control("HIST", view) == stats  # marker
    result = run_ranker("DIN", "HIST", DATASET, view, tmp_path / "models", seed=1, zoo=world.zoo,
                        overrides={"epochs": 1})
    assert result["model"] == "DIN_HIST" and result["expid"] == f"DIN_CHIME_{DATASET}"
    assert all(np.isfinite(result["test"][m]) for m in METRICS)
    state = torch.load(result["checkpoint"], map_location="cpu")
    names = [k for k in state if "feature_encoders" in k]
    assert any(".hist_ctrl." in k for k in names) and not any("chime_hist" in k or "stats_ctrl" in k for k in names)


@pytest.fixture(scope="module")
def table2(world) -> types.SimpleNamespace:
    out = world.root / "table2"
    argv = _bench(world, "table2", out, "--models", "DIN", "--seeds", "1", "--variants", "plain,HIST,STATS",
                  "--coverage")
    with pytest.MonkeyPatch.context() as mp:
        _no_compressor(mp)
        mp.setattr(sys, "argv", ["fuxictr-chime", *argv])
        assert main(argv) == 0
    return types.SimpleNamespace(out=out, argv=argv)


def test_table2_control_rows_without_a_compressor(table2):
    runs = pd.read_csv(table2.out / "runs.csv").set_index("variant")
    assert sorted(runs.index) == ["HIST", "STATS", "plain"]
    assert runs.loc["HIST", "expid"] == runs.loc["STATS", "expid"] == f"DIN_CHIME_{DATASET}"
    assert runs["compressor_checkpoint"].isna().all()
    seed = table2.out / "seed_1"
    assert not (seed / "chime").exists() and not (seed / "learn").exists()
    assert (seed / "models_hist" / DATASET / f"DIN_CHIME_{DATASET}.model").exists()
    assert (seed / "models_stats" / DATASET / f"DIN_CHIME_{DATASET}.model").exists()
    text = (table2.out / "table2.md").read_text()
    for variant, label in (("plain", "DIN"), ("HIST", "DIN w/ HIST"), ("STATS", "DIN w/ STATS")):
        cells = _table_row(text, label)
        assert [c.strip("*") for c in cells[:3]] == [f"{100 * runs.loc[variant, m]:.2f}" for m in METRICS]
    # header: the share of test rows whose user has history
    test = pq.read_table(seed / "data" / "test.parquet").column("user_index").to_numpy()
    has = ~np.isin(test, NO_HISTORY)
    assert f"{100 * has.mean():.2f}% ({has.sum()} of {len(test)} rows" in text
    assert "w/ HIST = the user's 64-bin category histogram" in text
    user = pq.read_table(seed / "data" / "user_info.parquet").to_pydict()
    assert all(not any(user["hist_ctrl"][u]) and not any(user["stats_ctrl"][u]) for u in NO_HISTORY)


def test_table2_coverage_all_column_reproduces_runs_csv(table2, capsys):
    runs = pd.read_csv(table2.out / "runs.csv").set_index("variant")
    text = (table2.out / "table2_with_history.md").read_text()
    with_history, side = text.split(": all users | users with history")
    frame = pd.read_csv(table2.out / "coverage.csv")
    assert len(frame) == 3 * 3 and set(frame["subset"]) == {"all", "history", "no_history"}
    hist = frame[frame["subset"] == "history"].set_index("variant")
    for variant, label in (("plain", "DIN"), ("HIST", "DIN w/ HIST"), ("STATS", "DIN w/ STATS")):
        cells = [c.strip("*") for c in _table_row(with_history, label)]
        assert cells[:3] == [f"{100 * hist.loc[variant, m]:.2f}" for m in METRICS]
        cells = [c.strip("*") for c in _table_row(side, label)]  # AUC all, AUC hist, gAUC all, ...
        assert cells[0::2][:3] == [f"{100 * runs.loc[variant, m]:.2f}" for m in METRICS]
        assert cells[1::2][:3] == [f"{100 * hist.loc[variant, m]:.2f}" for m in METRICS]
    all_rows = frame[frame["subset"] == "all"].set_index("variant")
    for m in METRICS:
        np.testing.assert_allclose(all_rows[m], runs.loc[all_rows.index, m], rtol=0, atol=1e-9)
    assert 0 < hist["share"].iloc[0] < 1 and "Rebuild check" in text


def test_table2_rerun_predicts_and_trains_nothing(table2, capsys):
    import fuxictr_chime.bench.coverage as coverage
    import fuxictr_chime.models.runner as runner

    def boom(*args, **kwargs):
        raise AssertionError("ran again although the results were there")

    before = (table2.out / "table2_with_history.md").read_text()
    with pytest.MonkeyPatch.context() as mp:
        _no_compressor(mp)
        mp.setattr(runner, "run_experiment", boom)
        mp.setattr(coverage, "predict", boom)  # coverage.csv rows reused: checkpoints unchanged
        mp.setattr(sys, "argv", ["fuxictr-chime", *table2.argv])
        assert main(table2.argv) == 0
    assert (table2.out / "table2_with_history.md").read_text() == before
    assert "| DIN w/ STATS |" in capsys.readouterr().out
