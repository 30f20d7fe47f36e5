"""Atomic writers: a failure in the middle leaves the previous file intact and no temp file."""
import csv
import json

import pandas as pd
import pytest

from fuxictr_chime.io import atomic_path, write_json_atomic, write_parquet_atomic, write_yaml_atomic


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible before the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "a.parquet"
    write_parquet_atomic(pd.DataFrame({"x": [1, 2]}), target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert pd.read_parquet(target)["x"].tolist() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]


def test_json_and_yaml_roundtrip(tmp_path):
    import numpy as np
    import yaml

    write_json_atomic(tmp_path / "s.json", {"n": np.int64(3), "v": np.arange(2)})
    assert json.loads((tmp_path / "s.json").read_text()) == {"n": 3, "v": [0, 1]}
    write_yaml_atomic(tmp_path / "c.yaml", {"lr": 1.0e-3, "k": [32, 16, 16]})
    back = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert back == {"lr": 1.0e-3, "k": [32, 16, 16]} and isinstance(back["lr"], float)


def test_atomic_files_get_umask_permissions_not_mkstemp_0600(tmp_path):
    import os
    import stat

    from fuxictr_chime.io import write_text_atomic

    umask = os.umask(0o022)
    try:
        path = tmp_path / "new.txt"
        write_text_atomic(path, "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        path.chmod(0o600)
        write_text_atomic(path, "y")  # a replaced file keeps its own mode
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(umask)


def test_append_csv_rows_new_file_takes_fields_then_the_rows_keys(tmp_path):
    from fuxictr_chime.io import append_csv_rows

    path = tmp_path / "sub" / "runs.csv"
    append_csv_rows(path, [{"b": 1, "extra": None, "a": float("nan")}], fields=["a", "b"])
    assert path.read_text() == "a,b,extra\n,1,\n"  # None and NaN are empty cells, as pandas writes them


def test_append_csv_rows_adds_new_columns_and_keeps_old_cells_as_text(tmp_path):
    """Old cells are copied, not re-parsed: '2024' stays '2024' (pandas would write 2024.0 once the
    column has an empty cell) and '0.10' keeps its zero; a column new to the file is appended."""
    from fuxictr_chime.io import append_csv_rows

    path = tmp_path / "runs.csv"
    path.write_text('seed,auc,note\n2024,0.10,"a, b"\n')
    append_csv_rows(path, [{"auc": 0.5, "gauc": 0.25}, {"seed": 7, "note": 'say "x"'}])
    with path.open(newline="") as f:
        got = list(csv.reader(f))
    assert got == [["seed", "auc", "note", "gauc"], ["2024", "0.10", "a, b", ""],
                   ["", "0.5", "", "0.25"], ["7", "", 'say "x"', ""]]
    assert pd.read_csv(path)["gauc"].isna().tolist() == [True, False, True]  # pandas reads an empty cell as NaN


def test_append_csv_rows_keeps_the_old_file_when_a_row_cannot_be_written(tmp_path, monkeypatch):
    from fuxictr_chime import io as io_mod

    path = tmp_path / "runs.csv"
    io_mod.append_csv_rows(path, [{"x": 1}])

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io_mod, "write_text_atomic", crash)
    with pytest.raises(OSError, match="disk full"):
        io_mod.append_csv_rows(path, [{"x": 2}])
    assert path.read_text() == "x\n1\n"


def test_append_csv_rows_from_parallel_processes_loses_no_row(tmp_path):
    """The ``<name>.lock`` file serializes read-modify-write: 4 processes x 10 rows, 40 rows back."""
    import multiprocessing as mp

    path = tmp_path / "runs.csv"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_ten, args=(str(path), k)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = pd.read_csv(path)
    assert sorted(zip(rows["writer"], rows["i"])) == [(k, i) for k in range(4) for i in range(10)]


def _append_ten(path: str, writer: int) -> None:
    from fuxictr_chime.io import append_csv_rows

    for i in range(10):
        append_csv_rows(path, [{"writer": writer, "i": i}])


def test_read_yaml_mapping_names_the_file_for_bad_yaml_or_a_non_mapping_top_level(tmp_path):
    from fuxictr_chime.errors import ConfigError
    from fuxictr_chime.io import read_yaml_mapping

    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml_mapping(tmp_path / "empty.yaml", "experiment ids") == {}
    (tmp_path / "bad.yaml").write_text("DIN_x: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML"):
        read_yaml_mapping(tmp_path / "bad.yaml", "experiment ids")
    (tmp_path / "list.yaml").write_text("- DIN_x\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: top level must be a mapping of dataset ids"):
        read_yaml_mapping(tmp_path / "list.yaml", "dataset ids")
