"""Tests for stargal.split (sky groups, test-field exclusion, splitters) and the footprint geometry
of stargal.frames behind the exclusion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from stargal.frames import (
    Frame,
    distance_to_footprint,
    footprint_overlap,
    in_footprints,
    min_separation_arcsec,
)
from stargal.split import (
    assign_splits,
    exclude_fields,
    group_train_valid_indices,
    make_cv,
    make_groups,
    sky_groups,
)

HALF_DEG = 0.1  # half-size of the synthetic square footprints


def rect(ra0, dec0, half_x, half_y, scale=1.0):
    """A synthetic frame (:class:`stargal.frames.Frame`, TAN WCS, ``scale`` arcsec pixels) centred
    on (ra0, dec0), ``2 half_x`` x ``2 half_y`` degrees; no pixels are allocated."""
    nx, ny = int(round(2 * half_x * 3600 / scale)), int(round(2 * half_y * 3600 / scale))
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra0 % 360, dec0]
    wcs.wcs.cdelt = [-scale / 3600, scale / 3600]
    wcs.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]  # 1-based FITS: the frame's centre
    return Frame("r", np.broadcast_to(np.float32(0), (ny, nx)), wcs=wcs)


def square(ra0, dec0, half=HALF_DEG):
    """A synthetic square frame of half-size ``half`` deg centred on (ra0, dec0)."""
    return rect(ra0, dec0, half, half)


def offsets_arcsec(ra0, dec0, ra, dec):
    """Independent reference: (dlon, dlat) offsets in arcsec from astropy's offset frame."""
    c = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    dlon, dlat = c.spherical_offsets_to(SkyCoord(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg))
    return dlon.to_value(u.arcsec), dlat.to_value(u.arcsec)


def scatter_around(ra0, dec0, n, radius_deg, rng):
    """Random points within ``radius_deg`` (box in offsets) of a centre, RA wrapped to [0, 360)."""
    c = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    dx, dy = rng.uniform(-radius_deg, radius_deg, size=(2, n))
    pts = c.spherical_offsets_by(dx * u.deg, dy * u.deg)
    return pts.ra.wrap_at(360 * u.deg).deg, pts.dec.deg


# ----------------------------------------------------------------------------------------------
# groups
# ----------------------------------------------------------------------------------------------
def test_sky_groups_deterministic_and_row_independent():
    rng = np.random.default_rng(0)
    ra, dec = rng.uniform(0, 360, 500), rng.uniform(-80, 80, 500)
    g1 = sky_groups(ra, dec, cell_arcmin=3.0)
    g2 = sky_groups(ra, dec, cell_arcmin=3.0)
    np.testing.assert_array_equal(g1, g2)
    perm = rng.permutation(500)
    np.testing.assert_array_equal(sky_groups(ra[perm], dec[perm], 3.0), g1[perm])
    assert g1.dtype == np.int64


def test_sky_groups_spatially_coherent():
    rng = np.random.default_rng(1)
    n = 4000
    ra, dec = rng.uniform(0, 360, n), rng.uniform(-75, 75, n)
    pa = rng.uniform(0, 360, n)
    near = SkyCoord(ra * u.deg, dec * u.deg).directional_offset_by(pa * u.deg, 1 * u.arcsec)
    far = SkyCoord(ra * u.deg, dec * u.deg).directional_offset_by(pa * u.deg, 10 * u.arcmin)
    g = sky_groups(ra, dec, 3.0)
    g_near = sky_groups(near.ra.deg, near.dec.deg, 3.0)
    g_far = sky_groups(far.ra.deg, far.dec.deg, 3.0)
    # a 1" step crosses a 3' cell boundary with probability ~ 2 * 1/180
    assert np.mean(g == g_near) > 0.97
    # 10' away is always more than one 3' cell away
    assert np.all(g != g_far)


def test_sky_groups_cells_are_roughly_square_on_the_sky():
    # along RA at dec 60, 60' of RA is 30' on the sky: about ten 3' cells
    ra = np.linspace(100.0, 101.0, 2001)
    g = sky_groups(ra, np.full_like(ra, 60.0), 3.0)
    assert 9 <= len(np.unique(g)) <= 11
    dec = np.linspace(10.0, 11.0, 2001)  # 60' of Dec: about twenty 3' cells
    assert 19 <= len(np.unique(sky_groups(np.full_like(dec, 50.0), dec, 3.0))) <= 21


