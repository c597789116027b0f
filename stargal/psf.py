"""The point-spread function (PSF) of a field, per band, and how it varies across the frame.

SDSS types an object as a galaxy when it is broader than *that field's* PSF, so models must
know each field's PSF. :func:`field_psf` gives a :class:`FieldPSF`: per band, a few basis
images and a low-order polynomial in the frame position, evaluated by :meth:`FieldPSF.stamps`
(vectorised, normalised, centred stamps at any pixel positions) and summarised by
:meth:`FieldPSF.fwhm` (arcsec).

Where a band's PSF comes from (``FieldPSF.source[band]``)
---------------------------------------------------------
``'stars'``
    :func:`estimate_psf`: a stack of the frame's own bright, isolated, unsaturated point
    sources, found **without any catalog** (the reference stars of
    :func:`stargal.registration.find_reference_stars`, cached with the field's registration, plus a
    stricter isolation cut at the scale of the stamp, :data:`PSF_CRITERIA`; saturated stars,
    stars near a frame edge and broad sources never enter). Each star's stamp is resampled
    (Lanczos-3, :func:`stargal.cutouts.resample_stamps`) so that its windowed centroid
    (:func:`stargal.cutouts.centroid_offsets`) lands on the central pixel, its local
    background (median of an annulus 13-16 px out) is subtracted and it is normalised to unit
    flux within 10 px. Per stamp pixel, the normalised value is fitted by weighted least squares
    (star weight ``min(S/N, 500)^2``) as a polynomial of degree 1 in the frame position (basis
    ``[1, x^, y^]``, ``x^, y^`` the 0-based position scaled to [-1, 1] over the band's frame),
    degree 0 when fewer than :data:`MIN_STARS_LINEAR` stars are usable; beyond 6 px from the
    centre (faint wings) only the constant is fitted. Two more regressors,
    ``sin^2(pi fx)`` and ``sin^2(pi fy)`` of each star's sub-pixel phase ``f = x - floor(x + 0.5)``,
    absorb the blur that resampling adds to a sharp PSF (measured on 2583-2-136: bright stars on
    pixel corners look 4-5 % broader in r and i than stars on pixel centres); the model is the
    PSF at phase 0 (centroid on a pixel centre), and ``stamps(..., resampled=True)`` gives it as
    it appears in a resampled cutout. The fit is iterated: pixels more than 5 sigma from the
    model (neighbours, cosmic rays) are masked, and stars whose core deviates grossly from the
    model (galaxies, blends) are rejected.
``'psfield'``
    :func:`psfield_psf`: SDSS's own PSF model (``psField`` file of the field, HDUs 1-5 =
    u, g, r, i, z), reconstructed with :func:`pydl.photoop.image.sdss_psf_recon`.
``'gaussian'``
    Fallback for a band with fewer than :data:`MIN_STARS` usable stars and no psField: a
    constant circular Gaussian whose width is the frame's own measured seeing (the median
    windowed size of its point-like reference stars in that band, else in r, else the SDSS
    median seeing :data:`DEFAULT_SEEING_ARCSEC`). Always announced with a :class:`PSFWarning`
    naming the field; ``FieldPSF.notes[band]`` says why.

Conventions
-----------
* Pixel positions are **0-based** (stargal convention): ``(x, y)`` is column ``x``, row ``y``
  of the band's frame ``image[y, x]``, the first pixel's centre is ``(0, 0)``. Positions are
  in **that band's own frame** (the five frames of a field are not pixel-aligned).
* SDSS's psField polynomial uses PHOTO's convention (first pixel's centre at 0.5, coordinates
  in units of 1000 px): ``sdss_psf_recon(psfield, x, y)`` takes 0-based positions and adds the
  0.5 itself, so 0-based positions are passed through unchanged. The psField's pixel grid is
  the frame's (2048 x 1489, 0.396"/px).
* Stamps are centred: the PSF's windowed centroid is on pixel ``((size - 1) / 2,
  (size - 1) / 2)``; each stamp sums to 1 over its ``size x size`` pixels.
* FWHM (arcsec) is measured on the model stamp from the area above half maximum:
  the central 15 x 15 pixels are upsampled 16x (Lanczos-3), ``A`` = area (px^2) where the
  upsampled image exceeds half its maximum, ``FWHM = 2 sqrt(A / pi) x pixel scale``
  (the diameter of the circle of that area; exact for a circular Gaussian, and defined for
  any profile). The pixel scale comes from the frame's WCS (0.396"/px for SDSS).

Caching: :func:`field_psf` stores the model as JSON beside the field's decompressed frames
(``psf-RRRRRR-C-FFFF.<source>.v<N>-<R>.json``, written atomically; ``N`` =
:data:`PSF_VERSION`, ``R`` = :data:`stargal.registration.REGISTRATION_VERSION`, whose reference
stars it uses), keeps it in a per-process memo, and rebuilds (with a
:class:`PSFWarning`) a cache file it cannot read.

Examples
--------
>>> import numpy as np
>>> psf = FieldPSF.gaussian("8162-6-80", fwhm_arcsec=1.2)
>>> st = psf.stamps("r", np.array([100.0, 1800.0]), np.array([50.0, 1200.0]))
>>> st.shape, st.dtype, bool(np.allclose(st.sum(axis=(1, 2)), 1.0))
((2, 15, 15), dtype('float32'), True)
>>> round(float(psf.fwhm("r")), 2)
1.2
"""

