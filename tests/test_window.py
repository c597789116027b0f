"""stargal.window: SDSS's window_flist as a field index; Aligner(fields='window') confirms with the WCS."""


import numpy as np
import pandas as pd
import pytest
from astropy.wcs import WCS

import stargal.window as window
from stargal.align import Aligner
from stargal.fetch import Fetcher, NotFoundError
from stargal.window import (
    WINDOW_FLIST_PATH,
    WindowIndex,
    WindowIndexError,
    index_path,
    load_window_index,
    munu_to_radec,
    radec_to_munu,
)
from synthetic import make_synthetic_sas, window_row, write_window_flist

A, B, C, D = "1000-1-10", "1000-1-11", "1000-2-10", "1000-3-10"


def _sky(info, x, y, band="r"):
    ra, dec = WCS(info["headers"][band]).all_pix2world(np.atleast_1d(x), np.atleast_1d(y), 0)
    return np.asarray(ra, float), np.asarray(dec, float)


@pytest.fixture(scope="module")
def sas(tmp_path_factory):
    """A and B overlap (B starts 120 px along A's x); C lacks its i frame; D is listed, no frames."""
    root = tmp_path_factory.mktemp("sas")
    a = make_synthetic_sas(root, fid=A, n_stars=4, n_gal=2, seed=1)
    ra_b, dec_b = _sky(a, 99.5 + 120, 74.5)  # B's centre: 120 px further along A's x
    b = make_synthetic_sas(root, fid=B, n_stars=4, n_gal=2, seed=2, crval=(ra_b[0], dec_b[0]))
    c = make_synthetic_sas(root, fid=C, n_stars=3, n_gal=1, seed=3, missing_bands=("i",))
    d = make_synthetic_sas(tmp_path_factory.mktemp("elsewhere"), fid=D, n_stars=1, n_gal=0, seed=4)
    rows = [window_row(a, grow_px=30), window_row(b), window_row(c), window_row(d)]
    write_window_flist(root, rows)
    return {"a": a, "b": b, "c": c, "d": d, "root": root, "sas_url": a["sas_url"]}


@pytest.fixture
def kw(sas, tmp_path):
    window._MEMO.clear()
    return {"sas_url": sas["sas_url"], "cache_dir": str(tmp_path / "cache")}


def test_munu_round_trip_and_a_real_sdss_row():
    rng = np.random.default_rng(0)
    ra, dec = rng.uniform(0, 360, 1000), rng.uniform(-89, 89, 1000)
    node, incl = rng.uniform(0, 360, 1000), rng.uniform(-90, 90, 1000)
    mu, nu = radec_to_munu(ra, dec, node, incl)
    assert ((mu >= 0) & (mu < 360)).all() and (np.abs(nu) <= 90).all()
    ra2, dec2 = munu_to_radec(mu, nu, node, incl)
    np.testing.assert_allclose(dec2, dec, atol=1e-9)
    np.testing.assert_allclose((ra2 - ra + 180) % 360 - 180, 0, atol=1e-9)
    # incl = 0, node = 0: great-circle coordinates are equatorial ones
    np.testing.assert_allclose(radec_to_munu(12.5, -3.0, 0.0, 0.0), (12.5, -3.0), atol=1e-12)
    # the window_flist row of 8162-6-80 (SDSS's own values): its frame centre lies in its box
    mu, nu = radec_to_munu(331.7094313415374, 26.962597936431393, 274.992907999999, 30.010407)
    assert 335.6211572981639 < mu < 335.784828281724 and 1.03084172769183 < nu < 1.2559955032595662


def test_lookup_ranks_overlapping_fields_by_inset(sas, kw):
    index = load_window_index(**kw)
    assert len(index) == 4 and isinstance(index, WindowIndex)
    a, b = sas["a"], sas["b"]
    xs = np.array([20.0, 60.0, 130.0, 150.0, 185.0])  # A's pixels; B covers x >= 120 - 0.5 of A's
    ra, dec = _sky(a, xs, np.full(xs.size, 74.5))
    names, inset = index.lookup(ra, dec, max_candidates=3)
    assert names.shape == (5, 3)
    # expected, computed here from the boxes: how deep (degrees on the sky) each point is in A's, B's box
    deep = {}
    for fid, row in ((A, window_row(a, grow_px=30)), (B, window_row(b))):
        mu, nu = radec_to_munu(ra, dec, row["NODE"], row["INCL"])
        deep[fid] = np.minimum.reduce([(mu - row["MU_START"]) * np.cos(np.deg2rad(nu)),
                                       (row["MU_END"] - mu) * np.cos(np.deg2rad(nu)),
                                       nu - row["NU_START"], row["NU_END"] - nu])
    for i in range(len(xs)):
        holders = sorted((f for f in deep if deep[f][i] >= 0), key=lambda f: -deep[f][i])
        assert names[i, : len(holders)].tolist() == holders and (names[i, len(holders):] == "").all()
        np.testing.assert_allclose(inset[i, : len(holders)], [deep[f][i] for f in holders], rtol=1e-9)
    assert names[0, 0] == A and names[-1, 0] == B and (names[:, 1] != "").sum() >= 2  # overlaps seen
    far = index.lookup([10.0, np.nan, 400.0], [80.0, 0.0, 0.0])[0]
    assert (far == "").all()
    assert index.locate(ra[:1], dec[:1]).tolist() == [A]


