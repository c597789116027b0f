"""Model-fit photometry (stargal.photo), the type rule (stargal.rule) and the measured features.

Unit tests use a synthetic field drawn with GalSim (stars, exponential and de Vaucouleurs
galaxies with a known PSF, flux and size; a real noise model); the integration test compares our
``psfMag - cModelMag`` with the mirror catalog's own measurement on a training field (a check of
the measurement, never a feature).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from stargal.align import Aligner
from stargal.calibration import calibrate_pipeline
from stargal.features import MeasuredFeatures
from stargal.models import make_rule_pipeline
from stargal.photo import (BAND_COLUMNS, OBJECT_COLUMNS, SDSSPhotometry, _Bank, measurement_columns,
                           profile_transform, type_statistic)
from stargal.rule import SDSSTypeRule
from stargal.sdss import BANDS

from conftest import MIRROR_DIR
from synthetic import make_photo_sas

TARGETS = [
    dict(x=100, y=100, kind="star", flux=20.0),                                  # 0 bright star
    dict(x=200, y=100, kind="exp", flux=20.0, hlr=3.0, q=0.6, beta=30),          # 1 exponential galaxy
    dict(x=300, y=100, kind="dev", flux=20.0, hlr=2.0, q=0.8, beta=0),           # 2 de Vaucouleurs galaxy
    dict(x=100, y=200, kind="star", flux=3.0),                                   # 3 fainter star
    dict(x=200, y=200, kind="exp", flux=3.0, hlr=2.0, q=0.9, beta=0),            # 4 fainter galaxy
    dict(x=300, y=200, kind="star", flux=3000.0, saturate=True),                 # 5 saturated core
    dict(x=400, y=200, kind="star", flux=5.0),                                   # 6 star beside ...
    dict(x=406, y=200, kind="star", flux=20.0),                                  # 7 ... a brighter one
    dict(x=150, y=290, kind="exp", flux=0.01, hlr=1.0, q=1.0, beta=0),           # 8 nothing to see
    dict(x=250, y=290, kind="exp", flux=30.0, hlr=1.2, q=0.7, beta=60),          # 9 compact galaxy
]


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    root = tmp_path_factory.mktemp("photo-sas")
    info = make_photo_sas(root, targets=TARGETS, seed=1)
    kw = dict(sas_url=info["sas_url"], cache_dir=str(root / "cache"))
    aligner = Aligner(fields=[info["fid"]], policy="flag", **kw)
    table = aligner.fit_transform(info["targets"][["ra", "dec"]])
    table.index = pd.Index([f"obj{i}" for i in range(len(table))])
    phot = SDSSPhotometry(**kw).fit(table)
    return {"info": info, "kw": kw, "table": table, "result": phot.transform(table), "phot": phot}


def test_profile_transform_is_normalised_and_matches_the_exponential():
    kappa, F = profile_transform("exp")
    assert F[0] == 1.0 and np.all(np.isfinite(F))
    small = kappa < 0.3  # the truncation beyond 3 r_e barely changes the core of the transform
    analytic = (1 + (2 * np.pi * kappa[small] / 1.67835) ** 2) ** -1.5
    assert np.abs(F[small] - analytic).max() < 0.03
    kd, Fd = profile_transform("dev")
    assert Fd[0] == 1.0 and Fd[np.searchsorted(kd, 5.0)] > F[np.searchsorted(kappa, 5.0)]  # deV: a cusp
    with pytest.raises(ValueError, match="'exp' or 'dev'"):
        profile_transform("sersic")


def test_the_smallest_template_is_the_psf():
    yy, xx = np.mgrid[:25, :25] - 12
    psf = np.exp(-(xx ** 2 + yy ** 2) / (2 * 1.5 ** 2))
    bank = _Bank((psf / psf.sum())[None], 31)
    point = np.empty(31 * 31)
    point[bank.order] = bank.T["exp"][0, 0]  # the bank keeps its pixels in order of radius
    point = point.reshape(31, 31)[3:28, 3:28]
    np.testing.assert_allclose(point, psf / psf.sum(), atol=2e-4)
    assert abs(bank.T["dev"][-1, 0].sum() - 1.0) > 0.05  # the broadest template is cut by the stamp


def test_output_has_one_row_per_input_row_with_its_index(field):
    res, table = field["result"], field["table"]
    assert list(res.index) == list(table.index)
    assert list(res.columns) == measurement_columns()
    assert len(measurement_columns()) == len(BANDS) * (len(BAND_COLUMNS) + 1) + len(OBJECT_COLUMNS)


def test_stars_are_point_like_and_galaxies_extended(field):
    res = field["result"]
    stat = res["type_stat"].to_numpy()
    for i in (0, 6, 7):  # bright stars, also one beside a brighter neighbour 6 px away
        assert abs(stat[i]) < 0.05, (i, stat[i])
    for i in (1, 2):
        assert stat[i] > 0.4, (i, stat[i])
    assert stat[9] > 0.19 and stat[4] > 0.19  # a compact (hlr 0.8 x the PSF's sigma) and a faint galaxy
    assert res["fit_flag"].iloc[[0, 1, 2, 6, 7, 9]].eq("").all()


def test_numba_kernels_measure_what_the_numpy_path_measures(field, monkeypatch):
    """The compiled kernels (detection map, neighbour mask, pixel sums, masked templates) and the
    numpy fallback agree on every measurement of the synthetic field, neighbours and masks included."""
    import stargal.photo as photo

    if not photo.numba_available():
        pytest.skip("numba is not installed")
    photo._ROWS.clear()
    fast = field["phot"].transform(field["table"])
    photo._ROWS.clear()
    monkeypatch.setattr(photo, "numba_available", lambda: False)
    slow = field["phot"].transform(field["table"])
    photo._ROWS.clear()
    assert fast["fit_flag"].tolist() == slow["fit_flag"].tolist()
    num = [c for c in fast.columns if fast[c].dtype.kind == "f"]
    np.testing.assert_allclose(fast[num].to_numpy(float), slow[num].to_numpy(float), rtol=1e-4, atol=1e-7)
    assert np.isfinite(fast["type_stat"].to_numpy(float)).sum() >= 7


def test_template_choice_kernels_repeat_numpys_arithmetic_to_the_last_bit(monkeypatch):
    """The best template per object (least chi^2, its ln r_e parabola) and the radius-ordered pixels
    with their masked-pixel lists: the numba kernels give numpy's values bit for bit, on the edge
    cases too -- every template excluded, A <= 0, a NaN chi^2, the grid's ends, a masked disc."""
    import stargal.photo as photo

    if not photo.numba_available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(3)
    bank = _Bank(np.ones((1, 3, 3)) / 9.0, 11)
    n, K = 40, len(bank.re)
    A = rng.uniform(0.5, 2.0, (n, K))
    b = rng.normal(0.0, 3.0, (n, K))
    dd, sigma = rng.uniform(5.0, 50.0, n), rng.uniform(0.5, 2.0, n)
    cap = rng.uniform(0.01, 80.0, n)
    A[0] = 0.0                                   # no template usable: chi^2 all inf
    A[1, ::3] = -1.0                             # some excluded by A <= 0
    b[2, 5] = np.nan                             # a NaN chi^2: numpy's argmin takes it
    b[3] = -np.abs(b[3]) * np.arange(K)          # best at the broadest template (grid's end)
    b[4] = np.abs(b[4]) * (np.arange(K) == 0)    # best at the smallest
    fast = photo._best_template(b, A, dd, sigma, cap, bank)
    monkeypatch.setattr(photo, "numba_available", lambda: False)
    slow = photo._best_template(b, A, dd, sigma, cap, bank)
    for f, s in zip(fast, slow):
        np.testing.assert_array_equal(f, s)
    monkeypatch.undo()

    size = 11
    order = bank.order[:96]
    r1 = bank.rr[order]
    d = rng.normal(0.0, 1.0, (n, size, size)).astype(np.float32)
    usable = rng.random((n, size, size)) > 0.2
    usable[:5] = True                            # nothing masked
    usable[5:9] = rng.random((4, size, size)) > 0.9  # most of the disc masked: the unmasked ones are listed
    d = np.where(usable, d, 0.0).astype(np.float32)
    radius = np.asarray(photo._RADIUS_CLASSES)[rng.integers(0, 2, n)]
    fast = photo._ordered_pixels(d, usable, order, r1, radius)
    monkeypatch.setattr(photo, "numba_available", lambda: False)
    slow = photo._ordered_pixels(d, usable, order, r1, radius)
    for f, s in zip(fast[:3], slow[:3]):
        np.testing.assert_array_equal(f, s)
    for f, s in zip(fast[3], slow[3]):
        np.testing.assert_array_equal(f, s)
    assert fast[3][3].any() and not fast[3][3].all()


