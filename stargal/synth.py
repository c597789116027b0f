"""Synthetic stars and galaxies: a renderer and a population drawn from measured photometry.

Sources are rendered per band in **nanomaggies** on a small stamp, at the sub-pixel position of
that band's own frame, with GalSim (``galsim``; parametric profiles, no downloads):

* a **star** is the field's PSF model at that position (:meth:`stargal.psf.FieldPSF.stamps`,
  ``resampled=False``: the pixel-convolved *effective* PSF, centroid on a pixel centre), wrapped
  in :class:`galsim.InterpolatedImage` and scaled to the flux;
* a **galaxy** is a Sérsic profile (index ``n``, half-light radius, axis ratio ``q``, position
  angle) convolved with that PSF. Because the PSF stamp already contains the pixel response, the
  convolution is drawn with ``method='no_pixel'`` (sampling at pixel centres, no second pixel).
  The profile is truncated at :data:`TRUNCATION_HLR` half-light radii with
  ``flux_untruncated=False``, so the requested flux and half-light radius are those of the
  truncated profile (what lands on the stamp). The index is rounded to :data:`N_STEP` so GalSim's
  per-index tables are reused (about 2 ms per band and galaxy instead of about 10 ms).
  All bands share one shape (no colour gradients).

The pixel grid is the frame's (GalSim ``scale=1``: lengths in pixels); angular sizes are converted
with the frame's pixel scale (0.396″/px for SDSS). Position angle ``beta_deg`` is measured from the
frame's +x axis towards +y (GalSim's convention on the pixel grid).

:class:`SyntheticPopulation` draws sources: kind (star / galaxy), r magnitude, colours and shapes.
Colours (and, with ``mag_distribution='measured'``, magnitudes) come from :func:`measured_photometry`:
the training fields' catalog objects measured **from our own pixels** (PSF-fit fluxes for stars,
PSF-corrected aperture fluxes for galaxies); the catalog's type only picks the population, no
catalog flux column is used. Parameters outside the supported ranges (:data:`MAG_RANGE`,
:data:`HLR_RANGE_ARCSEC`, :data:`SERSIC_RANGE`, :data:`AXIS_RATIO_RANGE`) are a ``ValueError`` at
construction.

Examples
--------
>>> import numpy as np
>>> from stargal.psf import FieldPSF
>>> psf = FieldPSF.gaussian("8162-6-80", fwhm_arcsec=1.2).stamps("r", [100.0], [100.0], size=25)[0]
>>> star = render_source(psf, 10.0, 0.3, -0.2)
>>> gal = render_source(psf, 10.0, 0.0, 0.0, kind="galaxy", sersic_n=1.0, hlr_arcsec=1.0, q=0.5, beta_deg=30)
>>> round(float(star.sum()), 2), round(float(gal.sum()), 1), gal.shape[0] > star.shape[0]
(10.0, 10.0, True)
"""

from __future__ import annotations

import functools
import numbers

import numpy as np
import pandas as pd

from ._imaging import aperture_flux
from ._validation import check_range as _check_range
from ._imaging import CUTOUT_SIZE
from .sdss import BANDS, PIXEL_SCALE_ARCSEC

__all__ = [
    "MAG_RANGE",
    "HLR_RANGE_ARCSEC",
    "SERSIC_RANGE",
    "AXIS_RATIO_RANGE",
    "TRUNCATION_HLR",
    "N_STEP",
    "PIXEL_SCALE_ARCSEC",
    "KINDS",
    "stamp_size",
    "render_source",
    "sersic_moment_ratio",
    "deconvolved_hlr",
    "measured_photometry",
    "SyntheticPopulation",
    "SOURCE_COLUMNS",
]

#: Supported r magnitudes of synthetic sources (SDSS's saturation to well below its limit).
MAG_RANGE = (14.0, 24.5)
#: Supported half-light radii, arcsec.
HLR_RANGE_ARCSEC = (0.1, 3.0)
#: Supported Sérsic indices.
SERSIC_RANGE = (0.5, 4.0)
#: Supported axis ratios b/a.
AXIS_RATIO_RANGE = (0.2, 1.0)
#: Galaxy profiles are truncated at this many half-light radii.
TRUNCATION_HLR = 4.5
#: Sérsic indices are rounded to this step (GalSim caches its tables per index).
N_STEP = 0.1
#: Source kinds; label 1 = galaxy, 0 = star (``stargal.catalogs.LABELS``).
KINDS = ("star", "galaxy")
#: Columns of a sources table (:meth:`SyntheticPopulation.sample`).
SOURCE_COLUMNS = ["kind", "label", "mag_r"] + [f"flux_{b}" for b in BANDS] + [
    "sersic_n", "hlr_arcsec", "q", "beta_deg"]


