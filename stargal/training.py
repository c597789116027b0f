"""The study workflow shared by the CLI and ``experiments/``: data table, pipelines, fit, evaluate.

* :func:`study_table` -- the labelled objects of a study's fields with ``group`` (sky cell)
  and ``split`` (``train``/``valid``/``test``/``excluded``) columns; objects too close to a frame
  edge for the largest cutout are dropped here (and counted), so the pipelines' aligners never
  meet them during fitting.
* :func:`build_pipeline` -- ``Aligner -> Cutter -> [augment] -> AsinhScaler -> CNN`` or the
  forest / majority baselines, configured from a :class:`~stargal.config.StudyConfig`.
* :func:`fit_pipeline` -- fit with the sky groups routed to the CNN's early-stopping split.
* :func:`evaluate_predictions` / :func:`evaluate_model` -- metrics (overall and per r magnitude).
* :func:`train_model` -- what ``stargal train`` runs.
"""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .catalogs import LABELS, labels_to_y, load_catalog, read_coordinates
from .config import CNN_PARAM_NAMES, StudyConfig, load_config
from .fetch import get_fetcher
from .frames import Field

__all__ = [
    "CNN_PARAM_NAMES",
    "cnn_params",
    "cnn_param_grid",
    "study_table",
    "build_pipeline",
    "KINDS",
    "route_params",
    "fit_pipeline",
    "evaluate_predictions",
    "evaluate_model",
    "train_model",
    "parse_param_overrides",
]



def _config(config) -> StudyConfig:
    return config if isinstance(config, StudyConfig) else load_config(config)


def cnn_params(config: StudyConfig) -> dict:
    """Keyword arguments of :func:`stargal.classifier.make_cnn_net` from the ``[cnn]`` table."""
    kw = {k: v for k, v in config.cnn.items() if k in CNN_PARAM_NAMES}
    kw.update(random_state=config.seed, valid_fraction=config.valid_fraction, input_size=config.cutout_size)
    return kw


def cnn_param_grid(grid: dict) -> dict:
    """Map a config tuning grid (``lr``, ``width``, ...) to pipeline parameter names."""
    out = {}
    for key, values in grid.items():
        name = CNN_PARAM_NAMES.get(key, key)
        out[name] = list(values)
    return out


def study_table(config=None, fetcher=None, *, sas_url=None, cache_dir=None, fields=None,
                max_cutout=None) -> pd.DataFrame:
    """Labelled objects of the study's test and train fields, with ``group`` and ``split``.

    Parameters
    ----------
    config : StudyConfig or path, optional
        Default: the packaged study (test field 8162-6-80).
    fields : list of str, optional
        Restrict the train fields (e.g. a quick run); the test fields are always included.
    max_cutout : int, optional
        Largest cutout size to be used; objects closer to any band's frame edge than its
        half size (plus the interpolation kernel) are dropped and counted in
        ``table.attrs['n_dropped_edge']``.

    Returns
    -------
    pandas.DataFrame
        :func:`~stargal.catalogs.load_catalog` columns + ``group`` (int) + ``split``.
    """
    from .align import Aligner
    from .split import assign_splits, make_groups

    config = _config(config)
    fetcher = get_fetcher(fetcher, sas_url=sas_url, cache_dir=cache_dir)
    train_fields = list(fields) if fields is not None else list(config.train_fields)
    all_fields = list(config.test_fields) + [f for f in train_fields if f not in config.test_fields]
    table = load_catalog(all_fields, fetcher)
    aligner = Aligner(cutout_size=max_cutout or config.cutout_size, policy="flag",
                      sas_url=fetcher.base_url, cache_dir=str(fetcher.cache_dir))
    flags = aligner.fit_transform(table)["flag"].to_numpy()
    n_before = len(table)
    table = table[flags == ""].reset_index(drop=True)
    test_footprints = [Field(f, fetcher) for f in config.test_fields]  # their r frames
    table["group"] = make_groups(table, by=config.group_by, cell_arcmin=config.group_cell_arcmin)
    table["split"] = assign_splits(
        table, config.test_fields, test_footprints, margin_arcsec=config.exclusion_margin_arcsec,
        groups=table["group"].to_numpy(), valid_fraction=config.valid_fraction, random_state=config.seed,
    ).to_numpy()
    table.attrs["n_dropped_edge"] = int(n_before - len(table))
    table.attrs["fields"] = all_fields
    return table


#: Model kinds :func:`build_pipeline` builds.
KINDS = ("cnn", "hybrid", "forest", "rule", "majority")


