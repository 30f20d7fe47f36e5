"""Parameter names of the ranking models: ours, FuxiCTR's, and LongCTR's (one table).

A FuxiCTR experiment passes every key of its merged YAML (``Base`` + experiment block +
dataset block) to the model constructor, and FuxiCTR's ``BaseModel`` swallows the keys it
does not know. :func:`resolve_params` (called once per construction by
:class:`~fuxictr_chime.models.base.LongSeqBase`) sorts the keyword arguments instead:

* a parameter of the model's own constructor chain (``LongSeqBase`` included) or of FuxiCTR's
  ``BaseModel.__init__`` / ``fit``, or a FuxiCTR config key (:data:`FUXICTR_KEYS`: run,
  dataset and data-loader keys) is passed on silently;
* a name of the LongCTR benchmark code (FuxiCTR 2.3.10 sdist, ``model_zoo/LongCTR``; and a
  few of the older FuxiCTR model zoo) is looked up in :data:`LONGCTR_PARAMS`: mapped to our
  parameter (an INFO line), accepted when its value means what our model does anyway (INFO),
  a :class:`~fuxictr_chime.errors.ConfigError` when its value would change the experiment in
  a way this model cannot reproduce, or ignored with one WARNING saying why;
* a parameter of another of our models (``sync_every`` given to SDIM) is ignored with a
  WARNING naming its models;
* anything else (a typo) gets a WARNING with the closest known name (``difflib``) and is
  passed on, as FuxiCTR would.

``short_attention_dim`` / ``short_num_heads`` given explicitly win over what a model passes
to ``LongSeqBase`` itself (SimSoft, ETA, SDIM, TWIN pass their ``attention_dim`` /
``num_heads``); :func:`resolve_params` returns them apart as overrides.

This module imports neither torch nor FuxiCTR.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["LongCTRParam", "LONGCTR_PARAMS", "LONGCTR_MODELS", "LONGCTR_EQUIVALENT",
           "FUXICTR_KEYS", "OVERRIDES", "resolve_params", "native_params", "longctr_family"]

# LongCTR's sequence models and the name of our equivalent where it differs
LONGCTR_MODELS = ("DIN", "SIM", "ETA", "SDIM", "TWIN", "MIRRN")
LONGCTR_EQUIVALENT = {"SimSoft": "SIM"}  # our class name -> LongCTR class name
_SEQ = ("SIM", "ETA", "SDIM", "TWIN", "MIRRN")  # the models with a short + long part
_ALL = LONGCTR_MODELS

# Keys of FuxiCTR's config dialect that reach the model but are not model parameters: the
# run (run_expid.py, fuxictr_chime.models.runner), BaseModel's **kwargs (verbose, model_root,
# metrics, optimizer, loss), fit(), FeatureMap / FeatureProcessor / build_dataset, the data
# loaders (FuxiCTR's, LongCTR's, ours) and the autotuner. BaseModel.__init__ / fit parameters
# are read from their signatures (native_params).
FUXICTR_KEYS = frozenset({
    # run / experiment
    "model", "model_id", "expid", "dataset_id", "model_root", "gpu", "seed", "config",
    "verbose", "metrics", "optimizer", "loss", "task", "epochs", "max_gradient_norm",
    "debug_mode", "group_id", "num_workers", "pickle_feature_encoder",
    # features
    "use_features", "feature_specs", "feature_config", "ordered_features", "feature_cols",
    "label_col", "min_categr_count", "feature_encoder",
    # dataset
    "data_root", "data_format", "train_data", "valid_data", "test_data", "item_info",
    "user_info", "rebuild_dataset", "valid_size", "test_size", "split_type",
    "data_block_size",
    # data loaders
    "data_loader", "batch_size", "shuffle", "stage", "buffer_size", "streaming", "prefetch",
    "max_len", "split",
    # autotuner
    "base_expid", "base_config", "tuner_space",
})

# parameters a model passes to LongSeqBase.__init__ itself; an explicit value in the params wins
OVERRIDES = ("short_attention_dim", "short_num_heads")

_FIELDS_NOTE = ("a field selection of the older FuxiCTR model zoo: here the target and the "
                "behaviors are always item_seq looked up in item_info, with every active "
                "'source: item' feature; select features with use_features / feature_specs")


@dataclass(frozen=True)
class LongCTRParam:
    """One LongCTR parameter name and what it becomes here.

    Attributes:
        models: LongCTR models whose constructor takes it (others ignore it there too).
        target: our parameter it maps to (with ``convert``), when the model has it.
        convert: value conversion for ``target`` (default: unchanged).
        accepts: for a model without a native parameter of that name: the values that mean
            what our model does anyway (accepted with an INFO line); any other value is a
            ConfigError. None: ignored with a WARNING.
        note: what it means here (used in the log lines and errors).
        absent: why a model that does not take it ignores it (a WARNING line).
    """

    models: tuple[str, ...]
    target: str | None = None
    convert: Callable[[Any], Any] | None = None
    accepts: Callable[[Any], bool] | None = None
    note: str = ""
    absent: str = ""


def _short_len(value: Any) -> int:
    if int(value) < 2:
        raise ConfigError(f"'short_seq_len' must be >= 2 (LongCTR's slice [-short_seq_len:-1] "
                          f"of the sequence with the target appended keeps short_seq_len - 1 "
                          f"behaviors), got {value}")
    return int(value) - 1


# Names taken from the LongCTR constructors (DIN, SIM, ETA, SDIM, TWIN, MIRRN in
# fuxictr-2.3.10/model_zoo/LongCTR/*/*.py), their data loader (longctr_dataloader.py:
# max_len, padding) and the older FuxiCTR zoo (*_target_field / *_sequence_field).
# Names that are also ours with the same meaning (dnn_hidden_units, learning_rate, topk,
# hash_bits, num_hashes, reuse_hash, l2_norm, use_scale, attention_dim, num_heads, ...) are
# listed too, so that a model without them says why it ignores them.
LONGCTR_PARAMS: dict[str, LongCTRParam] = {
    # shared by every LongCTR model: LongSeqBase parameters of the same meaning
    **{name: LongCTRParam(_ALL) for name in (
        "dnn_hidden_units", "dnn_activations", "learning_rate", "embedding_dim", "net_dropout",
        "batch_norm", "accumulation_steps", "embedding_regularizer", "net_regularizer",
        "attention_dropout")},
    # DIN's attention MLP: LongSeqBase parameters (the short attention of kind "din")
    **{name: LongCTRParam(("DIN",)) for name in (
        "attention_hidden_units", "attention_hidden_activations", "attention_output_activation",
        "din_use_softmax")},
    "attention_dim": LongCTRParam(_SEQ, absent="DIN's attention is an MLP "
                                               "(attention_hidden_units)"),
    "num_heads": LongCTRParam(_SEQ, absent="DIN's attention is an MLP (attention_hidden_units)"),
    "use_scale": LongCTRParam(("ETA", "SDIM", "MIRRN")),
    "topk": LongCTRParam(("SIM", "ETA", "TWIN", "MIRRN"),
                         absent="the model retrieves no top-k subset"),
    "hash_bits": LongCTRParam(("ETA", "SDIM", "MIRRN"), absent="the model does not hash"),
    "num_hashes": LongCTRParam(("SDIM",), absent="the model does not hash"),
    "l2_norm": LongCTRParam(("SDIM",), absent="only SDIM normalizes bucket sums"),
    "reuse_hash": LongCTRParam(
        ("ETA", "SDIM", "MIRRN"), accepts=lambda v: bool(v) is True,
        note="this model keeps one fixed, seeded random projection (reuse_hash: True); "
             "fresh projections every batch (False) are not implemented for it"),
    "short_seq_len": LongCTRParam(
        _SEQ, target="short_len", convert=_short_len,
        note="LongCTR slices [-short_seq_len:-1] of the sequence with the target appended, "
             "i.e. the last short_seq_len - 1 behaviors",
        absent="DIN attends over the last short_len behaviors only, LongCTR's DIN over the "
               "whole loaded sequence"),
    "use_qkvo": LongCTRParam(
        ("SDIM",), accepts=lambda v: bool(v) is True,
        note="the short target attention here always has the W_q, W_k, W_v, W_o projections "
             "(use_qkvo: True); attention on the raw embeddings is not implemented"),
    "alpha": LongCTRParam(("SIM",), target="aux_weight", note="weight of the GSU auxiliary loss",
                          absent="only SimSoft has an auxiliary GSU loss"),
    "beta": LongCTRParam(("SIM",), target="esu_weight", note="weight of the main (ESU) loss",
                         absent="only SimSoft weights its losses"),
    "gsu_type": LongCTRParam(
        ("SIM",), accepts=lambda v: str(v) == "soft",
        note="SimSoft is SIM with soft search (gsu_type: soft); LongCTR's SIM supports only "
             "'soft' as well"),
    "Kc_cross_features": LongCTRParam(
        ("TWIN",), accepts=lambda v: int(v) == 0,
        note="TWIN's user-item cross features (K_c) do not exist in these datasets; only "
             "Kc_cross_features: 0 is supported"),
    "padding": LongCTRParam(
        _ALL, accepts=lambda v: str(v) == "pre",
        note="the long-sequence loader always pads on the left (padding: pre), so the most "
             "recent behaviors and the target come last"),
    **{name: LongCTRParam(("SIM", "ETA", "SDIM", "MIRRN"), absent=_FIELDS_NOTE) for name in (
        "short_target_field", "short_sequence_field", "long_target_field",
        "long_sequence_field")},
    **{name: LongCTRParam(("DIN",), absent=_FIELDS_NOTE) for name in (
        "din_target_field", "din_sequence_field")},
}


@functools.lru_cache(maxsize=None)
def native_params(cls: type) -> frozenset[str]:
    """Keyword parameters of every ``__init__`` in ``cls.__mro__`` (FuxiCTR's ``BaseModel``
    included) and of ``cls.fit``."""
    names: set[str] = set()
    funcs = [klass.__dict__["__init__"] for klass in cls.__mro__ if "__init__" in klass.__dict__]
    if callable(getattr(cls, "fit", None)):
        funcs.append(cls.fit)
    for func in funcs:
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError):  # builtins such as object.__init__
            continue
        names.update(name for name, p in signature.parameters.items() if name != "self" and
                     p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    return frozenset(names)


def longctr_family(cls: type) -> str | None:
    """The LongCTR model ``cls`` corresponds to (``SimSoft`` -> ``SIM``), else None."""
    for klass in cls.__mro__:
        name = LONGCTR_EQUIVALENT.get(klass.__name__, klass.__name__)
        if name in LONGCTR_MODELS:
            return name
    return None


def _subclasses(root: type) -> Iterable[type]:
    for sub in root.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _owners(name: str, root: type | None, exclude: type) -> list[str]:
    """Our other models (subclasses of ``root``) that take ``name``."""
    if root is None:
        return []
    owners = {sub.__name__ for sub in _subclasses(root)
              if name in native_params(sub) and not issubclass(exclude, sub)
              and not any(name in native_params(b) for b in sub.__mro__[1:]
                          if isinstance(b, type) and issubclass(b, root) and b is not root)}
    return sorted(owners)


def resolve_params(cls: type, kwargs: dict[str, Any],
                   root: type | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sort the constructor keyword arguments of model class ``cls`` (module docstring).

    Args:
        cls: the model class being constructed.
        kwargs: its keyword arguments (a FuxiCTR experiment's merged params).
        root: the common base of our models (``LongSeqBase``), to name a parameter's owners.

    Returns:
        ``(kwargs, overrides)``: the keyword arguments to construct with (LongCTR names mapped
        to ours, ignored ones removed) and the explicit values of :data:`OVERRIDES`.
    """
    model = cls.__name__
    native = native_params(cls)
    family = longctr_family(cls)
    out: dict[str, Any] = {}
    mapped: dict[str, tuple[str, Any]] = {}  # our name -> (LongCTR name, value)
    for key, value in kwargs.items():
        if key in native or key in FUXICTR_KEYS:
            out[key] = value
        elif key in LONGCTR_PARAMS:
            _longctr(model, family, native, key, value, mapped)
        else:
            _unknown(model, cls, native, root, key)
            out[key] = value
    for target, (key, value) in mapped.items():
        if target in out and out[target] != value:
            raise ConfigError(f"{model}: both '{target}: {out[target]}' and LongCTR's '{key}' "
                              f"(= {target}: {value}) are given; keep one")
        out[target] = value
    overrides = {key: out.pop(key) for key in OVERRIDES if key in out}
    return out, overrides


