"""Data-parallel compressor training (issue 6): sharding, gradient-correct all-gather, globally
normalized losses, and two-process gloo runs that must equal one process on the union batch.

Multi-process tests start 2 CPU processes with torch.multiprocessing.spawn; the process group
comes from torchrun-style environment variables (``init_distributed``) on a free local port.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from fuxictr_chime.compressor import distributed as dist
from fuxictr_chime.compressor.losses import holistic_loss, immediate_loss
from fuxictr_chime.errors import ConfigError

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")
WORLD = 2


# ---------------------------------------------------------------------------- helpers
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(fn, *args) -> None:
    """Run ``fn(rank, port, *args)`` in WORLD fresh processes."""
    import torch.multiprocessing as mp

    mp.spawn(fn, args=(_free_port(), *args), nprocs=WORLD, join=True)


def _init_rank(rank: int, port: int) -> None:
    """What torchrun does for a rank: set the environment, then the library starts the group."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    info = dist.init_distributed(backend="gloo")
    assert (info.rank, info.world_size, info.backend) == (rank, WORLD, "gloo")


def _random_labels(g: torch.Generator, B: int, T: int, lengths: list[int]) -> torch.Tensor:
    labels = torch.where(torch.rand(B, T, generator=g) < 0.5, 1, -1)  # (B, T)
    for u, n in enumerate(lengths):
        labels[u, n:] = 0  # right padding
    return labels


def _rank_batches(dtype=torch.float64):
    """Per-rank (z, p, labels) with different B, T and padding; seeded, identical in every process."""
    g = torch.Generator().manual_seed(7)
    shapes = [(3, 6, [6, 4, 1]), (2, 5, [5, 3])]
    out = []
    for B, T, lengths in shapes:
        z = torch.nn.functional.normalize(torch.randn(B, T, 4, generator=g, dtype=dtype), dim=-1)
        p = torch.nn.functional.normalize(torch.randn(B, T, 4, generator=g, dtype=dtype), dim=-1)
        out.append((z, p, _random_labels(g, B, T, lengths)))
    return out


def _concat(batches):
    """One batch holding every rank's users, right-padded to the longest T."""
    T = max(b[0].shape[1] for b in batches)
    pad = lambda x, fill: torch.nn.functional.pad(x, (0, 0, 0, T - x.shape[1]) if x.dim() == 3  # noqa: E731
                                                  else (0, T - x.shape[1]), value=fill)
    return tuple(torch.cat([pad(b[i], 0) for b in batches]) for i in range(3))


# ---------------------------------------------------------------------------- single process
def test_shard_users_disjoint_equal_deterministic():
    users = [9, 3, 7, 1, 5, 2, 8]
    shards = [dist.shard_users(users, r, 3) for r in range(3)]
    assert shards == [[1, 5], [2, 7], [3, 8]]  # sorted, last 7 % 3 = 1 user (9) left out
    assert len({u for s in shards for u in s}) == 6
    assert shards == [dist.shard_users(list(reversed(users)), r, 3) for r in range(3)]
    assert dist.shard_users(users) == sorted(users)  # single process: everyone
    with pytest.raises(ConfigError, match=r"2 training users \(after optim.eval_users\) cannot feed 3 ranks"):
        dist.shard_users([1, 2], 0, 3)
    with pytest.raises(ConfigError, match="rank 3"):
        dist.shard_users(users, 3, 3)


def test_pair_counts_equal_brute_force():
    for _, _, labels in _rank_batches():
        B, T = labels.shape
        n_h = sum(int(labels[u, s] == 1) for u in range(B) for t in range(T) for s in range(t + 1, T)
                  if labels[u, t] != 0)
        n_i = sum(int(labels[u, t] != 0 and labels[u, t + 1] != 0) for u in range(B) for t in range(T - 1))
        assert int(dist.holistic_pairs(labels)) == n_h
        assert int(dist.immediate_pairs(labels)) == n_i


