"""Safe, portable, versioned model files: skops for the scikit-learn parts, arrays for torch weights.

File format (``stargal_format = 2``)
-----------------------------------
One `skops <https://skops.readthedocs.io>`_ file (a zip archive, no pickle)
holding a dictionary::

    {'stargal_format': 2, 'stargal_version': '0.2.0', 'created_utc': '...',
     'library_versions': {...}, 'metadata': {...user JSON...},
     'unset_params': ['align.sas_url', 'align.cache_dir', ...],
     'model': <pipeline with every skorch net replaced by a stargal.persist.NetSlot>,
     'nets': [<net spec>, ...]}

skops cannot store torch modules or skorch nets safely (skorch's own
``__getstate__`` embeds pickle bytes), so every net found at the top level or
as a step of a (nested) pipeline is stored as a *net spec*: its class, its
constructor parameters encoded as plain data (numbers, strings, containers,
and classes / functions / simple objects as dotted import paths) and the
``state_dict`` of its torch modules and criteria as numpy arrays, plus
``class_weight_``, ``classes_inferred_`` and the training history (JSON).
Loading re-creates the net from its parameters, calls ``initialize()`` and
loads the weights: no pickle and no ``torch.load`` anywhere.  Optimizer state
is not saved (a loaded net predicts identically; further training restarts
the optimizer).

Files that travel
-----------------
A model file is passed from machine to machine, so it holds nothing of the
machine that wrote it. :func:`save_model` stores every parameter named in
:data:`MACHINE_LOCAL_PARAMS` (``sas_url``, ``cache_dir``), and every parameter an
estimator constrains as a path (``_validation.PATH_LIKE``), as ``None`` ("unset":
listed in ``unset_params``); the user's model is not modified. ``None`` means
*where the model runs*: an explicit argument (``predict_coordinates(sas_url=...)``,
``--sas-url``) first, then ``STARGAL_SAS_URL`` / ``STARGAL_CACHE``, then the
defaults. Any other string parameter that looks like a path of this machine
(absolute, ``~``, ``file:``) is named in a :class:`MachinePathWarning`.

Versions
--------
Every file records the stargal version that wrote it (``stargal_version``,
the package version; it goes up whenever an estimator's parameters change) and
the layout (``stargal_format``, :data:`STARGAL_FORMAT`; it goes up when the
layout changes). :func:`load_model` reads every format in
:data:`READABLE_FORMATS`. A file of an older version is brought up to date the
way scikit-learn's ``__setstate__`` meets version changes: every ``__init__``
parameter its estimators lack is filled with its default from the class
signature (the documented default), parameters this version no longer has are
ignored, and the machine paths that format-1 files stored are unset; one
:class:`ModelVersionWarning` lists all of it. What cannot be brought up to date
(a file of a newer version or format, a new parameter without a default, a net
that does not rebuild) stops with one line naming the file's version, this
version and what to do (:class:`IncompatibleModelError`): never a traceback.

Trust
-----
:func:`load_model` first checks the archive and the stargal marker
(:class:`NotAStargalModelError`), then lists the archive's types with
:func:`skops.io.get_untrusted_types` and trusts only stargal's own classes listed
in :data:`STARGAL_TYPES` (one table: a new estimator class is added there) and
the libraries of :data:`TRUSTED_PREFIXES` (``sklearn.``, ``imblearn.``,
``numpy.``, ``scipy.``); anything else raises :class:`UntrustedModelError`
naming the types. torch and skorch types never pass through skops; import paths
inside net specs are resolved only to :data:`STARGAL_TYPES` and within
:data:`NET_PREFIXES` (plus ``builtins.print``, skorch's default log sink).
Loading a file still runs the ``__init__``/``__setstate__`` code of these
libraries, so only load models from sources you trust at least that far.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import importlib
import inspect
import io
import json
import numbers
import os
import platform
import re
import types
import warnings
import zipfile

import numpy as np
import skops.io as sio
import torch
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline as _SkPipeline
from skorch import NeuralNet
from skorch.history import History

from ._io import atomic_write_bytes
from ._validation import PATH_LIKE

__all__ = [
    "save_model",
    "load_model",
    "contains_net",
    "NetSlot",
    "NotAStargalModelError",
    "UntrustedModelError",
    "IncompatibleModelError",
    "ModelVersionWarning",
    "MachinePathWarning",
    "STARGAL_FORMAT",
    "READABLE_FORMATS",
    "STARGAL_TYPES",
    "TRUSTED_PREFIXES",
    "NET_PREFIXES",
    "MACHINE_LOCAL_PARAMS",
]

#: version of the file layout written by :func:`save_model` (2: machine paths stored as unset)
STARGAL_FORMAT = 2
#: layouts :func:`load_model` reads (1: stargal 0.1.x, which stored its trainer's data paths)
READABLE_FORMATS = (1, 2)
#: stargal's own classes a model file may hold, in its skops part or its net specs: the one table
#: to extend when a new estimator, network or split class can be part of a saved model
STARGAL_TYPES = frozenset({
    "stargal.align.Aligner",
    "stargal.cutouts.Cutter",
    "stargal.augment.CutoutAugmenter",
    "stargal.inject.SyntheticInjector",
    "stargal.psf_channels.PSFChannels",
    "stargal.scale.AsinhScaler",
    "stargal.features.PhotometricFeatures",
    "stargal.features.MeasuredFeatures",
    "stargal.photo.SDSSPhotometry",
    "stargal.rule.SDSSTypeRule",
    "stargal.calibration.PackedInputs",
    "stargal.models.SkyPipeline",
    "stargal.models.InputUnion",
    "stargal.models.Flatten",
    "stargal.models.StarGalaxyNet",
    "stargal.models.SkyValidSplit",
    "stargal.nets.StarGalaxyCNN",
    "stargal.nets.HybridCNN",
    "stargal.classifier.StarGalaxyNet",
    "stargal.classifier.SkyValidSplit",
    "stargal.pipelines.SkyPipeline",
    "stargal.pipelines.Flatten",
    "stargal.pipelines.InputUnion",
    "stargal.cnn.StarGalaxyCNN",
    "stargal.cnn.HybridCNN",
    "stargal.persist.NetSlot",
})
#: third-party libraries whose types skops may instantiate when loading
TRUSTED_PREFIXES = ("sklearn.", "imblearn.", "numpy.", "scipy.")
#: modules (besides :data:`STARGAL_TYPES`) from which net specs may import classes / functions
NET_PREFIXES = ("torch.", "skorch.", "sklearn.", "numpy.")
#: estimator parameters that name a place on the machine running the model: saved as ``None``
MACHINE_LOCAL_PARAMS = ("sas_url", "cache_dir")
_NET_EXTRA = ("builtins.print",)
_SKIP_PARAMS = ("_params_to_validate",)
_LOCAL_PATH = re.compile(r"^(?:/|~|file:|[A-Za-z]:[\\/]|\\\\)")


class NotAStargalModelError(ValueError):
    """The file is not a stargal model file (not a skops archive or no stargal marker)."""


class UntrustedModelError(TypeError):
    """The model file contains types outside the trusted allowlist.

    Attributes
    ----------
    types : list of str
        The offending type / function paths.
    """

    def __init__(self, message, types=()):
        super().__init__(message)
        self.types = list(types)


class IncompatibleModelError(ValueError):
    """The model file was written by a stargal this version cannot bring up to date.

    The message is one line: the file, the version and format that wrote it, this version, and
    what to do (install the version that wrote it, upgrade, or retrain).
    """


class ModelVersionWarning(UserWarning):
    """A model file of an older stargal was brought up to date while loading (what was filled,
    ignored or unset is listed)."""


class MachinePathWarning(UserWarning):
    """A parameter saved into a model file looks like a path of the machine that saved it."""


class NetSlot:
    """Placeholder for a torch net inside a saved pipeline (index into ``nets``).

    Parameters
    ----------
    index : int
    """

    def __init__(self, index):
        self.index = index

    def __repr__(self):
        return f"NetSlot({self.index})"


def _stargal_version():
    try:
        from importlib.metadata import version
        return version("stargal")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


def _versions():
    import imblearn
    import sklearn
    import skorch
    return {"python": platform.python_version(), "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "imbalanced-learn": imblearn.__version__,
            "torch": torch.__version__, "skorch": skorch.__version__, "skops": _skops_version()}


def _skops_version():
    try:
        from importlib.metadata import version
        return version("skops")
    except Exception:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------- net specs
def _path_of(obj):
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        raise TypeError(f"cannot save {obj!r}: only module-level classes and functions can be "
                        f"stored in a model file")
    return f"{module}.{qualname}", module, qualname


def _encode(value, where):
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray):
        return {"__array__": np.array(value)}
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, (list, tuple)):
        key = "__list__" if isinstance(value, list) else "__tuple__"
        return {key: [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"cannot save {where}: dict keys must be strings")
        return {"__dict__": {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}}
    if isinstance(value, type):
        path, module, qualname = _path_of(value)
        return {"__type__": [module, qualname]}
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
        path, module, qualname = _path_of(value)
        return {"__function__": [module, qualname]}
    if isinstance(value, (torch.nn.Module, torch.optim.Optimizer, torch.Tensor, NeuralNet)):
        raise TypeError(f"cannot save {where}={type(value).__name__} instance: pass the class and "
                        f"its parameters (e.g. module=StarGalaxyCNN, module__width=...) instead")
    # a simple object re-created from its constructor parameters
    cls = type(value)
    path, module, qualname = _path_of(cls)
    if hasattr(value, "get_params"):
        params = value.get_params(deep=False)
    else:
        params = {}
        for name, p in inspect.signature(cls.__init__).parameters.items():
            if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if not hasattr(value, name):
                raise TypeError(f"cannot save {where}: {path} does not store its constructor "
                                f"parameter {name!r} as an attribute")
            params[name] = getattr(value, name)
    return {"__object__": [module, qualname],
            "params": _encode(dict(params), f"{where}.params")}


def _trusted_path(path):
    """Whether a net spec may import ``path``: stargal's listed types, or the net libraries."""
    if path.startswith("stargal."):
        return path in STARGAL_TYPES
    return path.startswith(NET_PREFIXES) or path in _NET_EXTRA


