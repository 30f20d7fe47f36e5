"""Stage 2 of CHIME (utilization): ranking models on FuxiCTR's ``BaseModel``.

``get_model(name)`` returns the class of ``DIN, SimSoft, ETA, SDIM, TWIN, MIRRN`` or of a
``<Model>_CHIME`` / ``<Model>_LEARN`` variant or ``<Model>_HIST`` / ``<Model>_STATS`` control
(``MODEL_NAMES``), or imports
``"module.path:ClassName"``. Importing this package is cheap: FuxiCTR (and Ray behind it)
is imported on the first call to :func:`get_model` / :func:`register_model`, or on the first
access to a model class (``models.TWIN``). ``from fuxictr_chime.models import *`` brings
those functions, ``MODEL_NAMES``, ``LongSeqBase`` and every model class (the registered
names and the aliases ``SIM``, ``SIM_CHIME``, ``SIM_LEARN`` of SimSoft), which does import
the registry.
"""
from __future__ import annotations

from typing import Any

_BASES = ("DIN", "SimSoft", "ETA", "SDIM", "TWIN", "MIRRN")
_SUFFIXES = ("_CHIME", "_LEARN", "_HIST", "_STATS")  # registry.VARIANTS, in its order
MODEL_NAMES = _BASES + tuple(f"{m}{s}" for s in _SUFFIXES for m in _BASES)
_ALIASES = ("SIM", *(f"SIM{s}" for s in _SUFFIXES))  # registry.ALIASES: LongCTR's SIM is SimSoft


def get_model(name: str) -> type:
    """The model class registered as ``name`` (see :mod:`fuxictr_chime.models.registry`)."""
    from .registry import get_model as _get_model

    return _get_model(name)


def register_model(name: str, cls: type) -> None:
    """Register a FuxiCTR ``BaseModel`` subclass under ``name``."""
    from .registry import register_model as _register_model

    _register_model(name, cls)


def __getattr__(name: str) -> Any:  # lazy access to the model classes, e.g. models.TWIN
    if name in MODEL_NAMES or name in _ALIASES or name == "LongSeqBase":
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# star-import: names resolved through __getattr__ (importing the registry then, not before)
__all__ = ["get_model", "register_model", "MODEL_NAMES", "LongSeqBase", *MODEL_NAMES, *_ALIASES]
