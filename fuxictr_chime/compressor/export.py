"""Export a trained compressor's user vectors as a FuxiCTR feature column.

Implements paper section 4.4 "Inference Stage" / spec 3.5: the trained compressor runs over
every user's representation-set sequence (eval mode, no gradient); CHIME's user vector is the
concatenation of its per-codebook code histograms (frequencies by default, counts optionally;
32+16+16 = 64 floats); users without representation history get zeros, as does row 0
(padding). Written into the prepared folder:

* ``user_info.parquet``: column ``<column>`` (list<float32>) added or replaced; every other
  column kept as it was; atomic (a crash leaves the old file intact);
* ``<column>.h5`` on request: dataset ``<column>`` (U+1, d) float32 and ``user_index`` (U+1,);
* ``dataset_config.yaml``: the feature spec ``{name: <column>, active: true, dtype: list,
  type: embedding, source: user, pretrain_dim: d, embedding_dim: 16}`` added or replaced;
* ``<column>_codebooks.json``: per-codebook hit ratio and perplexity (paper Table 5);
* ``<column>_diagnostics.json`` (also ``stats["diagnostics"]``): did the compressor learn?
  (:func:`.diagnostics.export_diagnostics` over the run's eval users): collapse of the user
  states z (effective rank, first-PC share, mean cosine; IRM hidden states too for CHIME) and of
  the exported column, per quantizer level the cumulative variance share and the code-user
  mutual information against a shuffled control, coverage of the ranking rows per split.

Defaults: column from the registry (``chime_hist`` for CHIME), ``normalize=True``,
``h5=False``, ``batch_size`` = the training micro-batch size.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from ..io import atomic_path, write_json_atomic, write_parquet_atomic, write_yaml_atomic
from . import diagnostics
from .checkpoint import check_fingerprint, data_fingerprint, load_checkpoint
from .data import RepresentationData
from .registry import get_compressor
from .train import _split_users, move_batch, pinned_cpu_threads

logger = logging.getLogger(__name__)

__all__ = ["export", "compute_user_features", "feature_spec", "update_dataset_config",
           "write_user_column", "format_codebook_table"]

USER_INFO, DATASET_CONFIG = "user_info.parquet", "dataset_config.yaml"
DEFAULT_EMBEDDING_DIM = 16


def export(checkpoint_dir: str | os.PathLike, data_dir: str | os.PathLike, *, column: str | None = None,
           normalize: bool = True, h5: bool = False, batch_size: int | None = None,
           progress: bool = True) -> dict:
    """Write the compressor's user vectors into the prepared folder ``data_dir``; return stats.

    Raises ConfigError when the checkpoint folder lacks model.pt / config.yaml or the dataset's
    item count / attribute vocab sizes / dense widths differ from the checkpoint's fingerprint.
    """
    started = time.perf_counter()
    ckpt = load_checkpoint(checkpoint_dir, trainer=False)
    spec = get_compressor(ckpt.compressor)
    column = column or spec.column
    config, data_dir = ckpt.config, Path(data_dir)
    data = RepresentationData(data_dir, max_len=config.optim.max_len)
    users = [int(u) for u in data.all_users()]
    actual = data_fingerprint(data.vocab_sizes(), data.dense_widths(), len(users))
    expected = ckpt.versions.get("data_fingerprint")
    if expected:
        check_fingerprint(expected, actual, checkpoint=ckpt.path, data_dir=data_dir)
    else:
        logger.warning("%s has no data fingerprint in versions.json; not checking the dataset", ckpt.path)
    model = _rebuild(spec, config, ckpt, data)
    with pinned_cpu_threads(config.optim.cpu_threads, next(model.parameters()).device):
        features, codes = compute_user_features(model, data, normalize=normalize,
                                                batch_size=batch_size or config.optim.batch_size,
                                                progress=progress)
        files = {"user_info": str(write_user_column(data_dir / USER_INFO, column, features))}
        if h5:
            files["h5"] = str(_write_h5(data_dir / f"{column}.h5", column, features))
        width = features.shape[1]
        cfg_path = update_dataset_config(data_dir / DATASET_CONFIG, feature_spec(column, width))
        if cfg_path is not None:
            files["dataset_config"] = str(cfg_path)
        stats = {"compressor": ckpt.compressor,
                 **_stats(model, codes, column, width, len(users), len(data.users_with_history()))}
        if stats.get("hit_ratio"):
            path = data_dir / f"{column}_codebooks.json"
            write_json_atomic(path, {k: stats[k] for k in ("column", "codebook_sizes", "hit_ratio", "perplexity",
                                                             "users_with_history", "positions")})
            files["codebooks"] = str(path)
        stats["diagnostics"] = _diagnostics(model, data, config, features, data_dir, batch_size)
    path = data_dir / f"{column}_diagnostics.json"
    write_json_atomic(path, {"column": column, **stats["diagnostics"]})
    files["diagnostics"] = str(path)
    seconds = time.perf_counter() - started
    stats.update(files=files, seconds=seconds, users_per_second=len(users) / max(seconds, 1e-9),
                 checkpoint=str(ckpt.path), normalize=normalize)
    logger.info("exported %s (%d floats) for %d users into %s\n%s\n%s", column, width, len(users), data_dir,
                format_codebook_table(stats), diagnostics.format_export_diagnostics(stats["diagnostics"]))
    return stats


@torch.no_grad()
def compute_user_features(model: torch.nn.Module, data: RepresentationData, *, normalize: bool = True,
                          batch_size: int = 8, progress: bool = True
                          ) -> tuple[np.ndarray, torch.Tensor | None]:
    """Run ``model`` over every user with representation history.

    Returns the feature matrix (max user_index + 1, d) float32 indexed by user_index (zeros for
    users without history and row 0) and the valid codes (N, M) of all users (None without ICM).
    """
    model.eval()
    device = next(model.parameters()).device
    users = [int(u) for u in data.all_users()]
    features = np.zeros((max(users, default=0) + 1, model.feature_dim), dtype=np.float32)
    with_history = data.users_with_history()
    codes_all = []
    batches = data.batches(with_history, batch_size, shuffle=False, seed=0, bucket=True)
    total = -(-len(with_history) // batch_size)
    for batch in tqdm(batches, total=total, disable=not progress, desc="export", dynamic_ncols=True):
        batch = move_batch(batch, device)
        rows = batch["user_index"].cpu().numpy()
        feats = model.user_features(batch, normalize=normalize).float().cpu().numpy()  # (B, d)
        features[rows] = feats
        if getattr(model, "uses_codebooks", False):
            codes = model.encode(batch)  # (B, T, M)
            codes_all.append(codes[batch["mask"].bool()].cpu())  # (N, M)
    codes = torch.cat(codes_all) if codes_all else None  # (N, M)
    return features, codes


def write_user_column(path: Path, column: str, features: np.ndarray) -> Path:
    """Add or replace ``column`` (list<float32>) in ``user_info.parquet``, row by ``user_index``."""
    if not path.exists():
        raise DataError(f"{path}: missing (export needs the prepared folder's user_info.parquet)")
    table = pq.read_table(path)
    if "user_index" not in table.column_names:
        raise DataError(f"{path}: no column 'user_index' (columns: {', '.join(table.column_names)})")
    index = table.column("user_index").to_numpy()
    if index.size and (index.min() < 0 or index.max() >= features.shape[0]):
        rows = np.zeros((index.size, features.shape[1]), dtype=np.float32)
        known = (index >= 0) & (index < features.shape[0])
        rows[known] = features[index[known]]
    else:
        rows = features[index]  # (U+1, d)
    width = features.shape[1]
    values = pa.array(rows.reshape(-1), type=pa.float32())  # (U+1 * d,)
    array = pa.FixedSizeListArray.from_arrays(values, width).cast(pa.list_(pa.float32()))
    if column in table.column_names:
        table = table.set_column(table.column_names.index(column), column, array)
    else:
        table = table.append_column(column, array)
    write_parquet_atomic(table, path)
    return path


def feature_spec(column: str, width: int, embedding_dim: int = DEFAULT_EMBEDDING_DIM) -> dict:
    """FuxiCTR feature spec of an exported user-level vector (ARCHITECTURE.md section 4)."""
    return {"name": column, "active": True, "dtype": "list", "type": "embedding", "source": "user",
            "pretrain_dim": int(width), "embedding_dim": int(embedding_dim)}


def update_dataset_config(path: Path, spec: Mapping[str, Any]) -> Path | None:
    """Add or replace ``spec`` in ``feature_cols`` of every dataset block of ``path`` (atomic).

    A user-set ``embedding_dim`` (or other extra keys) of an existing spec is kept. Returns None
    (with a warning) when the folder has no dataset_config.yaml.
    """
    if not path.exists():
        logger.warning("%s does not exist: add this feature spec to your dataset config: %s", path, dict(spec))
        return None
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML ({exc})") from exc
    blocks = {key: value for key, value in config.items() if isinstance(value, dict) and "feature_cols" in value}
    if not blocks:
        raise DataError(f"{path}: no dataset block with 'feature_cols' (expected {{dataset_id: {{feature_cols: "
                        "[...]}}}})")
    for block in blocks.values():
        block["feature_cols"] = _with_spec(block["feature_cols"], dict(spec))
    write_yaml_atomic(path, config)
    return path


def format_codebook_table(stats: Mapping[str, Any]) -> str:
    """Paper Table 5 style text: one line per codebook with size, hit ratio and perplexity."""
    if not stats.get("hit_ratio"):
        what = "LEARN's user vector" if stats.get("compressor") == "LEARN" else "w/o ICM: average-pooled vector"
        return f"{stats.get('column')}: no codebooks ({what})"
    lines = ["codebook  size  hit_ratio  perplexity"]
    for m, (size, hit, ppl) in enumerate(zip(stats["codebook_sizes"], stats["hit_ratio"], stats["perplexity"])):
        lines.append(f"{m + 1:>8}  {size:>4}  {100 * hit:>8.1f}%  {ppl:>10.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- helpers
def _rebuild(spec, config, ckpt, data: RepresentationData) -> torch.nn.Module:
    """The trained model from config.yaml + model.pt (eval mode, on GPU when available)."""
    model = spec.model_class.from_config(config, data.vocab_sizes(), data.dense_widths())
    missing, unexpected = model.load_state_dict(ckpt.model_state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{ckpt.path}/model.pt does not fit the model built from config.yaml: "
                          f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


def _diagnostics(model, data: RepresentationData, config, features: np.ndarray, data_dir: Path,
                 batch_size: int | None) -> dict:
    """The export's diagnostics block over the training run's eval users (same split as train)."""
    _, eval_ids = _split_users(data, config.optim)
    return diagnostics.export_diagnostics(model, data, eval_ids, features, data_dir,
                                          batch_size=batch_size or config.optim.batch_size, seed=config.optim.seed)


def _write_h5(path: Path, column: str, features: np.ndarray) -> Path:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            handle.create_dataset(column, data=features)  # (U+1, d)
            handle.create_dataset("user_index", data=np.arange(features.shape[0], dtype=np.int64))
    return path


def _stats(model, codes: torch.Tensor | None, column: str, width: int, n_users: int, n_history: int) -> dict:
    stats: dict[str, Any] = {"column": column, "width": width, "users": n_users, "users_with_history": n_history,
                             "positions": int(codes.shape[0]) if codes is not None else None}
    if codes is not None and codes.numel():
        stats["codebook_sizes"] = list(model.codebook_sizes)
        stats.update(model.code_stats(codes, torch.ones(codes.shape[0], dtype=torch.bool)))
    return stats


def _with_spec(feature_cols: list, spec: dict) -> list:
    result, replaced = [], False
    for entry in feature_cols:
        if isinstance(entry, dict) and entry.get("name") == spec["name"]:
            merged = {**entry, **spec}
            if "embedding_dim" in entry:
                merged["embedding_dim"] = entry["embedding_dim"]
            result.append(merged)
            replaced = True
        else:
            result.append(entry)
    if not replaced:
        result.append(spec)
    return result
