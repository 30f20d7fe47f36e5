"""LEARN model: positives compaction, loss wiring, exported vectors."""
import pytest
import torch

from fuxictr_chime.errors import ConfigError
from fuxictr_chime.learn.config import LEARNConfig
from fuxictr_chime.learn.losses import dense_all_action_loss
from fuxictr_chime.learn.model import LEARNCompressor, compact_positives

TINY = {"backbone": {"hidden_size": 16, "num_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "intermediate_size": 32, "bf16": False},
        "learn": {"output_dim": 8, "item_hidden": 8, "chunk_size": 3}}


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([[1, -1, 1, 1, -1, 1, 1],
                           [-1, 1, 1, -1, 1, 0, 0],
                           [-1, -1, -1, 0, 0, 0, 0]])  # user 3: no positive
    mask = labels != 0
    dense = {"title_emb": torch.randn(3, 7, 5, generator=g), "image_emb": torch.randn(3, 7, 3, generator=g)}
    return {"labels": labels, "mask": mask, "dense": dense, "item_index": torch.arange(21).view(3, 7),
            "user_index": torch.tensor([1, 2, 3]), "attrs": {}}


def _model(**learn):
    cfg = LEARNConfig.from_dict({**TINY, "learn": {**TINY["learn"], **learn}})
    torch.manual_seed(0)
    return LEARNCompressor.from_config(cfg, {"item_id": 30}, {"title_emb": 5, "image_emb": 3})


def test_compact_positives_keeps_order_and_drops_negatives():
    batch = _batch()
    order, mask = compact_positives(batch)
    items = torch.gather(batch["item_index"], 1, order)
    assert items[0, :5].tolist() == [0, 2, 3, 5, 6] and mask[0].tolist() == [True] * 5 + [False] * 2
    assert items[1, :3].tolist() == [8, 9, 11] and mask[1].sum() == 3
    assert not mask[2].any()


def test_forward_equals_loss_on_tower_outputs_and_trains_every_tower():
    model = _model()
    batch = _batch()
    out = model(batch)
    u, v, mask = model._towers(batch)
    # user 0: 5 positives -> 1 target (floor(1.5)) -> 4 history; user 1: 3 positives -> 1 target
    length = mask.sum(1, keepdim=True)
    pos = torch.arange(7).unsqueeze(0)
    n_t = torch.floor(length * 0.3).long().clamp_min(1)
    hist, targ = mask & (pos < length - n_t), mask & (pos >= length - n_t) & (length >= 2)
    assert hist.sum() == 4 + 2 and targ.sum() == 2
    expected = dense_all_action_loss(u, v, hist, targ, tau=0.1)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    out["loss"].backward()
    for name in ("user_projection.weight", "user_head.weight", "item_tower.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_user_features_last_anchor_and_zeros_without_history():
    model = _model().eval()
    batch = _batch()
    with torch.no_grad():
        emb = model.user_features(batch)
        u, _, mask = model._towers(batch)
    assert emb.shape == (3, 8)
    # user 0: 5 positives, 1 target -> history positions 0..3; user 1: 3 positives, 1 target -> 0..1
    assert torch.allclose(emb[0], u[0, 3]) and torch.allclose(emb[1], u[1, 1])
    assert torch.allclose(emb[0].norm(), torch.tensor(1.0), atol=1e-5)
    assert torch.equal(emb[2], torch.zeros(8))
    # the target part (user 0's last positive, time step 6) does not reach the exported vector
    batch2 = _batch()
    batch2["dense"]["title_emb"][0, 6] += 10.0
    with torch.no_grad():
        assert torch.allclose(model.user_features(batch2)[0], emb[0], atol=1e-6)


def test_user_features_last_valid_is_the_last_positive():
    model = _model(export_position="last_valid").eval()
    batch = _batch()
    with torch.no_grad():
        emb = model.user_features(batch)
        u, _, _ = model._towers(batch)
    assert torch.allclose(emb[0], u[0, 4]) and torch.allclose(emb[1], u[1, 2])
    assert torch.equal(emb[2], torch.zeros(8))
    batch2 = _batch()
    batch2["dense"]["title_emb"][1, 3] += 10.0  # a negative of user 2 after its last positive
    batch3 = _batch()
    batch3["dense"]["title_emb"][0, 6] += 10.0  # user 0's last positive
    with torch.no_grad():
        assert torch.allclose(model.user_features(batch2)[1], emb[1], atol=1e-6)
        assert not torch.allclose(model.user_features(batch3)[0], emb[0], atol=1e-3)


@pytest.mark.parametrize("position, trained", [("last_anchor", True), ("last_valid", False)])
def test_exported_position_gets_a_gradient_only_when_it_is_an_anchor(position, trained):
    """The loss trains the vector a ``last_anchor`` export reads, and never the ``last_valid`` one."""
    model = _model(export_position=position)
    batch = _batch()
    u, v, mask = model._towers(batch)
    u.retain_grad()
    history, target, _ = model.split(mask)
    dense_all_action_loss(u, v, history, target, tau=0.1).backward()
    at = model.export_positions(mask)
    for user in (0, 1):  # users with at least 2 positives
        grad = u.grad[user, at[user]].abs().sum().item()
        assert (grad > 0) == trained, (position, user, grad)


def test_single_positive_user_exports_its_only_vector():
    model = _model().eval()
    batch = _batch()
    batch["labels"][1] = torch.tensor([-1, 1, -1, -1, -1, 0, 0])
    with torch.no_grad():
        u, _, mask = model._towers(batch)
        emb = model.user_features(batch)
    assert model.export_positions(mask)[1].item() == 0 and torch.allclose(emb[1], u[1, 0])


def test_content_column_errors():
    cfg = LEARNConfig.from_dict(TINY)
    with pytest.raises(ConfigError, match="dense"):
        LEARNCompressor(cfg, {"item_id": 30}, {})
    cfg = LEARNConfig.from_dict({**TINY, "learn": {"content_columns": ["nope"]}})
    with pytest.raises(ConfigError, match="nope"):
        LEARNCompressor(cfg, {"item_id": 30}, {"title_emb": 5})


def test_export_position_validated():
    with pytest.raises(ConfigError, match="export_position"):
        LEARNConfig.from_dict({"learn": {"export_position": "last"}})


def test_unknown_key_rejected():
    with pytest.raises(ConfigError, match="target_fraction"):
        LEARNConfig.from_dict({"learn": {"target_fractoin": 0.2}})
