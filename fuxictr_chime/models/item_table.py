"""Item-side features held by the model, embedded once per distinct item of a batch.

Utilization stage (CHIME paper section 5.1: every ranking model uses the item-side
multimodal vectors, for the target and for every behavior of the sequence). The long-sequence
loader delivers histories as item indices only (``item_seq`` (B, L+1), target last,
ARCHITECTURE.md section 3); the features of each item (``item_id``, ``cate_id``, ...,
dense vectors such as ``title_emb``) come from ``item_info.parquet`` (row i = item i,
row 0 = padding), loaded here into buffers.

The speed trick: a batch of 2048 histories of 1000 behaviors holds far fewer distinct
items than positions, so :meth:`ItemTable.lookup` embeds each distinct item once
(``torch.unique(return_inverse=True)``) and returns the small table plus, per position,
its row in that table. Models score and gather behaviors through :class:`ItemHistory`
without materializing the (B, L, D) history unless they need it. :meth:`ItemTable.forward`
returns the dense (..., D) result; :meth:`ItemTable.forward_reference` embeds every
position separately (the plain reference path).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from .retrieval import masked_softmax

if TYPE_CHECKING:
    from fuxictr.features import FeatureMap

logger = logging.getLogger(__name__)

ITEM_FEATURE_TYPES = ("categorical", "numeric", "embedding", "sequence")
DEFAULT_INITIALIZER = "partial(nn.init.normal_, std=1e-4)"  # FuxiCTR's default


def item_feature_names(feature_map: "FeatureMap") -> list[str]:
    """Active non-meta features with ``source: item``, in feature-map order."""
    return [name for name, spec in feature_map.features.items()
            if spec.get("source") == "item" and spec.get("type") in ITEM_FEATURE_TYPES]


def resolve_item_info(feature_map: "FeatureMap", item_info: str | os.PathLike | None) -> str:
    """The item_info parquet path: the given one, else ``<data_dir>/item_info.parquet``."""
    candidates = [str(item_info)] if item_info else []
    if not candidates and getattr(feature_map, "data_dir", None):
        candidates.append(os.path.join(feature_map.data_dir, "item_info.parquet"))
    for path in candidates:
        for option in (path, path + ".parquet"):
            if os.path.exists(option):
                return option
    if not candidates:
        raise ConfigError("models need 'item_info' (path of item_info.parquet) in the dataset "
                          "config: sequence item features are looked up there")
    raise DataError(f"{candidates[0]}: item_info file not found")


def unique_inverse(index: torch.Tensor,
                   num_items: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct values of ``index`` (sorted) and, per element, its position among them.

    With ``num_items`` (all values in 0..num_items-1) and ``num_items <= 8 * index.numel()``
    no sort is needed: mark the present items in a (num_items,) bool vector; their ranks
    (cumulative sum) are the positions. Otherwise ``torch.unique(return_inverse=True)``.
    Both give the same result.
    """
    if num_items is None or num_items > 8 * index.numel():
        return torch.unique(index, sorted=True, return_inverse=True)  # (U,), (...)
    present = torch.zeros(num_items, dtype=torch.bool, device=index.device)  # (I,)
    present[index.reshape(-1)] = True
    values = present.nonzero().squeeze(1)  # (U,) sorted
    rank = torch.cumsum(present, 0) - 1  # (I,) position among the present items
    return values, rank[index]  # (U,), (...)


