"""MIRRN (Xu et al. 2024, "Multi-granularity Interest Retrieval and Refinement Network for
Long-Term User Behavior Modeling in CTR Prediction").

Long-sequence model in the LongCTR setup (reference: FuxiCTR 2.3.10,
``model_zoo/LongCTR/MIRRN``):

* retrieval at three granularities: the ``topk`` (50) behaviors of the long sequence
  closest to three queries under SimHash (``hash_bits`` = 32 sign random projections,
  Hamming distance, ties to the most recent): the target item, the mean of the last
  ``short_query_len`` (16) behaviors (short-term interest) and the mean of the whole sequence
  (global interest). The selected behaviors keep their time order;
* refinement, per granularity: each selected behavior gets ``position_scale`` (0.02) times a
  learned embedding of its distance from the end of the sequence (1 = most recent), then a
  Fourier filter block (LongCTR's ``FilterLayer2``: real FFT along the k positions, a
  learned complex weight per channel, inverse FFT, dropout ``filter_dropout`` (0.1),
  residual, LayerNorm with eps 1e-12), then the mean over the selected positions;
* fusion: multi-head target attention of the target over the three refined interests; plus
  the short-sequence interest (softmax multi-head target attention over the last
  ``short_len`` behaviors, as in LongCTR).

Differences to LongCTR, all for masked histories: the retrieved sequence always has exactly
``topk`` slots, valid behaviors last in time order and empty slots (histories with fewer
valid behaviors than ``topk``) in front as zero vectors, and the mean after the filter runs
over valid slots only (LongCTR fills with padding items and averages them too), so left
padding never changes a prediction and an empty history gives a zero long-term interest.
For histories with at least ``topk`` behaviors the two agree (up to which behaviors are
picked among equal Hamming distances; LongCTR leaves that to ``torch.topk``). LongCTR's
complex weight is (n_block, D/n, D/n, 2), but its ``einsum("blnd,ndd->blnd")`` reads only
the diagonal of each block, i.e. one complex weight per channel: that is what is held here,
(3, D, 2), so ``n_block`` is gone. The random projection is a seeded buffer (as ETA here);
LongCTR's ``reuse_hash=False`` (new projections every batch) is not offered.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import LongSeqBase
from .item_table import ItemHistory
from .retrieval import (SimHash, TargetAttention, hamming_distance, pack_bits,
                        recency_tiebreak, topk_gather)

if TYPE_CHECKING:
    from fuxictr.features import FeatureMap

GRANULARITIES = ("target", "short", "global")  # retrieval queries, in this order


def topk_in_time_order(scores: torch.Tensor, mask: torch.Tensor,
                       k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the ``k`` valid behaviors with the highest score, in time order.

    Args:
        scores: (N, L) float, higher = more relevant (no gradient flows).
        mask: (N, L) bool, True at valid positions.
        k: number of slots of the result (always ``k``, also when L < k).

    Returns:
        ``(positions (N, k) int64, slots (N, k) bool)``: the chosen positions ascending,
        left-padded with empty slots (position 0, ``slots`` False) when a row has fewer
        than ``k`` valid positions.
    """
    rows, length = scores.shape
    kept = min(int(k), length)
    every = torch.arange(length, device=scores.device).expand(rows, length)  # (N, L)
    picked, picked_mask = topk_gather(scores, mask, kept, every)  # (N, k'), (N, k')
    key = picked.masked_fill(~picked_mask, -1).sort(dim=1).values  # (N, k') empty first
    key = F.pad(key, (int(k) - kept, 0), value=-1)  # (N, k)
    return key.clamp(min=0), key >= 0


