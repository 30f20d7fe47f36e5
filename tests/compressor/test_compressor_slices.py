"""Time-sliced CHIME snapshots (compressor/slices.py): no leakage, one slice = plain export.

A tiny behavior log is turned into a prepared folder (ARCHITECTURE.md section 2) by plain Python
below; a tiny CHIME compressor is trained for a few steps on it once per module. The leakage test
exports raw code *counts*, so each received snapshot tells how many behaviors it was built from
(the counts of one codebook sum to the sequence length); that number is checked against a
brute-force reading of the log for every sample of every split, and the snapshot is recomputed
from exactly those behaviors.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from fuxictr_chime.compressor import slices as slices_mod
from fuxictr_chime.compressor.config import CHIMEConfig
from fuxictr_chime.compressor.data import RepresentationData
from fuxictr_chime.compressor.export import export
from fuxictr_chime.compressor.slices import (
    _FolderView, even_cuts, export_slices, export_time_slices, make_cuts, parse_cuts,
    quantile_cuts, read_user_logs, register_export_options, representation_table, validate_cuts)
from fuxictr_chime.data.features import build_feature_map, load_dataset_params
from fuxictr_chime.data.loader import LongSeqDataLoader
from fuxictr_chime.errors import ConfigError, DataError, LeakageError

from .conftest import make_prepared_dir, tiny_chime_config

T1, TV, T2, T_END = 20, 38, 45, 60  # representation < T1 <= train < TV <= valid < T2 <= test
N_USERS, N_ITEMS = 9, 14
CODEBOOKS = [4, 3]
CATE = [0] + [1 + i % 3 for i in range(N_ITEMS)]


def make_events(seed: int = 0) -> list[tuple[int, int, int, int]]:
    """(user, item, time, label +1/-1). User 8 only acts after t1, user 9 only before, and
    several actions share a timestamp (ties)."""
    rng = np.random.default_rng(seed)
    events = []
    for user in range(1, N_USERS - 1):
        for _ in range(int(rng.integers(8, 16))):
            events.append((user, int(rng.integers(1, N_ITEMS + 1)), int(rng.integers(0, T_END)),
                           int(rng.choice([1, -1]))))
    events += [(8, 3, 25, 1), (8, 4, 25, -1), (8, 5, 50, 1), (9, 6, 1, 1), (9, 7, 2, -1)]
    events += [(1, 2, T1, 1), (1, 9, T1, -1), (2, 4, TV, 1)]  # actions exactly at thresholds
    return events


def ordered(events):
    """Stable order of the preparer: by user, then (time, item)."""
    return sorted(events, key=lambda e: (e[0], e[2], e[1]))


def _lists(rows, pa_type):
    return pa.array(rows, type=pa.list_(pa_type))


def write_prepared(folder, events) -> None:
    """The prepared layout of ARCHITECTURE.md section 2, by plain Python (no vectorization)."""
    os.makedirs(folder, exist_ok=True)
    events = ordered(events)
    title = np.random.default_rng(1).standard_normal((N_ITEMS + 1, 4)).astype(np.float32)
    title[0] = 0.0
    pq.write_table(pa.table({
        "item_index": pa.array(range(N_ITEMS + 1), pa.int64()),
        "item_id": pa.array(range(N_ITEMS + 1), pa.int64()),
        "cate_id": pa.array(CATE, pa.int64()),
        "title_emb": _lists(title.tolist(), pa.float32())}), os.path.join(folder, "item_info.parquet"))
    users = range(N_USERS + 1)
    pos = {u: [(t, i) for uu, i, t, y in events if uu == u and y > 0] for u in users}
    pq.write_table(pa.table({
        "user_index": pa.array(users, pa.int64()),
        "full_item_seq": _lists([[i for _, i in pos[u]] for u in users], pa.int64()),
        "full_time_seq": _lists([[t for t, _ in pos[u]] for u in users], pa.int64())}),
        os.path.join(folder, "user_info.parquet"))
    rep = {u: [e for e in events if e[0] == u and e[2] < T1] for u in users}
    rep_users = [u for u in users if rep[u]]
    pq.write_table(pa.table({
        "user_index": pa.array(rep_users, pa.int64()),
        "item_seq": _lists([[e[1] for e in rep[u]] for u in rep_users], pa.int64()),
        "label_seq": _lists([[e[3] for e in rep[u]] for u in rep_users], pa.int8()),
        "time_seq": _lists([[e[2] for e in rep[u]] for u in rep_users], pa.int64())}),
        os.path.join(folder, "representation.parquet"))
    windows = {"train": (T1, TV), "valid": (TV, T2), "test": (T2, 10 ** 9)}
    for split, (lo, hi) in windows.items():
        rows = [e for e in events if lo <= e[2] < hi]
        seq_len = [sum(1 for t, _ in pos[u] if t < time) for u, _, time, _ in rows]
        pq.write_table(pa.table({
            "user_index": pa.array([e[0] for e in rows], pa.int64()),
            "item_index": pa.array([e[1] for e in rows], pa.int64()),
            "seq_len": pa.array(seq_len, pa.int64()),
            "timestamp": pa.array([e[2] for e in rows], pa.int64()),
            "label": pa.array([1.0 if e[3] > 0 else 0.0 for e in rows], pa.float32())}),
            os.path.join(folder, f"{split}.parquet"))
    with open(os.path.join(folder, "summary.json"), "w") as fh:
        json.dump({"t1": T1, "t2": T2, "users": N_USERS, "items": N_ITEMS}, fh)
    block = {
        "data_root": "./", "data_format": "parquet", "rebuild_dataset": False,
        "train_data": "train.parquet", "valid_data": "valid.parquet", "test_data": "test.parquet",
        "user_info": "user_info.parquet", "item_info": "item_info.parquet", "max_len": 50,
        "feature_cols": [
            {"name": ["user_index", "item_index", "seq_len"], "active": True, "dtype": "int",
             "type": "meta"},
            {"name": "item_id", "active": True, "dtype": "int", "type": "categorical",
             "source": "item", "vocab_size": N_ITEMS + 1},
            {"name": "cate_id", "active": True, "dtype": "int", "type": "categorical",
             "source": "item", "vocab_size": 4},
        ],
        "label_col": {"name": "label", "dtype": "float"},
    }
    with open(os.path.join(folder, "dataset_config.yaml"), "w") as fh:
        yaml.safe_dump({"tiny": block}, fh, sort_keys=False)


def tiny_config(data_dir, output_dir) -> CHIMEConfig:
    return CHIMEConfig.from_dict({
        "backbone": {"hidden_size": 16, "num_layers": 1, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "intermediate_size": 32, "bf16": False},
        "adaptation": {"embedding_dims": {"item_id": 8, "cate_id": 4, "label": 2},
                       "dense_dims": {"title_emb": 2}},
        "compression": {"codebook_dim": 8, "codebook_sizes": CODEBOOKS},
        "optim": {"batch_size": 4, "grad_accum_steps": 1, "max_steps": 3, "warmup_steps": 1,
                  "eval_every": 3, "eval_users": 1, "max_len": 64, "seed": 0},
        "data_dir": str(data_dir), "output_dir": str(output_dir)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(events, pristine prepared folder, checkpoint folder) of a compressor trained 3 steps."""
    from fuxictr_chime.compressor.train import train

    root = tmp_path_factory.mktemp("slices")
    events = make_events()
    write_prepared(root / "data", events)
    result = train(tiny_config(root / "data", root / "run"), progress=False)
    return events, root / "data", result.last_checkpoint


