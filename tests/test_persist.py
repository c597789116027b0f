"""Tests for stargal.persist: safe round trips and clear refusals."""

import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import skops.io as sio
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer

import stargal
from stargal.models import StarGalaxyNet, make_cnn_pipeline, make_forest_pipeline
from stargal.persist import (
    STARGAL_FORMAT,
    IncompatibleModelError,
    MachinePathWarning,
    NotAStargalModelError,
    UntrustedModelError,
    load_model,
    save_model,
)

torch.set_num_threads(1)


class Augment:
    """Minimal sampler with sample_indices_ (stand-in for the cutout augmenter)."""

    def fit_resample(self, X, y):
        self.sample_indices_ = np.concatenate([np.arange(len(X)), np.arange(10)])
        return np.concatenate([X, X[:10, :, ::-1]]), np.concatenate([y, y[:10]])


def cutouts(n=160, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    yy, xx = np.mgrid[0:15, 0:15] - 7
    sig = np.where(y == 1, 2.5, 1.0)[:, None, None]
    img = np.exp(-(xx ** 2 + yy ** 2)[None] / (2 * sig ** 2)) * 30
    X = np.repeat(img[:, None], 5, axis=1) + rng.normal(0, 0.3, (n, 5, 15, 15))
    return X.astype(np.float32), y, np.arange(n) // 8


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    X, y, groups = cutouts()
    cnn = make_cnn_pipeline(width=8, max_epochs=2, batch_size=32, device="cpu",
                            scaler=FunctionTransformer(np.arcsinh))
    cnn.fit(X, y, net__groups=groups)
    forest = make_forest_pipeline(n_estimators=20).fit(X, y)
    return X, y, cnn, forest, tmp_path_factory.mktemp("models")


def test_round_trip_in_fresh_process(fitted):
    X, _, cnn, forest, tmp = fitted
    np.save(tmp / "X.npy", X)
    save_model(cnn, tmp / "cnn.skops", metadata={"fields": ["8162-6-80"], "epochs": 2})
    save_model(forest, tmp / "forest.skops")
    code = textwrap.dedent(f"""
        import numpy as np, torch
        torch.set_num_threads(1)
        from stargal.persist import load_model
        X = np.load({str(tmp / "X.npy")!r})
        for name in ("cnn", "forest"):
            model = load_model({str(tmp)!r} + "/" + name + ".skops")
            np.save({str(tmp)!r} + "/" + name + "_proba.npy", model.predict_proba(X))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(tmp / "cnn_proba.npy"), cnn.predict_proba(X))
    np.testing.assert_array_equal(np.load(tmp / "forest_proba.npy"), forest.predict_proba(X))


def test_loaded_cnn_is_complete(fitted):
    X, y, cnn, _, tmp = fitted
    path = save_model(cnn, tmp / "cnn2.skops", metadata={"note": "x"})
    model, info = load_model(path, with_info=True)
    assert info["metadata"] == {"note": "x"} and info["stargal_format"] == STARGAL_FORMAT
    assert info["library_versions"]["torch"] == torch.__version__
    net = model.named_steps["net"]
    assert isinstance(net, StarGalaxyNet)
    original = cnn.named_steps["net"]
    np.testing.assert_array_equal(net.class_weight_, original.class_weight_)
    assert net.get_params()["module__width"] == 8
    assert len(net.history) == len(original.history)
    np.testing.assert_array_equal(net.predict(X), original.predict(X))
    # the saved pipeline was not modified and the loaded one can be cloned and re-fitted
    assert cnn.named_steps["net"] is original
    clone(model).fit(X, y, net__groups=np.arange(len(y)) // 8)


def test_ensemble_cnn_round_trip(tmp_path):
    X, y, groups = cutouts(96, seed=3)
    pipe = make_cnn_pipeline(width=4, members=2, max_epochs=2, batch_size=32, device="cpu",
                             scaler=FunctionTransformer(np.arcsinh)).fit(X, y, net__groups=groups)
    save_model(pipe, tmp_path / "pair.stargal")
    loaded = load_model(tmp_path / "pair.stargal")
    assert len(loaded.named_steps["net"].module_.towers) == 2
    np.testing.assert_array_equal(loaded.predict_proba(X), pipe.predict_proba(X))


def test_unfitted_and_augmented_pipelines(fitted, tmp_path):
    X, y, *_ = fitted
    pipe = make_cnn_pipeline(width=4, max_epochs=1, device="cpu")
    loaded = load_model(save_model(pipe, tmp_path / "unfitted.skops"))
    assert not getattr(loaded.named_steps["net"], "initialized_", False)
    assert loaded.get_params()["net__module__width"] == 4
    loaded.fit(X, y, net__groups=np.arange(len(y)) // 8)
    assert loaded.predict_proba(X[:3]).shape == (3, 2)


def test_metadata_must_be_json(fitted, tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        save_model(fitted[3], tmp_path / "m.skops", metadata={"x": object()})


def test_random_file_is_refused(tmp_path):
    path = tmp_path / "random.skops"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(NotAStargalModelError, match="not a skops archive"):
        load_model(path)


class _Boom:
    def __reduce__(self):
        return (open, (os.environ["STARGAL_TEST_MARKER"], "w"))


def test_pickle_file_is_refused_without_running_it(tmp_path, monkeypatch):
    marker = tmp_path / "executed"
    monkeypatch.setenv("STARGAL_TEST_MARKER", str(marker))
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"model": _Boom()}))
    with pytest.raises(NotAStargalModelError, match="pickle"):
        load_model(path)
    assert not marker.exists()


def test_skops_file_of_other_object_is_refused(tmp_path):
    path = tmp_path / "lr.skops"
    sio.dump(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), path)
    with pytest.raises(NotAStargalModelError, match="no stargal marker"):
        load_model(path)
    sio.dump({"model": 1}, tmp_path / "dict.skops")
    with pytest.raises(NotAStargalModelError, match="no stargal marker"):
        load_model(tmp_path / "dict.skops")


def test_unsupported_format_version(tmp_path):
    path = tmp_path / "future.skops"
    sio.dump({"stargal_format": 99, "model": None, "nets": []}, path)
    with pytest.raises(IncompatibleModelError, match="format 99") as info:
        load_model(path)
    assert "\n" not in str(info.value) and "pip install -U stargal" in str(info.value)


def test_untrusted_types_are_listed(tmp_path):
    from fractions import Fraction
    path = tmp_path / "evil.skops"
    sio.dump({"stargal_format": STARGAL_FORMAT, "model": Fraction(1, 3), "nets": []}, path)
    with pytest.raises(UntrustedModelError, match="fractions.Fraction") as info:
        load_model(path)
    assert info.value.types == ["fractions.Fraction"]


def test_untrusted_import_in_net_spec(tmp_path):
    spec = {"class": ["os", "system"], "params": {}, "fitted": False, "state_dicts": {}}
    path = tmp_path / "evil_net.skops"
    from stargal.persist import NetSlot
    sio.dump({"stargal_format": STARGAL_FORMAT, "model": NetSlot(0), "nets": [spec]}, path)
    with pytest.raises(UntrustedModelError, match="os.system"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.skops")


def test_torch_objects_outside_pipelines_are_refused(tmp_path):
    with pytest.raises(TypeError, match="skorch nets"):
        save_model({"weights": torch.nn.Linear(2, 2)}, tmp_path / "bad.skops")
    assert not (tmp_path / "bad.skops").exists()


def test_module_instance_param_is_refused(tmp_path):
    from stargal.nets import StarGalaxyCNN
    net = StarGalaxyNet(module=StarGalaxyCNN(width=4))
    with pytest.raises(TypeError, match="pass the class"):
        save_model(net, tmp_path / "inst.skops")


def test_augmenter_step_is_saved(fitted, tmp_path):
    # a non-sklearn sampler step from an untrusted module must be rejected on load
    X, y, _, _, _ = fitted
    pipe = make_cnn_pipeline(width=4, max_epochs=1, device="cpu", augmenter=Augment())
    pipe.fit(X, y, net__groups=np.arange(len(y)) // 8)
    path = save_model(pipe, tmp_path / "aug.skops")
    with pytest.raises(UntrustedModelError, match="test_persist.Augment"):
        load_model(path)


# ------------------------------------------------------------------ files that travel
def _archive_text(path):
    import zipfile
    with zipfile.ZipFile(path) as z:
        return b"".join(z.read(n) for n in z.namelist()).decode("latin-1")


def test_saving_unsets_the_data_source_and_cache_and_keeps_the_users_model(tmp_path):
    from stargal.align import Aligner
    from stargal.cutouts import Cutter
    from stargal.models import make_majority_pipeline

    source, cache = (tmp_path / "my-mirror").as_uri(), str(tmp_path / "my-cache")
    pipe = make_majority_pipeline(front=[("align", Aligner(sas_url=source, cache_dir=cache)),
                                         ("cut", Cutter(sas_url=source, cache_dir=cache))])
    path = save_model(pipe, tmp_path / "m.stargal")
    text = _archive_text(path)
    assert "my-mirror" not in text and "my-cache" not in text and str(tmp_path) not in text
    assert pipe.get_params()["align__sas_url"] == source and pipe.get_params()["cut__cache_dir"] == cache
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a file of this version: nothing to bring up to date
        loaded, info = load_model(path, with_info=True)
    assert info["unset_params"] == ["align.cache_dir", "align.sas_url", "cut.cache_dir", "cut.sas_url"]
    assert info["stargal_format"] == STARGAL_FORMAT == 2 and info["stargal_version"] == stargal.__version__
    params = loaded.get_params()
    assert all(params[k] is None for k in ("align__sas_url", "align__cache_dir", "cut__sas_url", "cut__cache_dir"))


def test_a_fresh_cnn_file_loads_without_any_upgrade(fitted, tmp_path):
    _, _, cnn, forest, _ = fitted
    for model in (cnn, forest):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _, info = load_model(save_model(model, tmp_path / "fresh.stargal"), with_info=True)
        assert info["filled_params"] == info["ignored_params"] == info["unset_on_load"] == []


def test_other_paths_of_this_machine_are_named_when_saving(tmp_path):
    from sklearn.pipeline import make_pipeline
    pipe = make_pipeline(FunctionTransformer(np.log1p, kw_args={"table": "/home/someone/lookup.csv"}),
                         LogisticRegression())
    with pytest.warns(MachinePathWarning, match=r"functiontransformer.kw_args.table='/home/someone/lookup.csv'"):
        save_model(pipe, tmp_path / "p.stargal")


def test_nested_steps_of_the_measured_models_lose_their_paths_and_follow_the_source(tmp_path):
    """The forest's and hybrid's data-reading steps sit inside a FeatureUnion: saved unset, pointed at
    the prediction's source like top-level steps."""
    from stargal.predict import _point_at
    from stargal.training import build_pipeline

    for kind in ("forest", "hybrid", "rule"):
        pipe = build_pipeline(kind, sas_url="file:///somewhere/sdss", cache_dir="/somewhere/cache")
        nested = {k: v for k, v in pipe.get_params(deep=True).items() if k.endswith(("sas_url", "cache_dir"))}
        assert len(nested) >= 4 and set(nested.values()) == {"file:///somewhere/sdss", "/somewhere/cache"}
        from stargal.persist import _unset_machine_params

        stripped, unset = _unset_machine_params(pipe)
        left = {k: v for k, v in stripped.get_params(deep=True).items() if k.endswith(("sas_url", "cache_dir"))}
        assert set(left.values()) == {None} and len(unset) == len(nested), kind
        assert set(nested.values()) == {"file:///somewhere/sdss", "/somewhere/cache"}  # the model is untouched
        moved = _point_at(stripped, {"sas_url": "http://127.0.0.1:1/", "cache_dir": str(tmp_path)})
        here = {k: v for k, v in moved.get_params(deep=True).items() if k.endswith(("sas_url", "cache_dir"))}
        assert set(here.values()) == {"http://127.0.0.1:1/", str(tmp_path)}, kind
