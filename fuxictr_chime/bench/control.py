"""Control run for a ``bench table2`` result: "X w/ CHIME" with the compressed column zeroed.

Question it answers: when "X w/ CHIME" differs from "X", is it the information in
``chime_hist``, or merely the different model (an extra input, its projection, hence another
random initialization and optimization path)? The control trains the same ``_CHIME`` (or
``_LEARN``) experiment with the same seed on a copy of the seed's data view whose column is
all zeros for every user, so the model is identical and the feature carries nothing.

Writes ``<run>/control_<variant>_zero.csv`` (resumable: one row per (model, seed)) and
``control_<variant>_zero.md`` comparing plain, the zeroed control and the real variant, with
paired differences over seeds and two-sided paired t-tests (scipy ``ttest_rel``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..errors import DataError
from ..io import write_text_atomic
from .pipeline import COLUMN_OF_VARIANT, command_line, dataset_id_of, run_ranker
from .runs import RunLog, make_data_view
from .table import METRICS

logger = logging.getLogger(__name__)

CONTROL = "zeroed"


def zeroed_view(seed_view: str | os.PathLike, dst: str | os.PathLike, column: str) -> Path:
    """A view of ``seed_view`` whose ``column`` is all zeros (same width, same users)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..io import atomic_path

    view = make_data_view(seed_view, dst)
    path = view / "user_info.parquet"
    table = pq.read_table(path)
    if column not in table.column_names:
        raise DataError(f"{path}: no column '{column}'; export it first (bench table2 does)")
    width = len(table.column(column)[0].as_py())
    offsets = pa.array(np.arange(0, (table.num_rows + 1) * width, width, dtype=np.int32))
    zeros = pa.ListArray.from_arrays(offsets, pa.array(np.zeros(table.num_rows * width, np.float32)))
    table = table.set_column(table.column_names.index(column), column, zeros)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return view


def run_zero_control(run_dir: str | os.PathLike, *, models: Sequence[str] = ("DIN",), variant: str = "CHIME",
                     seeds: Sequence[int] | None = None, zoo: str | os.PathLike | None = None,
                     progress: bool = True) -> str:
    """Train ``<model>_<variant>`` on zeroed views of each seed of a table2 run; return the markdown."""
    from .pipeline import DEFAULT_ZOO

    run_dir = Path(run_dir)
    runs_csv = run_dir / "runs.csv"
    if not runs_csv.exists():
        raise DataError(f"{runs_csv}: missing; run `fuxictr-chime bench table2 --out {run_dir}` first")
    runs = pd.read_csv(runs_csv)
    column = COLUMN_OF_VARIANT[variant]
    seeds = list(seeds) if seeds else sorted(runs.loc[runs["variant"] == variant, "seed"].unique())
    log = RunLog(run_dir / f"control_{variant.lower()}_zero.csv")
    todo = [(m, s) for s in seeds for m in models if not log.done(model=m, variant=CONTROL, seed=s)]
    for model, seed in tqdm(todo, desc="zero control", disable=not progress):
        seed_view = run_dir / f"seed_{seed}" / "data"
        view = zeroed_view(seed_view, run_dir / f"seed_{seed}" / f"data_{column}_zero", column)
        result = run_ranker(model, variant, dataset_id_of(view), view,
                            run_dir / f"seed_{seed}" / f"models_{column}_zero", seed=int(seed),
                            zoo=zoo or DEFAULT_ZOO)
        log.append({"model": model, "variant": CONTROL, "seed": int(seed),
                    **{m: result["test"].get(m) for m, _, _ in METRICS},
                    "expid": result["expid"], "command": command_line()})
    text = format_control(runs, log.frame(), models=list(models), variant=variant)
    write_text_atomic(run_dir / f"control_{variant.lower()}_zero.md", text)
    return text


def format_control(runs: pd.DataFrame, control: pd.DataFrame, *, models: list[str], variant: str) -> str:
    """Means over seeds (%) of plain, zeroed control and the variant; paired differences (pp) with p."""
    from scipy import stats

    lines = [f"### X w/ {variant} with its column zeroed (control) vs plain and vs the real column", "",
             "| model | seeds | " + " | ".join(f"{name} plain / zeroed / real" for _, name, _ in METRICS)
             + " | ΔAUC zeroed−plain (p) | ΔAUC real−zeroed (p) |",
             "|---" * (3 + len(METRICS) + 1) + "|"]
    for model in models:
        plain = runs[(runs["model"] == model) & (runs["variant"] == "plain")].set_index("seed")
        real = runs[(runs["model"] == model) & (runs["variant"] == variant)].set_index("seed")
        zero = control[control["model"] == model].set_index("seed") if len(control) else control
        seeds = plain.index.intersection(real.index).intersection(zero.index)
        if len(seeds) == 0:
            continue
        cells = [" / ".join(f"{100 * float(df.loc[seeds, m].mean()):.2f}" for df in (plain, zero, real))
                 for m, _, _ in METRICS]
        diffs = []
        for a, b in ((zero, plain), (real, zero)):
            x, y = a.loc[seeds, "AUC"].to_numpy(float), b.loc[seeds, "AUC"].to_numpy(float)
            p = float(stats.ttest_rel(x, y).pvalue) if len(seeds) > 1 and np.ptp(x - y) > 0 else float("nan")
            diffs.append(f"{100 * float(np.mean(x - y)):+.2f} (p={p:.3f})")
        lines.append(f"| {model} | {len(seeds)} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    lines += ["", "Test metrics in %, means over seeds; Δ in percentage points, paired by seed, two-sided "
              "paired t-test. 'zeroed': the same model and seed with the column all zeros."]
    return "\n".join(lines) + "\n"
