"""CHIMECompressor: named losses, ablations, gradient routing, learning-rate groups, user vectors."""
from __future__ import annotations

import math

import pytest
import torch

from fuxictr_chime.compressor.config import CHIMEConfig
from fuxictr_chime.compressor.data import RepresentationData
from fuxictr_chime.compressor.losses import holistic_loss, immediate_loss
from fuxictr_chime.compressor.model import CHIMECompressor
from fuxictr_chime.compressor.registry import get_compressor, list_compressors
from fuxictr_chime.errors import ConfigError

from .conftest import TINY_HIDDEN, make_prepared_dir, tiny_chime_config

ABLATIONS = {
    "full": {},
    "wo_il": {"loss": {"immediate": False}},
    "wo_icm": {"compression": {"enabled": False}},
    "wo_iam": {"adaptation": {"id_only": True,
                              "embedding_dims": {"item_id": TINY_HIDDEN - 4, "cate_id": 0, "label": 4},
                              "dense_dims": {"title_emb": 0}}},
    "straight_through": {"compression": {"rotation_trick": False}},
    # CHIME_synthetic_small_data's switches: no item id, standardized b_t, no commitment term
    "small_data": {"adaptation": {"embedding_dims": {"item_id": 0, "cate_id": TINY_HIDDEN - 12, "label": 4},
                                  "dense_dims": {"title_emb": 8}},
                   "compression": {"standardize": True, "commitment_weight": 0.0}},
}


def _config(data_dir, changes=None) -> CHIMEConfig:
    raw = tiny_chime_config(data_dir).to_dict()
    for section, values in (changes or {}).items():
        raw[section].update(values)
    return CHIMEConfig.from_dict(raw)


def _setup(tmp_path, changes=None, seed=0):
    folder = make_prepared_dir(tmp_path, n_users=8, seed=seed)
    config = _config(folder, changes)
    data = RepresentationData(folder, max_len=config.optim.max_len)
    torch.manual_seed(0)
    model = CHIMECompressor.from_config(config, data.vocab_sizes(), data.dense_widths())
    users = data.all_users()
    batch = next(data.batches(users, len(users)))
    return model, data, batch


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_forward_returns_finite_named_losses_for_each_ablation(tmp_path, name):
    model, _, batch = _setup(tmp_path, ABLATIONS[name])
    out = model(batch)
    assert set(out) == {"loss", "holistic", "immediate", "commit"}
    assert out["loss"].requires_grad and out["loss"].dim() == 0
    for key in ("holistic", "immediate", "commit"):
        assert isinstance(out[key], float) and math.isfinite(out[key])
    assert math.isfinite(float(out["loss"].detach()))
    if name == "wo_il":
        assert out["immediate"] == 0.0
    if name == "small_data":  # the item input is category + title vector; no commitment term
        assert "item_id" not in model.adaptation.embeddings and model.adaptation.item_input_dim == TINY_HIDDEN - 4  # cate 20 + title 8
        assert out["commit"] == 0.0 and model.standardize is not None
    if name == "wo_icm":
        assert out["commit"] == 0.0 and model.quantizer is None
    elif name != "small_data":
        assert out["commit"] > 0.0
    expected = out["holistic"] + out["immediate"] + model.config.compression.commitment_weight * out["commit"]
    expected = float(torch.as_tensor(expected).detach())
    assert float(out["loss"].detach()) == pytest.approx(expected, rel=1e-5)


def test_losses_equal_the_loss_functions_on_the_model_states(tmp_path):
    """The model feeds L2-normalized z (UserGLU of the quantized sum) and p (ItemGLU) to eq. 1."""
    model, _, batch = _setup(tmp_path)
    model.eval()  # no EMA update, so both passes see the same codebooks
    with torch.no_grad():
        out = model(batch)
        hidden, e_item, mask = model._represent(batch)
        q = model.quantizer(model.projection(hidden), mask)
        z = torch.nn.functional.normalize(model.user_glu(q.quantized), dim=-1)  # (B, T, D)
        p = torch.nn.functional.normalize(model.item_glu(e_item), dim=-1)  # (B, T, D)
        labels = batch["labels"] * mask
        cfg = model.config.loss
        assert out["holistic"] == pytest.approx(float(holistic_loss(z, p, labels, tau=cfg.tau_holistic)), rel=1e-5)
        assert out["immediate"] == pytest.approx(
            float(immediate_loss(z, p, labels, tau=cfg.tau_immediate, bias=model.bias)), rel=1e-5)
        assert out["commit"] == pytest.approx(float(q.commit_loss), rel=1e-5)


