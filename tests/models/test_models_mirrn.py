"""MIRRN: every retrieval / refinement step against a plain loop-based reference.

* queries: target, mean of the last ``short_query_len`` valid behaviors, mean of all;
* retrieval: per query, SimHash Hamming distance over unpacked bits, the ``topk`` closest
  valid behaviors (ties: most recent), kept in time order and left-padded to ``topk`` slots;
* refinement: the Fourier filter against an explicit DFT sum (value and gradient) and
  against LongCTR's block formula ``einsum("blnd,ndd->blnd")``; the whole long-term interest
  against a per-sample reference (value and gradient); equal to LongCTR's unmasked mean
  when every slot is valid;
* model level: shapes, masked padding and histories shorter than ``topk``, empty histories,
  ``max_len``, a few training steps, determinism, bad settings (its four column variants
  are in ``test_models_zoo.py`` with the other models').
"""
from __future__ import annotations

import math

import pytest
import torch

from fuxictr_chime.errors import ConfigError
from fuxictr_chime.models import get_model
from fuxictr_chime.models.item_table import ItemHistory
from fuxictr_chime.models.mirrn import FourierFilter, topk_in_time_order
from fuxictr_chime.models.retrieval import target_attention_reference

from .conftest import left_pad
from .test_models_zoo import build, randomize


def _mask(lengths, length):
    lengths = torch.as_tensor(lengths)
    return torch.arange(length).unsqueeze(0) >= (length - lengths).unsqueeze(1)  # (B, L)


# --------------------------------------------------------------------------- references
def _topk_in_time_order_reference(scores, mask, k):
    """Per row: valid positions sorted by score (ties: the later position), first k, then
    ascending, left-padded with (0, False) to k slots."""
    positions, slots = [], []
    for b in range(scores.shape[0]):
        valid = [i for i in range(scores.shape[1]) if bool(mask[b, i])]
        ranked = sorted(valid, key=lambda i: (-float(scores[b, i]), -i))[:k]
        chosen = sorted(ranked)
        positions.append([0] * (k - len(chosen)) + chosen)
        slots.append([False] * (k - len(chosen)) + [True] * len(chosen))
    return torch.tensor(positions), torch.tensor(slots)


def _queries_reference(target, history, short_query_len):
    """(B, 3, D): the target, the mean of the valid behaviors among the last
    ``short_query_len`` positions, the mean of all valid behaviors (zero when none)."""
    seq = history.dense()  # (B, L, D)
    length = seq.shape[1]
    rows = []
    for b in range(seq.shape[0]):
        valid = [i for i in range(length) if bool(history.mask[b, i])]
        recent = [i for i in valid if i >= length - short_query_len]
        means = [seq[b, idx].mean(0) if idx else seq.new_zeros(seq.shape[-1])
                 for idx in (recent, valid)]
        rows.append(torch.stack([target[b], *means]))
    return torch.stack(rows)  # (B, 3, D)


def _retrieve_reference(model, queries, history):
    """Brute force: unpacked SimHash bits of every behavior and query, Hamming distance,
    sort per row in Python (ties: most recent). Positions (B, 3, k), slots (B, 3, k)."""
    seq = history.dense()  # (B, L, D)
    proj = model.simhash.projection
    bits = (seq @ proj) > 0  # (B, L, m)
    positions, slots = [], []
    for b in range(seq.shape[0]):
        per_query = []
        for g in range(queries.shape[1]):
            qbits = (queries[b, g] @ proj) > 0  # (m,)
            dist = [int((bits[b, i] != qbits).sum()) for i in range(seq.shape[1])]
            per_query.append(_topk_in_time_order_reference(
                -torch.tensor([dist], dtype=torch.float64), history.mask[b:b + 1], model.topk))
        positions.append(torch.cat([p for p, _ in per_query]))
        slots.append(torch.cat([s for _, s in per_query]))
    return torch.stack(positions), torch.stack(slots)  # (B, 3, k)


