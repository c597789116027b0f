"""Image transforms of the cutout augmentation (private): kernels, convolutions, geometry.

Used by :class:`stargal.augment.CutoutAugmenter` (and its tests). Stacks are float arrays
``(C, H, W)`` or cutouts ``(n, C, H, W)``; pixel coordinates are 0-based ``(row, column)``
with the centre pixel ``((H - 1) / 2, (W - 1) / 2)``.

* :func:`discrete_gaussian`: the 1-D discrete Gaussian kernel of exact variance;
* :func:`convolve_zero`, :func:`convolve_psf`, :func:`noise_variance_factor`: separable
  convolution with zero padding, of images and of unit-sum PSF stamps, and what it does to white
  noise, for one kernel (the reference the tests and ``make bench`` check the batched ones against);
* :func:`gaussian_matrices`, :func:`convolve_batch`, :func:`noise_variance_factors`,
  :func:`convolve_psf_batch`: the same convolutions for many stamps at once, each with its own
  kernel, as products with ``(H, H)`` and ``(W, W)`` matrices (what the augmenter uses);
* :func:`dihedral`, :func:`affine`: the 8 symmetries of the square and zoom/shear/shift about the
  centre pixel.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage, special

from ._imaging import numba_available

__all__ = ["discrete_gaussian", "convolve_zero", "noise_variance_factor",
           "convolve_psf", "gaussian_kernels", "gaussian_matrices", "kernel_matrices", "convolve_batch",
           "noise_variance_factors", "convolve_psf_batch", "dihedral", "affine"]

#: Stamps per block of the batched operations (bounds their temporary memory).
BLOCK = 4096


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


def gaussian_kernels(sigmas) -> np.ndarray:
    """:func:`discrete_gaussian` of every sigma as the rows of one ``(k, 2 R + 1)`` array, each row
    zero beyond its own truncation radius (``R``: the largest radius); a sigma with
    ``sigma**2 < 1e-12`` gets the identity kernel."""
    s = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    t = s**2
    tiny = t < 1e-12
    radius = np.where(tiny, 0, np.ceil(4.0 * np.where(tiny, 0.0, s)).astype(np.int64) + 1)
    big = int(radius.max()) if radius.size else 0
    taps = np.arange(-big, big + 1)
    kernels = special.ive(taps[None, :], np.where(tiny, 0.0, t)[:, None])
    kernels[np.abs(taps)[None, :] > radius[:, None]] = 0.0
    kernels[tiny] = (taps == 0)
    return kernels / kernels.sum(axis=1, keepdims=True)


def gaussian_matrices(sigmas, n: int, mode: str = "constant") -> np.ndarray:
    """``(k, n, n)`` matrices ``C`` with ``C @ x`` the convolution of a length-``n`` column ``x`` with
    :func:`discrete_gaussian` ``(sigmas[j])``, as :func:`scipy.ndimage.convolve1d` does it.

    ``mode``: ``'constant'`` (zero padding, :func:`convolve_zero`) or ``'nearest'`` (the edge pixel
    repeated). A stack ``(k, H, W)`` is convolved along both axes by ``C_H @ x @ C_W.T``
    (:func:`convolve_batch`).
    """
    return kernel_matrices(gaussian_kernels(sigmas), n, mode)


def kernel_matrices(kernels: np.ndarray, n: int, mode: str = "constant") -> np.ndarray:
    """:func:`gaussian_matrices` of symmetric kernels given as the rows of ``(k, 2 R + 1)``."""
    k, width = kernels.shape
    big = (width - 1) // 2
    idx = np.arange(n)
    if mode == "constant":
        diff = idx[None, :] - idx[:, None]  # input index minus output index
        inside = np.abs(diff) <= big
        return np.where(inside[None], kernels[:, np.clip(diff + big, 0, width - 1)], 0.0)
    if mode != "nearest":
        raise ValueError(f"mode must be 'constant' or 'nearest', got {mode!r}")
    out = np.zeros((k, n, n))
    for tap in range(-big, big + 1):
        out[:, idx, np.clip(idx + tap, 0, n - 1)] += kernels[:, tap + big][:, None]
    return out


def convolve_batch(stacks, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``rows[j] @ stacks[j] @ cols[j].T`` for each stamp ``(H, W)`` of ``stacks`` ``(k, H, W)``
    (float64): the separable convolution of :func:`gaussian_matrices`."""
    x = np.asarray(stacks, dtype=np.float64)
    return np.matmul(np.matmul(rows, x), np.swapaxes(cols, 1, 2))


