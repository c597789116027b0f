"""Aligned multi-band cutouts: each band resampled so the object sits on the central pixel.

:class:`Cutter` turns the :class:`~stargal.align.Aligner`'s table into a float32 tensor
``(n, 5, size, size)`` (bands ``u, g, r, i, z``, nanomaggies). Every band is resampled from
its *own* frame around the object's position in *that* frame, so the object's sky position
falls exactly on pixel ``((size - 1) / 2, (size - 1) / 2)`` of all five bands, even though
the SDSS band frames are offset from each other by several pixels.

How it works (vectorised, one field and one band at a time)
------------------------------------------------------------
For an object at 0-based position ``x`` in a band (same for ``y``):

* integer base pixel ``ix = floor(x + 0.5)`` (the pixel containing ``x``) and fractional
  offset ``d = x - ix`` in ``[-0.5, 0.5)``;
* a stamp of ``size + 2k`` pixels centred on ``ix`` is gathered for *all* objects at once by
  fancy indexing (``k`` = kernel half-width: 3 for Lanczos-3, 2 for bicubic, 0 for nearest);
* output pixel ``j`` (``0..size-1``) samples the image at ``x + (j - (size - 1) / 2)``; with
  ``m`` the stamp index, its weight on stamp pixel ``m`` is ``K(m - j - k - d)``, normalised so
  each row of weights sums to 1 (flux conservation for smooth images). So a positive ``d``
  (object right of/above its base pixel centre) moves the sampling grid by ``+d``, bringing the
  object onto the centre;
* separable interpolation as two batched matrix products: ``out = Ky @ stamp @ Kx^T`` with
  ``Kx, Ky`` of shape ``(n, size, size + 2k)``.

Interpolation choice
--------------------
``'lanczos3'`` (default): windowed sinc ``sinc(t) sinc(t / 3)``, ``|t| < 3``. It is the near-ideal
band-limited interpolator used for astronomical resampling (SWarp's default); SDSS images are
well sampled (seeing FWHM ~1.4" ~ 3.5 px at 0.396"/px), so Lanczos-3 preserves the PSF's shape,
centroid and flux; its small ringing (a few per cent next to sharp features) is acceptable.
``'bicubic'``: Keys' cubic convolution with ``a = -0.5`` (support 2 px), slightly smoother.
``'nearest'``: no resampling at all: the integer-pixel cutout around ``ix``; the object is then
off-centre by ``d`` (up to half a pixel, differently in each band), kept for comparison.

Rows flagged by the Aligner (``flag != ''``) get ``fill_value`` everywhere; output pixels whose
sample position falls outside the frame also get ``fill_value`` (flagged ``'edge'`` rows normally
never reach here).

Examples
--------
>>> from sklearn.pipeline import make_pipeline
>>> from stargal.align import Aligner
>>> from stargal.cutouts import Cutter
>>> pipe = make_pipeline(Aligner(fields=["8162-6-80"]), Cutter(size=15))   # doctest: +SKIP
>>> X = pipe.fit_transform(catalog)                                         # doctest: +SKIP
>>> X.shape, X.dtype                                                         # doctest: +SKIP
((1147, 5, 15, 15), dtype('float32'))
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.base import BaseEstimator, TransformerMixin

from .fetch import get_fetcher
from .frames import Field
from .sdss import BANDS

__all__ = [
    "Cutter",
    "INTERPOLATIONS",
    "kernel_weights",
    "resample_stamps",
    "centroid_offsets",
]

#: Interpolation name -> kernel half-width in pixels.
INTERPOLATIONS = {"lanczos3": 3, "bicubic": 2, "nearest": 0}

_CHUNK = 4096  # objects per gather/resample step (bounded memory: ~7 MB of stamps per band)


def _lanczos3(t: np.ndarray) -> np.ndarray:
    return np.where(np.abs(t) < 3.0, np.sinc(t) * np.sinc(t / 3.0), 0.0)


def _keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _taps(d: np.ndarray, interpolation: str) -> np.ndarray:
    """Normalised kernel taps ``(n, 2k + 1)``: weight of pixel ``base + i`` (``i = -k..k``)."""
    k = INTERPOLATIONS[interpolation]
    t = np.arange(-k, k + 1, dtype=np.float64)[None, :] - d[:, None]
    w = _lanczos3(t) if interpolation == "lanczos3" else _keys_cubic(t)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


def kernel_weights(d, size: int, interpolation: str = "lanczos3") -> np.ndarray:
    """1-D resampling weights ``(n, size, size + 2k)`` for fractional offsets ``d``.

    Row ``j`` maps a stamp of ``size + 2k`` pixels (centred on the base pixel) to output pixel
    ``j``, which samples position ``base + d + j - (size - 1) / 2``; the weight of stamp pixel
    ``m`` is ``K(m - j - k - d)``. The matrix is banded (``2k + 1`` taps) and rows sum to 1.

    Parameters
    ----------
    d : array-like, shape (n,)
        Fractional offsets ``x - floor(x + 0.5)`` in ``[-0.5, 0.5)``.
    size : int
        Output length (odd).
    interpolation : {'lanczos3', 'bicubic', 'nearest'}

    Examples
    --------
    >>> w = kernel_weights([0.0, 0.25], 5)
    >>> w.shape, bool(np.allclose(w.sum(-1), 1))
    ((2, 5, 11), True)
    >>> bool(np.allclose(w[0, 2], np.eye(11)[5]))   # d = 0: the centre pixel itself
    True
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}")
    return np.ascontiguousarray(_banded(np.asarray(d, dtype=np.float64).reshape(-1), size, interpolation))


