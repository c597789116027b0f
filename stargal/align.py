"""Find each object's field and its pixel position in every band's own frame.

The five band frames of an SDSS field are **not** pixel-aligned (the bands are exposed at
different times as the sky drifts across the camera): the same star sits several pixels
apart in the u and z frames. :class:`Aligner` maps every object's RA/Dec through *each
band's own WCS*, so that :class:`stargal.cutouts.Cutter` can resample each band so that the
object lands exactly on the central pixel of all five bands.

Pixel positions are **0-based** (astropy ``origin=0``): ``(x, y)`` is column ``x``, row ``y``
of ``image[y, x]`` and the centre of the first pixel is ``(0, 0)``.

Registration refinement (``Aligner(refine=True)``, the default)
---------------------------------------------------------------
SDSS's per-band astrometric solutions disagree with r by up to ~0.25 px (0.1"): g, for
instance, is offset by about -0.1 px in y in every study field. :func:`field_registration`
finds bright, isolated, unsaturated point sources in the field's own frames (no catalog),
measures each band's centroid offset from where its WCS puts them, and fits a
:class:`Registration` per band (median offset plus a smooth local term); the Aligner adds it
to every band's WCS position (r, the reference, is unchanged). It is measured once per field
and cached as a small JSON file beside the decompressed frames. Held-out residuals on the
study fields: ``python -m experiments.alignment`` (``alignment_residuals.csv``).

Flags (column ``flag``; ``''`` when the row is fine):

``'invalid_coord'``
    RA/Dec is NaN, infinite, not a number or out of range (RA in [0, 360), Dec in [-90, 90]).
``'outside'``
    The object lies on no band's frame of any candidate field (or of its explicit field).
``'edge'``
    The object is on a field but closer than :attr:`Aligner.edge_margin_` pixels to the edge of
    (or beyond) at least one band's frame, so a full cutout (plus the interpolation kernel)
    does not fit in every band.
``'missing_band'``
    The object's field lacks at least one band's frame (e.g. the real field 1006-6-11 has no
    i frame); the positions of the bands that exist are still filled in.
``'no_frames'``
    (``fields='window'`` only) SDSS's ``window_flist`` lists a field holding the object, but
    the SAS has none of that field's frames.

With ``policy='raise'`` any flagged row raises (:class:`AlignmentError`, a ``ValueError``;
for missing bands :class:`MissingBandAlignmentError`, which is also a
:class:`~stargal.frames.MissingBandError`; for bad coordinates
:class:`~stargal.catalogs.CoordinateError`), naming the first 10 offending rows.
With ``policy='flag'`` rows are kept and flagged. Rows are never dropped, added or reordered;
the index is preserved.

Examples
--------
>>> from stargal.align import Aligner
>>> aligner = Aligner(fields=["8162-6-80"], policy="flag")              # doctest: +SKIP
>>> table = aligner.fit_transform({"ra": [331.70], "dec": [26.95]})     # doctest: +SKIP
>>> table[["field_id", "x_r", "y_r", "x_g", "y_g", "flag"]]              # doctest: +SKIP
"""

from __future__ import annotations

import json
import threading
import warnings
from numbers import Integral
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .catalogs import CoordinateError, read_coordinates
from .fetch import get_fetcher
from ._io import atomic_write_bytes
from .frames import Field, MissingBandError, _decompressed_paths
from .sdss import BANDS, FieldID, frame_path

__all__ = [
    "Aligner",
    "WINDOW",
    "MAX_WINDOW_CANDIDATES",
    "AlignmentError",
    "MissingBandAlignmentError",
    "FLAGS",
    "INTERPOLATION_MARGIN",
    "aligned_columns",
    "edge_margin",
    "Registration",
    "field_registration",
    "find_reference_stars",
    "REGISTRATION_VERSION",
    "REFERENCE_CRITERIA",
]

#: The values the ``flag`` column can take besides ``''``.
FLAGS = ("outside", "edge", "missing_band", "no_frames", "invalid_coord")

#: ``Aligner(fields=WINDOW)``: look each object's field up in SDSS's ``window_flist``
#: (:mod:`stargal.window`) instead of searching a list of fields.
WINDOW = "window"
#: How many of the index's fields holding an object are opened to confirm with their WCS.
MAX_WINDOW_CANDIDATES = 3

#: Extra edge margin (pixels) beyond the cutout half-width: the Lanczos-3 kernel reaches 3 px
#: beyond the outermost output pixel and the integer base pixel is the rounded position (+0.5).
INTERPOLATION_MARGIN = 3.5

_POLICIES = ("raise", "flag")
# flag of a row by "level": -2 on no band's frame, -1 in the window index's box of a field that has
# no frames at all, 0 on an incomplete field, 1 near an edge, 2 fine (index: level + 2)
_LEVEL_FLAGS = np.array(["outside", "no_frames", "missing_band", "edge", ""], dtype=object)
_FIELD_COLS = ("run", "camcol", "field")


class AlignmentError(ValueError):
    """Rows that cannot be aligned under ``policy='raise'``; the message lists them."""


class MissingBandAlignmentError(MissingBandError, AlignmentError):
    """Objects fall on a field that lacks one or more band frames (``policy='raise'``)."""


def aligned_columns(bands=BANDS) -> list[str]:
    """Columns the :class:`Aligner` adds: ``field_id, x_u, y_u, ..., x_z, y_z, flag``."""
    cols = ["field_id"]
    for b in bands:
        cols += [f"x_{b}", f"y_{b}"]
    return cols + ["flag"]


def edge_margin(cutout_size: int) -> float:
    """Minimum distance (pixels) from every band's frame edge for a full interpolated cutout.

    ``(cutout_size - 1) / 2 + INTERPOLATION_MARGIN``; e.g. 10.5 px for 15 x 15 cutouts.
    """
    return (cutout_size - 1) / 2 + INTERPOLATION_MARGIN


def _as_table(X) -> pd.DataFrame:
    """Accept a DataFrame, a dict of columns or an ``(n, 2)`` array of ``(ra, dec)``."""
    if isinstance(X, pd.DataFrame):
        return X
    if isinstance(X, dict):
        return pd.DataFrame(X)
    if isinstance(X, (str, bytes)) or hasattr(X, "__fspath__"):
        raise TypeError(
            "Aligner expects a table (DataFrame, dict or (n, 2) array), not a path; "
            "read the file with stargal.catalogs.read_coordinates first"
        )
    arr = np.asarray(X, dtype=object)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise CoordinateError(
            f"Aligner expects a DataFrame with 'ra' and 'dec' columns or an (n, 2) array of "
            f"(ra, dec) in degrees; got an array of shape {arr.shape}"
        )
    return pd.DataFrame({"ra": arr[:, 0], "dec": arr[:, 1]})