def _resolve(module, qualname, kind):
    path = f"{module}.{qualname}"
    if not _trusted_path(path):
        raise UntrustedModelError(f"model file refers to {kind} {path!r}, outside the trusted "
                                  f"types (stargal.persist.STARGAL_TYPES) and modules {NET_PREFIXES}",
                                  [path])
    if "<" in qualname or any(part.startswith("__") for part in qualname.split(".")):
        raise UntrustedModelError(f"model file refers to an invalid {kind} path {path!r}", [path])
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    ok = isinstance(obj, type) if kind == "class" else callable(obj) and not isinstance(obj, type)
    if not ok:
        raise UntrustedModelError(f"{path!r} is not a {kind}", [path])
    return obj


def _decode(value):
    if isinstance(value, dict):
        if "__array__" in value:
            return np.array(value["__array__"])
        if "__list__" in value:
            return [_decode(v) for v in value["__list__"]]
        if "__tuple__" in value:
            return tuple(_decode(v) for v in value["__tuple__"])
        if "__dict__" in value:
            return {k: _decode(v) for k, v in value["__dict__"].items()}
        if "__type__" in value:
            return _resolve(*value["__type__"], kind="class")
        if "__function__" in value:
            return _resolve(*value["__function__"], kind="function")
        if "__object__" in value:
            cls = _resolve(*value["__object__"], kind="class")
            return cls(**_decode(value["params"]))
        raise NotAStargalModelError(f"malformed net spec entry with keys {sorted(value)}")
    return value


