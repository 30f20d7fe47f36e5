"""ICM residual vector quantizer (paper 4.4, spec 3.3): maths of codes, estimators and EMA codebooks."""
import math

import pytest
import torch

from fuxictr_chime.compressor.quantizer import CodeStats, ResidualVQ, rotation_trick
from fuxictr_chime.errors import ConfigError, DataError


def _clustered(n, dim, centers, noise, seed):
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(len(centers), (n,), generator=g)
    return centers[which] + noise * torch.randn(n, dim, generator=g)


def _centers(k, dim, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(k, dim, generator=g)


# ---------------------------------------------------------------------------- rotation trick


def _explicit_rotation(e, q):
    """lambda R for one row pair, R built as a matrix from its definition."""
    e_hat, q_hat = e / e.norm(), q / q.norm()
    r = (e_hat + q_hat) / (e_hat + q_hat).norm()
    eye = torch.eye(e.shape[0], dtype=e.dtype)
    R = eye - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, e_hat)
    return (q.norm() / e.norm()) * R


def test_rotation_trick_value_is_code_and_gradient_is_lambda_RT_g():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(6, 4, generator=g, dtype=torch.float64)
    up = torch.randn(6, 4, generator=g, dtype=torch.float64)
    out = rotation_trick(e, q)
    torch.testing.assert_close(out, q)
    (grad,) = torch.autograd.grad(out, e, up)
    for i in range(6):
        lam_R = _explicit_rotation(e[i].detach(), q[i])
        torch.testing.assert_close(lam_R @ e[i].detach(), q[i])   # the rotation maps e onto q
        torch.testing.assert_close(grad[i], lam_R.T @ up[i])


def test_rotation_trick_is_identity_when_code_equals_input_and_finite_at_zero():
    e = torch.tensor([[1.0, 2.0, -1.0]], requires_grad=True)
    up = torch.tensor([[0.3, -0.7, 2.0]])
    (grad,) = torch.autograd.grad(rotation_trick(e, e.detach().clone()), e, up)
    torch.testing.assert_close(grad, up)
    zero = torch.zeros(1, 3, requires_grad=True)
    out = rotation_trick(zero, torch.tensor([[1.0, 0.0, 0.0]]))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(zero.grad).all()


# ---------------------------------------------------------------------------- codes and decode


def _trained_rvq(seed=0, steps=3, **kw):
    rvq = ResidualVQ(8, (6, 4, 4), seed=seed, **kw)
    centers = _centers(6, 8, 3.0, seed=1)
    for step in range(steps):
        rvq(_clustered(200, 8, centers, 0.5, seed=10 + step))
    return rvq, centers


def test_codes_are_nearest_codes_brute_force():
    rvq, centers = _trained_rvq()
    rvq.eval()
    x = _clustered(30, 8, centers, 0.5, seed=99)
    out = rvq(x)
    for i in range(x.shape[0]):
        residual = x[i]
        for m in range(rvq.num_layers):
            book = rvq.codebook(m)
            dists = [float(((residual - book[k]) ** 2).sum()) for k in range(book.shape[0])]
            chosen = int(out.codes[i, m])
            assert dists[chosen] == pytest.approx(min(dists), rel=1e-5, abs=1e-5)
            residual = residual - book[chosen]


def test_decode_reproduces_quantized_and_commit_loss_formula():
    rvq, centers = _trained_rvq()
    rvq.eval()
    x = _clustered(24, 8, centers, 0.5, seed=5).reshape(2, 12, 8)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 7:] = False
    out = rvq(x, mask, return_residuals=True)
    torch.testing.assert_close(out.quantized, rvq.decode(out.codes))
    assert (out.codes[1, 7:] == -1).all() and (out.codes[mask] >= 0).all()
    assert not out.quantized[1, 7:].any()
    # commitment: mean over valid positions of sum_m |b^(m) - c^(m)|^2, b^(m) from the residuals
    terms = []
    for b, t in mask.nonzero().tolist():
        terms.append(sum(float(((out.residuals[b, t, m] - rvq.codebook(m)[out.codes[b, t, m]]) ** 2).sum())
                         for m in range(rvq.num_layers)))
    assert out.commit_loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # the residual chain: b^(m+1) = b^(m) - c^(m), b^(1) = x
    torch.testing.assert_close(out.residuals[..., 0, :][mask], x[mask])
    torch.testing.assert_close(out.residuals[..., 1, :][mask],
                               (x - rvq.codebook(0)[out.codes[..., 0].clamp_min(0)])[mask])


# ---------------------------------------------------------------------------- gradients


