"""Leakage-free data splits: sky-region groups, test-field exclusion, split reports.

Objects that are close on the sky share seeing, depth, calibration and neighbours, so random
row-wise splits leak. This module provides

* :func:`sky_groups` / :func:`make_groups` -- group ids from a fixed sky grid (or whole fields),
  to be used with group-aware cross-validation (:func:`make_cv`) and validation hold-outs
  (:func:`group_train_valid_indices`);
* :func:`exclude_fields` -- a *keep* mask that removes every object lying on (or within a
  margin of) any given frame, e.g. the test field's r frame, so the test field never leaks
  into train/validation even when fields overlap;
* :func:`distance_to_footprint`, :func:`footprint_overlap`, :func:`min_separation_arcsec` --
  the geometry behind it, exposed for checks;
* :func:`assign_splits` -- the study's ``'test'``/``'train'``/``'valid'``/``'excluded'`` column;
* :func:`split_report` and :func:`magnitude_ks` -- per-split counts, class balance, magnitude
  distributions and KS tests for the report.

Geometry conventions
--------------------
RA/Dec are ICRS degrees. A *footprint* is a frame (:class:`stargal.frames.Frame`, or a
:class:`stargal.frames.Field`, whose r frame is used). Whether a point lies on a frame, or
within a margin of it, is decided in that frame's **pixels** through its own WCS
(:meth:`stargal.frames.Frame.near`): the margin in arcsec is converted with the frame's pixel
scale, and the frame grown by the margin has rounded corners (Euclidean pixel distance).

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

from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.model_selection import BaseCrossValidator

from stargal.sdss import FieldID

__all__ = [
    "sky_groups",
    "make_groups",
    "field_group_ids",
    "distance_to_footprint",
    "in_footprints",
    "exclude_fields",
    "footprint_overlap",
    "min_separation_arcsec",
    "group_train_valid_indices",
    "GroupHoldOut",
    "make_cv",
    "assign_splits",
    "split_report",
    "magnitude_ks",
    "SPLIT_ORDER",
]

_DEG = np.pi / 180.0

#: Order in which split names are reported (others follow alphabetically).
SPLIT_ORDER: tuple[str, ...] = ("train", "valid", "validation", "test", "excluded")


# ==============================================================================================
# input helpers
# ==============================================================================================
def _coords(ra, dec, what="coordinates"):
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    if ra.shape != dec.shape or ra.ndim != 1:
        raise ValueError(
            f"{what}: ra and dec must be 1-d arrays of the same length, got shapes {ra.shape} and "
            f"{dec.shape}"
        )
    bad = ~(np.isfinite(ra) & np.isfinite(dec))
    if bad.any():
        raise ValueError(
            f"{what}: {int(bad.sum())} row(s) have non-finite ra/dec (first at position "
            f"{int(np.argmax(bad))})"
        )
    if (np.abs(dec) > 90).any():
        raise ValueError(
            f"{what}: dec must lie in [-90, 90] degrees; got values up to {np.abs(dec).max():.6g}"
        )
    return ra, dec


def _table_coords(table, ra_col="ra", dec_col="dec"):
    try:
        ra, dec = table[ra_col], table[dec_col]
    except (KeyError, TypeError, IndexError):
        raise ValueError(f"table must have columns {ra_col!r} and {dec_col!r} (degrees)") from None
    return _coords(ra, dec, what="table")


def _is_real(value):
    return isinstance(value, Real) and not isinstance(value, bool) and bool(np.isfinite(value))


def _check_margin(margin_arcsec):
    if not _is_real(margin_arcsec) or margin_arcsec < 0:
        raise ValueError(f"margin_arcsec must be a finite number >= 0, got {margin_arcsec!r}")
    return float(margin_arcsec)


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
    if not _is_real(cell_arcmin) or cell_arcmin <= 0:
        raise ValueError(f"cell_arcmin must be a positive number, got {cell_arcmin!r}")
    ra, dec = _coords(ra, dec)
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
# footprints
# ==============================================================================================
def _frames(footprints):
    """Normalise to a list of frames: a :class:`~stargal.frames.Frame`, a
    :class:`~stargal.frames.Field` (its r frame), or a sequence / mapping of these."""
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
    ra, dec = _coords(ra, dec)
    (frame,) = _frames(footprint)
    return frame.outside_distance(*frame.world_to_pixel(ra, dec)) * frame.pixel_scale


def in_footprints(ra, dec, footprints, margin_arcsec=0.0):
    """True for points on any frame or within ``margin_arcsec`` of one (pixel space, its WCS).

    Parameters
    ----------
    ra, dec : array-like of float, shape (n,)
        Degrees; non-finite values are an error.
    footprints : see :func:`exclude_fields`
    margin_arcsec : float, default=0.0

    Returns
    -------
    ndarray of bool, shape (n,)
        :func:`exclude_fields` returns the complement for a table.
    """
    ra, dec = _coords(ra, dec)
    margin = _check_margin(margin_arcsec)
    hit = np.zeros(len(ra), dtype=bool)
    for frame in _frames(footprints):
        hit |= frame.near(ra, dec, margin)
    return hit


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
    ra1, dec1 = _coords(ra1, dec1)
    ra2, dec2 = _coords(ra2, dec2)
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
    early-stopping split (:class:`stargal.models.SkyValidSplit`, through skorch's ``ValidSplit``).
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
        if not _is_real(fraction) or not 0 < fraction <= 0.5:
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
                f"added rows, use stargal.models.SkyPipeline and a sampler with sample_indices_")
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


# ==============================================================================================
# reports
# ==============================================================================================
def _split_names(values):
    uniq = list(pd.unique(values))
    known = [s for s in SPLIT_ORDER if s in uniq]
    others = sorted((s for s in uniq if s not in SPLIT_ORDER), key=str)
    return known + others


def _is_galaxy(labels):
    """Labels ('galaxy'/'star' or 1/0) -> float array 1/0, NaN for missing."""
    s = pd.Series(labels)
    out = np.full(len(s), np.nan)
    low = s.astype(str).str.strip().str.lower()
    gal = low.isin(["galaxy", "1", "1.0", "true"])
    star = low.isin(["star", "0", "0.0", "false"])
    missing = s.isna().to_numpy()
    bad = ~(gal | star).to_numpy() & ~missing
    if bad.any():
        examples = sorted(set(s[bad].astype(str)))[:5]
        raise ValueError(f"labels must be 'star'/'galaxy' or 0/1; got {examples}")
    out[gal.to_numpy()] = 1.0
    out[star.to_numpy()] = 0.0
    return out


def _field_strings(table):
    if "field_id" in table:
        return table["field_id"].astype(str).to_numpy()
    if all(c in table for c in ("run", "camcol", "field")):
        triples = zip(table["run"], table["camcol"], table["field"])
        return np.array([f"{r}-{c}-{f}" for r, c, f in triples], dtype=object)
    return None


def split_report(table, split_col="split", label_col="label", mag_col="psfmag_r"):
    """Per-split summary: counts, class balance, r magnitudes and fields.

    Parameters
    ----------
    table : pandas.DataFrame
        Objects with ``split_col``, ``label_col`` (``'star'``/``'galaxy'`` or 0/1; missing
        labels are counted in ``n_objects`` only) and optionally ``mag_col`` and ``field_id``
        (or ``run``/``camcol``/``field``).
    split_col, label_col, mag_col : str

    Returns
    -------
    pandas.DataFrame
        Indexed by split (train, valid, test, excluded first), columns ``n_objects``,
        ``n_stars``, ``n_galaxies``, ``galaxy_fraction``, ``{mag_col}_median``,
        ``{mag_col}_q10``, ``{mag_col}_q90`` (NaN without ``mag_col``), ``n_fields``, ``fields``
        (comma-separated, sorted; empty when the table has no field columns).

    Examples
    --------
    >>> t = pd.DataFrame({"split": ["train", "train", "test"],
    ...                   "label": ["star", "galaxy", "star"],
    ...                   "psfmag_r": [18.0, 20.0, 19.0],
    ...                   "field_id": ["1035-6-17"] * 2 + ["8162-6-80"]})
    >>> cols = ["n_objects", "n_galaxies", "galaxy_fraction", "fields"]
    >>> split_report(t)[cols]  # doctest: +NORMALIZE_WHITESPACE
           n_objects  n_galaxies  galaxy_fraction     fields
    split
    train          2           1              0.5  1035-6-17
    test           1           0              0.0  8162-6-80
    """
    for col in (split_col, label_col):
        if col not in table:
            raise ValueError(f"split_report needs a {col!r} column")
    gal = _is_galaxy(table[label_col].to_numpy())
    mags = None
    if mag_col in table:
        mags = pd.to_numeric(table[mag_col], errors="coerce").to_numpy(dtype=float)
    fields_ = _field_strings(table)
    splits = table[split_col].to_numpy()
    rows = {}
    for name in _split_names(splits):
        m = splits == name
        g = gal[m]
        n_gal = int(np.nansum(g == 1))
        n_star = int(np.nansum(g == 0))
        row = {
            "n_objects": int(m.sum()),
            "n_stars": n_star,
            "n_galaxies": n_gal,
            "galaxy_fraction": n_gal / (n_gal + n_star) if n_gal + n_star else np.nan,
        }
        mm = mags[m] if mags is not None else np.array([])
        mm = mm[np.isfinite(mm)]
        q = np.quantile(mm, [0.5, 0.1, 0.9]) if len(mm) else [np.nan] * 3
        for suffix, value in zip(("median", "q10", "q90"), q):
            row[f"{mag_col}_{suffix}"] = float(value)
        fs = sorted(set(fields_[m])) if fields_ is not None else []
        row["n_fields"] = len(fs)
        row["fields"] = ", ".join(fs)
        rows[name] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "split"
    return out


def magnitude_ks(table, split_col="split", mag_col="psfmag_r"):
    """Two-sample Kolmogorov-Smirnov tests of ``mag_col`` between every pair of splits.

    Parameters
    ----------
    table : pandas.DataFrame
    split_col, mag_col : str

    Returns
    -------
    pandas.DataFrame
        One row per pair: ``split_a``, ``split_b``, ``n_a``, ``n_b``, ``ks_statistic``,
        ``p_value`` (NaN when a split has no finite magnitude).

    Examples
    --------
    >>> t = pd.DataFrame({"split": ["train"] * 50 + ["test"] * 50,
    ...                   "psfmag_r": np.r_[np.linspace(16, 22, 50), np.linspace(16, 22, 50)]})
    >>> magnitude_ks(t)[["split_a", "split_b", "ks_statistic"]]
      split_a split_b  ks_statistic
    0   train    test           0.0
    """
    from scipy.stats import ks_2samp

    for col in (split_col, mag_col):
        if col not in table:
            raise ValueError(f"magnitude_ks needs a {col!r} column")
    splits = table[split_col].to_numpy()
    mags = pd.to_numeric(table[mag_col], errors="coerce").to_numpy(dtype=float)
    names = _split_names(splits)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ma = mags[(splits == a) & np.isfinite(mags)]
            mb = mags[(splits == b) & np.isfinite(mags)]
            if len(ma) and len(mb):
                res = ks_2samp(ma, mb)
                stat, p = float(res.statistic), float(res.pvalue)
            else:
                stat = p = np.nan
            rows.append((a, b, len(ma), len(mb), stat, p))
    columns = ["split_a", "split_b", "n_a", "n_b", "ks_statistic", "p_value"]
    return pd.DataFrame(rows, columns=columns)
