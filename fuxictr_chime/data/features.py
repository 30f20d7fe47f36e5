"""FuxiCTR feature maps for prepared long-sequence datasets (docs/ARCHITECTURE.md section 4).

Stage 2 (utilization) of CHIME feeds ordinary FuxiCTR models. FuxiCTR normally builds its
``FeatureMap`` by running its Ray-based preprocessing over the data; prepared datasets are
already encoded (``rebuild_dataset: False``), so this module builds the map directly from the
dataset config's ``feature_cols`` and ``label_col``:

* :func:`load_dataset_params` finds a dataset block the way ``fuxictr.utils.load_dataset_config``
  does (``dataset_config.yaml`` or ``dataset_config/*.yaml``) and resolves its relative paths;
* :func:`resolve_dataset_paths` resolves the data keys against the folder of the YAML that
  defined them (after ``os.path.realpath``: configs may be reached through a symlinked folder);
* :func:`build_feature_map` returns the ``FeatureMap`` with meta specs for the loader's
  ``item_seq`` / ``seq_mask`` columns, so ``BaseModel.get_inputs`` skips them.
"""
from __future__ import annotations

import copy
import glob
import logging
import os
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DataError
from ..io import read_yaml_mapping

if TYPE_CHECKING:
    import numpy as np
    from fuxictr.features import FeatureMap

logger = logging.getLogger(__name__)

DATA_PATH_KEYS = ("data_root", "train_data", "valid_data", "test_data", "user_info", "item_info")
SEQUENCE_META = ("item_seq", "seq_mask")  # columns the loader adds (ARCHITECTURE.md section 3)
FEATURE_TYPES = ("meta", "categorical", "numeric", "sequence", "embedding")
# time-sliced snapshots of a user-level vector (compressor/slices.py): the user_info column
# holding N stacked snapshots per user and the N cut times c_1 < ... < c_N
SLICE_KEYS = ("slice_column", "slice_cuts")

# spec keys copied from a feature column into the FeatureMap, per type (as FuxiCTR's processor)
_COMMON_KEYS = ("feature_encoder", "embedding_dim")
_EXTRA_KEYS = {
    "meta": (),
    "numeric": (),
    "categorical": ("emb_output_dim", "share_embedding", "vocab_size"),
    "sequence": ("emb_output_dim", "share_embedding", "vocab_size", "max_len"),
    "embedding": ("pretrain_dim",) + SLICE_KEYS,
}
_UNSUPPORTED_KEYS = ("pretrained_emb", "category_processor")


def resolve_dataset_paths(params: dict, config_file: str | os.PathLike) -> dict:
    """Return a copy of ``params`` whose relative data paths are absolute.

    The keys ``data_root, train_data, valid_data, test_data, user_info, item_info`` that hold
    a relative path are joined to the folder of ``os.path.realpath(config_file)`` (so a config
    works from any working directory). FuxiCTR itself reads them relative to the working
    directory: where the YAML-relative path does not exist but the one relative to the working
    directory does, that one is used (logged), so configs written for FuxiCTR's
    ``run_expid.py`` work too. Absolute paths, ``~`` paths (expanded) and empty values are kept.
    """
    base = os.path.dirname(os.path.realpath(config_file))
    resolved = dict(params)
    for key in DATA_PATH_KEYS:
        value = resolved.get(key)
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            continue
        path = os.path.expanduser(str(value))
        if os.path.isabs(path):
            resolved[key] = path
            continue
        beside_yaml = os.path.normpath(os.path.join(base, path))
        from_cwd = os.path.abspath(path)
        if not os.path.exists(beside_yaml) and os.path.exists(from_cwd):
            logger.info("%s: %s '%s' is not there relative to the YAML (%s); using it relative to "
                        "the working directory, as FuxiCTR does: %s", config_file, key, value,
                        beside_yaml, from_cwd)
            resolved[key] = from_cwd
        else:
            resolved[key] = beside_yaml
    return resolved


