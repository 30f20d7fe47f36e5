"""Retrieval and attention steps shared by the long-sequence ranking models.

Utilization stage (CHIME paper section 5.1, spec section 5). Each fast path has a plain
reference implementation next to it (``*_reference``); tests check that both agree in value
(and gradient where one flows):

* :func:`masked_softmax` - softmax over valid positions; an all-masked row gives zeros.
* :func:`topk_gather` - masked top-k of a score per behavior, then a batched gather
  (GSU of SimSoft, ETA and TWIN). Reference: :func:`topk_gather_reference`.
* :class:`TargetAttention` / :func:`target_attention` - masked multi-head target attention
  (ESU; the parameter layout of FuxiCTR's ``MultiHeadTargetAttention``, plus a guard for
  rows without any valid behavior). Reference: :func:`target_attention_reference`.
* :class:`SimHash` - sign random projections from a seeded ``torch.Generator`` held as a
  buffer: ETA's signatures (:func:`pack_bits`, :func:`hamming_distance`) and SDIM's
  ``num_hashes`` signatures of ``hash_bits`` bits (:func:`bucket_codes`,
  :func:`sdim_aggregate`, composed by :func:`sdim_interest`). References:
  :func:`sdim_aggregate_reference` (dense history) and :func:`sdim_interest_reference`
  (a loop over samples, signatures and behaviors, hashing as LongCTR's ``SDIM.lsh_hash``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = [
    "masked_softmax", "topk_gather", "topk_gather_reference", "recency_tiebreak",
    "longctr_topk_gather",
    "TargetAttention", "target_attention", "target_attention_reference",
    "SimHash", "pack_bits", "popcount", "hamming_distance", "hamming_distance_reference",
    "bucket_codes", "sdim_aggregate", "sdim_aggregate_reference", "sdim_interest",
    "sdim_hash_reference", "sdim_interest_reference",
]


# --------------------------------------------------------------------------- softmax / top-k
def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of ``scores`` over positions where ``mask`` is True; zero elsewhere.

    A row whose positions are all masked gets all-zero weights (never NaN), so an empty
    history yields a zero interest vector.
    """
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=dim) * mask


