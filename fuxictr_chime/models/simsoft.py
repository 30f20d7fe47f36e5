"""SimSoft: SIM with soft search (Pi et al. 2020, "Search-based User Interest Modeling with
Lifelong Sequential Behavior Data for Click-Through Rate Prediction").

CHIME paper section 5.1 baseline, in the LongCTR setup:

* GSU (soft search): relevance r_l = <W_a e_target, W_b e_l> / sqrt(A) of the target
  with every behavior of the long sequence (up to ``max_len`` = 1000), in a learned
  projection of width ``attention_dim``;
* the top ``topk`` (50) behaviors by r go to the ESU, a multi-head target attention;
* GSU and ESU are trained jointly: the GSU's softmax(r)-weighted sum of the whole
  sequence feeds an auxiliary CTR head (an MLP like the final one, on [target, pooled
  sequence, other features]); the loss is ``esu_weight`` (1.0) x main log loss +
  ``aux_weight`` (1.0) x auxiliary log loss (LongCTR's ``beta`` and ``alpha``, which map
  to them);
* plus the short-sequence interest: softmax multi-head target attention over the last
  ``short_len`` behaviors, as in LongCTR.

This is the model of LongCTR's ``SIM`` (``model_zoo/LongCTR/SIM/SIM.py``, soft search only),
registered under the aliases ``SIM``, ``SIM_CHIME``, ``SIM_LEARN`` too. Its GSU differs from
LongCTR's code in three ways, which ``gsu="longctr"`` reproduces instead: LongCTR does not scale
r by 1/sqrt(A), pools the auxiliary sequence with the raw scores r (an unnormalized sum, not
softmax), and multiplies r by the mask before its top-k, so padding scores 0 and takes top-k
slots ahead of valid behaviours with a negative score (the ESU then masks it out).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import LongSeqBase
from .item_table import ItemHistory
from .retrieval import TargetAttention, longctr_sim_topk_gather, topk_gather

if TYPE_CHECKING:
    from fuxictr.features import FeatureMap


GSU_MODES = ("paper", "longctr")


class SimSoft(LongSeqBase):
    """SIM soft search. Defaults: ``topk=50``, ``attention_dim=64``, ``num_heads=1``,
    ``attention_dropout=0``, ``aux_weight=1.0``, ``esu_weight=1.0``, ``gsu="paper"`` (or
    ``"longctr"``: LongCTR's code, module docstring); base defaults in :class:`LongSeqBase`."""

    def __init__(self, feature_map: "FeatureMap", model_id: str | None = None, gpu: int = -1,
                 *, topk: int = 50, attention_dim: int = 64, num_heads: int = 1,
                 attention_dropout: float = 0.0, aux_weight: float = 1.0,
                 esu_weight: float = 1.0, gsu: str = "paper", **kwargs: Any) -> None:
        if gsu not in GSU_MODES:
            raise ConfigError(f"SimSoft: gsu must be one of {', '.join(GSU_MODES)}, got {gsu!r}")
        super().__init__(feature_map, model_id, gpu, attention_dropout=attention_dropout,
                         short_attention_dim=attention_dim, short_num_heads=num_heads,
                         **kwargs)
        self.topk, self.gsu = int(topk), gsu
        self.gsu_query = nn.Linear(self.item_dim, attention_dim, bias=False)  # W_a
        self.gsu_key = nn.Linear(self.item_dim, attention_dim, bias=False)  # W_b
        self.gsu_scale = math.sqrt(attention_dim) if gsu == "paper" else 1.0
        self.esu = TargetAttention(self.item_dim, attention_dim, num_heads, attention_dropout,
                                   use_scale=self.use_scale)
        self.aux_head = self.make_head(2 * self.item_dim + self.context_dim)
        self.aux_outputs = {"y_aux": float(aux_weight)}
        self.main_weight = float(esu_weight)
        self.finish(interest_dim=2 * self.item_dim)

    def interest(self, target: torch.Tensor, history: ItemHistory,
                 context: torch.Tensor) -> dict[str, torch.Tensor]:
        # <W_a t, W_b h> = h . (W_b^T W_a t): one (B, D) query instead of (B, L, A) keys
        query = self.gsu_query(target) @ self.gsu_key.weight / self.gsu_scale  # (B, D)
        out = {}
        if self.gsu == "longctr":  # LongCTR's SIM.py: raw scores, padding scored 0
            scores = history.dot(query if self.training else query.detach()) * history.mask  # (B, L)
            if self.training:  # auxiliary GSU head: the r-weighted (unnormalized) sum
                out["y_aux"] = self.aux_head(torch.cat([target, history.weighted_sum(scores), context], dim=-1))
            rows, rows_mask = longctr_sim_topk_gather(scores, history.mask, self.topk, history.index)
        else:
            if self.training:  # auxiliary GSU head: softmax(r)-weighted sum of the whole sequence
                scores, pooled = history.attention_pool(query)  # (B, L), (B, D)
                out["y_aux"] = self.aux_head(torch.cat([target, pooled, context], dim=-1))
            else:
                scores = history.dot(query.detach())  # (B, L)
            rows, rows_mask = topk_gather(scores, history.mask, self.topk, history.index)
        long = self.esu(target, history.rows(rows), rows_mask)  # (B, D)
        out["interest"] = torch.cat([self.short_interest(target, history), long], dim=-1)
        return out