def _fourier_filter_reference(x, weight, norm_weight, norm_bias, eps=1e-12):
    """One sequence x (k, D), complex weight (D, 2): explicit DFT sums over positions and
    frequencies (orthonormal), y_c = real inverse DFT of w_c * X_c (imaginary parts of the
    DC and Nyquist bins dropped, as a real inverse FFT does), then LayerNorm(y + x)."""
    k, dim = x.shape
    w_re, w_im = weight[:, 0], weight[:, 1]  # (D,)
    spectrum = []
    for f in range(k // 2 + 1):
        re = sum(x[t] * math.cos(2 * math.pi * f * t / k) for t in range(k)) / math.sqrt(k)
        im = sum(-x[t] * math.sin(2 * math.pi * f * t / k) for t in range(k)) / math.sqrt(k)
        spectrum.append((re * w_re - im * w_im, re * w_im + im * w_re))  # w * X, (D,) each
    rows = []
    for t in range(k):
        y = x.new_zeros(dim)
        for f, (re, im) in enumerate(spectrum):
            edge = f == 0 or 2 * f == k  # DC / Nyquist: counted once, real part only
            angle = 2 * math.pi * f * t / k
            term = re * math.cos(angle) - (0 if edge else im * math.sin(angle))
            y = y + term * (1 if edge else 2)
        rows.append(y / math.sqrt(k))
    h = torch.stack(rows) + x  # (k, D)
    out = []
    for t in range(k):
        mean = h[t].mean()
        var = ((h[t] - mean) ** 2).mean()
        out.append((h[t] - mean) / torch.sqrt(var + eps) * norm_weight + norm_bias)
    return torch.stack(out)  # (k, D)


def _long_interest_reference(model, target, history):
    """MIRRN's long-term interest (B, D) sample by sample, from the loop references."""
    queries = _queries_reference(target, history, model.short_query_len)
    positions, slots = _retrieve_reference(model, queries, history)  # (B, 3, k)
    seq = history.dense()  # (B, L, D)
    filters, fusion = model.filters, model.fusion
    out = []
    for b in range(seq.shape[0]):
        interests = []
        for g in range(3):
            rows = []
            for p, ok in zip(positions[b, g].tolist(), slots[b, g].tolist()):
                if ok:
                    distance = torch.tensor(seq.shape[1] - p)  # 1 = most recent
                    rows.append(seq[b, p] + model.position_scale * model.position(distance))
                else:
                    rows.append(seq.new_zeros(seq.shape[-1]))
            refined = _fourier_filter_reference(torch.stack(rows), filters.weight[g],
                                                filters.norm_weight[g], filters.norm_bias[g])
            valid = [j for j, ok in enumerate(slots[b, g].tolist()) if ok]
            interests.append(refined[valid].mean(0) if valid else seq.new_zeros(seq.shape[-1]))
        keys = torch.stack(interests).unsqueeze(0)  # (1, 3, D)
        every = torch.ones(1, 3, dtype=torch.bool)
        pooled = target_attention_reference(fusion.W_q(target[b:b + 1]), fusion.W_k(keys),
                                            fusion.W_v(keys), every, fusion.num_heads,
                                            fusion.scale)  # (1, A)
        out.append(fusion.W_o(pooled)[0])
    return torch.stack(out)  # (B, D)


def _parts(model, batch, leaf_table=False):
    history = model.get_history(batch)
    if leaf_table:
        history = ItemHistory(history.table.detach().requires_grad_(), history.index,
                              history.mask, history.target_index)
    target = history.target
    return target, history, model.embed_context(batch, target.shape[0])


# --------------------------------------------------------------------------- steps
@pytest.mark.parametrize("k", [1, 3, 6, 9])
def test_topk_in_time_order_matches_reference(k):
    gen = torch.Generator().manual_seed(k)
    # distinct scores: breaking ties is the score's job (recency_tiebreak, tested below)
    scores = torch.randint(0, 3, (6, 7), generator=gen).float() + 1e-3 * torch.arange(7)
    mask = _mask([7, 5, 2, 1, 0, 7], 7)
    positions, slots = topk_in_time_order(scores, mask, k)
    ref_positions, ref_slots = _topk_in_time_order_reference(scores, mask, k)
    assert positions.shape == slots.shape == (6, k)
    assert torch.equal(slots, ref_slots)
    assert torch.equal(positions, ref_positions)
    assert (positions[:, 1:] >= positions[:, :-1]).all()  # time order, empty slots first


def test_topk_in_time_order_ignores_left_padding_and_prefers_recent_ties():
    from fuxictr_chime.models.retrieval import recency_tiebreak

    distance = torch.tensor([[2, 0, 1, 0, 0, 3]])
    positions, slots = topk_in_time_order(recency_tiebreak(distance), torch.ones(1, 6, dtype=bool),
                                          2)
    assert positions.tolist() == [[3, 4]] and slots.all()  # ties at 0: the two most recent
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.int64), distance], 1)
    mask = torch.arange(10).unsqueeze(0) >= 4
    shifted, _ = topk_in_time_order(recency_tiebreak(padded), mask, 2)
    assert (shifted - 4).tolist() == [[3, 4]]


