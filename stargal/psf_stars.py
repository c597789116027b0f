"""Star-based PSF models: the frame's own PSF stars, selected without labels, and their stack fit.

:func:`estimate_psf` models one band of a field from a stack of the frame's own bright,
isolated, unsaturated point sources, found **without any catalog**: the reference stars of
:func:`stargal.registration.find_reference_stars` (cached with the field's registration), plus a
stricter isolation cut at the scale of the stamp (:data:`PSF_CRITERIA`; saturated stars, stars
near a frame edge and broad sources never enter); :func:`psf_star_table` gives these stars'
stamps. :func:`measured_seeing` is the frame's seeing from the same stars (the width of the
Gaussian fallback of :func:`stargal.psf.field_psf`).

The stack fit
-------------
Each star's stamp is resampled (Lanczos-3, :func:`stargal._imaging.resample_stamps`) so that its
windowed centroid (:func:`stargal._imaging.centroid_offsets`) lands on the central pixel, its local
background (median of an annulus 13-16 px out) is subtracted and it is normalised to unit flux
within 10 px. Per stamp pixel, the normalised value is fitted by weighted least squares (star weight
``min(S/N, snr_cap)^2`` with ``PSF_CRITERIA['snr_cap']`` = 100) as a polynomial of degree 1 in the
frame position (basis ``[1, x^, y^]``, ``x^, y^`` the 0-based position scaled to [-1, 1] over the
band's frame; ``estimate_psf(degree=2)`` adds ``x^2, x^ y^, y^2`` where :data:`MIN_STARS_QUADRATIC`
stars are usable, like the pixelised PSF of the mirror catalogs' reconstruction, whose polynomial
order is 0-2), degree 0 when fewer than :data:`MIN_STARS_LINEAR` stars are usable; beyond 6 px from
the centre (faint wings) only
the constant is fitted. (Degree 2 agreed a little better with the training fields' catalog types,
MCC 0.855 -> 0.858 measured by hand, but it changes the PSF channels that saved CNNs were trained on,
so it is not the default.) Two more
regressors, ``sin^2(pi fx)`` and ``sin^2(pi fy)`` of each star's sub-pixel phase ``f = x - floor(x + 0.5)``,
absorb the blur that resampling adds to a sharp PSF (measured on 2583-2-136: bright stars on
pixel corners look 4-5 % broader in r and i than stars on pixel centres); the model is the PSF at
phase 0 (centroid on a pixel centre), and ``stamps(..., resampled=True)`` gives it as it appears in
a resampled cutout. The fit is iterated: pixels more than 5 sigma from the model (neighbours, cosmic
rays) are masked, and stars whose core deviates grossly from the model (galaxies, blends) are
rejected.

Pixel positions are 0-based, in each band's own frame; the pixel scale of a star model is its
frame's (:attr:`stargal.frames.Frame.pixel_scale`, from the WCS).
"""

from __future__ import annotations

import weakref

import numpy as np

from ._imaging import FWHM_PER_SIGMA, centroid_offsets, mad_std, resample_stamps
from .frames import Field, MissingBandError
from .psf_model import PSF_STAMP, BandPSF, frame_scaling, monomials, phase_terms
from .registration import REFERENCE_STAMP, field_registration, windowed_size
from .sdss import PIXEL_SCALE_ARCSEC

__all__ = [
    "MIN_STARS",
    "MIN_STARS_LINEAR",
    "MIN_STARS_QUADRATIC",
    "DEFAULT_SEEING_ARCSEC",
    "PSF_CRITERIA",
    "InsufficientStarsError",
    "psf_star_table",
    "estimate_psf",
    "measured_seeing",
]

#: Fewer usable stars than this in a band: no star-based estimate (psField or Gaussian instead).
MIN_STARS = 5
#: Fewer usable stars than this: the spatial polynomial is degree 0 (a constant PSF).
MIN_STARS_LINEAR = 15
#: Fewer usable stars than this: the spatial polynomial is at most degree 1 (8 regressors per pixel
#: at degree 2, with the two phase terms). The training fields' g-z bands have 42-86 PSF stars, u 15-31.
MIN_STARS_QUADRATIC = 30
#: Seeing (r-band FWHM, arcsec) assumed when a field has no usable point source at all.
DEFAULT_SEEING_ARCSEC = 1.4

