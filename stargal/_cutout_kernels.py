"""numba kernels of :func:`stargal.cutouts.resample_stamps` (private; imported lazily).

Importing this module imports numba and compiles nothing: the kernels are compiled on first
call and cached on disk (``cache=True``: ``__pycache__`` beside this file, or numba's user-wide
cache directory when that is read-only; with no writable location at all they are compiled
once per process instead). They live in their own module because numba can only cache
module-level functions.

The computation is the numpy engine's, step by step: stamps gathered with edge-clipped indices;
kernel taps evaluated in float64, normalised, cast to float32; resampled first along y then
along x in float32; output pixels whose sample position lies outside the frame set to the fill
value. Objects are processed in blocks of :data:`BLOCK` with the block index innermost in
memory, so the tap loops vectorise *over objects* (a 15-pixel row is shorter than one AVX-512
register: vectorising along rows leaves the loops scalar).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["BLOCK", "resample_serial", "resample_parallel"]

#: Objects per block (the SIMD dimension).
BLOCK = 64

_OPTIONS = dict(nogil=True, boundscheck=False, error_model="numpy", fastmath=True)


def _jit(**options):
    def wrap(func):
        try:
            return numba.njit(cache=True, **options)(func)
        except RuntimeError:  # "cannot cache function ...: no locator available": no writable dir
            return numba.njit(**options)(func)

    return wrap


@_jit(inline="always")
def _taps(kind, d, w):
    """Normalised taps ``w[0..2k]`` at ``t = i - k - d`` (kind 0 nearest, 1 Lanczos-3, 2 Keys cubic)."""
    k = 3 if kind == 1 else (2 if kind == 2 else 0)
    ntap = 2 * k + 1
    # sin(pi n / 3), cos(pi n / 3) for n = -3..3: three trig calls per axis for Lanczos-3
    sin3 = (0.0, -0.8660254037844386, -0.8660254037844386, 0.0,
            0.8660254037844386, 0.8660254037844386, 0.0)
    cos3 = (-1.0, -0.5, 0.5, 1.0, 0.5, -0.5, -1.0)
    s1 = math.sin(math.pi * d)
    s3 = math.sin(math.pi * d / 3.0)
    c3 = math.cos(math.pi * d / 3.0)
    total = 0.0
    for i in range(ntap):
        n = i - k
        t = n - d
        if kind == 0:
            v = 1.0
        elif kind == 1:
            if abs(t) < 1e-12:
                v = 1.0
            elif abs(t) >= 3.0:
                v = 0.0
            else:
                # sin(pi t) = -(-1)^n sin(pi d); sin(pi t / 3) by the angle-difference formula
                spt = -s1 if n % 2 == 0 else s1
                spt3 = sin3[i] * c3 - cos3[i] * s3
                v = 3.0 * spt * spt3 / (math.pi * math.pi * t * t)
        else:  # Keys cubic convolution, a = -0.5
            at = abs(t)
            if at <= 1.0:
                v = (1.5 * at - 2.5) * at * at + 1.0
            elif at < 2.0:
                v = ((-0.5 * at + 2.5) * at - 4.0) * at + 2.0
            else:
                v = 0.0
        w[i] = v
        total += v
    for i in range(ntap):
        w[i] /= total


@_jit(inline="always")
def _block(image, xs, ys, size, kind, fill, out, rows, band, lo, nb):
    """Resample objects ``lo .. lo + nb - 1`` (``nb <= BLOCK``) into ``out[rows[i], band]``."""
    ny, nx = image.shape
    h = (size - 1) // 2
    k = 3 if kind == 1 else (2 if kind == 2 else 0)
    ntap = 2 * k + 1
    m = size + 2 * k
    B = BLOCK
    st = np.zeros((m, m, B), np.float32)
    tmp = np.empty((size, m, B), np.float32)
    res = np.empty((size, size, B), np.float32)
    wx = np.zeros((ntap, B), np.float32)
    wy = np.zeros((ntap, B), np.float32)
    wd = np.empty(ntap, np.float64)
    good = np.zeros(B, np.bool_)
    for b in range(nb):
        x = xs[lo + b]
        y = ys[lo + b]
        if not (math.isfinite(x) and math.isfinite(y) and abs(x) < 1e9 and abs(y) < 1e9):
            continue
        good[b] = True
        fx = math.floor(x + 0.5)
        fy = math.floor(y + 0.5)
        _taps(kind, x - fx, wd)
        for t in range(ntap):
            wx[t, b] = np.float32(wd[t])
        _taps(kind, y - fy, wd)
        for t in range(ntap):
            wy[t, b] = np.float32(wd[t])
        x0 = int(fx) - h - k
        y0 = int(fy) - h - k
        if x0 >= 0 and x0 + m <= nx and y0 >= 0 and y0 + m <= ny:
            for r in range(m):
                for q in range(m):
                    st[r, q, b] = image[y0 + r, x0 + q]
        else:  # indices clipped at the frame edges, as the numpy engine's gather
            for r in range(m):
                row = min(max(y0 + r, 0), ny - 1)
                for q in range(m):
                    st[r, q, b] = image[row, min(max(x0 + q, 0), nx - 1)]
    # along y, then along x; the innermost loops run over the block's objects (SIMD)
    for jy in range(size):
        for q in range(m):
            for b in range(B):
                tmp[jy, q, b] = wy[0, b] * st[jy, q, b]
            for t in range(1, ntap):
                for b in range(B):
                    tmp[jy, q, b] += wy[t, b] * st[jy + t, q, b]
    for jy in range(size):
        for j in range(size):
            for b in range(B):
                res[jy, j, b] = wx[0, b] * tmp[jy, j, b]
            for t in range(1, ntap):
                for b in range(B):
                    res[jy, j, b] += wx[t, b] * tmp[jy, j + t, b]
    for b in range(nb):
        i = lo + b
        o = rows[i]
        if not good[b]:
            for jy in range(size):
                for j in range(size):
                    out[o, band, jy, j] = fill
            continue
        for jy in range(size):
            for j in range(size):
                out[o, band, jy, j] = res[jy, j, b]
        # output pixels whose sample position is outside the frame -> fill
        x = xs[i]
        y = ys[i]
        cx = math.floor(x + 0.5) if kind == 0 else x
        cy = math.floor(y + 0.5) if kind == 0 else y
        if cx - h < -0.5 or cx + h >= nx - 0.5 or cy - h < -0.5 or cy + h >= ny - 0.5:
            for jy in range(size):
                sy = cy + (jy - h)
                in_y = sy >= -0.5 and sy < ny - 0.5
                for j in range(size):
                    sx = cx + (j - h)
                    if not (in_y and sx >= -0.5 and sx < nx - 0.5):
                        out[o, band, jy, j] = fill


@_jit(**_OPTIONS)
def resample_serial(image, xs, ys, size, kind, fill, out, rows, band):
    """Cutout of ``image`` at ``(xs[i], ys[i])`` into ``out[rows[i], band]`` (``out``: float32
    ``(N, B, size, size)``); one thread."""
    n = xs.shape[0]
    for c in range((n + BLOCK - 1) // BLOCK):
        lo = c * BLOCK
        _block(image, xs, ys, size, kind, fill, out, rows, band, lo, min(n, lo + BLOCK) - lo)


@_jit(parallel=True, **_OPTIONS)
def resample_parallel(image, xs, ys, size, kind, fill, out, rows, band):
    """As :func:`resample_serial`, blocks spread over numba's threads (``numba.set_num_threads``;
    ``rows`` must not repeat)."""
    n = xs.shape[0]
    for c in numba.prange((n + BLOCK - 1) // BLOCK):
        lo = c * BLOCK
        _block(image, xs, ys, size, kind, fill, out, rows, band, lo, min(n, lo + BLOCK) - lo)
