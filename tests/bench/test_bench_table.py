"""Table 2 writer: means, bold per model group and stars from a known paired t-test."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fuxictr_chime.bench.table import compute_table, format_markdown, paired_pvalue
from fuxictr_chime.errors import DataError


def _runs():
    rows = []
    plain_auc = [0.700, 0.702, 0.698, 0.701, 0.699]
    for seed, a in enumerate(plain_auc):
        rows.append(dict(model="DIN", variant="plain", seed=seed, AUC=a, gAUC=0.60, logloss=0.40))
        # CHIME: a consistent +0.004 with small noise -> significant
        rows.append(dict(model="DIN", variant="CHIME", seed=seed, AUC=a + 0.004 + 0.0002 * (seed % 2),
                         gAUC=0.61, logloss=0.399))
        # LEARN: noise around zero -> not significant
        rows.append(dict(model="DIN", variant="LEARN", seed=seed, AUC=a + (0.001 if seed % 2 else -0.001),
                         gAUC=0.60, logloss=0.401))
    return pd.DataFrame(rows)


def test_means_bold_and_stars():
    runs = _runs()
    table = compute_table(runs)
    chime = table[("DIN", "CHIME")]
    assert chime["AUC"].mean == pytest.approx(100 * runs[runs.variant == "CHIME"].AUC.mean())
    expected_p = stats.ttest_rel(runs[runs.variant == "CHIME"].AUC.to_numpy(),
                                 runs[runs.variant == "plain"].AUC.to_numpy(), alternative="greater").pvalue
    assert chime["AUC"].pvalue == pytest.approx(expected_p)
    assert chime["AUC"].significant and chime["AUC"].bold
    assert not table[("DIN", "LEARN")]["AUC"].significant
    assert not table[("DIN", "plain")]["AUC"].bold
    # logloss: lower is better -> CHIME bold, LEARN worse -> no star
    assert chime["logloss"].bold and not table[("DIN", "LEARN")]["logloss"].significant
    md = format_markdown(table)
    lines = md.splitlines()
    assert lines[2].startswith("| DIN |")
    assert lines[3].startswith("| DIN w/ LEARN |") and lines[4].startswith("| DIN w/ CHIME |")
    assert f"**{chime['AUC'].mean:.2f}**" + "*" in lines[4]


def test_rows_ordered_plain_learn_chime_per_model():
    runs = pd.concat([_runs(), _runs().assign(model="TWIN")])
    keys = list(compute_table(runs, models=["TWIN", "DIN"]))
    assert keys[:3] == [("TWIN", "plain"), ("TWIN", "LEARN"), ("TWIN", "CHIME")]


def test_single_seed_has_no_star_and_constant_gain():
    assert paired_pvalue(np.array([0.7]), np.array([0.6]), True) is None
    assert paired_pvalue(np.array([0.71, 0.72]), np.array([0.70, 0.71]), True) == 0.0
    assert paired_pvalue(np.array([0.69, 0.70]), np.array([0.70, 0.71]), True) == 1.0


def test_missing_column_is_named():
    with pytest.raises(DataError, match="gAUC"):
        compute_table(_runs().drop(columns=["gAUC"]))


def test_sliced_comparison_is_the_paired_difference_and_ttest_rel():
    from fuxictr_chime.bench.table import sliced_comparison

    chime = {1: (0.710, 0.620, 0.4010), 2: (0.704, 0.615, 0.4050), 3: (0.703, 0.611, 0.4030)}
    sliced = {1: (0.712, 0.621, 0.4000), 2: (0.705, 0.619, 0.4060), 3: (0.709, 0.612, 0.4010),
              4: (0.900, 0.900, 0.1000)}  # seed 4 has no single-snapshot row: not paired, ignored
    rows = [dict(model="DIN", variant=v, seed=s, AUC=a, gAUC=g, logloss=ll)
            for v, table in (("CHIME", chime), ("CHIME_sliced", sliced)) for s, (a, g, ll) in table.items()]
    rows.append(dict(model="DIN", variant="plain", seed=1, AUC=0.5, gAUC=0.5, logloss=0.7))
    text = sliced_comparison(pd.DataFrame(rows))
    line = next(x for x in text.splitlines() if x.startswith("| DIN w/ CHIME (sliced) vs w/ CHIME |"))
    cells = [c.strip() for c in line.strip("|").split("|")][1:]
    for k, cell in enumerate(cells[:3]):
        a = np.array([sliced[s][k] for s in (1, 2, 3)])
        b = np.array([chime[s][k] for s in (1, 2, 3)])
        delta = 100 * np.mean(a - b)  # percentage points
        p = stats.ttest_rel(a, b).pvalue  # two-sided, paired by seed
        assert cell == f"{delta:+.3f} (p={p:.3f})"
    assert cells[3] == "3"
    # by hand for AUC: differences 0.002, 0.001, 0.006 -> +0.300 pp
    assert cells[0].startswith("+0.300 (p=")
    assert sliced_comparison(pd.DataFrame(rows).query("variant != 'CHIME_sliced'")) == ""


def test_variant_table_pairs_every_variant_with_the_first_by_seed():
    """Golden: differences of +1, +2, +3 points over 3 seeds -> mean +2.00, t = 2 / (1 / sqrt(3)) =
    3.464 with 2 degrees of freedom -> two-sided p = 0.074 (scipy.stats.t.sf(3.464, 2) * 2)."""
    from fuxictr_chime.bench.variants import format_variant_table

    rows = []
    for seed, delta in zip((1, 2, 3), (0.01, 0.02, 0.03)):
        base = {"AUC": 0.60 + seed / 100, "gAUC": 0.60, "logloss": 0.65}
        rows.append({"model": "DIN", "variant": "CHIME", "seed": seed, **base})
        rows.append({"model": "DIN", "variant": "w/o X", "seed": seed, "AUC": base["AUC"] + delta,
                     "gAUC": 0.60, "logloss": 0.65 - delta})
    rows.append({"model": "DIN", "variant": "w/o Y", "seed": 1, "AUC": 0.5, "gAUC": 0.5, "logloss": 0.7})
    text = format_variant_table(pd.DataFrame(rows), ["CHIME", "w/o X", "w/o Y"])
    line = next(l for l in text.splitlines() if l.startswith("| w/o X |") and "(p=" in l)
    assert [c.strip() for c in line.split("|")[2:-1]] == ["+2.00 (p=0.07)", "+0.00 (p=nan)", "-2.00 (p=0.07)", "3"]
    assert not any(l.startswith("| w/o Y |") and "(p=" in l for l in text.splitlines())  # one seed: not paired
    one_seed = pd.DataFrame([r for r in rows if r["seed"] == 1])
    assert "paired by seed" not in format_variant_table(one_seed, ["CHIME", "w/o X"])
