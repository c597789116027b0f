"""Aperture-photometry features measured on cutouts (random-forest baseline).

:class:`PhotometricFeatures` turns float32 cutouts of shape ``(n, 5, H, W)``
(bands ``u, g, r, i, z``, nanomaggies, object on the central pixel) into a small
table of photometric and morphological features.  It uses only the pixels:
catalog columns (``psfmag_r``, ``modelmag_r``, ...) define the labels and are
never used as features.

Given **PSF-aware** cutouts ``(n, 10, H, W)`` (``Cutter(psf=True)``: the five
images, then the field's PSF in each band at the object's position, see
:mod:`stargal._imaging`) it adds features that compare every object with *its own
field's* PSF -- PSF-fit magnitude, PSF/aperture flux ratio, SExtractor's
SPREAD_MODEL, PSF-relative size and concentration, PSF-fit chi^2.  SDSS's own
star/galaxy split is PSF-relative (``psfMag - cModelMag > 0.145``), so these
features keep their meaning from a sharp field to a blurred one, where the
absolute sizes of the 5-channel baseline do not.

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

import functools
import numbers
import warnings

import numpy as np
import scipy.fft
from photutils.aperture import CircularAperture
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from stargal._imaging import FWHM_PER_SIGMA as _FWHM_PER_SIGMA
from stargal._imaging import N_IMAGE_BANDS, border_pixels, mad_std, split_psf_channels
from stargal._validation import Real, validate_params
from stargal.sdss import BANDS

__all__ = ["PhotometricFeatures", "MeasuredFeatures", "MEASURED_BAND_FEATURES", "MEASURED_OBJECT_FEATURES", "SOFTENING",
           "asinh_magnitude"]

#: SDSS asinh-magnitude softening parameters ``b`` (in maggies) for u, g, r, i, z
#: (Lupton, Gunn & Szalay 1999; SDSS DR documentation "asinh magnitudes").
SOFTENING = np.array([1.4e-10, 0.9e-10, 1.2e-10, 1.8e-10, 7.4e-10])

#: ratios (concentration, peak/total) are clipped to this range
_RATIO_RANGE = (-1.0, 2.0)

#: SPREAD_MODEL's exponential scale length in units of the PSF FWHM (Desai et al. 2012)
_SPREAD_SCALE = 1.0 / 16.0
#: SPREAD_MODEL is clipped to this range (noise-only stamps: near-zero denominators)
_SPREAD_RANGE = (-1.0, 1.0)
#: the size_excess weight window is this many PSF sigmas wide ...
_WINDOW_PSF_SIGMAS = 1.5
#: ... and never narrower than this (pixels; guards an empty or delta-like PSF)
_MIN_WINDOW = 0.5
#: radius (pixels, pixel centres) of the PSF-fit chi^2 aperture
_CHI2_RADIUS = 3.0
#: reduced chi^2 is clipped to ``[0, _CHI2_MAX]``
_CHI2_MAX = 1e12
#: objects per chunk of the PSF-relative block
_CHUNK = 256


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


# ---------------------------------------------------------------------- PSF-relative helpers
def _median_last(a):
    """``np.median(a, axis=-1)`` for finite ``a`` (same values), without its NaN check pass."""
    m = a.shape[-1]
    half = m // 2
    if m % 2:
        return np.partition(a, half, axis=-1)[..., half]
    part = np.partition(a, (half - 1, half), axis=-1)
    return np.mean(part[..., half - 1:half + 1], axis=-1)


def _centred_grid(h, w):
    """Pixel offsets ``(dy, dx)`` from the central pixel, shapes ``(h, 1)`` and ``(1, w)``."""
    return (np.arange(h, dtype=np.float64) - (h - 1) / 2.0)[:, None], \
        (np.arange(w, dtype=np.float64) - (w - 1) / 2.0)[None, :]


def _exponential_otf(scale, f2):
    """Fourier transform of a unit-flux circular exponential ``exp(-r / scale)`` at ``f^2``.

    The 2-D Fourier transform of ``exp(-r / h) / (2 pi h^2)`` is ``(1 + (2 pi h f)^2)^(-3/2)``
    (``f`` in cycles per pixel), so convolving with it is one multiplication in Fourier space,
    exact for sub-pixel ``h`` (SPREAD_MODEL's ``FWHM / 16`` is ~0.2 px: sampling the profile
    on pixels would not do).

    Parameters
    ----------
    scale : ndarray of shape (...)
        Scale lengths ``h`` in pixels (0 gives the identity).
    f2 : ndarray of shape (m,) or (H, W // 2 + 1)
        Squared spatial frequencies, (cycles / pixel)^2.

    Returns
    -------
    ndarray of shape ``scale.shape + f2.shape``
    """
    a = (2.0 * np.pi * np.asarray(scale, dtype=np.float64)) ** 2
    t = 1.0 / (1.0 + a.reshape(a.shape + (1,) * np.ndim(f2)) * f2)
    return t * np.sqrt(t)


def _rfft_f2(shape):
    """Squared frequencies ``(H, W // 2 + 1)`` of ``scipy.fft.rfft2`` on ``(H, W)`` stamps."""
    h, w = shape
    return np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2


def _exp_convolve(stamps, scale):
    """``stamps`` (..., H, W) circularly convolved with unit-flux exponentials ``scale`` (...)."""
    shape = stamps.shape[-2:]
    spec = scipy.fft.rfft2(stamps) * _exponential_otf(scale, _rfft_f2(shape))
    return scipy.fft.irfft2(spec, s=shape)


@functools.lru_cache(maxsize=8)
def _frequency_bins(shape):
    """Fold an rfft2 half spectrum onto its distinct ``|f|^2``: ``(f2 (m,), M (2*H*Wr, m))``.

    For products ``S`` of two half spectra viewed as interleaved ``(re, im)`` float pairs
    (``(n, 2 * H * Wr)``), ``S @ M`` sums, per distinct squared frequency, ``Re`` of the
    product with its Hermitian weights (2 for the columns that stand for two frequencies), so
    a full-spectrum sum ``sum_k g(|k|^2) Re(conj(A_k) B_k)`` is ``(S @ M) @ g(f2)``.
    """
    h, w = shape
    wr = w // 2 + 1
    herm = np.full(wr, 2.0)
    herm[0] = 1.0
    if w % 2 == 0:
        herm[-1] = 1.0
    f2 = _rfft_f2(shape)
    uniq, inverse = np.unique(np.round(f2.ravel(), 12), return_inverse=True)
    m = np.zeros((h * wr, uniq.size))
    m[np.arange(h * wr), inverse.ravel()] = np.broadcast_to(herm, (h, wr)).ravel()
    m = np.repeat(m, 2, axis=0)  # the same weight for the real and the imaginary part
    uniq.flags.writeable = m.flags.writeable = False  # cached: shared between calls
    return uniq, m


def _spread_model(x, psf, scale):
    """SPREAD_MODEL ``(G.x)/(P.x) - (G.P)/(P.P)``, uniform weights (Desai et al. 2012, eq. 1).

    ``G`` is ``psf`` convolved with a unit-flux circular exponential of scale length ``scale``
    (in Fourier space, see :func:`_exponential_otf`: circular convolution over the stamp).
    The four scalar products are taken in Fourier space too (Parseval), folded onto the
    distinct ``|f|^2`` of the stamp grid (:func:`_frequency_bins`), so ``G`` is never formed.
    0 where ``P.x <= 0`` or ``P.P <= 0``; clipped to ``_SPREAD_RANGE``.

    Parameters
    ----------
    x, psf : ndarray of shape (n, B, H, W)
        Sky-subtracted images and PSF stamps.
    scale : ndarray of shape (n, B)
        Exponential scale lengths in pixels (``FWHM_psf / 16``).

    Returns
    -------
    ndarray of shape (n, B)
    """
    n, nb, h, w = x.shape
    # half spectra as interleaved (re, im) float pairs: (n * B, H * (W // 2 + 1) * 2)
    xf = scipy.fft.rfft2(x).reshape(n * nb, -1).view(np.float64)
    pf = scipy.fft.rfft2(psf).reshape(n * nb, -1).view(np.float64)
    f2, fold = _frequency_bins((h, w))
    # Re(conj(P^) X^) = Re P^ Re X^ + Im P^ Im X^ and |P^|^2, folded onto the distinct |f|^2
    px_f = ((pf * xf) @ fold).reshape(n, nb, f2.size)
    pp_f = ((pf * pf) @ fold).reshape(n, nb, f2.size)
    otf = _exponential_otf(scale, f2)  # (n, B, m)
    px, pp = px_f.sum(axis=-1), pp_f.sum(axis=-1)
    gx, gp = (px_f * otf).sum(axis=-1), (pp_f * otf).sum(axis=-1)
    ok = (px > 0) & (pp > 0)
    out = np.zeros_like(px)
    np.divide(gx, px, out=out, where=ok)
    out -= np.divide(gp, pp, out=np.zeros_like(pp), where=ok)
    return np.clip(out, *_SPREAD_RANGE)


def _windowed_size2(stamps, window, dy, dx):
    """Gaussian-weighted second-moment size^2 ``(Mxx + Myy) / 2`` about the central pixel.

    The weight ``exp(-(dx^2 + dy^2) / (2 window^2))`` is separable, so the moments are two
    passes over the stack. 0 where the weighted flux is not positive; clipped to
    ``[0, max(dx^2 + dy^2) / 2]`` (the range any non-negative stamp can give).
    """
    s2 = 2.0 * window[..., None] ** 2  # (n, B, 1)
    wx = np.exp(-dx[0] ** 2 / s2)  # (n, B, W)
    wy = np.exp(-dy[:, 0] ** 2 / s2)  # (n, B, H)
    a = np.einsum("nbyx,nbx->nby", stamps, wx)  # sum_x wx I
    b = np.einsum("nbyx,nbx->nby", stamps, wx * dx[0] ** 2)  # sum_x wx x^2 I
    s0 = np.einsum("nby,nby->nb", a, wy)
    sxx = np.einsum("nby,nby->nb", b, wy)
    syy = np.einsum("nby,nby->nb", a, wy * dy[:, 0] ** 2)
    out = np.divide(sxx + syy, 2.0 * s0, out=np.zeros_like(s0), where=s0 > 0)
    return np.clip(out, 0.0, (dx.max() ** 2 + dy.max() ** 2) / 2.0)


def _psf_relative_features(img, psf, flux, conc, masks, zero_point):
    """The PSF-relative feature block, ``(n, 6 * B)`` (see :class:`PhotometricFeatures`).

    Parameters
    ----------
    img : ndarray of shape (n, B, H, W)
        float64 images, non-finite pixels already set to 0.
    psf : ndarray of shape (n, B, H, W)
        PSF stamps (any dtype; non-finite -> 0; renormalised to unit sum, empty where the
        sum is not positive).
    flux : ndarray of shape (n, B, n_radii)
        Exact aperture fluxes of ``img``; ``conc`` its concentrations ``(n, B)``.
    masks : ndarray of shape (n_radii, H, W)
        Aperture weights.
    """
    n, nb, h, w = img.shape
    k = masks.shape[0]
    psf = np.array(psf, dtype=np.float64)
    np.copyto(psf, 0.0, where=~np.isfinite(psf))
    total = psf.sum(axis=(-2, -1))
    psf = psf * np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)[..., None, None]

    border = border_pixels(img)  # (n, B, L)
    sky = _median_last(border)  # == border_median(img)
    x = img - sky[..., None, None]
    sigma = mad_std(border, axis=-1, center=sky)  # 1.4826 MAD about the sky already computed
    # the PSF stamp after the same border-median sky subtraction: a noiseless star is exactly
    # x = F * psf_sub whatever the PSF's wings at the stamp border, so measuring psf_sub like
    # x gives a star exactly the PSF's value
    psf_sky = _median_last(border_pixels(psf))
    psf_sub = psf - psf_sky[..., None, None]

    flat_x, flat_p, flat_s = (a.reshape(n, nb, h * w) for a in (x, psf, psf_sub))
    pp = np.einsum("nbk,nbk->nb", flat_p, flat_p)

    def fit_flux(flat):  # == psf_fit_flux(images, psf) on sky-subtracted stamps, without copies
        return np.divide(np.einsum("nbk,nbk->nb", flat_p, flat), pp, out=np.zeros_like(pp),
                         where=pp > 0)

    # 1. PSF-fit flux as asinh magnitude
    fpsf = fit_flux(flat_x)
    psf_mag = asinh_magnitude(fpsf, SOFTENING[None, :nb], zero_point)

    # 2. (PSF-fit flux / aperture flux) of the object over the same ratio of the PSF stamp,
    # largest aperture, both sky-subtracted
    pflux = (psf.reshape(n * nb, h * w) @ masks.reshape(k, h * w).T).reshape(n, nb, k)
    area = masks[-1].sum()
    aper_x = flux[:, :, -1] - sky * area
    aper_p = pflux[:, :, -1] - psf_sky * area
    aper_ratio = _safe_ratio(fpsf * aper_p, aper_x * fit_flux(flat_s))

    # PSF size from its unweighted second moments about the central pixel
    dy, dx = _centred_grid(h, w)
    r2 = np.broadcast_to(dx * dx + dy * dy, (h, w))
    sig_psf = np.sqrt(np.clip(np.einsum("nbk,k->nb", flat_p, r2.ravel()) / 2.0, 0.0, None))

    # 3. SPREAD_MODEL with the exponential scale FWHM / 16
    spread = _spread_model(x, psf_sub, _SPREAD_SCALE * _FWHM_PER_SIGMA * sig_psf)

    # 4. windowed size^2 excess over the PSF's
    window = np.maximum(_WINDOW_PSF_SIGMAS * sig_psf, _MIN_WINDOW)
    size_excess = _windowed_size2(x, window, dy, dx) - _windowed_size2(psf_sub, window, dy, dx)

    # 5. concentration excess over the PSF's
    conc_excess = conc - _safe_ratio(pflux[:, :, 0], pflux[:, :, -1])

    # 6. reduced chi^2 within _CHI2_RADIUS of the least-squares scaled (sky-subtracted) PSF
    ss = np.einsum("nbk,nbk->nb", flat_s, flat_s)
    fsub = np.divide(np.einsum("nbk,nbk->nb", flat_s, flat_x), ss, out=np.zeros_like(ss),
                     where=ss > 0)
    inside = np.flatnonzero(r2.ravel() <= _CHI2_RADIUS ** 2)
    resid = flat_x[..., inside] - fsub[..., None] * flat_s[..., inside]
    dof = max(inside.size - 1, 1)
    var = sigma * sigma
    chi2 = np.divide((resid * resid).sum(axis=-1), dof * var, out=np.zeros_like(var),
                     where=var > 0)
    chi2 = np.clip(chi2, 0.0, _CHI2_MAX)

    out = np.concatenate([psf_mag, aper_ratio, spread, size_excess, conc_excess, chi2], axis=1)
    # guard against overflow for absurd (finite) pixel values; a no-op otherwise
    return np.nan_to_num(out, nan=0.0, posinf=_CHI2_MAX, neginf=-_CHI2_MAX)


#: prefixes of the PSF-relative columns, one block of five bands each, in output order
_PSF_COLUMNS = ("psf_mag", "psf_aper_ratio", "spread_model", "size_excess",
                "concentration_excess", "psf_chi2")


class PhotometricFeatures(TransformerMixin, BaseEstimator):
    """Aperture photometry, colours, concentration, shape and PSF-relative features of cutouts.

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

    These are *absolute* measurements (the PSF-blind baseline): the same compact
    galaxy looks smaller in sharp seeing than a star does in poor seeing.

    **PSF-aware cutouts** ``(n, 10, H, W)`` (``Cutter(psf=True)``: channels 0-4 the
    images as above, channels 5-9 the field's PSF in bands ``u..z`` at the object,
    centred on the central pixel, unit sum) give the same 42 columns, computed on the
    image channels (identical values), followed by six PSF-relative blocks of five
    columns ``{name}_{band}``, bands ``u, g, r, i, z`` (72 columns with the default
    radii).  They compare every object with *its own* PSF, so a threshold means the
    same thing in sharp and in poor seeing.  Notation: ``I`` the image, ``b`` its
    border median (the local sky), ``x = I - b``; ``P`` the PSF stamp renormalised to
    unit sum (an empty, non-finite or non-positive-sum PSF counts as all zeros) and
    ``P' = P - border_median(P)``, the PSF after the same sky subtraction -- so a
    noiseless star is exactly ``x = F P'`` and measuring ``P'`` like ``x`` gives it
    exactly the PSF's value, whatever the PSF's wings at the stamp edge:

    * ``psf_mag_{band}`` -- PSF-fit flux ``F = P.x / P.P`` (nanomaggies; the shared
      :func:`stargal._imaging.psf_fit_flux`) as an asinh magnitude (:data:`SOFTENING`).
      About the total magnitude for a star, fainter for a galaxy.
    * ``psf_aper_ratio_{band}`` -- ``(F / A) / (F_P / A_P)``: the PSF-fit over the
      aperture flux of the object, divided by the same ratio measured on the PSF stamp,
      i.e. ``F`` over the aperture-corrected flux (``A`` = flux of ``x`` in the
      *largest* aperture; ``F_P``, ``A_P`` the same for ``P``: ``F_P = 1``, ``A_P`` the
      PSF's aperture fraction, up to the border-median term). Exactly 1 for a noiseless
      point source, < 1 for an extended one (0.45 to 0.9 for disc galaxies of
      half-light radius 0.3 to 1 FWHM); 0 where ``A <= 0``, clipped to ``[-1, 2]``. (The
      largest aperture because a galaxy's ratio must fall below a star's: in an aperture
      smaller than the PSF's own footprint, ``4 pi sigma_psf^2``, it rises above 1 in
      poor seeing.)
    * ``spread_model_{band}`` -- SExtractor's SPREAD_MODEL (Desai et al. 2012,
      ApJ 757, 83, eq. 1), uniform weights (sky-dominated noise):
      ``(G.x)/(P'.x) - (G.P')/(P'.P')``, ``G`` = ``P'`` convolved with a unit-flux circular
      exponential of scale length ``FWHM / 16``, ``FWHM = 2.3548 sqrt((Mxx + Myy) / 2)``
      from the unweighted second moments of ``P`` about the central pixel. The
      convolution is exact in Fourier space (the exponential's transform is
      ``(1 + (2 pi h f)^2)^(-3/2)``; the ~0.2 px scale is far below a pixel), circular
      over the stamp. Dimensionless: ~0 for a star (exactly 0 without noise; scatter
      <~ 1e-3 at S/N ~ 100), **positive for a galaxy** (with a Gaussian PSF ~0.005 for
      half-light radius 0.3 FWHM, ~0.015 for 1 FWHM, nearly independent of the seeing),
      negative for something sharper than the PSF (a cosmic ray); 0 where
      ``P'.x <= 0``, clipped to ``[-1, 1]``.
    * ``size_excess_{band}`` -- ``sigma_obj^2 - sigma_psf^2`` in pixels^2: second-moment
      sizes ``(Mxx + Myy) / 2`` of ``x`` and of ``P'``, both about the central pixel and
      weighted by the same circular Gaussian window of width ``1.5 sigma_psf``
      (``sigma_psf = FWHM / 2.3548``, at least 0.5 px). ~0 for a star, > 0 for a galaxy
      (larger in poor seeing: the window widens with the PSF). Each size is 0 where its
      weighted flux is not positive and at most half the squared corner distance.
    * ``concentration_excess_{band}`` -- ``concentration_{band}`` minus the same ratio
      measured on ``P``: ~0 for a star, < 0 for a galaxy (in ``[-3, 3]``).
    * ``psf_chi2_{band}`` -- reduced chi^2 of the scaled PSF, ``sum (x - F' P')^2 /
      sigma^2 / (N - 1)`` over the ``N`` pixels whose centres are within 3 px of the
      central pixel (29 px), ``F' = P'.x / P'.P'`` fitted on the whole stamp and
      ``sigma = 1.4826 MAD`` of the border pixels. ~1 for a star in sky-dominated noise,
      grows with how badly a scaled PSF describes the object (galaxies, blends; also
      very bright stars, whose own photon noise exceeds the sky's); 0 where the border
      has no scatter, clipped to ``[0, 1e12]``.

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
    psf_aware_ : bool
        Whether :meth:`fit` saw PSF-aware (10-channel) cutouts; :meth:`transform`
        requires the same channel count.
    aperture_masks_ : ndarray of shape (n_radii, H, W)
        photutils exact-overlap aperture weights.
    n_features_out_ : int
        Number of output columns (``2 * 5 * n_radii + 4 + 5 + 3``, plus ``6 * 5``
        when ``psf_aware_``).

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

    PSF-aware cutouts: a star is the PSF scaled, so its SPREAD_MODEL is 0 and its
    PSF-fit flux equals its aperture-corrected flux.

    >>> yy, xx = np.mgrid[:15, :15] - 7.0
    >>> psf = np.exp(-(xx ** 2 + yy ** 2) / (2 * 1.3 ** 2))
    >>> psf /= psf.sum()
    >>> Xp = np.zeros((1, 10, 15, 15))
    >>> Xp[0, :5], Xp[0, 5:] = 100.0 * psf, psf
    >>> pf = PhotometricFeatures().fit(Xp)
    >>> F = pf.transform(Xp)
    >>> F.shape
    (1, 72)
    >>> names = list(pf.get_feature_names_out())
    >>> bool(abs(F[0, names.index("spread_model_r")]) < 1e-12)
    True
    >>> round(float(F[0, names.index("psf_aper_ratio_r")]), 6)
    1.0
    """

    def __init__(self, radii=(1.5, 3.0, 5.0), zero_point=22.5):
        self.radii = radii
        self.zero_point = zero_point

    # ------------------------------------------------------------------ checks
    _parameter_constraints = {"radii": ["array-like"], "zero_point": [Real]}
    _parameter_hints = {"radii": "radii must be a sequence of at least two increasing radii (pixels)",
                        "zero_point": "zero_point must be a finite number"}

    def _check_params(self):
        validate_params(self)
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
                            f"(n, 5, H, W) or (n, 10, H, W), got {type(X).__name__}")
        if X.ndim != 4 or X.shape[1] not in (N_IMAGE_BANDS, 2 * N_IMAGE_BANDS):
            raise ValueError(f"expected cutouts of shape (n, {len(BANDS)}, H, W) in band order "
                             f"{''.join(BANDS)}, or PSF-aware cutouts (n, {2 * N_IMAGE_BANDS}, "
                             f"H, W) (images, then the PSF per band: Cutter(psf=True)), "
                             f"got shape {X.shape}")
        if X.shape[2] < 3 or X.shape[3] < 3 or X.shape[2] % 2 == 0 or X.shape[3] % 2 == 0:
            raise ValueError(f"cutouts must have odd sides >= 3 (object on the central pixel), "
                             f"got {X.shape[2]}x{X.shape[3]}")
        if not np.issubdtype(X.dtype, np.number):
            raise TypeError(f"cutouts must be numeric, got dtype {X.dtype}")
        return X

    # ------------------------------------------------------------------ API
    def fit(self, X, y=None):
        """Check the cutouts, note whether they are PSF-aware, compute the aperture masks.

        Parameters
        ----------
        X : ndarray of shape (n, 5, H, W) or (n, 10, H, W)
            Cutouts in nanomaggies; 10 channels = PSF-aware (images, then PSFs).
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
        self.psf_aware_ = bool(X.shape[1] == 2 * N_IMAGE_BANDS)
        self.n_features_out_ = len(self._names(radii))
        return self

    def transform(self, X):
        """Measure the features.

        Parameters
        ----------
        X : ndarray of shape (n, 5, H, W) or (n, 10, H, W)
            Cutouts in nanomaggies, same ``H, W`` and channel count as in :meth:`fit`.

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
        psf_aware = getattr(self, "psf_aware_", False)  # models pickled before PSF awareness
        if (X.shape[1] == 2 * N_IMAGE_BANDS) != psf_aware:
            fitted = (f"PSF-aware cutouts ({2 * N_IMAGE_BANDS} channels: images, then PSFs)"
                      if psf_aware else f"plain cutouts ({N_IMAGE_BANDS} image channels)")
            raise ValueError(f"PhotometricFeatures was fitted on {fitted} but transform got "
                             f"{X.shape[1]} channels; use the same kind of cutouts "
                             f"(Cutter(psf=...)) for fit and transform")
        if psf_aware:
            images, psfs = split_psf_channels(X, "PhotometricFeatures")
        else:
            images, psfs = X, None
        out, img, flux, conc = self._aperture_features(images)
        if not psf_aware:
            return out
        # the PSF block in chunks of objects: its temporaries then stay in the CPU caches
        extra = np.empty((len(out), len(_PSF_COLUMNS) * N_IMAGE_BANDS))
        for i in range(0, len(out), _CHUNK):
            j = slice(i, i + _CHUNK)
            extra[j] = _psf_relative_features(img[j], psfs[j], flux[j], conc[j],
                                              self.aperture_masks_, self.zero_point)
        return np.concatenate([out, extra], axis=1)

    def _aperture_features(self, X):
        """The PSF-blind baseline columns of image cutouts ``(n, 5, H, W)``.

        Returns ``(features, img, flux, conc)``: the features and the intermediate float64
        images, aperture fluxes and concentrations the PSF-relative block reuses.
        """
        n, nb, h, w = X.shape
        # == np.nan_to_num(X as float64, nan=0, posinf=0, neginf=0), with one copy, not two
        img = np.array(X, dtype=np.float64)
        np.copyto(img, 0.0, where=~np.isfinite(img))
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
        return out, img, flux, conc

    def _names(self, radii, psf_aware=None):
        if psf_aware is None:
            psf_aware = getattr(self, "psf_aware_", False)
        names = [f"flux_{b}_r{_fmt(r)}" for b in BANDS for r in radii]
        names += [f"mag_{b}_r{_fmt(r)}" for b in BANDS for r in radii]
        names += [f"color_{a}_{b}" for a, b in zip(BANDS[:-1], BANDS[1:])]
        names += [f"concentration_{b}" for b in BANDS]
        names += ["size_r", "ellipticity_r", "peak_ratio_r"]
        if psf_aware:
            names += [f"{p}_{b}" for p in _PSF_COLUMNS for b in BANDS]
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


