"""Shared plumbing of the long-sequence ranking models (utilization stage, paper section 5.1).

:class:`LongSeqBase` is a FuxiCTR ``BaseModel`` that owns, once for every model:

* the FuxiCTR ``FeatureEmbedding`` of the non-item, non-meta features (user and context
  columns, and the compressed column ``chime_hist`` / ``learn_emb`` of a ``_CHIME`` /
  ``_LEARN`` variant), and the :class:`~fuxictr_chime.models.item_table.ItemTable` that
  embeds the target and every behavior from ``item_info.parquet``;
* input unpacking: ``item_seq`` (B, L+1, target last) and ``seq_mask`` (B, L) from the
  long-sequence loader become an :class:`~fuxictr_chime.models.item_table.ItemHistory`;
* the short-sequence interest: FuxiCTR's ``DIN_Attention`` (computed by
  :class:`~.din_attention.FusedDINAttention`, same parameters) over the last ``short_len``
  behaviors (DIN itself, and the short part of the long-sequence models as in LongCTR);
* the final MLP (``MLP_Block`` -> sigmoid) over [target, interest vector(s), other
  feature embeddings (incl. the compressed column of a variant)];
* the loss (``main_weight`` x main + weighted auxiliary outputs such as SimSoft's GSU head +
  any ``aux_loss`` in the forward's dict), the training step with gradient accumulation, and
  periodic parameter copies (TWIN's ESU -> GSU every ``sync_every`` training batches);
* the constructor's parameter names (:mod:`~fuxictr_chime.models.params`): once per
  construction, LongCTR's names are mapped to ours or refused, and names no model knows are
  reported with the closest known one;
* the batches of LongCTR's own data loader (``model_zoo/LongCTR/longctr_dataloader.py``: a
  tuple ``(batch_dict, item_dict, mask)``), converted by :meth:`LongSeqBase.batch_dict` into
  the batch dict of :class:`~fuxictr_chime.data.loader.LongSeqDataLoader`.

A subclass implements its constructor (build its layers, then call :meth:`finish`) and
:meth:`interest` (its retrieval + attention step) and nothing else.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch
from fuxictr.pytorch.layers import FeatureEmbedding, MLP_Block
from fuxictr.pytorch.models import BaseModel
from torch import nn

from ..errors import ConfigError, DataError
from .din_attention import FusedDINAttention
from .item_table import DEFAULT_INITIALIZER, ItemHistory, ItemTable, item_feature_names
from .params import resolve_params
from .retrieval import TargetAttention

if TYPE_CHECKING:
    from fuxictr.features import FeatureMap

logger = logging.getLogger(__name__)

# user-level columns of stage 1 (spec 1, 4) and the non-learned controls (compressor/controls.py):
# a model uses only its own one (``compressed_column``), never another that is active in the dataset
COMPRESSED_COLUMNS = ("chime_hist", "learn_emb", "hist_ctrl", "stats_ctrl")
EMBEDDED_TYPES = ("categorical", "numeric", "embedding", "sequence")
ITEM_KEY_PREFERENCE = ("item_id",)  # item feature tried first to map LongCTR batches to rows


def resolving_params(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a model ``__init__``: the outermost call of a construction sorts the keyword
    arguments with :func:`~fuxictr_chime.models.params.resolve_params` (LongCTR names mapped,
    unknown names reported) before any constructor binds them; the explicit
    ``short_attention_dim`` / ``short_num_heads`` are kept for :class:`LongSeqBase`, where
    they win over the values the subclass passes. Inner (``super().__init__``) calls pass
    through unchanged."""
    @functools.wraps(init)
    def wrapper(self, *args: Any, **kwargs: Any) -> None:
        if "_param_overrides" not in self.__dict__:  # outermost call of this construction
            kwargs, overrides = resolve_params(type(self), kwargs, root=LongSeqBase)
            self.__dict__["_param_overrides"] = overrides  # before nn.Module.__init__
        init(self, *args, **kwargs)

    wrapper.resolves_params = True  # type: ignore[attr-defined]
    return wrapper