def load_dataset_params(config_dir_or_file: str | os.PathLike, dataset_id: str) -> dict:
    """Find the block of ``dataset_id`` in a dataset config and resolve its paths.

    ``config_dir_or_file`` is either a YAML file or a folder searched like FuxiCTR does:
    ``<dir>/dataset_config.yaml``, else every ``<dir>/dataset_config/*.yaml`` (sorted).
    Returns ``{"dataset_id": dataset_id, **block}`` with paths resolved by
    :func:`resolve_dataset_paths` against the YAML that holds the block.
    """
    files = _dataset_config_files(str(config_dir_or_file))
    seen: list[str] = []
    for path in files:
        config = _read_yaml(path)
        if dataset_id in config:
            block = config[dataset_id]
            if not isinstance(block, dict):
                raise ConfigError(f"{path}: dataset '{dataset_id}' must be a mapping, "
                                  f"got {type(block).__name__}")
            params = {"dataset_id": dataset_id, **block}
            return resolve_dataset_paths(params, path)
        seen.extend(str(k) for k in config)
    raise ConfigError(f"dataset_id '{dataset_id}' not found in {files}; "
                      f"datasets there: {sorted(set(seen))}")


def _dataset_config_files(config_dir_or_file: str) -> list[str]:
    if os.path.isfile(config_dir_or_file):
        return [config_dir_or_file]
    if not os.path.isdir(config_dir_or_file):
        raise ConfigError(f"dataset config '{config_dir_or_file}' is neither a file nor a folder")
    files = glob.glob(os.path.join(config_dir_or_file, "dataset_config.yaml"))
    if not files:
        files = sorted(glob.glob(os.path.join(config_dir_or_file, "dataset_config", "*.yaml")))
    if not files:
        raise ConfigError(f"{config_dir_or_file}: no dataset_config.yaml and no "
                          f"dataset_config/*.yaml")
    return files


def _read_yaml(path: str) -> dict:
    return read_yaml_mapping(path, "dataset ids")


def build_feature_map(dataset_id: str, dataset_params: dict, *, embedding_dim: int | None = None,
                      group_id: str | None = None,
                      feature_specs: list[dict] | None = None) -> "FeatureMap":
    """Build a ``fuxictr.features.FeatureMap`` from ``feature_cols`` and ``label_col``.

    No Ray and no dataset rebuild: prepared data are already encoded. Only features with
    ``active: true`` are kept; a ``name`` given as a list expands to one feature per name.

    * ``categorical`` / ``sequence``: ``vocab_size`` from the YAML; if absent on a
      ``source: item`` feature it is computed from ``item_info`` (max index + 1) and logged.
      ``padding_idx`` is 0. ``sequence`` needs ``max_len``.
    * ``embedding``: ``pretrain_dim`` from the YAML; if absent on a ``source: item`` feature
      (published reczoo LongCTR configs omit it) it is read from ``item_info``'s vector width
      and logged; otherwise a ConfigError. ``dtype: list`` and ``dtype: float`` are accepted.
      A ``source: user`` vector may carry time slices (``slice_column``, ``slice_cuts``:
      see :func:`slice_cuts_of`); set ``slice_cuts: null`` to use the plain column.
    * ``item_seq`` and ``seq_mask`` are added as ``type: meta`` (the loader's columns).

    Args:
        dataset_id: FuxiCTR dataset id.
        dataset_params: the dataset block (paths already resolved, e.g. by
            :func:`load_dataset_params`); ``group_id`` and ``embedding_dim`` are read from it
            when not given here.
        embedding_dim: FuxiCTR ``default_emb_dim``. Default: ``dataset_params["embedding_dim"]``.
        group_id: meta column used for gAUC (e.g. ``user_index``). Default: from params.
        feature_specs: FuxiCTR-style overrides ``[{name: ..., key: value}]`` merged into the
            matching ``feature_cols`` entries before filtering on ``active`` (so
            ``{name: chime_hist, active: true}`` switches an exported column on).
    """
    from fuxictr.features import FeatureMap

    columns = _expand_columns(dataset_params.get("feature_cols"))
    columns = _apply_feature_specs(columns, feature_specs)
    labels = _label_names(dataset_params.get("label_col"))
    feature_map = FeatureMap(dataset_id, _data_dir(dataset_id, dataset_params))
    for col in columns:
        if _is_active(col):
            feature_map.features[col["name"]] = _feature_spec(col, dataset_params)
    _link_shared_vocab(feature_map.features)
    for name in SEQUENCE_META:
        if name in feature_map.features and feature_map.features[name]["type"] != "meta":
            raise ConfigError(f"feature '{name}' is reserved for the long-sequence loader "
                              f"and must be type: meta")
        feature_map.features[name] = {"source": "", "type": "meta"}
    feature_map.labels = labels
    feature_map.group_id = group_id if group_id is not None else dataset_params.get("group_id")
    if feature_map.group_id is not None and feature_map.group_id not in feature_map.features:
        raise ConfigError(f"group_id '{feature_map.group_id}' is not an active feature of "
                          f"dataset '{dataset_id}'")
    feature_map.default_emb_dim = (embedding_dim if embedding_dim is not None
                                   else dataset_params.get("embedding_dim"))
    feature_map.num_fields = feature_map.get_num_fields()
    feature_map.total_features = sum(spec.get("vocab_size", 0)
                                     for spec in feature_map.features.values())
    feature_map.set_column_index()
    return feature_map


