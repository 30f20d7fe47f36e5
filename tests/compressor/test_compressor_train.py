"""Compressor trainer: log.csv, checkpoints, resume, determinism, schedule, failure modes."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from fuxictr_chime.compressor import checkpoint as ckpt_mod
from fuxictr_chime.compressor import train as train_mod
from fuxictr_chime.compressor.config import CHIMEConfig
from fuxictr_chime.compressor.train import NonFiniteLossError, log_columns, train, warmup_cosine
from fuxictr_chime.errors import ConfigError

from .conftest import tiny_chime_config


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _with(config: CHIMEConfig, output_dir, **optim) -> CHIMEConfig:
    raw = config.to_dict()
    raw["optim"].update(optim)
    raw["output_dir"] = str(output_dir)
    return CHIMEConfig.from_dict(raw)


def test_train_writes_log_and_checkpoints(tiny_config, tmp_path):
    result = train(tiny_config, progress=False)
    assert result.step == result.total_steps == 3
    rows = _rows(result.log_path)
    assert list(rows[0]) == log_columns(3)
    assert [(r["step"], r["split"]) for r in rows] == [
        ("0", "eval"), ("2", "train"), ("2", "eval"), ("3", "train"), ("3", "eval")]
    for row in rows:
        assert all(math.isfinite(float(row[k])) for k in ("holistic", "immediate", "commit", "loss", "lr"))
        if row["split"] == "eval":
            for m in (1, 2, 3):
                assert 0.0 < float(row[f"hit_ratio_{m}"]) <= 1.0 and float(row[f"perplexity_{m}"]) >= 1.0
    for folder in (result.last_checkpoint, result.best_checkpoint):
        assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "model.pt", "trainer.pt", "versions.json"]
    versions = json.loads((result.last_checkpoint / "versions.json").read_text())
    assert versions["compressor"] == "CHIME" and versions["torch"] == torch.__version__
    assert versions["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(versions["cpu_threads"], int) and versions["cpu_threads"] >= 1
    assert {"python", "transformers", "fuxictr_chime", "git_commit"} <= set(versions)
    assert versions["data_fingerprint"]["items"] == 20
    assert versions["data_fingerprint"]["vocab_sizes"] == {"cate_id": 6, "item_id": 21}
    assert CHIMEConfig.from_yaml(result.last_checkpoint / "config.yaml").to_dict() == tiny_config.to_dict()
    saved = torch.load(result.last_checkpoint / "trainer.pt", weights_only=False)
    assert saved["step"] == 3 and {"optimizer", "scheduler", "rng", "best_metric"} <= set(saved)
    evals = [r for r in rows if r["split"] == "eval" and r["step"] != "0"]
    best = min(evals, key=lambda r: float(r["holistic"]))
    assert result.best_step == int(best["step"])
    assert result.best_metric == pytest.approx(float(best["holistic"]))
    model_state = torch.load(result.last_checkpoint / "model.pt", weights_only=True)
    assert bool(model_state["quantizer.initialized"])  # codebooks travel with the weights


def test_interrupted_then_resumed_run_reaches_the_same_step(tiny_config, tmp_path, monkeypatch):
    reference = train(_with(tiny_config, tmp_path / "straight", max_steps=5, eval_every=2), progress=False)
    config = _with(tiny_config, tmp_path / "interrupted", max_steps=5, eval_every=2)
    original = train_mod._Run._optimizer_step
    calls = {"n": 0}

    def crashing(self, stream):
        calls["n"] += 1
        if calls["n"] == 4:  # after the checkpoint at step 2, in the middle of the run
            raise KeyboardInterrupt("simulated crash")
        return original(self, stream)

    monkeypatch.setattr(train_mod._Run, "_optimizer_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    monkeypatch.setattr(train_mod._Run, "_optimizer_step", original)
    assert torch.load(tmp_path / "interrupted" / "last" / "trainer.pt", weights_only=False)["step"] == 2

    resumed = train(config, resume=True, progress=False)
    assert resumed.step == reference.step == 5
    assert math.isfinite(resumed.final_eval["loss"])
    steps = [(r["step"], r["split"]) for r in _rows(resumed.log_path)]
    assert steps == [(r["step"], r["split"]) for r in _rows(reference.log_path)]
    # weights, codebooks and RNG are restored, so the resumed run replays the uninterrupted one
    a = torch.load(reference.last_checkpoint / "model.pt", weights_only=True)
    b = torch.load(resumed.last_checkpoint / "model.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_resume_without_checkpoint_is_a_config_error(tiny_config):
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(tiny_config, resume=True, progress=False)


def test_same_seed_same_weights_other_seed_differs(tiny_config, tmp_path):
    a = train(_with(tiny_config, tmp_path / "a", max_steps=2), progress=False)
    b = train(_with(tiny_config, tmp_path / "b", max_steps=2), progress=False)
    c = train(_with(tiny_config, tmp_path / "c", max_steps=2, seed=1), progress=False)
    sa, sb, sc = ({k: v for k, v in torch.load(r.last_checkpoint / "model.pt", weights_only=True).items()
                   if isinstance(v, torch.Tensor)} for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_cpu_threads_pins_torch_threads_while_training_and_restores_them(tiny_config, tmp_path, monkeypatch):
    from fuxictr_chime.compressor.model import CHIMECompressor

    seen = []
    real = CHIMECompressor.forward

    def spy(self, batch):
        seen.append(torch.get_num_threads())
        return real(self, batch)

    monkeypatch.setattr(CHIMECompressor, "forward", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(_with(tiny_config, tmp_path / "pinned", max_steps=2, cpu_threads=1), progress=False)
        assert seen and set(seen) == {1}  # every training and eval forward ran on one thread
        assert torch.get_num_threads() == 2  # the caller's count is back
        seen.clear()
        train(_with(tiny_config, tmp_path / "default", max_steps=2), progress=False)
        assert set(seen) == {2}  # null: torch's count is left alone
    finally:
        torch.set_num_threads(before)


def test_pinned_cpu_threads_restores_on_error_and_ignores_accelerators():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with train_mod.pinned_cpu_threads(1, torch.device("cpu")):
                assert torch.get_num_threads() == 1
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
        with train_mod.pinned_cpu_threads(1, torch.device("cuda")):  # nothing to pin off the CPU
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_nan_loss_stops_with_step_and_term(tiny_config, monkeypatch):
    from fuxictr_chime.compressor.model import CHIMECompressor

    real = CHIMECompressor.forward

    def poisoned(self, batch):  # the immediate term turns NaN, as after an overflow
        out = real(self, batch)
        return {**out, "immediate": float("nan"), "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(CHIMECompressor, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 1 \(epoch 0, micro-batch 0\): immediate loss is nan"):
        train(_with(tiny_config, tiny_config.output_dir, eval_every=100), progress=False)


def test_eval_users_count_and_bad_steps(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="eval_users"):
        train(_with(tiny_config, tmp_path / "x", eval_users=5), progress=False)  # 5 users with history
    raw = tiny_config.to_dict()
    raw["optim"].update(max_steps=None, epochs=0.0)
    with pytest.raises(ConfigError, match="max_steps or epochs"):
        train(CHIMEConfig.from_dict(raw), progress=False)


def test_epochs_set_the_number_of_optimizer_steps(tiny_config, tmp_path):
    # 5 users with history, 1 eval -> 4 train users = 1 micro-batch of 4 per epoch; 3 epochs, accum 1
    result = train(_with(tiny_config, tmp_path / "ep", max_steps=None, epochs=3.0, eval_every=10), progress=False)
    assert result.step == result.total_steps == 3


def test_warmup_cosine_schedule():
    f = warmup_cosine(4, 12)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(8) == pytest.approx(0.5)  # halfway through the cosine part
    assert f(12) == pytest.approx(0.0) and f(20) == pytest.approx(0.0)
    assert all(f(s) >= f(s + 1) for s in range(4, 12))
    g = warmup_cosine(2, 10, constant=True)
    assert [g(s) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]


def test_lr_in_log_follows_the_schedule(tiny_config, tmp_path):
    config = _with(tiny_config, tmp_path / "lr", max_steps=4, warmup_steps=2, eval_every=1)
    result = train(config, progress=False)
    evals = {int(r["step"]): float(r["lr"]) for r in _rows(result.log_path) if r["split"] == "eval"}
    f = warmup_cosine(2, 4)
    for step, lr in evals.items():  # the lr the next optimizer step will use
        assert lr == pytest.approx(7e-4 * f(step))


def test_checkpoint_write_is_atomic(tiny_config, tmp_path, monkeypatch):
    result = train(tiny_config, progress=False)
    before = {p.name: p.read_bytes() for p in result.last_checkpoint.iterdir()}

    def broken(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(CHIMEConfig, "to_yaml", broken)
    from fuxictr_chime.compressor.model import CHIMECompressor
    from fuxictr_chime.compressor.data import RepresentationData

    data = RepresentationData(tiny_config.data_dir, max_len=16)
    model = CHIMECompressor.from_config(tiny_config, data.vocab_sizes(), data.dense_widths())
    with pytest.raises(OSError, match="disk full"):
        ckpt_mod.save_checkpoint(result.last_checkpoint, model=model, config=tiny_config, compressor="CHIME",
                                 fingerprint={})
    assert {p.name: p.read_bytes() for p in result.last_checkpoint.iterdir()} == before
    assert sorted(p.name for p in result.output_dir.iterdir()) == ["best", "last", "log.csv", "references.json"]
