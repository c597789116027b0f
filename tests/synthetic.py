"""Small synthetic SDSS-like fields in the SAS layout, for fast unit tests.

:func:`make_synthetic_sas` writes, under ``root``, exactly what the real archive
(or the ``../shared/sdss`` mirror) holds for one field, only much smaller::

    dr17/eboss/photoObj/frames/301/RUN/CAMCOL/frame-BAND-RRRRRR-C-FFFF.fits.bz2   (5 bands)
    dr17/eboss/sweeps/dr13_final/301/calibObj-RRRRRR-C-{star,gal}.fits.gz

Frames are float32 images in nanomaggies with **real SDSS TAN WCS keywords** (copied
from ``frame-r-008162-6-0080``: same ``CTYPE``/``CD`` matrix, 0.396"/px, rotated), shrunk
to ``shape`` pixels. Like real SDSS frames the five bands are **not** pixel-aligned: each
band has its own ``CRPIX``/``CRVAL``, chosen so that a source at r-frame pixel ``(x, y)``
lies at ``(x + dx_b, y + dy_b)`` in band ``b`` (``offsets``, several pixels, non-integer).
Stars (circular Gaussians, sigma 1.5 px ~ SDSS seeing) and galaxies (elliptical Gaussians)
are injected at known RA/Dec, rendered in each band at the position that band's own WCS
gives; the true 0-based pixel positions are returned. A sweep file for the run+camcol
(``calibObj``) lists them with the columns stargal reads; calling the function again for
another field of the same run+camcol appends to the sweep.

Examples
--------
>>> info = make_synthetic_sas(tmp_path, fid="1000-1-10", n_stars=5, n_gal=3)   # doctest: +SKIP
>>> Aligner(sas_url=info["sas_url"], cache_dir=str(tmp_path / "cache"))       # doctest: +SKIP
"""

from __future__ import annotations

import bz2
import io
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS

from stargal.sdss import BANDS, FieldID, calibobj_path, frame_path

__all__ = [
    "REAL_WCS_R",
    "DEFAULT_OFFSETS",
    "PIXEL_SCALE_DEG",
    "measured_photometry_table",
    "gaussian",
    "psf_aware_stack",
    "synthetic_header",
    "make_synthetic_sas",
    "make_psf_sas",
    "make_photo_sas",
    "write_psfield",
    "window_row",
    "write_window_flist",
]

#: WCS keywords of the real r frame of 8162-6-80 (CRPIX/CRVAL are replaced per field/band).
REAL_WCS_R = {
    "RADESYS": "ICRS",  # real SDSS headers spell it RADECSYS (deprecated; same meaning)
    "EQUINOX": 2000.0,
    "CTYPE1": "RA---TAN",
    "CTYPE2": "DEC--TAN",
    "CUNIT1": "deg",
    "CUNIT2": "deg",
    "CRPIX1": 1025.0,
    "CRPIX2": 745.0,
    "CRVAL1": 331.709414401,
    "CRVAL2": 26.9626508189,
    "CD1_1": -3.01982932672e-05,
    "CD1_2": 0.000105743143543,
    "CD2_1": 0.000105764935177,
    "CD2_2": 3.01923666993e-05,
}
#: Pixel scale of SDSS frames (0.396 arcsec) in degrees.
PIXEL_SCALE_DEG = 0.396 / 3600.0

#: Default per-band pixel offsets ``(dx, dy)`` relative to r: a source at r pixel
#: ``(x, y)`` sits at ``(x + dx, y + dy)`` in that band (real SDSS offsets are of this size).
DEFAULT_OFFSETS = {
    "u": (3.37, -2.61),
    "g": (5.72, 1.28),
    "r": (0.0, 0.0),
    "i": (-2.29, 4.16),
    "z": (-4.63, -3.34),
}

# Small extra reference-pixel shifts per band, so CRPIX differs between bands too.
_CRPIX_JITTER = {"u": (1.0, -2.0), "g": (0.0, 3.0), "r": (0.0, 0.0), "i": (-2.0, 1.0), "z": (2.0, 2.0)}

# Relative flux of the injected sources per band (a plausible stellar colour).
_SED = {"u": 0.35, "g": 0.8, "r": 1.0, "i": 1.15, "z": 1.25}


def _default_crval(fid: FieldID) -> tuple[float, float]:
    """A sky position unique to each field, so synthetic fields never overlap by accident."""
    ra = 20.0 + (fid.run % 300) + 0.05 * fid.field
    dec = -30.0 + 8.0 * fid.camcol + 0.01 * (fid.field % 7)
    return ra, dec


