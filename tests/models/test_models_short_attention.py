"""Short-interest attention: DIN keeps DIN_Attention (a weighted sum), the long-sequence models
use softmax multi-head target attention over the last short_len behaviors (as LongCTR does)."""
from __future__ import annotations

import pytest
import torch
from fuxictr.pytorch.layers import DIN_Attention

from fuxictr_chime.errors import ConfigError
from fuxictr_chime.models import get_model
from fuxictr_chime.models.retrieval import TargetAttention

from .test_models_zoo import build, randomize


@pytest.mark.parametrize("name,kind", [("DIN", DIN_Attention), ("DIN_CHIME", DIN_Attention),
                                       ("SimSoft", TargetAttention), ("ETA", TargetAttention),
                                       ("SDIM", TargetAttention), ("TWIN_LEARN", TargetAttention)])
def test_default_short_attention_per_model(name, kind, make_feature_map, model_kwargs):
    model, _ = build(name, make_feature_map, model_kwargs)
    assert isinstance(model.short_attention, kind)


def test_target_short_interest_is_a_convex_combination(make_feature_map, model_kwargs, make_batch):
    """Softmax weights sum to 1: with S identical short behaviors the interest is W_o W_v x,
    whatever S is (a DIN weighted sum would grow with S)."""
    model, fmap = build("ETA", make_feature_map, model_kwargs)
    randomize(model)
    att = model.short_attention
    x = torch.randn(1, model.item_dim)
    target = torch.randn(1, model.item_dim)
    expected = att.W_o(att.W_v(x))  # (1, D)
    for s in (1, 3, 4):
        keys = x.unsqueeze(1).expand(1, s, -1)
        got = att(target, keys, torch.ones(1, s, dtype=torch.bool))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_short_attention_switch_and_bad_value(make_feature_map, model_kwargs):
    model, _ = build("TWIN", make_feature_map, model_kwargs, short_attention="din")
    assert isinstance(model.short_attention, DIN_Attention)
    with pytest.raises(ConfigError, match="short_attention must be 'din' or 'target'"):
        get_model("SDIM")(make_feature_map(), **{**model_kwargs, "short_attention": "mean"})