def _coordinate_columns(table: pd.DataFrame) -> tuple:
    lower = {str(c).strip().lower(): c for c in table.columns}
    missing = [c for c in ("ra", "dec") if c not in lower]
    if missing:
        raise CoordinateError(
            f"Aligner input lacks column(s) {missing}; found {list(table.columns)} "
            "(expected 'ra' and 'dec' in degrees, ICRS)"
        )
    return lower["ra"], lower["dec"]


def _coordinates(table: pd.DataFrame, policy: str):
    """``(ra, dec, invalid)``; with ``policy='raise'`` bad rows raise :class:`CoordinateError`."""
    ra_col, dec_col = _coordinate_columns(table)
    ra = pd.to_numeric(table[ra_col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    dec = pd.to_numeric(table[dec_col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        invalid = ~(np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra < 360) & (dec >= -90) & (dec <= 90))
    if policy == "raise" and invalid.any():
        # Same checks and message as the catalog reader (it names the rows and reasons).
        read_coordinates(table[[ra_col, dec_col]], ra=str(ra_col), dec=str(dec_col))
        rows = list(table.index[invalid])
        raise CoordinateError(f"invalid coordinates in {len(rows)} row(s): {rows[:10]}")
    return ra, dec, invalid


def _explicit_fields(table: pd.DataFrame, invalid: np.ndarray) -> np.ndarray:
    """Per row, the canonical field string from ``run``/``camcol``/``field`` ('' if absent)."""
    out = np.full(len(table), "", dtype=object)
    lower = {str(c).strip().lower(): c for c in table.columns}
    if not all(c in lower for c in _FIELD_COLS):
        return out
    vals = np.column_stack([
        pd.to_numeric(table[lower[c]], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        for c in _FIELD_COLS
    ])
    ok = np.isfinite(vals).all(axis=1) & ~invalid
    if not ok.any():
        return out
    combos, inverse = np.unique(vals[ok].astype(np.int64), axis=0, return_inverse=True)
    names = []
    for run, camcol, fld in combos:
        try:
            names.append(str(FieldID(int(run), int(camcol), int(fld))))
        except ValueError as exc:
            raise ValueError(f"Aligner input has an invalid run/camcol/field: {exc}") from None
    out[np.flatnonzero(ok)] = np.asarray(names, dtype=object)[inverse.ravel()]
    return out


def _check_fields_param(fields):
    if fields is None:
        return None
    if isinstance(fields, str) and fields.strip().lower() == WINDOW:
        return WINDOW
    if isinstance(fields, (str, FieldID)):
        fields = [fields]
    try:
        items = list(fields)
    except TypeError:
        raise ValueError(f"Aligner: fields must be None or a list of field strings such as "
                         f"['8162-6-80'], got {fields!r}") from None
    if not items:
        raise ValueError("Aligner: fields is an empty list; pass None or at least one field")
    canon = []
    for f in items:
        try:
            canon.append(str(FieldID.parse(f)))
        except ValueError as exc:
            raise ValueError(f"Aligner: bad entry in fields: {exc}") from None
    return tuple(dict.fromkeys(canon))


def _default_fields() -> tuple | None:
    try:
        from .config import load_config
    except ImportError:
        return None
    try:
        return tuple(load_config().all_fields)
    except Exception:  # noqa: BLE001 - a broken/missing default config just means "no default"
        return None


def _describe(table, ra, dec, rows, reasons) -> str:
    parts = []
    for i in rows[:10]:
        parts.append(f"row {table.index[i]!r} (ra={ra[i]:.6f}, dec={dec[i]:.6f}): {reasons[i]}")
    more = f"; ... and {len(rows) - 10} more" if len(rows) > 10 else ""
    return "; ".join(parts) + more


# ----------------------------------------------------------------------------- registration
# SDSS's per-band astrometry (each band's WCS) is good to ~0.05-0.1" (0.1-0.25 px) relative to r:
# the g frame, for instance, is offset by about -0.1 px in y in every study field. The
# refinement measures these offsets on bright isolated point sources found in the frames
# themselves (no catalog: prediction on arbitrary coordinates has none) and corrects the
# per-band positions. See :func:`find_reference_stars` and :class:`Registration`.

#: Version of the registration method (detection, measurement, model); part of the cache key.
REGISTRATION_VERSION = 3

#: Reference-star selection (see :func:`find_reference_stars`).
REFERENCE_CRITERIA = {
    "min_peak_snr": 20.0,      # r peak pixel / sky noise (of 50, 30, 20: 20 best held out)
    "isolation_px": 10,        # no brighter pixel within this many pixels (square window)
    "neighbour_snr": 10.0,     # ... and no other local maximum above this S/N
    "neighbour_frac": 0.01,    # ... and above this fraction of the peak within isolation_px
    "edge_px": 12.0,           # from the r frame's edges
    "band_edge_px": 8.0,       # from each band's frame edges
    "max_peak_dn": 10000.0,    # saturation / non-linearity guard (peak counts, needs NMGY)
    "size_tol": 0.15,          # |windowed size / field median - 1|: point-like
    "min_band_snr": 20.0,      # aperture (r = 3 px) S/N for a band's centroid to be used
}
#: Fewer usable reference stars than this in a band: no correction for that band.
MIN_REFERENCES = 5
#: Gaussian kernel scale (pixels) of the local term of the offset model; ``None``: constant only.
LOCAL_SCALE_PX = 200.0
#: Weight of the field-wide constant against the kernel-weighted neighbours (shrinkage).
LOCAL_PRIOR = 0.5
_STAMP = 15
_AP_RADIUS = 3.0
_MAX_OFFSET_PX = 1.0  # references farther than this from the band's median offset are never used
_MIN_CLIP_PX = 0.15   # ... nor farther than max(5 x their median distance, this)
_MEMO: dict = {}
_MEMO_LOCK = threading.Lock()


_REFERENCE_COLUMNS = ("x_r", "y_r", "peak_snr", "size") + tuple(
    f"{c}_{b}" for b in BANDS for c in ("dx", "dy", "snr", "ok", "flux"))


def _empty_references() -> pd.DataFrame:
    cols = {"x_r": [], "y_r": [], "peak_snr": [], "size": []}
    for b in BANDS:
        cols.update({f"dx_{b}": [], f"dy_{b}": [], f"snr_{b}": [], f"ok_{b}": [], f"flux_{b}": []})
    table = pd.DataFrame({k: np.asarray(v, dtype=float) for k, v in cols.items()})
    for b in BANDS:
        table[f"ok_{b}"] = table[f"ok_{b}"].astype(bool)
    return table


def _background(stamps: np.ndarray) -> np.ndarray:
    border = np.concatenate([stamps[:, 0, :], stamps[:, -1, :], stamps[:, 1:-1, 0], stamps[:, 1:-1, -1]], axis=1)
    return np.median(border, axis=1)


def _windowed_size(stamps: np.ndarray, cx: np.ndarray, cy: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Gaussian-windowed second-moment radius (pixels) about ``(cx, cy)`` (offsets from the centre)."""
    n, hh, ww = stamps.shape
    img = stamps.astype(np.float64) - _background(stamps)[:, None, None]
    yy = np.arange(hh, dtype=np.float64)[None, :, None] - (hh - 1) / 2 - cy[:, None, None]
    xx = np.arange(ww, dtype=np.float64)[None, None, :] - (ww - 1) / 2 - cx[:, None, None]
    r2 = xx**2 + yy**2
    w = np.exp(-0.5 * r2 / sigma**2) * img
    with np.errstate(invalid="ignore", divide="ignore"):
        m2 = (w * r2).sum(axis=(1, 2)) / w.sum(axis=(1, 2))
    return np.sqrt(np.where(m2 > 0, m2 / 2, np.nan))


def _aperture(size: int) -> np.ndarray:
    h = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size]
    return np.hypot(xx - h, yy - h) <= _AP_RADIUS


def _aperture_flux(stamps: np.ndarray) -> np.ndarray:
    """Background-subtracted flux within ``_AP_RADIUS`` px of the stamp centre."""
    ap = _aperture(stamps.shape[-1])
    return ((stamps - _background(stamps)[:, None, None]) * ap).sum(axis=(1, 2), dtype=np.float64)


def _peak_dn(frame, stamps: np.ndarray) -> np.ndarray:
    """Peak counts (DN) near the centre of raw stamps; NaN when the header has no ``NMGY``."""
    header = frame.header
    nmgy = header.get("NMGY") if header is not None else None
    c = (stamps.shape[-1] - 1) // 2
    peak = stamps[:, c - 1:c + 2, c - 1:c + 2].max(axis=(1, 2))
    if not nmgy or not np.isfinite(nmgy) or nmgy <= 0:
        return np.full(len(stamps), np.nan)
    return peak / float(nmgy)


def find_reference_stars(field: Field) -> pd.DataFrame:
    """Bright, isolated, unsaturated point sources of a field and their per-band offsets.

    Detection is done in the **r frame's pixels** (no catalog): local maxima with peak
    S/N > 20 (sky noise :attr:`~stargal.frames.Frame.sky_noise`), no brighter pixel within
    10 px and no other local maximum above 10 sigma and 1 % of the peak within 10 px, at least
    12 px from the r frame's edges, peak below 10,000 counts (saturation guard, from the
    header's ``NMGY`` nanomaggies per count; skipped without it) and a windowed second-moment
    size within 15 % of the field's median (point-like: galaxies and saturated cores are
    larger). Criteria: :data:`REFERENCE_CRITERIA`.

    The r position is the windowed centroid (:func:`stargal.cutouts.centroid_offsets`) of the
    raw pixels. It is mapped through r's WCS to the sky and through each band's WCS into that
    band; the band's own windowed centroid minus that prediction is the band's offset.

    Parameters
    ----------
    field : stargal.frames.Field

    Returns
    -------
    pandas.DataFrame
        One row per reference star: ``x_r, y_r`` (0-based r-frame pixels), ``peak_snr``,
        ``size`` (px), and per band ``dx_<b>, dy_<b>`` (pixels, measured centroid minus the
        WCS prediction from the r position; 0 for r), ``snr_<b>`` (aperture S/N) and ``ok_<b>``
        (usable: inside the band's frame, S/N > 20, unsaturated, centroid converged) and
        ``flux_<b>`` (background-subtracted flux in a 3 px radius aperture, nanomaggies; for
        colours, e.g. differential chromatic refraction studies).
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    from .cutouts import centroid_offsets, resample_stamps

    crit = REFERENCE_CRITERIA
    try:
        r = field.frame("r")
    except MissingBandError:
        return _empty_references()
    img = np.asarray(r.image, dtype=np.float32)
    noise = float(r.sky_noise)
    if not np.isfinite(noise) or noise <= 0:
        return _empty_references()
    ny, nx = img.shape
    iso = int(crit["isolation_px"])
    finite = np.where(np.isfinite(img), img, -np.inf).astype(np.float32)
    big = ndimage.maximum_filter(finite, size=2 * iso + 1, mode="nearest")
    py, px = np.nonzero((finite == big) & (finite > crit["min_peak_snr"] * noise))
    e = crit["edge_px"]
    keep = (px >= e) & (px <= nx - 1 - e) & (py >= e) & (py <= ny - 1 - e)
    px, py = px[keep], py[keep]
    if px.size == 0:
        return _empty_references()
    peaks = finite[py, px]
    # fainter neighbours: other local maxima (5 x 5) that are significant within `iso` px
    small = ndimage.maximum_filter(finite, size=5, mode="nearest")
    ly, lx = np.nonzero((finite == small) & (finite > crit["neighbour_snr"] * noise))
    lval = finite[ly, lx]
    tree = cKDTree(np.column_stack([lx, ly]).astype(float))
    isolated = np.ones(px.size, dtype=bool)
    for i, near in enumerate(tree.query_ball_point(np.column_stack([px, py]).astype(float), r=iso)):
        near = np.asarray(near, dtype=int)
        others = near[(lx[near] != px[i]) | (ly[near] != py[i])]
        isolated[i] = not np.any(lval[others] > crit["neighbour_frac"] * peaks[i])
    px, py, peaks = px[isolated], py[isolated], peaks[isolated]
    if px.size == 0:
        return _empty_references()

    stamps = resample_stamps(img, px.astype(float), py.astype(float), _STAMP, "nearest")
    cen = centroid_offsets(stamps[:, None])[:, 0]
    ok = np.isfinite(cen).all(axis=1)
    cen = np.where(np.isfinite(cen), cen, 0.0)
    size = _windowed_size(stamps, cen[:, 0], cen[:, 1])
    ok &= np.isfinite(size)
    dn = _peak_dn(r, stamps)
    ok &= ~(dn >= crit["max_peak_dn"])  # NaN (no NMGY): no guard
    if ok.any():
        ok &= np.abs(size / np.median(size[ok]) - 1) < crit["size_tol"]
    if not ok.any():
        return _empty_references()
    x_r = px[ok] + cen[ok, 0]
    y_r = py[ok] + cen[ok, 1]
    table = {"x_r": x_r, "y_r": y_r, "peak_snr": peaks[ok] / noise, "size": size[ok]}
    ra, dec = r.pixel_to_world(x_r, y_r)
    for b in BANDS:
        dx = np.zeros(x_r.size)
        dy = np.zeros(x_r.size)
        usable = np.zeros(x_r.size, dtype=bool)
        snr = np.full(x_r.size, np.nan)
        flux = np.full(x_r.size, np.nan)
        try:
            frame = r if b == "r" else field.frame(b)
        except MissingBandError:
            frame = None
        if frame is not None:
            xb, yb = (x_r, y_r) if b == "r" else frame.world_to_pixel(ra, dec)
            raw = resample_stamps(frame.image, xb, yb, _STAMP, "nearest")
            flux = _aperture_flux(raw)
            noise_b = float(frame.sky_noise)
            npix = int(_aperture(_STAMP).sum())
            snr = flux / (noise_b * np.sqrt(npix)) if noise_b > 0 else np.full(x_r.size, np.nan)
            off = centroid_offsets(raw[:, None])[:, 0]
            off -= np.column_stack([xb - np.floor(xb + 0.5), yb - np.floor(yb + 0.5)])
            usable = frame.inside(xb, yb, crit["band_edge_px"]) & np.isfinite(off).all(axis=1)
            usable &= snr > crit["min_band_snr"]
            usable &= ~(_peak_dn(frame, raw) >= crit["max_peak_dn"])
            if b != "r":
                dx, dy = np.where(usable, off[:, 0], 0.0), np.where(usable, off[:, 1], 0.0)
        table.update({f"dx_{b}": dx, f"dy_{b}": dy, f"snr_{b}": snr, f"ok_{b}": usable, f"flux_{b}": flux})
    return pd.DataFrame(table)


class Registration:
    """Per-band pixel offsets of a field relative to its r-band astrometry.

    Built from reference stars (:func:`find_reference_stars`). For each band other than r,
    the usable references' offsets are clipped (those farther from their median than
    ``max(5 x the median distance, 0.15 px)``, or than 1 px, are dropped: blends, cosmic rays)
    and modelled as a constant (the median) plus a
    local term: the Gaussian-kernel (scale ``local_scale`` px) weighted mean of the
    references' deviations from the constant, shrunk towards zero with weight
    ``local_prior`` (so where no reference is near, the model is the constant):

    ``d(x, y) = c + sum_i w_i (d_i - c) / (sum_i w_i + local_prior)``,
    ``w_i = exp(-|p - p_i|^2 / (2 local_scale^2))``, with ``p`` the r-frame position.

    A band with fewer than ``min_references`` usable references gets no correction.

    Parameters
    ----------
    fid : str
        Field ``'RUN-CAMCOL-FIELD'``.
    references : pandas.DataFrame
        :func:`find_reference_stars`'s table.
    local_scale : float or None, default=LOCAL_SCALE_PX
        Kernel scale in r-frame pixels; ``None`` or 0: the constant only.
    local_prior : float, default=LOCAL_PRIOR
    min_references : int, default=MIN_REFERENCES
    shape : (ny, nx), optional
        The r frame's shape. When given, the model is tabulated once on a 32 px grid covering
        the frame (plus 64 px) and :meth:`offsets` interpolates it bilinearly (error < 0.002 px:
        the model is smooth on scales of ``local_scale``), so its cost does not grow with the
        number of reference stars; positions beyond the grid take its edge values.

    Attributes
    ----------
    constant : dict
        Band -> ``(dx, dy)`` median offset in pixels (``(0, 0)`` for r and uncorrected bands).
    n_used : dict
        Band -> number of references the model uses.

    Examples
    --------
    >>> import pandas as pd
    >>> refs = pd.DataFrame({"x_r": [10.0, 50, 90, 130, 170], "y_r": [20.0, 40, 60, 80, 100],
    ...                      **{f"{c}_{b}": [0.0] * 5 for b in "ugriz" for c in ("dx", "dy")},
    ...                      **{f"ok_{b}": [True] * 5 for b in "ugriz"}})
    >>> refs["dy_g"] = -0.1
    >>> reg = Registration("8162-6-80", refs, local_scale=None)
    >>> reg.constant["g"]
    (0.0, -0.1)
    >>> dx, dy = reg.offsets("g", [100.0], [50.0]); float(dy[0])
    -0.1
    """

    def __init__(self, fid, references: pd.DataFrame, local_scale=LOCAL_SCALE_PX, local_prior=LOCAL_PRIOR,
                 min_references=MIN_REFERENCES, shape=None):
        self.fid = str(fid)
        self.references = references.reset_index(drop=True)
        self.local_scale = None if not local_scale else float(local_scale)
        self.local_prior = float(local_prior)
        self.min_references = int(min_references)
        self.shape = None if shape is None else (int(shape[0]), int(shape[1]))
        self.constant: dict[str, tuple[float, float]] = {}
        self.n_used: dict[str, int] = {}
        self._used: dict[str, np.ndarray] = {}
        self._grids: dict[str, tuple] = {}
        for b in BANDS:
            self._fit_band(b)

    def __repr__(self) -> str:
        parts = ", ".join(f"{b}: ({dx:+.3f}, {dy:+.3f}) n={self.n_used[b]}"
                          for b, (dx, dy) in self.constant.items() if b != "r")
        return f"Registration({self.fid!r}, {len(self.references)} references; {parts})"

    def _fit_band(self, band: str) -> None:
        refs = self.references
        used = np.zeros(len(refs), dtype=bool)
        c = (0.0, 0.0)
        if band != "r" and f"ok_{band}" in refs and len(refs):
            ok = refs[f"ok_{band}"].to_numpy(dtype=bool).copy()
            d = refs[[f"dx_{band}", f"dy_{band}"]].to_numpy(dtype=float)
            ok &= np.isfinite(d).all(axis=1)
            if ok.sum() >= self.min_references:
                med = np.median(d[ok], axis=0)
                dist = np.hypot(*(d - med).T)
                limit = min(max(5.0 * float(np.median(dist[ok])), _MIN_CLIP_PX), _MAX_OFFSET_PX)
                used = ok & (dist <= limit)
                if used.sum() >= self.min_references:
                    m = np.median(d[used], axis=0)
                    c = (float(m[0]), float(m[1]))
                else:
                    used[:] = False
        self.constant[band] = c
        self.n_used[band] = int(used.sum())
        self._used[band] = used

    def offsets(self, band: str, x, y, exclude_within: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Offsets ``(dx, dy)`` (pixels) to add to the WCS position in ``band``.

        Parameters
        ----------
        band : str
        x, y : array-like
            0-based **r-frame** positions of the objects.
        exclude_within : float, optional
            Leave-one-out evaluation: for each position, ignore references closer than this
            (pixels), in the constant and in the local term.

        Returns
        -------
        dx, dy : ndarray
        """
        x = np.atleast_1d(np.asarray(x, dtype=float))
        y = np.atleast_1d(np.asarray(y, dtype=float))
        used = self._used.get(band)
        if used is None or not used.any():
            return np.zeros(x.shape), np.zeros(x.shape)
        if exclude_within is None and self.local_scale is not None and self.shape is not None:
            return self._interpolated(band, x, y)
        return self._direct(band, x, y, exclude_within)

    _GRID_STEP, _GRID_PAD = 32.0, 64.0

    def _interpolated(self, band, x, y):
        from scipy.ndimage import map_coordinates

        if not self._grids:
            self._build_grids()
        if band not in self._grids:
            return self._direct(band, x, y, None)
        x0, y0, tab_x, tab_y = self._grids[band]
        xs = np.where(np.isfinite(x), x, 0.0).ravel()
        ys = np.where(np.isfinite(y), y, 0.0).ravel()
        coords = np.vstack([(ys - y0) / self._GRID_STEP, (xs - x0) / self._GRID_STEP])
        dx = map_coordinates(tab_x, coords, order=1, mode="nearest")
        dy = map_coordinates(tab_y, coords, order=1, mode="nearest")
        return dx.reshape(x.shape), dy.reshape(x.shape)

    def _build_grids(self) -> None:
        """Tabulate every band's model on the grid: the same model as :meth:`_direct`; the
        Gaussian kernel is separable, so the weighted sums are matrix products
        ``(ny_grid x M) @ (M x nx_grid)``, all bands in one product (few BLAS calls)."""
        ny, nx = self.shape
        gx = np.arange(-self._GRID_PAD, nx + self._GRID_PAD + self._GRID_STEP, self._GRID_STEP)
        gy = np.arange(-self._GRID_PAD, ny + self._GRID_PAD + self._GRID_STEP, self._GRID_STEP)
        bands = [b for b in BANDS if self._used[b].any()]
        if not bands:
            return
        refs = self.references
        rx, ry = refs["x_r"].to_numpy(float), refs["y_r"].to_numpy(float)
        two_l2 = 2.0 * self.local_scale**2
        kx = np.exp(-((gx[:, None] - rx[None]) ** 2) / two_l2)  # (nx_grid, M)
        ky = np.exp(-((gy[:, None] - ry[None]) ** 2) / two_l2)  # (ny_grid, M)
        left = []
        for b in bands:
            used = self._used[b]
            d = np.nan_to_num(refs[[f"dx_{b}", f"dy_{b}"]].to_numpy(dtype=float)) * used[:, None]
            left += [ky * used, ky * d[:, 0], ky * d[:, 1]]
        sums = (np.vstack(left) @ kx.T).reshape(len(bands), 3, gy.size, gx.size)
        for (sw, swx, swy), b in zip(sums, bands):
            cx, cy = self.constant[b]
            self._grids[b] = (gx[0], gy[0], cx + (swx - cx * sw) / (sw + self.local_prior),
                              cy + (swy - cy * sw) / (sw + self.local_prior))

    def _direct(self, band, x, y, exclude_within):
        used = self._used[band]
        refs = self.references
        rx, ry = refs["x_r"].to_numpy(float)[used], refs["y_r"].to_numpy(float)[used]
        d = refs[[f"dx_{band}", f"dy_{band}"]].to_numpy(dtype=float)[used]
        c = np.asarray(self.constant[band])
        out = np.empty((x.size, 2))
        xs = np.where(np.isfinite(x), x, 0.0).ravel()
        ys = np.where(np.isfinite(y), y, 0.0).ravel()
        step = max(1, 4_000_000 // max(1, rx.size))
        for lo in range(0, xs.size, step):
            qx, qy = xs[lo:lo + step, None], ys[lo:lo + step, None]
            d2 = (qx - rx[None]) ** 2 + (qy - ry[None]) ** 2
            if exclude_within is None:
                cq = np.broadcast_to(c, (d2.shape[0], 2))
                keep = None
            else:
                keep = d2 >= float(exclude_within) ** 2
                masked = np.where(keep[..., None], d[None], np.nan)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all excluded -> NaN -> 0
                    cq = np.nan_to_num(np.nanmedian(masked, axis=1))
            if self.local_scale is None:
                out[lo:lo + step] = cq
                continue
            w = np.exp(-0.5 * d2 / self.local_scale**2)
            if keep is not None:
                w *= keep
            sw = w.sum(axis=1, keepdims=True)
            out[lo:lo + step] = cq + (w @ d - cq * sw) / (sw + self.local_prior)
        return out[:, 0].reshape(x.shape), out[:, 1].reshape(x.shape)

    def used_references(self, band: str) -> pd.DataFrame:
        """The reference stars the model of ``band`` uses (after clipping)."""
        return self.references[self._used[band]]

    def subset(self, mask) -> "Registration":
        """The same model fitted on a subset of the references (held-out evaluation)."""
        mask = np.asarray(mask, dtype=bool)
        return Registration(self.fid, self.references[mask], self.local_scale, self.local_prior,
                            self.min_references, self.shape)

    def summary(self) -> pd.DataFrame:
        """Per band: references used, constant offset, robust scatter about it (pixels)."""
        rows = []
        for b in BANDS:
            used = self._used[b]
            d = self.references[[f"dx_{b}", f"dy_{b}"]].to_numpy(float)[used] if used.any() else np.zeros((0, 2))
            dist = np.hypot(*(d - np.asarray(self.constant[b])).T) if len(d) else np.zeros(0)
            rows.append({"band": b, "n_used": int(used.sum()), "dx": self.constant[b][0],
                         "dy": self.constant[b][1],
                         "median_abs_residual": float(np.median(dist)) if len(dist) else np.nan})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        """JSON-serialisable form (references rounded to 1e-5 px)."""
        refs = {}
        for col in self.references.columns:
            v = self.references[col].to_numpy()
            refs[col] = v.astype(bool).tolist() if v.dtype == bool else np.round(v.astype(float), 5).tolist()
        return {"version": REGISTRATION_VERSION, "fid": self.fid, "local_scale": self.local_scale,
                "local_prior": self.local_prior, "min_references": self.min_references,
                "shape": None if self.shape is None else list(self.shape), "references": refs}

    @classmethod
    def from_dict(cls, data: dict) -> "Registration":
        """Inverse of :meth:`to_dict`."""
        refs = pd.DataFrame(data["references"]) if data["references"] else _empty_references()
        for b in BANDS:
            if f"ok_{b}" in refs:
                refs[f"ok_{b}"] = refs[f"ok_{b}"].astype(bool)
        return cls(data["fid"], refs, data.get("local_scale"), data.get("local_prior", LOCAL_PRIOR),
                   data.get("min_references", MIN_REFERENCES), data.get("shape"))


def _registration_path(cache_dir, fid: FieldID) -> Path:
    npy, _ = _decompressed_paths(Path(cache_dir), frame_path(fid, "r"))
    return npy.with_name(f"registration-{fid.padded}.v{REGISTRATION_VERSION}.json")


def field_registration(field, fetcher=None, *, sas_url=None, cache_dir=None, refresh: bool = False) -> Registration:
    """The field's :class:`Registration`, measured once and cached.

    The reference stars are measured on the first call for a field and stored as a small
    JSON file beside the field's decompressed frames (``registration-RRRRRR-C-FFFF.v<N>.json``,
    written atomically; ``N`` = :data:`REGISTRATION_VERSION`), so later calls, in any process,
    only read it. A cache that cannot be written only costs a warning.

    Parameters
    ----------
    field : Field or str
        An open :class:`~stargal.frames.Field` (its fetcher is used) or a field string.
    fetcher, sas_url, cache_dir
        Data source when ``field`` is a string.
    refresh : bool
        Measure again even when cached.

    Examples
    --------
    >>> reg = field_registration("8162-6-80", sas_url="file:///data/sdss")   # doctest: +SKIP
    >>> reg.constant["g"]                                                     # doctest: +SKIP
    (0.046, -0.127)
    """
    if not isinstance(field, Field):
        field = Field(field, fetcher, sas_url=sas_url, cache_dir=cache_dir)
    fid = field.fid
    path = _registration_path(field.fetcher.cache_dir, fid)
    key = str(path)
    if not refresh:
        with _MEMO_LOCK:
            if key in _MEMO:
                return _MEMO[key]
        try:
            data = json.loads(path.read_text())
            columns = set(data.get("references") or _REFERENCE_COLUMNS)
            if (data.get("version") == REGISTRATION_VERSION and data.get("fid") == str(fid)
                    and columns >= set(_REFERENCE_COLUMNS)):
                reg = Registration.from_dict(data)
                with _MEMO_LOCK:
                    _MEMO[key] = reg
                return reg
        except (OSError, ValueError, KeyError, TypeError):
            pass  # missing or unreadable: measure
    try:
        shape = field.frame("r").shape
    except MissingBandError:
        shape = None
    data = Registration(str(fid), find_reference_stars(field), shape=shape).to_dict()
    # use exactly what the cache holds (values rounded to 1e-5 px), so that a process that
    # measured the registration and one that read it from the cache give identical positions
    reg = Registration.from_dict(json.loads(json.dumps(data)))
    try:
        payload = json.dumps(data).encode()
        atomic_write_bytes(path, lambda fh: fh.write(payload))
    except OSError as exc:
        warnings.warn(f"Aligner: could not cache the registration of field {fid} at {path}: {exc}",
                      RuntimeWarning, stacklevel=2)
    with _MEMO_LOCK:
        _MEMO[key] = reg
    return reg


class Aligner(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Objects table -> same rows + field + per-band pixel positions + ``flag``.

    Each object is assigned to a field: the one named by its ``run``/``camcol``/``field``
    columns when present, else the candidate field on which it lies farthest from every band's
    edge (same rule as :func:`stargal.frames.locate`; complete fields are preferred). Its
    position in each band is computed from **that band's own WCS**, then (``refine=True``)
    corrected by the field's measured band-to-band registration (:class:`Registration`:
    SDSS's per-band astrometry is off by up to ~0.25 px relative to r, e.g. g by about
    -0.1 px in y in every study field). Fields are opened one at a time and released, so
    memory stays bounded by one field (5 memory-mapped frames).

    Parameters
    ----------
    fields : list of str or ``'window'``, optional
        Candidate fields (``'8162-6-80'``) for objects without ``run``/``camcol``/``field``.
        ``'window'`` (:data:`WINDOW`): look each such object up in SDSS's own field index
        ``window_flist`` (:mod:`stargal.window`; anywhere in the survey): the up to
        :data:`MAX_WINDOW_CANDIDATES` fields whose box holds it are opened and the one where it
        lies farthest from every band's edge (by the frames' WCS) wins.
        ``None``: the fields named by those columns of ``X`` if present, else the default
        study's fields (:func:`stargal.config.load_config`).
    cutout_size : int, default=15
        Side of the cutouts that will be made (odd). Sets the edge margin
        :attr:`edge_margin_` ``= (cutout_size - 1) / 2 + 3.5`` pixels.
    policy : {'raise', 'flag'}, default='raise'
        What to do with rows that cannot be aligned: raise naming them, or keep and flag them.
    sas_url, cache_dir : str, optional
        Data source and cache (``None``: ``STARGAL_SAS_URL`` / ``STARGAL_CACHE`` / defaults).
    refine : bool, default=True
        Correct each band's position (all bands but r) by the field's registration, measured
        on bright isolated point sources found in the frames (:func:`field_registration`;
        measured once per field, ~1 s, and cached beside the decompressed frames). ``False``:
        the header WCS positions as they are. The r positions are never changed.

    Attributes
    ----------
    edge_margin_ : float
        Required distance (pixels) from every band's frame edge.
    fields_ : tuple of str or None
        Canonical form of ``fields``.
    n_features_in_ : int
        Number of columns of the table seen in :meth:`fit`.
    feature_names_in_ : ndarray of str
        Column names of that table.

    Examples
    --------
    >>> aligner = Aligner(fields=["8162-6-80"], sas_url="file:///data/sdss")   # doctest: +SKIP
    >>> out = aligner.fit_transform(catalog)                                     # doctest: +SKIP
    >>> list(out.columns[-12:])                                                  # doctest: +SKIP
    ['field_id', 'x_u', 'y_u', 'x_g', 'y_g', 'x_r', 'y_r', 'x_i', 'y_i', 'x_z', 'y_z', 'flag']
    """

    def __init__(self, fields=None, cutout_size=15, policy="raise", sas_url=None, cache_dir=None, refine=True):
        self.fields = fields
        self.cutout_size = cutout_size
        self.policy = policy
        self.sas_url = sas_url
        self.cache_dir = cache_dir
        self.refine = refine

    # ------------------------------------------------------------------ sklearn API
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        return tags

    def _validate_params(self):
        size = self.cutout_size
        if isinstance(size, bool) or not isinstance(size, Integral) or size < 1:
            raise ValueError(f"Aligner: cutout_size must be a positive odd integer, got {size!r}")
        if size % 2 == 0:
            raise ValueError(
                f"Aligner: cutout_size must be odd, got {size}: an even cutout has no central pixel, "
                "so the object could not sit exactly on the centre"
            )
        if self.policy not in _POLICIES:
            raise ValueError(f"Aligner: policy must be one of {_POLICIES}, got {self.policy!r}")
        if not isinstance(self.refine, (bool, np.bool_)):
            raise ValueError(f"Aligner: refine must be True or False, got {self.refine!r}")
        for name in ("sas_url", "cache_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str) and not hasattr(value, "__fspath__"):
                raise ValueError(f"Aligner: {name} must be None or a string, got {value!r}")
        return _check_fields_param(self.fields)

    def fit(self, X, y=None):
        """Validate the parameters and the table (``ra``/``dec`` columns; see ``policy``).

        Parameters
        ----------
        X : DataFrame, dict of columns or (n, 2) array
            Objects with ``ra``, ``dec`` in degrees (ICRS), optionally ``run``, ``camcol``,
            ``field``. No data are read.
        y : ignored

        Returns
        -------
        self
        """
        self.fields_ = self._validate_params()
        table = _as_table(X)
        _coordinates(table, self.policy)
        self.edge_margin_ = edge_margin(int(self.cutout_size))
        self.n_features_in_ = table.shape[1]
        self.feature_names_in_ = np.asarray([str(c) for c in table.columns], dtype=object)
        return self

    def set_output(self, *, transform=None):
        """Accepted for pipeline compatibility; the output is always a :class:`pandas.DataFrame`."""
        return self

    def get_feature_names_out(self, input_features=None):
        """Input columns followed by :func:`aligned_columns` (existing ones keep their place)."""
        check_is_fitted(self)
        base = list(self.feature_names_in_ if input_features is None else input_features)
        return np.asarray(base + [c for c in aligned_columns() if c not in base], dtype=object)

    # ------------------------------------------------------------------ the work
    @staticmethod
    def _candidates(fields, explicit: np.ndarray, need_locate: bool) -> tuple:
        if fields is not None and fields != WINDOW:
            return fields
        present = tuple(dict.fromkeys(f for f in explicit if f))
        if present:
            return present
        if not need_locate:
            return ()
        default = _default_fields()
        if not default:
            raise ValueError(
                "Aligner(fields=None): the table has no run/camcol/field columns and no default "
                "study is available; pass fields=['RUN-CAMCOL-FIELD', ...]"
            )
        return default

    def transform(self, X):
        """Add ``field_id``, ``x_<band>``, ``y_<band>`` (0-based pixels) and ``flag``.

        Parameters
        ----------
        X : DataFrame, dict of columns or (n, 2) array
            Objects with ``ra``, ``dec`` (degrees); optional ``run``, ``camcol``, ``field``.

        Returns
        -------
        pandas.DataFrame
            A copy of ``X`` (same rows, order and index) plus :func:`aligned_columns`;
            positions are NaN where no field (or band) applies.

        Raises
        ------
        CoordinateError, AlignmentError, MissingBandAlignmentError
            With ``policy='raise'``, for any row that would be flagged.
        """
        check_is_fitted(self)
        fields = self._validate_params()
        margin = edge_margin(int(self.cutout_size))
        table = _as_table(X)
        n = len(table)
        ra, dec, invalid = _coordinates(table, self.policy)
        explicit = _explicit_fields(table, invalid)
        has_explicit = explicit != ""
        to_locate = ~invalid & ~has_explicit

        fetcher = get_fetcher(sas_url=self.sas_url, cache_dir=self.cache_dir)
        located_ix = np.flatnonzero(to_locate)
        # rows to locate on each candidate field
        located_on: dict[str, np.ndarray] = {}
        from_index: set = set()  # candidates proposed by window_flist (their boxes hold the rows)
        if fields == WINDOW and located_ix.size:
            from .fetch import NotFoundError
            from .window import load_window_index

            try:
                index = load_window_index(fetcher)
            except NotFoundError as exc:
                raise NotFoundError(
                    f"{exc}: SDSS's field index window_flist is not at this SAS, so objects without "
                    "run/camcol/field cannot be looked up; name the fields instead (Aligner(fields=[...]), "
                    "predict_coordinates(fields=[...]) or stargal predict --fields)") from None
            names, _ = index.lookup(ra[located_ix], dec[located_ix], max_candidates=MAX_WINDOW_CANDIDATES)
            # most popular fields first, so that rows of one field are handled together
            flat = names.ravel()
            owner = np.repeat(located_ix, names.shape[1])
            has = flat != ""
            if has.any():
                uniq, inv = np.unique(flat[has], return_inverse=True)
                members = np.argsort(inv, kind="stable")
                bounds = np.r_[0, np.cumsum(np.bincount(inv, minlength=uniq.size))]
                for j in np.argsort(-np.diff(bounds), kind="stable"):
                    located_on[str(uniq[j])] = np.unique(owner[has][members[bounds[j]:bounds[j + 1]]])
            from_index = set(located_on)
        elif located_ix.size:
            for fid in self._candidates(fields, explicit, True):
                located_on[fid] = located_ix
        # fields to open, one at a time: candidates (if anything must be located), explicit ones
        order = list(dict.fromkeys(list(located_on) + [f for f in explicit if f]))

        flag = np.full(n, "", dtype=object)
        flag[invalid] = "invalid_coord"
        field_id = np.full(n, "", dtype=object)
        pos = {b: (np.full(n, np.nan), np.full(n, np.nan)) for b in BANDS}
        best_level = np.full(n, -2, dtype=int)  # see _LEVEL_FLAGS
        best_d = np.full(n, -np.inf)
        best_field = np.full(n, "", dtype=object)
        missing_by_field: dict[str, tuple] = {}

        for fid in order:
            rows_e = np.flatnonzero(explicit == fid)
            rows_l = located_on.get(fid, np.zeros(0, dtype=int))
            rows = np.union1d(rows_e, rows_l)
            if rows.size == 0:
                continue
            field = Field(fid, fetcher)
            frames, missing = {}, []
            for band in BANDS:
                try:
                    frames[band] = field.frame(band)
                except MissingBandError:
                    missing.append(band)
            complete = not missing
            if missing:
                missing_by_field[fid] = tuple(missing)
            if not frames and fid not in from_index:
                warnings.warn(f"Aligner: field {fid} has no frames at all (bands "
                              f"{', '.join(missing)} not found); its objects cannot be aligned",
                              stacklevel=2)
            # distance to the nearest frame edge, over bands: smallest (dist) and largest (on_any)
            xy = {}
            dist = np.full(rows.size, np.inf if frames else -np.inf)
            on_any = np.full(rows.size, -np.inf)
            for band, frame in frames.items():
                xy[band] = frame.world_to_pixel(ra[rows], dec[rows])
            if self.refine and "r" in xy:
                # only rows near this field's r frame (skip measuring fields nobody is on)
                near = frames["r"].inside(*xy["r"], margin_pix=-50.0)
                if near.any():
                    reg = field_registration(field)
                    xr, yr = xy["r"]
                    for band in xy:
                        if band != "r":
                            dx, dy = reg.offsets(band, xr[near], yr[near])
                            x, y = xy[band][0].copy(), xy[band][1].copy()
                            x[near] += dx
                            y[near] += dy
                            xy[band] = (x, y)
            for band, frame in frames.items():
                x, y = xy[band]
                ny, nx = frame.shape
                with np.errstate(invalid="ignore"):
                    d = np.minimum.reduce([x + 0.5, nx - 0.5 - x, y + 0.5, ny - 0.5 - y])
                d = np.where(np.isfinite(d), d, -np.inf)
                dist = np.minimum(dist, d)
                on_any = np.maximum(on_any, d)
            field.release()
            # -2 on no band's frame, 0 on an incomplete field, 1 near an edge, 2 fine
            level = np.where(on_any < 0, -2, 0 if not complete else np.where(dist >= margin, 2, 1))

            # explicit rows: this is their field, whatever the distance
            sel_e = np.isin(rows, rows_e)
            if sel_e.any():
                idx = rows[sel_e]
                field_id[idx] = fid
                for band, (x, y) in xy.items():
                    pos[band][0][idx], pos[band][1][idx] = x[sel_e], y[sel_e]
                flag[idx] = _LEVEL_FLAGS[level[sel_e] + 2]

            # located rows: keep the best field so far
            sel_l = np.isin(rows, rows_l)
            if sel_l.any():
                idx = rows[sel_l]
                d, lev = dist[sel_l], level[sel_l]
                if not frames and fid in from_index:
                    lev = np.full(lev.shape, -1)  # window_flist lists the field; the SAS has no frames
                prev_lev, prev_d = best_level[idx], best_d[idx]
                better = (lev >= -1) & ((lev > prev_lev) | ((lev == prev_lev) & (d > prev_d)))
                if better.any():
                    bi = idx[better]
                    best_level[bi], best_d[bi] = lev[better], d[better]
                    best_field[bi] = fid
                    for band in BANDS:
                        if band in xy:
                            x, y = xy[band]
                            pos[band][0][bi], pos[band][1][bi] = x[sel_l][better], y[sel_l][better]
                        else:
                            pos[band][0][bi], pos[band][1][bi] = np.nan, np.nan

        if located_ix.size:
            idx = located_ix
            found = best_level[idx] >= -1
            field_id[idx[found]] = best_field[idx[found]]
            flag[idx] = _LEVEL_FLAGS[best_level[idx] + 2]

        if self.policy == "raise":
            self._raise_for_flags(table, ra, dec, flag, field_id, missing_by_field)

        out = table.copy()
        out["field_id"] = field_id
        for band in BANDS:
            out[f"x_{band}"], out[f"y_{band}"] = pos[band]
        out["flag"] = flag
        return out

    def _raise_for_flags(self, table, ra, dec, flag, field_id, missing_by_field):
        bad = np.flatnonzero(flag != "")
        if bad.size == 0:
            return
        margin = edge_margin(int(self.cutout_size))
        reasons = {}
        for i in bad:
            f, fid = flag[i], field_id[i]
            if f == "outside":
                reasons[i] = f"outside field {fid}" if fid else "outside every candidate field"
            elif f == "edge":
                reasons[i] = f"within {margin:g} px of an edge of field {fid}"
            elif f == "missing_band":
                reasons[i] = f"field {fid} lacks band(s) {', '.join(missing_by_field.get(fid, ()))}"
            elif f == "no_frames":
                reasons[i] = f"window_flist lists field {fid} here, but the SAS has none of its frames"
            else:
                reasons[i] = "invalid coordinates"
        counts = pd.Series(flag[bad]).value_counts().to_dict()
        summary = ", ".join(f"{k}: {v}" for k, v in counts.items())
        hint = "use Aligner(policy='flag') to keep such rows with a flag instead"
        detail = f"{bad.size} of {len(flag)} row(s) cannot be aligned ({summary}): " \
                 f"{_describe(table, ra, dec, bad, reasons)}; {hint}"
        mb = np.flatnonzero(flag == "missing_band")
        if mb.size:
            fields = list(dict.fromkeys(field_id[mb]))
            first = fields[0]
            others = "; ".join(f"field {f} lacks {', '.join(missing_by_field.get(f, ()))}"
                               for f in fields[1:])
            raise MissingBandAlignmentError(first, missing_by_field.get(first, ()),
                                            (others + "; " if others else "") + detail)
        raise AlignmentError(detail)