def test_sky_groups_ra_wraps():
    g = sky_groups([0.0, 360.0, -10.0, 350.0, 720.5], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert g[0] == g[1] and g[2] == g[3]
    assert g[4] == sky_groups([0.5], [1.0])[0]
    # near the pole a whole ring of RA is only a few cells (each still ~3' on the sky)
    assert len(np.unique(sky_groups(np.linspace(0, 359, 50), np.full(50, 89.99)))) <= 4


@pytest.mark.parametrize(
    "ra, dec, cell, match",
    [([np.nan], [0.0], 3.0, "non-finite"), ([0.0], [91.0], 3.0, r"\[-90, 90\]"),
     ([0.0], [0.0], 0.0, "cell_arcmin"), ([0.0, 1.0], [0.0], 3.0, "same length")],
)
def test_sky_groups_bad_input(ra, dec, cell, match):
    with pytest.raises(ValueError, match=match):
        sky_groups(ra, dec, cell_arcmin=cell)


def test_make_groups_by_field_and_cell():
    t = pd.DataFrame({
        "ra": [10.0, 10.5, 20.0, 20.0],
        "dec": [0.0, 0.0, 5.0, 5.0],
        "field_id": ["8162-6-80", "8162-6-80", "1035-6-17", "1035-6-17"],
    })
    gf = make_groups(t, by="field")
    assert gf[0] == gf[1] and gf[2] == gf[3] and gf[0] != gf[2]
    t2 = t.drop(columns="field_id").assign(
        run=[8162, 8162, 1035, 1035], camcol=[6, 6, 6, 6], field=[80, 80, 17, 17]
    )
    np.testing.assert_array_equal(make_groups(t2, by="field"), gf)
    gc = make_groups(t, by="cell", cell_arcmin=3.0)
    assert gc[0] != gc[1] and gc[2] == gc[3]
    with pytest.raises(ValueError, match="no field id"):
        make_groups(t.assign(field_id=["", "8162-6-80", "1035-6-17", "1035-6-17"]), by="field")
    with pytest.raises(ValueError, match="by must be"):
        make_groups(t, by="run")
    with pytest.raises(ValueError, match="field_id"):
        make_groups(t[["ra", "dec"]], by="field")


# ----------------------------------------------------------------------------------------------
# exclusion
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ra0, dec0",
    [(150.0, 30.0), (0.0, 0.0), (359.95, -10.0), (0.03, 45.0), (40.0, 84.0), (250.0, -60.0)],
)
def test_exclude_fields_against_independent_offsets(ra0, dec0):
    rng = np.random.default_rng(int(ra0 * 10 + dec0 + 1000))
    margin = 20.0
    ra, dec = scatter_around(ra0, dec0, 3000, 0.2, rng)
    poly = square(ra0, dec0)
    keep = exclude_fields(pd.DataFrame({"ra": ra, "dec": dec}), [poly], margin_arcsec=margin)

    # reference: distance to the square (rounded corners after expansion) in astropy offsets
    dlon, dlat = offsets_arcsec(ra0, dec0, ra, dec)
    h = HALF_DEG * 3600
    d = np.hypot(np.maximum(np.abs(dlon) - h, 0), np.maximum(np.abs(dlat) - h, 0))
    tol = 0.05  # arcsec; the two geometries differ by ~1e-3" at this size
    assert not keep[d < margin - tol].any(), "objects inside the footprint + margin were kept"
    assert keep[d > margin + tol].all(), "objects well away from the footprint were removed"
    # some of each, so the test is not vacuous
    assert 0 < keep.sum() < len(keep)

    # second independent check: kept objects are outside the inscribed circle of radius h + margin
    kept = SkyCoord(ra[keep] * u.deg, dec[keep] * u.deg)
    sep = SkyCoord(ra0 * u.deg, dec0 * u.deg).separation(kept)
    assert sep.arcsec.min() >= h + margin - tol


def test_footprint_straddling_ra_zero():
    poly = square(0.0, 0.0)  # corners (359.9, -0.1) ... (0.1, 0.1)
    ra = np.array([0.0, 359.95, 0.05, 359.85, 0.15, 180.0, 359.9 - 25 / 3600])
    dec = np.zeros_like(ra)
    inside = in_footprints(ra, dec, [poly], margin_arcsec=0.0)
    assert inside.tolist() == [True, True, True, False, False, False, False]
    assert in_footprints(ra, dec, [poly], margin_arcsec=30.0)[-1]
    # negative RA and RA > 360 are the same sky
    assert in_footprints([-0.05, 360.05], [0.0, 0.0], poly).all()


