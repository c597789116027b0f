"""Probabilities worth the name: calibrate a fitted pipeline's ``p_galaxy`` on held-out sky groups.

The CNN is trained with a class-weighted loss (each class counts equally), so its softmax output
is a good ranking score but not the galaxy frequency of the objects it is shown. The forest's
vote fractions are not probabilities either. :func:`calibrate_pipeline` fits scikit-learn's own
:class:`~sklearn.calibration.CalibratedClassifierCV` on a **frozen** final estimator
(:class:`~sklearn.frozen.FrozenEstimator`: nothing is refitted) using objects the model was not
trained on -- the validation sky groups of the study, never the test field -- and puts the result
back as the pipeline's final step, so the pipeline (``'align'`` first) still predicts from RA/Dec.

The prior
---------
A calibrated ``p_galaxy`` is the galaxy fraction *among objects like these in the calibration
set*, whose star/galaxy mix is that of the training fields (about half galaxies in the default study).
On a field with another mix (the star-rich test field has about three stars per galaxy; a field in
the Galactic plane far fewer galaxies still) the right probability differs by Bayes' rule;
:func:`adjust_prior` applies it when the new field's galaxy fraction is known or assumed::

    p' = p r / (p r + (1 - p) (1 - r')),   r = pi' / pi,  r' = (1 - pi') / (1 - pi)

(written with odds below). The classification threshold of 0.5 moves with it; ranking metrics
(ROC AUC) do not change.

A field's galaxy fraction need not be known: :func:`estimate_prior` finds it from the model's
own probabilities on that field's objects, without labels, by the EM iteration of Saerens,
Latinne & Decaestecker (2002, Neural Computation 14, 21): adjust the probabilities to the
current estimate, take their mean as the next estimate, repeat. :func:`adapt_to_field` does both
steps. It needs many objects of one field (a catalog of the field, not a handful of coordinates)
and probabilities that are well calibrated at a known mix -- EM amplifies a miscalibration (a
weak or under-trained model can drive the estimate far from the truth; the study reports the
estimates its models make on held-out fields): :func:`calibrate_pipeline` records that
mix as ``calibration_fraction_`` on the pipeline it returns; a class-weighted model that was not
calibrated corresponds to a mix of 0.5 (both classes weighted equally).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator

__all__ = ["calibrate_pipeline", "PackedInputs", "adjust_prior", "estimate_prior", "adapt_to_field",
           "CALIBRATION_METHODS", "MIN_FIELD_OBJECTS"]

#: Fewest objects of one field for which :func:`adapt_to_field` re-estimates the field's mix.
MIN_FIELD_OBJECTS = 100

#: ``method`` values of :func:`calibrate_pipeline` (those of ``CalibratedClassifierCV``).
CALIBRATION_METHODS = ("sigmoid", "isotonic")


def calibrate_pipeline(pipe, X, y, method="sigmoid"):
    """A copy of a fitted pipeline whose final step is calibrated on ``(X, y)``.

    Parameters
    ----------
    pipe : fitted Pipeline
        Any stargal pipeline (or other scikit-learn/imblearn pipeline); samplers are skipped
        when ``X`` is transformed, as at prediction time.
    X : objects table or array
        Held-out rows (e.g. the study's validation split), in the pipeline's input format.
    y : array-like of shape (n,)
        Their labels (0 = star, 1 = galaxy).
    method : {'sigmoid', 'isotonic'}, default='sigmoid'
        Platt scaling (2 parameters: robust on a few hundred objects) or isotonic regression.

    Returns
    -------
    Pipeline
        Same steps, the final one replaced by ``CalibratedClassifierCV(FrozenEstimator(final),
        method=method)`` fitted on the transformed ``X``. The input pipeline is not modified.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 3)); y = (X[:, 0] + rng.normal(size=300) > 0).astype(int)
    >>> pipe = make_pipeline(StandardScaler(), RandomForestClassifier(50, random_state=0)).fit(X[:200], y[:200])
    >>> cal = calibrate_pipeline(pipe, X[200:], y[200:])
    >>> type(cal.steps[-1][1]).__name__, cal.predict_proba(X[:2]).shape
    ('CalibratedClassifierCV', (2, 2))
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {list(CALIBRATION_METHODS)}, got {method!r}")
    steps = getattr(pipe, "steps", None)
    if not steps:
        raise TypeError(f"calibrate_pipeline needs a fitted Pipeline, got {type(pipe).__name__}")
    y = np.asarray(y)
    if np.unique(y).size < 2:
        raise ValueError("calibration needs both classes among the held-out objects")
    name, final = steps[-1]
    Xt = pipe[:-1].transform(X) if len(steps) > 1 else X
    # a final step that abstains (NaN, e.g. the rule on unmeasured objects) is calibrated on the
    # rows it answers; it keeps abstaining on the others
    known = np.isfinite(np.asarray(final.predict_proba(Xt), float)).all(axis=1)
    if not known.all():
        Xt = Xt.iloc[known] if hasattr(Xt, "iloc") else Xt[known]
        y = y[known]
        if np.unique(y).size < 2:
            raise ValueError("calibration needs both classes among the held-out objects the model answers")
    packed = isinstance(Xt, dict)
    if packed:  # cutouts and measured features (the hybrid CNN): scikit-learn wants one array per row
        final, Xt = PackedInputs.wrap(final, Xt)
    calibrated = CalibratedClassifierCV(FrozenEstimator(final), method=method).fit(Xt, y)
    if packed:
        calibrated = PackedInputs(calibrated, final.image_shape, pack=True)
    new = type(pipe)(list(steps[:-1]) + [(name, calibrated)])
    for attr in ("memory", "verbose"):
        if hasattr(pipe, attr):
            setattr(new, attr, getattr(pipe, attr))
    new.calibration_fraction_ = float(np.mean(y == 1))  # the mix p_galaxy is calibrated at
    return new


