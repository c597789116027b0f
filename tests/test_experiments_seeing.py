"""Section 7's star-richer mixes (experiments.seeing.mix_scores): held-out predictions rescored at
other galaxy fractions, with and without the field prior."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import matthews_corrcoef

from experiments.seeing import DEFAULT_CANDIDATES, SHIFT_MIXES, _shift_table, mix_scores


def _calibrated_field(n_star=400, n_gal=400, seed=0):
    """Labels and probabilities calibrated at a 50 % mix: logistic in a score that separates the
    classes by two Gaussians of unit width (so p = P(galaxy | score) when both classes are equal)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_star, int), np.ones(n_gal, int)]
    s = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)
    return y, 1.0 / (1.0 + np.exp(-2.0 * s))


def test_mix_scores_keys_and_the_plain_mcc_at_each_fraction():
    y, p = _calibrated_field()
    out = mix_scores(y, p, mixes=(0.2, 0.3), draws=5, seed=1)
    assert sorted(out) == ["mcc_mix0.2", "mcc_mix0.2_field_prior", "mcc_mix0.3", "mcc_mix0.3_field_prior",
                           "prior_mix0.2", "prior_mix0.3"]
    assert all(np.isfinite(v) for v in out.values())
    # the subsets are at the asked fraction: redo the first draw of 0.2 by hand
    gal, star = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng([1, 200])
    idx = np.concatenate([rng.choice(gal, 100, replace=False), rng.choice(star, 400, replace=False)])
    assert y[idx].mean() == pytest.approx(0.2)
    one = mix_scores(y, p, mixes=(0.2,), draws=1, seed=1)
    assert one["mcc_mix0.2"] == pytest.approx(matthews_corrcoef(y[idx], (p[idx] >= 0.5).astype(int)))
    # repeatable with a seed, different with another
    assert mix_scores(y, p, mixes=(0.2,), draws=3, seed=1) == mix_scores(y, p, mixes=(0.2,), draws=3, seed=1)
    assert mix_scores(y, p, mixes=(0.2,), draws=3, seed=2) != mix_scores(y, p, mixes=(0.2,), draws=3, seed=1)


def test_mix_scores_estimates_the_fraction_of_each_subset():
    y, p = _calibrated_field(2000, 2000)
    out = mix_scores(y, p, mixes=SHIFT_MIXES, draws=3)
    for mix in SHIFT_MIXES:
        assert out[f"prior_mix{mix:g}"] == pytest.approx(mix, abs=0.04)
    # a field at the calibration mix is left where it is
    half = mix_scores(y, p, mixes=(0.5,), draws=2)
    assert half["prior_mix0.5"] == pytest.approx(0.5, abs=0.03)
    assert half["mcc_mix0.5_field_prior"] == pytest.approx(half["mcc_mix0.5"], abs=0.02)


def test_mix_scores_perfect_predictions_stay_perfect_and_missing_ones_are_left_out():
    y = np.r_[np.zeros(300, int), np.ones(300, int)]
    p = np.where(y == 1, 0.99, 0.01).astype(float)
    p[:10] = np.nan  # abstained (the rule without a measurement)
    out = mix_scores(y, p, mixes=(0.1, 0.3), draws=2)
    assert out["mcc_mix0.1"] == out["mcc_mix0.1_field_prior"] == 1.0
    assert out["mcc_mix0.3"] == out["mcc_mix0.3_field_prior"] == 1.0


def test_mix_scores_fraction_a_field_cannot_reach_is_nan():
    y = np.ones(50, int)  # no star at all
    out = mix_scores(y, np.full(50, 0.8), mixes=(0.3,), draws=2)
    assert np.isnan(out["mcc_mix0.3"]) and np.isnan(out["mcc_mix0.3_field_prior"]) and np.isnan(out["prior_mix0.3"])


def test_shift_table_counts_the_fields_where_the_prior_helps_and_names_the_default():
    rows = []
    for variant in ("forest", "CNN"):
        for k, fid in enumerate(("a", "b", "c")):
            row = {"variant": variant, "held_out": fid}
            for mix in SHIFT_MIXES:
                row[f"mcc_mix{mix:g}"] = 0.9
                row[f"mcc_mix{mix:g}_field_prior"] = 0.95 if k == 0 else 0.85  # helps in one field of three
                row[f"prior_mix{mix:g}"] = mix
            rows.append(row)
    table, note, out = _shift_table(pd.DataFrame(rows), DEFAULT_CANDIDATES["forest"])
    assert len(out) == 2 * len(SHIFT_MIXES)
    assert all(r["helps"] == 1 and r["fields"] == 3 for r in out)
    assert out[0]["mcc_field_prior"] == pytest.approx((0.95 + 0.85 + 0.85) / 3)
    assert "| forest" in table and "1 of 3" in table
    assert note.startswith("For the shipped default (forest)") and "higher in 0 of 3" in note
    # nothing to show: says so rather than an empty table
    empty, note, out = _shift_table(pd.DataFrame({"variant": ["forest"], "held_out": ["a"], "mcc": [0.9]}), "forest")
    assert out == [] and note == "" and "no held-out field" in empty
