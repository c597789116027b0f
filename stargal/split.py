"""Leakage-free data splits: sky-region groups, test-field exclusion, group-aware splitters.

Objects that are close on the sky share seeing, depth, calibration and neighbours, so random
row-wise splits leak. This module provides

* :func:`sky_groups` / :func:`make_groups` -- group ids from a fixed sky grid (or whole fields),
  to be used with group-aware cross-validation (:func:`make_cv`) and validation hold-outs
  (:class:`GroupHoldOut`, :func:`group_train_valid_indices`);
* :func:`exclude_fields` -- a *keep* mask that removes every object lying on (or within a
  margin of) any given frame, e.g. the test field's r frame, so the test field never leaks
  into train/validation even when fields overlap;
* :func:`assign_splits` -- the study's ``'test'``/``'train'``/``'valid'``/``'excluded'`` column.

RA/Dec are ICRS degrees (checked by :func:`stargal._validation.check_radec`). The footprint
geometry (on a frame or within a margin of it, decided in the frame's pixels through its own WCS)
is :mod:`stargal.frames`' (:func:`~stargal.frames.in_footprints`, ...); the split reports of the
study are :mod:`experiments.splits`'.

Examples
--------
>>> import numpy as np, pandas as pd
>>> from astropy.wcs import WCS
>>> from stargal.frames import Frame
>>> wcs = WCS(naxis=2); wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]; wcs.wcs.crval = [0.0, 0.0]
>>> wcs.wcs.cdelt = [-0.1 / 3600, 0.1 / 3600]; wcs.wcs.crpix = [3600.5, 3600.5]  # 0.2 deg square
>>> frame = Frame("r", np.zeros((7200, 7200), np.float32), wcs=wcs)      # straddles RA 0
>>> table = pd.DataFrame({"ra": [0.0, 0.105, 10.0], "dec": [0.0, 0.0, 0.0]})
>>> exclude_fields(table, [frame], margin_arcsec=20.0)   # 0.105 deg is 18" from the edge
array([False, False,  True])
>>> groups = sky_groups(table["ra"], table["dec"], cell_arcmin=3.0)
>>> bool(groups[0] == groups[1]), bool(groups[0] == groups[2])
(False, False)
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.model_selection import BaseCrossValidator

from stargal._validation import check_radec, is_real
# the footprint geometry lives in stargal.frames; its names stay importable from here
from stargal.frames import (distance_to_footprint, footprint_overlap, in_footprints,  # noqa: F401
                            min_separation_arcsec)
from stargal.sdss import FieldID

__all__ = [
    "sky_groups",
    "make_groups",
    "field_group_ids",
    "exclude_fields",
    "group_train_valid_indices",
    "GroupHoldOut",
    "make_cv",
    "assign_splits",
]

_DEG = np.pi / 180.0


# ==============================================================================================
# input helpers
# ==============================================================================================
def _table_coords(table, ra_col="ra", dec_col="dec"):
    try:
        ra, dec = table[ra_col], table[dec_col]
    except (KeyError, TypeError, IndexError):
        raise ValueError(f"table must have columns {ra_col!r} and {dec_col!r} (degrees)") from None
    return check_radec(ra, dec, what="table")


# ==============================================================================================
# groups
# ==============================================================================================
def sky_groups(ra, dec, cell_arcmin=3.0):
    """Group ids from a fixed, nearly equal-area sky grid.

    The sky is cut into Dec bands of height ``cell_arcmin``; band ``j`` (starting at Dec -90)
    is cut into ``n_j = max(1, floor(360 cos(dec_j) / h))`` equal RA cells, where ``dec_j`` is the
    band's central Dec and ``h`` the cell size in degrees, so every cell is about ``h x h`` on the
    sky. RA wraps: cells tile 0..360 exactly. The id is ``j * n_max + i`` with ``i`` the RA cell
    and ``n_max = max(1, floor(360 / h))``: it depends only on the position and ``cell_arcmin``,
    never on the other rows, so ids are deterministic and comparable between tables.

    Parameters
    ----------
    ra, dec : array-like of float, shape (n,)
        ICRS coordinates in degrees.
    cell_arcmin : float, default=3.0
        Cell side in arcmin (an SDSS field is about 13.5' x 9.8').

    Returns
    -------
    groups : ndarray of int64, shape (n,)

    Examples
    --------
    >>> g = sky_groups([10.0, 10.0 + 1 / 3600, 20.0], [0.5, 0.5, 0.5])
    >>> bool(g[0] == g[1]), bool(g[0] == g[2])
    (True, False)
    """
    if not is_real(cell_arcmin) or cell_arcmin <= 0:
        raise ValueError(f"cell_arcmin must be a positive number, got {cell_arcmin!r}")
    ra, dec = check_radec(ra, dec)
    h = float(cell_arcmin) / 60.0
    n_bands = int(np.ceil(180.0 / h))
    n_max = max(1, int(np.floor(360.0 / h)))
    j = np.clip(np.floor((dec + 90.0) / h).astype(np.int64), 0, n_bands - 1)
    dec_c = np.clip(-90.0 + (j + 0.5) * h, -90.0, 90.0)
    n_ra = np.maximum(1, np.floor(360.0 * np.cos(dec_c * _DEG) / h).astype(np.int64))
    n_ra = np.minimum(n_ra, n_max)
    i = np.floor(np.mod(ra, 360.0) / 360.0 * n_ra).astype(np.int64) % n_ra
    return j * n_max + i


def field_group_ids(field_ids):
    """Integer group ids for SDSS field strings: ``run * 100000 + camcol * 10000 + field``.

    Parameters
    ----------
    field_ids : array-like of str
        ``'8162-6-80'``-style strings (anything :meth:`FieldID.parse` accepts).

    Returns
    -------
    ndarray of int64

    Examples
    --------
    >>> field_group_ids(["8162-6-80", "1035-6-17"]).tolist()
    [816260080, 103560017]
    """
    values = np.asarray(field_ids, dtype=object).astype(str)
    uniq, inverse = np.unique(values, return_inverse=True)
    codes = np.empty(len(uniq), dtype=np.int64)
    for k, text in enumerate(uniq):
        if text.strip() in ("", "nan", "None", "<NA>"):
            raise ValueError(
                "cannot group by field: some rows have no field id (empty or missing 'field_id')"
            )
        fid = FieldID.parse(text)
        codes[k] = fid.run * 100000 + fid.camcol * 10000 + fid.field
    return codes[inverse.reshape(-1)]


def make_groups(table, by="cell", cell_arcmin=3.0):
    """Group ids for an objects table.

    Parameters
    ----------
    table : pandas.DataFrame
        With ``ra``, ``dec`` (``by='cell'``) or ``field_id`` / ``run``, ``camcol``, ``field``
        (``by='field'``).
    by : {'cell', 'field'}, default='cell'
        ``'cell'``: :func:`sky_groups`; ``'field'``: one group per SDSS field
        (:func:`field_group_ids`).
    cell_arcmin : float, default=3.0
        Cell size for ``by='cell'``.

    Returns
    -------
    groups : ndarray of int64, shape (len(table),)

    Examples
    --------
    >>> t = pd.DataFrame({"ra": [1.0, 2.0], "dec": [0.0, 0.0], "field_id": ["8162-6-80"] * 2})
    >>> make_groups(t, by="field").tolist()
    [816260080, 816260080]
    """
    if by == "cell":
        ra, dec = _table_coords(table)
        return sky_groups(ra, dec, cell_arcmin=cell_arcmin)
    if by == "field":
        if "field_id" in table:
            return field_group_ids(table["field_id"])
        if all(c in table for c in ("run", "camcol", "field")):
            ids = [f"{r}-{c}-{f}" for r, c, f in zip(table["run"], table["camcol"], table["field"])]
            return field_group_ids(ids)
        raise ValueError(
            "by='field' needs a 'field_id' column or 'run', 'camcol' and 'field' columns"
        )
    raise ValueError(f"by must be 'cell' or 'field', got {by!r}")


# ==============================================================================================
# test-field exclusion (the geometry: stargal.frames)
# ==============================================================================================
def exclude_fields(table, footprints, margin_arcsec=20.0, ra_col="ra", dec_col="dec"):
    """Mask of rows to KEEP: objects farther than ``margin_arcsec`` from every footprint frame.

    Use it with the test field(s) to remove from train/validation every object that lies on the
    test field's r frame (or within the margin of it), including objects catalogued in another,
    overlapping field. Membership is decided in the frame's own pixels through its WCS
    (:meth:`stargal.frames.Frame.near`).

    Parameters
    ----------
    table : pandas.DataFrame
        Objects table with ``ra``/``dec`` in degrees (non-finite values are an error).
    footprints : Frame, Field or sequence / mapping of them
        :class:`~stargal.frames.Frame` objects, or :class:`~stargal.frames.Field` objects
        (their r frame is used).
    margin_arcsec : float, default=20.0
        Objects within this angular distance (arcsec) of a frame are removed too.
    ra_col, dec_col : str
        Column names.

    Returns
    -------
    keep : ndarray of bool, shape (len(table),)
        ``True`` where the object is safe to use for training/validation.
    """
    ra, dec = _table_coords(table, ra_col, dec_col)
    return ~in_footprints(ra, dec, footprints, margin_arcsec=margin_arcsec)


# ==============================================================================================
# train / validation / CV
# ==============================================================================================
def _check_random_state(random_state):
    if random_state is None or isinstance(random_state, np.random.RandomState):
        return random_state
    if isinstance(random_state, Integral) and not isinstance(random_state, bool):
        return int(random_state)
    raise ValueError(f"random_state must be None, an int or a RandomState, got {random_state!r}")


def make_cv(n_splits=5, stratified=True, shuffle=True, random_state=0):
    """A group-aware CV splitter.

    Parameters
    ----------
    n_splits : int, default=5
    stratified : bool, default=True
        ``StratifiedGroupKFold`` (class balance kept per fold) or ``GroupKFold``.
    shuffle : bool, default=True
        Shuffle groups before splitting (with ``random_state``).
    random_state : int, default=0

    Returns
    -------
    sklearn splitter; call ``.split(X, y, groups)``.

    Examples
    --------
    >>> make_cv(3)
    StratifiedGroupKFold(n_splits=3, random_state=0, shuffle=True)
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    if isinstance(n_splits, bool) or not isinstance(n_splits, Integral) or n_splits < 2:
        raise ValueError(f"n_splits must be an integer >= 2, got {n_splits!r}")
    rs = _check_random_state(random_state) if shuffle else None
    cls = StratifiedGroupKFold if stratified else GroupKFold
    return cls(n_splits=int(n_splits), shuffle=bool(shuffle), random_state=rs)


