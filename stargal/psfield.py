"""SDSS's own PSF model of a field, from its ``psField`` file (via pydl).

:func:`psfield_psf` reads the field's psField (HDUs 1-5 = u, g, r, i, z Karhunen-Loeve
eigen-images and their polynomial coefficients) and turns each band into a
:class:`~stargal.psf_model.BandPSF` (``source='psfield'``): the PSF that
:func:`pydl.photoop.image.sdss_psf_recon` reconstructs, written as monomial basis images so that
it is evaluated like every other model.

Conventions: SDSS's psField polynomial uses PHOTO's convention (first pixel's centre at 0.5,
coordinates in units of 1000 px): ``sdss_psf_recon(psfield, x, y)`` takes 0-based positions and
adds the 0.5 itself, so stargal's 0-based positions are passed through unchanged. The psField's
pixel grid is the frame's (:data:`stargal.sdss.FRAME_SHAPE`, at the nominal
:data:`stargal.sdss.PIXEL_SCALE_ARCSEC`).
"""

from __future__ import annotations

import warnings

import numpy as np

from ._imaging import centroid_offsets, resample_stamps
from .fetch import NotFoundError, get_fetcher
from .psf_model import PSF_STAMP, BandPSF, FieldPSF, monomials
from .sdss import BANDS, FRAME_SHAPE, PIXEL_SCALE_ARCSEC, FieldID, psfield_path

__all__ = ["psfield_psf"]


def _recentre(images: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Shift all basis images by the same sub-pixel offset so that the PSF ``weights @ images``
    (the PSF at the frame centre) has its windowed centroid on the central pixel.

    Returns the shifted images and the centroid offset ``(dx, dy)`` (pixels) that was removed."""
    total = np.tensordot(weights, images, axes=1)
    off = centroid_offsets(total[None, None])[0, 0]
    if not np.isfinite(off).all() or np.hypot(*off) < 1e-3:
        return images, (0.0, 0.0)
    s = images.shape[-1]
    pad = 4
    out = []
    h = (s - 1) / 2 + pad
    for im in images:
        big = np.pad(im, pad).astype(np.float64)
        out.append(resample_stamps(big, [h + off[0]], [h + off[1]], s, "lanczos3",
                                   engine="numpy")[0])
    return np.asarray(out, dtype=np.float64), (float(off[0]), float(off[1]))


def _pydl_recon():
    """:func:`pydl.photoop.image.sdss_psf_recon` (pydl's import emits astropy deprecation
    warnings about its test runner; they are not ours to show)."""
    from astropy.utils.exceptions import AstropyDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyDeprecationWarning)
        from pydl.photoop.image import sdss_psf_recon
    return sdss_psf_recon


def _band_psfield(table, band, size, shape, pixel_scale, recentre: bool = True) -> BandPSF:
    """Monomial basis of a psField HDU, obtained from :func:`pydl.photoop.image.sdss_psf_recon`.

    The psField PSF is ``sum_k RROWS_k sum_ij c_k[i, j] u^i v^j`` with ``u, v`` PHOTO's
    ``0.001 (row + 0.5)``, ``0.001 (col + 0.5)``: linear in the monomials ``u^i v^j``. The PSF
    reconstructed by pydl at as many positions as monomials gives a linear system whose
    solution is one basis image per monomial (exact, so pydl stays the reference)."""
    sdss_psf_recon = _pydl_recon()
    nr, nc = int(np.max(table["nrow_b"])), int(np.max(table["ncol_b"]))
    powers = [(j, i) for i in range(nr) for j in range(nc)]  # (px: column power, py: row power)
    origin, scale = (-0.5, -0.5), (1000.0, 1000.0)
    ny, nx = shape
    gx = np.linspace(0, nx - 1, max(nc, 2) + 1)
    gy = np.linspace(0, ny - 1, max(nr, 2) + 1)
    px, py = np.meshgrid(gx, gy)
    px, py = px.ravel(), py.ravel()
    imgs = np.array([np.asarray(sdss_psf_recon(table, float(a), float(b)), dtype=np.float64)
                     for a, b in zip(px, py)])
    m = monomials(powers, origin, scale, px, py)  # (npos, T)
    full = imgs.shape[-1]
    sol, *_ = np.linalg.lstsq(m, imgs.reshape(len(imgs), -1), rcond=None)
    images = sol.reshape(len(powers), full, full)
    lo = (full - size) // 2
    images = images[:, lo:lo + size, lo:lo + size]
    c = monomials(powers, origin, scale, [(nx - 1) / 2], [(ny - 1) / 2])[0]
    images = images / np.tensordot(c, images, axes=1).sum()
    note = ""
    if recentre:
        images, off = _recentre(images, c)
        note = (f"psField PSF shifted by ({-off[0]:+.4f}, {-off[1]:+.4f}) px to centre its "
                "windowed centroid")
    degree = max(a + b for a, b in powers)
    return BandPSF(band, images, powers, origin, scale, (int(ny), int(nx)), "psfield", 0, degree,
                   float(pixel_scale), np.zeros((0, 2)), note)


def psfield_psf(fid, fetcher=None, *, sas_url=None, cache_dir=None, bands=BANDS,
                size: int = PSF_STAMP, shape=None) -> FieldPSF | None:
    """SDSS's own PSF model of a field (its ``psField`` file), or ``None`` when there is none.

    The file (:func:`psfield_path`) is fetched with the :class:`~stargal.fetch.Fetcher`; a
    404 / missing file (:class:`~stargal.fetch.NotFoundError`) means "not available". HDUs 1-5
    hold the u, g, r, i, z Karhunen-Loeve eigen-images and their polynomial coefficients; the
    PSF at 0-based position ``(x, y)`` of the band's frame is what
    ``pydl.photoop.image.sdss_psf_recon(hdu.data, x, y)`` returns (pydl adds PHOTO's 0.5),
    trimmed to ``size`` pixels, normalised, and shifted (by the same sub-pixel offset
    everywhere, typically < 0.05 px) so that its windowed centroid at the frame centre is
    on the central pixel.

    Parameters
    ----------
    fid : str or FieldID
    fetcher, sas_url, cache_dir
        Data source (see :func:`stargal.fetch.get_fetcher`).
    bands : sequence of str
    size : int
        Odd stamp side (<= 51).
    shape : (ny, nx), optional
        Frame shape (default: the SDSS frame, 1489 x 2048).

    Returns
    -------
    FieldPSF or None
    """
    from astropy.io import fits

    fid = FieldID.parse(fid)
    fetcher = get_fetcher(fetcher, sas_url=sas_url, cache_dir=cache_dir)
    shape = tuple(shape) if shape is not None else FRAME_SHAPE

    def read(path):
        with fits.open(path, memmap=False) as hdul:
            return {b: _band_psfield(hdul[k + 1].data, b, size, shape, PIXEL_SCALE_ARCSEC)
                    for k, b in enumerate(BANDS) if b in bands}

    try:  # a cached copy that cannot be read is removed and fetched once more (Fetcher.read)
        models = fetcher.read(psfield_path(fid), read)
    except NotFoundError:
        return None
    return FieldPSF(fid, models)
