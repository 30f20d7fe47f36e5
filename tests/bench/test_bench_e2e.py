"""Every ``fuxictr-chime bench`` command end to end on tiny data, through ``cli.main``.

One module-scoped folder holds a prepared dataset written by the real ``prepare`` writer from a
random behavior log (16 users, 30 items, a 8-d ``title_emb``), a tiny random Llama checkpoint
(``save_pretrained``: config.json + model.safetensors) and a tiny model zoo made from the
repository's own ``model_zoo`` blocks (``CHIME_movielens*``, ``LEARN_movielens``,
``DIN[_CHIME|_LEARN]_movielens``) with dataset id ``tiny`` and tiny sizes: hidden-32 one-layer
compressors trained for 2 steps, DIN for one epoch with an 8-unit MLP.

Checks: table2 (+ ``--slices 2``, 2 seeds) writes one runs.csv row per (model, variant, seed)
with finite metrics and the command, table2.md / slices.md whose numbers are the means of
runs.csv, and a rerun trains nothing; ablation (table3.md); depth (table4.md, figure 4; the
pretrained rows load the ``--pretrained`` checkpoint, the random rows have its shape);
codebooks and tsne reuse table2's compressors without training; bad ``--slices`` input.
"""
from __future__ import annotations

import json
import sys
import types
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from fuxictr_chime.cli import main
from fuxictr_chime.data.split import split_by_time
from fuxictr_chime.data.synthetic import synthetic_log
from fuxictr_chime.data.writer import write_prepared
from tests.compressor.conftest import TINY_HIDDEN, tiny_widths

REPO = Path(__file__).resolve().parents[2]
DATASET = "tiny"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROPE_THETA = 500000.0  # not the 10000 default, so a lost rope_theta shows
METRICS = ("AUC", "gAUC", "logloss")

TINY_BACKBONE = {"hidden_size": TINY_HIDDEN, "num_layers": 1, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "intermediate_size": 64, "bf16": False}
TINY_OPTIM = {"batch_size": 4, "grad_accum_steps": 1, "max_steps": 2, "warmup_steps": 1,
              "eval_every": 2, "eval_users": 2, "max_len": 16}
TINY_RANKER = {"epochs": 1, "batch_size": 64, "embedding_dim": 4, "dnn_hidden_units": [8],
               "attention_hidden_units": [8], "short_len": 5, "max_len": 20,
               "early_stop_patience": 1, "verbose": 0}


# ---------------------------------------------------------------------------- the tiny world
def _real_zoo(model: str) -> dict:
    return yaml.safe_load((REPO / "model_zoo" / model / "config" / "model_config.yaml").read_text())


