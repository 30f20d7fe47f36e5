"""LEARN's dense all-action loss (Jia et al. 2024, arXiv 2405.03988; CHIME spec section 4).

Each user's representation sequence is split into a history part and a later target part.
Every history position j of user i (user embedding u_ij) is scored against every target item
k of user i (item embedding v_ik); each such positive competes with its own denominator made
of itself plus all target items of the *other* users in the batch:

    l_ijk = -log( exp(s(u_ij, v_ik)) / (exp(s(u_ij, v_ik)) + sum_{i' != i, k'} exp(s(u_ij, v_i'k'))) )
          = softplus( lse_{i' != i, k'} s(u_ij, v_i'k') - s(u_ij, v_ik) ),      s(u, v) = <u, v> / tau

and the loss is the mean of l_ijk over all (i, j, k) triples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def dense_all_action_loss(
    u: torch.Tensor,
    v: torch.Tensor,
    history_mask: torch.Tensor,
    target_mask: torch.Tensor,
    tau: float = 0.1,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Mean dense all-action loss.

    Args:
        u: user embeddings per position, (B, T, D).
        v: item embeddings per position, (B, T, D).
        history_mask: (B, T) bool, positions used as anchors (history part).
        target_mask: (B, T) bool, target positives (later part, label +1).
        tau: temperature of the inner-product score.
        chunk_size: anchors scored at once (None = all); the score chunk is recomputed in
            backward, so extra memory is O(chunk_size * targets) instead of O(anchors * targets).

    Returns:
        A scalar; a zero with a gradient path when there is no (anchor, target) pair.
    """
    B, T, D = u.shape
    user_of = torch.arange(B, device=u.device).unsqueeze(1).expand(B, T)  # (B, T)
    anchors = u[history_mask]                    # (Na, D)
    anchor_user = user_of[history_mask]          # (Na,)
    targets = v[target_mask]                     # (Nt, D)
    target_user = user_of[target_mask]           # (Nt,)
    if anchors.shape[0] == 0 or targets.shape[0] == 0:
        return 0.0 * (u.sum() + v.sum())
    n = anchors.shape[0]
    step = n if chunk_size is None else max(1, int(chunk_size))
    total = u.new_zeros(())
    pairs = 0
    for start in range(0, n, step):
        a, au = anchors[start:start + step], anchor_user[start:start + step]
        if chunk_size is None:
            part = _chunk_sum(a, targets, au, target_user, tau)
        else:
            part = checkpoint(_chunk_sum, a, targets, au, target_user, tau, use_reentrant=False)
        total = total + part
        pairs += int((au.unsqueeze(1) == target_user.unsqueeze(0)).sum())
    if pairs == 0:
        return 0.0 * (u.sum() + v.sum())
    return total / pairs


def _chunk_sum(a: torch.Tensor, targets: torch.Tensor, au: torch.Tensor, tu: torch.Tensor,
               tau: float) -> torch.Tensor:
    """Sum of l_ijk over the anchors ``a`` (C, D) and their own users' targets."""
    scores = a @ targets.T / tau                  # (C, Nt)
    own = au.unsqueeze(1) == tu.unsqueeze(0)      # (C, Nt) same user
    neg_lse = torch.logsumexp(scores.masked_fill(own, float("-inf")), dim=1, keepdim=True)  # (C, 1)
    loss = F.softplus(neg_lse - scores)           # (C, Nt); -inf lse (no negatives) -> 0
    return loss.masked_fill(~own, 0.0).sum()
