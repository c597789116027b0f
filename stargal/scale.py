"""Per-band asinh stretch and standardisation of cutouts.

Raw cutouts span several decades of flux (sky noise ~0.01-0.1 nanomaggies,
bright cores up to thousands), which a network handles badly. :class:`AsinhScaler`
applies, per band ``k``,

.. math:: z = \\operatorname{arcsinh}\\left(\\frac{x}{2 b_k}\\right), \\qquad
          t = \\frac{z - \\mu_k}{\\sigma_k}

with ``x`` the pixel in nanomaggies and ``b_k`` a softening in nanomaggies
(by default the band's sky noise). This is the stretch of the SDSS asinh
magnitudes ("luptitudes", Lupton, Gunn & Szalay 1999):
``m = -(2.5 / ln 10) [arcsinh(f / (2 b')) + ln b']`` with ``f`` and ``b'``
in units of the zero-point flux, i.e. ``z`` is an asinh magnitude of the
pixel up to the affine map ``m = -1.0857 z + const``. It is linear
(``z ~ x / 2b``) within the noise, so negative sky pixels stay well defined,
and logarithmic (``z ~ ln(x / b)``) for bright pixels. ``mu_k``/``sigma_k``
are the mean and standard deviation of ``z`` over every pixel of every
training cutout of band ``k``.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(0.0, 0.02, size=(50, 5, 15, 15)).astype(np.float32)
>>> X[:, :, 7, 7] += 10.0  # a bright point source on the centre pixel
>>> Xt = AsinhScaler().fit_transform(X)
>>> Xt.shape, Xt.dtype
((50, 5, 15, 15), dtype('float32'))
>>> bool(np.allclose(Xt.mean(axis=(0, 2, 3)), 0, atol=1e-5))
True
>>> bool(np.allclose(Xt.std(axis=(0, 2, 3)), 1, atol=1e-4))
True
"""

from __future__ import annotations


import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from stargal._imaging import N_IMAGE_BANDS, cutout_sky_noise
from stargal._validation import (InvalidParameterError, Interval, Real, StrOptions, validate_params,
                                 check_cutouts as _check_cutouts, join_inputs, split_inputs)

__all__ = ["AsinhScaler", "MIN_SOFTENING"]

#: Floor (nanomaggies) on the softening, so noise-free or constant bands
#: still get a finite stretch.
MIN_SOFTENING = 1e-8

_NAN_POLICIES = ("raise", "zero")


