"""Time split of a behavior log (CHIME spec section 2, paper section 5.1).

Two thresholds t1 < t2 split the log:

* **representation** set: events with ``timestamp < t1`` (the only data a compressor sees);
* **train**: events with ``t1 <= timestamp < t2``, except its latest part by time, held out as
* **valid**: events with ``t_valid <= timestamp < t2`` (``t1 < t_valid < t2`` is a time cut, chosen
  so that about ``valid_ratio`` of the window's events fall after it; not a random row sample);
* **test**: events with ``timestamp >= t2``.

Thresholds are absolute timestamps (ints, or strings of digits) or quantiles of the log's event
times written ``"qF"`` with ``0 < F < 1`` (e.g. ``"q0.6"``): the timestamp at position
``floor(F * n)`` of the n sorted event times, so that a share F of the events lie before it
when no times are tied.

The leakage rule of the spec (no compressor input at or after t1) is enforced by
:func:`assert_no_leakage`, which the writer calls before writing ``representation.parquet``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError, LeakageError
from .log import BehaviorLog

logger = logging.getLogger(__name__)

REPRESENTATION, TRAIN, VALID, TEST = 0, 1, 2, 3
PART_NAMES = ("representation", "train", "valid", "test")
Threshold = int | str


@dataclass(frozen=True)
class Split:
    """Which part of the split each event of a log belongs to.

    Attributes:
        t1: start of the ranking window (absolute timestamp).
        t2: start of the test window.
        t_valid: start of the valid window, ``t1 < t_valid < t2``.
        parts: int8 array, one code per row of ``log.events`` (same order):
            0 representation, 1 train, 2 valid, 3 test.
    """

    t1: int
    t2: int
    t_valid: int
    parts: np.ndarray

    def rows(self, part: str) -> np.ndarray:
        """Row positions (into ``log.events``) of ``part``, one of :data:`PART_NAMES`."""
        return np.flatnonzero(self.parts == PART_NAMES.index(part))

    @property
    def representation(self) -> np.ndarray:
        return self.rows("representation")

    @property
    def train(self) -> np.ndarray:
        return self.rows("train")

    @property
    def valid(self) -> np.ndarray:
        return self.rows("valid")

    @property
    def test(self) -> np.ndarray:
        return self.rows("test")

    def sizes(self) -> dict[str, int]:
        counts = np.bincount(self.parts, minlength=len(PART_NAMES))
        return {name: int(c) for name, c in zip(PART_NAMES, counts)}


def resolve_threshold(value: Threshold, times: np.ndarray, name: str) -> int:
    """An absolute timestamp for ``value``: an int, a string of digits, or ``"qF"`` (0 < F < 1).

    ``"qF"`` is the timestamp at position ``floor(F * n)`` of the ``n`` sorted ``times``.
    Raises ConfigError naming ``name`` (``"t1"`` / ``"t2"``) on any other form.
    """
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name}: expected a timestamp or a quantile 'qF', got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not float(value).is_integer():
            raise ConfigError(f"{name}: timestamp {value!r} is not an integer "
                              f"(write quantiles as 'q{value}')")
        return int(value)
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a timestamp or a quantile 'qF', got {value!r}")
    text = value.strip()
    if text.lower().startswith("q"):
        return _quantile_time(text, times, name)
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is neither a timestamp (integer) nor a quantile "
                          f"of the log's time written 'qF' with 0 < F < 1, e.g. 'q0.6'") from None


def _quantile_time(text: str, times: np.ndarray, name: str) -> int:
    try:
        fraction = float(text[1:])
    except ValueError:
        fraction = math.nan
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"{name}: quantile {text!r} must be 'qF' with 0 < F < 1, e.g. 'q0.6'")
    if len(times) == 0:
        raise DataError(f"{name}: quantile {text!r} of an empty log")
    ordered = np.sort(np.asarray(times))
    position = min(len(ordered) - 1, int(math.floor(fraction * len(ordered))))
    return int(ordered[position])


def split_by_time(log: BehaviorLog, t1: Threshold, t2: Threshold,
                  valid_ratio: float = 0.1) -> Split:
    """Split ``log.events`` by time into representation / train / valid / test.

    Args:
        log: the behavior log (``timestamp`` int64).
        t1: start of the ranking window: timestamp or ``"qF"`` quantile string.
        t2: start of the test window, same forms; must be greater than t1.
        valid_ratio: share of the [t1, t2) events held out as valid, taken from the end of the
            window by a time cut (ties at the cut go to valid). 0 < valid_ratio < 1; default 0.1.

    Raises:
        ConfigError: malformed threshold or valid_ratio.
        DataError: t1 >= t2, or a part of the split would be empty (the message names the
            threshold to move).
    """
    if not 0.0 < float(valid_ratio) < 1.0:
        raise ConfigError(f"valid_ratio must lie in (0, 1), got {valid_ratio!r}")
    times = log.events["timestamp"].to_numpy()
    t1_abs = resolve_threshold(t1, times, "t1")
    t2_abs = resolve_threshold(t2, times, "t2")
    if t1_abs >= t2_abs:
        raise DataError(f"{log.name}: t1 ({t1!r} -> {t1_abs}) must be smaller than "
                        f"t2 ({t2!r} -> {t2_abs})")
    _check_window(times < t1_abs, f"{log.name}: t1={t1_abs} ({t1!r}): no event before t1 "
                                  f"(representation set empty); increase t1")
    in_window = (times >= t1_abs) & (times < t2_abs)
    _check_window(in_window, f"{log.name}: no event in [t1, t2) = [{t1_abs}, {t2_abs}) "
                             f"(train set empty); move t1 ({t1!r}) or t2 ({t2!r})")
    _check_window(times >= t2_abs, f"{log.name}: t2={t2_abs} ({t2!r}): no event at or after t2 "
                                   f"(test set empty); decrease t2")
    t_valid = _valid_cut(times[in_window], valid_ratio, t1_abs, log.name)
    parts = np.full(len(times), REPRESENTATION, dtype=np.int8)
    parts[in_window] = TRAIN
    parts[in_window & (times >= t_valid)] = VALID
    parts[times >= t2_abs] = TEST
    split = Split(t1=t1_abs, t2=t2_abs, t_valid=t_valid, parts=parts)
    logger.info("%s: t1=%d t_valid=%d t2=%d, events per part %s",
                log.name, t1_abs, t_valid, t2_abs, split.sizes())
    return split


def _check_window(mask: np.ndarray, message: str) -> None:
    if not mask.any():
        raise DataError(message)


def _valid_cut(window_times: np.ndarray, valid_ratio: float, t1: int, name: str) -> int:
    """The time cut of [t1, t2) after which about ``valid_ratio`` of its events lie."""
    ordered = np.sort(window_times)
    position = min(len(ordered) - 1, int(math.floor((1.0 - valid_ratio) * len(ordered))))
    t_valid = int(ordered[position])
    if t_valid <= t1:
        raise DataError(f"{name}: valid_ratio={valid_ratio}: the valid cut falls on t1={t1} "
                        f"(too many events share that timestamp), so train would be empty; "
                        f"lower valid_ratio or move t1/t2")
    return t_valid


def assert_no_leakage(representation_times: np.ndarray, t1: int, source: str) -> None:
    """Raise :class:`LeakageError` if any compressor-input time is at or after ``t1``.

    Spec section 2: the compressor may only see behaviors strictly before t1.
    """
    times = np.asarray(representation_times)
    late = times >= t1
    if late.any():
        raise LeakageError(f"{source}: {int(late.sum())} representation event(s) at or after "
                           f"t1={t1} (latest {int(times.max())}); the compressor input must end "
                           f"strictly before t1")
