"""Small image helpers shared by the steps after the cutter (private).

Cutout conventions: float arrays ``(n, C, H, W)``, ``H`` and ``W`` odd, the object on the
central pixel ``((W - 1) / 2, (H - 1) / 2)`` (0-based ``(x, y)``). PSF-aware cutouts have
``C = 2 * 5``: channels ``0..4`` are the images in bands ``u, g, r, i, z`` (nanomaggies) and
channels ``5..9`` the field's PSF in the same bands at the object's position, centred on the
central pixel (see :data:`N_IMAGE_BANDS`, :func:`split_psf_channels`).
"""

from __future__ import annotations

import numpy as np

from .sdss import BANDS

__all__ = ["N_IMAGE_BANDS", "border_pixels", "border_median", "split_psf_channels", "psf_fit_flux",
           "aperture_flux", "point_source_ratio", "SDSS_TYPE_MAG", "SDSS_TYPE_RATIO"]

#: Number of image channels of a cutout; PSF-aware cutouts carry as many PSF channels after them.
N_IMAGE_BANDS = len(BANDS)


def border_pixels(stamps: np.ndarray) -> np.ndarray:
    """The one-pixel border of every stamp: ``(..., 2 H + 2 W - 4)`` from ``(..., H, W)``."""
    return np.concatenate([stamps[..., 0, :], stamps[..., -1, :], stamps[..., 1:-1, 0],
                           stamps[..., 1:-1, -1]], axis=-1)


def border_median(stamps: np.ndarray) -> np.ndarray:
    """Median of each stamp's one-pixel border (the local sky level), shape ``stamps.shape[:-2]``."""
    return np.median(border_pixels(stamps), axis=-1)


def split_psf_channels(X: np.ndarray, who: str = "stargal") -> tuple[np.ndarray, np.ndarray]:
    """``(images, psfs)`` views of PSF-aware cutouts ``(n, 10, H, W)``; a clear error otherwise."""
    if X.ndim != 4 or X.shape[1] != 2 * N_IMAGE_BANDS:
        raise ValueError(
            f"{who}: expected PSF-aware cutouts of shape (n, {2 * N_IMAGE_BANDS}, H, W) (5 image "
            f"channels u..z, then the PSF in each band, from Cutter(psf=True)); got shape {X.shape}")
    return X[:, :N_IMAGE_BANDS], X[:, N_IMAGE_BANDS:]