from __future__ import annotations

import json
import threading
import warnings
import weakref
from dataclasses import dataclass, field as dc_field
from pathlib import Path

import numpy as np

from .fetch import FetchError, NotFoundError, get_fetcher
from ._imaging import mad_std
from ._io import atomic_write_bytes
from .frames import Field, MissingBandError, decompressed_paths
from .sdss import BANDS, FieldID, frame_path, psfield_path

__all__ = [
    "PSF_STAMP",
    "PSF_VERSION",
    "MIN_STARS",
    "MIN_STARS_LINEAR",
    "DEFAULT_SEEING_ARCSEC",
    "PIXEL_SCALE_ARCSEC",
    "SDSS_FRAME_SHAPE",
    "SOURCES",
    "PSF_CRITERIA",
    "BandPSF",
    "FieldPSF",
    "PSFWarning",
    "InsufficientStarsError",
    "estimate_psf",
    "psfield_psf",
    "field_psf",
    "measure_fwhm",
    "psf_star_table",
]

#: Side (pixels) of the stored model stamps (odd).
PSF_STAMP = 25
#: Version of the PSF method and cache format (part of the cache file name).
PSF_VERSION = 2
#: Fewer usable stars than this in a band: no star-based estimate (psField or Gaussian instead).
MIN_STARS = 5
#: Fewer usable stars than this: the spatial polynomial is degree 0 (a constant PSF).
MIN_STARS_LINEAR = 15
#: Seeing (r-band FWHM, arcsec) assumed when a field has no usable point source at all.
DEFAULT_SEEING_ARCSEC = 1.4
#: SDSS frame pixel scale (arcsec/pixel); used when a frame's WCS is not at hand.
PIXEL_SCALE_ARCSEC = 0.396
#: Shape (ny, nx) of an SDSS frame (and of the psField's pixel grid).
SDSS_FRAME_SHAPE = (1489, 2048)
#: Values of ``FieldPSF.source[band]``.
SOURCES = ("stars", "psfield", "gaussian")

#: Star selection and fitting parameters of :func:`estimate_psf` (pixels unless stated).
PSF_CRITERIA = {
    "isolation_px": 12.0,      # no other local maximum brighter than neighbour_frac x peak within this
    "neighbour_frac": 0.1,
    "neighbour_snr": 5.0,      # local maxima counted as neighbours: peak S/N above this
    "bright_px": 30.0,         # no brighter source within this (its wings would reach the stamp)
    "bg_inner_px": 13.0,       # background annulus of the resampled stamp
    "bg_outer_px": 16.0,
    "flux_px": 10.0,           # each star is normalised to unit flux within this radius
    "snr_cap": 100.0,          # star weight = min(S/N, snr_cap)^2 (inverse variance; the cap stops a
                               # handful of the very brightest stars from being the whole model: with
                               # 500, the 25 brightest of 8162-6-80's 246 r stars, narrower than the
                               # rest, made the model 4.6 % narrower than the median star; with 100
                               # the model matches its own stars within 2.6 % in every band of every
                               # mirror field, `experiments/seeing.star_check`)
    "pixel_clip": 5.0,         # pixel residual (sigma) above which a pixel is masked
    "pixel_floor": 0.1,        # fractional model error in that sigma (a loose model never masks good pixels)
    "star_clip": 5.0,          # core chi above median + star_clip x robust sigma: star rejected
    "core_px": 4.0,            # radius of the core used for the star-level statistic
    "wing_px": 6.0,            # beyond this radius only a constant (no spatial or phase term) is fitted
    "model_floor": 0.15,       # fractional model error in the core statistic (only gross outliers go)
    "gain": 4.0,               # electrons per count assumed for the Poisson noise (S/N, clipping)
    "n_iter": 4,
}

_FWHM_BOX = 15
_FWHM_UPSAMPLE = 16
_MEMO: dict = {}
_MEMO_LOCK = threading.Lock()


class PSFWarning(UserWarning):
    """A field's PSF could not be estimated as asked (fallback used) or its cache was unreadable."""


class InsufficientStarsError(ValueError):
    """Too few usable point sources in a band for a star-based PSF estimate."""

    def __init__(self, fid, band, n, detail=""):
        self.fid, self.band, self.n = str(fid), band, int(n)
        super().__init__(f"field {fid} band {band}: only {n} usable PSF star(s) (need {MIN_STARS})"
                         + (f"; {detail}" if detail else ""))


# ----------------------------------------------------------------------------- model
def _terms(powers, origin, scale, x, y) -> np.ndarray:
    """Monomials ``((x - x0) / sx)^px ((y - y0) / sy)^py``, shape ``(n, T)``."""
    u = (np.asarray(x, float) - origin[0]) / scale[0]
    v = (np.asarray(y, float) - origin[1]) / scale[1]
    return np.stack([u**px * v**py for px, py in powers], axis=-1)


