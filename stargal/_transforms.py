"""Image transforms of the cutout augmentation (private): kernels, convolutions, geometry.

Used by :class:`stargal.augment.CutoutAugmenter` (and its tests). Stacks are float arrays
``(C, H, W)`` or cutouts ``(n, C, H, W)``; pixel coordinates are 0-based ``(row, column)``
with the centre pixel ``((H - 1) / 2, (W - 1) / 2)``.

* :func:`discrete_gaussian`: the 1-D discrete Gaussian kernel of exact variance;
  :func:`kernel_groups` groups one copy's bands by kernel width;
* :func:`convolve_zero`, :func:`convolve_psf`, :func:`noise_variance_factor`: separable
  convolution with zero padding, of images and of unit-sum PSF stamps, and what it does to white
  noise;
* :func:`dihedral`, :func:`affine`: the 8 symmetries of the square and zoom/shear/shift about the
  centre pixel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, special

__all__ = ["kernel_groups", "discrete_gaussian", "convolve_zero", "noise_variance_factor",
           "convolve_psf", "dihedral", "affine"]


def kernel_groups(sigmas):
    """``(sigma, band indices)`` for each distinct finite kernel width of one copy.

    Bands sharing a width are convolved together; a non-finite width (no usable PSF
    in this copy, checked on the input rows) leaves those bands unchanged.
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    groups = []
    for s in np.unique(sigmas[np.isfinite(sigmas)]):
        groups.append((float(s), np.flatnonzero(sigmas == s)))
    return groups


def discrete_gaussian(sigma: float) -> np.ndarray:
    """1-D discrete Gaussian kernel ``exp(-t) I_n(t)``, ``t = sigma**2`` (Lindeberg 1990).

    Unlike a Gaussian sampled at pixel centres, its variance is exactly
    ``sigma**2`` pixels^2 even for sub-pixel ``sigma`` (and it tends to the
    sampled Gaussian for large ``sigma``). Truncated at ``4 sigma + 1`` pixels
    and normalised to unit sum, so flux is conserved.
    """
    t = float(sigma) ** 2
    if t < 1e-12:
        return np.ones(1)
    radius = int(np.ceil(4.0 * sigma)) + 1
    kernel = special.ive(np.arange(-radius, radius + 1), t)
    return kernel / kernel.sum()


def convolve_zero(stack: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable convolution of a ``(C, H, W)`` stack with zero padding (float64)."""
    out = np.asarray(stack, dtype=np.float64)
    for axis in (1, 2):
        out = ndimage.convolve1d(out, kernel, axis=axis, mode="constant", cval=0.0)
    return out


def noise_variance_factor(kernel: np.ndarray, h: int, w: int) -> np.ndarray:
    """``f^2`` per pixel: white noise's variance after :func:`convolve_zero`, over its input.

    Output pixel ``(r, c)`` is ``sum k_{r-r'} k_{c-c'} x_{r'c'}`` over the stamp, so for
    independent pixels of variance ``s^2`` its variance is ``s^2 G(r) G(c)`` with
    ``G(j) = sum_{j' in stamp} k_{j-j'}^2`` (``= sum_i k_i^2`` away from the edges).
    """
    g_r = ndimage.convolve1d(np.ones(h), kernel**2, mode="constant")
    g_c = ndimage.convolve1d(np.ones(w), kernel**2, mode="constant")
    return g_r[:, None] * g_c[None, :]


def convolve_psf(psfs: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve PSF stamps ``(C, H, W)`` with zero padding, rescaled to their input sums.

    A stamp whose input or output sum is not positive is left unscaled.
    """
    before = np.asarray(psfs, dtype=np.float64).sum(axis=(1, 2))
    out = convolve_zero(psfs, kernel)
    after = out.sum(axis=(1, 2))
    ok = (before > 0) & (after > 0)
    scale = np.divide(before, after, out=np.ones_like(after), where=ok)
    return out * scale[:, None, None]


def dihedral(X: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Apply dihedral element ``k[i]`` (0..7) to cutout ``i``: ``k % 4`` quarter
    turns after a left-right flip when ``k >= 4``. Square cutouts only."""
    out = np.empty_like(X)
    for code in range(8):
        idx = np.flatnonzero(k == code)
        if idx.size == 0:
            continue
        block = X[idx]
        if code >= 4:
            block = block[..., ::-1]
        out[idx] = np.rot90(block, code % 4, axes=(2, 3))
    return out


def affine(
    X: np.ndarray, d: np.ndarray, scale: np.ndarray, g: np.ndarray, theta: np.ndarray
) -> np.ndarray:
    """Zoom/shear each cutout about its centre pixel and shift it by ``d``.

    Forward map (0-based ``(row, col)`` pixel coordinates, centre ``c``):
    ``out = s (I + g a b^T)(in - c) + c + d`` with ``a = (cos t, sin t)``,
    ``b = (-sin t, cos t)``. :func:`scipy.ndimage.affine_transform` needs the
    inverse ``in = M (out - c - d) + c``, ``M = (I - g a b^T) / s``; the result is
    multiplied by ``|det M| = 1 / s^2`` so that flux is conserved.
    """
    m, n_bands, h, w = X.shape
    c = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    out = np.empty_like(X)
    for i in range(m):
        a = np.array([np.cos(theta[i]), np.sin(theta[i])])
        b = np.array([-np.sin(theta[i]), np.cos(theta[i])])
        mat = (np.eye(2) - g[i] * np.outer(a, b)) / scale[i]
        offset = c - mat @ (c + d[i])
        jac = abs(np.linalg.det(mat))
        for band in range(n_bands):
            ndimage.affine_transform(
                X[i, band], mat, offset=offset, output=out[i, band], order=3, mode="nearest"
            )
        if jac != 1.0:
            out[i] *= np.float32(jac)
    return out
