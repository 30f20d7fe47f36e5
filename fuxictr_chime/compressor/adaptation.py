"""Interest Adaptation Module, IAM (paper section 4.2, spec section 3.1).

Per behavior t of a user:

1. *transformation*: each categorical attribute (``item_id``, ``cate_id``, ...) and the action
   label go through an embedding lookup (padding index 0); each dense side vector (frozen,
   precomputed image/text vectors) goes through a GLU projector ``(W1 x) * sigmoid(W2 x)``;
2. *concatenation*: the user input e^u_t is the concatenation of all of them, label included;
   the item input e^i_t is the concatenation of all but the label.

The widths are set in :class:`~.config.AdaptationConfig` and must add up to the backbone hidden
size (the LLM's input width); otherwise :class:`ConfigError` lists them, unless
``final_linear`` adds ``Linear(sum, hidden)`` on the user side. ``id_only`` is the paper's
"w/o IAM" ablation: only the item-id embedding (plus the label embedding on the user side).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ConfigError, DataError
from .config import AdaptationConfig

logger = logging.getLogger(__name__)

__all__ = ["GLU", "InterestAdaptation", "LABEL_VOCAB", "label_index"]

#: Label vocabulary of the action embedding: 0 padding, 1 negative (-1), 2 positive (+1).
LABEL_VOCAB = 3


class GLU(nn.Module):
    """Gated linear unit ``GLU(x) = (W1 x + b1) * sigmoid(W2 x + b2)`` from ``in_dim`` to ``out_dim``.

    Used by the IAM for dense side vectors and by the ICM as user/item GLU. W1 and W2 are held
    in one ``Linear(in_dim, 2 * out_dim)`` so both run as a single matrix product.
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True) -> None:
        super().__init__()
        if in_dim <= 0 or out_dim <= 0:
            raise ConfigError(f"GLU: widths must be positive (in {in_dim}, out {out_dim})")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.proj = nn.Linear(in_dim, 2 * out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)  # (..., out), (..., out)
        return value * torch.sigmoid(gate)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}"


def label_index(labels: torch.Tensor) -> torch.Tensor:
    """Map labels {+1, -1, 0 = padding} to the action vocabulary {2, 1, 0}."""
    return torch.where(labels > 0, 2, torch.where(labels < 0, 1, 0))  # (B, T)


