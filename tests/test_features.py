"""Tests for stargal.features.PhotometricFeatures."""

import pickle
import time

import numpy as np
import pytest
from photutils.aperture import CircularAperture, aperture_photometry
from scipy.signal import fftconvolve
from scipy.special import erf
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from stargal._imaging import psf_fit_flux
from stargal.features import (SOFTENING, PhotometricFeatures, _exp_convolve, _spread_model,
                              asinh_magnitude)


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


# ---------------------------------------------------------------------------------------------
# PSF-aware cutouts (n, 10, H, W): images u..z, then the PSF in each band (Cutter(psf=True))
# ---------------------------------------------------------------------------------------------
PSF_COLUMNS = ["psf_mag", "psf_aper_ratio", "spread_model", "size_excess",
               "concentration_excess", "psf_chi2"]


def render(fwhm, r_half=0.0, flux=1.0, q=1.0, theta=0.0, size=15, pad=3):
    """Pixel-integrated, PSF-convolved circular-Gaussian-PSF images rendered exactly in
    Fourier space: a unit-flux exponential disc (half-light radius ``r_half`` px, axis ratio
    ``q``, position angle ``theta``; ``r_half = 0`` is a point source) convolved with a
    Gaussian PSF of ``fwhm`` px and the pixel box, on a ``pad``-times larger grid so nothing
    wraps, centred on the central pixel. Broadcasts over its arguments; ``(n, size, size)``."""
    fwhm, r_half, flux, q, theta = np.broadcast_arrays(*(np.atleast_1d(np.asarray(a, float))
                                                         for a in (fwhm, r_half, flux, q, theta)))
    big = pad * size
    fy = np.fft.fftfreq(big)[:, None]
    fx = np.fft.rfftfreq(big)[None, :]
    e = lambda a: a[:, None, None]  # noqa: E731
    fu = fx * np.cos(e(theta)) + fy * np.sin(e(theta))
    fv = -fx * np.sin(e(theta)) + fy * np.cos(e(theta))
    sigma, h = e(fwhm) / 2.3548, e(r_half) / 1.678
    disc = (1 + (2 * np.pi * h) ** 2 * (fu ** 2 + (e(q) * fv) ** 2)) ** -1.5
    gauss = np.exp(-2 * np.pi ** 2 * sigma ** 2 * (fx ** 2 + fy ** 2))
    otf = disc * gauss * np.sinc(fx) * np.sinc(fy)  # np.sinc: the pixel box
    img = np.fft.fftshift(np.fft.irfft2(otf, s=(big, big)), axes=(-2, -1))
    c = big // 2 - size // 2
    return e(flux) * img[:, c:c + size, c:c + size]


def moffat_psf(fwhm, beta=3.0, size=15, sub=7):
    """Pixel-integrated (supersampled) unit-sum Moffat PSF stamps of the given FWHMs."""
    fwhm = np.atleast_1d(np.asarray(fwhm, float))[:, None, None]
    c = (np.arange(size * sub) + 0.5) / sub - size / 2.0
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    p = (1 + (c[:, None] ** 2 + c[None, :] ** 2) / alpha ** 2) ** -beta
    p = p.reshape(-1, size, sub, size, sub).sum(axis=(2, 4))
    return p / p.sum(axis=(-2, -1), keepdims=True)


def psf_stack(images, psfs):
    """(n, 10, H, W) float32 PSF-aware cutouts, the same image and PSF in all five bands."""
    X = np.empty((len(images), 10) + images.shape[-2:], np.float32)
    X[:, :5] = images[:, None]
    X[:, 5:] = (psfs / psfs.sum(axis=(-2, -1), keepdims=True))[:, None]
    return X


def features(X, *names):
    pf = PhotometricFeatures().fit(X)
    F = pf.transform(X)
    cols = list(pf.get_feature_names_out())
    return [F[:, cols.index(n)] for n in names]


def test_psf_aware_keeps_plain_columns_and_adds_named_psf_columns():
    fw = np.array([2.5, 3.5, 4.5])
    rng = np.random.default_rng(5)
    X = psf_stack(render(fw, 0.4 * fw, 300.0) + rng.normal(0, 1, (3, 15, 15)), render(fw))
    plain = PhotometricFeatures().fit(X[:, :5])
    aware = PhotometricFeatures().fit(X)
    assert plain.psf_aware_ is False and aware.psf_aware_ is True
    F5, F10 = plain.transform(X[:, :5]), aware.transform(X)
    names5, names10 = list(plain.get_feature_names_out()), list(aware.get_feature_names_out())
    assert names10[:42] == names5 and F5.shape == (3, 42)
    np.testing.assert_array_equal(F10[:, :42], F5)  # image columns: identical values
    assert names10[42:] == [f"{p}_{b}" for p in PSF_COLUMNS for b in "ugriz"]
    assert F10.shape == (3, 72) == (3, aware.n_features_out_) and len(set(names10)) == 72
    assert not any(n.startswith("psf") for n in names5)
    df = PhotometricFeatures().set_output(transform="pandas").fit_transform(X)
    assert list(df.columns) == names10
    restored = pickle.loads(pickle.dumps(aware))
    np.testing.assert_array_equal(restored.transform(X), F10)
    assert not hasattr(clone(aware), "psf_aware_")


