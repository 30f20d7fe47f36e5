"""IAM (paper 4.2): lookups + GLU projectors, user input vs item input, width checks."""
from __future__ import annotations

import pytest
import torch

from fuxictr_chime.compressor.adaptation import GLU, LABEL_VOCAB, InterestAdaptation, label_index
from fuxictr_chime.compressor.config import AdaptationConfig
from fuxictr_chime.errors import ConfigError, DataError

VOCAB = {"item_id": 11, "cate_id": 5}
DENSE = {"title_emb": 6}
EMB = {"item_id": 16, "cate_id": 4, "label": 4}
HIDDEN = 32  # 16 + 4 + 8 (title GLU) + 4


def _batch(seed: int = 0, b: int = 3, t: int = 5) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([t, 2, 1][:b])
    mask = torch.arange(t)[None, :] < lengths[:, None]  # (B, T)
    items = torch.randint(1, VOCAB["item_id"], (b, t), generator=g) * mask  # (B, T)
    labels = torch.where(torch.rand(b, t, generator=g) < 0.5, 1, -1) * mask  # (B, T)
    cate = torch.randint(1, VOCAB["cate_id"], (b, t), generator=g) * mask  # (B, T)
    title = torch.randn(b, t, DENSE["title_emb"], generator=g) * mask.unsqueeze(-1)  # (B, T, 6)
    return {"item_index": items, "labels": labels, "attrs": {"cate_id": cate}, "dense": {"title_emb": title},
            "mask": mask, "user_index": torch.arange(1, b + 1)}


def _iam(**overrides) -> InterestAdaptation:
    values = dict(embedding_dims=EMB, dense_dims={"title_emb": 8})
    values.update(overrides)
    torch.manual_seed(0)
    return InterestAdaptation(AdaptationConfig(**values), VOCAB, DENSE, HIDDEN)


def test_glu_is_value_times_sigmoid_gate():
    glu = GLU(6, 3)
    x = torch.randn(4, 6)
    w, b = glu.proj.weight, glu.proj.bias  # (6, 6), (6,): rows 0..2 = W1, rows 3..5 = W2
    expected = (x @ w[:3].T + b[:3]) * torch.sigmoid(x @ w[3:].T + b[3:])
    torch.testing.assert_close(glu(x), expected)
    with pytest.raises(ConfigError):
        GLU(0, 3)


def test_label_index_maps_actions():
    assert label_index(torch.tensor([1, -1, 0, 1])).tolist() == [2, 1, 0, 2]
    assert LABEL_VOCAB == 3


def test_user_and_item_inputs_are_the_concatenations():
    iam, batch = _iam(), _batch()
    e_user, e_item = iam(batch)
    assert e_user.shape == (3, 5, HIDDEN) and e_item.shape == (3, 5, HIDDEN - EMB["label"])
    assert iam.item_input_dim == HIDDEN - EMB["label"] and iam.user_input_dim == HIDDEN
    expected_item = torch.cat([
        iam.embeddings["item_id"].weight[batch["item_index"]],  # (B, T, 16)
        iam.embeddings["cate_id"].weight[batch["attrs"]["cate_id"]],  # (B, T, 4)
        iam.projectors["title_emb"](batch["dense"]["title_emb"]),  # (B, T, 8)
    ], dim=-1)
    torch.testing.assert_close(e_item, expected_item)
    label_rows = iam.label_embedding.weight[label_index(batch["labels"])]  # (B, T, 4)
    torch.testing.assert_close(e_user, torch.cat([expected_item, label_rows], dim=-1))
    # positive and negative actions differ only in the label part
    flipped = dict(batch, labels=-batch["labels"])
    e_user2, e_item2 = iam(flipped)
    torch.testing.assert_close(e_item2, e_item)
    valid = batch["mask"]
    assert not torch.allclose(e_user2[valid][:, -4:], e_user[valid][:, -4:])