@pytest.fixture
def folder(trained, tmp_path):
    """A fresh copy of the prepared folder to export into."""
    shutil.copytree(trained[1], tmp_path / "data")
    return tmp_path / "data"


def load_model(checkpoint):
    from fuxictr_chime.compressor.checkpoint import load_checkpoint
    from fuxictr_chime.compressor.model import CHIMECompressor

    ckpt = load_checkpoint(checkpoint, trainer=False)
    vocab = {"item_id": N_ITEMS + 1, "cate_id": max(CATE) + 1}
    model = CHIMECompressor.from_config(ckpt.config, vocab, {"title_emb": 4})
    model.load_state_dict(ckpt.model_state)
    return model.eval()


def loader_rows(folder) -> list[dict]:
    """Every sample of every split through LongSeqDataLoader: user, time, chime_hist."""
    params = load_dataset_params(folder, "tiny")
    fmap = build_feature_map("tiny", params)
    rows = []
    for split in ("train", "valid", "test"):
        loader = LongSeqDataLoader(fmap, params[f"{split}_data"], split=split, batch_size=7,
                                   user_info=params["user_info"], item_info=params["item_info"],
                                   max_len=8)
        times = pq.read_table(params[f"{split}_data"]).column("timestamp").to_numpy()
        batches = list(loader)
        users = torch.cat([b["user_index"] for b in batches]).numpy()
        hist = torch.cat([b["chime_hist"] for b in batches]).numpy()
        rows += [{"user": int(u), "time": int(t), "hist": h} for u, t, h in zip(users, times, hist)]
    return rows


