"""Tests for stargal.augment (CutoutAugmenter), its statistics and kernels (_imaging, _transforms)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from imblearn.over_sampling import RandomOverSampler
from imblearn.pipeline import Pipeline
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer

from stargal._imaging import cutout_sky_noise as sky_noise
from stargal._transforms import affine
from stargal.augment import (
    DEFAULT_STRENGTHS,
    TECHNIQUES,
    CutoutAugmenter,
)
from stargal.scale import AsinhScaler

SIZE = 15
C = (SIZE - 1) / 2
SKY = np.array([0.05, 0.02, 0.02, 0.03, 0.08])  # nanomaggies, u g r i z


def gaussian_sources(n, *, sigma=1.5, flux=(10.0, 20.0, 30.0, 40.0, 50.0), noise=None, seed=0):
    """(n, 5, SIZE, SIZE) float32 centred circular Gaussians (total flux per band) + sky noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    prof = np.exp(-((yy - C) ** 2 + (xx - C) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    flux = np.asarray(flux, dtype=np.float64)[None, :, None, None]
    X = flux * prof[None, None] * np.ones((n, 1, 1, 1))
    if noise is not None:
        rng = np.random.default_rng(seed)
        X = X + rng.normal(0.0, 1.0, X.shape) * np.asarray(noise)[None, :, None, None]
    return X.astype(np.float32)


def sky(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0.0, 1.0, (n, 5, SIZE, SIZE)) * SKY[None, :, None, None]).astype(np.float32)


def labels(n, n_pos):
    y = np.zeros(n, dtype=int)
    y[:n_pos] = 1
    return y


def centroid(img):
    """(row, col) first-moment centroid of 2-D images (..., H, W)."""
    yy, xx = np.mgrid[0 : img.shape[-2], 0 : img.shape[-1]]
    tot = img.sum(axis=(-2, -1))
    return (img * yy).sum(axis=(-2, -1)) / tot, (img * xx).sum(axis=(-2, -1)) / tot


def second_moment(img):
    r, c = centroid(img)
    yy, xx = np.mgrid[0 : img.shape[-2], 0 : img.shape[-1]]
    d2 = (yy - r[..., None, None]) ** 2 + (xx - c[..., None, None]) ** 2
    return (img * d2).sum(axis=(-2, -1)) / img.sum(axis=(-2, -1))


def dihedral_images(img):
    """The 8 dihedral transforms of a (..., H, W) array."""
    out = []
    for flip in (False, True):
        base = img[..., ::-1] if flip else img
        out.extend(np.rot90(base, k, axes=(-2, -1)) for k in range(4))
    return out


OFF = dict(dihedral=False, shift=0.0, noise=0.0, zoom=0.0, shear=0.0, blur=0.0)


def single_technique(name, **kw):
    """An augmenter with only ``name`` on (at :data:`DEFAULT_STRENGTHS` unless given in ``kw``)."""
    return CutoutAugmenter(**{**OFF, "seeing": 0.0, name: DEFAULT_STRENGTHS[name], **kw})


# ---------------------------------------------------------------- row layout
@pytest.mark.parametrize("n_copies", [0, 1, 3])
def test_row_counts_and_labels(n_copies):
    X, y = sky(10), labels(10, 4)
    X_res, y_res = CutoutAugmenter(n_copies, random_state=0).fit_resample(X, y)
    assert X_res.shape == (10 * (1 + n_copies), 5, SIZE, SIZE)
    assert X_res.dtype == np.float32
    np.testing.assert_array_equal(y_res, np.tile(y, 1 + n_copies))


def test_originals_first_in_order_and_input_untouched():
    X, y = sky(12), labels(12, 5)
    X_before = X.copy()
    X_res, y_res = CutoutAugmenter(2, random_state=1).fit_resample(X, y)
    np.testing.assert_array_equal(X_res[:12], X)
    np.testing.assert_array_equal(y_res[:12], y)
    np.testing.assert_array_equal(X, X_before)
    assert not np.shares_memory(X_res, X)
    # the copies are actually perturbed
    assert not np.allclose(X_res[12:24], X)


def test_float64_input_gives_float32():
    X = sky(4).astype(np.float64)
    X_res, _ = CutoutAugmenter(random_state=0).fit_resample(X, labels(4, 2))
    assert X_res.dtype == np.float32


def test_deterministic_with_random_state():
    X, y = gaussian_sources(8, noise=SKY), labels(8, 3)
    kw = dict(n_copies=2, zoom=0.1, shear=0.1, blur=0.5)
    a = CutoutAugmenter(random_state=42, **kw).fit_resample(X, y)[0]
    b = CutoutAugmenter(random_state=42, **kw).fit_resample(X, y)[0]
    c = CutoutAugmenter(random_state=43, **kw).fit_resample(X, y)[0]
    d = clone(CutoutAugmenter(random_state=42, **kw)).fit_resample(X, y)[0]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, d)
    assert not np.array_equal(a[8:], c[8:])


def test_techniques_draw_from_independent_streams():
    """Switching noise on must not change the dihedral choice of each copy."""
    X, y = gaussian_sources(20, noise=SKY), labels(20, 10)
    geo = single_technique("dihedral", random_state=5).fit_resample(X, y)[0]
    both = CutoutAugmenter(**{**OFF, "dihedral": True, "noise": 1.0}, random_state=5)
    both = both.fit_resample(X, y)[0]
    diff = (both - geo)[20:]
    measured = sky_noise(X)
    np.testing.assert_allclose(diff.std(axis=(0, 2, 3)), measured, rtol=0.1)