def noise_variance_factors(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """:func:`noise_variance_factor` of each stamp's kernel, from its :func:`gaussian_matrices`
    (zero padding): ``(k, H, W)``."""
    g_r = np.square(rows).sum(axis=2)
    g_c = np.square(cols).sum(axis=2)
    return g_r[:, :, None] * g_c[:, None, :]


def convolve_psf_batch(psfs, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """:func:`convolve_psf` of PSF stamps ``(k, H, W)``, each with its own matrices."""
    before = np.asarray(psfs, dtype=np.float64).sum(axis=(1, 2))
    out = convolve_batch(psfs, rows, cols)
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


#: Edge pixels scipy adds before its spline filter in ``'nearest'`` mode (``_prepad_for_spline_filter``).
_NPAD = 12


@lru_cache(maxsize=8)
def _prefilter_matrix(n: int) -> np.ndarray:
    """``(n + 2 _NPAD, n)``: cubic B-spline coefficients of a length-``n`` signal after scipy's
    ``'nearest'`` preparation (edge padding by :data:`_NPAD`, then the spline filter), as a matrix."""
    padded = np.pad(np.eye(n), ((_NPAD, _NPAD), (0, 0)), mode="edge")
    out = ndimage.spline_filter1d(padded, 3, axis=0, mode="nearest")
    out.setflags(write=False)
    return out


def _affine_maps(d, scale, g, theta, h, w):
    """The inverse maps ``in = M (out - c - d) + c`` of :func:`affine` as ``(M, offset, |det M|)``."""
    c = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    theta = np.asarray(theta, dtype=np.float64)
    a = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    b = np.stack([-np.sin(theta), np.cos(theta)], axis=1)
    mats = (np.eye(2)[None] - np.asarray(g, dtype=np.float64)[:, None, None] * a[:, :, None] * b[:, None, :])
    mats = mats / np.asarray(scale, dtype=np.float64)[:, None, None]
    offsets = c[None] - np.einsum("nij,nj->ni", mats, c[None] + np.asarray(d, dtype=np.float64))
    return mats, offsets, np.abs(np.linalg.det(mats))


def affine(
    X: np.ndarray, d: np.ndarray, scale: np.ndarray, g: np.ndarray, theta: np.ndarray, engine: str = "auto"
) -> np.ndarray:
    """Zoom/shear each cutout about its centre pixel and shift it by ``d``.

    Forward map (0-based ``(row, col)`` pixel coordinates, centre ``c``):
    ``out = s (I + g a b^T)(in - c) + c + d`` with ``a = (cos t, sin t)``,
    ``b = (-sin t, cos t)``. :func:`scipy.ndimage.affine_transform` needs the
    inverse ``in = M (out - c - d) + c``, ``M = (I - g a b^T) / s``; the result is
    multiplied by ``|det M| = 1 / s^2`` so that flux is conserved. Interpolation: cubic spline,
    ``mode='nearest'``.

    ``engine``: ``'scipy'`` (one :func:`~scipy.ndimage.affine_transform` per cutout and channel),
    ``'numba'`` (the same spline, prefiltered for the whole batch by matrix products and evaluated
    by :func:`stargal._augment_kernels.cubic_affine`: several times faster, equal to float32
    rounding) or ``'auto'`` (numba when it imports).
    """
    m, n_bands, h, w = X.shape
    if engine not in ("auto", "numba", "scipy"):
        raise ValueError(f"engine must be 'auto', 'numba' or 'scipy', got {engine!r}")
    mats, offsets, jacs = _affine_maps(d, scale, g, theta, h, w)
    out = np.empty_like(X)
    if engine == "numba" or (engine == "auto" and numba_available()):
        from ._augment_kernels import cubic_affine

        rows, cols = _prefilter_matrix(h), _prefilter_matrix(w)
        step = max(1, BLOCK // max(n_bands, 1))
        for lo in range(0, m, step):
            block = X[lo:lo + step]
            k = len(block)
            coef = np.matmul(np.matmul(rows, block.reshape(k * n_bands, h, w).astype(np.float64)), cols.T)
            cubic_affine(coef.reshape(k, n_bands, *coef.shape[1:]), mats[lo:lo + step], offsets[lo:lo + step],
                         jacs[lo:lo + step], out[lo:lo + step], _NPAD)
        return out
    for i in range(m):
        for band in range(n_bands):
            ndimage.affine_transform(
                X[i, band], mats[i], offset=offsets[i], output=out[i, band], order=3, mode="nearest"
            )
        if jacs[i] != 1.0:
            out[i] *= np.float32(jacs[i])
    return out