@dataclass
class BandPSF:
    """PSF model of one band: ``P(x, y) = sum_t m_t(x, y) images[t]``, ``m_t`` monomials.

    Attributes
    ----------
    band : str
    images : ndarray, shape (T, S, S)
        Basis images (S odd; the PSF's centroid on the central pixel).
    powers : list of (int, int)
        Exponents ``(px, py)`` of each monomial ``((x - x0) / sx)^px ((y - y0) / sy)^py``.
    origin, scale : (float, float)
        ``(x0, y0)`` and ``(sx, sy)`` of the monomials, 0-based pixels of the band's frame
        (star models: the frame centre and half-size, so ``x^, y^`` span [-1, 1]).
    shape : (int, int)
        ``(ny, nx)`` of the band's frame.
    source : str
        ``'stars'``, ``'psfield'`` or ``'gaussian'``.
    n_stars : int
        Stars used (0 unless ``source == 'stars'``).
    degree : int
        Total degree of the polynomial.
    pixel_scale : float
        Arcsec per pixel.
    star_xy : ndarray, shape (n_stars, 2)
        0-based positions (band frame) of the stars used.
    note : str
        Why this source was used when it is a fallback, or a remark ('' otherwise).
    phase_images : ndarray, shape (2, S, S), optional
        Star models only: the change of the PSF, as seen in a Lanczos-3 resampled cutout, per
        unit ``sin^2(pi fx)`` and ``sin^2(pi fy)`` of the object's sub-pixel phase
        ``f = x - floor(x + 0.5)`` (see ``stamps(..., resampled=True)``).
    """

    band: str
    images: np.ndarray
    powers: list
    origin: tuple
    scale: tuple
    shape: tuple
    source: str
    n_stars: int = 0
    degree: int = 0
    pixel_scale: float = PIXEL_SCALE_ARCSEC
    star_xy: np.ndarray = dc_field(default_factory=lambda: np.zeros((0, 2)))
    note: str = ""
    phase_images: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def centre(self) -> tuple[float, float]:
        """0-based frame centre ``((nx - 1) / 2, (ny - 1) / 2)``."""
        return (self.shape[1] - 1) / 2.0, (self.shape[0] - 1) / 2.0

    def stamps(self, x, y, size: int = 15, resampled: bool = False) -> np.ndarray:
        """``(n, size, size)`` float32 unit-sum PSF images at 0-based positions ``(x, y)``.

        ``resampled=True``: the PSF as it appears in a cutout Lanczos-3 resampled so that a
        point source at ``(x, y)`` lands on the central pixel (:class:`stargal.cutouts.Cutter`),
        which blurs a sharp PSF slightly, depending on the sub-pixel phase of ``(x, y)``. Only
        star models know this blur; other sources return the plain PSF.
        """
        size = _check_size(size, self.size)
        x = np.atleast_1d(np.asarray(x, float)).ravel()
        y = np.atleast_1d(np.asarray(y, float)).ravel()
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
        lo = (self.size - size) // 2
        basis = self.images[:, lo:lo + size, lo:lo + size].reshape(len(self.powers), -1)
        terms = _terms(self.powers, self.origin, self.scale, x, y)
        if resampled and self.phase_images is not None:
            phase = self.phase_images[:, lo:lo + size, lo:lo + size].reshape(2, -1)
            basis = np.concatenate([basis, phase])
            terms = np.column_stack([terms, _phase_terms(x, y)])
        out = terms @ basis  # (n, size^2)
        total = out.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = out / total
        return out.reshape(-1, size, size).astype(np.float32)

    def components(self, x, y, resampled: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The model as a linear combination: ``(basis, coef)`` with ``PSF(x_n, y_n) = coef[n] @ basis``.

        ``basis`` (shape ``(J, S, S)``, S = :attr:`size`) holds the basis images (and, with
        ``resampled=True`` for a star model, the two sub-pixel phase images); ``coef`` (shape
        ``(n, J)``) the monomials at each 0-based position divided by the unnormalised sum, so that
        ``coef[n] @ basis`` is exactly the unit-sum stamp :meth:`stamps` returns at full size. Any
        linear operation on the PSF (a convolution with a galaxy profile) can be applied to the
        ``J`` basis images once and combined per object with ``coef``.
        """
        x = np.atleast_1d(np.asarray(x, float)).ravel()
        y = np.atleast_1d(np.asarray(y, float)).ravel()
        basis = self.images
        coef = _terms(self.powers, self.origin, self.scale, x, y)
        if resampled and self.phase_images is not None:
            basis = np.concatenate([basis, self.phase_images])
            coef = np.column_stack([coef, _phase_terms(x, y)])
        with np.errstate(invalid="ignore", divide="ignore"):
            coef = coef / (coef @ basis.sum(axis=(1, 2)))[:, None]
        return basis, coef

    def fwhm(self, x=None, y=None):
        """FWHM in arcsec at the frame centre (``x = y = None``) or at the given positions."""
        scalar = x is None and y is None
        if scalar:
            x, y = self.centre
        xs = np.atleast_1d(np.asarray(x, float)).ravel()
        ys = np.atleast_1d(np.asarray(y, float)).ravel()
        out = np.empty(xs.size)
        for lo in range(0, xs.size, 64):
            out[lo:lo + 64] = measure_fwhm(self.stamps(xs[lo:lo + 64], ys[lo:lo + 64], min(self.size, 21)))
        out *= self.pixel_scale
        if scalar or (np.ndim(x) == 0 and np.ndim(y) == 0):
            return float(out[0])
        return out.reshape(np.shape(x))

    def to_dict(self) -> dict:
        return {"band": self.band, "images": np.round(self.images, 9).tolist(),
                "powers": [list(map(int, p)) for p in self.powers],
                "origin": [float(v) for v in self.origin], "scale": [float(v) for v in self.scale],
                "shape": [int(v) for v in self.shape], "source": self.source, "n_stars": int(self.n_stars),
                "degree": int(self.degree), "pixel_scale": float(self.pixel_scale),
                "star_xy": np.round(np.asarray(self.star_xy, float), 4).tolist(), "note": self.note,
                "phase_images": None if self.phase_images is None else np.round(self.phase_images, 9).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "BandPSF":
        images = np.asarray(d["images"], dtype=np.float64)
        if images.ndim != 3 or images.shape[1] != images.shape[2] or images.shape[0] != len(d["powers"]):
            raise ValueError(f"bad PSF basis images of shape {images.shape}")
        if d["source"] not in SOURCES:
            raise ValueError(f"unknown PSF source {d['source']!r}")
        return cls(d["band"], images, [tuple(p) for p in d["powers"]], tuple(d["origin"]), tuple(d["scale"]),
                   tuple(d["shape"]), d["source"], int(d["n_stars"]), int(d["degree"]), float(d["pixel_scale"]),
                   np.asarray(d["star_xy"], float).reshape(-1, 2), d.get("note", ""),
                   None if d.get("phase_images") is None else np.asarray(d["phase_images"], dtype=np.float64))


def _check_size(size, stored: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"PSF stamp size must be a positive odd integer, got {size!r}")
    if size > stored:
        raise ValueError(f"PSF stamp size {size} exceeds the stored model's {stored} px")
    return int(size)


class FieldPSF:
    """PSF model of one field: per band, basis images and their spatial polynomial.

    Parameters
    ----------
    fid : str or FieldID
    models : dict
        Band -> :class:`BandPSF`.

    Attributes
    ----------
    fid : str
        ``'8162-6-80'``.
    bands : tuple of str
        Bands with a model, in ``u g r i z`` order (a band whose frame is missing has none).
    source : dict
        Band -> ``'stars'`` | ``'psfield'`` | ``'gaussian'``.
    n_stars : dict
        Band -> number of stars used (0 for psfield/gaussian).
    degree : dict
        Band -> polynomial degree.
    notes : dict
        Band -> why a fallback was used ('' when the requested source was used).
    models : dict
        Band -> :class:`BandPSF`.

    Examples
    --------
    >>> psf = FieldPSF.gaussian("1000-1-10", fwhm_arcsec=1.0, shape=(150, 200))
    >>> psf.source["g"], psf.n_stars["g"]
    ('gaussian', 0)
    >>> psf2 = FieldPSF.from_dict(psf.to_dict())
    >>> bool(np.allclose(psf2.stamps("g", [10.0], [20.0]), psf.stamps("g", [10.0], [20.0]), atol=1e-8))
    True
    """

    def __init__(self, fid, models: dict):
        self.fid = str(FieldID.parse(fid))
        self.models = {b: models[b] for b in BANDS if b in models}
        self.bands = tuple(self.models)

    @property
    def source(self) -> dict:
        return {b: m.source for b, m in self.models.items()}

    @property
    def n_stars(self) -> dict:
        return {b: m.n_stars for b, m in self.models.items()}

    @property
    def degree(self) -> dict:
        return {b: m.degree for b, m in self.models.items()}

    @property
    def notes(self) -> dict:
        return {b: m.note for b, m in self.models.items()}

    def __repr__(self) -> str:
        parts = ", ".join(f"{b}: {m.source} n={m.n_stars} deg={m.degree}" for b, m in self.models.items())
        return f"FieldPSF({self.fid!r}; {parts})"

    def _model(self, band: str) -> BandPSF:
        if band not in self.models:
            if band in BANDS:
                raise MissingBandError(self.fid, [band], "no PSF model: the field has no frame in this band")
            raise ValueError(f"unknown SDSS band {band!r}; expected one of {', '.join(BANDS)}")
        return self.models[band]

    def stamps(self, band: str, x, y, size: int = 15, *, resampled: bool = False) -> np.ndarray:
        """PSF images at 0-based pixel positions of one band's frame.

        Parameters
        ----------
        band : str
        x, y : array-like, shape (n,)
            0-based positions in **that band's** frame.
        size : int, default=15
            Odd stamp side, at most :data:`PSF_STAMP`.
        resampled : bool, default=False
            ``False``: the PSF as sampled by the frame's pixels with its centroid on a pixel
            centre. ``True``: as it appears in a stargal cutout (Lanczos-3 resampled so that
            a point source at ``(x, y)`` lands on the central pixel), whose slight blur depends
            on the sub-pixel phase of ``(x, y)`` (star models only; up to a few per cent in
            FWHM for sharp seeing).

        Returns
        -------
        ndarray, float32, shape (n, size, size)
            Each centred (the PSF's windowed centroid on pixel ``((size-1)/2, (size-1)/2)``) and
            normalised to unit sum over the ``size x size`` stamp. One matrix product for all
            positions (``n = 10,000``: a few milliseconds).
        """
        return self._model(band).stamps(x, y, size, resampled)

    def fwhm(self, band: str, x=None, y=None):
        """FWHM in arcsec at the frame centre (``x = y = None``) or at the given 0-based positions.

        Measured on the model stamp by :func:`measure_fwhm` (area above half maximum).
        """
        return self._model(band).fwhm(x, y)

    def to_dict(self) -> dict:
        """JSON-serialisable form (see :meth:`from_dict`)."""
        return {"version": PSF_VERSION, "fid": self.fid,
                "models": {b: m.to_dict() for b, m in self.models.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "FieldPSF":
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on an incompatible version."""
        if d.get("version") != PSF_VERSION:
            raise ValueError(f"PSF model version {d.get('version')!r}, expected {PSF_VERSION}")
        return cls(d["fid"], {b: BandPSF.from_dict(m) for b, m in d["models"].items()})

    @classmethod
    def gaussian(cls, fid, fwhm_arcsec, shape=SDSS_FRAME_SHAPE, bands=BANDS, size=PSF_STAMP,
                 pixel_scale=PIXEL_SCALE_ARCSEC, note="") -> "FieldPSF":
        """A constant circular Gaussian PSF (``fwhm_arcsec``: a float or band -> float)."""
        f = fwhm_arcsec if isinstance(fwhm_arcsec, dict) else {b: fwhm_arcsec for b in bands}
        return cls(fid, {b: _gaussian_model(b, f[b] / pixel_scale / _SIGMA_TO_FWHM, shape, size,
                                            pixel_scale, note) for b in bands})


_SIGMA_TO_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _gaussian_model(band, sigma_px, shape, size=PSF_STAMP, pixel_scale=PIXEL_SCALE_ARCSEC, note="") -> BandPSF:
    h = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size] - h
    img = np.exp(-0.5 * (xx**2 + yy**2) / sigma_px**2)
    img /= img.sum()
    ny, nx = shape
    origin, scale = _frame_scaling(shape)
    return BandPSF(band, img[None], [(0, 0)], origin, scale, (int(ny), int(nx)), "gaussian", 0, 0,
                   float(pixel_scale), np.zeros((0, 2)), note)


def _frame_scaling(shape):
    """Origin and scale mapping 0-based frame positions to ``x^, y^`` in [-1, 1]."""
    ny, nx = shape
    return ((nx - 1) / 2, (ny - 1) / 2), (max((nx - 1) / 2, 1), max((ny - 1) / 2, 1))


# ----------------------------------------------------------------------------- FWHM
def _lanczos3(t):
    t = np.asarray(t, float)
    out = np.sinc(t) * np.sinc(t / 3.0)
    return np.where(np.abs(t) < 3.0, out, 0.0)


def _upsample_matrix(n: int, k: int) -> np.ndarray:
    """``(n k, n)`` Lanczos-3 weights sampling ``n`` pixels at ``k`` sub-pixels each."""
    u = (np.arange(n * k) + 0.5) / k - 0.5
    w = _lanczos3(u[:, None] - np.arange(n)[None, :])
    return w / w.sum(axis=1, keepdims=True)


def measure_fwhm(stamps, upsample: int = _FWHM_UPSAMPLE) -> np.ndarray:
    """FWHM (pixels) of centred PSF stamps from the area above half maximum.

    The central ``15 x 15`` pixels are upsampled ``upsample`` times with Lanczos-3; ``A`` is
    the area (pixels^2) where the upsampled image exceeds half its maximum;
    ``FWHM = 2 sqrt(A / pi)``. With the default (16x) a sampled Gaussian of sigma 0.85-3 px is
    measured to 0.5 %. ``upsample=1`` counts whole pixels above half maximum (no
    interpolation): coarse (quantised to whole pixel counts, 7-10 % steps for SDSS seeing), but
    it is the measure behind the seeing values quoted in the SDSS mirror's README.

    Parameters
    ----------
    stamps : array-like, shape (n, S, S) or (S, S)
    upsample : int, default=16

    Returns
    -------
    ndarray, shape (n,) (float for one stamp)

    Examples
    --------
    >>> yy, xx = np.mgrid[:25, :25] - 12.0
    >>> g = np.exp(-0.5 * (xx**2 + yy**2) / 1.5**2)
    >>> round(float(measure_fwhm(g)) / (2.3548 * 1.5), 2)
    1.0
    """
    arr = np.asarray(stamps, dtype=np.float64)
    single = arr.ndim == 2
    if single:
        arr = arr[None]
    s = arr.shape[-1]
    box = min(_FWHM_BOX, s)
    lo = (s - box) // 2
    arr = arr[:, lo:lo + box, lo:lo + box]
    k = int(upsample)
    if k < 1:
        raise ValueError(f"upsample must be a positive integer, got {upsample!r}")
    if k == 1:
        up = arr
    else:
        m = _upsample_matrix(box, k)
        up = np.einsum("ij,njk,lk->nil", m, arr, m, optimize=True)
    peak = up.reshape(len(up), -1).max(axis=1)
    area = (up > 0.5 * peak[:, None, None]).sum(axis=(1, 2)) / k**2
    out = 2.0 * np.sqrt(area / np.pi)
    return float(out[0]) if single else out


# ----------------------------------------------------------------------------- stars
def _pixel_scale(frame) -> float:
    try:
        from astropy.wcs.utils import proj_plane_pixel_scales

        scale = float(np.sqrt(np.prod(proj_plane_pixel_scales(frame.wcs.celestial))) * 3600.0)
        return scale if np.isfinite(scale) and scale > 0 else PIXEL_SCALE_ARCSEC
    except Exception:  # noqa: BLE001 - a frame without a usable WCS: SDSS's nominal scale
        return PIXEL_SCALE_ARCSEC


def _references(field: Field):
    """Reference stars of the field (cached with its registration: no second detection pass)."""
    from .registration import field_registration

    return field_registration(field).references


_ISOLATION = weakref.WeakKeyDictionary()  # Field -> (reference positions, isolation mask)


def _isolated_for_psf(field: Field, refs) -> np.ndarray:
    """Stricter isolation at the scale of the PSF stamp, measured in the r frame (memoised per Field)."""
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
        close = other & (d <= crit["isolation_px"]) & (lval[near] > crit["neighbour_frac"] * peak[i])
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
    from .registration import windowed_size as _windowed_size
    from ._imaging import centroid_offsets, resample_stamps

    if not isinstance(field, Field):
        field = Field(field)
    frame = field.frame(band)
    refs = _references(field)
    empty = {"x": np.zeros(0), "y": np.zeros(0), "stamps": np.zeros((0, size, size), np.float32),
             "noise": float(frame.sky_noise), "nmgy": np.nan, "size_px": np.zeros(0), "n_candidates": 0}
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
    small = resample_stamps(frame.image, x, y, 15, "lanczos3")
    good = np.isfinite(small).all(axis=(1, 2))
    size_px = np.full(len(x), np.nan)
    if good.any():
        c = centroid_offsets(small[good][:, None])[:, 0]
        c = np.where(np.isfinite(c), c, 0.0)
        size_px[good] = _windowed_size(small[good], c[:, 0], c[:, 1])
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
            "nmgy": float(nmgy) if nmgy else np.nan, "size_px": size_px, "n_candidates": int(ok.sum())}


