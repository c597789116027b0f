"""stargal.inject: synthetic sources in in-memory copies of real frames, and the sampler."""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from stargal.cutouts import Cutter
from stargal.fetch import Fetcher
from stargal.frames import Field
from stargal.inject import (
    REFUSALS,
    SyntheticInjector,
    camera_gain,
    check_positions,
    frame_calibration,
    inject,
    inject_random,
)
from stargal.psf import PSFWarning
from stargal.sdss import BANDS
from stargal.synth import SyntheticPopulation
from tests.synthetic import make_psf_sas, make_synthetic_sas, measured_photometry_table


@pytest.fixture(scope="module")
def sas(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth-sas")
    info = make_psf_sas(
        root, fid="1100-2-40", n_stars=30, shape=(300, 400), sigma=1.6, noise=0.01, seed=5
    )
    make_synthetic_sas(root, fid="1100-2-41", n_stars=8, n_gal=6, shape=(260, 360), seed=6)
    info["cache"] = root / "cache"
    info["fetcher"] = Fetcher(info["sas_url"], info["cache"], quiet=True)
    return info


def _sources(field, n, kind="star", flux=50.0, seed=0):
    rng = np.random.default_rng(seed)
    ny, nx = field.frame("r").shape
    ra, dec = field.frame("r").pixel_to_world(
        rng.uniform(30, nx - 30, n), rng.uniform(30, ny - 30, n)
    )
    src = pd.DataFrame(
        {"ra": ra, "dec": dec, "kind": kind, "label": int(kind == "galaxy"), "mag_r": 18.0}
    )
    for b in BANDS:
        src[f"flux_{b}"] = flux
    src["sersic_n"], src["hlr_arcsec"], src["q"], src["beta_deg"] = 1.0, 0.8, 0.7, 30.0
    return src


def _files(root):
    return {
        p: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_injection_per_band_positions_refusals_and_no_cache_write(sas):
    field = Field("1100-2-40", sas["fetcher"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PSFWarning)
        inject(
            field, _sources(field, 2), noise=False
        )  # warm every cache (PSF, registration, calibration)
        before = _files(sas["cache"])
        src = _sources(field, 12)
        far = pd.DataFrame([src.iloc[0]]).assign(
            ra=src["ra"].iloc[0] + 1.0
        )  # a degree off the frame
        res = inject(
            field, pd.concat([src, far], ignore_index=True), noise=False, min_separation_arcsec=0.0
        )
    assert _files(sas["cache"]) == before  # nothing written or touched in the cache
    assert res.counts["off_frame"] == 1 and sum(res.counts.values()) == 13
    assert set(res.refused["reason"]) <= set(REFUSALS)
    n = res.counts["injected"]
    assert len(res.table) == n >= 10
    # the real frames are untouched; the injected copies hold the flux at each band's own position
    for b in BANDS:
        real, fake = np.asarray(field.frame(b).image), res.field.frame(b).image
        diff = fake - real
        assert abs(diff.sum() - 50.0 * n) < 0.02 * 50.0 * n
        x, y = res.table[f"x_{b}"].to_numpy(), res.table[f"y_{b}"].to_numpy()
        ix, iy = np.round(x).astype(int), np.round(y).astype(int)
        assert (
            diff[iy, ix] > 0.5 * diff.max()
        ).mean() > 0.8  # peaks where that band's WCS puts them
    assert not np.allclose(res.table["x_u"], res.table["x_r"])  # bands are not pixel-aligned
    # cutting the injected field gives point sources centred on the central pixel
    X = Cutter(size=15, psf=True, sas_url=sas["sas_url"], cache_dir=str(sas["cache"])).cut_field(
        res.table, res.field
    )
    assert X.shape == (n, 10, 15, 15)
    r = X[:, 2]
    assert (np.argmax(r.reshape(n, -1), axis=1) == 7 * 15 + 7).mean() > 0.9


def test_near_source_masked_and_near_injected_are_refused(sas):
    field = Field("1100-2-40", sas["fetcher"])
    stars = sas["stars"]
    ra, dec = field.frame("r").pixel_to_world(
        stars["x_r"].to_numpy()[:3] + 1.0, stars["y_r"].to_numpy()[:3]
    )
    _, reason = check_positions(field, ra, dec, min_separation_arcsec=4.0)
    assert list(reason) == ["near_source"] * 3
    src = _sources(field, 1)
    twin = pd.concat([src, src], ignore_index=True)
    _, reason = check_positions(field, twin["ra"], twin["dec"], min_separation_arcsec=1.0)
    assert reason[1] == "near_injected"
    _, reason = check_positions(
        field,
        twin["ra"],
        twin["dec"],
        min_separation_arcsec=1.0,
        min_injected_separation_arcsec=0.0,
    )
    assert list(reason) == ["", ""]  # injected-injected distance has its own threshold
    # a masked (non-finite) pixel beside the position
    x, y = field.frame("g").world_to_pixel(src["ra"], src["dec"])
    img = np.array(field.frame("g").image)
    img[int(round(y[0])), int(round(x[0])) + 2] = np.nan
    field.frame("g").image = img
    _, reason = check_positions(field, src["ra"], src["dec"], min_separation_arcsec=0.0)
    assert list(reason) == ["masked"]


def test_poisson_noise_scale(sas):
    field = Field("1100-2-40", sas["fetcher"])
    cal = frame_calibration(field, "r")
    assert cal.gain == camera_gain("1100-2-40", "r") == 4.6
    np.testing.assert_allclose(cal.calib, 1.0)  # the synthetic frames' HDU1
    model = np.full((200, 200), 30.0)
    noise = cal.source_noise(model, 0, np.random.default_rng(0))
    # var = m * calib / gain (nanomaggies^2)
    assert abs(noise.var() / (30.0 / 4.6) - 1) < 0.03 and abs(noise.mean()) < 0.02
    assert (cal.source_noise(np.zeros((5, 5)), 0, np.random.default_rng(0)) == 0).all()


def test_calibration_cache_missing_or_corrupt_is_read_again_from_the_frame(sas):
    from stargal.frames import calibration_path, load_calibration
    from stargal.sdss import frame_path

    fetcher = sas["fetcher"]
    Field("1100-2-40", fetcher).frames()  # decompressing writes the .calib.npz beside the frame
    rel = frame_path("1100-2-40", "i")
    path = calibration_path(fetcher.cache_dir, rel)
    calib, sky = load_calibration(fetcher, rel)
    np.testing.assert_allclose(calib, 1.0)
    for damage in ("missing", "corrupt"):
        path.unlink() if damage == "missing" else path.write_bytes(b"not an npz")
        again, sky_again = load_calibration(fetcher, rel)
        np.testing.assert_array_equal(again, calib)
        assert sky_again == sky or (np.isnan(sky) and np.isnan(sky_again))
        with np.load(path) as z:  # rewritten, readable
            np.testing.assert_array_equal(z["calib"], calib)


# ------------------------------------------------------------------------------ sampler
def _fake_photometry(sas, monkeypatch):
    """The synthetic field has no catalog: give measured_photometry's memo a population."""
    from stargal import synth
    from stargal.fetch import get_fetcher

    f = get_fetcher(sas_url=sas["sas_url"], cache_dir=str(sas["cache"]))
    key = (str(f.base_url), str(f.cache_dir), ("1100-2-40",), "stars")
    monkeypatch.setitem(synth._MEASURED_MEMO, key, measured_photometry_table())


def test_injector_fit_only_shapes_labels_and_groups(sas, monkeypatch):
    _fake_photometry(sas, monkeypatch)
    rng = np.random.default_rng(0)
    X = rng.normal(0, 0.01, (10, 10, 15, 15)).astype(np.float32)
    y = np.arange(10) % 2
    inj = SyntheticInjector(
        fields=["1100-2-40"],
        n_objects=8,
        galaxy_fraction=0.5,
        random_state=0,
        sas_url=sas["sas_url"],
        cache_dir=str(sas["cache"]),
        min_separation_arcsec=2.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PSFWarning)
        Xr, yr = inj.fit_resample(X, y)
    k = inj.n_injected_
    assert k == 8 and inj.counts_["injected"] == 8
    assert Xr.shape == (18, 10, 15, 15) and Xr.dtype == np.float32
    np.testing.assert_array_equal(Xr[:10], X)
    np.testing.assert_array_equal(yr[10:], inj.truth_["label"].to_numpy())
    np.testing.assert_allclose(Xr[10:, 5:].sum(axis=(2, 3)), 1.0, atol=1e-4)  # PSF channels
    assert (
        y[inj.sample_indices_[10:]] == yr[10:]
    ).all()  # groups from a real row of the same label
    # 5-channel input gives 5-channel output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PSFWarning)
        X5, _ = clone(inj).fit_resample(X[:, :5], y)
    assert X5.shape[1] == 5
    # clone / pickle keep parameters; the sampler has no transform (skipped at predict time)
    assert pickle.loads(pickle.dumps(inj)).get_params() == inj.get_params()
    assert not hasattr(inj, "transform") and not hasattr(inj, "predict")


def test_injector_in_a_pipeline_is_fit_only(sas, monkeypatch):
    from imblearn.pipeline import Pipeline
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import FunctionTransformer

    _fake_photometry(sas, monkeypatch)
    rng = np.random.default_rng(1)
    X = rng.normal(0, 0.01, (12, 5, 15, 15)).astype(np.float32)
    y = np.arange(12) % 2
    pipe = Pipeline(
        [
            (
                "augment",
                SyntheticInjector(
                    fields=["1100-2-40"],
                    n_objects=6,
                    random_state=0,
                    sas_url=sas["sas_url"],
                    cache_dir=str(sas["cache"]),
                    min_separation_arcsec=2.0,
                ),
            ),
            ("flat", FunctionTransformer(lambda a: a.reshape(len(a), -1))),
            ("clf", LogisticRegression()),
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PSFWarning)
        pipe.fit(X, y)
    assert pipe.named_steps["augment"].n_injected_ == 6
    assert pipe.predict(X).shape == (12,)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"fields": None}, "fields"),
        ({"n_objects": -1}, "n_objects"),
        ({"mag_range": (10, 20)}, "mag_range"),
        ({"hlr_range": (0.01, 1.0)}, "hlr_range"),
        ({"galaxy_fraction": 2}, "galaxy_fraction"),
        ({"min_separation_arcsec": -1}, "min_separation"),
    ],
)
def test_injector_bad_parameters(kw, match):
    params = {"fields": ["1035-6-17"], **kw}
    X = np.zeros((2, 5, 15, 15), np.float32)
    with pytest.raises(ValueError, match=match):
        SyntheticInjector(**params).fit(X, np.array([0, 1]))


