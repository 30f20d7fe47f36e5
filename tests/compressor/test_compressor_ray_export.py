"""Ray Data export (issue 6): the same chime_hist column, files and stats as the single-process
export; shard reader and count statistics equal their single-process counterparts.

Ray starts once for the module (about 6-15 s) with 2 worker CPUs + 1 for its read tasks.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fuxictr_chime.cli import main
from fuxictr_chime.compressor.checkpoint import load_checkpoint
from fuxictr_chime.compressor.data import RepresentationData
from fuxictr_chime.compressor.export import _rebuild, compute_user_features, export
from fuxictr_chime.compressor.quantizer import code_stats
from fuxictr_chime.compressor.ray_export import (RepresentationShard, _collect, default_rows_per_task, encode_shard,
                                                 export_ray, flatten_representation, stats_from_counts)
from fuxictr_chime.compressor.registry import get_compressor
from fuxictr_chime.compressor.train import train
from fuxictr_chime.errors import ConfigError, DataError, LeakageError

from .conftest import make_prepared_dir, tiny_chime_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, prepared folder): 40 users (3 without history), a 3-step tiny CHIME run."""
    root = tmp_path_factory.mktemp("ray_export")
    data_dir = make_prepared_dir(root, n_users=40, n_items=30, max_events=12, users_without_history=3)
    result = train(tiny_chime_config(data_dir, root / "run"), progress=False)
    return result.last_checkpoint, data_dir


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=3, include_dashboard=False, object_store_memory=100 * 2**20)
    yield ray
    ray.shutdown()


