"""Tests for stargal.nets and stargal.models (tiny synthetic cutouts, CPU)."""

import pickle
import warnings

import numpy as np
import pytest
import sklearn
import torch
from imblearn.over_sampling import RandomOverSampler
from imblearn.pipeline import Pipeline
from scipy.ndimage import gaussian_filter
from sklearn.base import BaseEstimator, clone
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.preprocessing import FunctionTransformer
from skorch.callbacks import Callback

from stargal.models import (
    Flatten,
    LeakyValidationWarning,
    SkyPipeline,
    SkyValidSplit,
    StarGalaxyNet,
    make_cnn_net,
    make_cnn_pipeline,
    make_forest_pipeline,
    make_majority_pipeline,
)
from stargal.nets import StarGalaxyCNN

torch.set_num_threads(1)

BAND_SCALE = np.array([0.4, 1.0, 1.4, 1.7, 1.9])  # u g r i z relative flux


def synthetic_cutouts(n, size=15, galaxy_fraction=0.35, seed=0):
    """Point sources (Gaussian PSF) vs extended exponential discs (PSF-convolved) + noise.

    Returns X (n, 5, size, size) float32 nanomaggies, y (1 = galaxy) and sky groups
    (blocks of 10 consecutive objects).
    """
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < galaxy_fraction).astype(np.int64)
    half = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size] - half
    X = np.empty((n, 5, size, size), dtype=np.float64)
    for i in range(n):
        dx, dy = rng.uniform(-0.3, 0.3, 2)
        r2 = (xx - dx) ** 2 + (yy - dy) ** 2
        psf = 1.1
        if y[i]:
            q, phi = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
            c, s = np.cos(phi), np.sin(phi)
            u, v = c * (xx - dx) + s * (yy - dy), (-s * (xx - dx) + c * (yy - dy)) / q
            img = np.exp(-np.hypot(u, v) / rng.uniform(1.3, 2.5))
            img = gaussian_filter(img, psf)
        else:
            img = np.exp(-r2 / (2 * psf ** 2))
        img /= img.sum()
        flux = 10 ** rng.uniform(1.3, 2.3)
        X[i] = flux * BAND_SCALE[:, None, None] * img[None]
    X += rng.normal(0, 0.15, X.shape)
    groups = np.arange(n) // 10
    return X.astype(np.float32), y, groups


@pytest.fixture(scope="module")
def data():
    return synthetic_cutouts(300, seed=1)


def tiny(**kw):
    params = dict(width=8, max_epochs=4, batch_size=32, lr=3e-3, device="cpu")
    params.update(kw)
    return params


class FlipAugmenter(BaseEstimator):
    """Stand-in for the cutout augmenter: appends mirrored copies of random rows in fit.

    Like imbalanced-learn samplers it records ``sample_indices_`` (source row of every
    output row).
    """

    def __init__(self, fraction=0.5, random_state=0):
        self.fraction = fraction
        self.random_state = random_state

    def fit_resample(self, X, y):
        rng = np.random.default_rng(self.random_state)
        extra = rng.choice(len(X), int(self.fraction * len(X)))
        self.sample_indices_ = np.concatenate([np.arange(len(X)), extra])
        return (np.concatenate([X, X[extra, :, :, ::-1]]), np.concatenate([y, y[extra]]))


class SharedRecord(list):
    """A list that copies of its owner share: ``clone`` (GridSearchCV) deep-copies callbacks."""

    def __deepcopy__(self, memo):
        return self


class RecordSplit(Callback):
    """Observer: records the internal train/valid indices skorch actually used into ``seen``."""

    def __init__(self, seen):
        self.seen = seen

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        pass

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        self.seen.append((np.asarray(dataset_train.indices), np.asarray(dataset_valid.indices)))


@pytest.fixture
def recorder():
    """``(seen, callback)``: a fresh record for each test, shared by every clone of the callback."""
    seen = SharedRecord()
    return seen, RecordSplit(seen)


# --------------------------------------------------------------------------- nets
@pytest.mark.parametrize("size", [7, 9, 15, 21])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_cnn_any_odd_size(size, depth):
    net = StarGalaxyCNN(width=4, depth=depth).eval()
    out = net(torch.randn(3, 5, size, size))
    assert out.shape == (3, 2)
    assert torch.isfinite(out).all()