class AsinhScaler(TransformerMixin, BaseEstimator):
    """Per-band ``arcsinh(x / 2b)`` stretch followed by standardisation.

    Parameters
    ----------
    softening : 'auto', float or array-like of shape (n_bands,), default='auto'
        Softening ``b`` in nanomaggies (``> 0``), one value for every band or
        one per band. ``'auto'`` uses each band's sky noise measured on the
        training cutouts with :func:`stargal._imaging.cutout_sky_noise`
        (``1.4826 * MAD`` of the cutouts' border pixels after subtracting each
        cutout's border median), floored at :data:`MIN_SOFTENING`. On PSF-aware
        cutouts (10 channels: 5 images, then the PSF of each band, see
        :class:`stargal.psf_channels.PSFChannels`) every PSF channel gets the
        softening of its image band, so an image and its scaled PSF are stretched
        alike.
    standardize : bool, default=True
        Subtract the per-band mean and divide by the per-band standard
        deviation of the stretched training pixels.
    clip : float or None, default=None
        If set (``> 0``), clip the output to ``[-clip, clip]`` (applied last,
        after standardising). Clipped values cannot be inverted exactly.
    nan_policy : {'raise', 'zero'}, default='raise'
        ``'raise'``: non-finite pixels are an error that names the rows
        (usually cutouts the Aligner/Cutter flagged, which should be dropped).
        ``'zero'``: they are ignored when fitting and replaced by 0
        nanomaggies (sky level) before the stretch when transforming.

    Attributes
    ----------
    softening_ : ndarray of shape (n_bands,)
        Softening per band in nanomaggies.
    mean_ : ndarray of shape (n_bands,)
        Mean of the stretched training pixels per band (zeros when
        ``standardize=False``).
    scale_ : ndarray of shape (n_bands,)
        Standard deviation of the stretched training pixels per band (1 when
        ``standardize=False`` or when a band is constant).
    n_bands_in_ : int
        Number of bands seen in ``fit``.

    Notes
    -----
    Works on 4-D cutouts ``(n, n_bands, H, W)``; the output has the same
    shape, is always ``float32`` and has one row per input row. No
    ``n_features_in_`` is set because inputs are not 2-D. Cutout size may
    differ between ``fit`` and ``transform``; the band count may not.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.zeros((4, 5, 15, 15), dtype=np.float32)
    >>> X[:, :, 7, 7] = [[1.0], [2.0], [5.0], [10.0]]
    >>> scaler = AsinhScaler(softening=0.05, standardize=False).fit(X)
    >>> round(float(scaler.transform(X)[0, 2, 7, 7]), 4)  # arcsinh(1 / 0.1)
    2.9982
    >>> bool(np.allclose(scaler.inverse_transform(scaler.transform(X)), X, atol=1e-5))
    True
    """

    def __init__(self, softening="auto", *, standardize=True, clip=None, nan_policy="raise"):
        self.softening = softening
        self.standardize = standardize
        self.clip = clip
        self.nan_policy = nan_policy

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # 4-D cutouts only; declaring 2-D support would be false.
        tags.input_tags.two_d_array = False
        tags.input_tags.allow_nan = self.nan_policy == "zero"
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    # ------------------------------------------------------------ validation
    _parameter_constraints = {
        "softening": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither"), "array-like"],
        "standardize": ["boolean"],
        "clip": [None, Interval(Real, 0, None, closed="neither")],
        "nan_policy": [StrOptions(set(_NAN_POLICIES))],
    }
    _parameter_hints = {
        "softening": "softening must be 'auto', a number > 0 or one number per band (nanomaggies)",
        "standardize": "standardize must be True or False",
        "clip": "clip must be None or a finite number > 0",
    }

    def _check_params(self):
        validate_params(self)
        if self.clip is not None and not np.isfinite(self.clip):
            raise InvalidParameterError(f"{type(self).__name__}: clip must be None or a finite number > 0, "
                                        f"got {self.clip!r}")

    def _check_X(self, X):
        return _check_cutouts(X, who=type(self).__name__, allow_nan=self.nan_policy == "zero")

    def _resolve_softening(self, X, n_bands):
        who = type(self).__name__
        if isinstance(self.softening, str):  # 'auto' (validated)
            if n_bands == 2 * N_IMAGE_BANDS:  # PSF-aware: PSF channel k + 5 is softened like band k
                noise = cutout_sky_noise(X[:, :N_IMAGE_BANDS], allow_nan=self.nan_policy == "zero")
                noise = np.where(np.isfinite(noise), noise, 0.0)
                return np.tile(np.maximum(noise, MIN_SOFTENING), 2)
            noise = cutout_sky_noise(X, allow_nan=self.nan_policy == "zero")
            noise = np.where(np.isfinite(noise), noise, 0.0)
            return np.maximum(noise, MIN_SOFTENING)
        try:
            soft = np.asarray(self.softening, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{who}: softening must be 'auto' or numeric, got {self.softening!r}"
            ) from exc
        if soft.ndim == 0:
            soft = np.full(n_bands, float(soft))
        if soft.shape != (n_bands,):
            raise ValueError(
                f"{who}: softening has shape {soft.shape}; expected a scalar or one value per band "
                f"({n_bands} bands)"
            )
        if not (np.isfinite(soft).all() and (soft > 0).all()):
            raise ValueError(
                f"{who}: softening must be finite and > 0 nanomaggies, got {soft.tolist()}"
            )
        return soft

    # ------------------------------------------------------------- public API
    def fit(self, X, y=None):
        """Measure the per-band softening, mean and scale.

        Parameters
        ----------
        X : array-like of shape (n, n_bands, H, W)
            Training cutouts in nanomaggies.
        y : None
            Ignored.

        Returns
        -------
        self : AsinhScaler
        """
        self._check_params()
        X = self._check_X(split_inputs(X)[0])
        n_bands = X.shape[1]
        softening = self._resolve_softening(X, n_bands)
        mean = np.zeros(n_bands)
        scale = np.ones(n_bands)
        if self.standardize:
            for k in range(n_bands):  # band by band: bounded float64 memory
                z = np.arcsinh(X[:, k].astype(np.float64) / (2.0 * softening[k]))
                z = z[np.isfinite(z)]
                if z.size == 0:
                    raise ValueError(
                        f"{type(self).__name__}: band {k} has no finite pixel to fit on"
                    )
                mean[k] = z.mean()
                std = z.std()
                tiny = 10 * np.finfo(np.float64).eps * max(1.0, abs(mean[k]))
                scale[k] = std if std > tiny else 1.0  # constant band: no division by ~0
        self.softening_ = softening
        self.mean_ = mean
        self.scale_ = scale
        self.n_bands_in_ = n_bands
        return self

    def transform(self, X):
        """Stretch and standardise cutouts.

        Parameters
        ----------
        X : array-like of shape (n, n_bands, H, W)
            Cutouts in nanomaggies.

        Returns
        -------
        ndarray of shape (n, n_bands, H, W), float32
        """
        check_is_fitted(self, "softening_")
        self._check_params()
        X, features = split_inputs(X)  # measured features (hybrid CNN) pass through
        if features is not None:
            return join_inputs(self.transform(X), features)
        X = self._check_X(X)
        self._check_bands(X)
        X = np.where(np.isfinite(X), X, np.float32(0.0)) if self.nan_policy == "zero" else X
        # float32 arithmetic: relative error ~1e-7, half the memory of float64.
        bands = (None, slice(None), None, None)
        z = np.arcsinh(X / (2.0 * self.softening_).astype(np.float32)[bands])
        if self.standardize:
            z -= self.mean_.astype(np.float32)[bands]
            z /= self.scale_.astype(np.float32)[bands]
        if self.clip is not None:
            np.clip(z, -self.clip, self.clip, out=z)
        return z.astype(np.float32, copy=False)

    def inverse_transform(self, X):
        """Map scaled cutouts back to nanomaggies (exact unless clipped).

        Parameters
        ----------
        X : array-like of shape (n, n_bands, H, W)
            Output of :meth:`transform`.

        Returns
        -------
        ndarray of shape (n, n_bands, H, W), float32
            Cutouts in nanomaggies.
        """
        check_is_fitted(self, "softening_")
        X = _check_cutouts(X, who=type(self).__name__)
        self._check_bands(X)
        bands = (None, slice(None), None, None)
        z = X.astype(np.float64) * self.scale_[bands] + self.mean_[bands]
        return (2.0 * self.softening_[bands] * np.sinh(z)).astype(np.float32)

    def _check_bands(self, X):
        if X.shape[1] != self.n_bands_in_:
            raise ValueError(
                f"{type(self).__name__}: X has {X.shape[1]} bands but the scaler was fitted on "
                f"{self.n_bands_in_}"
            )