def _longctr(model: str, family: str | None, native: frozenset[str], key: str, value: Any,
             mapped: dict[str, tuple[str, Any]]) -> None:
    entry = LONGCTR_PARAMS[key]
    applies = family is None or family in entry.models
    if applies and entry.target is not None and entry.target in native:
        converted = entry.convert(value) if entry.convert else value
        mapped[entry.target] = (key, converted)
        logger.info("%s: LongCTR parameter '%s: %s' -> %s=%s (%s)", model, key, value,
                    entry.target, converted, entry.note)
    elif applies and entry.accepts is not None:
        if not entry.accepts(value):
            raise ConfigError(f"{model}: LongCTR parameter '{key}: {value}' cannot be "
                              f"reproduced here: {entry.note}")
        logger.info("%s: LongCTR parameter '%s: %s' accepted: %s", model, key, value,
                    entry.note)
    else:
        why = entry.absent or f"{model} has no equivalent"
        if not applies:
            why = f"LongCTR's {family} does not take it either; {why}"
        logger.warning("%s: LongCTR parameter '%s' is ignored: %s (LongCTR models taking it: "
                       "%s)", model, key, why, ", ".join(entry.models))


def _unknown(model: str, cls: type, native: frozenset[str], root: type | None,
             key: str) -> None:
    owners = _owners(key, root, cls)
    if owners:
        logger.warning("%s: parameter '%s' is ignored: it belongs to %s, not to %s", model,
                       key, ", ".join(owners), model)
        return
    known = sorted(native | FUXICTR_KEYS | set(LONGCTR_PARAMS))
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else "no similar known name"
    logger.warning("%s: unknown parameter '%s' is ignored (%s)", model, key, hint)
