"""scikit-learn's estimator checks on every public stargal estimator.

stargal's estimators take objects tables (Aligner, Cutter) or 4-D cutout stacks
(CutoutAugmenter, AsinhScaler, PhotometricFeatures, the CNN) -- not the 2-D numeric
arrays the common checks generate. They declare that with ``input_tags.two_d_array = False``,
and scikit-learn then skips the checks that would feed them 2-D data (SkipTestWarning);
the checks that remain (cloning, params, repr, tags, unfitted behaviour, ...) must pass.
What the skipped checks would have tested -- fit/transform shapes, dtypes, pickling,
NaN handling, row preservation -- is covered by each module's own tests.

Documented expected failures (EXPECTED_FAILED below):
* ``check_transformers_unfitted_stateless``: the Aligner/Cutter are stateless but need data
  sources, and the scaler must learn per-band statistics first.
* ``check_classifiers_train`` for :class:`~stargal.rule.SDSSTypeRule`: one boundary on the first
  column (the type statistic) cannot separate the check's multi-feature blobs.
"""

import warnings

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from stargal.align import Aligner
from stargal.augment import CutoutAugmenter
from stargal.cutouts import Cutter
from stargal.features import MeasuredFeatures, PhotometricFeatures
from stargal.inject import SyntheticInjector
from stargal.models import make_cnn_net
from stargal.photo import SDSSPhotometry
from stargal.psf_channels import PSFChannels
from stargal.rule import SDSSTypeRule
from stargal.scale import AsinhScaler

ESTIMATORS = [
    Aligner(),
    Cutter(),
    CutoutAugmenter(random_state=0),
    SyntheticInjector(fields=["1035-6-17"], n_objects=10, random_state=0),
    AsinhScaler(),
    PhotometricFeatures(),
    PSFChannels(),
    SDSSPhotometry(),
    MeasuredFeatures(),
    SDSSTypeRule(),
    make_cnn_net(width=8, depth=1, max_epochs=1),
]

EXPECTED_FAILED = {
    "check_transformers_unfitted_stateless": "needs a data source / learned per-band statistics",
}


def _expected_failed(estimator):
    if isinstance(estimator, PSFChannels):  # validated through _parameter_constraints; needs fit
        return {}
    if isinstance(estimator, SDSSTypeRule):
        return {"check_classifiers_train": "one boundary on the first column (the type statistic) cannot "
                                           "separate the check's multi-feature blobs"}
    return EXPECTED_FAILED


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failed)
def test_sklearn_compatible_estimator(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


# The API checks that need no 2-D data run explicitly on every estimator (they are what the
# tag-based skip above leaves out).
API_CHECKS = [
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_mixin_order",
    "check_param_validation",  # every parameter has a constraint (stargal._validation)
]

# skorch's NeuralNet (which the CNN subclasses) sets history_/initialized_ and the routed
# module__/optimizer__ parameters in __init__ and validates parameter names in set_params;
# these are skorch's documented design, not stargal's.
SKORCH_EXPECTED = {"check_no_attributes_set_in_init", "check_set_params",
                   "check_do_not_raise_errors_in_init_or_set_params",
                   # skorch's many routed parameters (module__*, optimizer__*, callbacks) are
                   # validated by skorch itself, not through _parameter_constraints
                   "check_param_validation"}


@pytest.mark.parametrize("check_name", API_CHECKS)
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_api_checks(estimator, check_name):
    from sklearn.utils import estimator_checks

    check = getattr(estimator_checks, check_name)
    if type(estimator).__name__ == "StarGalaxyNet" and check_name in SKORCH_EXPECTED:
        pytest.xfail(f"{check_name}: inherited skorch behaviour")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(type(estimator).__name__, estimator)


def _cutouts(n=40, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.normal(0, 0.05, (n, 5, 15, 15)).astype("float32")
    yy, xx = np.mgrid[:15, :15] - 7
    y = np.arange(n) % 2
    for k in range(n):
        width = 1.2 if y[k] == 0 else 2.5
        X[k] += (np.exp(-(xx**2 + yy**2) / (2 * width**2)) * rng.uniform(1, 5)).astype("float32")
    return X, y


@pytest.mark.parametrize("make", [AsinhScaler, PhotometricFeatures,
                                  lambda: make_cnn_net(width=4, depth=1, max_epochs=2)],
                         ids=["AsinhScaler", "PhotometricFeatures", "StarGalaxyNet"])
def test_fit_clone_pickle_roundtrip_on_cutouts(make):
    """fit returns self, learned attributes end in '_', clones are unfitted, pickles predict the same."""
    import pickle

    import numpy as np
    from sklearn.base import clone

    est = make()
    X, y = _cutouts()
    assert est.fit(X, y) is est
    learned = [k for k in vars(est) if k.endswith("_") and not k.startswith("_")]
    assert learned, "fit must set learned attributes ending in '_'"
    fresh = clone(est)
    with pytest.raises(Exception, match="(?i)fit|initiali"):  # a clone is unfitted
        fresh.predict_proba(X) if hasattr(fresh, "predict_proba") else fresh.transform(X)
    out = est.predict_proba(X) if hasattr(est, "predict_proba") else est.transform(X)
    again = pickle.loads(pickle.dumps(est))
    out2 = again.predict_proba(X) if hasattr(again, "predict_proba") else again.transform(X)
    np.testing.assert_allclose(out, out2)
    assert len(out) == len(X)  # never adds or drops rows


def test_augmenter_sampler_contract():
    """The augmenter adds rows only through fit_resample and has no transform (skipped at predict)."""
    X, y = _cutouts()
    aug = CutoutAugmenter(n_copies=1, random_state=0)
    Xr, yr = aug.fit_resample(X, y)
    assert len(Xr) == 2 * len(X) and not hasattr(aug, "transform")


@pytest.mark.parametrize("estimator, param", [
    (Aligner(), "cutout_size"), (Cutter(), "size"), (Cutter(), "fill_value"), (Cutter(), "n_jobs"),
    (CutoutAugmenter(), "n_copies"), (CutoutAugmenter(), "shift"), (AsinhScaler(), "clip"),
    (PhotometricFeatures(), "zero_point"),
], ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_numbers_are_not_booleans(estimator, param):
    """scikit-learn's int/real constraints accept True; stargal's validation does not."""
    from sklearn.base import clone

    from stargal._validation import InvalidParameterError, validate_params

    validate_params(estimator)  # the defaults are valid
    with pytest.raises(InvalidParameterError, match=f"'{param}' parameter .* not a boolean"):
        validate_params(clone(estimator).set_params(**{param: True}))