def test_cnn_architecture_is_attribution_friendly():
    net = StarGalaxyCNN(width=4, depth=3)
    relus = [m for m in net.modules() if isinstance(m, torch.nn.ReLU)]
    assert len(relus) == 3 and len({id(m) for m in relus}) == 3
    assert not any(m.inplace for m in relus)
    pools = [m for m in net.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 2
    assert net.classifier.in_features == 16 and net.feature_map_size(15) == 4


@pytest.mark.parametrize("kw", [dict(width=0), dict(depth=0), dict(dropout=1.0),
                                dict(input_size=14), dict(input_size=5), dict(n_classes=1)])
def test_cnn_bad_params(kw):
    with pytest.raises(ValueError):
        StarGalaxyCNN(**kw)


def test_cnn_bad_input_shape():
    with pytest.raises(ValueError, match="expected cutouts"):
        StarGalaxyCNN()(torch.zeros(2, 4, 15, 15))


def test_cnn_ensemble_members_average_in_probability():
    pair = StarGalaxyCNN(width=4, depth=2, members=3)
    assert len(pair.towers) == 3 and pair.n_features == 8
    X = torch.randn(6, 5, 9, 9)
    # each member has its own initial weights
    w = [t.features[0].weight for t in pair.towers]
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[1], w[2])
    assert pair.train()(X).shape == (6, 3, 2)  # training: every member's logits
    pair.eval()
    members = torch.stack([torch.softmax(t(X), dim=-1) for t in pair.towers]).mean(dim=0)
    torch.testing.assert_close(torch.softmax(pair(X), dim=-1), members)
    with pytest.raises(ValueError, match="members"):
        StarGalaxyCNN(members=0)


def test_cnn_ensemble_trains_every_member_on_its_own_loss(data):
    X, y, groups = data
    net = make_cnn_net(**tiny(max_epochs=3, members=2)).fit(X, y, groups=groups)
    towers = net.module_.towers
    Xt = torch.as_tensor(X[:64])
    yt = torch.as_tensor(y[:64], dtype=torch.int64)
    net.module_.train()
    with torch.no_grad():
        torch.manual_seed(0)
        loss = net.get_loss(net.module_(Xt), yt, training=True)
        torch.manual_seed(0)
        per = [net.criterion_(t(Xt), yt) for t in towers]  # same dropout draws, in the same order
    torch.testing.assert_close(loss, torch.stack(per).mean())
    proba = net.predict_proba(X)
    net.module_.eval()
    with torch.no_grad():
        mean = torch.stack([torch.softmax(t(torch.as_tensor(X)), -1) for t in towers]).mean(0).numpy()
    np.testing.assert_allclose(proba, mean, atol=1e-6)
    assert balanced_accuracy_score(y, proba.argmax(axis=1)) > 0.8
    assert np.isfinite(net.history[-1, "valid_loss"])