def brute_features(model, events, user: int, n: int, item_info) -> np.ndarray:
    """Raw code counts of the compressor on the user's n earliest behaviors, as a one-user
    batch built by hand (item attributes from ``item_info``)."""
    seq = ordered([e for e in events if e[0] == user])[:n]
    if not seq:
        return np.zeros(sum(CODEBOOKS), dtype=np.float32)
    items = torch.tensor([[e[1] for e in seq]])  # (1, n)
    table = pq.read_table(item_info)
    emb = torch.tensor(table.column("title_emb").to_pylist(), dtype=torch.float32)  # (I+1, 4)
    batch = {"item_index": items, "labels": torch.tensor([[e[3] for e in seq]]),
             "attrs": {"cate_id": torch.tensor(CATE)[items]},  # (1, n)
             "dense": {"title_emb": emb[items]},  # (1, n, 4)
             "user_index": torch.tensor([user]), "mask": torch.ones(1, len(seq), dtype=torch.bool)}
    with torch.no_grad():
        return model.user_features(batch, normalize=False)[0].numpy()


# ---------------------------------------------------------------------------- leakage
@pytest.mark.parametrize("refit_every", [None, 2])
def test_every_sample_sees_only_behaviors_before_its_time(trained, folder, tmp_path, refit_every,
                                                          monkeypatch):
    events, _, checkpoint = trained
    cuts = validate_cuts([T1, 27, TV, 50], T1)  # 38 = TV: samples at TV see exactly that cut
    seen_views = []
    if refit_every:
        import fuxictr_chime.compressor.train as train_mod
        real_train = train_mod.train

        def spy(config, **kw):  # what the refit trains on: all logs before the cut, nothing later
            table = pq.read_table(os.path.join(config.data_dir, "representation.parquet"))
            cut = json.load(open(os.path.join(config.data_dir, "summary.json")))["t1"]
            times = [t for row in table.column("time_seq").to_pylist() for t in row]
            assert max(times) < cut and len(times) == sum(1 for e in events if e[2] < cut)
            seen_views.append(cut)
            return real_train(config, **kw)
        monkeypatch.setattr(train_mod, "train", spy)
    stats = export_time_slices(checkpoint, folder, cuts=cuts, normalize=False, progress=False,
                               refit_every=refit_every, refit_dir=tmp_path / "refit", refit_steps=2)
    assert stats["cuts"] == cuts.tolist() and stats["slice_column"] == "chime_hist_slices"
    if refit_every:
        assert seen_views == [TV] and list(stats["refit_checkpoints"]) == [TV]
    rows = loader_rows(folder)
    assert len(rows) == sum(1 for e in events if e[2] >= T1)
    models = {}
    for row in rows:
        user, t = row["user"], row["time"]
        n = int(round(row["hist"][:CODEBOOKS[0]].sum()))  # counts of codebook 1 = sequence length
        times = sorted(e[2] for e in events if e[0] == user)
        assert all(time < t for time in times[:n]), (user, t, n)  # built only from the past
        cut = max(c for c in cuts if c <= t)
        assert n == sum(1 for time in times if time < cut)  # ... and from all of it before the cut
        which = checkpoint if not refit_every or cut < TV else stats["refit_checkpoints"][TV]
        model = models.setdefault(str(which), load_model(which))
        np.testing.assert_array_equal(row["hist"], brute_features(model, events, user, n,
                                                                folder / "item_info.parquet"))