@dataclass
class ItemHistory:
    """A batch of behavior sequences as (distinct-item table, row index per position).

    ``table`` (U, D) embeds each distinct item of the batch once; ``index`` (B, L) gives
    the table row of each history position (padding rows are zero vectors);
    ``target_index`` (B,) the row of each target; ``mask`` (B, L) bool marks valid
    behaviors (left padding is False).
    """

    table: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor
    target_index: torch.Tensor

    @property
    def length(self) -> int:
        return self.index.shape[1]

    @property
    def target(self) -> torch.Tensor:
        return F.embedding(self.target_index, self.table)  # (B, D)

    def dense(self) -> torch.Tensor:
        """The whole history as (B, L, D)."""
        return F.embedding(self.index, self.table)  # (B, L, D)

    def last(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``n`` most recent positions: embeddings (B, n, D) and mask (B, n)."""
        index, mask = self.last_index(n)
        return F.embedding(index, self.table), mask

    def last_index(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Table rows (B, n) and mask (B, n) of the ``n`` most recent positions."""
        n = min(int(n), self.length)
        return self.index[:, -n:], self.mask[:, -n:]

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Embeddings of table rows ``index`` (B, k) -> (B, k, D)."""
        return F.embedding(index, self.table)  # (B, k, D)

    def _few_distinct(self) -> bool:
        """Whether the batch has few distinct items (U <= 10 L): then one matmul against the
        whole item table beats gathering every position (measured on CPU)."""
        return self.table.shape[0] <= 10 * self.length

    def _chunks(self, chunk_elements: int) -> range:
        per_row = self.table.shape[0] if self._few_distinct() else \
            self.length * self.table.shape[1]
        rows = max(1, chunk_elements // max(1, per_row))
        return range(0, self.index.shape[0], rows)

    def dot(self, query: torch.Tensor, chunk_elements: int = 1 << 22) -> torch.Tensor:
        """Inner product of every behavior with a per-sample query: (B, D) -> (B, L).

        Reference: ``einsum("bld,bd->bl", dense(), query)``. Two equivalent fast paths, in
        row chunks of about ``chunk_elements`` floats so that neither (B, L, D) nor (U, B)
        exists at once: with few distinct items, score every distinct item against the
        chunk's queries (one matmul) and pick each position's score; otherwise gather the
        chunk's history and bmm. Differentiable.
        """
        parts = []
        step = self._chunks(chunk_elements).step
        for start in self._chunks(chunk_elements):
            index, q = self.index[start:start + step], query[start:start + step]  # (c, L), (c, D)
            if self._few_distinct():
                scores = self.table @ q.T  # (U, c)
                parts.append(scores.gather(0, index.T).T)  # (c, L)
            else:
                chunk = F.embedding(index, self.table)  # (c, L, D)
                parts.append((chunk * q.unsqueeze(1)).sum(-1))  # (c, L)
        return torch.cat(parts)  # (B, L)

    def weighted_sum(self, weights: torch.Tensor,
                     chunk_elements: int = 1 << 22) -> torch.Tensor:
        """Sum of the behaviors weighted per position: (B, L) -> (B, D).

        Reference: ``einsum("bl,bld->bd", weights, dense())``. With few distinct items the
        weights are first summed per distinct item (``scatter_add`` into (c, U)) and
        multiplied with the table; otherwise chunks of the history are gathered. Both are
        differentiable in ``weights`` and ``table``.
        """
        parts = []
        step = self._chunks(chunk_elements).step
        for start in self._chunks(chunk_elements):
            index, w = self.index[start:start + step], weights[start:start + step]  # (c, L)
            if self._few_distinct():
                per_item = w.new_zeros(len(index), self.table.shape[0])  # (c, U)
                parts.append(per_item.scatter_add(1, index, w) @ self.table)  # (c, D)
            else:
                chunk = F.embedding(index, self.table)  # (c, L, D)
                parts.append((w.unsqueeze(-1) * chunk).sum(1))  # (c, D)
        return torch.cat(parts)  # (B, D)

    def attention_pool(self, query: torch.Tensor,
                       chunk_elements: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``s = history . query`` (B, L) and the softmax(s)-weighted sum of the
        valid behaviors (B, D) (zero for an empty history), differentiable.

        Same as ``dot`` then ``weighted_sum(masked_softmax(s, mask))``; on the gather path
        each chunk of the history is gathered once for both (rows are complete within a
        chunk), which halves the gathers and their backward. Products are elementwise
        multiply-and-sum: CPU ``bmm`` with a width-1 side is many times slower, above all
        in backward.
        """
        if self._few_distinct():
            scores = self.dot(query, chunk_elements)  # (B, L)
            return scores, self.weighted_sum(masked_softmax(scores, self.mask), chunk_elements)
        scores, pooled = [], []
        step = self._chunks(chunk_elements).step
        for start in self._chunks(chunk_elements):
            rows = slice(start, start + step)
            chunk = F.embedding(self.index[rows], self.table)  # (c, L, D)
            s = (chunk * query[rows].unsqueeze(1)).sum(-1)  # (c, L)
            w = masked_softmax(s, self.mask[rows])  # (c, L)
            scores.append(s)
            pooled.append((w.unsqueeze(-1) * chunk).sum(1))  # (c, D)
        return torch.cat(scores), torch.cat(pooled)  # (B, L), (B, D)


class ItemTable(nn.Module):
    """Item-side features of all items as buffers, embedded by a FuxiCTR ``FeatureEmbedding``.

    Args:
        feature_map: FuxiCTR feature map; its ``source: item`` features (categorical,
            numeric, embedding, sequence) are loaded and embedded.
        embedding_dim: default embedding width (a feature's ``embedding_dim`` wins).
        item_info: path of ``item_info.parquet`` (default ``<data_dir>/item_info.parquet``).
        embedding_initializer: FuxiCTR initializer string (default normal, std 1e-4).

    The buffers are not persistent: they are data, re-read from ``item_info`` when the
    model is built, and are kept out of checkpoints. ``output_dim`` is D_item, the width
    of the concatenated item embedding.
    """

    def __init__(self, feature_map: "FeatureMap", embedding_dim: int,
                 item_info: str | os.PathLike | None = None, *,
                 embedding_initializer: str = DEFAULT_INITIALIZER) -> None:
        super().__init__()
        from fuxictr.pytorch.layers import FeatureEmbedding

        self.feature_names = item_feature_names(feature_map)
        if not self.feature_names:
            raise ConfigError(f"dataset '{feature_map.dataset_id}': no active feature with "
                              f"'source: item' (e.g. item_id); sequence models need one")
        self.path = resolve_item_info(feature_map, item_info)
        self._load(feature_map)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim,
                                          embedding_initializer=embedding_initializer,
                                          required_feature_columns=self.feature_names)
        with torch.no_grad():
            self.output_dim = int(self.embed(torch.zeros(1, dtype=torch.long)).shape[-1])

    def _load(self, feature_map: "FeatureMap") -> None:
        from ..data.loader import column_to_numpy, read_parquet_columns

        table = read_parquet_columns(self.path, self.feature_names, "item_info")
        self.num_items = table.num_rows
        if self.num_items < 1:
            raise DataError(f"{self.path}: item_info is empty (row 0 must be the padding item)")
        _check_row_index(self.path)
        for name in self.feature_names:
            spec = feature_map.features[name]
            arr = column_to_numpy(table.column(name), spec, f"{self.path}: column '{name}'")
            if spec["type"] in ("categorical", "sequence"):
                arr = arr.astype(np.int64, copy=False)
                _check_vocab(arr, spec, name, self.path)
            else:
                arr = arr.astype(np.float32, copy=False)
            self.register_buffer(_buffer_name(name), torch.from_numpy(arr), persistent=False)
        logger.info("%s: %d items, item features %s", self.path, self.num_items,
                    self.feature_names)

    def features(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw features of items ``index`` (N,): {name: (N,) or (N, d)}."""
        return {name: getattr(self, _buffer_name(name))[index] for name in self.feature_names}

    def embed(self, index: torch.Tensor) -> torch.Tensor:
        """Embeddings of items ``index`` (N,) -> (N, D_item); item 0 (padding) -> zeros."""
        emb = self.embedding(self.features(index), flatten_emb=True)  # (N, D)
        return emb * (index != 0).unsqueeze(-1).to(emb.dtype)  # (N, D)

    def lookup(self, item_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed each distinct item once: returns ``(table (U, D), inverse (...))`` with
        ``table[inverse]`` equal to the embedding of ``item_index`` (...)."""
        self._check_range(item_index)
        values, inverse = unique_inverse(item_index, self.num_items)  # (U,), (...)
        return self.embed(values), inverse  # (U, D), (...)

    def _check_range(self, item_index: torch.Tensor) -> None:
        low, high = torch.aminmax(item_index) if item_index.numel() else (0, 0)
        if int(low) < 0 or int(high) >= self.num_items:
            bad = int(low) if int(low) < 0 else int(high)
            raise DataError(f"item index {bad} is outside {self.path} "
                            f"(rows 0..{self.num_items - 1})")

    def forward(self, item_index: torch.Tensor) -> torch.Tensor:
        """(...) int64 item indices -> (..., D_item), each distinct item embedded once."""
        table, inverse = self.lookup(item_index)
        return F.embedding(inverse, table)  # (..., D)

    def forward_reference(self, item_index: torch.Tensor) -> torch.Tensor:
        """Plain path: embed every position separately. (...) -> (..., D_item)."""
        self._check_range(item_index)
        flat = item_index.reshape(-1)  # (N,)
        return self.embed(flat).view(*item_index.shape, -1)  # (..., D)


def _buffer_name(feature: str) -> str:
    return "item_" + feature.replace(".", "_")


def _check_row_index(path: str) -> None:
    """item_info row r must hold item_index r when the column exists."""
    from ..data.loader import parquet_column_names, read_parquet_columns

    if "item_index" not in parquet_column_names(path):
        return
    index = read_parquet_columns(path, ["item_index"], "item_info").column(0).to_numpy()
    wrong = np.flatnonzero(index != np.arange(len(index)))
    if len(wrong):
        r = int(wrong[0])
        raise DataError(f"{path}: column 'item_index' must equal the row number (row 0 = "
                        f"padding); row {r} holds {index[r]}")


def _check_vocab(arr: np.ndarray, spec: dict, name: str, path: str) -> None:
    vocab = spec.get("vocab_size")
    if vocab is None or not arr.size:
        return
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high >= int(vocab):
        raise DataError(f"{path}: column '{name}' holds index {high if high >= vocab else low} "
                        f"outside its vocab_size {vocab} (dataset config)")