#: Star selection and fitting parameters of :func:`estimate_psf` (pixels unless stated).
PSF_CRITERIA = {
    "isolation_px": 12.0,      # no other local maximum brighter than neighbour_frac x peak within
    "neighbour_frac": 0.1,
    "neighbour_snr": 5.0,      # local maxima counted as neighbours: peak S/N above this
    "bright_px": 30.0,         # no brighter source within this (its wings would reach the stamp)
    "bg_inner_px": 13.0,       # background annulus of the resampled stamp
    "bg_outer_px": 16.0,
    "flux_px": 10.0,           # each star is normalised to unit flux within this radius
    "snr_cap": 100.0,          # star weight = min(S/N, snr_cap)^2 (inverse variance; the cap
                               # stops a handful of the very brightest stars from being the whole
                               # model: with 500, the 25 brightest of 8162-6-80's 246 r stars,
                               # narrower than the rest, made the model 4.6 % narrower than the
                               # median star; with 100 (and degree 2) the model's FWHM at each
                               # star over the star's own is 0.98-1.01 (median over the stars) in
                               # every band of every mirror field, `experiments/seeing.star_check`)
    "pixel_clip": 5.0,         # pixel residual (sigma) above which a pixel is masked
    "pixel_floor": 0.1,        # fractional model error in that sigma (a loose model never masks
                               # good pixels)
    "star_clip": 5.0,          # core chi above median + star_clip x robust sigma: star rejected
    "core_px": 4.0,            # radius of the core used for the star-level statistic
    "wing_px": 6.0,            # beyond this radius only a constant (no spatial or phase term)
    "model_floor": 0.15,       # fractional model error in the core statistic (gross outliers go)
    "gain": 4.0,               # electrons per count assumed for the Poisson noise (S/N, clipping)
    "n_iter": 4,
}


class InsufficientStarsError(ValueError):
    """Too few usable point sources in a band for a star-based PSF estimate."""

    def __init__(self, fid, band, n, detail=""):
        self.fid, self.band, self.n = str(fid), band, int(n)
        super().__init__(f"field {fid} band {band}: only {n} usable PSF star(s) (need {MIN_STARS})"
                         + (f"; {detail}" if detail else ""))


def _references(field: Field):
    """Reference stars of the field (cached with its registration: no second detection pass)."""
    return field_registration(field).references


_ISOLATION = weakref.WeakKeyDictionary()  # Field -> (reference positions, isolation mask)


def _isolated_for_psf(field: Field, refs) -> np.ndarray:
    """Stricter isolation at the scale of the PSF stamp, in the r frame (memoised per Field)."""
    pts = np.column_stack([refs["x_r"].to_numpy(float), refs["y_r"].to_numpy(float)])
    memo = _ISOLATION.get(field)
    if memo is not None and memo[0].shape == pts.shape and np.array_equal(memo[0], pts):
        return memo[1]
    keep = _isolation_mask(field, refs)
    _ISOLATION[field] = (pts, keep)
    return keep


def _isolation_mask(field: Field, refs) -> np.ndarray:
    from scipy import ndimage
    from scipy.spatial import cKDTree

    crit = PSF_CRITERIA
    n = len(refs)
    if n == 0:
        return np.zeros(0, dtype=bool)
    r = field.frame("r")
    img = np.asarray(r.image, dtype=np.float32)
    finite = np.where(np.isfinite(img), img, -np.inf).astype(np.float32)
    small = ndimage.maximum_filter(finite, size=5, mode="nearest")
    ly, lx = np.nonzero((finite == small) & (finite > crit["neighbour_snr"] * float(r.sky_noise)))
    lval = finite[ly, lx]
    xr, yr = refs["x_r"].to_numpy(float), refs["y_r"].to_numpy(float)
    ix = np.clip(np.floor(xr + 0.5).astype(int), 0, img.shape[1] - 1)
    iy = np.clip(np.floor(yr + 0.5).astype(int), 0, img.shape[0] - 1)
    peak = ndimage.maximum_filter(finite, size=3, mode="nearest")[iy, ix]
    tree = cKDTree(np.column_stack([lx, ly]).astype(float))
    pts = np.column_stack([xr, yr])
    keep = np.ones(n, dtype=bool)
    for i, near in enumerate(tree.query_ball_point(pts, r=crit["bright_px"])):
        near = np.asarray(near, dtype=int)
        if near.size == 0:
            continue
        d = np.hypot(lx[near] - xr[i], ly[near] - yr[i])
        other = d > 2.0  # the star itself
        close = (other & (d <= crit["isolation_px"])
                 & (lval[near] > crit["neighbour_frac"] * peak[i]))
        brighter = other & (lval[near] > peak[i])
        keep[i] = not (close.any() or brighter.any())
    return keep