def _banded(d: np.ndarray, size: int, interpolation: str) -> np.ndarray:
    """:func:`kernel_weights` as a read-only strided view (no copy)."""
    k = INTERPOLATIONS[interpolation]
    taps = np.ones((d.size, 1), np.float32) if k == 0 else _taps(d, interpolation)
    # Row j holds the taps at columns j .. j + 2k: windows of a zero-padded tap vector, read
    # backwards (a strided view; no per-element scatter).
    padded = np.zeros((d.size, 2 * (size - 1) + 2 * k + 1), dtype=np.float32)
    padded[:, size - 1:size + 2 * k] = taps
    return sliding_window_view(padded, size + 2 * k, axis=1)[:, ::-1]


def _gather(image: np.ndarray, ix: np.ndarray, iy: np.ndarray, half: int) -> np.ndarray:
    """Stamps ``(n, 2 half + 1, 2 half + 1)`` centred on integer pixels; edge indices clipped."""
    ny, nx = image.shape
    w = 2 * half + 1
    out = np.empty((ix.size, w, w), dtype=np.float32)
    inner = (ix >= half) & (ix < nx - half) & (iy >= half) & (iy < ny - half)
    if ny >= w and nx >= w and inner.any():
        windows = sliding_window_view(image, (w, w))  # a view: no copy of the frame
        out[inner] = windows[iy[inner] - half, ix[inner] - half]
    if not inner.all():
        offs = np.arange(-half, half + 1)
        rows = np.clip(iy[~inner, None] + offs, 0, ny - 1)
        cols = np.clip(ix[~inner, None] + offs, 0, nx - 1)
        out[~inner] = image[rows[:, :, None], cols[:, None, :]]
    return out


