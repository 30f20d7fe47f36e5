"""Interest Compression Module (ICM): residual vector quantization (paper section 4.4, spec 3.3).

Layer m quantizes the residual b^(m) of layer m - 1 (b^(1) = the input) by its nearest code
c^(m) (squared L2) and passes on b^(m+1) = b^(m) - c^(m). The training-stage output is the sum
over layers of the per-layer estimators: the rotation trick (Fifty et al. 2024, arXiv
2410.06424) by default, or the paper's plain straight-through b + sg(c - b). The commitment loss
is the mean over valid positions of sum_m |b^(m) - sg(c^(m))|^2 (unweighted: the model applies
beta). In inference, a user's codes give one histogram per codebook; their concatenation is the
exported ``chime_hist`` feature (paper Table 5 diagnostics: hit ratio and perplexity 2^H).

Codebooks are buffers, never optimizer parameters. In training mode each forward
1. initializes them from the batch once (seeded k-means per layer on that layer's residuals),
2. updates them by an exponential moving average of per-code counts and sums with Laplace
   smoothing (van den Oord et al. 2017, appendix; Sonnet's VectorQuantizerEMA), and
3. replaces dead codes (EMA cluster size below ``dead_code_threshold``) by random valid
   residuals of the batch, resetting their statistics.
Padding positions (``mask`` False) never reach codebooks, statistics, losses or outputs.

Under torch.distributed the per-code counts and sums are all-reduced, and the k-means
initialization and the replacement vectors come from rank 0 (broadcast), so every rank holds
identical codebooks; every rank must therefore run each training-mode forward (evaluation
belongs in eval mode, which never communicates). A two-process gloo test checks that ranks end
with identical codebooks; the full multi-GPU training path is tested by a later issue.
"""
from __future__ import annotations

import logging
import math
from typing import NamedTuple, Sequence

import torch
from torch import nn

from fuxictr_chime.errors import ConfigError, DataError

__all__ = ["RVQOutput", "CodeStats", "ResidualVQ", "rotation_trick", "code_histogram", "code_stats"]

logger = logging.getLogger(__name__)


class RVQOutput(NamedTuple):
    """Result of :meth:`ResidualVQ.forward`.

    quantized: (..., D) sum over layers of the estimators (zeros at padding).
    codes: (..., M) int64 code index per layer (-1 at padding).
    commit_loss: scalar, mean over valid positions of sum_m |b^(m) - sg(c^(m))|^2.
    residuals: (..., M, D) layer inputs b^(m) (zeros at padding) when asked for, else None.
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    commit_loss: torch.Tensor
    residuals: torch.Tensor | None = None


class CodeStats(NamedTuple):
    """Per-codebook diagnostics of paper Table 5 (layer order; perplexity nan without data)."""

    hit_ratio: tuple[float, ...]
    perplexity: tuple[float, ...]

    def as_dict(self) -> dict[str, float]:
        """Flat ``{"hit_ratio_1": .., "perplexity_1": .., ...}`` (codebooks numbered from 1)."""
        out: dict[str, float] = {}
        for m, (hit, ppl) in enumerate(zip(self.hit_ratio, self.perplexity), start=1):
            out[f"hit_ratio_{m}"] = hit
            out[f"perplexity_{m}"] = ppl
        return out


def rotation_trick(e: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rotation-trick estimator sg(lambda R) e of Fifty et al. (2024), rows on the last dim.

    With e' = e/|e|, q' = q/|q|, r = (e' + q')/|e' + q'| and lambda = |q|/|e|, the rotation
    R = I - 2 r r^T + 2 q' e'^T maps e' to q', so the value is q; the gradient reaching e is
    lambda R^T g. R is never materialized: R e = e - 2 r <r, e> + 2 q' <e', e>. Norms are
    clamped at ``eps``. ``q`` receives no gradient (it enters only under stop-gradient).

    Args:
        e: inputs, (..., D).
        q: chosen codes, (..., D).
    Returns:
        (..., D), equal to ``q`` in value.
    """
    with torch.no_grad():
        e_norm = e.norm(dim=-1, keepdim=True).clamp_min(eps)             # (..., 1)
        q_norm = q.norm(dim=-1, keepdim=True).clamp_min(eps)             # (..., 1)
        e_hat, q_hat = e / e_norm, q / q_norm                             # (..., D)
        r = e_hat + q_hat                                                 # (..., D)
        r = r / r.norm(dim=-1, keepdim=True).clamp_min(eps)               # (..., D)
        lam = q_norm / e_norm                                             # (..., 1)
    rotated = e - 2 * r * (r * e).sum(-1, keepdim=True) + 2 * q_hat * (e_hat * e).sum(-1, keepdim=True)  # (..., D)
    out = lam * rotated                                                   # (..., D)
    return out + (q - out).detach()  # exact value q; gradient of sg(lambda R) e unchanged