# ------------------------------------------------------------------ dihedral
def test_dihedral_exact_flux_centre_and_same_op_for_all_bands():
    rng = np.random.default_rng(3)
    X = gaussian_sources(40, noise=SKY, seed=3)
    X[:, :, 2, 9] += rng.uniform(1, 3, size=(40, 5)).astype(np.float32)  # an asymmetric neighbour
    y = labels(40, 20)
    X_res, _ = single_technique("dihedral", n_copies=3, random_state=0).fit_resample(X, y)
    copies = X_res[40:].reshape(3, 40, 5, SIZE, SIZE)
    used = set()
    for j in range(3):
        # a pixel permutation: same multiset of pixel values per band, so the flux is exact
        np.testing.assert_array_equal(
            np.sort(copies[j].reshape(40, 5, -1), axis=2), np.sort(X.reshape(40, 5, -1), axis=2)
        )
        np.testing.assert_array_equal(
            copies[j].astype(np.float64).sum(axis=(2, 3)), X.astype(np.float64).sum(axis=(2, 3))
        )
        for i in range(40):
            candidates = enumerate(dihedral_images(X[i]))
            matches = [k for k, t in candidates if np.array_equal(t, copies[j, i])]
            assert matches, "copy is not a dihedral transform of its source (same op on every band)"
            used.add(matches[0])
    assert len(used) == 8  # all 8 group elements occur in 120 draws
    # a centred point source stays centred
    P = gaussian_sources(16)
    aug = single_technique("dihedral", n_copies=2, random_state=0)
    P_res, _ = aug.fit_resample(P, labels(16, 8))
    peak = P_res.reshape(len(P_res), 5, -1).argmax(axis=2)
    assert (peak == int(C) * SIZE + int(C)).all()


# --------------------------------------------------------------------- shift
@pytest.mark.parametrize("d", [(0.3, -0.2), (-0.5, 0.45), (0.0, 0.25)])
def test_affine_shift_moves_centroid_by_d(d):
    X = gaussian_sources(1)
    out = affine(X, np.array([d]), np.ones(1), np.zeros(1), np.zeros(1))
    r, c = centroid(out[0].astype(np.float64))
    np.testing.assert_allclose(r - C, d[0], atol=0.05)
    np.testing.assert_allclose(c - C, d[1], atol=0.05)
    np.testing.assert_allclose(out.sum(axis=(2, 3)), X.sum(axis=(2, 3)), rtol=1e-3)


def test_shift_range_and_identical_across_bands():
    shift = 0.5
    X = gaussian_sources(300)
    aug = single_technique("shift", shift=shift, random_state=0)
    X_res, _ = aug.fit_resample(X, labels(300, 150))
    r, c = centroid(X_res[300:].astype(np.float64))  # (300, 5)
    dr, dc = r - C, c - C
    # the same shift on every band
    assert np.ptp(dr, axis=1).max() < 0.01 and np.ptp(dc, axis=1).max() < 0.01
    for delta in (dr[:, 0], dc[:, 0]):
        assert np.abs(delta).max() <= shift + 0.05
        assert np.abs(delta).max() > 0.9 * shift  # uses the whole range
        np.testing.assert_allclose(delta.std(), shift / np.sqrt(3), rtol=0.15)  # uniform
    assert abs(np.corrcoef(dr[:, 0], dc[:, 0])[0, 1]) < 0.2  # independent axes


# --------------------------------------------------------------------- noise
def test_sky_noise_estimate_is_robust():
    X = sky(300)
    np.testing.assert_allclose(sky_noise(X), SKY, rtol=0.05)
    # bright sources, offsets and some border contamination do not bias it much
    offsets = np.linspace(-0.1, 0.1, 300, dtype=np.float32)[:, None, None, None]
    Y = gaussian_sources(300, noise=SKY) + offsets
    Y[::10, :, 0, :4] += 5.0
    np.testing.assert_allclose(sky_noise(Y), SKY, rtol=0.08)


@pytest.mark.parametrize("level", [1.0, 2.5])
def test_noise_std_matches_sky_noise(level):
    X = gaussian_sources(200, noise=SKY)
    aug = CutoutAugmenter(n_copies=1, **{**OFF, "noise": level}, random_state=0)
    X_res, _ = aug.fit_resample(X, labels(200, 100))
    np.testing.assert_allclose(aug.sky_noise_, SKY, rtol=0.06)
    added = X_res[200:] - X
    np.testing.assert_allclose(added.std(axis=(0, 2, 3)), level * aug.sky_noise_, rtol=0.1)
    np.testing.assert_allclose(added.mean(axis=(0, 2, 3)), 0.0, atol=0.02 * level * SKY.max())


# ----------------------------------------------------- zoom / shear / blur
def test_everything_off_gives_identical_copies():
    X = gaussian_sources(10, noise=SKY)
    X_res, _ = CutoutAugmenter(n_copies=2, **OFF, random_state=0).fit_resample(X, labels(10, 5))
    np.testing.assert_array_equal(X_res[10:20], X)
    np.testing.assert_array_equal(X_res[20:], X)


@pytest.mark.parametrize("name", ["zoom", "shear", "blur", "shift", "noise"])
def test_switching_a_technique_on_changes_copies_off_leaves_dihedral_only(name):
    X = gaussian_sources(10, noise=SKY)
    y = labels(10, 5)
    base = dict(OFF, dihedral=True)
    off = CutoutAugmenter(**base, random_state=0).fit_resample(X, y)[0][10:]
    for i in range(10):
        assert any(np.array_equal(t, off[i]) for t in dihedral_images(X[i]))
    on = CutoutAugmenter(**{**base, name: DEFAULT_STRENGTHS[name]}, random_state=0)
    on = on.fit_resample(X, y)[0][10:]
    for i in range(10):
        assert not any(np.allclose(t, on[i], atol=1e-6) for t in dihedral_images(X[i]))


def test_zoom_scales_size_and_conserves_flux():
    zoom = 0.2
    X = gaussian_sources(200, sigma=1.2)
    X_res, _ = single_technique("zoom", zoom=zoom, random_state=0).fit_resample(X, labels(200, 100))
    copies = X_res[200:].astype(np.float64)
    np.testing.assert_allclose(copies.sum(axis=(2, 3)), X.sum(axis=(2, 3)), rtol=0.01)
    s = np.sqrt(second_moment(copies)[:, 2] / second_moment(X.astype(np.float64))[:, 2])
    assert s.min() >= 1 - zoom - 0.02 and s.max() <= 1 + zoom + 0.02
    assert s.min() < 1 - zoom / 2 and s.max() > 1 + zoom / 2
    r, c = centroid(copies)
    np.testing.assert_allclose(r, C, atol=0.02)
    np.testing.assert_allclose(c, C, atol=0.02)


