"""split_by_time: window boundaries, valid = latest part of train by time, thresholds, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from fuxictr_chime.data.split import (PART_NAMES, assert_no_leakage, resolve_threshold,
                                      split_by_time)
from fuxictr_chime.data.synthetic import synthetic_log
from fuxictr_chime.errors import ConfigError, DataError, LeakageError

from .conftest import TINY_T1, TINY_T2


@pytest.mark.parametrize("t1,t2", [(205, 395), ("q0.3", "q0.8"), ("205", "395")])
def test_every_event_lands_in_its_time_window(t1, t2):
    log = synthetic_log(n_users=30, n_items=20, n_events=600, n_times=50, seed=1)
    times = log.events["timestamp"].to_numpy()
    split = split_by_time(log, t1, t2, valid_ratio=0.2)
    assert split.t1 < split.t_valid < split.t2
    rep, train, valid, test = (times[split.rows(p)] for p in PART_NAMES)
    assert (rep < split.t1).all()
    assert ((train >= split.t1) & (train < split.t_valid)).all()
    assert ((valid >= split.t_valid) & (valid < split.t2)).all()
    assert (test >= split.t2).all()
    assert sum(split.sizes().values()) == len(times)
    # no event lost or doubled: the parts partition the rows
    rows = np.sort(np.concatenate([split.rows(p) for p in PART_NAMES]))
    assert np.array_equal(rows, np.arange(len(times)))


def test_valid_is_the_latest_part_of_the_train_window_by_time():
    log = synthetic_log(n_users=40, n_items=20, n_events=2000, n_times=400, seed=2)
    times = log.events["timestamp"].to_numpy()
    split = split_by_time(log, "q0.4", "q0.9", valid_ratio=0.25)
    train, valid = times[split.train], times[split.valid]
    assert train.max() < valid.min()  # a time cut, not a random row sample
    window = len(train) + len(valid)
    assert abs(len(valid) / window - 0.25) < 0.02  # 400 distinct times: ties are small


def test_tiny_log_split(tiny_log):
    split = split_by_time(tiny_log, TINY_T1, TINY_T2, valid_ratio=0.3)
    # window [3, 7) holds times 3 3 4 4 5 6 6 -> the cut at position floor(0.7 * 7) = 4 is t=5
    assert (split.t1, split.t_valid, split.t2) == (3, 5, 7)
    assert split.sizes() == {"representation": 5, "train": 4, "valid": 3, "test": 4}


def test_quantile_threshold_is_the_sorted_time_at_floor_fn():
    times = np.array([50, 10, 40, 20, 30, 30, 60, 70, 80, 90], dtype=np.int64)
    ordered = np.sort(times)
    assert resolve_threshold("q0.5", times, "t1") == ordered[5]
    assert resolve_threshold("q0.05", times, "t1") == ordered[0]
    assert resolve_threshold("Q0.99", times, "t1") == ordered[9]
    assert resolve_threshold(" 123 ", times, "t1") == 123
    assert resolve_threshold(np.int64(7), times, "t1") == 7
    assert resolve_threshold(8.0, times, "t2") == 8


@pytest.mark.parametrize("value", ["q1.5", "q0", "q1", "qx", "abc", "", 1.5, True, None])
def test_malformed_threshold_names_it(value):
    with pytest.raises(ConfigError, match="t2"):
        resolve_threshold(value, np.arange(5), "t2")


def test_t1_not_before_t2_is_an_error(tiny_log):
    with pytest.raises(DataError, match=r"t1 .* must be smaller than t2"):
        split_by_time(tiny_log, 5, 5)
    with pytest.raises(DataError, match="t1"):
        split_by_time(tiny_log, "q0.8", "q0.2")


@pytest.mark.parametrize("t1,t2,threshold,what", [
    (1, 7, "t1=1", "representation set empty"),     # nothing before the first time 1
    (3, 9, "t2=9", "test set empty"),               # last time is 8
])
def test_empty_part_names_the_threshold(tiny_log, t1, t2, threshold, what):
    with pytest.raises(DataError) as info:
        split_by_time(tiny_log, t1, t2)
    assert threshold in str(info.value) and what in str(info.value)


def test_empty_train_window_names_both_thresholds():
    log = synthetic_log(n_users=5, n_items=5, n_events=50, n_times=5, seed=0)  # times 5, 15, .. 45
    with pytest.raises(DataError, match=r"\[t1, t2\) = \[16, 24\).*train set empty"):
        split_by_time(log, 16, 24)


def test_valid_cut_on_t1_is_an_error(tiny_log):
    # window [3, 4) has only time 3: any valid cut falls on t1 and train would be empty
    with pytest.raises(DataError, match="valid_ratio"):
        split_by_time(tiny_log, 3, 4, valid_ratio=0.5)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 2])
def test_valid_ratio_out_of_range(tiny_log, ratio):
    with pytest.raises(ConfigError, match="valid_ratio"):
        split_by_time(tiny_log, TINY_T1, TINY_T2, valid_ratio=ratio)


def test_leakage_guard():
    assert_no_leakage(np.array([1, 2, 9]), 10, "rep.parquet")  # all before t1: fine
    assert_no_leakage(np.array([], dtype=np.int64), 10, "rep.parquet")
    with pytest.raises(LeakageError, match=r"rep.parquet: 2 representation event\(s\).*t1=10"):
        assert_no_leakage(np.array([1, 10, 12]), 10, "rep.parquet")
    assert issubclass(LeakageError, DataError)