def test_zero_overlap_after_exclusion():
    """After exclusion no kept 'train' object is within the margin of any 'test' object."""
    rng = np.random.default_rng(5)
    ra0, dec0, margin = 359.98, 12.0, 15.0
    poly = square(ra0, dec0)
    # test objects fill the footprint; train objects come from an overlapping, larger region
    t_ra, t_dec = scatter_around(ra0, dec0, 800, HALF_DEG * 0.999, rng)
    r_ra, r_dec = scatter_around(ra0 + 0.1, dec0 + 0.05, 4000, 0.25, rng)
    train = pd.DataFrame({"ra": r_ra, "dec": r_dec})
    keep = exclude_fields(train, poly, margin_arcsec=margin)
    assert (~keep).sum() > 500  # the overlap was real
    assert min_separation_arcsec(r_ra, r_dec, t_ra, t_dec) < 1.0  # before: shared sky
    sep = min_separation_arcsec(r_ra[keep], r_dec[keep], t_ra, t_dec)
    assert sep >= margin - 0.05
    # and no kept object is inside the polygon by the distance function
    assert distance_to_footprint(r_ra[keep], r_dec[keep], poly).min() > margin - 1e-6


def test_exclude_fields_margin_and_inputs():
    poly = square(30.0, -5.0)
    # 10" east of the east edge
    c = SkyCoord(30 * u.deg, -5 * u.deg).spherical_offsets_by(
        (HALF_DEG * 3600 + 10) * u.arcsec, 0 * u.arcsec
    )
    t = pd.DataFrame({"ra": [c.ra.deg], "dec": [c.dec.deg]})
    assert exclude_fields(t, poly, margin_arcsec=5)[0]
    assert not exclude_fields(t, poly, margin_arcsec=15)[0]
    assert distance_to_footprint(t.ra, t.dec, poly)[0] == pytest.approx(10.0, abs=0.01)
    # the container does not matter
    assert not exclude_fields(t, [poly], margin_arcsec=15)[0]
    assert not exclude_fields(t, (square(100, 0), poly), margin_arcsec=15)[0]
    assert not exclude_fields(t, {"test": poly}, margin_arcsec=15)[0]

    class FieldLike:  # anything with frame(band), like stargal.frames.Field: its r frame
        def frame(self, band):
            assert band == "r"
            return poly

    assert not exclude_fields(t, [FieldLike()], margin_arcsec=15)[0]
    assert exclude_fields(t, [], margin_arcsec=15)[0]

    with pytest.raises(ValueError, match="non-finite"):
        exclude_fields(pd.DataFrame({"ra": [np.nan], "dec": [0.0]}), poly)
    with pytest.raises(ValueError, match="columns"):
        exclude_fields(pd.DataFrame({"x": [1.0]}), poly)
    with pytest.raises(ValueError, match="margin_arcsec"):
        exclude_fields(t, poly, margin_arcsec=-1)
    with pytest.raises(TypeError, match="footprints must be frames"):
        exclude_fields(t, np.array([[1.0, 2.0], [3.0, 4.0], [3.0, 5.0]]))  # corners are not frames
    with pytest.raises(TypeError, match="footprint"):
        exclude_fields(t, "8162-6-80")


def test_footprint_overlap():
    a = square(0.0, 0.0)
    assert footprint_overlap(a, a)
    assert footprint_overlap(a, square(0.15, 0.05))  # corners inside
    # a cross: no corner of either is inside the other, only edges cross
    thin_h = rect(0.0, 0.0, 0.3, 0.01)
    thin_v = rect(0.0, 0.0, 0.01, 0.3)
    assert footprint_overlap(thin_h, thin_v)
    # across RA = 0: neighbours with a 36" gap (359.8-359.99 and 0.0-0.2)
    left = rect(359.895, 0.0, 0.095, 0.1)
    right = rect(0.1, 0.0, 0.1, 0.1)
    assert not footprint_overlap(left, right)
    assert not footprint_overlap(left, right, margin_arcsec=30)
    assert footprint_overlap(left, right, margin_arcsec=40)
    assert not footprint_overlap(a, square(180.0, 0.0), margin_arcsec=100)


