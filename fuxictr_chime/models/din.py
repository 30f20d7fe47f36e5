"""DIN (Zhou et al. 2018, "Deep Interest Network for Click-Through Rate Prediction").

CHIME paper section 5.1 baseline: target attention over the short sequence (the last
``short_len`` = 30 behaviors), here FuxiCTR's ``DIN_Attention`` on the concatenated item
embedding (ids + item-side multimodal vectors). All shared plumbing is in
:class:`~fuxictr_chime.models.base.LongSeqBase`.

LongCTR's DIN (FuxiCTR ``model_zoo/LongCTR/DIN``, the DIN of the published LongCTR
leaderboard) attends over the whole sequence of ``max_len`` (1000) behaviors: that is this
class with ``short_len`` = ``max_len``, the experiments ``DIN_full[_CHIME|_LEARN]_<dataset>`` of
``model_zoo/DIN/config``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .base import LongSeqBase
from .item_table import ItemHistory

if TYPE_CHECKING:
    from fuxictr.features import FeatureMap


class DIN(LongSeqBase):
    """DIN: interest = DIN attention(target, last ``short_len`` behaviors).

    Defaults (see :class:`LongSeqBase`): ``short_len=30``, attention MLP ``(64,)`` with
    Dice, no softmax (DIN's original weighting). Only the last ``min(short_len, max_len)``
    positions of the batch's history are looked up; ``short_len=max_len`` attends over the
    whole sequence (LongCTR's DIN).
    """

    uses_long_sequence = False
    default_short_attention = "din"

    def __init__(self, feature_map: "FeatureMap", model_id: str | None = None, gpu: int = -1,
                 **kwargs: Any) -> None:
        super().__init__(feature_map, model_id, gpu, **kwargs)
        self.finish(interest_dim=self.item_dim)

    def interest(self, target: torch.Tensor, history: ItemHistory,
                 context: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"interest": self.short_interest(target, history)}  # (B, D)
