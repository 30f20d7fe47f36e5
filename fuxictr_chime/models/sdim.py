"""SDIM (Cao et al. 2022, "Sampling Is All You Need on Modeling Long-Term User Behaviors
for CTR Prediction").

CHIME paper section 5.1 baseline: ``num_hashes`` (48) SimHash functions of the item
embeddings, read in groups of ``hash_bits`` (width 3, so 16 groups). For each group, the
behaviors whose 3-bit code equals the target's are summed and L2-normalized; the long-term
interest is the mean over groups (no attention). The random projection is a buffer drawn
from a ``torch.Generator`` seeded with ``hash_seed``. Codes are computed once per distinct
item; the sums use ``F.embedding_bag`` over the batch's item table, so the (B, L, D)
history is never materialized. Plus the short-sequence interest (softmax multi-head target attention over the last
``short_len`` behaviors, as in LongCTR).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError
from .base import LongSeqBase
from .item_table import ItemHistory
from .retrieval import SimHash, bucket_codes, sdim_aggregate

if TYPE_CHECKING:
    from fuxictr.features import FeatureMap


class SDIM(LongSeqBase):
    """SDIM. Defaults: ``num_hashes=48``, ``hash_bits=3`` (group width), ``l2_norm=True``,
    ``hash_seed`` = the experiment ``seed`` if given else 0."""

    def __init__(self, feature_map: "FeatureMap", model_id: str | None = None, gpu: int = -1,
                 *, num_hashes: int = 48, hash_bits: int = 3, hash_seed: int | None = None,
                 l2_norm: bool = True, **kwargs: Any) -> None:
        super().__init__(feature_map, model_id, gpu, **kwargs)
        if int(hash_bits) < 1 or int(num_hashes) % int(hash_bits):
            raise ConfigError(f"SDIM: num_hashes ({num_hashes}) must be a positive multiple "
                              f"of hash_bits ({hash_bits})")
        self.hash_bits, self.l2_norm = int(hash_bits), bool(l2_norm)
        seed = hash_seed if hash_seed is not None else kwargs.get("seed") or 0
        self.simhash = SimHash(self.item_dim, int(num_hashes), seed=int(seed))
        self.finish(interest_dim=2 * self.item_dim)

    def interest(self, target: torch.Tensor, history: ItemHistory,
                 context: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            codes = bucket_codes(self.simhash(history.table), self.hash_bits)  # (U, G)
        long = sdim_aggregate(history.table, history.index, history.mask, codes,
                              history.target_index, self.l2_norm)  # (B, D)
        return {"interest": torch.cat([self.short_interest(target, history), long], dim=-1)}
