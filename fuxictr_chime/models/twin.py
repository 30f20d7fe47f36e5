"""TWIN (Chang et al. 2023, "TWIN: TWo-stage Interest Network for Lifelong User Behavior
Modeling in CTR Prediction at Kuaishou").

CHIME paper section 5.1 baseline: the GSU and the ESU share one attention. The ESU is a
multi-head target attention (``W_q``, ``W_k``, ``W_v``, ``W_o``) over the ``topk`` (50)
behaviors the GSU retrieves; the GSU scores every behavior of the long sequence with the
ESU's query/key projections, held as buffers and copied from the ESU every ``sync_every``
(100) training batches (counted in the training step; also at construction). With H heads
the GSU score is the mean over heads of the scaled logits, i.e. <W_q t, W_k h> up to a
constant. TWIN's user-item cross features (the paper's K_c bias) do not exist in these
datasets and are omitted (LongCTR's ``Kc_cross_features``: only 0 is accepted). Plus the short-sequence interest (softmax multi-head target attention over the last
``short_len`` behaviors, as in LongCTR).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError
from .base import LongSeqBase
from .item_table import ItemHistory
from .retrieval import TargetAttention, topk_gather

if TYPE_CHECKING:
    from fuxictr.features import FeatureMap


class TWIN(LongSeqBase):
    """TWIN. Defaults: ``topk=50``, ``sync_every=100``, ``attention_dim=64``,
    ``num_heads=1``, ``attention_dropout=0``."""

    def __init__(self, feature_map: "FeatureMap", model_id: str | None = None, gpu: int = -1,
                 *, topk: int = 50, sync_every: int = 100, attention_dim: int = 64,
                 num_heads: int = 1, attention_dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(feature_map, model_id, gpu, attention_dropout=attention_dropout,
                         short_attention_dim=attention_dim, short_num_heads=num_heads,
                         **kwargs)
        if int(sync_every) < 1:
            raise ConfigError(f"TWIN: sync_every must be >= 1, got {sync_every}")
        self.topk = int(topk)
        self.esu = TargetAttention(self.item_dim, attention_dim, num_heads, attention_dropout,
                                   use_scale=self.use_scale)
        self.register_buffer("gsu_query_weight", torch.zeros(attention_dim, self.item_dim))
        self.register_buffer("gsu_key_weight", torch.zeros(attention_dim, self.item_dim))
        self.register_copy("gsu_query_weight", "esu.W_q.weight")
        self.register_copy("gsu_key_weight", "esu.W_k.weight")
        self.sync_every = int(sync_every)
        self.finish(interest_dim=2 * self.item_dim)

    def interest(self, target: torch.Tensor, history: ItemHistory,
                 context: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():  # GSU: frozen copies of the ESU's projections
            query = (target @ self.gsu_query_weight.T) @ self.gsu_key_weight  # (B, D)
            scores = history.dot(query)  # (B, L) = <W_q t, W_k h>
        rows, rows_mask = topk_gather(scores, history.mask, self.topk, history.index)
        long = self.esu(target, history.rows(rows), rows_mask)  # (B, D)
        return {"interest": torch.cat([self.short_interest(target, history), long], dim=-1)}
