"""Parameter validation the scikit-learn way, in one place (private).

Every stargal estimator declares ``_parameter_constraints`` (scikit-learn's
:class:`~sklearn.utils._param_validation.Interval` / ``StrOptions`` / type constraints) and calls
:func:`validate_params` at the start of ``fit`` (and of ``transform`` for the stateless data
readers, whose parameters may be changed with ``set_params`` after fitting). A bad value raises
scikit-learn's :class:`InvalidParameterError` (a ``ValueError`` and ``TypeError``) whose message
starts with scikit-learn's own sentence and ends with the estimator's domain-specific hint, e.g.
why a cutout size must be odd. Checks that a constraint cannot express (odd sizes) are
:func:`check_odd`.

This module is the only one that imports scikit-learn's private validation names (and its
``_num_samples``, as :func:`num_samples`), so an upgrade that moves them is fixed here. It also
holds the value checks every module shares: :func:`is_real`, :func:`check_radec` (sky
coordinates), :func:`check_cutouts`, :func:`check_range`.

Examples
--------
>>> from sklearn.base import BaseEstimator
>>> class Toy(BaseEstimator):
...     _parameter_constraints = {"size": [Interval(Integral, 1, None, closed="left")]}
...     _parameter_hints = {"size": "size is the cutout side in pixels"}
...     def __init__(self, size=15):
...         self.size = size
>>> validate_params(Toy(size=0))
Traceback (most recent call last):
...
sklearn.utils._param_validation.InvalidParameterError: The 'size' parameter of Toy must be an int in the range [1, inf). Got 0 instead. (Toy: size is the cutout side in pixels)
"""

from __future__ import annotations

import math
import os
import re
from numbers import Integral, Real

import numpy as np
from scipy import sparse

from sklearn.base import _fit_context
from sklearn.utils.validation import _num_samples as num_samples
from sklearn.utils._param_validation import (
    HasMethods,
    Hidden,
    InvalidParameterError,
    Interval,
    Options,
    RealNotInt,
    StrOptions,
    validate_parameter_constraints,
)

__all__ = [
    "HasMethods",
    "check_range",
    "Hidden",
    "Integral",
    "Interval",
    "InvalidParameterError",
    "Options",
    "Real",
    "RealNotInt",
    "StrOptions",
    "_fit_context",
    "PATH_LIKE",
    "POSITIVE_INT",
    "N_JOBS",
    "validate_params",
    "check_odd",
    "check_cutouts",
    "check_radec",
    "is_real",
    "num_samples",
]

#: ``sas_url`` / ``cache_dir``: ``None`` (environment / defaults), a string or a path.
PATH_LIKE = [None, str, os.PathLike]
#: An int >= 1.
POSITIVE_INT = [Interval(Integral, 1, None, closed="left")]
#: joblib-style ``n_jobs``: ``None``, a positive int, or a negative int (``-1``: all CPUs).
N_JOBS = [None, Interval(Integral, 1, None, closed="left"), Interval(Integral, None, -1, closed="right")]

_PARAM = re.compile(r"^The '([^']+)' parameter")


def validate_params(estimator) -> None:
    """Check ``estimator``'s parameters against its ``_parameter_constraints``.

    On a bad value, raises :class:`InvalidParameterError` with scikit-learn's message followed
    by the estimator's ``_parameter_hints[name]`` (when it has one) in parentheses. Only the
    parameters named in ``_parameter_constraints`` are checked (the CNN names its own ones;
    skorch validates the parameters it inherits from skorch).
    """
    name = type(estimator).__name__
    params = estimator.get_params(deep=False)
    try:
        validate_parameter_constraints(estimator._parameter_constraints, params, caller_name=name)
        for key, value in params.items():  # scikit-learn's int/real constraints let True/False through
            if key not in estimator._parameter_constraints:  # not stargal's to check (e.g. skorch's)
                continue
            constraints = estimator._parameter_constraints[key]
            if (isinstance(value, (bool, np.bool_)) and constraints != "no_validation"
                    and not any(c == "boolean" or c is bool for c in constraints)):
                raise InvalidParameterError(
                    f"The {key!r} parameter of {name} must be a number, not a boolean. Got {value!r} instead.")
    except InvalidParameterError as exc:
        match = _PARAM.match(str(exc))
        hint = getattr(estimator, "_parameter_hints", {}).get(match.group(1)) if match else None
        if not hint:
            raise
        raise InvalidParameterError(f"{exc} ({name}: {hint})") from None


def check_odd(estimator, param: str, why: str) -> int:
    """The int value of ``param``, which must be odd (a ``ValueError`` saying ``why`` if not)."""
    value = int(getattr(estimator, param))
    if value % 2 == 0:
        raise InvalidParameterError(
            f"{type(estimator).__name__}: {param} must be odd, got {value}: {why}")
    return value


