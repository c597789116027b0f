"""SDSS's type rule as a classifier: galaxy when the measured ``psfMag - cModelMag`` is above a boundary.

:class:`SDSSTypeRule` learns exactly one number, the boundary on the type statistic of
:func:`stargal.photo.type_statistic` (SDSS's own is 0.145 mag; the mirror's reconstructed
catalogs used 0.19, see ``../shared/sdss/README.md``), from labelled objects: the boundary with
the highest Matthews correlation on them. Its probability is the chance that the statistic's true
value lies above the boundary given the measurement's error,
``p = Phi((stat - boundary) / sqrt(err^2 + err_floor^2))`` -- nothing more is fitted.

Objects without a measurement (NaN statistic: not detected, saturated, masked centre; see
:data:`stargal.photo.FIT_FLAGS`) are not guessed: ``predict_proba`` gives NaN for them
(``unmeasured='nan'``; :func:`stargal.predict.predict_coordinates` flags them ``'unmeasured'``),
or the training set's galaxy fraction (``unmeasured='prior'``, for scores that need a number
for every row).

Input: the :class:`~stargal.photo.SDSSPhotometry` table (columns ``type_stat`` and
``type_stat_err``), or a 2-D array whose first column is the statistic and whose second, if
present, is its error.

Examples
--------
>>> import numpy as np
>>> X = np.array([[0.0, 0.02], [0.05, 0.02], [0.4, 0.05], [0.9, 0.1]])
>>> rule = SDSSTypeRule().fit(X, [0, 0, 1, 1])
>>> float(np.round(rule.boundary_, 3))
0.225
>>> rule.predict(X).tolist()
[0, 0, 1, 1]
>>> SDSSTypeRule(boundary=0.145).fit(X, [0, 0, 1, 1]).boundary_
0.145
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import ndtr
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import matthews_corrcoef
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from ._validation import Interval, Real, StrOptions, validate_params

__all__ = ["SDSSTypeRule", "statistic_columns"]


def statistic_columns(X) -> np.ndarray:
    """The statistic (and its error) as an ``(n, 1 or 2)`` array from a measurement table or an array."""
    if isinstance(X, pd.DataFrame) and "type_stat" in X.columns:
        cols = ["type_stat"] + (["type_stat_err"] if "type_stat_err" in X.columns else [])
        return X[cols].to_numpy(float)
    return X


class SDSSTypeRule(ClassifierMixin, BaseEstimator):
    """Galaxy when the measured type statistic is above one fitted boundary (see the module).

    Parameters
    ----------
    boundary : 'fit' or float, default='fit'
        ``'fit'``: the boundary with the highest Matthews correlation on the training labels;
        a number: that boundary (e.g. SDSS's 0.145), nothing learned.
    unmeasured : {'nan', 'prior'}, default='nan'
        Probability of an object without a measurement: NaN (abstain) or the training set's
        galaxy fraction.
    err_floor : float, default=0.02
        Added in quadrature to the statistic's error (mag) in the probability.

    Attributes
    ----------
    boundary_ : float
    prior_ : float
        Galaxy fraction of the measured training objects.
    n_unmeasured_fit_ : int
        Training objects without a measurement (left out of the fit).
    classes_ : ndarray
    """

    def __init__(self, boundary="fit", unmeasured="nan", err_floor=0.02):
        self.boundary = boundary
        self.unmeasured = unmeasured
        self.err_floor = err_floor

    _parameter_constraints = {
        "boundary": [StrOptions({"fit"}), Interval(Real, None, None, closed="neither")],
        "unmeasured": [StrOptions({"nan", "prior"})],
        "err_floor": [Interval(Real, 0, None, closed="left")],
    }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.classifier_tags.multi_class = False
        return tags

    def fit(self, X, y):
        """Fit the boundary on labelled objects (0 = star, 1 = galaxy). Returns ``self``."""
        validate_params(self)
        arr, y = validate_data(self, statistic_columns(X), y, ensure_all_finite="allow-nan")
        check_classification_targets(y)
        kind = type_of_target(y, input_name="y")
        if kind not in ("binary", "unknown") and len(np.unique(y)) > 2:
            raise ValueError(f"Only binary classification is supported. The type of the target is {kind}.")
        self.classes_ = np.unique(y)
        stat = arr[:, 0]
        positive = y == self.classes_[-1]
        measured = np.isfinite(stat)
        self.n_unmeasured_fit_ = int((~measured).sum())
        if not measured.any():
            raise ValueError("SDSSTypeRule.fit: no training object has a measured type statistic")
        self.prior_ = float(positive[measured].mean())
        if self.boundary == "fit":
            self.boundary_ = self._best_boundary(stat[measured], positive[measured])
        else:
            self.boundary_ = float(self.boundary)
        return self

    def _z(self, X) -> np.ndarray:
        """``(stat - boundary_) / scale``: NaN without a measurement."""
        check_is_fitted(self, "boundary_")
        arr = validate_data(self, statistic_columns(X), reset=False, ensure_all_finite="allow-nan")
        stat = arr[:, 0]
        err = arr[:, 1] if arr.shape[1] > 1 else np.zeros(len(arr))
        scale = np.sqrt(np.nan_to_num(err, nan=0.0) ** 2 + float(self.err_floor) ** 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(scale > 0, (stat - self.boundary_) / np.where(scale > 0, scale, 1.0),
                            np.sign(stat - self.boundary_) * np.inf)

    @staticmethod
    def _best_boundary(stat: np.ndarray, positive: np.ndarray) -> float:
        """Midpoint between consecutive sorted values with the highest MCC (ties: the median)."""
        values = np.unique(stat)
        if values.size == 1:
            return float(values[0])
        lo, hi = np.quantile(stat, [0.01, 0.99])
        cand = (values[:-1] + values[1:]) / 2.0
        cand = cand[(cand >= lo) & (cand <= hi)] if ((cand >= lo) & (cand <= hi)).any() else cand
        if cand.size > 400:
            cand = np.unique(np.quantile(cand, np.linspace(0, 1, 400)))
        scores = np.array([matthews_corrcoef(positive, stat > c) for c in cand])
        best = np.flatnonzero(scores >= scores.max() - 1e-12)
        return float(np.median(cand[best]))

    def predict_proba(self, X) -> np.ndarray:
        """``(n, 2)`` probabilities; rows without a measurement get NaN (or the prior, see ``unmeasured``)."""
        z = self._z(X)
        p = ndtr(z)
        fill = np.nan if self.unmeasured == "nan" else self.prior_
        p = np.where(np.isnan(z), fill, p)
        if len(self.classes_) == 1:
            return np.ones((len(p), 1))
        return np.column_stack([1.0 - p, p])

    def decision_function(self, X) -> np.ndarray:
        """``(stat - boundary_) / sqrt(err^2 + err_floor^2)``; without a measurement NaN, or with
        ``unmeasured='prior'`` the score whose probability is the prior."""
        from scipy.special import ndtri

        z = self._z(X)
        if self.unmeasured == "prior":
            z = np.where(np.isnan(z), ndtri(self.prior_), z)
        return z

    def predict(self, X) -> np.ndarray:
        """Labels; a row without a measurement gets the more frequent training class."""
        proba = self.predict_proba(X)
        if proba.shape[1] == 1:
            return np.full(len(proba), self.classes_[0])
        p = np.where(np.isfinite(proba[:, 1]), proba[:, 1], self.prior_)
        return self.classes_[(p >= 0.5).astype(int)]
