"""Model files of other stargal versions: brought up to date on load, or refused in one line.

``tests/data/{cnn,forest}-v0.1.0.stargal`` were written by ``save_model`` of stargal 0.1.0
(format 1) before any change of issue #18 (``tests/data/make_v0_1_0_models.py``); they hold
their trainer's data paths. Loading them on the mirror and predicting real objects is in
tests/test_portable_models.py; here: what loading does, without the mirror.

``tests/data/estimator_params.json`` records every parameter (and default) of the classes a model
file may hold, with the version they belong to. Run this file (``python tests/test_model_versions.py``)
to record them again after bumping the version in pyproject.toml.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import skops.io as sio
import torch
from sklearn.base import BaseEstimator, clone

import stargal
import stargal.persist as persist
from stargal.augment import CutoutAugmenter
from stargal.cutouts import Cutter
from stargal.nets import StarGalaxyCNN
from stargal.persist import (STARGAL_TYPES, IncompatibleModelError, ModelVersionWarning, load_model,
                             save_model)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
OLD = {kind: DATA / f"{kind}-v0.1.0.stargal" for kind in ("cnn", "forest")}
SHIPPED = ROOT / "experiments" / "results" / "cnn.stargal"
SNAPSHOT = DATA / "estimator_params.json"
MACHINE = ["align.cache_dir", "align.sas_url", "cut.cache_dir", "cut.sas_url"]


def _pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _with_param(monkeypatch, cls, name, default=inspect.Parameter.empty, remove=False):
    """Give ``cls.__init__`` one parameter more (stored as an attribute) or one less, as a new
    version of stargal would."""
    original = cls.__init__
    signature = inspect.signature(original)
    if remove:
        params = [p for p in signature.parameters.values() if p.name != name]

        def __init__(self, *args, **kwargs):
            original(self, *args, **kwargs)
            delattr(self, name)
    else:
        params = list(signature.parameters.values()) + [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)]

        def __init__(self, *args, **kwargs):
            value = kwargs.pop(name, default)
            original(self, *args, **kwargs)
            setattr(self, name, value)
    __init__.__signature__ = signature.replace(parameters=params)
    monkeypatch.setattr(cls, "__init__", __init__)


def _load_quietly(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelVersionWarning)
        return load_model(path, **kw)


def _load_old_quietly(kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelVersionWarning)
        return load_model(OLD[kind])


@pytest.mark.parametrize("kind", ["cnn", "forest"])
def test_a_file_of_the_previous_release_loads_and_its_paths_are_unset(kind):
    with pytest.warns(ModelVersionWarning) as record:
        model, info = load_model(OLD[kind], with_info=True)
    assert (info["stargal_version"], info["stargal_format"]) == ("0.1.0", 1)
    assert info["unset_on_load"] == MACHINE and info["filled_params"] == info["ignored_params"] == []
    message = str(record[0].message)
    assert len(record) == 1 and "\n" not in message
    assert "written by stargal 0.1.0 (format 1), loaded by stargal " + stargal.__version__ in message
    assert "align.sas_url" in message and "STARGAL_SAS_URL" in message
    params = model.get_params()
    assert all(params[name.replace(".", "__")] is None for name in MACHINE)
    clone(model)  # every parameter readable: scikit-learn machinery works on it


def test_the_shipped_study_model_loads_with_this_code():
    """`experiments/results/cnn.stargal` was saved before CutoutAugmenter had noise_labels: its
    get_params (the traceback of issue #18) works after loading; a re-saved file loads quietly."""
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        model, info = load_model(SHIPPED, with_info=True)
    assert model.get_params()["augment__noise_labels"] == "keep"
    if info["stargal_format"] == 1:
        assert "CutoutAugmenter.noise_labels='keep'" in info["filled_params"]
    assert all(model.get_params()[name.replace(".", "__")] is None for name in MACHINE)


def test_a_new_parameter_is_filled_with_its_default(monkeypatch, tmp_path):
    _with_param(monkeypatch, CutoutAugmenter, "new_knob", default="auto")
    with pytest.warns(ModelVersionWarning, match=r"filled new parameters with their defaults: "
                                                 r"CutoutAugmenter.new_knob='auto'"):
        model, info = load_model(OLD["cnn"], with_info=True)
    assert model.named_steps["augment"].new_knob == "auto"
    assert clone(model).get_params()["augment__new_knob"] == "auto"
    # saved again with this version, it loads without a word and keeps the value
    again = save_model(model, tmp_path / "again.stargal")
    assert _load_quietly(again).named_steps["augment"].new_knob == "auto"


def test_a_new_parameter_without_default_is_refused_in_one_line(monkeypatch):
    _with_param(monkeypatch, CutoutAugmenter, "must_give")
    with pytest.raises(IncompatibleModelError) as err:
        load_model(OLD["cnn"])
    text = str(err.value)
    assert "\n" not in text
    assert f"written by stargal 0.1.0 (model file format 1) and this is stargal {stargal.__version__}" in text
    assert "CutoutAugmenter.must_give" in text
    assert ("retrain the model with this version, or install the version that wrote it "
            "(pip install stargal==0.1.0)") in text


def test_a_removed_parameter_is_ignored_and_named(monkeypatch):
    _with_param(monkeypatch, Cutter, "fill_value", remove=True)
    with pytest.warns(ModelVersionWarning, match=r"ignored parameters this version no longer has: Cutter.fill_value"):
        model = load_model(OLD["forest"])
    assert not hasattr(model.named_steps["cut"], "fill_value")
    assert "cut__fill_value" not in model.get_params()


def test_a_new_network_parameter_is_filled_and_the_net_rebuilt(monkeypatch):
    _with_param(monkeypatch, StarGalaxyCNN, "extra_dropout", default=0.0)
    with pytest.warns(ModelVersionWarning, match=r"StarGalaxyCNN.extra_dropout=0.0"):
        model = load_model(OLD["cnn"])
    net = model.steps[-1][1].calibrated_classifiers_[0].estimator
    assert net.module_.extra_dropout == 0.0


def test_a_file_of_a_newer_version(monkeypatch, tmp_path):
    fresh = tmp_path / "future.stargal"
    monkeypatch.setattr(persist, "_stargal_version", lambda: "9.0.0")
    save_model(_load_old_quietly("forest"), fresh)
    monkeypatch.undo()
    model, info = _load_quietly(fresh, with_info=True)  # same parameters as this version: it loads
    assert info["stargal_version"] == "9.0.0"
    _with_param(monkeypatch, Cutter, "fill_value", remove=True)  # ... but not when they differ
    with pytest.raises(IncompatibleModelError, match=r"the file is newer .* upgrade stargal "
                                                     r"\(pip install -U 'stargal>=9.0.0'\)"):
        load_model(fresh)


def test_a_newer_format_is_refused_in_one_line(tmp_path):
    path = tmp_path / "format3.stargal"
    sio.dump({"stargal_format": 3, "stargal_version": "0.9.1", "model": None, "nets": []}, path)
    with pytest.raises(IncompatibleModelError) as err:
        load_model(path)
    assert str(err.value) == (f"cannot load {str(path)!r}: it was written by stargal 0.9.1 (model file format 3) "
                              f"and this is stargal {stargal.__version__} (format 2); this version does not "
                              f"read that format: upgrade stargal (pip install -U 'stargal>=0.9.1')")


def test_a_file_that_does_not_fit_the_classes_is_one_line_not_a_traceback(tmp_path):
    """A net spec whose weights do not match the network (as a changed architecture would give)."""
    model = _load_old_quietly("cnn")
    net = model.steps[-1][1].calibrated_classifiers_[0].estimator
    path = save_model(model, tmp_path / "m.stargal")
    payload = sio.load(path, trusted=sio.get_untrusted_types(file=path))
    spec = payload["nets"][0]
    first = next(iter(spec["state_dicts"]["module_"]))
    spec["state_dicts"]["module_"][first] = spec["state_dicts"]["module_"][first][..., :1]
    sio.dump(payload, path)
    with pytest.raises(IncompatibleModelError, match=r"its content does not fit this version's classes "
                                                     r"\(RuntimeError: .*\): retrain") as err:
        load_model(path)
    assert "\n" not in str(err.value)
    assert net.module_ is not None


# ------------------------------------------------------------------- the tables that must keep up
def _stargal_classes():
    from skorch import NeuralNet
    from skorch.dataset import ValidSplit

    found = set()
    for info in pkgutil.iter_modules(stargal.__path__):
        module = importlib.import_module(f"stargal.{info.name}")
        for obj in vars(module).values():
            if (inspect.isclass(obj) and obj.__module__ == module.__name__
                    and issubclass(obj, (BaseEstimator, NeuralNet, torch.nn.Module, ValidSplit))):
                found.add(f"{obj.__module__}.{obj.__qualname__}")
    return found


def test_every_estimator_class_is_in_the_trusted_table():
    missing = sorted(_stargal_classes() - STARGAL_TYPES)
    assert not missing, (f"add {missing} to stargal.persist.STARGAL_TYPES (classes a model file may hold) "
                         f"and record their parameters: python tests/test_model_versions.py")
    for path in STARGAL_TYPES:
        module, _, name = path.rpartition(".")
        assert inspect.isclass(getattr(importlib.import_module(module), name)), path


def current_params() -> dict:
    """``{class path: {parameter: repr(default)}}`` of every class in STARGAL_TYPES."""
    out = {}
    for path in sorted(STARGAL_TYPES):
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        out[path] = {k: "(required)" if v is inspect.Parameter.empty else re.sub(r" at 0x[0-9a-f]+", "", repr(v))
                     for k, v in persist._signature_params(cls).items()}
    return out


def test_parameters_change_only_with_a_new_version():
    """An estimator's parameters (or their defaults) changed: bump stargal's version so that files
    tell old from new (issue #18), then record them (python tests/test_model_versions.py)."""
    recorded = json.loads(SNAPSHOT.read_text())
    version = _pyproject_version()
    now = current_params()
    if now != recorded["params"]:
        changed = sorted(k for k in set(now) | set(recorded["params"]) if now.get(k) != recorded["params"].get(k))
        assert version != recorded["stargal_version"], (
            f"parameters of {changed} changed but the version is still {version}: bump the version in "
            f"pyproject.toml (make install) and run python tests/test_model_versions.py to record them")
    assert stargal.__version__ == version, "installed metadata is stale: run make install"
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)


if __name__ == "__main__":  # record the parameters of this version
    SNAPSHOT.write_text(json.dumps({"stargal_version": _pyproject_version(), "params": current_params()},
                                   indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(current_params())} classes for stargal {_pyproject_version()} in {SNAPSHOT}")
    sys.exit(0)