def test_neighbour_masks_from_the_kernel_and_from_numpy_agree(monkeypatch):
    """Basins, prominence and neighbour footprints on realistic maps (peaks, plateaus, edges)."""
    import stargal.photo as photo

    if not photo.numba_available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(3)
    stamps = rng.normal(size=(200, 5, 31, 31))
    yy, xx = np.mgrid[:31, :31]
    for i in range(200):
        for _ in range(rng.integers(1, 5)):
            y0, x0 = rng.uniform(-3, 34, 2)
            stamps[i] += rng.uniform(5, 200) * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * rng.uniform(1, 4) ** 2))
    stamps[3, :, 10:14, 10:14] = 50.0  # a plateau: equal neighbours
    stamps[5, 2, 4, 5] = np.nan
    stamps[7] = np.nan
    sigma = rng.uniform(0.5, 2.0, size=(200, 5))
    snr = photo._detection_snr(stamps, sigma)
    mask = photo._neighbour_mask(snr)
    monkeypatch.setattr(photo, "numba_available", lambda: False)
    snr_np = photo._detection_snr(stamps, sigma)
    np.testing.assert_allclose(snr, snr_np, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(mask, photo._neighbour_mask(snr_np))
    assert 0.02 < mask.mean() < 0.8  # the maps hold neighbours, and not only neighbours


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_a_neighbour_must_rise_above_its_surroundings(monkeypatch, engine):
    """A compact source beside the object is masked; a bump of the same height on a broad, bright
    wing (rising < 3 sigma above the mean of its 3-6 px surroundings) is the object's own light."""
    import stargal.photo as photo

    if engine == "numba" and not photo.numba_available():
        pytest.skip("numba is not installed")
    if engine == "numpy":
        monkeypatch.setattr(photo, "numba_available", lambda: False)
    yy, xx = np.mgrid[:31, :31]
    snr = np.zeros((2, 31, 31))
    snr[:] = 40.0 * np.exp(-((yy - 15) ** 2 + (xx - 15) ** 2) / (2 * 2.0 ** 2))  # the object itself
    compact = 12.0 * np.exp(-((yy - 15) ** 2 + (xx - 25) ** 2) / (2 * 1.0 ** 2))  # a star 10 px away
    snr[0] += compact
    wing = 6.0 * np.exp(-((yy - 15) ** 2 + (xx - 15) ** 2) / (2 * 20.0 ** 2))  # a galaxy's broad wing ...
    bump = 2.0 * np.exp(-((yy - 15) ** 2 + (xx - 25) ** 2) / (2 * 1.5 ** 2))  # ... with a 2 sigma bump
    snr[1] += wing + bump
    peak = np.unravel_index(np.argmax(np.where(xx > 20, snr[1], 0)), (31, 31))
    around = snr[1][peak[0] - 1:peak[0] + 2, peak[1] - 1:peak[1] + 2]
    assert snr[1][peak] > photo._PEAK_SNR and snr[1][peak] == around.max()  # a >= 5 sigma local maximum
    mask = photo._neighbour_mask(snr)
    assert mask[0, 15, 25] and mask[0, 15, 24] and not mask[0, 15, 15]
    assert not mask[1].any()


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_local_background_is_the_annulus_median_outside_detected_sources(monkeypatch, engine):
    """A constant background under noise, a bright source inside the annulus and a faint 3 sigma
    bump (no 5 sigma pixel: not a detection): the source's footprint is left out of the median,
    the bump is not; pixels off the frame and NaN pixels are skipped; no pixel left gives 0."""
    import types

    import stargal.photo as photo

    if engine == "numba" and not photo.numba_available():
        pytest.skip("numba is not installed")
    if engine == "numpy":
        monkeypatch.setattr(photo, "numba_available", lambda: False)
    rng = np.random.default_rng(5)
    ny, nx, sky = 300, 400, 0.02
    img = (0.005 + sky * rng.normal(size=(ny, nx))).astype(np.float32)  # a 0.25 sigma offset: a halo
    yy, xx = np.mgrid[:ny, :nx]
    img += (40.0 * np.exp(-((yy - 150) ** 2 + (xx - 222) ** 2) / (2 * 2.0 ** 2))).astype(np.float32)  # 22 px away
    img[10:14, 10:20] = np.nan
    frame = types.SimpleNamespace(image=img, sky_noise=sky)
    cal = types.SimpleNamespace(sky_sigma=lambda x: np.full(np.shape(x), sky))
    field = types.SimpleNamespace(fetcher=types.SimpleNamespace(cache_dir="x"), fid="0-0-0")  # not a Field: not kept
    sources = photo._source_mask(cal, frame)
    assert sources[150, 222] and sources[150, 218] and not sources[150, 200]
    assert sources.mean() < 0.01  # noise alone is no detection
    masked = photo._background_pixels(field, "r", cal, frame)
    assert np.isinf(masked[sources]).all() and np.isinf(masked[10:14, 10:20]).all()
    assert (masked[~sources & np.isfinite(img)] == img[~sources & np.isfinite(img)]).all()
    bg = photo._local_background(masked, np.array([200.0, 15.2, 1000.0]), np.array([150.0, 12.0, 5.0]))
    dy, dx = photo._annulus_offsets()
    ring = img[150 + dy, 200 + dx]
    keep = ~sources[150 + dy, 200 + dx]
    assert bg[0] == pytest.approx(float(np.median(ring[keep])), abs=1e-7)
    assert abs(bg[0] - 0.005) < 0.002 < abs(float(np.mean(ring)) - 0.005)  # the source would have biased it
    near = img[np.clip(12 + dy, 0, ny - 1), np.clip(15 + dx, 0, nx - 1)]
    on = (12 + dy >= 0) & (15 + dx >= 0)
    assert bg[1] == pytest.approx(float(np.nanmedian(near[on & ~sources[np.clip(12 + dy, 0, ny - 1),
                                                                           np.clip(15 + dx, 0, nx - 1)]])), abs=1e-7)
    assert bg[2] == 0.0  # no pixel of its annulus is on the frame


def test_local_background_kernel_equals_the_numpy_median(monkeypatch):
    """The numba kernel (row runs, histogram-bracketed selection) gives numpy's exact median on
    quantised values with many ties, heavy tails (the bracket misses), masks from none to every
    pixel (fewer than 200 left: plain selection; none left: 0) and objects off the frame's edges."""
    import stargal.photo as photo

    if not photo.numba_available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(11)
    ny, nx = 200, 260
    img = np.round(rng.normal(0.0, 3.0, (ny, nx))).astype(np.float32) * np.float32(0.01)  # ties
    img[:, 150:] = rng.standard_cauchy((ny, nx - 150)).astype(np.float32)  # heavy tails
    density = np.linspace(0.0, 1.0, ny)[:, None]  # masked fraction grows with the row
    masked = np.where(rng.random((ny, nx)) < density, np.float32(np.inf), img)
    masked[150:, 200:] = np.inf  # a corner with nothing left
    x = np.concatenate([rng.uniform(-40, nx + 40, 300), [230.0, 5.0]])
    y = np.concatenate([rng.uniform(-40, ny + 40, 300), [185.0, 100.0]])
    fast = photo._local_background(masked, x, y)
    monkeypatch.setattr(photo, "numba_available", lambda: False)
    slow = photo._local_background(masked, x, y)
    dy, dx = photo._annulus_offsets()
    ring = masked[100 + dy, 5 + dx][(5 + dx >= 0)]
    assert fast[-1] == np.float32(np.median(ring[np.isfinite(ring)]))
    assert fast[-2] == 0.0
    np.testing.assert_array_equal(fast, slow)


def test_an_interpolated_saturated_core_is_recognised_and_nothing_else():
    """SDSS interpolates a saturated core (and its bleed trail) along the row: the centre is flat or
    sunken beside a ridge. Such a band is flagged; a bright star, a bright galaxy, a star beside a
    brighter neighbour and a faint flat galaxy are not."""
    from stargal.photo import _interpolated_core

    size, h, nmgy = 31, 15, 0.005
    yy, xx = np.mgrid[:size, :size] - h

    def gauss(x0, y0, flux, sigma):
        return flux * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma ** 2)) / (2 * np.pi * sigma ** 2)

    star = gauss(0, 0, 400.0, 1.5)  # nanomaggies: peak ~28 nmgy = 5,700 counts
    sat = gauss(0, 0, 40000.0, 1.5)  # a hundred times brighter: its core saturates
    cols = slice(h - 4, h + 5)  # saturated block and bleed trail: columns h-4..h+4, rows h-8..h+8
    for r in range(h - 8, h + 9):  # interpolated along the row from the unsaturated pixels beside it
        lo, hi = sat[r, h - 5], sat[r, h + 5]
        sat[r, cols] = lo + (hi - lo) * (np.arange(9) + 1) / 10.0
    sat[h - 3:h + 4, h + 5:h + 7] *= 3.0  # the block's edge holds more flux than the interpolation
    galaxy = gauss(0, 0, 400.0, 4.0)
    pair = gauss(0, 0, 100.0, 1.5) + gauss(4, 0, 400.0, 1.5)
    faint_flat = gauss(0, 0, 5.0, 6.0)
    d = np.stack([sat, star, galaxy, pair, faint_flat])
    assert _interpolated_core(d, np.full(len(d), nmgy)).tolist() == [True, False, False, False, False]


