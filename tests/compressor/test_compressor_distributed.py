"""Data-parallel compressor training (issue 6): sharding, gradient-correct all-gather, globally
normalized losses, and two-process gloo runs that must equal one process on the union batch.

Multi-process tests start 2 CPU processes with torch.multiprocessing.spawn; the process group
comes from torchrun-style environment variables (``init_distributed``) on a free local port.
"""
from __future__ import annotations

import json
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


def _all_scenarios(rank: int, port: int, work: str) -> None:
    """One spawn for every multi-process scenario (process start-up dominates their cost)."""
    from .gloo_exit import native_threads

    _init_rank(rank, port)
    try:
        for scenario in (_loss_scenario, _steps_scenario, _train_scenario):
            scenario(rank, Path(work))
    finally:
        dist.destroy_distributed()
    if Path("/proc/self/task").is_dir():
        (Path(work) / f"threads_rank{rank}.json").write_text(json.dumps(native_threads()))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Run the three 2-rank scenarios once (results under the returned folder)."""
    from .conftest import make_prepared_dir

    work = tmp_path_factory.mktemp("two_ranks")
    _prepare_steps(work)
    make_prepared_dir(work / "train", n_users=14, n_items=30, max_events=10, users_without_history=1)
    _spawn(_all_scenarios, str(work))
    return work


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
def _loss_scenario(rank: int, work: Path) -> None:
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
    torch.save(results, work / f"loss_rank{rank}.pt")


def test_two_ranks_equal_one_process_on_the_concatenated_batch(two_ranks):
    """Value: the mean over ranks of the returned losses equals the single-process loss of the
    union batch. Gradient: each rank's gradient of its own z and p, divided by W (DDP's
    average), equals the single-process gradient of those rows (float64, rel. tol. 1e-10)."""
    res = [torch.load(two_ranks / f"loss_rank{r}.pt") for r in range(WORLD)]
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


# ---------------------------------------------------------------------------- DDP training steps
STEPS, ACCUM, PER_RANK = 3, 2, 2  # 3 optimizer steps of 2 micro-batches; 2 users per rank, 4 per global batch


def _equivalence_config(data_dir):
    from .conftest import tiny_chime_config

    raw = tiny_chime_config(data_dir).to_dict()
    raw["loss"].update(gather_negatives=True, chunk_size=8)
    raw["compression"].update(dead_code_threshold=0.0)  # replacement vectors would come from rank 0's shard
    from fuxictr_chime.compressor.config import CHIMEConfig

    return CHIMEConfig.from_dict(raw)


def _micro_batches(data_dir, world: int, rank: int) -> list[list[dict]]:
    """STEPS x ACCUM micro-batches; global micro-batch j = users 4j..4j+3 (ascending index); with
    ``world`` 2, rank r gets users 4j+2r, 4j+2r+1."""
    from fuxictr_chime.compressor.data import RepresentationData

    data = RepresentationData(data_dir, max_len=16)
    users = data.users_with_history()
    size = PER_RANK * WORLD // world
    steps = []
    for s in range(STEPS):
        micro = []
        for a in range(ACCUM):
            start = (s * ACCUM + a) * PER_RANK * WORLD + rank * size
            micro.append(next(data.batches(users[start:start + size], size)))
        steps.append(micro)
    return steps


def _build_model(config, data_dir, init_state=None):
    from fuxictr_chime.compressor.data import RepresentationData
    from fuxictr_chime.compressor.model import CHIMECompressor

    data = RepresentationData(data_dir, max_len=16)
    torch.manual_seed(0)
    model = CHIMECompressor.from_config(config, data.vocab_sizes(), data.dense_widths())
    if init_state is not None:
        model.load_state_dict(init_state)
    return model


def _train_steps(model, config, steps) -> dict:
    """What the trainer's optimizer step does (DDP wrap, no_sync accumulation, reduced loss means,
    clipping, AdamW); the same code runs in one process (no DDP) and in each rank."""
    ddp = dist.wrap_ddp(model)
    optimizer = torch.optim.AdamW(model.param_groups(config.optim))
    model.train()
    history, grads = [], None
    for s, micro in enumerate(steps):
        means = {"holistic": 0.0, "immediate": 0.0, "commit": 0.0}
        for i, batch in enumerate(micro):
            with dist.gradient_sync(ddp, i == len(micro) - 1):
                out = ddp(batch)
                (out["loss"] / len(micro)).backward()
            for key in means:
                means[key] += out[key] / len(micro)
        history.append(dist.all_reduce_mean(means))
        if s == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    state = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    return {"history": history, "grads": grads, "state": state}


def _steps_scenario(rank: int, work: Path) -> None:
    data_dir = work / "steps" / "tiny"
    config = _equivalence_config(data_dir)
    model = _build_model(config, data_dir, torch.load(work / "steps" / "init.pt", weights_only=False))
    torch.save(_train_steps(model, config, _micro_batches(data_dir, WORLD, rank)), work / f"steps_rank{rank}.pt")


def _prepare_steps(work: Path) -> None:
    """Data of the DDP-steps scenario and its starting weights: codebooks initialized by k-means
    on the first global micro-batch (one training-mode forward, no optimizer step)."""
    from .conftest import make_prepared_dir

    data_dir = make_prepared_dir(work / "steps", n_users=25, n_items=30, max_events=10, users_without_history=1)
    config = _equivalence_config(data_dir)
    model = _build_model(config, data_dir)
    model.train()
    with torch.no_grad():
        model(_micro_batches(data_dir, 1, 0)[0][0])
    torch.save(model.state_dict(), work / "steps" / "init.pt")


def test_ddp_steps_with_half_batches_match_one_process_on_the_global_batch(two_ranks):
    """2 ranks x 2 users per micro-batch vs 1 process x 4 users, 3 AdamW steps of 2 micro-batches.

    Exact in exact arithmetic: DDP averages gradients, every loss is normalized over the global
    batch, the holistic loss gathers the other rank's items as negatives (loss.gather_negatives)
    and the quantizer's EMA all-reduces its statistics. Both runs start from the same initialized
    codebooks (k-means on the union batch, done once here) with dead-code replacement off, since
    in training the k-means init and replacements are drawn from rank 0's shard only. Float32
    tolerances (float summation order differs): losses rel 1e-5; first-step gradients: max
    error <= 1e-5 x the tensor's largest entry (seen: ~2e-7); parameters and codebooks after 3
    steps atol 1e-5 (seen: ~1e-6).
    """
    data_dir = two_ranks / "steps" / "tiny"
    config = _equivalence_config(data_dir)
    init = torch.load(two_ranks / "steps" / "init.pt", weights_only=False)
    reference = _train_steps(_build_model(config, data_dir, init), config, _micro_batches(data_dir, 1, 0))
    ranks = [torch.load(two_ranks / f"steps_rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for key, value in ranks[0]["state"].items():  # DDP + quantizer sync: ranks hold identical models
        assert torch.equal(value, ranks[1]["state"][key]), key
    got = ranks[0]
    for ref_step, got_step in zip(reference["history"], got["history"]):
        for key in ref_step:
            assert got_step[key] == pytest.approx(ref_step[key], rel=1e-5), key
    assert got["grads"].keys() == reference["grads"].keys()
    for name, grad in reference["grads"].items():  # error relative to the tensor's largest entry
        error = float((got["grads"][name] - grad).abs().max())
        assert error <= 1e-5 * float(grad.abs().max()) + 1e-7, (name, error)
    for key, value in reference["state"].items():
        if value.is_floating_point():
            torch.testing.assert_close(got["state"][key], value, rtol=0, atol=1e-5, msg=key)
        else:
            assert torch.equal(got["state"][key], value), key
    assert not torch.equal(init["quantizer.codebook_0"], got["state"]["quantizer.codebook_0"])  # EMA moved


# ---------------------------------------------------------------------------- train() on 2 ranks
class _Crash(Exception):
    pass


def _run_config(work: Path, name: str):
    from fuxictr_chime.compressor.config import CHIMEConfig

    from .conftest import tiny_chime_config

    raw = tiny_chime_config(work / "tiny", work / name).to_dict()
    raw["loss"].update(gather_negatives=True)
    raw["optim"].update(batch_size=2, grad_accum_steps=2, max_steps=4, eval_every=2, eval_users=1)
    return CHIMEConfig.from_dict(raw)


def _train_scenario(rank: int, work: Path) -> None:
    from fuxictr_chime.compressor import train as train_mod

    models, real_wrap = [], dist.wrap_ddp

    def capture(model, **kwargs):  # keep each rank's live model to compare ranks afterwards
        models.append(model)
        return real_wrap(model, **kwargs)

    dist.wrap_ddp = capture
    try:
        result = train_mod.train(_run_config(work / "train", "straight"), progress=False)
        state = {k: v.clone() for k, v in models[-1].state_dict().items() if isinstance(v, torch.Tensor)}
        torch.save({"state": state, "step": result.step, "total": result.total_steps,
                    "best_step": result.best_step, "tokens": result.train_tokens}, work / f"train_rank{rank}.pt")
        real_step, calls = train_mod._Run._optimizer_step, {"n": 0}

        def crashing(self, stream):
            calls["n"] += 1
            if calls["n"] == 3:  # both ranks stop after the checkpoint at step 2
                raise _Crash()
            return real_step(self, stream)

        train_mod._Run._optimizer_step = crashing
        try:
            train_mod.train(_run_config(work / "train", "interrupted"), progress=False)
        except _Crash:
            pass
        train_mod._Run._optimizer_step = real_step
        train_mod.train(_run_config(work / "train", "interrupted"), resume=True, progress=False)
    finally:
        dist.wrap_ddp = real_wrap


def test_torchrun_style_training_on_two_ranks_checkpoints_on_rank0_and_resumes(two_ranks):
    """train() under 2 gloo ranks with default k-means init and dead-code replacement: both ranks
    end with identical weights and codebooks, rank 0 alone writes log.csv and checkpoints, and an
    interrupted run resumed from last/ (every rank loads it) replays the uninterrupted one."""
    import csv

    r0, r1 = (torch.load(two_ranks / f"train_rank{r}.pt", weights_only=False) for r in range(WORLD))
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key
    assert bool(r0["state"]["quantizer.initialized"])
    # 12 train users -> 6 per rank -> 3 micro-batches of 2 per rank and epoch; 4 steps of 2
    assert (r0["step"], r0["total"], r1["step"], r1["best_step"]) == (4, 4, 4, r0["best_step"])
    straight = two_ranks / "train" / "straight"
    saved = torch.load(straight / "last" / "model.pt", weights_only=True)
    for key, value in r0["state"].items():
        assert torch.equal(saved[key], value), key
    with open(straight / "log.csv", newline="") as handle:
        rows = [(r["step"], r["split"]) for r in csv.DictReader(handle)]
    assert rows == [("0", "eval"), ("2", "train"), ("2", "eval"), ("4", "train"), ("4", "eval")]
    assert not [p.name for p in straight.iterdir() if p.name.startswith(".")]  # no half-written folders
    resumed = two_ranks / "train" / "interrupted"
    assert torch.load(resumed / "last" / "trainer.pt", weights_only=False)["step"] == 4
    with open(resumed / "log.csv", newline="") as handle:
        assert [(r["step"], r["split"]) for r in csv.DictReader(handle)] == rows
    again = torch.load(resumed / "last" / "model.pt", weights_only=True)
    for key, value in saved.items():
        torch.testing.assert_close(again[key], value, msg=key)


# ---------------------------------------------------------------------------- clean exit (issue 15)
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from Linux /proc")
def test_destroy_joins_gloo_threads_after_ddp_training(two_ranks):
    """After DDP training, destroy_distributed() frees the group: gloo's worker and loop threads
    are gone before the interpreter shuts down (the abort of issue 15 needs them alive; see
    tests/compressor/gloo_exit.py)."""
    from .gloo_exit import GLOO_THREADS

    for rank in range(WORLD):
        threads = json.loads((two_ranks / f"threads_rank{rank}.json").read_text())
        assert not set(threads) & set(GLOO_THREADS), (rank, threads)