class ResidualVQ(nn.Module):
    """Residual vector quantizer of the ICM (paper section 4.4) with EMA codebooks.

    Args (defaults): dim=64 code width D; codebook_sizes=(32, 16, 16) codes per layer;
        decay=0.99 EMA decay; eps=1e-5 Laplace smoothing; rotation_trick=True (False: plain
        straight-through); kmeans_init=True (False: codebooks initialized from sampled batch
        residuals without Lloyd iterations); kmeans_iters=10; dead_code_threshold=1.0 (EMA
        cluster size below which a code is replaced; 0 disables replacement); seed=0 for the
        initial random codebooks, k-means sampling and dead-code replacement.

    Gradient: codebooks are constants, so each b^(m) has an identity Jacobian w.r.t. the input
    and, with plain straight-through, the output's gradient w.r.t. the input is M * g (one
    identity per layer's estimator, as in the paper's sum of estimators).
    """

    def __init__(
        self,
        dim: int = 64,
        codebook_sizes: Sequence[int] = (32, 16, 16),
        *,
        decay: float = 0.99,
        eps: float = 1e-5,
        rotation_trick: bool = True,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_config(dim, codebook_sizes, decay, eps, kmeans_iters, dead_code_threshold)
        self.dim = int(dim)
        self.codebook_sizes = tuple(int(k) for k in codebook_sizes)
        self.decay, self.eps = float(decay), float(eps)
        self.use_rotation_trick = bool(rotation_trick)
        self.kmeans_iters = int(kmeans_iters) if kmeans_init else 0
        self.dead_code_threshold = float(dead_code_threshold)
        self.generator = torch.Generator().manual_seed(int(seed))
        for m, k in enumerate(self.codebook_sizes):
            self.register_buffer(f"codebook_{m}", torch.randn(k, self.dim, generator=self.generator))
            self.register_buffer(f"cluster_size_{m}", torch.zeros(k))
            self.register_buffer(f"embed_sum_{m}", torch.zeros(k, self.dim))
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def num_layers(self) -> int:
        return len(self.codebook_sizes)

    def codebook(self, m: int) -> torch.Tensor:
        """Codebook of layer m (0-based), (K_m, D)."""
        return getattr(self, f"codebook_{m}")

    # ------------------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *,
                return_residuals: bool = False) -> RVQOutput:
        """Quantize ``x`` (..., D); ``mask`` (...) bool marks valid positions (None: all).

        In training mode this also initializes (first call) and EMA-updates the codebooks.
        Computation runs outside autocast in the codebooks' dtype, at least float32 (so is
        ``quantized``).
        """
        lead, valid_idx = self._flat_valid_index(x, mask)                 # shape (...), (n,)
        with torch.autocast(device_type=x.device.type, enabled=False):
            dtype = torch.promote_types(self.codebook(0).dtype, torch.float32)
            b = x.reshape(-1, self.dim)[valid_idx].to(dtype)               # (n, D) valid rows only
            if self.training:
                self._maybe_initialize(b.detach())
            est, codes, commit, residuals = self._quantize_rows(b)
        n_all = math.prod(lead)
        quantized = b.new_zeros(n_all, self.dim).index_copy(0, valid_idx, est)  # (N, D)
        codes_all = torch.full((n_all, self.num_layers), -1, dtype=torch.long, device=x.device)
        codes_all = codes_all.index_copy(0, valid_idx, codes)             # (N, M)
        commit_loss = commit.mean() if commit.numel() else 0.0 * b.sum()  # b empty: a zero with a grad path
        res_all = None
        if return_residuals:
            res_all = b.new_zeros(n_all, self.num_layers, self.dim).index_copy(0, valid_idx, residuals)  # (N, M, D)
            res_all = res_all.reshape(*lead, self.num_layers, self.dim)  # (..., M, D)
        return RVQOutput(
            quantized=quantized.reshape(*lead, self.dim),                # (..., D)
            codes=codes_all.reshape(*lead, self.num_layers),             # (..., M)
            commit_loss=commit_loss,
            residuals=res_all,
        )

    def _flat_valid_index(self, x: torch.Tensor, mask: torch.Tensor | None):
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise DataError(f"ResidualVQ: input must be (..., {self.dim}), got {tuple(x.shape)}")
        lead = x.shape[:-1]
        if mask is None:
            return lead, torch.arange(math.prod(lead), device=x.device)
        if mask.shape != x.shape[:-1]:
            raise DataError(f"ResidualVQ: mask must have shape {tuple(x.shape[:-1])}, got {tuple(mask.shape)}")
        return lead, mask.reshape(-1).bool().nonzero().squeeze(1)         # (n,)

    def _quantize_rows(self, b: torch.Tensor):
        """Quantize valid rows b (n, D) layer by layer; EMA-update codebooks in training mode."""
        residual = b
        est = torch.zeros_like(b)                                         # (n, D)
        commit = b.new_zeros(b.shape[0])                                  # (n,)
        codes, inputs = [], []
        for m in range(self.num_layers):
            book = self.codebook(m).to(b.dtype)                           # (K, D)
            k = _nearest(residual.detach(), book)                         # (n,)
            c = book[k]                                                   # (n, D) copy: later EMA edits don't touch it
            commit = commit + (residual - c).pow(2).sum(-1)               # (n,)
            if self.use_rotation_trick:
                est = est + rotation_trick(residual, c)
            else:
                est = est + residual + (c - residual).detach()
            codes.append(k)
            inputs.append(residual)
            if self.training:
                self._ema_update(m, residual.detach(), k)
            residual = residual - c
        return est, torch.stack(codes, dim=1), commit, torch.stack(inputs, dim=1)  # ..., (n, M), (n,), (n, M, D)

    # ------------------------------------------------------------------------------ codebook updates

    @torch.no_grad()
    def _maybe_initialize(self, b: torch.Tensor) -> None:
        """First training forward: seeded k-means per layer on that layer's valid residuals."""
        if bool(self.initialized) or not _rank0_says(b.shape[0] > 0, b.device):
            return
        residual = b
        for m, k_m in enumerate(self.codebook_sizes):
            centroids = self._kmeans(residual, k_m) if _is_rank0() else residual.new_empty(k_m, self.dim)
            _broadcast_(centroids)
            k = _nearest(residual, centroids)                             # (n,)
            counts, _ = _code_counts_and_sums(residual, k, k_m)           # (K,)
            _all_reduce_(counts)
            self.codebook(m).copy_(centroids)
            getattr(self, f"cluster_size_{m}").copy_(counts)
            getattr(self, f"embed_sum_{m}").copy_(centroids * counts.unsqueeze(1))  # (K, D)
            residual = residual - centroids[k]
        self.initialized.fill_(True)
        logger.debug("ResidualVQ codebooks initialized from %d vectors (k-means iters %d)",
                     b.shape[0], self.kmeans_iters)

    def _kmeans(self, data: torch.Tensor, k: int) -> torch.Tensor:
        """Lloyd's k-means from k sampled rows (with replacement if fewer rows than codes), (k, D)."""
        centroids = data[self._sample_rows(data.shape[0], k).to(data.device)]  # (k, D)
        for _ in range(self.kmeans_iters):
            assign = _nearest(data, centroids)                            # (n,)
            counts, sums = _code_counts_and_sums(data, assign, k)         # (k,), (k, D)
            means = sums / counts.clamp_min(1).unsqueeze(1)               # (k, D)
            centroids = torch.where(counts.unsqueeze(1) > 0, means, centroids)  # empty clusters stay
        return centroids

    def _sample_rows(self, n: int, k: int) -> torch.Tensor:
        if n >= k:
            return torch.randperm(n, generator=self.generator)[:k]
        return torch.randint(n, (k,), generator=self.generator)

    @torch.no_grad()
    def _ema_update(self, m: int, residual: torch.Tensor, k: torch.Tensor) -> None:
        """EMA of per-code counts and sums, Laplace-smoothed codebook, then dead-code replacement."""
        k_m = self.codebook_sizes[m]
        counts, sums = _code_counts_and_sums(residual, k, k_m)            # (K,), (K, D)
        _all_reduce_(counts)
        _all_reduce_(sums)
        size = getattr(self, f"cluster_size_{m}")
        embed_sum = getattr(self, f"embed_sum_{m}")
        size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = size.sum()
        if float(total) > 0:
            smoothed = (size + self.eps) / (total + k_m * self.eps) * total  # (K,)
            self.codebook(m).copy_(embed_sum / smoothed.unsqueeze(1))
        self._replace_dead_codes(m, residual)

    def _replace_dead_codes(self, m: int, residual: torch.Tensor) -> None:
        """Codes with EMA cluster size < threshold become random valid residuals of this batch."""
        if self.dead_code_threshold <= 0:
            return
        size = getattr(self, f"cluster_size_{m}")
        dead = size < self.dead_code_threshold                             # (K,) identical on all ranks
        n_dead = int(dead.sum())
        if n_dead == 0 or not _rank0_says(residual.shape[0] > 0, residual.device):
            return
        if _is_rank0():
            vectors = residual[self._sample_rows(residual.shape[0], n_dead).to(residual.device)]  # (n_dead, D)
        else:
            vectors = residual.new_empty(n_dead, self.dim)
        _broadcast_(vectors)
        self.codebook(m)[dead] = vectors
        size[dead] = self.dead_code_threshold
        getattr(self, f"embed_sum_{m}")[dead] = vectors * self.dead_code_threshold
        logger.debug("ResidualVQ layer %d: replaced %d dead codes", m, n_dead)

    # ------------------------------------------------------------------------------ codes -> outputs

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the chosen code vectors, (..., M) int -> (..., D); code -1 (padding) adds zero."""
        if codes.shape[-1] != self.num_layers:
            raise DataError(f"ResidualVQ.decode: codes must be (..., {self.num_layers}), got {tuple(codes.shape)}")
        out = torch.zeros(*codes.shape[:-1], self.dim, device=self.codebook(0).device)  # (..., D)
        for m, k_m in enumerate(self.codebook_sizes):
            k = codes[..., m].long()                                      # (...)
            _check_code_range(k, k_m, m)
            vec = self.codebook(m)[k.clamp_min(0)]                        # (..., D)
            out = out + vec.masked_fill((k < 0).unsqueeze(-1), 0.0)
        return out

    def histogram(self, codes: torch.Tensor, mask: torch.Tensor | None = None,
                  normalize: bool = True) -> torch.Tensor:
        """One code histogram per codebook, concatenated: (..., T, M) -> (..., sum K) float32.

        Counts only valid positions (``mask`` True and code >= 0). ``normalize``: each block
        holds frequencies summing to 1 (spec 3.5 default); else raw counts. Rows without a valid
        position are all zeros.
        """
        return code_histogram(codes, self.codebook_sizes, mask, normalize)

    def code_stats(self, codes: torch.Tensor, mask: torch.Tensor | None = None) -> CodeStats:
        """Hit ratio (share of codes used at least once) and perplexity 2^H (H in bits) per
        codebook over all valid positions of ``codes`` (..., M) (paper Table 5)."""
        return code_stats(codes, self.codebook_sizes, mask)

    # ------------------------------------------------------------------------------ state

    def get_extra_state(self) -> dict:
        """The seeded generator's state travels with the buffers, so a resumed run replays."""
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_sizes={self.codebook_sizes}, decay={self.decay}, "
                f"rotation_trick={self.use_rotation_trick}, kmeans_iters={self.kmeans_iters}, "
                f"dead_code_threshold={self.dead_code_threshold}")