def test_fluxes_and_sizes_are_measured(field):
    res = field["result"]
    for b in "gri":
        assert abs(res[f"psf_flux_{b}"].iloc[0] / 20.0 - 1) < 0.03
        assert abs(res[f"cmodel_flux_{b}"].iloc[0] / 20.0 - 1) < 0.03
        # an exponential galaxy: its exponential fit gets the flux and (major-axis) size
        assert abs(res[f"exp_flux_{b}"].iloc[1] / 20.0 - 1) < 0.1
        assert abs(res[f"r_exp_{b}"].iloc[1] / (3.0 / np.sqrt(0.6) * 0.396) - 1) < 0.2
        assert res[f"ab_exp_{b}"].iloc[1] <= 0.75
        assert res[f"frac_dev_{b}"].iloc[2] > 0.5  # the de Vaucouleurs galaxy prefers deV
        assert res[f"chi2_exp_{b}"].iloc[1] < res[f"chi2_psf_{b}"].iloc[1]
    fwhm = res["psf_fwhm_r"].iloc[0]
    assert abs(fwhm / (2.3548 * 1.5 * 0.396) - 1) < 0.05  # the field's PSF, arcsec
    assert np.allclose(res["nmgy_per_count_r"].dropna(), 0.005)


def test_errors_follow_the_noise_model(field):
    res, sigma = field["result"], field["info"]["sigma_nmgy"]["r"]
    # a faint star's PSF flux error: sky noise / sqrt(sum P^2) for a Gaussian PSF of sigma 1.5 px
    expected = sigma * np.sqrt(4 * np.pi * 1.5 ** 2)
    assert abs(res["psf_flux_err_r"].iloc[3] / expected - 1) < 0.15
    assert res["type_stat_err"].iloc[0] < res["type_stat_err"].iloc[3]