def test_injector_bad_data():
    with pytest.raises(ValueError, match="shape"):
        SyntheticInjector(fields=["1035-6-17"]).fit(np.zeros((2, 7, 15, 15)), np.array([0, 1]))
    with pytest.raises(ValueError, match="binary"):
        SyntheticInjector(fields=["1035-6-17"]).fit(np.zeros((2, 5, 15, 15)), np.array([0, 2]))


@pytest.mark.integration
def test_injected_stars_in_a_real_frame_are_typed_as_stars(mirror_fetcher):
    """The real test field: injected stars (its own PSF model) pass SDSS's rule on our measurement as stars."""
    from experiments.synthetic import measured_rule

    field = Field("8162-6-80", mirror_fetcher)
    pop = SyntheticPopulation(
        measured_photometry_table(), mag_range=(17.0, 20.0), galaxy_fraction=0.0
    )
    res = inject_random(field, pop, 40, random_state=0, noise=False)
    assert res.counts["injected"] == 40 and res.counts["masked"] == 0
    gal, stat, _ = measured_rule(res.table, res.field, boundary=0.19)
    assert (~gal).mean() >= 0.95
    assert np.median(np.abs(stat)) < 0.05


def _six_rows_and_injector_params(sas, monkeypatch, seed, n_objects, random_state):
    """``(X, y, params)``: six PSF-aware noise cutouts, alternating labels, and SyntheticInjector
    parameters for the synthetic field (its measured photometry faked)."""
    _fake_photometry(sas, monkeypatch)
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 0.01, (6, 10, 15, 15)).astype(np.float32)
    y = np.arange(6) % 2
    kw = dict(fields=["1100-2-40"], n_objects=n_objects, galaxy_fraction=0.5, random_state=random_state,
              sas_url=sas["sas_url"], cache_dir=str(sas["cache"]), min_separation_arcsec=2.0)
    return X, y, kw


