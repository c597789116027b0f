"""Find each object's field and its pixel position in every band's own frame.

The five band frames of an SDSS field are **not** pixel-aligned (the bands are exposed at
different times as the sky drifts across the camera): the same star sits several pixels
apart in the u and z frames. :class:`Aligner` maps every object's RA/Dec through *each
band's own WCS*, so that :class:`stargal.cutouts.Cutter` can resample each band so that the
object lands exactly on the central pixel of all five bands.

Pixel positions are **0-based** (astropy ``origin=0``): ``(x, y)`` is column ``x``, row ``y``
of ``image[y, x]`` and the centre of the first pixel is ``(0, 0)``.

Registration refinement (``Aligner(refine=True)``, the default): SDSS's per-band astrometry
disagrees with r by up to ~0.25 px; each band's WCS position is corrected by the field's
:class:`~stargal.registration.Registration`, measured on its own bright stars and cached
(:mod:`stargal.registration`; held-out residuals: ``python -m experiments.alignment``).

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
the index is preserved. Examples: :class:`Aligner`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .catalogs import explicit_field_ids, objects_table, table_coordinates
from .fetch import get_fetcher
from .frames import Field, MissingBandError
# the registration used to live here: its names stay importable from stargal.align
from .registration import (LOCAL_PRIOR, LOCAL_SCALE_PX, MIN_REFERENCES, REFERENCE_CRITERIA,  # noqa: F401
                           REGISTRATION_VERSION, Registration, field_registration, find_reference_stars,
                           registration_path)
from ._imaging import CUTOUT_SIZE
from ._validation import PATH_LIKE, POSITIVE_INT, StrOptions, check_odd, table_input_tags, validate_params
from .sdss import BANDS, FieldID, parse_field_list

__all__ = ["Aligner", "WINDOW", "MAX_WINDOW_CANDIDATES", "AlignmentError", "MissingBandAlignmentError",
           "FLAGS", "INTERPOLATION_MARGIN", "aligned_columns", "check_aligned_table", "edge_margin"]

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


class AlignmentError(ValueError):
    """Rows that cannot be aligned under ``policy='raise'``; the message lists them."""


class MissingBandAlignmentError(MissingBandError, AlignmentError):
    """Objects fall on a field that lacks one or more band frames (``policy='raise'``)."""


def aligned_columns(bands=BANDS) -> list[str]:
    """Columns the :class:`Aligner` adds: ``field_id, x_u, y_u, ..., x_z, y_z, flag``."""
    return ["field_id"] + [f"{c}_{b}" for b in bands for c in ("x", "y")] + ["flag"]


def check_aligned_table(X, who: str, step: str):
    """``X`` if it is an Aligner output (a DataFrame with ``field_id`` and every band's ``x_``/``y_``),
    else a ``TypeError`` / ``ValueError`` naming the step ``who`` and how to build its input
    (``step``: e.g. ``'Cutter(...)'``)."""
    import pandas as pd

    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"{who} expects the Aligner's output table (a pandas DataFrame), got {type(X).__name__}; "
                        f"use make_pipeline(Aligner(...), {step})")
    missing = [c for c in aligned_columns()[:-1] if c not in X.columns]
    if missing:
        raise ValueError(f"{who} needs per-band pixel positions from stargal.align.Aligner; the table lacks "
                         f"{missing[:6]}{' ...' if len(missing) > 6 else ''}. Run Aligner first, e.g. "
                         f"make_pipeline(Aligner(...), {step})")
    return X


def edge_margin(cutout_size: int) -> float:
    """Minimum distance (pixels) from every band's frame edge for a full interpolated cutout.

    ``(cutout_size - 1) / 2 + INTERPOLATION_MARGIN``; e.g. 10.5 px for 15 x 15 cutouts.
    """
    return (cutout_size - 1) / 2 + INTERPOLATION_MARGIN


def _check_fields_param(fields):
    if isinstance(fields, str) and fields.strip().lower() == WINDOW:
        return WINDOW
    return None if fields is None else parse_field_list(fields, who="Aligner")


def _window_index(fetcher):
    from .fetch import NotFoundError
    from .window import load_window_index

    try:
        return load_window_index(fetcher)
    except NotFoundError as exc:
        raise NotFoundError(
            f"{exc}: SDSS's field index window_flist is not at this SAS, so objects without "
            "run/camcol/field cannot be looked up; name the fields instead (Aligner(fields=[...]), "
            "predict_coordinates(fields=[...]) or stargal predict --fields)") from None


class Aligner(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Objects table -> same rows + field + per-band pixel positions + ``flag``.

    Each object is assigned to a field: the one named by its ``run``/``camcol``/``field``
    columns when present, else the candidate field on which it lies farthest from every band's
    edge (complete fields are preferred; this is stargal's one implementation of "which field
    holds an object"). Its position in each band is computed from **that band's own WCS**, then
    (``refine=True``) corrected by the field's measured band-to-band
    :class:`~stargal.registration.Registration`.
    Fields are opened one at a time and released (memory bounded by one field).

    Parameters
    ----------
    fields : list of str or ``'window'``, optional
        Candidate fields (``'8162-6-80'``) for objects without ``run``/``camcol``/``field``.
        ``'window'`` (:data:`WINDOW`): look each such object up in SDSS's own field index
        ``window_flist`` (:mod:`stargal.window`; anywhere in the survey): the up to
        :data:`MAX_WINDOW_CANDIDATES` fields whose box holds it are opened and the one where it
        lies farthest from every band's edge (by the frames' WCS) wins.
        ``None``: the fields named by those columns of ``X``; a table without them raises
        (there is no silent default: name the fields or use ``'window'``).
    cutout_size : int, default=CUTOUT_SIZE
        Side of the cutouts that will be made (odd). Sets the edge margin
        :attr:`edge_margin_` ``= (cutout_size - 1) / 2 + 3.5`` pixels.
    policy : {'raise', 'flag'}, default='raise'
        What to do with rows that cannot be aligned: raise naming them, or keep and flag them.
    sas_url, cache_dir : str, optional
        Data source and cache (``None``: ``STARGAL_SAS_URL`` / ``STARGAL_CACHE`` / defaults).
    refine : bool, default=True
        Correct each band's position (all bands but r) by the field's registration
        (:func:`~stargal.registration.field_registration`: ~1 s per field, cached). ``False``:
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

    def __init__(self, fields=None, cutout_size=CUTOUT_SIZE, policy="raise", sas_url=None, cache_dir=None,
                 refine=True):
        self.fields = fields
        self.cutout_size = cutout_size
        self.policy = policy
        self.sas_url = sas_url
        self.cache_dir = cache_dir
        self.refine = refine

    # ------------------------------------------------------------------ sklearn API
    def __sklearn_tags__(self):
        return table_input_tags(super().__sklearn_tags__())

    _parameter_constraints = {
        "fields": [None, str, FieldID, "array-like"],
        "cutout_size": POSITIVE_INT,
        "policy": [StrOptions(set(_POLICIES))],
        "sas_url": PATH_LIKE,
        "cache_dir": PATH_LIKE,
        "refine": ["boolean"],
    }
    _parameter_hints = {
        "fields": "fields must be None, 'window' or a list of field strings such as ['8162-6-80']",
        "cutout_size": "cutout_size must be a positive odd integer",
        "refine": "refine must be True or False",
    }

    def _check_params(self):
        """Validate the parameters; the canonical ``fields``."""
        validate_params(self)
        check_odd(self, "cutout_size", "an even cutout has no central pixel, so the object could "
                  "not sit exactly on the centre")
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
        self.fields_ = self._check_params()
        table = objects_table(X)
        table_coordinates(table, self.policy)
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
        raise ValueError(
            "Aligner(fields=None): the table has no run/camcol/field columns, so there is no "
            "field to look in; pass fields=['RUN-CAMCOL-FIELD', ...] or fields='window'")

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
        fields = self._check_params()
        margin = edge_margin(int(self.cutout_size))
        table = objects_table(X)
        n = len(table)
        ra, dec, invalid = table_coordinates(table, self.policy)
        explicit = explicit_field_ids(table, invalid)
        located_ix = np.flatnonzero(~invalid & (explicit == ""))
        fetcher = get_fetcher(sas_url=self.sas_url, cache_dir=self.cache_dir)
        # rows to locate on each candidate field; window_flist's candidates hold their rows' boxes
        located_on: dict[str, np.ndarray] = {}
        if fields == WINDOW and located_ix.size:
            located_on = _window_index(fetcher).candidates(ra[located_ix], dec[located_ix], located_ix,
                                                           MAX_WINDOW_CANDIDATES)
        elif located_ix.size:
            located_on = {fid: located_ix for fid in self._candidates(fields, explicit, True)}
        from_index = set(located_on) if fields == WINDOW else set()

        flag = np.where(invalid, "invalid_coord", "").astype(object)
        field_id = np.full(n, "", dtype=object)
        pos = {b: (np.full(n, np.nan), np.full(n, np.nan)) for b in BANDS}
        best_level = np.full(n, -2, dtype=int)  # see _LEVEL_FLAGS
        best_d = np.full(n, -np.inf)
        best_field = np.full(n, "", dtype=object)
        missing_by_field: dict[str, tuple] = {}
        # fields to open, one at a time: candidates (if anything must be located), explicit ones
        for fid in dict.fromkeys(list(located_on) + [f for f in explicit if f]):
            rows_e = np.flatnonzero(explicit == fid)
            rows_l = located_on.get(fid, np.zeros(0, dtype=int))
            rows = np.union1d(rows_e, rows_l)
            if rows.size == 0:
                continue
            xy, level, dist, missing = self._on_field(Field(fid, fetcher), ra[rows], dec[rows], margin,
                                                      warn=fid not in from_index)
            if missing:
                missing_by_field[fid] = missing
            sel_e = np.isin(rows, rows_e)  # explicit rows: this is their field, whatever the distance
            if sel_e.any():
                idx = rows[sel_e]
                field_id[idx] = fid
                for band, (x, y) in xy.items():
                    pos[band][0][idx], pos[band][1][idx] = x[sel_e], y[sel_e]
                flag[idx] = _LEVEL_FLAGS[level[sel_e] + 2]
            sel_l = np.isin(rows, rows_l)  # located rows: keep the best field so far
            if sel_l.any():
                idx, d, lev = rows[sel_l], dist[sel_l], level[sel_l]
                if not xy and fid in from_index:
                    lev = np.full(lev.shape, -1)  # window_flist lists the field; the SAS has no frames
                better = (lev >= -1) & ((lev > best_level[idx]) | ((lev == best_level[idx]) & (d > best_d[idx])))
                bi = idx[better]
                best_level[bi], best_d[bi], best_field[bi] = lev[better], d[better], fid
                for band in BANDS:
                    x, y = xy.get(band, (np.full(rows.size, np.nan), np.full(rows.size, np.nan)))
                    pos[band][0][bi], pos[band][1][bi] = x[sel_l][better], y[sel_l][better]
        if located_ix.size:
            found = located_ix[best_level[located_ix] >= -1]
            field_id[found] = best_field[found]
            flag[located_ix] = _LEVEL_FLAGS[best_level[located_ix] + 2]
        if self.policy == "raise":
            self._raise_for_flags(table, ra, dec, flag, field_id, missing_by_field)
        out = table.copy()
        out["field_id"] = field_id
        for band in BANDS:
            out[f"x_{band}"], out[f"y_{band}"] = pos[band]
        out["flag"] = flag
        return out

    def _on_field(self, field, ra, dec, margin, warn=True):
        """Positions of objects on one field: ``(xy, level, dist, missing_bands)``.

        ``xy``: band -> ``(x, y)`` (registered when ``refine``); ``dist``: the smallest distance
        (pixels) to any band's frame edge (:meth:`~stargal.frames.Frame.edge_distance`);
        ``level`` (see ``_LEVEL_FLAGS``): -2 on no band's frame, 0 on an incomplete field, 1
        closer than ``margin`` to an edge, 2 fine. The field's frames are released afterwards.
        """
        frames, missing = {}, []
        for band in BANDS:
            try:
                frames[band] = field.frame(band)
            except MissingBandError:
                missing.append(band)
        if not frames and warn:
            warnings.warn(f"Aligner: field {field.fid} has no frames at all (bands {', '.join(missing)} "
                          "not found); its objects cannot be aligned", stacklevel=3)
        xy = {band: frame.world_to_pixel(ra, dec) for band, frame in frames.items()}
        if self.refine and "r" in xy:
            near = frames["r"].inside(*xy["r"], margin_pix=-50.0)  # skip fields nobody is on
            if near.any():
                xy = field_registration(field).correct(xy, near)
        d = np.array([frames[b].edge_distance(*xy[b]) for b in frames]).reshape(len(frames), ra.size)
        dist = d.min(axis=0) if frames else np.full(ra.size, -np.inf)
        on_any = d.max(axis=0) if frames else np.full(ra.size, -np.inf)
        field.release()
        level = np.where(on_any < 0, -2, 0 if missing else np.where(dist >= margin, 2, 1))
        return xy, level, dist, tuple(missing)

    def _raise_for_flags(self, table, ra, dec, flag, field_id, missing_by_field):
        bad = np.flatnonzero(flag != "")
        if bad.size == 0:
            return
        why = {"outside": "outside field {f}", "edge": f"within {edge_margin(int(self.cutout_size)):g} px "
               "of an edge of field {f}", "missing_band": "field {f} lacks band(s) {m}",
               "no_frames": "window_flist lists field {f} here, but the SAS has none of its frames"}
        parts = []
        for i in bad[:10]:
            f, fid = flag[i], field_id[i]
            reason = ("outside every candidate field" if f == "outside" and not fid else
                      why.get(f, "invalid coordinates").format(f=fid, m=", ".join(missing_by_field.get(fid, ()))))
            parts.append(f"row {table.index[i]!r} (ra={ra[i]:.6f}, dec={dec[i]:.6f}): {reason}")
        more = f"; ... and {bad.size - 10} more" if bad.size > 10 else ""
        summary = ", ".join(f"{k}: {v}" for k, v in pd.Series(flag[bad]).value_counts().to_dict().items())
        detail = (f"{bad.size} of {len(flag)} row(s) cannot be aligned ({summary}): {'; '.join(parts)}{more}; "
                  "use Aligner(policy='flag') to keep such rows with a flag instead")
        mb = np.flatnonzero(flag == "missing_band")
        if mb.size:
            first, *rest = list(dict.fromkeys(field_id[mb]))
            others = "; ".join(f"field {f} lacks {', '.join(missing_by_field.get(f, ()))}" for f in rest)
            raise MissingBandAlignmentError(first, missing_by_field.get(first, ()),
                                            (others + "; " if others else "") + detail)
        raise AlignmentError(detail)