def synthetic_header(band: str, shape=(150, 200), crval=None, offset=(0.0, 0.0),
                     crpix_jitter=(0.0, 0.0)) -> fits.Header:
    """FITS header of a synthetic frame with a real SDSS TAN WCS.

    Parameters
    ----------
    band : str
        SDSS band (goes to ``FILTER``).
    shape : (ny, nx)
        Image shape (NAXIS2, NAXIS1).
    crval : (ra, dec), optional
        Sky position of the r frame's reference pixel (the image centre).
    offset : (dx, dy)
        Pixel offset of this band relative to r (see :data:`DEFAULT_OFFSETS`).
    crpix_jitter : (dx, dy)
        Extra shift of this band's ``CRPIX`` (its ``CRVAL`` is adjusted to match).
    """
    ny, nx = shape
    if crval is None:
        crval = (REAL_WCS_R["CRVAL1"], REAL_WCS_R["CRVAL2"])
    base = fits.Header()
    for key, value in REAL_WCS_R.items():
        base[key] = value
    base["CRPIX1"], base["CRPIX2"] = (nx + 1) / 2.0, (ny + 1) / 2.0  # 1-based image centre
    base["CRVAL1"], base["CRVAL2"] = float(crval[0]), float(crval[1])
    wcs_r = WCS(base)
    crpix = np.array([base["CRPIX1"] + crpix_jitter[0], base["CRPIX2"] + crpix_jitter[1]])
    # This band's reference pixel (0-based crpix - 1) shows the sky that r shows at crpix - 1 - offset.
    ra, dec = wcs_r.all_pix2world(crpix[0] - 1 - offset[0], crpix[1] - 1 - offset[1], 0)
    header = fits.Header()
    header["NAXIS"] = 2
    header["NAXIS1"] = nx
    header["NAXIS2"] = ny
    header["BUNIT"] = ("nanomaggy", "1 nanomaggy = 3.631e-6 Jy")
    header["FILTER"] = band
    for key, value in REAL_WCS_R.items():
        header[key] = value
    header["CRPIX1"], header["CRPIX2"] = float(crpix[0]), float(crpix[1])
    header["CRVAL1"], header["CRVAL2"] = float(ra), float(dec)
    header["COMMENT"] = "synthetic stargal test frame (WCS keywords from frame-r-008162-6-0080)"
    return header


def _place(rng, n, shape, offsets, margin, min_sep, max_tries=20000):
    """r-frame positions at least ``margin`` px inside every band and ``min_sep`` px apart."""
    ny, nx = shape
    dxs = np.array([o[0] for o in offsets.values()])
    dys = np.array([o[1] for o in offsets.values()])
    xlo, xhi = margin - dxs.min(), nx - 1 - margin - dxs.max()
    ylo, yhi = margin - dys.min(), ny - 1 - margin - dys.max()
    if xlo >= xhi or ylo >= yhi:
        raise ValueError(f"frame {shape} too small for margin {margin} and offsets {offsets}")
    pts: list[tuple[float, float]] = []
    for _ in range(max_tries):
        if len(pts) == n:
            break
        p = (rng.uniform(xlo, xhi), rng.uniform(ylo, yhi))
        if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= min_sep**2 for q in pts):
            pts.append(p)
    if len(pts) < n:
        raise ValueError(f"cannot place {n} sources {min_sep} px apart in a {shape} frame; "
                         "use fewer sources, a larger shape or a smaller min_sep")
    return np.array(pts, dtype=float).reshape(n, 2)


def _render(shape, x0, y0, flux, sigma_x, sigma_y, theta):
    """Elliptical Gaussian (total ``flux``) sampled at pixel centres (0-based) of a ``shape`` image."""
    ny, nx = shape
    img = np.zeros(shape, dtype=np.float64)
    r = int(np.ceil(6 * max(sigma_x, sigma_y)))
    ix, iy = int(round(x0)), int(round(y0))
    xs = np.arange(max(ix - r, 0), min(ix + r + 1, nx))
    ys = np.arange(max(iy - r, 0), min(iy + r + 1, ny))
    xx, yy = np.meshgrid(xs - x0, ys - y0)
    c, s = np.cos(theta), np.sin(theta)
    u = (c * xx + s * yy) / sigma_x
    v = (-s * xx + c * yy) / sigma_y
    img[np.ix_(ys, xs)] = flux * np.exp(-0.5 * (u**2 + v**2)) / (2 * np.pi * sigma_x * sigma_y)
    return img


def _write_bz2_frame(path: Path, image: np.ndarray, header: fits.Header) -> None:
    hdus = fits.HDUList([
        fits.PrimaryHDU(image.astype(np.float32), header=header),
        fits.ImageHDU(np.ones(image.shape[1], dtype=np.float32)),  # calibration vector (unused)
    ])
    buf = io.BytesIO()
    hdus.writeto(buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bz2.compress(buf.getvalue(), compresslevel=1))


