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
           "point_source_ratio"]

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


#: Bands (indices into ``u, g, r, i, z``) and aperture radius (pixels) of :func:`point_source_ratio`.
POINT_SOURCE_BANDS = (1, 2, 3)
POINT_SOURCE_RADIUS = 3.0


def point_source_ratio(X: np.ndarray, bands=POINT_SOURCE_BANDS, radius: float = POINT_SOURCE_RADIUS) -> np.ndarray:
    """PSF-fit flux over PSF-corrected aperture flux, summed over ``bands``: ~1 for a point source.

    An analogue on PSF-aware cutouts of SDSS's star/galaxy rule, which compares the PSF
    magnitude with the model magnitude: ``sum_b F_b / sum_b (A_b / A_{P,b})`` with ``F_b`` the
    PSF-fit flux (:func:`psf_fit_flux`), ``A_b`` the sky-subtracted flux within ``radius``
    pixels of the centre and ``A_{P,b}`` the same aperture's share of the unit-sum PSF, so that a
    point source gives 1 whatever the seeing and an extended source less. SDSS's boundary
    psfMag - cModelMag = 0.145 corresponds to ``10 ** (-0.4 * 0.145) = 0.875``.

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
        NaN where the aperture flux is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.zeros((1, 10, 9, 9)); X[:, 5:, 3:6, 3:6] = 1 / 9
    >>> X[:, :5] = 2.0 * X[:, 5:]
    >>> round(float(point_source_ratio(X)[0]), 6)
    1.0
    """
    images, psfs = split_psf_channels(np.asarray(X))
    bands = list(bands)
    img = np.nan_to_num(np.asarray(images[:, bands], dtype=np.float64))
    psf = np.nan_to_num(np.asarray(psfs[:, bands], dtype=np.float64))
    flux = psf_fit_flux(img, psf)
    h, w = img.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    ap = np.hypot(xx - (w - 1) / 2, yy - (h - 1) / 2) <= radius
    sky = border_median(img)[..., None, None]
    a = ((img - sky) * ap).sum(axis=(-2, -1))
    a_psf = (psf * ap).sum(axis=(-2, -1))
    total = np.divide(a, a_psf, out=np.zeros_like(a), where=a_psf > 0).sum(axis=1)
    return np.divide(flux.sum(axis=1), total, out=np.full(len(total), np.nan), where=total > 0)
