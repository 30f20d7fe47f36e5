"""CHIMEConfig: paper defaults, exact round trips, unknown keys, FuxiCTR experiment dialect."""
from __future__ import annotations

import pytest
import yaml

from fuxictr_chime.compressor.config import (SMOLLM2, AdaptationConfig, BackboneConfig, CHIMEConfig,
                                             CompressionConfig, LossConfig, OptimConfig, load_experiment)
from fuxictr_chime.errors import ConfigError


def test_defaults_are_the_papers():
    c = CHIMEConfig()
    # paper 5.1 "Implementations": Qwen2.5-0.5B (24 layers), lr 7e-4 / 7e-6, cosine, 50 warm-up
    # steps, batch 8, gradient accumulation 4, codebooks (32, 16, 16), tau 0.2 / 0.07.
    assert (c.backbone.arch, c.backbone.hidden_size, c.backbone.num_layers) == ("qwen2", 896, 24)
    assert (c.backbone.num_attention_heads, c.backbone.num_key_value_heads) == (14, 2)
    assert (c.optim.lr_new, c.optim.lr_pretrained, c.optim.warmup_steps) == (7e-4, 7e-6, 50)
    assert (c.optim.schedule, c.optim.batch_size, c.optim.grad_accum_steps, c.optim.max_len) == ("cosine", 8, 4, 1000)
    assert (c.compression.codebook_dim, c.compression.codebook_sizes) == (64, [32, 16, 16])
    assert (c.compression.decay, c.compression.commitment_weight, c.compression.rotation_trick) == (0.99, 0.25, True)
    assert (c.loss.tau_holistic, c.loss.tau_immediate) == (0.2, 0.07)
    assert c.loss.holistic and c.loss.immediate and c.compression.enabled and not c.adaptation.id_only
    assert sum(c.adaptation.embedding_dims.values()) == c.backbone.hidden_size
    assert not c.adaptation.final_linear and c.backbone.lora_r == 0


def _non_default() -> CHIMEConfig:
    return CHIMEConfig(
        backbone=BackboneConfig(arch="llama", hidden_size=64, num_layers=3, num_attention_heads=4,
                                num_key_value_heads=1, intermediate_size=96, rope_theta=5.0e5, rms_norm_eps=1e-5,
                                lora_r=4, lora_alpha=8.0, gradient_checkpointing=True, bf16=False),
        adaptation=AdaptationConfig(embedding_dims={"item_id": 40, "cate_id": 8, "label": 8},
                                    dense_dims={"title_emb": 8}, final_linear=True, init_std=1e-3),
        compression=CompressionConfig(enabled=False, codebook_sizes=[8, 4], decay=0.9, rotation_trick=False),
        loss=LossConfig(tau_holistic=0.5, immediate=False, chunk_size=None),
        optim=OptimConfig(lr_new=1.5e-7, lr_pretrained=0.0, max_steps=10, eval_users=20, max_grad_norm=None,
                          seed=7),
        data_dir="/data/x", output_dir=None)


def test_dict_and_yaml_round_trip_exactly(tmp_path):
    config = _non_default()
    assert CHIMEConfig.from_dict(config.to_dict()) == config
    path = config.to_yaml(tmp_path / "sub" / "config.yaml")
    assert CHIMEConfig.from_yaml(path) == config
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left behind
    assert CHIMEConfig.from_yaml(CHIMEConfig().to_yaml(tmp_path / "d.yaml")) == CHIMEConfig()


def test_small_floats_written_so_that_yaml_reads_floats(tmp_path):
    path = CHIMEConfig().to_yaml(tmp_path / "c.yaml")
    text = path.read_text()
    assert "lr_pretrained: 7.0e-06" in text
    raw = yaml.safe_load(text)
    assert isinstance(raw["optim"]["lr_pretrained"], float) and isinstance(raw["backbone"]["rms_norm_eps"], float)


def test_string_floats_from_pyyaml_are_accepted():
    raw = yaml.safe_load("optim:\n  lr_new: 1e-3\n  lr_pretrained: 5e-6\nloss:\n  tau_holistic: 2e-1\n")
    assert raw["optim"]["lr_new"] == "1e-3"  # PyYAML's YAML 1.1 reading
    config = CHIMEConfig.from_dict(raw)
    assert (config.optim.lr_new, config.optim.lr_pretrained, config.loss.tau_holistic) == (1e-3, 5e-6, 0.2)