def test_straight_through_gradient_is_identity_per_layer():
    g = torch.Generator().manual_seed(0)
    up = torch.randn(5, 8, generator=g)
    for sizes in [(6,), (6, 4, 4)]:
        rvq = ResidualVQ(8, sizes, rotation_trick=False, seed=0)
        rvq(torch.randn(50, 8, generator=g))         # initialize
        x = torch.randn(5, 8, generator=g, requires_grad=True)
        (grad,) = torch.autograd.grad(rvq(x).quantized, x, up)
        # each layer's estimator b + sg(c - b) has an identity Jacobian; codebooks are constants
        torch.testing.assert_close(grad, len(sizes) * up)


def test_rotation_trick_gradient_in_quantizer_single_layer():
    g = torch.Generator().manual_seed(1)
    rvq = ResidualVQ(4, (5,), seed=0).double()
    rvq(torch.randn(40, 4, generator=g, dtype=torch.float64))
    rvq.eval()
    x = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(3, 4, generator=g, dtype=torch.float64)
    out = rvq(x)
    (grad,) = torch.autograd.grad(out.quantized, x, up)
    for i in range(3):
        lam_R = _explicit_rotation(x[i].detach().double(), rvq.decode(out.codes[i]).double())
        torch.testing.assert_close(grad[i].double(), lam_R.T @ up[i], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- EMA codebooks


def _manual_rvq(codebook, cluster_size, decay=0.5, eps=1e-5, threshold=0.0):
    k, d = codebook.shape
    rvq = ResidualVQ(d, (k,), decay=decay, eps=eps, dead_code_threshold=threshold, seed=0)
    rvq.codebook_0.copy_(codebook)
    rvq.cluster_size_0.copy_(cluster_size)
    rvq.embed_sum_0.copy_(codebook * cluster_size.unsqueeze(1))
    rvq.initialized.fill_(True)
    return rvq


def test_ema_update_equals_hand_computation():
    rvq = _manual_rvq(torch.tensor([[0.0, 0.0], [10.0, 0.0]]), torch.tensor([2.0, 2.0]), decay=0.5, eps=0.1)
    x = torch.tensor([[1.0, 1.0], [-1.0, 3.0], [9.0, 1.0]])   # codes 0, 0, 1
    out = rvq(x)
    assert out.codes[:, 0].tolist() == [0, 0, 1]
    # counts (2, 1), sums ((0, 4), (9, 1))
    size = torch.tensor([0.5 * 2 + 0.5 * 2, 0.5 * 2 + 0.5 * 1])          # (2.0, 1.5)
    embed_sum = torch.tensor([[0.5 * 0 + 0.5 * 0, 0.5 * 0 + 0.5 * 4],
                              [0.5 * 20 + 0.5 * 9, 0.5 * 0 + 0.5 * 1]])  # ((0, 2), (14.5, 0.5))
    n = 3.5
    smoothed = (size + 0.1) / (n + 2 * 0.1) * n                          # Laplace smoothing
    torch.testing.assert_close(rvq.cluster_size_0, size)
    torch.testing.assert_close(rvq.embed_sum_0, embed_sum)
    torch.testing.assert_close(rvq.codebook_0, embed_sum / smoothed.unsqueeze(1))
    # the forward used the codes before the update
    torch.testing.assert_close(out.quantized, torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0]]))


def test_eval_mode_never_touches_codebooks():
    rvq, centers = _trained_rvq()
    before = {k: v.clone() for k, v in rvq.state_dict().items() if k != "_extra_state"}
    rvq.eval()
    rvq(_clustered(100, 8, centers, 3.0, seed=7))
    for k, v in before.items():
        assert torch.equal(rvq.state_dict()[k], v), k


def test_kmeans_init_is_data_derived():
    centers = torch.tensor([[20.0, 0.0], [-20.0, 0.0], [0.0, 20.0], [0.0, -20.0]])
    x = _clustered(400, 2, centers, 0.1, seed=3)
    rvq = ResidualVQ(2, (4,), seed=0)
    assert not bool(rvq.initialized)
    rvq(x)
    assert bool(rvq.initialized)
    # each code sits on its own cluster centre (k-means on the batch), not at its random init
    nearest_center = torch.cdist(rvq.codebook_0, centers).argmin(1)
    assert sorted(nearest_center.tolist()) == [0, 1, 2, 3]
    assert torch.cdist(rvq.codebook_0, centers).min(1).values.max() < 0.1


