"""LEARN's dense all-action loss equals a brute-force loop over its formula (value and gradient)."""
import math

import pytest
import torch

from fuxictr_chime.learn.losses import dense_all_action_loss


def brute_force(u, v, hist, targ, tau):
    B, T, _ = u.shape
    terms = []
    for i in range(B):
        for j in range(T):
            if not hist[i, j]:
                continue
            for k in range(T):
                if not targ[i, k]:
                    continue
                pos = (u[i, j] @ v[i, k]) / tau
                den = [pos]
                for i2 in range(B):
                    if i2 == i:
                        continue
                    for k2 in range(T):
                        if targ[i2, k2]:
                            den.append((u[i, j] @ v[i2, k2]) / tau)
                terms.append(torch.logsumexp(torch.stack(den), 0) - pos)
    return torch.stack(terms).mean()


def _batch(seed=0, B=3, T=7, D=5):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, T, D, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, T, D, generator=g, dtype=torch.float64, requires_grad=True)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 5:] = False                      # padding
    split = torch.tensor([4, 3, 5]).unsqueeze(1)
    pos = torch.arange(T).unsqueeze(0)
    positive = torch.rand(B, T, generator=g) > 0.4
    hist = valid & (pos < split)
    targ = valid & (pos >= split) & positive
    targ[2] = False                           # a user without targets (still a negative-free anchor set)
    targ[0, 6] = True
    return u, v, hist, targ


@pytest.mark.parametrize("chunk", [None, 1, 3, 100])
def test_matches_brute_force_value_and_grad(chunk):
    u, v, hist, targ = _batch()
    ref = brute_force(u, v, hist, targ, 0.1)
    gu, gv = torch.autograd.grad(ref, (u, v))
    got = dense_all_action_loss(u, v, hist, targ, tau=0.1, chunk_size=chunk)
    hu, hv = torch.autograd.grad(got, (u, v))
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)
    assert torch.allclose(hu, gu, atol=1e-10) and torch.allclose(hv, gv, atol=1e-10)


def test_single_user_has_no_negatives_so_zero_loss():
    u, v, hist, targ = _batch()
    u, v, hist, targ = u[:1], v[:1], hist[:1], targ[:1]
    assert (hist.any() and targ.any())
    loss = dense_all_action_loss(u, v, hist, targ)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    loss.backward()  # still differentiable


def test_no_pairs_gives_differentiable_zero():
    u, v, hist, _ = _batch()
    loss = dense_all_action_loss(u, v, hist, torch.zeros_like(hist))
    assert loss.item() == 0.0 and loss.requires_grad


def test_value_on_hand_example():
    # two users, one anchor and one target each, 1-d embeddings, tau=1
    u = torch.tensor([[[1.0]], [[2.0]]])
    v = torch.tensor([[[0.5]], [[-1.0]]])
    hist = torch.ones(2, 1, dtype=torch.bool)
    loss = dense_all_action_loss(u, v.clone(), hist, hist.clone(), tau=1.0)
    # user 0: pos 0.5, neg -1.0 ; user 1: pos -2.0, neg 1.0
    l0 = math.log(math.exp(0.5) + math.exp(-1.0)) - 0.5
    l1 = math.log(math.exp(-2.0) + math.exp(1.0)) + 2.0
    assert loss.item() == pytest.approx((l0 + l1) / 2)