def _net_to_spec(net):
    params = {k: v for k, v in net.get_params(deep=False).items() if k not in _SKIP_PARAMS}
    cls = type(net)
    _, module, qualname = _path_of(cls)
    spec = {"class": [module, qualname], "params": _encode(params, "net"),
            "fitted": bool(getattr(net, "initialized_", False)), "state_dicts": {},
            "class_weight_": None, "classes_inferred_": None, "history": None}
    if spec["fitted"]:
        for name in list(net._modules) + list(net._criteria):
            component = getattr(net, name + "_", None)
            if isinstance(component, torch.nn.Module):
                spec["state_dicts"][name + "_"] = {
                    k: v.detach().cpu().numpy().copy() for k, v in component.state_dict().items()}
        for attr in ("class_weight_", "classes_inferred_"):
            value = getattr(net, attr, None)
            spec[attr] = None if value is None else np.asarray(value)
        n_in = getattr(net, "n_channels_in_", None)
        spec["n_channels_in_"] = None if n_in is None else int(n_in)
        try:
            spec["history"] = json.dumps(net.history_.to_list(), default=_json_default)
        except (TypeError, ValueError, AttributeError):
            spec["history"] = None
    return spec


def _json_default(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    raise TypeError(type(o).__name__)


def _signature_params(cls):
    """``{name: default}`` of the named ``__init__`` parameters of ``cls`` and, for skorch nets, of
    the NeuralNet classes it derives from (``inspect.Parameter.empty`` where there is no default)."""
    return _signature_params_of(cls, cls.__init__)


@functools.lru_cache(maxsize=256)
def _signature_params_of(cls, init):  # ``init`` in the key: a replaced __init__ is read again
    out = {}
    chain = [k for k in cls.__mro__ if isinstance(k, type) and issubclass(k, NeuralNet)] \
        if issubclass(cls, NeuralNet) else [cls]
    for klass in chain:
        try:
            parameters = inspect.signature(klass.__init__).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            continue
        for name, p in parameters.items():
            if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name in out:
                continue
            out[name] = p.default
    return out


class _Upgrade:
    """What loading did to bring a file up to date (for the warning and ``with_info``)."""

    def __init__(self):
        self.filled, self.ignored, self.unset, self.missing = [], [], [], []

    def __bool__(self):
        return bool(self.filled or self.ignored or self.unset)


def _upgrade_net_params(cls, params, report):
    """Drop the net parameters ``cls`` no longer takes; note the ones it will fill with defaults."""
    known = _signature_params(cls)
    name = cls.__name__
    for key in [k for k in params if "__" not in k and k not in known]:
        report.ignored.append(f"{name}.{key}")
        del params[key]
    for key, default in known.items():
        if key not in params and key not in _SKIP_PARAMS:
            if default is inspect.Parameter.empty:
                report.missing.append(f"{name}.{key}")
            else:
                report.filled.append(f"{name}.{key}={default!r}")
    module = params.get("module")
    if isinstance(module, type):
        module_params = _signature_params(module)
        given = {k[len("module__"):] for k in params if k.startswith("module__")}
        for key in sorted(given - set(module_params)):
            report.ignored.append(f"{module.__name__}.{key}")
            del params[f"module__{key}"]
        for key, default in module_params.items():
            if key not in given and default is not inspect.Parameter.empty:
                report.filled.append(f"{module.__name__}.{key}={default!r}")


def _spec_to_net(spec, report=None):
    cls = _resolve(*spec["class"], kind="class")
    if not issubclass(cls, NeuralNet):
        raise UntrustedModelError(f"net class {cls!r} is not a skorch NeuralNet",
                                  [".".join(spec["class"])])
    params = _decode(spec["params"])
    if report is not None:
        _upgrade_net_params(cls, params, report)
        if report.missing:
            return None
    if str(params.get("device", "cpu")).startswith("cuda") and not torch.cuda.is_available():
        params["device"] = "cpu"
    net = cls(**params)
    if not spec["fitted"]:
        return net
    if spec.get("class_weight_") is not None:
        net.class_weight_ = np.asarray(spec["class_weight_"])
    if spec.get("n_channels_in_") is not None:
        net.n_channels_in_ = int(spec["n_channels_in_"])
    net.initialize()
    for attr, state in spec["state_dicts"].items():
        component = getattr(net, attr, None)
        if not isinstance(component, torch.nn.Module):
            raise NotAStargalModelError(f"saved weights for unknown component {attr!r}")
        component.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    if spec.get("classes_inferred_") is not None:
        net.classes_inferred_ = np.asarray(spec["classes_inferred_"])
    if spec.get("history"):
        net.history_ = History(json.loads(spec["history"]))
    return net


# ------------------------------------------------------------------ machine paths, old versions
def _machine_local(est):
    """Names of ``est``'s parameters that name a place on this machine (set to None on save)."""
    constraints = getattr(est, "_parameter_constraints", None) or {}
    names = set(MACHINE_LOCAL_PARAMS) | {k for k, c in constraints.items() if c is PATH_LIKE or c == PATH_LIKE}
    try:
        params = est.get_params(deep=False)
    except AttributeError:  # an old estimator lacking a new parameter: fixed up on load
        params = {k: v for k, v in vars(est).items() if not k.endswith("_") and not k.startswith("_")}
    return [k for k in sorted(names) if k in params]


def _children(obj):
    """The estimators, containers and their items one level below ``obj`` (nets excluded)."""
    if isinstance(obj, NeuralNet):
        return []
    if isinstance(obj, dict):
        return list(obj.values())
    if isinstance(obj, (list, tuple)):
        return list(obj)
    if isinstance(obj, BaseEstimator) or _wrapper_attrs(obj):
        return list(vars(obj).values())
    return []


def contains_net(model) -> bool:
    """Whether a torch network (a skorch net) is part of ``model``: its steps, their parameters and
    fitted attributes, and scikit-learn's wrappers (calibrated classifiers), walked as a model file is.

    Examples
    --------
    >>> from sklearn.pipeline import Pipeline
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> contains_net(Pipeline([("forest", RandomForestClassifier())]))
    False
    """
    stack, seen = [model], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, NeuralNet):
            return True
        stack.extend(_children(item))
    return False