def _phase_terms(x, y) -> np.ndarray:
    """``[sin^2(pi fx), sin^2(pi fy)]`` of the sub-pixel phase ``f = x - floor(x + 0.5)``: 0 for a
    star centred on a pixel, 1 for one on a pixel corner (where resampling blurs most)."""
    fx = np.asarray(x, float) - np.floor(np.asarray(x, float) + 0.5)
    fy = np.asarray(y, float) - np.floor(np.asarray(y, float) + 0.5)
    return np.column_stack([np.sin(np.pi * fx) ** 2, np.sin(np.pi * fy) ** 2])


def _fit_stack(stamps, x, y, shape, noise, nmgy, degree, phase=True):
    """Iterative weighted per-pixel least squares of normalised stamps on ``[1, x^, y^]``.

    With ``phase``, two more regressors, even functions of each star's sub-pixel phase
    (:func:`_phase_terms`), absorb the blur that resampling adds to a sharp (near-critically
    sampled) PSF when its centroid is far from a pixel centre; the model is then evaluated at
    phase 0, i.e. it is the PSF as sampled with its centroid on a pixel centre.

    Returns ``(images (T, S, S), powers, used (n,) bool, phase_images (2, S, S) or None)``.
    """
    crit = PSF_CRITERIA
    n, s, _ = stamps.shape
    data = stamps.reshape(n, -1).astype(np.float64)
    ny, nx = shape
    origin, scale = ((nx - 1) / 2, (ny - 1) / 2), (max((nx - 1) / 2, 1), max((ny - 1) / 2, 1))
    powers = [(0, 0)] if degree == 0 else [(0, 0), (1, 0), (0, 1)]
    A = _terms(powers, origin, scale, x, y)  # (n, T)
    if phase:
        A = np.column_stack([A, _phase_terms(x, y)])
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
            mask = np.abs(resid) <= crit["pixel_clip"] * np.sqrt(sig0**2 + (crit["pixel_floor"] * mabs) ** 2)
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
    degree : {0, 1}, default=1
        Degree of the spatial polynomial; 0 is used whenever fewer than
        :data:`MIN_STARS_LINEAR` stars are usable.
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
    if degree not in (0, 1):
        raise ValueError(f"degree must be 0 or 1, got {degree!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 15 or size % 2 == 0:
        raise ValueError(f"size must be an odd integer >= 15, got {size!r}")
    if not isinstance(field, Field):
        field = Field(field)
    frame = field.frame(band)
    stars = psf_star_table(field, band, size)
    n = len(stars["x"])
    if n < MIN_STARS:
        raise InsufficientStarsError(field.fid, band, n, f"{stars['n_candidates']} reference star(s) usable in "
                                     f"{band} before the PSF isolation and edge cuts")
    deg = degree if n >= MIN_STARS_LINEAR else 0
    images, powers, used, phase_images = _fit_stack(stars["stamps"], stars["x"], stars["y"], frame.shape,
                                                    stars["noise"], stars["nmgy"], deg,
                                                    phase=n >= MIN_STARS_LINEAR)
    if used.sum() < MIN_STARS:
        raise InsufficientStarsError(field.fid, band, int(used.sum()), "after rejecting outlying stamps")
    ny, nx = frame.shape
    origin, scale = _frame_scaling(frame.shape)
    return BandPSF(band, images, powers, origin, scale, (int(ny), int(nx)), "stars", int(used.sum()), deg,
                   _pixel_scale(frame), np.column_stack([stars["x"][used], stars["y"][used]]), "", phase_images)


def _seeing_sigma_px(field: Field, band: str) -> tuple[float, str]:
    """Gaussian sigma (px) of the frame's measured seeing, and where it came from."""
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
    scale = PIXEL_SCALE_ARCSEC
    what = f"no point source found: SDSS median seeing {DEFAULT_SEEING_ARCSEC}\""
    return DEFAULT_SEEING_ARCSEC / scale / _SIGMA_TO_FWHM, what


# ----------------------------------------------------------------------------- psField
def _recentre(images: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Shift all basis images by the same sub-pixel offset so that the PSF ``weights @ images``
    (the PSF at the frame centre) has its windowed centroid on the central pixel.

    Returns the shifted images and the centroid offset ``(dx, dy)`` (pixels) that was removed."""
    from ._imaging import centroid_offsets, resample_stamps

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
        out.append(resample_stamps(big, [h + off[0]], [h + off[1]], s, "lanczos3", engine="numpy")[0])
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
    m = _terms(powers, origin, scale, px, py)  # (npos, T)
    full = imgs.shape[-1]
    sol, *_ = np.linalg.lstsq(m, imgs.reshape(len(imgs), -1), rcond=None)
    images = sol.reshape(len(powers), full, full)
    lo = (full - size) // 2
    images = images[:, lo:lo + size, lo:lo + size]
    c = _terms(powers, origin, scale, [(nx - 1) / 2], [(ny - 1) / 2])[0]
    images = images / np.tensordot(c, images, axes=1).sum()
    note = ""
    if recentre:
        images, off = _recentre(images, c)
        note = f"psField PSF shifted by ({-off[0]:+.4f}, {-off[1]:+.4f}) px to centre its windowed centroid"
    degree = max(a + b for a, b in powers)
    return BandPSF(band, images, powers, origin, scale, (int(ny), int(nx)), "psfield", 0, degree,
                   float(pixel_scale), np.zeros((0, 2)), note)


def psfield_psf(fid, fetcher=None, *, sas_url=None, cache_dir=None, bands=BANDS, size: int = PSF_STAMP,
                shape=None) -> FieldPSF | None:
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
    shape = tuple(shape) if shape is not None else SDSS_FRAME_SHAPE

    def read(path):
        with fits.open(path, memmap=False) as hdul:
            return {b: _band_psfield(hdul[k + 1].data, b, size, shape, PIXEL_SCALE_ARCSEC)
                    for k, b in enumerate(BANDS) if b in bands}

    try:  # a cached copy that cannot be read is removed and fetched once more (Fetcher.read)
        models = fetcher.read(psfield_path(fid), read)
    except NotFoundError:
        return None
    return FieldPSF(fid, models)


# ----------------------------------------------------------------------------- per field, cached
def _cache_path(cache_dir, fid: FieldID, source: str) -> Path:
    from .registration import REGISTRATION_VERSION  # the reference stars come with the registration

    npy, _ = decompressed_paths(Path(cache_dir), frame_path(fid, "r"))
    return npy.with_name(f"psf-{fid.padded}.{source}.v{PSF_VERSION}-{REGISTRATION_VERSION}.json")


def _warn(msg: str) -> None:
    warnings.warn(msg, PSFWarning, stacklevel=3)


def _try_psfield(field: Field, bands, shape):
    """:func:`psfield_psf`, with a download or read failure (other than a 404) reported as a
    warning and treated as "no psField", so that a PSF model is always returned."""
    try:
        return psfield_psf(field.fid, field.fetcher, bands=bands, shape=shape)
    except (FetchError, OSError, ValueError, KeyError, IndexError) as exc:
        _warn(f"field {field.fid}: the psField {psfield_path(field.fid)} could not be used ({exc}); "
              "treating it as absent")
        return None


def _build(field: Field, source: str) -> FieldPSF:
    fid = field.fid
    present = []
    for b in BANDS:
        try:
            field.frame(b)
            present.append(b)
        except MissingBandError:
            pass
    missing = [b for b in BANDS if b not in present]
    if missing:
        _warn(f"field {fid}: no frame in band(s) {', '.join(missing)}: no PSF model for them")
    shape = field.frame(present[0]).shape if present else SDSS_FRAME_SHAPE
    psfield = None
    if source in ("psfield", "auto"):
        psfield = _try_psfield(field, present, shape)
        if psfield is not None:
            return psfield
        if source == "psfield":
            _warn(f"field {fid}: no psField ({psfield_path(fid)}); "
                  "using the PSF estimated from the frame's stars")
    models = {}
    tried_psfield = source in ("psfield", "auto")
    for b in present:
        try:
            models[b] = estimate_psf(field, b)
            continue
        except InsufficientStarsError as exc:
            reason = str(exc)
        if not tried_psfield:
            psfield = _try_psfield(field, present, shape)
            tried_psfield = True
        if psfield is not None and b in psfield.models:
            m = psfield.models[b]
            m.note = f"{reason}: SDSS psField used" + (f"; {m.note}" if m.note else "")
            models[b] = m
            _warn(f"{reason}; using SDSS's psField instead")
            continue
        sigma, what = _seeing_sigma_px(field, b)
        frame = field.frame(b)
        fwhm = sigma * _SIGMA_TO_FWHM * _pixel_scale(frame)
        note = f"{reason}; no psField: constant Gaussian, FWHM {fwhm:.2f}\" ({what})"
        models[b] = _gaussian_model(b, sigma, frame.shape, PSF_STAMP, _pixel_scale(frame), note)
        _warn(note)
    return FieldPSF(fid, models)


def field_psf(field, fetcher=None, *, sas_url=None, cache_dir=None, source: str = "stars",
              refresh: bool = False) -> FieldPSF:
    """The PSF model of a field (all its bands), measured once and cached.

    Parameters
    ----------
    field : Field or str
        An open :class:`~stargal.frames.Field` (its fetcher is used) or a field id string.
    fetcher, sas_url, cache_dir
        Data source when ``field`` is a string.
    source : {'stars', 'psfield', 'auto'}, default='stars'
        ``'stars'``: :func:`estimate_psf` per band. ``'psfield'``: SDSS's psField
        (:func:`psfield_psf`); when the field has none, the star estimate with a
        :class:`PSFWarning`. ``'auto'``: the psField when there is one, else the stars (no warning).
    refresh : bool
        Measure again even when cached.

    Returns
    -------
    FieldPSF
        ``source[band]`` tells where each band's model came from. A band with fewer than
        :data:`MIN_STARS` usable stars falls back to the psField when the field has one, else to
        a constant Gaussian of the frame's own measured seeing; either way a :class:`PSFWarning`
        names the field and ``notes[band]`` says why. A band whose frame is missing has no
        model (warning) and is absent from ``bands``.

    Notes
    -----
    The model is cached as ``psf-RRRRRR-C-FFFF.<source>.v<N>-<R>.json`` beside the field's
    decompressed frames (atomic write), plus a per-process memo. A cache file that cannot be
    read is rebuilt with a :class:`PSFWarning`; one that cannot be written only costs a warning.
    The warnings about fallbacks are issued when the model is built, not when it is read from
    the cache (its ``source`` and ``notes`` still record them).

    Examples
    --------
    >>> psf = field_psf("8162-6-80", sas_url="file:///data/sdss")          # doctest: +SKIP
    >>> psf.source["r"], psf.n_stars["r"], round(psf.fwhm("r"), 2)          # doctest: +SKIP
    """
    if source not in ("stars", "psfield", "auto"):
        raise ValueError(f"source must be 'stars', 'psfield' or 'auto', got {source!r}")
    if not isinstance(field, Field):
        field = Field(field, fetcher, sas_url=sas_url, cache_dir=cache_dir)
    fid = field.fid
    path = _cache_path(field.fetcher.cache_dir, fid, source)
    key = str(path)
    if not refresh:
        with _MEMO_LOCK:
            if key in _MEMO:
                return _MEMO[key]
        if path.exists():
            try:
                data = json.loads(path.read_text())
                if data.get("fid") != str(fid):
                    raise ValueError(f"cache holds field {data.get('fid')!r}")
                psf = FieldPSF.from_dict(data)
                with _MEMO_LOCK:
                    _MEMO[key] = psf
                return psf
            except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
                _warn(f"field {fid}: unreadable PSF cache {path} ({exc}); rebuilding it")
    data = _build(field, source).to_dict()
    psf = FieldPSF.from_dict(json.loads(json.dumps(data)))  # exactly what the cache holds
    try:
        payload = json.dumps(data).encode()
        atomic_write_bytes(path, lambda fh: fh.write(payload))
    except OSError as exc:
        _warn(f"field {fid}: could not cache the PSF model at {path}: {exc}")
    with _MEMO_LOCK:
        _MEMO[key] = psf
    return psf
