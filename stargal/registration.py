"""Per-band registration of a field's frames, measured on its own bright stars.

SDSS's per-band astrometric solutions disagree with r by up to ~0.25 px (0.1"): g, for
instance, is offset by about -0.1 px in y in every study field. :func:`field_registration`
finds bright, isolated, unsaturated point sources in the field's own frames (no catalog:
:func:`find_reference_stars`), measures each band's centroid offset from where its WCS puts
them, and fits a :class:`Registration` per band (median offset plus a smooth local term). It is
measured once per field and cached as a small JSON file beside the decompressed frames (and in
memory per process). :class:`stargal.align.Aligner` adds it to every band's WCS position;
:mod:`stargal.psf` builds its PSF model from the same reference stars.

Pipeline place: after :mod:`stargal.frames`, before :mod:`stargal.align` (it imports no later
step; the resampling and centroids it needs are the shared helpers of :mod:`stargal._imaging`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ._imaging import border_median, centroid_offsets, resample_stamps
from ._io import cached_json
from .frames import Field, MissingBandError, decompressed_paths
from .sdss import BANDS, FieldID, frame_path

__all__ = [
    "Registration",
    "field_registration",
    "find_reference_stars",
    "windowed_size",
    "registration_path",
    "REGISTRATION_VERSION",
    "REFERENCE_CRITERIA",
    "REFERENCE_STAMP",
    "MIN_REFERENCES",
    "LOCAL_SCALE_PX",
    "LOCAL_PRIOR",
]

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
#: Side (pixels) of the stamps on which reference stars are measured (centroids, windowed size).
REFERENCE_STAMP = 15
_AP_RADIUS = 3.0
_MAX_OFFSET_PX = 1.0  # references farther than this from the band's median offset are never used
_MIN_CLIP_PX = 0.15   # ... nor farther than max(5 x their median distance, this)
_MEMO: dict = {}  # per-process memo of field_registration (stargal._io.cached_json)


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


def windowed_size(stamps: np.ndarray, cx: np.ndarray, cy: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Gaussian-windowed second-moment radius (pixels) about ``(cx, cy)`` (offsets from the centre)."""
    n, hh, ww = stamps.shape
    img = stamps.astype(np.float64) - border_median(stamps)[:, None, None]
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
    return ((stamps - border_median(stamps)[:, None, None]) * ap).sum(axis=(1, 2), dtype=np.float64)


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

    stamps = resample_stamps(img, px.astype(float), py.astype(float), REFERENCE_STAMP, "nearest")
    cen = centroid_offsets(stamps[:, None])[:, 0]
    ok = np.isfinite(cen).all(axis=1)
    cen = np.where(np.isfinite(cen), cen, 0.0)
    size = windowed_size(stamps, cen[:, 0], cen[:, 1])
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
            raw = resample_stamps(frame.image, xb, yb, REFERENCE_STAMP, "nearest")
            flux = _aperture_flux(raw)
            noise_b = float(frame.sky_noise)
            npix = int(_aperture(REFERENCE_STAMP).sum())
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

    def correct(self, xy: dict, near=None) -> dict:
        """Per-band positions ``{band: (x, y)}`` plus this model's offsets (a new dict).

        The offsets are evaluated at the r positions ``xy['r']``, only where ``near`` (a mask,
        default all); r and bands absent from ``xy`` are unchanged.
        """
        xr, yr = xy["r"]
        near = np.ones(np.shape(xr), dtype=bool) if near is None else np.asarray(near, dtype=bool)
        out = dict(xy)
        for band, (x, y) in xy.items():
            if band != "r":
                dx, dy = self.offsets(band, xr[near], yr[near])
                x, y = np.array(x, dtype=float), np.array(y, dtype=float)
                x[near] += dx
                y[near] += dy
                out[band] = (x, y)
        return out

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


def registration_path(cache_dir, fid: FieldID) -> Path:
    """Where the registration of field ``fid`` is cached (beside its decompressed r frame)."""
    npy, _ = decompressed_paths(Path(cache_dir), frame_path(fid, "r"))
    return npy.with_name(f"registration-{fid.padded}.v{REGISTRATION_VERSION}.json")


def field_registration(field, fetcher=None, *, sas_url=None, cache_dir=None, refresh: bool = False) -> Registration:
    """The field's :class:`Registration`, measured once and cached.

    The reference stars are measured on the first call for a field and stored as a small
    JSON file beside the field's decompressed frames (``registration-RRRRRR-C-FFFF.v<N>.json``,
    written atomically; ``N`` = :data:`REGISTRATION_VERSION`), so later calls, in any process,
    only read it (:func:`stargal._io.cached_json`). A cache file that cannot be read is measured
    again with a ``RuntimeWarning``; one that cannot be written only costs a warning.

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

    def build() -> dict:
        try:
            shape = field.frame("r").shape
        except MissingBandError:
            shape = None
        return Registration(str(fid), find_reference_stars(field), shape=shape).to_dict()

    def parse(data: dict) -> Registration:
        columns = set(data.get("references") or _REFERENCE_COLUMNS)
        if data.get("version") != REGISTRATION_VERSION or data.get("fid") != str(fid):
            raise ValueError(f"the file holds version {data.get('version')!r} of field {data.get('fid')!r}")
        if not columns >= set(_REFERENCE_COLUMNS):
            raise ValueError(f"reference columns missing: {sorted(set(_REFERENCE_COLUMNS) - columns)}")
        return Registration.from_dict(data)

    # the object is parsed from exactly what the cache holds (values rounded to 1e-5 px), so that a
    # process that measured the registration and one that read it give identical positions
    return cached_json(registration_path(field.fetcher.cache_dir, fid), build, parse, memo=_MEMO,
                       refresh=refresh, what=f"field {fid}: registration", category=RuntimeWarning)