class InterestAdaptation(nn.Module):
    """IAM: per-behavior user input e^u_t (B, T, hidden) and item input e^i_t (B, T, item_input_dim).

    Args:
        config: widths per attribute (:class:`AdaptationConfig`; defaults item_id 864 + label 32).
        vocab_sizes: from the data (``RepresentationData.vocab_sizes()``): ``item_id`` and each
            categorical attribute -> max value + 1. The label vocabulary is fixed (3).
        dense_widths: width of each dense side vector in the data.
        hidden_size: backbone hidden size; the user input must have this width.

    Every attribute of the data needs a width in the config (0 drops it) and every configured
    name must exist in the data, so a typo or a forgotten attribute is an error, not a silent
    change of the model. ``forward(batch)`` reads ``item_index``, ``labels``, ``attrs`` and
    ``dense`` of a :mod:`.data` batch (``item_id`` is ``item_index``).
    """

    def __init__(self, config: AdaptationConfig, vocab_sizes: Mapping[str, int],
                 dense_widths: Mapping[str, int], hidden_size: int) -> None:
        super().__init__()
        self.config, self.hidden_size = config, int(hidden_size)
        cat_widths, dense_dims = _select_widths(config, dict(vocab_sizes), dict(dense_widths))
        self.label_dim = config.embedding_dims["label"]
        self.categorical = list(cat_widths)
        self.dense_names = list(dense_dims)
        self.embeddings = nn.ModuleDict({
            name: nn.Embedding(int(vocab_sizes[name]), width, padding_idx=0) for name, width in cat_widths.items()})
        self.label_embedding = nn.Embedding(LABEL_VOCAB, self.label_dim, padding_idx=0)
        self.projectors = nn.ModuleDict({
            name: GLU(int(dense_widths[name]), width) for name, width in dense_dims.items()})
        self.item_input_dim = sum(cat_widths.values()) + sum(dense_dims.values())
        user_dim = self.item_input_dim + self.label_dim
        _check_width(user_dim, self.hidden_size, {**cat_widths, **dense_dims, "label": self.label_dim}, config)
        self.final_linear = nn.Linear(user_dim, self.hidden_size) if config.final_linear else None
        self.user_input_dim = self.hidden_size
        self._init_embeddings(config.init_std)

    def _init_embeddings(self, std: float) -> None:
        for emb in [*self.embeddings.values(), self.label_embedding]:
            nn.init.normal_(emb.weight, std=std)
            with torch.no_grad():
                emb.weight[0].zero_()

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(e_user (B, T, hidden), e_item (B, T, item_input_dim))``."""
        parts = self._item_parts(batch)
        e_item = torch.cat(parts, dim=-1)  # (B, T, H_i)
        e_label = self.label_embedding(label_index(batch["labels"]))  # (B, T, H_label)
        e_user = torch.cat([e_item, e_label], dim=-1)  # (B, T, H_i + H_label)
        if self.final_linear is not None:
            e_user = self.final_linear(e_user)  # (B, T, H)
        return e_user, e_item

    def _item_parts(self, batch: Mapping[str, Any]) -> list[torch.Tensor]:
        parts = []
        for name in self.categorical:
            ids = batch["item_index"] if name == "item_id" else _get(batch, "attrs", name)
            parts.append(self.embeddings[name](ids))  # (B, T, width)
        for name in self.dense_names:
            vectors = _get(batch, "dense", name)
            parts.append(self.projectors[name](vectors.to(self.projectors[name].proj.weight.dtype)))  # (B, T, width)
        return parts


def _select_widths(config: AdaptationConfig, vocab_sizes: dict[str, int], dense_widths: dict[str, int]
                   ) -> tuple[dict[str, int], dict[str, int]]:
    """The (categorical, dense) widths in use, in data order; checks names against the data."""
    if "item_id" not in vocab_sizes:
        raise ConfigError(f"IAM: vocab_sizes has no 'item_id' (got {sorted(vocab_sizes)})")
    emb = {k: v for k, v in config.embedding_dims.items() if k != "label"}
    if config.id_only:  # w/o IAM: item-id lookup only
        return {"item_id": emb["item_id"]}, {}
    unknown = sorted(set(emb) - set(vocab_sizes)) + sorted(set(config.dense_dims) - set(dense_widths))
    if unknown:
        raise ConfigError(f"adaptation: widths set for {unknown}, which the data does not have; categorical "
                          f"attributes: {sorted(vocab_sizes)}, dense vectors: {sorted(dense_widths)}")
    missing = sorted(set(vocab_sizes) - set(emb)) + sorted(set(dense_widths) - set(config.dense_dims))
    if missing:
        raise ConfigError(f"adaptation: no width for {missing}; set adaptation.embedding_dims (categorical) or "
                          "adaptation.dense_dims (dense) for each, 0 to leave one out")
    cat = {name: emb[name] for name in vocab_sizes if emb[name] > 0}
    dense = {name: config.dense_dims[name] for name in dense_widths if config.dense_dims[name] > 0}
    return cat, dense


def _check_width(user_dim: int, hidden: int, widths: Mapping[str, int], config: AdaptationConfig) -> None:
    if user_dim == hidden or config.final_linear:
        return
    listing = ", ".join(f"{name} {width}" for name, width in widths.items())
    mode = " (id_only: item_id + label)" if config.id_only else ""
    raise ConfigError(f"adaptation: the user input widths{mode} ({listing}) sum to {user_dim}, but the "
                      f"backbone hidden_size is {hidden}; change the widths or set adaptation.final_linear: true")


def _get(batch: Mapping[str, Any], group: str, name: str) -> torch.Tensor:
    try:
        return batch[group][name]
    except KeyError:
        have = sorted(batch.get(group, {})) if isinstance(batch.get(group), Mapping) else []
        raise DataError(f"IAM: batch has no {group}['{name}'] (has {have})") from None
