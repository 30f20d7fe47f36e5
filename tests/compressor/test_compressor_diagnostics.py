"""Compressor diagnostics: reference scorers, collapse of z, per-level information, coverage, wiring.

Every test has a known answer (closed form or a planted structure); seeds are fixed and the
margins are many times the estimators' spread.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fuxictr_chime.compressor import diagnostics as dg
from fuxictr_chime.compressor.data import RepresentationData
from fuxictr_chime.compressor.export import export, write_user_column
from fuxictr_chime.compressor.losses import holistic_loss, holistic_loss_from_scores
from fuxictr_chime.compressor.train import REFERENCES_FILE, log_columns, train

from .conftest import T1, make_prepared_dir


# ---------------------------------------------------------------------------- loss entry point
def _labels(seed: int = 0, B: int = 3, T: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.where(torch.rand(B, T, generator=g) < 0.6, 1, -1)  # (B, T)
    labels[1, 4:] = 0  # padding
    labels[2, 2:] = 0
    return labels


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_scores_entry_point_equals_holistic_loss_for_z_dot_p(chunk_size):
    g = torch.Generator().manual_seed(1)
    labels = _labels()
    B, T = labels.shape
    z = torch.nn.functional.normalize(torch.randn(B, T, 8, generator=g, dtype=torch.float64), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(B, T, 8, generator=g, dtype=torch.float64), dim=-1)
    z.requires_grad_(True)
    tau = 0.2
    expected = holistic_loss(z, p, labels, tau=tau)
    zf, pf = z.reshape(B * T, 8), p.reshape(B * T, 8)
    got = holistic_loss_from_scores(lambda a, c: zf[a] @ pf[c].T / tau, labels, chunk_size=chunk_size)
    torch.testing.assert_close(got, expected)
    (grad_got,) = torch.autograd.grad(got, z)
    (grad_expected,) = torch.autograd.grad(holistic_loss(z, p, labels, tau=tau), z)
    torch.testing.assert_close(grad_got, grad_expected)
    matrix = (zf @ pf.T / tau).detach()  # (B*T, B*T) logit matrix form
    torch.testing.assert_close(holistic_loss_from_scores(matrix, labels), expected.detach())


def _uniform_closed_form(labels: torch.Tensor) -> float:
    """Constant logits: anchor (u, t) contributes (#positives after t) * log(#candidates), with
    #candidates = all valid items of the batch minus u's own items at positions <= t."""
    valid = labels != 0
    total_valid = int(valid.sum())
    num = den = 0.0
    for u in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if not valid[u, t]:
                continue
            positives_after = int((labels[u, t + 1:] == 1).sum())
            if positives_after:
                candidates = total_valid - int(valid[u, :t + 1].sum())
                num += positives_after * math.log(candidates)
                den += positives_after
    return num / den


def test_uniform_scorer_equals_closed_form():
    labels = _labels(seed=3)
    batch = {"labels": labels, "mask": labels != 0}
    got = float(holistic_loss_from_scores(dg.uniform_scorer()(batch), labels))
    assert got == pytest.approx(_uniform_closed_form(labels), rel=1e-6)


def test_uniform_reference_on_a_prepared_folder_is_the_position_weighted_closed_form(tmp_path):
    folder = make_prepared_dir(tmp_path, n_users=9, users_without_history=0, seed=4)
    data = RepresentationData(folder, max_len=16)
    users = data.users_with_history()
    got = dg.reference_losses(data, users, {"uniform": dg.uniform_scorer()}, batch_size=4, seed=0)["uniform"]
    num = den = 0.0
    for batch in data.batches(users, 4, shuffle=False, seed=0, bucket=True):  # as train.evaluate weights
        labels = batch["labels"] * batch["mask"]
        n = float(batch["mask"].sum())
        has_pair = any((labels[u, :-1] != 0).any() and (labels[u, 1:] == 1).any() for u in range(len(labels)))
        num += n * (_uniform_closed_form(labels) if has_pair else 0.0)
        den += n
    assert got == pytest.approx(num / den, rel=1e-6)


# ---------------------------------------------------------------------------- planted logs
def _write_log(folder, sequences: dict[int, list[tuple[int, int]]]) -> None:
    """Replace representation.parquet: user -> [(item, label)] at times 0, 1, ... (< t1)."""
    users = sorted(sequences)
    table = pa.table({
        "user_index": pa.array(users, pa.int64()),
        "item_seq": pa.array([[i for i, _ in sequences[u]] for u in users], pa.list_(pa.int64())),
        "label_seq": pa.array([[y for _, y in sequences[u]] for u in users], pa.list_(pa.int8())),
        "time_seq": pa.array([list(range(len(sequences[u]))) for u in users], pa.list_(pa.int64())),
    })
    assert max(len(s) for s in sequences.values()) < T1
    pq.write_table(table, folder / "representation.parquet")


def _item_categories(folder) -> np.ndarray:
    return pq.read_table(folder / "item_info.parquet").column("cate_id").to_numpy()


def _references(folder, n_eval: int = 6, oracle=None):
    data = RepresentationData(folder, max_len=64)
    users = data.users_with_history()
    return dg.run_references(data, users[n_eval:], users[:n_eval], batch_size=3, seed=0, oracle=oracle)["unscaled"]


def test_popularity_beats_uniform_when_one_item_takes_all_positives(tmp_path):
    folder = make_prepared_dir(tmp_path, n_users=12, n_items=20, users_without_history=0, seed=5)
    rng = np.random.default_rng(0)
    sequences = {u: [(1, 1) if rng.random() < 0.5 else (int(rng.integers(2, 21)), -1) for _ in range(20)]
                 for u in range(1, 13)}
    _write_log(folder, sequences)
    losses = _references(folder)
    assert losses["popularity"] < losses["uniform"] - 0.5


def test_cooccurrence_beats_popularity_when_each_user_clicks_one_category(tmp_path):
    folder = make_prepared_dir(tmp_path, n_users=15, n_items=40, users_without_history=0, seed=6,
                               categorical={"cate_id": 5})
    cate = _item_categories(folder)
    rng = np.random.default_rng(1)
    sequences = {}
    for u in range(1, 16):
        mine = np.flatnonzero(cate == 1 + u % 5)
        mine = mine[mine > 0]
        others = np.flatnonzero((cate != 1 + u % 5) & (np.arange(cate.size) > 0))
        sequences[u] = [(int(rng.choice(mine)), 1) if rng.random() < 0.5 else (int(rng.choice(others)), -1)
                        for _ in range(24)]
    _write_log(folder, sequences)
    truth = np.zeros((16, 6), dtype=np.float32)  # the planted interest: logit 5 on the user's category
    truth[np.arange(1, 16), 1 + np.arange(1, 16) % 5] = 5.0
    losses = _references(folder, oracle=truth)
    assert losses["cooccurrence"] < losses["popularity"] - 0.3
    assert losses["popularity_cooccurrence"] < losses["uniform"]
    assert losses["oracle"] < losses["cooccurrence"]  # it knows the category from the first position


def test_scale_zero_is_uniform_and_the_fitted_scale_is_never_worse_on_the_fit_users(tmp_path):
    folder = make_prepared_dir(tmp_path, n_users=12, n_items=20, users_without_history=0, seed=5)
    data = RepresentationData(folder, max_len=16)
    users = data.users_with_history()
    counts = dg.item_positive_counts(data, users)
    scorers = {"uniform": dg.uniform_scorer(), "popularity": dg.popularity_scorer(counts)}
    grid = dg.reference_loss_grid(data, users, scorers, batch_size=3, seed=0, scales=(0.0, 1.0))
    assert grid["popularity"][0] == pytest.approx(grid["uniform"][0])  # scale 0: every logit equal
    refs = dg.run_references(data, users, users, batch_size=3, seed=0, fit_users=len(users))
    assert refs["scales"]["popularity"] in (0.0, *dg.SCALE_GRID)
    for name in ("popularity", "cooccurrence", "popularity_cooccurrence"):  # fit users = eval users here
        assert refs["losses"][name] <= min(refs["unscaled"][name], refs["losses"]["uniform"]) + 1e-9


def test_oracle_scorer_matrix_and_callable_agree(tmp_path):
    folder = make_prepared_dir(tmp_path, n_users=8, users_without_history=0, seed=7)
    data = RepresentationData(folder, max_len=16)
    users = data.users_with_history()
    weights = np.random.default_rng(2).normal(size=(9, 6)).astype(np.float32)  # (U+1, V) logit per category
    cate = torch.as_tensor(_item_categories(folder).copy())

    def oracle(user, item):
        return torch.as_tensor(weights)[user][:, cate[item]]  # (C, Nv)

    scorers = {"matrix": dg.oracle_scorer(weights), "callable": dg.oracle_scorer(oracle)}
    losses = dg.reference_losses(data, users, scorers, batch_size=3, seed=0)
    assert losses["matrix"] == pytest.approx(losses["callable"], rel=1e-6)


def test_oracle_from_truth_builds_the_affinity_matrix(tmp_path):
    truth = {"knobs": {"long_affinity": 2.0, "n_favourites": 2},
             "users": {"user_index": [1, 2], "favourite_cate_ids": [[3, 1], [2, 0]],
                       "favourite_weights": [[0.75, 0.25], [0.5, 0.5]]}}
    (tmp_path / "planted_truth.json").write_text(json.dumps(truth))
    matrix = dg.oracle_from_truth(tmp_path / "planted_truth.json")
    expected = np.zeros((3, 4), dtype=np.float32)
    expected[1, 3], expected[1, 1], expected[2, 2] = 3.0, 1.0, 2.0  # 2.0 * 2 * w; cate 0 = no item
    np.testing.assert_allclose(matrix, expected)


# ---------------------------------------------------------------------------- collapse of z
@pytest.mark.parametrize("k", [1, 3, 5])
def test_effective_rank_of_k_orthogonal_equal_variance_directions_is_k(k):
    rng = np.random.default_rng(k)
    basis = np.linalg.qr(rng.normal(size=(16, 16)))[0][:k]  # (k, 16) orthonormal
    x = np.concatenate([basis, -basis]) * rng.uniform(0.5, 3.0, size=(2 * k, 1))  # norms do not matter
    stats = dg.collapse_stats(x)
    assert stats["effective_rank"] == pytest.approx(k, rel=1e-9)
    assert stats["pc1_share"] == pytest.approx(1.0 / k, rel=1e-9)


def test_rank_one_cloud_has_effective_rank_one_and_identical_rows_cosine_one():
    rng = np.random.default_rng(0)
    v = rng.normal(size=8)
    cloud = rng.normal(size=(50, 1)) * v  # (50, 8) on one line, both signs
    assert dg.effective_rank(cloud) == pytest.approx(1.0, rel=1e-9)
    assert dg.first_pc_share(cloud) == pytest.approx(1.0, rel=1e-9)
    same = np.tile(v, (10, 1))
    assert dg.mean_pairwise_cosine(same) == pytest.approx(1.0)
    assert dg.collapse_stats(same)["effective_rank"] == 0.0  # no variance at all
    iso = rng.normal(size=(4000, 8))
    assert abs(dg.mean_pairwise_cosine(iso)) < 0.01 and dg.effective_rank(iso) > 7.5
    zeros_skipped = dg.collapse_stats(np.concatenate([cloud, np.zeros((5, 8))]))
    assert zeros_skipped["vectors"] == 50


# ---------------------------------------------------------------------------- quantizer levels
def test_level_information_separates_a_user_code_from_noise():
    rng = np.random.default_rng(0)
    n_users, per_user = 16, 250
    users = np.repeat(np.arange(n_users), per_user)  # (N,) users 0..15: u % 4 and u // 4 independent
    level1 = users % 4  # a deterministic function of the user: 4 equally likely codes
    level2 = rng.integers(0, 4, users.size)  # noise, independent of the user
    level3 = users // 4  # new user information given level 1 (and the noise of level 2)
    info = dg.code_user_information(np.stack([level1, level2, level3], 1), users, shuffles=5, seed=0)
    assert info[0]["mi"] == pytest.approx(math.log(4), abs=1e-9)
    assert info[0]["mi_control"] < 0.02
    assert abs(info[1]["mi"] - info[1]["mi_control"]) < 0.01  # noise: information = its control
    assert abs(info[1]["cmi"] - info[1]["cmi_control"]) < 0.02
    # plug-in I(c3; u | c1, c2) = H(c3 | c1, c2): log 4 up to the sampling noise of 64 cells; its
    # control is the plug-in bias of 16 conditioning cells x 4 codes x 16 users (about 0.1 nats)
    assert info[2]["cmi"] == pytest.approx(math.log(4), abs=0.02)
    assert info[2]["cmi"] > info[2]["cmi_control"] + 1.0
    redundant = dg.code_user_information(np.stack([level1, level1], 1), users)[1]
    assert redundant["mi"] == pytest.approx(math.log(4)) and abs(redundant["cmi"]) < 1e-9  # nothing new
    # the conditional control shuffles users only among positions with the same earlier codes
    shuffled = dg._permute_within(users, level1, np.random.default_rng(0))
    assert np.array_equal(shuffled % 4, level1) and not np.array_equal(shuffled, users)
    assert sorted(shuffled.tolist()) == sorted(users.tolist())


def test_level_variance_shares_are_cumulative_reconstruction():
    rng = np.random.default_rng(0)
    c1, c2 = rng.normal(size=(200, 4)), 0.1 * rng.normal(size=(200, 4))
    b = c1 + c2
    shares = dg.level_variance_shares(b, np.stack([c1, c2], 1))
    assert shares[1] == pytest.approx(1.0)
    var = lambda x: float(x.var(0).sum())  # noqa: E731
    assert shares[0] == pytest.approx(1 - var(c2) / var(b))


# ---------------------------------------------------------------------------- coverage
def test_coverage_equals_the_hand_count(tmp_path):
    folder = make_prepared_dir(tmp_path, n_users=6, seed=8)
    for split, users in {"train": [1, 1, 2, 5], "valid": [3], "test": [2, 6, 1]}.items():
        pq.write_table(pa.table({"user_index": pa.array(users, pa.int64()),
                                 "label": pa.array([1.0] * len(users), pa.float32())}), folder / f"{split}.parquet")
    features = np.zeros((7, 4), dtype=np.float32)
    features[1, 0], features[3, 2] = 0.5, 1.0  # users 1 and 3 have a non-zero column
    expected = {"train": (4, 2), "valid": (1, 1), "test": (3, 1)}
    write_user_column(folder / "user_info.parquet", "hist", features)
    for cov in (dg.coverage(folder, features), dg.coverage(folder, column="hist")):
        assert {k: (v["rows"], v["covered"]) for k, v in cov.items()} == expected
        assert cov["train"]["share"] == 0.5


# ---------------------------------------------------------------------------- wiring
def test_train_logs_references_and_collapse_and_export_writes_diagnostics(tiny_config):
    result = train(tiny_config, progress=False)
    refs = json.loads((result.output_dir / REFERENCES_FILE).read_text())
    assert set(refs["losses"]) == {"uniform", "popularity", "cooccurrence", "popularity_cooccurrence"}
    assert refs["attribute"] == "cate_id" and set(refs["scales"]) == set(refs["losses"]) - {"uniform"}
    with open(result.log_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == log_columns(3)
    for row in rows:
        if row["split"] == "eval":
            assert float(row["ref_uniform"]) == pytest.approx(refs["losses"]["uniform"])
            assert row["ref_oracle"] == ""
            assert 0.0 <= float(row["eff_rank"]) <= 16 and 0.0 < float(row["pc1_share"]) <= 1.0
        else:
            assert row["ref_uniform"] == "" and row["eff_rank"] == ""
    data_dir = Path(tiny_config.data_dir)
    stats = export(result.last_checkpoint, data_dir, progress=False)
    block = stats["diagnostics"]
    saved = json.loads((data_dir / "chime_hist_diagnostics.json").read_text())
    assert saved["column"] == "chime_hist" and saved["z"] == pytest.approx(block["z"])
    assert block["eval_users"] == 1 and block["z"]["vectors"] == block["positions"] > 0
    assert [e["level"] for e in block["levels"]] == [1, 2, 3]
    assert all({"mi", "mi_control", "cmi", "cmi_control", "variance_share"} <= set(e) for e in block["levels"])
    data = RepresentationData(data_dir, max_len=16)
    with_history = set(data.users_with_history())
    for split in ("train", "valid", "test"):
        users = pq.read_table(data_dir / f"{split}.parquet").column("user_index").to_numpy()
        assert block["coverage"][split]["covered"] == sum(int(u) in with_history for u in users)


def test_eval_loss_figure_draws_the_reference_lines(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from fuxictr_chime.bench.figures import draw_reference_lines

    log = pd.DataFrame({"step": [0, 0, 2], "split": ["eval", "train", "eval"], "holistic": [7.0, 6.9, 6.8],
                        "ref_uniform": [6.96, None, 6.96], "ref_popularity": [6.9, None, 6.9],
                        "ref_oracle": [None, None, None]})
    fig, ax = plt.subplots()
    assert draw_reference_lines(ax, [log], "holistic") == ["ref_uniform", "ref_popularity"]
    assert sorted(line.get_ydata()[0] for line in ax.get_lines()) == [6.9, 6.96]
    assert draw_reference_lines(ax, [log.drop(columns=["ref_uniform", "ref_popularity"])], "holistic") == []
    assert draw_reference_lines(ax, [log], "dense_all_action") == []
    plt.close(fig)