def _galsim():
    import galsim  # deferred: a few hundred ms to import

    return galsim


def stamp_size(hlr_px: float = 0.0, psf_size: int = 25) -> int:
    """Odd stamp side (pixels) holding a truncated galaxy convolved with a ``psf_size`` PSF stamp."""
    trunc = TRUNCATION_HLR * max(float(hlr_px), 0.0)
    return int(2 * np.ceil(trunc) + psf_size) | 1


@functools.lru_cache(maxsize=64)
def _psf_profile(key, stamp_bytes, size):
    galsim = _galsim()
    stamp = np.frombuffer(stamp_bytes, dtype=np.float64).reshape(size, size)
    return galsim.InterpolatedImage(galsim.Image(stamp.copy(), scale=1.0), normalization="flux")


def render_source(psf_stamp, flux, dx=0.0, dy=0.0, *, kind="star", sersic_n=1.0, hlr_arcsec=1.0, q=1.0,
                  beta_deg=0.0, pixel_scale=PIXEL_SCALE_ARCSEC, size=None) -> np.ndarray:
    """One source in one band: a float64 ``(S, S)`` stamp in the flux's unit.

    Parameters
    ----------
    psf_stamp : ndarray (P, P)
        The band's effective PSF at the source's position (P odd, centroid on the central pixel,
        unit sum), e.g. ``FieldPSF.stamps(band, x, y, size=25)[0]``.
    flux : float
        Total flux (nanomaggies), >= 0.
    dx, dy : float
        Sub-pixel offset of the source from the stamp's central pixel, in [-0.5, 0.5].
    kind : {'star', 'galaxy'}
    sersic_n, hlr_arcsec, q, beta_deg : float
        Galaxy shape (ignored for stars); see the module docstring for ranges and conventions.
    pixel_scale : float
        Arcsec per pixel of the frame.
    size : int, optional
        Odd stamp side; default :func:`stamp_size` of the source.

    Returns
    -------
    ndarray of shape (S, S)
        The source, centred on pixel ``((S-1)/2 + dx, (S-1)/2 + dy)`` (0-based ``(x, y)``).
    """
    galsim = _galsim()
    if kind not in KINDS:
        raise ValueError(f"render_source: kind must be 'star' or 'galaxy', got {kind!r}")
    psf_stamp = np.ascontiguousarray(psf_stamp, dtype=np.float64)
    p = psf_stamp.shape[0]
    if psf_stamp.ndim != 2 or psf_stamp.shape[1] != p or p % 2 == 0:
        raise ValueError(f"render_source: psf_stamp must be square with an odd side, got {psf_stamp.shape}")
    if not (np.isfinite(flux) and flux >= 0):
        raise ValueError(f"render_source: flux must be finite and >= 0, got {flux!r}")
    if abs(dx) > 0.5 + 1e-9 or abs(dy) > 0.5 + 1e-9:
        raise ValueError(f"render_source: dx, dy must be sub-pixel offsets in [-0.5, 0.5], got {dx}, {dy}")
    psf = _psf_profile(hash(psf_stamp.tobytes()), psf_stamp.tobytes(), p)
    if kind == "star":
        prof = psf.withFlux(float(flux))
        s = size or p
    else:
        _check_range("sersic_n", (sersic_n, sersic_n), *SERSIC_RANGE, who="render_source")
        _check_range("hlr_arcsec", (hlr_arcsec, hlr_arcsec), *HLR_RANGE_ARCSEC, who="render_source")
        _check_range("q", (q, q), *AXIS_RATIO_RANGE, who="render_source")
        n = round(float(sersic_n) / N_STEP) * N_STEP
        hlr = float(hlr_arcsec) / float(pixel_scale)
        gal = galsim.Sersic(n, half_light_radius=hlr, flux=float(flux), trunc=TRUNCATION_HLR * hlr,
                            flux_untruncated=False)
        if q < 1.0:
            gal = gal.shear(q=float(q), beta=float(beta_deg) * galsim.degrees)
        prof = galsim.Convolve(gal, psf)
        s = size or stamp_size(hlr, p)
    if s % 2 == 0:
        raise ValueError(f"render_source: size must be odd, got {s}")
    image = galsim.ImageD(s, s, scale=1.0)
    prof.drawImage(image=image, method="no_pixel", offset=(float(dx), float(dy)))
    return image.array.copy()