def _pack(X) -> np.ndarray:
    """``{'images': (n, C, H, W), 'features': (n, F)}`` -> ``(n, C*H*W + F)`` float32 rows."""
    images = np.asarray(X["images"], dtype=np.float32)
    features = np.asarray(X.get("features", np.zeros((len(images), 0))), dtype=np.float32)
    return np.hstack([images.reshape(len(images), -1), features])


class PackedInputs(ClassifierMixin, BaseEstimator):
    """A classifier of dict inputs (``{'images', 'features'}``, the hybrid CNN's) seen through packed rows.

    :class:`~sklearn.calibration.CalibratedClassifierCV` needs one array per row. With
    ``pack=False`` this wraps the fitted network: rows packed as ``[images.ravel(), features]`` are
    unpacked for it. With ``pack=True`` it wraps the fitted calibrator: the dicts the pipeline passes
    at prediction are packed for it. :func:`calibrate_pipeline` builds both.

    Parameters
    ----------
    estimator : fitted classifier
    image_shape : tuple of int
        ``(C, H, W)`` of one cutout.
    pack : bool, default=False
    """

    def __init__(self, estimator=None, image_shape=(), pack=False):
        self.estimator = estimator
        self.image_shape = image_shape
        self.pack = pack

    @classmethod
    def wrap(cls, estimator, X: dict):
        """``(wrapper, packed X)`` for a fitted ``estimator`` and a dict input ``X``."""
        return cls(estimator, tuple(int(v) for v in np.shape(X["images"])[1:])), _pack(X)

    @property
    def classes_(self):
        return self.estimator.classes_

    def __sklearn_is_fitted__(self) -> bool:
        return self.estimator is not None  # wraps an already fitted classifier

    def fit(self, X, y=None):
        """Nothing to fit: the wrapped classifier is already fitted. Returns ``self``."""
        return self

    def _convert(self, X):
        if self.pack:
            return _pack(X) if isinstance(X, dict) else X
        if isinstance(X, dict):
            return X
        X = np.asarray(X, dtype=np.float32)
        k = int(np.prod(self.image_shape))
        images = X[:, :k].reshape((len(X),) + tuple(self.image_shape))
        return {"images": images, "features": X[:, k:]} if X.shape[1] > k else images

    def predict_proba(self, X):
        """The wrapped classifier's probabilities."""
        return self.estimator.predict_proba(self._convert(X))

    def predict(self, X):
        """The wrapped classifier's labels."""
        return self.estimator.predict(self._convert(X))


