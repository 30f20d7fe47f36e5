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


def _packed_inputs(B: int = 6, L: int = 7, D: int = 6, U: int = 9):
    """Table with the zero padding row 0, left-padded index; sample 0 has no valid position."""
    g = torch.Generator().manual_seed(1)
    table = torch.randn(U, D, dtype=torch.float64, generator=g)
    table[0] = 0
    lengths = torch.tensor([0, 1, 3, 7, 5, 2])[:B]
    mask = torch.arange(L).unsqueeze(0) >= (L - lengths).unsqueeze(1)  # (B, L)
    index = torch.randint(1, U, (B, L), generator=g) * mask
    target = torch.randn(B, D, dtype=torch.float64, generator=g)
    return target, table, index, mask


@pytest.mark.parametrize("kwargs", [
    {"attention_units": [8], "hidden_activations": "Dice"},                       # DIN's default
    {"attention_units": [8], "hidden_activations": "Dice", "use_softmax": True},
    {"attention_units": [8, 4], "hidden_activations": "Dice", "output_activation": "Sigmoid"},
    {"attention_units": [8, 4], "hidden_activations": "ReLU"},
    {"attention_units": [8], "hidden_activations": "Dice", "dropout_rate": 0.5},  # eval only
])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("table_rows", [9, 40])
def test_packed_forward_equals_fuxictr_on_the_padded_history(kwargs, training, table_rows):
    """forward_packed (valid rows only; padded rows only in Dice's statistics, counted L - length
    times) gives FuxiCTR's output, gradients and running statistics on the full (B, L, D). Both
    weighted sums: 9 table rows take the dense (B, U) score matrix (6 x 9 <= 18 valid rows x 6),
    40 the per-row index_add (6 x 40 > 18 x 6)."""
    target, table, index, mask = _packed_inputs(U=table_rows)
    dense = target.shape[0] * table_rows <= int(mask.sum()) * table.shape[1]
    assert dense == (table_rows == 9)
    stock, fused = _pair(6, **kwargs)
    stock.train(training), fused.train(training)
    if not fused.packable():
        assert training and kwargs.get("dropout_rate")  # a fresh dropout mask per padded row
        return
    outs, grads = [], []
    for module, packed in ((stock, False), (fused, True)):
        target, table, index, mask = _packed_inputs(U=table_rows)
        target.requires_grad_(), table.requires_grad_()
        out = (module.forward_packed(target, table, index, mask) if packed
               else module(target, table[index], mask))
        out.pow(2).sum().backward()
        outs.append(out)
        # table row 0 (padding) is excluded: the model zeroes its gradient (ItemTable.embed)
        grads.append((target.grad, table.grad[1:], *(p.grad for p in module.parameters())))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
    assert outs[1][0].abs().max() == 0  # no valid behaviour: nothing attended
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    for got, want in zip(fused.buffers(), stock.buffers()):
        torch.testing.assert_close(got, want)


def test_packable_refuses_what_it_cannot_compute_exactly():
    assert not FusedDINAttention(4, attention_units=[3], hidden_activations="Dice",
                                 batch_norm=True).packable()  # FuxiCTR's BatchNorm1d layer
    dropout = FusedDINAttention(4, attention_units=[3], hidden_activations="Dice", dropout_rate=0.2)
    assert not dropout.train().packable() and dropout.eval().packable()


@pytest.mark.parametrize("name", ["DIN", "DIN_CHIME"])
def test_din_model_packed_path_equals_the_dense_one(name, make_feature_map, make_batch,
                                                    model_kwargs, monkeypatch):
    """A training step of DIN over the whole history (short_len = max_len) with the packed
    attention and with the dense one: same output, parameter gradients and Dice statistics."""
    from .test_models_zoo import build, randomize

    results = []
    for packed in (True, False):
        model, fmap = build(name, make_feature_map, {**model_kwargs, "short_len": 50})
        randomize(model, std=0.1).train()
        if not packed:
            monkeypatch.setattr(FusedDINAttention, "packable", lambda self: False)
        batch = make_batch(fmap, batch_size=8, length=20, lengths=[0, 1, 5, 20, 13, 2, 9, 20])
        out = model(batch)["y_pred"]
        out.sum().backward()
        results.append((out, [p.grad for p in model.parameters() if p.grad is not None],
                        [b.clone() for b in model.short_attention.buffers()]))
    (out_p, grad_p, buf_p), (out_d, grad_d, buf_d) = results
    torch.testing.assert_close(out_p, out_d, rtol=1e-5, atol=1e-6)  # float32: summation order
    assert len(grad_p) == len(grad_d) > 0
    for got, want in zip(grad_p + buf_p, grad_d + buf_d):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_history_padding_becomes_item_zero(make_feature_map, make_batch, model_kwargs):
    """A dict batch with a real item under the mask attends as if it were padding (item 0):
    the packed attention relies on padded keys being the zero vector."""
    from .test_models_zoo import build

    model, fmap = build("DIN", make_feature_map, {**model_kwargs, "short_len": 50})
    batch = make_batch(fmap, batch_size=4, length=10, lengths=[3, 0, 10, 6])
    noisy = dict(batch, item_seq=batch["item_seq"].clone())
    noisy["item_seq"][:, :-1] += 1 - batch["seq_mask"].long()  # item 1 at every padded position
    assert (noisy["item_seq"][:, :-1][~batch["seq_mask"]] == 1).all()
    model.eval()
    torch.testing.assert_close(model(noisy)["y_pred"], model(batch)["y_pred"])


def test_packed_forward_takes_the_dense_path_under_autocast():
    """Under autocast (bfloat16 matmuls) forward_packed returns forward()'s result: no packed
    Dice sums in half precision."""
    _, fused = _pair(6, attention_units=[8], hidden_activations="Dice")
    fused = fused.float().eval()
    target, table, index, mask = (t.float() if t.is_floating_point() else t for t in _packed_inputs())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        packed = fused.forward_packed(target, table, index, mask)
        dense = fused(target, table[index], mask)
    assert packed.dtype == torch.bfloat16
    torch.testing.assert_close(packed, dense, rtol=0, atol=0)
