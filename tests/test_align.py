"""Aligner: field assignment, per-band pixel positions through each band's own WCS, flags."""

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from stargal.align import (
    Aligner,
    AlignmentError,
    MissingBandAlignmentError,
    aligned_columns,
    edge_margin,
)
from stargal.catalogs import CoordinateError
from stargal.frames import MissingBandError
from stargal.sdss import BANDS
from synthetic import make_synthetic_sas

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "sdss"


@pytest.fixture(scope="module")
def sas(tmp_path_factory):
    """Three synthetic fields of one run+camcol: two complete, one without an i frame."""
    root = tmp_path_factory.mktemp("sas")
    a = make_synthetic_sas(root, fid="1000-1-10", n_stars=5, n_gal=3, seed=1)
    b = make_synthetic_sas(root, fid="1000-1-11", n_stars=4, n_gal=2, seed=2)
    c = make_synthetic_sas(root, fid="1000-1-12", n_stars=3, n_gal=1, seed=3, missing_bands=("i",))
    cache = tmp_path_factory.mktemp("cache")
    return {"a": a, "b": b, "c": c, "kw": {"sas_url": a["sas_url"], "cache_dir": str(cache)}}


def _pixel_to_sky(info, band, x, y):
    from astropy.wcs import WCS

    ra, dec = WCS(info["headers"][band]).all_pix2world(np.atleast_1d(x), np.atleast_1d(y), 0)
    return float(ra[0]), float(dec[0])


def test_positions_come_from_each_bands_own_wcs(sas):
    info = sas["a"]
    truth = info["objects"]
    out = Aligner(fields=[info["fid"]], **sas["kw"]).fit_transform(truth[["ra", "dec"]])
    assert list(out.columns) == ["ra", "dec"] + aligned_columns()
    assert (out["flag"] == "").all() and (out["field_id"] == info["fid"]).all()
    for b in BANDS:
        np.testing.assert_allclose(out[f"x_{b}"], truth[f"x_{b}"], atol=1e-6)
        np.testing.assert_allclose(out[f"y_{b}"], truth[f"y_{b}"], atol=1e-6)
    # the bands really are offset by several pixels: positions differ band to band
    assert np.abs(out["x_g"] - out["x_r"]).min() > 4 and np.abs(out["y_i"] - out["y_r"]).min() > 3


def test_rows_index_and_order_are_preserved(sas):
    objs = pd.concat([sas["a"]["objects"], sas["b"]["objects"]], ignore_index=True)
    objs = objs.sample(frac=1.0, random_state=0)
    objs.index = [f"obj{i}" for i in range(len(objs))][::-1]
    table = objs[["objid", "ra", "dec"]]
    aligner = Aligner(fields=["1000-1-10", "1000-1-11"], **sas["kw"]).fit(table)
    out = aligner.transform(table)
    assert list(out.index) == list(table.index)
    assert (out["objid"] == table["objid"]).all()
    names = {"001000-1-0010": "1000-1-10", "001000-1-0011": "1000-1-11"}
    expected_field = objs["objid"].str.slice(0, 13).map(names)
    assert (out["field_id"] == expected_field).all()
    np.testing.assert_allclose(out["x_z"], objs["x_z"], atol=1e-6)
    # the caller's table is not modified
    assert list(table.columns) == ["objid", "ra", "dec"]


def test_explicit_run_camcol_field_is_used(sas):
    a, b = sas["a"]["objects"], sas["b"]["objects"]
    table = pd.concat([a, b], ignore_index=True)[["run", "camcol", "field", "ra", "dec"]].copy()
    # fields=None: the fields named in the table are the candidates
    out = Aligner(policy="flag", **sas["kw"]).fit_transform(table)
    assert (out["flag"] == "").all()
    assert (out["field_id"] == [f"1000-1-{f}" for f in table["field"]]).all()
    # an object claimed to be on the wrong field is 'outside' that field, not silently moved
    wrong = table.copy()
    wrong.loc[0, "field"] = 11
    out = Aligner(policy="flag", **sas["kw"]).fit_transform(wrong)
    assert out.loc[0, "flag"] == "outside" and out.loc[0, "field_id"] == "1000-1-11"
    assert (out["flag"].iloc[1:] == "").all()
    with pytest.raises(AlignmentError, match=r"row 0 .*outside field 1000-1-11"):
        Aligner(**sas["kw"]).fit(wrong).transform(wrong)