def adjust_prior(p_galaxy, galaxy_fraction, calibration_fraction):
    """Move calibrated galaxy probabilities to a field with another star/galaxy mix (Bayes' rule).

    ``odds' = odds * [pi' / (1 - pi')] / [pi / (1 - pi)]`` with ``pi`` the galaxy fraction of the
    calibration set and ``pi'`` that of the new field.

    Parameters
    ----------
    p_galaxy : array-like
        Calibrated probabilities.
    galaxy_fraction : float
        The new field's galaxy fraction ``pi'``, in (0, 1).
    calibration_fraction : float
        The calibration set's galaxy fraction ``pi``, in (0, 1).

    Returns
    -------
    ndarray

    Examples
    --------
    >>> float(adjust_prior(0.5, 0.25, 0.5))
    0.25
    """
    for name, v in (("galaxy_fraction", galaxy_fraction), ("calibration_fraction", calibration_fraction)):
        if not 0 < float(v) < 1:
            raise ValueError(f"{name} must be in (0, 1), got {v!r}")
    p = np.clip(np.asarray(p_galaxy, dtype=float), 1e-12, 1 - 1e-12)
    k = (galaxy_fraction / (1 - galaxy_fraction)) / (calibration_fraction / (1 - calibration_fraction))
    odds = p / (1 - p) * k
    return odds / (1 + odds)


def estimate_prior(p_galaxy, calibration_fraction, max_iter=200, tol=1e-6):
    """A field's galaxy fraction from calibrated probabilities of its objects, without labels (EM).

    Saerens, Latinne & Decaestecker (2002): starting from ``calibration_fraction``, repeatedly
    move the probabilities to the current estimate (:func:`adjust_prior`) and take their mean
    as the new estimate, until it changes by less than ``tol``.

    Parameters
    ----------
    p_galaxy : array-like of shape (n,)
        Probabilities calibrated at ``calibration_fraction``, for objects of one field.
    calibration_fraction : float
        Galaxy fraction the probabilities are calibrated at, in (0, 1).
    max_iter : int, default=200
    tol : float, default=1e-6

    Returns
    -------
    float
        Estimated galaxy fraction, in [0.001, 0.999].

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.random(20000) < 0.2                 # a field with 20 % galaxies
    >>> s = rng.normal(np.where(y, 1.0, -1.0), 1.0)  # a score: N(+1, 1) galaxies, N(-1, 1) stars
    >>> p_half = 1 / (1 + np.exp(-2 * s))           # exact p(galaxy | s) at a 50 % mix
    >>> round(estimate_prior(p_half, 0.5), 2)
    0.2
    """
    p = np.asarray(p_galaxy, dtype=float)
    p = p[np.isfinite(p)]
    if p.size == 0:
        raise ValueError("estimate_prior needs at least one finite probability")
    pi = float(calibration_fraction)
    for _ in range(int(max_iter)):
        new = float(np.clip(adjust_prior(p, pi, calibration_fraction).mean(), 1e-3, 1 - 1e-3))
        if abs(new - pi) < tol:
            return new
        pi = new
    return pi


def adapt_to_field(p_galaxy, calibration_fraction, min_objects=MIN_FIELD_OBJECTS):
    """Probabilities moved to the field's own galaxy fraction, estimated by :func:`estimate_prior`.

    Parameters
    ----------
    p_galaxy : array-like of shape (n,)
        Calibrated probabilities of the objects of **one** field.
    calibration_fraction : float
        The mix they are calibrated at (``pipeline.calibration_fraction_``; 0.5 for an
        uncalibrated class-weighted model).
    min_objects : int, default=MIN_FIELD_OBJECTS
        With fewer finite probabilities the field's mix is not estimated and ``p_galaxy`` is
        returned unchanged (prior = ``calibration_fraction``).

    Returns
    -------
    p : ndarray
        Adjusted probabilities (NaN stays NaN).
    prior : float
        The galaxy fraction used.

    Examples
    --------
    >>> import numpy as np
    >>> p, prior = adapt_to_field(np.full(10, 0.7), 0.5)   # too few objects: unchanged
    >>> float(p[0]), prior
    (0.7, 0.5)
    """
    p = np.asarray(p_galaxy, dtype=float)
    finite = np.isfinite(p)
    if finite.sum() < int(min_objects):
        return p.copy(), float(calibration_fraction)
    prior = estimate_prior(p[finite], calibration_fraction)
    out = np.full(p.shape, np.nan)
    out[finite] = adjust_prior(p[finite], prior, calibration_fraction)
    return out, prior
