"""Resumable runs.csv and per-seed data views."""
import pandas as pd
import pytest

from fuxictr_chime.bench.runs import RunLog, make_data_view
from fuxictr_chime.errors import DataError


def test_runlog_resume_skips_finished_rows(tmp_path):
    log = RunLog(tmp_path / "runs.csv")
    assert not log.done(model="DIN", variant="plain", seed=1)
    log.append(dict(model="DIN", variant="plain", seed=1, AUC=0.7))
    again = RunLog(tmp_path / "runs.csv")  # a rerun reads what the first run wrote
    assert again.done(model="DIN", variant="plain", seed=1)
    assert not again.done(model="DIN", variant="CHIME", seed=1)
    assert not again.done(model="DIN", variant="plain", seed=2)
    again.append(dict(model="DIN", variant="CHIME", seed=1, AUC=0.71))
    assert pd.read_csv(tmp_path / "runs.csv")["variant"].tolist() == ["plain", "CHIME"]


def test_runlog_rejects_foreign_csv(tmp_path):
    (tmp_path / "runs.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="runs.csv"):
        RunLog(tmp_path / "runs.csv")


def test_data_view_links_big_files_and_copies_mutable(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("train.parquet", "user_info.parquet", "dataset_config.yaml"):
        (src / name).write_text(name)
    view = make_data_view(src, tmp_path / "seed_1" / "data")
    assert (view / "train.parquet").is_symlink()
    assert not (view / "user_info.parquet").is_symlink()
    (view / "user_info.parquet").write_text("exported")
    assert (src / "user_info.parquet").read_text() == "user_info.parquet"
    with pytest.raises(DataError, match="prepare"):
        make_data_view(tmp_path / "nothing", tmp_path / "x")