def test_gradients_reach_every_trained_module_but_not_the_codebooks(tmp_path):
    model, _, batch = _setup(tmp_path)
    model.train()
    model(batch)["loss"].backward()
    groups = {
        "IAM item embedding": model.adaptation.embeddings["item_id"].weight,
        "IAM attribute embedding": model.adaptation.embeddings["cate_id"].weight,
        "IAM label embedding": model.adaptation.label_embedding.weight,
        "IAM dense GLU": model.adaptation.projectors["title_emb"].proj.weight,
        "backbone": next(model.backbone.parameters()),
        "projection": model.projection.weight,
        "user GLU": model.user_glu.proj.weight,
        "item GLU": model.item_glu.proj.weight,
        "immediate bias": model.bias,
    }
    for name, param in groups.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    params = {id(p) for p in model.parameters()}
    for m in range(model.quantizer.num_layers):
        book = model.quantizer.codebook(m)
        assert id(book) not in params and not book.requires_grad and book.grad is None
    assert all(not name.startswith("quantizer.") for name, _ in model.named_parameters())


def test_param_groups_random_backbone_is_all_new(tmp_path):
    model, _, _ = _setup(tmp_path)
    groups = model.param_groups(model.config.optim)
    assert [g["name"] for g in groups] == ["new"]
    assert groups[0]["lr"] == model.config.optim.lr_new
    assert sum(p.numel() for p in groups[0]["params"]) == sum(p.numel() for p in model.parameters())


def test_param_groups_pretrained_backbone_gets_lr_pretrained(tmp_path, tiny_qwen2_config):
    from transformers import Qwen2ForCausalLM

    source = tmp_path / "qwen_tiny"
    Qwen2ForCausalLM(tiny_qwen2_config).save_pretrained(source)
    model, _, batch = _setup(tmp_path, {"backbone": {"pretrained_path": str(source), "num_pretrained_layers": 2}})
    groups = {g["name"]: g for g in model.param_groups(model.config.optim)}
    assert groups["pretrained"]["lr"] == 7e-6 and groups["new"]["lr"] == 7e-4
    pretrained = {id(p) for p in groups["pretrained"]["params"]}
    decoder = {id(p) for p in model.backbone.decoder.parameters()}
    assert pretrained == decoder  # the 2 decoder layers + final norm, nothing else
    for module in (model.adaptation, model.projection, model.user_glu, model.item_glu):
        assert not pretrained & {id(p) for p in module.parameters()}
    assert id(model.bias) in {id(p) for p in groups["new"]["params"]}
    assert math.isfinite(float(model(batch)["loss"].detach()))


def test_user_features_are_frequencies_per_codebook_and_zero_without_history(tmp_path):
    model, data, batch = _setup(tmp_path)
    model.eval()
    with torch.no_grad():
        freq = model.user_features(batch)  # (B, 16)
        counts = model.user_features(batch, normalize=False)
        codes = model.encode(batch)  # (B, T, M)
    sizes = model.codebook_sizes
    assert freq.shape == (len(batch["user_index"]), sum(sizes)) == (8, model.feature_dim)
    lengths = batch["mask"].sum(1)
    has = lengths > 0
    assert not has.all(), "the tiny data must hold a user without history"
    start = 0
    for m, k in enumerate(sizes):
        block = freq[:, start:start + k]
        torch.testing.assert_close(block[has].sum(1), torch.ones(int(has.sum())))
        torch.testing.assert_close(counts[:, start:start + k].sum(1), lengths.float())
        for b in range(codes.shape[0]):  # brute-force histogram of the codes
            valid = codes[b, : int(lengths[b]), m]
            expected = torch.bincount(valid, minlength=k).float()
            torch.testing.assert_close(counts[b, start:start + k], expected)
        start += k
    assert (freq[~has] == 0).all() and (counts[~has] == 0).all()
    assert (codes[~batch["mask"]] == -1).all()


@pytest.mark.parametrize("name", ["full", "wo_icm"])
def test_user_features_do_not_depend_on_padding_or_batch_mates(tmp_path, name):
    """A user's vector alone equals its vector in a batch padded to a longer user's length."""
    model, data, _ = _setup(tmp_path, ABLATIONS[name])
    model.eval()
    users = data.users_with_history()
    short = min(users, key=data.sequence_length)
    with torch.no_grad():
        alone = model.user_features(next(data.batches([short], 1)))
        together = model.user_features(next(data.batches(users, len(users))))
    assert data.sequence_length(short) < max(data.sequence_length(u) for u in users)
    torch.testing.assert_close(alone[0], together[users.index(short)], rtol=1e-5, atol=1e-6)


def test_wo_icm_user_vector_is_average_pooled_glu_output(tmp_path):
    model, _, batch = _setup(tmp_path, ABLATIONS["wo_icm"])
    model.eval()
    with torch.no_grad():
        features = model.user_features(batch)
        hidden, _, mask = model._represent(batch)
        z = model.user_glu(hidden)  # (B, T, D)
    assert features.shape == (8, model.config.compression.codebook_dim) and model.feature_dim == 16
    for b in range(z.shape[0]):
        n = int(mask[b].sum())
        expected = z[b, :n].mean(0) if n else torch.zeros(z.shape[-1])
        torch.testing.assert_close(features[b], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="w/o ICM"):
        model.encode(batch)


