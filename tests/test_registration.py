"""Per-band registration of a field (stargal.registration): reference stars, model, cache."""

import json

import numpy as np
import pandas as pd
import pytest

import stargal.registration as registration_module
from stargal.registration import (
    MIN_REFERENCES,
    REFERENCE_STAMP,
    Registration,
    field_registration,
    find_reference_stars,
    windowed_size,
)
from stargal.frames import Field
from stargal.sdss import BANDS
from synthetic import make_synthetic_sas


@pytest.fixture(scope="module")
def shifted_sas(tmp_path_factory):
    """A field whose g header WCS is wrong by a known constant shift (true = WCS + shift)."""
    root = tmp_path_factory.mktemp("shifted")
    info = make_synthetic_sas(
        root,
        fid="3000-2-41",
        n_stars=14,
        n_gal=3,
        shape=(260, 360),
        noise=0.004,
        flux_range=(60.0, 400.0),
        seed=7,
        wcs_error={"g": (0.30, -0.25)},
    )
    return info, {"sas_url": info["sas_url"], "cache_dir": str(tmp_path_factory.mktemp("cache"))}


def _refs_table(x, y, offsets, ok=True):
    """A reference-star table as find_reference_stars returns, with given per-band offsets."""
    n = len(x)
    table = {
        "x_r": np.asarray(x, float),
        "y_r": np.asarray(y, float),
        "peak_snr": np.full(n, 100.0),
        "size": np.full(n, 1.3),
    }
    for b in BANDS:
        dx, dy = offsets.get(b, (0.0, 0.0))
        table.update(
            {
                f"dx_{b}": np.broadcast_to(np.asarray(dx, float), (n,)).copy(),
                f"dy_{b}": np.broadcast_to(np.asarray(dy, float), (n,)).copy(),
                f"snr_{b}": np.full(n, 100.0),
                f"ok_{b}": np.full(n, ok),
                f"flux_{b}": np.full(n, 50.0),
            }
        )
    return pd.DataFrame(table)


def test_registration_model():
    rng = np.random.default_rng(0)
    n = 300
    x, y = rng.uniform(0, 2000, n), rng.uniform(0, 1400, n)
    dy_g = -0.1 + 0.02 * rng.standard_normal(n)
    dy_g[0] = 0.8  # an outlier: clipped
    local = (x < 300) & (y < 300)  # a corner where i is off by +0.12 px in x
    assert local.sum() >= 5
    refs = _refs_table(
        x,
        y,
        {"g": (0.05, dy_g), "i": (np.where(local, 0.12, 0.0) + 0.02 * rng.standard_normal(n), 0.0)},
    )
    const = Registration("8162-6-80", refs, local_scale=None)
    assert const.constant["r"] == (0.0, 0.0) and const.n_used["r"] == 0
    np.testing.assert_allclose(const.constant["g"], (0.05, -0.1), atol=0.005)
    assert const.n_used["g"] == n - 1  # the outlier is not used
    dx, dy = const.offsets("g", [10.0, 1500.0], [10.0, 700.0])
    np.testing.assert_allclose(dy, const.constant["g"][1])
    np.testing.assert_allclose(dx, 0.05, atol=0.005)
    # the local term follows the corner, and falls back to the constant far from it
    reg = Registration("8162-6-80", refs)
    assert reg.n_used["i"] == n
    dx_i, _ = reg.offsets("i", [100.0, 1800.0], [100.0, 1200.0])
    assert dx_i[0] > 0.07 and abs(dx_i[1] - reg.constant["i"][0]) < 0.01, dx_i
    # leave-one-out: a reference's own value is excluded
    dxs, dys = reg.offsets("g", x[:1], y[:1], exclude_within=1.0)
    assert abs(dys[0] + 0.1) < 0.02
    # too few usable references: no correction at all
    few = Registration("8162-6-80", refs.iloc[: MIN_REFERENCES - 1])
    assert few.constant["g"] == (0.0, 0.0) and few.offsets("g", [5.0], [5.0]) == (
        np.zeros(1),
        np.zeros(1),
    )
    # tabulated on a grid (shape given, as field_registration does): the same model to < 0.002 px
    gridded = Registration("8162-6-80", refs, shape=(1400, 2000))
    qx, qy = rng.uniform(-100, 2100, 500), rng.uniform(-100, 1500, 500)
    for b in ("g", "i"):
        np.testing.assert_allclose(
            np.column_stack(gridded.offsets(b, qx, qy)),
            np.column_stack(reg.offsets(b, qx, qy)),
            atol=2e-3,
        )
    # subset and JSON round trip reproduce the model
    left = reg.subset(x < 1000)
    assert len(left.references) == (x < 1000).sum()
    back = Registration.from_dict(json.loads(json.dumps(gridded.to_dict())))
    np.testing.assert_allclose(back.offsets("i", x, y), reg.offsets("i", x, y), atol=2e-3)
    assert back.n_used == reg.n_used and back.shape == (1400, 2000)


