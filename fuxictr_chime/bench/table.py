"""Paper Table 2 layout from a ``runs.csv`` of (model, variant, seed) results.

Rows are ``DIN``, ``DIN w/ LEARN``, ``DIN w/ CHIME``, ``SimSoft``, ... ; columns AUC, gAUC and
LogLoss in percent, averaged over seeds. Within each model's group of rows the best value of
a column is in bold (highest AUC/gAUC, lowest LogLoss), as in the paper. A ``*`` marks a
variant whose improvement over the plain model is significant by a one-sided paired t-test
over seeds (paired by seed) at the 5% level. The non-learned controls "X w/ HIST" / "X w/ STATS"
(``bench table2 --variants ...,HIST,STATS``) are rows of the same group, after the paper's rows,
bold and ``*`` as any other row. :func:`format_side_by_side` puts two such tables (all users |
users with history) next to each other, column by column.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import DataError

METRICS = (("AUC", "AUC", True), ("gAUC", "gAUC", True), ("logloss", "LogLoss", False))
VARIANT_ORDER = ("plain", "LEARN", "CHIME", "CHIME_sliced", "HIST", "STATS")
SLICED = "CHIME_sliced"  # issue 7: w/ CHIME from time-sliced snapshots (``bench table2 --slices N``)
REQUIRED = ("model", "variant", "seed") + tuple(m for m, _, _ in METRICS)


@dataclass(frozen=True)
class Cell:
    mean: float          # in percent
    n: int               # number of seeds
    pvalue: float | None  # paired one-sided t-test vs the plain model; None for plain rows
    bold: bool = False

    @property
    def significant(self) -> bool:
        return self.pvalue is not None and self.pvalue < 0.05


def row_label(model: str, variant: str) -> str:
    if variant == SLICED:
        return f"{model} w/ CHIME (sliced)"
    return model if variant == "plain" else f"{model} w/ {variant}"


def sliced_comparison(runs: pd.DataFrame, models: list[str] | None = None) -> str:
    """Markdown: w/ CHIME (sliced) minus w/ CHIME per model and metric, paired by seed, with the
    two-sided paired t-test p-value (scipy ``ttest_rel``); empty string without sliced rows."""
    from scipy import stats

    if SLICED not in set(runs.get("variant", [])):
        return ""
    models = models or list(dict.fromkeys(runs["model"]))
    lines = ["| | " + " | ".join(f"Δ{name} (pp)" for _, name, _ in METRICS) + " | seeds |",
             "|---" * (len(METRICS) + 2) + "|"]
    for model in models:
        group = runs[runs["model"] == model]
        sliced = group[group["variant"] == SLICED].set_index("seed")
        plain = group[group["variant"] == "CHIME"].set_index("seed")
        seeds = sliced.index.intersection(plain.index)
        if len(seeds) == 0:
            continue
        parts = []
        for metric, _, _ in METRICS:
            a = sliced.loc[seeds, metric].to_numpy(float)
            b = plain.loc[seeds, metric].to_numpy(float)
            diff = 100 * float(np.mean(a - b))
            p = float(stats.ttest_rel(a, b).pvalue) if len(seeds) > 1 and not np.allclose(a - b, (a - b)[0]) \
                else float("nan")
            parts.append(f"{diff:+.3f} (p={p:.3f})")
        lines.append(f"| {model} w/ CHIME (sliced) vs w/ CHIME | " + " | ".join(parts) + f" | {len(seeds)} |")
    lines += ["", "Δ: mean over seeds of (sliced − single snapshot), in percentage points; p: two-sided "
              "paired t-test over seeds."]
    return "\n".join(lines) + "\n"


def paired_pvalue(variant: np.ndarray, plain: np.ndarray, higher_is_better: bool) -> float | None:
    """One-sided paired t-test that ``variant`` improves on ``plain`` (None if < 2 pairs)."""
    from scipy import stats

    if len(variant) < 2:
        return None
    diff = variant - plain
    if np.allclose(diff, diff[0]):  # zero variance: t undefined; decide by the sign alone
        improved = diff[0] > 0 if higher_is_better else diff[0] < 0
        return 0.0 if improved and diff[0] != 0 else 1.0
    alternative = "greater" if higher_is_better else "less"
    return float(stats.ttest_rel(variant, plain, alternative=alternative).pvalue)


def compute_table(runs: pd.DataFrame, models: list[str] | None = None) -> dict[tuple[str, str], dict[str, Cell]]:
    """Means, significance and bold flags per (model, variant) row and metric column."""
    missing = [c for c in REQUIRED if c not in runs.columns]
    if missing:
        raise DataError(f"runs.csv lacks column(s) {missing}")
    models = models or list(dict.fromkeys(runs["model"]))
    table: dict[tuple[str, str], dict[str, Cell]] = {}
    for model in models:
        group = runs[runs["model"] == model]
        plain = group[group["variant"] == "plain"].set_index("seed")
        rows = {}
        for variant in VARIANT_ORDER:
            sub = group[group["variant"] == variant].set_index("seed")
            if sub.empty:
                continue
            cells = {}
            for metric, _, higher in METRICS:
                pvalue = None
                if variant != "plain" and not plain.empty:
                    seeds = sub.index.intersection(plain.index)
                    pvalue = paired_pvalue(sub.loc[seeds, metric].to_numpy(float),
                                           plain.loc[seeds, metric].to_numpy(float), higher)
                cells[metric] = Cell(100 * float(sub[metric].mean()), len(sub), pvalue)
            rows[variant] = cells
        for metric, _, higher in METRICS:  # bold the best of the model's group
            values = {v: c[metric].mean for v, c in rows.items()}
            if values:
                best = max(values.values()) if higher else min(values.values())
                for v, c in rows.items():
                    if np.isclose(c[metric].mean, best, rtol=0, atol=5e-5):
                        c[metric] = Cell(c[metric].mean, c[metric].n, c[metric].pvalue, True)
        for variant, cells in rows.items():
            table[(model, variant)] = cells
    return table


def format_markdown(table: dict[tuple[str, str], dict[str, Cell]], title: str = "", note: str = "") -> str:
    """Render :func:`compute_table` output as a markdown table (values in %, 2 decimals); ``note``:
    a paragraph between the title and the table."""
    lines = []
    if title:
        lines += [f"### {title}", ""]
    if note:
        lines += [note, ""]
    header = "| | " + " | ".join(f"{name} ({'↑' if hib else '↓'})" for _, name, hib in METRICS) + " | seeds |"
    lines += [header, "|---" * (len(METRICS) + 2) + "|"]
    for (model, variant), cells in table.items():
        parts = [_cell_text(cells[metric]) for metric, _, _ in METRICS]
        n = cells[METRICS[0][0]].n
        lines.append(f"| {row_label(model, variant)} | " + " | ".join(parts) + f" | {n} |")
    lines += ["", FOOTNOTE]
    return "\n".join(lines) + "\n"


FOOTNOTE = ("Means over seeds in %. Bold: best of the model's group. "
            "`*`: improvement over the plain model significant by a one-sided paired t-test "
            "over seeds at the 5% level.")


def format_side_by_side(tables: dict[str, dict[tuple[str, str], dict[str, Cell]]], title: str = "",
                        note: str = "") -> str:
    """Several :func:`compute_table` outputs (e.g. ``{"all users": ..., "users with history": ...}``)
    as one markdown table: per metric one column per table, rows as in the first table; bold and
    ``*`` computed within each table. A row missing from a table shows "—"."""
    names = list(tables)
    lines = [f"### {title}", ""] if title else []
    if note:
        lines += [note, ""]
    header = [f"{label} ({'↑' if hib else '↓'}) {name}" for _, label, hib in METRICS for name in names]
    lines += ["| | " + " | ".join(header) + " | seeds |", "|---" * (len(header) + 2) + "|"]
    first = tables[names[0]] if names else {}
    for key, cells in first.items():
        parts = [_cell_text(tables[name][key][metric]) if key in tables[name] else "—"
                 for metric, _, _ in METRICS for name in names]
        lines.append(f"| {row_label(*key)} | " + " | ".join(parts) + f" | {cells[METRICS[0][0]].n} |")
    lines += ["", FOOTNOTE + " Bold and `*` within each column's user subset."]
    return "\n".join(lines) + "\n"


def _cell_text(c: Cell) -> str:
    text = f"{c.mean:.2f}"
    if c.bold:
        text = f"**{text}**"
    return text + "*" if c.significant else text
