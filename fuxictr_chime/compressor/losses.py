"""CHIME's contrastive losses (paper section 4.3, eq. 1; CHIME spec section 3.4).

Both losses take user hidden states ``z`` and item hidden states ``p`` of shape (B, T, D) and
labels (B, T) with +1 (positive action), -1 (negative action) and 0 (padding). The score is
s(z, p) = <z, p> / tau; whether z and p are L2-normalized first is the caller's decision.

* **Holistic loss** (term (a) of eq. 1, default tau = 0.2). For every valid anchor (u, t):
  candidates are the valid items of u at positions s > t (both labels) plus every valid item of
  every other user in the batch; positives are the items of u at s > t with y = +1. Past items of
  u (s <= t) are never candidates. With N_h the number of (anchor, positive) pairs,

      L_h = 1/N_h * sum_{anchors} sum_{p+} [ lse_{candidates} s(z, p) - s(z, p+) ].

  The positives' part only needs reverse cumulative sums of the positive item vectors per user;
  only the logsumexp needs the (anchors x valid items) score matrix (padding columns are dropped
  once; each anchor's own past is one contiguous column range). With ``chunk_size`` set, that
  matrix is computed ``chunk_size`` anchors at a time by a custom autograd function that keeps
  nothing but the per-anchor logsumexp and recomputes each chunk's scores in backward, so the
  extra memory is O(chunk_size * B * T) in forward and backward, not O((B * T)^2).
  Half and bfloat16 inputs are scored in float32.
* :func:`holistic_loss_from_scores` is the same loss with the logits of each anchor's candidates
  supplied by a score function instead of <z, p> / tau: the entry point of the non-learned
  reference scorers of :mod:`.diagnostics` (uniform, popularity, co-occurrence, oracle). It is a
  plain loop over anchor chunks without a custom backward; with scores = <z, p> / tau it equals
  :func:`holistic_loss` (tests/compressor/test_compressor_diagnostics.py).
* **Immediate loss** (term (b) of eq. 1, default tau = 0.07, bias b = 0): the mean over pairs
  (u, t) with t and t + 1 both valid of softplus(-y_{t+1} * (s(z_t, p_{t+1}) - b)).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from fuxictr_chime.errors import ConfigError, DataError

__all__ = ["holistic_loss", "holistic_loss_from_scores", "immediate_loss"]


def holistic_loss(
    z: torch.Tensor,
    p: torch.Tensor,
    labels: torch.Tensor,
    tau: float = 0.2,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Holistic InfoNCE loss of paper eq. 1 (a); see the module docstring for the definition.

    Args:
        z: user hidden states, (B, T, D) float.
        p: item hidden states, (B, T, D) float, same dtype as ``z``.
        labels: (B, T) integer tensor with values in {+1, -1, 0 = padding}.
        tau: temperature (default 0.2).
        chunk_size: number of anchors scored at once, each chunk recomputed in backward
            (default None: all anchors at once, plain autograd over the full score matrix).
            Every chunk size gives the same value and gradient up to float rounding.

    Returns:
        A scalar. When there is no (anchor, positive) pair it is a zero with a gradient path.
    """
    _check_inputs(z, p, labels, tau, "holistic_loss")
    z, p = _upcast(z), _upcast(p)
    if chunk_size is not None and int(chunk_size) < 1:
        raise ConfigError(f"holistic_loss: chunk_size must be a positive integer or None, got {chunk_size!r}")
    B, T, D = z.shape
    valid = labels != 0                                                   # (B, T)
    positive = labels == 1                                                # (B, T)
    n_pos = _reverse_exclusive_cumsum(positive.long().unsqueeze(-1)).squeeze(-1)  # (B, T) int64
    anchor_mask = valid & (n_pos > 0)                                     # (B, T)
    if not bool(anchor_mask.any()):
        return _zero_with_grad(z, p)
    anchor_idx = anchor_mask.reshape(-1).nonzero().squeeze(1)             # (Na,) flat index u*T + t
    z_a = z.reshape(B * T, D)[anchor_idx]                                 # (Na, D)
    items, lo, hi = _candidate_layout(p, valid, anchor_idx)               # (Nv, D), (Na,), (Na,)
    if chunk_size is None:
        lse = torch.logsumexp(_masked_scores(z_a, items, lo, hi, tau), dim=1)  # (Na,)
    else:
        lse = _ChunkedMaskedLSE.apply(z_a, items, lo, hi, tau, int(chunk_size))  # (Na,)
    pos_items = torch.where(positive.unsqueeze(-1), p, 0.0)               # (B, T, D)
    pos_sum = _reverse_exclusive_cumsum(pos_items).reshape(B * T, D)[anchor_idx]  # (Na, D)
    count = n_pos.reshape(B * T)[anchor_idx].to(z.dtype)                  # (Na,)
    per_anchor = count * lse - (z_a * pos_sum).sum(-1) / tau              # (Na,)
    return per_anchor.sum() / count.sum()