def _expand_columns(feature_cols: Any) -> list[dict]:
    """Copy ``feature_cols``, one dict per feature (list-valued ``name`` expanded)."""
    if not isinstance(feature_cols, list) or not feature_cols:
        raise ConfigError("dataset config: 'feature_cols' must be a non-empty list")
    columns = []
    for i, col in enumerate(feature_cols):
        if not isinstance(col, dict) or "name" not in col:
            raise ConfigError(f"dataset config: feature_cols[{i}] must be a mapping with 'name'")
        names = col["name"] if isinstance(col["name"], list) else [col["name"]]
        for name in names:
            columns.append({**copy.deepcopy(col), "name": str(name)})
    return columns


def _apply_feature_specs(columns: list[dict], feature_specs: list[dict] | None) -> list[dict]:
    by_name = {col["name"]: col for col in columns}
    for spec in feature_specs or []:
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"feature_specs: entry {spec!r} must be a mapping with 'name'")
        names = spec["name"] if isinstance(spec["name"], list) else [spec["name"]]
        for name in names:
            if name not in by_name:
                raise ConfigError(f"feature_specs: feature '{name}' is not in feature_cols; "
                                  f"known: {sorted(by_name)}")
            by_name[name].update({k: v for k, v in spec.items() if k != "name"})
    return columns


def _label_names(label_col: Any) -> list[str]:
    cols = label_col if isinstance(label_col, list) else [label_col]
    if not cols or any(not isinstance(c, dict) or "name" not in c for c in cols):
        raise ConfigError(f"dataset config: 'label_col' must be a mapping with 'name' "
                          f"(or a list of them), got {label_col!r}")
    return [str(c["name"]) for c in cols]


def _is_active(col: dict) -> bool:
    if "active" not in col:
        raise ConfigError(f"feature '{col['name']}': missing 'active' (true/false)")
    return bool(col["active"])


def _data_dir(dataset_id: str, params: dict) -> str:
    """FuxiCTR's ``data_dir``: ``data_root/dataset_id``, else the folder of the data files."""
    if params.get("data_root"):
        return os.path.join(str(params["data_root"]), dataset_id)
    for key in ("train_data", "test_data", "valid_data", "item_info"):
        if params.get(key):
            return os.path.dirname(str(params[key]))
    return ""


def _feature_spec(col: dict, params: dict) -> dict:
    """The FeatureMap entry of one active feature column."""
    name = col["name"]
    ftype = col.get("type")
    if ftype is None:
        raise ConfigError(f"feature '{name}': missing 'type' (one of {list(FEATURE_TYPES)})")
    if ftype not in FEATURE_TYPES:
        raise ConfigError(f"feature '{name}': unknown type '{ftype}' "
                          f"(one of {list(FEATURE_TYPES)})")
    for key in _UNSUPPORTED_KEYS:
        if key in col:
            raise ConfigError(f"feature '{name}': '{key}' needs FuxiCTR's dataset rebuild; "
                              f"not supported with prepared (pre-encoded) data")
    spec = {"source": col.get("source") or "", "type": ftype}
    for key in _COMMON_KEYS + _EXTRA_KEYS[ftype]:
        if key in col:
            spec[key] = col[key]
    if ftype in ("categorical", "sequence"):
        spec["padding_idx"] = 0
        if "vocab_size" not in spec:
            spec["vocab_size"] = _vocab_from_item_info(name, spec["source"], params)
        if ftype == "sequence" and not spec.get("max_len"):
            raise ConfigError(f"feature '{name}': type sequence needs 'max_len'")
        if ftype == "sequence":  # FuxiCTR's default encoder; null/None switches it off
            encoder = spec.pop("feature_encoder", "layers.MaskedAveragePooling()")
            if encoder not in (None, "null", "None", "none"):
                spec["feature_encoder"] = encoder
    if ftype == "embedding" and "pretrain_dim" not in spec:
        spec["pretrain_dim"] = _width_from_item_info(name, spec["source"], params)
    if "slice_cuts" in spec and spec["slice_cuts"] is None:  # explicit null: slicing off
        spec.pop("slice_column", None)
        spec.pop("slice_cuts")
    slice_cuts_of(name, spec)
    return spec


