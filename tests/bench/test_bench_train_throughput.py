"""benchmarks/bench_train_throughput.py's converged mode, without the public code or training:
the prepared-folder copy both implementations read, the public loader's minimum-width shim,
argument checks, and early stopping on a scripted validation curve."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_tp", REPO / "benchmarks" / "bench_train_throughput.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _prepared(folder: Path, labels=(0.0, 1.0, 1.0), label_type=pa.float32()) -> Path:
    folder.mkdir()
    for split in ("train", "valid", "test"):
        pq.write_table(pa.table({"user_index": [1, 2, 1], "item_index": [3, 1, 2], "seq_len": [0, 1, 2],
                                 "label": pa.array(labels, label_type)}), folder / f"{split}.parquet")
    config = {"toy": {"data_root": "./", "data_format": "parquet", "rebuild_dataset": False,
                      **{f"{s}_data": f"./{s}.parquet" for s in ("train", "valid", "test")},
                      "user_info": "./user_info.parquet", "item_info": "./item_info.parquet",
                      "feature_cols": [
                          {"name": ["user_index", "item_index", "seq_len"], "active": True, "dtype": "int",
                           "type": "meta"},
                          {"name": "item_id", "active": True, "dtype": "int", "type": "categorical",
                           "source": "item", "vocab_size": 4},
                          {"name": "chime_hist", "active": True, "dtype": "list", "type": "embedding",
                           "source": "user", "pretrain_dim": 64}],
                      "label_col": {"name": "label", "dtype": "float"}, "max_len": 1000}}
    (folder / "dataset_config.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_copy_prepared_casts_labels_and_drops_compressed_columns(tmp_path):
    src, out = _prepared(tmp_path / "src"), tmp_path / "out"
    out.mkdir()
    block = bench.copy_prepared(src, out)
    assert [c["name"] for c in block["feature_cols"]] == [["user_index", "item_index", "seq_len"], "item_id"]
    for split in ("train", "valid", "test"):
        table = pq.read_table(block[f"{split}_data"])
        assert Path(block[f"{split}_data"]).parent == out and table.schema.field("label").type == pa.int64()
        assert table.column("label").to_pylist() == [0, 1, 1]
    assert block["item_info"] == str((src / "item_info.parquet").resolve())  # read in place


def test_copy_prepared_accepts_int_labels(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    block = bench.copy_prepared(_prepared(tmp_path / "src", labels=(0, 1, 1), label_type=pa.int32()), out)
    assert pq.read_table(block["test_data"]).column("label").to_pylist() == [0, 1, 1]


def test_copy_prepared_refuses_labels_that_are_not_binary(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SystemExit, match="train.parquet.*'label' must hold 0/1"):
        bench.copy_prepared(_prepared(tmp_path / "src", labels=(0.0, 0.5, 1.0)), out)


def test_public_histories_are_left_padded_to_the_minimum_width():
    class Collator:
        def padding_seqs(self, user_seqs, seq_lens):
            return np.array([[0, 5], [4, 6]])

    collator = Collator()
    bench.pad_public_histories(collator, 4)
    assert collator.padding_seqs(None, None).tolist() == [[0, 0, 0, 5], [0, 0, 4, 6]]
    bench.pad_public_histories(collator, 3)  # already wider: unchanged
    assert collator.padding_seqs(None, None).shape == (2, 4)


def test_arguments_are_checked(tmp_path):
    with pytest.raises(SystemExit):
        bench.parse_args(["--data", str(tmp_path)])  # no dataset_config.yaml
    with pytest.raises(SystemExit):
        bench.parse_args(["--patience", "-1"])
    args = bench.parse_args(["--seed", "7"])
    assert args.seeds == [7] and args.models == bench.DEFAULT_MODELS
    # --summary reads the results CSV only: the prepared folder need not be on this machine
    assert bench.parse_args(["--data", str(tmp_path / "gone"), "--summary"]).summary


def test_early_stopping_keeps_the_best_epoch(monkeypatch):
    """Valid AUC - logloss per epoch 0.1, 0.3, 0.2, 0.25 with patience 2: stop after epoch 4 and
    restore epoch 2's weights."""
    import torch

    class Scripted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.scores = iter([0.1, 0.3, 0.2, 0.25, 0.9])

        def train_step(self, batch):
            with torch.no_grad():
                self.w += 1  # the weights after epoch e are e

        def evaluate(self, loader, metrics):
            return {"AUC": next(self.scores), "logloss": 0.0}

    model = Scripted()
    fit = bench.train(model, lambda: [{"item_seq": [0, 0]}], epochs=10, warmup=0, valid_loader=[1], patience=2)
    assert (fit["epochs_run"], fit["best_epoch"]) == (4, 2) and float(model.w.detach()) == 2.0
    assert fit["timed_samples"] == 2