# ------------------------------------------------------------------------ size checks
@functools.lru_cache(maxsize=256)
def sersic_moment_ratio(n: float, trunc_hlr: float = TRUNCATION_HLR) -> float:
    """``<r^2> / hlr^2`` of a circular Sérsic profile truncated at ``trunc_hlr`` half-light radii.

    Computed by numerical integration of ``I(r) = exp(-b_n (r / r_e)^(1/n))`` (independent of
    GalSim): the truncated profile's half-light radius is found from its own curve of growth,
    ``<r^2> = int I r^3 dr / int I r dr`` within the truncation.
    """
    from scipy.optimize import brentq
    from scipy.special import gammaincinv

    b = gammaincinv(2 * n, 0.5)
    t = np.linspace(0.0, trunc_hlr, 20001)

    def profile(re):
        return np.exp(-b * (t / re) ** (1.0 / n)) * t  # I(r) r: the integrand of the flux

    def hlr_minus_one(re):  # r_e of the untruncated law whose truncated profile has hlr 1
        c = np.cumsum(profile(re))
        return np.interp(0.5, c / c[-1], t) - 1.0

    re = brentq(hlr_minus_one, 0.05, 50.0)
    i = profile(re)
    return float(np.trapezoid(i * t * t, t) / np.trapezoid(i, t))


def _moments(img):
    """Flux, centroid and unweighted second moments ``(Mxx, Myy, Mxy)`` of a stamp."""
    img = np.asarray(img, dtype=np.float64)
    h, w = img.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    f = img.sum()
    cx, cy = (img * xx).sum() / f, (img * yy).sum() / f
    mxx = (img * (xx - cx) ** 2).sum() / f
    myy = (img * (yy - cy) ** 2).sum() / f
    mxy = (img * (xx - cx) * (yy - cy)).sum() / f
    return f, mxx, myy, mxy


def deconvolved_hlr(image, psf_stamp, sersic_n, pixel_scale=PIXEL_SCALE_ARCSEC) -> float:
    """Half-light radius (arcsec) of a galaxy measured on its PSF-convolved stamp, PSF removed.

    Unweighted second moments add under convolution, ``M_obs = M_gal + M_psf``, so the galaxy's
    moment matrix is ``M_obs - M_psf``; its determinant is invariant under GalSim's area-preserving
    shear, ``sqrt(det M_gal) = <r^2>_circ / 2``, and :func:`sersic_moment_ratio` converts the
    circular ``<r^2>`` to the half-light radius. The stamp must hold all the flux (noise-free or
    high S/N). Independent of the renderer's own bookkeeping: a check that it drew what was asked.
    """
    _, ixx, iyy, ixy = _moments(image)
    _, pxx, pyy, pxy = _moments(psf_stamp)
    gxx, gyy, gxy = ixx - pxx, iyy - pyy, ixy - pxy
    det = gxx * gyy - gxy * gxy
    if not det > 0:
        return 0.0
    r2 = 2.0 * np.sqrt(det)
    return float(np.sqrt(r2 / sersic_moment_ratio(round(float(sersic_n) / N_STEP) * N_STEP))) * pixel_scale


# --------------------------------------------------------------------- populations
#: aperture radius (pixels) of the galaxies' measured fluxes (corrected by the PSF's fraction inside)
_APERTURE_PX = 5.0
_MEASURED_MEMO: dict = {}


