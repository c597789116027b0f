"""The PSF model of a field: :class:`FieldPSF` (per band, a :class:`BandPSF`), and its constants.

A band's model is a few basis images and a low-order polynomial in the frame position,
evaluated by :meth:`FieldPSF.stamps` (vectorised, normalised, centred stamps at any pixel
positions) and summarised by :meth:`FieldPSF.fwhm` (arcsec). Where the models come from:
:mod:`stargal.psf_stars` (the frame's own stars), :mod:`stargal.psfield` (SDSS's psField), a
constant Gaussian (:meth:`FieldPSF.gaussian`); :func:`stargal.psf.field_psf` chooses and caches.

Conventions
-----------
* Pixel positions are **0-based** (stargal convention): ``(x, y)`` is column ``x``, row ``y``
  of the band's frame ``image[y, x]``, the first pixel's centre is ``(0, 0)``. Positions are
  in **that band's own frame** (the five frames of a field are not pixel-aligned).
* Stamps are centred: the PSF's windowed centroid is on pixel ``((size - 1) / 2,
  (size - 1) / 2)``; each stamp sums to 1 over its ``size x size`` pixels.
* FWHM (arcsec) is measured on the model stamp from the area above half maximum
  (:func:`stargal._imaging.half_max_area_fwhm`) times the band's pixel scale (from the frame's
  WCS for star models, :data:`stargal.sdss.PIXEL_SCALE_ARCSEC` otherwise).

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

from dataclasses import dataclass, field as dc_field

import numpy as np

from ._imaging import CUTOUT_SIZE, FWHM_PER_SIGMA, half_max_area_fwhm
from .frames import MissingBandError
from .sdss import BANDS, FRAME_SHAPE, PIXEL_SCALE_ARCSEC, FieldID

__all__ = [
    "PSF_STAMP",
    "PSF_VERSION",
    "SOURCES",
    "BandPSF",
    "FieldPSF",
    "PSFWarning",
    "gaussian_band_psf",
    "frame_scaling",
    "monomials",
    "phase_terms",
]

#: Side (pixels) of the stored model stamps (odd).
PSF_STAMP = 25
#: Version of the PSF method and cache format (part of the cache file name).
PSF_VERSION = 3
#: Values of ``FieldPSF.source[band]``.
SOURCES = ("stars", "psfield", "gaussian")


class PSFWarning(UserWarning):
    """A field's PSF could not be estimated as asked (fallback used) or its cache was unreadable."""


def monomials(powers, origin, scale, x, y) -> np.ndarray:
    """Monomials ``((x - x0) / sx)^px ((y - y0) / sy)^py``, shape ``(n, T)``."""
    u = (np.asarray(x, float) - origin[0]) / scale[0]
    v = (np.asarray(y, float) - origin[1]) / scale[1]
    return np.stack([u**px * v**py for px, py in powers], axis=-1)