def test_shear_elongates_keeps_flux_and_centre():
    X = gaussian_sources(100, sigma=1.5)
    X_res, _ = single_technique("shear", shear=0.3, random_state=0).fit_resample(X, labels(100, 50))
    copies = X_res[100:].astype(np.float64)
    np.testing.assert_allclose(copies.sum(axis=(2, 3)), X.sum(axis=(2, 3)), rtol=0.01)
    r, c = centroid(copies)
    np.testing.assert_allclose(r, C, atol=0.02)
    np.testing.assert_allclose(c, C, atol=0.02)
    # ellipticity from second moments: a round source becomes elongated
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] - C
    img = copies[:, 2]
    tot = img.sum(axis=(1, 2))
    q = [(img * a * b).sum(axis=(1, 2)) / tot for a, b in ((xx, xx), (yy, yy), (xx, yy))]
    e = np.hypot(q[0] - q[1], 2 * q[2]) / (q[0] + q[1])
    assert e.max() > 0.1 and np.median(e) > 0.02


def test_blur_widens_and_conserves_flux():
    blur = 1.0
    X = gaussian_sources(100, sigma=1.0)
    X_res, _ = single_technique("blur", blur=blur, random_state=0).fit_resample(X, labels(100, 50))
    copies = X_res[100:].astype(np.float64)
    np.testing.assert_allclose(copies.sum(axis=(2, 3)), X.sum(axis=(2, 3)), rtol=0.01)
    # sigma^2 added per axis
    extra = (second_moment(copies) - second_moment(X.astype(np.float64))) / 2
    assert extra.min() > -1e-3 and extra.max() < blur**2 * 1.02
    assert extra.max() > 0.8 * blur**2
    np.testing.assert_allclose(extra.mean(), blur**2 / 3, rtol=0.15)  # E[U(0, b)^2] = b^2 / 3
    np.testing.assert_allclose(np.ptp(extra, axis=1), 0, atol=1e-3)  # same PSF for all bands


# ------------------------------------------------------------------- balance
def test_balance_true_equalises_classes():
    X, y = gaussian_sources(30, noise=SKY), labels(30, 7)
    X_res, y_res = CutoutAugmenter(n_copies=1, balance=True, random_state=0).fit_resample(X, y)
    counts = np.bincount(y_res)
    assert counts[0] == counts[1] == 2 * 23
    np.testing.assert_array_equal(X_res[:30], X)
    # the extra galaxy rows are augmented (not verbatim duplicates of originals)
    extra = X_res[60:]
    assert (y_res[60:] == 1).all()
    assert not any(np.array_equal(e, x) for e in extra for x in X[:7])
    X0, y0 = CutoutAugmenter(n_copies=0, balance=True, random_state=0).fit_resample(X, y)
    assert np.bincount(y0).tolist() == [23, 23]


@pytest.mark.parametrize("n_copies", [0, 1])
def test_balance_with_imblearn_sampler_on_4d(n_copies):
    X, y = gaussian_sources(30, noise=SKY), labels(30, 7)
    aug = CutoutAugmenter(n_copies=n_copies, balance=RandomOverSampler(), random_state=0)
    X_res, y_res = aug.fit_resample(X, y)
    assert X_res.ndim == 4 and X_res.shape[1:] == (5, SIZE, SIZE) and X_res.dtype == np.float32
    assert np.bincount(y_res).tolist() == [23 * (1 + n_copies)] * 2
    np.testing.assert_array_equal(X_res[:30], X)
    # every sampler-added row is a verbatim copy of a galaxy cutout
    for row in X_res[30:46]:
        assert any(np.array_equal(row, x) for x in X[:7])
    assert aug.balance.random_state is None  # parameter not mutated; fitted clone seeded
    assert aug.sampler_ is not aug.balance and aug.sampler_.random_state is not None
    again = CutoutAugmenter(n_copies=n_copies, balance=RandomOverSampler(), random_state=0)
    again = again.fit_resample(X, y)[0]
    np.testing.assert_array_equal(X_res, again)


def test_balance_smote():
    X, y = gaussian_sources(30, noise=SKY), labels(30, 8)
    X_res, y_res = CutoutAugmenter(n_copies=0, balance="smote", random_state=0).fit_resample(X, y)
    assert X_res.shape == (44, 5, SIZE, SIZE) and np.bincount(y_res).tolist() == [22, 22]


# ------------------------------------------------------------------ pipeline
class RowCounter(ClassifierMixin, BaseEstimator):
    """Tiny real classifier (majority class) that records how many rows it sees."""

    def fit(self, X, y):
        self.fit_rows_ = len(X)
        self.classes_, counts = np.unique(y, return_counts=True)
        self.majority_ = self.classes_[counts.argmax()]
        return self

    def predict(self, X):
        self.predict_rows_ = len(X)
        return np.full(len(X), self.majority_)


def _flatten(X):
    return X.reshape(len(X), -1)


def test_inside_imblearn_pipeline_only_at_fit():
    X, y = gaussian_sources(24, noise=SKY), labels(24, 10)
    pipe = Pipeline([("aug", CutoutAugmenter(n_copies=3, random_state=0)), ("clf", RowCounter())])
    pipe.fit(X, y)
    assert pipe.named_steps["clf"].fit_rows_ == 24 * 4
    assert pipe.named_steps["aug"].sky_noise_.shape == (5,)
    X_test = gaussian_sources(7, noise=SKY, seed=9)
    assert pipe.predict(X_test).shape == (7,)
    assert pipe.named_steps["clf"].predict_rows_ == 7


