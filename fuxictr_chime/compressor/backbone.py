"""Interest Representation Module, IRM (paper section 4.3, spec section 3.2).

A decoder-only transformer from ``transformers`` (``Qwen2Model`` as in the paper, or
``LlamaModel``) reads the IAM's user inputs e^u_1..e^u_T as ``inputs_embeds``, one token per
behavior, with causal attention. There is no tokenizer and no token-embedding layer.

Initialization:

* random, from :class:`~.config.BackboneConfig` (defaults: Qwen2.5-0.5B sizes, 24 layers);
* pretrained: the first L decoder layers + the final norm of a checkpoint on a local path
  (``pretrained_path``: a HF folder with config.json + *.safetensors, a ``.gguf`` file or
  ``"smollm2"``, the last two converted once by :mod:`.gguf`). Those parameters get the
  pretrained learning rate (7e-6, :meth:`InterestBackbone.pretrained_parameter_names`).

Options: LoRA via ``peft`` on the attention and MLP projections (``lora_r > 0``, base weights
frozen), gradient checkpointing, bf16 autocast on GPUs (CPU stays fp32).

Padding is on the right. With causal attention a valid position only attends to earlier,
hence valid, positions, so the attention needs no padding mask: the decoder runs with pure
causal attention (SDPA ``is_causal``, the fast kernel), and outputs at padded positions are
set to zero.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, DataError
from .config import BackboneConfig

logger = logging.getLogger(__name__)

__all__ = ["InterestBackbone", "build_decoder_config", "load_decoder_weights", "LORA_TARGETS",
           "optimizer_groups"]

#: Linear layers that LoRA adapts (same names in Qwen2 and Llama decoder layers).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_ARCHS = ("qwen2", "llama")
_DECODER_KEY = re.compile(r"^(?:model\.)?(layers\.(\d+)\..+|norm\..+)$")


class InterestBackbone(nn.Module):
    """IRM: ``forward(e_user (B, T, H), mask (B, T) bool) -> hidden (B, T, H)`` (float32).

    Args:
        config: :class:`BackboneConfig`. ``hidden_size`` is the width of the IAM user input
            and must equal the checkpoint's hidden size when ``pretrained_path`` is set.
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        self._pretrained: set[str] = set()
        if config.pretrained_path:
            self.decoder, self.source = self._from_pretrained(config)
        else:
            self.decoder, self.source = _decoder_from_config(build_decoder_config(config)), None
        self.decoder.embed_tokens = None  # inputs_embeds only: no token embeddings
        self.hidden_size = int(self.decoder.config.hidden_size)
        self.num_layers = len(self.decoder.layers)
        if config.lora_r > 0:
            self._add_lora(config)
        if config.gradient_checkpointing:
            _enable_checkpointing(self.decoder)

    # ------------------------------------------------------------------ construction
    def _from_pretrained(self, config: BackboneConfig) -> tuple[nn.Module, Path]:
        from .gguf import resolve_pretrained_path

        folder = resolve_pretrained_path(config.pretrained_path)
        hf_config = _read_checkpoint_config(folder, config.num_pretrained_layers, config.attn_implementation)
        if hf_config.hidden_size != config.hidden_size:
            raise ConfigError(f"{folder}: the checkpoint's hidden_size is {hf_config.hidden_size} but "
                              f"backbone.hidden_size is {config.hidden_size}; set backbone.hidden_size: "
                              f"{hf_config.hidden_size} and make the adaptation widths add up to it (or set "
                              "adaptation.final_linear: true)")
        decoder = _decoder_from_config(hf_config)
        self._pretrained = {f"decoder.{name}" for name in load_decoder_weights(decoder, folder)}
        logger.info("IRM: %d pretrained decoder layers (%s, hidden %d) from %s", hf_config.num_hidden_layers,
                    hf_config.model_type, hf_config.hidden_size, folder)
        return decoder, folder

    def _add_lora(self, config: BackboneConfig) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        if not self._pretrained:
            logger.warning("IRM: LoRA on a randomly initialized backbone freezes random weights")
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(LORA_TARGETS), bias="none")
        self.decoder = inject_adapter_in_model(lora, self.decoder)
        for name, param in self.decoder.named_parameters():
            param.requires_grad = "lora_" in name  # base weights (and norms) frozen

    # ------------------------------------------------------------------ API
    def pretrained_parameter_names(self) -> list[str]:
        """Names (as in ``self.named_parameters()``) of parameters loaded from the checkpoint;
        empty for a random backbone. The trainer gives them ``optim.lr_pretrained``."""
        return [name for name, _ in self.named_parameters() if name.replace(".base_layer", "") in self._pretrained]

    def forward(self, e_user: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Causal decoder over the user inputs; zeros at padded positions. Returns float32 (B, T, H)."""
        if e_user.dim() != 3 or e_user.shape[-1] != self.hidden_size:
            raise DataError(f"IRM: expected user inputs (B, T, {self.hidden_size}), got {tuple(e_user.shape)}")
        mask = mask.bool()
        _check_right_padded(mask)
        use_bf16 = self.config.bf16 and e_user.is_cuda
        with torch.autocast(device_type=e_user.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            hidden = self.decoder(inputs_embeds=e_user, use_cache=False).last_hidden_state  # (B, T, H)
        return hidden.float() * mask.unsqueeze(-1)  # (B, T, H)


# ---------------------------------------------------------------------------- helpers
def optimizer_groups(model: nn.Module, optim: Any, prefix: str = "backbone") -> list[dict]:
    """AdamW parameter groups of a compressor whose backbone is ``model.<prefix>``: parameters
    loaded from a pretrained checkpoint get ``optim.lr_pretrained`` (7e-6), every other trainable
    parameter ``optim.lr_new`` (7e-4) (paper 5.1); both with ``optim.weight_decay``."""
    backbone = getattr(model, prefix)
    pretrained = {f"{prefix}.{name}" for name in backbone.pretrained_parameter_names()}
    groups: dict[str, list[nn.Parameter]] = {"new": [], "pretrained": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups["pretrained" if name in pretrained else "new"].append(param)
    lrs = {"new": optim.lr_new, "pretrained": optim.lr_pretrained}
    return [{"name": key, "params": params, "lr": lrs[key], "weight_decay": optim.weight_decay}
            for key, params in groups.items() if params]


def build_decoder_config(config: BackboneConfig):
    """The ``transformers`` config of a random backbone (vocab_size 1: no real token table)."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=1, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                  num_hidden_layers=config.num_layers, num_attention_heads=config.num_attention_heads,
                  num_key_value_heads=config.num_key_value_heads, rms_norm_eps=config.rms_norm_eps,
                  rope_theta=config.rope_theta, max_position_embeddings=32768, use_cache=False)
    cls = Qwen2Config if config.arch == "qwen2" else LlamaConfig
    hf_config = cls(**common)
    hf_config._attn_implementation = config.attn_implementation
    return hf_config