def _write_sweep(path: Path, rows: pd.DataFrame) -> None:
    """Write (or append to) a ``calibObj`` sweep with the columns stargal reads."""
    cols = {
        "RUN": ("I", rows["run"].to_numpy(np.int16)),
        "RERUN": ("3A", np.array(["301"] * len(rows))),
        "CAMCOL": ("B", rows["camcol"].to_numpy(np.uint8)),
        "FIELD": ("I", rows["field"].to_numpy(np.int16)),
        "ID": ("J", rows["id"].to_numpy(np.int32)),
        "OBJC_TYPE": ("J", rows["objc_type"].to_numpy(np.int32)),
        "OBJC_ROWC": ("E", rows["y_r"].to_numpy(np.float32)),
        "OBJC_COLC": ("E", rows["x_r"].to_numpy(np.float32)),
        "RA": ("D", rows["ra"].to_numpy(np.float64)),
        "DEC": ("D", rows["dec"].to_numpy(np.float64)),
        "PSFFLUX": ("5E", np.stack([rows[f"psfflux_{b}"] for b in BANDS], axis=1).astype(np.float32)),
        "MODELFLUX": ("5E", np.stack([rows[f"flux_{b}"] for b in BANDS], axis=1).astype(np.float32)),
        # SDSS photo's per-band centroids (first pixel's centre at 0.5): the true positions here
        "ROWC": ("5E", np.stack([rows[f"y_{b}"] + 0.5 for b in BANDS], axis=1).astype(np.float32)),
        "COLC": ("5E", np.stack([rows[f"x_{b}"] + 0.5 for b in BANDS], axis=1).astype(np.float32)),
        "PSFFLUX_IVAR": ("5E", np.full((len(rows), len(BANDS)), 1e4, dtype=np.float32)),
    }
    new = fits.BinTableHDU.from_columns(
        [fits.Column(name=k, format=f, array=a) for k, (f, a) in cols.items()])
    if path.exists():
        with fits.open(path) as old:
            old_data = old[1].data
            n_old = len(old_data)
            merged = fits.BinTableHDU.from_columns(old[1].columns, nrows=n_old + len(rows))
            for name in cols:
                merged.data[name][n_old:] = new.data[name]
        new = merged
    new.header["LABELSRC"] = "synthetic"
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), new]).writeto(buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    comp = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip container
    path.write_bytes(comp.compress(buf.getvalue()) + comp.flush())


def make_synthetic_sas(root, fid="1000-1-10", n_stars: int = 6, n_gal: int = 4, offsets=None,
                       missing_bands=(), shape=(150, 200), crval=None, noise: float = 0.01,
                       star_sigma: float = 1.5, flux_range=(20.0, 200.0), margin: float = 14.0,
                       min_sep: float = 22.0, seed: int = 0, wcs_error=None) -> dict:
    """Write one synthetic SDSS field (5 bz2 frames + calibObj sweeps) under ``root``.

    Parameters
    ----------
    root : path
        Root of the synthetic SAS tree (created). Use ``info['sas_url']`` as ``sas_url``.
    fid : str
        Field ``'RUN-CAMCOL-FIELD'``.
    n_stars, n_gal : int
        Number of injected stars (circular Gaussians, sigma ``star_sigma`` px) and galaxies
        (elliptical Gaussians, sigma 2.2-3.5 px, axis ratio 0.5-0.9).
    offsets : dict band -> (dx, dy), optional
        Pixel offset of each band relative to r (default :data:`DEFAULT_OFFSETS`).
    missing_bands : sequence of str
        Bands whose frame is *not* written (like the real incomplete field 1006-6-11).
    shape : (ny, nx)
        Frame shape in pixels.
    crval : (ra, dec), optional
        Sky position (deg) of the r frame's centre; default unique per field.
    noise : float
        Standard deviation of the Gaussian pixel noise, nanomaggies.
    flux_range : (lo, hi)
        r-band total fluxes (nanomaggies) drawn log-uniformly.
    margin : float
        Minimum distance (px) of every source from every band's frame edge.
    min_sep : float
        Minimum separation (px) between sources.
    seed : int
        Random seed.
    wcs_error : dict band -> (dx, dy), optional
        Deliberate astrometric error of a band's *written* header, in pixels: sources are
        rendered where they really are, ``(dx, dy)`` away from where that header's WCS puts
        them (true position = WCS position + ``(dx, dy)``), as SDSS's per-band astrometry is
        off by ~0.1-0.25 px. ``objects`` holds the true positions; ``headers`` the written ones.

    Returns
    -------
    dict
        ``root`` (Path), ``sas_url`` (``'file://...'``), ``fid`` (str), ``shape``, ``offsets``,
        ``headers`` (band -> fits.Header, all five even for missing bands), ``noise`` and
        ``objects``: a DataFrame with one row per source: ``objid, run, camcol, field, ra, dec,
        label`` (``'star'``/``'galaxy'``), ``flux_<band>`` (nanomaggies) and the true 0-based
        pixel positions ``x_<band>, y_<band>`` in each band's own frame.
    """
    root = Path(root)
    fidp = FieldID.parse(fid)
    offsets = dict(DEFAULT_OFFSETS if offsets is None else offsets)
    for b in BANDS:
        offsets.setdefault(b, (0.0, 0.0))
    offsets["r"] = tuple(offsets["r"])
    bad = set(missing_bands) - set(BANDS)
    if bad:
        raise ValueError(f"unknown bands in missing_bands: {sorted(bad)}")
    rng = np.random.default_rng(seed)
    crval = _default_crval(fidp) if crval is None else crval
    headers = {b: synthetic_header(b, shape, crval, offsets[b], _CRPIX_JITTER[b]) for b in BANDS}
    wcss = {b: WCS(headers[b]) for b in BANDS}  # the true mappings (where sources are rendered)
    written = {b: h.copy() for b, h in headers.items()}
    for b, (ex, ey) in (wcs_error or {}).items():
        if b not in BANDS:
            raise ValueError(f"unknown band in wcs_error: {b!r}")
        # shifting CRPIX by -e moves every WCS position by -e: true = WCS + e
        written[b]["CRPIX1"] = written[b]["CRPIX1"] - float(ex)
        written[b]["CRPIX2"] = written[b]["CRPIX2"] - float(ey)

    n = n_stars + n_gal
    pos_r = _place(rng, n, shape, offsets, margin, min_sep)
    # r-frame positions -> sky through r's WCS (sources are *defined* on the sky).
    ra, dec = wcss["r"].all_pix2world(pos_r[:, 0], pos_r[:, 1], 0) if n else (np.zeros(0), np.zeros(0))
    labels = np.array(["star"] * n_stars + ["galaxy"] * n_gal, dtype=object)
    order = rng.permutation(n)
    labels = labels[order]
    flux_r = np.exp(rng.uniform(np.log(flux_range[0]), np.log(flux_range[1]), n))
    sig_major = np.where(labels == "star", star_sigma, rng.uniform(2.2, 3.5, n))
    axis_ratio = np.where(labels == "star", 1.0, rng.uniform(0.5, 0.9, n))
    theta = rng.uniform(0, np.pi, n)

    table = pd.DataFrame({
        "objid": [f"{fidp.padded}-{i + 1:04d}" for i in range(n)],
        "run": fidp.run, "camcol": fidp.camcol, "field": fidp.field,
        "ra": np.asarray(ra, float), "dec": np.asarray(dec, float), "label": labels,
    })
    for b in BANDS:
        table[f"flux_{b}"] = flux_r * _SED[b]
    for b in BANDS:
        x, y = wcss[b].all_world2pix(table["ra"].to_numpy(), table["dec"].to_numpy(), 0)
        table[f"x_{b}"], table[f"y_{b}"] = np.asarray(x, float), np.asarray(y, float)

    for b in BANDS:
        if b in missing_bands:
            continue
        img = rng.normal(0.0, noise, shape)
        for k in range(n):
            img += _render(shape, table[f"x_{b}"][k], table[f"y_{b}"][k], table[f"flux_{b}"][k],
                           sig_major[k], sig_major[k] * axis_ratio[k], theta[k])
        _write_bz2_frame(root / frame_path(fidp, b), img, written[b])

    sweep = table.assign(id=np.arange(1, n + 1), objc_type=np.where(labels == "star", 6, 3))
    for b in BANDS:
        # PSF flux: what a PSF fit recovers (all of a star's flux, less of a galaxy's).
        sweep[f"psfflux_{b}"] = sweep[f"flux_{b}"] * np.where(labels == "star", 1.0, 0.6)
    for kind, lab in (("star", "star"), ("gal", "galaxy")):
        _write_sweep(root / calibobj_path(fidp, kind), sweep[sweep["label"] == lab])

    return {
        "root": root,
        "sas_url": root.resolve().as_uri(),
        "fid": str(fidp),
        "shape": tuple(shape),
        "offsets": offsets,
        "headers": written,
        "noise": noise,
        "objects": table,
    }


def make_psf_sas(root, fid="1100-2-20", n_stars: int = 40, shape=(300, 400), sigma=1.5,
                 sigma_gradient=(0.0, 0.0), noise: float = 0.01, flux_range=(30.0, 300.0),
                 nmgy: float | None = 0.005, saturated=(), edge=(), galaxies=(), min_sep: float = 34.0,
                 margin: float = 20.0, seed: int = 0) -> dict:
    """Write one synthetic field of point sources with a known (optionally varying) Gaussian PSF.

    For PSF tests: frames (5 bands, real SDSS WCS, the default band offsets) with ``n_stars``
    circular Gaussian stars whose sigma (pixels, in every band) is
    ``sigma + gx * x^ + gy * y^`` at 0-based band-frame position ``(x, y)``, with
    ``x^, y^ = 2 x / (nx - 1) - 1, 2 y / (ny - 1) - 1`` and ``(gx, gy) = sigma_gradient``. No
    catalog is written (PSF estimation uses none).

    Parameters
    ----------
    nmgy : float or None
        ``NMGY`` header value (nanomaggies per count); ``None`` leaves it out.
    saturated : sequence of (x, y)
        r-frame positions of extra bright stars whose every pixel is clipped at 12,000 counts
        (``12000 * nmgy`` nanomaggies): flat-topped, like saturated SDSS stars.
    edge : sequence of (x, y)
        r-frame positions of extra bright stars placed (by the caller) near a frame edge.
    galaxies : sequence of (x, y)
        r-frame positions of extra bright, round but broad sources (sigma 3 px).

    Returns
    -------
    dict
        ``sas_url``, ``fid``, ``shape``, ``offsets``, ``noise``, ``sigma(band_x, band_y)``
        (callable: true sigma in pixels) and ``stars`` (DataFrame with ``x_<b>, y_<b>`` of the
        regular stars), ``extras`` (dict kind -> DataFrame of the extra sources' positions).
    """
    root = Path(root)
    fidp = FieldID.parse(fid)
    offsets = dict(DEFAULT_OFFSETS)
    rng = np.random.default_rng(seed)
    ny, nx = shape
    crval = _default_crval(fidp)
    headers = {b: synthetic_header(b, shape, crval, offsets[b], _CRPIX_JITTER[b]) for b in BANDS}
    if nmgy is not None:
        for h in headers.values():
            h["NMGY"] = float(nmgy)
    wcss = {b: WCS(headers[b]) for b in BANDS}
    extra_xy = {k: np.asarray(v, float).reshape(-1, 2) for k, v in
                (("saturated", saturated), ("edge", edge), ("galaxies", galaxies))}
    pos = _place(rng, n_stars, shape, offsets, margin, min_sep)
    if n_stars:
        # keep regular stars away from the extra sources
        extra_all = np.concatenate(list(extra_xy.values()))
        if len(extra_all):
            d = np.hypot(pos[:, None, 0] - extra_all[None, :, 0], pos[:, None, 1] - extra_all[None, :, 1])
            pos = pos[d.min(axis=1) > min_sep]

    def sigma_at(x, y):
        return sigma + sigma_gradient[0] * (2 * np.asarray(x) / (nx - 1) - 1) + \
            sigma_gradient[1] * (2 * np.asarray(y) / (ny - 1) - 1)

    def band_xy(xy_r):
        if len(xy_r) == 0:
            return {b: (np.zeros(0), np.zeros(0)) for b in BANDS}
        ra, dec = wcss["r"].all_pix2world(xy_r[:, 0], xy_r[:, 1], 0)
        return {b: tuple(np.asarray(v, float) for v in wcss[b].all_world2pix(ra, dec, 0)) for b in BANDS}

    flux = np.exp(rng.uniform(np.log(flux_range[0]), np.log(flux_range[1]), len(pos)))
    stars_b = band_xy(pos)
    extras_b = {k: band_xy(v) for k, v in extra_xy.items()}
    for b in BANDS:
        img = rng.normal(0.0, noise, shape)
        xs, ys = stars_b[b]
        for k in range(len(xs)):
            s = float(sigma_at(xs[k], ys[k]))
            img += _render(shape, xs[k], ys[k], flux[k], s, s, 0.0)
        for kind, per_band in extras_b.items():
            xs, ys = per_band[b]
            for k in range(len(xs)):
                if kind == "galaxies":
                    one = _render(shape, xs[k], ys[k], 400.0, 3.0, 3.0, 0.0)
                else:
                    s = float(sigma_at(xs[k], ys[k]))
                    one = _render(shape, xs[k], ys[k], 3000.0 if kind == "saturated" else 300.0, s, s, 0.0)
                img += one
        if nmgy is not None and len(extra_xy["saturated"]):
            img = np.minimum(img, 12000.0 * nmgy)
        _write_bz2_frame(root / frame_path(fidp, b), img, headers[b])
    stars = pd.DataFrame({f"{c}_{b}": stars_b[b][i] for b in BANDS for i, c in enumerate("xy")})
    stars["flux_r"] = flux
    extras = {k: pd.DataFrame({f"{c}_{b}": v[b][i] for b in BANDS for i, c in enumerate("xy")})
              for k, v in extras_b.items()}
    return {"root": root, "sas_url": root.resolve().as_uri(), "fid": str(fidp), "shape": tuple(shape),
            "offsets": offsets, "noise": noise, "sigma": sigma_at, "stars": stars, "extras": extras}


def write_psfield(root, fid, sigma, size: int = 51) -> Path:
    """Write a minimal SDSS ``psField`` file (HDUs 1-5 = u g r i z) with a Gaussian PSF per band.

    Each band's HDU has the columns :func:`pydl.photoop.image.sdss_psf_recon` reads (``nrow_b``,
    ``ncol_b``, ``c``, ``RNROW``, ``RNCOL``, ``RROWS``, ...) with one eigen-image (a circular
    Gaussian of ``sigma[band]`` pixels, or ``sigma`` for every band) and a constant coefficient,
    so the reconstructed PSF is that Gaussian everywhere. Returns the written path.
    """
    root = Path(root)
    fidp = FieldID.parse(fid)
    sig = sigma if isinstance(sigma, dict) else {b: float(sigma) for b in BANDS}
    h = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size] - h
    hdus = [fits.PrimaryHDU()]
    for b in BANDS:
        img = np.exp(-0.5 * (xx**2 + yy**2) / sig[b] ** 2).astype(np.float32)
        c = np.zeros((1, 5, 5), np.float32)
        c[0, 0, 0] = 1.0
        cols = [
            fits.Column(name="nrow_b", format="J", array=np.array([1], np.int32)),
            fits.Column(name="ncol_b", format="J", array=np.array([1], np.int32)),
            fits.Column(name="c", format="25E", dim="(5,5)", array=c),
            fits.Column(name="lambda", format="E", array=np.array([1.0], np.float32)),
            fits.Column(name="RNROW", format="J", array=np.array([size], np.int32)),
            fits.Column(name="RNCOL", format="J", array=np.array([size], np.int32)),
            fits.Column(name="RTYPE", format="J", array=np.array([0], np.int32)),
            fits.Column(name="RROWS", format="PE()", array=np.array([img.ravel()], dtype=object)),
            fits.Column(name="RROW0", format="J", array=np.array([0], np.int32)),
            fits.Column(name="RCOL0", format="J", array=np.array([0], np.int32)),
            fits.Column(name="counts", format="E", array=np.array([1.0], np.float32)),
        ]
        hdus.append(fits.BinTableHDU.from_columns(cols))
    path = root / f"dr17/eboss/photo/redux/{fidp.rerun}/{fidp.run}/objcs/{fidp.camcol}/psField-{fidp.padded}.fits"
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