# --------------------------------------------------------------------------- training
def test_cnn_learns_synthetic_problem(data):
    X, y, groups = data
    pipe = make_cnn_pipeline(**tiny(max_epochs=5))
    pipe.fit(X, y, net__groups=groups)
    Xt, yt, _ = synthetic_cutouts(300, seed=2)
    proba = pipe.predict_proba(Xt)
    assert proba.shape == (300, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert balanced_accuracy_score(yt, pipe.predict(Xt)) > 0.9
    hist = pipe.named_steps["net"].history
    for key in ("valid_loss", "valid_bacc", "valid_auc"):
        assert np.isfinite(hist[-1, key])


def test_class_weights_balanced_and_in_criterion(data):
    X, y, groups = data
    net = make_cnn_net(**tiny(max_epochs=1)).fit(X, y, groups=groups)
    counts = np.bincount(y)
    expected = len(y) / (2 * counts)
    np.testing.assert_allclose(net.class_weight_, expected)
    assert net.class_weight_[1] > net.class_weight_[0]  # galaxies are the minority here
    np.testing.assert_allclose(net.criterion_.weight.numpy(), expected, rtol=1e-6)

    none = make_cnn_net(**tiny(max_epochs=1), class_weight=None).fit(X, y, groups=groups)
    assert none.class_weight_ is None and none.criterion_.weight is None
    fixed = make_cnn_net(**tiny(max_epochs=1), class_weight={0: 1.0, 1: 3.0})
    fixed.fit(X, y, groups=groups)
    np.testing.assert_allclose(fixed.criterion_.weight.numpy(), [1.0, 3.0])


def test_class_weight_survives_clone_and_grid(data):
    X, y, groups = data
    net = make_cnn_net(**tiny(max_epochs=1))
    cloned = clone(net)
    assert cloned.class_weight == "balanced" and not hasattr(cloned, "class_weight_")
    cloned.fit(X[:100], y[:100], groups=groups[:100])
    np.testing.assert_allclose(cloned.class_weight_, 100 / (2 * np.bincount(y[:100])))


def test_seeded_training_is_reproducible_and_leaves_global_rng(data):
    X, y, groups = data
    state = torch.get_rng_state()
    net1 = make_cnn_net(**tiny(max_epochs=2)).fit(X, y, groups=groups)
    net2 = make_cnn_net(**tiny(max_epochs=2)).fit(X, y, groups=groups)
    assert torch.equal(state, torch.get_rng_state())  # fit does not touch the global RNG
    p1, p2 = net1.predict_proba(X[:20]), net2.predict_proba(X[:20])
    np.testing.assert_array_equal(p1, p2)
    p3 = make_cnn_net(**tiny(max_epochs=2), random_state=7).fit(
        X, y, groups=groups).predict_proba(X[:20])
    assert not np.array_equal(p1, p3)


def test_early_stopping_configured():
    net = make_cnn_net(patience=3).initialize()
    cbs = dict(net.callbacks_)
    assert cbs["early_stopping"].patience == 3 and cbs["early_stopping"].load_best
    assert cbs["early_stopping"].monitor == "valid_loss"
    assert "valid_auc" in cbs and "valid_bacc" in cbs
    no_valid = make_cnn_net(valid_fraction=None).initialize()
    assert "early_stopping" not in dict(no_valid.callbacks_)


def test_input_validation(data):
    X, y, groups = data
    net = make_cnn_net(**tiny(max_epochs=1))
    with pytest.raises(ValueError, match="two classes"):
        net.fit(X[:20], np.zeros(20, dtype=int), groups=groups[:20])
    with pytest.raises(ValueError, match="labels in 0..1"):
        net.fit(X[:20], np.arange(20) % 3, groups=groups[:20])
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        net.fit(X[:20, 0], y[:20], groups=groups[:20])
    with pytest.raises(ValueError, match="class_weight"):
        make_cnn_net(class_weight="auto").fit(X[:20], y[:20])


def test_own_parameters_are_validated_the_sklearn_way():
    # class_weight, patience and random_state go through stargal._validation (scikit-learn's
    # constraints plus the domain hint); skorch's own parameters are left to skorch
    from stargal._validation import InvalidParameterError

    cases = {"class_weight": ("auto", "class_weight must be 'balanced', None or a dict"),
             "patience": (-1, "patience must be a non-negative integer or None"),
             "random_state": (1.5, "random_state must be an int or None")}
    for name, (bad, hint) in cases.items():
        with pytest.raises(InvalidParameterError, match=f"The '{name}' parameter of StarGalaxyNet.*{hint}"):
            make_cnn_net(**{name: bad}).initialize()
    with pytest.raises(InvalidParameterError, match="not a boolean"):
        make_cnn_net(patience=True).initialize()
    make_cnn_net(class_weight={0: 1.0, 1: 2.0}, patience=None, random_state=None, warm_start=True).initialize()


def test_float64_and_list_inputs_are_cast(data):
    X, y, groups = data
    net = make_cnn_net(**tiny(max_epochs=1)).fit(X.astype(np.float64), y.astype(float),
                                                 groups=groups)
    assert net.predict_proba(X[:5].astype(np.float64)).shape == (5, 2)
    assert net.predict(X[:5]).dtype.kind == "i"


# --------------------------------------------------------------------------- sky split
def test_sky_valid_split_disjoint_groups_and_fraction():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, 1000)
    y = (rng.random(1000) < 0.3).astype(int)
    split = SkyValidSplit(fraction=0.2, random_state=3)
    train, valid = next(split.split(np.zeros(1000), y, groups))
    assert set(groups[train]).isdisjoint(groups[valid])
    assert len(train) + len(valid) == 1000 and len(np.intersect1d(train, valid)) == 0
    assert 0.15 < len(valid) / 1000 < 0.25
    assert set(y[valid]) == {0, 1} and abs(y[valid].mean() - y.mean()) < 0.1
    again = next(SkyValidSplit(fraction=0.2, random_state=3).split(np.zeros(1000), y, groups))
    np.testing.assert_array_equal(valid, again[1])


def test_sky_valid_split_errors_and_fallback():
    y = np.arange(50) % 2
    with pytest.raises(ValueError, match="at least 2 groups"):
        next(SkyValidSplit().split(np.zeros(50), y, np.zeros(50)))
    with pytest.raises(ValueError, match="groups has 10 entries"):
        next(SkyValidSplit().split(np.zeros(50), y, np.arange(10)))
    with pytest.raises(ValueError, match="fraction"):
        next(SkyValidSplit(fraction=1.5).split(np.zeros(50), y, np.arange(50)))
    with pytest.warns(LeakyValidationWarning):
        train, valid = next(SkyValidSplit().split(np.zeros(50), y))
    assert len(valid) == 10