# Values of the plain (5-channel) features computed with the implementation before PSF
# awareness (commit 5323e8a), rounded to 1e-12: the baseline must not move.
_PLAIN_REFERENCE_ROW0 = [
    21.008524909096, 37.656395608548, 40.923957104815, 21.728018875317, 36.626715699866,
    36.826561993061, 20.920423972628, 35.015949044342, 42.01056482479, 21.442573261812,
    41.262629972516, 47.927130921623, 21.874734170617, 37.014589624792, 40.62906416203,
    19.193962887528, 18.560388123224, 18.470043241795, 19.157431047667, 18.590498500867,
    18.584590574301, 19.198538074728, 18.639322494872, 18.441594839934, 19.171731242094,
    18.461087076096, 18.298531107072, 19.148902650848, 18.57863396078, 18.477547956056,
    -0.030110377643, -0.048823994005, 0.178235418776, -0.117546884684,
]


def _plain_reference_stack():
    rng = np.random.default_rng(20261201)
    X = rng.normal(0.0, 0.3, (3, 5, 15, 15))
    yy, xx = np.mgrid[:15, :15] - 7.0
    for i, s in enumerate((1.2, 2.0, 3.0)):
        X[i] += 40.0 * np.exp(-(xx ** 2 + yy ** 2) / (2 * s * s)) / (2 * np.pi * s * s)
    return X.astype(np.float32)


def test_plain_features_unchanged_from_before_psf_awareness():
    F = PhotometricFeatures().fit_transform(_plain_reference_stack())
    np.testing.assert_allclose(F[0, :34], _PLAIN_REFERENCE_ROW0, rtol=1e-10, atol=1e-11)
    tail = {  # concentrations, shape of the three objects
        "concentration_u": [0.513355168839, 0.235798788035, 0.142360952672],
        "size_r": [1.705967558042, 1.976276990809, 2.218367999121],
        "ellipticity_r": [0.125652845696, 0.039981264865, 0.121931384206],
        "peak_ratio_r": [0.107586538063, 0.054553688893, 0.039577878841],
    }
    pf = PhotometricFeatures().fit(_plain_reference_stack())
    for name, ref in tail.items():
        np.testing.assert_allclose(F[:, col(pf, name)], ref, rtol=1e-10, atol=1e-11)


def test_render_helper_is_a_unit_flux_centred_profile():
    img = render([2.5, 4.5], [0.0, 2.0], 10.0)
    np.testing.assert_allclose(img.sum(axis=(1, 2))[0], 10.0, rtol=1e-3)
    assert np.unravel_index(img[1].argmax(), img[1].shape) == (7, 7)
    np.testing.assert_allclose(img[0], img[0].T, atol=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "moffat"])
def test_noiseless_stars_match_their_psf_at_every_fwhm(kind):
    fw = np.array([2.5, 3.0, 3.5, 4.0, 4.5])
    psf = render(fw) if kind == "gaussian" else moffat_psf(fw)
    X = psf_stack(200.0 * psf, psf)
    spread, ratio, excess, conc = features(X, "spread_model_r", "psf_aper_ratio_r",
                                           "size_excess_r", "concentration_excess_r")
    np.testing.assert_allclose(spread, 0.0, atol=1e-6)
    np.testing.assert_allclose(ratio, 1.0, atol=1e-5)
    np.testing.assert_allclose(excess, 0.0, atol=1e-5)
    np.testing.assert_allclose(conc, 0.0, atol=1e-6)
    # the absolute size of the same stars grows with the seeing
    (size,) = features(X, "size_r")
    assert np.all(np.diff(size) > 0.05)


def test_galaxies_are_broader_than_their_psf_at_every_fwhm():
    fw = np.repeat([2.5, 3.5, 4.5], 3)
    r_half = np.tile([0.3, 0.6, 1.0], 3) * fw
    X = psf_stack(render(fw, r_half, 200.0, q=0.7, theta=0.5), render(fw))
    spread, ratio, excess, conc = features(X, "spread_model_r", "psf_aper_ratio_r",
                                           "size_excess_r", "concentration_excess_r")
    assert np.all(spread > 0.003), spread  # SPREAD_MODEL: positive for galaxies
    assert np.all(ratio < 0.92), ratio
    assert np.all(excess > 0.15), excess
    assert np.all(conc < -0.03), conc
    # all grow with the galaxy's size at fixed seeing
    for f in (spread, excess, -ratio, -conc):
        assert np.all(np.diff(f.reshape(3, 3), axis=1) > 0)


