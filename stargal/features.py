"""Aperture-photometry features measured on cutouts (random-forest baseline).

:class:`PhotometricFeatures` turns float32 cutouts of shape ``(n, 5, H, W)``
(bands ``u, g, r, i, z``, nanomaggies, object on the central pixel) into a small
table of photometric and morphological features.  It uses only the pixels:
catalog columns (``psfmag_r``, ``modelmag_r``, ...) define the labels and are
never used as features.

Photometry is photutils' *exact* circular-aperture photometry: the aperture
weights are ``CircularAperture(((W - 1) / 2, (H - 1) / 2), r).to_mask(method='exact')``
(photutils positions are ``(x, y)`` = (column, row), 0-based), i.e. the exact
fraction of every pixel covered by the circle.  Because every cutout is centred
on the same pixel, the masks are computed once in :meth:`~PhotometricFeatures.fit`
and applied to the whole stack with one matrix product; the result is identical
to :func:`photutils.aperture.aperture_photometry` with ``method='exact'``
called cutout by cutout, only vectorised (tens of thousands of cutouts/s).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from photutils.aperture import CircularAperture
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from stargal.sdss import BANDS

__all__ = ["PhotometricFeatures", "SOFTENING", "asinh_magnitude"]

#: SDSS asinh-magnitude softening parameters ``b`` (in maggies) for u, g, r, i, z
#: (Lupton, Gunn & Szalay 1999; SDSS DR documentation "asinh magnitudes").
SOFTENING = np.array([1.4e-10, 0.9e-10, 1.2e-10, 1.8e-10, 7.4e-10])

#: ratios (concentration, peak/total) are clipped to this range
_RATIO_RANGE = (-1.0, 2.0)


def asinh_magnitude(flux, band_softening, zero_point=22.5):
    """SDSS asinh magnitudes ("luptitudes"), finite for zero and negative flux.

    ``m = -(2.5 / ln 10) * [asinh((f / f0) / (2 b)) + ln b]`` with
    ``f / f0 = flux * 10**(-0.4 * zero_point)`` (for ``zero_point = 22.5``,
    ``flux`` in nanomaggies gives ``f / f0`` in maggies).  For bright objects it
    equals the Pogson magnitude ``zero_point - 2.5 log10(flux)``.

    Parameters
    ----------
    flux : array_like
        Fluxes; the last axis must broadcast against ``band_softening``.
    band_softening : array_like
        Softening ``b`` per band, in maggies (see :data:`SOFTENING`).
    zero_point : float, default=22.5
        Magnitude of a unit flux.

    Returns
    -------
    numpy.ndarray
        Magnitudes, always finite for finite input.

    Examples
    --------
    >>> import numpy as np
    >>> m = asinh_magnitude(np.array([100.0, 0.0, -1.0]), 1.2e-10)
    >>> bool(abs(m[0] - 17.5) < 1e-3), bool(np.isfinite(m).all())
    (True, True)
    """
    b = np.asarray(band_softening, dtype=np.float64)
    f = np.asarray(flux, dtype=np.float64) * 10.0 ** (-0.4 * zero_point)
    return -(2.5 / np.log(10.0)) * (np.arcsinh(f / (2.0 * b)) + np.log(b))


def _safe_ratio(num, den):
    """``num / den`` where ``den > 0``, else 0; clipped to ``_RATIO_RANGE``."""
    ok = den > 0
    out = np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=ok)
    return np.clip(out, *_RATIO_RANGE)


def _fmt(r):
    return f"{float(r):g}"


class PhotometricFeatures(TransformerMixin, BaseEstimator):
    """Aperture photometry, colours, concentration and shape features of cutouts.

    For cutouts ``X`` of shape ``(n, 5, H, W)`` (bands ``u, g, r, i, z``,
    nanomaggies, sky-subtracted, object at pixel ``((W-1)/2, (H-1)/2)``,
    0-based ``(x, y)``) the output columns are, in this order:

    * ``flux_{band}_r{radius}`` -- exact circular-aperture flux (nanomaggies) for
      every band and radius;
    * ``mag_{band}_r{radius}`` -- the same as SDSS asinh magnitudes
      (:func:`asinh_magnitude`, softening :data:`SOFTENING`), finite for
      non-positive flux;
    * ``color_u_g, color_g_r, color_r_i, color_i_z`` -- asinh-magnitude colours
      in the middle aperture ``radii[len(radii) // 2]``;
    * ``concentration_{band}`` -- ``flux(radii[0]) / flux(radii[-1])``; 0 where
      the large-aperture flux is not positive, clipped to ``[-1, 2]``;
    * ``size_r`` -- r-band second-moment radius ``sqrt((Mxx + Myy) / 2)`` in
      pixels (equals sigma for a round Gaussian), ``ellipticity_r`` --
      ``sqrt((Mxx - Myy)**2 + 4 Mxy**2) / (Mxx + Myy)`` in ``[0, 1]``; moments are
      weighted by the background-subtracted (median of the outermost pixel
      ring), positive-clipped r image inside the largest aperture;
    * ``peak_ratio_r`` -- brightest background-subtracted r pixel of the central
      3x3 divided by the r flux in the largest aperture (0 if that flux is not
      positive, clipped to ``[-1, 2]``).

    Non-finite pixels are treated as 0 (sky level), so every feature is finite.

    Parameters
    ----------
    radii : sequence of float, default=(1.5, 3.0, 5.0)
        Aperture radii in pixels, strictly increasing, at least two.
    zero_point : float, default=22.5
        Magnitude zero point of the cutout flux unit (22.5 for nanomaggies).

    Attributes
    ----------
    cutout_shape_ : tuple of int
        ``(H, W)`` seen in :meth:`fit`; :meth:`transform` requires the same.
    aperture_masks_ : ndarray of shape (n_radii, H, W)
        photutils exact-overlap aperture weights.
    n_features_out_ : int
        Number of output columns (``2 * 5 * n_radii + 4 + 5 + 3``).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.zeros((3, 5, 15, 15), dtype=np.float32)
    >>> X[:, :, 7, 7] = 10.0
    >>> F = PhotometricFeatures().fit_transform(X)
    >>> F.shape
    (3, 42)
    >>> float(F[0, 0])  # u flux in r=1.5 px: the whole point source
    10.0
    """

    def __init__(self, radii=(1.5, 3.0, 5.0), zero_point=22.5):
        self.radii = radii
        self.zero_point = zero_point

    # ------------------------------------------------------------------ checks
    def _check_params(self):
        try:
            radii = np.asarray(self.radii, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise ValueError(f"radii must be a sequence of numbers, got {self.radii!r}") from None
        if radii.size < 2 or not np.all(np.isfinite(radii)) or np.any(radii <= 0):
            raise ValueError(f"radii must hold at least two positive finite radii (pixels), "
                             f"got {self.radii!r}")
        if np.any(np.diff(radii) <= 0):
            raise ValueError(f"radii must be strictly increasing, got {self.radii!r}")
        if (isinstance(self.zero_point, bool) or not isinstance(self.zero_point, numbers.Real)
                or not np.isfinite(self.zero_point)):
            raise ValueError(f"zero_point must be a finite number, got {self.zero_point!r}")
        return radii

    @staticmethod
    def _check_X(X):
        if isinstance(X, (list, tuple)):
            X = np.asarray(X)
        if not isinstance(X, np.ndarray):
            raise TypeError(f"PhotometricFeatures expects a numpy array of cutouts "
                            f"(n, 5, H, W), got {type(X).__name__}")
        if X.ndim != 4 or X.shape[1] != len(BANDS):
            raise ValueError(f"expected cutouts of shape (n, {len(BANDS)}, H, W) in band order "
                             f"{''.join(BANDS)}, got shape {X.shape}")
        if X.shape[2] < 3 or X.shape[3] < 3 or X.shape[2] % 2 == 0 or X.shape[3] % 2 == 0:
            raise ValueError(f"cutouts must have odd sides >= 3 (object on the central pixel), "
                             f"got {X.shape[2]}x{X.shape[3]}")
        if not np.issubdtype(X.dtype, np.number):
            raise TypeError(f"cutouts must be numeric, got dtype {X.dtype}")
        return X

    # ------------------------------------------------------------------ API
    def fit(self, X, y=None):
        """Check the cutouts and compute the exact aperture masks.

        Parameters
        ----------
        X : ndarray of shape (n, 5, H, W)
            Cutouts in nanomaggies.
        y : ignored

        Returns
        -------
        self : PhotometricFeatures
        """
        radii = self._check_params()
        X = self._check_X(X)
        h, w = X.shape[2], X.shape[3]
        half = (min(h, w) - 1) / 2.0 + 0.5
        if radii[-1] > half:
            warnings.warn(f"aperture radius {radii[-1]:g} px extends beyond the {h}x{w} "
                          f"cutout; its flux is truncated at the cutout edge", UserWarning,
                          stacklevel=2)
        centre = ((w - 1) / 2.0, (h - 1) / 2.0)  # photutils: (x, y)
        self.aperture_masks_ = np.stack([
            CircularAperture(centre, r=float(r)).to_mask(method="exact").to_image((h, w))
            for r in radii
        ]).astype(np.float64)
        self.cutout_shape_ = (h, w)
        self.n_features_out_ = len(self._names(radii))
        return self

    def transform(self, X):
        """Measure the features.

        Parameters
        ----------
        X : ndarray of shape (n, 5, H, W)
            Cutouts in nanomaggies, same ``H, W`` as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n, n_features_out_)
            float64 features, one row per cutout, all finite.
        """
        check_is_fitted(self, "aperture_masks_")
        X = self._check_X(X)
        if X.shape[2:] != self.cutout_shape_:
            raise ValueError(f"cutouts are {X.shape[2]}x{X.shape[3]} but the features were "
                             f"fitted on {self.cutout_shape_[0]}x{self.cutout_shape_[1]}")
        n, nb, h, w = X.shape
        img = np.nan_to_num(np.asarray(X, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        masks = self.aperture_masks_
        k = masks.shape[0]
        # (n, bands, radii): photutils exact aperture sums, vectorised
        flux = img.reshape(n * nb, h * w) @ masks.reshape(k, h * w).T
        flux = flux.reshape(n, nb, k)
        mag = asinh_magnitude(flux, SOFTENING[None, :, None], self.zero_point)
        mid = k // 2
        colors = mag[:, :-1, mid] - mag[:, 1:, mid]
        conc = _safe_ratio(flux[:, :, 0], flux[:, :, -1])

        # r-band shape from background-subtracted, positive-clipped moments
        r = img[:, BANDS.index("r")]
        ring = np.concatenate([r[:, 0, :], r[:, -1, :], r[:, 1:-1, 0], r[:, 1:-1, -1]], axis=1)
        rs = r - np.median(ring, axis=1)[:, None, None]
        wgt = np.clip(rs, 0.0, None) * masks[-1]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        tot = wgt.sum(axis=(1, 2))
        good = tot > 0
        safe = np.where(good, tot, 1.0)
        xc = (wgt * xx).sum(axis=(1, 2)) / safe
        yc = (wgt * yy).sum(axis=(1, 2)) / safe
        dx = xx[None] - xc[:, None, None]
        dy = yy[None] - yc[:, None, None]
        mxx = (wgt * dx * dx).sum(axis=(1, 2)) / safe
        myy = (wgt * dy * dy).sum(axis=(1, 2)) / safe
        mxy = (wgt * dx * dy).sum(axis=(1, 2)) / safe
        trace = mxx + myy
        size = np.where(good, np.sqrt(np.clip(trace, 0.0, None) / 2.0), 0.0)
        ok = good & (trace > 0)
        ellip = np.divide(np.sqrt((mxx - myy) ** 2 + 4.0 * mxy ** 2), trace,
                          out=np.zeros(n), where=ok)
        ellip = np.clip(ellip, 0.0, 1.0)
        cy, cx = (h - 1) // 2, (w - 1) // 2
        peak = rs[:, cy - 1:cy + 2, cx - 1:cx + 2].max(axis=(1, 2))
        peak_ratio = _safe_ratio(peak, flux[:, BANDS.index("r"), -1])

        out = np.concatenate([
            flux.reshape(n, nb * k), mag.reshape(n, nb * k), colors, conc,
            size[:, None], ellip[:, None], peak_ratio[:, None],
        ], axis=1)
        return out

    def _names(self, radii):
        names = [f"flux_{b}_r{_fmt(r)}" for b in BANDS for r in radii]
        names += [f"mag_{b}_r{_fmt(r)}" for b in BANDS for r in radii]
        names += [f"color_{a}_{b}" for a, b in zip(BANDS[:-1], BANDS[1:])]
        names += [f"concentration_{b}" for b in BANDS]
        names += ["size_r", "ellipticity_r", "peak_ratio_r"]
        return names

    def get_feature_names_out(self, input_features=None):
        """Names of the output columns (see the class docstring).

        Parameters
        ----------
        input_features : ignored
            Present for scikit-learn API compatibility.

        Returns
        -------
        ndarray of str
        """
        check_is_fitted(self, "aperture_masks_")
        return np.asarray(self._names(self._check_params()), dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True  # closest tag: n-d image stacks
        return tags