# ----------------------------------------------------------------------------------------------
# train / validation / CV
# ----------------------------------------------------------------------------------------------
def _grouped_data(n_groups=30, per=20, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(rng.permutation(n_groups) * 7 + 3, per)
    y = (rng.random(len(groups)) < 0.3).astype(int)
    return groups, y


def test_group_train_valid_indices():
    groups, y = _grouped_data()
    tr, va = group_train_valid_indices(groups, y, valid_fraction=0.2, random_state=0)
    assert set(groups[tr]).isdisjoint(groups[va])
    np.testing.assert_array_equal(np.sort(np.r_[tr, va]), np.arange(len(groups)))
    assert 0.1 <= len(va) / len(groups) <= 0.3
    assert abs(y[va].mean() - y.mean()) < 0.1
    tr2, va2 = group_train_valid_indices(groups, y, valid_fraction=0.2, random_state=0)
    np.testing.assert_array_equal(va, va2)
    _, va3 = group_train_valid_indices(groups, y, valid_fraction=0.2, random_state=1)
    assert not np.array_equal(va, va3)
    # without labels
    tr4, va4 = group_train_valid_indices(groups, None, valid_fraction=0.25)
    assert set(groups[tr4]).isdisjoint(groups[va4])


def test_group_train_valid_indices_errors():
    with pytest.raises(ValueError, match="only 3 group"):
        group_train_valid_indices([1, 1, 2, 2, 3, 3], [0, 1, 0, 1, 0, 1], valid_fraction=0.2)
    with pytest.raises(ValueError, match="valid_fraction"):
        group_train_valid_indices([1, 2], None, valid_fraction=0.0)
    with pytest.raises(ValueError, match="same length"):
        group_train_valid_indices([1, 2, 3], [0, 1])


@pytest.mark.parametrize("stratified", [True, False])
def test_make_cv_never_splits_groups(stratified):
    groups, y = _grouped_data(seed=3)
    cv = make_cv(5, stratified=stratified, random_state=0)
    seen = np.zeros(len(groups), dtype=int)
    for tr, te in cv.split(np.zeros((len(y), 1)), y, groups):
        assert set(groups[tr]).isdisjoint(groups[te])
        seen[te] += 1
    assert (seen == 1).all()
    with pytest.raises(ValueError, match="n_splits"):
        make_cv(1)


def test_assign_splits_end_to_end():
    rng = np.random.default_rng(2)
    poly = square(10.0, 20.0)
    t_ra, t_dec = scatter_around(10.0, 20.0, 200, HALF_DEG * 0.99, rng)
    o_ra, o_dec = scatter_around(10.15, 20.0, 600, 0.15, rng)  # overlaps the test field
    table = pd.DataFrame({
        "ra": np.r_[t_ra, o_ra],
        "dec": np.r_[t_dec, o_dec],
        "field_id": ["8162-6-80"] * 200 + ["1035-6-17"] * 600,
        "label": rng.choice(["star", "galaxy"], 800),
    }, index=np.arange(800) + 1000)
    split = assign_splits(
        table, ["008162-6-0080"], [poly], margin_arcsec=20, cell_arcmin=2.0, random_state=0
    )
    assert split.index.equals(table.index) and split.name == "split"
    assert (split.iloc[:200] == "test").all()
    assert {"train", "valid", "excluded"} <= set(split.iloc[200:])
    keep = exclude_fields(table, poly, margin_arcsec=20)
    assert ((split == "excluded") == (~keep & (table.field_id != "8162-6-80"))).all()
    g = sky_groups(table.ra, table.dec, 2.0)
    assert set(g[split == "train"]).isdisjoint(g[split == "valid"])
    used = split.isin(["train", "valid"]).to_numpy()
    assert min_separation_arcsec(table.ra[used], table.dec[used], t_ra, t_dec) >= 20 - 0.05


# ----------------------------------------------------------------------------------------------
# the real study fields
# ----------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_study_train_fields_do_not_overlap_test_field(mirror_dir):
    import bz2
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    from stargal import sdss
    from stargal.config import load_config

    cfg = load_config()

    def r_frame(fid):
        # read only the primary header (decompressing the whole frame takes seconds)
        raw = b""
        with bz2.open(mirror_dir / sdss.frame_path(fid, "r"), "rb") as fh:
            while not any(raw[i:i + 80].rstrip() == b"END" for i in range(0, len(raw), 80)):
                block = fh.read(2880)
                assert block, f"{fid}: no END card in the primary header"
                raw += block
        header = fits.Header.fromstring(raw.decode("ascii"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header)
        return Frame("r", np.broadcast_to(np.float32(0), (header["NAXIS2"], header["NAXIS1"])), wcs=wcs)

    test = [r_frame(f) for f in cfg.test_fields]
    for fid in cfg.train_fields:
        fp = r_frame(fid)
        margin = cfg.exclusion_margin_arcsec
        assert not any(footprint_overlap(fp, t, margin_arcsec=margin) for t in test), fid
    # sanity: a frame is about 13.5' x 9.8' and contains its own centre
    fp = test[0]
    centre = fp.pixel_to_world((fp.shape[1] - 1) / 2, (fp.shape[0] - 1) / 2)
    assert in_footprints([float(centre[0])], [float(centre[1])], fp)[0]
    assert 400 < distance_to_footprint([float(centre[0]) + 0.3], [float(centre[1])], fp)[0] < 1500
