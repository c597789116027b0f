"""Coordinate lists as people have them (stargal.catalogs.parse_coordinates): names, formats, frames.

Every case of the bad-input tour keeps the user's values: parse_coordinates never changes its input
and says, per row, why a value cannot be used. The same tour through ``predict_coordinates`` on real
frames is in tests/test_portable_models.py.
"""

import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord

from stargal.catalogs import (COORDINATE_COLUMNS, CoordinateError, coordinate_columns, parse_coordinates,
                              read_coordinates)

# 22:06:48.0 +26:57:00 = (331.7, 26.95) degrees; (l, b) of that point in the galactic frame
RA, DEC = 331.7, 26.95
_GAL = SkyCoord(RA, DEC, unit="deg").galactic
L, B = float(_GAL.l.deg), float(_GAL.b.deg)


@pytest.mark.parametrize("ra_name, dec_name", [
    ("RA", "DEC"), ("ra", "dec"), ("Ra", "Dec"), ("ra_deg", "dec_deg"), ("RAJ2000", "DEJ2000"),
    ("_RAJ2000", "_DEJ2000"), ("RA_ICRS", "DE_ICRS"), ("alpha", "delta"), (" ALPHA ", " Delta "),
    ("right_ascension", "declination"),
])
def test_common_column_names_are_found_in_any_case(ra_name, dec_name):
    table = pd.DataFrame({"id": [1], ra_name: [RA], dec_name: [DEC]})
    assert coordinate_columns(table) == (ra_name, dec_name)
    out = parse_coordinates(table)
    assert out.loc[0, "ra_deg"] == RA and out.loc[0, "dec_deg"] == DEC and out.loc[0, "flag_detail"] == ""


def test_the_names_looked_for_are_in_the_error_and_explicit_names_work():
    table = pd.DataFrame({"lon": [RA], "lat": [DEC]})
    with pytest.raises(CoordinateError, match=r"ra \(looked for ra, ra_deg, .*raj2000.*alpha") as err:
        parse_coordinates(table)
    assert "dec (looked for dec, dec_deg" in str(err.value) and "--ra-column" in str(err.value)
    out = parse_coordinates(table, columns=("LON", "lat"))
    assert out[["ra_deg", "dec_deg"]].iloc[0].tolist() == [RA, DEC]
    # the first accepted name present wins (documented order of COORDINATE_COLUMNS)
    both = pd.DataFrame({"RAJ2000": [1.0], "ra": [RA], "dec": [DEC]})
    assert coordinate_columns(both)[0] == "ra"
    assert COORDINATE_COLUMNS["equatorial"][0][0] == "ra"


@pytest.mark.parametrize("ra, dec", [
    ("22:06:48.0", "+26:57:00"), ("22 06 48.0", "+26 57 00"), ("22h06m48.0s", "+26d57m00s"),
    ("22h06m48", "26d57m"), ("331d42m", "26:57:00.0"), ("331.7", "26.95"), (" 331.7 ", "2.695e1"),
    ("22:06.8", "+26:57"),
])
def test_sexagesimal_and_numeric_strings(ra, dec):
    out = parse_coordinates(pd.DataFrame({"RA": [ra], "DEC": [dec]}))
    assert out.loc[0, "flag_detail"] == ""
    np.testing.assert_allclose(out.loc[0, ["ra_deg", "dec_deg"]].to_numpy(float), [RA, DEC], atol=1e-9)


@pytest.mark.parametrize("frame, lon_name, lat_name, lon, lat", [
    ("galactic", "l", "b", L, B),
    ("galactic", "GLON", "GLAT", L, B),
    ("fk5", "RAJ2000", "DEJ2000", RA, DEC),
    ("fk4", "RAB1950", "DEB1950", 331.1146, 26.7003),
])
def test_frames_are_converted_to_icrs(frame, lon_name, lat_name, lon, lat):
    out = parse_coordinates(pd.DataFrame({lon_name: [lon], lat_name: [lat]}), frame=frame)
    expect = SkyCoord(lon, lat, unit="deg", frame=frame).icrs
    assert out.loc[0, "flag_detail"] == ""
    np.testing.assert_allclose(out.loc[0, ["ra_deg", "dec_deg"]].to_numpy(float),
                               [expect.ra.deg, expect.dec.deg], atol=1e-9)
    if frame == "galactic":  # the point it came from
        np.testing.assert_allclose(out.loc[0, ["ra_deg", "dec_deg"]].to_numpy(float), [RA, DEC], atol=1e-8)


def test_galactic_sexagesimal_longitude_is_in_degrees():
    out = parse_coordinates(pd.DataFrame({"l": ["84:00:00"], "b": ["-23:48:00"]}), frame="galactic")
    expect = SkyCoord(84.0, -23.8, unit="deg", frame="galactic").icrs
    np.testing.assert_allclose(out.loc[0, ["ra_deg", "dec_deg"]].to_numpy(float), [expect.ra.deg, expect.dec.deg])


def test_unknown_frame_is_a_clear_error():
    with pytest.raises(ValueError, match="frame must be one of"):
        parse_coordinates(pd.DataFrame({"ra": [1.0], "dec": [2.0]}), frame="supergalactic")