def topk_gather(scores: torch.Tensor, mask: torch.Tensor, k: int,
                values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``k`` valid positions with the highest score and gather their ``values``.

    Args:
        scores: (B, L) float; higher = more relevant. No gradient flows through selection.
        mask: (B, L) bool, True at valid positions.
        k: number of positions to keep; ``min(k, L)`` are returned.
        values: (B, L, ...) tensor gathered along dim 1 (embeddings or indices).

    Returns:
        ``(selected (B, k', ...), selected_mask (B, k'))`` with ``k' = min(k, L)``, in
        descending score order; when a row has fewer than ``k'`` valid positions the rest
        are masked positions (``selected_mask`` False), to be ignored downstream.
    """
    k = min(int(k), scores.shape[1])
    filled = scores.detach().masked_fill(~mask, float("-inf"))
    index = filled.topk(k, dim=1, largest=True, sorted=True).indices  # (B, k)
    return _gather_positions(index, mask, values)


def _gather_positions(index: torch.Tensor, mask: torch.Tensor,
                      values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``values`` (B, L, ...) and ``mask`` (B, L) at positions ``index`` (B, k)."""
    expanded = index.view(*index.shape, *([1] * (values.dim() - 2)))
    expanded = expanded.expand(-1, -1, *values.shape[2:])  # (B, k, ...)
    return values.gather(1, expanded), mask.gather(1, index)  # (B, k, ...), (B, k)


def longctr_sim_topk_gather(scores: torch.Tensor, mask: torch.Tensor, k: int,
                            values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LongCTR SIM's GSU selection: ``topk(scores * mask)`` over every position, so a padding
    position scores 0 and is kept ahead of valid positions with a negative score (its mask stays
    False, so attention ignores it). Shapes as :func:`topk_gather`."""
    k = min(int(k), scores.shape[1])
    index = (scores.detach() * mask).topk(k, dim=1, largest=True, sorted=True).indices  # (B, k)
    return _gather_positions(index, mask, values)


def topk_gather_reference(scores: torch.Tensor, mask: torch.Tensor, k: int,
                          values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain per-row version of :func:`topk_gather`: sort each row's valid positions.

    Rows with fewer than ``min(k, L)`` valid positions are padded with zeros (mask False).
    """
    k = min(int(k), scores.shape[1])
    out = values.new_zeros(values.shape[0], k, *values.shape[2:])  # (B, k, ...)
    out_mask = torch.zeros(values.shape[0], k, dtype=torch.bool, device=values.device)
    for b in range(scores.shape[0]):
        valid = [int(i) for i in torch.nonzero(mask[b]).flatten()]
        ranked = sorted(valid, key=lambda i: -float(scores[b, i]))[:k]
        for j, i in enumerate(ranked):
            out[b, j] = values[b, i]
            out_mask[b, j] = True
    return out, out_mask


def recency_tiebreak(distance: torch.Tensor) -> torch.Tensor:
    """Scores from integer distances (B, L): smaller distance first, ties to the most recent.

    ``score = -(distance * (L + 1) + age)`` with ``age = L - 1 - position`` (0 = most
    recent). Exact in float32 for distances below 2**24 / (L + 1). The order does not
    depend on how much left padding precedes the history, so top-k over Hamming distances
    (ETA) is invariant to padding.
    """
    length = distance.shape[1]
    age = torch.arange(length - 1, -1, -1, device=distance.device)  # (L,)
    return -(distance.to(torch.int64) * (length + 1) + age).to(torch.float32)  # (B, L)


def longctr_topk_gather(distance: torch.Tensor, mask: torch.Tensor, k: int, values: torch.Tensor,
                        fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LongCTR's ETA selection: the ``k`` smallest ``distance`` (B, L) after padding is set to
    ``fill`` (``1 + hash_bits``), ties in the order ``torch.topk(largest=False, sorted=True)``
    returns them; gathers ``values`` (B, L, ...) like :func:`topk_gather`.

    That tie order is torch's kernel's, not a rule: it depends on the row's layout (how much left
    padding) and the torch build. Offered for like-for-like comparisons with the public code.
    """
    k = min(int(k), distance.shape[1])
    filled = distance.detach().to(torch.float32).masked_fill(~mask, float(fill))  # (B, L)
    index = filled.topk(k, dim=1, largest=False, sorted=True).indices  # (B, k)
    return _gather_positions(index, mask, values)


# --------------------------------------------------------------------------- target attention
def target_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     mask: torch.Tensor, num_heads: int = 1, scale: float | None = None,
                     dropout: nn.Module | None = None) -> torch.Tensor:
    """Masked multi-head target attention on projected inputs.

    Args:
        query: (B, A) projected target. keys, values: (B, L, A) projected behaviors.
        mask: (B, L) bool. num_heads: A must be divisible by it.
        scale: logits are divided by it (default ``sqrt(A / num_heads)``).
        dropout: optional dropout applied to the attention weights.

    Returns:
        (B, A): per head, the softmax(q.k / scale)-weighted sum of values over valid
        positions; zero for a row without valid positions.
    """
    batch, length, dim = keys.shape
    head_dim = dim // num_heads
    scale = math.sqrt(head_dim) if scale is None else scale
    q = query.view(batch, 1, num_heads, head_dim)  # (B, 1, H, d)
    k = keys.view(batch, length, num_heads, head_dim)  # (B, L, H, d)
    v = values.view(batch, length, num_heads, head_dim)  # (B, L, H, d)
    # elementwise products: CPU bmm with a width-1 side is slow, above all in backward
    logits = (q * k).sum(-1) / scale  # (B, L, H)
    weights = masked_softmax(logits, mask.unsqueeze(-1), dim=1)  # (B, L, H)
    if dropout is not None:
        weights = dropout(weights)
    out = (weights.unsqueeze(-1) * v).sum(1)  # (B, H, d)
    return out.reshape(batch, dim)  # (B, A)


def target_attention_reference(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                               mask: torch.Tensor, num_heads: int = 1,
                               scale: float | None = None) -> torch.Tensor:
    """Loop over samples and heads; same contract as :func:`target_attention`."""
    batch, _, dim = keys.shape
    head_dim = dim // num_heads
    scale = math.sqrt(head_dim) if scale is None else scale
    rows = []
    for b in range(batch):
        valid = mask[b]
        heads = []
        for h in range(num_heads):
            cols = slice(h * head_dim, (h + 1) * head_dim)
            if not bool(valid.any()):
                heads.append(query.new_zeros(head_dim))
                continue
            logits = keys[b, valid, cols] @ query[b, cols] / scale  # (n,)
            heads.append(torch.softmax(logits, dim=0) @ values[b, valid, cols])  # (d,)
        rows.append(torch.cat(heads))
    return torch.stack(rows)  # (B, A)


class TargetAttention(nn.Module):
    """Multi-head target attention (DIN-style query = target item), used as ESU.

    Same parameters and result as FuxiCTR's ``MultiHeadTargetAttention`` (``W_q``, ``W_k``,
    ``W_v``, ``W_o``, no bias), except that a row with no valid behavior returns zeros
    instead of averaging padding.

    Defaults: ``attention_dim=64``, ``num_heads=1``, ``dropout_rate=0``, ``use_scale=True``.
    """

    def __init__(self, input_dim: int, attention_dim: int = 64, num_heads: int = 1,
                 dropout_rate: float = 0.0, use_scale: bool = True) -> None:
        super().__init__()
        if attention_dim % num_heads:
            raise ConfigError(f"attention_dim={attention_dim} is not divisible by "
                              f"num_heads={num_heads}")
        self.num_heads = int(num_heads)
        self.scale = math.sqrt(attention_dim // num_heads) if use_scale else 1.0
        self.W_q = nn.Linear(input_dim, attention_dim, bias=False)
        self.W_k = nn.Linear(input_dim, attention_dim, bias=False)
        self.W_v = nn.Linear(input_dim, attention_dim, bias=False)
        self.W_o = nn.Linear(attention_dim, input_dim, bias=False)
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else None

    def forward(self, target: torch.Tensor, history: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """target (B, D), history (B, L, D), mask (B, L) bool -> (B, D)."""
        out = target_attention(self.W_q(target), self.W_k(history), self.W_v(history), mask,
                               self.num_heads, self.scale, self.dropout)  # (B, A)
        return self.W_o(out)  # (B, D)


# --------------------------------------------------------------------------- hashing
class SimHash(nn.Module):
    """Sign random projections: bit j of x is ``x . R[:, j] > 0`` (Charikar 2002).

    ``R`` (input_dim, num_bits) is drawn once from N(0, 1) with a ``torch.Generator``
    seeded by ``seed`` and held as a buffer (saved with the checkpoint, never trained), so
    hashing is deterministic across evaluation passes and model instances.
    """

    def __init__(self, input_dim: int, num_bits: int, seed: int = 0) -> None:
        super().__init__()
        if num_bits < 1:
            raise ConfigError(f"SimHash: num_bits must be >= 1, got {num_bits}")
        gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("projection", torch.randn(input_dim, num_bits, generator=gen))
        self.num_bits = int(num_bits)

    def forward(self, x: torch.Tensor, resample: bool = False) -> torch.Tensor:
        """(..., D) -> (..., num_bits) bool signature bits.

        ``resample=True`` hashes with a fresh N(0, 1) projection drawn from the global torch
        RNG for this call only (LongCTR's ``reuse_hash=False``); the buffer is unchanged.
        """
        projection = torch.randn_like(self.projection) if resample else self.projection
        return torch.matmul(x.detach(), projection) > 0  # (..., m)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """(..., m) bool with m <= 64 -> (...,) int64 with bit j = ``bits[..., j]``."""
    m = bits.shape[-1]
    if m > 64:
        raise ConfigError(f"pack_bits: at most 64 bits fit one int64 signature, got {m}")
    weights = torch.ones(m, dtype=torch.int64, device=bits.device) \
        << torch.arange(m, device=bits.device)  # (m,); bit 63 wraps to the sign bit
    return (bits.to(torch.int64) * weights).sum(-1)  # (...,)


_M1, _M2, _M4 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F
_H01 = 0x0101010101010101


def popcount(x: torch.Tensor) -> torch.Tensor:
    """Number of set bits of each int64 (SWAR bit counting; arithmetic shifts are masked)."""
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    return (x * _H01) >> 56  # top byte holds the count (<= 64, so the sign bit stays 0)


def hamming_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamming distance of packed signatures (broadcast int64 tensors)."""
    return popcount(torch.bitwise_xor(a, b))


def hamming_distance_reference(bits_a: torch.Tensor, bits_b: torch.Tensor) -> torch.Tensor:
    """Hamming distance of unpacked bit tensors (..., m): number of differing bits."""
    return (bits_a != bits_b).sum(-1)


def bucket_codes(bits: torch.Tensor, width: int) -> torch.Tensor:
    """SDIM buckets: (..., H * width) bool -> (..., H) int64.

    Signature h is made of bits ``h * width .. h * width + width - 1`` (LongCTR's random
    rotations (D, num_hashes, hash_bits), flattened), read as a little-endian number (bit t
    weighs 2**t, LongCTR's ``powers_of_two``). ``width`` <= 62.
    """
    groups = bits.shape[-1] // width
    grouped = bits.reshape(*bits.shape[:-1], groups, width).to(torch.int64)  # (..., G, w)
    weights = 2 ** torch.arange(width, device=bits.device)  # (w,)
    return (grouped * weights).sum(-1)  # (..., G)


def sdim_aggregate(table: torch.Tensor, index: torch.Tensor, mask: torch.Tensor,
                   codes: torch.Tensor, target_index: torch.Tensor,
                   l2_norm: bool = True) -> torch.Tensor:
    """SDIM interest without materializing the (B, L, D) history.

    For every sample b and signature (hash function) g, the valid behaviors whose code
    equals the target's are summed (``F.embedding_bag`` over the rows of ``table``),
    L2-normalized when ``l2_norm``, then averaged over the signatures (LongCTR's
    ``SDIM.lsh_attentioin``).

    Args:
        table: (U, D) embeddings of the distinct items of the batch.
        index: (B, L) row of ``table`` per history position. mask: (B, L) bool.
        codes: (U, G) integer code per distinct item and signature (any integer dtype;
            :func:`sdim_interest` passes the narrowest, :func:`code_dtype`).
        target_index: (B,) row of ``table`` of each target.

    Returns:
        (B, D); zero where no behavior collides with the target in any signature.
    """
    batch, groups = index.shape[0], codes.shape[1]
    collide = codes[index] == codes[target_index].unsqueeze(1)  # (B, L, G)
    collide &= mask.unsqueeze(-1)
    # (B, G, L) -> (B*G, L); one bag per (sample, group), positions in time order
    bag, pos = collide.permute(0, 2, 1).reshape(batch * groups, -1).nonzero(as_tuple=True)
    items = index.reshape(-1)[(bag // groups) * index.shape[1] + pos]  # (nnz,) rows of table
    counts = torch.bincount(bag, minlength=batch * groups)  # (B*G,)
    offsets = torch.zeros(batch * groups + 1, dtype=torch.int64, device=table.device)
    offsets[1:] = counts.cumsum(0)
    sums = F.embedding_bag(items, table, offsets, mode="sum",
                           include_last_offset=True)  # (B*G, D)
    if l2_norm:
        sums = F.normalize(sums, dim=-1)
    return sums.view(batch, groups, -1).mean(1)  # (B, D)


def sdim_aggregate_reference(history: torch.Tensor, mask: torch.Tensor,
                             seq_codes: torch.Tensor, target_codes: torch.Tensor,
                             l2_norm: bool = True) -> torch.Tensor:
    """Dense version of :func:`sdim_aggregate` on a materialized history.

    history (B, L, D), mask (B, L), seq_codes (B, L, G), target_codes (B, G) -> (B, D).
    """
    collide = (seq_codes == target_codes.unsqueeze(1)) & mask.unsqueeze(-1)  # (B, L, G)
    sums = torch.einsum("blg,bld->bgd", collide.to(history.dtype), history)  # (B, G, D)
    if l2_norm:
        sums = F.normalize(sums, dim=-1)
    return sums.mean(1)  # (B, D)


def sdim_interest(table: torch.Tensor, index: torch.Tensor, mask: torch.Tensor,
                  target_index: torch.Tensor, bits: torch.Tensor, hash_bits: int,
                  l2_norm: bool = True) -> torch.Tensor:
    """SDIM's long-term interest, fast path: codes once per distinct item, sums by
    ``F.embedding_bag`` (:func:`sdim_aggregate`).

    Args:
        table, index, mask, target_index: as :func:`sdim_aggregate`.
        bits: (U, num_hashes * hash_bits) bool SimHash bits of the rows of ``table``.
        hash_bits: bits per signature.

    Returns:
        (B, D).
    """
    codes = bucket_codes(bits, hash_bits).to(code_dtype(hash_bits))  # (U, H)
    return sdim_aggregate(table, index, mask, codes, target_index, l2_norm)  # (B, D)


def code_dtype(width: int) -> torch.dtype:
    """The narrowest integer dtype that holds a ``width``-bit SDIM bucket: uint8 up to 8 bits,
    then int16, int32, int64. :func:`sdim_aggregate` gathers the codes per history position,
    a (B, L, num_hashes) tensor, so SDIM's 3-bit codes as uint8 move an eighth of the memory
    of int64 (same comparisons, same result)."""
    for dtype, bits in ((torch.uint8, 8), (torch.int16, 15), (torch.int32, 31)):
        if width <= bits:
            return dtype
    return torch.int64


def sdim_hash_reference(vecs: torch.Tensor, projection: torch.Tensor, num_hashes: int,
                        hash_bits: int) -> torch.Tensor:
    """SDIM codes the way LongCTR's ``SDIM.lsh_hash`` computes them: rotate with the
    projection viewed as (D, num_hashes, hash_bits), take the argmax of [-r, r] per bit
    (1 where r > 0), and read each signature's bits with weights 2**t.

    vecs (..., D), projection (D, num_hashes * hash_bits) -> (..., num_hashes) int64.
    """
    rotations = projection.view(projection.shape[0], num_hashes, hash_bits)  # (D, H, b)
    rotated = torch.einsum("...d,dht->...ht", vecs, rotations).unsqueeze(-1)  # (..., H, b, 1)
    bits = torch.cat([-rotated, rotated], dim=-1).argmax(-1)  # (..., H, b)
    powers = 2 ** torch.arange(hash_bits, device=vecs.device)  # (b,)
    return (bits * powers).sum(-1)  # (..., H)


def sdim_interest_reference(history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                            projection: torch.Tensor, num_hashes: int, hash_bits: int,
                            l2_norm: bool = True) -> torch.Tensor:
    """Brute force SDIM interest: for every sample, every signature h and every valid
    behavior l, add behavior l when its h-th code equals the target's; normalize each
    signature's sum when ``l2_norm``; average over the ``num_hashes`` signatures.

    history (B, L, D), mask (B, L) bool, target (B, D), projection
    (D, num_hashes * hash_bits) -> (B, D).
    """
    seq_codes = sdim_hash_reference(history.detach(), projection, num_hashes, hash_bits)
    target_codes = sdim_hash_reference(target.detach(), projection, num_hashes, hash_bits)
    rows = []
    for b in range(history.shape[0]):
        per_hash = []
        for h in range(num_hashes):
            total = history.new_zeros(history.shape[-1])  # (D,)
            for pos in range(history.shape[1]):
                if bool(mask[b, pos]) and int(seq_codes[b, pos, h]) == int(target_codes[b, h]):
                    total = total + history[b, pos]
            per_hash.append(F.normalize(total, dim=0) if l2_norm else total)
        rows.append(torch.stack(per_hash).mean(0))  # (D,)
    return torch.stack(rows)  # (B, D)
