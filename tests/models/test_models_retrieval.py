"""Retrieval helpers: every fast path against its plain reference (value and gradient)."""
from __future__ import annotations

import pytest
import torch

from fuxictr_chime.errors import ConfigError
from fuxictr_chime.models.item_table import ItemHistory
from fuxictr_chime.models.retrieval import (
    SimHash, TargetAttention, bucket_codes, code_dtype, hamming_distance, hamming_distance_reference,
    longctr_sim_topk_gather, longctr_topk_gather, masked_softmax, pack_bits, popcount, recency_tiebreak, sdim_aggregate,
    sdim_aggregate_reference, sdim_hash_reference, sdim_interest, sdim_interest_reference,
    target_attention, target_attention_reference, topk_gather, topk_gather_reference)


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


def test_longctr_topk_gather_keeps_the_k_smallest_distances_and_padding_last():
    """Many ties (distances 0..3): each row keeps k valid positions whose distances are the k
    smallest of the row; a row with fewer valid positions than k keeps all of them, then padding."""
    gen = torch.Generator().manual_seed(0)
    distance = torch.randint(0, 4, (5, 12), generator=gen)
    mask = _mask([12, 9, 5, 3, 0], 12)
    positions = torch.arange(12).expand(5, 12)
    got, got_mask = longctr_topk_gather(distance, mask, 4, positions, fill=5)
    for b in range(5):
        valid = int(mask[b].sum())
        assert got_mask[b].tolist() == [True] * min(4, valid) + [False] * (4 - min(4, valid))
        kept = got[b][got_mask[b]]
        assert len(set(kept.tolist())) == len(kept) and bool(mask[b, kept].all())
        assert sorted(distance[b, kept].tolist()) == sorted(distance[b][mask[b]].tolist())[:4]


def test_longctr_sim_topk_keeps_padding_ahead_of_negative_scores():
    """LongCTR SIM's top-k of scores * mask: padding (score 0) outranks the valid -1 and -2, so the
    top-3 keeps the valid 2, then two padding slots (mask False); with positive valid scores it
    keeps the same as the valid-only top-k."""
    scores = torch.tensor([[5.0, 2.0, -1.0, -2.0, 7.0, 9.0]])
    mask = torch.tensor([[False, True, True, True, False, False]])
    positions = torch.arange(6).unsqueeze(0)
    got, got_mask = longctr_sim_topk_gather(scores, mask, 3, positions)
    assert got[0, 0] == 1 and set(got[0, 1:].tolist()) <= {0, 4, 5}
    assert got_mask.tolist() == [[True, False, False]]
    assert topk_gather(scores, mask, 3, positions)[0].tolist() == [[1, 2, 3]]  # valid ones only
    positive = scores.abs() + 1
    assert torch.equal(longctr_sim_topk_gather(positive, torch.ones_like(mask), 2, positions)[0],
                       topk_gather(positive, torch.ones_like(mask), 2, positions)[0])


def test_longctr_and_recent_tie_orders_agree_when_distances_are_distinct():
    distance = torch.stack([torch.randperm(10, generator=torch.Generator().manual_seed(s)) for s in range(3)])
    mask = _mask([10, 10, 7], 10)
    values = torch.arange(10).expand(3, 10)
    a, a_mask = longctr_topk_gather(distance, mask, 4, values, fill=11)
    b, b_mask = topk_gather(recency_tiebreak(distance), mask, 4, values)
    assert torch.equal(a, b) and torch.equal(a_mask, b_mask)