def _decoder_from_config(hf_config) -> nn.Module:
    from transformers import LlamaModel, Qwen2Model

    cls = Qwen2Model if hf_config.model_type == "qwen2" else LlamaModel
    return cls(hf_config)


def _read_checkpoint_config(folder: Path, num_layers: int | None, attn_implementation: str):
    """The checkpoint's config.json, cut to the first ``num_layers`` decoder layers."""
    from transformers import AutoConfig

    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{folder}: no config.json (backbone.pretrained_path must be a HF model folder)")
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if model_type not in _ARCHS:
        raise ConfigError(f"{path}: model_type '{model_type}' is not supported (supported: {', '.join(_ARCHS)})")
    hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    available = int(hf_config.num_hidden_layers)
    layers = available if num_layers is None else int(num_layers)
    if layers > available:
        raise ConfigError(f"{folder}: backbone.num_pretrained_layers = {layers} but the checkpoint has "
                          f"{available} decoder layers")
    hf_config.num_hidden_layers = layers
    if getattr(hf_config, "layer_types", None):
        hf_config.layer_types = list(hf_config.layer_types[:layers])
    hf_config.vocab_size, hf_config.use_cache, hf_config.pad_token_id = 1, False, None
    hf_config.tie_word_embeddings = False
    hf_config._attn_implementation = attn_implementation
    return hf_config


def load_decoder_weights(decoder: nn.Module, folder: str | Path) -> list[str]:
    """Copy ``layers.{i < L}.*`` and ``norm.*`` (with or without a ``model.`` prefix) from the
    folder's *.safetensors into ``decoder``; returns the loaded parameter names.

    Raises ConfigError naming the folder when it has no safetensors, no decoder weights, or
    lacks a tensor the decoder needs (the token embedding is never needed)."""
    from safetensors import safe_open

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{folder}: no *.safetensors files (pytorch_model.bin checkpoints are not supported)")
    num_layers = len(decoder.layers)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                match = _DECODER_KEY.match(key)
                if match and (match.group(2) is None or int(match.group(2)) < num_layers):
                    state[match.group(1)] = handle.get_tensor(key)
    if not any(key.startswith("layers.") for key in state):
        raise ConfigError(f"{folder}: no decoder weights (no 'layers.N.*' or 'model.layers.N.*' tensors in "
                          f"{', '.join(f.name for f in files)})")
    expected = {name for name, _ in decoder.named_parameters() if not name.startswith("embed_tokens.")}
    missing = sorted(expected - set(state))
    if missing:
        raise ConfigError(f"{folder}: the checkpoint lacks {len(missing)} decoder tensors, e.g. {missing[:4]}")
    try:
        decoder.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch between config.json and the tensors
        raise ConfigError(f"{folder}: decoder weights do not fit its config.json ({exc})") from exc
    return sorted(state)


def _enable_checkpointing(decoder: nn.Module) -> None:
    enable = getattr(decoder, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers < 5
        decoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _check_right_padded(mask: torch.Tensor) -> None:
    """Valid positions must form a prefix of each row (padding on the right)."""
    if mask.shape[1] > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise DataError("IRM: the mask is not right-padded (a valid position follows a padded one)")
