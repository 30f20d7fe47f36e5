"""Typed configuration of the LEARN compression baseline (CHIME spec section 4).

Sections: ``backbone`` (the causal transformer user tower, the same :class:`BackboneConfig` as
CHIME's IRM, random init by default), ``learn`` (:class:`LEARNSection`) and ``optim`` (the same
:class:`OptimConfig` as CHIME, so both compressors get a comparable training budget), plus
``data_dir`` and ``output_dir``. Read with :func:`fuxictr_chime.compressor.config.load_experiment`
(``config_class=LEARNConfig``); unknown keys raise ConfigError.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field

from ..compressor.config import BackboneConfig, ExperimentConfig, OptimConfig, _Section

__all__ = ["LEARNSection", "LEARNConfig", "EXPORT_POSITIONS"]

EXPORT_POSITIONS = ("last_anchor", "last_valid")


@dataclass
class LEARNSection(_Section):
    """LEARN specifics. Defaults: every dense item vector of the dataset is the (frozen) content
    input; the last 30% of each user's positive behaviors are the target part; 64-d output (the
    width of CHIME's histogram); inner-product temperature 0.1 on L2-normalized vectors; the
    exported vector is the one at the last history position (``export_position: last_anchor``, a
    position the loss trains; ``last_valid`` = the spec's last positive, which it never trains)."""

    section: typing.ClassVar[str] = "learn"
    content_columns: list[str] | None = None
    target_fraction: float = 0.3
    output_dim: int = 64
    item_hidden: int = 256
    tau: float = 0.1
    chunk_size: int | None = 256
    export_position: str = "last_anchor"

    def __post_init__(self) -> None:
        self._require(0.0 < self.target_fraction < 1.0, "target_fraction", "must be in (0, 1)")
        self._require(self.output_dim > 0 and self.item_hidden > 0, "output_dim", "widths must be positive")
        self._require(self.tau > 0, "tau", "must be positive")
        self._require(self.chunk_size is None or self.chunk_size > 0, "chunk_size", "must be positive or null")
        self._require(self.export_position in EXPORT_POSITIONS, "export_position",
                      f"must be one of {list(EXPORT_POSITIONS)}, got {self.export_position!r}")


_SECTIONS: dict[str, type[_Section]] = {"backbone": BackboneConfig, "learn": LEARNSection, "optim": OptimConfig}


def _small_backbone() -> BackboneConfig:
    return BackboneConfig(hidden_size=128, num_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=256)


@dataclass
class LEARNConfig(ExperimentConfig):
    """Everything a LEARN run needs (mirrors :class:`~fuxictr_chime.compressor.config.CHIMEConfig`)."""

    sections: typing.ClassVar[dict[str, type[_Section]]] = _SECTIONS
    name: typing.ClassVar[str] = "LEARN"

    backbone: BackboneConfig = field(default_factory=_small_backbone)
    learn: LEARNSection = field(default_factory=LEARNSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data_dir: str | None = field(default=None, metadata={"path": True})
    output_dir: str | None = field(default=None, metadata={"path": True})
