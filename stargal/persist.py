"""Safe model files: skops for the scikit-learn parts, plain arrays for torch weights.

File format (``stargal_format = 1``)
-----------------------------------
One `skops <https://skops.readthedocs.io>`_ file (a zip archive, no pickle)
holding a dictionary::

    {'stargal_format': 1, 'stargal_version': '0.1.0', 'created_utc': '...',
     'library_versions': {...}, 'metadata': {...user JSON...},
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

Trust
-----
:func:`load_model` first checks the archive and the stargal marker
(:class:`NotAStargalModelError`), then lists the archive's types with
:func:`skops.io.get_untrusted_types` and trusts only those whose module starts
with one of :data:`TRUSTED_PREFIXES` (``stargal.``, ``sklearn.``,
``imblearn.``, ``numpy.``, ``scipy.``); anything else raises
:class:`UntrustedModelError` naming the types.  torch and skorch types never
pass through skops; import paths inside net specs are resolved only within
:data:`NET_PREFIXES` (plus ``builtins.print``, skorch's default log sink).
Loading a file still runs the ``__init__``/``__setstate__`` code of these
libraries, so only load models from sources you trust at least that far.
"""

from __future__ import annotations

import copy
import datetime as _dt
import importlib
import inspect
import io
import json
import numbers
import os
import platform
import types
import zipfile

import numpy as np
import skops.io as sio
import torch
from sklearn.pipeline import Pipeline as _SkPipeline
from skorch import NeuralNet
from skorch.history import History

from ._io import atomic_write_bytes

__all__ = [
    "save_model",
    "load_model",
    "NetSlot",
    "NotAStargalModelError",
    "UntrustedModelError",
    "STARGAL_FORMAT",
    "TRUSTED_PREFIXES",
    "NET_PREFIXES",
]

#: version of the file layout written by :func:`save_model`
STARGAL_FORMAT = 1
#: modules whose types skops may instantiate when loading
TRUSTED_PREFIXES = ("stargal.", "sklearn.", "imblearn.", "numpy.", "scipy.")
#: modules from which net specs may import classes / functions
NET_PREFIXES = ("stargal.", "torch.", "skorch.", "sklearn.", "numpy.")
_NET_EXTRA = ("builtins.print",)
_SKIP_PARAMS = ("_params_to_validate",)


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


def _resolve(module, qualname, kind):
    path = f"{module}.{qualname}"
    if not (path.startswith(NET_PREFIXES) or path in _NET_EXTRA):
        raise UntrustedModelError(f"model file refers to {kind} {path!r}, outside the trusted "
                                  f"modules {NET_PREFIXES}", [path])
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


def _spec_to_net(spec):
    cls = _resolve(*spec["class"], kind="class")
    if not issubclass(cls, NeuralNet):
        raise UntrustedModelError(f"net class {cls!r} is not a skorch NeuralNet",
                                  [".".join(spec["class"])])
    params = _decode(spec["params"])
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
    """Save a (fitted) pipeline or estimator to a stargal model file.

    Parameters
    ----------
    model : estimator
        Typically a pipeline from :mod:`stargal.models`; skorch nets may be the
        model itself or steps of (nested) pipelines.
    path : str or os.PathLike
        Output file (conventionally ``*.skops``); overwritten atomically.
    metadata : dict, optional
        JSON-serialisable information (training fields, metrics, config...),
        returned by ``load_model(path, with_info=True)``.

    Returns
    -------
    pathlib.Path
        The written path.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from stargal.models import make_majority_pipeline
    >>> pipe = make_majority_pipeline().fit(np.zeros((4, 5, 7, 7)), [0, 0, 0, 1])
    >>> path = save_model(pipe, os.path.join(tempfile.mkdtemp(), "m.skops"), {"note": "demo"})
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
    nets = []
    payload = {
        "stargal_format": STARGAL_FORMAT,
        "stargal_version": _stargal_version(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "library_versions": _versions(),
        "metadata": metadata,
        "model": _swap_nets(model, nets),
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


def load_model(path, with_info=False):
    """Load a model written by :func:`save_model`, trusting only allowlisted types.

    Parameters
    ----------
    path : str or os.PathLike
    with_info : bool, default=False
        Also return the file's header (``metadata``, ``stargal_version``,
        ``created_utc``, ``library_versions``, ``stargal_format``).

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
        Not a skops archive, no stargal marker, or an unsupported format.
    UntrustedModelError
        The file contains types outside :data:`TRUSTED_PREFIXES` /
        :data:`NET_PREFIXES`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    _check_marker(path)
    found = sio.get_untrusted_types(file=path)
    trusted = [t for t in found if t.startswith(TRUSTED_PREFIXES)]
    rejected = [t for t in found if not t.startswith(TRUSTED_PREFIXES)]
    if rejected:
        raise UntrustedModelError(
            f"{path!r} contains types outside the trusted modules {TRUSTED_PREFIXES}: "
            f"{rejected}; refusing to load", rejected)
    payload = sio.load(path, trusted=trusted)
    if not isinstance(payload, dict) or payload.get("stargal_format") != STARGAL_FORMAT:
        version = payload.get("stargal_format") if isinstance(payload, dict) else None
        raise NotAStargalModelError(f"{path!r} has stargal_format {version!r}; this stargal reads "
                                    f"format {STARGAL_FORMAT}")
    nets = [_spec_to_net(spec) for spec in payload.get("nets", [])]
    model = _restore_nets(payload["model"], nets)
    if with_info:
        info = {k: payload.get(k) for k in ("stargal_format", "stargal_version", "created_utc",
                                            "library_versions", "metadata")}
        return model, info
    return model
