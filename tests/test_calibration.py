"""stargal.calibration: Platt scaling on held-out rows, another field's star/galaxy mix."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stargal.calibration import adapt_to_field, adjust_prior, calibrate_pipeline, estimate_prior
from stargal.models import make_cnn_pipeline, make_forest_pipeline
from stargal.persist import load_model, save_model
from stargal.psf_channels import PSFChannels
from stargal.scale import AsinhScaler
from tests.synthetic import psf_aware_stack

torch.set_num_threads(1)


def test_calibration_improves_brier_and_survives_a_model_file(tmp_path):
    X, y, _ = psf_aware_stack(n=400, noise=0.2, seed=1)
    # Distorted probabilities: a forest on only the image channels of very noisy data.
    fit, cal, test = np.arange(0, 200), np.arange(200, 300), np.arange(300, 400)
    forest = make_forest_pipeline(n_estimators=30, min_samples_leaf=20).fit(X[fit], y[fit])
    calibrated = calibrate_pipeline(forest, X[cal], y[cal], method="sigmoid")
    assert forest.steps[-1][1] is not calibrated.steps[-1][1]  # the input pipeline is untouched
    p_raw = forest.predict_proba(X[test])[:, 1]
    p_cal = calibrated.predict_proba(X[test])[:, 1]
    assert brier_score_loss(y[test], p_cal) <= brier_score_loss(y[test], p_raw) + 0.01
    save_model(calibrated, tmp_path / "f.stargal")
    np.testing.assert_allclose(
        load_model(tmp_path / "f.stargal").predict_proba(X[test])[:, 1], p_cal
    )


def test_calibrated_cnn_model_file(tmp_path):
    X, y, _ = psf_aware_stack(n=96)
    groups = np.arange(len(X)) // 8
    pipe = make_cnn_pipeline(
        psf=PSFChannels(),
        scaler=AsinhScaler(),
        width=4,
        depth=1,
        max_epochs=1,
        batch_size=32,
        device="cpu",
    ).fit(X[:64], y[:64], net__groups=groups[:64])
    cal = calibrate_pipeline(pipe, X[64:], y[64:])
    save_model(cal, tmp_path / "c.stargal")
    again = load_model(tmp_path / "c.stargal")
    np.testing.assert_allclose(again.predict_proba(X), cal.predict_proba(X), atol=1e-6)


def test_adjust_prior():
    p = np.array([0.1, 0.5, 0.9])
    same = adjust_prior(p, 0.4, 0.4)
    np.testing.assert_allclose(same, p)
    lower = adjust_prior(p, 0.2, 0.4)
    assert np.all(lower < p)
    with pytest.raises(ValueError, match="galaxy_fraction"):
        adjust_prior(p, 1.0, 0.5)


def test_estimate_prior_recovers_a_fields_mix_and_adapt_to_field_needs_enough_objects():
    rng = np.random.default_rng(1)
    for frac in (0.1, 0.3, 0.6):
        y = rng.random(5000) < frac
        s = rng.normal(np.where(y, 1.0, -1.0), 1.0)
        p_at_40 = adjust_prior(1 / (1 + np.exp(-2 * s)), 0.4, 0.5)  # calibrated at a 40 % mix
        assert estimate_prior(p_at_40, 0.4) == pytest.approx(frac, abs=0.03)
        adapted, prior = adapt_to_field(np.r_[p_at_40, np.nan], 0.4)
        assert prior == pytest.approx(frac, abs=0.03) and np.isnan(adapted[-1])
    p, prior = adapt_to_field(np.full(50, 0.9), 0.4)
    assert prior == 0.4 and np.all(p == 0.9)
    with pytest.raises(ValueError, match="finite"):
        estimate_prior([np.nan], 0.5)


def _skewed(n=600, seed=0, shift=2.0):
    """Features and labels whose logistic fit on half the data is over-confident by ``shift``."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    X = rng.normal(np.where(y, 1.0, -1.0)[:, None] * [1.0, 0.5], 1.0)
    return X, y


def test_calibrate_pipeline_records_the_mix_and_leaves_the_input_alone():
    X, y = _skewed()
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=100.0)).fit(X[:300], y[:300])
    before = pipe.predict_proba(X[300:])
    cal = calibrate_pipeline(pipe, X[300:450], y[300:450], method="isotonic")
    np.testing.assert_array_equal(pipe.predict_proba(X[300:]), before)  # untouched
    assert cal.calibration_fraction_ == pytest.approx(np.mean(y[300:450]))
    assert [n for n, _ in cal.steps] == [n for n, _ in pipe.steps]
    assert cal.steps[0][1] is pipe.steps[0][1]  # the fitted front is shared, not refitted
    p = cal.predict_proba(X[450:])[:, 1]
    assert ((p >= 0) & (p <= 1)).all()
    assert brier_score_loss(y[450:], p) <= brier_score_loss(y[450:], before[150:, 1]) + 0.01


@pytest.mark.parametrize(
    "kw,error,match",
    [
        ({"method": "beta"}, ValueError, "method"),
        ({"y": np.zeros(10, int)}, ValueError, "both classes"),
    ],
)
def test_calibrate_pipeline_errors(kw, error, match):
    X, y = _skewed(40)
    pipe = make_pipeline(LogisticRegression()).fit(X, y)
    args = {"X": X[:10], "y": y[:10] if "y" not in kw else kw.pop("y")}
    with pytest.raises(error, match=match):
        calibrate_pipeline(pipe, **args, **kw)
    with pytest.raises(TypeError, match="Pipeline"):
        calibrate_pipeline(LogisticRegression().fit(X, y), X, y)


def test_adjust_prior_is_bayes_rule_and_reversible():
    p = np.linspace(0.01, 0.99, 25)
    there = adjust_prior(p, 0.2, 0.6)
    np.testing.assert_allclose(adjust_prior(there, 0.6, 0.2), p, rtol=1e-12)
    odds = (there / (1 - there)) / (p / (1 - p))
    np.testing.assert_allclose(odds, (0.2 / 0.8) / (0.6 / 0.4))
    assert np.all(np.diff(there) > 0)  # the order of objects is kept
    with pytest.raises(ValueError, match="calibration_fraction"):
        adjust_prior(p, 0.5, 0.0)


def test_adapt_to_field_keeps_nan_rows_and_uses_min_objects():
    p = np.r_[np.full(30, 0.8), np.nan]
    out, prior = adapt_to_field(p, 0.5, min_objects=50)
    assert prior == 0.5 and np.array_equal(out[:30], p[:30]) and np.isnan(out[-1])
    out, prior = adapt_to_field(p, 0.5, min_objects=10)
    assert prior > 0.5 and np.isnan(out[-1]) and np.all(out[:30] > 0.8)
