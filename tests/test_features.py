"""Tests for stargal.features.PhotometricFeatures."""

import pickle
import time

import numpy as np
import pytest
from photutils.aperture import CircularAperture, aperture_photometry
from scipy.special import erf
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from stargal.features import SOFTENING, PhotometricFeatures, asinh_magnitude


def gaussian_cutout(sigma, size, flux=100.0, q=1.0):
    """Pixel-integrated (erf) Gaussian of total ``flux`` centred on the central pixel,
    axis ratio ``q`` (minor/major, major axis along x); all five bands alike."""
    edges = np.arange(size + 1) - size / 2.0
    px = np.diff(0.5 * (1 + erf(edges / (np.sqrt(2) * sigma))))
    py = np.diff(0.5 * (1 + erf(edges / (np.sqrt(2) * sigma * q))))
    img = flux * np.outer(py, px)
    return np.repeat(img[None, None], 5, axis=1).astype(np.float32)


def col(pf, name):
    return list(pf.get_feature_names_out()).index(name)


def test_aperture_flux_matches_analytic_gaussian():
    sigma, radii = 4.0, np.array([6.0, 10.0, 14.0])
    X = gaussian_cutout(sigma, 41)
    pf = PhotometricFeatures(radii=radii).fit(X)
    F = pf.transform(X)
    analytic = 100.0 * (1 - np.exp(-radii ** 2 / (2 * sigma ** 2)))
    for band in "ugriz":
        got = [F[0, col(pf, f"flux_{band}_r{r:g}")] for r in radii]
        np.testing.assert_allclose(got, analytic, rtol=0.01)
    # second-moment size of a round Gaussian is sigma; ellipticity ~0
    assert F[0, col(pf, "size_r")] == pytest.approx(sigma, rel=0.03)
    assert F[0, col(pf, "ellipticity_r")] < 0.01


def test_ellipticity_of_elongated_source():
    X = np.concatenate([gaussian_cutout(3.0, 31), gaussian_cutout(3.0, 31, q=0.5)])
    pf = PhotometricFeatures(radii=(3.0, 6.0, 12.0)).fit(X)
    e = pf.transform(X)[:, col(pf, "ellipticity_r")]
    # (1 - q^2) / (1 + q^2) = 0.6 for the untruncated profile
    assert e[0] < 0.01 and 0.5 < e[1] < 0.65


def test_identical_to_photutils_aperture_photometry():
    rng = np.random.default_rng(3)
    X = rng.normal(1.0, 2.0, size=(4, 5, 15, 15)).astype(np.float32)
    pf = PhotometricFeatures().fit(X)
    F = pf.transform(X)
    for i in range(4):
        for b, band in enumerate("ugriz"):
            for r in pf.radii:
                ref = aperture_photometry(X[i, b].astype(np.float64), CircularAperture((7, 7), r),
                                          method="exact")["aperture_sum"][0]
                assert F[i, col(pf, f"flux_{band}_r{r:g}")] == pytest.approx(ref, rel=1e-10,
                                                                             abs=1e-10)


def test_point_source_more_concentrated_than_extended():
    star, galaxy = gaussian_cutout(1.0, 15), gaussian_cutout(2.5, 15)
    X = np.concatenate([star, galaxy])
    pf = PhotometricFeatures().fit(X)
    F = pf.transform(X)
    for band in "ugriz":
        c = F[:, col(pf, f"concentration_{band}")]
        assert c[0] > c[1] + 0.2
    assert F[0, col(pf, "peak_ratio_r")] > F[1, col(pf, "peak_ratio_r")]
    assert F[0, col(pf, "size_r")] < F[1, col(pf, "size_r")]


def test_magnitudes_and_colors():
    X = gaussian_cutout(1.0, 15, flux=100.0)
    X[:, 0] *= 0.1  # u fainter by 2.5 mag
    pf = PhotometricFeatures().fit(X)
    F = pf.transform(X)
    flux_r = F[0, col(pf, "flux_r_r5")]
    assert F[0, col(pf, "mag_r_r5")] == pytest.approx(22.5 - 2.5 * np.log10(flux_r), abs=1e-3)
    assert F[0, col(pf, "color_u_g")] == pytest.approx(2.5, abs=1e-3)
    assert F[0, col(pf, "color_g_r")] == pytest.approx(0.0, abs=1e-6)


