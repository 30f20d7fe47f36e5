"""The demo's eval-loss line names the checkpoint it exports and the reference scorers beside it."""
import math

import pandas as pd

from fuxictr_chime.demo import eval_curve_line, timing_line


def _log(rows, refs=None):
    """rows: (step, split, metric); refs: ref_* values written on eval rows (NaN on train rows)."""
    frame = pd.DataFrame(rows, columns=["step", "split", "holistic"])
    for name, value in (refs or {}).items():
        frame[f"ref_{name}"] = [value if split == "eval" else math.nan for _, split, _ in rows]
    return frame


def test_best_is_the_minimum_after_step_0_not_the_last_eval():
    # step 0 is the lowest eval but never a checkpoint; the minimum after it (step 50) is exported,
    # although the last eval (step 100) is higher: the line must not suggest the last one is used
    log = _log([(0, "eval", 6.0), (50, "train", 5.0), (50, "eval", 6.5), (100, "train", 4.9),
                (100, "eval", 6.9)])
    line = eval_curve_line("LEARN", log, "holistic")
    assert line == ("LEARN eval holistic loss: 6.0000 (step 0) -> 6.9000 (step 100), "
                    "best 6.5000 at step 50 (exported)")


def test_references_are_the_logged_scorers_in_order_and_missing_ones_are_left_out():
    # the oracle is NaN (no planted truth on real data): it is not printed
    log = _log([(0, "eval", 6.75), (300, "eval", 6.67)],
               refs={"uniform": 6.7416, "popularity": 6.7333, "cooccurrence": 6.7394, "oracle": math.nan})
    line = eval_curve_line("CHIME", log, "holistic")
    assert line.endswith("; references on the same eval users: uniform 6.7416, popularity 6.7333, "
                         "co-occurrence 6.7394")
    assert "best 6.6700 at step 300 (exported)" in line and "oracle" not in line


def test_a_log_with_only_the_step_0_eval_names_no_best():
    line = eval_curve_line("CHIME", _log([(0, "eval", 6.75)]), "holistic")
    assert line == "CHIME eval holistic loss: 6.7500 (step 0) -> 6.7500 (step 0)"


def test_timing_line_lists_each_step_and_their_sum_in_seconds_or_minutes():
    line = timing_line({"prepare": 12.4, "compressors and rankers": 570.0, "figures": 89.6})
    assert line == "wall time: prepare 12 s, compressors and rankers 9.5 min, figures 90 s; in all 11.2 min"
