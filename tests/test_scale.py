"""Tests for stargal.scale.AsinhScaler."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from stargal.augment import sky_noise
from stargal.scale import MIN_SOFTENING, AsinhScaler

SIZE = 15
SKY = np.array([0.05, 0.02, 0.02, 0.03, 0.08])  # nanomaggies, u g r i z


def cutouts(n=60, seed=0):
    """Sky noise plus centred Gaussian sources with fluxes spanning 3 decades."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] - (SIZE - 1) / 2
    prof = np.exp(-(yy**2 + xx**2) / (2 * 1.4**2)) / (2 * np.pi * 1.4**2)
    flux = 10 ** rng.uniform(-0.5, 2.5, size=(n, 5))
    noise = rng.normal(0, 1, (n, 5, SIZE, SIZE)) * SKY[None, :, None, None]
    X = flux[:, :, None, None] * prof + noise
    return X.astype(np.float32)


def test_shape_dtype_rows_and_fit_returns_self():
    X = cutouts()
    scaler = AsinhScaler()
    assert scaler.fit(X) is scaler
    for inp in (X, X.astype(np.float64), X[:7]):
        Xt = scaler.transform(inp)
        assert Xt.shape == inp.shape and Xt.dtype == np.float32
    # cutout size may change between fit and transform; band count may not
    assert scaler.transform(X[:, :, 2:-2, 2:-2]).shape == (60, 5, 11, 11)
    assert scaler.softening_.shape == scaler.mean_.shape == scaler.scale_.shape == (5,)
    assert scaler.n_bands_in_ == 5


def test_standardised_per_band_on_training_data():
    X = cutouts()
    Xt = AsinhScaler().fit_transform(X)
    np.testing.assert_allclose(Xt.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(Xt.std(axis=(0, 2, 3)), 1.0, atol=1e-4)


def test_auto_softening_is_sky_noise():
    X = cutouts(200)
    scaler = AsinhScaler().fit(X)
    np.testing.assert_allclose(scaler.softening_, sky_noise(X))
    np.testing.assert_allclose(scaler.softening_, SKY, rtol=0.06)


def test_unstandardised_is_asinh_of_x_over_2b():
    X = cutouts()
    soft = [0.1, 0.2, 0.3, 0.4, 0.5]
    Xt = AsinhScaler(softening=soft, standardize=False).fit_transform(X)
    expected = np.arcsinh(X.astype(np.float64) / (2 * np.array(soft))[None, :, None, None])
    np.testing.assert_allclose(Xt, expected, rtol=1e-6, atol=1e-6)
    scalar = AsinhScaler(softening=0.25, standardize=False).fit(X)
    np.testing.assert_array_equal(scalar.softening_, np.full(5, 0.25))
    np.testing.assert_array_equal(scalar.mean_, np.zeros(5))
    np.testing.assert_array_equal(scalar.scale_, np.ones(5))


def test_monotonic_and_odd_about_zero():
    X = cutouts()
    scaler = AsinhScaler().fit(X)
    ramp = np.linspace(-5, 500, 20 * SIZE * SIZE, dtype=np.float32)  # nanomaggies, increasing
    # put the whole ramp through every band
    for band in range(5):
        Z = np.zeros((20, 5, SIZE, SIZE), np.float32)
        Z[:, band] = ramp.reshape(20, SIZE, SIZE)
        out = scaler.transform(Z)[:, band].ravel()
        assert (np.diff(out) > 0).all()
    # the unstandardised stretch is odd: negative sky pixels behave like positive ones
    raw = AsinhScaler(standardize=False).fit(X)
    np.testing.assert_allclose(raw.transform(-X), -raw.transform(X), rtol=1e-6)


def test_clip():
    X = cutouts()
    Xt = AsinhScaler(clip=2.0).fit_transform(X)
    assert Xt.min() >= -2.0 and Xt.max() <= 2.0
    assert (Xt == 2.0).any()  # bright cores are clipped
    unclipped = AsinhScaler().fit_transform(X)
    inside = np.abs(unclipped) < 2.0
    np.testing.assert_array_equal(Xt[inside], unclipped[inside])


def test_inverse_round_trip():
    X = cutouts()
    scaler = AsinhScaler().fit(X)
    back = scaler.inverse_transform(scaler.transform(X))
    assert back.dtype == np.float32 and back.shape == X.shape
    np.testing.assert_allclose(back, X, rtol=1e-4, atol=1e-5 * SKY.min())


def test_constant_band_no_division_by_zero():
    X = cutouts()
    X[:, 3] = 0.0
    scaler = AsinhScaler().fit(X)
    assert scaler.softening_[3] == MIN_SOFTENING
    assert scaler.scale_[3] == 1.0
    Xt = scaler.transform(X)
    assert np.isfinite(Xt).all()
    np.testing.assert_array_equal(Xt[:, 3], 0.0)


def test_clone_and_pickle():
    X = cutouts()
    scaler = AsinhScaler(softening=[0.1] * 5, clip=5.0)
    assert clone(scaler).get_params() == scaler.get_params()
    assert not hasattr(clone(scaler.fit(X)), "mean_")
    restored = pickle.loads(pickle.dumps(scaler))
    np.testing.assert_array_equal(restored.transform(X), scaler.transform(X))


def test_not_fitted():
    with pytest.raises(NotFittedError):
        AsinhScaler().transform(cutouts(3))


@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros((4, 5 * SIZE * SIZE), np.float32), "4-D"),
        (np.zeros((4, 5, SIZE), np.float32), "4-D"),
        (np.full((4, 5, SIZE, SIZE), "x"), "real numbers"),
        (np.zeros((0, 5, SIZE, SIZE), np.float32), "0 cutouts"),
    ],
)
def test_bad_input(X, match):
    with pytest.raises(ValueError, match=match):
        AsinhScaler().fit(X)