def test_asinh_magnitude_properties():
    m = asinh_magnitude(np.array([-10.0, 0.0, 1e-3, 1e4]), SOFTENING[2])
    assert np.isfinite(m).all() and np.all(np.diff(m) < 0)
    # zero flux gives the band's limiting asinh magnitude -2.5/ln10 * ln(b)
    assert m[1] == pytest.approx(-2.5 / np.log(10) * np.log(SOFTENING[2]))
    assert asinh_magnitude(1e4, SOFTENING[2]) == pytest.approx(12.5, abs=1e-6)


def test_feature_names_count():
    X = np.zeros((2, 5, 15, 15), dtype=np.float32)
    pf = PhotometricFeatures().fit(X)
    names = pf.get_feature_names_out()
    assert len(names) == pf.transform(X).shape[1] == pf.n_features_out_ == 42
    assert len(set(names)) == len(names)
    assert not any("psf" in n or "model" in n for n in names)  # no catalog columns
    pf4 = PhotometricFeatures(radii=(1, 2, 3, 4)).fit(X)
    assert len(pf4.get_feature_names_out()) == pf4.transform(X).shape[1] == 2 * 5 * 4 + 12


@pytest.mark.parametrize("fill", [0.0, -5.0, np.nan])
def test_no_nan_on_empty_negative_or_masked_images(fill):
    X = np.full((3, 5, 11, 11), fill, dtype=np.float32)
    X[2] = np.random.default_rng(0).normal(0, 1, (5, 11, 11))
    X[2, :, 5, 5] = np.nan
    pf = PhotometricFeatures(radii=(1.5, 3.0, 5.0)).fit(X)
    F = pf.transform(X)
    assert F.shape == (3, 42) and np.isfinite(F).all()


def test_pandas_output_and_clone_pickle():
    X = gaussian_cutout(1.5, 15)
    pf = PhotometricFeatures().set_output(transform="pandas")
    df = pf.fit_transform(X)
    assert list(df.columns) == list(pf.get_feature_names_out())
    assert clone(pf).get_params() == {"radii": (1.5, 3.0, 5.0), "zero_point": 22.5}
    restored = pickle.loads(pickle.dumps(PhotometricFeatures().fit(X)))
    np.testing.assert_array_equal(restored.transform(X), PhotometricFeatures().fit_transform(X))


@pytest.mark.parametrize("kw", [dict(radii=(3.0,)), dict(radii=(3.0, 1.0)), dict(radii=(0, 2)),
                                dict(radii="abc"), dict(zero_point=np.nan)])
def test_bad_params(kw):
    with pytest.raises(ValueError):
        PhotometricFeatures(**kw).fit(np.zeros((1, 5, 15, 15)))


def test_bad_input():
    pf = PhotometricFeatures()
    with pytest.raises(NotFittedError):
        pf.transform(np.zeros((1, 5, 15, 15)))
    with pytest.raises(ValueError, match="band order"):
        pf.fit(np.zeros((1, 4, 15, 15)))
    with pytest.raises(ValueError, match="odd"):
        pf.fit(np.zeros((1, 5, 14, 14)))
    with pytest.raises(TypeError):
        pf.fit("not an array")
    pf.fit(np.zeros((1, 5, 15, 15)))
    with pytest.raises(ValueError, match="fitted on 15x15"):
        pf.transform(np.zeros((1, 5, 21, 21)))
    with pytest.warns(UserWarning, match="beyond"):
        PhotometricFeatures().fit(np.zeros((1, 5, 7, 7)))


def test_throughput():
    X = np.random.default_rng(0).normal(size=(5000, 5, 15, 15)).astype(np.float32)
    pf = PhotometricFeatures().fit(X[:1])
    best = min(_timed(pf, X) for _ in range(3))
    assert 5000 / best >= 5000, f"{5000 / best:.0f} cutouts/s"


def _timed(pf, X):
    t0 = time.perf_counter()
    pf.transform(X)
    return time.perf_counter() - t0