def test_padding_rows_of_lookups_are_zero():
    iam, batch = _iam(), _batch()
    e_user, _ = iam(batch)
    pad = ~batch["mask"]
    assert torch.all(e_user[pad][:, :20] == 0)  # item_id + cate_id parts
    assert torch.all(e_user[pad][:, -4:] == 0)  # label part


def test_gradients_reach_lookups_and_projectors():
    iam, batch = _iam(), _batch()
    e_user, e_item = iam(batch)
    (e_user.square().sum() + e_item.sum()).backward()
    for name, param in iam.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert torch.all(iam.embeddings["item_id"].weight.grad[0] == 0)  # padding index gets no gradient


def test_embeddings_start_at_llm_token_scale():
    iam = InterestAdaptation(AdaptationConfig(embedding_dims={"item_id": 28, "label": 4}), {"item_id": 5000}, {}, 32)
    std = iam.embeddings["item_id"].weight[1:].std().item()
    assert 0.015 < std < 0.025  # N(0, 0.02)


def test_width_mismatch_lists_each_width_the_sum_and_hidden():
    with pytest.raises(ConfigError) as err:
        InterestAdaptation(AdaptationConfig(embedding_dims=EMB, dense_dims={"title_emb": 8}), VOCAB, DENSE, 48)
    text = str(err.value)
    for word in ("item_id 16", "cate_id 4", "title_emb 8", "label 4", "sum to 32", "hidden_size is 48",
                 "final_linear"):
        assert word in text


def test_final_linear_maps_the_sum_to_hidden():
    iam = InterestAdaptation(AdaptationConfig(embedding_dims=EMB, dense_dims={"title_emb": 8}, final_linear=True),
                             VOCAB, DENSE, 48)
    e_user, e_item = iam(_batch())
    assert e_user.shape == (3, 5, 48) and e_item.shape == (3, 5, 28)
    assert iam.final_linear.in_features == 32


def test_every_data_attribute_needs_a_width_and_every_width_an_attribute():
    with pytest.raises(ConfigError, match=r"no width for \['cate_id', 'title_emb'\]"):
        InterestAdaptation(AdaptationConfig(embedding_dims={"item_id": 28, "label": 4}), VOCAB, DENSE, HIDDEN)
    with pytest.raises(ConfigError, match=r"widths set for \['brand_id'\].*categorical attributes"):
        InterestAdaptation(AdaptationConfig(embedding_dims={**EMB, "brand_id": 4}, dense_dims={"title_emb": 8}),
                           VOCAB, DENSE, HIDDEN)


def test_width_zero_leaves_an_attribute_out():
    iam = _iam(embedding_dims={"item_id": 20, "cate_id": 0, "label": 4})
    assert "cate_id" not in iam.embeddings and iam.item_input_dim == 28
    batch = _batch()
    del batch["attrs"]["cate_id"]  # not read any more
    assert iam(batch)[0].shape == (3, 5, HIDDEN)


def test_id_only_ablation_uses_item_id_and_label_only():
    iam = _iam(embedding_dims={"item_id": 28, "cate_id": 4, "label": 4}, dense_dims={"title_emb": 8}, id_only=True)
    assert list(iam.embeddings) == ["item_id"] and len(iam.projectors) == 0 and iam.item_input_dim == 28
    batch = _batch()
    e_user, e_item = iam({"item_index": batch["item_index"], "labels": batch["labels"]})
    torch.testing.assert_close(e_item, iam.embeddings["item_id"].weight[batch["item_index"]])
    assert e_user.shape == (3, 5, HIDDEN)
    with pytest.raises(ConfigError, match=r"id_only.*item_id 16, label 4.*sum to 20"):
        _iam(id_only=True)


def test_missing_batch_entries_are_named():
    iam, batch = _iam(), _batch()
    del batch["dense"]["title_emb"]
    with pytest.raises(DataError, match=r"dense\['title_emb'\]"):
        iam(batch)
    with pytest.raises(ConfigError, match="item_id"):
        InterestAdaptation(AdaptationConfig(), {"cate_id": 4}, {}, 896)
