"""Cutter(psf=True) on a synthetic field with a known PSF: the PSF channels and what is built on them."""

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from stargal.align import Aligner
from stargal.cutouts import Cutter
from stargal.features import PhotometricFeatures
from stargal.psf_channels import PSFChannels
from stargal.sdss import frame_path
from tests.synthetic import make_psf_sas


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    root = tmp_path_factory.mktemp("psf-sas")
    info = make_psf_sas(root, fid="1100-2-30", n_stars=40, sigma=1.6, noise=0.01, seed=3)
    with fits.open(root / frame_path(info["fid"], "r")) as hdul:
        wcs = WCS(hdul[0].header)
    stars = info["stars"]
    ra, dec = wcs.all_pix2world(stars["x_r"], stars["y_r"], 0)
    table = pd.DataFrame({"ra": ra, "dec": dec})
    info["table"] = pd.concat([table, pd.DataFrame({"ra": [float("nan")], "dec": [0.0]})], ignore_index=True)
    info["cache"] = str(root / "cache")
    return info


def test_psf_cutouts_layout_and_consistency(field):
    kw = {"sas_url": field["sas_url"], "cache_dir": field["cache"]}
    aligned = Aligner(fields=[field["fid"]], policy="flag", **kw).fit_transform(field["table"])
    good = (aligned["flag"] == "").to_numpy()
    assert good.sum() >= 20 and not good[-1]
    X = Cutter(psf=True, **kw).fit_transform(aligned)
    blind = Cutter(**kw).fit_transform(aligned)
    assert X.shape == (len(aligned), 10, 15, 15) and X.dtype == np.float32
    np.testing.assert_array_equal(X[:, :5], blind)  # the image channels are the PSF-blind cutouts
    assert np.isnan(X[~good]).all()  # flagged rows: fill value in every channel
    psf = X[good, 5:]
    np.testing.assert_allclose(psf.sum(axis=(2, 3)), 1.0, atol=1e-5)
    # a star is its field's PSF: the scaled PSF channel reproduces the image to within the noise
    Xt = PSFChannels().fit_transform(X[good])
    resid = np.abs(Xt[:, :5] - Xt[:, 5:]).max(axis=(2, 3))
    peak = Xt[:, :5].max(axis=(2, 3))
    assert np.median(resid / peak) < 0.1
    # and the PSF-relative features call these point sources point sources
    feats = PhotometricFeatures().fit(X[good])
    F = pd.DataFrame(feats.transform(X[good]), columns=feats.get_feature_names_out())
    assert np.median(np.abs(F["psf_aper_ratio_r"] - 1)) < 0.05
    assert np.median(np.abs(F["spread_model_r"])) < 2e-3


def test_cutter_rejects_bad_psf_parameters():
    with pytest.raises(ValueError, match="psf must be True or False"):
        Cutter(psf="yes").fit(pd.DataFrame(columns=["field_id"] + [f"{c}_{b}" for b in "ugriz" for c in "xy"]))
    with pytest.raises(ValueError, match="psf_source"):
        Cutter(psf=True, psf_source="catalog").fit(
            pd.DataFrame(columns=["field_id"] + [f"{c}_{b}" for b in "ugriz" for c in "xy"]))
