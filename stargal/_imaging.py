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

__all__ = ["N_IMAGE_BANDS", "border_pixels", "border_median", "split_psf_channels", "psf_fit_flux"]

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
