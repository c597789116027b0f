import numpy as np
import pandas as pd
import pytest

from stargal.catalogs import (CoordinateError, labels_to_y, load_catalog, nmgy_to_mag, read_band_centroids,
                              read_calibobj, read_coordinates)


def test_nmgy_to_mag():
    np.testing.assert_allclose(nmgy_to_mag([1.0, 100.0]), [22.5, 17.5])
    assert np.isnan(nmgy_to_mag([0.0, -1.0])).all()


def test_labels_to_y():
    np.testing.assert_array_equal(labels_to_y(["star", "galaxy", "star"]), [0, 1, 0])
    with pytest.raises(ValueError, match="qso"):
        labels_to_y(["star", "qso"])


def test_read_coordinates_dataframe_keeps_index_and_extra_columns():
    df = pd.DataFrame({"RA": [10.0, 20.0], "Dec": [-5.0, 5.0], "name": ["a", "b"]}, index=[7, 9])
    out = read_coordinates(df)
    assert list(out.index) == [7, 9] and list(out.columns) == ["ra", "dec", "name"]


def test_read_coordinates_array_and_csv(tmp_path):
    out = read_coordinates(np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert out["dec"].tolist() == [2.0, 4.0]
    path = tmp_path / "c.csv"
    path.write_text("ra,dec\n331.7,26.9\n0,-90\n")
    assert len(read_coordinates(path)) == 2


def test_read_coordinates_reports_bad_rows():
    df = pd.DataFrame({"ra": [10.0, np.nan, 400.0, 5.0, "x"], "dec": [0.0, 0.0, 0.0, 95.0, 0.0]})
    with pytest.raises(CoordinateError) as err:
        read_coordinates(df)
    msg = str(err.value)
    assert msg == ("invalid coordinates in 4 row(s): row 1: ra missing; row 2: ra 400.0 out of range "
                   "[0, 360); row 3: dec 95.0 out of range [-90, 90]; row 4: cannot parse ra 'x'")


@pytest.mark.parametrize("bad", [pd.DataFrame({"ra": [1.0]}), pd.DataFrame({"x": [1], "y": [2]})])
def test_read_coordinates_missing_columns(bad):
    with pytest.raises(CoordinateError, match="lacks a column for"):
        read_coordinates(bad)


def test_read_coordinates_bad_file(tmp_path):
    with pytest.raises(CoordinateError, match="does not exist"):
        read_coordinates(tmp_path / "nope.csv")
    with pytest.raises(CoordinateError, match="empty"):
        (tmp_path / "e.csv").write_text("ra,dec\n")
        read_coordinates(tmp_path / "e.csv")


@pytest.mark.integration
def test_calibobj_test_field(mirror_fetcher):
    table = read_calibobj("8162-6-80", mirror_fetcher, on_frames=False)
    counts = table["label"].value_counts().to_dict()
    # ../shared/sdss/README.md: test field 8162-6-80 has 811 stars and 336 galaxies
    assert counts == {"star": 811, "galaxy": 336}
    assert table["objid"].is_unique
    assert set(table["field_id"]) == {"8162-6-80"}
    on = read_calibobj("8162-6-80", mirror_fetcher)
    assert 0.95 * len(table) < len(on) <= len(table)
    both = load_catalog(["8162-6-80", "1035-6-17"], mirror_fetcher)
    assert set(both["field_id"]) == {"8162-6-80", "1035-6-17"}
    # magnitudes are reporting columns, finite for nearly all objects
    assert np.isfinite(on["psfmag_r"]).mean() > 0.95


def test_band_centroids_synthetic(tmp_path):
    from synthetic import make_synthetic_sas

    info = make_synthetic_sas(tmp_path / "sas", n_stars=4, n_gal=2, seed=3)
    kw = {"sas_url": info["sas_url"], "cache_dir": str(tmp_path / "cache")}
    cen = read_band_centroids(info["fid"], **kw)
    cat = read_calibobj(info["fid"], **kw)
    assert list(cen["objid"]) == list(cat["objid"])  # same ids, same order as the catalog
    truth = info["objects"].set_index("ra").loc[cat["ra"]]
    for b in "ugriz":  # COLC/ROWC - 0.5: 0-based frame pixels (float32 storage)
        np.testing.assert_allclose(cen[f"x_sdss_{b}"], truth[f"x_{b}"], atol=2e-4)
        np.testing.assert_allclose(cen[f"y_sdss_{b}"], truth[f"y_{b}"], atol=2e-4)
    assert (cen["psf_snr_r"] > 0).all()


def test_band_centroids_missing_columns(tmp_path):
    from astropy.io import fits

    from stargal.sdss import calibobj_path

    import gzip
    import io

    cols = [fits.Column(name=n, format="J", array=np.array([v]))
            for n, v in (("RUN", 1000), ("CAMCOL", 1), ("FIELD", 10), ("ID", 1))]
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(buf)
    for kind in ("star", "gal"):
        path = tmp_path / calibobj_path("1000-1-10", kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(buf.getvalue()))
    with pytest.raises(ValueError, match="no per-band centroids.*COLC"):
        read_band_centroids("1000-1-10", sas_url=tmp_path.as_uri(), cache_dir=str(tmp_path / "cache"))


@pytest.mark.integration
def test_band_centroids_real_field(mirror_fetcher):
    """For bright stars SDSS's r centroid is the catalog position: through the r header WCS, the same pixel."""
    from stargal.align import Aligner

    cat = read_calibobj("8162-6-80", mirror_fetcher)
    cen = read_band_centroids("8162-6-80", mirror_fetcher).set_index("objid").loc[cat["objid"]]
    al = Aligner(policy="flag", refine=False, sas_url=mirror_fetcher.base_url,
                 cache_dir=str(mirror_fetcher.cache_dir)).fit_transform(cat)
    from experiments.alignment import select_alignment_stars

    # bright isolated stars (for fainter objects SDSS's canonical centre can differ from the r centroid)
    ok = select_alignment_stars(al)
    assert ok.sum() > 150
    d_r = np.hypot(cen["x_sdss_r"].to_numpy() - al["x_r"], cen["y_sdss_r"].to_numpy() - al["y_r"])[ok]
    assert np.percentile(d_r, 99) < 0.001
    # g: the header WCS is off by about -0.1 px in y (the registration's job), by several px raw
    dy_g = (cen["y_sdss_g"].to_numpy() - al["y_g"])[ok]
    assert -0.2 < np.median(dy_g) < -0.05
