"""stargal: object-centric star/galaxy classification of SDSS imaging, the scikit-learn way.

Data flows one way: catalog -> locate/align -> cut -> augment/scale -> model -> metrics/report.
Public names are imported lazily, so ``import stargal`` stays fast (torch loads only when a
model is used). Fit, save, load and predict from the front door::

    from stargal import study_table, build_pipeline, fit_pipeline, save_model, load_model, predict_coordinates
    table = study_table(fields=["1035-6-17"])               # labelled objects, split by sky groups
    model = fit_pipeline(build_pipeline("forest"), table[table["split"] == "train"])
    save_model(model, "forest.stargal")                     # portable: no paths of this machine inside
    out = predict_coordinates(load_model("forest.stargal"), {"ra": ["22:06:48.0"], "dec": ["+26:57:00"]})
"""

import os as _os
from importlib import import_module

# torch's OpenMP threads spin-wait for each other by default; on cores shared with other work
# that spin starves the thread it waits for (CNN prediction beside one busy process fell to about
# a quarter of its quiet speed; see benchmarks/results.md). Read once when torch is first imported,
# so set here, before any stargal module imports torch. A value set by the user wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: The front door: public name -> the module that defines it (``__all__`` is this table's keys).
#: A name the README uses from ``stargal`` belongs here.
_WHERE = {
    # data: identifiers, source, frames, catalogs, coordinate lists, the field index
    "FieldID": "sdss", "Fetcher": "fetch", "Field": "frames", "open_field": "frames",
    "read_calibobj": "catalogs", "load_catalog": "catalogs", "read_coordinates": "catalogs",
    "parse_coordinates": "catalogs", "labels_to_y": "catalogs", "CoordinateError": "catalogs",
    "load_window_index": "window", "field_psf": "psf",
    # pipeline steps and factories
    "Aligner": "align", "Cutter": "cutouts", "CutoutAugmenter": "augment", "PSFChannels": "psf_channels",
    "AsinhScaler": "scale", "PhotometricFeatures": "features", "SyntheticInjector": "inject",
    "make_cnn_pipeline": "pipelines", "make_forest_pipeline": "pipelines", "make_majority_pipeline": "pipelines",
    # the study workflow
    "load_config": "config", "study_table": "training", "build_pipeline": "training",
    "fit_pipeline": "training", "train_model": "training", "evaluate_model": "training",
    "calibrate_pipeline": "calibration", "adjust_prior": "calibration",
    "classification_metrics": "metrics", "grid_search": "tuning",
    # model files and prediction
    "save_model": "persist", "load_model": "persist", "predict_coordinates": "predict",
    "predict_csv": "predict",
}
__all__ = list(_WHERE)

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