def test_unmeasurable_objects_get_nan_and_a_reason(field):
    res = field["result"]
    assert res["fit_flag"].iloc[8] == "not_detected" and np.isnan(res["type_stat"].iloc[8])
    assert res["fit_flag"].iloc[5] == "saturated" and np.isnan(res["type_stat"].iloc[5])
    assert (res[[f"saturated_{b}" for b in BANDS]].iloc[5] == 1).all()
    assert (res[[f"saturated_{b}" for b in BANDS]].iloc[[0, 1, 2, 7, 9]] == 0).all().all()


def test_flagged_rows_keep_their_flag_and_nothing_is_zero(field):
    table = field["table"].copy()
    table.loc["obj0", "flag"] = "edge"
    table.loc["obj1", "flag"] = "outside"
    table.loc["obj1", "field_id"] = ""
    res = field["phot"].transform(table)
    assert res.loc["obj0", "fit_flag"] == "edge" and res.loc["obj1", "fit_flag"] == "outside"
    assert res.loc[["obj0", "obj1"], ["psf_flux_r", "cmodel_flux_r", "type_stat"]].isna().all().all()
    pd.testing.assert_series_equal(res.loc["obj2"], field["result"].loc["obj2"])  # independent of the others


def test_masked_centre(field):
    from stargal.frames import Field

    base = Field(field["info"]["fid"], sas_url=field["kw"]["sas_url"], cache_dir=field["kw"]["cache_dir"])
    images = {}
    for b in BANDS:
        img = np.array(base.frame(b).image)
        x, y = field["table"].loc["obj0", f"x_{b}"], field["table"].loc["obj0", f"y_{b}"]
        img[int(round(y)) - 2:int(round(y)) + 3, int(round(x)) - 2:int(round(x)) + 3] = np.nan
        images[b] = img
    from stargal.inject import InjectedField

    res = field["phot"].measure_field(field["table"].iloc[[0, 2]], InjectedField(base, images))
    assert res["fit_flag"].tolist() == ["masked_centre", ""]
    assert abs(res["type_stat"].iloc[1] - field["result"]["type_stat"].iloc[2]) < 1e-4  # float32 products