def test_init_with_fewer_vectors_than_codes_uses_data_rows():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [-2.0, 0.5]])
    rvq = ResidualVQ(2, (8, 4), seed=0)
    rvq(x)
    # after k-means (sampling with replacement) and dead-code replacement every first-layer
    # code is one of the 3 data rows (up to the Laplace smoothing of the EMA division)
    dist_to_data = torch.cdist(rvq.codebook_0, x).min(1).values
    assert dist_to_data.max() < 1e-3


def test_dead_codes_are_replaced_by_batch_residuals():
    book = torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [100.0, -100.0]])
    rvq = _manual_rvq(book, torch.tensor([5.0, 1.5, 5.0, 5.0]), decay=0.5, threshold=1.0)
    x = 0.1 * torch.randn(20, 2, generator=torch.Generator().manual_seed(0))   # all near code 0
    rvq(x)
    # code 1: 0.5 * 1.5 = 0.75 < 1 -> replaced by a row of x, statistics reset to the threshold
    assert torch.cdist(rvq.codebook_0[1:2], x).min() < 1e-6
    assert rvq.cluster_size_0[1].item() == 1.0
    torch.testing.assert_close(rvq.embed_sum_0[1], rvq.codebook_0[1])
    # codes 2, 3: 2.5 >= 1, kept (EMA division of unchanged sums)
    assert torch.cdist(rvq.codebook_0[2:], book[2:]).diagonal().max() < 1.0


def test_padding_never_touches_codebooks_or_valid_outputs():
    centers = _centers(5, 6, 3.0, seed=2)
    a = ResidualVQ(6, (5, 3), seed=7)
    b = ResidualVQ(6, (5, 3), seed=7)
    for step in range(4):
        x = _clustered(2 * 15, 6, centers, 0.5, seed=step).reshape(2, 15, 6)
        mask = torch.ones(2, 15, dtype=torch.bool)
        mask[0, 10:] = False
        mask[1, 4:6] = False
        noisy = x.clone()
        noisy[~mask] = float("nan")
        out_a = a(noisy, mask)
        out_b = b(x[mask].unsqueeze(0))                      # only the valid rows
        torch.testing.assert_close(out_a.quantized[mask], out_b.quantized[0])
        assert torch.equal(out_a.codes[mask], out_b.codes[0])
        torch.testing.assert_close(out_a.commit_loss, out_b.commit_loss)
        assert not out_a.quantized[~mask].any() and (out_a.codes[~mask] == -1).all()
    for key, value in a.state_dict().items():
        if key != "_extra_state":
            torch.testing.assert_close(value, b.state_dict()[key])


def test_training_on_clustered_data_keeps_codebooks_alive_and_is_deterministic():
    def run():
        g = torch.Generator().manual_seed(0)
        centers = 4.0 * torch.randn(32, 16, generator=g)
        rvq = ResidualVQ(16, (32, 16, 16), decay=0.9, seed=3)
        for step in range(12):
            which = torch.randint(32, (512,), generator=g)
            rvq(centers[which] + 0.7 * torch.randn(512, 16, generator=g))
        rvq.eval()
        which = torch.randint(32, (2048,), generator=g)
        out = rvq(centers[which] + 0.7 * torch.randn(2048, 16, generator=g))
        return rvq, rvq.code_stats(out.codes)

    rvq1, stats1 = run()
    rvq2, stats2 = run()
    assert min(stats1.hit_ratio) >= 0.9, stats1
    assert stats1.perplexity[0] > 0.8 * 32, stats1
    assert stats1 == stats2
    for m in range(3):
        assert torch.equal(rvq1.codebook(m), rvq2.codebook(m))


def test_state_dict_round_trip_replays_updates():
    rvq, centers = _trained_rvq(steps=2)
    clone = ResidualVQ(8, (6, 4, 4), seed=123)
    clone.load_state_dict(rvq.state_dict())
    x = _clustered(64, 8, centers, 2.0, seed=42)
    assert torch.equal(rvq(x).codes, clone(x).codes)
    for m in range(3):
        assert torch.equal(rvq.codebook(m), clone.codebook(m))


# ---------------------------------------------------------------------------- histograms and stats


def test_histogram_hand_example_and_block_sums():
    rvq = ResidualVQ(2, (3, 2))
    codes = torch.tensor([
        [[0, 1], [2, 1], [0, 0], [-1, -1]],
        [[-1, -1], [-1, -1], [-1, -1], [-1, -1]],   # no valid position -> zeros
    ])
    counts = rvq.histogram(codes, normalize=False)
    assert counts.tolist() == [[2, 0, 1, 1, 2], [0, 0, 0, 0, 0]]
    freq = rvq.histogram(codes)
    torch.testing.assert_close(freq[0], torch.tensor([2 / 3, 0, 1 / 3, 1 / 3, 2 / 3]))
    assert not freq[1].any()
    mask = torch.tensor([[True, False, True, True], [True] * 4])
    assert rvq.histogram(codes, mask, normalize=False)[0].tolist() == [2, 0, 0, 1, 1]