def build_pipeline(kind: str = "cnn", config=None, *, sas_url=None, cache_dir=None, augmenter=None,
                   params=None, max_cutout=None, psf=None):
    """A stargal pipeline whose input is an objects table (``ra``, ``dec``, ``run``, ...).

    ``kind`` is one of :data:`KINDS`:

    * ``'cnn'``: ``align -> cut -> [augment] -> [psf] -> scale -> net``;
    * ``'hybrid'``: the CNN with the model-fit measurements as a second input of its head:
      ``align -> inputs -> [augment] -> [psf] -> scale -> net`` (``inputs__images__...`` is the
      cutter, ``inputs__features='drop'`` the feature-blind variant);
    * ``'forest'``: ``align -> features -> forest``, the features a union of aperture photometry of
      the cutouts (``features__pixels__...``) and the model-fit measurements of
      :class:`~stargal.photo.SDSSPhotometry` (``features__measured__...``; ``'drop'`` for the
      aperture-only forest);
    * ``'rule'``: ``align -> photo -> rule``, SDSS's type rule with its boundary fitted on the
      training labels (:class:`~stargal.rule.SDSSTypeRule`);
    * ``'majority'``: the most frequent class.

    ``params`` are set with ``set_params`` afterwards (``{'net__max_epochs': 5, 'cut__size': 21}``).
    ``psf`` (default: the config's ``psf``) is ``'none'`` for a PSF-blind model (no PSF stamps are
    cut; ``'drop'``, :class:`~stargal.psf_channels.PSFChannels`' former name of it, builds the same
    pipeline with a ``FutureWarning``), or a PSFChannels mode: the cutter then appends each field's
    PSF (``Cutter(psf=True)``), the CNN gets a ``'psf'`` step and the forest PSF-relative features.
    """
    from .align import Aligner
    from .cutouts import Cutter
    from .pipelines import (make_cnn_pipeline, make_hybrid_pipeline, make_majority_pipeline,
                            make_measured_forest_pipeline, make_rule_pipeline)
    from .photo import SDSSPhotometry
    from .psf_channels import PSFChannels
    from .scale import AsinhScaler

    config = _config(config)
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(repr(k) for k in KINDS)}")
    psf = config.psf if psf is None else psf
    if psf == "drop":  # PSFChannels' former name of 'none': the same PSF-blind pipeline
        import warnings

        warnings.warn("psf='drop' is deprecated; use psf='none' (the same PSF-blind pipeline)",
                      FutureWarning, stacklevel=2)
        psf = "none"
    size = config.cutout_size
    aware = psf != "none"
    align = ("align", Aligner(cutout_size=max_cutout or size, sas_url=sas_url, cache_dir=cache_dir))

    def cutter(with_psf):
        return Cutter(size=size, sas_url=sas_url, cache_dir=cache_dir, psf=with_psf, psf_source=config.psf_source)

    def photometry():
        return SDSSPhotometry(psf_source=config.psf_source, sas_url=sas_url, cache_dir=cache_dir)

    if kind == "cnn":
        pipe = make_cnn_pipeline(front=[align, ("cut", cutter(aware))], augmenter=augmenter, scaler=AsinhScaler(),
                                 psf=PSFChannels(mode=psf) if aware else None, **cnn_params(config))
    elif kind == "hybrid":
        pipe = make_hybrid_pipeline(align[1], cutter(aware), photometry(), augmenter=augmenter, scaler=AsinhScaler(),
                                    psf=PSFChannels(mode=psf) if aware else None, **cnn_params(config))
    elif kind == "forest":
        pipe = make_measured_forest_pipeline(align[1], cutter(aware), photometry(), random_state=config.seed)
    elif kind == "rule":
        pipe = make_rule_pipeline(front=[align, ("photo", photometry())])
    else:
        pipe = make_majority_pipeline(front=[align, ("cut", cutter(False))])
    if params:
        pipe.set_params(**route_params(kind, params))
    return pipe


#: Where the CNN's ``cut`` step sits in the other kinds' pipelines (its parameters are routed there).
_CUT_PREFIX = {"hybrid": "inputs__images__", "forest": "features__pixels__cut__"}


def route_params(kind: str, params: dict) -> dict:
    """``params`` for ``kind``'s pipeline: the CNN's ``cut__*`` names (a tuned ``cut__size``, say) go to
    where that kind cuts its cutouts (``inputs__images__*`` in the hybrid CNN,
    ``features__pixels__cut__*`` in the forest); the rule cuts none and drops them.

    Examples
    --------
    >>> route_params("hybrid", {"cut__size": 11, "net__lr": 0.003})
    {'inputs__images__size': 11, 'net__lr': 0.003}
    """
    out = {}
    for key, value in params.items():
        if key.startswith("cut__") and kind in _CUT_PREFIX:
            key = _CUT_PREFIX[kind] + key[len("cut__"):]
        elif key.startswith("cut__") and kind == "rule":
            continue
        out[key] = value
    return out