def test_lookup_is_fast_on_many_fields(monkeypatch):
    """A survey-sized index (240k field-sized boxes on a grid) answers 20k points through the tree."""
    monkeypatch.setattr(window, "_LOOKUP_CHUNK", 8_000)
    mu0, nu0 = (g.ravel() for g in np.meshgrid(np.arange(0, 360, 0.15), np.arange(100) * 0.2 - 10))
    cols = {"run": np.arange(mu0.size) // 1000 + 1, "camcol": np.ones(mu0.size, int),
            "field": np.arange(mu0.size) % 1000, "node": np.zeros(mu0.size), "incl": np.zeros(mu0.size),
            "mu_start": mu0, "mu_end": mu0 + 0.16, "nu_start": nu0, "nu_end": nu0 + 0.23,
            "score": np.ones(mu0.size)}
    index = WindowIndex(cols)
    rng = np.random.default_rng(1)
    ra, dec = rng.uniform(0, 359.9, 20_000), rng.uniform(-9.5, 9.5, 20_000)
    names, inset = index.lookup(ra, dec)  # more points than one tree query takes: answered in parts
    # every point lies in a box of this grid (boxes overlap by 0.01 deg in mu, 0.03 in nu), often in two
    assert (names[:, 0] != "").all() and (inset[:, 0] >= 0).all()
    i = 123
    j = list(index.field_ids).index(names[i, 0])
    assert mu0[j] <= ra[i] <= mu0[j] + 0.16 and nu0[j] <= dec[i] <= nu0[j] + 0.23
    # one odd, huge box does not inflate the search radius of the others, and is still found
    cols = {k: np.append(v, {"run": 999, "camcol": 6, "field": 1, "node": 0.0, "incl": 0.0, "mu_start": 10.0,
                             "mu_end": 40.0, "nu_start": -80.0, "nu_end": -70.0, "score": 1.0}[k])
            for k, v in cols.items()}
    index = WindowIndex(cols)
    assert index.radius_deg < 0.2
    names = index.lookup([20.0, 20.0], [-75.0, 0.0])[0]
    assert names[0, 0] == "999-6-1" and names[1, 0] not in ("", "999-6-1")


def test_aligner_window_confirms_with_the_wcs_and_flags(sas, kw):
    a, b, c, d = sas["a"], sas["b"], sas["c"], sas["d"]
    pts = pd.concat([a["objects"], b["objects"], c["objects"]])[["ra", "dec"]]
    ra_out, dec_out = _sky(a, -15.0, 74.5)                 # in A's grown box, off A's frames
    ra_d, dec_d = d["objects"]["ra"].iloc[:1], d["objects"]["dec"].iloc[:1]   # listed field, no frames
    extra = pd.DataFrame({"ra": [ra_out[0], ra_d.iloc[0], 10.0, np.nan],
                          "dec": [dec_out[0], dec_d.iloc[0], 80.0, 1.0]})
    table = pd.concat([pts, extra], ignore_index=True)
    out = Aligner(fields="window", policy="flag", **kw).fit_transform(table)
    n_a, n_b, n_c = len(a["objects"]), len(b["objects"]), len(c["objects"])
    assert len(out) == len(table) and (out.index == table.index).all()
    flags = out["flag"].tolist()
    assert flags[-4:] == ["outside", "no_frames", "outside", "invalid_coord"]
    assert out["field_id"].iloc[-3] == D and out["field_id"].iloc[-2] == ""
    assert set(flags[: n_a + n_b]) == {""}
    assert set(flags[n_a + n_b: n_a + n_b + n_c]) == {"missing_band"}
    assert set(out["field_id"].iloc[n_a + n_b: n_a + n_b + n_c]) == {C}
    # where A and B overlap, the field chosen is the one the object lies deeper in (by the WCS)
    ab = out.iloc[: n_a + n_b]
    ref = Aligner(fields=[A, B], policy="flag", **kw).fit_transform(pts.iloc[: n_a + n_b])
    assert ab["field_id"].tolist() == ref["field_id"].tolist()
    np.testing.assert_allclose(ab["x_g"], ref["x_g"])
    assert {A, B} <= set(ab["field_id"])
    # policy='raise' names the no_frames row
    with pytest.raises(ValueError, match="SAS has none of its frames"):
        Aligner(fields="window", **kw).fit_transform(extra.iloc[1:2])