def test_injector_labels_by_the_measured_rule(sas, monkeypatch):
    """label='rule': injected objects are measured like real ones and typed by the boundary."""
    X, y, kw = _six_rows_and_injector_params(sas, monkeypatch, seed=2, n_objects=10, random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PSFWarning)
        inj = SyntheticInjector(label="rule", rule_boundary=0.19, **kw)
        Xr, yr = inj.fit_resample(X, y)
    truth = inj.truth_
    assert inj.counts_["injected"] == 10 and inj.n_injected_ == 10 - inj.counts_["unmeasured"] == len(truth)
    np.testing.assert_array_equal(yr[6:], (truth["type_stat"] > 0.19).astype(int))
    assert set(truth["true_label"]) <= {0, 1} and np.isfinite(truth["type_stat"]).all()
    stars = truth["true_label"] == 0
    assert (truth["type_stat"][stars].abs() < 0.19).mean() >= 0.8  # the rule sees injected stars as stars
    with pytest.raises(ValueError, match="label"):
        SyntheticInjector(label="guess", **kw).fit(X, y)


def test_same_injection_is_reused_and_gives_what_a_fresh_one_gives(sas, monkeypatch):
    """An injector fitted again with the same parameters and integer seed (here: ``label='truth'`` then
    ``'rule'``) reuses the rendered frames; its objects, cutouts and sky groups are a fresh run's."""
    from stargal import inject

    X, y, kw = _six_rows_and_injector_params(sas, monkeypatch, seed=4, n_objects=6, random_state=5)
    calls = []
    real = inject.inject_random
    monkeypatch.setattr(inject, "inject_random", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(inject, "_LAST_INJECTION", {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PSFWarning)
        truth = SyntheticInjector(label="truth", **kw)
        Xt, _ = truth.fit_resample(X, y)
        assert len(calls) == 1
        warm = SyntheticInjector(label="rule", rule_boundary=0.19, **kw)
        Xw, yw = warm.fit_resample(X, y)
        assert len(calls) == 1  # nothing drawn or rendered again
        inject._LAST_INJECTION.clear()
        cold = SyntheticInjector(label="rule", rule_boundary=0.19, **kw)
        Xc, yc = cold.fit_resample(X, y)
        assert len(calls) == 2
    np.testing.assert_array_equal(Xw, Xc)
    np.testing.assert_array_equal(yw, yc)
    np.testing.assert_array_equal(warm.sample_indices_, cold.sample_indices_)
    assert warm.counts_ == cold.counts_
    # the truth run and the rule run got the same objects (the rule may leave unmeasured ones out)
    assert set(np.round(warm.truth_["ra"], 9)) <= set(np.round(truth.truth_["ra"], 9))
    # another seed is another injection
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PSFWarning)
        SyntheticInjector(label="truth", **{**kw, "random_state": 6}).fit_resample(X, y)
    assert len(calls) == 3