WINDOW_FLIST = "dr17/eboss/resolve/2013-07-29/window_flist.fits"


def window_row(info: dict, node: float = 95.0, incl: float = 30.0, grow_px: float = 0.0) -> dict:
    """A ``window_flist`` row for a field written by :func:`make_synthetic_sas`.

    The box is the (mu, nu) bounding box of the r frame's corners on the great circle
    ``node``/``incl`` (degrees), grown by ``grow_px`` pixels on every side. The frames are
    rotated against (mu, nu), as real ones are slightly, so the box holds a little sky the
    r frame does not: points there must be rejected by the frames' WCS.
    """
    from stargal.window import radec_to_munu

    fid = FieldID.parse(info["fid"])
    ny, nx = info["shape"]
    wcs = WCS(info["headers"]["r"])
    xs, ys = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5]), np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    ra, dec = wcs.all_pix2world(xs, ys, 0)
    mu, nu = radec_to_munu(ra, dec, node, incl)
    grow = grow_px * PIXEL_SCALE_DEG
    return {"RUN": fid.run, "CAMCOL": fid.camcol, "FIELD": fid.field, "NODE": node, "INCL": incl,
            "MU_START": float(mu.min() - grow), "MU_END": float(mu.max() + grow),
            "NU_START": float(nu.min() - grow), "NU_END": float(nu.max() + grow),
            "RA": float(ra.mean()), "DEC": float(dec.mean())}


