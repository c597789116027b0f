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
the Galactic plane far fewer galaxies still) the right probability differs by Bayes' rule; :func:`adjust_prior` applies it when the new
field's galaxy fraction is known or assumed::

    p' = p r / (p r + (1 - p) (1 - r')),   r = pi' / pi,  r' = (1 - pi') / (1 - pi)

(written with odds below). The classification threshold of 0.5 moves with it; ranking metrics
(ROC AUC) do not change.
"""

from __future__ import annotations

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator

__all__ = ["calibrate_pipeline", "adjust_prior", "CALIBRATION_METHODS"]

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
    calibrated = CalibratedClassifierCV(FrozenEstimator(final), method=method).fit(Xt, y)
    new = type(pipe)(list(steps[:-1]) + [(name, calibrated)])
    for attr in ("memory", "verbose"):
        if hasattr(pipe, attr):
            setattr(new, attr, getattr(pipe, attr))
    return new


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