def test_histogram_blocks_sum_to_one_and_counts_to_valid_positions():
    rvq, centers = _trained_rvq()
    rvq.eval()
    x = _clustered(5 * 20, 8, centers, 1.0, seed=8).reshape(5, 20, 8)
    mask = torch.arange(20).unsqueeze(0) < torch.tensor([20, 13, 1, 0, 7]).unsqueeze(1)  # (5, 20)
    codes = rvq(x, mask).codes
    freq = rvq.histogram(codes, mask)
    counts = rvq.histogram(codes, mask, normalize=False)
    assert freq.shape == (5, 14)
    for start, k in [(0, 6), (6, 4), (10, 4)]:
        block_freq, block_counts = freq[:, start:start + k].sum(1), counts[:, start:start + k].sum(1)
        torch.testing.assert_close(block_freq, torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0]))
        assert block_counts.tolist() == mask.sum(1).float().tolist()


def test_code_stats_hand_examples():
    rvq = ResidualVQ(2, (4, 2))
    uniform = torch.tensor([[0, 0], [1, 1], [2, 0], [3, 1]])
    stats = rvq.code_stats(uniform)
    assert stats.hit_ratio == (1.0, 1.0)
    assert stats.perplexity == pytest.approx((4.0, 2.0))
    skewed = torch.tensor([[0, 1], [0, 1], [0, 1], [1, 1], [-1, -1]])
    stats = rvq.code_stats(skewed)
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert stats.hit_ratio == (0.5, 0.5)
    assert stats.perplexity == pytest.approx((2 ** h, 1.0))
    masked = rvq.code_stats(skewed, mask=torch.tensor([False, False, False, True, True]))
    assert masked.hit_ratio == (0.25, 0.5) and masked.perplexity == pytest.approx((1.0, 1.0))
    empty = rvq.code_stats(torch.full((3, 2), -1))
    assert empty.hit_ratio == (0.0, 0.0) and all(math.isnan(p) for p in empty.perplexity)
    assert isinstance(stats, CodeStats)
    assert stats.as_dict() == {"hit_ratio_1": 0.5, "perplexity_1": pytest.approx(2 ** h),
                               "hit_ratio_2": 0.5, "perplexity_2": pytest.approx(1.0)}


# ---------------------------------------------------------------------------- bad input


def test_bad_config_and_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="codebook_sizes"):
        ResidualVQ(4, ())
    with pytest.raises(ConfigError, match="decay"):
        ResidualVQ(4, decay=1.0)
    with pytest.raises(ConfigError, match="dead_code_threshold"):
        ResidualVQ(4, dead_code_threshold=-1)
    rvq = ResidualVQ(4, (3, 2))
    with pytest.raises(DataError, match=r"\(\.\.\., 4\)"):
        rvq(torch.zeros(2, 5))
    with pytest.raises(DataError, match="mask"):
        rvq(torch.zeros(2, 5, 4), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(DataError, match="codebook 2"):
        rvq.decode(torch.tensor([[0, 2]]))
    with pytest.raises(DataError, match="codes must be"):
        rvq.histogram(torch.zeros(2, 3, 3, dtype=torch.long))


# ---------------------------------------------------------------------------- torch.distributed


def _ddp_worker(rank, world, init_file, result_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        centers = _centers(6, 4, 3.0, seed=0)
        rvq = ResidualVQ(4, (6, 3), decay=0.8, dead_code_threshold=0.0, seed=rank)  # seeds differ on purpose
        sizes = (40, 25)                                     # ranks see different batches
        for step in range(3):
            rvq(_clustered(sizes[rank], 4, centers, 0.5, seed=100 * rank + step))
        torch.save({k: v for k, v in rvq.state_dict().items() if k != "_extra_state"},
                   f"{result_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_ranks_hold_identical_codebooks(tmp_path):
    import torch.multiprocessing as mp

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    s0, s1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for key in s0:
        assert torch.equal(s0[key], s1[key]), key
    # counts are all-reduced: with no dead-code resets the EMA cluster sizes sum to 40 + 25 per step
    for m in range(2):
        assert s0[f"cluster_size_{m}"].sum().item() == pytest.approx(65.0, rel=1e-5)