def _walk_estimators(obj, seen=None, path="model"):
    """Every scikit-learn estimator reachable from ``obj`` with a readable path (depth first, once)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (str, bytes, np.ndarray, numbers.Number, type)) or obj is None:
        return
    seen.add(id(obj))
    if isinstance(obj, BaseEstimator) and not isinstance(obj, NeuralNet):
        yield path, obj
    if isinstance(obj, _SkPipeline):
        for name, step in obj.steps:
            yield from _walk_estimators(step, seen, name)
        return
    for child in _children(obj):
        yield from _walk_estimators(child, seen, path if not isinstance(child, BaseEstimator)
                                    else f"{path}.{type(child).__name__}")


def _unset_machine_params(model):
    """A copy of ``model`` (shared where nothing changes) whose machine-local parameters are None.

    Returns the copy and ``['align.sas_url', ...]`` (the parameters that held a value). The model
    passed in is not modified.
    """
    unset = []
    memo = {}

    def rebuild(obj, where):
        if id(obj) in memo:
            return memo[id(obj)]
        new = obj
        if isinstance(obj, _SkPipeline):
            steps = [(name, rebuild(step, name)) for name, step in obj.steps]
            if any(a is not b for (_, a), (_, b) in zip(steps, obj.steps)):
                new = copy.copy(obj)
                new.steps = steps
        elif isinstance(getattr(obj, "transformer_list", None), list):  # FeatureUnion, InputUnion
            parts = [(name, rebuild(t, f"{where}.{name}") if isinstance(t, BaseEstimator) else t)
                     for name, t in obj.transformer_list]
            if any(a is not b for (_, a), (_, b) in zip(parts, obj.transformer_list)):
                new = copy.copy(obj)
                new.transformer_list = parts
        elif isinstance(obj, BaseEstimator) and not isinstance(obj, NeuralNet):
            names = [k for k in _machine_local(obj) if getattr(obj, k, None) is not None]
            if names:
                new = copy.copy(obj)
                for k in names:
                    setattr(new, k, None)
                    unset.append(f"{where}.{k}")
        memo[id(obj)] = new
        return new

    return rebuild(model, "model"), unset


def _local_strings(value, where, found, depth=0):
    """Strings inside ``value`` (parameters: str, containers, encoded specs) that look like paths."""
    if depth > 20:
        return
    if isinstance(value, str):
        if _LOCAL_PATH.match(value.strip()):
            found.append(f"{where}={value!r}")
    elif isinstance(value, dict):
        for k, v in value.items():
            _local_strings(v, f"{where}.{k}" if not str(k).startswith("__") else where, found, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _local_strings(v, where, found, depth + 1)


def _check_machine_paths(model, nets):
    """Name (in a MachinePathWarning) any saved parameter that still looks like a local path."""
    found = []
    for where, est in _walk_estimators(model):
        try:
            params = est.get_params(deep=False)
        except AttributeError:
            continue
        for k, v in params.items():
            if not isinstance(v, BaseEstimator):
                _local_strings(v, f"{where}.{k}", found)
    for i, spec in enumerate(nets):
        _local_strings(spec.get("params"), f"net[{i}]", found)
    if found:
        warnings.warn(f"the model file will hold what looks like paths of this machine: "
                      f"{', '.join(found[:10])}; a model file should work anywhere: set such "
                      f"parameters to None (or to a value valid everywhere) before saving",
                      MachinePathWarning, stacklevel=3)


def _upgrade_estimators(model, report, unset_paths):
    """Fill missing ``__init__`` parameters with their defaults; drop removed ones; unset paths."""
    for where, est in _walk_estimators(model):
        cls = type(est)
        state = vars(est)
        known = _signature_params(cls)
        for key, default in known.items():
            if key in state:
                continue
            if default is inspect.Parameter.empty:
                report.missing.append(f"{cls.__name__}.{key}")
                continue
            setattr(est, key, copy.deepcopy(default))
            report.filled.append(f"{cls.__name__}.{key}={default!r}")
        if f"{cls.__module__}.{cls.__qualname__}" in STARGAL_TYPES:
            for key in [k for k in state if not k.startswith("_") and not k.endswith("_")
                        and k not in known]:
                report.ignored.append(f"{cls.__name__}.{key}")
                delattr(est, key)
        if unset_paths:
            for key in _machine_local(est):
                if getattr(est, key, None) is not None:
                    report.unset.append(f"{where}.{key}")
                    setattr(est, key, None)


def _wrapper_attrs(obj):
    """Attributes of scikit-learn wrappers that can hold a net (calibrated final steps)."""
    from sklearn.calibration import CalibratedClassifierCV, _CalibratedClassifier
    from sklearn.frozen import FrozenEstimator

    if isinstance(obj, (FrozenEstimator, _CalibratedClassifier)):
        return ("estimator",)
    if isinstance(obj, CalibratedClassifierCV):
        return ("estimator", "calibrated_classifiers_")
    return ()


def _swap_nets(obj, nets, memo=None):
    """Copy of ``obj`` with every skorch net (top level, pipeline step, or inside a calibrated
    final step: ``CalibratedClassifierCV(FrozenEstimator(net))``) replaced by a NetSlot.
    A net reached twice (the calibrator's frozen copy is the same object) is stored once."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, NeuralNet):
        nets.append(_net_to_spec(obj))
        memo[id(obj)] = NetSlot(len(nets) - 1)
        return memo[id(obj)]
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (NeuralNet, _SkPipeline)) or _wrapper_attrs(v)
                                              for v in obj):
        return type(obj)(_swap_nets(v, nets, memo) for v in obj)
    if isinstance(obj, _SkPipeline):
        new = copy.copy(obj)
        new.steps = [(name, _swap_nets(step, nets, memo)) for name, step in obj.steps]
        return new
    attrs = [a for a in _wrapper_attrs(obj) if hasattr(obj, a)]
    if attrs:
        new = copy.copy(obj)
        for a in attrs:
            setattr(new, a, _swap_nets(getattr(obj, a), nets, memo))
        memo[id(obj)] = new
        return new
    return obj