def test_flags_with_policy_flag(sas):
    a, c = sas["a"], sas["c"]
    good = a["objects"].iloc[0]
    edge = _pixel_to_sky(a, "r", 2.0, 75.0)  # 2 px from r's left edge: off the z frame (dx -4.6)
    on_c = c["objects"].iloc[0]
    table = pd.DataFrame(
        {
            "ra": [good.ra, edge[0], 10.0, np.nan, 400.0, on_c.ra, "abc"],
            "dec": [good.dec, edge[1], 10.0, 0.0, 0.0, on_c.dec, 1.0],
        },
        index=[10, 11, 12, 13, 14, 15, 16],
    )
    aligner = Aligner(fields=["1000-1-10", "1000-1-12"], policy="flag", **sas["kw"])
    out = aligner.fit_transform(table)
    assert len(out) == len(table) and list(out.index) == list(table.index)
    assert out["flag"].tolist() == ["", "edge", "outside", "invalid_coord", "invalid_coord", "missing_band",
                                    "invalid_coord"]
    assert out["field_id"].tolist() == ["1000-1-10", "1000-1-10", "", "", "", "1000-1-12", ""]
    assert out.loc[[12, 13, 14, 16], "x_r"].isna().all()
    assert abs(out.loc[11, "x_r"] - 2.0) < 1e-6 and out.loc[11, "x_z"] < -0.5  # off the z frame: still "edge"
    # a missing band leaves that band's position empty but fills the others
    assert np.isnan(out.loc[15, "x_i"]) and abs(out.loc[15, "x_r"] - on_c.x_r) < 1e-6


def test_edge_margin_follows_cutout_size(sas):
    a = sas["a"]
    ra, dec = _pixel_to_sky(a, "r", 12.0, 75.0)  # 12 px from the r frame's edge
    assert edge_margin(15) == 10.5 and edge_margin(31) == 18.5
    table = pd.DataFrame({"ra": [ra], "dec": [dec]})
    small = Aligner(fields=[a["fid"]], cutout_size=15, policy="flag", **sas["kw"]).fit_transform(table)
    big = Aligner(fields=[a["fid"]], cutout_size=31, policy="flag", **sas["kw"]).fit_transform(table)
    # the nearest other band's edge decides: the u frame is shifted +3.4 px in x, z by -4.6 px
    assert small["flag"].tolist() == ["edge"]  # z frame: 12 - 4.63 = 7.4 px < 10.5
    ra2, dec2 = _pixel_to_sky(a, "r", 16.0, 75.0)  # z: 11.4 px >= 10.5 but < 18.5
    table2 = pd.DataFrame({"ra": [ra2], "dec": [dec2]})
    ok = Aligner(fields=[a["fid"]], policy="flag", **sas["kw"]).fit_transform(table2)
    assert ok["flag"].tolist() == [""]
    assert big["flag"].tolist() == ["edge"]
    assert Aligner(fields=[a["fid"]], cutout_size=31, policy="flag",
                   **sas["kw"]).fit_transform(table2)["flag"].tolist() == ["edge"]


def test_policy_raise_names_rows_and_reasons(sas):
    a = sas["a"]
    good = a["objects"].iloc[0]
    table = pd.DataFrame({"ra": [good.ra, 10.0, 11.0], "dec": [good.dec, 10.0, 10.0]},
                         index=["ok", "far1", "far2"])
    aligner = Aligner(fields=[a["fid"]], **sas["kw"])
    with pytest.raises(AlignmentError) as err:
        aligner.fit(table).transform(table)
    msg = str(err.value)
    assert "2 of 3 row(s)" in msg and "'far1'" in msg and "'far2'" in msg and "outside" in msg
    assert "policy='flag'" in msg
    # invalid coordinates are a CoordinateError (a ValueError) naming the rows, already in fit
    bad = pd.DataFrame({"ra": [good.ra, np.nan], "dec": [good.dec, 95.0]}, index=[7, 8])
    with pytest.raises(CoordinateError, match=r"\[8\]"):
        Aligner(fields=[a["fid"]], **sas["kw"]).fit(bad)
    with pytest.raises(CoordinateError, match=r"dec outside .*\[8\]"):
        Aligner(fields=[a["fid"]], **sas["kw"]).fit(bad)