def test_pipeline_with_scaler_and_real_classifier():
    stars = gaussian_sources(20, sigma=0.8, noise=SKY, seed=1)
    galaxies = gaussian_sources(20, sigma=2.5, noise=SKY, seed=2)
    X = np.concatenate([stars, galaxies])
    y = labels(40, 20)[::-1].copy()  # galaxies (wide) are the second half
    pipe = Pipeline(
        [
            ("aug", CutoutAugmenter(n_copies=1, random_state=0)),
            ("scale", AsinhScaler()),
            ("flat", FunctionTransformer(_flatten)),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    )
    pipe.fit(X, y)
    assert pipe.predict_proba(X).shape == (40, 2)
    assert pipe.score(X, y) > 0.9
    pickle.loads(pickle.dumps(pipe)).predict(X)


# ------------------------------------------------------- clone / pickle / api
def test_clone_pickle_and_sampler_api():
    aug = CutoutAugmenter(n_copies=2, zoom=0.1, balance=RandomOverSampler(), random_state=3)
    assert clone(aug).get_params()["zoom"] == 0.1
    X, y = gaussian_sources(12, noise=SKY), labels(12, 4)
    assert aug.fit(X, y) is aug and aug.sky_noise_.shape == (5,)
    restored = pickle.loads(pickle.dumps(aug))
    np.testing.assert_array_equal(restored.sky_noise_, aug.sky_noise_)
    np.testing.assert_array_equal(restored.fit_resample(X, y)[0], aug.fit_resample(X, y)[0])
    assert not hasattr(aug, "transform")  # a sampler, so imblearn skips it at predict time
    assert aug._sampling_type == "over-sampling"
    from imblearn.base import is_sampler

    assert is_sampler(aug)


def test_label_options_are_validated_against_their_own_values():
    from stargal.augment import NOISE_LABELS, SEEING_BANDS, SEEING_LABELS

    X, y = gaussian_sources(4), labels(4, 2)
    for name, values in (("noise_labels", NOISE_LABELS), ("seeing_labels", SEEING_LABELS),
                         ("seeing_bands", SEEING_BANDS)):
        for value in values:
            CutoutAugmenter(**{name: value}).fit(X, y)
        with pytest.raises(ValueError, match=name):
            CutoutAugmenter(**{name: "independent" if name != "seeing_bands" else "keep"}).fit(X, y)


def test_one_technique_at_a_time():
    for name in TECHNIQUES:
        params = single_technique(name, n_copies=2, random_state=0).get_params()
        assert [t for t in TECHNIQUES if params[t]] == [name] and params["n_copies"] == 2


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "X, y, match",
    [
        (np.zeros((4, 5 * SIZE * SIZE), np.float32), labels(4, 2), "4-D"),
        (np.zeros((4, 5, SIZE), np.float32), labels(4, 2), "4-D"),
        (np.zeros((4, 5, 14, 14), np.float32), labels(4, 2), "odd"),
        (np.zeros((4, 5, 15, 13), np.float32), labels(4, 2), "square"),
        (np.zeros((4, 5, SIZE, SIZE), np.float32), labels(3, 2), "3 labels"),
        (np.zeros((4, 5, SIZE, SIZE), np.float32), np.array([0, 1, 2, 1]), "binary"),
        (np.zeros((4, 5, SIZE, SIZE), np.float32), np.array([0.5, 1.0, 0.2, 0.1]), "binary"),
        (np.zeros((4, 5, SIZE, SIZE), np.float32), np.zeros((4, 2)), "1-D"),
        (np.full((4, 5, SIZE, SIZE), "a"), labels(4, 2), "real numbers"),
        (np.zeros((0, 5, SIZE, SIZE), np.float32), labels(0, 0), "0 cutouts"),
    ],
)
def test_bad_input_raises(X, y, match):
    with pytest.raises(ValueError, match=match):
        CutoutAugmenter().fit_resample(X, y)


def test_nan_rows_are_named():
    X = sky(6)
    X[4, 2, 3, 3] = np.nan
    X[5, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 of 6 cutouts .*rows \[4, 5\]"):
        CutoutAugmenter().fit_resample(X, labels(6, 3))


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(n_copies=-1), "n_copies"),
        (dict(n_copies=1.5), "n_copies"),
        (dict(shift=-0.1), "shift"),
        (dict(noise=float("nan")), "noise"),
        (dict(zoom=1.0), "zoom"),
        (dict(blur="big"), "blur"),
        (dict(dihedral="yes"), "dihedral"),
        (dict(balance="adasyn"), "balance"),
    ],
)
def test_bad_params_raise_at_fit(params, match):
    aug = CutoutAugmenter(**params)  # __init__ only stores
    with pytest.raises(ValueError, match=match):
        aug.fit_resample(sky(4), labels(4, 2))


@pytest.mark.parametrize("balance", [False, True, "smote"])
def test_sample_indices_point_to_source_rows(balance):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 5, 9, 9)).astype(np.float32)
    y = np.r_[np.zeros(22, int), np.ones(8, int)]
    aug = CutoutAugmenter(n_copies=2, balance=balance, noise=0.0, shift=0.0, dihedral=False,
                          random_state=0)
    Xr, yr = aug.fit_resample(X, y)
    idx = aug.sample_indices_
    assert idx.shape == (len(Xr),) and idx.min() >= 0 and idx.max() < len(X)
    np.testing.assert_array_equal(yr, y[idx])  # every row keeps its source's label
    if balance != "smote":
        # with no perturbation switched on, copies equal their source row exactly
        np.testing.assert_array_equal(Xr, X[idx])


# ------------------------------------------------- PSF-aware cutouts, seeing
from stargal._imaging import FWHM_PER_SIGMA  # noqa: E402
from stargal._imaging import moment_fwhm as _moment_fwhm  # noqa: E402
from stargal._imaging import psf_channels_moment_fwhm as psf_fwhm  # noqa: E402
from stargal._transforms import (  # noqa: E402
    convolve_zero as _convolve_zero,
    discrete_gaussian as _discrete_gaussian,
    noise_variance_factor as _noise_variance_factor,
)
from stargal.sdss import PIXEL_SCALE_ARCSEC as PIXEL_SCALE  # noqa: E402