# ---------------------------------------------------------------------------------- functions


def code_histogram(codes: torch.Tensor, codebook_sizes: Sequence[int], mask: torch.Tensor | None = None,
                   normalize: bool = True) -> torch.Tensor:
    """Concatenated per-codebook histograms of ``codes`` (..., T, M) -> (..., sum K) float32."""
    sizes = tuple(int(k) for k in codebook_sizes)
    if codes.dim() < 2 or codes.shape[-1] != len(sizes):
        raise DataError(f"histogram: codes must be (..., T, {len(sizes)}), got {tuple(codes.shape)}")
    valid = _valid_positions(codes, mask)                                 # (..., T)
    total = sum(sizes)
    lead, T, M = codes.shape[:-2], codes.shape[-2], codes.shape[-1]
    offsets = torch.tensor([0, *sizes[:-1]], device=codes.device).cumsum(0)  # (M,)
    for m, k_m in enumerate(sizes):
        _check_code_range(codes[..., m][valid], k_m, m)
    flat = (codes.long() + offsets).masked_fill(~valid.unsqueeze(-1), total)  # (..., T, M); total = drop bin
    flat = flat.reshape(-1, T * M)                                        # (R, T*M)
    counts = torch.zeros(flat.shape[0], total + 1, device=codes.device)   # (R, sum K + 1)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=counts.dtype))
    counts = counts[:, :total]                                            # (R, sum K)
    if normalize:
        n_valid = valid.reshape(-1, T).sum(1, keepdim=True)               # (R, 1)
        counts = counts / n_valid.clamp_min(1)
    return counts.reshape(*lead, total)                                   # (..., sum K)


