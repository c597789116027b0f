"""Tests for stargal.metrics."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import matthews_corrcoef, roc_auc_score

from stargal.metrics import classification_metrics, mcc_difference, mcc_interval, metrics_by_magnitude, metrics_table

# 6 stars, 4 galaxies; 1 star called galaxy, 2 galaxies called stars
Y_TRUE = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
Y_PRED = np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 0])
P_GAL = np.array([0.1, 0.2, 0.1, 0.3, 0.2, 0.7, 0.9, 0.8, 0.4, 0.35])


def test_values_by_hand():
    m = classification_metrics(Y_TRUE, Y_PRED, proba=P_GAL)
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["recall_star"] == pytest.approx(5 / 6)
    assert m["recall_galaxy"] == pytest.approx(2 / 4)
    assert m["balanced_accuracy"] == pytest.approx((5 / 6 + 2 / 4) / 2)
    assert m["precision_star"] == pytest.approx(5 / 7)
    assert m["precision_galaxy"] == pytest.approx(2 / 3)
    assert m["f1_galaxy"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["confusion_matrix"] == [[5, 1], [2, 2]]
    assert m["mcc"] == pytest.approx(matthews_corrcoef(Y_TRUE, Y_PRED))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(Y_TRUE, P_GAL))
    json.dumps(m)  # plain Python types only


def test_proba_forms_agree_and_optional():
    two_col = np.column_stack([1 - P_GAL, P_GAL])
    a = classification_metrics(Y_TRUE, Y_PRED, proba=two_col)["roc_auc"]
    b = classification_metrics(Y_TRUE, Y_PRED, proba=P_GAL)["roc_auc"]
    assert a == b
    assert "roc_auc" not in classification_metrics(Y_TRUE, Y_PRED)
    with pytest.raises(ValueError, match="proba"):
        classification_metrics(Y_TRUE, Y_PRED, proba=np.ones((10, 3)))


def test_single_class_gives_nan_not_zero():
    y = np.zeros(5, dtype=int)
    m = classification_metrics(y, np.array([0, 0, 0, 1, 0]), proba=np.full(5, 0.2))
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx(0.8)
    assert math.isnan(m["mcc"]) and math.isnan(m["roc_auc"])
    assert math.isnan(m["recall_galaxy"])


def test_bad_labels():
    with pytest.raises(ValueError, match="0 \\(star\\)"):
        classification_metrics([0, 2], [0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        classification_metrics([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="one-dimensional"):
        classification_metrics(np.zeros((2, 2)), np.zeros((2, 2)))


def test_metrics_table():
    t = metrics_table({"cnn": classification_metrics(Y_TRUE, Y_PRED, P_GAL),
                       "majority": classification_metrics(Y_TRUE, np.zeros(10, int))})
    assert isinstance(t, pd.DataFrame) and list(t.index) == ["cnn", "majority"]
    assert t.index.name == "model"
    assert t.loc["cnn", ["tn", "fp", "fn", "tp"]].tolist() == [5, 1, 2, 2]
    assert t.loc["majority", "accuracy"] == pytest.approx(0.6)
    assert math.isnan(t.loc["majority", "roc_auc"])
    assert "confusion_matrix" not in t.columns
    with pytest.raises(TypeError):
        metrics_table([1, 2])


def test_metrics_by_magnitude():
    mag = np.array([17.0, 17.5, 18.2, 18.4, 19.5, 21.3, 18.1, 18.9, 21.5, np.nan])
    t = metrics_by_magnitude(Y_TRUE, Y_PRED, mag)
    assert list(t["bin"]) == ["[-inf, 18)", "[18, 19)", "[19, 20)", "[20, 21)", "[21, 22)",
                              "[22, inf)"]
    assert t["n"].tolist() == [2, 4, 1, 0, 2, 0]  # the NaN magnitude is left out
    assert t["n"].sum() == 9
    b18 = t.set_index("bin").loc["[18, 19)"]
    assert (b18["n_star"], b18["n_galaxy"]) == (2, 2)
    sel = (mag >= 18) & (mag < 19)
    assert b18["accuracy"] == pytest.approx(np.mean(Y_TRUE[sel] == Y_PRED[sel]))
    assert b18["mcc"] == pytest.approx(matthews_corrcoef(Y_TRUE[sel], Y_PRED[sel]))
    first = t.iloc[0]
    assert first["accuracy"] == 1.0 and math.isnan(first["mcc"])  # stars only
    empty = t.iloc[3]
    assert math.isnan(empty["accuracy"]) and math.isnan(empty["mcc"])


def test_metrics_by_magnitude_custom_bins_and_errors():
    t = metrics_by_magnitude([0, 1], [0, 1], [15.0, 25.0], bins=[10, 20, 30])
    assert t["n"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="increasing"):
        metrics_by_magnitude([0, 1], [0, 1], [15.0, 25.0], bins=[20, 10])
    with pytest.raises(ValueError, match="same length"):
        metrics_by_magnitude([0, 1], [0, 1], [15.0])


def _noisy(n, accuracy, seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    return y, np.where(rng.random(n) < accuracy, y, 1 - y)


def test_mcc_interval_matches_a_plain_bootstrap():
    """The interval is the percentile interval of MCC over resampled objects: a hand-written
    bootstrap (sklearn's MCC on each resample) gives the same ends to well within the resampling noise."""
    y, p = _noisy(400, 0.93, 0)
    low, high = mcc_interval(y, p, n_resamples=3000, random_state=1)
    rng = np.random.default_rng(2)
    boot = [matthews_corrcoef(y[i], p[i]) for i in rng.integers(0, len(y), (3000, len(y)))]
    ref_low, ref_high = np.percentile(boot, [2.5, 97.5])
    assert abs(low - ref_low) < 0.01 and abs(high - ref_high) < 0.01
    assert low < matthews_corrcoef(y, p) < high
    # four times the objects: about half the width
    y4, p4 = _noisy(1600, 0.93, 0)
    low4, high4 = mcc_interval(y4, p4)
    assert 0.35 < (high4 - low4) / (high - low) < 0.65


def test_mcc_interval_paired_difference():
    y, p = _noisy(500, 0.92, 3)
    assert mcc_interval(y, p, p) == (0.0, 0.0)  # the same predictions: no difference in any resample
    better = p.copy()
    wrong = np.flatnonzero(p != y)
    better[wrong[:len(wrong) // 2]] = y[wrong[:len(wrong) // 2]]  # half of p's errors fixed
    low, high = mcc_interval(y, better, p)
    assert 0.0 < low < matthews_corrcoef(y, better) - matthews_corrcoef(y, p) < high
    d, *ends = mcc_difference(y, better, p)
    assert d == pytest.approx(matthews_corrcoef(y, better) - matthews_corrcoef(y, p), abs=1e-12)
    assert tuple(ends) == (low, high)
    # paired: narrower than the two models' own intervals combined as if independent
    (a, b), (c, d) = mcc_interval(y, better), mcc_interval(y, p)
    assert high - low < 0.8 * np.hypot(b - a, d - c)
    # two models that differ on a few objects only: the difference is known far better than either MCC
    close = p.copy()
    close[wrong[:3]] = y[wrong[:3]]
    low, high = mcc_interval(y, close, p)
    assert 0.0 <= low and high - low < 0.3 * (d - c)
    # reproducible with a seed
    assert mcc_interval(y, better, p, random_state=5) == mcc_interval(y, better, p, random_state=5)


def test_mcc_interval_bad_input():
    y, p = _noisy(50, 0.9, 4)
    with pytest.raises(ValueError, match="same length"):
        mcc_interval(y, p[:-1])
    with pytest.raises(ValueError, match="same length"):
        mcc_interval(y, p, p[:-2])
    with pytest.raises(ValueError, match="0 \\(star\\) / 1 \\(galaxy\\)"):
        mcc_interval(y, p + 1)
    with pytest.raises(ValueError, match="confidence"):
        mcc_interval(y, p, confidence=95)
    with pytest.raises(ValueError, match="at least 2"):
        mcc_interval(y[:1], p[:1])
