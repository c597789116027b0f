"""PSF-aware inputs: PSFChannels, the scaler on 10 channels, the CNN's channel count, calibration."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import brier_score_loss

from stargal._imaging import psf_fit_flux, split_psf_channels
from stargal.calibration import adjust_prior, calibrate_pipeline
from stargal.models import make_cnn_pipeline, make_forest_pipeline
from stargal.persist import load_model, save_model
from stargal.psf_channels import PSFChannels
from stargal.scale import AsinhScaler

torch.set_num_threads(1)


def gaussian(size, sigma):
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    g = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def psf_aware_stack(n=120, size=15, seed=0, noise=0.02):
    """Stars (the PSF) and galaxies (broader than the PSF) under two seeings."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    psf_sigma = np.where(np.arange(n) % 4 < 2, 1.1, 1.7)  # two "fields"
    X = np.zeros((n, 10, size, size), dtype=np.float32)
    flux = rng.uniform(5, 50, n)
    for i in range(n):
        p = gaussian(size, psf_sigma[i])
        obj = gaussian(size, np.hypot(psf_sigma[i], 1.2)) if y[i] else p
        X[i, :5] = flux[i] * obj
        X[i, 5:] = p
    X[:, :5] += rng.normal(0, noise, (n, 5, size, size)).astype(np.float32)
    return X, y, flux


def test_psf_fit_flux_recovers_star_flux():
    X, y, flux = psf_aware_stack(noise=0.0)
    images, psfs = split_psf_channels(X)
    f = psf_fit_flux(images, psfs)
    np.testing.assert_allclose(f[y == 0], np.repeat(flux[y == 0, None], 5, axis=1), rtol=1e-4)
    assert np.all(f[y == 1] < flux[y == 1, None])  # extended: the PSF explains less of it


@pytest.mark.parametrize("mode", ["scaled", "residual", "unit", "none"])
def test_psf_channels_modes(mode):
    X, y, flux = psf_aware_stack(noise=0.0)
    step = PSFChannels(mode=mode).fit(X)
    Xt = step.transform(X)
    assert Xt.dtype == np.float32 and len(Xt) == len(X)
    assert Xt.shape[1] == step.n_channels_out_ == (5 if mode == "none" else 10)
    np.testing.assert_array_equal(Xt[:, :5], X[:, :5])
    stars = y == 0
    if mode == "scaled":  # a star's scaled PSF is the star
        np.testing.assert_allclose(Xt[stars, 5:], X[stars, :5], rtol=1e-3, atol=1e-4)
        assert np.abs(Xt[~stars, 5:] - X[~stars, :5]).max() > 0.05
    elif mode == "residual":
        assert np.abs(Xt[stars, 5:]).max() < 1e-3
        assert np.abs(Xt[~stars, 5:]).max() > 0.05
    elif mode == "unit":
        np.testing.assert_array_equal(Xt, X)


def test_drop_is_a_deprecated_name_of_none():
    X, _, _ = psf_aware_stack(n=8, noise=0.0)
    with pytest.warns(FutureWarning, match="mode='none'"):
        old = PSFChannels(mode="drop").fit(X)
    np.testing.assert_array_equal(old.transform(X), PSFChannels(mode="none").fit_transform(X))
    assert old.n_channels_out_ == 5
    with pytest.raises(ValueError, match="mode"):
        PSFChannels(mode="blind").fit(X)


def test_psf_channels_rejects_psf_blind_cutouts_and_bad_mode():
    with pytest.raises(ValueError, match=r"Cutter\(psf=True\)"):
        PSFChannels().fit(np.zeros((3, 5, 15, 15), np.float32))
    with pytest.raises(ValueError, match="mode"):
        PSFChannels(mode="blur").fit(np.zeros((3, 10, 15, 15), np.float32))


def test_scaler_softens_psf_channels_like_their_band():
    X, _, _ = psf_aware_stack()
    Xt = PSFChannels().fit_transform(X)
    scaler = AsinhScaler().fit(Xt)
    np.testing.assert_allclose(scaler.softening_[5:], scaler.softening_[:5])
    alone = AsinhScaler().fit(Xt[:, :5])
    np.testing.assert_allclose(scaler.softening_[:5], alone.softening_)


def test_cnn_takes_channel_count_from_data_and_round_trips(tmp_path):
    X, y, _ = psf_aware_stack(n=96)
    groups = np.arange(len(X)) // 8
    pipe = make_cnn_pipeline(psf=PSFChannels(), scaler=AsinhScaler(), width=4, depth=1, max_epochs=2,
                             batch_size=32, device="cpu")
    pipe.fit(X, y, net__groups=groups)
    net = pipe.named_steps["net"]
    assert net.n_channels_in_ == 10 and net.module_.in_channels == 10
    blind = clone(pipe).set_params(psf__mode="none").fit(X, y, net__groups=groups)
    assert blind.named_steps["net"].module_.in_channels == 5
    save_model(pipe, tmp_path / "m.stargal")
    again = load_model(tmp_path / "m.stargal")
    np.testing.assert_allclose(again.predict_proba(X), pipe.predict_proba(X), atol=1e-6)


def test_calibration_improves_brier_and_survives_a_model_file(tmp_path):
    X, y, _ = psf_aware_stack(n=400, noise=0.2, seed=1)
    rng = np.random.default_rng(0)
    # Distorted probabilities: a forest on only the image channels of very noisy data.
    fit, cal, test = np.arange(0, 200), np.arange(200, 300), np.arange(300, 400)
    forest = make_forest_pipeline(n_estimators=30, min_samples_leaf=20).fit(X[fit], y[fit])
    calibrated = calibrate_pipeline(forest, X[cal], y[cal], method="sigmoid")
    assert forest.steps[-1][1] is not calibrated.steps[-1][1]  # the input pipeline is untouched
    p_raw = forest.predict_proba(X[test])[:, 1]
    p_cal = calibrated.predict_proba(X[test])[:, 1]
    assert brier_score_loss(y[test], p_cal) <= brier_score_loss(y[test], p_raw) + 0.01
    save_model(calibrated, tmp_path / "f.stargal")
    np.testing.assert_allclose(load_model(tmp_path / "f.stargal").predict_proba(X[test])[:, 1], p_cal)
    del rng


def test_calibrated_cnn_model_file(tmp_path):
    X, y, _ = psf_aware_stack(n=96)
    groups = np.arange(len(X)) // 8
    pipe = make_cnn_pipeline(psf=PSFChannels(), scaler=AsinhScaler(), width=4, depth=1, max_epochs=1,
                             batch_size=32, device="cpu").fit(X[:64], y[:64], net__groups=groups[:64])
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
    from stargal.calibration import adapt_to_field, estimate_prior

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