def logs_from_files(folder) -> list[tuple[int, int, int, int]]:
    """(user, item, time, label) of every log in a prepared folder, read row by row."""
    events = []
    for row in pq.read_table(folder / "representation.parquet").to_pylist():
        events += [(row["user_index"], i, t, y) for i, t, y in
                   zip(row["item_seq"], row["time_seq"], row["label_seq"])]
    for split in ("train", "valid", "test"):
        for row in pq.read_table(folder / f"{split}.parquet").to_pylist():
            events.append((row["user_index"], row["item_index"], row["timestamp"],
                           1 if row["label"] == 1.0 else -1))
    return events


def test_no_leakage_on_the_shared_tiny_folder(tmp_path):
    """Same check on conftest's tiny folder, with its tiny config, evenly spread cuts."""
    from fuxictr_chime.compressor.train import train

    folder = make_prepared_dir(tmp_path, n_users=8, max_events=6)
    result = train(tiny_chime_config(folder, tmp_path / "run"), progress=False)
    cuts = make_cuts(folder, slices=4)
    export_time_slices(result.last_checkpoint, folder, cuts=cuts, normalize=False, progress=False)
    events, width = logs_from_files(folder), 8  # first codebook of tiny_chime_config: 8 codes
    params = load_dataset_params(folder, "tiny")
    fmap = build_feature_map("tiny", params)
    for split in ("train", "valid", "test"):
        loader = LongSeqDataLoader(fmap, params[f"{split}_data"], split=split, batch_size=5,
                                   user_info=params["user_info"], item_info=params["item_info"],
                                   max_len=4)
        times = pq.read_table(params[f"{split}_data"]).column("timestamp").to_pylist()
        batches = list(loader)
        users = torch.cat([b["user_index"] for b in batches]).tolist()
        hist = torch.cat([b["chime_hist"] for b in batches]).numpy()
        for user, t, h in zip(users, times, hist):
            own = sorted(e[2] for e in events if e[0] == user)
            n = int(round(h[:width].sum()))
            assert all(time < t for time in own[:n])
            assert n == min(16, sum(1 for time in own if time < max(c for c in cuts if c <= t)))


def test_user_logs_prefix_lengths_and_tables_match_brute_force(folder):
    events = make_events()
    logs = read_user_logs(folder)
    for cut in (T1, 21, 25, TV, TV + 1, 59, 10 ** 6):
        lengths = logs.lengths_before(cut)
        users = np.flatnonzero(lengths > 0)
        table = representation_table(logs, lengths, users).to_pylist()
        for user in range(N_USERS + 1):
            past = ordered([e for e in events if e[0] == user and e[2] < cut])
            assert lengths[user] == len(past)
            if past:
                row = table[int(np.searchsorted(users, user))]
                assert row["user_index"] == user
                assert row["item_seq"] == [e[1] for e in past]
                assert row["label_seq"] == [e[3] for e in past]
                assert row["time_seq"] == [e[2] for e in past]


def test_folder_view_refuses_a_log_at_the_cut(folder):
    logs = read_user_logs(folder)
    lengths = logs.lengths_before(TV + 1)  # includes user 2's action at exactly TV
    users = np.flatnonzero(lengths > 0)
    with _FolderView(folder, representation_table(logs, lengths, users), TV) as view:
        with pytest.raises(LeakageError, match="t1=38"):
            RepresentationData(view)
    assert not os.path.exists(view)


