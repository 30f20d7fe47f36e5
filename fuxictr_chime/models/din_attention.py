"""FuxiCTR's ``DIN_Attention`` with its first MLP layer factorized (same parameters, same result).

DIN scores each behavior k against the target q with an MLP on [q, k, q - k, q * k] (4D wide).
FuxiCTR builds that concatenation for every (sample, position): a (B, L, 4D) tensor, 6x the
history itself, written and read again in forward and backward. Over a 1,000-behavior history
(LongCTR's DIN, ``DIN_full_*``) that tensor dominates the step.

The first layer is linear, so with its weight split as W = [W_q | W_k | W_d | W_p] (each H x D)

    W [q; k; q - k; q * k] + b = k (W_k - W_d + W_p diag(q))^T + (q (W_q + W_d)^T + b),

one batched matmul of the history (B, L, D) with a per-sample (D, H) matrix plus a per-sample
offset: nothing 4D wide is ever built. The remaining layers (activation, Dice's BatchNorm over
all B * L rows as before, dropout, output layer) run unchanged on the (B * L, H) result, and the
weighted sum over the history is one ``bmm``. The module keeps ``DIN_Attention``'s parameter
names, so checkpoints and ``state_dict`` are interchangeable; an MLP whose first module is not a
``Linear`` (FuxiCTR's ``bn_only_once``) falls back to the stock forward.
``tests/models/test_models_din_attention.py`` checks outputs and gradients against FuxiCTR's
class; ``benchmarks/bench_din_attention.py`` measures the speed-up.
"""
from __future__ import annotations

import torch
from fuxictr.pytorch.layers import DIN_Attention
from torch import nn

__all__ = ["FusedDINAttention"]


class FusedDINAttention(DIN_Attention):
    """Drop-in ``DIN_Attention`` (same constructor and parameters), factorized first layer."""

    def forward(self, target_item: torch.Tensor, history_sequence: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """target (B, D), history (B, L, D), mask (B, L) with 0 = padding -> (B, D)."""
        layers = self.attention_layer.mlp
        first = layers[0]
        if not isinstance(first, nn.Linear):
            return super().forward(target_item, history_sequence, mask)
        B, L, D = history_sequence.shape
        w_q, w_k, w_d, w_p = first.weight.split(D, dim=1)  # each (H, D)
        per_sample = (w_k - w_d).T.unsqueeze(0) + target_item.unsqueeze(-1) * w_p.T.unsqueeze(0)  # (B, D, H)
        offset = target_item @ (w_q + w_d).T  # (B, H)
        if first.bias is not None:
            offset = offset + first.bias
        hidden = torch.baddbmm(offset.unsqueeze(1), history_sequence, per_sample)  # (B, L, H)
        weight = layers[1:](hidden.reshape(B * L, -1)).reshape(B, L)  # (B, L)
        if mask is not None:
            weight = weight * mask.float()
        if self.use_softmax:
            if mask is not None:
                weight = weight + -1.e9 * (1 - mask.float())
            weight = weight.softmax(dim=-1)
        return torch.bmm(weight.unsqueeze(1), history_sequence).squeeze(1)  # (B, D)
