"""Atomic writers: a failure in the middle leaves the previous file intact and no temp file."""
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