def test_queries_match_reference(make_feature_map, make_batch, model_kwargs):
    model, fmap = build("MIRRN", make_feature_map, model_kwargs, short_query_len=4)
    randomize(model).eval()
    batch = make_batch(fmap, batch_size=6, length=10, lengths=[10, 6, 3, 1, 0, 4])
    with torch.no_grad():
        target, history, _ = _parts(model, batch)
        queries = model.queries(target, history)
        ref = _queries_reference(target, history, 4)
    assert queries.shape == (6, 3, model.item_dim)
    assert torch.allclose(queries, ref, atol=1e-6)
    assert (queries[4, 1:] == 0).all()  # empty history: zero short / global queries


@pytest.mark.parametrize("topk,hash_bits", [(4, 16), (3, 3), (20, 64)])
def test_retrieval_matches_brute_force(topk, hash_bits, make_feature_map, make_batch,
                                       model_kwargs):
    model, fmap = build("MIRRN", make_feature_map, model_kwargs, topk=topk, hash_bits=hash_bits)
    randomize(model).eval()
    batch = make_batch(fmap, batch_size=6, length=12, lengths=[12, 10, 7, 3, 0, 12], seed=4)
    with torch.no_grad():
        target, history, _ = _parts(model, batch)
        queries = model.queries(target, history)
        positions, slots = model.retrieve(queries, history)
        ref_positions, ref_slots = _retrieve_reference(model, queries, history)
    assert positions.shape == slots.shape == (6, 3, topk)
    assert torch.equal(slots, ref_slots)
    assert torch.equal(positions, ref_positions)
    assert torch.equal(slots.sum(-1), torch.clamp(history.mask.sum(1), max=topk)
                       .unsqueeze(1).expand(-1, 3))


@pytest.mark.parametrize("length", [1, 4, 5, 8])
def test_fourier_filter_matches_explicit_dft_value_and_gradient(length):
    torch.manual_seed(length)
    layer = FourierFilter(3, 6, dropout_rate=0.0).double()
    with torch.no_grad():
        layer.norm_weight.add_(torch.randn(3, 6, dtype=torch.float64))
        layer.norm_bias.add_(torch.randn(3, 6, dtype=torch.float64))
        layer.weight.mul_(30)  # a filter far from the identity
    x = torch.randn(2, 3, length, 6, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    assert out.shape == (2, 3, length, 6)
    ref = torch.stack([torch.stack([
        _fourier_filter_reference(x[b, g], layer.weight[g], layer.norm_weight[g],
                                  layer.norm_bias[g]) for g in range(3)]) for b in range(2)])
    assert torch.allclose(out, ref, atol=1e-9)
    weight = torch.randn(out.shape, dtype=torch.float64)
    inputs = (x, layer.weight, layer.norm_weight, layer.norm_bias)
    grads = torch.autograd.grad((out * weight).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * weight).sum(), inputs)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-9)