def phase_terms(x, y) -> np.ndarray:
    """``[sin^2(pi fx), sin^2(pi fy)]`` of the sub-pixel phase ``f = x - floor(x + 0.5)``: 0 for a
    star centred on a pixel, 1 for one on a pixel corner (where resampling blurs most)."""
    fx = np.asarray(x, float) - np.floor(np.asarray(x, float) + 0.5)
    fy = np.asarray(y, float) - np.floor(np.asarray(y, float) + 0.5)
    return np.column_stack([np.sin(np.pi * fx) ** 2, np.sin(np.pi * fy) ** 2])


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

    def stamps(self, x, y, size: int = CUTOUT_SIZE, resampled: bool = False) -> np.ndarray:
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
        terms = monomials(self.powers, self.origin, self.scale, x, y)
        if resampled and self.phase_images is not None:
            phase = self.phase_images[:, lo:lo + size, lo:lo + size].reshape(2, -1)
            basis = np.concatenate([basis, phase])
            terms = np.column_stack([terms, phase_terms(x, y)])
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
        ``J`` basis images once and combined per object with ``coef`` (:mod:`stargal.photo`).
        """
        x = np.atleast_1d(np.asarray(x, float)).ravel()
        y = np.atleast_1d(np.asarray(y, float)).ravel()
        basis = self.images
        coef = monomials(self.powers, self.origin, self.scale, x, y)
        if resampled and self.phase_images is not None:
            basis = np.concatenate([basis, self.phase_images])
            coef = np.column_stack([coef, phase_terms(x, y)])
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
            stamps = self.stamps(xs[lo:lo + 64], ys[lo:lo + 64], min(self.size, 21))
            out[lo:lo + 64] = half_max_area_fwhm(stamps)
        out *= self.pixel_scale
        if scalar or (np.ndim(x) == 0 and np.ndim(y) == 0):
            return float(out[0])
        return out.reshape(np.shape(x))

    def to_dict(self) -> dict:
        phase = None if self.phase_images is None else np.round(self.phase_images, 9).tolist()
        return {"band": self.band, "images": np.round(self.images, 9).tolist(),
                "powers": [list(map(int, p)) for p in self.powers],
                "origin": [float(v) for v in self.origin], "scale": [float(v) for v in self.scale],
                "shape": [int(v) for v in self.shape], "source": self.source,
                "n_stars": int(self.n_stars), "degree": int(self.degree),
                "pixel_scale": float(self.pixel_scale),
                "star_xy": np.round(np.asarray(self.star_xy, float), 4).tolist(), "note": self.note,
                "phase_images": phase}

    @classmethod
    def from_dict(cls, d: dict) -> "BandPSF":
        images = np.asarray(d["images"], dtype=np.float64)
        if (images.ndim != 3 or images.shape[1] != images.shape[2]
                or images.shape[0] != len(d["powers"])):
            raise ValueError(f"bad PSF basis images of shape {images.shape}")
        if d["source"] not in SOURCES:
            raise ValueError(f"unknown PSF source {d['source']!r}")
        phase = d.get("phase_images")
        return cls(d["band"], images, [tuple(p) for p in d["powers"]], tuple(d["origin"]),
                   tuple(d["scale"]), tuple(d["shape"]), d["source"], int(d["n_stars"]),
                   int(d["degree"]), float(d["pixel_scale"]),
                   np.asarray(d["star_xy"], float).reshape(-1, 2), d.get("note", ""),
                   None if phase is None else np.asarray(phase, dtype=np.float64))


def _check_size(size, stored: int) -> int:
    if (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1
            or size % 2 == 0):
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
    >>> a, b = psf2.stamps("g", [10.0], [20.0]), psf.stamps("g", [10.0], [20.0])
    >>> bool(np.allclose(a, b, atol=1e-8))
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
        parts = ", ".join(f"{b}: {m.source} n={m.n_stars} deg={m.degree}"
                          for b, m in self.models.items())
        return f"FieldPSF({self.fid!r}; {parts})"

    def _model(self, band: str) -> BandPSF:
        if band not in self.models:
            if band in BANDS:
                raise MissingBandError(self.fid, [band],
                                       "no PSF model: the field has no frame in this band")
            raise ValueError(f"unknown SDSS band {band!r}; expected one of {', '.join(BANDS)}")
        return self.models[band]

    def stamps(self, band: str, x, y, size: int = CUTOUT_SIZE, *,
               resampled: bool = False) -> np.ndarray:
        """PSF images at 0-based pixel positions of one band's frame.

        Parameters
        ----------
        band : str
        x, y : array-like, shape (n,)
            0-based positions in **that band's** frame.
        size : int, default=CUTOUT_SIZE
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

        Measured on the model stamp by :func:`stargal._imaging.half_max_area_fwhm` (area above
        half maximum).
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
    def gaussian(cls, fid, fwhm_arcsec, shape=FRAME_SHAPE, bands=BANDS, size=PSF_STAMP,
                 pixel_scale=PIXEL_SCALE_ARCSEC, note="") -> "FieldPSF":
        """A constant circular Gaussian PSF (``fwhm_arcsec``: a float or band -> float)."""
        f = fwhm_arcsec if isinstance(fwhm_arcsec, dict) else {b: fwhm_arcsec for b in bands}
        return cls(fid, {b: gaussian_band_psf(b, f[b] / pixel_scale / FWHM_PER_SIGMA, shape, size,
                                              pixel_scale, note) for b in bands})


def gaussian_band_psf(band, sigma_px, shape, size=PSF_STAMP, pixel_scale=PIXEL_SCALE_ARCSEC,
                      note="") -> BandPSF:
    """A constant circular Gaussian model of one band (sigma in pixels; ``source='gaussian'``)."""
    h = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size] - h
    img = np.exp(-0.5 * (xx**2 + yy**2) / sigma_px**2)
    img /= img.sum()
    ny, nx = shape
    origin, scale = frame_scaling(shape)
    return BandPSF(band, img[None], [(0, 0)], origin, scale, (int(ny), int(nx)), "gaussian", 0, 0,
                   float(pixel_scale), np.zeros((0, 2)), note)


def frame_scaling(shape):
    """Origin and scale mapping 0-based frame positions to ``x^, y^`` in [-1, 1]."""
    ny, nx = shape
    return ((nx - 1) / 2, (ny - 1) / 2), (max((nx - 1) / 2, 1), max((ny - 1) / 2, 1))
