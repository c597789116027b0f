"""The old import paths: stargal.models (split into classifier, pipelines, _threads) and stargal.nets
(renamed cnn) keep every name, and model files and pickles naming them still load."""

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


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
RENAMED = {"stargal.nets": ("stargal.cnn", ["StarGalaxyCNN", "HybridCNN"])}


def test_every_old_name_is_the_object_of_its_new_home():
    import importlib

    import stargal.models as models

    old = {name: home for home, names in MOVED.items() for name in names}
    assert set(models.__all__) == set(old), "stargal.models re-exports exactly the names it held"
    for name, home in old.items():
        assert getattr(models, name) is getattr(importlib.import_module(home), name), name
    moved_classes = [n for n in old if isinstance(getattr(models, n), type)]
    assert all(getattr(models, n).__module__ == old[n] for n in moved_classes)  # new files name the new home
    for alias, (home, names) in RENAMED.items():
        module = importlib.import_module(alias)
        assert sorted(module.__all__) == sorted(names)
        for name in names:
            assert getattr(module, name) is getattr(importlib.import_module(home), name)
            assert getattr(module, name).__module__ == home


def _as_before_the_split(path, out):
    """A copy of a model file with the class paths a file written before the split holds."""
    import zipfile

    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "schema.json":
                for new, old in ((b"stargal.classifier", b"stargal.models"), (b"stargal.pipelines", b"stargal.models"),
                                 (b"stargal.cnn", b"stargal.nets")):
                    # the skops part holds "module"; the net specs hold JSON strings, \"module\"
                    data = data.replace(b'"' + new + b'"', b'"' + old + b'"').replace(
                        b'\\"' + new + b'\\"', b'\\"' + old + b'\\"')
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
        assert b"stargal.models" in schema and (name != "cnn" or b"stargal.nets" in schema)
        assert not any(new in schema for new in (b"stargal.classifier", b"stargal.pipelines", b"stargal.cnn"))
        out[name] = model, old
    return X, out


def test_model_files_naming_the_old_paths_load_and_predict_alike(old_files):
    from stargal.persist import load_model

    X, files = old_files
    for model, old in files.values():
        loaded = load_model(old)
        assert type(loaded) is type(model)
        np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


@pytest.mark.parametrize("name, alias, cls", [("cnn", "models", "StarGalaxyNet"), ("cnn", "models", "SkyPipeline"),
                                              ("cnn", "nets", "StarGalaxyCNN"), ("majority", "models", "Flatten")])
def test_old_file_test_can_fail(old_files, monkeypatch, name, alias, cls):
    """Without its re-export, a file naming ``stargal.<alias>.<class>`` does not load."""
    import importlib

    from stargal.persist import load_model

    monkeypatch.delattr(importlib.import_module(f"stargal.{alias}"), cls)
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
