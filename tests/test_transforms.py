"""The batched image transforms of the augmenter (``stargal._transforms``) against their per-stamp
definitions: scipy's ``convolve1d`` and ``affine_transform``, one stamp and one kernel at a time."""

import numpy as np
import pytest
from scipy import ndimage

from stargal._imaging import numba_available
from stargal._transforms import (affine, convolve_batch, convolve_psf, convolve_psf_batch, convolve_zero,
                                 discrete_gaussian, gaussian_kernels, gaussian_matrices, noise_variance_factor,
                                 noise_variance_factors)

SIGMAS = np.array([0.0, 1e-7, 0.2, 0.7, 1.3, 2.9, 4.5])  # delta, below the delta threshold, ..., wider than 11 px


def test_gaussian_kernels_are_discrete_gaussian_row_by_row():
    kernels = gaussian_kernels(SIGMAS)
    big = (kernels.shape[1] - 1) // 2
    for s, row in zip(SIGMAS, kernels):
        k = discrete_gaussian(s)
        r = (k.size - 1) // 2
        np.testing.assert_allclose(row[big - r:big + r + 1], k, rtol=1e-13, atol=1e-16)
        assert not row[:big - r].any() and not row[big + r + 1:].any()


@pytest.mark.parametrize("mode", ["constant", "nearest"])
@pytest.mark.parametrize("shape", [(11, 11), (9, 13)])
def test_matrices_convolve_like_convolve1d(mode, shape):
    h, w = shape
    rng = np.random.default_rng(0)
    stamps = rng.normal(size=(len(SIGMAS), h, w)) + 3.0
    out = convolve_batch(stamps, gaussian_matrices(SIGMAS, h, mode), gaussian_matrices(SIGMAS, w, mode))
    for s, stamp, got in zip(SIGMAS, stamps, out):
        k = discrete_gaussian(s)
        want = ndimage.convolve1d(ndimage.convolve1d(stamp, k, axis=0, mode=mode), k, axis=1, mode=mode)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="mode"):
        gaussian_matrices(SIGMAS, h, "reflect")


def test_noise_factors_and_psf_convolution_batch_equal_the_single_stamp_versions():
    h = w = 11
    rows = gaussian_matrices(SIGMAS, h)
    rng = np.random.default_rng(1)
    psfs = rng.uniform(0.0, 1.0, size=(len(SIGMAS), h, w))
    psfs[-1] = 0.0  # a stamp with no flux is left unscaled
    f2 = noise_variance_factors(rows, rows)
    conv = convolve_psf_batch(psfs, rows, rows)
    for j, s in enumerate(SIGMAS):
        k = discrete_gaussian(s)
        np.testing.assert_allclose(f2[j], noise_variance_factor(k, h, w), rtol=1e-12)
        np.testing.assert_allclose(conv[j], convolve_psf(psfs[j:j + 1], k)[0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(convolve_batch(psfs[j:j + 1], rows[j:j + 1], rows[j:j + 1])[0],
                                   convolve_zero(psfs[j:j + 1], k)[0], rtol=1e-12, atol=1e-15)


@pytest.mark.skipif(not numba_available(), reason="numba engine not available")
@pytest.mark.parametrize("reach", [0.2, 1.0, 8.0])  # sub-pixel, typical, far outside the stamp
def test_affine_numba_engine_equals_scipy_affine_transform(reach):
    rng = np.random.default_rng(2)
    m = 40
    X = (rng.normal(size=(m, 10, 11, 11)) * np.logspace(-3, 3, 10)[None, :, None, None]).astype(np.float32)
    d = rng.uniform(-reach, reach, size=(m, 2))
    scale = 1.0 + rng.uniform(-0.1, 0.1, size=m)
    scale[0] = 1.0  # |det| == 1: no flux rescaling
    g, theta = rng.uniform(-0.1, 0.1, size=m), rng.uniform(0.0, np.pi, size=m)
    fast = affine(X, d, scale, g, theta, engine="numba")
    slow = affine(X, d, scale, g, theta, engine="scipy")
    assert fast.dtype == np.float32
    peak = np.abs(slow).max(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(fast / peak, slow / peak, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="engine"):
        affine(X, d, scale, g, theta, engine="gpu")