def measured_photometry(fields, fetcher=None, *, psf_source="stars", sas_url=None, cache_dir=None):
    """Our own photometry of the catalog objects of ``fields`` (one row per object).

    Cutouts of every catalog object (:class:`~stargal.align.Aligner`, :class:`~stargal.cutouts.Cutter`
    with PSF stamps, 15 x 15) are measured from the pixels: stars by their PSF-fit flux
    (:func:`stargal._imaging.psf_fit_flux`), galaxies by the flux in a circular aperture of 5 px
    divided by the fraction of the PSF inside it. The catalog's type only chooses the population.

    Returns
    -------
    pandas.DataFrame
        ``label`` (1 galaxy, 0 star), ``field_id``, ``flux_u`` ... ``flux_z`` (nanomaggies) and
        ``mag_r`` (``22.5 - 2.5 log10 flux_r``; NaN where ``flux_r <= 0``).
    """
    from ._imaging import psf_fit_flux
    from .align import Aligner
    from .catalogs import labels_to_y, load_catalog
    from .cutouts import Cutter
    from .fetch import get_fetcher

    fetcher = get_fetcher(fetcher, sas_url=sas_url, cache_dir=cache_dir)
    key = (str(fetcher.base_url), str(fetcher.cache_dir), tuple(fields), psf_source)
    if key in _MEASURED_MEMO:
        return _MEASURED_MEMO[key].copy()
    table = load_catalog(list(fields), fetcher)
    common = {"sas_url": fetcher.base_url, "cache_dir": str(fetcher.cache_dir)}
    aligned = Aligner(cutout_size=CUTOUT_SIZE, policy="flag", **common).fit_transform(table)
    aligned = aligned[aligned["flag"] == ""].reset_index(drop=True)
    cut = Cutter(size=CUTOUT_SIZE, psf=True, psf_source=psf_source, **common).fit_transform(aligned)
    img, psf = cut[:, :5].astype(np.float64), cut[:, 5:].astype(np.float64)
    y = labels_to_y(aligned["label"])
    psf_flux = psf_fit_flux(img, psf)
    ap_flux = aperture_flux(img, psf, _APERTURE_PX)
    flux = np.where(y[:, None] == 1, ap_flux, psf_flux)
    out = pd.DataFrame({"label": y, "field_id": aligned["field_id"].to_numpy()})
    for bi, b in enumerate(BANDS):
        out[f"flux_{b}"] = flux[:, bi]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mag_r"] = np.where(out["flux_r"] > 0, 22.5 - 2.5 * np.log10(out["flux_r"].clip(lower=1e-30)),
                                np.nan)
    _MEASURED_MEMO[key] = out
    return out.copy()


