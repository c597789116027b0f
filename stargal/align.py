"""Find each object's field and its pixel position in every band's own frame.

The five band frames of an SDSS field are **not** pixel-aligned (the bands are exposed at
different times as the sky drifts across the camera): the same star sits several pixels
apart in the u and z frames. :class:`Aligner` maps every object's RA/Dec through *each
band's own WCS*, so that :class:`stargal.cutouts.Cutter` can resample each band so that the
object lands exactly on the central pixel of all five bands.

Pixel positions are **0-based** (astropy ``origin=0``): ``(x, y)`` is column ``x``, row ``y``
of ``image[y, x]`` and the centre of the first pixel is ``(0, 0)``.

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

import warnings
from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .catalogs import CoordinateError, read_coordinates
from .fetch import get_fetcher
from .frames import Field, MissingBandError
from .sdss import BANDS, FieldID

__all__ = [
    "Aligner",
    "AlignmentError",
    "MissingBandAlignmentError",
    "FLAGS",
    "INTERPOLATION_MARGIN",
    "aligned_columns",
    "edge_margin",
]

#: The values the ``flag`` column can take besides ``''``.
FLAGS = ("outside", "edge", "missing_band", "invalid_coord")

#: Extra edge margin (pixels) beyond the cutout half-width: the Lanczos-3 kernel reaches 3 px
#: beyond the outermost output pixel and the integer base pixel is the rounded position (+0.5).
INTERPOLATION_MARGIN = 3.5

_POLICIES = ("raise", "flag")
# flag of a row by "level": -1 on no band's frame, 0 on an incomplete field, 1 near an edge, 2 fine
_LEVEL_FLAGS = np.array(["outside", "missing_band", "edge", ""], dtype=object)
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


class Aligner(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Objects table -> same rows + field + per-band pixel positions + ``flag``.

    Each object is assigned to a field: the one named by its ``run``/``camcol``/``field``
    columns when present, else the candidate field on which it lies farthest from every band's
    edge (same rule as :func:`stargal.frames.locate`; complete fields are preferred). Its
    position in each band is computed from **that band's own WCS**. Fields are opened one at
    a time and released, so memory stays bounded by one field (5 memory-mapped frames).

    Parameters
    ----------
    fields : list of str, optional
        Candidate fields (``'8162-6-80'``) for objects without ``run``/``camcol``/``field``.
        ``None``: the fields named by those columns of ``X`` if present, else the default
        study's fields (:func:`stargal.config.load_config`).
    cutout_size : int, default=15
        Side of the cutouts that will be made (odd). Sets the edge margin
        :attr:`edge_margin_` ``= (cutout_size - 1) / 2 + 3.5`` pixels.
    policy : {'raise', 'flag'}, default='raise'
        What to do with rows that cannot be aligned: raise naming them, or keep and flag them.
    sas_url, cache_dir : str, optional
        Data source and cache (``None``: ``STARGAL_SAS_URL`` / ``STARGAL_CACHE`` / defaults).

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

    def __init__(self, fields=None, cutout_size=15, policy="raise", sas_url=None, cache_dir=None):
        self.fields = fields
        self.cutout_size = cutout_size
        self.policy = policy
        self.sas_url = sas_url
        self.cache_dir = cache_dir

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
        if fields is not None:
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

        candidates = self._candidates(fields, explicit, bool(to_locate.any()))
        # fields to open, one at a time: candidates (if anything must be located), explicit ones
        order = list(dict.fromkeys(list(candidates if to_locate.any() else ()) + [f for f in explicit if f]))

        flag = np.full(n, "", dtype=object)
        flag[invalid] = "invalid_coord"
        field_id = np.full(n, "", dtype=object)
        pos = {b: (np.full(n, np.nan), np.full(n, np.nan)) for b in BANDS}
        best_level = np.full(n, -1, dtype=int)  # see _LEVEL_FLAGS
        best_d = np.full(n, -np.inf)
        best_field = np.full(n, "", dtype=object)
        missing_by_field: dict[str, tuple] = {}

        fetcher = get_fetcher(sas_url=self.sas_url, cache_dir=self.cache_dir)
        located_ix = np.flatnonzero(to_locate)
        candidate_set = set(candidates)
        for fid in order:
            rows_e = np.flatnonzero(explicit == fid)
            rows_l = located_ix if fid in candidate_set else np.zeros(0, dtype=int)
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
            if not frames:
                warnings.warn(f"Aligner: field {fid} has no frames at all (bands "
                              f"{', '.join(missing)} not found); its objects cannot be aligned",
                              stacklevel=2)
            # distance to the nearest frame edge, over bands: smallest (dist) and largest (on_any)
            xy = {}
            dist = np.full(rows.size, np.inf if frames else -np.inf)
            on_any = np.full(rows.size, -np.inf)
            for band, frame in frames.items():
                x, y = frame.world_to_pixel(ra[rows], dec[rows])
                xy[band] = (x, y)
                ny, nx = frame.shape
                with np.errstate(invalid="ignore"):
                    d = np.minimum.reduce([x + 0.5, nx - 0.5 - x, y + 0.5, ny - 0.5 - y])
                d = np.where(np.isfinite(d), d, -np.inf)
                dist = np.minimum(dist, d)
                on_any = np.maximum(on_any, d)
            field.release()
            # -1 on no band's frame, 0 on an incomplete field, 1 near an edge, 2 fine
            level = np.where(on_any < 0, -1, 0 if not complete else np.where(dist >= margin, 2, 1))

            # explicit rows: this is their field, whatever the distance
            sel_e = np.isin(rows, rows_e)
            if sel_e.any():
                idx = rows[sel_e]
                field_id[idx] = fid
                for band, (x, y) in xy.items():
                    pos[band][0][idx], pos[band][1][idx] = x[sel_e], y[sel_e]
                flag[idx] = _LEVEL_FLAGS[level[sel_e] + 1]

            # located rows: keep the best field so far
            sel_l = np.isin(rows, rows_l)
            if sel_l.any():
                idx = rows[sel_l]
                d, lev = dist[sel_l], level[sel_l]
                prev_lev, prev_d = best_level[idx], best_d[idx]
                better = (lev >= 0) & ((lev > prev_lev) | ((lev == prev_lev) & (d > prev_d)))
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
            found = best_level[idx] >= 0
            field_id[idx[found]] = best_field[idx[found]]
            flag[idx] = _LEVEL_FLAGS[best_level[idx] + 1]

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
