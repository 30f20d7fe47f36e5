"""Issue 15: the two-rank runs abort at exit ("terminate called without an active exception")
when gloo's threads outlive ``destroy_process_group``. Cause and reproduction:
tests/compressor/gloo_exit.py and ``fuxictr_chime.compressor.distributed`` ("Shutdown")."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .gloo_exit import GLOO_THREADS, run

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                       reason="torch.distributed with gloo is not available"),
    pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from Linux /proc"),
]


def _gloo_threads_left(out: Path) -> list[list[str]]:
    files = sorted(out.glob("threads_rank*.json"))
    assert len(files) == 2, files
    return [sorted(set(json.loads(f.read_text())) & set(GLOO_THREADS)) for f in files]


def test_before_the_fix_the_group_outlives_destroy(tmp_path):
    """The cause, deterministically: a group created before DDP's lazy import of
    torch.distributed.nn.functional stays alive after destroy, with gloo's threads running.
    (The ranks leave with os._exit, so this test never aborts.)"""
    run(tmp_path, before_fix=True, widen=False, hard_exit=True)
    assert _gloo_threads_left(tmp_path) == [sorted(GLOO_THREADS)] * 2


def test_library_ranks_exit_cleanly_under_the_widened_race(tmp_path):
    """init_distributed's order: destroy joins gloo's threads, and ranks that end with
    broadcast_object_list and a slow, GIL-hogging interpreter shutdown exit 0, three times."""
    for attempt in range(3):
        out = tmp_path / str(attempt)
        out.mkdir()
        run(out, before_fix=False, widen=True)
        assert _gloo_threads_left(out) == [[], []]


def test_torchrun_two_rank_compress_train_exits_cleanly(tmp_path):
    """What a user runs (issue 15, item 2): ``torchrun --nproc_per_node 2 -m fuxictr_chime.cli
    compress train`` on CPU exits 0, with no "terminate called" on stderr, and rank 0 writes
    the checkpoints."""
    import os
    import subprocess
    import sys

    from .conftest import make_prepared_dir
    from .test_compressor_cli import _write_experiment

    data_dir = make_prepared_dir(tmp_path, n_users=14, n_items=30, max_events=10, users_without_history=1)
    config_dir = _write_experiment(tmp_path / "config", data_dir, optim={"batch_size": 2, "eval_users": 2})
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun) if torchrun.exists() else sys.executable, *([] if torchrun.exists() else
               ["-m", "torch.distributed.run"]), "--standalone", "--nproc_per_node", "2", "-m", "fuxictr_chime.cli",
               "compress", "train", "--config", str(config_dir), "--expid", "CHIME_tiny", "--output", str(out),
               "--max-steps", "4", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "terminate called" not in done.stderr
    assert "trained CHIME for 4 steps" in done.stdout
    assert (out / "last" / "model.pt").exists() and (out / "best").is_dir()
