"""Synthetic sources: the renderer and populations (stargal.synth), the synthetic stage's pieces."""

import numpy as np
import pandas as pd
import pytest

from stargal.psf import FieldPSF
from stargal.synth import (SOURCE_COLUMNS, SyntheticPopulation, deconvolved_hlr, render_source,
                           sersic_moment_ratio)
from tests.synthetic import measured_photometry_table


@pytest.fixture(scope="module")
def psf_stamp():
    return FieldPSF.gaussian("8162-6-80", fwhm_arcsec=1.3).stamps("r", [100.0], [100.0], size=25)[0]


# ----------------------------------------------------------------------------- renderer
@pytest.mark.parametrize("kind,n,hlr", [("star", 1.0, 1.0), ("galaxy", 0.5, 0.2), ("galaxy", 1.0, 1.0),
                                        ("galaxy", 4.0, 3.0)])
def test_flux_is_conserved(psf_stamp, kind, n, hlr):
    img = render_source(psf_stamp, 37.5, 0.31, -0.44, kind=kind, sersic_n=n, hlr_arcsec=hlr, q=0.5, beta_deg=20)
    assert abs(img.sum() / 37.5 - 1) < 2e-3


def test_star_is_the_psf(psf_stamp):
    img = render_source(psf_stamp, 5.0, 0.0, 0.0)
    np.testing.assert_allclose(img / 5.0, psf_stamp, atol=2e-4 * psf_stamp.max())
    # a sub-pixel offset moves the centroid by exactly that much
    shifted = render_source(psf_stamp, 5.0, 0.3, -0.2)
    yy, xx = np.mgrid[:25, :25]
    cx, cy = (shifted * xx).sum() / shifted.sum(), (shifted * yy).sum() / shifted.sum()
    assert abs(cx - 12.3) < 0.01 and abs(cy - 11.8) < 0.01


@pytest.mark.parametrize("n", [0.5, 1.0, 2.5, 4.0])
@pytest.mark.parametrize("hlr", [0.15, 0.6, 2.0])
def test_sersic_hlr_after_deconvolution(psf_stamp, n, hlr):
    """Noise-free galaxy on a clean frame: moments minus the PSF's give back the requested hlr."""
    img = render_source(psf_stamp, 100.0, 0.2, 0.1, kind="galaxy", sersic_n=n, hlr_arcsec=hlr, q=0.6, beta_deg=70)
    assert abs(deconvolved_hlr(img, psf_stamp, n) / hlr - 1) < 0.02


def test_moment_ratio_of_a_gaussian_like_profile():
    # Sersic n=0.5 is a Gaussian: <r^2> = 2 sigma^2, hlr = sigma sqrt(2 ln 2) (truncation at 4.5 hlr: negligible)
    assert abs(sersic_moment_ratio(0.5) - 1 / np.log(2)) < 1e-3


def test_bad_renderer_parameters(psf_stamp):
    with pytest.raises(ValueError, match="hlr_arcsec"):
        render_source(psf_stamp, 1.0, kind="galaxy", hlr_arcsec=5.0)
    with pytest.raises(ValueError, match="sersic_n"):
        render_source(psf_stamp, 1.0, kind="galaxy", sersic_n=8.0)
    with pytest.raises(ValueError, match="sub-pixel"):
        render_source(psf_stamp, 1.0, 0.7, 0.0)
    with pytest.raises(ValueError, match="kind"):
        render_source(psf_stamp, 1.0, kind="quasar")


@pytest.mark.parametrize("kw,match", [({"mag_range": (12.0, 20.0)}, "mag_range"),
                                      ({"hlr_range": (0.1, 5.0)}, "hlr_range"),
                                      ({"sersic_range": (0.2, 4.0)}, "sersic_range"),
                                      ({"galaxy_fraction": 1.5}, "galaxy_fraction"),
                                      ({"mag_range": (22.0, 18.0)}, "min <= max"),
                                      ({"mag_distribution": "flat"}, "mag_distribution")])
def test_population_rejects_out_of_range_at_construction(kw, match):
    with pytest.raises(ValueError, match=match):
        SyntheticPopulation(measured_photometry_table(), **kw)


def test_population_draws_measured_colours_and_ranges():
    pop = SyntheticPopulation(measured_photometry_table(), mag_range=(18, 22), hlr_range=(0.2, 1.0),
                              galaxy_fraction=0.3)
    src = pop.sample(400, np.random.default_rng(1))
    assert list(src.columns) == SOURCE_COLUMNS
    assert src["mag_r"].between(18, 22).all()
    gal = src["label"] == 1
    assert 0.2 < gal.mean() < 0.4
    assert src.loc[gal, "hlr_arcsec"].between(0.2, 1.0).all() and (src.loc[~gal, "hlr_arcsec"] == 0).all()
    np.testing.assert_allclose(22.5 - 2.5 * np.log10(src["flux_r"]), src["mag_r"])
    # colours come from donors of the same kind: u - r is 1.5 for stars, 3.0 for galaxies
    ur = -2.5 * np.log10(src["flux_u"] / src["flux_r"])
    np.testing.assert_allclose(ur[~gal], 1.5, atol=1e-6)
    np.testing.assert_allclose(ur[gal], 3.0, atol=1e-6)


# ---------------------------------------------------------------------- the report stage's pieces
def test_recall_maps_and_data_limit():
    from experiments.synthetic import data_limit, recall_maps

    rng = np.random.default_rng(0)
    n = 400
    obj = pd.DataFrame({"field_id": "8162-6-80", "label": np.arange(n) % 2, "mag_r": rng.uniform(17, 19, n),
                        "hlr_fwhm": rng.uniform(0.07, 2.4, n)})
    obj.loc[obj["label"] == 0, "hlr_fwhm"] = 0.0
    # a classifier that sees galaxies larger than 0.3 FWHM and never calls a star a galaxy
    obj["pred_m"] = ((obj["label"] == 1) & (obj["hlr_fwhm"] >= 0.3)).astype(int)
    maps = recall_maps(obj, ["m"])
    star = maps[maps["kind"] == "star"]
    assert len(star) == 1 and star["recall"].iloc[0] == 1.0 and star["n"].iloc[0] == n // 2
    gal = maps[maps["kind"] == "galaxy"].set_index("size_lo")["recall"]
    assert gal[0.06] == 0.0 and gal[0.15] == 0.0 and (gal[[0.3, 0.6, 1.2]] == 1.0).all()
    limit = data_limit(maps, {"8162-6-80": 1.2})
    assert limit["size_min_over_fwhm"].iloc[0] == 0.3
    assert abs(limit["hlr_min_arcsec"].iloc[0] - 0.36) < 1e-9