def fit_pipeline(pipe, table: pd.DataFrame, groups=None):
    """Fit on a labelled table; sky groups go to the CNN's early-stopping split."""
    y = labels_to_y(table["label"])
    if groups is None and "group" in table:
        groups = table["group"].to_numpy()
    if "net" in pipe.named_steps and groups is not None:
        return pipe.fit(table, y, net__groups=np.asarray(groups))
    return pipe.fit(table, y)


def evaluate_predictions(y_true, proba, mags=None, bins=None) -> tuple[dict, pd.DataFrame | None]:
    """Overall metrics and (with ``mags``) metrics per r-magnitude bin.

    Objects a model abstains on (NaN probability: the rule without a measurement) are left out of
    the metrics and counted: ``overall['coverage']`` is the fraction answered.
    """
    from .metrics import classification_metrics, metrics_by_magnitude

    proba = np.asarray(proba, float)
    y_true = np.asarray(y_true)
    known = np.isfinite(proba)
    y_pred = (proba[known] >= 0.5).astype(int)
    overall = classification_metrics(y_true[known], y_pred, proba[known])
    overall["coverage"] = float(known.mean()) if len(known) else float("nan")
    by_mag = None
    if mags is not None:
        kw = {"bins": bins} if bins is not None else {}
        by_mag = metrics_by_magnitude(y_true[known], y_pred, np.asarray(mags, float)[known], **kw)
    return overall, by_mag


def _labelled_objects(catalog, fetcher) -> pd.DataFrame:
    """Fields (``'8162-6-80'``) -> their catalogs; a CSV path -> ra, dec, label rows."""
    catalog = [catalog] if isinstance(catalog, (str, Path)) else list(catalog)
    if len(catalog) == 1 and str(catalog[0]).lower().endswith(".csv"):
        table = read_coordinates(catalog[0])
        if "label" not in table:
            raise ValueError(f"{catalog[0]} needs a 'label' column (star/galaxy) to evaluate against")
        labels_to_y(table["label"])  # validates
        return table
    return load_catalog([str(c) for c in catalog], fetcher)


def evaluate_model(models, catalog, *, sas_url=None, cache_dir=None, by_magnitude=False) -> str:
    """Metrics table (text) of one or more saved models on labelled objects (``stargal evaluate``).

    Objects the model cannot see (edge, outside) are counted and left out of the metrics, and so
    are objects it abstains on (the rule without a measurement). Each MCC comes with its 95 %
    bootstrap interval over the objects (``mcc_low``, ``mcc_high``;
    :func:`stargal.metrics.mcc_interval`); with several models, each one after the first is
    compared with the first on the objects both answered, the objects resampled together (paired).
    """
    from .metrics import mcc_difference, mcc_interval, metrics_table
    from .persist import load_model
    from .predict import predict_coordinates

    fetcher = get_fetcher(None, sas_url=sas_url, cache_dir=cache_dir)
    table = _labelled_objects(catalog, fetcher)
    models = [models] if isinstance(models, (str, Path)) else list(models)
    y_all = labels_to_y(table["label"])
    rows, lines, by_mag, answers = {}, [], {}, {}
    for path in models:
        model = load_model(path)
        out = predict_coordinates(model, table, sas_url=sas_url, cache_dir=cache_dir, progress=False)
        ok = (out["flag"] == "").to_numpy()
        y = y_all[ok]
        mags = table["psfmag_r"][ok] if "psfmag_r" in table else None
        proba = out["p_galaxy"].to_numpy(float)
        overall, mag_table = evaluate_predictions(y, proba[ok], mags)
        name = Path(path).stem
        while name in rows:  # two files of one name from different folders
            name += "'"
        known = ok & np.isfinite(proba)
        answers[name] = np.where(known, (proba >= 0.5).astype(float), np.nan)
        if known.sum() >= 2:  # the interval beside the MCC
            low, high = mcc_interval(y_all[known], (proba[known] >= 0.5).astype(int))
            keys = list(overall)
            at = keys.index("mcc") + 1
            overall = {**{k: overall[k] for k in keys[:at]}, "mcc_low": low, "mcc_high": high,
                       **{k: overall[k] for k in keys[at:]}}
        rows[name] = overall
        lines.append(f"{name}: {int(ok.sum())} objects evaluated, {int((~ok).sum())} flagged (no data)")
        if mag_table is not None:
            by_mag[name] = mag_table
    text = metrics_table(rows).to_string(float_format=lambda v: f"{v:.3f}")
    parts = lines + ["", text]
    names = list(answers)
    if len(names) > 1:
        parts += ["", "MCC differences on the objects both models answered (95 % bootstrap interval, paired):"]
        first = answers[names[0]]
        for name in names[1:]:
            both = np.isfinite(first) & np.isfinite(answers[name])
            if both.sum() < 2:
                parts.append(f"  {name} - {names[0]}: fewer than 2 objects in common")
                continue
            diff, low, high = mcc_difference(y_all[both], answers[name][both].astype(int), first[both].astype(int))
            parts.append(f"  {name} - {names[0]}: {diff:+.3f} ({low:+.3f} to {high:+.3f}), {int(both.sum())} objects")
    if by_magnitude:
        for name, mag_table in by_mag.items():
            parts += ["", f"{name} by r magnitude:", mag_table.to_string(float_format=lambda v: f"{v:.3f}")]
    return "\n".join(parts)


