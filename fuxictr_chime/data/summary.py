"""Dataset statistics of a prepared folder, in the shape of paper Table 1.

Per ranking partition (train / valid / test): users, items, samples, positive share, and the
mean and 90th percentile of the history length (the sample's ``seq_len`` capped at ``max_len``,
i.e. the sequence a ranking model actually sees). For the representation set: users, items,
events, and the mean / p90 of each user's representation-sequence length (both labels).
"""
from __future__ import annotations

import os

import numpy as np

from ..io import write_json_atomic

PARTITIONS = ("representation", "train", "valid", "test")


def sample_stats(user_index: np.ndarray, item_index: np.ndarray, seq_len: np.ndarray,
                 label: np.ndarray, max_len: int) -> dict:
    """Statistics of one ranking partition (arrays of equal length, one entry per sample)."""
    history = np.minimum(np.asarray(seq_len), max_len)
    return {
        "users": int(len(np.unique(user_index))),
        "items": int(len(np.unique(item_index))),
        "samples": int(len(seq_len)),
        "positive_rate": _mean(np.asarray(label, dtype=np.float64)),
        "avg_len": _mean(history),
        "p90_len": _p90(history),
    }


def sequence_stats(lengths: np.ndarray, item_index: np.ndarray) -> dict:
    """Statistics of the representation set: one length per user, ``item_index`` all its events."""
    lengths = np.asarray(lengths)
    return {
        "users": int(len(lengths)),
        "items": int(len(np.unique(item_index))),
        "samples": int(lengths.sum()),
        "positive_rate": None,
        "avg_len": _mean(lengths),
        "p90_len": _p90(lengths),
    }


def _mean(values: np.ndarray) -> float:
    return round(float(np.mean(values)), 4) if len(values) else 0.0


def _p90(values: np.ndarray) -> float:
    return round(float(np.percentile(values, 90)), 4) if len(values) else 0.0


def format_summary(summary: dict) -> str:
    """A small text table (paper Table 1 style) of a summary dict written by the writer."""
    head = (f"{summary.get('dataset_id', '?')}: {summary.get('users', '?')} users, "
            f"{summary.get('items', '?')} items, {summary.get('events', '?')} events; "
            f"t1={summary.get('t1')} t_valid={summary.get('t_valid')} t2={summary.get('t2')} "
            f"max_len={summary.get('max_len')}")
    rows = [("partition", "#users", "#items", "#samples", "pos.rate", "avg.len", "p90.len")]
    for name in PARTITIONS:
        part = summary.get("partitions", {}).get(name)
        if part is None:
            continue
        rate = part.get("positive_rate")
        rows.append((name, str(part["users"]), str(part["items"]), str(part["samples"]),
                     "-" if rate is None else f"{rate:.3f}",
                     f"{part['avg_len']:.1f}", f"{part['p90_len']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [head]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
    lines.append("(representation: #samples = events before t1, lengths per user; "
                 "ranking partitions: history = positives before the sample, capped at max_len)")
    lines.extend(_oracle_lines(summary))
    return "\n".join(lines)


def _oracle_lines(summary: dict) -> list[str]:
    """The synthetic preparer's oracle and reference AUCs (test), if the summary has them."""
    oracle = summary.get("oracle", {}).get("test")
    if not oracle:
        return []
    lines = [f"oracle (true click probabilities), test: AUC {_fmt(oracle['auc'], '.4f')}, "
             f"logloss {_fmt(oracle['logloss'], '.4f')} "
             f"(base rate {_fmt(oracle['base_logloss'], '.4f')})"]
    refs = summary.get("references", {}).get("test", {})
    if refs:
        cells = [f"{name} {_fmt(ref['auc'], '.4f')} ({_fmt(ref['gap_closed'], '.0%')})"
                 for name, ref in refs.items()]
        lines.append("references, test AUC (share of the 0.5-to-oracle gap): " + ", ".join(cells))
    return lines


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def write_summary(summary: dict, path: str | os.PathLike) -> None:
    """Save ``summary`` as JSON (atomically)."""
    write_json_atomic(path, summary)
