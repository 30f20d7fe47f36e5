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

:meth:`FusedDINAttention.forward_packed` also skips the padding. A padded position's key is the
zero vector, so its first-layer output is the sample's offset ``q (W_q + W_d)^T + b``, the same
at every padded position of that sample, and its score is masked out of the weighted sum. Only
the valid positions (N of the B * L) go through the MLP; the padded ones enter only Dice's batch
statistics, each sample's offset row counted (L - length) times, which are the mean and variance
FuxiCTR computes over all B * L rows, running statistics included. On a log whose histories fill
40% of the window, 60% of the MLP's rows are never built. The weighted sum over the history is
one matmul of a (B, U) matrix of scores per (sample, distinct item) with the item table when
that matrix is no larger than the (N, D) keys (a batch's distinct items are few next to its
positions), and the gathers use ``index_select``, whose backward is one ``index_add``
(``F.embedding``'s sorts its index first). Layers other than ``Linear``, Dice, row-wise
activations and inactive dropout (FuxiCTR's ``batch_norm``, dropout while training) make
:meth:`~FusedDINAttention.packable` false, and the caller uses
:meth:`~FusedDINAttention.forward`.

``tests/models/test_models_din_attention.py`` checks outputs, gradients and running statistics of
both paths against FuxiCTR's class; ``benchmarks/bench_din_attention.py`` measures the speed-up.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fuxictr.pytorch.layers import DIN_Attention
from fuxictr.pytorch.layers.activations import Dice
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

    def packable(self) -> bool:
        """Whether :meth:`forward_packed` computes exactly what :meth:`forward` does: a ``Linear``
        first, then only Dice, ``Linear``, row-wise activations and dropout that is inactive."""
        layers = self.attention_layer.mlp
        if not isinstance(layers[0], nn.Linear):
            return False
        for layer in list(layers)[1:]:
            if isinstance(layer, nn.Dropout):
                if layer.p > 0 and self.training:  # a fresh mask per padded row
                    return False
            elif not isinstance(layer, (Dice, nn.Linear) + _ROW_WISE):
                return False
        return True

    def forward_packed(self, target_item: torch.Tensor, table: torch.Tensor, index: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` on the history ``table[index]`` without building the padded rows.

        target (B, D); ``table`` (U, D) item embeddings, ``index`` (B, L) rows of ``table``;
        ``mask`` (B, L) bool, False at padding, whose key must be the zero vector (as in
        :class:`~fuxictr_chime.models.item_table.ItemHistory`) -> (B, D). Requires
        :meth:`packable`. Half-precision inputs and autocast take :meth:`forward` (Dice's
        statistics here are sums in the hidden layer's dtype).
        """
        if (table.dtype not in (torch.float32, torch.float64)
                or torch.is_autocast_enabled(table.device.type)):
            return self.forward(target_item, F.embedding(index, table), mask)
        layers = self.attention_layer.mlp
        first = layers[0]
        B, L = index.shape
        D = table.shape[1]
        w_q, w_k, w_d, w_p = first.weight.split(D, dim=1)  # each (H, D)
        offset = target_item @ (w_q + w_d).T  # (B, H): the first layer at a zero key
        if first.bias is not None:
            offset = offset + first.bias
        flat = mask.reshape(-1).nonzero().squeeze(1)  # (N,) valid positions
        sample = torch.div(flat, L, rounding_mode="floor")  # (N,)
        rows = index.reshape(-1)[flat]  # (N,) table rows
        # index_select, not F.embedding: its backward is one index_add, embedding's sorts the index
        keys = table.index_select(0, rows)  # (N, D)
        per_item = table @ (w_k - w_d).T  # (U, H): the key's own term, once per distinct item
        hidden = torch.addmm(per_item.index_select(0, rows).add_(offset.index_select(0, sample)),
                             keys * target_item.index_select(0, sample), w_p.T)  # (N, H)
        pad = offset  # (B, H): every padded row of a sample
        pad_count = (L - mask.sum(1)).to(hidden.dtype).unsqueeze(1)  # (B, 1)
        for layer in list(layers)[1:]:
            if isinstance(layer, Dice):
                hidden, pad = _packed_dice(layer, hidden, pad, pad_count, B * L)
            else:
                hidden, pad = layer(hidden), layer(pad)
        score = hidden.reshape(-1)  # (N,)
        if self.use_softmax:  # padded positions get exp(-1e9 - max) = 0 in forward()
            top = score.new_full((B,), float("-inf")).scatter_reduce(
                0, sample, score.detach(), reduce="amax")  # (B,)
            score = torch.exp(score - top[sample])
            score = score / score.new_zeros(B).index_add(0, sample, score)[sample]
        return _weighted_sum(score, keys, table, sample, rows, B)  # (B, D)


def _weighted_sum(score: torch.Tensor, keys: torch.Tensor, table: torch.Tensor,
                  sample: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """sum over the valid rows r of sample b of ``score[r] * keys[r]`` -> (B, D), with
    ``keys = table[rows]``. When a dense (B, U) matrix of the scores per (sample, table row) is
    no larger than ``keys``, it is built from the N scores and multiplied by the table: one
    matmul forward and two backward instead of (N, D) products, gathers and scatters."""
    U, D = table.shape
    if batch * U <= keys.numel():
        weights = score.new_zeros(batch * U).index_add(0, sample * U + rows, score)
        return weights.view(batch, U) @ table
    return keys.new_zeros(batch, D).index_add(0, sample, score.unsqueeze(1) * keys)


_ROW_WISE = (nn.Identity, nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.GELU, nn.Sigmoid,
             nn.Tanh, nn.Softplus, nn.SiLU)


def _packed_dice(dice: Dice, hidden: torch.Tensor, pad: torch.Tensor, pad_count: torch.Tensor,
                 rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice over ``rows`` rows given as the distinct ``hidden`` (N, H) plus ``pad`` (B, H), row b
    repeated ``pad_count[b]`` times: BatchNorm's batch statistics (and running update) over all
    ``rows``, as ``Dice.forward`` on the full tensor."""
    bn = dice.bn
    if bn.training or bn.running_mean is None:
        out, out_pad, mean, var = _DiceBatchStats.apply(hidden, pad, pad_count, dice.alpha, rows,
                                                       bn.eps)
        if bn.training and bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                momentum = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                            else bn.momentum)
                bn.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
                bn.running_var.mul_(1 - momentum).add_(var * (rows / max(rows - 1, 1)),
                                                       alpha=momentum)
        return out, out_pad
    return dice(hidden), dice(pad)  # running statistics: row-wise, FuxiCTR's own forward


class _DiceBatchStats(torch.autograd.Function):
    """Dice with BatchNorm's batch statistics over rows ``x`` (N, H) plus ``pad`` (B, H) with
    multiplicities ``count`` (B, 1), forward and backward written out so that each pass over the
    N x H rows is one fused PyTorch op where autograd would chain several (Dice is elementwise
    and memory-bound over the B * L rows of a long history).

    With R rows, mean m, variance v (biased), s = (v + eps)^-1/2, xh = (x - m) s, p = sigmoid(xh),
    y = x (alpha + (1 - alpha) p); given g = dL/dy:
    dL/dalpha = sum g x (1 - p); u = g x (1 - alpha) p (1 - p) = dL/dxh (the code keeps u without
    its per-column factor 1 - alpha and folds that into s);
    dL/dx = g (alpha + (1 - alpha) p) + s (u - c (mean(u) + xh mean(u xh))),
    BatchNorm's backward, with the sums of the means over the N rows and the B pad rows, R the
    divisor, and c = 1 for a row of ``x``, ``count[b]`` for pad row b (``y_pad`` stands for its
    ``count[b]`` copies, so its gradient is already their sum). Returns (y, y_pad, m, v); m and v
    carry no gradient (running statistics).
    """

    @staticmethod
    def forward(ctx, x, pad, count, alpha, rows, eps):  # noqa: D102 (documented on the class)
        mean = (x.sum(0) + (count * pad).sum(0)) / rows  # (H,)
        centered = x - mean  # (N, H)
        centered_pad = pad - mean  # (B, H)
        var = (torch.linalg.vecdot(centered, centered, dim=0)
               + (count * centered_pad.square()).sum(0)) / rows  # (H,)
        scale = torch.rsqrt(var + eps)
        xh, xh_pad = centered.mul_(scale), centered_pad.mul_(scale)  # in place: (x - m) s
        weight = alpha.new_ones(()) - alpha  # (H,) 1 - alpha
        p, p_pad = torch.sigmoid(xh), torch.sigmoid(xh_pad)
        gate, gate_pad = torch.addcmul(alpha, p, weight), torch.addcmul(alpha, p_pad, weight)
        y, y_pad = x * gate, pad * gate_pad  # (N, H), (B, H)
        # p and the gate are kept rather than recomputed from xh: two passes fewer over N x H
        ctx.save_for_backward(x, xh, p, gate, pad, xh_pad, p_pad, gate_pad, count, weight, scale)
        ctx.rows = rows
        ctx.mark_non_differentiable(mean, var)
        return y, y_pad, mean, var

    @staticmethod
    def backward(ctx, grad, grad_pad, _mean, _var):  # noqa: D102
        x, xh, p, gate, pad, xh_pad, p_pad, gate_pad, count, one_minus, scale = ctx.saved_tensors
        rows = ctx.rows
        if grad_pad is None:
            grad_pad = torch.zeros_like(pad)
        parts = []
        for g, v, q, a in ((grad, x, p, gate), (grad_pad, pad, p_pad, gate_pad)):
            gx = g * a  # direct term g (alpha + (1 - alpha) p)
            gv = g * v  # (n, H)
            gvp = gv * q
            d_alpha = gv.sum(0) - gvp.sum(0)  # sum g x (1 - p)
            u = gvp.addcmul_(gvp, q, value=-1)  # g x p (1 - p) = dL/dxh / (1 - alpha)
            parts.append((gx, u, d_alpha))
        (gx, u, da), (gx_pad, u_pad, da_pad) = parts
        scale = scale * one_minus  # s (1 - alpha): the (1 - alpha) of dL/dxh, applied per column
        mean_u = (u.sum(0) + u_pad.sum(0)) / rows  # (H,)
        mean_uh = (torch.linalg.vecdot(u, xh, dim=0) + torch.linalg.vecdot(u_pad, xh_pad, dim=0)) / rows
        grad_x = gx.addcmul_(u.sub_(mean_u).addcmul_(xh, mean_uh, value=-1), scale)
        grad_pad_in = gx_pad.addcmul_(u_pad.sub_(count * mean_u).addcmul_(count * xh_pad, mean_uh, value=-1),
                                      scale)
        return grad_x, grad_pad_in, None, da + da_pad, None, None
