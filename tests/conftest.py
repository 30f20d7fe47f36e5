"""Suite-wide guard (issue 15): no test leaves a process behind (spawned ranks, torchrun,
Ray, loader workers). Checked once, when the session ends."""
from __future__ import annotations

import time

import psutil
import pytest

_GRACE_S = 20.0  # Ray's and torchrun's processes may take a few seconds to exit after shutdown
# multiprocessing's own helpers serve this interpreter and end with it (their pipe closes)
_OWN_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    yield
    me = psutil.Process()
    deadline = time.monotonic() + _GRACE_S
    while True:
        left = [p for p in me.children(recursive=True) if _alive(p) and not _own_helper(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not left, "processes left behind by the test suite: " + "; ".join(_describe(p) for p in left)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _own_helper(proc: psutil.Process) -> bool:
    try:
        return any(helper in " ".join(proc.cmdline()) for helper in _OWN_HELPERS)
    except psutil.Error:
        return False


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {proc.pid}"