def _write_yaml(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _write_data(root: Path) -> Path:
    """``prepare``'s writer on a random log: ~30 events per user, t1 = q0.5, t2 = q0.8."""
    log = synthetic_log(n_users=16, n_items=30, n_events=480, dense={"title_emb": 8}, seed=0, name=DATASET)
    folder = root / "data" / DATASET
    write_prepared(log, split_by_time(log, "q0.5", "q0.8"), folder, max_len=50)
    return folder


def _write_checkpoint(folder: Path) -> Path:
    """A random 2-layer hidden-32 Llama saved by transformers (config.json + model.safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=TINY_HIDDEN, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rope_theta=ROPE_THETA)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _chime_block(real: dict, adaptation: dict) -> dict:
    block = {k: v for k, v in real.items() if k not in ("data_dir", "output_dir")}  # set by the bench
    block.update(dataset_id=DATASET, adaptation=adaptation,
                 backbone={**real.get("backbone", {}), **TINY_BACKBONE},
                 optim={**real.get("optim", {}), **TINY_OPTIM},
                 compression={**real.get("compression", {}), "codebook_dim": 16, "codebook_sizes": [8, 4, 4]},
                 loss={**real.get("loss", {}), "chunk_size": 8})
    return block


def _write_zoo(root: Path, data: Path) -> Path:
    zoo = root / "zoo"
    emb, dense = tiny_widths()  # item_id 16 + cate_id 4 + title_emb 8 + label 4 = 32
    chime = _real_zoo("CHIME")
    blocks = {"Base": chime["Base"]}
    for suffix in ("", "_wo_il", "_wo_icm"):
        blocks[f"CHIME_{DATASET}{suffix}"] = _chime_block(
            chime[f"CHIME_movielens{suffix}"], {"embedding_dims": emb, "dense_dims": dense})
    blocks[f"CHIME_{DATASET}_wo_iam"] = _chime_block(
        chime["CHIME_movielens_wo_iam"], {"id_only": True, "embedding_dims": {"item_id": TINY_HIDDEN - 4, "label": 4}})
    # the checkpoint's shape (llama, 4 heads, 2 kv heads); its path stays the real zoo's
    # (smollm2): `bench depth --pretrained` names the checkpoint
    pretrained = _chime_block(chime["CHIME_movielens_pretrained"], {"embedding_dims": emb, "dense_dims": dense})
    pretrained["backbone"]["num_layers"] = 2
    blocks[f"CHIME_{DATASET}_pretrained"] = pretrained
    _write_yaml(zoo / "CHIME" / "config" / "model_config.yaml", blocks)

    learn = _real_zoo("LEARN")
    block = {k: v for k, v in learn["LEARN_movielens"].items() if k not in ("data_dir", "output_dir")}
    block.update(dataset_id=DATASET, backbone={**block["backbone"], **TINY_BACKBONE},
                 optim={**block["optim"], **TINY_OPTIM}, learn={"item_hidden": 16, "chunk_size": 8})
    _write_yaml(zoo / "LEARN" / "config" / "model_config.yaml", {"Base": learn["Base"], f"LEARN_{DATASET}": block})

    din = _real_zoo("DIN")
    blocks = {"Base": din["Base"]}
    for variant in ("", "_CHIME", "_LEARN"):
        blocks[f"DIN{variant}_{DATASET}"] = {**din[f"DIN{variant}_movielens"], **TINY_RANKER, "dataset_id": DATASET}
    _write_yaml(zoo / "DIN" / "config" / "model_config.yaml", blocks)
    # the model zoo's dataset config: the compressed columns declared, off (dataset_configs/*.yaml)
    dataset = yaml.safe_load((data / "dataset_config.yaml").read_text())[DATASET]
    for key in ("data_root", "train_data", "valid_data", "test_data", "user_info", "item_info"):
        dataset[key] = str((data / dataset[key]).resolve())
    dataset["feature_cols"] += [{"name": column, "active": False, "dtype": "list", "type": "embedding",
                                 "source": "user", "pretrain_dim": 64, "embedding_dim": 16}
                                for column in ("chime_hist", "learn_emb")]
    _write_yaml(zoo / "DIN" / "config" / "dataset_config.yaml", {DATASET: dataset})
    return zoo


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one torch thread avoids thread hand-offs on a busy machine (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> types.SimpleNamespace:
    root = tmp_path_factory.mktemp("bench")
    data = _write_data(root)
    return types.SimpleNamespace(root=root, data=data, zoo=_write_zoo(root, data),
                                 pretrained=_write_checkpoint(root / "tiny_llama"))


def _bench(world, what: str, out: Path, *extra: str) -> list[str]:
    return ["bench", what, "--data", str(world.data), "--out", str(out), "--zoo", str(world.zoo),
            "--no-progress", *extra]


def _run(argv: list[str]) -> int:
    """``cli.main(argv)`` with ``sys.argv`` as the console script would set it (runs.csv records it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["fuxictr-chime", *argv])
        return main(argv)


def _no_training(mp: pytest.MonkeyPatch) -> None:
    """Make every way to train or export a compressor, or to run a ranker, fail loudly."""
    def boom(*args, **kwargs):
        raise AssertionError("trained or exported although the results were there")

    import fuxictr_chime.compressor.export as export
    import fuxictr_chime.compressor.slices as slices
    import fuxictr_chime.compressor.train as train
    import fuxictr_chime.models.runner as runner

    mp.setattr(train, "train", boom)
    mp.setattr(export, "export", boom)
    mp.setattr(slices, "export_time_slices", boom)
    mp.setattr(runner, "run_experiment", boom)


def _table_row(text: str, label: str) -> list[str]:
    """The cells of the markdown row ``| label | ... |``."""
    rows = [line for line in text.splitlines() if line.startswith(f"| {label} |")]
    assert len(rows) == 1, (label, text)
    return [cell.strip() for cell in rows[0].strip("|").split("|")][1:]


# ---------------------------------------------------------------------------- table2
@pytest.fixture(scope="module")
def table2(world) -> types.SimpleNamespace:
    out = world.root / "table2"
    argv = _bench(world, "table2", out, "--models", "DIN", "--seeds", "2", "--slices", "2")
    assert _run(argv) == 0
    return types.SimpleNamespace(out=out, argv=argv)


def test_table2_runs_csv_has_one_finite_row_per_cell(table2):
    runs = pd.read_csv(table2.out / "runs.csv")
    variants = ("plain", "LEARN", "CHIME", "CHIME_sliced")
    assert sorted(zip(runs["variant"], runs["seed"])) == sorted(product(variants, (1, 2)))
    assert set(runs["model"]) == {"DIN"} and set(runs["dataset_id"]) == {DATASET}
    for metric in METRICS:
        assert np.isfinite(runs[metric].to_numpy(float)).all(), metric
    assert ((runs["AUC"] >= 0) & (runs["AUC"] <= 1)).all() and (runs["logloss"] > 0).all()
    expid = {"plain": "DIN_tiny", "LEARN": "DIN_LEARN_tiny", "CHIME": "DIN_CHIME_tiny",
             "CHIME_sliced": "DIN_CHIME_tiny"}
    assert (runs["expid"] == runs["variant"].map(expid)).all()
    assert set(runs["command"]) == {"fuxictr-chime " + " ".join(table2.argv)}
    # the LEARN / CHIME rows name the compressor each seed trained
    for variant in ("LEARN", "CHIME"):
        for seed in (1, 2):
            row = runs[(runs["variant"] == variant) & (runs["seed"] == seed)].iloc[0]
            assert Path(row["compressor_checkpoint"]).parent == table2.out / f"seed_{seed}" / variant.lower()


def test_table2_markdown_holds_the_means_of_runs_csv(table2):
    runs = pd.read_csv(table2.out / "runs.csv")
    text = (table2.out / "table2.md").read_text()
    labels = {"plain": "DIN", "LEARN": "DIN w/ LEARN", "CHIME": "DIN w/ CHIME", "CHIME_sliced": "DIN w/ CHIME (sliced)"}
    body = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| DIN")]
    assert body == list(labels.values())
    for variant, label in labels.items():
        cells = _table_row(text, label)
        sub = runs[runs["variant"] == variant]
        for cell, metric in zip(cells, METRICS):
            assert cell.strip("*") == f"{100 * sub[metric].mean():.2f}", (label, metric)
        assert cells[-1] == "2"


def test_table2_slices_md_is_the_paired_difference(table2):
    runs = pd.read_csv(table2.out / "runs.csv")
    text = (table2.out / "slices.md").read_text()
    assert "2 time slices" in text
    cells = _table_row(text, "DIN w/ CHIME (sliced) vs w/ CHIME")
    sliced = runs[runs["variant"] == "CHIME_sliced"].set_index("seed").sort_index()
    single = runs[runs["variant"] == "CHIME"].set_index("seed").sort_index()
    for cell, metric in zip(cells, METRICS):
        delta = 100 * float(np.mean(sliced[metric].to_numpy() - single[metric].to_numpy()))
        assert cell.startswith(f"{delta:+.3f} (p="), (metric, cell)
    assert cells[-1] == "2"
    for seed in (1, 2):  # the sliced view: two cuts from t1, the seed's CHIME checkpoint
        marker = json.loads((table2.out / f"seed_{seed}" / "data_sliced" / "slices.json").read_text())
        t1 = json.loads((table2.out / f"seed_{seed}" / "data" / "summary.json").read_text())["t1"]
        assert len(marker["cuts"]) == 2 and marker["cuts"][0] == t1 < marker["cuts"][1]
        assert Path(marker["checkpoint"]).parent == table2.out / f"seed_{seed}" / "chime"


def test_table2_rerun_trains_nothing(table2, capsys):
    csv = table2.out / "runs.csv"
    before, mtime = csv.read_bytes(), csv.stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        _no_training(mp)
        assert _run(table2.argv) == 0
    assert csv.read_bytes() == before and csv.stat().st_mtime_ns == mtime
    printed = capsys.readouterr().out
    assert "| DIN w/ CHIME (sliced) |" in printed and "vs w/ CHIME" in printed


@pytest.mark.parametrize("extra, message", [
    (("--slices", "1"), "--slices must be >= 2"),
    (("--slices", "2", "--variants", "plain,LEARN"), "--slices needs the CHIME variant"),
])
def test_table2_bad_slices_is_a_config_error(world, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert _run(_bench(world, "table2", out, "--models", "DIN", *extra)) == 1
    err = capsys.readouterr().err
    assert "fuxictr-chime bench: error:" in err and message in err
    assert not out.exists()  # rejected before anything was written


@pytest.mark.parametrize("extra, message", [
    (("--models", "DINN"), "Did you mean 'DIN'?"),
    (("--models", "DIN,FOO"), "unknown model 'FOO'"),
    (("--models", "DIN_CHIME"), "give the base model (DIN)"),
    (("--models", "SDIM"), "model SDIM: no config folder"),  # registered, but not in this zoo
    (("--variants", "plain,CHIMe"), "Did you mean 'CHIME'?"),
    (("--seeds", "0"), "--seeds must be >= 1"),
    (("--epochs", "0"), "--epochs must be >= 1"),
    (("--compressor-steps", "0"), "--compressor-steps must be >= 1"),
])
def test_table2_bad_arguments_fail_before_anything_trains(world, tmp_path, capsys, extra, message):
    """Checked up front: no compressor trains, no folder is created (it used to train the
    compressors for a minute before the unknown model name stopped the run)."""
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        _no_training(mp)
        assert _run(_bench(world, "table2", out, "--models", "DIN", *extra)) == 1
    err = capsys.readouterr().err
    assert "fuxictr-chime bench: error:" in err and message in err
    assert not out.exists()


def test_table2_data_folder_without_dataset_config_fails_before_anything_trains(world, tmp_path, capsys):
    data, out = tmp_path / "not_prepared", tmp_path / "out"
    data.mkdir()
    argv = ["bench", "table2", "--data", str(data), "--out", str(out), "--zoo", str(world.zoo), "--no-progress"]
    with pytest.MonkeyPatch.context() as mp:
        _no_training(mp)
        assert _run(argv) == 1
    assert "dataset_config.yaml: missing" in capsys.readouterr().err
    assert not out.exists()


def test_table2_runs_csv_has_convergence_columns(table2):
    runs = pd.read_csv(table2.out / "runs.csv")
    assert {"epochs_run", "best_epoch", "stopped_early", "base_rate", "base_rate_logloss", "curve_csv"} \
        <= set(runs.columns)
    assert (runs["epochs_run"] == 1).all() and (runs["best_epoch"] == 1).all()  # TINY_RANKER: one epoch
    assert ((runs["base_rate"] > 0) & (runs["base_rate"] < 1)).all()
    for path in runs["curve_csv"]:
        assert len(pd.read_csv(path)) == 1


# ---------------------------------------------------------------------------- codebooks, tsne
def test_codebooks_reuses_table2_compressors(world, table2, capsys):
    with pytest.MonkeyPatch.context() as mp:
        _no_training(mp)
        assert _run(_bench(world, "codebooks", table2.out, "--seeds", "2")) == 0
    text = (table2.out / "codebooks.md").read_text()
    assert text in capsys.readouterr().out
    stats = [json.loads((table2.out / f"seed_{s}" / "chime" / "export.json").read_text()) for s in (1, 2)]
    hit = 100 * np.mean([s["hit_ratio"] for s in stats], axis=0)
    ppl = np.mean([s["perplexity"] for s in stats], axis=0)
    assert _table_row(text, "Hit Ratio") == [f"{h:.2f}%" for h in hit]
    assert _table_row(text, "Perplexity / Codesize") == [f"{p:.2f} / {k}" for p, k in zip(ppl, (8, 4, 4))]
    assert all(0 < h <= 100 for h in hit) and all(1 <= p <= k + 1e-6 for p, k in zip(ppl, (8, 4, 4)))


def test_tsne_reuses_table2_compressor(world, table2, capsys):
    with pytest.MonkeyPatch.context() as mp:
        _no_training(mp)
        assert _run(_bench(world, "tsne", table2.out)) == 0
    png = table2.out / "tsne.png"
    assert f"Figure 5: {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == PNG_MAGIC


# ---------------------------------------------------------------------------- ablation, depth
def test_ablation_table3_has_the_four_rows(world, capsys):
    out = world.root / "ablation"
    assert _run(_bench(world, "ablation", out, "--seeds", "1")) == 0
    text = (out / "table3.md").read_text()
    assert text in capsys.readouterr().out
    runs = pd.read_csv(out / "runs.csv").set_index("variant")
    labels = ["CHIME", "CHIME w/o IL", "CHIME w/o ICM", "CHIME w/o IAM"]
    assert [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| CHIME")] == labels
    assert list(runs.index) == labels
    for label in labels:
        cells = _table_row(text, label)
        assert cells == [f"{100 * runs.loc[label, m]:.2f}" for m in METRICS] + ["1"]
    assert list(runs["expid"]) == [f"CHIME_{DATASET}", f"CHIME_{DATASET}_wo_il", f"CHIME_{DATASET}_wo_icm",
                                   f"CHIME_{DATASET}_wo_iam"]
    # w/o ICM has no codebooks (average-pooled vector), the others report three
    assert pd.isna(runs.loc["CHIME w/o ICM", "hit_ratio"])
    for label in ("CHIME", "CHIME w/o IL", "CHIME w/o IAM"):
        assert len(json.loads(runs.loc[label, "hit_ratio"])) == 3
    # w/o IL trains without the immediate loss
    log = pd.read_csv(out / "seed_1" / "chime_w_o_il" / "chime" / "log.csv")
    assert (log["immediate"] == 0).all() and (log["holistic"] > 0).all()
    # the rows carry Table 2's convergence columns (TINY_RANKER: one epoch)
    assert (runs["epochs_run"] == 1).all() and (runs["best_epoch"] == 1).all()
    assert ((runs["base_rate"] > 0) & (runs["base_rate"] < 1)).all() and runs["valid_AUC"].between(0, 1).all()
    for path in runs["curve_csv"]:
        assert len(pd.read_csv(path)) == 1


def test_ablation_rerun_backfills_convergence_columns_without_training(world, capsys):
    """A runs.csv written before the convergence columns existed gets them on resume, from each
    run's result JSON, and nothing is trained again."""
    out = world.root / "ablation_backfill"
    assert _run(_bench(world, "ablation", out, "--seeds", "1")) == 0
    full = pd.read_csv(out / "runs.csv")
    old = full.drop(columns=["valid_AUC", "valid_gAUC", "valid_logloss", "epochs_run", "best_epoch",
                             "stopped_early", "base_rate", "base_rate_logloss", "curve_csv"])
    old.to_csv(out / "runs.csv", index=False)
    with pytest.MonkeyPatch.context() as mp:
        _no_training(mp)
        assert _run(_bench(world, "ablation", out, "--seeds", "1")) == 0
    again = pd.read_csv(out / "runs.csv")
    pd.testing.assert_frame_equal(again[full.columns], full)


def test_depth_table4_and_figure4(world, capsys):
    out = world.root / "depth"
    assert _run(_bench(world, "depth", out, "--layers", "1,2", "--pretrained", str(world.pretrained))) == 0
    text = (out / "table4.md").read_text()
    printed = capsys.readouterr().out
    assert text in printed and f"Figure 4: {out / 'figure4_eval_holistic.png'}" in printed
    labels = ["L=1 Random", "L=1 Pretrain", "L=2 Random", "L=2 Pretrain"]
    assert [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| L=")] == labels
    assert (out / "figure4_eval_holistic.png").read_bytes()[:8] == PNG_MAGIC
    from safetensors.torch import load_file

    weights = load_file(str(world.pretrained / "model.safetensors"))
    for n in (1, 2):
        random = yaml.safe_load((out / "seed_1" / f"l_{n}_random" / "chime" / "last" / "config.yaml").read_text())
        assert random["backbone"]["pretrained_path"] is None and random["backbone"]["num_layers"] == n
        # the random rows have exactly the checkpoint's shape, rope_theta included
        assert {k: random["backbone"][k] for k in ("arch", "hidden_size", "num_attention_heads",
                                                   "num_key_value_heads", "intermediate_size", "rope_theta")} \
            == {"arch": "llama", "hidden_size": TINY_HIDDEN, "num_attention_heads": 4, "num_key_value_heads": 2,
                "intermediate_size": 64, "rope_theta": ROPE_THETA}
        ckpt = out / "seed_1" / f"l_{n}_pretrain" / "chime" / "last"
        pretrained = yaml.safe_load((ckpt / "config.yaml").read_text())["backbone"]
        assert Path(pretrained["pretrained_path"]) == world.pretrained and pretrained["num_pretrained_layers"] == n
        # 2 steps at lr_pretrained 7e-6 leave the loaded decoder weights where the checkpoint had them
        state = torch.load(ckpt / "model.pt", map_location="cpu")
        decoder = {k.split("decoder.", 1)[1]: v for k, v in state.items() if ".decoder." in f".{k}"}
        for layer in range(n):
            name = f"layers.{layer}.self_attn.q_proj.weight"
            loaded = next(v for k, v in decoder.items() if k.endswith(name))
            assert torch.allclose(loaded, weights[f"model.{name}"], atol=1e-3), name
        assert not any(k.endswith(f"layers.{n}.self_attn.q_proj.weight") for k in decoder)