def code_stats(codes: torch.Tensor, codebook_sizes: Sequence[int], mask: torch.Tensor | None = None) -> CodeStats:
    """Hit ratio and perplexity 2^H per codebook over all valid positions of ``codes`` (..., M)."""
    sizes = tuple(int(k) for k in codebook_sizes)
    if codes.shape[-1] != len(sizes):
        raise DataError(f"code_stats: codes must be (..., {len(sizes)}), got {tuple(codes.shape)}")
    valid = _valid_positions(codes, mask)                                 # (...)
    hits, ppls = [], []
    for m, k_m in enumerate(sizes):
        k = codes[..., m][valid].long()                                   # (n,)
        _check_code_range(k, k_m, m)
        counts = torch.bincount(k, minlength=k_m).double()                # (K,)
        n = counts.sum()
        if n == 0:
            hits.append(0.0)
            ppls.append(float("nan"))
            continue
        prob = counts[counts > 0] / n
        entropy_bits = -(prob * prob.log2()).sum()
        hits.append(float((counts > 0).double().mean()))
        ppls.append(float(2.0 ** entropy_bits))
    return CodeStats(hit_ratio=tuple(hits), perplexity=tuple(ppls))


def _valid_positions(codes: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    valid = codes[..., 0] >= 0                                            # (...)
    if mask is not None:
        if mask.shape != valid.shape:
            raise DataError(f"mask must have shape {tuple(valid.shape)}, got {tuple(mask.shape)}")
        valid = valid & mask.bool()
    return valid


def _check_code_range(k: torch.Tensor, k_m: int, m: int) -> None:
    if k.numel() and int(k.max()) >= k_m:
        raise DataError(f"codes of codebook {m + 1} must be < {k_m}, found {int(k.max())}")


def _nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code (squared L2) for each row of x (n, D) -> (n,)."""
    dist = x.pow(2).sum(1, keepdim=True) - 2 * x @ codebook.T + codebook.pow(2).sum(1)  # (n, K)
    return dist.argmin(dim=1)


def _code_counts_and_sums(x: torch.Tensor, k: torch.Tensor, n_codes: int):
    counts = torch.bincount(k, minlength=n_codes).to(x.dtype)             # (K,)
    sums = x.new_zeros(n_codes, x.shape[1]).index_add_(0, k, x)           # (K, D)
    return counts, sums


def _check_config(dim, codebook_sizes, decay, eps, kmeans_iters, dead_code_threshold) -> None:
    if int(dim) < 1:
        raise ConfigError(f"ResidualVQ: dim must be >= 1, got {dim!r}")
    if len(codebook_sizes) == 0 or any(int(k) < 1 for k in codebook_sizes):
        raise ConfigError("ResidualVQ: codebook_sizes must be a non-empty list of positive sizes, "
                          f"got {codebook_sizes!r}")
    if not 0.0 <= float(decay) < 1.0:
        raise ConfigError(f"ResidualVQ: decay must be in [0, 1), got {decay!r}")
    if not float(eps) > 0:
        raise ConfigError(f"ResidualVQ: eps must be > 0, got {eps!r}")
    if int(kmeans_iters) < 0:
        raise ConfigError(f"ResidualVQ: kmeans_iters must be >= 0, got {kmeans_iters!r}")
    if float(dead_code_threshold) < 0:
        raise ConfigError(f"ResidualVQ: dead_code_threshold must be >= 0, got {dead_code_threshold!r}")


# ---------------------------------------------------------------------------------- distributed


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _is_rank0() -> bool:
    return not _distributed() or torch.distributed.get_rank() == 0


def _all_reduce_(t: torch.Tensor) -> None:
    if _distributed():
        torch.distributed.all_reduce(t)


def _broadcast_(t: torch.Tensor) -> None:
    if _distributed():
        torch.distributed.broadcast(t, src=0)


def _rank0_says(flag: bool, device: torch.device) -> bool:
    """Rank 0's value of ``flag`` on every rank (the flag itself outside torch.distributed)."""
    if not _distributed():
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    _broadcast_(t)
    return bool(t.item())