# ---------------------------------------------------------------------------- one slice = plain
def test_one_slice_reproduces_the_single_snapshot_export(trained, folder, tmp_path):
    _, pristine, checkpoint = trained
    plain = tmp_path / "plain"
    shutil.copytree(pristine, plain)
    export(checkpoint, plain, progress=False)
    export_time_slices(checkpoint, folder, cuts=[T1, 30, 50], progress=False)  # then back to one
    stats = export_time_slices(checkpoint, folder, cuts=[T1], progress=False)
    assert stats["slice_column"] is None
    for name in ("user_info.parquet", "dataset_config.yaml", "chime_hist_codebooks.json"):
        assert (folder / name).read_bytes() == (plain / name).read_bytes(), name
    assert not (folder / "chime_hist_slices.json").exists()
    a, b = loader_rows(plain), loader_rows(folder)
    assert len(a) == len(b) and all(np.array_equal(x["hist"], y["hist"]) for x, y in zip(a, b))


def test_first_snapshot_is_the_plain_export_and_later_ones_are_fresher(trained, folder):
    events, _, checkpoint = trained
    cuts = [T1, 30, 50]
    stats = export_time_slices(checkpoint, folder, cuts=cuts, normalize=False, progress=False)
    table = pq.read_table(folder / "user_info.parquet")
    plain = np.array(table.column("chime_hist").to_pylist(), dtype=np.float32)  # (U+1, d)
    snaps = np.array(table.column("chime_hist_slices").to_pylist(), dtype=np.float32)
    snaps = snaps.reshape(len(plain), len(cuts), -1)  # (U+1, N, d)
    np.testing.assert_array_equal(snaps[:, 0], plain)
    changed = []
    for k in range(1, len(cuts)):
        for user in range(1, N_USERS + 1):
            new = [e for e in events if e[0] == user and cuts[k - 1] <= e[2] < cuts[k]]
            if new:
                assert not np.array_equal(snaps[user, k], snaps[user, k - 1])
                assert snaps[user, k, :CODEBOOKS[0]].sum() == snaps[user, k - 1, :CODEBOOKS[0]].sum() + len(new)
            else:
                np.testing.assert_array_equal(snaps[user, k], snaps[user, k - 1])
        changed.append(len({e[0] for e in events if cuts[k - 1] <= e[2] < cuts[k]}))
    assert stats["users_reencoded"][1:] == changed
    assert snaps[8, 0].sum() == 0 and snaps[8, 1].sum() > 0  # a user new after t1 gets history
    config = yaml.safe_load((folder / "dataset_config.yaml").read_text())["tiny"]
    spec = next(c for c in config["feature_cols"] if c["name"] == "chime_hist")
    assert spec["slice_column"] == "chime_hist_slices" and spec["slice_cuts"] == cuts
    info = json.loads((folder / "chime_hist_slices.json").read_text())
    n_samples = {s: pq.read_metadata(folder / f"{s}.parquet").num_rows for s in ("train", "valid", "test")}
    assert {s: sum(v) for s, v in info["samples_per_slice"].items()} == n_samples


def test_default_frequencies_sum_to_one_per_codebook(trained, folder):
    _, _, checkpoint = trained
    export_time_slices(checkpoint, folder, cuts=[T1, 40], progress=False)
    table = pq.read_table(folder / "user_info.parquet")
    snaps = np.array(table.column("chime_hist_slices").to_pylist()).reshape(N_USERS + 1, 2, -1)
    for block in np.split(snaps, np.cumsum(CODEBOOKS)[:-1], axis=-1):  # (U+1, N, K_m)
        sums = block.sum(-1)  # (U+1, N)
        np.testing.assert_allclose(sums[sums > 0], 1.0, rtol=1e-5)
    assert snaps[0].sum() == 0  # padding row


