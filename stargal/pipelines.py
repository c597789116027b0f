"""The model pipelines: the CNN (skorch), the random forests, SDSS's rule and a majority baseline.

Every factory returns an :class:`imblearn.pipeline.Pipeline` (:class:`SkyPipeline` for the
networks) with fixed step names, so hyper-parameters route the usual scikit-learn way::

    front steps (e.g. 'align', 'cut')  ->  ['augment']  ->  ['psf']  ->  ['scale']  ->  'net'
    front steps                        ->  'features'   ->  'forest'
    'align'  ->  'features' (cutout features | measured features)  ->  'forest'
    'align'  ->  'inputs' (cutouts, measured features)  ->  ['augment', 'psf', 'scale']  ->  'net'
    front steps (ending in the photometry)  ->  'rule'
    front steps                        ->  'flatten'    ->  'majority'

e.g. ``net__module__width``, ``net__lr``, ``net__optimizer__weight_decay``,
``cut__size``, ``forest__max_depth``.  With ``front=None`` the pipelines take
float32 cutouts ``(n, 5, H, W)`` (bands ``u, g, r, i, z``, nanomaggies)
directly; the caller adds ``[('align', Aligner()), ('cut', Cutter())]`` to start
from an objects table.

Besides the factories: :class:`SkyPipeline` (keeps the net's ``groups`` aligned with rows a
sampler adds), :class:`InputUnion` (the hybrid CNN's dict input) and :class:`Flatten`.
The classifier itself is :mod:`stargal.classifier`.
"""

from __future__ import annotations

import numpy as np
from imblearn.pipeline import Pipeline
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import FeatureUnion
from sklearn.utils.validation import check_is_fitted
from skorch.utils import to_numpy

from stargal._validation import n_rows
from stargal.classifier import make_cnn_net
from stargal.features import MeasuredFeatures, PhotometricFeatures
from stargal.rule import SDSSTypeRule

__all__ = [
    "SkyPipeline",
    "InputUnion",
    "Flatten",
    "make_cnn_pipeline",
    "make_forest_pipeline",
    "make_measured_forest_pipeline",
    "make_hybrid_pipeline",
    "make_rule_pipeline",
    "make_majority_pipeline",
]

_RESERVED = ("augment", "psf", "scale", "net", "features", "forest", "flatten", "majority", "rule", "inputs")


class SkyPipeline(Pipeline):
    """:class:`imblearn.pipeline.Pipeline` that keeps the final step's ``groups`` aligned.

    When samplers (steps with ``fit_resample``, e.g. a cutout augmenter) change
    the rows during ``fit``, a ``groups`` fit parameter of the final step
    (``net__groups``) is re-indexed with the samplers' ``sample_indices_``
    (index of the source row of every output row), so that resampled copies
    keep their source's group.  If a sampler changed the number of rows and has
    no ``sample_indices_``, fitting fails with a clear error rather than leak.
    Otherwise identical to the imbalanced-learn pipeline.

    Examples
    --------
    >>> from imblearn.over_sampling import RandomOverSampler
    >>> from sklearn.dummy import DummyClassifier
    >>> pipe = SkyPipeline([('augment', RandomOverSampler()), ('clf', DummyClassifier())])
    >>> pipe.steps[0][0]
    'augment'
    """

    def _fit(self, X, y=None, routed_params=None, raw_params=None):
        n_in = n_rows(X)
        Xt, yt = super()._fit(X, y, routed_params=routed_params, raw_params=raw_params)
        if routed_params is not None and len(self.steps):
            self._align_groups(routed_params, n_in, n_rows(Xt))
        return Xt, yt

    def _align_groups(self, routed_params, n_in, n_out):
        name = self.steps[-1][0]
        if name not in routed_params:
            return
        index, blind = np.arange(n_in), []
        for _, step_name, step in self._iter(with_final=False, filter_passthrough=True,
                                             filter_resample=False):
            is_sampler = hasattr(step, "fit_resample") and not (
                hasattr(step, "transform") or hasattr(step, "fit_transform"))
            if not is_sampler:
                continue
            sample_indices = getattr(step, "sample_indices_", None)
            if sample_indices is None:
                blind.append(step_name)
            else:
                index = index[np.asarray(sample_indices)]
        for params in routed_params[name].values():
            groups = params.get("groups") if hasattr(params, "get") else None
            if groups is None:
                continue
            groups = np.asarray(to_numpy(groups))
            if blind:
                if groups.shape[0] != n_out:
                    raise ValueError(
                        f"step(s) {blind} changed the number of rows ({n_in} -> {n_out}) but "
                        f"expose no sample_indices_, so groups cannot follow the new rows")
                continue
            if groups.shape[0] != n_in:
                raise ValueError(f"groups has {groups.shape[0]} entries but X has {n_in} rows")
            params["groups"] = groups[index]


