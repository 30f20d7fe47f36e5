"""The zero-column control: the zeroed view keeps every user and width, and the table pairs seeds."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fuxictr_chime.bench.control import format_control, zeroed_view


def test_zeroed_view_zeroes_only_the_column(tmp_path):
    src = tmp_path / "view"
    src.mkdir()
    pq.write_table(pa.table({"user_index": [0, 1, 2],
                             "chime_hist": pa.array([[0.0, 0.0], [0.25, 0.75], [1.0, 0.0]], pa.list_(pa.float32())),
                             "learn_emb": pa.array([[0.0], [1.0], [2.0]], pa.list_(pa.float32()))}),
                   src / "user_info.parquet")
    (src / "dataset_config.yaml").write_text("tiny: {}\n")
    (src / "train.parquet").write_text("x")
    view = zeroed_view(src, tmp_path / "zero", "chime_hist")
    got = pq.read_table(view / "user_info.parquet").to_pydict()
    assert got["user_index"] == [0, 1, 2]
    assert got["chime_hist"] == [[0.0, 0.0]] * 3
    assert got["learn_emb"] == [[0.0], [1.0], [2.0]]
    assert pq.read_table(src / "user_info.parquet").column("chime_hist")[1].as_py() == [0.25, 0.75]  # source kept
    assert (view / "train.parquet").is_symlink()


def test_format_control_pairs_by_seed():
    from scipy import stats

    runs = pd.DataFrame({"model": ["DIN"] * 6, "variant": ["plain"] * 3 + ["CHIME"] * 3, "seed": [1, 2, 3] * 2,
                         "AUC": [0.70, 0.71, 0.69, 0.72, 0.70, 0.73], "gAUC": [0.6] * 6, "logloss": [0.5] * 6})
    control = pd.DataFrame({"model": ["DIN"] * 3, "variant": ["zeroed"] * 3, "seed": [3, 1, 2],
                            "AUC": [0.68, 0.69, 0.70], "gAUC": [0.6] * 3, "logloss": [0.5] * 3})
    text = format_control(runs, control, models=["DIN"], variant="CHIME")
    zero = np.array([0.69, 0.70, 0.68])  # seeds 1, 2, 3
    plain = np.array([0.70, 0.71, 0.69])
    real = np.array([0.72, 0.70, 0.73])
    p1 = stats.ttest_rel(zero, plain).pvalue if np.ptp(zero - plain) > 0 else float("nan")
    assert f"{100 * np.mean(zero - plain):+.2f} (p={p1:.3f})" in text
    assert f"{100 * np.mean(real - zero):+.2f} (p={stats.ttest_rel(real, zero).pvalue:.3f})" in text
    assert "70.00 / 69.00 / 71.67" in text


def test_bench_gpu_option_reaches_the_ranking_runner(monkeypatch, tmp_path):
    """`bench ... --gpu N` travels as a ranking override and becomes run_experiment's gpu argument."""
    import argparse

    from fuxictr_chime.bench import commands, pipeline
    from fuxictr_chime.models import runner

    args = argparse.Namespace(epochs=None, gpu=1)
    assert commands._ranking(args) == {"gpu": 1}
    assert commands._ranking(argparse.Namespace(epochs=2, gpu=-1)) == {"epochs": 2}
    seen = {}
    monkeypatch.setattr(pipeline, "ranker_experiment",
                        lambda *a, **k: (tmp_path, "DIN_tiny", {**(k.get("overrides") or {}), "epochs": 1}))
    monkeypatch.setattr(runner, "run_experiment", lambda cfg, expid, **kw: seen.update(kw) or {"ok": True})
    pipeline.run_ranker("DIN", "plain", "tiny", tmp_path, tmp_path, seed=3, overrides={"gpu": 1})
    assert seen["gpu"] == 1 and "gpu" not in seen["overrides"] and seen["seed"] == 3
