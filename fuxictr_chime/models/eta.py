"""ETA (Chen et al. 2021, "End-to-End User Behavior Retrieval in Click-Through Rate
Prediction Model").

CHIME paper section 5.1 baseline: locality-sensitive hashing replaces the GSU's inner
products. Every item embedding gets a SimHash signature of ``hash_bits`` (32) bits, the
signs of a fixed random projection (a buffer drawn from a ``torch.Generator`` seeded with
``hash_seed``); the ``topk`` (50) behaviors with the smallest Hamming distance to the
target's signature (ties: the most recent first) go to a multi-head target attention.
``tiebreak="longctr"`` selects as LongCTR's ETA does instead: ``torch.topk`` over the distances
with padding set to ``1 + hash_bits``, ties in the order torch returns them (spread over the
history, depending on its padding; docs/ARCHITECTURE.md section 6).
Signatures are computed once per distinct item of the batch, on the current embeddings
(end to end, as in the paper), and compared as packed 64-bit words. ``reuse_hash=False``
(LongCTR's option) hashes every batch with a fresh projection from the global torch RNG
(LongCTR: one per sample). Plus the
short-sequence interest (softmax multi-head target attention over the last
``short_len`` behaviors, as in LongCTR).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError
from .base import LongSeqBase
from .item_table import ItemHistory
from .retrieval import (SimHash, TargetAttention, hamming_distance, longctr_topk_gather,
                        pack_bits, recency_tiebreak, topk_gather)

if TYPE_CHECKING:
    from fuxictr.features import FeatureMap


TIEBREAKS = ("recent", "longctr")


class ETA(LongSeqBase):
    """ETA. Defaults: ``topk=50``, ``hash_bits=32`` (1..64), ``reuse_hash=True``,
    ``tiebreak="recent"`` (or ``"longctr"``),
    ``hash_seed`` = the experiment ``seed`` if given else 0, ``attention_dim=64``,
    ``num_heads=1``."""

    def __init__(self, feature_map: "FeatureMap", model_id: str | None = None, gpu: int = -1,
                 *, topk: int = 50, hash_bits: int = 32, reuse_hash: bool = True,
                 hash_seed: int | None = None, tiebreak: str = "recent",
                 attention_dim: int = 64, num_heads: int = 1, attention_dropout: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(feature_map, model_id, gpu, attention_dropout=attention_dropout,
                         short_attention_dim=attention_dim, short_num_heads=num_heads,
                         **kwargs)
        if not 1 <= int(hash_bits) <= 64:
            raise ConfigError(f"ETA: hash_bits must be in 1..64, got {hash_bits}")
        if tiebreak not in TIEBREAKS:
            raise ConfigError(f"ETA: tiebreak must be one of {', '.join(TIEBREAKS)}, got {tiebreak!r}")
        self.topk, self.reuse_hash, self.tiebreak = int(topk), bool(reuse_hash), tiebreak
        seed = hash_seed if hash_seed is not None else kwargs.get("seed") or 0
        self.simhash = SimHash(self.item_dim, int(hash_bits), seed=int(seed))
        self.esu = TargetAttention(self.item_dim, attention_dim, num_heads, attention_dropout,
                                   use_scale=self.use_scale)
        self.finish(interest_dim=2 * self.item_dim)

    @torch.no_grad()
    def hamming_distances(self, history: ItemHistory) -> torch.Tensor:
        """(B, L) int64: Hamming distance of each behavior's signature to the target's."""
        bits = self.simhash(history.table, resample=not self.reuse_hash)  # (U, m)
        signature = pack_bits(bits)  # (U,) int64
        return hamming_distance(signature[history.index],
                                signature[history.target_index].unsqueeze(1))  # (B, L)

    def interest(self, target: torch.Tensor, history: ItemHistory,
                 context: torch.Tensor) -> dict[str, torch.Tensor]:
        distance = self.hamming_distances(history)  # (B, L)
        if self.tiebreak == "recent":
            rows, rows_mask = topk_gather(recency_tiebreak(distance), history.mask, self.topk,
                                          history.index)  # (B, k), (B, k)
        else:
            rows, rows_mask = longctr_topk_gather(distance, history.mask, self.topk, history.index,
                                                  fill=self.simhash.num_bits + 1)  # (B, k), (B, k)
        long = self.esu(target, history.rows(rows), rows_mask)  # (B, D)
        return {"interest": torch.cat([self.short_interest(target, history), long], dim=-1)}