def parse_param_overrides(items) -> dict:
    """``['net__lr=0.003', 'cut__size=21']`` -> ``{'net__lr': 0.003, 'cut__size': 21}``."""
    params = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects PARAM=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        params[key.strip()] = value
    return params


def train_model(kind: str | None = None, config=None, params=None, *, sas_url=None, cache_dir=None,
                model_path=None, fields=None, calibrate=True):
    """Fit a model on the study's objects (test fields excluded) and evaluate it on the test fields.

    ``kind=None`` fits the config's ``default_model``: the kind that won leave-one-field-out in
    the study (the summary line says so).

    With ``calibrate=True`` (default; not for ``'majority'``) the model is fitted on the ``train``
    split and its ``p_galaxy`` calibrated on the ``valid`` sky groups
    (:func:`stargal.calibration.calibrate_pipeline`, Platt scaling); otherwise it is fitted on
    ``train`` + ``valid``. Returns ``(fitted pipeline, info)``; ``info['summary']`` is a printable
    text. With ``model_path`` the model is saved (skops) with the config and test metrics as metadata.
    """
    from .calibration import calibrate_pipeline
    from .persist import save_model

    config = _config(config)
    chosen = kind is None
    kind = config.default_model if chosen else kind
    fetcher = get_fetcher(None, sas_url=sas_url, cache_dir=cache_dir, quiet=False)
    t0 = time.perf_counter()
    table = study_table(config, fetcher, fields=fields)
    calibrate = bool(calibrate) and kind != "majority"
    fit_rows = table[table["split"].isin(["train"] if calibrate else ["train", "valid"])]
    test_rows = table[table["split"] == "test"]
    pipe = build_pipeline(kind, config, sas_url=sas_url, cache_dir=cache_dir, params=params)
    fit_pipeline(pipe, fit_rows)
    if calibrate:
        valid = table[table["split"] == "valid"]
        pipe = calibrate_pipeline(pipe, valid, labels_to_y(valid["label"]))
    fit_s = time.perf_counter() - t0
    proba = pipe.predict_proba(test_rows)[:, 1]
    overall, _ = evaluate_predictions(labels_to_y(test_rows["label"]), proba)
    info = {
        "kind": kind,
        "n_fit": int(len(fit_rows)),
        "calibrated": calibrate,
        "n_test": int(len(test_rows)),
        "n_excluded": int((table["split"] == "excluded").sum()),
        "n_dropped_edge": table.attrs.get("n_dropped_edge", 0),
        "train_fields": sorted(set(fit_rows["field_id"])),
        "test_fields": list(config.test_fields),
        "test_metrics": overall,
        "fit_seconds": round(fit_s, 1),
    }
    info["default"] = chosen
    info["summary"] = (
        f"{kind}{' (the default: the kind with the best leave-one-field-out MCC in the study)' if chosen else ''}: "
        f"fitted on {info['n_fit']} objects from {', '.join(info['train_fields'])} "
        f"in {fit_s:.0f} s{' (p_galaxy calibrated on the validation sky groups)' if calibrate else ''}; "
        f"test field(s) {', '.join(info['test_fields'])} ({info['n_test']} objects): "
        f"accuracy {overall['accuracy']:.3f}, balanced accuracy {overall['balanced_accuracy']:.3f}, "
        f"MCC {overall['mcc']:.3f}, ROC AUC {overall.get('roc_auc', float('nan')):.3f}"
    )
    if model_path is not None:
        meta = {k: v for k, v in info.items() if k != "summary"}
        meta["config"] = json.loads(json.dumps(config.to_dict(), default=str))
        meta["labels"] = LABELS
        save_model(pipe, model_path, metadata=meta)
    return pipe, info