def _band_positions(field: Field, band: str, refs):
    """Windowed-centroid positions (0-based, band frame) of the references in ``band``."""
    xr, yr = refs["x_r"].to_numpy(float), refs["y_r"].to_numpy(float)
    if band == "r":
        return xr.copy(), yr.copy()
    r, frame = field.frame("r"), field.frame(band)
    ra, dec = r.pixel_to_world(xr, yr)
    xb, yb = frame.world_to_pixel(ra, dec)
    return xb + refs[f"dx_{band}"].to_numpy(float), yb + refs[f"dy_{band}"].to_numpy(float)


def psf_star_table(field, band: str, size: int = PSF_STAMP):
    """Candidate PSF stars of one band: centred, background-subtracted stamps.

    Candidates are the field's reference stars (:func:`stargal.registration.find_reference_stars`:
    bright, isolated, unsaturated, point-like, not near the r frame's edge, detected without
    any catalog) that are usable in ``band`` (``ok_<band>``: inside the frame, S/N > 20, peak
    below the saturation guard), pass the stricter isolation of :data:`PSF_CRITERIA` and lie at
    least ``(size - 1) / 2 + 4.5`` px inside the band's frame (the whole stamp plus the
    interpolation kernel).

    Returns
    -------
    dict
        ``x, y`` (0-based band-frame centroids), ``stamps`` (``(n, size, size)``, nanomaggies,
        background-subtracted, centroid on the central pixel), ``noise`` (sky noise of the frame),
        ``nmgy`` (nanomaggies per count or NaN), ``size_px`` (windowed size of every usable
        reference star in this band, pixels; also of those that fail the stricter cuts),
        ``n_candidates``.
    """
    if not isinstance(field, Field):
        field = Field(field)
    frame = field.frame(band)
    refs = _references(field)
    empty = {"x": np.zeros(0), "y": np.zeros(0), "stamps": np.zeros((0, size, size), np.float32),
             "noise": float(frame.sky_noise), "nmgy": np.nan, "size_px": np.zeros(0),
             "n_candidates": 0}
    if len(refs) == 0:
        return empty
    ok = refs[f"ok_{band}"].to_numpy(bool).copy()
    x, y = _band_positions(field, band, refs)
    ok &= np.isfinite(x) & np.isfinite(y)
    isolated = _isolated_for_psf(field, refs)[ok]  # on all references: computed once per field
    refs, x, y = refs[ok].reset_index(drop=True), x[ok], y[ok]
    if len(refs) == 0:
        return empty
    # windowed size in this band of every usable reference (the seeing, for the Gaussian fallback)
    small = resample_stamps(frame.image, x, y, REFERENCE_STAMP, "lanczos3")
    good = np.isfinite(small).all(axis=(1, 2))
    size_px = np.full(len(x), np.nan)
    if good.any():
        c = centroid_offsets(small[good][:, None])[:, 0]
        c = np.where(np.isfinite(c), c, 0.0)
        size_px[good] = windowed_size(small[good], c[:, 0], c[:, 1])
    size_px = size_px[np.isfinite(size_px)]
    keep = frame.inside(x, y, (size - 1) / 2 + 4.5) & isolated
    x, y = x[keep], y[keep]
    big_n = size + 8
    big = resample_stamps(frame.image, x, y, big_n, "lanczos3")
    finite = np.isfinite(big).all(axis=(1, 2))
    x, y, big = x[finite], y[finite], big[finite]
    h = (big_n - 1) / 2
    yy, xx = np.mgrid[:big_n, :big_n] - h
    rr = np.hypot(xx, yy)
    ring = (rr >= PSF_CRITERIA["bg_inner_px"]) & (rr <= PSF_CRITERIA["bg_outer_px"])
    bg = np.median(big[:, ring], axis=1) if len(big) else np.zeros(0)
    lo = (big_n - size) // 2
    stamps = big[:, lo:lo + size, lo:lo + size] - bg[:, None, None].astype(np.float32)
    header = frame.header
    nmgy = header.get("NMGY") if header is not None else None
    return {"x": x, "y": y, "stamps": stamps, "noise": float(frame.sky_noise),
            "nmgy": float(nmgy) if nmgy else np.nan, "size_px": size_px,
            "n_candidates": int(ok.sum())}