class SyntheticPopulation:
    """Draw synthetic sources: kind, r magnitude, colours, and galaxy shapes.

    Parameters are validated at construction (``ValueError`` naming the parameter and its
    supported range).

    Parameters
    ----------
    photometry : DataFrame
        :func:`measured_photometry` of the training fields (``label``, ``flux_<band>``, ``mag_r``).
    mag_range : (float, float)
        r magnitudes, inside :data:`MAG_RANGE`.
    hlr_range : (float, float)
        Half-light radii (arcsec), inside :data:`HLR_RANGE_ARCSEC`; drawn log-uniformly.
    sersic_range : (float, float)
        Sérsic indices, inside :data:`SERSIC_RANGE`; drawn uniformly.
    q_range : (float, float)
        Axis ratios, inside :data:`AXIS_RATIO_RANGE`; drawn uniformly. Position angles uniform.
    galaxy_fraction : float in [0, 1]
        Probability that a source is a galaxy.
    mag_distribution : {'measured', 'uniform'}
        ``'measured'``: the r magnitude of a random measured object of the same kind within
        ``mag_range`` (plus a Gaussian jitter of 0.05 mag); ``'uniform'``: uniform in ``mag_range``
        (even coverage, for completeness maps).
    colour_mag_max : float
        Colours (flux ratios to r) are copied from a measured object of the same kind brighter
        than this (good S/N in every band), chosen among the 50 closest in r magnitude.

    Examples
    --------
    >>> phot = pd.DataFrame({"label": [0, 0, 1, 1], "mag_r": [18.0, 19.0, 18.5, 20.0],
    ...                      **{f"flux_{b}": [40.0, 16.0, 25.0, 10.0] for b in "ugriz"}})
    >>> pop = SyntheticPopulation(phot, mag_range=(17, 21), galaxy_fraction=0.5)
    >>> src = pop.sample(6, np.random.default_rng(0))
    >>> sorted(src.columns) == sorted(SOURCE_COLUMNS), bool(src["mag_r"].between(17, 21).all())
    (True, True)
    >>> SyntheticPopulation(phot, hlr_range=(0.05, 2.0))
    Traceback (most recent call last):
    ...
    ValueError: SyntheticPopulation: hlr_range=(0.05, 2.0) is outside the supported range [0.1, 3]
    """

    def __init__(self, photometry, *, mag_range=(17.0, 23.0), hlr_range=HLR_RANGE_ARCSEC,
                 sersic_range=SERSIC_RANGE, q_range=(0.3, 1.0), galaxy_fraction=0.5,
                 mag_distribution="measured", colour_mag_max=21.5):
        who = "SyntheticPopulation"
        self.mag_range = _check_range("mag_range", mag_range, *MAG_RANGE, who=who)
        self.hlr_range = _check_range("hlr_range", hlr_range, *HLR_RANGE_ARCSEC, who=who)
        self.sersic_range = _check_range("sersic_range", sersic_range, *SERSIC_RANGE, who=who)
        self.q_range = _check_range("q_range", q_range, *AXIS_RATIO_RANGE, who=who)
        if not isinstance(galaxy_fraction, numbers.Real) or not 0.0 <= float(galaxy_fraction) <= 1.0:
            raise ValueError(f"{who}: galaxy_fraction must be a number in [0, 1], got {galaxy_fraction!r}")
        self.galaxy_fraction = float(galaxy_fraction)
        if mag_distribution not in ("measured", "uniform"):
            raise ValueError(f"{who}: mag_distribution must be 'measured' or 'uniform', got {mag_distribution!r}")
        self.mag_distribution = mag_distribution
        need = {"label", "mag_r"} | {f"flux_{b}" for b in BANDS}
        missing = need - set(getattr(photometry, "columns", []))
        if missing:
            raise ValueError(f"{who}: photometry lacks column(s) {sorted(missing)}")
        phot = photometry[np.isfinite(photometry["mag_r"]) & (photometry["flux_r"] > 0)]
        self.donors = {}
        for label in (0, 1):
            d = phot[phot["label"] == label]
            colour = d[d["mag_r"] < colour_mag_max]
            if len(colour) == 0:
                colour = d
            if len(d) == 0 and (self.galaxy_fraction > 0 if label else self.galaxy_fraction < 1):
                raise ValueError(f"{who}: photometry has no {KINDS[label]}s to draw colours from")
            self.donors[label] = (d["mag_r"].to_numpy(), colour["mag_r"].to_numpy(),
                                  colour[[f"flux_{b}" for b in BANDS]].to_numpy(np.float64))

    def __repr__(self):
        return (f"SyntheticPopulation(mag_range={self.mag_range}, hlr_range={self.hlr_range}, "
                f"galaxy_fraction={self.galaxy_fraction}, mag_distribution={self.mag_distribution!r})")

    def _mags(self, label, n, rng):
        lo, hi = self.mag_range
        if self.mag_distribution == "uniform" or n == 0:
            return rng.uniform(lo, hi, n)
        mags = self.donors[label][0]
        inside = mags[(mags >= lo) & (mags <= hi)]
        if inside.size == 0:
            return rng.uniform(lo, hi, n)
        return np.clip(rng.choice(inside, n) + rng.normal(0.0, 0.05, n), lo, hi)

    def _colours(self, label, mags, rng):
        _, cmag, cflux = self.donors[label]
        ratios = np.clip(cflux / cflux[:, 2:3], 0.0, None)  # flux ratios to r (negative noise -> 0)
        k = min(50, len(cmag))
        out = np.empty((len(mags), len(BANDS)))
        order = np.argsort(cmag)
        sorted_mag = cmag[order]
        for i, m in enumerate(mags):
            j = np.searchsorted(sorted_mag, m)
            lo = int(np.clip(j - k // 2, 0, len(cmag) - k))
            out[i] = ratios[order[lo + rng.integers(k)]]
        return out

    def sample(self, n, rng, kinds=None) -> pd.DataFrame:
        """``n`` sources (table with :data:`SOURCE_COLUMNS`); ``kinds`` forces the kinds (array of labels)."""
        rng = np.random.default_rng(rng)
        labels = (rng.random(n) < self.galaxy_fraction).astype(int) if kinds is None else np.asarray(kinds, int)
        mags = np.empty(n)
        flux = np.empty((n, len(BANDS)))
        for label in (0, 1):
            sel = np.flatnonzero(labels == label)
            if sel.size == 0:
                continue
            mags[sel] = self._mags(label, sel.size, rng)
            flux[sel] = self._colours(label, mags[sel], rng) * (10.0 ** (-0.4 * (mags[sel] - 22.5)))[:, None]
        lo, hi = np.log(self.hlr_range)
        gal = labels == 1
        out = pd.DataFrame({"kind": np.where(gal, "galaxy", "star"), "label": labels, "mag_r": mags})
        for bi, b in enumerate(BANDS):
            out[f"flux_{b}"] = flux[:, bi]
        out["sersic_n"] = np.where(gal, rng.uniform(*self.sersic_range, n), np.nan)
        out["hlr_arcsec"] = np.where(gal, np.exp(rng.uniform(lo, hi, n)), 0.0)
        out["q"] = np.where(gal, rng.uniform(*self.q_range, n), 1.0)
        out["beta_deg"] = np.where(gal, rng.uniform(0.0, 180.0, n), 0.0)
        return out