def _copy(data_dir: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(data_dir, target)
    return target


def _model_and_data(checkpoint: Path, data_dir: Path):
    ckpt = load_checkpoint(checkpoint, trainer=False)
    data = RepresentationData(data_dir, max_len=ckpt.config.optim.max_len)
    return _rebuild(get_compressor(ckpt.compressor), ckpt.config, ckpt, data), data


# ---------------------------------------------------------------------------- without Ray
def test_shards_give_the_single_process_batches(trained):
    _, data_dir = trained
    whole = RepresentationData(data_dir, max_len=5)  # max_len 5 < longest history: truncation too
    table = pq.read_table(data_dir / "representation.parquet")
    shard = RepresentationShard(data_dir, max_len=5)
    assert shard.vocab_sizes() == whole.vocab_sizes() and shard.dense_widths() == whole.dense_widths()
    for part in (table.slice(0, 15), table.slice(15)):  # sliced arrow arrays, as Ray hands them over
        shard.load_table(part)
        users = shard.users_with_history()
        assert users == sorted(part.column("user_index").to_pylist())
        mine = list(shard.batches(users, 4, bucket=True))
        theirs = list(whole.batches(users, 4, bucket=True))
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            for key in ("item_index", "labels", "user_index", "mask"):
                assert torch.equal(a[key], b[key]), key
            for group in ("attrs", "dense"):
                assert a[group].keys() == b[group].keys()
                assert all(torch.equal(a[group][k], b[group][k]) for k in a[group])


def test_encode_shard_equals_compute_user_features(trained):
    checkpoint, data_dir = trained
    model, data = _model_and_data(checkpoint, data_dir)
    for normalize in (True, False):
        features, codes = compute_user_features(model, data, normalize=normalize, batch_size=3, progress=False)
        shard = RepresentationShard(data_dir, max_len=data.max_len)
        shard.load_table(pq.read_table(data_dir / "representation.parquet"))
        out = encode_shard(model, shard, normalize=normalize, batch_size=3)
        assert sorted(out["user_index"].tolist()) == data.users_with_history()
        np.testing.assert_array_equal(out["feature"], features[out["user_index"]])
        assert int(out["positions"].sum()) == codes.shape[0]
        got = stats_from_counts(out["code_counts"].sum(0), model.codebook_sizes)
        assert got == model.code_stats(codes)
        counts = out["code_counts"].sum(0)
        assert counts.sum() == codes.shape[0] * len(model.codebook_sizes)


def test_stats_from_counts_equal_code_stats_from_codes():
    g = torch.Generator().manual_seed(3)
    sizes = (6, 3, 4)
    codes = torch.stack([torch.randint(0, 5, (50,), generator=g), torch.randint(0, 3, (50,), generator=g),
                         torch.zeros(50, dtype=torch.long)], dim=1)  # (N, M); code 5 of layer 1 unused
    counts = np.concatenate([np.bincount(codes[:, m].numpy(), minlength=k) for m, k in enumerate(sizes)])
    expected = code_stats(codes, sizes)
    got = stats_from_counts(counts, sizes)
    assert got == {"hit_ratio": list(expected.hit_ratio), "perplexity": list(expected.perplexity)}
    empty = stats_from_counts(np.zeros(sum(sizes)), sizes)
    assert empty["hit_ratio"] == [0.0] * 3 and all(np.isnan(empty["perplexity"]))


def test_bad_rows_and_settings_raise_clear_errors(trained, tmp_path, capsys):
    checkpoint, data_dir = trained
    table = pq.read_table(data_dir / "representation.parquet")
    with pytest.raises(DataError, match="no column 'label_seq'"):
        flatten_representation(table.drop(["label_seq"]))
    bad = table.set_column(2, "label_seq", pa.array([[1.0]] * table.num_rows, pa.list_(pa.float32())))
    with pytest.raises(DataError, match="'label_seq' must be a list of integers"):
        flatten_representation(bad)
    short = table.set_column(3, "time_seq", pa.array([[0]] * table.num_rows, pa.list_(pa.int64())))
    with pytest.raises(DataError, match="'time_seq' and 'item_seq' have different lengths"):
        flatten_representation(short)
    with pytest.raises(ConfigError, match="--num-workers must be >= 1"):
        export_ray(checkpoint, data_dir, num_workers=0)
    assert main(["compress", "export", "--checkpoint", str(checkpoint), "--data", str(data_dir),
                 "--num-workers", "2"]) == 1
    assert "need --engine ray" in capsys.readouterr().err


# ---------------------------------------------------------------------------- with Ray
def test_ray_export_equals_single_process_export(trained, tmp_path, ray_local, capsys):
    """``compress export --engine ray`` vs ``export``: same model in eval mode on the same users,
    so the column is bit-identical (codes are discrete, and a position's hidden state does not
    depend on the batch it rides in beyond float rounding, far from any nearest-code tie here)."""
    checkpoint, data_dir = trained
    local, distributed = _copy(data_dir, tmp_path, "local"), _copy(data_dir, tmp_path, "ray")
    export(checkpoint, local, h5=True, progress=False)
    # 37 users in blocks of 5 rows -> 8 blocks spread over 2 actors; micro-batches of 3 users
    assert main(["compress", "export", "--checkpoint", str(checkpoint), "--data", str(distributed), "--h5",
                 "--engine", "ray", "--num-workers", "2", "--rows-per-task", "5", "--batch-size", "3",
                 "--no-progress"]) == 0
    assert "wrote chime_hist (16 floats) for 40 users (37 with history)" in capsys.readouterr().out
    a, b = pq.read_table(local / "user_info.parquet"), pq.read_table(distributed / "user_info.parquet")
    assert a.schema == b.schema and a.equals(b)
    hist = np.array(b.column("chime_hist").to_pylist(), dtype=np.float32)
    assert (hist[0] == 0).all() and (np.abs(hist).sum(1) > 0).sum() == 37
    # same feature spec, same Table 5 statistics (hit ratio, perplexity, positions), same h5
    for name in ("dataset_config.yaml", "chime_hist_codebooks.json"):
        assert (local / name).read_text() == (distributed / name).read_text(), name
    with h5py.File(local / "chime_hist.h5") as ha, h5py.File(distributed / "chime_hist.h5") as hb:
        np.testing.assert_array_equal(ha["chime_hist"][:], hb["chime_hist"][:])


class _LeakyWorker:
    """Stands in for UserEncoder: fails like a worker reading a leaking shard."""

    def __call__(self, batch):
        raise LeakageError("representation.parquet: 3 behaviors at or after t1=10")


def test_worker_errors_reach_the_driver_as_chime_errors(ray_local):
    """Ray wraps a worker's exception; the driver re-raises the worker's DataError class."""
    dataset = ray_local.data.range(4).map_batches(_LeakyWorker, batch_size=2,
                                                  compute=ray_local.data.ActorPoolStrategy(size=1))
    ray_local.data.DataContext.get_current().raise_original_map_exception = True  # as export_ray sets it
    with pytest.raises(LeakageError, match="at or after t1=10"):
        _collect(dataset, rows=5, width=2, sizes=(), total=4, progress=False)


def test_default_blocks_feed_every_worker():
    assert default_rows_per_task(10_000_000, 8, 8) == 400  # 50 micro-batches
    assert default_rows_per_task(300, 2, 32) == 38  # >= 4 blocks per worker on small data
    assert default_rows_per_task(10, 4, 8) == 8  # never below one micro-batch