def test_single_process_fallbacks_are_plain_losses():
    z, p, labels = _rank_batches()[0]
    assert not dist.is_distributed()
    for sync in (False, True):
        got = dist.holistic_term(z, p, labels, tau=0.2, sync=sync, gather_negatives=True)
        assert torch.equal(got, holistic_loss(z, p, labels, tau=0.2))
        got = dist.immediate_term(z, p, labels, tau=0.07, bias=0.1, sync=sync)
        assert torch.equal(got, immediate_loss(z, p, labels, tau=0.07, bias=0.1))
    model = torch.nn.Linear(2, 2)
    assert dist.wrap_ddp(model) is model and dist.unwrap(model) is model
    assert dist.on_main(lambda a, b: a + b, 2, b=3) == 5
    assert dist.all_reduce_mean({"loss": 1.5}) == {"loss": 1.5}
    assert dist.all_gather_rows(z)[0] is z
    assert (dist.get_rank(), dist.get_world_size(), dist.is_main_process()) == (0, 1, True)


def test_init_distributed_needs_a_launcher_and_a_sane_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert dist.init_distributed() == dist.DistInfo()  # plain python run: single process
    assert not dist.is_distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match=r"RANK=2 must be in \[0, WORLD_SIZE=2\)"):
        dist.init_distributed()
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="MASTER_ADDR is not set"):
        dist.init_distributed()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ConfigError, match="RANK='one' is not an integer"):
        dist.init_distributed()


# ---------------------------------------------------------------------------- losses across 2 ranks
def _loss_worker(rank: int, port: int, out_dir: str) -> None:
    _init_rank(rank, port)
    try:
        z, p, labels = (t.clone() for t in _rank_batches()[rank])
        z.requires_grad_(True)
        p.requires_grad_(True)
        results = {}
        for gather in (True, False):
            z.grad = p.grad = None
            h = dist.holistic_term(z, p, labels, tau=0.2, chunk_size=4, sync=True, gather_negatives=gather)
            i = dist.immediate_term(z, p, labels, tau=0.07, bias=0.3, sync=True)
            (h + i).backward()
            results[gather] = {"h": h.detach(), "i": i.detach(), "gz": z.grad.clone(), "gp": p.grad.clone()}
        # the gather returns every rank's rows, in rank order, with different row counts
        rows = dist.all_gather_rows(torch.full((rank + 1, 2), float(rank)))
        results["rows"] = [r.clone() for r in rows]
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_distributed()


def test_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path):
    """Value: the mean over ranks of the returned losses equals the single-process loss of the
    union batch. Gradient: each rank's gradient of its own z and p, divided by W (DDP's
    average), equals the single-process gradient of those rows (float64, rel. tol. 1e-10)."""
    _spawn(_loss_worker, str(tmp_path))
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    batches = _rank_batches()
    z, p, labels = _concat(batches)
    z.requires_grad_(True)
    p.requires_grad_(True)
    (holistic_loss(z, p, labels, tau=0.2) + immediate_loss(z, p, labels, tau=0.07, bias=0.3)).backward()
    with torch.no_grad():
        h_ref = holistic_loss(z, p, labels, tau=0.2)
        i_ref = immediate_loss(z, p, labels, tau=0.07, bias=0.3)
    got = res[0][True], res[1][True]
    assert float(sum(r["h"] for r in got)) / WORLD == pytest.approx(float(h_ref), rel=1e-10)
    assert float(sum(r["i"] for r in got)) / WORLD == pytest.approx(float(i_ref), rel=1e-10)
    start = 0
    for rank, (zr, _, _) in enumerate(batches):
        B, T = zr.shape[:2]
        ref_gz, ref_gp = z.grad[start:start + B, :T], p.grad[start:start + B, :T]
        torch.testing.assert_close(got[rank]["gz"] / WORLD, ref_gz, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got[rank]["gp"] / WORLD, ref_gp, rtol=1e-10, atol=1e-12)
        start += B
    # without gathered negatives: global normalization of each rank's own-batch loss
    pairs = [int(dist.holistic_pairs(b[2])) for b in batches]
    local = [holistic_loss(*b, tau=0.2) for b in batches]
    expected = sum(n * float(h) for n, h in zip(pairs, local)) / sum(pairs)
    assert float(sum(r[False]["h"] for r in res)) / WORLD == pytest.approx(expected, rel=1e-10)
    assert float(sum(r[False]["i"] for r in res)) / WORLD == pytest.approx(float(i_ref), rel=1e-10)
    for r in res:
        assert [t.tolist() for t in r["rows"]] == [[[0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]