def test_compact_galaxy_in_sharp_seeing_vs_star_in_broad_seeing():
    """Same absolute size (the PSF-blind feature), told apart by the PSF-relative ones."""
    star = render(4.5, 0.0, 300.0)
    galaxy = render(2.5, 1.6, 300.0)  # r_half = 0.64 FWHM of its own, sharper field
    X = psf_stack(np.concatenate([galaxy, star]), render([2.5, 4.5]))
    size, spread, excess, ratio, conc = features(
        X, "size_r", "spread_model_r", "size_excess_r", "psf_aper_ratio_r",
        "concentration_excess_r")
    assert size[0] == pytest.approx(size[1], rel=0.05)  # looks alike without the PSF
    assert spread[0] > 0.008 and abs(spread[1]) < 1e-6
    assert excess[0] > 0.4 and abs(excess[1]) < 1e-5
    assert ratio[0] < 0.8 and ratio[1] == pytest.approx(1.0, abs=1e-5)
    assert conc[0] < -0.1 and abs(conc[1]) < 1e-6


def _noisy_field(fwhm, n, rng):
    """n stars and n galaxies (r_half 0.3-1 x FWHM) of flux 300-1000 in unit sky noise."""
    flux = rng.uniform(300.0, 1000.0, 2 * n)
    r_half = np.r_[np.zeros(n), rng.uniform(0.3, 1.0, n) * fwhm]
    img = render(fwhm, r_half, flux, q=rng.uniform(0.6, 1.0, 2 * n),
                 theta=rng.uniform(0, np.pi, 2 * n))
    img += rng.normal(0.0, 1.0, img.shape)
    return psf_stack(img, np.repeat(render(fwhm), 2 * n, axis=0)), np.r_[np.zeros(n), np.ones(n)]


def _max_margin_threshold(v, y):
    return 0.5 * (v[y == 0].max() + v[y == 1].min())


def test_spread_model_threshold_transfers_across_seeing_where_size_fails():
    rng = np.random.default_rng(11)
    fields = {fw: _noisy_field(fw, 60, rng) for fw in (2.5, 3.5, 4.5)}
    feats = {fw: dict(zip(("size_r", "spread_model_r"), features(X, "size_r", "spread_model_r")))
             for fw, (X, _) in fields.items()}
    y_sharp = fields[2.5][1]
    acc = {}
    for name in ("size_r", "spread_model_r"):
        thr = _max_margin_threshold(feats[2.5][name], y_sharp)  # fitted on the sharp field
        acc[name] = {fw: np.mean((feats[fw][name] > thr) == y) for fw, (_, y) in fields.items()}
    assert acc["size_r"][2.5] >= 0.95  # the absolute size works on the field it was fitted on
    assert acc["size_r"][4.5] <= 0.6  # ... and calls every broad-seeing star a galaxy
    assert min(acc["spread_model_r"].values()) >= 0.95, acc
    y_all = np.concatenate([y for _, y in fields.values()])
    spread_all = np.concatenate([f["spread_model_r"] for f in feats.values()])
    thr = _max_margin_threshold(feats[2.5]["spread_model_r"], y_sharp)
    assert np.mean((spread_all > thr) == y_all) >= 0.95


def test_exponential_convolution_matches_supersampled_direct_convolution():
    size, sub, s = 15, 9, 1.2
    c = (np.arange(size * sub) + 0.5) / sub - size / 2.0
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    g = np.exp(-r2 / (2 * s * s))
    g /= g.sum()
    psf = g.reshape(size, sub, size, sub).sum(axis=(1, 3))
    for h in (0.2, 0.5):  # SPREAD_MODEL's FWHM / 16 is ~0.2 px: sub-pixel
        k = np.exp(-np.sqrt(r2) / h)
        ref = fftconvolve(g, k / k.sum(), mode="same")
        ref = ref.reshape(size, sub, size, sub).sum(axis=(1, 3))
        ours = _exp_convolve(psf, np.array(h))
        assert np.abs(ref - psf).max() > 0.05 * psf.max()  # the convolution does something
        assert np.abs(ours - ref).max() < 2e-3 * psf.max()