def _check_front(front):
    if front is None:
        return []
    steps = list(front)
    for item in steps:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError(f"front must be a list of (name, estimator) tuples, got {item!r}")
        if item[0] in _RESERVED:
            raise ValueError(f"front step name {item[0]!r} is reserved for the factory's steps")
    return steps


def make_cnn_pipeline(front=None, augmenter=None, scaler=None, psf=None, **net_params):
    """CNN pipeline: ``front + ['augment'] + ['psf'] + ['scale'] + 'net'``.

    Parameters
    ----------
    front : list of (str, estimator), optional
        Steps producing cutouts, e.g. ``[('align', Aligner()), ('cut', Cutter())]``.
        ``None``: the pipeline takes ``(n, 5, H, W)`` cutouts (``(n, 10, H, W)`` PSF-aware
        cutouts with ``psf``).
    augmenter : sampler, optional
        Step ``'augment'`` (``fit_resample``; applied during ``fit`` only).
    psf : transformer, optional
        Step ``'psf'``, e.g. :class:`~stargal.psf_channels.PSFChannels`, turning the PSF
        channels of ``Cutter(psf=True)`` cutouts into the network's PSF input (after the
        augmenter, so augmented copies are measured afresh). ``psf__mode='drop'`` makes the
        same pipeline PSF-blind; the network takes its channel count from the data.
    scaler : transformer, optional
        Step ``'scale'``, e.g. ``AsinhScaler()``.
    **net_params
        Passed to :func:`make_cnn_net`.

    Returns
    -------
    SkyPipeline
        Fit with ``pipe.fit(X, y, net__groups=groups)`` for a leak-free
        internal validation split.

    Examples
    --------
    >>> pipe = make_cnn_pipeline(width=8)
    >>> [name for name, _ in pipe.steps], pipe.get_params()['net__module__width']
    (['net'], 8)
    """
    steps = _check_front(front) + _image_steps(augmenter, psf, scaler)
    steps.append(("net", make_cnn_net(**net_params)))
    return SkyPipeline(steps)


def _image_steps(augmenter=None, psf=None, scaler=None) -> list:
    """The cutout steps between the front and the net: ``['augment'] -> ['psf'] -> ['scale']``."""
    return [(name, step) for name, step in (("augment", augmenter), ("psf", psf), ("scale", scaler))
            if step is not None]


def make_forest_pipeline(front=None, **rf_params):
    """Random-forest baseline: ``front + 'features' (PhotometricFeatures) + 'forest'``.

    Parameters
    ----------
    front : list of (str, estimator), optional
        Steps producing cutouts; ``None``: the pipeline takes cutouts.
    **rf_params
        :class:`~sklearn.ensemble.RandomForestClassifier` parameters; defaults
        ``n_estimators=300, class_weight='balanced', random_state=0, n_jobs=1``.

    Returns
    -------
    imblearn.pipeline.Pipeline

    Examples
    --------
    >>> make_forest_pipeline(n_estimators=10).get_params()['forest__n_estimators']
    10
    """
    params = dict(n_estimators=300, class_weight="balanced", random_state=0, n_jobs=1)
    params.update(rf_params)
    return Pipeline(_check_front(front) + [("features", PhotometricFeatures()),
                                           ("forest", RandomForestClassifier(**params))])