def _longctr_eta_long_interest(model, history):
    """LongCTR's ETA.topk_retrieval written out (signs by argmax over [-x R, x R], distances as the
    sum of differing bits, padding at 1 + bits, torch.topk smallest), then our ESU."""
    dense = history.dense()  # (B, L, D)
    target = history.target  # (B, D)
    rotations = model.simhash.projection.unsqueeze(0).expand(len(target), -1, -1)  # (B, D, m)

    def signs(vecs):
        rotated = torch.einsum("bld,bdh->blh", vecs, rotations).unsqueeze(-1)
        return torch.argmax(torch.cat([-rotated, rotated], dim=-1), dim=-1).float()  # (B, l, m)
    distance = torch.abs(signs(dense) - signs(target.unsqueeze(1))).sum(dim=-1)  # (B, L)
    distance = distance.masked_fill(~history.mask, 1 + model.simhash.num_bits)
    index = distance.topk(min(model.topk, distance.shape[1]), dim=1, largest=False, sorted=True)[1]
    rows = torch.gather(dense, 1, index.unsqueeze(-1).expand(-1, -1, dense.shape[-1]))
    return model.esu(target, rows, torch.gather(history.mask, 1, index))


def test_eta_longctr_tiebreak_long_interest_equals_longctr_retrieval(make_feature_map, model_kwargs,
                                                                    make_batch):
    """hash_bits 3 over 10 behaviours forces ties: ``tiebreak="longctr"`` keeps the positions LongCTR's
    formula keeps; the default (most recent first) differs on some row."""
    from fuxictr_chime.models import get_model

    torch.manual_seed(0)
    longctr = get_model("ETA")(make_feature_map(), **{**model_kwargs, "hash_bits": 3, "topk": 4,
                                                      "tiebreak": "longctr"})
    with torch.no_grad():
        for p in longctr.item_table.parameters():
            p.normal_(0.0, 0.5)
    recent = get_model("ETA")(longctr.feature_map, **{**model_kwargs, "hash_bits": 3, "topk": 4})
    recent.load_state_dict(longctr.state_dict())
    batch = make_batch(longctr.feature_map, batch_size=6, length=10, seed=3)
    with torch.no_grad():
        history = longctr.get_history(batch)
        ref = _longctr_eta_long_interest(longctr, history)
        got = longctr.interest(history.target, history, torch.zeros(6, 0))["interest"][:, longctr.item_dim:]
        other = recent.interest(history.target, history, torch.zeros(6, 0))["interest"][:, longctr.item_dim:]
    assert torch.allclose(got, ref, atol=1e-6) and (ref.abs().sum(-1) > 0).any()
    assert not torch.allclose(other, ref, atol=1e-6)


def test_eta_tiebreak_is_checked(make_feature_map, model_kwargs):
    from fuxictr_chime.models import get_model

    with pytest.raises(ConfigError, match="tiebreak must be one of recent, longctr, got 'oldest'"):
        get_model("ETA")(make_feature_map(), **{**model_kwargs, "tiebreak": "oldest"})


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


def test_simhash_resample_draws_a_fresh_projection_from_the_global_rng():
    simhash = SimHash(5, 12, seed=0)
    x = torch.randn(30, 5)
    torch.manual_seed(3)
    a = simhash(x, resample=True)
    torch.manual_seed(3)
    assert torch.equal(simhash(x, resample=True), a)
    torch.manual_seed(3)
    assert torch.equal(x @ torch.randn(5, 12) > 0, a)  # same draw as randn_like(projection)
    assert torch.equal(simhash(x), x @ simhash.projection > 0)  # buffer untouched


@pytest.mark.parametrize("hash_bits", [8, 9, 20])
def test_sdim_interest_with_wide_codes_matches_brute_force_loop(hash_bits):
    """Codes of 8, 9 and 20 bits (uint8, int16, int32 inside sdim_interest): the same sums as
    the brute-force loop; each history holds its target, so every signature collides."""
    gen = torch.Generator().manual_seed(5)
    table, index, mask, target = _history(gen, batch=4, length=8, n_items=12, dim=6)
    mask[:, 0] = True
    index[:, 0] = target  # the target's own item collides with it in every signature
    projection = torch.randn(6, 3 * hash_bits, generator=gen)
    bits = (table.detach() @ projection) > 0
    fast = sdim_interest(table, index, mask, target, bits, hash_bits)
    ref = sdim_interest_reference(table[index], mask, table[target], projection, 3, hash_bits)
    assert torch.allclose(fast, ref, atol=1e-6) and (fast.abs().sum(-1) > 0).all()