def holistic_loss_from_scores(
    scores: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Holistic loss of paper eq. 1 (a) from precomputed logits instead of <z, p> / tau.

    Same anchors, candidates, positives and normalization as :func:`holistic_loss`; only the
    logit of (anchor, candidate) comes from ``scores``.

    Args:
        scores: either a callable ``scores(anchor_idx (C,), item_idx (Nv,)) -> (C, Nv)`` giving
            the logits of anchors against items, both as flat indices ``u * T + t`` into the
            (B, T) batch (the loss's division by tau is the caller's: pass <z, p> / tau to
            reproduce :func:`holistic_loss`), or a (B * T, B * T) logit matrix indexed the same way.
        labels: (B, T) integer tensor with values in {+1, -1, 0 = padding}.
        chunk_size: number of anchors scored at once (default None: all at once).

    Returns:
        A scalar; zero when there is no (anchor, positive) pair.
    """
    if labels.dim() != 2 or labels.is_floating_point() or labels.is_complex():
        raise DataError(f"holistic_loss_from_scores: labels must be a (B, T) integer tensor, got "
                        f"{labels.dtype} {tuple(labels.shape)}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ConfigError(f"holistic_loss_from_scores: chunk_size must be a positive integer or None, "
                          f"got {chunk_size!r}")
    if isinstance(scores, torch.Tensor):
        matrix = scores
        scores = lambda a, c: matrix[a][:, c]  # noqa: E731  (C, Nv)
    B, T = labels.shape
    valid, positive = labels != 0, labels == 1                            # (B, T)
    n_pos = _reverse_exclusive_cumsum(positive.long().unsqueeze(-1)).squeeze(-1)  # (B, T)
    anchor_idx = (valid & (n_pos > 0)).reshape(-1).nonzero().squeeze(1)   # (Na,)
    if anchor_idx.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=labels.device)
    item_idx = valid.reshape(-1).nonzero().squeeze(1)                     # (Nv,) flat index of each column
    compact = valid.reshape(-1).long().cumsum(0) - 1                      # (B*T,) column of each valid item
    per_user = valid.sum(1)                                               # (B,)
    first = per_user.cumsum(0) - per_user                                 # (B,) first column of each user
    user = torch.div(anchor_idx, T, rounding_mode="floor")                # (Na,)
    lo, hi = first[user], compact[anchor_idx]                             # (Na,) own past = [lo, hi]
    end = first[user] + per_user[user] - 1                                # (Na,) own last column
    pos_col = positive.reshape(-1)[item_idx]                              # (Nv,)
    cols = torch.arange(item_idx.numel(), device=labels.device).unsqueeze(0)  # (1, Nv)
    count = n_pos.reshape(-1)[anchor_idx]                                 # (Na,)
    total = None
    for sl in _chunks(anchor_idx.numel(), int(chunk_size or anchor_idx.numel())):
        s = scores(anchor_idx[sl], item_idx)                              # (C, Nv)
        s = _upcast(s)
        past = (cols >= lo[sl].unsqueeze(1)) & (cols <= hi[sl].unsqueeze(1))  # (C, Nv) never candidates
        future_pos = pos_col & (cols > hi[sl].unsqueeze(1)) & (cols <= end[sl].unsqueeze(1))  # (C, Nv)
        lse = torch.logsumexp(s.masked_fill(past, float("-inf")), dim=1)  # (C,)
        pos_sum = torch.where(future_pos, s, torch.zeros_like(s)).sum(1)  # (C,)
        part = (count[sl].to(s.dtype) * lse - pos_sum).sum()
        total = part if total is None else total + part
    return total / count.sum().to(total.dtype)


def immediate_loss(
    z: torch.Tensor,
    p: torch.Tensor,
    labels: torch.Tensor,
    tau: float = 0.07,
    bias: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Immediate (next-behavior) sigmoid contrastive loss of paper eq. 1 (b).

    Args:
        z: user hidden states, (B, T, D) float.
        p: item hidden states, (B, T, D) float.
        labels: (B, T) integer tensor with values in {+1, -1, 0 = padding}.
        tau: temperature (default 0.07).
        bias: the score offset b, a float or a 0-dim tensor (learnable: gradient flows to it;
            default 0.0).

    Returns:
        Mean of softplus(-y_{t+1} * (s(z_t, p_{t+1}) - b)) over the pairs (u, t) with t and t + 1
        both valid; a zero with a gradient path when there is no such pair.
    """
    _check_inputs(z, p, labels, tau, "immediate_loss")
    z, p = _upcast(z), _upcast(p)
    if isinstance(bias, torch.Tensor) and bias.dim() != 0:
        raise ConfigError(f"immediate_loss: bias must be a float or a 0-dim tensor, got shape {tuple(bias.shape)}")
    pad = (labels == 0).unsqueeze(-1)                                     # (B, T, 1)
    z, p = z.masked_fill(pad, 0.0), p.masked_fill(pad, 0.0)               # (B, T, D) padding never leaks
    pair = (labels[:, :-1] != 0) & (labels[:, 1:] != 0)                   # (B, T-1)
    if not bool(pair.any()):
        zero = _zero_with_grad(z, p)
        return zero + 0.0 * bias if isinstance(bias, torch.Tensor) else zero
    score = (z[:, :-1] * p[:, 1:]).sum(-1) / tau                          # (B, T-1)
    y_next = labels[:, 1:].to(score.dtype)                                # (B, T-1)
    loss = F.softplus(-y_next * (score - bias))                           # (B, T-1)
    return loss[pair].mean()


# --------------------------------------------------------------------------------------------
# helpers


def _check_inputs(z: torch.Tensor, p: torch.Tensor, labels: torch.Tensor, tau: float, fn: str) -> None:
    if z.dim() != 3 or z.shape != p.shape:
        raise DataError(f"{fn}: z and p must both be (B, T, D), got {tuple(z.shape)} and {tuple(p.shape)}")
    if z.dtype != p.dtype:
        raise DataError(f"{fn}: z and p must have the same dtype, got {z.dtype} and {p.dtype}")
    if labels.shape != z.shape[:2]:
        raise DataError(f"{fn}: labels must be (B, T) = {tuple(z.shape[:2])}, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise DataError(f"{fn}: labels must be an integer tensor, got {labels.dtype}")
    if bool(((labels != 1) & (labels != -1) & (labels != 0)).any()):
        raise DataError(f"{fn}: labels must be +1, -1 or 0 (padding); found {sorted(labels.unique().tolist())}")
    if not float(tau) > 0:
        raise ConfigError(f"{fn}: tau must be > 0, got {tau!r}")


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half/bfloat16 inputs are scored in float32 (tau = 0.07 scores overflow half precision)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _reverse_exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """out[:, t] = sum of x[:, s] over s > t, along dim 1 of a (B, T, ...) tensor."""
    inclusive = x.flip(1).cumsum(1).flip(1)                               # (B, T, ...)
    return torch.cat([inclusive[:, 1:], torch.zeros_like(inclusive[:, :1])], dim=1)  # (B, T, ...)


def _zero_with_grad(*tensors: torch.Tensor) -> torch.Tensor:
    """A zero scalar with a gradient path to ``tensors`` (all-zero gradients, NaN-safe)."""
    return sum(t[:0].sum() for t in tensors)


def _candidate_layout(p: torch.Tensor, valid: torch.Tensor, anchor_idx: torch.Tensor):
    """Valid items only, and each anchor's excluded column range in that compact order.

    Items keep their flat (user, position) order without padding, so the items of an anchor's
    own user at positions <= t form one contiguous range [lo, hi] of columns: lo = the user's
    first valid item, hi = the anchor's own item. Every other column is a candidate.
    Returns items (Nv, D), lo (Na,), hi (Na,).
    """
    B, T, D = p.shape
    valid_flat = valid.reshape(B * T)                                     # (B*T,)
    items = p.reshape(B * T, D)[valid_flat.nonzero().squeeze(1)]          # (Nv, D)
    compact = valid_flat.long().cumsum(0) - 1                             # (B*T,) column of each valid item
    per_user = valid.sum(1)                                               # (B,)
    first = per_user.cumsum(0) - per_user                                 # (B,) column of each user's first item
    hi = compact[anchor_idx]                                              # (Na,)
    lo = first[torch.div(anchor_idx, T, rounding_mode="floor")]           # (Na,)
    return items, lo, hi


def _masked_scores(z_a: torch.Tensor, items: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                   tau: float) -> torch.Tensor:
    """Scores of anchors (C, D) against all valid items (Nv, D), -inf on columns [lo, hi] of each row.

    Only the column window [min lo, max hi] can hold excluded entries, so the mask is built for
    that window alone (for a chunk of consecutive anchors: at most chunk + T columns). The
    window is edited in place (autograd allows it: the matmul's backward does not need its output).
    """
    scores = (z_a / tau) @ items.T                                        # (C, Nv)
    w_lo, w_hi = int(lo.min()), int(hi.max()) + 1
    cols = torch.arange(w_lo, w_hi, device=items.device).unsqueeze(0)     # (1, W)
    excluded = torch.ge(cols, lo.unsqueeze(1))                            # (C, W)
    excluded &= torch.le(cols, hi.unsqueeze(1))                           # (C, W)
    scores[:, w_lo:w_hi].masked_fill_(excluded, float("-inf"))            # window view of (C, Nv)
    return scores


class _ChunkedMaskedLSE(torch.autograd.Function):
    """Per-anchor candidate logsumexp, ``chunk`` anchors at a time, recomputed in backward.

    Forward keeps only the (Na,) result; backward rebuilds each chunk's (chunk, Nv) scores,
    turns them into softmax weights with the saved logsumexp and accumulates the gradients.
    """

    @staticmethod
    def forward(ctx, z_a, items, lo, hi, tau, chunk):  # noqa: D102
        lse = torch.empty(z_a.shape[0], dtype=z_a.dtype, device=z_a.device)  # (Na,)
        for sl in _chunks(z_a.shape[0], chunk):
            lse[sl] = torch.logsumexp(_masked_scores(z_a[sl], items, lo[sl], hi[sl], tau), dim=1)
        ctx.save_for_backward(z_a, items, lo, hi, lse)
        ctx.tau, ctx.chunk = tau, chunk
        return lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_lse):  # noqa: D102
        z_a, items, lo, hi, lse = ctx.saved_tensors
        need_z, need_items = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_z = torch.zeros_like(z_a) if need_z else None                # (Na, D)
        grad_items = torch.zeros_like(items) if need_items else None      # (Nv, D)
        scale = grad_lse / ctx.tau                                        # (Na,) d scores / d z carries 1/tau
        for sl in _chunks(z_a.shape[0], ctx.chunk):
            soft = _masked_scores(z_a[sl], items, lo[sl], hi[sl], ctx.tau)  # (C, Nv)
            soft.sub_(lse[sl].unsqueeze(1)).exp_()                        # (C, Nv) softmax over candidates
            if need_z:
                grad_z[sl] = (soft @ items) * scale[sl].unsqueeze(1)      # (C, D)
            if need_items:
                grad_items.addmm_(soft.T, z_a[sl] * scale[sl].unsqueeze(1))  # (Nv, D)
        return grad_z, grad_items, None, None, None, None


def _chunks(n: int, chunk: int):
    return (slice(start, start + chunk) for start in range(0, n, chunk))
