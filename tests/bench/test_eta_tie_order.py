"""benchmarks/eta_tie_order.py: the shares it reports, on distances with a known answer."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))  # the script imports bench_train_throughput as a sibling
spec = importlib.util.spec_from_file_location("eta_tie_order", REPO / "benchmarks" / "eta_tie_order.py")
ties = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ties)


def test_all_tied_rows_keep_the_most_recent_under_the_default():
    """Every behaviour at distance 2, 8 valid of 10 (left-padded), top-3, short window 2: the default
    keeps ages 0, 1, 2 (two of three in the window, mean age 1); every slot is at the cut-off."""
    distance = torch.full((2, 10), 2)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, 2:] = True
    stats = ties.tie_order_stats(distance, mask, topk=3, short_len=2, fill=5)
    recent = stats["recent"]
    assert recent["in_short_window"] == pytest.approx(2 / 3) and recent["mean_age"] == pytest.approx(1.0)
    assert recent["decided_by_ties"] == 1.0 and recent["rows"] == 2
    assert stats["longctr"]["decided_by_ties"] == 1.0
    assert 0.0 <= stats["longctr"]["overlap"] <= 1.0


def test_distinct_distances_leave_nothing_to_the_tie_order():
    """Distances 9, 8, ..., 0 from the oldest to the most recent: both orders keep ages 0-3 (the 4
    nearest); only the cut-off slot itself is at the cut-off distance."""
    distance = torch.arange(9, -1, -1).expand(3, 10)
    mask = torch.ones(3, 10, dtype=torch.bool)
    stats = ties.tie_order_stats(distance, mask, topk=4, short_len=2, fill=11)
    for order in ("recent", "longctr"):
        assert stats[order]["overlap"] == 1.0 and stats[order]["mean_age"] == pytest.approx(1.5)
        assert stats[order]["in_short_window"] == pytest.approx(0.5)
        assert stats[order]["decided_by_ties"] == pytest.approx(0.25)


def test_rows_with_at_most_topk_behaviours_are_left_out_and_batches_weigh_by_rows():
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 3:] = True  # 3 valid = topk: keeps all under both orders, not measured
    stats = ties.tie_order_stats(torch.zeros(2, 6, dtype=torch.long), mask, topk=3, short_len=1, fill=4)
    assert stats["recent"]["rows"] == 0
    parts = [{"mean_age": 1.0, "rows": 1}, {"mean_age": 4.0, "rows": 3}, {"mean_age": 9.0, "rows": 0}]
    assert ties._weighted(parts) == {"mean_age": 3.25, "rows": 4}
    with pytest.raises(SystemExit, match="more valid behaviours than --topk"):
        ties._weighted([{"mean_age": 1.0, "rows": 0}])


def test_arguments_are_checked(tmp_path):
    with pytest.raises(SystemExit):
        ties.parse_args(["--data", str(tmp_path)])  # no dataset_config.yaml
    (tmp_path / "dataset_config.yaml").write_text("x: {}\n")
    with pytest.raises(SystemExit):
        ties.parse_args(["--data", str(tmp_path), "--batches", "0"])
    assert ties.parse_args(["--data", str(tmp_path)]).epochs == 3
