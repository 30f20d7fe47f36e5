"""The CHIME compressor: IAM -> IRM -> ICM, trained with holistic + immediate losses.

Implements paper sections 4.1-4.4 (spec section 3):

1. **IAM** (:class:`~.adaptation.InterestAdaptation`): user input e^u_t (all attribute
   embeddings incl. the action label) and item input e^i_t (all but the label).
2. **IRM** (:class:`~.backbone.InterestBackbone`): a causal decoder over e^u_t -> hidden h_t.
3. **ICM**: ``Linear(hidden, D)`` -> b_t, residual VQ (:class:`~.quantizer.ResidualVQ`) ->
   sum of the per-layer estimators (rotation trick) -> ``UserGLU`` -> z_t.
   Item side: ``ItemGLU(e^i_t)`` -> p_t, same width D.
4. Losses (paper eq. 1): holistic (tau 0.2) + immediate (tau 0.07, learnable bias b, init 0)
   + beta * commitment (beta 0.25); z and p are L2-normalized first when ``loss.normalize``.
5. Output (section 4.4, inference): per-codebook code histograms concatenated (32+16+16 = 64).

Ablations (paper Table 3), all from the config:
* w/o IL: ``loss.immediate = False``;
* w/o ICM: ``compression.enabled = False``: ``GLU(hidden -> D)`` gives z_t directly (no
  quantizer, no commitment loss) and the user vector is its average over valid positions;
* w/o IAM: ``adaptation.id_only = True`` (item-id lookup only, handled by the IAM).

Defaults come from :class:`~.config.CHIMEConfig` (D = 64, codebooks (32, 16, 16), decay 0.99,
rotation trick on, beta 0.25, tau 0.2 / 0.07, normalize on).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import distributed
from .adaptation import GLU, InterestAdaptation
from .backbone import InterestBackbone, optimizer_groups
from .quantizer import ResidualVQ

logger = logging.getLogger(__name__)

__all__ = ["CHIMECompressor", "LOSS_NAMES"]

LOSS_NAMES = ("holistic", "immediate", "commit")


class CHIMECompressor(nn.Module):
    """CHIME compression model (paper Figure 2). Build with :meth:`from_config`.

    Args:
        config: a ``CHIMEConfig`` (sections backbone, adaptation, compression, loss, optim).
        vocab_sizes: categorical vocab sizes from the data (``item_id`` and each attribute).
        dense_widths: width of each dense side vector.
    """

    def __init__(self, config: Any, vocab_sizes: Mapping[str, int], dense_widths: Mapping[str, int]):
        super().__init__()
        self.config = config
        comp, hidden = config.compression, config.backbone.hidden_size
        self.adaptation = InterestAdaptation(config.adaptation, vocab_sizes=dict(vocab_sizes),
                                             dense_widths=dict(dense_widths), hidden_size=hidden)
        self.backbone = InterestBackbone(config.backbone)
        width = comp.codebook_dim
        if comp.enabled:  # ICM
            self.projection = nn.Linear(hidden, width)
            # compression.standardize: b_t per dimension over the batch's valid positions, no learned scale
            self.standardize = nn.BatchNorm1d(width, affine=False) if comp.standardize else None
            self.quantizer = ResidualVQ(width, tuple(comp.codebook_sizes), decay=comp.decay,
                                        rotation_trick=comp.rotation_trick, kmeans_init=comp.kmeans_init,
                                        dead_code_threshold=comp.dead_code_threshold,
                                        seed=config.optim.seed)
            self.user_glu = GLU(width, width)
        else:  # w/o ICM ablation: GLU(hidden -> D), average pooling at output
            self.projection = None
            self.standardize = None
            self.quantizer = None
            self.user_glu = GLU(hidden, width)
        self.item_glu = GLU(self.adaptation.item_input_dim, width)
        # training forwards seen (a buffer: it travels with checkpoints); drives compression.warmup_steps
        self.register_buffer("forwards_seen", torch.zeros((), dtype=torch.long))
        self.bias = nn.Parameter(torch.zeros(()))  # immediate-loss bias b, starts at 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before compression.warmup_steps existed have no counter: 0 forwards
        state_dict.setdefault(prefix + "forwards_seen", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def from_config(cls, config: Any, vocab_sizes: Mapping[str, int],
                    dense_widths: Mapping[str, int]) -> "CHIMECompressor":
        return cls(config, vocab_sizes, dense_widths)

    # ------------------------------------------------------------------ properties
    loss_names = LOSS_NAMES

    @property
    def monitor(self) -> str:
        """The eval loss that picks the best checkpoint: holistic (total loss if switched off)."""
        return "holistic" if self.config.loss.holistic else "loss"

    @property
    def uses_codebooks(self) -> bool:
        return self.quantizer is not None

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return tuple(self.config.compression.codebook_sizes) if self.uses_codebooks else ()

    @property
    def feature_dim(self) -> int:
        """Width of :meth:`user_features` (64 = 32+16+16 by default)."""
        return sum(self.codebook_sizes) if self.uses_codebooks else self.config.compression.codebook_dim

    # ------------------------------------------------------------------ stages
    def _represent(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """IAM + IRM: (hidden (B, T, H), item input e^i (B, T, H_i), mask (B, T) bool)."""
        mask = _mask_of(batch)
        e_user, e_item = self.adaptation(batch)  # (B, T, H), (B, T, H_i)
        hidden = self.backbone(e_user, mask)  # (B, T, H)
        return hidden, e_item, mask

    def _compress(self, hidden: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """ICM: (z before normalization (B, T, D), commitment loss, codes (B, T, M) or None)."""
        if self.quantizer is None:
            z = self.user_glu(hidden.float())  # (B, T, D)
            return z, hidden.new_zeros((), dtype=torch.float32), None
        b = self._project(hidden, mask)  # (B, T, D)
        if self.training and self._in_quantizer_warmup():  # b itself, no codes, no EMA, no commitment
            return self.user_glu(b), b.new_zeros(()), None
        out = self.quantizer(b, mask)
        z = self.user_glu(out.quantized)  # (B, T, D)
        return z, out.commit_loss, out.codes

    def _project(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """b_t = projection(h_t) (B, T, D), standardized when ``compression.standardize`` (padding: 0)."""
        b = self.projection(hidden.float())  # (B, T, D)
        if self.standardize is None:
            return b
        flat = mask.reshape(-1)  # (B*T,)
        valid = b.reshape(-1, b.shape[-1])[flat]  # (n, D)
        norm = self.standardize
        batch_stats = self.training and valid.shape[0] >= 2  # else (eval, or one position): running statistics
        out = b.new_zeros(b.shape).reshape(-1, b.shape[-1])  # (B*T, D)
        out[flat] = F.batch_norm(valid, norm.running_mean, norm.running_var, training=batch_stats,
                                 momentum=norm.momentum, eps=norm.eps)
        if batch_stats:
            norm.num_batches_tracked += 1
        return out.reshape(b.shape)

    def _in_quantizer_warmup(self) -> bool:
        """``compression.warmup_steps`` optimizer steps (x grad_accum_steps forwards) bypass the RVQ."""
        comp = self.config.compression
        return int(self.forwards_seen) <= comp.warmup_steps * max(1, int(self.config.optim.grad_accum_steps))

    # ------------------------------------------------------------------ training
    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Named losses: ``"loss"`` (tensor to backpropagate) and ``"holistic"``, ``"immediate"``,
        ``"commit"`` (Python floats, 0.0 when switched off)."""
        loss_cfg, comp = self.config.loss, self.config.compression
        if self.training:
            self.forwards_seen += 1
        hidden, e_item, mask = self._represent(batch)
        z, commit, _ = self._compress(hidden, mask)
        p = self.item_glu(e_item.float())  # (B, T, D)
        if loss_cfg.normalize:
            z, p = F.normalize(z, dim=-1), F.normalize(p, dim=-1)
        labels = batch["labels"].long() * mask.long()  # (B, T), 0 at padding
        sync = self.training and distributed.is_distributed()  # DDP: normalize over the global batch
        terms: dict[str, torch.Tensor] = {}
        if loss_cfg.holistic:
            terms["holistic"] = distributed.holistic_term(z, p, labels, tau=loss_cfg.tau_holistic,
                                                          chunk_size=loss_cfg.chunk_size, sync=sync,
                                                          gather_negatives=loss_cfg.gather_negatives)
        if loss_cfg.immediate:
            terms["immediate"] = distributed.immediate_term(z, p, labels, tau=loss_cfg.tau_immediate,
                                                            bias=self.bias, sync=sync)
        if self.quantizer is not None and comp.commitment_weight > 0:
            terms["commit"] = distributed.mean_term(commit, mask.sum(), sync)
        if not terms:
            raise ConfigError("loss: every loss term is switched off (holistic, immediate, commitment)")
        total = sum(terms[name] * (comp.commitment_weight if name == "commit" else 1.0) for name in terms)
        result: dict[str, Any] = {"loss": total}
        for name in LOSS_NAMES:
            result[name] = float(terms[name].detach()) if name in terms else 0.0
        return result

    def param_groups(self, optim: Any) -> list[dict]:
        """AdamW groups: parameters loaded from a pretrained checkpoint get ``optim.lr_pretrained``
        (7e-6), every new parameter ``optim.lr_new`` (7e-4). Codebooks are buffers (EMA), not here."""
        return optimizer_groups(self, optim)

    # ------------------------------------------------------------------ inference
    def encode(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Code index per valid position and codebook: (B, T, M) int64, -1 at padding.

        Call in eval mode (in training mode the quantizer updates its EMA codebooks)."""
        if self.quantizer is None:
            raise ConfigError("encode: compression.enabled is False (w/o ICM ablation has no codebooks)")
        hidden, _, mask = self._represent(batch)
        return self.quantizer(self._project(hidden, mask), mask).codes  # (B, T, M)

    def user_features(self, batch: Mapping[str, Any], normalize: bool = True) -> torch.Tensor:
        """The exported user vector (B, feature_dim), zeros for users without valid positions.

        ICM: per-codebook code histograms concatenated (frequencies, each block sums to 1; counts
        when ``normalize=False``). w/o ICM: average of the user GLU output over valid positions.
        """
        hidden, _, mask = self._represent(batch)
        if self.quantizer is None:
            z = self.user_glu(hidden.float())  # (B, T, D)
            weight = mask.unsqueeze(-1).to(z.dtype)  # (B, T, 1)
            return (z * weight).sum(1) / weight.sum(1).clamp_min(1.0)  # (B, D)
        codes = self.quantizer(self._project(hidden, mask), mask).codes  # (B, T, M)
        return self.quantizer.histogram(codes, mask, normalize=normalize)  # (B, sum K)

    def code_stats(self, codes: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, list[float]]:
        """Per-codebook hit ratio and perplexity 2^H (paper Table 5) of ``codes`` (..., M)."""
        if self.quantizer is None:
            return {}
        if mask is None:
            mask = (codes >= 0).all(-1)  # (...)
        stats = self.quantizer.code_stats(codes, mask)
        return {key: [float(v) for v in values] for key, values in _as_stats_dict(stats).items()}


def _mask_of(batch: Mapping[str, Any]) -> torch.Tensor:
    """Valid positions (B, T) bool: the batch's ``mask`` or, without one, labels != 0."""
    mask = batch.get("mask")
    return mask.bool() if mask is not None else batch["labels"] != 0


def _as_stats_dict(stats: Any) -> dict[str, Any]:
    """Accept the quantizer's stats as a dict, a NamedTuple/dataclass, or a (hit, ppl) pair."""
    if isinstance(stats, Mapping):
        return {"hit_ratio": stats["hit_ratio"], "perplexity": stats["perplexity"]}
    if hasattr(stats, "hit_ratio"):
        return {"hit_ratio": stats.hit_ratio, "perplexity": stats.perplexity}
    hit, ppl = stats
    return {"hit_ratio": hit, "perplexity": ppl}