def _fit_stack(stamps, x, y, shape, noise, nmgy, degree, phase=True):
    """Iterative weighted per-pixel least squares of normalised stamps on the monomials of the
    position up to ``degree`` (``[1, x^, y^, x^2, x^ y^, y^2]`` at degree 2).

    With ``phase``, two more regressors, even functions of each star's sub-pixel phase
    (:func:`stargal.psf_model.phase_terms`), absorb the blur that resampling adds to a sharp
    (near-critically sampled) PSF when its centroid is far from a pixel centre; the model is then
    evaluated at phase 0, i.e. it is the PSF as sampled with its centroid on a pixel centre.

    Returns ``(images (T, S, S), powers, used (n,) bool, phase_images (2, S, S) or None)``.
    """
    crit = PSF_CRITERIA
    n, s, _ = stamps.shape
    data = stamps.reshape(n, -1).astype(np.float64)
    origin, scale = frame_scaling(shape)
    powers = [(i - j, j) for i in range(degree + 1) for j in range(i + 1)]  # (0,0), (1,0), (0,1), (2,0), ...
    A = monomials(powers, origin, scale, x, y)  # (n, T)
    if phase:
        A = np.column_stack([A, phase_terms(x, y)])
    h = (s - 1) / 2
    yy, xx = np.mgrid[:s, :s] - h
    rr = np.hypot(xx, yy).ravel()
    core = rr <= crit["core_px"]
    wing = rr > crit["wing_px"]
    # each star normalised to unit flux within flux_px (a model-independent normalisation, so
    # that the stars' widths cannot bias their normalisation); weight per star, not per pixel
    ap = rr <= crit["flux_px"]
    flux = data[:, ap].sum(axis=1)
    good = np.isfinite(flux) & (flux > 0)
    flux = np.where(good, flux, 1.0)
    norm = data / flux[:, None]
    nm = nmgy if np.isfinite(nmgy) and nmgy > 0 else 0.0
    var_flux = noise**2 * ap.sum() + nm * np.clip(flux, 0, None) / crit["gain"]
    snr = flux / np.sqrt(var_flux) if noise > 0 else np.full(n, crit["snr_cap"])
    weight = np.where(good, np.minimum(snr, crit["snr_cap"]) ** 2, 0.0)
    # pixel noise in normalised units (for clipping only): sky + Poisson (assumed gain)
    sig0 = np.sqrt(noise**2 + nm * np.clip(data, 0, None) / crit["gain"]) / flux[:, None]
    model = np.median(norm[good], axis=0)[None].repeat(n, axis=0)
    used = good.copy()
    mask = np.ones_like(data, dtype=bool)
    coef = None
    for it in range(crit["n_iter"]):
        if it > 0:
            mabs = np.abs(model)
            resid = norm - model
            # star level: the core against the model (galaxies, blends, mis-centred stamps)
            sig_core = np.sqrt(sig0[:, core] ** 2 + (crit["model_floor"] * mabs[:, core]) ** 2)
            chi = np.sqrt(np.mean((resid[:, core] / sig_core) ** 2, axis=1))
            ref = chi[used] if used.any() else chi
            med = np.median(ref)
            mad = mad_std(ref)
            used = good & (chi <= max(med + crit["star_clip"] * mad, 2.0 * med))
            if used.sum() < max(MIN_STARS, A.shape[1]):
                used = good.copy()
            # pixel level, outside the core: neighbours, cosmic rays, bad columns
            sig_pix = np.sqrt(sig0**2 + (crit["pixel_floor"] * mabs) ** 2)
            mask = np.abs(resid) <= crit["pixel_clip"] * sig_pix
            mask[:, core] = True
        W = mask * (weight * used)[:, None]  # (n, P)
        G = np.einsum("np,nt,nu->ptu", W, A, A, optimize=True)  # (P, T, T)
        b = np.einsum("np,nt,np->pt", W, A, norm, optimize=True)
        tr = np.trace(G, axis1=1, axis2=2)[:, None, None]
        G += np.eye(A.shape[1])[None] * 1e-12 * tr
        # wings (faint, noisy): only the constant term; the others are held at 0 by a stiff ridge
        G[wing] += np.diag(np.r_[0.0, np.ones(A.shape[1] - 1)])[None] * 1e6 * tr[wing]
        coef = np.linalg.solve(G, b[..., None])[..., 0]  # (P, T)
        model = A @ coef.T  # (n, P)
    images = coef[:, :len(powers)].T.reshape(len(powers), s, s)
    phase_images = coef[:, len(powers):].T.reshape(-1, s, s) if phase else None
    # normalise: the model at the frame centre sums to 1 (x^ = y^ = 0: only the constant term)
    total = images[0].sum()
    images = images / total
    if phase_images is not None:
        phase_images = phase_images / total
    return images, powers, used, phase_images