def test_bad_input_is_refused_clearly(field):
    with pytest.raises(TypeError, match="Aligner's output"):
        SDSSPhotometry().fit(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="per-band pixel positions"):
        SDSSPhotometry().fit(pd.DataFrame({"ra": [1.0], "dec": [2.0]}))
    with pytest.raises(ValueError, match="stamp_size"):
        SDSSPhotometry(stamp_size=30).fit(field["table"])


def test_type_statistic_sums_counts_over_detected_bands():
    t = pd.DataFrame({
        "psf_flux_g": [10.0], "cmodel_flux_g": [30.0], "psf_flux_err_g": [1.0], "cmodel_flux_err_g": [1.0],
        "nmgy_per_count_g": [0.01], "detected_g": [False],
        "psf_flux_r": [10.0], "cmodel_flux_r": [12.0], "psf_flux_err_r": [1.0], "cmodel_flux_err_r": [1.0],
        "nmgy_per_count_r": [0.005], "detected_r": [True],
        "psf_flux_i": [10.0], "cmodel_flux_i": [10.0], "psf_flux_err_i": [1.0], "cmodel_flux_err_i": [1.0],
        "nmgy_per_count_i": [0.01], "detected_i": [True],
    })
    stat, err, n = type_statistic(t, bands="gri")
    # counts: r 2000 / 2400, i 1000 / 1000 (g not detected): 2.5 log10(3400 / 3000)
    assert n.tolist() == [2] and stat[0] == pytest.approx(2.5 * np.log10(3400 / 3000))
    t["detected_r"] = t["detected_i"] = False
    stat, err, n = type_statistic(t, bands="gri")
    assert n.tolist() == [0] and np.isnan(stat[0]) and np.isnan(err[0])


