"""The cutout augmentation's image transforms, batched against one stamp at a time (no data needed).

Inputs: 2,000 synthetic PSF-aware cutouts (5 image + 5 PSF channels, 11 x 11 pixels, the study's CNN
size): Gaussian stars of random flux and seeing plus sky noise, float32.

* **seeing / blur convolutions**: each (copy, band) stamp convolved with its own discrete Gaussian
  (zero padding), its white-noise variance factor and its PSF stamp convolved and renormalised, as the
  augmenter's ``seeing`` step needs them: all stamps at once as ``(H, H)`` / ``(W, W)`` matrix products
  (``gaussian_matrices``, ``convolve_batch``, ``noise_variance_factors``, ``convolve_psf_batch``) vs a
  loop of ``discrete_gaussian``, ``convolve_zero`` (``scipy.ndimage.convolve1d``), ``noise_variance_factor``
  and ``convolve_psf`` per stamp (what the augmenter did before). Both give the same numbers (checked).
* **affine (zoom, shear, shift)**: ``affine(engine='numba')`` (the cubic spline prefiltered for the whole
  batch by matrix products, evaluated by one compiled kernel) vs ``engine='scipy'`` (one
  ``scipy.ndimage.affine_transform`` per stamp and channel). Same numbers to float32 rounding (checked).
"""

from __future__ import annotations

import numpy as np

from benchmarks.run import Result, benchmark, best_time

N_CUTOUTS = 2000
SIZE = 11


def _cutouts(n, rng):
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    sigma = rng.uniform(1.0, 1.6, (n, 5, 1, 1))
    psf = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    psf /= psf.sum(axis=(2, 3), keepdims=True)
    img = rng.uniform(10, 1000, (n, 5, 1, 1)) * psf + rng.normal(0, 1, (n, 5, SIZE, SIZE))
    return np.concatenate([img, psf], axis=1).astype(np.float32)


@benchmark("augment")
def bench_augment(ctx) -> list[Result]:
    """Batched seeing/blur convolutions and affine resampling vs one stamp at a time."""
    from stargal._imaging import numba_available
    from stargal._transforms import (affine, convolve_batch, convolve_psf, convolve_psf_batch, convolve_zero,
                                     discrete_gaussian, gaussian_matrices, noise_variance_factor,
                                     noise_variance_factors)

    rng = np.random.default_rng(0)
    X = _cutouts(N_CUTOUTS, rng)
    n_stamps = N_CUTOUTS * 5
    img = X[:, :5].reshape(n_stamps, SIZE, SIZE).astype(np.float64)
    psf = X[:, 5:].reshape(n_stamps, SIZE, SIZE)
    sigmas = rng.uniform(0.2, 2.0, n_stamps)

    def batched():
        rows = gaussian_matrices(sigmas, SIZE)
        return convolve_batch(img, rows, rows), noise_variance_factors(rows, rows), convolve_psf_batch(psf, rows, rows)

    def per_stamp():
        conv, f2, cpsf = np.empty_like(img), np.empty_like(img), np.empty_like(img)
        for j, s in enumerate(sigmas):
            k = discrete_gaussian(s)
            conv[j] = convolve_zero(img[j:j + 1], k)[0]
            f2[j] = noise_variance_factor(k, SIZE, SIZE)
            cpsf[j] = convolve_psf(psf[j:j + 1], k)[0]
        return conv, f2, cpsf

    for a, b in zip(batched(), per_stamp()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    t_batch = best_time(batched, ctx.repeat)
    t_loop = best_time(per_stamp, ctx.repeat)
    out = [Result("augmentation: seeing/blur convolutions, batched matrix products vs one stamp at a time",
                  n_stamps / t_batch, n_stamps / t_loop, "stamps/s", None,
                  f"{n_stamps} {SIZE}x{SIZE} stamps (2,000 PSF-aware cutouts x 5 bands), each its own kernel "
                  "sigma in U(0.2, 2) px: image convolution, noise variance factor, PSF convolution; equal to "
                  "1e-9 (checked)")]

    if not numba_available():  # the affine row compares the numba engine with scipy's
        return out
    d = rng.uniform(-0.5, 0.5, (N_CUTOUTS, 2))
    scale = 1.0 + rng.uniform(-0.1, 0.1, N_CUTOUTS)
    g, theta = rng.uniform(-0.1, 0.1, N_CUTOUTS), rng.uniform(0.0, np.pi, N_CUTOUTS)
    fast = affine(X, d, scale, g, theta, engine="numba")  # also compiles / loads the kernel
    slow = affine(X, d, scale, g, theta, engine="scipy")
    peak = np.abs(slow).max(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(fast / peak, slow / peak, rtol=0, atol=1e-6)
    t_fast = best_time(lambda: affine(X, d, scale, g, theta, engine="numba"), ctx.repeat)
    t_slow = best_time(lambda: affine(X, d, scale, g, theta, engine="scipy"), ctx.repeat)
    out.append(Result("augmentation: affine (zoom, shear, shift), numba engine vs scipy per stamp",
                      N_CUTOUTS / t_fast, N_CUTOUTS / t_slow, "cutouts/s", None,
                      f"{N_CUTOUTS} PSF-aware {SIZE}x{SIZE} cutouts (10 channels), cubic spline, mode 'nearest', "
                      "shift U(±0.5) px, zoom 1 ± 0.1, shear ≤ 0.1, one thread; equal to float32 rounding "
                      "(checked)"))
    return out
