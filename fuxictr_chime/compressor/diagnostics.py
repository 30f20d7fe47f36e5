"""Diagnostics that say whether a compressor learned (docs/ARCHITECTURE.md section 5.1).

Four questions, each answered by a small function (numpy / torch, no FuxiCTR):

1. **Did the holistic loss beat a groupby?** The eval holistic loss of paper eq. 1 (a) (same
   loss code, same eval users, same batches and the same position weighting as
   :func:`.train.evaluate`) of non-learned reference scorers, each a logit for (anchor, candidate)
   handed to :func:`.losses.holistic_loss_from_scores`:

   * ``uniform``: every logit equal (chance; the loss is the mean log of the candidate count);
   * ``popularity``: log(1 + positive count of the candidate item over the training users'
     representation sequences), the same for every anchor;
   * ``cooccurrence``: for the anchor at position t of user u, log(1 + number of u's positives
     at positions <= t whose category equals the candidate's) (``cate_id`` or the data's first
     categorical item attribute; item ids when there is none);
   * ``popularity_cooccurrence``: the sum of the two (the strongest of these counting baselines);
   * ``oracle`` (optional): a per-user logit per category (e.g. the planted generator's
     long-term affinity, :func:`oracle_from_truth`) or any callable ``(users, items) -> logits``.

   The loss's tau plays no part (it only scales <z, p>). A raw log-count logit makes the
   candidate softmax proportional to the count, but in-batch candidates already appear in
   proportion to their popularity, so it over-counts (on MovieLens raw popularity is worse than
   uniform); :func:`run_references` therefore multiplies each non-uniform logit by the scale in
   {0 (= uniform), 1/8, 1/4, 1/2, 1} with the lowest loss on a few training users and also reports
   the unscaled losses. Expected ladder: uniform > popularity > co-occurrence > compressor >
   oracle (in loss; lower is better).
2. **Did z collapse?** Over the L2-normalized user states z_t of the eval users' positions:
   effective rank = participation ratio (sum lambda)^2 / sum lambda^2 of the covariance
   eigenvalues (1 = one direction, D = isotropic), the share of variance on the first principal
   component and the mean pairwise cosine (:func:`collapse_stats`).
3. **Does every quantizer level carry user information?** Per level l: the cumulative share of
   the projected vector b's variance that levels 1..l reconstruct, and the plug-in mutual
   information (nats) between the level's code and the user, I(c_l; u), and given the earlier
   levels, I(c_l; u | c_<l), each next to a shuffled control (users permuted across positions,
   mean of a few fixed-seed shuffles, which is the estimator's bias for that table size). A
   level whose information equals its control carries nothing about the user.
4. **Who gets a feature at all?** Coverage: the share of ranking rows (train / valid / test)
   whose user has a non-zero exported column (users without representation history get zeros).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from ..errors import DataError
from .losses import holistic_loss_from_scores

logger = logging.getLogger(__name__)

__all__ = [
    "uniform_scorer", "popularity_scorer", "cooccurrence_scorer", "oracle_scorer", "oracle_from_truth",
    "item_positive_counts", "category_attribute", "reference_losses", "reference_loss_grid", "run_references",
    "SCALE_GRID",
    "Moments", "collapse_stats", "effective_rank", "first_pc_share", "mean_pairwise_cosine",
    "level_variance_shares", "code_user_information", "mutual_information", "conditional_mutual_information",
    "coverage", "user_states", "collect_states", "state_diagnostics", "export_diagnostics",
    "format_eval_summary", "format_export_diagnostics", "REFERENCE_NAMES", "REFERENCE_LABELS", "DIAGNOSTIC_COLUMNS",
    "TRUTH_FILE",
]

REFERENCE_NAMES = ("uniform", "popularity", "cooccurrence", "popularity_cooccurrence", "oracle")
#: how the console names a reference scorer (the name itself where absent)
REFERENCE_LABELS = {"cooccurrence": "co-occurrence", "popularity_cooccurrence": "pop x co-occ."}
#: log.csv columns written by the trainer: reference losses (eval rows) and collapse of z.
DIAGNOSTIC_COLUMNS = (*(f"ref_{name}" for name in REFERENCE_NAMES), "eff_rank", "pc1_share", "mean_cosine")
TRUTH_FILE = "planted_truth.json"  # written by the planted synthetic generator

# A scorer maps one batch to a score function for holistic_loss_from_scores:
# scorer(batch)(anchor_idx (C,), item_idx (Nv,)) -> logits (C, Nv); indices are flat u * T + t.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Scorer = Callable[[Mapping[str, Any]], ScoreFn]


# ============================================================================ reference scorers
def uniform_scorer() -> Scorer:
    """Every logit 0: the loss of anchor a is log(#candidates of a)."""
    def prepare(batch: Mapping[str, Any]) -> ScoreFn:
        return lambda anchors, items: torch.zeros(anchors.numel(), items.numel())  # (C, Nv)
    return prepare


def popularity_scorer(counts: np.ndarray, smoothing: float = 1.0) -> Scorer:
    """logit(candidate i) = log(smoothing + counts[i]) for every anchor; ``counts`` (I+1,) by item_index."""
    log_pop = torch.log(torch.as_tensor(np.asarray(counts, dtype=np.float64)) + smoothing).float()  # (I+1,)

    def prepare(batch: Mapping[str, Any]) -> ScoreFn:
        item = batch["item_index"].reshape(-1).cpu()  # (B*T,)
        return lambda anchors, items: log_pop[item[items]].unsqueeze(0).expand(anchors.numel(), -1)  # (C, Nv)
    return prepare


def cooccurrence_scorer(attribute: str | None, smoothing: float = 1.0,
                        popularity: np.ndarray | None = None) -> Scorer:
    """logit(anchor (u, t), candidate i) = log(smoothing + #{s <= t: y_us = +1, a(item_us) = a(i)}),
    a = the item attribute ``attribute`` (None: the item id). With ``popularity`` (I+1,) counts,
    log(smoothing + popularity[i]) is added (the popularity x co-occurrence scorer).

    Memory O(B * T * V') per batch, V' = distinct attribute values among the batch's items."""
    log_pop = None if popularity is None else \
        torch.log(torch.as_tensor(np.asarray(popularity, dtype=np.float64)) + smoothing).float()  # (I+1,)

    def prepare(batch: Mapping[str, Any]) -> ScoreFn:
        values = _attribute_values(batch, attribute).cpu()  # (B, T)
        mask = _mask(batch).cpu()
        B, T = values.shape
        flat = values.reshape(-1)  # (B*T,)
        uniq, column = torch.unique(flat, return_inverse=True)  # (V',), (B*T,)
        positive = (mask & (batch["labels"].cpu() == 1)).reshape(-1).float()  # (B*T,)
        onehot = torch.zeros(B * T, uniq.numel())  # (B*T, V')
        onehot[torch.arange(B * T), column] = positive
        seen = onehot.reshape(B, T, -1).cumsum(1).reshape(B * T, -1)  # (B*T, V') positives at s <= t
        item = batch["item_index"].reshape(-1).cpu()  # (B*T,)

        def score(anchors: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            logits = torch.log(smoothing + seen[anchors][:, column[items]])  # (C, Nv)
            if log_pop is not None:
                logits = logits + log_pop[item[items]].unsqueeze(0)  # (C, Nv)
            return logits
        return score
    return prepare


def oracle_scorer(oracle: np.ndarray | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  attribute: str | None = "cate_id") -> Scorer:
    """The oracle reference: ``oracle`` is either a (U+1, V) matrix whose row u holds user u's
    logit per value of ``attribute`` (the true long-term interest of a synthetic log; users and
    values outside the matrix get 0), or a callable ``(user_index (C,), item_index (Nv,)) ->
    logits (C, Nv)``."""
    matrix = None if callable(oracle) else torch.as_tensor(np.asarray(oracle, dtype=np.float32))  # (U+1, V)

    def prepare(batch: Mapping[str, Any]) -> ScoreFn:
        nonlocal matrix
        T = batch["labels"].shape[1]
        users = batch["user_index"].cpu()  # (B,)
        item = batch["item_index"].reshape(-1).cpu()  # (B*T,)
        values = _attribute_values(batch, attribute).reshape(-1).cpu() if matrix is not None else None
        if matrix is not None:  # pad with zeros to cover this batch's users and values
            rows, cols = max(matrix.shape[0], int(users.max()) + 1), max(matrix.shape[1], int(values.max()) + 1)
            if (rows, cols) != tuple(matrix.shape):
                matrix = F.pad(matrix, (0, cols - matrix.shape[1], 0, rows - matrix.shape[0]))  # (rows, cols)

        def score(anchors: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            anchor_user = users[torch.div(anchors, T, rounding_mode="floor")]  # (C,)
            if matrix is None:
                return torch.as_tensor(oracle(anchor_user, item[items]), dtype=torch.float32)  # (C, Nv)
            return matrix[anchor_user][:, values[items]]  # (C, Nv)
        return score
    return prepare


def oracle_from_truth(path: str | os.PathLike, attribute: str = "cate_id") -> np.ndarray | None:
    """(U+1, V) logits A_u(k) = long_affinity * n_favourites * w_u(k) of a planted log's
    ``planted_truth.json`` (favourite ``cate_id`` codes and weights per user); None when the
    file does not have that shape (with a warning)."""
    try:
        truth = json.loads(Path(path).read_text())
        knobs, users = truth["knobs"], truth["users"]
        scale = float(knobs["long_affinity"]) * int(knobs["n_favourites"])
        index = [int(u) for u in users["user_index"]]
        cates, weights = users[f"favourite_{attribute}s"], users["favourite_weights"]
        width = 1 + max([int(c) for row in cates for c in row] + [0])
        matrix = np.zeros((max(index, default=0) + 1, width), dtype=np.float32)
        for u, row_c, row_w in zip(index, cates, weights):
            for c, w in zip(row_c, row_w):
                if int(c) > 0:
                    matrix[u, int(c)] += scale * float(w)
        return matrix
    except (OSError, KeyError, TypeError, ValueError) as exc:
        logger.warning("%s: cannot build the oracle scorer (%s); no oracle reference", path, exc)
        return None


def category_attribute(vocab_sizes: Mapping[str, int], preferred: str = "cate_id") -> str | None:
    """``preferred`` when the data has it, else its first categorical item attribute, else None (item ids)."""
    names = sorted(name for name in vocab_sizes if name != "item_id")
    if preferred in names:
        return preferred
    return names[0] if names else None


def item_positive_counts(data: Any, user_ids: Sequence[int], batch_size: int = 256) -> np.ndarray:
    """(I+1,) number of +1 behaviors of each item_index over ``user_ids``' kept sequences."""
    counts = np.zeros(data.num_items + 1, dtype=np.int64)
    for batch in data.batches(user_ids, batch_size, shuffle=False):
        positive = (_mask(batch) & (batch["labels"] == 1)).numpy()  # (B, T)
        counts += np.bincount(batch["item_index"].numpy()[positive], minlength=counts.size)
    return counts


@torch.no_grad()
def reference_loss_grid(data: Any, user_ids: Sequence[int], scorers: Mapping[str, Scorer], *, batch_size: int,
                        seed: int, scales: Sequence[float] = (1.0,), chunk_size: int | None = 256
                        ) -> dict[str, np.ndarray]:
    """Holistic loss of each scorer with its logits multiplied by each of ``scales``, aggregated
    exactly as :func:`.train.evaluate` does (batches of ``batch_size`` users, ``shuffle=False,
    bucket=True, seed``; each batch's loss weighted by its number of valid positions).
    Returns ``{name: (len(scales),) losses}``."""
    sums = {name: np.zeros(len(scales)) for name in scorers}
    weight = 0.0
    for batch in data.batches(user_ids, batch_size, shuffle=False, seed=seed, bucket=True):
        mask = _mask(batch)
        labels = batch["labels"].long() * mask.long()  # (B, T), 0 at padding
        n = float(mask.sum())
        for name, scorer in scorers.items():
            score = scorer(batch)
            for k, scale in enumerate(scales):
                fn = score if scale == 1.0 else (lambda a, c, s=float(scale): s * score(a, c))  # (C, Nv)
                sums[name][k] += n * float(holistic_loss_from_scores(fn, labels, chunk_size=chunk_size))
        weight += n
    return {name: value / max(weight, 1.0) for name, value in sums.items()}


def reference_losses(data: Any, eval_ids: Sequence[int], scorers: Mapping[str, Scorer], *, batch_size: int,
                     seed: int, chunk_size: int | None = 256) -> dict[str, float]:
    """Eval holistic loss of each scorer as given (see :func:`reference_loss_grid`)."""
    grid = reference_loss_grid(data, eval_ids, scorers, batch_size=batch_size, seed=seed, chunk_size=chunk_size)
    return {name: float(values[0]) for name, values in grid.items()}


#: logit multipliers tried for each counting / oracle scorer, besides 0 (= uniform scores).
SCALE_GRID = (0.125, 0.25, 0.5, 1.0)


def run_references(data: Any, train_ids: Sequence[int], eval_ids: Sequence[int], *, batch_size: int, seed: int,
                   oracle: np.ndarray | Callable | None = None, attribute: str | None = "auto",
                   chunk_size: int | None = 256, fit_users: int = 50,
                   scales: Sequence[float] = SCALE_GRID) -> dict:
    """The reference ladder of a run.

    Popularity counts come from ``train_ids``; the oracle is read from the data folder's
    ``planted_truth.json`` when ``oracle`` is None and that file exists. Each scorer but uniform
    gets the logit multiplier among 0 and ``scales`` with the lowest holistic loss on up to
    ``fit_users`` training users (seeded pick, popularity counted over the other training users;
    the eval users are never used for fitting): a raw log-count logit over-weights what the
    in-batch candidates already reflect (they appear in proportion to their popularity), and the
    bar a compressor must clear is the best member of each family. Returns ``{"losses": {name: eval loss at the fitted scale},
    "unscaled": {name: eval loss at scale 1}, "scales": {name: fitted scale}, "attribute", ...}``."""
    if attribute == "auto":
        attribute = category_attribute(data.vocab_sizes())
    truth = Path(getattr(data, "data_dir", "")) / TRUTH_FILE
    if oracle is None and attribute is not None and truth.is_file():
        oracle = oracle_from_truth(truth, attribute)
    fit_ids = list(train_ids)
    if len(fit_ids) > fit_users:
        fit_ids = sorted(np.random.default_rng(seed).choice(fit_ids, fit_users, replace=False).tolist())
    # the fit users' own positives stay out of the popularity counts used to fit the scales
    rest = sorted(set(train_ids) - set(fit_ids)) or list(train_ids)
    fit = reference_loss_grid(data, fit_ids, _reference_scorers(item_positive_counts(data, rest), attribute, oracle),
                              batch_size=batch_size, seed=seed, scales=scales, chunk_size=chunk_size)
    candidates = [0.0, *scales]  # scale 0 = uniform scores
    chosen = {name: candidates[int(np.argmin([fit["uniform"][0], *fit[name]]))] for name in fit if name != "uniform"}
    counts = item_positive_counts(data, train_ids)
    scorers = _reference_scorers(counts, attribute, oracle)
    grid = reference_loss_grid(data, eval_ids, {"uniform": scorers["uniform"]}, batch_size=batch_size, seed=seed,
                               chunk_size=chunk_size)
    losses, unscaled = {"uniform": float(grid["uniform"][0])}, {"uniform": float(grid["uniform"][0])}
    for name, scale in chosen.items():
        pair = sorted({scale, 1.0} - {0.0})
        values = reference_loss_grid(data, eval_ids, {name: scorers[name]}, batch_size=batch_size, seed=seed,
                                     scales=pair, chunk_size=chunk_size)[name]
        unscaled[name] = float(values[pair.index(1.0)])
        losses[name] = losses["uniform"] if scale == 0.0 else float(values[pair.index(scale)])
    return {"losses": losses, "unscaled": unscaled, "scales": chosen, "scale_grid": candidates,
            "fit_users": len(fit_ids), "attribute": attribute or "item_id", "smoothing": 1.0,
            "eval_users": len(eval_ids), "train_users": len(train_ids), "popularity_positives": int(counts.sum())}


def _reference_scorers(counts: np.ndarray, attribute: str | None, oracle: Any) -> dict[str, Scorer]:
    scorers: dict[str, Scorer] = {
        "uniform": uniform_scorer(),
        "popularity": popularity_scorer(counts),
        "cooccurrence": cooccurrence_scorer(attribute),
        "popularity_cooccurrence": cooccurrence_scorer(attribute, popularity=counts),
    }
    if oracle is not None:
        scorers["oracle"] = oracle_scorer(oracle, attribute)
    return scorers


# ============================================================================ collapse of z
class Moments:
    """Running first and second moments of L2-normalized rows (float64); zero rows are skipped."""

    def __init__(self) -> None:
        self.n, self.total, self.outer = 0, None, None

    def add(self, x: np.ndarray | torch.Tensor) -> "Moments":
        x = torch.as_tensor(x).detach().to("cpu", torch.float64)
        x = x.reshape(-1, x.shape[-1])  # (N, D)
        norm = x.norm(dim=1)
        x = x[norm > 1e-12] / norm[norm > 1e-12].unsqueeze(1)  # (n, D) unit rows
        if self.total is None:
            self.total, self.outer = torch.zeros(x.shape[1], dtype=torch.float64), \
                torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        self.n += x.shape[0]
        self.total += x.sum(0)
        self.outer += x.T @ x  # (D, D)
        return self

    def eigenvalues(self) -> np.ndarray:
        """Covariance eigenvalues, descending (empty without rows)."""
        if not self.n:
            return np.zeros(0)
        mean = self.total / self.n
        cov = self.outer / self.n - torch.outer(mean, mean)  # (D, D)
        return np.clip(np.linalg.eigvalsh(cov.numpy())[::-1], 0.0, None)

    def stats(self) -> dict:
        """``{"effective_rank", "pc1_share", "mean_cosine", "vectors"}`` (see module docstring).

        Identical vectors (no variance) give effective rank 0 and first-PC share 1."""
        lam = self.eigenvalues()
        total = float(lam.sum()) if lam.size else 0.0
        if total <= 1e-12:
            rank, pc1 = 0.0, 1.0
        else:
            rank, pc1 = total ** 2 / float((lam ** 2).sum()), float(lam[0]) / total
        cosine = None  # undefined for fewer than two vectors
        if self.n > 1:
            cosine = (float(self.total @ self.total) - self.n) / (self.n * (self.n - 1))  # mean over pairs i != j
        return {"effective_rank": rank, "pc1_share": pc1, "mean_cosine": cosine, "vectors": self.n}


def collapse_stats(x: np.ndarray | torch.Tensor) -> dict:
    """Effective rank, first-PC share and mean pairwise cosine of the L2-normalized rows of x (N, D)."""
    return Moments().add(x).stats()


def effective_rank(x: np.ndarray | torch.Tensor) -> float:
    """Participation ratio (sum lambda)^2 / sum lambda^2 of the covariance of the normalized rows."""
    return collapse_stats(x)["effective_rank"]


def first_pc_share(x: np.ndarray | torch.Tensor) -> float:
    """Share of the normalized rows' variance on the first principal component."""
    return collapse_stats(x)["pc1_share"]


def mean_pairwise_cosine(x: np.ndarray | torch.Tensor) -> float:
    """Mean cosine over distinct pairs of (non-zero) rows."""
    return collapse_stats(x)["mean_cosine"]


# ============================================================================ quantizer levels
def level_variance_shares(projected: np.ndarray | torch.Tensor, code_vectors: np.ndarray | torch.Tensor) -> list[float]:
    """Cumulative share of the variance of ``projected`` b (N, D) reconstructed by the code vectors
    (N, M, D) of levels 1..l: 1 - totvar(b - sum_{m<=l} c_m) / totvar(b), totvar = trace of the
    covariance."""
    acc = _LevelVariance()
    acc.add(torch.as_tensor(projected), torch.as_tensor(code_vectors))
    return acc.shares()


class _LevelVariance:
    """Running sums for :func:`level_variance_shares` (float64)."""

    def __init__(self) -> None:
        self.n, self.sums = 0, None  # sums: list of (sum r, sum |r|^2) for b and each level's residual

    def add(self, b: torch.Tensor, codes: torch.Tensor) -> None:
        b = b.detach().to("cpu", torch.float64)  # (N, D)
        recon = codes.detach().to("cpu", torch.float64).cumsum(1)  # (N, M, D)
        parts = [b] + [b - recon[:, m] for m in range(recon.shape[1])]
        now = [(r.sum(0), float((r * r).sum())) for r in parts]
        self.sums = now if self.sums is None else [(a + c, s + t) for (a, s), (c, t) in zip(self.sums, now)]
        self.n += b.shape[0]

    def shares(self) -> list[float]:
        if not self.n:
            return []
        var = [sq / self.n - float((s / self.n) @ (s / self.n)) for s, sq in self.sums]
        return [1.0 - v / var[0] if var[0] > 0 else None for v in var[1:]]


def _entropy(keys: np.ndarray) -> float:
    """Plug-in entropy (nats) of the rows of ``keys`` (N,) or (N, k)."""
    if keys.ndim == 1:
        keys = keys[:, None]
    if keys.shape[1] == 0 or keys.shape[0] == 0:
        return 0.0
    _, counts = np.unique(keys, axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """Plug-in I(x; y) = H(x) + H(y) - H(x, y) in nats; x, y (N,) or (N, k) integer keys."""
    x, y = _as_2d(x), _as_2d(y)
    return _entropy(x) + _entropy(y) - _entropy(np.concatenate([x, y], 1))


def conditional_mutual_information(x: np.ndarray, y: np.ndarray, given: np.ndarray) -> float:
    """Plug-in I(x; y | g) = H(x, g) + H(y, g) - H(x, y, g) - H(g) in nats."""
    x, y, g = _as_2d(x), _as_2d(y), _as_2d(given)
    return (_entropy(np.concatenate([x, g], 1)) + _entropy(np.concatenate([y, g], 1))
            - _entropy(np.concatenate([x, y, g], 1)) - _entropy(g))


def code_user_information(codes: np.ndarray | torch.Tensor, users: np.ndarray | torch.Tensor, *,
                          shuffles: int = 5, seed: int = 0) -> list[dict]:
    """Per quantizer level: I(c_l; user) and I(c_l; user | c_<l) (nats) with shuffled controls.

    ``codes`` (N, M) code per position and level; ``users`` (N,) the user of each position.
    Controls (mean over the seeds seed..seed + shuffles - 1): ``mi_control`` = I(c_l; user) with
    the users permuted across all positions; ``cmi_control`` = I(c_l; user | c_<l) with the users
    permuted across the positions that share the same earlier codes c_<l (which keeps the
    user's association with the earlier levels, so it is the estimator's value for a level that
    adds nothing given them). A level whose statistic is at its control carries no (new) user
    information. Each entry also holds the code entropy H(c_l)."""
    codes, users = np.asarray(codes, dtype=np.int64), np.asarray(users, dtype=np.int64)
    if codes.ndim != 2 or users.shape != (codes.shape[0],):
        raise DataError(f"code_user_information: codes must be (N, M) and users (N,), got {codes.shape} "
                        f"and {users.shape}")
    rngs = [np.random.default_rng(seed + k) for k in range(shuffles)]
    levels = []
    for m in range(codes.shape[1]):
        code, before = codes[:, m], codes[:, :m]
        mi = mutual_information(code, users)
        cmi = conditional_mutual_information(code, users, before) if m else mi
        mi_ctrl = [mutual_information(code, users[np.random.default_rng(seed + k).permutation(users.size)])
                   for k in range(shuffles)]
        cmi_ctrl = [conditional_mutual_information(code, _permute_within(users, before, rng), before)
                    for rng in rngs] if m else mi_ctrl
        levels.append({"level": m + 1, "entropy": _entropy(code), "mi": mi,
                       "mi_control": float(np.mean(mi_ctrl)) if mi_ctrl else None,
                       "cmi": cmi, "cmi_control": float(np.mean(cmi_ctrl)) if cmi_ctrl else None})
    return levels


def _permute_within(values: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``values`` permuted among the positions that share the same row of ``groups`` (N, k)."""
    _, key = np.unique(_as_2d(groups), axis=0, return_inverse=True)  # (N,) stratum id
    key = key.reshape(-1)
    slots = np.lexsort((np.arange(key.size), key))  # positions grouped by stratum
    shuffled = np.lexsort((rng.random(key.size), key))  # the same strata, random order inside
    out = np.empty_like(values)
    out[slots] = values[shuffled]
    return out


# ============================================================================ coverage
def _nonzero_list_rows(column) -> np.ndarray:
    """(N,) bool: which rows of a list<float> column hold a non-zero value (null/empty: False)."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(column).fill_null(0).to_numpy().astype(np.int64)  # (N,)
    flat = pc.list_flatten(column).fill_null(0).to_numpy(zero_copy_only=False)  # (sum lengths,)
    rows = np.repeat(np.arange(lengths.size), lengths)  # row of every flat value
    return np.bincount(rows[flat != 0], minlength=lengths.size) > 0

def coverage(data_dir: str | os.PathLike, features: np.ndarray | None = None, *, column: str | None = None,
             splits: Sequence[str] = ("train", "valid", "test")) -> dict:
    """Per ranking split: ``{"rows", "covered", "share"}`` where covered = rows whose user has a
    non-zero exported vector. ``features`` (max user_index + 1, d) by user_index, or ``column``
    read from ``user_info.parquet``. Missing split files are skipped."""
    data_dir = Path(data_dir)
    if features is None:
        if column is None:
            raise DataError("coverage: give the feature matrix or the exported column name")
        table = pq.read_table(data_dir / "user_info.parquet", columns=["user_index", column])
        index = table.column("user_index").to_numpy()
        nonzero_rows = _nonzero_list_rows(table.column(column))
        nonzero = np.zeros(int(index.max(initial=0)) + 1, dtype=bool)
        nonzero[index] = nonzero_rows
    else:
        nonzero = np.abs(np.asarray(features)).sum(1) > 0  # (U+1,)
    result = {}
    for split in splits:
        path = data_dir / f"{split}.parquet"
        if not path.is_file():
            continue
        users = pq.read_table(path, columns=["user_index"]).column("user_index").to_numpy().astype(np.int64)
        known = (users >= 0) & (users < nonzero.size)
        covered = int(nonzero[users[known]].sum())
        result[split] = {"rows": int(users.size), "covered": covered,
                         "share": covered / users.size if users.size else None}
    return result


# ============================================================================ model states
def user_states(model: torch.nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(z (B, T, D) L2-normalized user states, mask (B, T) bool) of one batch, in eval mode.

    A model with a ``user_states(batch)`` method (LEARN) answers itself; CHIME's z is the user
    GLU output after the quantizer (the vector the holistic loss scores), w/o ICM the GLU output."""
    if hasattr(model, "user_states"):
        z, mask = model.user_states(batch)
    else:
        hidden, _, mask = model._represent(batch)
        z, _, _ = model._compress(hidden, mask)  # (B, T, D)
    return F.normalize(z.float(), dim=-1), mask.bool()


@torch.no_grad()
def collect_states(model: torch.nn.Module, data: Any, user_ids: Sequence[int], *, batch_size: int, seed: int = 0,
                   max_positions: int | None = None, levels: bool = True) -> dict:
    """One eval-mode pass over ``user_ids`` (the batches of :func:`.train.evaluate`).

    Returns ``{"z": Moments, "irm": Moments | None, "codes": (N, M) | None, "users": (N,),
    "level_variance": [cumulative share per level] | None, "positions": N}``. Stops after the
    batch that reaches ``max_positions`` (None: all users)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    quantizer = getattr(model, "quantizer", None) if levels else None
    chime = not hasattr(model, "user_states") and hasattr(model, "_represent")
    z_moments, irm_moments = Moments(), (Moments() if chime else None)
    level_var, codes_all, users_all, n = _LevelVariance(), [], [], 0
    from .train import move_batch  # train imports this module

    for batch in data.batches(user_ids, batch_size, shuffle=False, seed=seed, bucket=True):
        batch = move_batch(batch, device)
        if chime:
            hidden, _, mask = model._represent(batch)  # (B, T, H)
            z, _, codes = model._compress(hidden, mask)  # (B, T, D), (B, T, M) | None
            irm_moments.add(hidden.float()[mask])
        else:
            z, mask = model.user_states(batch)
            codes = None
        mask = mask.bool()
        z_moments.add(z.float()[mask])
        users = batch["user_index"].unsqueeze(1).expand_as(mask)[mask].cpu().numpy()  # (n,)
        users_all.append(users)
        if quantizer is not None and codes is not None:
            valid = codes[mask]  # (n, M)
            b = model._project(hidden, mask)[mask]  # (n, D): the RVQ input
            vectors = torch.stack([quantizer.codebook(m)[valid[:, m]] for m in range(valid.shape[1])], 1)  # (n, M, D)
            level_var.add(b, vectors)
            codes_all.append(valid.cpu().numpy())
        n += len(users)
        if max_positions is not None and n >= max_positions:
            break
    model.train(was_training)
    return {"z": z_moments, "irm": irm_moments, "users": np.concatenate(users_all) if users_all else np.zeros(0, int),
            "codes": np.concatenate(codes_all) if codes_all else None,
            "level_variance": level_var.shares() if codes_all else None, "positions": n}


def state_diagnostics(model: torch.nn.Module, data: Any, user_ids: Sequence[int], *, batch_size: int,
                      seed: int = 0) -> dict:
    """Collapse of z over ``user_ids``: ``{"eff_rank", "pc1_share", "mean_cosine"}`` (log.csv columns)."""
    stats = collect_states(model, data, user_ids, batch_size=batch_size, seed=seed, levels=False)["z"].stats()
    return {"eff_rank": stats["effective_rank"], "pc1_share": stats["pc1_share"], "mean_cosine": stats["mean_cosine"]}


def export_diagnostics(model: torch.nn.Module, data: Any, eval_ids: Sequence[int], features: np.ndarray,
                       data_dir: str | os.PathLike, *, batch_size: int, seed: int = 0,
                       max_positions: int | None = 200_000, shuffles: int = 5) -> dict:
    """The ``diagnostics`` block of an export (see the module docstring for each number)."""
    states = collect_states(model, data, eval_ids, batch_size=batch_size, seed=seed, max_positions=max_positions)
    block: dict[str, Any] = {
        "users": "eval users of the training run (optim.seed / optim.eval_users)",
        "eval_users": len(eval_ids), "positions": states["positions"],
        "z": states["z"].stats(),
        "features": Moments().add(features).stats(),  # the exported column, one row per user with history
        "coverage": coverage(data_dir, features),
    }
    if states["irm"] is not None:
        block["irm"] = states["irm"].stats()
    if states["codes"] is not None:
        info = code_user_information(states["codes"], states["users"], shuffles=shuffles)
        for entry, share in zip(info, states["level_variance"]):
            entry["variance_share"] = share  # cumulative, levels 1..l
        block["levels"] = info
    return block


# ============================================================================ reporting
def format_eval_summary(result: Mapping[str, Any], references: Mapping[str, float] | None,
                        stats: Mapping[str, float] | None, metric: str = "holistic") -> str:
    """One console line, e.g. ``eval holistic 6.674 | uniform 6.742 | popularity 6.700 | ... | eff. rank 1.1``."""
    parts = [f"eval {metric} {_num(result[metric])}"]
    for name, value in (references or {}).items():
        parts.append(f"{REFERENCE_LABELS.get(name, name)} {_num(value)}")
    if stats:
        parts += [f"eff. rank {_num(stats['eff_rank'], 2)}", f"PC1 {_pct(stats['pc1_share'])}",
                  f"mean cos {_num(stats['mean_cosine'])}"]
    return " | ".join(parts)


def format_export_diagnostics(block: Mapping[str, Any]) -> str:
    """Readable lines of an export's diagnostics block."""
    def collapse(s: Mapping[str, Any]) -> str:
        return (f"eff. rank {_num(s['effective_rank'], 2)}, PC1 {_pct(s['pc1_share'])}, "
                f"mean cos {_num(s['mean_cosine'])}")

    lines = [f"z over {block['positions']} positions of {block['eval_users']} eval users: {collapse(block['z'])}"]
    if "irm" in block:
        lines.append(f"IRM hidden states: {collapse(block['irm'])}")
    lines.append(f"exported column over {block['features']['vectors']} users: {collapse(block['features'])}")
    for entry in block.get("levels", []):
        lines.append(f"level {entry['level']}: variance share (cum.) {_num(entry['variance_share'])}, "
                     f"I(c;u) {_num(entry['mi'])} vs control {_num(entry['mi_control'])}, "
                     f"I(c;u|c<l) {_num(entry['cmi'])} vs control {_num(entry['cmi_control'])} nats")
    cover = ", ".join(f"{k} {_pct(v['share'])}" for k, v in block["coverage"].items())
    lines.append(f"coverage (ranking rows whose user has a non-zero column): {cover}")
    return "\n".join(lines)


def _num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


# ============================================================================ helpers
def _mask(batch: Mapping[str, Any]) -> torch.Tensor:
    mask = batch.get("mask")
    return mask.bool() if mask is not None else batch["labels"] != 0


def _attribute_values(batch: Mapping[str, Any], attribute: str | None) -> torch.Tensor:
    """(B, T) attribute value of each position (item_index when ``attribute`` is None)."""
    if attribute is None or attribute == "item_id":
        return batch["item_index"]
    attrs = batch.get("attrs") or {}
    if attribute not in attrs:
        raise DataError(f"reference scorer: the batch has no item attribute {attribute!r} "
                        f"(attributes: {sorted(attrs)})")
    return attrs[attribute]


def _as_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    return x[:, None] if x.ndim == 1 else x
