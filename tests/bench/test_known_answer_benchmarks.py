"""The known-answer benchmark scripts' arithmetic: gap shares, tables, variant switches.

``benchmarks/synthetic_rankers.py``, ``compressor_users_curve.py``, ``compressor_collapse.py`` and
``compressor_trace.py`` train for minutes; here their pure parts run on hand-written inputs whose
answers are known."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_synthetic_rankers_table_reports_the_mean_and_its_share_of_the_oracle_gap(tmp_path):
    rankers = _script("synthetic_rankers")
    assert rankers.model_of("DIN_full") == "DIN" and rankers.model_of("TWIN") == "TWIN"
    data = tmp_path / "data"
    data.mkdir()
    (data / "summary.json").write_text(json.dumps({
        "oracle": {"test": {"auc": 0.9, "base_logloss": 0.69}},
        "references": {"test": {"count": {"auc": 0.7, "gap_closed": 0.5}}}}))
    row = {"expid": "TWIN_synthetic", "seed": 1, "test_AUC": 0.68, "test_logloss": 0.6, "epochs_run": 5,
           "best_epoch": 3, "stopped_early": "True"}
    _write_csv(tmp_path / "runs.csv", [{**row, "expid": "SDIM_synthetic", "test_AUC": 0.6}, row,
                                       {**row, "seed": 2, "test_AUC": 0.72, "stopped_early": "False"},
                                       {**row, "expid": "TWIN_other", "test_AUC": 0.5}])
    text = rankers.table(tmp_path, data, "synthetic", ["TWIN", "DIN"])
    # mean 0.70 closes (0.70 - 0.5) / (0.9 - 0.5) = 50%; sd of (0.68, 0.72) = 0.0283
    assert "| TWIN | 2 | 0.7000 ± 0.0283 | 50% | 0.6000 | 5 (3), 5 (3) | 1/2 |" in text
    assert "| DIN |" not in text  # no rows, no line
    # an experiment of the same dataset that was not asked for still has its line, after those asked for
    assert text.index("| TWIN | 2 |") < text.index("| SDIM | 1 | 0.6000 ± 0.0000 | 25% |")
    assert "| TWIN | 1 |" not in text and "0.5000 ± " not in text  # TWIN_other: another dataset id
    assert "| count | 0.7000 | 50% |" in text and "| oracle | 0.9000 | 100% |" in text


def test_synthetic_rankers_pairs_each_variant_with_its_plain_model_by_seed(tmp_path):
    rankers = _script("synthetic_rankers")
    assert rankers.plain_of("DIN_full_CHIME") == "DIN_full" and rankers.plain_of("TWIN_HIST") == "TWIN"
    assert rankers.plain_of("DIN_full") is None
    assert rankers.plain_of("DIN_softmax_interaction_CHIME") == "DIN_softmax"  # the product acts on the column only
    data = tmp_path / "data"
    data.mkdir()
    (data / "summary.json").write_text(json.dumps({"oracle": {"test": {"auc": 0.9, "base_logloss": 0.69}}}))
    row = {"seed": 1, "test_logloss": 0.6, "epochs_run": 5, "best_epoch": 3, "stopped_early": "True"}
    out = tmp_path / "out"
    out.mkdir()
    _write_csv(out / "runs.csv", [{**row, "expid": "DIN_CHIME_synthetic", "test_AUC": 0.72},
                                  {**row, "expid": "DIN_CHIME_synthetic", "seed": 2, "test_AUC": 0.74},
                                  {**row, "expid": "DIN_CHIME_synthetic", "seed": 3, "test_AUC": 0.76}])
    _write_csv(tmp_path / "plain.csv", [{**row, "expid": "DIN_synthetic", "test_AUC": 0.70},
                                        {**row, "expid": "DIN_synthetic", "seed": 2, "test_AUC": 0.71},
                                        {**row, "expid": "TWIN_synthetic", "seed": 2, "test_AUC": 0.80}])
    text = rankers.table(out, data, "synthetic", ["DIN_CHIME"], baseline=tmp_path / "plain.csv")
    # seeds 1 and 2 only (seed 3 has no plain run): 0.73 vs 0.705; (0.73 - 0.705) / (0.9 - 0.705) = 13%;
    # differences +0.02, +0.03: t = 0.025 / (0.00707 / sqrt 2) = 5.0 with 1 df, one-sided p = 0.063
    assert "| DIN_CHIME vs DIN | 1, 2 | 0.7300 | 0.7050 | +0.0250 (+0.0200, +0.0300) | 0.063 | 13% |" in text
    assert "Paired by seed" not in rankers.table(out, data, "synthetic", ["DIN_CHIME"])


def test_synthetic_rankers_pairs_two_experiments_of_one_runs_csv(tmp_path):
    rankers = _script("synthetic_rankers")
    data = tmp_path / "data"
    data.mkdir()
    (data / "summary.json").write_text(json.dumps({"oracle": {"test": {"auc": 0.9, "base_logloss": 0.69}}}))
    row = {"test_logloss": 0.6, "epochs_run": 5, "best_epoch": 3, "stopped_early": "True"}
    _write_csv(tmp_path / "runs.csv", [{**row, "expid": "DIN_softmax_synthetic", "seed": 1, "test_AUC": 0.71},
                                       {**row, "expid": "DIN_softmax_synthetic", "seed": 2, "test_AUC": 0.73},
                                       {**row, "expid": "DIN_100_softmax_synthetic", "seed": 1, "test_AUC": 0.70},
                                       {**row, "expid": "DIN_100_softmax_synthetic", "seed": 2, "test_AUC": 0.71}])
    text = rankers.table(tmp_path, data, "synthetic", [], pairs=[("DIN_softmax", "DIN_100_softmax"),
                                                                ("DIN_100_softmax", "DIN_softmax")])
    # means 0.72 and 0.705; differences +0.01, +0.02: t = 0.015 / (0.00707 / sqrt 2) = 3.0, 1 df, p = 0.102;
    # share (0.72 - 0.705) / (0.9 - 0.705) = 8%. The reverse pair tests the other tail: p = 0.898
    assert "| DIN_softmax vs DIN_100_softmax | 1, 2 | 0.7200 | 0.7050 | +0.0150 (+0.0100, +0.0200) | 0.102 | 8% |" in text
    assert "| DIN_100_softmax vs DIN_softmax | 1, 2 | 0.7050 | 0.7200 | -0.0150 (-0.0100, -0.0200) | 0.898 | -8% |" in text
    assert "Pairs of experiments" not in rankers.table(tmp_path, data, "synthetic", [])


def test_synthetic_rankers_refuses_a_pair_without_common_runs(tmp_path, capsys, monkeypatch):
    rankers = _script("synthetic_rankers")
    monkeypatch.setattr(rankers.signal, "signal", lambda *args: None)  # keep pytest's own SIGTERM handler
    data = tmp_path / "data"
    data.mkdir()
    (data / "summary.json").write_text(json.dumps({"oracle": {"test": {"auc": 0.9, "base_logloss": 0.69}},
                                                   "planted": {"seed": 0}}))
    _write_csv(tmp_path / "runs.csv", [{"expid": "DIN_synthetic", "seed": 1, "test_AUC": 0.7, "test_logloss": 0.6,
                                        "epochs_run": 5, "best_epoch": 3, "stopped_early": "True"}])
    for bad, message in [("DIN", "expected A:B"), ("DIN:TWIN", "no seed has a run of both DIN_synthetic and TWIN")]:
        with pytest.raises(SystemExit):
            rankers.main(["--out", str(tmp_path), "--data", str(data), "--table-only", "--pairs", bad])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "synthetic_rankers.md").exists()  # refused before the table is written


def test_users_curve_gap_and_table(tmp_path):
    curve = _script("compressor_users_curve")
    assert curve.gap(7.0, popularity=7.5, oracle=7.0) == pytest.approx(1.0)
    assert curve.gap(7.5, popularity=7.5, oracle=7.0) == pytest.approx(0.0)
    assert curve.gap(7.6, popularity=7.5, oracle=7.0) == pytest.approx(-0.2)  # worse than popularity
    row = dict.fromkeys(curve.FIELDS, "0")
    row.update({"command": "python benchmarks/compressor_users_curve.py --sizes 1000", "knobs": "defaults", "expid": "",
                "n_users": "1000", "best_step": "450", "max_steps": "600", "chime_best": "7.25", "probe_best": "7.4", "uniform": "7.52",
                "popularity": "7.5", "cooccurrence": "7.3", "oracle": "7.0", "chime_gap_closed": "0.5",
                "probe_gap_closed": "0.2", "eff_rank_at_best": "9.5", "mean_cosine_at_best": "0.2"})
    _write_csv(tmp_path / "curve.csv", [row])
    curve.write_table(tmp_path / "curve.csv", tmp_path / "curve.md")
    text = (tmp_path / "curve.md").read_text()
    assert ("| CHIME_synthetic | defaults | 1000 | 7.250 (450 of 600) | 50% | 7.400 | 20% | 7.520 | 7.500 | 7.300 | 7.000 | "
            "9.50 / 0.200 |") in text
    assert "`python benchmarks/compressor_users_curve.py --sizes 1000`" in text


def test_users_curve_labels_the_preset_and_refuses_a_folder_of_other_knobs(tmp_path):
    """A row names its knob set with the preset first (the default's when none is given), and a
    data folder prepared with other knobs (e.g. under the former defaults) is never reused."""
    curve = _script("compressor_users_curve")
    from fuxictr_chime.data.planted import PlantedKnobs

    assert curve.knobs_label([]) == "preset=long_term"
    assert curve.knobs_label(["base_ctr=0.1"]) == "preset=long_term base_ctr=0.1"
    assert curve.knobs_label(["preset=sessions", "seed=2"]) == "preset=sessions seed=2"
    wanted = PlantedKnobs.from_options(preset="sessions", n_users=300, seed=2).as_dict()
    assert curve.expected_knobs(300, ["preset=sessions", "seed=2"]) == wanted
    folder = tmp_path / "u300_presetsessions_seed2"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"planted": wanted}))
    assert curve.prepare(300, ["preset=sessions", "seed=2"], tmp_path) == folder  # same knobs: reused
    (folder / "summary.json").write_text(json.dumps({"planted": {**wanted, "n_topics": 30}}))
    with pytest.raises(SystemExit, match="n_topics: 30 in the folder, 50 wanted"):
        curve.prepare(300, ["preset=sessions", "seed=2"], tmp_path)


def test_users_curve_adds_the_experiment_column_to_an_older_csv(tmp_path):
    """Rows written before the ``expid`` column get it from their command line; the rewrite keeps
    every row and appends the new one."""
    curve = _script("compressor_users_curve")
    old_fields = [f for f in curve.FIELDS if f != "expid"]
    command = "python benchmarks/compressor_users_curve.py --sizes 1000"
    rows = [{**dict.fromkeys(old_fields, "1"), "command": command},
            {**dict.fromkeys(old_fields, "2"), "command": command + " --expid CHIME_synthetic_small_data"}]
    _write_csv(tmp_path / "curve.csv", rows)
    curve.append_row(tmp_path / "curve.csv", {**dict.fromkeys(curve.FIELDS, "3"), "expid": "X"})
    curve.append_row(tmp_path / "curve.csv", {**dict.fromkeys(curve.FIELDS, "4"), "expid": "Y"})
    with (tmp_path / "curve.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == curve.FIELDS
        got = [(r["expid"], r["n_users"]) for r in reader]
    assert got == [("CHIME_synthetic", "1"), ("CHIME_synthetic_small_data", "2"), ("X", "3"), ("Y", "4")]


def test_collapse_variants_change_only_known_keys(tmp_path):
    collapse = _script("compressor_collapse")
    from fuxictr_chime.compressor.config import load_experiment

    config, _ = load_experiment(REPO / "model_zoo/CHIME/config", "CHIME_synthetic")
    paper = config.to_dict()
    changes = collapse.apply(config, collapse.VARIANTS["quantizer_warmup"], steps=300)
    assert changes == {"compression": {"warmup_steps": 150}}  # "{steps/2}"
    after = config.to_dict()
    assert after["compression"]["warmup_steps"] == 150
    after["compression"]["warmup_steps"] = paper["compression"]["warmup_steps"]
    assert after == paper  # nothing else moved
    for name, variant in collapse.VARIANTS.items():  # every variant names real config keys
        fresh, _ = load_experiment(REPO / "model_zoo/CHIME/config", "CHIME_synthetic")
        collapse.apply(fresh, variant, steps=10)
    with pytest.raises(SystemExit, match="compression.no_such_key"):
        collapse.apply(config, {"compression": {"no_such_key": 1}}, steps=10)


def test_collapse_table_keeps_the_last_run_of_each_variant(tmp_path):
    collapse = _script("compressor_collapse")
    base = dict.fromkeys(collapse.FIELDS, "")
    base.update({"command": "python benchmarks/compressor_collapse.py", "data": "synthetic", "tag": "synthetic",
                 "variant": "paper", "changes": "{}", "commit": "0", "ref_uniform": "7.52", "ref_popularity": "7.5",
                 "ref_cooccurrence": "7.3", "ref_oracle": "7.0"})
    old = [{**base, "time_utc": "t0", "step": "0", "holistic": "7.0", "eff_rank": "9", "mean_cosine": "0.1"}]
    new = [{**base, "time_utc": "t1", "step": str(s), "holistic": h, "eff_rank": "1.5", "mean_cosine": "0.99"}
           for s, h in ((0, "7.6"), (50, "7.52"), (100, "7.53"))]
    _write_csv(tmp_path / "c.csv", old + new)
    collapse.write_table(tmp_path / "c.csv", tmp_path / "c.md")
    text = (tmp_path / "c.md").read_text()
    # the rerun (t1) replaces the old run: best 7.52 at step 50, last row 7.53 / 1.50 / 0.990
    assert "| synthetic | paper | `{}` | 7.520 (50) | 7.530 / 1.50 / 0.990 | 7.520 | 7.500 | 7.300 | 7.000 |" in text
    assert "7.000 (0)" not in text


def test_trace_spread_is_the_mean_distance_to_the_mean_over_valid_positions():
    import torch

    trace = _script("compressor_trace")
    x = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]])  # (B=1, T=3, D=2); the last is padding
    mask = torch.tensor([[True, True, False]])
    assert trace.spread(x, mask) == pytest.approx((2.0, 1.0))  # mean (2, 0); each point 1 away


def test_synthetic_rankers_keeps_one_planted_log_per_results_folder(tmp_path, capsys, monkeypatch):
    """The first table records the data's knobs in planted_knobs.json; data prepared with other
    knobs (another preset into the same folder) is refused with the differing knobs named, and
    nothing is rewritten."""
    rankers = _script("synthetic_rankers")
    monkeypatch.setattr(rankers.signal, "signal", lambda *args: None)
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    summary = {"oracle": {"test": {"auc": 0.9, "base_logloss": 0.69}}, "planted": {"n_topics": 50, "seed": 0}}
    (data / "summary.json").write_text(json.dumps(summary))
    _write_csv(out / "runs.csv", [{"expid": "DIN_synthetic", "seed": 1, "test_AUC": 0.7, "test_logloss": 0.6,
                                   "epochs_run": 5, "best_epoch": 3, "stopped_early": "True"}])
    rankers.main(["--out", str(out), "--data", str(data), "--table-only"])
    assert json.loads((out / "planted_knobs.json").read_text()) == summary["planted"]
    table = (out / "synthetic_rankers.md").read_text()
    (data / "summary.json").write_text(json.dumps({**summary, "planted": {"n_topics": 20, "seed": 0}}))
    with pytest.raises(SystemExit):
        rankers.main(["--out", str(out), "--data", str(data), "--table-only"])
    assert "n_topics: 50 in planted_knobs.json, 20 in the data" in capsys.readouterr().err
    assert json.loads((out / "planted_knobs.json").read_text())["n_topics"] == 50
    assert (out / "synthetic_rankers.md").read_text() == table
    (data / "summary.json").write_text(json.dumps({"oracle": summary["oracle"]}))
    with pytest.raises(SystemExit):
        rankers.main(["--out", str(out), "--data", str(data), "--table-only"])
    assert "has no 'planted' block" in capsys.readouterr().err


def test_synthetic_rankers_names_the_preset_of_a_folders_log(tmp_path):
    """A results folder made on a preset's log (e.g. the sessions preset, the former default)
    refused with the default log: the message gives the prepare command of that preset."""
    rankers = _script("synthetic_rankers")
    from fuxictr_chime.data.planted import PlantedKnobs

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    (out / "planted_knobs.json").write_text(json.dumps(PlantedKnobs.from_options(preset="sessions").as_dict()))
    (data / "summary.json").write_text(json.dumps({"planted": PlantedKnobs().as_dict()}))
    with pytest.raises(rankers.KnobsError, match="n_topics: 50 in planted_knobs.json, 30 in the data") as error:
        rankers.check_folders(out, data)
    assert f"--out {data} --option preset=sessions" in str(error.value)
    (out / "planted_knobs.json").write_text(json.dumps({**PlantedKnobs().as_dict(), "n_topics": 40}))
    with pytest.raises(rankers.KnobsError) as error:
        rankers.check_folders(out, data)
    assert "preset=" not in str(error.value)  # knobs of no preset: no prepare command to offer


def test_check_folders_writes_the_out_folders_knobs_and_only_reads_the_compared_ones(tmp_path):
    from benchmarks._known_answer import KnobsError, check_folders
    from fuxictr_chime.data.planted import PlantedKnobs

    data, out, fresh, other = tmp_path / "data", tmp_path / "out", tmp_path / "fresh", tmp_path / "other"
    for folder in (data, out, fresh, other):
        folder.mkdir()
    (data / "summary.json").write_text(json.dumps({"planted": PlantedKnobs().as_dict()}))
    (fresh / "runs.csv").write_text("expid\n")
    check_folders(out, data, [None, tmp_path / "missing" / "runs.csv", fresh / "runs.csv"])
    assert (out / "planted_knobs.json").exists()  # written for the results folder
    assert not (fresh / "planted_knobs.json").exists()  # a compared folder is never written
    (other / "runs.csv").write_text("expid\n")
    (other / "planted_knobs.json").write_text(json.dumps({**PlantedKnobs().as_dict(), "n_topics": 40}))
    with pytest.raises(KnobsError, match="n_topics: 40 in planted_knobs.json, 30 in the data"):
        check_folders(out, data, [other / "runs.csv"])


def test_synthetic_rankers_interrupted_run_releases_its_claim(tmp_path, monkeypatch):
    """A run is claimed by its log file; Ctrl-C (or SIGTERM) renames it *.interrupted.log so that
    rerunning the grid takes the run again instead of skipping it as claimed."""
    import argparse

    rankers = _script("synthetic_rankers")
    (tmp_path / "logs").mkdir()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rankers.subprocess, "call", interrupted)
    args = argparse.Namespace(threads=1, seeds=[1], experiments=["TWIN"], dataset_id="synthetic")
    with pytest.raises(KeyboardInterrupt):
        rankers.run_grid(args, tmp_path)
    assert not (tmp_path / "logs" / "TWIN_synthetic_1.log").exists()
    assert (tmp_path / "logs" / "TWIN_synthetic_1.interrupted.log").exists()
    calls = []
    monkeypatch.setattr(rankers.subprocess, "call", lambda command, **kwargs: calls.append(command) or 0)
    rankers.run_grid(args, tmp_path)  # the claim was released: the run is taken again
    assert len(calls) == 1 and "TWIN_synthetic" in calls[0]


def test_quantizer_ceiling_counting_state_is_the_log_of_positive_counts_up_to_each_position():
    import torch

    ceiling = _script("quantizer_ceiling")
    values = torch.tensor([[1, 2, 1, 1, 0]])  # (B=1, T=5), last position padding
    labels = torch.tensor([[1, 1, -1, 1, 0]])
    mask = labels != 0
    states = ceiling.counting_states(values, labels, mask, width=3)  # (1, 5, 3)
    counts = torch.tensor([[0, 1, 0], [0, 1, 1], [0, 1, 1], [0, 2, 1], [0, 2, 1]], dtype=torch.float32)
    assert torch.allclose(states[0], torch.log1p(counts))


def test_quantizer_ceiling_rvq_is_lossless_when_every_state_has_its_own_code_and_lossy_otherwise():
    import numpy as np
    import torch

    ceiling = _script("quantizer_ceiling")
    assert ceiling.parse_sizes("32,16,16") == (32, 16, 16) and ceiling.parse_sizes("8x3") == (8, 8, 8)
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(5, 4)).astype(np.float32)
    x = distinct[rng.integers(0, 5, 200)]  # 200 rows, 5 distinct states
    books = ceiling.fit_rvq(x, (8,), seed=0)  # one level with more codes than states
    assert books[0].shape == (8, 4)
    assert torch.allclose(ceiling.quantize(torch.as_tensor(x), books), torch.as_tensor(x), atol=1e-5)
    one = ceiling.quantize(torch.as_tensor(x), ceiling.fit_rvq(x, (2,), seed=0))
    two = ceiling.quantize(torch.as_tensor(x), ceiling.fit_rvq(x, (2, 2), seed=0))
    err = [float(((torch.as_tensor(x) - q) ** 2).sum()) for q in (one, two)]
    assert err[0] > err[1] > 0.0  # a second level reduces the error, two 2-code levels cannot hold 5 states


def test_quantizer_ceiling_scorer_gives_the_co_occurrence_logit_unquantized():
    import torch

    from fuxictr_chime.compressor.diagnostics import cooccurrence_scorer

    ceiling = _script("quantizer_ceiling")
    batch = {"attrs": {"cate_id": torch.tensor([[1, 2, 1, 2], [2, 2, 1, 0]])},
             "labels": torch.tensor([[1, -1, 1, 1], [1, 1, -1, 0]]),
             "mask": torch.tensor([[True, True, True, True], [True, True, True, False]]),
             "item_index": torch.tensor([[3, 4, 5, 6], [4, 7, 3, 0]])}
    anchors, items = torch.tensor([0, 2, 5]), torch.tensor([0, 1, 3, 4, 6])
    ours = ceiling.counting_scorer("cate_id", 3, None)(batch)(anchors, items)
    reference = cooccurrence_scorer("cate_id")(batch)(anchors, items)
    assert torch.allclose(ours, reference)


def test_oracle_column_rows_are_each_users_truth_padded_to_the_column_width():
    import numpy as np

    oracle = _script("oracle_column")
    matrix = np.array([[0, 0, 0], [0, 2.5, 0], [0, 0, 4.0]], dtype=np.float32)  # (U+1, V): users 1, 2
    rows = oracle.oracle_rows(matrix, np.array([2, 1, 7, 0]), width=5)
    assert rows == [[0, 0, 4.0, 0, 0], [0, 2.5, 0, 0, 0], [0] * 5, [0] * 5]  # user 7 has no truth: zeros
    matrix[2, 0] = 1.0  # user 2: bonuses 1 and 4 -> 0.2 and 0.8; all-zero rows stay zero
    rows = oracle.oracle_rows(matrix, np.array([2, 1, 7, 0]), width=4, normalize=True)
    assert np.allclose(rows, [[0.2, 0, 0.8, 0], [0, 1, 0, 0], [0] * 4, [0] * 4])
    with pytest.raises(SystemExit, match="more than the column"):
        oracle.oracle_rows(matrix, np.array([1]), width=2)


def test_oracle_column_config_is_the_shipped_hist_experiment_on_the_view(tmp_path):
    import yaml

    oracle = _script("oracle_column")
    expid, interaction = oracle.make_config("DIN", tmp_path / "view", tmp_path / "config", tmp_path / "processed")
    model = yaml.safe_load((tmp_path / "config" / "model_config.yaml").read_text())
    dataset = yaml.safe_load((tmp_path / "config" / "dataset_config.yaml").read_text())["synthetic_oracle"]
    shipped = yaml.safe_load((REPO / "model_zoo/DIN/config/model_config.yaml").read_text())["DIN_HIST_synthetic"]
    assert (expid, interaction) == ("DIN_ORACLE_synthetic", "DIN_ORACLE_interaction_synthetic")
    assert set(model) == {"Base", expid, interaction}
    assert model[expid] == {**shipped, "dataset_id": "synthetic_oracle"}
    assert model[interaction] == {**model[expid], "column_interaction": True}
    assert dataset["user_info"] == str(tmp_path / "view" / "user_info.parquet")
    assert dataset["data_root"] == str(tmp_path / "processed") + "/"
    active = [c["name"] for c in dataset["feature_cols"] if c.get("active")]
    assert "hist_ctrl" in active and "chime_hist" not in active
    ids = oracle.make_config("DIN", tmp_path / "view_n", tmp_path / "config_n", tmp_path / "processed", normalized=True)
    assert ids == ["DIN_ORACLE_normalized_synthetic", "DIN_ORACLE_normalized_interaction_synthetic"]
    model_n = yaml.safe_load((tmp_path / "config_n" / "model_config.yaml").read_text())
    assert model_n[ids[0]] == {**shipped, "dataset_id": "synthetic_oracle_normalized"}
    datasets_n = yaml.safe_load((tmp_path / "config_n" / "dataset_config.yaml").read_text())
    assert datasets_n["synthetic_oracle_normalized"]["user_info"] == str(tmp_path / "view_n" / "user_info.parquet")
    with pytest.raises(SystemExit, match="no FOO_HIST_synthetic"):
        oracle.make_config("FOO", tmp_path / "view", tmp_path / "config", tmp_path / "processed")
    # an experiment prefix of a zoo file: the truth on the softmax DIN's HIST experiment
    ids = oracle.make_config("DIN_softmax", tmp_path / "view_s", tmp_path / "config_s", tmp_path / "processed",
                             normalized=True)
    assert ids == ["DIN_softmax_ORACLE_normalized_synthetic", "DIN_softmax_ORACLE_normalized_interaction_synthetic"]
    softmax = yaml.safe_load((REPO / "model_zoo/DIN/config/model_config.yaml").read_text())["DIN_softmax_HIST_synthetic"]
    model_s = yaml.safe_load((tmp_path / "config_s" / "model_config.yaml").read_text())
    assert model_s[ids[0]] == {**softmax, "dataset_id": "synthetic_oracle_normalized"}
    assert model_s[ids[0]]["din_use_softmax"] is True
    twin = oracle.make_config("TWIN", tmp_path / "view_t", tmp_path / "config_t", tmp_path / "processed")
    model_t = yaml.safe_load((tmp_path / "config_t" / "model_config.yaml").read_text())
    assert model_t[twin[0]]["model"] == "TWIN_HIST"  # TWIN's own zoo file, not DIN's


def test_oracle_column_table_pairs_every_model_in_its_runs_with_that_models_plain_rows(tmp_path):
    oracle = _script("oracle_column")
    (tmp_path / "summary.json").write_text('{"oracle": {"test": {"auc": 0.80}}}')
    row = {"expid": "", "seed": 1, "test_AUC": 0.0}
    _write_csv(tmp_path / "runs.csv", [{**row, "expid": "DIN_ORACLE_synthetic", "test_AUC": 0.72},
                                       {**row, "expid": "DIN_ORACLE_synthetic", "seed": 2, "test_AUC": 0.74},
                                       {**row, "expid": "TWIN_ORACLE_synthetic", "test_AUC": 0.75},
                                       {**row, "expid": "TWIN_ORACLE_normalized_synthetic", "test_AUC": 0.78},
                                       {**row, "expid": "DIN_softmax_ORACLE_normalized_synthetic", "test_AUC": 0.76}])
    _write_csv(tmp_path / "plain.csv", [{**row, "expid": "DIN_synthetic", "test_AUC": 0.70},
                                        {**row, "expid": "DIN_synthetic", "seed": 2, "test_AUC": 0.70},
                                        {**row, "expid": "TWIN_synthetic", "test_AUC": 0.70},
                                        {**row, "expid": "TWIN_synthetic", "seed": 2, "test_AUC": 0.90},
                                        {**row, "expid": "DIN_softmax_synthetic", "test_AUC": 0.71}])
    text = oracle.table(tmp_path, tmp_path / "plain.csv", tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| ") and " vs " in line]
    assert len(rows) == 4  # no interaction rows: none were run
    assert rows[0].startswith("| DIN w/ truth (concatenated) vs DIN | 1, 2 | 0.7300 | 0.7000 | +0.0300 (+0.0200, +0.0400)")
    assert rows[0].endswith("| 30% |")  # 0.03 / (0.80 - 0.70)
    assert rows[1].startswith("| TWIN w/ truth (concatenated) vs TWIN | 1 | 0.7500 | 0.7000 | +0.0500 (+0.0500) | - |")
    assert rows[2].startswith("| TWIN w/ truth (normalized, concatenated) vs TWIN | 1 | 0.7800 | 0.7000 | +0.0800")
    assert rows[3].startswith("| DIN_softmax w/ truth (normalized, concatenated) vs DIN_softmax | 1 | 0.7600 | "
                              "0.7100 | +0.0500")  # paired with DIN_softmax_synthetic, not DIN_synthetic
    assert (tmp_path / "oracle_column.md").read_text() == text


def test_stats_column_scale_standardizes_each_float_over_the_users_with_history():
    import numpy as np

    scale = _script("stats_column_scale")
    rows = np.array([[0.2, 6.0, 3.0], [0.0, 0.0, 0.0], [0.6, 7.0, 3.0], [0.4, 8.0, 3.0]])  # row 1: no history
    out = scale.standardize(rows)
    has = [0, 2, 3]
    assert out.dtype == np.float32
    assert np.allclose(out[has].mean(axis=0), 0, atol=1e-6)
    assert np.allclose(out[has, :2].std(axis=0), 1)
    assert np.allclose(out[has, 0], [-1.2247449, 1.2247449, 0])  # (0.2 - 0.4) / sqrt(0.08 / 3)
    assert not out[1].any() and not out[:, 2].any()  # no history: zeros; a constant float: zeros
    assert not scale.standardize(np.zeros((2, 2))).any()
    assert np.array_equal(scale.rewrite(rows, "standardized"), out)
    zero = scale.rewrite(rows, "zero")
    assert zero.shape == rows.shape and zero.dtype == np.float32 and not zero.any()


def test_stats_column_scale_view_and_config_change_only_the_column_and_the_dataset(tmp_path):
    import numpy as np
    import pandas as pd
    import yaml

    scale = _script("stats_column_scale")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.parquet").write_bytes(b"x")
    users = pd.DataFrame({"user_index": [0, 1, 2], "stats_ctrl": [[0.0, 0.0], [0.3, 6.0], [0.5, 7.0]],
                          "hist_ctrl": [[0.0], [1.0], [1.0]]})
    users.to_parquet(data / "user_info.parquet")
    scale.make_view(data, tmp_path / "view")
    assert (tmp_path / "view" / "train.parquet").resolve() == (data / "train.parquet").resolve()
    view = pd.read_parquet(tmp_path / "view" / "user_info.parquet")
    assert np.allclose(np.stack(view["stats_ctrl"].to_numpy()), [[0, 0], [-1, -1], [1, 1]])
    assert view["hist_ctrl"].map(list).tolist() == users["hist_ctrl"].tolist()
    with pytest.raises(SystemExit, match="no 'stats_ctrl' column"):
        users.drop(columns="stats_ctrl").to_parquet(data / "user_info.parquet")
        scale.make_view(data, tmp_path / "view2")
    expid = scale.make_config("SDIM", tmp_path / "view", tmp_path / "config", tmp_path / "processed")
    assert expid == "SDIM_STATS_standardized_synthetic"
    model = yaml.safe_load((tmp_path / "config" / "model_config.yaml").read_text())
    shipped = yaml.safe_load((REPO / "model_zoo/SDIM/config/model_config.yaml").read_text())["SDIM_STATS_synthetic"]
    assert model[expid] == {**shipped, "dataset_id": "synthetic_stats_standardized"}
    dataset = yaml.safe_load((tmp_path / "config" / "dataset_config.yaml").read_text())["synthetic_stats_standardized"]
    assert dataset["user_info"] == str(tmp_path / "view" / "user_info.parquet")
    assert [c["name"] for c in dataset["feature_cols"] if c.get("active") and "ctrl" in c["name"]] == ["stats_ctrl"]
    # --zero: the same experiment on a view whose column is zero for every user
    users.to_parquet(data / "user_info.parquet")
    scale.make_view(data, tmp_path / "view_zero", "zero")
    zero = pd.read_parquet(tmp_path / "view_zero" / "user_info.parquet")
    assert not np.stack(zero["stats_ctrl"].to_numpy()).any() and zero["stats_ctrl"].map(len).tolist() == [2, 2, 2]
    expid = scale.make_config("SDIM", tmp_path / "view_zero", tmp_path / "config_zero", tmp_path / "processed", "zero")
    model = yaml.safe_load((tmp_path / "config_zero" / "model_config.yaml").read_text())
    assert expid == "SDIM_STATS_zero_synthetic" and model[expid] == {**shipped, "dataset_id": "synthetic_stats_zero"}


def test_stats_column_scale_table_pairs_with_the_raw_column_and_the_plain_model(tmp_path):
    scale = _script("stats_column_scale")
    row = {"expid": "SDIM_STATS_standardized_synthetic", "seed": 1, "test_AUC": 0.76, "stopped_early": "True",
           "test_logloss": 0.56, "base_rate_logloss": 0.68}
    _write_csv(tmp_path / "runs.csv", [{**row, "expid": "SDIM_STATS_zero_synthetic", "test_AUC": 0.74}, row,
                                       {**row, "seed": 2, "test_AUC": 0.77, "stopped_early": "False",
                                        "test_logloss": 0.70}])
    _write_csv(tmp_path / "stats.csv", [{**row, "expid": "SDIM_STATS_synthetic", "test_AUC": 0.75},
                                        {**row, "expid": "SDIM_STATS_synthetic", "seed": 2, "test_AUC": 0.75}])
    _write_csv(tmp_path / "plain.csv", [{**row, "expid": "SDIM_synthetic", "seed": 2, "test_AUC": 0.78}])
    text = scale.table(tmp_path, tmp_path / "stats.csv", tmp_path / "plain.csv")
    rows = [line for line in text.splitlines() if line.startswith("| SDIM")]
    assert rows[0].startswith("| SDIM w/ STATS (standardized) vs SDIM w/ STATS (raw) | 1, 2 | 0.7650 | 0.7500 | "
                              "+0.0150 (+0.0100, +0.0200) |")
    assert rows[1] == "| SDIM w/ STATS (standardized) vs SDIM | 2 | 0.7700 | 0.7800 | -0.0100 (-0.0100) | - |"
    assert rows[2] == "| SDIM w/ STATS (zero) vs SDIM w/ STATS (raw) | 1 | 0.7400 | 0.7500 | -0.0100 (-0.0100) | - |"
    assert len(rows) == 3  # the zero run's seed 1 has no plain row
    assert ("Of the 3 runs above, 2 stopped early (before their epoch cap) and 2 have a test logloss below the "
            "base rate's entropy.") in text
    assert (tmp_path / "stats_column_scale.md").read_text() == text


def test_oracle_column_run_seeds_runs_only_the_seeds_without_a_row(tmp_path, monkeypatch):
    oracle = _script("oracle_column")
    _write_csv(tmp_path / "runs.csv", [{"expid": "X_synthetic", "seed": 1, "test_AUC": 0.7}])
    calls = []
    monkeypatch.setattr(oracle.subprocess, "check_call", lambda command, **kw: calls.append((command, kw)))
    oracle.run_seeds(tmp_path, tmp_path / "config", "X_synthetic", [1, 2], threads=3)
    assert len(calls) == 1  # seed 1 has its row
    command, kw = calls[0]
    assert command[command.index("--seed") + 1] == "2" and command[command.index("--expid") + 1] == "X_synthetic"
    assert command[command.index("--model-root") + 1] == str(tmp_path / "runs" / "checkpoints" / "seed_2")
    assert command[command.index("--results") + 1] == str(tmp_path / "runs.csv")
    assert kw["env"]["OMP_NUM_THREADS"] == "3" and (tmp_path / "logs" / "X_synthetic_2.log").exists()


def test_din_attention_bench_times_three_paths_that_agree(tmp_path, capsys):
    """bench_din_attention: one CSV row per length with the packed path beside stock and fused,
    the measured valid share near the requested one, and outputs equal to float32 rounding."""
    bench = _script("bench_din_attention")
    out = tmp_path / "din.csv"
    bench.main(["--batch", "16", "--lengths", "10", "40", "--dim", "6", "--units", "5",
                "--items", "30", "--reps", "1", "--warmup", "0", "--valid-share", "0.3",
                "--out", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert [int(r["seq_len"]) for r in rows] == [10, 40]
    for row in rows:
        assert abs(float(row["valid_share"]) - 0.3) < 0.1
        scale = max(float(row["output_max_abs"]), 1.0)
        assert float(row["max_abs_diff"]) < 1e-5 * scale
        assert float(row["packed_max_abs_diff"]) < 1e-5 * scale
        assert float(row["packed_median_s"]) > 0 and row["command"].endswith("--out " + str(out))
    assert "packed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.parse_args(["--valid-share", "0"])


def test_synthetic_rankers_says_where_early_stopping_landed_for_pairs_with_curves(tmp_path):
    """A's run stopped at a lower valid AUC than B's although its curve went higher: the kept-epoch
    difference and the highest-epoch difference have opposite signs. Seed 2 has no curve for B and is
    left out of that section (but not of the pairs table)."""
    rankers = _script("synthetic_rankers")
    data = tmp_path / "data"
    data.mkdir()
    (data / "summary.json").write_text(json.dumps({"oracle": {"test": {"auc": 0.9, "base_logloss": 0.69}}}))
    row = {"test_logloss": 0.6, "stopped_early": "True"}
    _write_csv(tmp_path / "runs.csv", [
        {**row, "expid": "DIN_CHIME_synthetic", "seed": 1, "test_AUC": 0.69, "valid_AUC": 0.70, "epochs_run": 5, "best_epoch": 3},
        {**row, "expid": "DIN_HIST_synthetic", "seed": 1, "test_AUC": 0.70, "valid_AUC": 0.71, "epochs_run": 8, "best_epoch": 6},
        {**row, "expid": "DIN_CHIME_synthetic", "seed": 2, "test_AUC": 0.72, "valid_AUC": 0.72, "epochs_run": 5, "best_epoch": 3},
        {**row, "expid": "DIN_HIST_synthetic", "seed": 2, "test_AUC": 0.71, "valid_AUC": 0.71, "epochs_run": 5, "best_epoch": 3}])
    (tmp_path / "curves").mkdir()
    for expid, seed, aucs in [("DIN_CHIME", 1, [0.65, 0.68, 0.70, 0.72, 0.715]), ("DIN_HIST", 1, [0.66, 0.69, 0.71]),
                              ("DIN_CHIME", 2, [0.70, 0.72])]:
        _write_csv(tmp_path / "curves" / f"{expid}_synthetic_{seed}.curve.csv",
                   [{"epoch": i + 1, "valid_AUC": auc, "valid_logloss": 0.6} for i, auc in enumerate(aucs)])
    text = rankers.table(tmp_path, data, "synthetic", [], pairs=[("DIN_CHIME", "DIN_HIST")])
    assert "| DIN_CHIME vs DIN_HIST | 1, 2 | 0.7050 | 0.7050 |" in text  # the pairs table keeps both seeds
    assert ("| DIN_CHIME vs DIN_HIST | 1 | -0.0100 (-0.0100) | -0.0100 (-0.0100) | +0.0100 (+0.0100) | 5 (3); 8 (6) |"
            in text)
    assert "Where early stopping landed" not in rankers.table(tmp_path, data, "synthetic", [])