def test_each_evaluated_epoch_reports_its_valid_metrics_and_mean_train_loss():
    """Batch losses 1, 3 in epoch 1 and 5, 7 in epoch 2: the callback gets the epochs in order with
    their valid AUC and logloss and mean train losses 2 and 6; no callback without validation."""
    import torch

    class Scripted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.losses = iter([1.0, 3.0, 5.0, 7.0])
            self.scores = iter([(0.6, 0.5), (0.7, 0.4)])

        def train_step(self, batch):
            return torch.tensor(next(self.losses))

        def evaluate(self, loader, metrics):
            auc, logloss = next(self.scores)
            return {"AUC": auc, "logloss": logloss}

    seen = []
    bench.train(Scripted(), lambda: [{"item_seq": [0]}] * 2, epochs=2, warmup=0, valid_loader=[1],
                patience=5, on_epoch=lambda **row: seen.append(row))
    assert [(r["epoch"], r["valid_auc"], r["valid_logloss"], r["train_loss"]) for r in seen] == \
        [(1, 0.6, 0.5, 2.0), (2, 0.7, 0.4, 6.0)]
    assert all(r["epoch_seconds"] >= 0 for r in seen)
    seen.clear()
    bench.train(Scripted(), lambda: [{"item_seq": [0]}] * 2, epochs=2, warmup=0, on_epoch=lambda **row: seen.append(row))
    assert seen == []


def test_curves_table_shows_both_sides_of_the_latest_run_with_their_test_auc(tmp_path):
    """SDIM seed 1 ran twice; in the later run (run_utc "5") ours finished (its test row in the curves)
    and public did not (no test row, no row in --results): epochs 1-3 against 1-2, the diff over 1-2.
    Seed 2's run has no test row but its row in --results: the test AUCs come from there."""
    from fuxictr_chime.io import append_csv_rows

    curve = {"data": "data/x", "model": "SDIM", "ours_params": "", "seed": 1}
    rows = [{**curve, "run_utc": "1", "impl": "ours", "epoch": 1, "valid_auc": 0.1}]  # an older run
    rows += [{**curve, "run_utc": "5", "impl": "ours", "epoch": e, "valid_auc": a}
             for e, a in [(1, 0.70), (2, 0.72), (3, 0.71)]]
    rows += [{**curve, "run_utc": "5", "impl": "ours", "test_auc": 0.69, "best_epoch": 2}]
    rows += [{**curve, "run_utc": "5", "impl": "public", "epoch": e, "valid_auc": a} for e, a in [(1, 0.71), (2, 0.70)]]
    rows += [{**curve, "seed": 2, "run_utc": "7", "impl": impl, "epoch": 1, "valid_auc": 0.6} for impl in ("ours", "public")]
    rows += [{**curve, "data": "data/y", "run_utc": "9", "impl": "ours", "epoch": 1, "valid_auc": 0.5}]
    results = _write_rows(tmp_path / "r.csv", [{"time_utc": "7", "data": "data/x", "model": "SDIM", "seed": 2,
                                                "ours_auc": 0.61, "public_auc": 0.62}])
    append_csv_rows(tmp_path / "c.csv", rows)  # the bench's own writer: columns the first row lacks
    text = bench.curves_table(results, tmp_path / "c.csv", "data/x")
    assert ("| SDIM | 1 | 5 | 0.7000, 0.7200, 0.7100; test AUC 0.6900 (best epoch 2) | 0.7100, 0.7000; no test AUC "
            "recorded | -0.0100, +0.0200 |") in text
    assert "| SDIM | 2 | 7 | 0.6000; test AUC 0.6100 | 0.6000; test AUC 0.6200 | +0.0000 |" in text
    assert "0.1000" not in text and "0.5000" not in text
    assert bench.curves_table(results, tmp_path / "none.csv", "data/x") == ""
    assert bench.curves_table(results, tmp_path / "c.csv", "data/z") == ""


