"""Retrieval helpers: every fast path against its plain reference (value and gradient)."""
from __future__ import annotations

import pytest
import torch

from fuxictr_chime.errors import ConfigError
from fuxictr_chime.models.item_table import ItemHistory
from fuxictr_chime.models.retrieval import (
    SimHash, TargetAttention, bucket_codes, hamming_distance, hamming_distance_reference,
    masked_softmax, pack_bits, popcount, recency_tiebreak, sdim_aggregate,
    sdim_aggregate_reference, target_attention, target_attention_reference, topk_gather,
    topk_gather_reference)


def _mask(lengths, length):
    lengths = torch.as_tensor(lengths)
    return torch.arange(length).unsqueeze(0) >= (length - lengths).unsqueeze(1)  # (B, L)


def test_masked_softmax_sums_to_one_on_valid_and_zero_on_empty_rows():
    scores = torch.randn(3, 5, requires_grad=True)
    mask = _mask([5, 2, 0], 5)
    weights = masked_softmax(scores, mask)
    assert torch.allclose(weights.sum(-1), torch.tensor([1.0, 1.0, 0.0]))
    assert (weights[~mask] == 0).all()
    expected = torch.softmax(scores[1, 3:], 0)
    assert torch.allclose(weights[1, 3:], expected)
    weights.sum().backward()
    assert torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("k", [1, 3, 7, 20])
def test_topk_gather_matches_reference(k):
    gen = torch.Generator().manual_seed(k)
    scores = torch.randn(5, 9, generator=gen)
    mask = _mask([9, 4, 1, 0, 6], 9)
    values = torch.randn(5, 9, 3, generator=gen)
    got, got_mask = topk_gather(scores, mask, k, values)
    ref, ref_mask = topk_gather_reference(scores, mask, k, values)
    assert got.shape == ref.shape == (5, min(k, 9), 3)
    assert torch.equal(got_mask, ref_mask)
    assert torch.equal(got * got_mask.unsqueeze(-1), ref)
    # index values (B, L) gather the same way
    idx, _ = topk_gather(scores, mask, k, torch.arange(9).expand(5, 9))
    assert torch.equal(values.gather(1, idx.unsqueeze(-1).expand(-1, -1, 3)), got)


def test_topk_gather_passes_gradient_to_values_only():
    scores = torch.randn(2, 6, requires_grad=True)
    values = torch.randn(2, 6, 4, requires_grad=True)
    out, out_mask = topk_gather(scores, _mask([6, 3], 6), 2, values)
    out.sum().backward()
    assert scores.grad is None
    assert values.grad.sum() == pytest.approx(2 * 2 * 4)  # 2 rows x 2 picks x 4 dims


def test_recency_tiebreak_prefers_small_distance_then_recent_and_ignores_left_padding():
    distance = torch.tensor([[3, 1, 1, 2, 1]])
    order = recency_tiebreak(distance).argsort(descending=True)[0].tolist()
    assert order == [4, 2, 1, 3, 0]
    padded = torch.cat([torch.full((1, 4), 9), distance], 1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool)], 1)
    values = torch.arange(9).unsqueeze(0)
    a, _ = topk_gather(recency_tiebreak(distance), torch.ones(1, 5, dtype=torch.bool), 3,
                       torch.arange(5).unsqueeze(0))
    b, _ = topk_gather(recency_tiebreak(padded), mask, 3, values)
    assert (b - 4).tolist() == a.tolist() == [[4, 2, 1]]


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_target_attention_matches_reference_value_and_gradient(heads):
    gen = torch.Generator().manual_seed(heads)
    q = torch.randn(4, 8, generator=gen, requires_grad=True)
    k = torch.randn(4, 6, 8, generator=gen, requires_grad=True)
    v = torch.randn(4, 6, 8, generator=gen, requires_grad=True)
    mask = _mask([6, 3, 1, 0], 6)
    weight = torch.randn(4, 8, generator=gen)
    out = target_attention(q, k, v, mask, heads)
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v))
    ref = target_attention_reference(q, k, v, mask, heads)
    ref_grads = torch.autograd.grad((ref * weight).sum(), (q, k, v))
    assert torch.allclose(out, ref, atol=1e-6)
    assert (out[3] == 0).all()  # empty history -> zero interest
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-6)


def test_target_attention_module_equals_fuxictr_multihead_target_attention():
    from fuxictr.pytorch.layers import MultiHeadTargetAttention

    torch.manual_seed(0)
    ours = TargetAttention(6, attention_dim=8, num_heads=2)
    theirs = MultiHeadTargetAttention(6, attention_dim=8, num_heads=2)
    theirs.load_state_dict(ours.state_dict())
    target, hist = torch.randn(3, 6), torch.randn(3, 5, 6)
    mask = _mask([5, 2, 1], 5)
    assert torch.allclose(ours(target, hist, mask), theirs(target, hist, mask), atol=1e-6)


def test_target_attention_rejects_indivisible_heads():
    with pytest.raises(ConfigError, match="num_heads"):
        TargetAttention(6, attention_dim=10, num_heads=3)


def test_simhash_is_seeded_buffer_independent_of_global_rng():
    torch.manual_seed(1)
    a = SimHash(5, 16, seed=7)
    torch.manual_seed(2)
    b = SimHash(5, 16, seed=7)
    assert torch.equal(a.projection, b.projection)
    assert not torch.equal(a.projection, SimHash(5, 16, seed=8).projection)
    assert "projection" in a.state_dict() and not list(a.parameters())
    x = torch.randn(10, 5)
    assert torch.equal(a(x), (x @ a.projection) > 0)


