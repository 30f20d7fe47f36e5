"""benchmarks/eta_lockstep.py without the public code: the weight mapping into our ETA, lockstep
training of models that share batches (each with its own early stopping, the first model's random
draws as if it ran alone), the float-rounding-size perturbation, the history check, the summary."""
from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))  # the script imports bench_train_throughput as a sibling
spec = importlib.util.spec_from_file_location("eta_lockstep", REPO / "benchmarks" / "eta_lockstep.py")
lockstep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lockstep)


class OurNames(torch.nn.Module):
    """The parameter and buffer names of our ETA that the mapping renames, context width 2."""
    context_dim = 2

    def __init__(self):
        super().__init__()
        self.item_table = torch.nn.Module()
        self.item_table.embedding = torch.nn.Linear(1, 3, bias=False)
        self.item_table.register_buffer("item_item_id", torch.arange(4))
        self.esu = torch.nn.Linear(3, 3, bias=False)
        self.dnn = torch.nn.Module()
        self.dnn.mlp = torch.nn.Sequential(torch.nn.Linear(5, 1))
        self.simhash = torch.nn.Module()
        self.simhash.register_buffer("projection", torch.zeros(3, 2))


def test_public_weights_map_to_our_names_and_the_dnn_input_order():
    """LongCTR's first DNN layer reads [context (2), target, short, long]; ours [target, short, long,
    context]: the columns move, the values do not. Our item buffers are data and stay out."""
    ours = OurNames()
    first = torch.arange(5.0).reshape(1, 5)  # columns 0, 1 = context
    public = {"random_rotations": torch.ones(1, 3, 2) * 7, "embedding_layer.weight": torch.full((3, 1), 2.0),
              "long_attention.weight": torch.eye(3), "dnn.mlp.0.weight": first, "dnn.mlp.0.bias": torch.tensor([0.5])}
    state = lockstep.public_state_for_ours(ours, public)
    assert set(state) == {"item_table.embedding.weight", "esu.weight", "dnn.mlp.0.weight", "dnn.mlp.0.bias",
                          "simhash.projection"}
    assert torch.equal(state["dnn.mlp.0.weight"], torch.tensor([[2.0, 3.0, 4.0, 0.0, 1.0]]))
    assert torch.equal(state["simhash.projection"], torch.full((3, 2), 7.0))
    assert torch.equal(state["esu.weight"], torch.eye(3)) and torch.equal(state["item_table.embedding.weight"],
                                                                          torch.full((3, 1), 2.0))
    state["esu.weight"] += 1  # copies: the public state is not touched
    assert torch.equal(public["long_attention.weight"], torch.eye(3))
    assert ours.load_state_dict(state, strict=False).missing_keys == ["item_table.item_item_id"]


def test_perturbation_has_the_requested_relative_size_and_leaves_integers():
    state = {"w": torch.ones(200, 200), "ids": torch.arange(5)}
    out = lockstep.perturbed(state, 1e-3, seed=3)
    assert torch.equal(out["ids"], state["ids"])
    assert lockstep.relative_distance(out, state) == pytest.approx(1e-3, rel=0.05)
    assert torch.equal(out["w"], lockstep.perturbed(state, 1e-3, seed=3)["w"])  # seeded
    assert not torch.equal(out["w"], lockstep.perturbed(state, 1e-3, seed=4)["w"])


def test_relative_distance_known_values():
    ref = {"a": torch.tensor([3.0, 4.0]), "n": torch.tensor([1])}
    assert lockstep.relative_distance({"a": torch.tensor([3.0, 4.0]), "n": torch.tensor([9])}, ref) == 0.0
    assert lockstep.relative_distance({"a": torch.tensor([0.0, 0.0]), "n": torch.tensor([1])}, ref) == 1.0


class Scripted(torch.nn.Module):
    """A model whose valid AUC per epoch is scripted; its weight counts the batches it trained on,
    and it records the batches it saw. Every step draws from torch's global generator."""

    def __init__(self, scores):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.scores, self.seen = iter(scores), []

    def train_step(self, batch):
        torch.rand(1)
        self.seen.append(batch)
        with torch.no_grad():
            self.w += 1
        return torch.tensor(0.5)

    def evaluate(self, loader, metrics):
        torch.rand(3)
        return {"AUC": next(self.scores), "logloss": 0.0}


def shuffled(n=6):
    """A loader that shuffles with torch's global generator at every epoch, like a DataLoader."""
    return lambda: [int(i) for i in torch.randperm(n)]


