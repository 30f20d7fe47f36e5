"""Compressor checkpoint folders (stage 1; spec section 3, ARCHITECTURE.md section 5).

A checkpoint folder holds:

* ``model.pt``      the model ``state_dict`` (weights and buffers, codebooks included);
* ``trainer.pt``    optimizer, scheduler, step, epoch, batch position, RNG states, best metric
                    (absent in an export-only checkpoint);
* ``config.yaml``   the full config (``config.to_yaml``), enough to rebuild the model;
* ``versions.json`` python / torch / transformers / fuxictr_chime versions, torch's CPU capability
                    and thread count, the repo's git commit
                    when available, the compressor name and the data fingerprint (item count,
                    attribute vocab sizes, dense widths) that export checks against.

A folder is written into a temporary sibling and then renamed into place, so a crash never
leaves a half-written checkpoint under the final name.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
TRAINER_FILE = "trainer.pt"
CONFIG_FILE = "config.yaml"
VERSIONS_FILE = "versions.json"

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "read_versions", "data_fingerprint",
           "check_fingerprint", "version_info", "MODEL_FILE", "TRAINER_FILE", "CONFIG_FILE",
           "VERSIONS_FILE"]


@dataclass
class Checkpoint:
    """A loaded checkpoint folder."""

    path: Path
    config: Any
    model_state: dict
    trainer_state: dict | None
    versions: dict
    compressor: str


def data_fingerprint(vocab_sizes: Mapping[str, int], dense_widths: Mapping[str, int],
                     num_users: int | None = None) -> dict:
    """What the compressor saw of its data: item count, attribute vocab sizes, dense widths.

    ``vocab_sizes`` is ``RepresentationData.vocab_sizes()`` (``item_id`` = item count + 1).
    """
    vocab = {str(k): int(v) for k, v in sorted(vocab_sizes.items())}
    fingerprint = {
        "items": int(vocab.get("item_id", 0)) - 1 if "item_id" in vocab else None,
        "vocab_sizes": vocab,
        "dense_widths": {str(k): int(v) for k, v in sorted(dense_widths.items())},
    }
    if num_users is not None:
        fingerprint["users"] = int(num_users)
    return fingerprint


def check_fingerprint(expected: Mapping[str, Any], actual: Mapping[str, Any], *,
                      checkpoint: str | os.PathLike, data_dir: str | os.PathLike) -> None:
    """Raise ConfigError when the dataset differs from the one the compressor was trained on.

    Compares item count, attribute vocab sizes and dense widths; a differing user count only
    logs a warning (the compressor has no user-id parameters, new users are encoded fine).
    """
    where = f"dataset {data_dir} does not match checkpoint {checkpoint}"
    if expected.get("items") != actual.get("items"):
        raise ConfigError(f"{where}: item count {actual.get('items')} != {expected.get('items')} seen "
                          "in training (the compressor never saw these items)")
    for key in ("vocab_sizes", "dense_widths"):
        want, got = dict(expected.get(key, {})), dict(actual.get(key, {}))
        if want != got:
            diff = sorted(name for name in set(want) | set(got) if want.get(name) != got.get(name))
            detail = ", ".join(f"{name}: {got.get(name)} != {want.get(name)}" for name in diff)
            raise ConfigError(f"{where}: {key.replace('_', ' ')} differ ({detail}; dataset != checkpoint)")
    if "users" in expected and "users" in actual and expected["users"] != actual["users"]:
        logger.warning("%s has %s users, the compressor was trained on data with %s users",
                       data_dir, actual["users"], expected["users"])


def version_info(compressor: str, fingerprint: Mapping[str, Any] | None = None) -> dict:
    """Package versions, git commit of this repository (None if unavailable), compressor name, and
    what a CPU run's float sums depend on: torch's CPU capability (e.g. AVX2, AVX512) and intra-op
    thread count. A CPU run repeats to the digit only where both are the same."""
    import transformers

    from .. import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "fuxictr_chime": __version__,
        "git_commit": _git_commit(),
        "compressor": compressor,
        "data_fingerprint": dict(fingerprint or {}),
    }


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, config: Any, compressor: str,
                    fingerprint: Mapping[str, Any], trainer_state: Mapping[str, Any] | None = None
                    ) -> Path:
    """Write a checkpoint folder at ``path`` atomically (temp folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        torch.save(model.state_dict(), tmp / MODEL_FILE)
        if trainer_state is not None:
            torch.save(dict(trainer_state), tmp / TRAINER_FILE)
        config.to_yaml(tmp / CONFIG_FILE)
        (tmp / VERSIONS_FILE).write_text(json.dumps(version_info(compressor, fingerprint), indent=2) + "\n")
        _replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_versions(path: str | os.PathLike) -> dict:
    """``versions.json`` of a checkpoint folder ({} if absent: older or hand-made folders)."""
    file = Path(path) / VERSIONS_FILE
    if not file.exists():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{file}: not valid JSON ({exc})") from exc


def load_checkpoint(path: str | os.PathLike, *, trainer: bool = True) -> Checkpoint:
    """Read a checkpoint folder; the config class comes from the registry by compressor name.

    Raises ConfigError when the folder, ``model.pt`` or ``config.yaml`` is missing.
    """
    from .registry import get_compressor

    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.is_dir() and old.is_dir():  # a crash between the two renames of _replace_dir
        logger.warning("checkpoint %s missing; using the previous version %s", path, old)
        path = old
    if not path.is_dir():
        raise ConfigError(f"checkpoint folder {path} does not exist")
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise ConfigError(f"checkpoint folder {path} has no {name} (not a compressor checkpoint; "
                              "pass a folder written by `fuxictr-chime compress train`, e.g. <output>/last)")
    versions = read_versions(path)
    compressor = versions.get("compressor", "CHIME")
    config = get_compressor(compressor).config_class.from_yaml(path / CONFIG_FILE)
    model_state = torch.load(path / MODEL_FILE, map_location="cpu", weights_only=True)
    trainer_state = None
    if trainer and (path / TRAINER_FILE).is_file():
        trainer_state = torch.load(path / TRAINER_FILE, map_location="cpu", weights_only=False)
    return Checkpoint(path, config, model_state, trainer_state, versions, compressor)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` onto ``dst``: the old ``dst`` is moved aside first, then removed."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