@pytest.mark.parametrize("bits", [1, 3, 32, 63, 64])
def test_packed_hamming_distance_matches_bitwise_reference(bits):
    gen = torch.Generator().manual_seed(bits)
    a = torch.rand(7, 5, bits, generator=gen) > 0.5
    b = torch.rand(7, 1, bits, generator=gen) > 0.5
    got = hamming_distance(pack_bits(a), pack_bits(b))  # broadcast (7, 5)
    assert torch.equal(got, hamming_distance_reference(a, b))


def test_popcount_of_extremes():
    x = torch.tensor([0, 1, -1, 2 ** 62, -(2 ** 63), 0x5555555555555555])
    assert popcount(x).tolist() == [0, 1, 64, 1, 1, 32]
    with pytest.raises(ConfigError):
        pack_bits(torch.ones(2, 65, dtype=torch.bool))


def test_bucket_codes_read_groups_as_little_endian_numbers():
    bits = torch.tensor([[1, 0, 0, 1, 1, 0, 0, 0, 1]], dtype=torch.bool)
    assert bucket_codes(bits, 3).tolist() == [[1, 3, 4]]


def _history(gen, batch=4, length=7, n_items=9, dim=5):
    table = torch.randn(n_items, dim, generator=gen)
    table[0] = 0.0
    index = torch.randint(1, n_items, (batch, length), generator=gen)
    mask = _mask(torch.randint(0, length + 1, (batch,), generator=gen), length)
    index = index * mask
    target = torch.randint(1, n_items, (batch,), generator=gen)
    return table.requires_grad_(), index, mask, target


@pytest.mark.parametrize("l2_norm", [True, False])
def test_sdim_aggregate_matches_dense_reference_value_and_gradient(l2_norm):
    gen = torch.Generator().manual_seed(3)
    table, index, mask, target = _history(gen)
    codes = torch.randint(0, 3, (table.shape[0], 4), generator=gen)  # few buckets: collisions
    weight = torch.randn(4, table.shape[1], generator=gen)
    out = sdim_aggregate(table, index, mask, codes, target, l2_norm)
    (grad,) = torch.autograd.grad((out * weight).sum(), table)
    ref = sdim_aggregate_reference(table[index], mask, codes[index], codes[target], l2_norm)
    (ref_grad,) = torch.autograd.grad((ref * weight).sum(), table)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(grad, ref_grad, atol=1e-6)


def test_sdim_aggregate_by_hand():
    table = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    index = torch.tensor([[1, 2, 3]])
    mask = torch.tensor([[True, True, True]])
    codes = torch.tensor([[0, 0], [5, 1], [5, 2], [6, 1]])  # 2 groups
    target = torch.tensor([1])  # group 0 code 5: items 1, 2; group 1 code 1: items 1, 3
    out = sdim_aggregate(table, index, mask, codes, target, l2_norm=False)
    assert torch.allclose(out, torch.tensor([[(4 + 3) / 2, (4 + 6) / 2]]))
    empty = sdim_aggregate(table, index, torch.zeros_like(mask), codes, target)
    assert (empty == 0).all()


@pytest.mark.parametrize("n_items", [9, 200])  # U <= 10 L: matmul path; U > 10 L: gather path
@pytest.mark.parametrize("chunk", [40, 1 << 22])
def test_item_history_dot_and_weighted_sum_equal_dense_reference(n_items, chunk):
    gen = torch.Generator().manual_seed(5)
    table, index, mask, target = _history(gen, batch=9, n_items=n_items)
    history = ItemHistory(table, index, mask, target)
    assert history._few_distinct() is (n_items <= 10 * 7)
    query = torch.randn(9, table.shape[1], generator=gen, requires_grad=True)
    weights = torch.randn(9, 7, generator=gen, requires_grad=True)
    up1, up2 = torch.randn(9, 7, generator=gen), torch.randn(9, table.shape[1], generator=gen)

    def run(dot, wsum):
        loss = (dot(query) * up1).sum() + (wsum(weights) * up2).sum()
        return (dot(query), wsum(weights), *torch.autograd.grad(loss, (query, weights, table)))
    fast = run(lambda q: history.dot(q, chunk), lambda w: history.weighted_sum(w, chunk))
    ref = run(lambda q: torch.einsum("bld,bd->bl", history.dense(), q),
              lambda w: torch.einsum("bl,bld->bd", w, history.dense()))
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("n_items", [9, 200])
def test_item_history_attention_pool_equals_dense_reference(n_items):
    gen = torch.Generator().manual_seed(6)
    table, index, mask, target = _history(gen, batch=9, n_items=n_items)
    mask[0] = False  # one empty history
    history = ItemHistory(table, index, mask, target)
    query = torch.randn(9, table.shape[1], generator=gen, requires_grad=True)
    up1, up2 = torch.randn(9, 7, generator=gen), torch.randn(9, table.shape[1], generator=gen)

    def run(scores, pooled):
        loss = (scores * up1).sum() + (pooled * up2).sum()
        return (scores, pooled, *torch.autograd.grad(loss, (query, table)))
    fast = run(*history.attention_pool(query, chunk_elements=40))
    seq = history.dense()
    scores = torch.einsum("bld,bd->bl", seq, query)
    ref = run(scores, torch.einsum("bl,bld->bd", masked_softmax(scores, mask), seq))
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b, atol=1e-5)
    assert (fast[1][0] == 0).all()


@pytest.mark.parametrize("num_items", [None, 12, 1000])
def test_unique_inverse_paths_agree_with_torch_unique(num_items):
    from fuxictr_chime.models.item_table import unique_inverse

    index = torch.randint(0, 12, (5, 7), generator=torch.Generator().manual_seed(0))
    values, inverse = unique_inverse(index, num_items)
    ref_values, ref_inverse = torch.unique(index, sorted=True, return_inverse=True)
    assert torch.equal(values, ref_values) and torch.equal(inverse, ref_inverse)
