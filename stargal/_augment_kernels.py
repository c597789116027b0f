"""numba kernel of :func:`stargal._transforms.affine` (private; imported lazily, compiled on first
use and cached on disk like :mod:`stargal._cutout_kernels`).

:func:`cubic_affine` evaluates prefiltered cubic B-spline coefficients at affine-mapped positions,
one 2x2 map per cutout shared by its channels: what :func:`scipy.ndimage.affine_transform` with
``order=3, mode='nearest'`` does for one image, for a whole batch in one call. The coefficients come
padded by ``npad`` pixels on each side (scipy pads ``'nearest'`` input by 12 edge pixels before its
spline filter; :func:`stargal._transforms.affine` does the same), positions are 0-based
``(row, column)`` of the unpadded image.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["cubic_affine"]


def _jit(func):
    try:
        return numba.njit(cache=True, nogil=True, boundscheck=False)(func)
    except RuntimeError:  # "cannot cache function ...: no locator available": no writable dir
        return numba.njit(nogil=True, boundscheck=False)(func)


@_jit
def cubic_affine(coef, mats, offsets, jac, out, npad):  # pragma: no cover - compiled
    """``out[i, b, r, c]`` = spline ``coef[i, b]`` at ``mats[i] @ (r, c) + offsets[i]``, times ``jac[i]``.

    ``coef``: (m, C, H + 2 npad, W + 2 npad) float64 B-spline coefficients; ``out``: (m, C, H, W)
    float32, written in place. Positions more than ``npad - 1`` pixels outside the image are
    clamped there (the padded coefficients are the edge value's spline: 'nearest'). The product
    with ``jac`` is taken in float32 after the cast, as ``out[i] *= float32(jac)`` would.
    """
    m, nb, hp, wp = coef.shape
    h, w = out.shape[2], out.shape[3]
    wy = np.empty(4)
    wx = np.empty(4)
    iy = np.empty(4, np.int64)
    ix = np.empty(4, np.int64)
    lo = -npad + 1.0
    for i in range(m):
        jf = np.float32(jac[i])
        scale = jac[i] != 1.0
        for r in range(h):
            for c in range(w):
                y = mats[i, 0, 0] * r + mats[i, 0, 1] * c + offsets[i, 0]
                x = mats[i, 1, 0] * r + mats[i, 1, 1] * c + offsets[i, 1]
                y = min(max(y, lo), h + npad - 2.0) + npad
                x = min(max(x, lo), w + npad - 2.0) + npad
                fy = np.floor(y)
                fx = np.floor(x)
                t = y - fy
                u = x - fx
                wy[0] = (1.0 - t) ** 3 / 6.0
                wy[1] = (3.0 * t**3 - 6.0 * t**2 + 4.0) / 6.0
                wy[2] = (-3.0 * t**3 + 3.0 * t**2 + 3.0 * t + 1.0) / 6.0
                wy[3] = t**3 / 6.0
                wx[0] = (1.0 - u) ** 3 / 6.0
                wx[1] = (3.0 * u**3 - 6.0 * u**2 + 4.0) / 6.0
                wx[2] = (-3.0 * u**3 + 3.0 * u**2 + 3.0 * u + 1.0) / 6.0
                wx[3] = u**3 / 6.0
                for k in range(4):
                    iy[k] = min(max(int(fy) - 1 + k, 0), hp - 1)
                    ix[k] = min(max(int(fx) - 1 + k, 0), wp - 1)
                for b in range(nb):
                    s = 0.0
                    for a in range(4):
                        row = 0.0
                        for k in range(4):
                            row += wx[k] * coef[i, b, iy[a], ix[k]]
                        s += wy[a] * row
                    out[i, b, r, c] = s
                    if scale:
                        out[i, b, r, c] = out[i, b, r, c] * jf