def test_each_model_stops_on_its_own_and_keeps_its_best_epoch():
    """Patience 2. A: 0.1, 0.3, 0.2, 0.25 -> stops after epoch 4, best 2 (weights after 2 epochs of 6
    batches). B: improving until the cap of 5. Both saw the same batches while both ran."""
    a, b = Scripted([0.1, 0.3, 0.2, 0.25]), Scripted([0.1, 0.2, 0.3, 0.4, 0.5])
    rows = []
    tracks = lockstep.lockstep({"a": a, "b": b}, shuffled(), valid_loader=None, epochs=5, patience=2,
                               log_every=0, on_epoch=rows.extend)
    assert (tracks["a"].epochs_run, tracks["a"].best_epoch, float(a.w.detach())) == (4, 2, 12.0)
    assert (tracks["b"].epochs_run, tracks["b"].best_epoch, float(b.w.detach())) == (5, 5, 30.0)
    assert a.seen == b.seen[:24]
    assert [(r["model"], r["epoch"]) for r in rows][-3:] == [("a", 4), ("b", 4), ("b", 5)]
    assert all(r["distance_to_public"] is None and r["train_loss"] == 0.5 for r in rows)


def test_the_first_model_draws_as_if_it_ran_alone():
    """The batch order (drawn from torch's generator each epoch) and the first model's own draws are
    those of a run of the first model alone, whatever the other models draw in between."""
    torch.manual_seed(0)
    alone = Scripted([0.1, 0.2, 0.3])
    lockstep.lockstep({"first": alone}, shuffled(), None, epochs=3, patience=2, log_every=0)
    torch.manual_seed(0)
    first, other = Scripted([0.1, 0.2, 0.3]), Scripted([0.1, 0.2, 0.3])
    lockstep.lockstep({"first": first, "other": other}, shuffled(), None, epochs=3, patience=2, log_every=0)
    assert first.seen == alone.seen and other.seen == alone.seen
    torch.manual_seed(0)
    second = Scripted([0.1, 0.2, 0.3])
    lockstep.lockstep({"other": Scripted([0.1, 0.2, 0.3]), "second": second}, shuffled(), None, epochs=3,
                      patience=2, log_every=0)
    assert second.seen == alone.seen  # the batches are shared; only the first model's draws count


def test_rows_with_short_histories_are_refused_naming_the_file(tmp_path):
    data = {}
    for split, lengths in (("train", [40, 31]), ("valid", [30, 50]), ("test", [60, 70])):
        path = tmp_path / f"{split}.parquet"
        pq.write_table(pa.table({"seq_len": lengths}), path)
        data[f"{split}_data"] = str(path)
    with pytest.raises(SystemExit, match=r"valid\.parquet: 1 rows have fewer than --short-len 31"):
        lockstep.check_histories(data, 31)
    lockstep.check_histories(data, 30)


def test_arguments_are_checked(tmp_path):
    with pytest.raises(SystemExit):
        lockstep.parse_args(["--data", str(tmp_path)])  # no dataset_config.yaml
    (tmp_path / "dataset_config.yaml").write_text("x: {}\n")
    for bad in (["--perturb", "-1"], ["--epochs", "0"], ["--patience", "0"]):
        with pytest.raises(SystemExit):
            lockstep.parse_args(["--data", str(tmp_path), *bad])
    args = lockstep.parse_args(["--data", str(tmp_path), "--results", str(tmp_path / "r.csv")])
    assert args.curves == str(tmp_path / "r_curves.csv") and args.variants == ["longctr", "recent"]


def _write(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_summary_per_model_with_the_last_row_of_each_seed(tmp_path):
    results, curves = tmp_path / "r.csv", tmp_path / "r_curves.csv"
    final = [{"data": "d", "seed": s, "model": m, "test_auc": auc, "auc_diff": diff, "best_epoch": 3, "epochs_run": 5}
             for s, m, auc, diff in ((1, "public", 0.70, 0.0), (1, "ours", 0.69, -0.01), (2, "public", 0.71, 0.0),
                                     (2, "ours", 0.70, -0.01), (2, "ours", 0.72, 0.01),  # re-run wins
                                     (1, "ours", 0.5, 0.0))]
    final[-1]["data"] = "other"  # another folder's row stays out
    _write(results, final)
    _write(curves, [{"data": "d", "seed": 1, "model": m, "epoch": 1, "valid_auc": v, "distance_to_public": dist}
                    for m, v, dist in (("public", 0.60, ""), ("ours", 0.63, 0.02))])
    text = lockstep.summary_table(results, curves, "d")
    assert "| public | 1, 2 | 0.7050 | - | 3 (5), 3 (5) | - | - |" in text
    assert "| ours | 1, 2 | 0.7050 | +0.0000 (-0.0100, +0.0100) | 3 (5), 3 (5) | 2.00e-02 | 0.0300 |" in text
    with pytest.raises(SystemExit, match="no row for --data"):
        lockstep.summary_table(results, curves, "gone")