def test_band_count_must_match():
    scaler = AsinhScaler().fit(cutouts())
    with pytest.raises(ValueError, match="4 bands but the scaler was fitted on 5"):
        scaler.transform(cutouts()[:, :4])


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(softening="sky"), "softening"),
        (dict(softening=-1.0), "softening"),
        (dict(softening=[0.1, 0.1]), "one value per band"),
        (dict(softening=[0.1, 0.1, 0.0, 0.1, 0.1]), "> 0"),
        (dict(clip=0), "clip"),
        (dict(clip=-3.0), "clip"),
        (dict(standardize="yes"), "standardize"),
        (dict(nan_policy="omit"), "nan_policy"),
    ],
)
def test_bad_params(params, match):
    scaler = AsinhScaler(**params)  # __init__ only stores
    with pytest.raises(ValueError, match=match):
        scaler.fit(cutouts(5))


def test_nan_policy():
    X = cutouts()
    X[[3, 8], 2, 7, 7] = np.nan
    with pytest.raises(ValueError, match=r"2 of 60 cutouts .*rows \[3, 8\]"):
        AsinhScaler().fit(X)
    clean = AsinhScaler().fit(np.delete(X, [3, 8], axis=0))
    with pytest.raises(ValueError, match="NaN"):
        clean.transform(X)
    tolerant = AsinhScaler(nan_policy="zero").fit(X)
    # non-finite pixels are ignored by fit ...
    expected = sky_noise(np.delete(X, [3, 8], axis=0))
    np.testing.assert_allclose(tolerant.softening_, expected, rtol=0.02)
    Xt = tolerant.transform(X)
    assert np.isfinite(Xt).all()
    # ... and treated as 0 nanomaggies (sky level) by transform
    zeroed = X.copy()
    zeroed[~np.isfinite(zeroed)] = 0.0
    np.testing.assert_array_equal(Xt, tolerant.transform(zeroed))