def estimate_psf(field, band: str, *, degree: int = 1, size: int = PSF_STAMP) -> BandPSF:
    """Star-based PSF model of one band of a field (method: see the module docstring).

    Parameters
    ----------
    field : Field or str
        The field (a string opens it with the default data source).
    band : str
    degree : {0, 1, 2}, default=1
        Highest degree of the spatial polynomial; at most 1 is used whenever fewer than
        :data:`MIN_STARS_QUADRATIC` stars are usable, 0 whenever fewer than :data:`MIN_STARS_LINEAR`.
    size : int, default=PSF_STAMP
        Odd side of the model stamps (pixels).

    Returns
    -------
    BandPSF
        ``source='stars'``, with ``n_stars`` and ``star_xy`` the stars that the final fit used.

    Raises
    ------
    InsufficientStarsError
        Fewer than :data:`MIN_STARS` usable stars (:func:`field_psf` then falls back).
    MissingBandError
        The field has no frame in ``band``.

    Examples
    --------
    >>> psf = estimate_psf(Field("8162-6-80"), "r")     # doctest: +SKIP
    >>> psf.n_stars, round(psf.fwhm(), 2)               # doctest: +SKIP
    """
    if isinstance(degree, bool) or degree not in (0, 1, 2):
        raise ValueError(f"degree must be 0, 1 or 2, got {degree!r}")
    if (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 15
            or size % 2 == 0):
        raise ValueError(f"size must be an odd integer >= 15, got {size!r}")
    if not isinstance(field, Field):
        field = Field(field)
    frame = field.frame(band)
    stars = psf_star_table(field, band, size)
    n = len(stars["x"])
    if n < MIN_STARS:
        raise InsufficientStarsError(field.fid, band, n,
                                     f"{stars['n_candidates']} reference star(s) usable in {band} "
                                     "before the PSF isolation and edge cuts")
    deg = min(degree, 0 if n < MIN_STARS_LINEAR else 1 if n < MIN_STARS_QUADRATIC else 2)
    images, powers, used, phase_images = _fit_stack(
        stars["stamps"], stars["x"], stars["y"], frame.shape, stars["noise"], stars["nmgy"], deg,
        phase=n >= MIN_STARS_LINEAR)
    if used.sum() < MIN_STARS:
        raise InsufficientStarsError(field.fid, band, int(used.sum()),
                                     "after rejecting outlying stamps")
    ny, nx = frame.shape
    origin, scale = frame_scaling(frame.shape)
    star_xy = np.column_stack([stars["x"][used], stars["y"][used]])
    return BandPSF(band, images, powers, origin, scale, (int(ny), int(nx)), "stars",
                   int(used.sum()), deg, frame.pixel_scale, star_xy, "", phase_images)


def measured_seeing(field: Field, band: str) -> tuple[float, str]:
    """Gaussian sigma (pixels) of the frame's measured seeing, and where it came from.

    The median windowed size of the band's point-like reference stars (:func:`psf_star_table`'s
    ``size_px``), else of the r band's, else the SDSS median seeing
    :data:`DEFAULT_SEEING_ARCSEC` at the nominal pixel scale: the width of the Gaussian fallback.
    """
    win = 2.0  # window sigma of stargal.registration.windowed_size: size = s w / sqrt(s^2 + w^2)

    def from_sizes(sizes):
        s = float(np.median(sizes))
        return s * win / np.sqrt(max(win**2 - s**2, 1e-6))

    for b in (band, "r"):
        try:
            sizes = psf_star_table(field, b)["size_px"]
        except MissingBandError:
            continue
        sizes = sizes[(sizes > 0) & (sizes < 0.95 * win)]
        if sizes.size:
            what = f"median windowed size of {sizes.size} point-like star(s) in {b}"
            return from_sizes(sizes), what
    what = f"no point source found: SDSS median seeing {DEFAULT_SEEING_ARCSEC}\""
    return DEFAULT_SEEING_ARCSEC / PIXEL_SCALE_ARCSEC / FWHM_PER_SIGMA, what
