"""Registry of dataset preparers: name -> raw loader module (imported lazily) + default split.

A preparer module exposes ``load(raw_dir, **options) -> BehaviorLog`` and may define
``DEFAULT_T1`` / ``DEFAULT_T2``, which then take precedence over the registry's defaults below,
and ``extra_outputs(log, split) -> (summary blocks, {file name: content})`` for what it adds to
the prepared folder (the synthetic preparer's oracle and planted truth).
:func:`prepare` runs the whole pipeline of the data protocol (spec section 2): load the raw
log, split it by time (:func:`~fuxictr_chime.data.split.split_by_time`) and write the prepared
folder (:func:`~fuxictr_chime.data.writer.write_prepared`).

This module imports nothing heavy at import time (the CLI reads it to build ``--help``).
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DataError

if TYPE_CHECKING:
    from .log import BehaviorLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preparer:
    """One dataset preparer.

    Attributes:
        name: registry name (also the default FuxiCTR dataset_id).
        module: module exposing ``load(raw_dir, **options) -> BehaviorLog``.
        t1, t2: default thresholds (quantile strings ``"qF"`` or timestamps), overridden by the
            module's ``DEFAULT_T1`` / ``DEFAULT_T2`` if it defines them.
        text_option: keyword of ``load`` that switches text embedding off (``--no-text``), if any.
        raw_required: whether ``load`` needs a raw folder (movielens has a default one).
        description: one line for ``--help``.
    """

    name: str
    module: str
    t1: str | int
    t2: str | int
    text_option: str | None
    raw_required: bool
    description: str

    def load_module(self) -> ModuleType:
        """Import the loader module; DataError if it is not part of this installation."""
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            if exc.name != self.module:
                raise
            raise DataError(f"preparer '{self.name}': module {self.module} is not available "
                            f"in this installation") from exc

    def thresholds(self) -> tuple[str | int, str | int]:
        """Default (t1, t2): the module's DEFAULT_T1 / DEFAULT_T2, else the registry's."""
        module = self.load_module()
        return getattr(module, "DEFAULT_T1", self.t1), getattr(module, "DEFAULT_T2", self.t2)


PREPARERS: dict[str, Preparer] = {p.name: p for p in (
    Preparer("movielens", "fuxictr_chime.data.movielens", "q0.5", "q0.8", "encode_titles", False,
             "MovieLens in RecBole atomic format (*.inter, *.item); default: ml-100k from the "
             "recbole wheel; title -> 384-d MiniLM vector"),
    Preparer("microvideo", "fuxictr_chime.data.microvideo", "q0.4", "q0.9", None, True,
             "MicroVideo1.7M (THACIL csv + 64-d cover-image vectors), CTR"),
    Preparer("tmall", "fuxictr_chime.data.tmall", "q0.4", "q0.9", None, True,
             "Tmall IJCAI-15 user_log_format1.csv, CVR (add-to-cart after a click)"),
    Preparer("ebnerd", "fuxictr_chime.data.ebnerd", "q0.4", "q0.9", None, True,
             "EBNeRD behaviors/history/articles parquet + article embeddings, CTR"),
    Preparer("synthetic", "fuxictr_chime.data.planted", "q0.6", "q0.9", None, False,
             "planted-interest log with known click probabilities (no raw folder); "
             "summary.json: oracle and reference AUCs; knobs via --option, e.g. "
             "--option n_users=200 or --option preset=sessions (docs/DATASETS.md)"),
)}


def get_preparer(name: str) -> Preparer:
    """The registered preparer ``name``; DataError listing the known names otherwise."""
    try:
        return PREPARERS[name]
    except KeyError:
        raise DataError(f"unknown preparer '{name}'; known: {sorted(PREPARERS)}") from None


def load_log(name: str, raw_dir: str | os.PathLike | None = None, *, encode_text: bool = True,
             **options: Any) -> "BehaviorLog":
    """Run preparer ``name``'s ``load`` on ``raw_dir`` with ``options``; return its BehaviorLog."""
    preparer = get_preparer(name)
    if raw_dir is None and preparer.raw_required:
        raise ConfigError(f"preparer '{name}' needs the raw data folder (--raw DIR)")
    load = preparer.load_module().load
    options = dict(options)
    if not encode_text:
        if preparer.text_option:
            options[preparer.text_option] = False
        else:
            logger.info("preparer '%s' embeds no text; --no-text has no effect", name)
    _check_options(name, load, options)
    args = () if raw_dir is None else (str(raw_dir),)
    return load(*args, **options)


def _check_options(name: str, load, options: dict) -> None:
    params = inspect.signature(load).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    first = next(iter(params), None)  # the raw folder
    accepted = [p for p, spec in params.items() if p != first and spec.kind in (
        inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"preparer '{name}': unknown option(s) {unknown}; "
                          f"accepted: {accepted}")


def prepare(name: str, out_dir: str | os.PathLike, *, raw_dir: str | os.PathLike | None = None,
            t1: str | int | None = None, t2: str | int | None = None, valid_ratio: float = 0.1,
            max_len: int = 1000, encode_text: bool = True, dataset_id: str | None = None,
            **options: Any) -> dict:
    """Load, split and write dataset ``name`` into ``out_dir``; return the summary dict.

    Defaults: t1 / t2 from the preparer (:meth:`Preparer.thresholds`), valid_ratio 0.1,
    max_len 1000, dataset_id = the preparer's name. ``options`` go to the loader. The module's
    ``extra_outputs`` (if any) adds summary blocks and files, computed before anything is written.
    """
    from .split import split_by_time
    from .writer import write_prepared

    preparer = get_preparer(name)
    default_t1, default_t2 = preparer.thresholds()
    log = load_log(name, raw_dir, encode_text=encode_text, **options)
    split = split_by_time(log, default_t1 if t1 is None else t1,
                          default_t2 if t2 is None else t2, valid_ratio=valid_ratio)
    extras = getattr(preparer.load_module(), "extra_outputs", None)
    extra_summary, extra_files = extras(log, split) if extras else ({}, {})
    return write_prepared(log, split, out_dir, max_len=max_len, dataset_id=dataset_id or name,
                          extra_summary=extra_summary, extra_files=extra_files)
