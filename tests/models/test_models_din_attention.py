"""FusedDINAttention computes FuxiCTR's DIN_Attention exactly: same parameters, same output and
gradients (float64), in train mode (Dice's BatchNorm statistics over all B * L rows) and eval."""
from __future__ import annotations

import pytest
import torch
from fuxictr.pytorch.layers import DIN_Attention

from fuxictr_chime.models.din_attention import FusedDINAttention


def _pair(dim: int, **kwargs) -> tuple[DIN_Attention, FusedDINAttention]:
    torch.manual_seed(0)
    stock = DIN_Attention(dim, **kwargs).double()
    for param in stock.parameters():  # Dice's alpha starts at 0: make every term count
        torch.nn.init.normal_(param, std=0.3)
    fused = FusedDINAttention(dim, **kwargs).double()
    fused.load_state_dict(stock.state_dict())
    return stock, fused


def _inputs(B: int = 5, L: int = 7, D: int = 6):
    g = torch.Generator().manual_seed(1)
    target = torch.randn(B, D, dtype=torch.float64, generator=g, requires_grad=True)
    history = torch.randn(B, L, D, dtype=torch.float64, generator=g, requires_grad=True)
    mask = torch.rand(B, L, generator=g) > 0.3
    mask[:, -1] = True
    return target, history, mask


@pytest.mark.parametrize("kwargs", [
    {"attention_units": [8], "hidden_activations": "Dice"},                       # DIN's default
    {"attention_units": [8], "hidden_activations": "Dice", "use_softmax": True},
    {"attention_units": [8, 4], "hidden_activations": "ReLU", "output_activation": "Sigmoid"},
    {"attention_units": [8], "hidden_activations": "ReLU", "batch_norm": True},
])
@pytest.mark.parametrize("training", [True, False])
def test_fused_din_attention_equals_fuxictr(kwargs, training):
    stock, fused = _pair(6, **kwargs)
    stock.train(training), fused.train(training)
    outs, grads = [], []
    for module in (stock, fused):
        target, history, mask = _inputs()
        out = module(target, history, mask)
        out.pow(2).sum().backward()
        outs.append(out)
        grads.append((target.grad, history.grad, *(p.grad for p in module.parameters())))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    if training:  # the BatchNorm running statistics moved identically
        for got, want in zip(fused.buffers(), stock.buffers()):
            torch.testing.assert_close(got, want)


def test_fused_din_attention_without_mask_and_state_dict_names():
    stock, fused = _pair(4, attention_units=[3], hidden_activations="Dice")
    assert list(fused.state_dict()) == list(stock.state_dict())
    target, history, _ = _inputs(D=4)
    torch.testing.assert_close(fused(target, history), stock(target, history), rtol=1e-10, atol=1e-10)


def test_din_models_use_the_fused_attention(make_feature_map, model_kwargs):
    from .test_models_zoo import build

    model, _ = build("DIN", make_feature_map, model_kwargs)
    assert isinstance(model.short_attention, FusedDINAttention)