def resample_stamps(image: np.ndarray, x, y, size: int, interpolation: str = "lanczos3",
                    fill_value: float = np.nan) -> np.ndarray:
    """Cutouts ``(n, size, size)`` of one image, each centred on its 0-based ``(x, y)``.

    Vectorised: stamps for all positions are gathered at once (through a strided window
    view of the frame; indices clipped at the frame edges) and resampled with two batched
    matrix products ``Ky @ stamp @ Kx^T``. Output pixels whose sample position lies outside
    the image, and rows with non-finite positions, get ``fill_value``.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        A frame (memory map is fine); float32 nanomaggies for SDSS frames.
    x, y : array-like, shape (n,)
        0-based pixel positions of the objects in *this* image.
    size : int
        Odd cutout side.
    interpolation : {'lanczos3', 'bicubic', 'nearest'}
    fill_value : float

    Returns
    -------
    ndarray, float32, shape (n, size, size)
        ``out[i, j, l]`` is the image at ``(x[i] + l - c, y[i] + j - c)``, ``c = (size - 1) / 2``
        (for ``'nearest'``: at the integer pixel ``(floor(x[i] + 0.5) + l - c, ...)``).
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}")
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer, got {size!r}")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    n = x.size
    out = np.full((n, size, size), fill_value, dtype=np.float32)
    ny, nx = image.shape
    k = INTERPOLATIONS[interpolation]
    h = (size - 1) // 2
    good = np.isfinite(x) & np.isfinite(y) & (np.abs(x) < 1e9) & (np.abs(y) < 1e9)
    jpos = np.arange(-h, h + 1, dtype=np.float64)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        sl = np.flatnonzero(good[start:stop]) + start
        if sl.size == 0:
            continue
        xs, ys = x[sl], y[sl]
        ix, iy = np.floor(xs + 0.5).astype(np.int64), np.floor(ys + 0.5).astype(np.int64)
        stamps = _gather(image, ix, iy, h + k)
        in_place = False
        if k == 0:
            res = stamps
            cx, cy = ix.astype(np.float64), iy.astype(np.float64)
        else:
            kx = _banded(xs - ix, size, interpolation)
            ky = _banded(ys - iy, size, interpolation)
            in_place = sl.size == stop - start  # no bad rows in this chunk: write into `out`
            res = np.matmul(np.matmul(ky, stamps), kx.transpose(0, 2, 1),
                            out=out[start:stop] if in_place else None)
            cx, cy = xs, ys
        # sample positions outside the frame -> fill_value (edge rows should not get here)
        edge = (cx - h < -0.5) | (cx + h >= nx - 0.5) | (cy - h < -0.5) | (cy + h >= ny - 0.5)
        if edge.any():
            sx, sy = cx[edge, None] + jpos, cy[edge, None] + jpos
            in_y = (sy >= -0.5) & (sy < ny - 0.5)
            in_x = (sx >= -0.5) & (sx < nx - 0.5)
            inside = in_y[:, :, None] & in_x[:, None, :]
            res[edge] = np.where(inside, res[edge], np.float32(fill_value))
        if not in_place:
            out[sl] = res
    return out


def centroid_offsets(cutouts, sigma: float = 1.5, n_iter: int = 30, max_shift: float = 3.0) -> np.ndarray:
    """Windowed (Gaussian-weighted) centroid of every cutout and band, relative to the centre.

    The iterative "windowed" centroid of SExtractor (``XWIN_IMAGE``): with a Gaussian window
    of width ``sigma`` centred on the current estimate ``c``, ``c <- c + 2 sum(w I (x - c)) /
    sum(w I)``. It converges to the centre of any symmetric profile and is nearly as precise
    as a PSF fit. The background (median of the one-pixel border) is subtracted first.

    Parameters
    ----------
    cutouts : array-like, shape (n, B, H, W)
    sigma : float
        Window width in pixels (about the PSF's sigma: 1.5 px for SDSS seeing).
    n_iter : int
        Iterations.
    max_shift : float
        Estimates farther than this from the centre are returned as NaN (no convergence).

    Returns
    -------
    ndarray, shape (n, B, 2)
        ``(dx, dy)`` in pixels: centroid minus the centre pixel ``((W - 1) / 2, (H - 1) / 2)``;
        NaN where the flux in the window is not positive or the iteration diverged.

    Examples
    --------
    >>> yy, xx = np.mgrid[:15, :15]
    >>> star = np.exp(-((xx - 7.3) ** 2 + (yy - 6.8) ** 2) / (2 * 1.5 ** 2))
    >>> np.round(centroid_offsets(star[None, None]), 3)
    array([[[ 0.3, -0.2]]])
    """
    arr = np.asarray(cutouts, dtype=np.float64)
    if arr.ndim != 4:
        raise ValueError(f"centroid_offsets expects (n, bands, H, W) cutouts, got shape {arr.shape}")
    n, nb, hh, ww = arr.shape
    border = np.concatenate([arr[..., 0, :], arr[..., -1, :], arr[..., 1:-1, 0], arr[..., 1:-1, -1]], axis=-1)
    img = arr - np.median(border, axis=-1)[..., None, None]
    xx = np.arange(ww, dtype=np.float64) - (ww - 1) / 2
    yy = np.arange(hh, dtype=np.float64) - (hh - 1) / 2
    cx = np.zeros((n, nb))
    cy = np.zeros((n, nb))
    ok = np.ones((n, nb), dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for _ in range(n_iter):
            wx = np.exp(-0.5 * ((xx[None, None, :] - cx[..., None]) / sigma) ** 2)  # (n, B, W)
            wy = np.exp(-0.5 * ((yy[None, None, :] - cy[..., None]) / sigma) ** 2)  # (n, B, H)
            wi = img * wy[..., :, None] * wx[..., None, :]
            s = wi.sum(axis=(-2, -1))
            mx = (wi * (xx[None, None, None, :] - cx[..., None, None])).sum(axis=(-2, -1))
            my = (wi * (yy[None, None, :, None] - cy[..., None, None])).sum(axis=(-2, -1))
            ok &= np.isfinite(s) & (s > 0)
            cx = np.where(ok, np.clip(cx + 2 * mx / s, -max_shift - 1, max_shift + 1), 0.0)
            cy = np.where(ok, np.clip(cy + 2 * my / s, -max_shift - 1, max_shift + 1), 0.0)
    ok &= (np.abs(cx) <= max_shift) & (np.abs(cy) <= max_shift)
    res = np.stack([cx, cy], axis=-1)
    res[~ok] = np.nan
    return res


class Cutter(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Aligned table -> float32 cutouts ``(n, 5, size, size)`` in nanomaggies.

    Stateless: :meth:`fit` only validates. Each band is resampled so the object's sky
    position is exactly on the central pixel ``(size - 1) / 2`` in every band (see the module
    docstring for the method, the sign convention and the interpolation choice). Fields are
    processed one at a time and released; work per band is chunked (bounded memory).

    Parameters
    ----------
    size : int, default=15
        Cutout side in pixels; must be odd (an even size has no central pixel).
    interpolation : {'lanczos3', 'bicubic', 'nearest'}, default='lanczos3'
        Resampling kernel; ``'nearest'`` cuts at integer pixels without resampling.
    sas_url, cache_dir : str, optional
        Data source and cache (``None``: ``STARGAL_SAS_URL`` / ``STARGAL_CACHE`` / defaults).
    fill_value : float, default=nan
        Value of every pixel of rows flagged by the Aligner (``flag != ''``).

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from stargal.align import Aligner
    >>> pipe = make_pipeline(Aligner(fields=["8162-6-80"], policy="flag"), Cutter())  # doctest: +SKIP
    >>> cutouts = pipe.fit_transform({"ra": [331.70], "dec": [26.95]})                 # doctest: +SKIP
    >>> cutouts.shape                                                                   # doctest: +SKIP
    (1, 5, 15, 15)
    """

    def __init__(self, size=15, interpolation="lanczos3", sas_url=None, cache_dir=None, fill_value=np.nan):
        self.size = size
        self.interpolation = interpolation
        self.sas_url = sas_url
        self.cache_dir = cache_dir
        self.fill_value = fill_value

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.allow_nan = True
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        return tags

    def _validate_params(self) -> None:
        size = self.size
        if isinstance(size, bool) or not isinstance(size, Integral) or size < 1:
            raise ValueError(f"Cutter: size must be a positive odd integer, got {size!r}")
        if size % 2 == 0:
            raise ValueError(
                f"Cutter: size must be odd, got {size}. An even cutout has no central pixel: the object "
                "would sit on a pixel corner, half a pixel off-centre in an arbitrary direction "
                f"(a 1-pixel ambiguity). Use {size - 1} or {size + 1}."
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"Cutter: interpolation must be one of {list(INTERPOLATIONS)}, "
                             f"got {self.interpolation!r}")
        if isinstance(self.fill_value, bool) or not isinstance(self.fill_value, Real):
            raise ValueError(
                f"Cutter: fill_value must be a real number (NaN allowed), got {self.fill_value!r}")
        for name in ("sas_url", "cache_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str) and not hasattr(value, "__fspath__"):
                raise ValueError(f"Cutter: {name} must be None or a string, got {value!r}")

    @staticmethod
    def _check_table(X) -> pd.DataFrame:
        if not isinstance(X, pd.DataFrame):
            raise TypeError(
                f"Cutter expects the Aligner's output table (a pandas DataFrame), got {type(X).__name__}; "
                "use make_pipeline(Aligner(...), Cutter(...))"
            )
        need = ["field_id"] + [f"{c}_{b}" for b in BANDS for c in ("x", "y")]
        missing = [c for c in need if c not in X.columns]
        if missing:
            raise ValueError(
                f"Cutter needs per-band pixel positions from stargal.align.Aligner; the table lacks "
                f"{missing[:6]}{' ...' if len(missing) > 6 else ''}. Run Aligner first, e.g. "
                "make_pipeline(Aligner(...), Cutter(...))"
            )
        return X

    def fit(self, X, y=None):
        """Validate the parameters and the table; nothing is learned.

        Parameters
        ----------
        X : DataFrame
            The :class:`~stargal.align.Aligner`'s output.
        y : ignored

        Returns
        -------
        self
        """
        self._validate_params()
        self._check_table(X)
        return self

    def set_output(self, *, transform=None):
        """Accepted for pipeline compatibility; the output is always a 4-D numpy array."""
        return self

    def transform(self, X) -> np.ndarray:
        """Cut and resample every row's five bands.

        Parameters
        ----------
        X : DataFrame
            The Aligner's output: ``field_id``, ``x_<band>``, ``y_<band>`` (0-based pixels in
            each band's frame) and ``flag``.

        Returns
        -------
        ndarray, float32, shape (n, 5, size, size)
            Bands ``u, g, r, i, z``; nanomaggies; rows in input order; flagged rows all
            ``fill_value``.
        """
        self._validate_params()
        table = self._check_table(X)
        size = int(self.size)
        n = len(table)
        out = np.full((n, len(BANDS), size, size), self.fill_value, dtype=np.float32)
        if n == 0:
            return out
        flag = table["flag"].fillna("").astype(str).to_numpy() if "flag" in table.columns else np.full(n, "")
        fids = table["field_id"].fillna("").astype(str).to_numpy()
        ok = flag == ""
        orphans = np.flatnonzero(ok & (fids == ""))
        if orphans.size:
            raise ValueError(
                f"Cutter: {orphans.size} unflagged row(s) have no field_id (rows "
                f"{list(table.index[orphans[:10]])}); the table does not look like an Aligner output"
            )
        fetcher = get_fetcher(sas_url=self.sas_url, cache_dir=self.cache_dir)
        for fid in dict.fromkeys(fids[ok]):
            idx = np.flatnonzero(ok & (fids == fid))
            field = Field(fid, fetcher)
            try:
                for bi, band in enumerate(BANDS):
                    frame = field.frame(band)
                    x = table[f"x_{band}"].to_numpy(dtype=np.float64)[idx]
                    y = table[f"y_{band}"].to_numpy(dtype=np.float64)[idx]
                    out[idx, bi] = resample_stamps(frame.image, x, y, size, self.interpolation,
                                                   self.fill_value)
            finally:
                field.release()
        return out