PSF_FWHM = 3.0  # pixels (1.19")


def gaussian_psf(fwhm=PSF_FWHM, size=SIZE):
    """Unit-sum round Gaussian sampled at pixel centres, centred on the central pixel."""
    s = fwhm / FWHM_PER_SIGMA
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    p = np.exp(-(xx**2 + yy**2) / (2 * s**2))
    return p / p.sum()


def psf_stars(n, *, fwhm=PSF_FWHM, flux=(10.0, 20.0, 30.0, 40.0, 50.0), noise=SKY, seed=0):
    """PSF-aware stack (n, 10, SIZE, SIZE): stars = PSF x flux (+ sky noise), then the unit PSFs."""
    p = gaussian_psf(fwhm)
    img = np.asarray(flux, np.float64)[None, :, None, None] * p * np.ones((n, 1, 1, 1))
    if noise is not None:
        rng = np.random.default_rng(seed)
        img = img + rng.normal(0.0, 1.0, img.shape) * np.asarray(noise)[None, :, None, None]
    psf = np.broadcast_to(p, (n, 5, SIZE, SIZE))
    return np.concatenate([img, psf], axis=1).astype(np.float32)


SEEING_ONLY = dict(OFF, seeing=2.0)


def test_stream_draws_of_existing_techniques_are_pinned():
    """Adding techniques (streams appended at the end) must not change any existing draw.

    The numbers were recorded from the code before ``seeing`` was added."""
    streams = CutoutAugmenter(random_state=0)._streams()
    expected = {"dihedral": [451, 652, 250, 233], "shift": [798, 346, 733, 353],
                "affine": [641, 961, 430, 902], "blur": [259, 357, 147, 592],
                "noise": [67, 547, 39, 131], "balance": [725, 649, 879, 485],
                "sampler": [342, 212, 309, 356]}
    for name, draws in expected.items():
        assert streams[name].integers(0, 1000, 4).tolist() == draws, name
    assert list(streams)[-1] == "seeing"


def test_psf_fwhm_measures_second_moment_fwhm():
    X = psf_stars(2, fwhm=3.0, noise=None)
    np.testing.assert_allclose(psf_fwhm(X), 3.0 * PIXEL_SCALE, rtol=1e-3)
    np.testing.assert_allclose(_moment_fwhm(gaussian_psf(5.0)), 5.0, rtol=5e-3)
    with pytest.raises(ValueError, match=r"Cutter\(psf=True\)"):
        psf_fwhm(sky(2))


