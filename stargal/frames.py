"""A field's five calibrated frames, each with its own WCS, and their footprints on the sky.

:class:`Frame` (one band: image, WCS, sky statistics, pixel scale, "is this position on me"),
:class:`Field` (the five bands, loaded lazily from a decompressed cache), and the footprint
geometry built on :meth:`Frame.near`: :func:`in_footprints`, :func:`distance_to_footprint`,
:func:`footprint_overlap` and :func:`min_separation_arcsec` (RA/Dec in ICRS degrees).

An SDSS ``frame`` file holds a calibrated, sky-subtracted image in
**nanomaggies** (HDU0, ``float32``, 2048 x 1489) with a TAN WCS. The five bands of
one field are *not* pixel-aligned: each band must be mapped through its own WCS.

Decompressing ``.fits.bz2`` costs about a second per band, so the first load of a
frame writes a decompressed cache next to the fetcher's cache::

    <cache>/decompressed/<relative SAS path without .fits.bz2>.npy        float32 image
    <cache>/decompressed/<relative SAS path without .fits.bz2>.json       header + sky stats
    <cache>/decompressed/<relative SAS path without .fits.bz2>.calib.npz  HDU1 calibration, HDU2 sky level

Both are written to a temporary file and renamed atomically; later loads memory-map
the ``.npy`` (no decompression, no copy), which is what makes the second load of a
field cheap (``make bench`` reports the ratio). A process keeps the last
:data:`_FRAME_LIMIT` loaded frames (memory maps: page cache, not copies) and hands
them out again while their cache files are unchanged (same inode, size and mtime).

Pixel convention: **0-based** (``origin=0``): pixel ``(x, y)`` is ``image[y, x]`` and
the centre of the first pixel is ``(0, 0)``; a frame covers ``-0.5 <= x < nx - 0.5``.

Examples
--------
>>> field = open_field("8162-6-80", sas_url="file:///path/to/sdss")   # doctest: +SKIP
>>> x, y = field.frame("g").world_to_pixel([331.7], [26.9])           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ._imaging import frame_sky_noise
from ._io import atomic_write_bytes as _atomic_write_bytes
from ._validation import check_radec, is_real
from .fetch import NotFoundError, get_fetcher
from .sdss import BANDS, FieldID, frame_path

__all__ = [
    "Frame",
    "Field",
    "open_field",
    "MissingBandError",
    "calibration_path",
    "load_calibration",
    "read_frame_calibration",
    "decompressed_paths",
    "distance_to_footprint",
    "in_footprints",
    "footprint_overlap",
    "min_separation_arcsec",
]

_CACHE_VERSION = 1
_WCS_MEMO: OrderedDict = OrderedDict()  # (thread, sha1 of the header text) -> WCS
_WCS_MEMO_LIMIT = 256
_WCS_LOCK = threading.Lock()
_FRAMES: OrderedDict = OrderedDict()  # (cache files' paths and stat) -> Frame
_FRAME_LIMIT = 10  # two fields' bands
_FRAME_LOCK = threading.Lock()


class MissingBandError(FileNotFoundError):
    """A field lacks one or more of the requested band frames."""

    def __init__(self, fid, missing, detail=""):
        self.fid = str(fid)
        self.missing = tuple(missing)
        msg = f"field {self.fid} has no frame for band(s) {', '.join(self.missing)}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class Frame:
    """One band of one field: image (nanomaggies), WCS and sky statistics.

    The header is parsed and the WCS built **lazily**, on first access of :attr:`header` /
    :attr:`wcs` (building an astropy WCS costs ~3 ms per band; cutting cutouts at known pixel
    positions never needs it).

    Parameters
    ----------
    band : str
        ``'u'``, ``'g'``, ``'r'``, ``'i'`` or ``'z'``.
    image : numpy.ndarray
        ``(ny, nx)`` float32, usually a read-only memory map of the decompressed cache.
    wcs : astropy.wcs.WCS, optional
        Celestial WCS; built from ``header`` on first use when omitted.
    sky_median, sky_noise : float
        Robust median and standard deviation of the (sky-subtracted) image, nanomaggies
        (:func:`stargal._imaging.frame_sky_noise`).
    header : astropy.io.fits.Header or str, optional
        The frame's primary header (a string is parsed on first use).

    Attributes
    ----------
    band, image, sky_median, sky_noise
        As above.
    header : astropy.io.fits.Header
    wcs : astropy.wcs.WCS

    Examples
    --------
    >>> import numpy as np
    >>> f = Frame("r", np.zeros((3, 4), np.float32), sky_median=0.0, sky_noise=0.01,
    ...           header="SIMPLE  =                    T" + " " * 50)
    >>> f.shape
    (3, 4)
    """

    def __init__(self, band, image, wcs=None, sky_median=float("nan"), sky_noise=float("nan"),
                 header=None):
        self.band = band
        self.image = image
        self.sky_median = sky_median
        self.sky_noise = sky_noise
        self._wcs = wcs
        self._header = header

    def __repr__(self) -> str:
        return (f"Frame(band={self.band!r}, shape={self.shape}, sky_median={self.sky_median:.4g}, "
                f"sky_noise={self.sky_noise:.4g})")

    @property
    def header(self) -> fits.Header | None:
        """The frame's primary FITS header (parsed on first access)."""
        if isinstance(self._header, (str, bytes)):
            text = self._header.decode() if isinstance(self._header, bytes) else self._header
            self._header = fits.Header.fromstring(text)
        return self._header

    @header.setter
    def header(self, value) -> None:
        self._header = value

    @property
    def wcs(self) -> WCS:
        """Celestial WCS of this band's frame (built from the header on first access).

        A frame loaded from the cache keeps its header as text; the WCS built from a text is
        remembered per thread (astropy WCS objects are not shared between threads), so a frame
        read again -- every ``predict`` call reads its fields again -- does not rebuild it
        (about 8 ms a band).
        """
        if self._wcs is None:
            key = None
            if isinstance(self._header, (str, bytes)):
                text = self._header.encode() if isinstance(self._header, str) else self._header
                key = (threading.get_ident(), hashlib.sha1(text).hexdigest())
                with _WCS_LOCK:
                    self._wcs = _WCS_MEMO.get(key)
                if self._wcs is not None:
                    return self._wcs
            header = self.header
            if header is None:
                raise ValueError(f"Frame {self.band!r} has neither a WCS nor a header to build one from")
            with warnings.catch_warnings():
                # SDSS headers use the deprecated RADECSYS keyword; astropy fixes it and says so.
                warnings.simplefilter("ignore", FITSFixedWarning)
                self._wcs = WCS(header, naxis=2, relax=True)
            if key is not None:
                with _WCS_LOCK:
                    _WCS_MEMO[key] = self._wcs
                    while len(_WCS_MEMO) > _WCS_MEMO_LIMIT:
                        _WCS_MEMO.popitem(last=False)
        return self._wcs

    @wcs.setter
    def wcs(self, value) -> None:
        self._wcs = value

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape)

    def world_to_pixel(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """Sky (deg) -> 0-based pixel ``(x, y)`` of this band's frame."""
        x, y = self.wcs.all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0)
        return np.asarray(x, float), np.asarray(y, float)

    def pixel_to_world(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixel ``(x, y)`` -> sky ``(ra, dec)`` in degrees."""
        ra, dec = self.wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
        return np.asarray(ra, float), np.asarray(dec, float)

    def edge_distance(self, x, y) -> np.ndarray:
        """Distance (pixels) from 0-based pixel ``(x, y)`` to the nearest frame edge.

        Negative outside the frame (the frame covers ``-0.5 <= x <= nx - 0.5``); ``-inf`` for
        non-finite positions.

        Examples
        --------
        >>> import numpy as np
        >>> f = Frame("r", np.zeros((10, 20), np.float32))
        >>> f.edge_distance([0.0, 9.5, 25.0], [4.5, 4.5, 4.5]).tolist()
        [0.5, 5.0, -5.5]
        """
        ny, nx = self.shape
        x, y = np.asarray(x, float), np.asarray(y, float)
        with np.errstate(invalid="ignore"):
            d = np.minimum.reduce([x + 0.5, nx - 0.5 - x, y + 0.5, ny - 0.5 - y])
        return np.where(np.isfinite(d), d, -np.inf)

    def outside_distance(self, x, y) -> np.ndarray:
        """Distance (pixels) from 0-based pixel ``(x, y)`` to the frame: 0 on it, ``inf`` if not finite.

        Euclidean distance to the frame's rectangle ``-0.5 <= x <= nx - 0.5`` (same in y), so the
        positions within ``m`` pixels of a frame form the rectangle grown by ``m`` with rounded
        corners.

        Examples
        --------
        >>> import numpy as np
        >>> f = Frame("r", np.zeros((10, 20), np.float32))
        >>> f.outside_distance([5.0, 22.5, 22.5], [4.0, 4.0, 13.5]).tolist()
        [0.0, 3.0, 5.0]
        """
        ny, nx = self.shape
        x, y = np.asarray(x, float), np.asarray(y, float)
        with np.errstate(invalid="ignore"):
            dx = np.maximum(np.maximum(-0.5 - x, x - (nx - 0.5)), 0.0)
            dy = np.maximum(np.maximum(-0.5 - y, y - (ny - 0.5)), 0.0)
            d = np.hypot(dx, dy)
        return np.where(np.isfinite(d), d, np.inf)

    @property
    def pixel_scale(self) -> float:
        """Mean pixel side in arcsec, from the WCS (0.396" for SDSS frames)."""
        from astropy.wcs.utils import proj_plane_pixel_scales

        return float(np.mean(proj_plane_pixel_scales(self.wcs.celestial)) * 3600.0)

    def near(self, ra, dec, margin_arcsec: float = 0.0) -> np.ndarray:
        """True where sky ``(ra, dec)`` (degrees) lies on this frame or within ``margin_arcsec`` of it.

        Pixel space: the frame's WCS and :meth:`outside_distance` in pixels times
        :attr:`pixel_scale` (exact for the frame's TAN projection up to its ~1e-5 relative scale
        change across a frame). Points more than the frame's half-diagonal plus the margin plus
        1 degree from its centre are never projected (the tangent plane ends at 90 degrees).
        """
        ra, dec = np.atleast_1d(np.asarray(ra, float)), np.atleast_1d(np.asarray(dec, float))
        ny, nx = self.shape
        scale = self.pixel_scale
        cra, cdec = self.pixel_to_world((nx - 1) / 2, (ny - 1) / 2)
        reach = np.hypot(nx, ny) / 2 * scale / 3600 + margin_arcsec / 3600 + 1.0
        hit = np.zeros(ra.shape, dtype=bool)
        cand = np.flatnonzero(_separation_deg(ra, dec, float(cra), float(cdec)) <= reach)
        if cand.size:
            x, y = self.world_to_pixel(ra[cand], dec[cand])
            hit[cand] = self.outside_distance(x, y) * scale <= margin_arcsec
        return hit

    def inside(self, x, y, margin_pix: float = 0.0) -> np.ndarray:
        """True where 0-based pixel ``(x, y)`` lies at least ``margin_pix`` inside the frame.

        A negative ``margin_pix`` accepts positions up to ``-margin_pix`` pixels outside it.
        """
        return self.edge_distance(x, y) >= margin_pix


def _separation_deg(ra, dec, ra0: float, dec0: float) -> np.ndarray:
    """Great-circle distance (degrees) from ``(ra0, dec0)`` (haversine; exact at small angles)."""
    r = np.deg2rad
    h = (np.sin((r(dec) - r(dec0)) / 2) ** 2
         + np.cos(r(dec)) * np.cos(r(dec0)) * np.sin((r(ra) - r(ra0)) / 2) ** 2)
    return np.rad2deg(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def decompressed_paths(cache_dir: Path, relpath: str) -> tuple[Path, Path]:
    """``(.npy, .json)`` paths of a frame's decompressed cache (``relpath``: its SAS path).

    Other per-field caches (registration, PSF) are kept beside them.
    """
    stem = relpath[: -len(".fits.bz2")] if relpath.endswith(".fits.bz2") else relpath
    base = Path(cache_dir) / "decompressed" / stem
    return base.with_name(base.name + ".npy"), base.with_name(base.name + ".json")


def calibration_path(cache_dir: Path, relpath: str) -> Path:
    """Where a frame's calibration vector and sky level are cached (beside its decompressed image)."""
    npy, _ = decompressed_paths(cache_dir, relpath)
    return npy.with_name(npy.name[: -len(".npy")] + ".calib.npz")


def _calibration(hdul):
    """``(calib, sky_counts)`` of an open frame: HDU1 (nanomaggies per count, one per column) and the
    median of HDU2's ``ALLSKY`` grid (counts; NaN without one); ``(None, nan)`` when HDU1 is absent."""
    try:
        calib = np.asarray(hdul[1].data, dtype=np.float64).ravel() if len(hdul) > 1 else None
    except (TypeError, ValueError):
        calib = None
    sky = float("nan")
    try:
        if len(hdul) > 2 and hdul[2].data is not None and "ALLSKY" in (hdul[2].columns.names or []):
            sky = float(np.median(hdul[2].data["ALLSKY"][0]))
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        pass
    return (calib if calib is not None and calib.size else None), sky


def _save_calibration(path: Path, calib, sky_counts) -> None:
    """Cache ``(calib, sky_counts)`` atomically (optional: a failed write only costs a re-read)."""
    try:
        _atomic_write_bytes(path, lambda fh: np.savez(fh, calib=np.asarray(calib, np.float64),
                                                      sky_counts=np.float64(sky_counts)))
    except OSError:
        pass


def load_calibration(fetcher, relpath: str) -> tuple[np.ndarray, float]:
    """``(calib, sky_counts)`` of a frame: from its ``.calib.npz`` beside the decompressed cache,
    else (frames decompressed before that file existed, or an unreadable copy) read from the frame
    through ``fetcher.read`` (self-healing) and cached."""
    path = calibration_path(fetcher.cache_dir, relpath)
    if path.exists():
        try:
            with np.load(path) as z:
                return np.asarray(z["calib"], np.float64), float(z["sky_counts"])
        except (OSError, ValueError, KeyError):
            pass  # unreadable: read the frame again below and overwrite it
    calib, sky = fetcher.read(relpath, read_frame_calibration)
    _save_calibration(path, calib, sky)
    return calib, sky


def read_frame_calibration(path) -> tuple[np.ndarray, float]:
    """``(calib, sky_counts)`` of a frame file (see :func:`_calibration`); ValueError without HDU1."""
    with fits.open(path, memmap=False) as hdul:
        calib, sky = _calibration(hdul)
    if calib is None:
        raise ValueError(f"{path}: no calibration vector in HDU1")
    return calib, sky


def _read_frame_file(path) -> tuple[fits.Header, np.ndarray, tuple]:
    """Primary header, float32 image and ``(calib, sky_counts)`` of a frame file (decompresses all of it)."""
    with fits.open(path, memmap=False) as hdul:
        header = hdul[0].header
        data = hdul[0].data
        if data is None or data.ndim != 2:
            raise ValueError(f"{path}: HDU 0 holds no 2-D image")
        image = np.ascontiguousarray(data, dtype=np.float32)
        calibration = _calibration(hdul)
    return header, image, calibration


def load_frame(fid: FieldID | str, band: str, fetcher=None, *, sas_url=None, cache_dir=None) -> Frame:
    """Load one band's frame, using (and filling) the decompressed cache.

    Raises
    ------
    MissingBandError
        The frame file does not exist at the source (HTTP 404 / missing file).
    stargal.fetch.CorruptFileError
        The frame cannot be read even after removing the cached copy and fetching it again.
    """
    fid = FieldID.parse(fid)
    fetcher = get_fetcher(fetcher, sas_url=sas_url, cache_dir=cache_dir)
    rel = frame_path(fid, band)
    npy, meta_path = decompressed_paths(fetcher.cache_dir, rel)
    key = _frame_key(npy, meta_path)
    if key is not None:
        with _FRAME_LOCK:
            if key in _FRAMES:
                _FRAMES.move_to_end(key)
                return _FRAMES[key]
    meta = None
    if npy.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("version") != _CACHE_VERSION:
                meta = None
            image = np.load(npy, mmap_mode="r")
            if meta is not None and list(image.shape) != meta["shape"]:
                meta = None
        except (ValueError, OSError, KeyError):
            meta = None
    if meta is None:
        try:
            # a cached .fits.bz2 that cannot be read is named in a warning, removed and fetched again
            header, image, (calib, sky_counts) = fetcher.read(rel, _read_frame_file)
        except NotFoundError as exc:
            raise MissingBandError(fid, [band], str(exc)) from exc
        sky_median, sky_noise = frame_sky_noise(image)
        meta = {
            "version": _CACHE_VERSION,
            "relpath": rel,
            "band": band,
            "shape": list(image.shape),
            "header": header.tostring(),
            "sky_median": sky_median,
            "sky_noise": sky_noise,
        }
        _atomic_write_bytes(npy, lambda fh: np.save(fh, image, allow_pickle=False))
        if calib is not None:  # kept for stargal.inject's Poisson noise: saves decompressing the frame again
            _save_calibration(calibration_path(fetcher.cache_dir, rel), calib, sky_counts)
        _atomic_write_bytes(meta_path, lambda fh: fh.write(json.dumps(meta).encode()))
        image = np.load(npy, mmap_mode="r")
    # header parsing and WCS construction are deferred to first use (Frame.header / Frame.wcs)
    frame = Frame(band, image, None, float(meta["sky_median"]), float(meta["sky_noise"]), meta["header"])
    key = _frame_key(npy, meta_path)
    if key is not None:
        with _FRAME_LOCK:
            _FRAMES[key] = frame
            while len(_FRAMES) > _FRAME_LIMIT:
                _FRAMES.popitem(last=False)
    return frame


def _frame_key(npy: Path, meta_path: Path):
    """What identifies a decompressed frame's cache files as they are now (paths, inodes, sizes,
    mtimes), or None when one is missing: a rewritten or damaged file is a new key."""
    try:
        a, b = npy.stat(), meta_path.stat()
    except OSError:
        return None
    return (str(npy), a.st_ino, a.st_size, a.st_mtime_ns, str(meta_path), b.st_ino, b.st_size, b.st_mtime_ns)


class Field:
    """The five band frames of one SDSS field, loaded lazily.

    Parameters
    ----------
    fid : FieldID or str
        ``'8162-6-80'`` or a :class:`~stargal.sdss.FieldID`.
    fetcher : Fetcher, optional
        Where frames come from; default built from ``sas_url`` / ``cache_dir`` /
        ``STARGAL_SAS_URL`` / ``STARGAL_CACHE``.
    bands : sequence of str
        Bands this field must provide (default all five).

    Examples
    --------
    >>> f = Field("8162-6-80", sas_url="file:///data/sdss")      # doctest: +SKIP
    >>> f.contains([331.7], [26.9], margin_pix=7)                  # doctest: +SKIP
    array([ True])
    """

    def __init__(self, fid, fetcher=None, *, bands=BANDS, sas_url=None, cache_dir=None):
        self.fid = FieldID.parse(fid)
        self.fetcher = get_fetcher(fetcher, sas_url=sas_url, cache_dir=cache_dir)
        self.bands = tuple(bands)
        self._frames: dict[str, Frame] = {}

    def __repr__(self) -> str:
        return f"Field({str(self.fid)!r}, loaded={sorted(self._frames)})"

    @property
    def name(self) -> str:
        return str(self.fid)

    def frame(self, band: str) -> Frame:
        """The frame of one band (loaded on first use)."""
        if band not in self._frames:
            self._frames[band] = load_frame(self.fid, band, self.fetcher)
        return self._frames[band]

    def frames(self) -> dict[str, Frame]:
        """All requested bands; a missing band raises :class:`MissingBandError` naming all missing."""
        missing = []
        for band in self.bands:
            try:
                self.frame(band)
            except MissingBandError:
                missing.append(band)
        if missing:
            raise MissingBandError(self.fid, missing)
        return {b: self._frames[b] for b in self.bands}

    def release(self) -> None:
        """Drop the loaded frames (memory maps) so memory stays bounded across fields."""
        self._frames.clear()

    def footprint(self, band: str = "r") -> np.ndarray:
        """Sky corners of one band's frame: ``(4, 2)`` array of ``(ra, dec)`` degrees.

        Corners are the outer pixel edges (0-based ``-0.5`` and ``n - 0.5``), in order
        (x0,y0), (x1,y0), (x1,y1), (x0,y1).
        """
        fr = self.frame(band)
        ny, nx = fr.shape
        xs = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
        ys = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
        ra, dec = fr.pixel_to_world(xs, ys)
        return np.column_stack([ra, dec])

    def pixel_positions(self, ra, dec) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """0-based ``(x, y)`` of each coordinate in every band, each from its own WCS."""
        return {b: f.world_to_pixel(ra, dec) for b, f in self.frames().items()}

    def edge_distance(self, ra, dec) -> np.ndarray:
        """Smallest distance (pixels) from each position to any band's frame edge (negative outside)."""
        ra, dec = np.atleast_1d(ra), np.atleast_1d(dec)
        dist = np.full(ra.shape, np.inf)
        for fr in self.frames().values():
            dist = np.minimum(dist, fr.edge_distance(*fr.world_to_pixel(ra, dec)))
        return dist

    def contains(self, ra, dec, margin_pix: float = 0.0) -> np.ndarray:
        """True where the coordinate lies at least ``margin_pix`` inside **every** band's frame."""
        return self.edge_distance(ra, dec) >= margin_pix


def open_field(fid, fetcher=None, *, bands=BANDS, sas_url=None, cache_dir=None) -> Field:
    """Open a field, checking that every requested band exists (:class:`MissingBandError` if not)."""
    field = Field(fid, fetcher, bands=bands, sas_url=sas_url, cache_dir=cache_dir)
    field.frames()
    return field


# ----------------------------------------------------------------------------- footprints
# Whether sky positions lie on a frame (or within a margin of it), decided in that frame's pixels
# through its own WCS (Frame.near): the margin in arcsec is converted with the frame's pixel
# scale, and the frame grown by the margin has rounded corners (Euclidean pixel distance). A
# *footprint* is a Frame, or a Field (its r frame).

def _check_margin(margin_arcsec):
    if not is_real(margin_arcsec) or margin_arcsec < 0:
        raise ValueError(f"margin_arcsec must be a finite number >= 0, got {margin_arcsec!r}")
    return float(margin_arcsec)


def _frames(footprints):
    """Normalise to a list of frames: a :class:`Frame`, a :class:`Field` (its r frame), or a
    sequence / mapping of these."""
    if hasattr(footprints, "world_to_pixel") and hasattr(footprints, "outside_distance"):
        return [footprints]
    if hasattr(footprints, "frame") and callable(footprints.frame):
        return [footprints.frame("r")]
    if isinstance(footprints, dict):
        footprints = list(footprints.values())
    if isinstance(footprints, (list, tuple)):
        return [f for item in footprints for f in _frames(item)]
    raise TypeError(
        "footprints must be frames (stargal.frames.Frame), fields (stargal.frames.Field: their r "
        f"frame) or a sequence of them; got {type(footprints).__name__}")


def distance_to_footprint(ra, dec, footprint):
    """Angular distance (arcsec) from each point to a frame; 0 on it.

    Measured in the frame's pixels (:meth:`~stargal.frames.Frame.outside_distance` times its
    pixel scale); ``inf`` for points the frame's tangent plane cannot hold (90 degrees away).

    Parameters
    ----------
    ra, dec : array-like of float, shape (n,)
        Degrees.
    footprint : stargal.frames.Frame or stargal.frames.Field
        The frame (a field: its r frame).

    Returns
    -------
    ndarray of float, shape (n,)
    """
    ra, dec = check_radec(ra, dec)
    (frame,) = _frames(footprint)
    return frame.outside_distance(*frame.world_to_pixel(ra, dec)) * frame.pixel_scale


def in_footprints(ra, dec, footprints, margin_arcsec=0.0):
    """True for points on any frame or within ``margin_arcsec`` of one (pixel space, its WCS).

    Parameters
    ----------
    ra, dec : array-like of float, shape (n,)
        Degrees; non-finite values are an error.
    footprints : Frame, Field or sequence / mapping of them
        :class:`Frame` objects, or :class:`Field` objects (their r frame is used).
    margin_arcsec : float, default=0.0

    Returns
    -------
    ndarray of bool, shape (n,)
        :func:`stargal.split.exclude_fields` returns the complement for a table.

    Examples
    --------
    >>> from astropy.wcs import WCS
    >>> wcs = WCS(naxis=2); wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]; wcs.wcs.crval = [0.0, 0.0]
    >>> wcs.wcs.cdelt = [-0.1 / 3600, 0.1 / 3600]; wcs.wcs.crpix = [3600.5, 3600.5]  # 0.2 deg
    >>> frame = Frame("r", np.zeros((7200, 7200), np.float32), wcs=wcs)      # straddles RA 0
    >>> in_footprints([0.0, 0.105, 10.0], [0.0, 0.0, 0.0], frame, margin_arcsec=20.0).tolist()
    [True, True, False]
    """
    ra, dec = check_radec(ra, dec)
    margin = _check_margin(margin_arcsec)
    hit = np.zeros(len(ra), dtype=bool)
    for frame in _frames(footprints):
        hit |= frame.near(ra, dec, margin)
    return hit


def footprint_overlap(frame_a, frame_b, margin_arcsec=0.0, step_pix=1.0):
    """Whether two frames overlap, or come within ``margin_arcsec`` of each other.

    Two convex frames overlap (or come within the margin) exactly when a point of one's boundary
    lies on (or within the margin of) the other; the boundaries are sampled every ``step_pix``
    pixels, so the answer is exact to ``step_pix / 2`` pixels.

    Parameters
    ----------
    frame_a, frame_b : stargal.frames.Frame or stargal.frames.Field
    margin_arcsec : float, default=0.0
    step_pix : float, default=1.0

    Returns
    -------
    bool
    """
    margin = _check_margin(margin_arcsec)
    (fa,) = _frames(frame_a)
    (fb,) = _frames(frame_b)
    for one, other in ((fa, fb), (fb, fa)):
        ny, nx = one.shape
        xs = np.arange(-0.5, nx - 0.5 + step_pix, step_pix).clip(max=nx - 0.5)
        ys = np.arange(-0.5, ny - 0.5 + step_pix, step_pix).clip(max=ny - 0.5)
        bx = np.r_[xs, xs, np.full(ys.size, -0.5), np.full(ys.size, nx - 0.5)]
        by = np.r_[np.full(xs.size, -0.5), np.full(xs.size, ny - 0.5), ys, ys]
        ra, dec = one.pixel_to_world(bx, by)
        if other.near(ra, dec, margin).any():
            return True
    return False


def min_separation_arcsec(ra1, dec1, ra2, dec2):
    """Smallest angular separation (arcsec) between any object of set 1 and any of set 2.

    Uses astropy's ``match_coordinates_sky`` (a KD-tree): an independent check that two
    splits share no object. Returns ``inf`` when either set is empty.

    Examples
    --------
    >>> round(float(min_separation_arcsec([0.0], [0.0], [0.0, 1.0], [1 / 3600, 0.0])), 6)
    1.0
    """
    ra1, dec1 = check_radec(ra1, dec1)
    ra2, dec2 = check_radec(ra2, dec2)
    if len(ra1) == 0 or len(ra2) == 0:
        return float("inf")
    from astropy import units as u
    from astropy.coordinates import SkyCoord, match_coordinates_sky

    c1 = SkyCoord(ra1 * u.deg, dec1 * u.deg)
    c2 = SkyCoord(ra2 * u.deg, dec2 * u.deg)
    if len(ra2) == 1:
        return float(c1.separation(c2[0]).arcsec.min())
    _, sep, _ = match_coordinates_sky(c1, c2)
    return float(sep.arcsec.min())