def check_cutouts(X, *, who: str, allow_nan: bool = False) -> np.ndarray:
    """Validate a cutout tensor and return it as float32 ``(n, B, H, W)``.

    ``allow_nan=True`` lets NaN/inf through (the caller handles them).
    """
    if sparse.issparse(X):
        raise TypeError(
            f"{who}: sparse input is not supported; expected a dense (n, bands, H, W) array"
        )
    if hasattr(X, "iloc") or hasattr(X, "columns"):
        raise TypeError(
            f"{who}: expected a cutout array of shape (n, bands, H, W), got a {type(X).__name__}; "
            "build cutouts with stargal.cutouts.Cutter first"
        )
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{who}: could not convert X to an array: {exc}") from exc
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"{who}: cutouts must be real numbers (nanomaggies), got dtype {arr.dtype}"
        )
    if arr.ndim != 4:
        raise ValueError(
            f"{who}: expected a 4-D cutout array of shape (n, bands, H, W), got shape {arr.shape} "
            f"({arr.ndim}-D)"
        )
    n, n_bands, h, w = arr.shape
    if n == 0:
        raise ValueError(f"{who}: found 0 cutouts (shape {arr.shape}); at least 1 is required")
    if n_bands == 0 or h == 0 or w == 0:
        raise ValueError(f"{who}: cutouts have an empty band or pixel axis: shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not allow_nan:
        finite = np.isfinite(arr).all(axis=(1, 2, 3))
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise ValueError(
                f"{who}: {bad.size} of {n} cutouts contain NaN or infinite pixels "
                f"(rows {bad[:10].tolist()}{' ...' if bad.size > 10 else ''}); drop the rows the "
                "Aligner/Cutter flagged (flag != '') before fitting"
            )
    return arr


def check_range(name, value, lo, hi, who="stargal"):
    """A (min, max) pair inside [lo, hi]; a clear ValueError otherwise."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: {name} must be a (min, max) pair of numbers, got {value!r}") from None
    if not (np.isfinite(a) and np.isfinite(b)) or a > b:
        raise ValueError(f"{who}: {name} must be finite with min <= max, got {value!r}")
    if a < lo or b > hi:
        raise ValueError(f"{who}: {name}={value!r} is outside the supported range [{lo:g}, {hi:g}]")
    return a, b


def is_real(value) -> bool:
    """True for a finite real number that is not a bool (``True`` is an ``int`` in Python).

    Examples
    --------
    >>> [is_real(v) for v in (1, 2.5, np.float32(3), True, float("nan"), "1")]
    [True, True, True, False, False, False]
    """
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def check_radec(ra, dec, what: str = "coordinates") -> tuple[np.ndarray, np.ndarray]:
    """``(ra, dec)`` as 1-d float arrays of one length, finite, ``|dec| <= 90`` (degrees).

    A ``ValueError`` naming ``what`` otherwise (the shape, the first non-finite row, the largest
    ``|dec|``).

    Examples
    --------
    >>> check_radec([10.0, 20.0], [0.0, -5.0])
    (array([10., 20.]), array([ 0., -5.]))
    """
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


#: Keys of a model input that carries measured features beside the cutouts (the hybrid CNN's).
INPUT_KEYS = ("images", "features")


def split_inputs(X):
    """``(images, features)`` of a model input: a cutout array (``features`` None), or a dict
    ``{'images': (n, C, H, W), 'features': (n, F)}`` (the hybrid CNN's input; the cutout steps
    work on the images and carry the features along, row for row)."""
    if isinstance(X, dict):
        unknown = sorted(set(X) - set(INPUT_KEYS))
        if unknown or "images" not in X:
            raise ValueError(f"a model input dict holds 'images' and optionally 'features', got keys {sorted(X)}")
        feats = X.get("features")
        if feats is not None:
            feats = np.asarray(feats, dtype=np.float32)
            if feats.ndim != 2 or len(feats) != len(X["images"]):
                raise ValueError(f"features must be (n, F) with one row per cutout ({len(X['images'])}), got "
                                 f"shape {feats.shape}")
        return X["images"], feats
    return X, None


def join_inputs(images, features):
    """Inverse of :func:`split_inputs`: the images alone, or the dict with the features."""
    return images if features is None else {"images": images, "features": features}


def n_rows(X) -> int:
    """Rows of a table, an array or a model-input dict."""
    images, _ = split_inputs(X)
    return len(images)


def table_input_tags(tags, requires_fit: bool = True):
    """scikit-learn tags of a step whose input is an objects table (strings and NaN allowed, no plain
    2-D arrays); ``requires_fit=False`` for the stateless ones (Cutter, SDSSPhotometry)."""
    tags.requires_fit = requires_fit
    tags.input_tags.allow_nan = True
    tags.input_tags.string = True
    tags.input_tags.two_d_array = False
    return tags
