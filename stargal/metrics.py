"""Evaluation metrics for star/galaxy classification.

Labels follow the package convention ``1 = galaxy``, ``0 = star``
(:data:`stargal.catalogs.LABELS`).  Every function accepts plain arrays and
returns plain Python numbers / :class:`pandas.DataFrame` objects so results can
be written to JSON or CSV directly.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

__all__ = ["classification_metrics", "metrics_table", "metrics_by_magnitude", "mcc_interval", "mcc_difference",
           "DEFAULT_MAG_BINS"]

#: default magnitude bin edges for :func:`metrics_by_magnitude`; bins are ``[lo, hi)``
DEFAULT_MAG_BINS = (-np.inf, 18.0, 19.0, 20.0, 21.0, 22.0, np.inf)

_CLASS_NAMES = ("star", "galaxy")


def _check_labels(y, name):
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
        raise ValueError(f"{name} must hold 0 (star) / 1 (galaxy), found {bad.tolist()}")
    return y.astype(np.int64)


def _p_galaxy(proba, n):
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 2:
        if p.shape[1] != 2:
            raise ValueError(f"proba must be (n,) p_galaxy or (n, 2) [p_star, p_galaxy], "
                             f"got shape {p.shape}")
        p = p[:, 1]
    if p.ndim != 1 or p.shape[0] != n:
        raise ValueError(f"proba has shape {np.shape(proba)}, expected ({n},) or ({n}, 2)")
    return p


def classification_metrics(y_true, y_pred, proba=None):
    """Scalar metrics of a binary star (0) / galaxy (1) classification.

    Parameters
    ----------
    y_true, y_pred : array_like of shape (n,)
        True and predicted labels, ``0 = star``, ``1 = galaxy``.
    proba : array_like of shape (n,) or (n, 2), optional
        ``p_galaxy`` or ``predict_proba`` output; enables ``roc_auc``.

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``balanced_accuracy`` (mean of per-class recall
        over the classes present in ``y_true``), ``mcc``, ``roc_auc`` (only with
        ``proba``; NaN when ``y_true`` has one class), ``precision_star``,
        ``recall_star``, ``f1_star``, ``precision_galaxy``, ``recall_galaxy``,
        ``f1_galaxy`` (NaN where undefined), ``confusion_matrix`` (nested list,
        rows = true ``[star, galaxy]``, columns = predicted).  Undefined values
        are NaN, never a silent 0.

    Examples
    --------
    >>> m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], proba=[0.1, 0.6, 0.8, 0.9])
    >>> m["accuracy"], m["recall_star"], m["roc_auc"], m["confusion_matrix"]
    (0.75, 0.5, 1.0, [[1, 1], [0, 2]])
    """
    yt = _check_labels(y_true, "y_true")
    yp = _check_labels(y_pred, "y_pred")
    if yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred differ in length: {yt.shape[0]} vs {yp.shape[0]}")
    n = int(yt.size)
    nan = float("nan")
    out = {"n": n}
    if n == 0:
        out.update(accuracy=nan, balanced_accuracy=nan, mcc=nan)
    else:
        out["accuracy"] = float(accuracy_score(yt, yp))
        present = np.unique(yt)
        out["balanced_accuracy"] = float(np.mean([np.mean(yp[yt == c] == c) for c in present]))
        out["mcc"] = float(matthews_corrcoef(yt, yp)) if present.size == 2 else nan
    if proba is not None:
        p = _p_galaxy(proba, n)
        out["roc_auc"] = (float(roc_auc_score(yt, p)) if np.unique(yt).size == 2 and
                          np.isfinite(p).all() else nan)
    prec, rec, f1, _ = precision_recall_fscore_support(yt, yp, labels=[0, 1], zero_division=np.nan)
    for i, name in enumerate(_CLASS_NAMES):
        out[f"precision_{name}"] = float(prec[i])
        out[f"recall_{name}"] = float(rec[i])
        out[f"f1_{name}"] = float(f1[i])
    out["confusion_matrix"] = confusion_matrix(yt, yp, labels=[0, 1]).tolist()
    return out


def metrics_table(metrics):
    """Collect several :func:`classification_metrics` results in one table.

    Parameters
    ----------
    metrics : dict of str -> dict
        Model / split name -> metrics dictionary.

    Returns
    -------
    pandas.DataFrame
        One row per name (index ``model``); scalar metrics as columns and the
        confusion matrix flattened into ``tn, fp, fn, tp`` (star = negative).

    Examples
    --------
    >>> t = metrics_table({"cnn": classification_metrics([0, 1], [0, 1])})
    >>> float(t.loc["cnn", "accuracy"]), int(t.loc["cnn", "tp"]), int(t.loc["cnn", "tn"])
    (1.0, 1, 1)
    """
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict name -> metrics, got {type(metrics).__name__}")
    rows = {}
    for name, m in metrics.items():
        row = {k: v for k, v in m.items() if k != "confusion_matrix"}
        cm = m.get("confusion_matrix")
        if cm is not None:
            (tn, fp), (fn, tp) = cm
            row.update(tn=tn, fp=fp, fn=fn, tp=tp)
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table


def _edge(v):
    return "-inf" if v == -math.inf else ("inf" if v == math.inf else f"{v:g}")


def metrics_by_magnitude(y_true, y_pred, mag, bins=DEFAULT_MAG_BINS):
    """Accuracy and MCC in magnitude bins.

    Parameters
    ----------
    y_true, y_pred : array_like of shape (n,)
        Labels, ``0 = star``, ``1 = galaxy``.
    mag : array_like of shape (n,)
        Magnitude of each object (e.g. r-band PSF magnitude, for reporting
        only).  Objects with a non-finite magnitude are left out.
    bins : sequence of float, default=DEFAULT_MAG_BINS
        Increasing bin edges; bin ``k`` is ``[bins[k], bins[k+1])``.  Use
        ``-inf`` / ``inf`` edges for open-ended bins.

    Returns
    -------
    pandas.DataFrame
        One row per bin: ``bin`` (label), ``mag_lo``, ``mag_hi``, ``n``,
        ``n_star``, ``n_galaxy``, ``accuracy`` (NaN if empty), ``mcc`` (NaN
        unless the bin holds both classes), ``recall_star`` and ``recall_galaxy``
        (NaN when the bin has no object of that class).

    Examples
    --------
    >>> t = metrics_by_magnitude([0, 1, 0, 1], [0, 1, 1, 1], [17.5, 18.5, 18.7, 23.0],
    ...                          bins=(-float("inf"), 18, 19, float("inf")))
    >>> t["n"].tolist(), t["accuracy"].tolist()
    ([1, 2, 1], [1.0, 0.5, 1.0])
    """
    yt = _check_labels(y_true, "y_true")
    yp = _check_labels(y_pred, "y_pred")
    m = np.asarray(mag, dtype=np.float64)
    if not (yt.shape == yp.shape == m.shape):
        raise ValueError(f"y_true, y_pred and mag must have the same length, got "
                         f"{yt.shape[0]}, {yp.shape[0]}, {m.shape}")
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins must be at least two strictly increasing edges, got {bins!r}")
    finite = np.isfinite(m)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = finite & (m >= lo) & (m < hi)
        t, p = yt[sel], yp[sel]
        n = int(sel.sum())
        both = np.unique(t).size == 2
        rows.append({
            "bin": f"[{_edge(lo)}, {_edge(hi)})",
            "mag_lo": float(lo), "mag_hi": float(hi), "n": n,
            "n_star": int((t == 0).sum()), "n_galaxy": int((t == 1).sum()),
            "accuracy": float(np.mean(t == p)) if n else float("nan"),
            "mcc": float(matthews_corrcoef(t, p)) if both else float("nan"),
            "recall_star": float(np.mean(p[t == 0] == 0)) if (t == 0).any() else float("nan"),
            "recall_galaxy": float(np.mean(p[t == 1] == 1)) if (t == 1).any() else float("nan"),
        })
    return pd.DataFrame(rows)


def _mcc(t, p, axis=-1):
    """Matthews correlation along ``axis`` of 0/1 arrays (0 where a margin is empty, as scikit-learn)."""
    t, p = np.asarray(t, bool), np.asarray(p, bool)
    tp = np.sum(t & p, axis=axis, dtype=np.float64)
    tn = np.sum(~t & ~p, axis=axis, dtype=np.float64)
    fp = np.sum(~t & p, axis=axis, dtype=np.float64)
    fn = np.sum(t & ~p, axis=axis, dtype=np.float64)
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (tp * tn - fp * fn) / np.where(den > 0, den, 1.0), 0.0)


def mcc_interval(y_true, y_pred, y_pred_ref=None, *, confidence=0.95, n_resamples=2000, random_state=0):
    """Bootstrap confidence interval of the Matthews correlation (or of a difference of two).

    The objects are resampled with replacement (:func:`scipy.stats.bootstrap`, percentile
    method, paired: every resample keeps each object's true and predicted labels together).
    This is the interval a metric on one field carries from *which* objects that field happens
    to hold; it says nothing of other fields or of training randomness.

    Parameters
    ----------
    y_true, y_pred : array_like of shape (n,)
        Labels, ``0 = star``, ``1 = galaxy``.
    y_pred_ref : array_like of shape (n,), optional
        A second model's predictions of the same objects: the interval is then that of
        ``MCC(y_pred) - MCC(y_pred_ref)``, resampled together (paired): narrower than the two
        models' own intervals combined as if independent, most of all for models that differ
        on few objects.
    confidence : float, default=0.95
        Confidence level, in (0, 1).
    n_resamples : int, default=2000
        Number of bootstrap resamples.
    random_state : int, numpy.random.Generator or None, default=0
        Seed of the resampling.

    Returns
    -------
    tuple of float
        ``(low, high)``.

    Examples
    --------
    >>> y = np.r_[np.zeros(60, int), np.ones(40, int)]
    >>> pred = y.copy(); pred[:6] = 1                     # 6 stars called galaxies
    >>> low, high = mcc_interval(y, pred)
    >>> bool(low < matthews_corrcoef(y, pred) < high), bool(high <= 1.0)
    (True, True)
    >>> low, high = mcc_interval(y, pred, y)              # against a perfect model: negative
    >>> bool(high < 0)
    True
    """
    from scipy.stats import bootstrap

    yt = _check_labels(y_true, "y_true")
    yp = _check_labels(y_pred, "y_pred")
    data = [yt, yp]
    if y_pred_ref is not None:
        data.append(_check_labels(y_pred_ref, "y_pred_ref"))
    if any(d.shape != yt.shape for d in data):
        raise ValueError(f"y_true, y_pred (and y_pred_ref) must have the same length, got {[d.size for d in data]}")
    if yt.size < 2:
        raise ValueError(f"mcc_interval needs at least 2 objects, got {yt.size}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if y_pred_ref is None:
        def statistic(t, p, axis=-1):
            return _mcc(t, p, axis)
    else:
        def statistic(t, p, q, axis=-1):
            return _mcc(t, p, axis) - _mcc(t, q, axis)
    res = bootstrap(tuple(data), statistic, paired=True, vectorized=True, method="percentile",
                    confidence_level=confidence, n_resamples=int(n_resamples), random_state=random_state)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mcc_difference(y_true, y_pred, y_pred_ref, **kwargs):
    """``MCC(y_pred) - MCC(y_pred_ref)`` on the same objects with its paired bootstrap interval:
    ``(difference, low, high)``. Keyword arguments go to :func:`mcc_interval`.

    Examples
    --------
    >>> y = np.r_[np.zeros(60, int), np.ones(40, int)]
    >>> worse = y.copy(); worse[:6] = 1
    >>> d, low, high = mcc_difference(y, y, worse)
    >>> round(d, 3), bool(0 < low <= d <= high)
    (0.115, True)
    """
    low, high = mcc_interval(y_true, y_pred, y_pred_ref, **kwargs)
    return float(_mcc(y_true, y_pred) - _mcc(y_true, y_pred_ref)), low, high