def write_window_flist(root, rows, extra_columns: bool = True, drop=(), score=None) -> Path:
    """Write ``window_flist.fits`` (SAS layout) under ``root`` from :func:`window_row` dicts.

    ``extra_columns`` adds columns the real file has and stargal must ignore (``PSF_FWHM``,
    5 values; ``SKYFLUX``; ``QUALITY``), placed *between* the needed ones; ``drop`` leaves
    columns out (to test a file lacking one); ``score`` a list of SCORE values (default 1).
    """
    n = len(rows)
    col = lambda k: np.array([r[k] for r in rows])  # noqa: E731
    cols = [fits.Column(name="RUN", format="K", array=col("RUN")),
            fits.Column(name="RERUN", format="3A", array=np.array(["301"] * n))]
    if extra_columns:
        cols.append(fits.Column(name="PSF_FWHM", format="5E", array=np.full((n, 5), 1.3, np.float32)))
    cols += [fits.Column(name="CAMCOL", format="K", array=col("CAMCOL")),
             fits.Column(name="FIELD", format="K", array=col("FIELD")),
             fits.Column(name="MJD", format="D", array=np.full(n, 55000.0)),
             fits.Column(name="RA", format="D", array=col("RA")),
             fits.Column(name="DEC", format="D", array=col("DEC"))]
    if extra_columns:
        cols.append(fits.Column(name="SKYFLUX", format="5E", array=np.ones((n, 5), np.float32)))
    for k in ("NODE", "INCL", "MU_START", "MU_END", "NU_START", "NU_END"):
        cols.append(fits.Column(name=k, format="D", array=col(k)))
    scores = np.ones(n) if score is None else np.asarray(score, float)
    cols.append(fits.Column(name="SCORE", format="D", array=scores))
    if extra_columns:
        cols.append(fits.Column(name="QUALITY", format="J", array=np.full(n, 3, np.int32)))
    cols = [c for c in cols if c.name not in set(drop)]
    path = Path(root) / WINDOW_FLIST
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path, overwrite=True)
    return path