def make_measured_forest_pipeline(align, cutter, photometry, measured=True, **rf_params):
    """Random forest on aperture features *and* model-fit measurements of the same pixels.

    ``align -> features -> forest`` where ``features`` is a :class:`~sklearn.pipeline.FeatureUnion`
    of ``pixels`` (``cutter -> aperture``: :class:`~stargal.features.PhotometricFeatures`) and
    ``measured`` (``photometry -> fit``: :class:`~stargal.photo.SDSSPhotometry` then
    :class:`~stargal.features.MeasuredFeatures`). ``measured=False`` (or the pipeline parameter
    ``features__measured='drop'``) leaves the measurements out: the aperture-only forest.

    Parameters are routed the scikit-learn way: ``features__pixels__cut__size``,
    ``features__measured__photo__stamp_size``, ``forest__n_estimators``.

    Examples
    --------
    >>> from stargal.align import Aligner
    >>> from stargal.cutouts import Cutter
    >>> from stargal.photo import SDSSPhotometry
    >>> pipe = make_measured_forest_pipeline(Aligner(), Cutter(psf=True), SDSSPhotometry(), n_estimators=10)
    >>> [name for name, _ in pipe.steps], pipe.get_params()["features__measured__photo__stamp_size"]
    (['align', 'features', 'forest'], 31)
    """
    params = dict(n_estimators=300, class_weight="balanced", random_state=0, n_jobs=1)
    params.update(rf_params)
    pixels = Pipeline([("cut", cutter), ("aperture", PhotometricFeatures())])
    fitted = Pipeline([("photo", photometry), ("fit", MeasuredFeatures())])
    union = FeatureUnion([("pixels", pixels), ("measured", fitted if measured else "drop")])
    return Pipeline([("align", align), ("features", union), ("forest", RandomForestClassifier(**params))])


class InputUnion(FeatureUnion):
    """:class:`~sklearn.pipeline.FeatureUnion` whose outputs stay apart: a dict keyed by the names.

    ``InputUnion([('images', Cutter(psf=True)), ('features', measured_pipeline)])`` turns an
    aligned table into ``{'images': cutouts, 'features': (n, F) array}``, the hybrid CNN's input
    (the augmenter, PSF channels and scaler work on the images and carry the features along).
    A transformer set to ``'drop'`` (``inputs__features='drop'``) leaves its key out: without
    features the dict is just the cutout array.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.preprocessing import FunctionTransformer
    >>> u = InputUnion([("images", FunctionTransformer(lambda X: X * 2)), ("features", FunctionTransformer())])
    >>> out = u.fit_transform(np.ones((3, 2)))
    >>> sorted(out), out["images"][0].tolist()
    (['features', 'images'], [2.0, 2.0])
    >>> u.set_params(features="drop").fit_transform(np.ones((3, 2))).shape
    (3, 2)
    """

    def _hstack(self, Xs):
        names = [name for name, _, _ in self._iter()]
        out = {name: X for name, X in zip(names, Xs)}
        if set(out) == {"images"}:
            return out["images"]
        if "features" in out:
            out["features"] = np.asarray(out["features"], dtype=np.float32)
        return out

    def get_feature_names_out(self, input_features=None):
        """Not defined: the output is a dict of a cutout array and a feature array."""
        raise AttributeError("InputUnion's output is a dict of cutouts and features; it has no feature names")


