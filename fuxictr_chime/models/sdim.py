"""SDIM (Cao et al. 2022, "Sampling Is All You Need on Modeling Long-Term User Behaviors
for CTR Prediction").

CHIME paper section 5.1 baseline, with the parameters of the SDIM paper and of LongCTR's
``SDIM`` (FuxiCTR 2.3.10, ``model_zoo/LongCTR/SDIM/SDIM.py``):

* ``num_hashes`` (48) SimHash signatures ("hash functions") of ``hash_bits`` (3) bits each,
  i.e. ``num_hashes * hash_bits`` (144) sign random projections of the item embedding;
  signature h of an item is its bits ``h * hash_bits ..`` read as a number (bucket);
* per signature, the valid behaviors whose bucket equals the target's are summed; the sum
  is L2-normalized when ``l2_norm``; the long-term interest is the mean over the
  ``num_hashes`` signatures (no attention; zero when nothing collides);
* the projection is a buffer drawn from a ``torch.Generator`` seeded with ``hash_seed``
  (``reuse_hash=True``, LongCTR's default). ``reuse_hash=False`` hashes every batch with a
  fresh projection from the global torch RNG, as LongCTR does, except that LongCTR draws one
  per sample and this model one per batch (each sample's output has the same distribution;
  the codes stay computed once per distinct item);
* plus the short-sequence interest: softmax multi-head target attention over the last
  ``short_len`` behaviors (LongCTR's ``attention_dim``, ``num_heads``, ``use_scale``;
  ``use_qkvo: True`` only), as in LongCTR.

Fast path: codes once per distinct item of the batch, sums by ``F.embedding_bag`` over the
batch's item table, so the (B, L, D) history is never materialized
(:func:`~fuxictr_chime.models.retrieval.sdim_interest`; reference
:func:`~fuxictr_chime.models.retrieval.sdim_interest_reference`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError
from .base import LongSeqBase
from .item_table import ItemHistory
from .retrieval import SimHash, sdim_interest

if TYPE_CHECKING:
    from fuxictr.features import FeatureMap


class SDIM(LongSeqBase):
    """SDIM. Defaults: ``num_hashes=48`` signatures of ``hash_bits=3`` bits (144
    projections; ``hash_bits`` 1..62), ``l2_norm=True`` (LongCTR's default is False),
    ``reuse_hash=True``, ``hash_seed`` = the experiment ``seed`` if given else 0; short
    attention ``attention_dim=64``, ``num_heads=1``, ``attention_dropout=0``."""

    def __init__(self, feature_map: "FeatureMap", model_id: str | None = None, gpu: int = -1,
                 *, num_hashes: int = 48, hash_bits: int = 3, reuse_hash: bool = True,
                 hash_seed: int | None = None, l2_norm: bool = True, attention_dim: int = 64,
                 num_heads: int = 1, attention_dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(feature_map, model_id, gpu, attention_dropout=attention_dropout,
                         short_attention_dim=attention_dim, short_num_heads=num_heads,
                         **kwargs)
        if int(num_hashes) < 1:
            raise ConfigError(f"SDIM: num_hashes (signatures) must be >= 1, got {num_hashes}")
        if not 1 <= int(hash_bits) <= 62:
            raise ConfigError(f"SDIM: hash_bits (bits per signature) must be in 1..62, "
                              f"got {hash_bits}")
        self.num_hashes, self.hash_bits = int(num_hashes), int(hash_bits)
        self.reuse_hash, self.l2_norm = bool(reuse_hash), bool(l2_norm)
        seed = hash_seed if hash_seed is not None else kwargs.get("seed") or 0
        self.simhash = SimHash(self.item_dim, self.num_hashes * self.hash_bits, seed=int(seed))
        self.finish(interest_dim=2 * self.item_dim)

    def interest(self, target: torch.Tensor, history: ItemHistory,
                 context: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            bits = self.simhash(history.table, resample=not self.reuse_hash)  # (U, H*b)
        long = sdim_interest(history.table, history.index, history.mask,
                             history.target_index, bits, self.hash_bits,
                             self.l2_norm)  # (B, D)
        return {"interest": torch.cat([self.short_interest(target, history), long], dim=-1)}