#: The bad-input tour: (ra, dec) as a user might have them -> flag_detail
BAD_VALUES = [
    ("331.7", "95.0", "dec 95.0 out of range [-90, 90]"),
    (331.7, 95.0, "dec 95.0 out of range [-90, 90]"),
    ("12h3", "0", "cannot parse ra '12h3'"),
    ("abc", "+26:57:00", "cannot parse ra 'abc'"),
    ("25:00:00", "0", "cannot parse ra '25:00:00' (hours must be below 24)"),
    ("12:61:00", "0", "cannot parse ra '12:61:00' (minutes must be below 60)"),
    ("", "10", "ra missing"),
    (np.nan, 10.0, "ra missing"),
    ("NaN", "10", "ra missing"),
    ("400", "0", "ra 400 out of range [0, 360)"),
    ("-10", "0", "ra -10 out of range [0, 360)"),
    ("inf", "0", "ra inf out of range [0, 360)"),
    ("331.7", "+95:00:00", "dec +95:00:00 out of range [-90, 90]"),
    ("", "", "ra missing; dec missing"),
    ("x", "y", "cannot parse ra 'x'; cannot parse dec 'y'"),
]


@pytest.mark.parametrize("ra, dec, detail", BAD_VALUES)
def test_unusable_values_get_a_short_reason_and_are_not_changed(ra, dec, detail):
    table = pd.DataFrame({"name": ["good", "bad"], "RA": ["22:06:48.0", ra], "DEC": ["+26:57:00", dec]},
                         index=[10, 11])
    before = table.copy()
    out = parse_coordinates(table)
    assert out["flag_detail"].tolist() == ["", detail]
    assert list(out.index) == [10, 11]
    assert np.isnan(out.loc[11, "ra_deg"]) and np.isnan(out.loc[11, "dec_deg"])
    np.testing.assert_allclose(out.loc[10, ["ra_deg", "dec_deg"]].to_numpy(float), [RA, DEC])
    pd.testing.assert_frame_equal(table, before)  # the user's table is untouched


def test_many_rows_with_one_bad_value_in_the_middle():
    ra = ["22:06:48.0"] * 5000
    ra[2500] = "22:06:48:1"
    out = parse_coordinates(pd.DataFrame({"ra": ra, "dec": ["+26:57:00"] * 5000}))
    assert (out["flag_detail"] != "").sum() == 1 and out.loc[2500, "flag_detail"] == "cannot parse ra '22:06:48:1'"
    assert np.allclose(out["ra_deg"].drop(2500), RA)


def test_read_coordinates_is_strict_and_accepts_the_same_input():
    out = read_coordinates({"RAJ2000": ["22:06:48.0"], "DEJ2000": ["+26:57:00"], "id": ["007"]})
    assert list(out.columns) == ["ra", "dec", "id"] and out["id"].tolist() == ["007"]
    np.testing.assert_allclose(out[["ra", "dec"]].iloc[0].to_numpy(float), [RA, DEC])
    out = read_coordinates({"l": [L], "b": [B]}, frame="galactic")
    np.testing.assert_allclose(out[["ra", "dec"]].iloc[0].to_numpy(float), [RA, DEC], atol=1e-8)
    with pytest.raises(CoordinateError, match=r"row 1: cannot parse ra '12h3'"):
        read_coordinates({"ra": ["331.7", "12h3"], "dec": ["0", "0"]})


def test_the_readme_lists_exactly_the_accepted_names():
    from pathlib import Path
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = re.compile(r"^\| (`icrs`.*?|`galactic`) \| (.*?) \| (.*?) \|$", re.M)
    rows = {m.group(1): m.group(2, 3) for m in row.finditer(text)}
    assert len(rows) == 2
    for kind, (lon, lat) in zip(("equatorial", "galactic"), rows.values()):
        listed = tuple(tuple(re.findall(r"`([^`]+)`", cell)) for cell in (lon, lat))
        assert listed == COORDINATE_COLUMNS[kind]


@pytest.mark.parametrize("dtype", [float, np.float32, np.int64])
def test_numeric_columns_give_what_the_value_by_value_parse_gives(dtype):
    """A numeric column takes a vectorised path; its degrees and reasons equal those of the same
    values given one by one (an object column)."""
    ra = np.array([331.7, np.nan, np.inf, -np.inf, 400.0, -3.0, 359.5, 360.0, 0.0])
    dec = np.array([26.95, 0.0, 90.0, -90.0, 95.0, -91.0, np.nan, 1e300, 0.0])
    if np.dtype(dtype).kind == "i":
        keep = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) < 1e9)
        ra, dec = ra[keep], dec[keep]
    table = pd.DataFrame({"ra": ra.astype(dtype), "dec": dec.astype(dtype)})
    fast = parse_coordinates(table)
    slow = parse_coordinates(table.astype(object))
    assert fast["flag_detail"].tolist() == slow["flag_detail"].tolist()
    assert (fast["flag_detail"] != "").sum() >= 2
    np.testing.assert_array_equal(fast[["ra_deg", "dec_deg"]].to_numpy(), slow[["ra_deg", "dec_deg"]].to_numpy())