@pytest.mark.parametrize("width, dtype, top", [
    (1, torch.uint8, 1), (8, torch.uint8, 255), (9, torch.int16, 511), (15, torch.int16, 32767),
    (16, torch.int32, 65535), (31, torch.int32, 2 ** 31 - 1), (32, torch.int64, 2 ** 32 - 1),
    (62, torch.int64, 2 ** 62 - 1)])
def test_code_dtype_holds_the_largest_code_of_its_width(width, dtype, top):
    """All bits set is the largest bucket of a width: its narrow code reads back unchanged."""
    code = bucket_codes(torch.ones(1, width, dtype=torch.bool), width)  # (1, 1) int64
    assert code_dtype(width) == dtype and int(code) == top
    assert int(code.to(dtype)) == top


@pytest.mark.parametrize("num_hashes, hash_bits", [(1, 4), (2, 4), (5, 2), (3, 1)])
def test_sdim_codes_of_simhash_bits_equal_longctr_style_hashing(num_hashes, hash_bits):
    """Signature h = bits h*b .. h*b+b-1 of the (D, H*b) projection, read little-endian,
    equals LongCTR's lsh_hash on the (D, H, b) rotations (argmax of [-r, r], powers of 2)."""
    simhash = SimHash(6, num_hashes * hash_bits, seed=num_hashes)
    x = torch.randn(4, 9, 6)
    codes = bucket_codes(simhash(x), hash_bits)  # (4, 9, H)
    assert codes.shape == (4, 9, num_hashes) and int(codes.max()) < 2 ** hash_bits
    assert torch.equal(codes, sdim_hash_reference(x, simhash.projection, num_hashes, hash_bits))


@pytest.mark.parametrize("l2_norm", [True, False])
@pytest.mark.parametrize("num_hashes, hash_bits", [(6, 2), (2, 4)])
def test_sdim_interest_matches_brute_force_loop_value_and_gradient(l2_norm, num_hashes,
                                                                    hash_bits):
    gen = torch.Generator().manual_seed(11)
    table, index, mask, target = _history(gen, batch=5, length=8, n_items=10, dim=4)
    mask[1] = False  # an empty history: zero interest
    projection = torch.randn(4, num_hashes * hash_bits, generator=gen)
    weight = torch.randn(5, 4, generator=gen)
    bits = (table.detach() @ projection) > 0  # (U, H*b), once per distinct item
    fast = sdim_interest(table, index, mask, target, bits, hash_bits, l2_norm)
    (fast_grad,) = torch.autograd.grad((fast * weight).sum(), table)
    ref = sdim_interest_reference(table[index], mask, table[target], projection, num_hashes,
                                  hash_bits, l2_norm)
    (ref_grad,) = torch.autograd.grad((ref * weight).sum(), table)
    assert torch.allclose(fast, ref, atol=1e-6) and torch.allclose(fast_grad, ref_grad, atol=1e-6)
    assert (fast[1] == 0).all() and (fast.abs().sum(-1) > 0).sum() >= 3


