"""PSF-aware inputs: PSFChannels, the scaler on 10 channels, the CNN's channel count."""

import numpy as np
import pytest
import torch
from sklearn.base import clone

from stargal._imaging import psf_fit_flux, split_psf_channels
from stargal.models import make_cnn_pipeline
from stargal.persist import load_model, save_model
from stargal.psf_channels import PSFChannels
from stargal.scale import AsinhScaler
from tests.synthetic import psf_aware_stack

torch.set_num_threads(1)


def test_psf_fit_flux_recovers_star_flux():
    X, y, flux = psf_aware_stack(noise=0.0)
    images, psfs = split_psf_channels(X)
    f = psf_fit_flux(images, psfs)
    np.testing.assert_allclose(f[y == 0], np.repeat(flux[y == 0, None], 5, axis=1), rtol=1e-4)
    assert np.all(f[y == 1] < flux[y == 1, None])  # extended: the PSF explains less of it


@pytest.mark.parametrize("mode", ["scaled", "residual", "unit", "none"])
def test_psf_channels_modes(mode):
    X, y, flux = psf_aware_stack(noise=0.0)
    step = PSFChannels(mode=mode).fit(X)
    Xt = step.transform(X)
    assert Xt.dtype == np.float32 and len(Xt) == len(X)
    assert Xt.shape[1] == step.n_channels_out_ == (5 if mode == "none" else 10)
    np.testing.assert_array_equal(Xt[:, :5], X[:, :5])
    stars = y == 0
    if mode == "scaled":  # a star's scaled PSF is the star
        np.testing.assert_allclose(Xt[stars, 5:], X[stars, :5], rtol=1e-3, atol=1e-4)
        assert np.abs(Xt[~stars, 5:] - X[~stars, :5]).max() > 0.05
    elif mode == "residual":
        assert np.abs(Xt[stars, 5:]).max() < 1e-3
        assert np.abs(Xt[~stars, 5:]).max() > 0.05
    elif mode == "unit":
        np.testing.assert_array_equal(Xt, X)


def test_drop_is_a_deprecated_name_of_none():
    X, _, _ = psf_aware_stack(n=8, noise=0.0)
    with pytest.warns(FutureWarning, match="mode='none'"):
        old = PSFChannels(mode="drop").fit(X)
    np.testing.assert_array_equal(old.transform(X), PSFChannels(mode="none").fit_transform(X))
    assert old.n_channels_out_ == 5
    with pytest.raises(ValueError, match="mode"):
        PSFChannels(mode="blind").fit(X)


def test_psf_channels_rejects_psf_blind_cutouts_and_bad_mode():
    with pytest.raises(ValueError, match=r"Cutter\(psf=True\)"):
        PSFChannels().fit(np.zeros((3, 5, 15, 15), np.float32))
    with pytest.raises(ValueError, match="mode"):
        PSFChannels(mode="blur").fit(np.zeros((3, 10, 15, 15), np.float32))


def test_scaler_softens_psf_channels_like_their_band():
    X, _, _ = psf_aware_stack()
    Xt = PSFChannels().fit_transform(X)
    scaler = AsinhScaler().fit(Xt)
    np.testing.assert_allclose(scaler.softening_[5:], scaler.softening_[:5])
    alone = AsinhScaler().fit(Xt[:, :5])
    np.testing.assert_allclose(scaler.softening_[:5], alone.softening_)


def test_cnn_takes_channel_count_from_data_and_round_trips(tmp_path):
    X, y, _ = psf_aware_stack(n=96)
    groups = np.arange(len(X)) // 8
    pipe = make_cnn_pipeline(psf=PSFChannels(), scaler=AsinhScaler(), width=4, depth=1, max_epochs=2,
                             batch_size=32, device="cpu")
    pipe.fit(X, y, net__groups=groups)
    net = pipe.named_steps["net"]
    assert net.n_channels_in_ == 10 and net.module_.in_channels == 10
    blind = clone(pipe).set_params(psf__mode="none").fit(X, y, net__groups=groups)
    assert blind.named_steps["net"].module_.in_channels == 5
    save_model(pipe, tmp_path / "m.stargal")
    again = load_model(tmp_path / "m.stargal")
    np.testing.assert_allclose(again.predict_proba(X), pipe.predict_proba(X), atol=1e-6)