def test_all_losses_off_is_a_config_error(tmp_path):
    model, _, batch = _setup(tmp_path, {"loss": {"holistic": False, "immediate": False},
                                        "compression": {"commitment_weight": 0.0}})
    with pytest.raises(ConfigError, match="every loss term is switched off"):
        model(batch)


def test_registry_returns_chime_and_rejects_unknown_names():
    config_class, model_class, column = get_compressor("CHIME")
    assert (config_class, model_class, column) == (CHIMEConfig, CHIMECompressor, "chime_hist")
    assert "CHIME" in list_compressors()
    with pytest.raises(ConfigError, match="did you mean 'CHIME'"):
        get_compressor("CHIMe")


def test_quantizer_warmup_bypasses_the_rvq_for_its_steps_then_quantizes(tmp_path):
    """compression.warmup_steps = K: the first K optimizer steps (K * grad_accum_steps training
    forwards) feed b_t itself to the user GLU (no codes, no EMA, no commitment); the next
    forward initializes the codebooks and quantizes as the paper does."""
    model, _, batch = _setup(tmp_path, {"compression": {"warmup_steps": 2}, "optim": {"grad_accum_steps": 2}})
    model.train()
    books = [model.quantizer.codebook(m).clone() for m in range(model.quantizer.num_layers)]
    for _ in range(4):  # 2 steps x 2 micro-batches
        out = model(batch)
        assert out["commit"] == 0.0
        assert not bool(model.quantizer.initialized)
        with torch.no_grad():  # _compress does not count forwards: z is the GLU of b_t itself
            hidden, _, mask = model._represent(batch)
            z, commit, codes = model._compress(hidden, mask)
            torch.testing.assert_close(z, model.user_glu(model.projection(hidden)))
        assert codes is None and float(commit) == 0.0
    for m, book in enumerate(books):
        torch.testing.assert_close(model.quantizer.codebook(m), book)  # EMA untouched
    out = model(batch)  # forward 5: quantized
    assert bool(model.quantizer.initialized) and out["commit"] > 0.0
    model.eval()
    assert int(model.forwards_seen) == 5
    before = model(batch)["holistic"]
    assert int(model.forwards_seen) == 5  # eval forwards do not count
    state = model.state_dict()
    assert int(state["forwards_seen"]) == 5  # travels with checkpoints, so a resumed run goes on
    del state["forwards_seen"]  # a checkpoint from before the switch loads as 0 forwards
    model.load_state_dict(state)
    assert int(model.forwards_seen) == 0 and model(batch)["holistic"] == pytest.approx(before)


def test_zero_quantizer_warmup_is_the_paper(tmp_path):
    model, _, batch = _setup(tmp_path)
    assert model.config.compression.warmup_steps == 0
    model.train()
    out = model(batch)  # the first training forward already quantizes
    assert bool(model.quantizer.initialized) and out["commit"] > 0.0


def test_standardize_gives_the_rvq_unit_variance_inputs_that_padding_never_touches(tmp_path):
    """compression.standardize: in training b_t has zero mean and unit variance per dimension
    over the batch's valid positions (so the commitment term cannot shrink it), padding stays 0
    and is not counted; eval uses the running statistics; off (the paper) b_t is the projection."""
    model, _, batch = _setup(tmp_path, {"compression": {"standardize": True}})
    model.train()
    hidden, _, mask = model._represent(batch)
    assert bool((~mask).any()), "the fixture batch needs padding for this test"
    b = model._project(hidden, mask)  # (B, T, D)
    valid = b[mask]  # (n, D)
    torch.testing.assert_close(valid.mean(0), torch.zeros(valid.shape[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(valid.var(0, unbiased=False), torch.ones(valid.shape[1]), atol=1e-3, rtol=0)
    assert float(b[~mask].detach().abs().max()) == 0.0
    raw = model.projection(hidden)[mask]  # the statistics are those of the valid positions alone
    torch.testing.assert_close(model.standardize.running_mean, 0.1 * raw.mean(0).detach(), atol=1e-5, rtol=1e-4)
    model.eval()  # eval: running statistics (mean 0.1 * m, var 0.9 + 0.1 * v after one update)
    with torch.no_grad():
        expected = (raw - model.standardize.running_mean) / torch.sqrt(model.standardize.running_var + 1e-5)
        torch.testing.assert_close(model._project(hidden, mask)[mask], expected)
    paper, _, _ = _setup(tmp_path / "paper")
    assert paper.config.compression.standardize is False and paper.standardize is None
    with torch.no_grad():
        torch.testing.assert_close(paper._project(hidden, mask), paper.projection(hidden))
    assert "standardize.running_mean" in model.state_dict()  # the statistics travel with checkpoints
    model.train()  # one valid position in training: the running statistics, left unchanged
    one = torch.zeros_like(mask)
    one[0, 0] = True
    before = model.standardize.running_mean.clone()
    with torch.no_grad():
        expected = (model.projection(hidden)[one] - before) / torch.sqrt(model.standardize.running_var + 1e-5)
        torch.testing.assert_close(model._project(hidden, one)[one], expected)
    torch.testing.assert_close(model.standardize.running_mean, before)