def test_sdim_interest_reference_by_hand():
    """Two signatures of one bit: projection columns e_0 and e_1 (bit = coordinate > 0)."""
    history = torch.tensor([[[1.0, 1.0], [2.0, -1.0], [-1.0, 3.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True, True, False]])
    target = torch.tensor([[1.0, 2.0]])  # bits (1, 1)
    projection = torch.eye(2)
    # signature 0 (x > 0): behaviors 0, 1 collide -> (3, 0); signature 1 (y > 0): 0, 2 -> (0, 4)
    out = sdim_interest_reference(history, mask, target, projection, 2, 1, l2_norm=False)
    assert torch.allclose(out, torch.tensor([[1.5, 2.0]]))
    out = sdim_interest_reference(history, mask, target, projection, 2, 1, l2_norm=True)
    assert torch.allclose(out, torch.tensor([[0.5, 0.5]]))


def _sdim(make_feature_map, model_kwargs, **overrides):
    from fuxictr_chime.models import get_model

    torch.manual_seed(0)
    return get_model("SDIM")(make_feature_map(), **{**model_kwargs, **overrides})


def test_sdim_48_signatures_of_3_bits_are_144_projections(make_feature_map, model_kwargs):
    model = _sdim(make_feature_map, model_kwargs, num_hashes=48, hash_bits=3)
    assert (model.num_hashes, model.hash_bits) == (48, 3)
    assert model.simhash.projection.shape == (model.item_dim, 144)


@pytest.mark.parametrize("num_hashes, hash_bits", [(1, 4), (2, 4), (10, 3)])
def test_sdim_longctr_settings_construct(make_feature_map, model_kwargs, make_batch,
                                         num_hashes, hash_bits):
    """LongCTR's defaults (SDIM.py: num_hashes=1, hash_bits=4; 2 x 4 in its configs) and
    counts that are no multiple of hash_bits are valid signature counts."""
    model = _sdim(make_feature_map, model_kwargs, num_hashes=num_hashes, hash_bits=hash_bits)
    assert model.simhash.projection.shape[1] == num_hashes * hash_bits
    assert model(make_batch(model.feature_map))["y_pred"].shape == (6, 1)


@pytest.mark.parametrize("key, value", [("num_hashes", 0), ("hash_bits", 0), ("hash_bits", 63)])
def test_sdim_bad_hash_settings_are_config_errors(make_feature_map, model_kwargs, key, value):
    with pytest.raises(ConfigError, match=key):
        _sdim(make_feature_map, model_kwargs, **{key: value})


@pytest.mark.parametrize("l2_norm", [True, False])
def test_sdim_model_long_interest_equals_brute_force_loop(make_feature_map, model_kwargs,
                                                          make_batch, l2_norm):
    model = _sdim(make_feature_map, model_kwargs, num_hashes=6, hash_bits=2, l2_norm=l2_norm)
    with torch.no_grad():
        for p in model.item_table.parameters():
            p.normal_(0.0, 0.5)
    model.eval()
    batch = make_batch(model.feature_map, batch_size=5, length=10, seed=3)
    with torch.no_grad():
        history = model.get_history(batch)
        long = model.interest(history.target, history, torch.zeros(5, 0))["interest"]
        long = long[:, model.item_dim:]  # [short, long]
        ref = sdim_interest_reference(history.dense(), history.mask, history.target,
                                      model.simhash.projection, 6, 2, l2_norm)
    assert torch.allclose(long, ref, atol=1e-6) and (long.abs().sum(-1) > 0).any()


def test_sdim_reuse_hash_false_hashes_each_batch_afresh(make_feature_map, model_kwargs,
                                                        make_batch):
    fixed = _sdim(make_feature_map, model_kwargs, num_hashes=4, hash_bits=3).eval()
    fresh = _sdim(make_feature_map, model_kwargs, num_hashes=4, hash_bits=3,
                  reuse_hash=False).eval()
    batch = make_batch(fixed.feature_map, batch_size=6, length=12, lengths=[12] * 6, seed=5)
    with torch.no_grad():
        for p in fixed.parameters():
            p.normal_(0.0, 0.5)
        fresh.load_state_dict(fixed.state_dict())
        torch.manual_seed(1)
        assert torch.equal(fixed(batch)["y_pred"], fixed(batch)["y_pred"])
        torch.manual_seed(1)
        a = fresh(batch)["y_pred"]
        torch.manual_seed(1)
        assert torch.equal(fresh(batch)["y_pred"], a)  # reproducible under the global seed
        draws = [fresh(batch)["y_pred"] for _ in range(4)]
    assert any(not torch.allclose(d, a) for d in draws)


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