def test_explicit_fields_and_columns_skip_the_lookup(sas, kw, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("window_flist was looked up")

    monkeypatch.setattr(window.WindowIndex, "lookup", boom)
    a = sas["a"]["objects"]
    out = Aligner(fields="window", policy="flag", **kw).fit_transform(a[["ra", "dec", "run", "camcol", "field"]])
    assert (out["field_id"] == A).all() and (out["flag"] == "").all()
    out = Aligner(fields=[A], policy="flag", **kw).fit_transform(a[["ra", "dec"]])
    assert (out["field_id"] == A).all()


def test_compact_index_is_cached_and_rebuilt_when_unreadable(sas, kw, monkeypatch):
    fetcher = Fetcher(kw["sas_url"], kw["cache_dir"], quiet=True)
    first = load_window_index(fetcher)
    npz = index_path(fetcher)
    assert npz.is_file() and npz.parent == fetcher.cached_path(WINDOW_FLIST_PATH).parent
    assert npz.stat().st_size < 10_000
    assert not list(npz.parent.glob(".*part*"))  # written atomically: no temporary file left
    assert load_window_index(fetcher) is first  # in memory: no file read at all

    calls = []
    real = WindowIndex.from_fits.__func__

    def counting(cls, path):
        calls.append(path)
        return real(cls, path)

    monkeypatch.setattr(WindowIndex, "from_fits", classmethod(counting))
    window._MEMO.clear()
    again = load_window_index(fetcher)  # a new process: reads the .npz, not the FITS file
    assert calls == [] and again.field_ids.tolist() == first.field_ids.tolist()
    np.testing.assert_array_equal(again.columns["mu_end"], first.columns["mu_end"])

    npz.write_bytes(b"PK\x03\x04 not really a zip")
    window._MEMO.clear()
    with pytest.warns(RuntimeWarning, match="cannot be read.*rebuilding"):
        rebuilt = load_window_index(fetcher)
    assert len(calls) == 1 and rebuilt.field_ids.tolist() == first.field_ids.tolist()
    assert WindowIndex.load(npz).field_ids.tolist() == first.field_ids.tolist()  # healthy again


def test_window_flist_needs_only_its_columns_by_name(sas, tmp_path):
    rows = [window_row(sas["a"]), window_row(sas["b"])]
    # without the optional columns, without the extra ones: fine (SCORE defaults to 1)
    minimal = write_window_flist(tmp_path / "m", rows, extra_columns=False,
                                 drop=("RERUN", "SCORE", "RA", "DEC", "MJD"))
    index = WindowIndex.from_fits(minimal)
    assert index.field_ids.tolist() == [A, B] and (index.columns["score"] == 1).all()
    lacking = write_window_flist(tmp_path / "l", rows, drop=("NU_END",))
    with pytest.raises(WindowIndexError, match="NU_END"):
        WindowIndex.from_fits(lacking)
    # SCORE breaks ties between boxes a point lies equally deep in
    same = [window_row(sas["a"]), dict(window_row(sas["a"]), FIELD=99)]
    tie = WindowIndex.from_fits(write_window_flist(tmp_path / "t", same, score=[0.2, 0.9]))
    assert tie.locate(sas["a"]["objects"]["ra"][:1], sas["a"]["objects"]["dec"][:1]).tolist() == ["1000-1-99"]


def test_a_sas_without_window_flist_says_so(tmp_path):
    root = tmp_path / "sas"
    info = make_synthetic_sas(root, fid=A, n_stars=1, n_gal=0, seed=5)
    aligner = Aligner(fields="window", policy="flag", sas_url=info["sas_url"], cache_dir=str(tmp_path / "c"))
    with pytest.raises(NotFoundError, match="window_flist.*--fields"):
        aligner.fit_transform(info["objects"][["ra", "dec"]])


@pytest.mark.integration
def test_mirror_index_holds_every_catalog_object_in_its_own_field(mirror_fetcher):
    from stargal.catalogs import read_calibobj

    index = load_window_index(mirror_fetcher)
    assert len(index) == 9
    for fid in ("8162-6-80", "1035-6-17"):
        cat = read_calibobj(fid, mirror_fetcher, on_frames=False)
        assert (index.locate(cat["ra"], cat["dec"]) == fid).mean() > 0.99


def test_first_download_of_the_index_shows_a_progress_bar(sas, kw, monkeypatch, capsys):
    import stargal.fetch as fetch

    monkeypatch.setattr(fetch, "_BAR_MIN_BYTES", 1)  # the real file is ~0.5 GB; this one is small
    load_window_index(**kw)  # estimators' fetchers are quiet; the index download is shown anyway
    assert "window_flist.fits" in capsys.readouterr().err
    window._MEMO.clear()
    load_window_index(**kw)  # from the cache: nothing to show
    assert "window_flist.fits" not in capsys.readouterr().err
