"""`fuxictr-chime compress train|export` end to end on tiny data, config errors, model_zoo YAML."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from fuxictr_chime.cli import main
from fuxictr_chime.compressor.config import CHIMEConfig, load_experiment, read_experiment_blocks

from .conftest import tiny_chime_config

MODEL_ZOO = Path(__file__).resolve().parents[2] / "model_zoo" / "CHIME" / "config"


def _write_experiment(folder: Path, data_dir: Path, **changes) -> Path:
    block = tiny_chime_config(data_dir).to_dict()
    block.pop("output_dir")
    for section, values in changes.items():
        block[section].update(values)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_config.yaml").write_text(yaml.safe_dump(
        {"Base": {"model": "CHIME"}, "CHIME_tiny": {"dataset_id": "tiny", **block}}, sort_keys=False))
    return folder


def test_cli_train_then_export_end_to_end(prepared_dir, tmp_path, capsys):
    config_dir = _write_experiment(tmp_path / "config", prepared_dir)
    out = tmp_path / "run"
    code = main(["compress", "train", "--config", str(config_dir), "--expid", "CHIME_tiny", "--data",
                 str(prepared_dir), "--output", str(out), "--max-steps", "2", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "trained CHIME for 2 steps" in printed and str(out / "last") in printed
    assert CHIMEConfig.from_yaml(out / "last" / "config.yaml").output_dir == str(out)

    code = main(["compress", "train", "--config", str(config_dir), "--expid", "CHIME_tiny", "--output",
                 str(out), "--max-steps", "3", "--resume", "--no-progress"])
    assert code == 0 and "for 3 steps" in capsys.readouterr().out

    code = main(["compress", "export", "--checkpoint", str(out / "last"), "--data", str(prepared_dir), "--h5",
                 "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "wrote chime_hist (16 floats) for 6 users (5 with history)" in printed
    assert "hit_ratio" in printed and "perplexity" in printed
    table = pq.read_table(prepared_dir / "user_info.parquet")
    assert len(table.column("chime_hist")[1].as_py()) == 16
    assert (prepared_dir / "chime_hist.h5").exists() and (prepared_dir / "chime_hist_codebooks.json").exists()

    code = main(["compress", "export", "--checkpoint", str(out / "best"), "--data", str(prepared_dir),
                 "--counts", "--column", "chime_counts", "--no-progress"])
    assert code == 0
    counts = pq.read_table(prepared_dir / "user_info.parquet").column("chime_counts").to_pylist()
    assert sum(counts[1][:8]) == pytest.approx(round(sum(counts[1][:8])))  # raw counts, not frequencies
    assert sum(counts[1][:8]) > 1


def test_cli_unknown_config_key_names_key_and_section(prepared_dir, tmp_path, capsys):
    config_dir = _write_experiment(tmp_path / "config", prepared_dir, optim={"learning_rate": 1.0e-3})
    code = main(["compress", "train", "--config", str(config_dir), "--expid", "CHIME_tiny", "--output",
                 str(tmp_path / "run"), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "unknown key 'learning_rate' in section 'optim'" in err and "CHIME_tiny" in err


def test_cli_unknown_expid_and_missing_checkpoint(prepared_dir, tmp_path, capsys):
    config_dir = _write_experiment(tmp_path / "config", prepared_dir)
    assert main(["compress", "train", "--config", str(config_dir), "--expid", "nope", "--no-progress"]) == 1
    assert "unknown experiment id 'nope'; known: CHIME_tiny" in capsys.readouterr().err
    assert main(["compress", "export", "--checkpoint", str(tmp_path / "missing"), "--data", str(prepared_dir),
                 "--no-progress"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_unknown_compressor_model(prepared_dir, tmp_path, capsys):
    config_dir = _write_experiment(tmp_path / "config", prepared_dir)
    path = config_dir / "model_config.yaml"
    blocks = yaml.safe_load(path.read_text())
    blocks["CHIME_tiny"]["model"] = "CHIMERA"
    path.write_text(yaml.safe_dump(blocks))
    assert main(["compress", "train", "--config", str(config_dir), "--expid", "CHIME_tiny", "--no-progress"]) == 1
    assert "unknown compressor 'CHIMERA'" in capsys.readouterr().err


def test_compress_help_lists_train_and_export(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compress", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "train" in out and "export" in out


def test_model_zoo_experiments_are_valid_configs():
    blocks, _ = read_experiment_blocks(MODEL_ZOO)
    expids = sorted(k for k in blocks if k != "Base")
    assert {"CHIME_movielens", "CHIME_movielens_pretrained", "CHIME_movielens_wo_il", "CHIME_movielens_wo_icm",
            "CHIME_movielens_wo_iam", "CHIME_microvideo", "CHIME_tmall", "CHIME_ebnerd"} <= set(expids)
    for expid in expids:
        config, raw = load_experiment(MODEL_ZOO, expid)
        assert raw["model"] == "CHIME"
        widths = sum(config.adaptation.embedding_dims.values()) + sum(config.adaptation.dense_dims.values())
        assert widths == config.backbone.hidden_size, expid  # IAM widths add up (spec 3.1)
        assert config.output_dir.endswith(expid), expid
    demo, _ = load_experiment(MODEL_ZOO, "CHIME_movielens")
    assert demo.compression.codebook_sizes == [32, 16, 16] and demo.loss.tau_holistic == 0.2
    assert load_experiment(MODEL_ZOO, "CHIME_movielens_wo_il")[0].loss.immediate is False
    assert load_experiment(MODEL_ZOO, "CHIME_movielens_wo_icm")[0].compression.enabled is False
    assert load_experiment(MODEL_ZOO, "CHIME_movielens_wo_iam")[0].adaptation.id_only is True
    paper = load_experiment(MODEL_ZOO, "CHIME_microvideo")[0]
    assert (paper.backbone.hidden_size, paper.optim.batch_size, paper.optim.grad_accum_steps,
            paper.optim.max_len, paper.optim.lr_new, paper.optim.lr_pretrained) == (896, 8, 4, 1000, 7e-4, 7e-6)
