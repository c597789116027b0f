"""Tests for stargal.nets and the old import paths of stargal.models (tiny synthetic cutouts, CPU)."""

import numpy as np
import pytest
import torch

from stargal.nets import StarGalaxyCNN

torch.set_num_threads(1)


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



# --------------------------------------------------------------------------- the old import paths
# stargal.models held the classifier, the pipelines and the thread helpers until issue #19 split it;
# model files and pickles written before name its classes (stargal.models.StarGalaxyNet, ...).
MOVED = {
    "stargal.classifier": ["StarGalaxyNet", "SkyValidSplit", "LeakyValidationWarning", "valid_balanced_accuracy",
                           "valid_roc_auc", "make_cnn_net", "PREDICT_BATCH_SIZE"],
    "stargal.pipelines": ["SkyPipeline", "InputUnion", "Flatten", "make_cnn_pipeline", "make_forest_pipeline",
                          "make_measured_forest_pipeline", "make_hybrid_pipeline", "make_rule_pipeline",
                          "make_majority_pipeline"],
    "stargal._threads": ["torch_threads", "ENV_PREDICT_THREADS"],
}


def test_every_old_name_is_the_object_of_its_new_home():
    import importlib

    import stargal.models as models

    old = {name: home for home, names in MOVED.items() for name in names}
    assert set(models.__all__) == set(old), "stargal.models re-exports exactly the names it held"
    for name, home in old.items():
        assert getattr(models, name) is getattr(importlib.import_module(home), name), name
    moved_classes = [n for n in old if isinstance(getattr(models, n), type)]
    assert all(getattr(models, n).__module__ == old[n] for n in moved_classes)  # new files name the new home


def _as_before_the_split(path, out):
    """A copy of a model file with the class paths a file of the unsplit stargal.models holds."""
    import zipfile

    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "schema.json":
                data = data.replace(b'"stargal.classifier"', b'"stargal.models"').replace(
                    b'"stargal.pipelines"', b'"stargal.models"').replace(b'\\"stargal.classifier\\"',
                                                                         b'\\"stargal.models\\"')
            dst.writestr(item, data)
    return out


@pytest.fixture(scope="module")
def old_files(tmp_path_factory):
    """``(X, {name: (fitted model, a file of it naming the old paths)})`` for a CNN and a majority pipeline."""
    import zipfile

    from cnn_testing import synthetic_cutouts
    from stargal.persist import save_model
    from stargal.pipelines import make_cnn_pipeline, make_majority_pipeline

    tmp = tmp_path_factory.mktemp("old-files")
    X, y, groups = synthetic_cutouts(80, seed=4)
    cnn = make_cnn_pipeline(width=4, depth=1, max_epochs=1, batch_size=32, device="cpu")
    cnn.fit(X, y, net__groups=groups)
    majority = make_majority_pipeline().fit(X, y)
    out = {}
    for name, model in (("cnn", cnn), ("majority", majority)):
        old = _as_before_the_split(save_model(model, tmp / f"{name}.skops"), tmp / f"{name}-old.skops")
        schema = zipfile.ZipFile(old).read("schema.json")
        assert b"stargal.models" in schema and b"stargal.classifier" not in schema
        assert b"stargal.pipelines" not in schema
        out[name] = model, old
    return X, out


def test_model_files_naming_the_old_paths_load_and_predict_alike(old_files):
    from stargal.persist import load_model

    X, files = old_files
    for model, old in files.values():
        loaded = load_model(old)
        assert type(loaded) is type(model)
        np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


@pytest.mark.parametrize("name, cls", [("cnn", "StarGalaxyNet"), ("cnn", "SkyPipeline"),
                                       ("majority", "Flatten")])
def test_old_file_test_can_fail(old_files, monkeypatch, name, cls):
    """Without its re-export, a file naming ``stargal.models.<class>`` does not load."""
    import stargal.models
    from stargal.persist import load_model

    monkeypatch.delattr(stargal.models, cls)
    with pytest.raises(Exception, match=cls):
        load_model(old_files[1][name][1])


def test_pickles_naming_the_old_paths_load():
    import pickle

    from stargal.classifier import SkyValidSplit
    from stargal.pipelines import Flatten

    for obj in (Flatten(), SkyValidSplit(fraction=0.3)):
        text = pickle.dumps(obj, protocol=0)  # the class path as text, as an old pickle holds it
        old = text.replace(obj.__module__.encode(), b"stargal.models")
        assert b"stargal.models" in old
        assert type(pickle.loads(old)) is type(obj)