def test_fourier_filter_equals_longctr_block_formula_on_its_diagonal():
    """LongCTR's FilterLayer2 multiplies by einsum("blnd,ndd->blnd", A, W): only the diagonal
    of each (D/n x D/n) block is read, i.e. one complex weight per channel."""
    torch.manual_seed(0)
    n_block, dim, k = 4, 12, 7
    full = torch.randn(n_block, dim // n_block, dim // n_block, 2) * 0.02  # LongCTR's shape
    layer = FourierFilter(1, dim, dropout_rate=0.0)
    with torch.no_grad():
        layer.weight[0] = torch.diagonal(full, dim1=1, dim2=2).transpose(1, 2).reshape(dim, 2)
    x = torch.randn(5, k, dim)
    spectrum = torch.fft.rfft(x, dim=1, norm="ortho").view(5, k // 2 + 1, n_block, -1)
    mixed = torch.einsum("blnd,ndd->blnd", spectrum, torch.view_as_complex(full))
    filtered = torch.fft.irfft(mixed.reshape(5, k // 2 + 1, dim), n=k, dim=1, norm="ortho")
    h = filtered + x
    u = h.mean(-1, keepdim=True)
    s = (h - u).pow(2).mean(-1, keepdim=True)
    longctr = (h - u) / torch.sqrt(s + 1e-12)  # LayerNorm with weight 1, bias 0
    assert torch.allclose(layer(x.unsqueeze(1))[:, 0], longctr, atol=1e-5)


def test_long_interest_matches_reference_value_and_gradient(make_feature_map, make_batch,
                                                            model_kwargs):
    model, fmap = build("MIRRN", make_feature_map, model_kwargs, topk=4, hash_bits=8,
                        short_query_len=3)
    randomize(model).eval()
    batch = make_batch(fmap, batch_size=6, length=10, lengths=[10, 7, 4, 2, 0, 9], seed=3)
    target, history, context = _parts(model, batch, leaf_table=True)
    long = model.interest(target, history, context)["interest"][:, model.item_dim:]
    ref = _long_interest_reference(model, target, history)
    assert long.shape == (6, model.item_dim)
    assert torch.allclose(long, ref, atol=1e-5)
    assert (long[4] == 0).all() and (long.abs().sum(-1)[[0, 1, 2, 3, 5]] > 0).all()
    weight = torch.randn(long.shape)
    inputs = (history.table, model.filters.weight, model.filters.norm_weight,
              model.position.weight, model.fusion.W_q.weight, model.fusion.W_v.weight)
    grads = torch.autograd.grad((long * weight).sum(), inputs, retain_graph=True)  # shared target
    ref_grads = torch.autograd.grad((ref * weight).sum(), inputs)
    for name, g, r in zip(("table", "filter", "norm", "position", "W_q", "W_v"), grads,
                          ref_grads):
        assert torch.allclose(g, r, atol=1e-5), name
    assert grads[3].abs().sum() > 0  # the position embedding is trained


def test_full_histories_equal_longctr_unmasked_mean(make_feature_map, make_batch, model_kwargs):
    """With at least topk valid behaviors everywhere, every slot is valid and the refinement
    is LongCTR's: emb + 0.02 * pos(L - index), filter, plain mean over the k positions."""
    model, fmap = build("MIRRN", make_feature_map, model_kwargs, topk=5)
    randomize(model).eval()
    batch = make_batch(fmap, batch_size=5, length=9, lengths=[9, 9, 6, 5, 7], seed=8)
    with torch.no_grad():
        target, history, _ = _parts(model, batch)
        positions, slots = model.retrieve(model.queries(target, history), history)
        assert slots.all()
        seq = history.dense()  # (B, L, D)
        gathered = torch.stack([seq[b, positions[b]] for b in range(5)])  # (B, 3, k, D)
        gathered = gathered + 0.02 * model.position(history.length - positions)
        longctr = model.filters(gathered).mean(2)  # (B, 3, D)
        assert torch.allclose(model.refine(history, positions, slots), longctr, atol=1e-6)


# --------------------------------------------------------------------------- model level
@pytest.mark.parametrize("topk", [3, 50])
def test_left_padding_and_histories_shorter_than_topk(topk, make_feature_map, make_batch,
                                                      model_kwargs):
    model, fmap = build("MIRRN", make_feature_map, model_kwargs, topk=topk)
    randomize(model).eval()
    batch = make_batch(fmap, batch_size=6, length=8, lengths=[8, 5, 2, 1, 0, 8], seed=6)
    with torch.no_grad():
        base = model(batch)["y_pred"]
        for extra in (1, 7, 60):
            assert torch.allclose(model(left_pad(batch, extra))["y_pred"], base, atol=1e-6)


def test_shapes_and_empty_history(make_feature_map, make_batch, model_kwargs):
    model, fmap = build("MIRRN", make_feature_map, model_kwargs)
    randomize(model)
    assert model.filters.weight.shape == (3, model.item_dim, 2)
    assert model.position.num_embeddings == model_kwargs["max_len"] + 1
    batch = make_batch(fmap, batch_size=4, length=10, lengths=[0, 0, 0, 0])
    target, history, context = _parts(model, batch)
    out = model.interest(target, history, context)["interest"]
    assert out.shape == (4, 2 * model.item_dim)
    assert (out[:, model.item_dim:] == 0).all()
    y = model(batch)["y_pred"]
    model.compute_loss({"y_pred": y}, model.get_labels(batch)).backward()
    assert y.shape == (4, 1) and torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_history_longer_than_max_len_keeps_the_most_recent(make_feature_map, make_batch,
                                                           model_kwargs):
    model, fmap = build("MIRRN", make_feature_map, model_kwargs, max_len=6)
    randomize(model).eval()
    batch = make_batch(fmap, batch_size=5, length=10, lengths=[10, 8, 6, 2, 0])
    cut = {**batch, "item_seq": batch["item_seq"][:, -7:], "seq_mask": batch["seq_mask"][:, -6:]}
    with torch.no_grad():
        assert torch.allclose(model(batch)["y_pred"], model(cut)["y_pred"], atol=1e-6)


def test_training_steps_stay_finite_and_train_every_block(make_feature_map, make_batch,
                                                          model_kwargs):
    model, fmap = build("MIRRN", make_feature_map, model_kwargs)
    model.train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(3):
        loss = model.train_step(make_batch(fmap, batch_size=8, length=12, seed=step))
        assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for key in ("filters.weight", "filters.norm_weight", "position.weight",
                "fusion.W_q.weight", "dnn.mlp.0.weight"):
        assert not torch.equal(model.state_dict()[key], start[key]), key
    assert torch.equal(model.simhash.projection, start["simhash.projection"])  # never trained


def test_deterministic_and_seeded_hash(make_feature_map, make_batch, model_kwargs):
    a, fmap = build("MIRRN", make_feature_map, model_kwargs, seed=5)
    b, _ = build("MIRRN", make_feature_map, model_kwargs, seed=5)
    a.eval(), b.eval()
    batch = make_batch(fmap, batch_size=8, length=12, seed=9)
    with torch.no_grad():
        assert torch.equal(a(batch)["y_pred"], a(batch)["y_pred"])
        assert torch.equal(a(batch)["y_pred"], b(batch)["y_pred"])
    c, _ = build("MIRRN", make_feature_map, model_kwargs, seed=5, hash_seed=123)
    assert not torch.equal(a.simhash.projection, c.simhash.projection)


@pytest.mark.parametrize("key,value", [("hash_bits", 0), ("hash_bits", 65), ("topk", 0),
                                       ("short_query_len", 0), ("filter_dropout", 1.0)])
def test_bad_settings_are_config_errors(key, value, make_feature_map, model_kwargs):
    with pytest.raises(ConfigError, match=key):
        get_model("MIRRN")(make_feature_map(), **{**model_kwargs, key: value})