def measured_photometry_table():
    """A stand-in for :func:`stargal.synth.measured_photometry`: 200 objects, stars and galaxies
    alternating, r 16-23, fixed colours per kind (u - r = 1.5 for stars, 3.0 for galaxies)."""
    rng = np.random.default_rng(0)
    n = 200
    lab = np.arange(n) % 2
    mag = rng.uniform(16, 23, n)
    out = pd.DataFrame({"label": lab, "mag_r": mag})
    for b, c in zip(BANDS, (1.5, 0.6, 0.0, -0.3, -0.4)):
        out[f"flux_{b}"] = 10 ** (-0.4 * (mag + c * (1 + lab) - 22.5))
    return out


def gaussian(size, sigma):
    """A unit-sum round Gaussian of ``sigma`` pixels, centred on the central pixel of a ``size`` stamp."""
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    g = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def psf_aware_stack(n=120, size=15, seed=0, noise=0.02):
    """PSF-aware cutouts ``(n, 10, size, size)``: stars (the PSF) and galaxies (broader than the PSF)
    under two seeings, labels ``y`` (1 = galaxy) and total fluxes."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    psf_sigma = np.where(np.arange(n) % 4 < 2, 1.1, 1.7)  # two "fields"
    X = np.zeros((n, 10, size, size), dtype=np.float32)
    flux = rng.uniform(5, 50, n)
    for i in range(n):
        p = gaussian(size, psf_sigma[i])
        obj = gaussian(size, np.hypot(psf_sigma[i], 1.2)) if y[i] else p
        X[i, :5] = flux[i] * obj
        X[i, 5:] = p
    X[:, :5] += rng.normal(0, noise, (n, 5, size, size)).astype(np.float32)
    return X, y, flux


def make_photo_sas(root, fid="1200-3-30", shape=(360, 480), psf_sigma=1.5, sky_counts=150.0,
                   nmgy_per_count=0.005, n_psf_stars=45, targets=(), seed=0) -> dict:
    """A synthetic field for model-fit photometry: a real noise model and GalSim-drawn sources.

    Frames carry a calibration vector (HDU1, ``nmgy_per_count`` in every column) and a sky level
    (HDU2 ``ALLSKY``, ``sky_counts``); the pixel noise is the sky's Poisson noise plus the camera's
    dark variance (:mod:`stargal.noise`, camcol of ``fid``), Gaussian. Every source is drawn with
    GalSim (pixel-integrated): ``n_psf_stars`` bright stars (for the PSF model) and the ``targets``,
    a sequence of dicts ``{'x', 'y' (r-frame pixels), 'kind' ('star'|'exp'|'dev'), 'flux' (nmgy,
    every band), 'hlr' (px), 'q', 'beta' (deg)}``; ``'saturate': True`` clips the star's pixels at
    a fraction of its peak (an interpolated, flat core).

    Returns
    -------
    dict
        ``sas_url``, ``fid``, ``targets`` (DataFrame with ``ra, dec`` and the truth), ``sigma_nmgy``.
    """
    import galsim

    from stargal.noise import camera_gain, dark_variance

    root = Path(root)
    fidp = FieldID.parse(fid)
    offsets = dict(DEFAULT_OFFSETS)
    rng = np.random.default_rng(seed)
    crval = _default_crval(fidp)
    headers = {b: synthetic_header(b, shape, crval, offsets[b], _CRPIX_JITTER[b]) for b in BANDS}
    wcss = {b: WCS(headers[b]) for b in BANDS}
    targets = pd.DataFrame(list(targets)) if len(targets) else pd.DataFrame(columns=["x", "y", "kind", "flux"])
    pos = _place(rng, n_psf_stars, shape, offsets, 20.0, 30.0)
    if len(targets):
        d = np.hypot(pos[:, None, 0] - targets["x"].to_numpy()[None], pos[:, None, 1] - targets["y"].to_numpy()[None])
        pos = pos[d.min(axis=1) > 30.0]
    star_flux = np.exp(rng.uniform(np.log(50.0), np.log(300.0), len(pos)))
    ra_t, dec_t = wcss["r"].all_pix2world(targets["x"].to_numpy(float), targets["y"].to_numpy(float), 0) \
        if len(targets) else (np.zeros(0), np.zeros(0))
    ra_s, dec_s = wcss["r"].all_pix2world(pos[:, 0], pos[:, 1], 0)
    psf = galsim.Gaussian(sigma=psf_sigma)
    for bi, b in enumerate(BANDS):
        ny, nx = shape
        img = galsim.ImageF(nx, ny, scale=1.0)  # GalSim pixel (i, j) has its centre at (i, j), 1-based
        xs, ys = wcss[b].all_world2pix(ra_s, dec_s, 0)
        for k in range(len(xs)):
            stamp = (psf.withFlux(star_flux[k] / nmgy_per_count)).drawImage(
                nx=41, ny=41, scale=1.0, center=galsim.PositionD(xs[k] + 1, ys[k] + 1))
            bounds = stamp.bounds & img.bounds
            img[bounds] += stamp[bounds]
        xt, yt = wcss[b].all_world2pix(ra_t, dec_t, 0) if len(targets) else ((), ())
        for k, row in enumerate(targets.itertuples()):
            flux = float(row.flux) / nmgy_per_count
            if row.kind == "star":
                prof = psf.withFlux(flux)
            else:
                gal = (galsim.Exponential if row.kind == "exp" else galsim.DeVaucouleurs)(
                    half_light_radius=float(row.hlr), flux=flux)
                gal = gal.shear(q=float(row.q), beta=float(row.beta) * galsim.degrees)
                prof = galsim.Convolve(gal, psf)
            stamp = prof.drawImage(nx=61, ny=61, scale=1.0, center=galsim.PositionD(xt[k] + 1, yt[k] + 1))
            if getattr(row, "saturate", False) is True:
                stamp.array[:] = np.minimum(stamp.array, 0.3 * stamp.array.max())
            bounds = stamp.bounds & img.bounds
            img[bounds] += stamp[bounds]
        counts = img.array.astype(np.float64)
        var = sky_counts / camera_gain(fidp, b) + dark_variance(fidp, b)
        counts += rng.normal(0.0, np.sqrt(var), counts.shape)
        image = (counts * nmgy_per_count).astype(np.float32)
        sky = fits.BinTableHDU.from_columns([fits.Column(name="ALLSKY", format="48E", dim="(8,6)",
                                                         array=np.full((1, 6, 8), sky_counts, np.float32))])
        hdus = fits.HDUList([fits.PrimaryHDU(image, header=headers[b]),
                             fits.ImageHDU(np.full(shape[1], nmgy_per_count, dtype=np.float32)), sky])
        buf = io.BytesIO()
        hdus.writeto(buf)
        path = root / frame_path(fidp, b)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bz2.compress(buf.getvalue(), compresslevel=1))
    out = targets.copy()
    out["ra"], out["dec"] = ra_t, dec_t
    out["run"], out["camcol"], out["field"] = fidp.run, fidp.camcol, fidp.field
    sigma = {b: float(np.sqrt(sky_counts / camera_gain(fidp, b) + dark_variance(fidp, b)) * nmgy_per_count)
             for b in BANDS}
    return {"root": root, "sas_url": root.resolve().as_uri(), "fid": str(fidp), "targets": out,
            "sigma_nmgy": sigma}