def test_net_internal_split_is_leak_free(data, recorder):
    X, y, groups = data
    seen, rec = recorder
    pipe = make_cnn_pipeline(**tiny(max_epochs=1), callbacks=[("rec", rec)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakyValidationWarning)
        pipe.fit(X, y, net__groups=groups)
    (train, valid), = seen
    assert len(train) + len(valid) == len(y) and len(valid) > 0
    assert set(groups[train]).isdisjoint(groups[valid])


def test_augmented_rows_stay_in_their_group(data, recorder):
    """A sampler adding rows must not put copies of validation objects in training."""
    X, y, groups = data
    seen, rec = recorder
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


def test_sampler_without_indices_refuses_groups(data):
    X, y, groups = data
    from imblearn import FunctionSampler

    def duplicate(X, y):
        return np.concatenate([X, X[:5]]), np.concatenate([y, y[:5]])

    pipe = make_cnn_pipeline(augmenter=FunctionSampler(func=duplicate, validate=False),
                             **tiny(max_epochs=1))
    with pytest.raises(ValueError, match="sample_indices_"):
        pipe.fit(X, y, net__groups=groups)


def test_no_groups_warns(data):
    X, y, _ = data
    with pytest.warns(LeakyValidationWarning):
        make_cnn_net(**tiny(max_epochs=1)).fit(X[:100], y[:100])


# --------------------------------------------------------------------------- sklearn API
def test_clone_and_pickle(data):
    X, y, groups = data
    pipe = make_cnn_pipeline(**tiny(max_epochs=1), scaler=FunctionTransformer(np.arcsinh))
    cloned = clone(pipe)
    assert cloned.get_params()["net__module__width"] == 8
    assert cloned.get_params()["net__class_weight"] == "balanced"
    assert isinstance(cloned, SkyPipeline) and isinstance(cloned, Pipeline)
    pipe.fit(X, y, net__groups=groups)
    restored = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(restored.predict_proba(X[:30]), pipe.predict_proba(X[:30]))


def test_grid_search_group_kfold(data):
    X, y, groups = data
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


def test_grid_search_with_metadata_routing(data, recorder):
    X, y, groups = data
    seen, rec = recorder
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
def test_forest_pipeline(data):
    X, y, _ = data
    pipe = make_forest_pipeline(n_estimators=50)
    assert [n for n, _ in pipe.steps] == ["features", "forest"]
    assert pipe.named_steps["forest"].class_weight == "balanced"
    pipe.fit(X, y)
    Xt, yt, _ = synthetic_cutouts(200, seed=5)
    assert balanced_accuracy_score(yt, pipe.predict(Xt)) > 0.8
    assert pipe.predict_proba(Xt).shape == (200, 2)
    assert clone(pipe).get_params()["forest__n_estimators"] == 50


def test_majority_pipeline(data):
    X, y, _ = data
    pipe = make_majority_pipeline().fit(X, y)
    assert set(pipe.predict(X)) == {np.bincount(y).argmax()}
    with pytest.raises(ValueError):
        Flatten().fit(X).transform(X[:, :2])


def test_front_steps(data):
    X, y, _ = data
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
    from stargal.models import SkyPipeline, make_cnn_net
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
    from sklearn.preprocessing import FunctionTransformer

    from stargal.models import InputUnion

    u = InputUnion([("images", FunctionTransformer(lambda t: np.zeros((len(t), 5, 3, 3)))),
                    ("features", FunctionTransformer(lambda t: np.ones((len(t), 2))))])
    out = u.fit_transform(np.zeros((4, 1)))
    assert out["images"].shape == (4, 5, 3, 3) and out["features"].dtype == np.float32
    assert u.set_params(features="drop").fit_transform(np.zeros((4, 1))).shape == (4, 5, 3, 3)


def test_calibrating_the_hybrid_keeps_its_dict_inputs():
    from stargal.calibration import calibrate_pipeline
    from stargal.models import SkyPipeline, make_cnn_net

    X, F, y = _dict_inputs(n=60)
    pipe = SkyPipeline([("net", make_cnn_net(hybrid=True, width=4, depth=1, max_epochs=2, valid_fraction=None))])
    pipe.fit({"images": X, "features": F}, y)
    cal = calibrate_pipeline(pipe, {"images": X, "features": F}, y)
    p = cal.predict_proba({"images": X[:5], "features": F[:5]})
    assert p.shape == (5, 2) and np.allclose(p.sum(axis=1), 1.0)