class GroupHoldOut(BaseCrossValidator):
    """One train/validation split holding out whole groups: the study's one group chooser.

    ``StratifiedGroupKFold(n_splits=round(1 / fraction), shuffle=True)`` (``GroupKFold`` with
    shuffled groups when ``y`` is None) and the fold whose size is closest to ``fraction`` of the
    rows (the first such fold on ties) is the validation set. No group appears on both sides.
    It serves the study's ``'valid'`` split (:func:`group_train_valid_indices`) and the CNN's
    early-stopping split (:class:`stargal.classifier.SkyValidSplit`, through skorch's ``ValidSplit``).
    A scikit-learn CV splitter (``split``, ``get_n_splits`` = 1) that requests ``groups``.

    Parameters
    ----------
    fraction : float, default=0.2
        In (0, 0.5].
    random_state : int, RandomState or None, default=0
        Seed of the group shuffling.

    Examples
    --------
    >>> g = np.repeat(np.arange(10), 5)
    >>> y = np.tile([0, 1, 0, 1, 1], 10)
    >>> tr, va = next(GroupHoldOut(0.2).split(g, y, g))
    >>> len(va), set(g[tr]) & set(g[va])
    (10, set())
    """

    __metadata_request__split = {"groups": True}

    def __init__(self, fraction=0.2, random_state=0):
        self.fraction = fraction
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """Always 1."""
        return 1

    def split(self, X, y=None, groups=None):
        """Yield one ``(train, valid)`` pair of sorted int64 positional indices.

        Parameters
        ----------
        X : array-like of length n
            Only its length is used.
        y : array-like of shape (n,), optional
            Class labels (stratification).
        groups : array-like of shape (n,)
            Group of every row (e.g. from :func:`make_groups`).
        """
        fraction = self.fraction
        if not is_real(fraction) or not 0 < fraction <= 0.5:
            raise ValueError(f"valid_fraction (fraction) must be in (0, 0.5], got {fraction!r}")
        if groups is None:
            raise ValueError("GroupHoldOut needs groups (e.g. stargal.split.make_groups)")
        groups = np.asarray(groups).ravel()
        n = len(X) if hasattr(X, "__len__") else groups.shape[0]
        if groups.ndim != 1 or len(groups) == 0:
            raise ValueError(f"groups must be a non-empty 1-d array, got shape {groups.shape}")
        if groups.shape[0] != n:
            raise ValueError(
                f"groups has {groups.shape[0]} entries but the data has {n} rows; if a sampler "
                f"added rows, use stargal.pipelines.SkyPipeline and a sampler with sample_indices_")
        if y is not None:
            y = np.asarray(y).ravel()
            if y.shape != groups.shape:
                raise ValueError(
                    f"y and groups must have the same length, got {len(y)} and {len(groups)}")
        n_splits = max(2, int(round(1.0 / fraction)))
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            raise ValueError(f"a group-aware validation split needs at least 2 groups, got {n_groups}")
        if n_groups < n_splits:
            raise ValueError(
                f"cannot hold out {fraction:.0%} of the data as whole groups: "
                f"only {n_groups} group(s), "
                f"need at least {n_splits}; use smaller sky cells or more fields"
            )
        cv = make_cv(n_splits, stratified=y is not None, shuffle=True, random_state=self.random_state)
        import warnings

        with warnings.catch_warnings():
            # "The least populated class in y has only k members" is expected for small group counts
            warnings.filterwarnings("ignore", message=".*least populated class.*", category=UserWarning)
            folds = list(cv.split(np.zeros((len(groups), 1)), y, groups))
        target = fraction * len(groups)
        best = min(range(len(folds)), key=lambda k: (abs(len(folds[k][1]) - target), k))
        train_idx, valid_idx = folds[best]
        yield np.sort(train_idx).astype(np.int64), np.sort(valid_idx).astype(np.int64)