@pytest.mark.parametrize("data, words", [
    ({"optim": {"lr_nwe": 1.0}}, ["'lr_nwe'", "'optim'", "did you mean 'lr_new'"]),
    ({"compression": {"codebook_size": [4]}}, ["'codebook_size'", "'compression'", "'codebook_sizes'"]),
    ({"backbone": {"zzz": 1}}, ["'zzz'", "'backbone'", "valid keys"]),
    ({"optimm": {}}, ["'optimm'", "top level", "'optim'"]),
])
def test_unknown_keys_name_key_section_and_suggestion(data, words):
    with pytest.raises(ConfigError) as err:
        CHIMEConfig.from_dict(data)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("data, where", [
    ({"optim": {"lr_new": "fast"}}, "optim.lr_new"),
    ({"optim": {"batch_size": 2.5}}, "optim.batch_size"),
    ({"optim": {"batch_size": "8"}}, "optim.batch_size"),
    ({"loss": {"holistic": "yes"}}, "loss.holistic"),
    ({"compression": {"codebook_sizes": 32}}, "compression.codebook_sizes"),
    ({"adaptation": {"embedding_dims": {"item_id": "wide", "label": 4}}}, "adaptation.embedding_dims.item_id"),
    ({"backbone": {"arch": "gpt2"}}, "backbone.arch"),
    ({"backbone": {"hidden_size": 30, "num_attention_heads": 4}}, "backbone.hidden_size"),
    ({"compression": {"codebook_sizes": []}}, "compression.codebook_sizes"),
    ({"optim": {"eval_users": 2.5}}, "optim.eval_users"),
    ({"optim": {"cpu_threads": 0}}, "optim.cpu_threads"),
    ({"optim": {"cpu_threads": True}}, "optim.cpu_threads"),
    ({"optim": {"cpu_threads": 1.5}}, "optim.cpu_threads"),
    ({"adaptation": {"embedding_dims": {"item_id": 8}}}, "adaptation.embedding_dims"),
    ({"adaptation": {"embedding_dims": {"cate_id": 8, "label": 4}}}, "adaptation.embedding_dims"),
    ({"adaptation": {"embedding_dims": {"item_id": 0, "label": 4}}}, "adaptation.embedding_dims"),
    ({"adaptation": {"id_only": True, "embedding_dims": {"item_id": 0, "cate_id": 8, "label": 4}}},
     "adaptation.embedding_dims"),
    ({"loss": []}, "'loss'"),
])
def test_bad_values_name_the_key(data, where):
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        CHIMEConfig.from_dict(data)


def test_pretrained_backbone_skips_head_layout_checks():
    cfg = BackboneConfig(pretrained_path="/x", hidden_size=576)  # SmolLM2 width, not divisible by 14 heads
    assert cfg.hidden_size == 576


MODEL_CONFIG = """
Base:
  model: CHIME
  optim: {lr_new: 1e-3, batch_size: 4, max_len: 200}
  backbone: {hidden_size: 64, num_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
             intermediate_size: 128, bf16: false}
  adaptation:
    embedding_dims: {item_id: 48, cate_id: 8, label: 8}
  data_dir: ../data/tiny
  output_dir: runs/base
CHIME_tiny:
  dataset_id: tiny
  seed: 3
  optim: {batch_size: 2}
  adaptation:
    embedding_dims: {item_id: 56, label: 8}
  backbone: {pretrained_path: ckpt/qwen}
CHIME_smol:
  backbone: {pretrained_path: smollm2, hidden_size: 576}
  output_dir: /abs/out
"""


@pytest.fixture
def config_dir(tmp_path):
    folder = tmp_path / "model_zoo" / "CHIME" / "config"
    folder.mkdir(parents=True)
    (folder / "model_config.yaml").write_text(MODEL_CONFIG)
    return folder


def test_load_experiment_merges_base_per_section(config_dir):
    config, raw = load_experiment(config_dir, "CHIME_tiny")
    assert config.optim.batch_size == 2 and config.optim.lr_new == 1e-3 and config.optim.max_len == 200
    assert config.optim.seed == 3  # FuxiCTR's top-level seed
    assert config.adaptation.embedding_dims == {"item_id": 56, "label": 8}  # replaced, not merged deeper
    assert config.backbone.hidden_size == 64 and config.backbone.bf16 is False
    assert raw["dataset_id"] == "tiny" and raw["model"] == "CHIME"


def test_load_experiment_resolves_relative_paths_against_the_yaml(config_dir):
    config, _ = load_experiment(config_dir, "CHIME_tiny")
    assert config.data_dir == str((config_dir / "../data/tiny").resolve())
    assert config.output_dir == str((config_dir / "runs/base").resolve())
    assert config.backbone.pretrained_path == str((config_dir / "ckpt/qwen").resolve())
    smol, _ = load_experiment(config_dir / "model_config.yaml", "CHIME_smol")  # a file works too
    assert smol.backbone.pretrained_path == SMOLLM2 and smol.output_dir == "/abs/out"


def test_load_experiment_from_model_config_folder(tmp_path):
    folder = tmp_path / "cfg" / "model_config"
    folder.mkdir(parents=True)
    (folder / "a.yaml").write_text("Base:\n  optim: {batch_size: 3}\n")
    (folder / "b.yaml").write_text("E1:\n  loss: {immediate: false}\n")
    config, _ = load_experiment(tmp_path / "cfg", "E1")
    assert config.optim.batch_size == 3 and config.loss.immediate is False


def test_unknown_expid_lists_known_ones(config_dir):
    with pytest.raises(ConfigError, match="unknown experiment id 'CHIME_x'.*CHIME_smol, CHIME_tiny"):
        load_experiment(config_dir, "CHIME_x")
    with pytest.raises(ConfigError, match="unknown experiment id 'Base'"):
        load_experiment(config_dir, "Base")


def test_bad_experiment_files(tmp_path, config_dir):
    with pytest.raises(ConfigError, match="no model_config.yaml"):
        load_experiment(tmp_path / "nowhere", "E")
    (config_dir / "model_config.yaml").write_text(MODEL_CONFIG + "E2:\n  optim: {lr_nwe: 1}\n")
    with pytest.raises(ConfigError, match=r"experiment 'E2'.*'lr_nwe'.*did you mean 'lr_new'"):
        load_experiment(config_dir, "E2")
    (config_dir / "model_config.yaml").write_text(MODEL_CONFIG + "E3:\n  seed: 1\n  optim: {seed: 2}\n")
    with pytest.raises(ConfigError, match="seed"):
        load_experiment(config_dir, "E3")
    (config_dir / "model_config.yaml").write_text("E4: [1, 2]\n")
    with pytest.raises(ConfigError, match="'E4' must be a mapping"):
        load_experiment(config_dir, "E4")
    (config_dir / "model_config.yaml").write_text("E5: {optim: {a: [}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(config_dir, "E5")