def slice_cuts_of(name: str, spec: dict) -> np.ndarray | None:
    """The snapshot cut times of a time-sliced feature as int64 (N,), or None if not sliced.

    A sliced feature (written by ``compress export --slices``) is a ``type: embedding,
    source: user`` spec with ``slice_column`` (user_info column of N*pretrain_dim floats per
    user) and ``slice_cuts`` (c_1 < c_2 < ... < c_N, integers, c_1 = t1). A sample at time t
    receives the snapshot of the latest cut c <= t (see :mod:`fuxictr_chime.compressor.slices`).
    Either key null or absent: not sliced. Inconsistent keys -> ConfigError naming the feature.
    """
    import numpy as np

    column, cuts = spec.get("slice_column"), spec.get("slice_cuts")
    if column is None and cuts is None:
        return None
    where = f"feature '{name}'"
    if column is None or cuts is None:
        raise ConfigError(f"{where}: 'slice_column' and 'slice_cuts' go together (got only "
                          f"{'slice_column' if cuts is None else 'slice_cuts'})")
    if spec.get("type") != "embedding" or spec.get("source") != "user":
        raise ConfigError(f"{where}: time slices need type: embedding and source: user")
    if not isinstance(column, str) or not column:
        raise ConfigError(f"{where}: 'slice_column' must be a column name, got {column!r}")
    if not isinstance(cuts, (list, tuple)) or not cuts \
            or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in cuts):
        raise ConfigError(f"{where}: 'slice_cuts' must be a non-empty list of integer times, "
                          f"got {cuts!r}")
    cuts = np.asarray(cuts, dtype=np.int64)  # (N,)
    if np.any(np.diff(cuts) <= 0):
        raise ConfigError(f"{where}: 'slice_cuts' must be strictly increasing, got {cuts.tolist()}")
    return cuts


def _item_info_column(name: str, source: str, params: dict, what: str):
    """Read column ``name`` of item_info (pyarrow ChunkedArray); ConfigError if impossible."""
    import pyarrow.parquet as pq

    if source != "item" or not params.get("item_info"):
        raise ConfigError(f"feature '{name}': missing '{what}' (it can only be inferred for "
                          f"a 'source: item' feature when 'item_info' is set)")
    path = str(params["item_info"])
    if not os.path.exists(path):
        raise DataError(f"{path}: item_info file not found (needed for '{what}' of '{name}')")
    schema = pq.read_schema(path)
    if name not in schema.names:
        raise DataError(f"{path}: no column '{name}' (needed for '{what}' of feature "
                        f"'{name}'); columns: {schema.names}")
    return pq.read_table(path, columns=[name]).column(name), path


def _vocab_from_item_info(name: str, source: str, params: dict) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc

    column, path = _item_info_column(name, source, params, "vocab_size")
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        column = pc.list_flatten(column)
    if not pa.types.is_integer(column.type):
        raise DataError(f"{path}: column '{name}' must hold integer indices, got {column.type}")
    top = pc.max(column).as_py()
    vocab = int(top if top is not None else 0) + 1
    logger.info("feature '%s': vocab_size %d computed from %s (max index + 1)", name, vocab, path)
    return vocab


def _width_from_item_info(name: str, source: str, params: dict) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc

    column, path = _item_info_column(name, source, params, "pretrain_dim")
    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)
            or pa.types.is_large_list(column.type)):
        raise DataError(f"{path}: column '{name}' must hold vectors (list<float>), "
                        f"got {column.type}")
    lengths = pc.list_value_length(column).drop_null()
    widths = pc.unique(lengths).to_pylist()
    if len(widths) != 1:
        raise DataError(f"{path}: column '{name}' has vectors of several widths {widths[:5]}")
    logger.info("feature '%s': pretrain_dim %d read from %s", name, widths[0], path)
    return int(widths[0])


def _link_shared_vocab(features: dict) -> None:
    """``share_embedding``: both features use one table sized for the larger vocabulary."""
    for name, spec in features.items():
        target = spec.get("share_embedding")
        if target is None:
            continue
        if target not in features or "vocab_size" not in features[target]:
            raise ConfigError(f"feature '{name}': share_embedding names '{target}', which is "
                              f"not an active categorical/sequence feature")
        size = max(spec["vocab_size"], features[target]["vocab_size"])
        spec["vocab_size"] = features[target]["vocab_size"] = size