class LongSeqBase(BaseModel):
    """Base of DIN, SimSoft, ETA, SDIM, TWIN and their ``_CHIME`` / ``_LEARN`` variants.

    FuxiCTR signature. Defaults follow CHIME section 5.1: ``learning_rate=5e-4``,
    ``short_len=30``, ``max_len=1000``; MLP ``dnn_hidden_units=(512, 128, 64)`` with
    ReLU, no dropout, no batch norm; ``embedding_dim=16``; ``accumulation_steps=1``.
    Short interest over the last ``short_len`` behaviors (``short_attention``): ``"din"``,
    FuxiCTR's ``DIN_Attention`` as :class:`~.din_attention.FusedDINAttention`
    (``attention_hidden_units=(64,)`` with ``Dice``,
    ``din_use_softmax=False``), the default of DIN; ``"target"``, multi-head target attention
    (softmax, ``short_attention_dim=64``, ``short_num_heads=1``; the long-sequence models pass
    their ``attention_dim`` / ``num_heads``), the default of SimSoft, ETA, SDIM and TWIN, as in
    the LongCTR implementations of those models. An explicit ``short_attention_dim`` /
    ``short_num_heads`` in the params wins over the model's ``attention_dim`` / ``num_heads``.
    ``use_scale=True``: every target attention of the model (short part, ESU) divides its
    logits by sqrt(head width), as LongCTR's ``use_scale``. ``item_info``: path of
    ``item_info.parquet`` (the dataset config's key, passed through the params).
    ``trim_padding=True``: the leading columns that are padding in every row of a batch are
    dropped before the item lookup (the loader pads every history to ``max_len``; LongCTR's
    loader pads to the batch's longest), keeping at least ``topk`` columns. Masked positions
    take no part in any model's output, so predictions are unchanged, except that the
    BatchNorm of DIN's Dice attention then normalizes over fewer padding rows, as LongCTR's
    DIN does; ``False`` keeps the full width. ``column_interaction=False`` (the spec: the
    compressed column enters the final MLP like any other dense feature); ``True`` (variants
    with a column only) also feeds the MLP e_col * (W target), the column's embedding times a
    learned projection of the target item, so that "the user's weight on the target's kind"
    need not be learned by the MLP from a concatenation (docs/ARCHITECTURE.md section 6). FuxiCTR keys
    ``model_root`` (required), ``verbose`` (default 1), ``metrics`` (default AUC, logloss),
    ``optimizer`` (adam), ``loss`` (binary_crossentropy) and ``task`` are taken from
    ``kwargs``. LongCTR parameter names are mapped, accepted, refused or reported as
    :mod:`~fuxictr_chime.models.params` says (one log line each).

    A history longer than ``max_len`` keeps its most recent ``max_len`` behaviors (logged
    once); an empty history (all positions masked) gives zero interest vectors and a
    finite prediction.
    """

    compressed_column: ClassVar[str | None] = None  # set by the _CHIME / _LEARN variants
    uses_long_sequence: ClassVar[bool] = True  # False: only the last short_len behaviors (DIN)
    default_short_attention: ClassVar[str] = "target"  # "din" for DIN

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "resolves_params", False):
            cls.__init__ = resolving_params(init)

    @resolving_params
    def __init__(self, feature_map: "FeatureMap", model_id: str | None = None, gpu: int = -1,
                 learning_rate: float = 5.e-4, embedding_dim: int = 16, *,
                 short_len: int = 30, max_len: int = 1000,
                 dnn_hidden_units: Sequence[int] = (512, 128, 64),
                 dnn_activations: str | Sequence[str] = "ReLU", net_dropout: float = 0.0,
                 batch_norm: bool = False, embedding_regularizer: Any = None,
                 net_regularizer: Any = None, accumulation_steps: int = 1,
                 attention_hidden_units: Sequence[int] = (64,),
                 attention_hidden_activations: str = "Dice",
                 attention_output_activation: str | None = None,
                 attention_dropout: float = 0.0, din_use_softmax: bool = False,
                 short_attention: str | None = None, short_attention_dim: int = 64,
                 short_num_heads: int = 1, use_scale: bool = True, trim_padding: bool = True,
                 item_info: str | os.PathLike | None = None,
                 embedding_initializer: str = DEFAULT_INITIALIZER,
                 column_interaction: bool = False, **kwargs: Any) -> None:
        overrides = self.__dict__.get("_param_overrides", {})
        short_attention_dim = overrides.get("short_attention_dim", short_attention_dim)
        short_num_heads = overrides.get("short_num_heads", short_num_heads)
        if "model_root" not in kwargs:
            raise ConfigError(f"{type(self).__name__}: missing 'model_root' (checkpoint folder)")
        kwargs.setdefault("verbose", 1)
        kwargs.setdefault("metrics", ["AUC", "logloss"])
        super().__init__(feature_map, model_id=model_id or type(self).__name__, gpu=gpu,
                         embedding_regularizer=embedding_regularizer,
                         net_regularizer=net_regularizer, **kwargs)
        self._check_sizes(short_len, max_len, accumulation_steps)
        self.short_len, self.max_len = int(short_len), int(max_len)
        self.accumulation_steps = int(accumulation_steps)
        self.embedding_dim = int(embedding_dim)
        self.learning_rate = float(learning_rate)
        self.use_scale = bool(use_scale)
        self.trim_padding = bool(trim_padding)
        self.main_weight = 1.0  # weight of the main loss (SimSoft: esu_weight)
        self._optimizer_name = kwargs.get("optimizer", "adam")
        self._loss_name = kwargs.get("loss", "binary_crossentropy")
        self.dnn_kwargs = {"hidden_units": [int(u) for u in dnn_hidden_units],
                           "hidden_activations": dnn_activations, "dropout_rates": net_dropout,
                           "batch_norm": bool(batch_norm)}
        self.context_features = self._context_features(feature_map)
        self.embedding_layer = (FeatureEmbedding(feature_map, embedding_dim,
                                                 embedding_initializer=embedding_initializer,
                                                 required_feature_columns=self.context_features)
                                if self.context_features else None)
        self.context_dim = sum(_output_dim(feature_map.features[name], embedding_dim)
                               for name in self.context_features)
        # column_interaction (off = the spec): the final MLP also gets e_col * W target, the
        # compressed column's embedding times a learned projection of the target item
        self._column_slice: tuple[int, int] | None = None
        if column_interaction and self.compressed_column is not None:
            widths = [_output_dim(feature_map.features[name], embedding_dim) for name in self.context_features]
            at = self.context_features.index(self.compressed_column)  # FeatureEmbedding's flatten order
            self._column_slice = (sum(widths[:at]), sum(widths[:at + 1]))
        self.item_table = ItemTable(feature_map, embedding_dim, item_info,
                                    embedding_initializer=embedding_initializer)
        self.item_dim = self.item_table.output_dim
        kind = short_attention or self.default_short_attention
        if kind == "din":
            self.short_attention = FusedDINAttention(  # DIN_Attention, factorized first layer
                self.item_dim, attention_units=[int(u) for u in attention_hidden_units],
                hidden_activations=attention_hidden_activations,
                output_activation=attention_output_activation, dropout_rate=attention_dropout,
                use_softmax=bool(din_use_softmax))
        elif kind == "target":
            self.short_attention = TargetAttention(self.item_dim, int(short_attention_dim),
                                                   int(short_num_heads), attention_dropout,
                                                   use_scale=self.use_scale)
        else:
            raise ConfigError(f"{type(self).__name__}: short_attention must be 'din' or 'target', "
                              f"got {kind!r}")
        self.aux_outputs: dict[str, float] = {}  # forward key -> loss weight
        self.sync_every: int | None = None
        self._copies: list[tuple[str, str]] = []  # (buffer name, parameter name)
        self._train_batches = 0
        self._warned_truncation = False
        self._item_key: tuple[str, torch.Tensor] | None = None  # LongCTR batches: value -> row
        self.dnn: nn.Module | None = None

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _check_sizes(short_len: int, max_len: int, accumulation_steps: int) -> None:
        for key, value in (("short_len", short_len), ("max_len", max_len),
                           ("accumulation_steps", accumulation_steps)):
            if int(value) < 1:
                raise ConfigError(f"'{key}' must be >= 1, got {value}")

    def _context_features(self, feature_map: "FeatureMap") -> list[str]:
        """Features of the final MLP besides the item side: user/context columns, minus the
        compressed columns this variant does not use (plain models ignore them)."""
        column = self.compressed_column
        if column is not None and column not in feature_map.features:
            raise ConfigError(
                f"model {type(self).__name__} needs the feature '{column}', which dataset "
                f"'{feature_map.dataset_id}' lacks: add {{name: {column}, active: true, "
                f"dtype: list, type: embedding, source: user, pretrain_dim: 64, "
                f"embedding_dim: 16}} to the dataset config and run `fuxictr-chime compress "
                f"export`")
        if column is not None and feature_map.features[column].get("type") != "embedding":
            raise ConfigError(f"feature '{column}' must be 'type: embedding' (a dense user "
                              f"vector), got {feature_map.features[column].get('type')!r}")
        item = set(item_feature_names(feature_map))
        skip = {c for c in COMPRESSED_COLUMNS if c != column}
        return [name for name, spec in feature_map.features.items()
                if spec.get("type") in EMBEDDED_TYPES and name not in item and name not in skip]

    def register_copy(self, buffer: str, parameter: str) -> None:
        """Copy ``parameter`` (dotted name) into the buffer ``buffer`` now and every
        ``self.sync_every`` training batches (TWIN: ESU -> GSU)."""
        self._copies.append((buffer, parameter))

    def sync_copies(self) -> None:
        """Copy every registered parameter into its buffer."""
        params = dict(self.named_parameters())
        with torch.no_grad():
            for buffer, parameter in self._copies:
                getattr(self, buffer).copy_(params[parameter])

    def finish(self, interest_dim: int) -> None:
        """Build the final MLP for an interest vector of width ``interest_dim``, then compile,
        initialize and move to the device (FuxiCTR's constructor tail). Subclasses call it
        last in their constructor."""
        input_dim = self.item_dim + int(interest_dim) + self.context_dim
        if self._column_slice is not None:
            width = self._column_slice[1] - self._column_slice[0]
            self.column_target = nn.Linear(self.item_dim, width, bias=False)
            input_dim += width
        self.dnn = MLP_Block(input_dim=input_dim, output_dim=1,
                             output_activation=self.output_activation, **self.dnn_kwargs)
        self.compile(self._optimizer_name, self._loss_name, self.learning_rate)
        self.reset_parameters()
        self.sync_copies()
        self.model_to_device()

    def make_head(self, input_dim: int) -> MLP_Block:
        """An MLP like the final one (same hidden units), e.g. SimSoft's auxiliary head."""
        return MLP_Block(input_dim=input_dim, output_dim=1,
                         output_activation=self.output_activation, **self.dnn_kwargs)

    # ------------------------------------------------------------------ inputs
    def batch_dict(self, inputs: dict | Sequence) -> dict[str, torch.Tensor]:
        """The batch as :class:`~fuxictr_chime.data.loader.LongSeqDataLoader` yields it.

        A dict passes unchanged. A batch of LongCTR's data loader (FuxiCTR 2.3.10 sdist,
        ``model_zoo/LongCTR/longctr_dataloader.py``, ``BatchCollator.__call__``) is a tuple
        ``(batch_dict, item_dict, mask)``: ``batch_dict`` the sample columns (B,) (labels,
        ``user_index``, ``item_index``, ``seq_len``, context features; one dtype for all,
        often float64), ``item_dict`` the item_info features of every position, flattened
        (B * (L+1), ...) with the L left-padded behaviors first and the target last, and
        ``mask`` (B, L) float, 1 at valid behaviors. It becomes the sample columns plus
        ``item_seq`` (B, L+1) int64 item_info rows (padding 0, target last: ``item_index``
        when present), ``seq_mask`` (B, L) bool and the target's item features (B, ...).
        Item rows are recovered from a categorical item feature that is unique per item_info
        row (``item_id`` first); DataError if there is none or a value is not in item_info.
        """
        if isinstance(inputs, dict):
            return inputs
        columns, items, mask = self._longctr_parts(inputs)
        batch, length = mask.shape
        seq_mask = mask.to(torch.float32) > 0  # (B, L)
        rows = self._item_rows(items, batch, length + 1)  # (B, L+1)
        rows[:, :-1] = rows[:, :-1] * seq_mask  # padding -> row 0
        if "item_index" in columns:
            rows[:, -1] = torch.as_tensor(columns["item_index"]).reshape(-1).to(torch.int64)
        bad = ((rows[:, :-1] < 0) & seq_mask).any(1) | (rows[:, -1] < 0)  # (B,)
        if bool(bad.any()):
            raise DataError(f"LongCTR batch: item(s) of sample {int(bad.nonzero()[0, 0])} are "
                            f"not in {self.item_table.path} (by '{self._item_key[0]}')")
        out = dict(columns)
        for name, value in items.items():  # the target's item features, as our loader adds
            if name not in out:
                value = torch.as_tensor(value)
                out[name] = value.reshape(batch, length + 1, *value.shape[1:])[:, -1]  # (B, ...)
        out["item_seq"], out["seq_mask"] = rows, seq_mask
        return out

    @staticmethod
    def _longctr_parts(inputs: Any) -> tuple[dict, dict, torch.Tensor]:
        if not (isinstance(inputs, (tuple, list)) and len(inputs) == 3
                and isinstance(inputs[0], dict) and isinstance(inputs[1], dict)):
            raise DataError(f"a batch must be a dict (LongSeqDataLoader) or LongCTR's "
                            f"(batch_dict, item_dict, mask) tuple, got {type(inputs).__name__}")
        mask = torch.as_tensor(inputs[2])
        if mask.dim() != 2:
            raise DataError(f"LongCTR batch: mask must be (B, L), got {tuple(mask.shape)}")
        return inputs[0], inputs[1], mask

    def _item_rows(self, items: dict, batch: int, positions: int) -> torch.Tensor:
        """item_info rows (B, P) int64 of LongCTR's flattened item features; -1 if unknown."""
        name, lookup = self._item_key_lookup()
        if name not in items:
            raise DataError(f"LongCTR batch: item_dict lacks the item feature '{name}'")
        values = torch.as_tensor(items[name]).reshape(-1)
        if values.numel() != batch * positions:
            raise DataError(f"LongCTR batch: item_dict['{name}'] has {values.numel()} values, "
                            f"expected B * (L+1) = {batch * positions}")
        values = values.to(torch.int64).view(batch, positions).cpu()  # (B, P)
        inside = (values >= 0) & (values < len(lookup))
        return torch.where(inside, lookup[values.clamp(0, len(lookup) - 1)],
                           torch.full_like(values, -1))  # (B, P)

    def _item_key_lookup(self) -> tuple[str, torch.Tensor]:
        """(feature, value -> item_info row) for the first categorical item feature whose
        values are distinct over the real items (rows 1..N-1); built once."""
        if self._item_key is not None:
            return self._item_key
        table = self.item_table
        names = [n for n in ITEM_KEY_PREFERENCE if n in table.feature_names]
        names += [n for n in table.feature_names if n not in names
                  and self.feature_map.features[n].get("type") == "categorical"]
        all_rows = torch.arange(table.num_items, device=self.device)
        for name in names:
            values = table.features(all_rows)[name].reshape(table.num_items, -1)  # (N, w)
            if values.shape[1] != 1:
                continue
            values = values[:, 0].cpu()  # (N,)
            real = values[1:]
            if len(real) and (int(real.min()) < 0 or len(torch.unique(real)) != len(real)):
                continue
            lookup = torch.full((int(values.max()) + 1,), -1, dtype=torch.int64)
            lookup[values[0]] = 0
            lookup[real] = torch.arange(1, table.num_items)
            self._item_key = (name, lookup)
            return self._item_key
        raise DataError(f"LongCTR batches carry item features, not item indices; mapping them "
                        f"to item_info rows needs a categorical item feature with one value "
                        f"per item (e.g. item_id), and none of {table.feature_names} is")

    @staticmethod
    def _columns(inputs: dict | Sequence) -> dict:
        """The sample columns: the batch dict itself, or LongCTR's ``batch_dict``."""
        return inputs if isinstance(inputs, dict) else LongSeqBase._longctr_parts(inputs)[0]

    def get_labels(self, inputs: dict | Sequence) -> torch.Tensor:
        """(B, 1) float labels of a batch dict or of a LongCTR tuple batch."""
        return super().get_labels(self._columns(inputs))

    def get_group_id(self, inputs: dict | Sequence) -> torch.Tensor:
        """(B,) group ids (``group_id`` column, e.g. user_index) of either batch format."""
        return self._columns(inputs)[self.feature_map.group_id]

    def get_inputs(self, inputs: dict | Sequence,
                   feature_source: Any = None) -> dict[str, torch.Tensor]:
        """The context features of the batch (the ones :attr:`embedding_layer` embeds)."""
        inputs = self._columns(inputs)
        missing = [name for name in self.context_features if name not in inputs]
        if missing:
            raise DataError(f"batch lacks feature column(s) {missing}; is the data loader "
                            f"LongSeqDataLoader and is the column in the data files?")
        return {name: inputs[name].to(self.device) for name in self.context_features}

    def get_history(self, inputs: dict | Sequence) -> ItemHistory:
        """``item_seq`` / ``seq_mask`` of the batch as an :class:`ItemHistory`."""
        inputs = self.batch_dict(inputs)
        for key in ("item_seq", "seq_mask"):
            if key not in inputs:
                raise DataError(f"batch lacks '{key}': {type(self).__name__} needs the long-sequence "
                                f"loader's batches (history from user_info.parquet); FuxiCTR's default "
                                f"loader has none. Set params['data_loader'] = LongSeqDataLoader "
                                f"(from fuxictr_chime.data.loader import LongSeqDataLoader) before "
                                f"RankDataLoader, or use `fuxictr-chime run`")
        item_seq = inputs["item_seq"].to(self.device)  # (B, L+1)
        mask = inputs["seq_mask"].to(self.device).bool()  # (B, L)
        if item_seq.dim() != 2 or mask.shape != (item_seq.shape[0], item_seq.shape[1] - 1):
            raise DataError(f"'item_seq' must be (B, L+1) and 'seq_mask' (B, L); got "
                            f"{tuple(item_seq.shape)} and {tuple(mask.shape)}")
        if mask.shape[1] > self.max_len:
            self._warn_truncation(mask.shape[1])
        keep = self.max_len if self.uses_long_sequence else min(self.short_len, self.max_len)
        if self.trim_padding:  # leading columns that are padding in every row carry nothing
            keep = min(keep, self._history_width(mask))
        if mask.shape[1] > keep:
            item_seq = item_seq[:, -keep - 1:]  # (B, keep+1), target kept last
            mask = mask[:, -keep:]  # (B, keep)
        item_seq = torch.cat([item_seq[:, :-1] * mask, item_seq[:, -1:]], dim=1)  # padding -> item 0
        table, inverse = self.item_table.lookup(item_seq)  # (U, D), (B, L+1)
        return ItemHistory(table, inverse[:, :-1].contiguous(), mask, inverse[:, -1].contiguous())

    def _history_width(self, mask: torch.Tensor) -> int:
        """Columns from the batch's first valid position to the end (histories are left-padded),
        at least the model's ``topk`` (so retrieval keeps its k slots) and 1."""
        valid = mask.any(0)  # (L,)
        first = int(valid.float().argmax()) if bool(valid.any()) else mask.shape[1] - 1
        return max(mask.shape[1] - first, int(getattr(self, "topk", 1) or 1), 1)

    def _warn_truncation(self, length: int) -> None:
        if not self._warned_truncation:
            logger.warning("%s: histories of length %d exceed max_len=%d; the most recent "
                           "%d behaviors are kept", type(self).__name__, length, self.max_len,
                           self.max_len)
            self._warned_truncation = True

    def embed_context(self, inputs: dict, batch_size: int) -> torch.Tensor:
        """(B, C) concatenated embeddings of the context features; (B, 0) if none."""
        if self.embedding_layer is None:
            return torch.zeros(batch_size, 0, device=self.device)
        return self.embedding_layer(self.get_inputs(inputs), flatten_emb=True)  # (B, C)

    # ------------------------------------------------------------------ model
    def short_interest(self, target: torch.Tensor, history: ItemHistory) -> torch.Tensor:
        """Target attention (``short_attention``) over the last ``short_len`` behaviors: (B, D)."""
        attention = self.short_attention
        if isinstance(attention, FusedDINAttention) and attention.packable():  # valid rows only
            index, mask = history.last_index(self.short_len)  # (B, S), (B, S)
            return attention.forward_packed(target, history.table, index, mask)  # (B, D)
        keys, mask = history.last(self.short_len)  # (B, S, D), (B, S)
        return attention(target, keys, mask)  # (B, D)

    def interest(self, target: torch.Tensor, history: ItemHistory,
                 context: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's retrieval + attention step: ``{"interest": (B, interest_dim), ...}``;
        other keys (e.g. an auxiliary prediction) are passed to the forward's dict."""
        raise NotImplementedError

    def forward(self, inputs: dict | Sequence) -> dict[str, torch.Tensor]:
        """Batch dict (or LongCTR tuple batch) -> ``{"y_pred": (B, 1), ...}`` (plus the
        subclass's extra outputs)."""
        if self.dnn is None:
            raise ConfigError(f"{type(self).__name__}: the constructor must call finish()")
        inputs = self.batch_dict(inputs)
        history = self.get_history(inputs)
        target = history.target  # (B, D)
        context = self.embed_context(inputs, target.shape[0])  # (B, C)
        out = self.interest(target, history, context)
        parts = [target, out.pop("interest"), context]
        if self._column_slice is not None:  # (B, W): the user column weighted by the target
            start, end = self._column_slice
            parts.append(context[:, start:end] * self.column_target(target))
        features = torch.cat(parts, dim=-1)  # (B, F)
        return {"y_pred": self.dnn(features), **out}

    # ------------------------------------------------------------------ training
    def save_weights(self, checkpoint: str) -> None:
        """FuxiCTR's ``save_weights``, creating the checkpoint folder if needed."""
        os.makedirs(os.path.dirname(os.path.abspath(checkpoint)), exist_ok=True)
        super().save_weights(checkpoint)

    def add_loss(self, return_dict: dict, y_true: torch.Tensor) -> torch.Tensor:
        """``main_weight`` x main loss + weighted losses of the auxiliary outputs +
        ``aux_loss`` if present."""
        loss = self.main_weight * self.loss_fn(return_dict["y_pred"], y_true, reduction="mean")
        for key, weight in self.aux_outputs.items():
            if key in return_dict and weight:
                loss = loss + weight * self.loss_fn(return_dict[key], y_true, reduction="mean")
        if "aux_loss" in return_dict:
            loss = loss + return_dict["aux_loss"]
        return loss

    def train_step(self, batch_data: dict | Sequence) -> torch.Tensor:
        """Forward, backward of loss / ``accumulation_steps``; an optimizer step (with
        gradient clipping at ``max_gradient_norm``) every ``accumulation_steps`` batches;
        registered copies every ``sync_every`` batches. Returns the batch loss."""
        batch_data = self.batch_dict(batch_data)
        return_dict = self.forward(batch_data)
        loss = self.compute_loss(return_dict, self.get_labels(batch_data))
        (loss / self.accumulation_steps).backward()
        self._train_batches += 1
        if self._train_batches % self.accumulation_steps == 0:
            nn.utils.clip_grad_norm_(self.parameters(), getattr(self, "_max_gradient_norm", 10.))
            self.optimizer.step()
            self.optimizer.zero_grad()
        if self._copies and self.sync_every and self._train_batches % self.sync_every == 0:
            self.sync_copies()
        return loss.detach()


def _output_dim(spec: dict, embedding_dim: int) -> int:
    """Width of one feature's embedding in FuxiCTR's ``FeatureEmbedding``."""
    return int(spec.get("emb_output_dim", spec.get("embedding_dim", embedding_dim)))