def test_rule_fits_one_boundary_and_abstains_without_a_measurement():
    rng = np.random.default_rng(0)
    stat = np.concatenate([rng.normal(0.0, 0.05, 200), rng.normal(0.6, 0.2, 200)])
    y = np.repeat([0, 1], 200)
    X = pd.DataFrame({"type_stat": stat, "type_stat_err": np.full(400, 0.05)})
    rule = SDSSTypeRule().fit(X, y)
    assert 0.08 < rule.boundary_ < 0.3
    X.loc[[0, 1], "type_stat"] = np.nan
    p = rule.predict_proba(X)[:, 1]
    assert np.isnan(p[:2]).all() and np.isfinite(p[2:]).all()
    assert rule.set_params(unmeasured="prior").predict_proba(X)[0, 1] == pytest.approx(rule.prior_)
    assert (rule.predict(X)[2:] == (X["type_stat"].to_numpy()[2:] > rule.boundary_)).mean() > 0.99
    assert SDSSTypeRule(boundary=0.145).fit(X, y).boundary_ == 0.145
    with pytest.raises(ValueError, match="no training object"):
        SDSSTypeRule().fit(pd.DataFrame({"type_stat": [np.nan, np.nan]}), [0, 1])
    with pytest.raises(ValueError, match="binary"):
        SDSSTypeRule().fit(X, np.arange(400) % 3)


