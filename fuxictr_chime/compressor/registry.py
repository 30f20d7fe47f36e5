"""Stage-1 compressors by name (CHIME, later LEARN).

The trainer (:mod:`.train`) and the exporter (:mod:`.export`) are generic over this
registry. A compressor is three things: a typed config class, a model class and the name
of the user-level feature column it exports.

Config class protocol (``CHIMEConfig`` is the reference):
    ``from_dict``, ``from_yaml(path)``, ``to_dict()``, ``to_yaml(path)``; attributes
    ``data_dir``, ``output_dir`` and ``optim`` (lr_new, lr_pretrained, warmup_steps,
    grad_accum_steps, weight_decay, batch_size, max_steps, epochs, eval_every, eval_users,
    max_len, seed, max_grad_norm).

Model class protocol (``CHIMECompressor`` is the reference):
    ``Model.from_config(config, vocab_sizes, dense_widths) -> Model``
    ``forward(batch) -> {"loss": Tensor, <name>: Tensor, ...}`` (named losses)
    ``user_features(batch, normalize=True) -> (B, d)`` with ``d == model.feature_dim``
    ``param_groups(optim_config) -> list[dict]`` (new vs pretrained learning rate)
    optional: ``loss_names`` (the named terms logged; default CHIME's holistic, immediate,
    commit), ``monitor`` (eval loss that selects the best checkpoint; default ``loss``),
    ``uses_codebooks`` + ``codebook_sizes`` + ``encode(batch) -> codes (B, T, M)`` +
    ``code_stats(codes, mask)`` (per-codebook hit ratio and perplexity, paper Table 5).

Entries are stored as ``"module:attribute"`` strings and imported on first use, so that
``fuxictr_chime.learn`` can be registered here without an import cycle.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, NamedTuple

from ..errors import ConfigError

__all__ = ["CompressorSpec", "get_compressor", "register_compressor", "list_compressors",
           "compressor_name_of"]


class CompressorSpec(NamedTuple):
    """What :func:`get_compressor` returns; unpacks as ``(config_class, model_class, column)``."""

    config_class: type
    model_class: type
    column: str


# name -> ("module:ConfigClass" | class, "module:ModelClass" | class, feature column)
_REGISTRY: dict[str, tuple[Any, Any, str]] = {
    "CHIME": ("fuxictr_chime.compressor.config:CHIMEConfig",
              "fuxictr_chime.compressor.model:CHIMECompressor",
              "chime_hist"),
    "LEARN": ("fuxictr_chime.learn.config:LEARNConfig",
              "fuxictr_chime.learn.model:LEARNCompressor",
              "learn_emb"),
}


def register_compressor(name: str, config_class: Any, model_class: Any, column: str) -> None:
    """Add (or replace) a compressor; classes may be given as ``"module:attribute"`` strings."""
    if not name or not column:
        raise ConfigError("register_compressor: name and column must be non-empty")
    _REGISTRY[name] = (config_class, model_class, column)


def list_compressors() -> list[str]:
    """Names of every registered compressor."""
    return sorted(_REGISTRY)


def get_compressor(name: str) -> CompressorSpec:
    """Return ``(config class, model class, feature column)`` of compressor ``name``.

    Raises ConfigError listing the known names (and the closest one) for an unknown name.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown compressor {name!r}{hint}; known: {', '.join(list_compressors())}")
    config_ref, model_ref, column = _REGISTRY[name]
    return CompressorSpec(_resolve(config_ref), _resolve(model_ref), column)


def compressor_name_of(config: Any) -> str:
    """The registered name whose config class is ``type(config)``."""
    for name in list_compressors():
        if get_compressor(name).config_class is type(config):
            return name
    raise ConfigError(f"no compressor is registered for config class {type(config).__name__}; "
                      f"known: {', '.join(list_compressors())}")


def _resolve(ref: Any) -> type:
    if not isinstance(ref, str):
        return ref
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"compressor registry: {module_name} has no attribute {attr!r}") from exc
