"""stargal: object-centric star/galaxy classification of SDSS imaging, the scikit-learn way.

Data flows one way: catalog -> locate/align -> cut -> augment/scale -> model -> metrics/report.
Public names are imported lazily, so ``import stargal`` stays fast (torch loads only when a
model is used)::

    from stargal import Aligner, Cutter, AsinhScaler, make_cnn_pipeline, predict_coordinates
"""

import os as _os
from importlib import import_module

# torch's OpenMP threads spin-wait for each other by default; on cores shared with other work
# that spin starves the thread it waits for (CNN prediction beside one busy process fell to about
# a quarter of its quiet speed; see benchmarks/results.md). Read once when torch is first imported,
# so set here, before any stargal module imports torch. A value set by the user wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = [
    "FieldID", "Fetcher", "Field", "open_field", "read_calibobj", "load_catalog", "read_coordinates",
    "Aligner", "Cutter", "CutoutAugmenter", "AsinhScaler", "PhotometricFeatures",
    "make_cnn_pipeline", "make_forest_pipeline", "make_majority_pipeline",
    "load_config", "save_model", "load_model", "predict_coordinates",
]

_WHERE = {
    "FieldID": "sdss", "Fetcher": "fetch", "Field": "frames", "open_field": "frames",
    "read_calibobj": "catalogs", "load_catalog": "catalogs", "read_coordinates": "catalogs",
    "Aligner": "align", "Cutter": "cutouts", "CutoutAugmenter": "augment", "AsinhScaler": "scale",
    "PhotometricFeatures": "features", "make_cnn_pipeline": "models", "make_forest_pipeline": "models",
    "make_majority_pipeline": "models", "load_config": "config", "save_model": "persist",
    "load_model": "persist", "predict_coordinates": "predict",
}

try:
    from importlib.metadata import version as _version

    __version__ = _version("stargal")
except Exception:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'stargal' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
