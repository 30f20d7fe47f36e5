"""CHIME losses (paper eq. 1, spec 3.4) equal brute-force loops written from the formula."""
import pytest
import torch
import torch.nn.functional as F

from fuxictr_chime.compressor.losses import holistic_loss, immediate_loss
from fuxictr_chime.errors import ConfigError, DataError


# ---------------------------------------------------------------------------- references


def holistic_reference(z, p, labels, tau):
    """Loops over users u and anchors t: candidates = valid items of u after t plus all valid
    items of the other users; one term per (anchor, positive) pair; mean over the pairs."""
    B, T, _ = z.shape
    terms = []
    for u in range(B):
        for t in range(T):
            if labels[u, t] == 0:
                continue
            cands, positives = [], []
            for v in range(B):
                for s in range(T):
                    if labels[v, s] == 0:
                        continue
                    if v != u:
                        cands.append(p[v, s])
                    elif s > t:
                        cands.append(p[v, s])
                        if labels[v, s] == 1:
                            positives.append(p[v, s])
            if not positives:
                continue
            lse = torch.logsumexp(torch.stack([z[u, t] @ c / tau for c in cands]), 0)
            for pos in positives:
                terms.append(lse - z[u, t] @ pos / tau)
    if not terms:
        return 0.0 * z.sum()
    return torch.stack(terms).mean()


def immediate_reference(z, p, labels, tau, bias):
    B, T, _ = z.shape
    terms = []
    for u in range(B):
        for t in range(T - 1):
            if labels[u, t] == 0 or labels[u, t + 1] == 0:
                continue
            s = z[u, t] @ p[u, t + 1] / tau
            terms.append(F.softplus(-labels[u, t + 1] * (s - bias)))
    return torch.stack(terms).mean()


# ---------------------------------------------------------------------------- fixtures


def _labels_many_cases():
    """4 users, T = 7: right padding, a hole in the middle, a user without any positive,
    a user with a single valid position."""
    return torch.tensor([
        [1, -1, 1, 1, -1, 1, 0],     # right padding
        [-1, 1, 0, -1, 1, -1, 1],    # padding in the middle
        [-1, -1, -1, -1, 0, 0, 0],   # no positive at all
        [1, 0, 0, 0, 0, 0, 0],       # a single valid position
    ])


def _tensors(labels, D=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T = labels.shape
    z = torch.randn(B, T, D, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(B, T, D, generator=g, dtype=torch.float64, requires_grad=True)
    return z, p


def _value_and_grads(loss, inputs):
    return (loss.detach(), *torch.autograd.grad(loss, inputs))


# number of anchors for _labels_many_cases: user 0 -> 5 (t=0..4), user 1 -> 5, users 2, 3 -> 0
N_ANCHORS = 10


@pytest.mark.parametrize("chunk", [None, 1, 3, 7, N_ANCHORS + 5])
def test_holistic_matches_brute_force(chunk):
    labels = _labels_many_cases()
    z, p = _tensors(labels)
    ref = _value_and_grads(holistic_reference(z, p, labels, 0.2), (z, p))
    got = _value_and_grads(holistic_loss(z, p, labels, tau=0.2, chunk_size=chunk), (z, p))
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [None, 1, 3, 7, 50])
def test_holistic_single_user_batch(chunk):
    labels = torch.tensor([[1, -1, 1, -1, 1, 1, 0, 0]])
    z, p = _tensors(labels, seed=1)
    ref = _value_and_grads(holistic_reference(z, p, labels, 0.5), (z, p))
    got = _value_and_grads(holistic_loss(z, p, labels, tau=0.5, chunk_size=chunk), (z, p))
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_holistic_chunked_float32_agrees_with_full():
    g = torch.Generator().manual_seed(3)
    labels = torch.where(torch.rand(3, 40, generator=g) < 0.5, 1, -1)
    labels[1, 30:] = 0
    z = F.normalize(torch.randn(3, 40, 8, generator=g), dim=-1).requires_grad_()
    p = F.normalize(torch.randn(3, 40, 8, generator=g), dim=-1).requires_grad_()
    full = _value_and_grads(holistic_loss(z, p, labels, chunk_size=None), (z, p))
    chunked = _value_and_grads(holistic_loss(z, p, labels, chunk_size=16), (z, p))
    for f, c in zip(full, chunked):
        torch.testing.assert_close(c, f, rtol=1e-5, atol=1e-6)


def test_holistic_hand_example():
    # one user, T = 2, D = 1, tau = 1: the only anchor is t = 0 with candidate = positive = p_1,
    # plus another user's single item -> loss = log(e^{z0 p1} + e^{z0 q}) - z0 p1
    z = torch.tensor([[[2.0], [0.0]], [[0.0], [0.0]]])
    p = torch.tensor([[[9.0], [0.5]], [[-1.0], [0.0]]])
    labels = torch.tensor([[1, 1], [-1, 0]])
    expected = torch.log(torch.exp(torch.tensor(1.0)) + torch.exp(torch.tensor(-2.0))) - 1.0
    for chunk in (None, 1):
        got = holistic_loss(z, p, labels, tau=1.0, chunk_size=chunk)
        torch.testing.assert_close(got, expected)


def test_holistic_past_items_are_never_candidates():
    # user 0's anchors are t = 0, 1, 2; its item at s = 0 is past-or-own for all of them, and
    # user 1 has no anchor (no later positive), so p[0, 0] is nobody's candidate: changing it
    # leaves the loss unchanged, while changing p[0, 1] (a candidate of anchor t = 0) changes it.
    labels = torch.tensor([[-1, -1, -1, 1], [1, -1, 0, 0]])
    z, p = _tensors(labels, seed=4)
    base = holistic_loss(z, p, labels).detach()
    for chunk in (None, 1):
        p_past = p.detach().clone()
        p_past[0, 0] += 10.0
        torch.testing.assert_close(holistic_loss(z, p_past, labels, chunk_size=chunk).detach(), base)
        p_future = p.detach().clone()
        p_future[0, 1] = 3.0 * z[0, 0].detach()  # a high-scoring candidate for anchor t = 0
        assert abs(holistic_loss(z, p_future, labels, chunk_size=chunk).item() - base.item()) > 1e-3


def test_holistic_without_pairs_is_differentiable_zero():
    labels = torch.tensor([[1, -1, -1, 0], [1, 0, 0, 0]])   # no positive after any position
    z, p = _tensors(labels)
    for chunk in (None, 2):
        loss = holistic_loss(z, p, labels, chunk_size=chunk)
        assert loss.item() == 0.0 and loss.requires_grad
        gz, gp = torch.autograd.grad(loss, (z, p))
        assert not gz.any() and not gp.any()


@pytest.mark.parametrize("loss_fn", [
    lambda z, p, y: holistic_loss(z, p, y, chunk_size=3),
    lambda z, p, y: holistic_loss(z, p, y, chunk_size=None),
    lambda z, p, y: immediate_loss(z, p, y, bias=0.1),
])
def test_padding_content_is_ignored(loss_fn):
    labels = _labels_many_cases()
    z, p = _tensors(labels)
    pad = labels == 0
    z2, p2 = z.detach().clone(), p.detach().clone()
    z2[pad], p2[pad] = float("nan"), float("nan")
    z2.requires_grad_(), p2.requires_grad_()
    a = _value_and_grads(loss_fn(z, p, labels), (z, p))
    b = _value_and_grads(loss_fn(z2, p2, labels), (z2, p2))
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x)
    assert not a[1][pad].any() and not a[2][pad].any()