def test_seeing_broadens_image_and_psf_alike_within_range():
    n, top = 300, 2.0
    X = psf_stars(n, flux=(1e4,) * 5, seed=1)  # bright: image moments barely affected by noise
    aug = CutoutAugmenter(**SEEING_ONLY, random_state=0)
    X_res, y_res = aug.fit_resample(X, labels(n, n // 2))
    assert X_res.shape == (2 * n, 10, SIZE, SIZE) and X_res.dtype == np.float32
    np.testing.assert_array_equal(X_res[:n], X)
    copies = X_res[n:].astype(np.float64)
    current = PSF_FWHM * PIXEL_SCALE
    fw = psf_fwhm(X_res[n:])  # (n, 5) arcsec
    r = fw[:, 2]
    # the r PSF lands in [current, seeing] and the draws cover that range uniformly
    assert r.min() >= current - 1e-3 and r.max() <= top + 1e-3
    width = top - current
    assert r.min() < current + 0.05 * width and r.max() > top - 0.05 * width
    np.testing.assert_allclose(r.mean(), (current + top) / 2, rtol=0.03)
    np.testing.assert_allclose(r.std(), width / np.sqrt(12), rtol=0.12)
    # each copy reaches its own target F1 = F0 + u (max - F0), u the seeing stream's first draws
    u = aug._streams()["seeing"].uniform(0.0, 1.0, size=n)
    np.testing.assert_allclose(r, current + u * width, rtol=0.01)
    # consistency: the star in the image is as broad as the PSF channel, in every band
    # (sky level 0: no sky subtraction, which would clip the broadened wings)
    star = _moment_fwhm(copies[:, :5]) * PIXEL_SCALE
    np.testing.assert_allclose(star, fw, rtol=0.01)
    # the same kernel in every band: second moments grow by the same sigma_k^2
    m2 = (fw / PIXEL_SCALE / FWHM_PER_SIGMA) ** 2
    np.testing.assert_allclose(m2 - m2[:, 2:3], 0.0, atol=1e-3)
    # PSF channels keep unit sum; image flux conserved
    np.testing.assert_allclose(copies[:, 5:].sum(axis=(2, 3)), 1.0, atol=1e-5)
    np.testing.assert_allclose(copies[:, :5].sum(axis=(2, 3)), X[:, :5].sum(axis=(2, 3)),
                               rtol=0.01)


def test_seeing_bands_independent_broadens_each_band_to_its_own_target():
    n, top = 300, 2.0
    X = psf_stars(n, flux=(1e4,) * 5, seed=2)
    aug = CutoutAugmenter(**SEEING_ONLY, seeing_bands="independent", random_state=0)
    X_res, _ = aug.fit_resample(X, labels(n, n // 2))
    np.testing.assert_array_equal(X_res[:n], X)
    copies = X_res[n:].astype(np.float64)
    current = PSF_FWHM * PIXEL_SCALE
    fw = psf_fwhm(X_res[n:])  # (n, 5) arcsec
    # each band's target is F0 + u_b (max - F0), with its own draw u_b (one row of 5 per copy)
    u = aug._streams()["seeing"].uniform(0.0, 1.0, size=(n, 5))
    np.testing.assert_allclose(fw, current + u * (top - current), rtol=0.01)
    # the bands are broadened independently: their FWHMs are uncorrelated across copies
    corr = np.corrcoef(fw.T)[np.triu_indices(5, 1)]
    assert np.abs(corr).max() < 0.25
    # image and PSF still get the same kernel in every band
    star = _moment_fwhm(copies[:, :5]) * PIXEL_SCALE
    np.testing.assert_allclose(star, fw, rtol=0.01)
    np.testing.assert_allclose(copies[:, 5:].sum(axis=(2, 3)), 1.0, atol=1e-5)
    # sky noise restored band by band
    Xn = psf_stars(n, seed=6)
    Xn_res, _ = CutoutAugmenter(**SEEING_ONLY, seeing_bands="independent",
                                random_state=1).fit_resample(Xn, labels(n, n // 2))
    np.testing.assert_allclose(sky_noise(Xn_res[n:, :5]), sky_noise(Xn[:, :5]), rtol=0.1)


def test_seeing_bands_same_is_the_default_and_bad_value_is_an_error():
    X = psf_stars(20, seed=3)
    a = CutoutAugmenter(**SEEING_ONLY, random_state=0).fit_resample(X, labels(20, 10))[0]
    b = CutoutAugmenter(**SEEING_ONLY, seeing_bands="same", random_state=0).fit_resample(X, labels(20, 10))[0]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="seeing_bands must be one of"):
        CutoutAugmenter(**SEEING_ONLY, seeing_bands="each").fit_resample(X, labels(20, 10))


def test_seeing_noise_free_star_stays_flux_times_psf():
    X = psf_stars(40, noise=None)
    X_res, _ = single_technique("seeing", random_state=3).fit_resample(X, labels(40, 20))
    copies = X_res[40:].astype(np.float64)
    assert (psf_fwhm(X_res[40:])[:, 2] > PSF_FWHM * PIXEL_SCALE + 0.01).mean() > 0.8  # broadened
    flux_in = X[:, :5].astype(np.float64).sum(axis=(2, 3))
    flux_out = copies[:, :5].sum(axis=(2, 3))
    np.testing.assert_allclose(flux_out, flux_in, rtol=0.01)
    # sky_noise_ is 0, so no noise was added: the image is exactly its flux times the new PSF
    np.testing.assert_allclose(copies[:, :5], flux_out[:, :, None, None] * copies[:, 5:],
                               atol=1e-5 * 50)


def test_seeing_restores_sky_noise():
    n = 400
    X = psf_stars(n, seed=4)  # faint stars: their broadened wings stay far below the sky noise
    aug = single_technique("seeing", seeing=2.0, random_state=1)
    X_res, _ = aug.fit_resample(X, labels(n, n // 2))
    before, after = sky_noise(X[:, :5]), sky_noise(X_res[n:, :5])
    np.testing.assert_allclose(after, before, rtol=0.1)
    # pixel by pixel (centre, edges and corners): restoration accounts for the stamp edges
    blank = psf_stars(n, flux=(0.0,) * 5, seed=5)
    B_res, _ = aug.fit_resample(blank, labels(n, n // 2))
    ratio = B_res[n:, :5].std(axis=0) / blank[:, :5].std(axis=0)  # (5, H, W)
    np.testing.assert_allclose(ratio.mean(axis=(1, 2)), 1.0, atol=0.04)
    inner = ratio[:, 2:-2, 2:-2].mean()
    edges = np.concatenate([ratio[:, 0, 1:-1], ratio[:, -1, 1:-1], ratio[:, 1:-1, 0],
                            ratio[:, 1:-1, -1]], axis=1).mean()
    corners = ratio[:, [0, 0, -1, -1], [0, -1, 0, -1]].mean()
    # (edge-replicating padding would give edges +4 %, corners +10 %)
    assert abs(edges - inner) < 0.02 and abs(corners - inner) < 0.04
    # a little pixel-to-pixel correlation remains (the smoothed original noise; documented)
    a, b = B_res[n:, :5, :, :-1].ravel(), B_res[n:, :5, :, 1:].ravel()
    assert 0.01 < np.corrcoef(a, b)[0, 1] < 0.3
    a, b = blank[:, :5, :, :-1].ravel(), blank[:, :5, :, 1:].ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01


def test_seeing_leaves_broader_psfs_alone():
    X = psf_stars(10, fwhm=6.0)  # 2.38" > seeing
    X_res, _ = single_technique("seeing", seeing=2.0, random_state=0).fit_resample(X, labels(10, 5))
    np.testing.assert_array_equal(X_res[10:], X)


def test_seeing_needs_psf_aware_cutouts():
    aug = single_technique("seeing")
    with pytest.raises(ValueError, match=r"PSF-aware.*Cutter\(psf=True\)"):
        aug.fit_resample(gaussian_sources(4, noise=SKY), labels(4, 2))
    with pytest.raises(ValueError, match=r"Cutter\(psf=True\)"):
        aug.fit(gaussian_sources(4, noise=SKY), labels(4, 2))
    X = psf_stars(4)
    X[2, 5:] = 0.0  # no PSF in this row
    with pytest.raises(ValueError, match=r"r-band PSF.*rows \[2\]"):
        aug.fit_resample(X, labels(4, 2))
    with pytest.raises(ValueError, match="seeing"):
        CutoutAugmenter(seeing=-1.0).fit_resample(psf_stars(4), labels(4, 2))
    # seeing off: 5-channel input works as before
    CutoutAugmenter(random_state=0).fit_resample(gaussian_sources(4, noise=SKY), labels(4, 2))


def test_noise_goes_to_image_channels_only_on_psf_aware_input():
    n = 200
    X = psf_stars(n, seed=6)
    aug = single_technique("noise", noise=1.0, random_state=0)
    X_res, _ = aug.fit_resample(X, labels(n, n // 2))
    assert aug.psf_aware_ and aug.sky_noise_.shape == (10,)
    np.testing.assert_array_equal(aug.sky_noise_[5:], 0.0)
    np.testing.assert_allclose(aug.sky_noise_[:5], SKY, rtol=0.06)
    np.testing.assert_array_equal(X_res[n:, 5:], X[:, 5:])
    added = X_res[n:, :5] - X[:, :5]
    np.testing.assert_allclose(added.std(axis=(0, 2, 3)), aug.sky_noise_[:5], rtol=0.1)
    # 5-channel input keeps its 5-entry sky_noise_
    aug5 = CutoutAugmenter(random_state=0).fit(gaussian_sources(8, noise=SKY), labels(8, 4))
    assert not aug5.psf_aware_ and aug5.sky_noise_.shape == (5,)


def test_blur_on_psf_aware_input_blurs_psf_too():
    X = psf_stars(100, flux=(1e4,) * 5, seed=7)
    X_res, _ = single_technique("blur", blur=1.0, random_state=0).fit_resample(X, labels(100, 50))
    copies = X_res[100:].astype(np.float64)
    np.testing.assert_allclose(copies[:, 5:].sum(axis=(2, 3)), 1.0, atol=1e-5)
    psf_m = second_moment(copies[:, 5:]) - second_moment(X[:, 5:].astype(np.float64))
    star_m = second_moment(copies[:, :5]) - second_moment(X[:, :5].astype(np.float64))
    assert psf_m.max() > 0.8 * 2 * 1.0**2
    np.testing.assert_allclose(star_m, psf_m, atol=0.03)


def test_dihedral_and_shift_move_psf_with_image():
    X = psf_stars(30, noise=None)
    X[:, :, 2, 9] += 1.0  # asymmetric, in images and PSFs
    X_res, _ = CutoutAugmenter(**{**OFF, "dihedral": True}, random_state=0).fit_resample(
        X, labels(30, 15))
    for i in range(30):
        assert any(np.array_equal(t, X_res[30 + i]) for t in dihedral_images(X[i]))
    S_res, _ = single_technique("shift", shift=0.5, random_state=0).fit_resample(
        psf_stars(30, noise=None), labels(30, 15))
    r, c = centroid(S_res[30:].astype(np.float64))  # (30, 10)
    assert np.ptp(r, axis=1).max() < 0.01 and np.ptp(c, axis=1).max() < 0.01


def test_switching_seeing_on_does_not_change_other_draws():
    n = 20
    X = psf_stars(n, seed=8)
    y = labels(n, 10)

    def run(**on):
        return CutoutAugmenter(n_copies=2, **{**OFF, **on}, random_state=11).fit_resample(X, y)[0]

    seeing = run(seeing=2.0)
    # noise is added last: (noise + seeing) - seeing == (noise alone) - X, the same draws
    noise_and_seeing, noise_only = run(seeing=2.0, noise=1.0), run(noise=1.0)
    np.testing.assert_allclose(noise_and_seeing - seeing, noise_only - np.tile(X, (3, 1, 1, 1)),
                               atol=1e-6)
    # seeing (a round kernel) commutes with the dihedral op, which keeps its draw
    dihedral_only, both = run(dihedral=True), run(dihedral=True, seeing=2.0)
    src = np.tile(X, (2, 1, 1, 1))
    for j in range(2 * n):
        images = dihedral_images(src[j])
        k = next(k for k, t in enumerate(images) if np.array_equal(t, dihedral_only[n + j]))
        np.testing.assert_array_equal(dihedral_images(seeing[n + j])[k], both[n + j])
    # and shift/zoom/shear draws are unchanged: with seeing off the copies are identical
    kw = dict(shift=0.5, zoom=0.1, shear=0.1, blur=0.5, dihedral=True, noise=1.0)
    np.testing.assert_array_equal(run(**kw), run(**kw, seeing=0.0))


def test_all_techniques_on_psf_aware_input():
    n = 30
    X = psf_stars(n, seed=9)
    aug = CutoutAugmenter(n_copies=2, shift=0.5, zoom=0.1, shear=0.1, blur=0.5, noise=1.0,
                          seeing=2.0, balance=True, random_state=0)
    X_res, y_res = aug.fit_resample(X, labels(n, 8))
    assert X_res.shape[1:] == (10, SIZE, SIZE) and np.isfinite(X_res).all()
    assert np.bincount(y_res).tolist() == [22 * 3, 22 * 3]
    r = psf_fwhm(X_res[n:])[:, 2]
    assert r.max() <= 2.0 * 1.1 + 0.05  # zoom may add up to 10 % after the seeing target
    np.testing.assert_allclose(X_res[n:, 5:].sum(axis=(2, 3)), 1.0, atol=0.02)
    again = CutoutAugmenter(**aug.get_params()).fit_resample(X, labels(n, 8))[0]
    np.testing.assert_array_equal(X_res, again)


def test_smote_and_seeing_on_psf_aware_input_keep_unit_psfs():
    X = np.concatenate([psf_stars(12, fwhm=3.0, seed=10), psf_stars(6, fwhm=3.6, seed=11)])
    aug = CutoutAugmenter(n_copies=1, **{**OFF, "seeing": 2.0}, balance="smote", random_state=0)
    X_res, y_res = aug.fit_resample(X, labels(18, 6))
    assert X_res.shape == (2 * 24, 10, SIZE, SIZE) and np.bincount(y_res).tolist() == [24, 24]
    np.testing.assert_allclose(X_res[:, 5:].sum(axis=(2, 3)), 1.0, atol=1e-5)
    assert (psf_fwhm(X_res)[:, 2] <= 2.0 + 1e-3).all()


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5])
def test_noise_variance_factor_is_exact_including_edges(sigma):
    """f^2 map = sum of squared weights of the linear map _convolve_zero, pixel by pixel."""
    kernel = _discrete_gaussian(sigma)
    n = SIZE * SIZE
    deltas = np.eye(n).reshape(n, SIZE, SIZE)  # every input pixel's unit impulse
    weights = _convolve_zero(deltas, kernel)  # (input pixel, out row, out col)
    exact = (weights**2).sum(axis=0)
    f2 = _noise_variance_factor(kernel, SIZE, SIZE)
    np.testing.assert_allclose(f2, exact, rtol=1e-10)
    # interior: f = sum_i k_i^2 (the 1-D kernel's sum of squares), the noise sigma factor
    rtol = 1e-10 if 4 * sigma + 1 <= C else 1e-3  # the kernel may overhang even the centre
    np.testing.assert_allclose(np.sqrt(f2[7, 7]), np.sum(kernel**2), rtol=rtol)
    assert f2[0, 0] < f2[0, 7] < f2[7, 7] + 1e-15


def _gaussian_galaxies(widths, fwhm=PSF_FWHM):
    """PSF-aware stack: round Gaussians of the given FWHMs (px, PSF included), noise-free."""
    img = np.stack([gaussian_psf(w) for w in widths])[:, None] * 1e3 * np.ones((1, 5, 1, 1))
    psf = np.broadcast_to(gaussian_psf(fwhm), (len(widths), 5, SIZE, SIZE))
    return np.concatenate([img, psf], axis=1).astype(np.float32)


def test_point_source_ratio_is_one_for_stars_and_lower_for_broader_sources():
    from stargal._imaging import point_source_ratio

    stars = psf_stars(3, noise=None)
    np.testing.assert_allclose(point_source_ratio(stars), 1.0, rtol=1e-5)
    r = point_source_ratio(_gaussian_galaxies([3.0, 3.5, 4.5, 6.0]))
    assert r[0] == pytest.approx(1.0, rel=1e-5) and np.all(np.diff(r) < 0)
    with pytest.raises(ValueError, match=r"PSF-aware"):
        point_source_ratio(sky(2))


def test_seeing_labels_consistent_drops_galaxy_copies_turned_point_like():
    from stargal._imaging import point_source_ratio
    from stargal.augment import SDSS_TYPE_RATIO

    # galaxies from barely to clearly broader than the PSF, and as many stars
    widths = np.linspace(3.2, 7.0, 40)
    X = np.concatenate([_gaussian_galaxies(widths), psf_stars(40, noise=None)])
    y = np.r_[np.ones(40, int), np.zeros(40, int)]
    keep = CutoutAugmenter(**SEEING_ONLY, seeing_labels="keep", random_state=0)
    Xk, yk = keep.fit_resample(X, y)
    assert len(Xk) == 160 and keep.n_seeing_dropped_ == 0
    cons = CutoutAugmenter(**SEEING_ONLY, random_state=0)  # 'consistent' is the default
    Xc, yc = cons.fit_resample(X, y)
    # the same draws: the kept copies are exactly keep's copies minus the flipped galaxies
    before, after = point_source_ratio(X), point_source_ratio(Xk[80:])
    flipped = (y == 1) & (before < SDSS_TYPE_RATIO) & (after >= SDSS_TYPE_RATIO)
    assert 0 < flipped.sum() < 40  # the test covers both outcomes
    assert cons.n_seeing_dropped_ == flipped.sum()
    np.testing.assert_array_equal(Xc[80:], Xk[80:][~flipped])
    np.testing.assert_array_equal(yc, np.r_[y, y[~flipped]])
    np.testing.assert_array_equal(cons.sample_indices_, np.r_[np.arange(80), np.arange(80)[~flipped]])
    # stars' copies are never dropped; what is kept is still extended (or was never extended)
    assert (yc[80:] == 0).sum() == 40
    kept_gal = Xc[80:][yc[80:] == 1]
    src = cons.sample_indices_[80:][yc[80:] == 1]
    assert np.all((point_source_ratio(kept_gal) < SDSS_TYPE_RATIO) | (before[src] >= SDSS_TYPE_RATIO))


def test_noise_labels_consistent_drops_galaxy_copies_the_noise_makes_point_like():
    from stargal._imaging import point_source_ratio
    from stargal.augment import SDSS_TYPE_RATIO

    noise_only = dict(OFF, noise=3.0)
    widths = np.linspace(3.2, 7.0, 40)
    gal = _gaussian_galaxies(widths)
    gal[:, :5] *= 0.0005  # faint: 0.5 nanomaggies, S/N ~ 20 in a 3-px aperture before the noise
    stars = psf_stars(40, flux=(0.2,) * 5, noise=None)
    X = np.concatenate([gal, stars]).astype(np.float32)
    X[:, :5] += np.random.default_rng(0).normal(0, 0.005, X[:, :5].shape).astype(np.float32)
    y = np.r_[np.ones(40, int), np.zeros(40, int)]
    keep = CutoutAugmenter(**noise_only, random_state=0)  # 'keep' is the default
    Xk, yk = keep.fit_resample(X, y)
    assert len(Xk) == 160 and keep.n_noise_dropped_ == 0
    cons = CutoutAugmenter(**noise_only, noise_labels="consistent", random_state=0)
    Xc, yc = cons.fit_resample(X, y)
    before, after = point_source_ratio(X), point_source_ratio(Xk[80:])
    flipped = (y == 1) & (before < SDSS_TYPE_RATIO) & (after >= SDSS_TYPE_RATIO)
    assert 0 < flipped.sum() < 40
    assert cons.n_noise_dropped_ == flipped.sum() and cons.n_seeing_dropped_ == 0
    np.testing.assert_array_equal(Xc[80:], Xk[80:][~flipped])  # the same draws, fewer rows
    np.testing.assert_array_equal(yc, np.r_[y, y[~flipped]])
    np.testing.assert_array_equal(cons.sample_indices_, np.r_[np.arange(80), np.arange(80)[~flipped]])
    assert (yc[80:] == 0).sum() == 40  # stars' copies are never dropped
    # 5-channel input has no PSF to apply the rule with: every copy is kept
    five = CutoutAugmenter(**noise_only, noise_labels="consistent", random_state=0)
    assert len(five.fit_resample(X[:, :5], y)[0]) == 160 and five.n_noise_dropped_ == 0
    with pytest.raises(ValueError, match="noise_labels must be one of"):
        CutoutAugmenter(**noise_only, noise_labels="maybe").fit_resample(X, y)


def test_seeing_labels_bad_value():
    with pytest.raises(ValueError, match="seeing_labels must be one of"):
        CutoutAugmenter(**SEEING_ONLY, seeing_labels="relabel").fit_resample(psf_stars(4), labels(4, 2))