#: Per-band features of :class:`MeasuredFeatures` (``<name>_<band>``).
MEASURED_BAND_FEATURES = ("psf_minus_cmodel", "frac_dev", "r_exp_fwhm", "r_dev_fwhm", "ab_exp",
                          "dchi2_exp", "dchi2_dev", "log_snr", "detected")
#: Per-object features of :class:`MeasuredFeatures`.
MEASURED_OBJECT_FEATURES = ("type_stat", "type_stat_err", "n_detected")


class MeasuredFeatures(TransformerMixin, BaseEstimator):
    """Model-fit measurements (:class:`stargal.photo.SDSSPhotometry`'s table) -> forest features.

    Per band: ``psf_minus_cmodel`` (``2.5 log10(cModel / PSF flux)``, mag), ``frac_dev``,
    ``r_exp_fwhm`` and ``r_dev_fwhm`` (the fitted effective radii over the PSF FWHM at the
    object), ``ab_exp``, ``dchi2_exp`` and ``dchi2_dev`` (how much better the exponential or
    de Vaucouleurs model fits than the PSF, chi^2 per fitted pixel), ``log_snr`` (log10 of the
    PSF S/N) and ``detected``; per object the type statistic, its error and the number of
    detected bands. Everything is relative to the field's PSF, so it keeps its meaning from a
    sharp field to a blurred one. Unmeasured values stay NaN (scikit-learn's forests split on
    missing values), never zero.

    Stateless: :meth:`fit` records the number of features only.

    Examples
    --------
    >>> import pandas as pd
    >>> from stargal.photo import measurement_columns
    >>> table = pd.DataFrame(np.nan, index=range(2), columns=measurement_columns())
    >>> MeasuredFeatures().fit_transform(table).shape
    (2, 48)
    """

    def fit(self, X, y=None):
        """Check the table. Returns ``self``."""
        self._check_table(X)
        self.n_features_out_ = len(self._names())
        return self

    @staticmethod
    def _check_table(X):
        """``X`` as SDSSPhotometry's table (a DataFrame), or a clear error."""
        import pandas as pd

        from .photo import measurement_columns

        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"MeasuredFeatures expects stargal.photo.SDSSPhotometry's table (a DataFrame), got "
                            f"{type(X).__name__}")
        missing = [c for c in measurement_columns() if c not in X.columns and not c.startswith("psf_source")]
        if missing:
            raise ValueError(f"MeasuredFeatures: the table lacks {missing[:5]}; is it SDSSPhotometry's output?")
        return X

    @staticmethod
    def _names():
        return [f"{f}_{b}" for b in BANDS for f in MEASURED_BAND_FEATURES] + list(MEASURED_OBJECT_FEATURES)

    def transform(self, X) -> np.ndarray:
        """``(n, 48)`` float64 features (NaN where not measured)."""
        check_is_fitted(self, "n_features_out_")
        t = self._check_table(X)
        cols = []
        with np.errstate(invalid="ignore", divide="ignore"):
            for b in BANDS:
                psf = t[f"psf_flux_{b}"].to_numpy(float)
                cm = t[f"cmodel_flux_{b}"].to_numpy(float)
                fwhm = t[f"psf_fwhm_{b}"].to_numpy(float)
                npix = t[f"npix_{b}"].to_numpy(float)
                chi_psf = t[f"chi2_psf_{b}"].to_numpy(float)
                pm = np.where((psf > 0) & (cm > 0), 2.5 * np.log10(cm / psf), np.nan)
                cols += [pm, t[f"frac_dev_{b}"].to_numpy(float), t[f"r_exp_{b}"].to_numpy(float) / fwhm,
                         t[f"r_dev_{b}"].to_numpy(float) / fwhm, t[f"ab_exp_{b}"].to_numpy(float),
                         (chi_psf - t[f"chi2_exp_{b}"].to_numpy(float)) / npix,
                         (chi_psf - t[f"chi2_dev_{b}"].to_numpy(float)) / npix,
                         np.log10(np.clip(t[f"snr_{b}"].to_numpy(float), 1e-3, None)),
                         t[f"detected_{b}"].to_numpy(float)]
            cols += [t[c].to_numpy(float) for c in MEASURED_OBJECT_FEATURES]
        out = np.column_stack(cols)
        out[~np.isfinite(out)] = np.nan
        return out

    def get_feature_names_out(self, input_features=None):
        """Names of the output columns."""
        return np.asarray(self._names(), dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.input_tags.allow_nan = True
        tags.requires_fit = True
        return tags
