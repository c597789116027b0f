"""Tests for stargal.pipelines: SkyPipeline, the factories, InputUnion, Flatten (tiny synthetic
cutouts, CPU)."""

import pickle
import warnings

import numpy as np
import pytest
import sklearn
import torch
from imblearn.over_sampling import RandomOverSampler
from imblearn.pipeline import Pipeline
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.preprocessing import FunctionTransformer

from cnn_testing import FlipAugmenter, synthetic_cutouts, tiny
from stargal.classifier import LeakyValidationWarning, StarGalaxyNet, make_cnn_net
from stargal.pipelines import (
    Flatten,
    InputUnion,
    SkyPipeline,
    make_cnn_pipeline,
    make_forest_pipeline,
    make_majority_pipeline,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------- SkyPipeline: groups follow added rows
def test_augmented_rows_stay_in_their_group(cnn_cutouts, split_seen):
    """A sampler adding rows must not put copies of validation objects in training."""
    X, y, groups = cnn_cutouts
    seen, rec = split_seen
    pipe = make_cnn_pipeline(augmenter=FlipAugmenter(), **tiny(max_epochs=1),
                             callbacks=[("rec", rec)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakyValidationWarning)
        pipe.fit(X, y, net__groups=groups)
    source = pipe.named_steps["augment"].sample_indices_  # source row of every resampled row
    assert len(source) > len(y)
    (train, valid), = seen
    assert len(train) + len(valid) == len(source)
    assert set(groups[source[train]]).isdisjoint(groups[source[valid]])


def test_sampler_without_indices_refuses_groups(cnn_cutouts):
    X, y, groups = cnn_cutouts
    from imblearn import FunctionSampler

    def duplicate(X, y):
        return np.concatenate([X, X[:5]]), np.concatenate([y, y[:5]])

    pipe = make_cnn_pipeline(augmenter=FunctionSampler(func=duplicate, validate=False),
                             **tiny(max_epochs=1))
    with pytest.raises(ValueError, match="sample_indices_"):
        pipe.fit(X, y, net__groups=groups)


# --------------------------------------------------------------------------- sklearn API
def test_clone_and_pickle(cnn_cutouts):
    X, y, groups = cnn_cutouts
    pipe = make_cnn_pipeline(**tiny(max_epochs=1), scaler=FunctionTransformer(np.arcsinh))
    cloned = clone(pipe)
    assert cloned.get_params()["net__module__width"] == 8
    assert cloned.get_params()["net__class_weight"] == "balanced"
    assert isinstance(cloned, SkyPipeline) and isinstance(cloned, Pipeline)
    pipe.fit(X, y, net__groups=groups)
    restored = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(restored.predict_proba(X[:30]), pipe.predict_proba(X[:30]))


def test_grid_search_group_kfold(cnn_cutouts):
    X, y, groups = cnn_cutouts
    pipe = make_cnn_pipeline(**tiny(max_epochs=1))
    grid = {"net__module__width": [4, 8], "net__lr": [1e-3, 3e-3]}
    search = GridSearchCV(pipe, grid, cv=GroupKFold(n_splits=2), scoring="balanced_accuracy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakyValidationWarning)
        search.fit(X, y, groups=groups, net__groups=groups)
    assert len(search.cv_results_["params"]) == 4
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_params_["net__module__width"] in (4, 8)
    assert search.best_estimator_.named_steps["net"].module_.width == \
        search.best_params_["net__module__width"]


def test_grid_search_with_metadata_routing(cnn_cutouts, split_seen):
    X, y, groups = cnn_cutouts
    seen, rec = split_seen
    pipe = make_cnn_pipeline(**tiny(max_epochs=1), callbacks=[("rec", rec)])
    cv = GroupKFold(n_splits=2)
    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(pipe, {"net__lr": [1e-3]}, cv=cv, scoring="balanced_accuracy")
        with warnings.catch_warnings():
            warnings.simplefilter("error", LeakyValidationWarning)
            search.fit(X, y, groups=groups)
    assert len(seen) == 3  # 2 folds + refit, each got groups
    for (train_idx, test_idx), (tr, va) in zip(cv.split(X, y, groups), seen):
        fold_groups = groups[train_idx]
        assert set(fold_groups[tr]).isdisjoint(fold_groups[va])


# --------------------------------------------------------------------------- baselines
def test_forest_pipeline(cnn_cutouts):
    X, y, _ = cnn_cutouts
    pipe = make_forest_pipeline(n_estimators=50)
    assert [n for n, _ in pipe.steps] == ["features", "forest"]
    assert pipe.named_steps["forest"].class_weight == "balanced"
    pipe.fit(X, y)
    Xt, yt, _ = synthetic_cutouts(200, seed=5)
    assert balanced_accuracy_score(yt, pipe.predict(Xt)) > 0.8
    assert pipe.predict_proba(Xt).shape == (200, 2)
    assert clone(pipe).get_params()["forest__n_estimators"] == 50


def test_majority_pipeline(cnn_cutouts):
    X, y, _ = cnn_cutouts
    pipe = make_majority_pipeline().fit(X, y)
    assert set(pipe.predict(X)) == {np.bincount(y).argmax()}
    with pytest.raises(ValueError):
        Flatten().fit(X).transform(X[:, :2])


def test_front_steps(cnn_cutouts):
    X, y, _ = cnn_cutouts
    front = [("align", FunctionTransformer()), ("cut", FunctionTransformer())]
    pipe = make_forest_pipeline(front=front, n_estimators=5)
    assert [n for n, _ in pipe.steps] == ["align", "cut", "features", "forest"]
    pipe.fit(X, y)
    cnn = make_cnn_pipeline(front=front, augmenter=RandomOverSampler(),
                            scaler=FunctionTransformer())
    assert [n for n, _ in cnn.steps] == ["align", "cut", "augment", "scale", "net"]
    with pytest.raises(ValueError, match="reserved"):
        make_cnn_pipeline(front=[("net", FunctionTransformer())])
    with pytest.raises(ValueError, match="tuples"):
        make_forest_pipeline(front=[FunctionTransformer()])


def test_net_params_route_through_pipeline():
    pipe = make_cnn_pipeline(width=8)
    pipe.set_params(net__module__width=16, net__lr=0.01, net__patience=2)
    net = pipe.named_steps["net"]
    assert (net.module__width, net.lr, net.patience) == (16, 0.01, 2)
    assert isinstance(net, StarGalaxyNet)


def _dict_inputs(n=40, n_feat=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 0.05, (n, 10, 15, 15)).astype("float32")
    yy, xx = np.mgrid[:15, :15] - 7
    y = np.arange(n) % 2
    for k in range(n):
        width = 1.2 if y[k] == 0 else 2.5
        X[k, :5] += np.exp(-(xx ** 2 + yy ** 2) / (2 * width ** 2)) * 3
        X[k, 5:] = np.exp(-(xx ** 2 + yy ** 2) / (2 * 1.2 ** 2)) / (2 * np.pi * 1.2 ** 2)
    F = rng.normal(0, 1, (n, n_feat)).astype("float32")
    F[:, 0] += 2.0 * y  # an informative measured feature
    return X, F, y


def test_hybrid_net_takes_cutouts_and_features_through_the_cutout_steps():
    """The augmenter, PSF channels and scaler work on the images and carry the features row for row."""
    from stargal.augment import CutoutAugmenter
    from stargal.psf_channels import PSFChannels
    from stargal.scale import AsinhScaler

    X, F, y = _dict_inputs()
    aug = CutoutAugmenter(n_copies=1, random_state=0)
    Xr, yr = aug.fit_resample({"images": X, "features": F}, y)
    assert Xr["images"].shape[0] == len(yr) == 2 * len(y)
    np.testing.assert_array_equal(Xr["features"], F[aug.sample_indices_])
    pipe = SkyPipeline([("augment", CutoutAugmenter(n_copies=1, random_state=0)), ("psf", PSFChannels()),
                        ("scale", AsinhScaler()),
                        ("net", make_cnn_net(hybrid=True, width=4, depth=1, max_epochs=3, valid_fraction=None))])
    groups = np.arange(len(y)) // 4
    pipe.fit({"images": X, "features": F}, y, net__groups=groups)
    assert pipe.named_steps["net"].module_.n_features == F.shape[1]
    p_all = pipe.predict_proba({"images": X, "features": F})[:, 1]
    p_one = pipe.predict_proba({"images": X[3:4], "features": F[3:4]})[:, 1]
    assert p_all[3] == p_one[0]  # batch-independent, features included
    changed = F.copy()
    changed[:, 0] += 5.0
    assert not np.allclose(pipe.predict_proba({"images": X, "features": changed})[:, 1], p_all)
    with pytest.raises(ValueError, match="one row per cutout"):
        pipe.predict_proba({"images": X, "features": F[:-1]})
    with pytest.raises(ValueError, match="members=1"):
        make_cnn_net(hybrid=True, members=2)


def test_input_union_builds_the_dict_and_drops_features():
    u = InputUnion([("images", FunctionTransformer(lambda t: np.zeros((len(t), 5, 3, 3)))),
                    ("features", FunctionTransformer(lambda t: np.ones((len(t), 2))))])
    out = u.fit_transform(np.zeros((4, 1)))
    assert out["images"].shape == (4, 5, 3, 3) and out["features"].dtype == np.float32
    assert u.set_params(features="drop").fit_transform(np.zeros((4, 1))).shape == (4, 5, 3, 3)


def test_calibrating_the_hybrid_keeps_its_dict_inputs():
    from stargal.calibration import calibrate_pipeline

    X, F, y = _dict_inputs(n=60)
    pipe = SkyPipeline([("net", make_cnn_net(hybrid=True, width=4, depth=1, max_epochs=2, valid_fraction=None))])
    pipe.fit({"images": X, "features": F}, y)
    cal = calibrate_pipeline(pipe, {"images": X, "features": F}, y)
    p = cal.predict_proba({"images": X[:5], "features": F[:5]})
    assert p.shape == (5, 2) and np.allclose(p.sum(axis=1), 1.0)