def make_hybrid_pipeline(align, cutter, photometry, augmenter=None, scaler=None, psf=None, features=True,
                         **net_params):
    """The hybrid CNN: cutouts and model-fit measurements in one network (one skorch net).

    ``align -> inputs -> ['augment'] -> ['psf'] -> ['scale'] -> net`` with ``inputs`` an
    :class:`InputUnion` of ``images`` (``cutter``) and ``features`` (``photometry`` ->
    :class:`~stargal.features.MeasuredFeatures` -> standardised -> NaN imputed with 0, plus
    missing-value indicators); the net's module is :class:`~stargal.cnn.HybridCNN`. The
    feature-blind variant is ``inputs__features='drop'`` (or ``features=False``), the PSF-blind
    one ``cutter.psf=False`` without a ``psf`` step, as for the CNN.

    Examples
    --------
    >>> from stargal.align import Aligner
    >>> from stargal.cutouts import Cutter
    >>> from stargal.photo import SDSSPhotometry
    >>> pipe = make_hybrid_pipeline(Aligner(), Cutter(psf=True), SDSSPhotometry(), width=8)
    >>> [n for n, _ in pipe.steps], pipe.get_params()["net__module"].__name__
    (['align', 'inputs', 'net'], 'HybridCNN')
    """
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    measured = Pipeline([("photo", photometry), ("fit", MeasuredFeatures()), ("standardise", StandardScaler()),
                         ("impute", SimpleImputer(strategy="constant", fill_value=0.0, add_indicator=True,
                                                  keep_empty_features=True))])
    inputs = InputUnion([("images", cutter), ("features", measured if features else "drop")])
    steps = [("align", align), ("inputs", inputs)]
    steps += _image_steps(augmenter, psf, scaler)
    return SkyPipeline(steps + [("net", make_cnn_net(hybrid=True, **net_params))])


def make_rule_pipeline(front=None, **rule_params):
    """SDSS's type rule: ``front + 'rule'`` (:class:`~stargal.rule.SDSSTypeRule`).

    ``front`` ends in a :class:`~stargal.photo.SDSSPhotometry` step, e.g.
    ``[('align', Aligner()), ('photo', SDSSPhotometry())]``; ``None``: the pipeline takes the
    measurement table.

    Examples
    --------
    >>> import numpy as np
    >>> pipe = make_rule_pipeline(boundary=0.145).fit(np.array([[0.0], [0.5]]), [0, 1])
    >>> pipe.predict(np.array([[0.1], [0.3]])).tolist()
    [0, 1]
    """
    return Pipeline(_check_front(front) + [("rule", SDSSTypeRule(**rule_params))])


class Flatten(TransformerMixin, BaseEstimator):
    """Reshape ``(n, ...)`` arrays to ``(n, n_features)`` (float32 view when possible).

    Examples
    --------
    >>> import numpy as np
    >>> Flatten().fit_transform(np.zeros((2, 5, 7, 7))).shape
    (2, 245)
    """

    def fit(self, X, y=None):
        """Record the per-row shape. Returns self."""
        X = np.asarray(X)
        if X.ndim < 2:
            raise ValueError(f"expected an array of shape (n, ...), got shape {X.shape}")
        self.input_shape_ = X.shape[1:]
        return self

    def transform(self, X):
        """Return ``X.reshape(n, -1)``."""
        check_is_fitted(self, "input_shape_")
        X = np.asarray(X)
        if X.shape[1:] != self.input_shape_:
            raise ValueError(f"rows have shape {X.shape[1:]}, fitted on {self.input_shape_}")
        return X.reshape(X.shape[0], -1)


def make_majority_pipeline(front=None):
    """Majority-class baseline: ``front + 'flatten' + 'majority'`` (most frequent class).

    Parameters
    ----------
    front : list of (str, estimator), optional

    Returns
    -------
    imblearn.pipeline.Pipeline

    Examples
    --------
    >>> import numpy as np
    >>> pipe = make_majority_pipeline().fit(np.zeros((3, 5, 7, 7)), [0, 0, 1])
    >>> pipe.predict(np.zeros((2, 5, 7, 7))).tolist()
    [0, 0]
    """
    return Pipeline(_check_front(front) + [("flatten", Flatten()),
                                           ("majority", DummyClassifier(strategy="most_frequent"))])