# ---------------------------------------------------------------------------- cuts
def test_even_and_quantile_cuts():
    assert even_cuts(20, 60, 4).tolist() == [20, 30, 40, 50]
    assert even_cuts(20, 23, 3).tolist() == [20, 21, 22]
    assert even_cuts(20, 20, 1).tolist() == [20]
    times = np.array([20, 21, 22, 23, 30, 31, 40, 41])
    assert quantile_cuts(20, times, 4).tolist() == [20, 22, 30, 40]
    with pytest.raises(ConfigError, match="strictly increasing"):
        even_cuts(20, 22, 5)
    with pytest.raises(ConfigError, match="no sample after t1"):
        even_cuts(20, 20, 2)
    with pytest.raises(ConfigError, match=">= 1"):
        even_cuts(20, 60, 0)


@pytest.mark.parametrize("cuts, words", [
    ([21, 30], ["c_1 = 21", "t1 = 20"]),
    ([20, 30, 30], ["strictly increasing", "c_2 = 30"]),
    ([20, 40, 30], ["strictly increasing"]),
    ([], ["empty"]),
])
def test_validate_cuts_errors(cuts, words):
    with pytest.raises(ConfigError) as err:
        validate_cuts(cuts, 20)
    for word in words:
        assert word in str(err.value)


def test_parse_and_make_cuts(folder):
    assert parse_cuts(" 20, 30,45 ") == [20, 30, 45]
    with pytest.raises(ConfigError, match="integer"):
        parse_cuts("20,3.5")
    assert make_cuts(folder, cuts="20,30").tolist() == [20, 30]
    latest = max(e[2] for e in make_events())
    assert make_cuts(folder, slices=2).tolist() == [T1, T1 + (latest - T1) // 2]
    assert make_cuts(folder, slices=3, spacing="quantile")[0] == T1
    with pytest.raises(ConfigError, match="exactly one"):
        make_cuts(folder, slices=2, cuts="20,30")
    with pytest.raises(ConfigError, match="exactly one"):
        make_cuts(folder)
    with pytest.raises(ConfigError, match="t1 = 20"):
        make_cuts(folder, cuts="19,30")


# ---------------------------------------------------------------------------- bad input
def test_bad_sample_label_and_leaky_representation(folder):
    table = pq.read_table(folder / "valid.parquet")
    label = table.column("label").to_numpy().copy()
    label[0] = 0.5
    pq.write_table(table.set_column(table.column_names.index("label"), "label",
                                    pa.array(label, pa.float32())), folder / "valid.parquet")
    with pytest.raises(DataError, match="valid.parquet: column 'label'"):
        read_user_logs(folder)
    with pytest.raises(LeakageError, match="representation.parquet"):
        read_user_logs(folder, t1=5)


def test_missing_summary_and_timestamp(folder):
    table = pq.read_table(folder / "test.parquet")
    pq.write_table(table.drop_columns(["timestamp"]), folder / "test.parquet")
    with pytest.raises(DataError, match="test.parquet: no column 'timestamp'"):
        make_cuts(folder, slices=2)
    os.remove(folder / "summary.json")
    with pytest.raises(DataError, match="summary.json: missing"):
        make_cuts(folder, slices=2)


# ---------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint")
    parser.add_argument("--data")
    parser.add_argument("--counts", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    register_export_options(parser)
    return parser


def test_cli_export_slices(trained, folder, capsys):
    _, _, checkpoint = trained
    args = _parser().parse_args(["--checkpoint", str(checkpoint), "--data", str(folder),
                                 "--slices", "3", "--slice-spacing", "quantile", "--no-progress"])
    assert export_slices(args) == 0
    out = capsys.readouterr().out
    assert "3 cut(s)" in out and "chime_hist_slices" in out
    info = json.loads((folder / "chime_hist_slices.json").read_text())
    assert info["cuts"] == make_cuts(folder, slices=3, spacing="quantile").tolist()
    assert len(loader_rows(folder)) == sum(1 for e in make_events() if e[2] >= T1)
    with pytest.raises(SystemExit):
        _parser().parse_args(["--slices", "2", "--cuts", "20,30"])


def test_refit_every_must_be_positive(trained, folder):
    with pytest.raises(ConfigError, match="--refit-every"):
        export_time_slices(trained[2], folder, cuts=[T1, 30], refit_every=0, progress=False)
    assert slices_mod.slices_column("learn_emb") == "learn_emb_slices"