class FourierFilter(nn.Module):
    """LongCTR's ``FilterLayer2`` for ``num_filters`` sequences at once (one per granularity).

    Per filter g and channel c: ``y = irfft(w[g, c] * rfft(x))`` along the positions
    (``norm="ortho"``, ``w`` complex, the same for every frequency), then dropout,
    ``LayerNorm(y + x)`` (eps 1e-12, its own affine weights per filter). ``w`` is drawn from
    N(0, 0.02^2) per real/imaginary part, as LongCTR's ``complex_weight``.
    """

    def __init__(self, num_filters: int, dim: int, dropout_rate: float = 0.1,
                 eps: float = 1e-12) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_filters, dim, 2) * 0.02)  # (G, D, re/im)
        self.norm_weight = nn.Parameter(torch.ones(num_filters, dim))  # (G, D)
        self.norm_bias = nn.Parameter(torch.zeros(num_filters, dim))  # (G, D)
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else None
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, G, k, D) -> (B, G, k, D)."""
        length = x.shape[-2]
        spectrum = torch.fft.rfft(x, dim=-2, norm="ortho")  # (B, G, k//2+1, D) complex
        spectrum = spectrum * torch.view_as_complex(self.weight).unsqueeze(-2)  # (G, 1, D)
        filtered = torch.fft.irfft(spectrum, n=length, dim=-2, norm="ortho")  # (B, G, k, D)
        if self.dropout is not None:
            filtered = self.dropout(filtered)
        out = F.layer_norm(filtered + x, x.shape[-1:], eps=self.eps)  # (B, G, k, D)
        return out * self.norm_weight.unsqueeze(-2) + self.norm_bias.unsqueeze(-2)


class MIRRN(LongSeqBase):
    """MIRRN. Defaults (LongCTR's): ``topk=50``, ``hash_bits=32`` (1..64), ``hash_seed`` =
    the experiment ``seed`` if given else 0, ``short_query_len=16``, ``position_scale=0.02``,
    ``filter_dropout=0.1``, ``attention_dim=64``, ``num_heads=1``, ``attention_dropout=0``;
    base defaults in :class:`LongSeqBase`."""

    def __init__(self, feature_map: "FeatureMap", model_id: str | None = None, gpu: int = -1,
                 *, topk: int = 50, hash_bits: int = 32, hash_seed: int | None = None,
                 short_query_len: int = 16, position_scale: float = 0.02,
                 filter_dropout: float = 0.1, attention_dim: int = 64, num_heads: int = 1,
                 attention_dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(feature_map, model_id, gpu, attention_dropout=attention_dropout,
                         short_attention_dim=attention_dim, short_num_heads=num_heads,
                         **kwargs)
        if not 1 <= int(hash_bits) <= 64:
            raise ConfigError(f"MIRRN: hash_bits must be in 1..64, got {hash_bits}")
        for key, value in (("topk", topk), ("short_query_len", short_query_len)):
            if int(value) < 1:
                raise ConfigError(f"MIRRN: {key} must be >= 1, got {value}")
        if not 0.0 <= float(filter_dropout) < 1.0:
            raise ConfigError(f"MIRRN: filter_dropout must be in [0, 1), got {filter_dropout}")
        self.topk, self.short_query_len = int(topk), int(short_query_len)
        self.position_scale = float(position_scale)
        seed = hash_seed if hash_seed is not None else kwargs.get("seed") or 0
        self.simhash = SimHash(self.item_dim, int(hash_bits), seed=int(seed))
        self.position = nn.Embedding(self.max_len + 1, self.item_dim)  # distance from the end
        self.filters = FourierFilter(len(GRANULARITIES), self.item_dim, float(filter_dropout))
        self.fusion = TargetAttention(self.item_dim, attention_dim, num_heads, attention_dropout)
        self.finish(interest_dim=2 * self.item_dim)

    # ------------------------------------------------------------------ steps
    def queries(self, target: torch.Tensor, history: ItemHistory) -> torch.Tensor:
        """The three retrieval queries (B, 3, D): target, mean of the last
        ``short_query_len`` valid behaviors, mean of all valid behaviors (zero if none)."""
        recent, recent_mask = history.last(self.short_query_len)  # (B, S, D), (B, S)
        weights = recent_mask.unsqueeze(-1).to(recent.dtype)  # (B, S, 1)
        short = (recent * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, D)
        valid = history.mask.to(target.dtype)  # (B, L)
        overall = history.weighted_sum(valid / valid.sum(1, keepdim=True).clamp(min=1))  # (B, D)
        return torch.stack([target, short, overall], dim=1)  # (B, 3, D)

    def retrieve(self, queries: torch.Tensor,
                 history: ItemHistory) -> tuple[torch.Tensor, torch.Tensor]:
        """SimHash top-k per query: positions (B, 3, k) in time order and slots (B, 3, k)."""
        batch, groups = queries.shape[:2]
        with torch.no_grad():
            signature = pack_bits(self.simhash(history.table))  # (U,) int64
            query_signature = pack_bits(self.simhash(queries))  # (B, G)
            distance = hamming_distance(signature[history.index].unsqueeze(1),
                                        query_signature.unsqueeze(-1))  # (B, G, L)
            distance = distance.reshape(batch * groups, -1)  # (B*G, L)
            mask = history.mask.repeat_interleave(groups, dim=0)  # (B*G, L)
            positions, slots = topk_in_time_order(recency_tiebreak(distance), mask,
                                                  self.topk)  # (B*G, k), (B*G, k)
        return positions.view(batch, groups, -1), slots.view(batch, groups, -1)

    def refine(self, history: ItemHistory, positions: torch.Tensor,
               slots: torch.Tensor) -> torch.Tensor:
        """Position embedding + Fourier filter + mean over the valid slots: (B, 3, D)."""
        batch, groups, k = positions.shape
        rows = history.index.gather(1, positions.view(batch, groups * k))  # (B, G*k)
        behaviors = history.rows(rows).view(batch, groups, k, -1)  # (B, G, k, D)
        distance = (history.length - positions) * slots  # (B, G, k); 0 for empty slots
        keep = slots.unsqueeze(-1).to(behaviors.dtype)  # (B, G, k, 1)
        behaviors = (behaviors + self.position_scale * self.position(distance)) * keep
        refined = self.filters(behaviors)  # (B, G, k, D)
        return (refined * keep).sum(2) / keep.sum(2).clamp(min=1)  # (B, G, D)

    def interest(self, target: torch.Tensor, history: ItemHistory,
                 context: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():  # the queries only select behaviors
            queries = self.queries(target, history)  # (B, 3, D)
        positions, slots = self.retrieve(queries, history)  # (B, 3, k), (B, 3, k)
        interests = self.refine(history, positions, slots)  # (B, 3, D)
        every = torch.ones(interests.shape[:2], dtype=torch.bool, device=interests.device)
        long = self.fusion(target, interests, every)  # (B, D)
        return {"interest": torch.cat([self.short_interest(target, history), long], dim=-1)}