def test_summary_averages_the_last_row_of_each_seed_and_judges_the_goal(tmp_path):
    import csv

    rows = []
    for t, model, seed, speedup, diff in [("1", "TWIN", 1, 2.0, -0.1),  # superseded by the next row
                                          ("2", "TWIN", 1, 6.0, 0.001), ("3", "TWIN", 2, 8.0, -0.003),
                                          ("4", "SDIM", 1, 4.0, 0.01), ("5", "ETA", 1, 5.0, -0.002),
                                          ("6", "ETA", 2, 6.0, -0.002), ("7", "ETA", 3, 7.0, -0.002)]:
        rows.append({"time_utc": t, "data": "data/x", "model": model, "seed": seed, "speedup": speedup,
                     "auc_diff": diff, "ours_samples_per_s": 100 * speedup, "public_samples_per_s": 100,
                     "ours_auc": 0.7 + diff, "public_auc": 0.7, "ours_epochs_run": 3, "public_epochs_run": 4})
    rows.append({**rows[0], "data": "generated", "model": "SimSoft"})
    with (tmp_path / "r.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = bench.summary_table(tmp_path / "r.csv", "data/x")
    # ETA: 3 seeds, speedup 6.0, diff -0.002 (the bound itself) -> met
    eta = next(line for line in text.splitlines() if line.startswith("| ETA |"))
    assert eta.startswith("| ETA | 1, 2, 3 | 600 | 100 | 6.0x |") and eta.endswith("| met |")
    # TWIN: seeds 1 (the later row) and 2: speedup 7.0, diff -0.001 -> met, but on 2 seeds of 3
    assert ("| TWIN | 1, 2 | 700 | 100 | 7.0x | 0.6990 | 0.7000 | -0.0010 (+0.0010, -0.0030) | 3/4, 3/4 "
            "| met on 2 seeds (goal: 3) |") in text
    sdim = next(line for line in text.splitlines() if line.startswith("| SDIM |"))
    assert sdim.startswith("| SDIM | 1 | 400 | 100 | 4.0x |") and sdim.endswith("| **not met** on 1 seed (goal: 3) |")
    assert "| SimSoft |" not in text
    with pytest.raises(SystemExit, match="no converged rows with data == 'data/y'"):
        bench.summary_table(tmp_path / "r.csv", "data/y")


def test_ours_only_rows_of_another_setting_take_the_public_auc_of_the_paired_seed(tmp_path):
    """ETA with --eta-tiebreak longctr --skip-public, seeds 1-3; the default ETA paired rows exist
    for seeds 1 and 2: its line compares seeds 1 and 2 with their public AUC, judges the AUC only."""
    paired = [{"time_utc": str(s), "data": "data/x", "model": "ETA", "seed": s, "speedup": 6.0,
               "auc_diff": d, "ours_samples_per_s": 600, "public_samples_per_s": 100, "ours_auc": 0.7 + d,
               "public_auc": 0.7, "ours_epochs_run": 3, "public_epochs_run": 4, "ours_params": ""}
              for s, d in [(1, -0.003), (2, -0.003)]]
    ours_only = [{"time_utc": str(10 + s), "data": "data/x", "model": "ETA", "seed": s,
                  "ours_samples_per_s": 700, "ours_auc": auc, "ours_epochs_run": 5, "ours_params": "tiebreak=longctr"}
                 for s, auc in [(1, 0.7010), (2, 0.6990), (3, 0.5)]]
    text = bench.summary_table(_write_rows(tmp_path / "r.csv", paired + ours_only), "data/x")
    assert ("| ETA | 1, 2 | 600 | 100 | 6.0x | 0.6970 | 0.7000 | -0.0030 (-0.0030, -0.0030) | 3/4, 3/4 | "
            "**not met** on 2 seeds (goal: 3) |") in text
    assert ("| ETA (tiebreak=longctr) | 1, 2 | 700 | 100 | - (ours only) | 0.7000 | 0.7000 (public AUC of the "
            "paired rows) | +0.0000 (+0.0010, -0.0010) | 5/4, 5/4 | AUC met on 2 seeds (goal: 3) |") in text
    assert "ETA (tiebreak=longctr): ours-only rows of seed 3 have no paired row of the same seed (not shown)" in text
    # without any paired row the ours-only group is named, not shown
    text = bench.summary_table(_write_rows(tmp_path / "o.csv", ours_only), "data/x")
    assert "ETA (tiebreak=longctr): ours-only rows of seeds 1, 2, 3 have no paired row" in text
    assert "| ETA (tiebreak=longctr) |" not in text


def test_a_setting_with_paired_and_ours_only_seeds_is_refused_and_a_paired_row_wins(tmp_path):
    paired = {"time_utc": "1", "data": "data/x", "model": "ETA", "seed": 1, "speedup": 6.0, "auc_diff": 0.0,
              "ours_samples_per_s": 600, "public_samples_per_s": 100, "ours_auc": 0.7, "public_auc": 0.7,
              "ours_epochs_run": 3, "public_epochs_run": 4, "ours_params": ""}
    later_ours_only = {**paired, "time_utc": "2", "public_auc": None, "speedup": None, "auc_diff": None,
                       "public_samples_per_s": None, "ours_auc": 0.1}
    text = bench.summary_table(_write_rows(tmp_path / "r.csv", [paired, later_ours_only]), "data/x")
    assert "| ETA | 1 | 600 | 100 | 6.0x | 0.7000 |" in text  # seed 1's paired row, not the later one
    mixed = [paired, {**later_ours_only, "seed": 2}]
    with pytest.raises(SystemExit, match=r"ETA \(default settings\) has paired rows for some seeds and ours-only"):
        bench.summary_table(_write_rows(tmp_path / "m.csv", mixed), "data/x")


def test_our_params_record_only_settings_away_from_the_defaults(tmp_path):
    args = bench.parse_args(["--eta-tiebreak", "longctr"])
    assert bench.our_params("ETA", args) == {"tiebreak": "longctr"}
    assert bench.our_params("TWIN", args) == {}
    assert bench.our_params("ETA", bench.parse_args([])) == {}
    args = bench.parse_args(["--eta-tiebreak", "longctr", "--eta-hash-seed", "seed", "--seed", "7"])
    assert bench.our_params("ETA", args) == {"tiebreak": "longctr", "hash_seed": 7}
    assert bench.our_params_label("ETA", args) == "tiebreak=longctr hash_seed=seed"  # one label for all seeds
    with pytest.raises(SystemExit):
        bench.parse_args(["--eta-tiebreak", "oldest"])
    args = bench.parse_args(["--twin-sync-every", "1"])
    assert bench.our_params("TWIN", args) == {"sync_every": 1} and bench.our_params("ETA", args) == {}
    assert bench.our_params_label("TWIN", args) == "sync_every=1"
    assert bench.our_params("TWIN", bench.parse_args(["--twin-sync-every", "100"])) == {}  # the default
    with pytest.raises(SystemExit):
        bench.parse_args(["--twin-sync-every", "0"])


def _write_rows(path: Path, rows: list[dict]) -> Path:
    import csv

    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_time_only_rows_have_their_own_table_and_stay_out_of_the_converged_one(tmp_path):
    base = {"data": "data/x", "train_batches": 8, "batch_size": 1024, "warmup": 2, "auc_diff": "",
            "ours_auc": "", "public_auc": "", "ours_epochs_run": 1, "public_epochs_run": 1}
    rows = [{**base, "time_utc": "1", "model": "SDIM", "seed": 1, "speedup": 3.0, "time_only": True,
             "ours_samples_per_s": 300, "public_samples_per_s": 100},
            {**base, "time_utc": "2", "model": "SDIM", "seed": 2, "speedup": 5.0, "time_only": True,
             "ours_samples_per_s": 500, "public_samples_per_s": 100},
            {**base, "time_utc": "3", "model": "TWIN", "seed": 1, "speedup": 6.0, "time_only": False,
             "ours_samples_per_s": 600, "public_samples_per_s": 100, "auc_diff": 0.001, "ours_auc": 0.701,
             "public_auc": 0.7, "ours_epochs_run": 3, "public_epochs_run": 4}]
    results = _write_rows(tmp_path / "r.csv", rows)
    text = bench.time_only_table(results, "data/x")
    assert "8 timed batches of 1024 after 2 warm-up batches" in text
    assert "| SDIM | 1, 2 | 400 | 100 | 4.0x (3.0x, 5.0x) |" in text and "| TWIN |" not in text
    converged = bench.summary_table(results, "data/x")
    assert "| TWIN | 1 |" in converged and "| SDIM |" not in converged
    with pytest.raises(SystemExit, match="no time-only rows with data == 'data/y'"):
        bench.time_only_table(results, "data/y")
    mixed = _write_rows(tmp_path / "mixed.csv", [rows[0], {**rows[1], "batch_size": 512}])
    with pytest.raises(SystemExit, match="mix train_batches/batch_size/warmup"):
        bench.time_only_table(mixed, "data/x")


def test_time_only_needs_data_and_no_patience(tmp_path):
    with pytest.raises(SystemExit):
        bench.parse_args(["--time-only"])
    folder = _prepared(tmp_path / "src")
    with pytest.raises(SystemExit):
        bench.parse_args(["--time-only", "--data", str(folder), "--patience", "2"])
    assert bench.parse_args(["--time-only", "--data", str(folder)]).time_only


def test_max_batches_ends_the_epoch_and_times_the_batches_after_warmup():
    import torch

    class Counting(torch.nn.Module):
        steps = 0

        def train_step(self, batch):
            self.steps += 1

    model = Counting()
    fit = bench.train(model, lambda: [{"item_seq": [0, 0, 0]}] * 10, epochs=1, warmup=2, max_batches=5)
    assert model.steps == 5 and fit["timed_samples"] == 9  # batches 3..5, 3 samples each


def test_a_converged_run_writes_a_curve_row_per_epoch_beside_its_result_row(tmp_path, capsys):
    """``--data`` on a tiny planted log, ours only, 2 epochs: 2 curve rows and a test row (``run_utc`` =
    the result row's ``time_utc``, the same test AUC), and ``--summary`` prints ours' curve with no
    public side."""
    import pandas as pd

    from fuxictr_chime import cli

    knobs = {"n_users": 12, "events_per_user": 150, "n_items": 120, "n_topics": 20, "n_favourites": 3,
             "dense_dim": 4, "seed": 3}
    data = tmp_path / "synthetic"
    assert cli.main(["prepare", "synthetic", "--out", str(data),
                     *[a for k, v in knobs.items() for a in ("--option", f"{k}={v}")]]) == 0
    results = tmp_path / "bt.csv"
    assert bench.main(["--data", str(data), "--models", "SDIM", "--skip-public", "--epochs", "2",
                       "--patience", "5", "--batch-size", "64", "--warmup", "0", "--results", str(results)]) == 0
    row = pd.read_csv(results).iloc[-1]
    curves = pd.read_csv(tmp_path / "bt_curves.csv")
    epochs, test = curves[curves["epoch"].notna()], curves[curves["epoch"].isna()]
    assert list(epochs["epoch"]) == [1, 2] and set(curves["impl"]) == {"ours"}
    assert set(curves["run_utc"]) == {row["time_utc"]} and set(curves["model"]) == {"SDIM"}
    assert epochs["valid_auc"].between(0, 1).all() and (epochs["train_loss"] > 0).all()
    assert list(test["test_auc"]) == [row["ours_auc"]] and list(test["best_epoch"]) == [row["ours_best_epoch"]]
    capsys.readouterr()
    assert bench.main(["--data", str(data), "--summary", "--results", str(results)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("| SDIM | 2024 |"))
    assert line.endswith("| - | - |") and f"test AUC {row['ours_auc']:.4f}" in line


def _tiny_planted_log(tmp_path: Path) -> Path:
    from fuxictr_chime import cli

    knobs = {"n_users": 12, "events_per_user": 150, "n_items": 120, "n_topics": 20, "n_favourites": 3,
             "dense_dim": 4, "seed": 3}
    data = tmp_path / "synthetic"
    assert cli.main(["prepare", "synthetic", "--out", str(data),
                     *[a for k, v in knobs.items() for a in ("--option", f"{k}={v}")]]) == 0
    return data


LONGCTR_ZOO = os.environ.get("LONGCTR_ZOO")  # <sdist>/model_zoo/LongCTR: the public side's opt-in run


def _twin_run_straight(tmp_path, side) -> list[str]:
    """TWIN for 3 epochs on a tiny planted log (ours only, or with the public side), run straight
    through into ``straight.csv``; returns the command's common arguments."""
    data = _tiny_planted_log(tmp_path)
    common = ["--data", str(data), "--models", "TWIN", "--epochs", "3", "--patience", "5",
              "--batch-size", "64", "--warmup", "0", "--twin-sync-every", "3",
              *(["--public-dir", str(Path(LONGCTR_ZOO).parents[1])] if side == "public" else ["--skip-public"])]
    assert bench.main([*common, "--results", str(tmp_path / "straight.csv")]) == 0
    return common


def _assert_resumed_as_straight(tmp_path, side, timed_samples=None):
    """``resumed.csv`` has ``straight.csv``'s results and the same valid curves and train losses, to
    every digit (``side``'s timed samples ``timed_samples`` where given); returns the resumed rows
    and curves."""
    import pandas as pd

    straight, again = pd.read_csv(tmp_path / "straight.csv"), pd.read_csv(tmp_path / "resumed.csv")
    for impl in ["ours"] + ["public"] * (side == "public"):
        for key in ("auc", "logloss", "best_epoch", "epochs_run", "timed_samples"):
            expected = straight[f"{impl}_{key}"].iloc[0]
            if key == "timed_samples" and impl == side and timed_samples is not None:
                expected = timed_samples
            assert again[f"{impl}_{key}"].iloc[0] == expected, (impl, key)
    curves = {name: pd.read_csv(tmp_path / f"{name}_curves.csv") for name in ("straight", "resumed")}
    cols = ["impl", "epoch", "valid_auc", "valid_logloss", "train_loss"]
    epochs = {k: c[c["epoch"].notna()][cols].reset_index(drop=True) for k, c in curves.items()}
    assert list(epochs["resumed"]["epoch"]) == [1, 2, 3] * (1 + (side == "public"))
    pd.testing.assert_frame_equal(epochs["resumed"], epochs["straight"])
    return again, curves["resumed"]


@pytest.mark.parametrize("side", ["ours", pytest.param("public", marks=pytest.mark.skipif(
    not LONGCTR_ZOO, reason="set LONGCTR_ZOO to the fuxictr-2.3.10 sdist's model_zoo/LongCTR"))])
def test_a_run_stopped_after_an_epoch_resumes_from_its_state_to_the_uninterrupted_numbers(side, tmp_path, monkeypatch,
                                                                                          capsys):
    """TWIN (ours copies its GSU every 3 batches: a step counter that must survive) for 3 epochs: once
    straight through, once killed right after ``side``'s epoch 2 state was saved and run again with the
    same ``--state``. The resumed run continues at epoch 3 (a finished ours side is not run again) and
    gives the same valid curves and test AUC to every digit, keeps the first attempt's ``run_utc`` and
    counts 1 resume; a third run of the same command writes no second row. ``public`` (opt-in) runs
    LongCTR's TWIN beside ours and is killed on the public side, whose loader shuffles with torch's
    generator."""
    import pandas as pd

    common = _twin_run_straight(tmp_path, side)
    real_save, saved = bench.save_state, []

    def save_then_die(path, *args, **kwargs):
        real_save(path, *args, **kwargs)
        saved.append((path.stem.rsplit("_", 1)[1], kwargs["epochs_run"]))
        if saved[-1] == (side, 2) and saved.count((side, 2)) == 1:
            raise KeyboardInterrupt  # killed between epochs, as when a session ends

    monkeypatch.setattr(bench, "save_state", save_then_die)
    resumed = [*common, "--results", str(tmp_path / "resumed.csv"), "--state", str(tmp_path / "state")]
    with pytest.raises(KeyboardInterrupt):
        bench.main(resumed)
    assert not (tmp_path / "resumed.csv").exists() and (tmp_path / "state" / f"TWIN_seed2024_{side}.pt").exists()
    capsys.readouterr()
    assert bench.main(resumed) == 0
    assert "resumed from" in capsys.readouterr().out
    assert saved == [("ours", 1), ("ours", 2), ("ours", 3)] + [("public", 1), ("public", 2), ("public", 3)] * (side == "public")
    again, curves = _assert_resumed_as_straight(tmp_path, side)
    assert len(again) == 1 and again["resumes"].iloc[0] == 1
    assert set(curves["run_utc"]) == {again["time_utc"].iloc[0]}
    assert not list((tmp_path / "state").glob("*.pt"))  # a finished side keeps its result only
    assert bench.main(resumed) == 0
    assert "not run again" in capsys.readouterr().out and len(pd.read_csv(tmp_path / "resumed.csv")) == 1


@pytest.mark.parametrize("side", ["ours", pytest.param("public", marks=pytest.mark.skipif(
    not LONGCTR_ZOO, reason="set LONGCTR_ZOO to the fuxictr-2.3.10 sdist's model_zoo/LongCTR"))])
@pytest.mark.parametrize("epoch", [1, 2])
def test_a_run_stopped_within_an_epoch_resumes_at_its_last_saved_batch_to_the_uninterrupted_numbers(
        side, epoch, tmp_path, monkeypatch, capsys):
    """As above with ``--save-every-min`` so small that a state is saved after every batch, killed
    right after ``side``'s save after batch 3 of ``epoch``: the resumed run re-draws that epoch's
    order, passes over its 3 done batches and gives the same valid curves, train losses and test AUC
    to every digit. Stopped in the timed epoch 1, the row times the 3 batches before the stop (one
    process's timing; no warm-up here). Every step here also draws from torch's generator
    (noise on a weight, as dropout would draw), so the numbers hold only if the generators are put
    back as they were after the done batches. ``--save-every-min 0`` saves after epochs only."""
    import torch

    real_train = bench.train

    def train_drawing_every_step(model, *args, **kwargs):
        step, weight = model.train_step, next(model.parameters())

        def noisy_step(batch):
            loss = step(batch)
            with torch.no_grad():
                weight.add_(1e-3 * torch.randn_like(weight))
            return loss

        model.train_step = noisy_step
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(bench, "train", train_drawing_every_step)
    common = _twin_run_straight(tmp_path, side)
    real_save, saved = bench.save_state, []

    def save_then_die(path, *args, **kwargs):
        real_save(path, *args, **kwargs)
        within = kwargs["in_epoch"]["batches_done"] if kwargs.get("in_epoch") else None
        saved.append((path.stem.rsplit("_", 1)[1], kwargs["epochs_run"], within))
        if saved[-1] == (side, epoch - 1, 3) and saved.count((side, epoch - 1, 3)) == 1:
            raise KeyboardInterrupt  # killed within the epoch, as when a session ends

    monkeypatch.setattr(bench, "save_state", save_then_die)
    resumed = [*common, "--results", str(tmp_path / "resumed.csv"), "--state", str(tmp_path / "state"),
               "--save-every-min", "1e-9"]
    with pytest.raises(KeyboardInterrupt):
        bench.main(resumed)
    capsys.readouterr()
    assert bench.main(resumed) == 0
    assert f"in epoch {epoch} after 3 batches" in capsys.readouterr().out
    mine = [s for s in saved if s[0] == side]
    assert mine[:2] == [(side, 0, 1), (side, 0, 2)] and {(side, 1, None), (side, 2, None)} <= set(mine)
    kill = mine.index((side, epoch - 1, 3))
    assert mine.count((side, epoch - 1, 3)) == 1 and mine[kill + 1] == (side, epoch - 1, 4)
    _assert_resumed_as_straight(tmp_path, side, timed_samples=3 * 64 if epoch == 1 else None)
    saved.clear()
    assert bench.main([*common, "--results", str(tmp_path / "epochs.csv"), "--state", str(tmp_path / "s0"),
                       "--save-every-min", "0"]) == 0
    assert all(within is None for *_, within in saved) and len(saved) == 3 * (1 + (side == "public"))


def test_a_state_started_with_other_settings_or_data_is_refused_naming_the_file_and_what_differs(tmp_path, capsys):
    state = tmp_path / "state"
    state.mkdir()
    data = _prepared(tmp_path / "toy")
    args = bench.parse_args(["--data", str(data), "--patience", "2", "--state", str(state)])
    path, record = bench.run_state(args, "SDIM", 2024)
    path.write_text(__import__("json").dumps(record))
    other = bench.parse_args(["--data", str(data), "--patience", "2", "--state", str(state), "--learning-rate", "1e-3"])
    with pytest.raises(SystemExit, match=r"SDIM_seed2024\.json was started with other settings \(learning_rate: "
                                         r"0\.0005 there, 0\.001 now\)"):
        bench.run_state(other, "SDIM", 2024)
    assert bench.run_state(args, "SDIM", 2024)[1]["resumes"] == 1
    pq.write_table(pa.table({"label": [1, 0]}), data / "valid.parquet")  # the data changed under the record
    with pytest.raises(SystemExit, match=r"SDIM_seed2024\.json was started on other data: valid of "):
        bench.run_state(args, "SDIM", 2024)
    (state / "ETA_seed2024.json").write_text("not json")
    with pytest.raises(SystemExit, match="ETA_seed2024.json is not a run record"):
        bench.run_state(args, "ETA", 2024)
    with pytest.raises(SystemExit):
        bench.parse_args(["--data", str(data), "--state", str(state)])  # no --patience: nothing to resume
    assert "--state needs a converged run (--patience > 0, no --time-only)" in capsys.readouterr().err
