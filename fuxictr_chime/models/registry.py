"""Model registry: ``get_model(name)`` for the ranking models of the utilization stage.

Thirty built-in names: the CHIME paper's ``DIN, SimSoft, ETA, SDIM, TWIN`` (Table 2), ``MIRRN`` (LongCTR) and, for
each, ``<Model>_CHIME`` (+ the ``chime_hist`` column), ``<Model>_LEARN`` (+ the
``learn_emb`` column) and the non-learned controls ``<Model>_HIST`` / ``<Model>_STATS`` (+ the
``hist_ctrl`` / ``stats_ctrl`` column of :mod:`fuxictr_chime.compressor.controls`). The variants are real subclasses made by :func:`make_variant`, each
with its own ``__name__``. Plugins add names with :func:`register_model`; a
``"module.path:ClassName"`` string imports that class with importlib (never ``eval``), so
an external FuxiCTR-style model plugs in through the config alone.

Aliases (:data:`ALIASES`): LongCTR's ``SIM`` (``model_zoo/LongCTR/SIM/SIM.py``: SIM with
soft search, ``gsu_type: soft`` only) is ``SimSoft`` here, so ``model: SIM`` /
``SIM_CHIME`` / ``SIM_LEARN`` give the ``SimSoft`` / ``SimSoft_CHIME`` / ``SimSoft_LEARN``
classes. Aliases are not in ``MODEL_NAMES`` (the canonical names of the result tables).
"""
from __future__ import annotations

import difflib
import importlib

from fuxictr.pytorch.models import BaseModel

from ..errors import ConfigError
from .base import LongSeqBase
from .din import DIN
from .eta import ETA
from .mirrn import MIRRN
from .sdim import SDIM
from .simsoft import SimSoft
from .twin import TWIN

BASE_MODELS = (DIN, SimSoft, ETA, SDIM, TWIN, MIRRN)
# name suffix -> user column; _HIST / _STATS: the non-learned controls of compressor/controls.py
VARIANTS = {"_CHIME": "chime_hist", "_LEARN": "learn_emb", "_HIST": "hist_ctrl", "_STATS": "stats_ctrl"}
# other names of registered models: LongCTR's SIM (soft search) is SimSoft
ALIASES = {"SIM" + suffix: "SimSoft" + suffix for suffix in ("", *VARIANTS)}

_REGISTRY: dict[str, type] = {}


def make_variant(base: type, suffix: str, column: str) -> type:
    """``<base>{suffix}``: ``base`` whose final MLP also gets the user column ``column``."""
    name = base.__name__ + suffix
    kind = ("CHIME paper Table 2" if suffix in ("_CHIME", "_LEARN")
            else "a non-learned control of `bench table2`")
    doc = (f"{base.__name__} w/ {suffix.strip('_')} ({kind}): {base.__name__} "
           f"plus the user-level column ``{column}``, embedded by FuxiCTR's "
           f"Linear(pretrain_dim, embedding_dim) and fed to the final MLP. The dataset "
           f"must have the column active (ConfigError otherwise).")
    cls = type(name, (base,), {"compressed_column": column, "__doc__": doc,
                               "__module__": __name__, "__qualname__": name})
    return cls


def register_model(name: str, cls: type) -> None:
    """Make ``cls`` (a FuxiCTR ``BaseModel`` subclass) available as ``get_model(name)``."""
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        raise ConfigError(f"register_model('{name}'): {cls!r} is not a "
                          f"fuxictr.pytorch.models.BaseModel subclass")
    if name in ALIASES:
        raise ConfigError(f"model name '{name}' is an alias of '{ALIASES[name]}'")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ConfigError(f"model name '{name}' is already registered "
                          f"({_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__})")
    _REGISTRY[name] = cls


def registered_names() -> list[str]:
    """Every registered model name, built-in ones first."""
    return list(_REGISTRY)


def get_model(name: str) -> type:
    """The model class of ``name``: a registered name or ``"module.path:ClassName"``.

    Unknown names raise a ConfigError listing the known ones and the closest match.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in ALIASES:
        return _REGISTRY[ALIASES[name]]
    if ":" in name:
        return _import_class(name)
    close = difflib.get_close_matches(name, [*_REGISTRY, *ALIASES], n=1, cutoff=0.5)
    if not close:
        lowered = {k.lower(): k for k in _REGISTRY}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown model '{name}'.{hint} Known models: {', '.join(_REGISTRY)} "
                      f"(aliases: {', '.join(ALIASES)}); "
                      f"or give 'module.path:ClassName' of a FuxiCTR BaseModel subclass")


def _import_class(spec: str) -> type:
    module_name, _, cls_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model '{spec}': cannot import module '{module_name}': {exc}") \
            from exc
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        raise ConfigError(f"model '{spec}': '{cls_name}' in module '{module_name}' is not a "
                          f"fuxictr.pytorch.models.BaseModel subclass")
    return cls


def _register_builtins() -> None:
    for base in BASE_MODELS:
        register_model(base.__name__, base)
    for suffix, column in VARIANTS.items():
        for base in BASE_MODELS:
            variant = make_variant(base, suffix, column)
            globals()[variant.__name__] = variant  # importable / picklable by name
            register_model(variant.__name__, variant)


_register_builtins()
MODEL_NAMES = tuple(_REGISTRY)
globals().update({alias: _REGISTRY[name] for alias, name in ALIASES.items()})
__all__ = ["get_model", "register_model", "registered_names", "make_variant", "MODEL_NAMES",
           "BASE_MODELS", "ALIASES", "LongSeqBase", *MODEL_NAMES, *ALIASES]