def group_train_valid_indices(groups, y=None, valid_fraction=0.2, random_state=0):
    """Hold out whole groups for validation, keeping class balance where possible.

    ``next(GroupHoldOut(valid_fraction, random_state).split(groups, y, groups))``: see
    :class:`GroupHoldOut`. No group appears in both outputs.

    Parameters
    ----------
    groups : array-like, shape (n,)
        Group labels (e.g. from :func:`make_groups`).
    y : array-like, shape (n,), optional
        Class labels for stratification.
    valid_fraction : float, default=0.2
        In (0, 0.5].
    random_state : int, default=0

    Returns
    -------
    train_idx, valid_idx : ndarray of int64
        Sorted positional indices.

    Examples
    --------
    >>> g = np.repeat(np.arange(10), 5)
    >>> y = np.tile([0, 1, 0, 1, 1], 10)
    >>> tr, va = group_train_valid_indices(g, y, valid_fraction=0.2)
    >>> len(va), set(g[tr]) & set(g[va])
    (10, set())
    """
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) == 0:
        raise ValueError(f"groups must be a non-empty 1-d array, got shape {groups.shape}")
    return next(GroupHoldOut(valid_fraction, random_state).split(groups, y, groups))


def assign_splits(
    table,
    test_fields,
    test_footprints,
    *,
    margin_arcsec=20.0,
    groups=None,
    by="cell",
    cell_arcmin=3.0,
    valid_fraction=0.2,
    random_state=0,
    label_col="label",
):
    """The study's split column: ``'test'``, ``'excluded'``, ``'train'`` or ``'valid'``.

    * rows whose ``field_id`` is a test field -> ``'test'``;
    * other rows inside a test footprint (+ ``margin_arcsec``) -> ``'excluded'``
      (they would leak: same sky as the test field);
    * remaining rows -> whole groups to ``'valid'`` (about ``valid_fraction``) or ``'train'``.

    Parameters
    ----------
    table : pandas.DataFrame
        Objects table with ``ra``, ``dec``, ``field_id`` and (for stratification) ``label_col``.
    test_fields : sequence of str
        Test field ids (``'8162-6-80'``).
    test_footprints : see :func:`exclude_fields`
    margin_arcsec : float, default=20.0
    groups : array-like, optional
        Precomputed groups; otherwise :func:`make_groups` with ``by`` and ``cell_arcmin``.
    by, cell_arcmin, valid_fraction, random_state
        See :func:`make_groups` and :func:`group_train_valid_indices`.
    label_col : str or None, default='label'
        Column used to stratify the validation groups (ignored if absent or None).

    Returns
    -------
    pandas.Series of str, indexed like ``table``, named ``'split'``.

    Examples
    --------
    >>> from astropy.wcs import WCS
    >>> from stargal.frames import Frame
    >>> wcs = WCS(naxis=2); wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]; wcs.wcs.crval = [10.0, 2.0]
    >>> wcs.wcs.cdelt = [-1 / 3600, 1 / 3600]; wcs.wcs.crpix = [360.5, 360.5]  # 0.2 deg square
    >>> sq = Frame("r", np.zeros((720, 720), np.float32), wcs=wcs)
    >>> t = pd.DataFrame({"ra": [10.0, 10.05] + [20.0 + k for k in range(10)],
    ...                   "dec": [2.0] * 12,
    ...                   "field_id": ["8162-6-80", "1035-6-17"] + ["1035-6-17"] * 10})
    >>> s = assign_splits(t, ["8162-6-80"], sq, valid_fraction=0.2)
    >>> s.value_counts().to_dict()
    {'train': 8, 'valid': 2, 'test': 1, 'excluded': 1}
    """
    if "field_id" not in table:
        raise ValueError("assign_splits needs a 'field_id' column to recognise test-field rows")
    test_ids = {str(FieldID.parse(f)) for f in test_fields}
    fid = table["field_id"].astype(str)
    is_test = fid.isin(test_ids).to_numpy()
    keep = exclude_fields(table, test_footprints, margin_arcsec=margin_arcsec)
    split = np.where(is_test, "test", np.where(keep, "train", "excluded")).astype(object)
    pool = np.flatnonzero(split == "train")
    if len(pool):
        if groups is None:
            g = make_groups(table, by=by, cell_arcmin=cell_arcmin)
        else:
            g = np.asarray(groups)
        if len(g) != len(table):
            raise ValueError(f"groups has {len(g)} entries for {len(table)} rows")
        y = None
        if label_col is not None and label_col in table:
            y = table[label_col].to_numpy()[pool]
            if pd.isna(y).any():
                y = None
        _, valid = group_train_valid_indices(
            g[pool], y, valid_fraction=valid_fraction, random_state=random_state
        )
        split[pool[valid]] = "valid"
    return pd.Series(split, index=table.index, name="split", dtype=object)