def test_registration_is_cached_per_field(shifted_sas, monkeypatch):
    info, kw = shifted_sas
    reg = field_registration(info["fid"], **kw)
    path = registration_module.registration_path(
        kw["cache_dir"], registration_module.FieldID.parse(info["fid"])
    )
    assert path.is_file() and path.name.endswith(
        f".v{registration_module.REGISTRATION_VERSION}.json"
    )
    assert not list(path.parent.glob("*.part"))

    def fail(field):
        raise AssertionError("the cached registration should have been used")

    def constants(r):
        return np.array([r.constant[b] for b in BANDS])

    # a new process (empty in-memory memo) reads the JSON instead of measuring again
    with monkeypatch.context() as patch:
        patch.setattr(registration_module, "_MEMO", {})
        patch.setattr(registration_module, "find_reference_stars", fail)
        again = field_registration(info["fid"], **kw)
    np.testing.assert_allclose(constants(again), constants(reg), atol=1e-4)
    assert again.n_used == reg.n_used
    # a corrupt cache file is measured again (and rewritten), not trusted, and says so
    path.write_text("{not json")
    monkeypatch.setattr(registration_module, "_MEMO", {})
    with pytest.warns(RuntimeWarning, match=f"{info['fid']}: registration: unreadable cache file"):
        fresh = field_registration(info["fid"], **kw)
    np.testing.assert_allclose(constants(fresh), constants(reg), atol=1e-6)
    assert json.loads(path.read_text())["version"] == registration_module.REGISTRATION_VERSION


def test_windowed_size_of_a_gaussian_and_its_window():
    """size = s w / sqrt(s^2 + w^2) for a Gaussian of sigma s, window w (psf_stars uses it)."""
    yy, xx = np.mgrid[:REFERENCE_STAMP, :REFERENCE_STAMP] - (REFERENCE_STAMP - 1) / 2
    for s in (1.0, 1.5, 2.0):
        g = np.exp(-(xx**2 + yy**2) / (2 * s**2))[None]
        size = windowed_size(g, np.zeros(1), np.zeros(1), sigma=2.0)
        assert size[0] == pytest.approx(s * 2.0 / np.hypot(s, 2.0), rel=0.02), s
    assert np.isnan(windowed_size(np.zeros((1, 15, 15)), np.zeros(1), np.zeros(1))[0])


def test_reference_stars_are_the_point_sources_at_their_positions(shifted_sas):
    """Found without a catalog: every reference is an injected star (galaxies are too broad), at its
    true r position, with the g offset of the header's known error."""
    info, kw = shifted_sas
    refs = find_reference_stars(Field(info["fid"], **kw))
    truth = info["objects"]
    stars = truth[truth["label"] == "star"]
    assert len(refs) >= 10
    d = np.hypot(
        refs["x_r"].to_numpy()[:, None] - stars["x_r"].to_numpy()[None],
        refs["y_r"].to_numpy()[:, None] - stars["y_r"].to_numpy()[None],
    )
    assert (d.min(axis=1) < 0.05).all(), d.min(axis=1)  # each reference sits on a true star
    assert refs["ok_g"].all() and refs["dx_r"].eq(0).all() and refs["dy_r"].eq(0).all()
    np.testing.assert_allclose(np.median(refs[["dx_g", "dy_g"]], axis=0), (0.30, -0.25), atol=0.02)
    np.testing.assert_allclose(np.median(refs[["dx_i", "dy_i"]], axis=0), 0.0, atol=0.02)


def test_summary_and_repr(shifted_sas):
    info, kw = shifted_sas
    reg = field_registration(info["fid"], **kw)
    summary = reg.summary().set_index("band")
    assert list(summary.index) == list(BANDS)
    assert summary.loc["r", "n_used"] == 0 and summary.loc["g", "n_used"] == reg.n_used["g"] >= 10
    assert summary.loc["g", "dx"] == pytest.approx(0.30, abs=0.02)
    assert summary.loc["g", "median_abs_residual"] < 0.02
    assert info["fid"] in repr(reg) and "g: (+0.3" in repr(reg)


def test_an_unwritable_cache_only_costs_a_warning(shifted_sas, tmp_path, monkeypatch):
    info, kw = shifted_sas
    cache = tmp_path / "cache"
    path = registration_module.registration_path(
        cache, registration_module.FieldID.parse(info["fid"])
    )
    path.parent.mkdir(parents=True)
    path.mkdir()  # a directory where the file should go: the write fails
    monkeypatch.setattr(registration_module, "_MEMO", {})
    with pytest.warns(RuntimeWarning) as rec:
        reg = field_registration(info["fid"], sas_url=kw["sas_url"], cache_dir=str(cache))
    messages = [str(w.message) for w in rec]
    assert any("could not write the cache file" in m for m in messages), messages
    assert not any(m.startswith("Aligner") for m in messages)
    assert reg.n_used["g"] >= 10