def test_holistic_bfloat16_inputs_scored_in_float32():
    labels = _labels_many_cases()
    z, p = _tensors(labels)
    zb = z.detach().to(torch.bfloat16).requires_grad_()
    pb = p.detach().to(torch.bfloat16)
    loss = holistic_loss(zb, pb, labels, chunk_size=4)
    assert loss.dtype == torch.float32
    ref = holistic_reference(zb.detach().double(), pb.double(), labels, 0.2)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert zb.grad.dtype == torch.bfloat16


# ---------------------------------------------------------------------------- immediate


@pytest.mark.parametrize("bias", [0.0, 0.3, "tensor"])
def test_immediate_matches_brute_force(bias):
    labels = _labels_many_cases()
    z, p = _tensors(labels, seed=2)
    if bias == "tensor":
        b = torch.tensor(-0.4, dtype=torch.float64, requires_grad=True)
        inputs = (z, p, b)
    else:
        b, inputs = bias, (z, p)
    ref = _value_and_grads(immediate_reference(z, p, labels, 0.07, b), inputs)
    got = _value_and_grads(immediate_loss(z, p, labels, tau=0.07, bias=b), inputs)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_immediate_single_user_and_hand_value():
    # pairs: (t=0 -> y=-1, s=2*1/1), (t=1 -> y=+1, s=1*3/1); bias 0.5
    z = torch.tensor([[[2.0], [1.0], [7.0]]])
    p = torch.tensor([[[5.0], [1.0], [3.0]]])
    labels = torch.tensor([[1, -1, 1]])
    expected = (F.softplus(torch.tensor(2.0 - 0.5)) + F.softplus(torch.tensor(-(3.0 - 0.5)))) / 2
    torch.testing.assert_close(immediate_loss(z, p, labels, tau=1.0, bias=0.5), expected)


def test_immediate_without_pairs_is_differentiable_zero():
    labels = torch.tensor([[1, 0, -1, 0], [0, 0, 0, 0]])
    z, p = _tensors(labels)
    b = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    loss = immediate_loss(z, p, labels, bias=b)
    assert loss.item() == 0.0
    gz, gp, gb = torch.autograd.grad(loss, (z, p, b))
    assert not gz.any() and not gp.any() and gb.item() == 0.0


# ---------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    labels = _labels_many_cases()
    z, p = _tensors(labels)
    with pytest.raises(DataError, match="labels must be"):
        holistic_loss(z, p, labels * 2)
    with pytest.raises(DataError, match="labels must be an integer"):
        immediate_loss(z, p, labels.double())
    with pytest.raises(DataError, match="z and p"):
        holistic_loss(z, p[:, :-1], labels)
    with pytest.raises(DataError, match="same dtype"):
        holistic_loss(z, p.float(), labels)
    with pytest.raises(DataError, match=r"labels must be \(B, T\)"):
        immediate_loss(z, p, labels[:, :-1])
    with pytest.raises(ConfigError, match="chunk_size"):
        holistic_loss(z, p, labels, chunk_size=0)
    with pytest.raises(ConfigError, match="tau"):
        immediate_loss(z, p, labels, tau=0.0)
    with pytest.raises(ConfigError, match="bias"):
        immediate_loss(z, p, labels, bias=torch.zeros(1))