def test_calibrating_a_rule_keeps_its_abstentions():
    rng = np.random.default_rng(1)
    stat = np.concatenate([rng.normal(0.0, 0.08, 150), rng.normal(0.5, 0.2, 150)])
    X = pd.DataFrame({"type_stat": stat, "type_stat_err": np.full(300, 0.05)})
    y = np.repeat([0, 1], 150)
    pipe = make_rule_pipeline().fit(X, y)
    X.loc[[3, 200], "type_stat"] = np.nan
    cal = calibrate_pipeline(pipe, X, y)
    p = cal.predict_proba(X)[:, 1]
    assert np.isnan(p[[3, 200]]).all() and np.isfinite(np.delete(p, [3, 200])).all()


def test_rule_pipeline_from_coordinates(field):
    from stargal.models import make_rule_pipeline as make

    kw, fid = field["kw"], field["info"]["fid"]
    pipe = make(front=[("align", Aligner(fields=[fid], **kw)), ("photo", SDSSPhotometry(**kw))], boundary=0.145)
    coords = field["info"]["targets"][["ra", "dec"]]
    y = (field["info"]["targets"]["kind"] != "star").astype(int).to_numpy()
    proba = pipe.fit(coords, y).predict_proba(coords)[:, 1]
    measured = np.isfinite(proba)
    assert measured.sum() == len(coords) - 2  # not detected, saturated
    assert ((proba[measured] >= 0.5) == y[measured].astype(bool)).all()