def test_spread_model_equals_its_definition_with_explicit_model():
    rng = np.random.default_rng(2)
    fw = np.array([2.5, 4.0])
    x = (render(fw, 0.5 * fw, 100.0) + rng.normal(0, 0.5, (2, 15, 15)))[:, None]
    P = render(fw)[:, None]
    scale = fw[:, None] / 16
    G = _exp_convolve(P, scale)
    dot = lambda a, b: (a * b).sum(axis=(-2, -1))  # noqa: E731
    direct = dot(G, x) / dot(P, x) - dot(G, P) / dot(P, P)
    np.testing.assert_allclose(_spread_model(x, P, scale), direct, rtol=1e-9, atol=1e-12)
    assert np.all(direct > 0.003)


def test_psf_mag_is_the_shared_psf_fit_flux():
    rng = np.random.default_rng(4)
    fw = rng.uniform(2.5, 4.5, 6)
    X = psf_stack(render(fw, rng.uniform(0, 2, 6), rng.uniform(-5, 500, 6))
                  + rng.normal(0, 1, (6, 15, 15)), render(fw))
    X[:, :5] *= np.array([0.5, 1, 2, 3, 4], np.float32)[:, None, None]
    pf = PhotometricFeatures().fit(X)
    F = pf.transform(X)
    images, psfs = X[:, :5], X[:, 5:]
    ref = asinh_magnitude(psf_fit_flux(images, psfs), SOFTENING)
    # (equal up to the float32 PSF stamps' unit-sum rounding, which transform renormalises)
    np.testing.assert_allclose(F[:, [col(pf, f"psf_mag_{b}") for b in "ugriz"]], ref, atol=1e-6)


def test_psf_chi2_is_about_one_for_stars_and_large_for_galaxies():
    rng = np.random.default_rng(8)
    n = 80
    psf = np.repeat(render(3.0), 2 * n, axis=0)
    img = render(3.0, np.r_[np.zeros(n), np.full(n, 2.0)], 2000.0) + rng.normal(0, 1, psf.shape)
    (chi2,) = features(psf_stack(img, psf), "psf_chi2_r")
    assert 0.7 < np.median(chi2[:n]) < 1.4
    assert np.median(chi2[n:]) > 10 * np.median(chi2[:n])


def test_psf_features_ignore_sky_offset_and_psf_normalisation():
    rng = np.random.default_rng(6)
    fw = np.array([2.5, 3.5, 4.5, 3.0])
    X = psf_stack(render(fw, [0.0, 1.0, 2.0, 0.5], 400.0) + rng.normal(0, 1, (4, 15, 15)),
                  render(fw))
    shifted = X.copy()
    shifted[:, :5] += 3.0  # a residual sky level
    shifted[:, 5:] *= 2.5  # a PSF not normalised to unit sum
    pf = PhotometricFeatures().fit(X)
    a, b = pf.transform(X), pf.transform(shifted)
    for name in ("spread_model", "size_excess", "psf_aper_ratio", "psf_chi2", "psf_mag"):
        idx = [col(pf, f"{name}_{band}") for band in "ugriz"]
        np.testing.assert_allclose(b[:, idx], a[:, idx], rtol=1e-4, atol=1e-4, err_msg=name)


def test_channel_count_must_match_between_fit_and_transform():
    X = psf_stack(render([3.0, 3.0], 0.0, 10.0), render([3.0, 3.0]))
    with pytest.raises(ValueError, match="fitted on PSF-aware"):
        PhotometricFeatures().fit(X).transform(X[:, :5])
    with pytest.raises(ValueError, match=r"fitted on plain cutouts.*got 10 channels"):
        PhotometricFeatures().fit(X[:, :5]).transform(X)
    with pytest.raises(ValueError, match="band order"):
        PhotometricFeatures().fit(np.zeros((1, 7, 15, 15)))


def test_psf_features_finite_for_degenerate_input():
    rng = np.random.default_rng(9)
    good = psf_stack(render([3.0] * 8, 1.0, 50.0), render([3.0] * 8))
    X = good.copy()
    X[0, 5:] = 0.0  # empty PSF
    X[1, 5:] = np.nan  # missing PSF
    X[2, :5] = rng.normal(0, 1, (5, 15, 15))  # noise only
    X[3, :5] *= -1.0  # negative flux
    X[4, :5] = 0.0  # blank image (no sky scatter)
    X[5, :5, 7, 7] = np.nan  # masked pixels
    X[5, 7:, 0, :] = np.inf
    X[6, 5:] *= -1.0  # negative-sum PSF
    X[7, :5] = 1e30  # absurdly bright, flat
    pf = PhotometricFeatures().fit(good)
    F = pf.transform(X)
    assert F.shape == (8, 72) and np.isfinite(F).all()
    spread = F[:, col(pf, "spread_model_r")]
    assert spread[0] == 0.0 and spread[1] == 0.0 and abs(spread[2]) <= 1.0
