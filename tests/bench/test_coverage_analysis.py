"""Coverage analysis of a table2 run: a tiny run directory in the table2 layout (one seed, DIN
plain and w/ CHIME trained through ``run_ranker`` on a hand-written data view, a second seed
without checkpoints), analyzed by the library and by ``benchmarks/coverage_analysis.py``."""
from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fuxictr_chime.bench import coverage
from fuxictr_chime.bench.pipeline import run_ranker
from fuxictr_chime.bench.runs import RunLog
from tests.models.test_runner_e2e import N_USERS, dataset_block, write_prepared, zoo_block

REPO = Path(__file__).resolve().parents[2]
HISTORY_USERS = [2, 5, 7]  # users with representation-set history in the tiny view


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """``<run>/runs.csv`` + ``seed_1/{data,models}`` as run_table2 writes them, zoo in ``<root>/zoo``."""
    root = tmp_path_factory.mktemp("coverage")
    run, view = root / "run", root / "run" / "seed_1" / "data"
    write_prepared(view)
    pq.write_table(pa.table({"user_index": np.array(HISTORY_USERS, np.int64),
                             "item_seq": pa.array([[1, 2]] * len(HISTORY_USERS), pa.list_(pa.int64()))}),
                   view / "representation.parquet")
    # as after `compress export`: the prepared folder's own config has the column on
    (view / "dataset_config.yaml").write_text(yaml.safe_dump({"tiny": dataset_block(".", chime=True)}))
    config = root / "zoo" / "DIN" / "config"
    config.mkdir(parents=True)
    (config / "dataset_config.yaml").write_text(yaml.safe_dump(
        {"tiny": dataset_block(str(view)), "tiny_chime": dataset_block(str(view), chime=True)}))
    blocks = {"Base": {"model_root": "./checkpoints/"},
              "DIN_tiny": {**zoo_block("DIN", "DIN_movielens"), "dataset_id": "tiny"},
              "DIN_CHIME_tiny": {**zoo_block("DIN", "DIN_CHIME_movielens"), "dataset_id": "tiny_chime"}}
    (config / "model_config.yaml").write_text(yaml.safe_dump(blocks))
    log = RunLog(run / "runs.csv")
    for variant in ("plain", "CHIME"):
        result = run_ranker("DIN", variant, "tiny", view, run / "seed_1" / "models", seed=1, zoo=root / "zoo")
        log.append({"model": "DIN", "variant": variant, "seed": 1, **result["test"],
                    **{f"valid_{k}": v for k, v in result["valid"].items()}, "expid": result["expid"],
                    "versions": "git_commit=abc"})
    log.append({"model": "DIN", "variant": "plain", "seed": 2, "AUC": 0.5, "expid": "DIN_tiny"})  # no checkpoint
    return run


def test_all_subset_reproduces_runs_csv_and_subsets_partition(tiny_run, caplog):
    frame = coverage.analyze_run(tiny_run, zoo=tiny_run.parent / "zoo", progress=False)
    assert "seed 2" in caplog.text and "skipped" in caplog.text  # no view, no checkpoint: a warning
    assert set(frame["seed"]) == {1} and len(frame) == 2 * len(coverage.SUBSETS)
    for metric in ("AUC", "gAUC", "logloss"):
        assert coverage.reproduction_gap(frame, metric) < 1e-9
    for _, rows in frame.groupby("variant"):
        rows = rows.set_index("subset")
        n = rows["n_samples"]
        assert n["history"] + n["no_history"] == n["all"] and rows.loc["history", "n_users"] == len(HISTORY_USERS)
        assert rows.loc["history", "share"] == pytest.approx(len(HISTORY_USERS) / N_USERS)  # equal samples per user
        # every user has both labels: gAUC(all) is the sample-weighted mean of the subsets' gAUC
        weighted = (n["history"] * rows.loc["history", "gAUC"] + n["no_history"] * rows.loc["no_history", "gAUC"])
        assert rows.loc["all", "gAUC"] == pytest.approx(weighted / n["all"], rel=1e-9)
    assert frame["trained_commit"].eq("abc").all() and frame["config_drift"].fillna("").eq("").all()


def test_markdown_differences_are_paired_with_plain():
    rows = [{"model": "DIN", "variant": v, "seed": s, "subset": sub, "split": "test", "AUC": auc,
             "n_samples": 10, "share": 0.1, "n_users": 1, "stored_AUC": auc if sub == "all" else np.nan}
            for v, base in (("plain", 0.70), ("CHIME", 0.72)) for s in (1, 2)
            for sub, auc in (("all", base + s / 100), ("history", base + 0.05), ("no_history", base))]
    frame = pd.DataFrame(rows)
    text = coverage.format_markdown(frame, title="t")
    assert "| DIN | 2 | 71.50 | 75.00 | 70.00 | — | — | — |" in text
    assert "| DIN w/ CHIME | 2 | 73.50 | 77.00 | 72.00 | +2.00 | +2.00 | +2.00 |" in text
    assert "= 0.00e+00" in text


def test_script_writes_csv_and_markdown(tiny_run, tmp_path, capsys):
    main = runpy.run_path(str(REPO / "benchmarks" / "coverage_analysis.py"))["main"]
    out, md = tmp_path / "c.csv", tmp_path / "c.md"
    assert main(["--run", str(tiny_run), "--zoo", str(tiny_run.parent / "zoo"), "--split", "valid",
                 "--out", str(out), "--md", str(md), "--no-progress"]) == 0
    frame = pd.read_csv(out)
    assert set(frame["split"]) == {"valid"} and "command" in frame and "versions" in frame
    assert coverage.reproduction_gap(frame) < 1e-9  # against runs.csv's valid_AUC
    assert "DIN w/ CHIME" in md.read_text() and "reproduction" in capsys.readouterr().out
