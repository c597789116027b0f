import pytest

from stargal.sdss import (BANDS, FieldID, calibobj_path, field_paths, frame_path, preview_path,
                          sas_url)


@pytest.mark.parametrize("text", ["8162-6-80", "008162-6-0080", " 8162-6-0080 ", "8162_6_80", (8162, 6, 80)])
def test_parse_forms(text):
    fid = FieldID.parse(text)
    assert (fid.run, fid.camcol, fid.field, fid.rerun) == (8162, 6, 80, 301)
    assert str(fid) == "8162-6-80"
    assert fid.padded == "008162-6-0080"


@pytest.mark.parametrize("bad", ["8162-7-80", "8162-6", "abc", "8162-6-80-1", "", "1234567-1-1"])
def test_parse_rejects(bad):
    with pytest.raises(ValueError, match="field|FieldID"):
        FieldID.parse(bad)


def test_paths_follow_sas_layout():
    fid = FieldID.parse("8162-6-80")
    assert frame_path(fid, "u") == "dr17/eboss/photoObj/frames/301/8162/6/frame-u-008162-6-0080.fits.bz2"
    assert preview_path("8162-6-80") == "dr17/eboss/photoObj/frames/301/8162/6/frame-irg-008162-6-0080.jpg"
    assert calibobj_path(fid, "gal") == "dr17/eboss/sweeps/dr13_final/301/calibObj-008162-6-gal.fits.gz"
    paths = field_paths(fid, preview=True)
    assert len(paths) == len(BANDS) + 3
    with pytest.raises(ValueError, match="band"):
        frame_path(fid, "y")
    with pytest.raises(ValueError, match="star"):
        calibobj_path(fid, "qso")


def test_sas_url_joins_once():
    assert sas_url("/dr17/x", "https://data.sdss.org/sas/") == "https://data.sdss.org/sas/dr17/x"
    assert sas_url("dr17/x", "file:///m") == "file:///m/dr17/x"


def test_fieldid_is_hashable_and_ordered():
    a, b = FieldID.parse("1035-6-17"), FieldID.parse("8162-6-80")
    assert a < b and len({a, FieldID.parse("001035-6-0017")}) == 1
