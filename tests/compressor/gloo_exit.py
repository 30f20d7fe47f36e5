"""The two-rank exit abort of issue 15, on demand: ``terminate called without an active exception``.

Cause (see :mod:`fuxictr_chime.compressor.distributed`, "Shutdown"): ``DistributedDataParallel``
lazily imports ``torch.distributed.nn.functional``, whose functions bind ``group.WORLD`` as a
default argument at import time. Imported after the group exists, they keep the ProcessGroup
alive past ``destroy_process_group()``, so gloo's worker threads are still running when the
interpreter finalizes. A worker that drops the last reference to a collective's Python-owned
tensors after finalization began must take the GIL; CPython ends such a thread with a forced
unwind, which aborts the process when it crosses a ``noexcept`` C++ destructor.

Each run here spawns 2 gloo ranks that take one DDP step, end with ``broadcast_object_list``
(what :func:`~fuxictr_chime.compressor.distributed.on_main` does), destroy the group and exit.
Two things widen the race window without changing its nature: the main thread keeps the GIL
(``sys.setswitchinterval(100)``) and interpreter shutdown lasts 0.3 s (a slow ``__del__``).

    python -m tests.compressor.gloo_exit --before-fix --runs 10   # aborts in some runs
    python -m tests.compressor.gloo_exit --runs 10                # the library's order: none

``--before-fix`` starts the group the way ``init_distributed`` did before the fix (plain
``init_process_group``). Each rank writes the names of its native threads after
``destroy_distributed()`` to ``threads_rank{r}.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

GLOO_THREADS = ("pt_gloo_runloop", "gloo_tcp_loop")
WORLD = 2


def native_threads() -> list[str]:
    """Names of this process's native threads (Linux /proc)."""
    tasks = Path("/proc/self/task")
    return sorted((tasks / tid / "comm").read_text().strip() for tid in os.listdir(tasks))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _SlowShutdown:
    def __del__(self) -> None:  # runs while the interpreter clears __main__ at shutdown
        time.sleep(0.3)


def rank_main(rank: int, port: int, out: str, before_fix: bool, widen: bool, hard_exit: bool) -> None:
    """One rank: start the group, one DDP step, a final broadcast_object_list, destroy, exit."""
    from fuxictr_chime.compressor import distributed as dist

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    if before_fix:  # init_distributed before the fix: the group exists before the lazy import
        torch.distributed.init_process_group("gloo", init_method="env://", rank=rank, world_size=WORLD)
        dist._OWNED = True
    else:
        dist.init_distributed(backend="gloo")
    model = dist.wrap_ddp(torch.nn.Linear(4, 2))  # DDP imports torch._dynamo -> torch.distributed.nn
    model(torch.randn(3, 4)).sum().backward()
    del model
    if widen:
        sys.setswitchinterval(100.0)
    dist.on_main(lambda: {"step": 1})  # the trainer's last collective: broadcast_object_list
    dist.destroy_distributed()
    Path(out, f"threads_rank{rank}.json").write_text(json.dumps(native_threads()))
    if hard_exit:  # skip interpreter shutdown (the thread check alone, never an abort)
        sys.stdout.flush()
        os._exit(0)
    if widen:
        import __main__

        __main__._chime_slow_shutdown = _SlowShutdown()


def run(out: str | Path, *, before_fix: bool = False, widen: bool = True, hard_exit: bool = False) -> None:
    """Spawn the two ranks once; raises torch's ProcessExitedException when a rank aborts."""
    import torch.multiprocessing as mp

    mp.spawn(rank_main, args=(free_port(), str(out), before_fix, widen, hard_exit), nprocs=WORLD, join=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before-fix", action="store_true", help="start the group as before the fix")
    parser.add_argument("--runs", type=int, default=10, help="spawns (default 10)")
    args = parser.parse_args(argv)
    aborts, alive = 0, 0
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as out:
            try:
                run(out, before_fix=args.before_fix)
                status = "exit 0"
            except Exception as exc:  # noqa: BLE001 - the abort is what this script counts
                aborts += 1
                status = f"{type(exc).__name__}: {exc}"
            files = sorted(Path(out).glob("threads_rank*.json"))
            left = [sorted(set(json.loads(f.read_text())) & set(GLOO_THREADS)) for f in files]
            alive += any(left)
            print(f"run {i + 1}: {status}; gloo threads after destroy: {left}", flush=True)
    print(f"{aborts} of {args.runs} runs aborted; gloo threads outlived destroy in {alive}")
    return 1 if aborts else 0


if __name__ == "__main__":
    sys.exit(main())