def psf_fit_flux(images: np.ndarray, psfs: np.ndarray, subtract_sky: bool = True) -> np.ndarray:
    """Linear least-squares PSF-fit flux of every stamp (unweighted: sky-dominated noise).

    ``flux = sum(P * (I - b)) / sum(P * P)`` with ``P`` the PSF stamp normalised to unit sum,
    ``I`` the image and ``b`` the border median (when ``subtract_sky``), for each object and
    band. The PSF is centred where the object is (the central pixel), so no position is fitted.

    Parameters
    ----------
    images, psfs : ndarray of shape (n, B, H, W)
        Images (nanomaggies; non-finite pixels count as sky) and unit-sum PSF stamps.
    subtract_sky : bool, default=True

    Returns
    -------
    ndarray of shape (n, B), float64
        Fluxes in the images' unit (nanomaggies); 0 where the PSF is empty.

    Examples
    --------
    >>> import numpy as np
    >>> P = np.zeros((1, 1, 5, 5)); P[..., 1:4, 1:4] = 1 / 9
    >>> float(psf_fit_flux(3.0 * P, P)[0, 0])
    3.0
    """
    img = np.nan_to_num(np.asarray(images, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    psf = np.nan_to_num(np.asarray(psfs, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if subtract_sky:
        img = img - border_median(img)[..., None, None]
    num = (psf * img).sum(axis=(-2, -1))
    den = (psf * psf).sum(axis=(-2, -1))
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


#: SDSS's star/galaxy boundary: an object is a galaxy when psfMag - cModelMag > 0.145 mag ...
SDSS_TYPE_MAG = 0.145
#: ... i.e. when F_psf / F_model < 10 ** (-0.4 * 0.145) = 0.875.
SDSS_TYPE_RATIO = 10 ** (-0.4 * SDSS_TYPE_MAG)
#: Bands (indices into ``u, g, r, i, z``) and aperture radius (pixels) of :func:`point_source_ratio`.
POINT_SOURCE_BANDS = (1, 2, 3)
POINT_SOURCE_RADIUS = 3.0


def aperture_flux(images, psfs, radius: float) -> np.ndarray:
    """PSF-corrected aperture flux of centred cutouts, ``(n, B)`` from ``(n, B, H, W)`` images and PSFs.

    Flux within ``radius`` pixels of the central pixel (pixel centres inside the circle), above the
    border median, divided by the fraction of the unit PSF inside the same circle: the total flux of
    a point source, and a "model"-like flux of an extended one. 0 where the PSF has no flux there.

    Examples
    --------
    >>> P = np.zeros((1, 1, 7, 7)); P[..., 2:5, 2:5] = 1 / 9
    >>> float(aperture_flux(5.0 * P, P, 1.0)[0, 0])
    5.0
    """
    img = np.nan_to_num(np.asarray(images, dtype=np.float64))
    psf = np.nan_to_num(np.asarray(psfs, dtype=np.float64))
    h, w = img.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    mask = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2 <= radius * radius).astype(np.float64)
    ap = ((img - border_median(img)[..., None, None]) * mask).sum(axis=(-2, -1))
    frac = (psf * mask).sum(axis=(-2, -1))
    return np.divide(ap, frac, out=np.zeros_like(ap), where=frac > 0)


def point_source_ratio(X: np.ndarray, bands=POINT_SOURCE_BANDS, radius: float = POINT_SOURCE_RADIUS) -> np.ndarray:
    """PSF-fit flux over PSF-corrected aperture flux, summed over ``bands``: ~1 for a point source.

    An analogue on PSF-aware cutouts of SDSS's star/galaxy rule, which compares the PSF
    magnitude with the model magnitude: ``sum_b F_b / sum_b M_b`` with ``F_b`` the PSF-fit flux
    (:func:`psf_fit_flux`) and ``M_b`` the PSF-corrected aperture flux (:func:`aperture_flux`), so
    that a point source gives 1 whatever the seeing and an extended source less. SDSS's boundary
    psfMag - cModelMag = 0.145 is a ratio of :data:`SDSS_TYPE_RATIO` = 0.875 (an aperture is not
    cModel: on real galaxies this ratio sits closer to 1 than SDSS's).

    Parameters
    ----------
    X : ndarray of shape (n, 10, H, W)
        PSF-aware cutouts (:func:`split_psf_channels`).
    bands : sequence of int, default=(1, 2, 3)
        Image channels summed (g, r, i: the bands where SDSS objects are best detected).
    radius : float, default=3.0
        Aperture radius in pixels (1.19″).

    Returns
    -------
    ndarray of shape (n,)
        NaN where the PSF-fit or the aperture flux is not positive.

    Examples
    --------
    >>> X = np.zeros((1, 10, 9, 9)); X[:, 5:, 3:6, 3:6] = 1 / 9
    >>> X[:, :5] = 2.0 * X[:, 5:]
    >>> round(float(point_source_ratio(X)[0]), 6)
    1.0
    """
    images, psfs = split_psf_channels(np.asarray(X), who="point_source_ratio")
    bands = list(bands)
    img = np.nan_to_num(np.asarray(images[:, bands], dtype=np.float64))
    psf = np.nan_to_num(np.asarray(psfs[:, bands], dtype=np.float64))
    flux = psf_fit_flux(img, psf).sum(axis=1)
    model = aperture_flux(img, psf, radius).sum(axis=1)
    out = np.full(len(flux), np.nan)
    ok = (flux > 0) & (model > 0)
    out[ok] = flux[ok] / model[ok]
    return out