def test_measured_features(field):
    res = field["result"]
    feats = MeasuredFeatures().fit(res)
    X = feats.transform(res)
    names = list(feats.get_feature_names_out())
    assert X.shape == (len(res), len(names)) == (len(res), 48)
    pm = X[:, names.index("psf_minus_cmodel_r")]
    assert abs(pm[0]) < 0.05 and pm[1] > 0.4
    assert np.isnan(X[8, names.index("type_stat")])  # not measured: NaN, never a silent zero
    assert X[1, names.index("dchi2_exp_r")] > 0
    with pytest.raises(TypeError, match="SDSSPhotometry"):
        MeasuredFeatures().fit(np.zeros((2, 3)))


@pytest.mark.skipif(not (MIRROR_DIR / "dr17").exists(), reason="needs the SDSS mirror ../shared/sdss")
def test_our_measurement_agrees_with_the_catalogs_on_a_training_field(mirror_cache):
    """Our psfMag - cModelMag vs the mirror catalog's (training field 1043-5-25; never the test field)."""
    fid, run, camcol, fnum = "1043-5-25", 1043, 5, 25
    sas = MIRROR_DIR.resolve().as_uri()
    kw = {"sas_url": sas, "cache_dir": str(mirror_cache)}
    rows = []
    for kind in ("star", "gal"):
        d = fits.getdata(MIRROR_DIR / f"dr17/eboss/sweeps/dr13_final/301/calibObj-{run:06d}-{camcol}-{kind}.fits.gz", 1)
        d = d[d["FIELD"] == fnum]
        rows.append(pd.DataFrame({"ra": d["RA"].astype(float), "dec": d["DEC"].astype(float),
                                  "psf_r": d["PSFFLUX"][:, 2].astype(float),
                                  "theirs": d["PSF_MINUS_CMODEL"].astype(float),
                                  "galaxy": d["OBJC_TYPE"] == 3}))
    cat = pd.concat(rows, ignore_index=True)
    aligned = Aligner(fields=[fid], policy="flag", **kw).fit_transform(cat[["ra", "dec"]])
    res = SDSSPhotometry(**kw).fit_transform(aligned)
    ok = (res["fit_flag"] == "").to_numpy()
    rmag = 22.5 - 2.5 * np.log10(np.clip(cat["psf_r"].to_numpy(), 1e-3, None))
    bright = ok & (rmag < 21)
    assert bright.sum() > 150 and ok.mean() > 0.95
    diff = res["type_stat"].to_numpy()[bright] - cat["theirs"].to_numpy()[bright]
    assert abs(np.median(diff)) <= 0.02
    agree = ((res["type_stat"].to_numpy()[bright] > 0.19) == cat["galaxy"].to_numpy()[bright]).mean()
    assert agree >= 0.96, agree


@pytest.mark.skipif(not (MIRROR_DIR / "dr17").exists(), reason="needs the SDSS mirror ../shared/sdss")
def test_model_normalisation_is_the_real_fields_whichever_frame_comes_first(mirror_fetcher, monkeypatch):
    """The cModel/PSF normalisation belongs to the PSF model: an injected copy of the frames (here: more
    noise everywhere) gets the real field's, measured first or not (it was whichever came first)."""
    from stargal import photo
    from stargal.frames import Field
    from stargal.inject import InjectedField
    from stargal.psf import field_psf

    base = Field("1043-5-25", mirror_fetcher)
    psf = field_psf(base, mirror_fetcher, source="stars")
    rng = np.random.default_rng(0)
    images = {b: np.asarray(base.frame(b).image) for b in BANDS}
    images["r"] = images["r"] + rng.normal(0.0, 3 * base.frame("r").sky_noise, images["r"].shape).astype(np.float32)
    injected = InjectedField(base, images)
    monkeypatch.setattr(photo, "_NORMS", {})
    from_injected = photo._model_norm(injected, psf, "r", photo.STAMP_SIZE)
    monkeypatch.setattr(photo, "_NORMS", {})
    from_real = photo._model_norm(base, psf, "r", photo.STAMP_SIZE)
    np.testing.assert_array_equal(from_injected, from_real)
    assert (from_real != 1.0).any()  # measured, not the no-star default