def test_missing_band_raises_a_missing_band_error(sas):
    c = sas["c"]
    table = c["objects"][["ra", "dec"]]
    with pytest.raises(MissingBandAlignmentError) as err:
        Aligner(fields=[c["fid"]], **sas["kw"]).fit(table).transform(table)
    assert isinstance(err.value, MissingBandError) and isinstance(err.value, ValueError)
    assert err.value.fid == "1000-1-12" and err.value.missing == ("i",)
    assert "1000-1-12 has no frame for band(s) i" in str(err.value) and "row 0" in str(err.value)


def test_complete_field_preferred_where_fields_overlap(tmp_path):
    # two fields covering the same sky: one lacks a band; objects go to the complete one
    crval = (150.0, 2.0)
    full = make_synthetic_sas(tmp_path, fid="2000-3-50", n_stars=3, n_gal=0, crval=crval, seed=4)
    make_synthetic_sas(tmp_path, fid="2000-3-51", n_stars=3, n_gal=0, crval=crval, seed=5,
                       missing_bands=("u",))
    kw = {"sas_url": full["sas_url"], "cache_dir": str(tmp_path / "cache")}
    table = full["objects"][["ra", "dec"]]
    out = Aligner(fields=["2000-3-51", "2000-3-50"], **kw).fit_transform(table)
    assert (out["field_id"] == "2000-3-50").all() and (out["flag"] == "").all()


def test_input_forms_and_validation(sas):
    a = sas["a"]
    obj = a["objects"]
    arr = obj[["ra", "dec"]].to_numpy()
    out = Aligner(fields=a["fid"], **sas["kw"]).fit_transform(arr)  # a single field string is accepted
    np.testing.assert_allclose(out["x_g"], obj["x_g"], atol=1e-6)
    upper = obj[["ra", "dec"]].rename(columns={"ra": "RA", "dec": "Dec"})
    out = Aligner(fields=[a["fid"]], **sas["kw"]).fit_transform(upper)
    assert list(out.columns[:2]) == ["RA", "Dec"] and (out["flag"] == "").all()
    with pytest.raises(CoordinateError, match="lacks column"):
        Aligner(fields=[a["fid"]]).fit(pd.DataFrame({"ra": [1.0]}))
    with pytest.raises(ValueError, match="must be odd"):
        Aligner(cutout_size=16).fit(arr)
    with pytest.raises(ValueError, match="policy"):
        Aligner(policy="drop").fit(arr)
    with pytest.raises(ValueError, match="cannot parse SDSS field"):
        Aligner(fields=["not-a-field"]).fit(arr)
    with pytest.raises(ValueError, match="empty"):
        Aligner(fields=[]).fit(arr)


def test_clone_pickle_feature_names(sas):
    a = sas["a"]
    table = a["objects"][["objid", "ra", "dec"]]
    aligner = Aligner(fields=[a["fid"]], policy="flag", **sas["kw"])
    assert clone(aligner).get_params() == aligner.get_params()
    aligner.fit(table)
    restored = pickle.loads(pickle.dumps(aligner))
    out = restored.transform(table)
    assert list(restored.get_feature_names_out()) == list(out.columns)
    assert list(aligner.get_feature_names_out()) == ["objid", "ra", "dec"] + aligned_columns()


@pytest.mark.integration
def test_real_missing_band_field(tmp_path_factory):
    if not (MIRROR / "dr17").is_dir():
        pytest.skip(f"SDSS mirror not found at {MIRROR}")
    kw = {"sas_url": MIRROR.as_uri(), "cache_dir": str(tmp_path_factory.getbasetemp() / "mirror-cache")}
    # a position near the centre of the real incomplete field 1006-6-11 (no i frame)
    from stargal.frames import Field

    field = Field("1006-6-11", bands="ugrz", **kw)
    ra, dec = field.frame("r").pixel_to_world([1000.0], [700.0])
    field.release()
    table = pd.DataFrame({"ra": ra, "dec": dec})
    with pytest.raises(MissingBandError, match=r"1006-6-11 has no frame for band\(s\) i"):
        Aligner(fields=["1006-6-11"], **kw).fit(table).transform(table)
    out = Aligner(fields=["1006-6-11"], policy="flag", **kw).fit_transform(table)
    assert out["flag"].tolist() == ["missing_band"] and np.isnan(out["x_i"][0])
    assert abs(out["x_r"][0] - 1000.0) < 1e-6
