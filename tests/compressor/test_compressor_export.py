"""Export of chime_hist: one row per user, atomic writes, dataset config, fingerprint checks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from fuxictr_chime.compressor.checkpoint import load_checkpoint
from fuxictr_chime.compressor.data import RepresentationData
from fuxictr_chime.compressor.export import export, feature_spec
from fuxictr_chime.compressor.model import CHIMECompressor
from fuxictr_chime.compressor.train import train
from fuxictr_chime.errors import ConfigError

from .conftest import make_prepared_dir


@pytest.fixture
def trained(tiny_config):
    """(checkpoint folder, prepared folder) after a 3-step tiny run."""
    result = train(tiny_config, progress=False)
    return result.last_checkpoint, Path(tiny_config.data_dir)


def _column(data_dir, name="chime_hist") -> np.ndarray:
    return np.array(pq.read_table(f"{data_dir}/user_info.parquet").column(name).to_pylist(), dtype=np.float32)


def test_export_writes_one_row_per_user_and_keeps_other_columns(trained):
    checkpoint, data_dir = trained
    before = pq.read_table(f"{data_dir}/user_info.parquet")
    stats = export(checkpoint, data_dir, progress=False)
    after = pq.read_table(f"{data_dir}/user_info.parquet")
    assert after.column_names == [*before.column_names, "chime_hist"]
    for name in before.column_names:
        assert after.column(name).equals(before.column(name)), name
    hist = _column(data_dir)  # (U+1, 16)
    assert hist.shape == (7, 16) and hist.dtype == np.float32
    kind = after.schema.field("chime_hist").type
    assert pa.types.is_list(kind) and kind.value_type == pa.float32()
    data = RepresentationData(data_dir, max_len=16)
    with_history = data.users_with_history()
    assert stats["users"] == 6 and stats["users_with_history"] == len(with_history) == 5
    assert (hist[0] == 0).all()  # padding row
    for user in range(1, 7):
        if user in with_history:
            blocks = np.split(hist[user], [8, 12])  # codebooks (8, 4, 4)
            np.testing.assert_allclose([b.sum() for b in blocks], 1.0, rtol=1e-6)
        else:
            assert (hist[user] == 0).all()
    # the exported rows are the model's user vectors
    ckpt = load_checkpoint(checkpoint)
    model = CHIMECompressor.from_config(ckpt.config, data.vocab_sizes(), data.dense_widths())
    model.load_state_dict(ckpt.model_state)
    model.eval()
    with torch.no_grad():
        direct = model.user_features(next(data.batches(with_history, len(with_history))))
    np.testing.assert_allclose(hist[with_history], direct.numpy(), rtol=1e-5, atol=1e-6)


def test_export_counts_h5_codebooks_and_dataset_config(trained):
    checkpoint, data_dir = trained
    stats = export(checkpoint, data_dir, normalize=False, h5=True, progress=False)
    counts = _column(data_dir)
    data = RepresentationData(data_dir, max_len=16)
    for user in range(1, 7):
        length = data.sequence_length(user)
        assert [b.sum() for b in np.split(counts[user], [8, 12])] == [length] * 3
    import h5py

    with h5py.File(f"{data_dir}/chime_hist.h5") as handle:
        np.testing.assert_array_equal(handle["chime_hist"][:], counts)
        np.testing.assert_array_equal(handle["user_index"][:], np.arange(7))
    codebooks = json.loads((data_dir / "chime_hist_codebooks.json").read_text())
    assert codebooks["codebook_sizes"] == [8, 4, 4]
    assert len(codebooks["hit_ratio"]) == len(codebooks["perplexity"]) == 3
    assert codebooks["hit_ratio"] == stats["hit_ratio"]
    assert all(0 < h <= 1 for h in codebooks["hit_ratio"])
    assert all(1 <= p <= k for p, k in zip(codebooks["perplexity"], (8, 4, 4)))
    config = yaml.safe_load((data_dir / "dataset_config.yaml").read_text())
    features = config["tiny"]["feature_cols"]
    spec = [f for f in features if f.get("name") == "chime_hist"]
    assert spec == [feature_spec("chime_hist", 16)]
    assert spec[0] == {"name": "chime_hist", "active": True, "dtype": "list", "type": "embedding",
                       "source": "user", "pretrain_dim": 16, "embedding_dim": 16}
    # a second export replaces the column and the spec (no duplicates), keeping a custom embedding_dim
    spec[0]["embedding_dim"] = 8
    (data_dir / "dataset_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    export(checkpoint, data_dir, progress=False)
    features = yaml.safe_load((data_dir / "dataset_config.yaml").read_text())["tiny"]["feature_cols"]
    again = [f for f in features if f.get("name") == "chime_hist"]
    assert len(again) == 1 and again[0]["embedding_dim"] == 8 and again[0]["active"] is True
    assert pq.read_table(f"{data_dir}/user_info.parquet").column_names.count("chime_hist") == 1
    assert len(features) == len(config["tiny"]["feature_cols"])


def test_same_seed_gives_identical_histograms(tiny_config, tmp_path):
    columns = []
    for run in ("a", "b"):
        data_dir = tmp_path / f"data_{run}"
        shutil.copytree(tiny_config.data_dir, data_dir)
        raw = tiny_config.to_dict()
        raw.update(data_dir=str(data_dir), output_dir=str(tmp_path / f"run_{run}"))
        result = train(type(tiny_config).from_dict(raw), progress=False)
        export(result.last_checkpoint, data_dir, progress=False)
        columns.append(_column(data_dir))
    np.testing.assert_array_equal(columns[0], columns[1])
    assert columns[0][1:].sum() > 0


def test_export_runs_on_the_checkpoints_cpu_threads(tiny_config, monkeypatch):
    raw = tiny_config.to_dict()
    raw["optim"]["cpu_threads"] = 1
    result = train(type(tiny_config).from_dict(raw), progress=False)
    seen = []
    real = CHIMECompressor.user_features

    def spy(self, batch, **kwargs):
        seen.append(torch.get_num_threads())
        return real(self, batch, **kwargs)

    monkeypatch.setattr(CHIMECompressor, "user_features", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        export(result.last_checkpoint, tiny_config.data_dir, progress=False)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_crash_during_export_leaves_old_user_info_intact(trained, monkeypatch):
    checkpoint, data_dir = trained
    export(checkpoint, data_dir, progress=False)
    files = ("user_info.parquet", "dataset_config.yaml", "chime_hist_codebooks.json")
    before = {name: (data_dir / name).read_bytes() for name in files}
    listing = sorted(p.name for p in data_dir.iterdir())

    def crash(*args, **kwargs):
        raise OSError("simulated crash while writing parquet")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError, match="simulated crash"):
        export(checkpoint, data_dir, normalize=False, progress=False)
    assert {name: (data_dir / name).read_bytes() for name in files} == before
    assert sorted(p.name for p in data_dir.iterdir()) == listing  # no temp file left behind


def test_fingerprint_mismatch_is_a_config_error(trained, tmp_path):
    checkpoint, _ = trained
    more_items = make_prepared_dir(tmp_path / "other", n_items=25)
    with pytest.raises(ConfigError, match="item count 25 != 20"):
        export(checkpoint, more_items, progress=False)
    other_vocab = make_prepared_dir(tmp_path / "vocab", categorical={"cate_id": 7})
    with pytest.raises(ConfigError, match=r"vocab sizes differ \(cate_id: 8 != 6"):
        export(checkpoint, other_vocab, progress=False)
    assert "chime_hist" not in pq.read_table(other_vocab / "user_info.parquet").column_names


def test_checkpoint_folder_without_model_or_config(trained, tmp_path):
    checkpoint, data_dir = trained
    with pytest.raises(ConfigError, match="does not exist"):
        export(tmp_path / "nowhere", data_dir, progress=False)
    for missing in ("model.pt", "config.yaml"):
        broken = tmp_path / f"no_{missing}"
        shutil.copytree(checkpoint, broken)
        (broken / missing).unlink()
        with pytest.raises(ConfigError, match=f"has no {missing}"):
            export(broken, data_dir, progress=False)


def test_export_of_the_wo_icm_ablation_writes_the_pooled_vector(tiny_config, tmp_path):
    raw = tiny_config.to_dict()
    raw["compression"]["enabled"] = False
    result = train(type(tiny_config).from_dict(raw), progress=False)
    data_dir = Path(tiny_config.data_dir)
    stats = export(result.last_checkpoint, data_dir, column="chime_pool", progress=False)
    pooled = _column(data_dir, "chime_pool")
    assert pooled.shape == (7, 16) and stats["width"] == 16 and "hit_ratio" not in stats
    assert (pooled[6] == 0).all() and np.abs(pooled[1:6]).sum(1).min() > 0
    assert not (data_dir / "chime_pool_codebooks.json").exists()