def _restore_nets(obj, nets):
    if isinstance(obj, NetSlot):
        if not isinstance(obj.index, int) or not 0 <= obj.index < len(nets):
            raise NotAStargalModelError(f"model file refers to missing net {obj.index!r}")
        return nets[obj.index]
    if isinstance(obj, list):
        return [_restore_nets(v, nets) for v in obj]
    if isinstance(obj, _SkPipeline):
        obj.steps = [(name, _restore_nets(step, nets)) for name, step in obj.steps]
        return obj
    for a in _wrapper_attrs(obj):
        if hasattr(obj, a):
            setattr(obj, a, _restore_nets(getattr(obj, a), nets))
    return obj


# --------------------------------------------------------------------------- API
def save_model(model, path, metadata=None):
    """Save a (fitted) pipeline or estimator to a portable stargal model file.

    Every machine-local parameter (:data:`MACHINE_LOCAL_PARAMS`, and any parameter an
    estimator constrains as a path) is stored as ``None``, so the model reads its data from the
    source and cache configured where it runs; ``model`` itself is not modified. The file
    records this stargal's version and :data:`STARGAL_FORMAT`.

    Parameters
    ----------
    model : estimator
        Typically a pipeline from :mod:`stargal.models`; skorch nets may be the
        model itself or steps of (nested) pipelines.
    path : str or os.PathLike
        Output file (conventionally ``*.stargal``); overwritten atomically.
    metadata : dict, optional
        JSON-serialisable information (training fields, metrics, config...),
        returned by ``load_model(path, with_info=True)``.

    Returns
    -------
    pathlib.Path
        The written path.

    Warns
    -----
    MachinePathWarning
        Another saved parameter looks like a path of this machine (it is saved as it is).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from stargal.models import make_majority_pipeline
    >>> pipe = make_majority_pipeline().fit(np.zeros((4, 5, 7, 7)), [0, 0, 0, 1])
    >>> path = save_model(pipe, os.path.join(tempfile.mkdtemp(), "m.stargal"), {"note": "demo"})
    >>> load_model(path).predict(np.zeros((1, 5, 7, 7))).tolist()
    [0]
    """
    from pathlib import Path
    path = Path(path)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        metadata = json.loads(json.dumps(metadata, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    portable, unset = _unset_machine_params(model)
    nets = []
    stored = _swap_nets(portable, nets)
    _check_machine_paths(stored, nets)
    payload = {
        "stargal_format": STARGAL_FORMAT,
        "stargal_version": _stargal_version(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "library_versions": _versions(),
        "metadata": metadata,
        "unset_params": unset,
        "model": stored,
        "nets": nets,
    }
    buffer = io.BytesIO()
    try:
        sio.dump(payload, buffer, compression=zipfile.ZIP_DEFLATED)
    except Exception as exc:  # skops raises various types for unsupported objects
        raise TypeError(f"cannot save the model: skops could not serialise it ({exc!r}); torch "
                        f"objects are supported only as skorch nets (the model itself or "
                        f"pipeline steps)") from exc
    data = buffer.getvalue()
    leaked = [t for t in sio.get_untrusted_types(data=data) if t.startswith(("torch.", "skorch."))]
    if leaked:
        raise TypeError(f"cannot save: torch/skorch objects {leaked} are outside the places nets "
                        f"are supported (the model itself or pipeline steps)")
    return atomic_write_bytes(path, lambda fh: fh.write(data))


def _check_marker(path):
    try:
        with zipfile.ZipFile(path) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError):
        raise NotAStargalModelError(
            f"{os.fspath(path)!r} is not a stargal model file: it is not a skops archive "
            f"(pickle and other formats are refused because loading them can run code)") from None
    content = schema.get("content") if isinstance(schema, dict) else None
    if (not isinstance(schema, dict) or schema.get("__loader__") != "DictNode"
            or not isinstance(content, dict) or "stargal_format" not in content):
        raise NotAStargalModelError(
            f"{os.fspath(path)!r} is a skops file but not a stargal model file (no stargal "
            f"marker); save models with stargal.persist.save_model")
    return content


def _header_value(content, key):
    """A plain value (int / str) of the archive's top-level dict, read without loading anything."""
    node = content.get(key)
    if isinstance(node, dict) and node.get("is_json"):
        try:
            return json.loads(node["content"])
        except (KeyError, TypeError, ValueError):
            return None
    return None


def _version_key(version):
    from packaging.version import InvalidVersion, Version

    try:
        return Version(str(version))
    except InvalidVersion:
        return None


def _incompatible(path, file_version, file_format, why, remedy):
    return IncompatibleModelError(
        f"cannot load {os.fspath(path)!r}: it was written by stargal {file_version} (model file "
        f"format {file_format}) and this is stargal {_stargal_version()} (format {STARGAL_FORMAT}); "
        f"{why}: {remedy}")


def _upgrade_remedy(file_version):
    if _version_key(file_version) is None:
        return "upgrade stargal (pip install -U stargal)"
    return f"upgrade stargal (pip install -U 'stargal>={file_version}')"


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def load_model(path, with_info=False):
    """Load a model written by :func:`save_model` (this or an older stargal), trusting only allowlisted types.

    A file of an older stargal is brought up to date: new ``__init__`` parameters get their
    defaults (from the class signature), parameters this version no longer has are ignored,
    and the data source and cache that format-1 files stored are unset (the model then reads
    from the source and cache configured where it runs). One :class:`ModelVersionWarning`
    lists what was done. A file this version cannot read stops with one line
    (:class:`IncompatibleModelError`).

    Parameters
    ----------
    path : str or os.PathLike
    with_info : bool, default=False
        Also return the file's header (``metadata``, ``stargal_version``,
        ``created_utc``, ``library_versions``, ``stargal_format``, ``unset_params``) and what
        loading changed: ``filled_params``, ``ignored_params``, ``unset_on_load``.

    Returns
    -------
    model : estimator
    info : dict
        Only with ``with_info=True``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    NotAStargalModelError
        Not a skops archive or no stargal marker.
    IncompatibleModelError
        Written by a newer stargal or format, or by an older one in a way this version cannot
        bring up to date (a new parameter without a default, a net that does not rebuild).
    UntrustedModelError
        The file contains types outside :data:`STARGAL_TYPES` / :data:`TRUSTED_PREFIXES` /
        :data:`NET_PREFIXES`.

    Warns
    -----
    ModelVersionWarning
        The file was brought up to date (what was filled, ignored or unset is listed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    content = _check_marker(path)
    file_format = _header_value(content, "stargal_format")
    file_version = _header_value(content, "stargal_version") or "unknown"
    ours = _version_key(_stargal_version())
    theirs = _version_key(file_version)
    if not isinstance(file_format, int) or isinstance(file_format, bool) or file_format < 1:
        raise NotAStargalModelError(f"{path!r} has an invalid stargal_format {file_format!r}")
    remedy = "retrain the model with this version" + (
        f", or install the version that wrote it (pip install stargal=={file_version})"
        if _version_key(file_version) is not None else "")
    newer = file_format > STARGAL_FORMAT or (ours is not None and theirs is not None and theirs > ours)
    if file_format not in READABLE_FORMATS:
        raise _incompatible(path, file_version, file_format, "this version does not read that format",
                            _upgrade_remedy(file_version) if newer else remedy)
    found = sio.get_untrusted_types(file=path)
    trusted = [t for t in found if t in STARGAL_TYPES or t.startswith(TRUSTED_PREFIXES)]
    rejected = [t for t in found if t not in trusted]
    if rejected:
        raise UntrustedModelError(
            f"{path!r} contains types outside stargal.persist.STARGAL_TYPES and the trusted "
            f"modules {TRUSTED_PREFIXES}: {rejected}; refusing to load", rejected)
    report = _Upgrade()
    try:
        payload = sio.load(path, trusted=trusted)
        if not isinstance(payload, dict) or "model" not in payload:
            raise NotAStargalModelError(f"{path!r} holds no model")
        nets = [_spec_to_net(spec, report) for spec in payload.get("nets", [])]
        if not report.missing:
            model = _restore_nets(payload["model"], nets)
            _upgrade_estimators(model, report, unset_paths=True)
    except (NotAStargalModelError, UntrustedModelError):
        raise
    except Exception as exc:  # noqa: BLE001 - anything else: the file and this code do not fit
        raise _incompatible(path, file_version, file_format,
                            f"its content does not fit this version's classes ({_first_line(exc)})",
                            remedy) from None
    if report.missing:
        raise _incompatible(path, file_version, file_format,
                            f"this version's parameter(s) {', '.join(sorted(set(report.missing)))} "
                            f"have no default to fill in", remedy)
    if newer and (report.filled or report.ignored):
        raise _incompatible(path, file_version, file_format, "the file is newer and its parameters "
                            f"differ from this version's ({', '.join(report.filled + report.ignored)[:200]})",
                            _upgrade_remedy(file_version))
    if report:
        parts = []
        if report.filled:
            parts.append("filled new parameters with their defaults: " + ", ".join(report.filled))
        if report.ignored:
            parts.append("ignored parameters this version no longer has: " + ", ".join(report.ignored))
        if report.unset:
            parts.append("ignored the data source and cache it was saved with ("
                         + ", ".join(report.unset) + "): it reads from the --sas-url/--cache-dir "
                         "arguments, else STARGAL_SAS_URL/STARGAL_CACHE, else the defaults")
        warnings.warn(f"{path}: written by stargal {file_version} (format {file_format}), loaded by "
                      f"stargal {_stargal_version()}: {'; '.join(parts)}. Save it again with "
                      f"stargal.save_model to bring the file up to date", ModelVersionWarning,
                      stacklevel=2)
    if with_info:
        info = {k: payload.get(k) for k in ("stargal_format", "stargal_version", "created_utc",
                                            "library_versions", "metadata")}
        info["unset_params"] = list(payload.get("unset_params", []))
        info["filled_params"] = list(report.filled)
        info["ignored_params"] = list(report.ignored)
        info["unset_on_load"] = list(report.unset)
        return model, info
    return model
