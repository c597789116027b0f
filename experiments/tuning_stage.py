"""Stage -- modelling and tuning of the CNN.

:func:`run` (``run(ctx) -> StageResult``, see :mod:`experiments.common`) does, in one process:

1. **Architecture**: a layer table of the default :class:`~stargal.nets.StarGalaxyCNN`
   (output shape of every layer for a ``cutout_size x cutout_size`` input, parameter counts)
   -> ``architecture.txt``.
2. **Before tuning**: the default-config CNN pipeline (objects table -> Aligner -> Cutter ->
   AsinhScaler -> CNN) fitted on the ``train`` rows; metrics on train / valid / test and the
   skorch learning curves -> ``learning_curves.png``.
3. **Tuning**: :func:`stargal.tuning.grid_search` over the *whole* pipeline (so ``cut__size`` is
   tunable), ``StratifiedGroupKFold`` on the sky cells of the train rows, scored by MCC, with
   ``net__groups`` routed to the CNN's group-aware early-stopping split
   -> ``tuning_cv_results.csv``; the best candidate is refitted on the train rows with the full
   epoch budget ("after tuning") -> ``metrics_before_after.csv``.
4. **Parallel backends**: one small search timed sequentially, on 2 loky processes and on a
   2-worker Dask ``LocalCluster`` (or ``ctx.scheduler``) -> ``tuning_backends.csv``; the timing
   itself is :func:`experiments.backends.backend_timing` (also ``make bench``).

The ``valid`` split is never seen by the search nor by the fits (their early stopping holds out
sky cells of the ``train`` rows), so train/valid/test metrics before and after tuning compare
like with like. Pixels are 0-based; cutouts are float32 ``(n, 5, H, W)`` in nanomaggies.

Runnable on its own::

    python -m experiments.tuning_stage --quick --out /tmp/tuning
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stargal.cnn import StarGalaxyCNN
from stargal.training import CNN_PARAM_NAMES, cnn_param_grid
from stargal.tuning import cv_results_frame, grid_search

from .backends import (DASK_LABEL, DASK_TRIM_LABEL, SEQ1_LABEL, SEQ_LABEL,  # noqa: F401
                       backend_timing, backends_markdown)
from .common import StageResult, fmt, markdown_table, render_template, write_csv, write_json

__all__ = [
    "run",
    "architecture_summary",
    "search_grid",
    "search_settings",
    "cnn_search",
    "metrics_frame",
    "METRICS",
]

#: Metrics reported before/after tuning (from :func:`stargal.metrics.classification_metrics`).
METRICS = ("accuracy", "balanced_accuracy", "mcc", "roc_auc")
SPLITS = ("train", "valid", "test")

#: Widest first-block width searched in full mode (see :func:`search_grid`).
FULL_MAX_WIDTH = 32
#: Config grid keys searched in full mode; the others are held at the ``[cnn]`` defaults.
FULL_SEARCHED_KEYS = ("lr", "width")
#: Cutout sizes (pixels, odd) searched in full mode (the study's size is always included).
FULL_CUT_SIZES = (9, 11, 15)


# --------------------------------------------------------------------------- settings
def search_settings(quick: bool, cv_folds: int = 3) -> dict:
    """Budget of the searches (CV folds and epochs), by mode.

    Returns
    -------
    dict
        ``cv`` (folds of the main search), ``search_epochs`` (``max_epochs`` inside the main
        search), ``timing_epochs`` and ``timing_grid`` (the small search timed on each
        backend; config names, mapped with :func:`stargal.training.cnn_param_grid`),
        ``timing_cv``.

    Examples
    --------
    >>> search_settings(True)["cv"], search_settings(False)["cv"]
    (2, 3)
    """
    if quick:
        return {"cv": min(2, cv_folds), "search_epochs": 3, "timing_epochs": 3, "timing_cv": 2,
                "timing_grid": {"lr": [1e-3, 3e-3], "width": [16]}}
    return {"cv": cv_folds, "search_epochs": 15, "timing_epochs": 8, "timing_cv": 2,
            "timing_grid": {"lr": [1e-3, 3e-3], "width": [32]}}


def search_grid(config, quick: bool) -> tuple[dict, dict]:
    """Pipeline parameter grid of the main search, and what was left out of the config grid.

    Quick mode uses ``config.param_grid('quick')`` as it is. Full mode starts from
    ``config.param_grid('full')`` and, to fit a few-minute budget on 2 CPU cores, keeps only
    :data:`FULL_SEARCHED_KEYS` (the others are held at their ``[cnn]`` default), drops widths
    above :data:`FULL_MAX_WIDTH` and adds ``cut__size`` (:data:`FULL_CUT_SIZES`).

    Returns
    -------
    grid : dict
        Pipeline parameter names (``net__lr``, ``net__module__width``, ``cut__size``) -> values.
    pruned : dict
        Config name -> values of the config grid that were not searched.

    Examples
    --------
    >>> from stargal.config import load_config
    >>> grid, pruned = search_grid(load_config(), quick=True)
    >>> sorted(grid), pruned
    (['net__lr', 'net__module__width'], {})
    """
    if quick:
        return cnn_param_grid(config.param_grid("quick")), {}
    full = config.param_grid("full")
    kept, pruned = {}, {}
    for key, values in full.items():
        values = list(values)
        if key not in FULL_SEARCHED_KEYS:
            pruned[key] = values
            continue
        if key == "width":
            drop = [v for v in values if v > FULL_MAX_WIDTH]
            if drop:
                pruned[key] = drop
            values = [v for v in values if v <= FULL_MAX_WIDTH] or [min(values)]
        kept[key] = values
    sizes = sorted({*FULL_CUT_SIZES, int(config.cutout_size)})
    kept["cutout_size"] = sizes
    return cnn_param_grid(kept), pruned


def _n_candidates(grid: dict) -> int:
    return int(np.prod([len(v) for v in grid.values()])) if grid else 1


def _config_name(param: str) -> str:
    inverse = {v: k for k, v in CNN_PARAM_NAMES.items()}
    return inverse.get(param, param)


def _params_text(params: dict) -> str:
    return ", ".join(f"`{_config_name(k)}={v:g}`" if isinstance(v, float) else f"`{_config_name(k)}={v}`"
                     for k, v in params.items())


# --------------------------------------------------------------------------- architecture
def architecture_summary(module: torch.nn.Module, size: int, in_channels: int | None = None):
    """Layer table of a torch module for one ``(1, C, size, size)`` input.

    Parameters
    ----------
    module : torch.nn.Module
        E.g. :class:`~stargal.nets.StarGalaxyCNN`; left unchanged (evaluated in ``eval`` mode
        on a copy).
    size : int
        Cutout side in pixels.
    in_channels : int, optional
        Input bands; default ``module.in_channels`` (5: ``u, g, r, i, z``).

    Returns
    -------
    text : str
        Fixed-width table: layer name, type, output shape, parameters.
    table : pandas.DataFrame
        ``layer``, ``type``, ``output_shape``, ``params`` (leaf modules in call order).
    n_params : int
        Trainable parameters of the module.

    Examples
    --------
    >>> text, table, n = architecture_summary(StarGalaxyCNN(width=4, depth=2), 9)
    >>> list(table["output_shape"])[-1], n > 0
    ('(1, 2)', True)
    """
    net = copy.deepcopy(module).eval()
    channels = in_channels if in_channels is not None else getattr(net, "in_channels", 5)
    rows, hooks = [], []

    def hook(name):
        def fn(mod, _inp, out):
            rows.append({"layer": name, "type": type(mod).__name__,
                         "output_shape": str(tuple(out.shape)),
                         "params": int(sum(p.numel() for p in mod.parameters(recurse=False)))})
        return fn

    for name, mod in net.named_modules():
        if name and not list(mod.children()):
            hooks.append(mod.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            net(torch.zeros(1, int(channels), int(size), int(size)))
    finally:
        for h in hooks:
            h.remove()
    table = pd.DataFrame(rows, columns=["layer", "type", "output_shape", "params"])
    n_params = int(sum(p.numel() for p in net.parameters() if p.requires_grad))
    what = ("bands u, g, r, i, z, then each band's PSF scaled to the object's PSF-fit flux; asinh-scaled"
            if int(channels) == 10 else "bands u, g, r, i, z; asinh-scaled")
    header = f"input: (1, {channels}, {size}, {size})  [{what}]"
    body = table.to_string(index=False)
    text = f"{header}\n{body}\ntotal trainable parameters: {n_params}\n"
    return text, table, n_params


#: The tuning stage tunes one network (``members=1``): the study's ``[cnn] members`` (an ensemble of
#: such networks, stage 4 on) would multiply the search's cost without changing what is tuned.
ONE_NETWORK = {"net__module__members": 1}


def _module_for(config, params=None) -> StarGalaxyCNN:
    cnn = dict(config.cnn)
    params = params or {}
    width = params.get("net__module__width", cnn["width"])
    depth = params.get("net__module__depth", cnn["depth"])
    dropout = params.get("net__module__dropout", cnn["dropout"])
    # PSF-aware study: 5 image channels + 5 PSF channels (stargal.psf_channels.PSFChannels)
    in_channels = 5 if config.psf == "none" else 10
    return StarGalaxyCNN(in_channels=in_channels, width=int(width), depth=int(depth), dropout=float(dropout),
                         input_size=int(config.cutout_size))


# --------------------------------------------------------------------------- metrics, curves
def metrics_frame(before: dict, after: dict) -> pd.DataFrame:
    """Tidy table ``model, split, n, accuracy, balanced_accuracy, mcc, roc_auc``.

    Examples
    --------
    >>> m = {"n": 2, "accuracy": 1.0, "balanced_accuracy": 1.0, "mcc": 1.0, "roc_auc": 1.0}
    >>> metrics_frame({"test": m}, {"test": m}).shape
    (2, 7)
    """
    rows = []
    for model, by_split in (("before", before), ("after", after)):
        for split, m in by_split.items():
            rows.append({"model": model, "split": split, "n": int(m.get("n", 0)),
                         **{k: float(m.get(k, np.nan)) for k in METRICS}})
    return pd.DataFrame(rows, columns=["model", "split", "n", *METRICS])


def _history(pipe) -> pd.DataFrame:
    hist = pipe.named_steps["net"].history
    cols = ("epoch", "train_loss", "valid_loss", "valid_bacc", "valid_auc", "dur")
    out = {}
    for c in cols:
        try:
            out[c] = [float(v) for v in hist[:, c]]
        except KeyError:
            out[c] = [np.nan] * len(hist)
    return pd.DataFrame(out)


def _curve_summary(h: pd.DataFrame) -> dict:
    best = int(h["valid_loss"].idxmin()) if h["valid_loss"].notna().any() else len(h) - 1
    return {"epochs_run": int(len(h)), "best_epoch": int(h["epoch"].iloc[best]),
            "best_valid_loss": float(h["valid_loss"].iloc[best]),
            "valid_bacc_at_best": float(h["valid_bacc"].iloc[best]),
            "valid_auc_at_best": float(h["valid_auc"].iloc[best]),
            "seconds_per_epoch": float(h["dur"].mean())}


def _plot_curves(curves: dict, path: Path) -> None:
    import matplotlib

    if "matplotlib.pyplot" not in __import__("sys").modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8))
    styles = {"before": "-", "tuned": "--"}
    for name, h in curves.items():
        ls = styles.get(name, ":")
        axes[0].plot(h["epoch"], h["train_loss"], ls, color="tab:blue", label=f"{name}: train loss")
        axes[0].plot(h["epoch"], h["valid_loss"], ls, color="tab:orange", label=f"{name}: valid loss")
        best = h["valid_loss"].idxmin()
        axes[0].plot(h["epoch"].iloc[best], h["valid_loss"].iloc[best], "o", color="tab:orange", ms=5)
        axes[1].plot(h["epoch"], h["valid_bacc"], ls, color="tab:green", label=f"{name}: balanced acc.")
        axes[1].plot(h["epoch"], h["valid_auc"], ls, color="tab:purple", label=f"{name}: ROC AUC")
    axes[0].set_ylabel("class-weighted cross-entropy")
    axes[0].set_title("loss (dot: epoch whose weights are kept)", fontsize=9)
    axes[1].set_ylabel("score on the early-stopping split")
    axes[1].set_title("held-out sky cells of the train rows", fontsize=9)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- searches
def _search_inputs(ctx):
    rows = ctx.rows("train")
    return rows, ctx.y(rows), rows["group"].to_numpy()


def cnn_search(ctx, grid, *, epochs, cv, n_jobs=1, scheduler=None):
    """The stage's group-aware grid search of the CNN on the ``train`` rows (no refit).

    ``grid`` holds pipeline parameter names; ``epochs`` caps every fit; ``cv`` group folds;
    ``n_jobs`` / ``scheduler`` as :func:`stargal.tuning.grid_search` (the backend timing of
    :func:`experiments.backends.backend_timing` calls it on each backend).
    """
    rows, y, groups = _search_inputs(ctx)
    base = ctx.pipeline("cnn", params={"net__max_epochs": int(epochs), **ONE_NETWORK})
    return grid_search(base, grid, rows, y, groups, cv=cv, n_jobs=n_jobs, scheduler=scheduler,
                       refit=False, fit_params={"net__groups": groups}, random_state=ctx.seed)


# --------------------------------------------------------------------------- markdown helpers
def _metrics_md(frame: pd.DataFrame) -> str:
    """:func:`metrics_frame` as a table (metrics with 3 decimals)."""
    return markdown_table(frame.rename(columns={"balanced_accuracy": "balanced accuracy", "mcc": "MCC",
                                                "roc_auc": "ROC AUC"}))


def _cv_md(cv: pd.DataFrame, params: list[str], top: int) -> str:
    """The ``top`` candidates of the search: rank, parameters (config names), mean and std CV MCC, fit time."""
    rows = []
    for _, r in cv.head(top).iterrows():
        rows.append([int(r["rank_test_score"]),
                     *(f"{r[p]:g}" if isinstance(r[p], float) else str(r[p]) for p in params),
                     fmt(r["mean_test_score"]), fmt(r["std_test_score"]), fmt(r["mean_fit_time"], 1)])
    columns = ["rank", *(_config_name(p) for p in params), "mean MCC", "std", "mean fit s"]
    return markdown_table(pd.DataFrame(rows, columns=columns))


# --------------------------------------------------------------------------- the stage
def run(ctx) -> StageResult:
    """Architecture, before/after tuning, group-aware grid search and backend timings.

    Parameters
    ----------
    ctx : experiments.common.StudyContext

    Returns
    -------
    StageResult
        Numbers: ``architecture`` (parameter count), ``before`` / ``after`` (metrics per split),
        ``best_params``, ``search`` (grid, folds, epochs, wall time), ``backends`` (rows of
        ``tuning_backends.csv``), ``timings`` (seconds). Artefacts: ``tuned_params`` (the best
        pipeline parameters) and ``tuned_cnn`` (the tuned CNN fitted on the train rows).
    """
    out = Path(ctx.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = ctx.config
    settings = search_settings(ctx.quick, ctx.config.cv_folds)
    full_epochs = ctx.epochs(cfg.cnn["max_epochs"])
    timings = {}
    train_rows = ctx.rows("train")

    # 1. architecture --------------------------------------------------------------------
    arch_text, arch_table, n_params = architecture_summary(_module_for(cfg), cfg.cutout_size)

    # 2. before tuning -------------------------------------------------------------------
    print(f"  before: fitting the default CNN ({full_epochs} epochs max) ...", flush=True)
    t0 = time.perf_counter()
    before = ctx.fit(ctx.pipeline("cnn", params={"net__max_epochs": full_epochs, **ONE_NETWORK}), train_rows)
    timings["fit_before_s"] = round(time.perf_counter() - t0, 1)
    before_metrics = ctx.evaluate_splits(before)
    curve_before = _history(before)
    class_weight = [float(w) for w in before.named_steps["net"].class_weight_]

    # 3. tuning --------------------------------------------------------------------------
    grid, pruned = search_grid(cfg, ctx.quick)
    n_cand = _n_candidates(grid)
    print(f"  search: {n_cand} candidates x {settings['cv']} folds, "
          f"{settings['search_epochs']} epochs max, n_jobs={ctx.n_jobs} ...", flush=True)
    search = cnn_search(ctx, grid, epochs=settings["search_epochs"], cv=settings["cv"], n_jobs=ctx.n_jobs)
    timings["search_s"] = round(search.timing_["wall_time_s"], 1)
    cv = cv_results_frame(search)
    write_csv(out / "tuning_cv_results.csv", cv)
    best_params = dict(search.best_params_)

    defaults = ctx.pipeline("cnn", params=ONE_NETWORK).get_params()
    best_is_default = all(_eq(v, defaults.get(k)) for k, v in best_params.items())
    if best_is_default:
        # same parameters, seed and data as the default fit: the refit would reproduce it
        print("  after: the best candidate is the default configuration (no refit)", flush=True)
        tuned, after_metrics = before, before_metrics
        timings["fit_after_s"] = 0.0
    else:
        print(f"  after: refitting {best_params} ({full_epochs} epochs max) ...", flush=True)
        t0 = time.perf_counter()
        tuned = ctx.fit(ctx.pipeline("cnn", params={**best_params, "net__max_epochs": full_epochs, **ONE_NETWORK}),
                        train_rows)
        timings["fit_after_s"] = round(time.perf_counter() - t0, 1)
        after_metrics = ctx.evaluate_splits(tuned)
    curve_after = _history(tuned)
    mframe = metrics_frame(before_metrics, after_metrics)
    write_csv(out / "metrics_before_after.csv", mframe)
    _plot_curves({"before": curve_before} if best_is_default else
                 {"before": curve_before, "tuned": curve_after}, out / "learning_curves.png")

    tuned_text = ""
    if any(k.startswith("net__module__") for k in best_params):
        tuned_text, _, n_params_tuned = architecture_summary(
            _module_for(cfg, best_params), int(best_params.get("cut__size", cfg.cutout_size)))
    else:
        n_params_tuned = n_params
    arch_file = "default configuration\n" + arch_text
    if tuned_text:
        arch_file += "\ntuned configuration " + str(best_params) + "\n" + tuned_text
    (out / "architecture.txt").write_text(arch_file)

    # 4. backends ------------------------------------------------------------------------
    print("  backend timing ...", flush=True)
    t0 = time.perf_counter()
    backends, binfo = backend_timing(ctx, settings, cnn_search)
    timings["backend_timing_s"] = round(time.perf_counter() - t0, 1)
    write_csv(out / "tuning_backends.csv", backends)

    # markdown ---------------------------------------------------------------------------
    md = _markdown(ctx, arch_text=arch_text, n_params=n_params, n_params_tuned=n_params_tuned,
                   class_weight=class_weight, train_rows=train_rows, full_epochs=full_epochs,
                   curve_before=curve_before, curve_after=curve_after, mframe=mframe,
                   grid=grid, pruned=pruned, settings=settings, search=search, cv=cv,
                   best_params=best_params, backends=backends, binfo=binfo, timings=timings,
                   best_is_default=best_is_default)
    numbers = {
        "architecture": {"n_params": n_params, "n_params_tuned": n_params_tuned,
                         "layers": arch_table.to_dict("records")},
        "class_weight": class_weight,
        "before": before_metrics,
        "after": after_metrics,
        "learning_curves": {"before": _curve_summary(curve_before),
                            "tuned": _curve_summary(curve_after)},
        "best_params": best_params,
        "best_is_default": bool(best_is_default),
        "best_cv_mcc": float(search.best_score_),
        "search": {"grid": grid, "pruned_config_grid": pruned, "n_candidates": n_cand,
                   "cv_folds": settings["cv"], "max_epochs": settings["search_epochs"],
                   "n_jobs": search.timing_["n_jobs"], "backend": search.timing_["backend"],
                   "wall_time_s": round(search.timing_["wall_time_s"], 1),
                   "mean_fit_time_s": round(float(cv["mean_fit_time"].mean()), 2)},
        "backends": backends.to_dict("records"),
        "backend_search": {k: v for k, v in binfo.items()},
        "timings": timings,
    }
    return StageResult(numbers=numbers, markdown=md, artefacts={"tuned_params": best_params, "tuned_cnn": tuned})


def _markdown(ctx, *, arch_text, n_params, n_params_tuned, class_weight, train_rows, full_epochs,
              curve_before, curve_after, mframe, grid, pruned, settings, search, cv, best_params,
              backends, binfo, timings, best_is_default) -> str:
    cfg = ctx.config
    n_star = int((train_rows["label"] == "star").sum())
    n_gal = int((train_rows["label"] == "galaxy").sum())
    test = ctx.rows("test")
    t_star = int((test["label"] == "star").sum())
    t_gal = int((test["label"] == "galaxy").sum())
    cb, ca = _curve_summary(curve_before), _curve_summary(curve_after)
    m = mframe.set_index(["model", "split"])
    params = list(grid)
    n_cand = _n_candidates(grid)
    t = search.timing_
    best_row = cv.iloc[0]
    default_row = None
    defaults = {p: _default_value(ctx, p) for p in params}
    for _, r in cv.iterrows():
        if all(_eq(r[p], defaults[p]) for p in params):
            default_row = r
            break

    L = []
    # ---- architecture and loss
    L += [render_template(
        "tuning_model.md.j2", width=cfg.cnn["width"], depth=cfg.cnn["depth"], dropout=f"{cfg.cnn['dropout']:g}",
        n_params=f"{n_params:,}", size=cfg.cutout_size, arch_text=arch_text.rstrip(), n_star=n_star, n_gal=n_gal,
        weight_star=f"{class_weight[0]:.3f}", weight_galaxy=f"{class_weight[1]:.3f}", test_star=t_star,
        test_gal=t_gal, cell=f"{cfg.group_cell_arcmin:g}", valid_fraction=f"{cfg.valid_fraction:.0%}",
        patience=cfg.cnn["patience"]), ""]
    # ---- before
    L += ["### Before tuning", "",
          f"The default configuration ({_params_text({p: defaults[p] for p in params})}, "
          f"batch {cfg.cnn['batch_size']}) fitted on the {len(train_rows)} train "
          f"objects (at most {full_epochs} epochs) in {timings['fit_before_s']:.0f} s: it ran "
          f"{cb['epochs_run']} epochs ({cb['seconds_per_epoch']:.1f} s each) and kept epoch "
          f"{cb['best_epoch']} (validation loss {cb['best_valid_loss']:.3f}, balanced accuracy "
          f"{fmt(cb['valid_bacc_at_best'])}, ROC AUC {fmt(cb['valid_auc_at_best'])} on the held-out "
          "cells).", "",
          "![learning curves](learning_curves.png)", "",
          ("Solid: default model (also the tuned one, see below). " if best_is_default else
           "Solid: default model; dashed: tuned model (refit below). ")
          + "The validation curves come from the early-stopping split of the train rows, not from the "
          "`valid` split reported in the tables.", ""]
    # ---- tuning
    grid_txt = "; ".join(f"`{_config_name(k)}` {list(v)}" for k, v in grid.items())
    L += ["### Tuning", "",
          "`GridSearchCV` over the whole pipeline (objects table -> align -> cut"
          + (" (with the PSF stamps) -> PSF channels" if ctx.config.psf != "none" else "")
          + f" -> scale -> CNN, so "
          f"`cutout_size` can be tuned) on the {len(train_rows)} train objects: "
          f"`StratifiedGroupKFold` with {t['n_splits']} folds on the {train_rows['group'].nunique()} "
          f"sky cells, scored by MCC on the held-out fold, `net__groups` routed to each fit's "
          f"early-stopping split. Grid: {grid_txt} = {n_cand} candidates x {t['n_splits']} folds = "
          f"{n_cand * t['n_splits']} fits, at most {settings['search_epochs']} epochs each, on "
          f"{t['backend']} with {t['n_jobs']} concurrent fit(s). Wall time **{t['wall_time_s']:.0f} s** "
          f"(mean fit {cv['mean_fit_time'].mean():.1f} s, range {cv['mean_fit_time'].min():.1f}–"
          f"{cv['mean_fit_time'].max():.1f} s; results in `tuning_cv_results.csv`).", ""]
    if ctx.quick:
        L += ["Quick mode: the configured quick grid with few epochs and 2 folds -- a smoke test of the "
              "machinery, not a meaningful tuning result.", ""]
    else:
        full_grid = cfg.param_grid("full")
        n_full = _n_candidates(full_grid)
        pruned_txt = "; ".join(
            f"`{k}` {v}" + (f" (held at the default {cfg.cnn[k]:g})" if k in cfg.cnn and k != "width" else "")
            for k, v in pruned.items())
        per_fit = float(cv["mean_fit_time"].mean())
        n_sizes = len(grid.get("cut__size", [cfg.cutout_size]))
        est = n_full * n_sizes * t["n_splits"] * per_fit / max(1, t["n_jobs"])
        n_params_wide = architecture_summary(
            _module_for(cfg, {"net__module__width": FULL_MAX_WIDTH * 2}), cfg.cutout_size)[2]
        L += [f"**Why this grid.** The configured full grid has {n_full} candidates "
              f"({'; '.join(f'`{k}` {list(v)}' for k, v in full_grid.items())}); with `cutout_size` on "
              f"top and {t['n_splits']} folds that is {n_full * n_sizes * t['n_splits']} fits, "
              f"at least {est / 60:.0f} min at this run's mean fit time on {t['n_jobs']} worker(s) (more, "
              "since width 64 is slower), against a budget of about 6 min for this search on a 2-core "
              "machine. "
              "Not searched: " + pruned_txt + ". Width "
              f"{FULL_MAX_WIDTH * 2} has {n_params_wide:,} parameters against {n_params:,} at width "
              f"{cfg.cnn['width']} (about four times the multiply-adds per cutout), too slow on a CPU "
              f"for cutouts only {cfg.cutout_size} px across; dropout and weight decay were held at their "
              "defaults because early stopping already regularises every fit (their effect was not "
              "measured here), leaving the budget for learning rate, width and cutout size. Inside the "
              f"search each fit is capped at {settings['search_epochs']} epochs (the final refit gets up "
              f"to {full_epochs}); the cap favours faster learning rates, which is why the winner is "
              "refitted with the full budget and judged on the untouched `valid` and `test` splits.", ""]
    L += [f"Top candidates (of {n_cand}):", "", _cv_md(cv, params, top=min(6, len(cv))), ""]
    if default_row is not None:
        L += [f"The default configuration ranks {int(default_row['rank_test_score'])} of {n_cand} "
              f"(CV MCC {fmt(default_row['mean_test_score'])} vs best {fmt(best_row['mean_test_score'])}, "
              f"fold-to-fold std {fmt(best_row['std_test_score'])}).", ""]
    L += [f"**Best:** {_params_text(best_params)} (CV MCC {fmt(search.best_score_)}).", ""]
    # ---- after
    if best_is_default:
        L += ["### After tuning", "",
              "The search picked the default configuration, so the tuned model *is* the default model "
              "(same parameters, seed and data: a refit would reproduce it); the rows below are "
              "identical by construction (`metrics_before_after.csv`):", "", _metrics_md(mframe), ""]
    else:
        L += ["### After tuning", "",
              f"The best candidate refitted on all train objects (at most {full_epochs} epochs, "
              f"{timings['fit_after_s']:.0f} s; ran {ca['epochs_run']} epochs, kept epoch "
              f"{ca['best_epoch']}; {n_params_tuned:,} parameters) vs the default model "
              "(`metrics_before_after.csv`):", "", _metrics_md(mframe), ""]
    deltas = []
    for split in ("valid", "test"):
        d = m.loc[("after", split), "mcc"] - m.loc[("before", split), "mcc"]
        deltas.append(f"{split} MCC {'+' if d >= 0 else ''}{d:.3f}")
    if not best_is_default:
        L += ["Change from tuning: " + ", ".join(deltas) + ". The `valid` split (whole sky cells never "
              "used by the search or the fits) and the separate test field are the honest estimates; for "
              "scale, the best candidate's CV MCC varied by a standard deviation of "
              f"{fmt(best_row['std_test_score'])} from fold to fold (a rough yardstick from "
              f"{t['n_splits']} folds); in the backend comparison below, runs that differ only in "
              "torch's thread count (floating-point summation order) moved a candidate's mean CV MCC "
              f"by up to {backends['max_abs_score_diff'].max():.3f}.", ""]
    # ---- backends
    L += _backends_section(backends, binfo, cfg)
    return "\n".join(L).rstrip() + "\n"


def _backends_section(b: pd.DataFrame, binfo: dict, cfg) -> list[str]:
    by = b.set_index("backend")
    seq, seq1 = by.loc[SEQ_LABEL], by.loc[SEQ1_LABEL]
    par = b[~b["backend"].isin([SEQ_LABEL, SEQ1_LABEL])]
    threads = binfo["default_torch_threads"]
    cores = _cpu_count()
    all_same = bool(b["same_best_params"].all())
    bgrid = "; ".join(f"`{_config_name(k)}` {list(v)}" for k, v in binfo["grid"].items())
    startup = binfo.get("dask_startup_s")
    L = ["### Parallel backends", "",
         f"The same small search ({bgrid}; {binfo['cv']} group folds, at most {binfo['epochs']} epochs "
         f"per fit, {int(seq['n_fits'])} fits, no refit) timed in this run on each backend, one after "
         "the other (`tuning_backends.csv`; the 1-minute load average at the start of each run shows "
         "how busy the shared machine was):", "", backends_markdown(b), ""]
    if binfo.get("dask_error"):
        L += [f"**The Dask run failed** in this run (`{binfo['dask_error']}`); its row is missing.", ""]
    L += [("All runs chose **the same best parameters**" if all_same else
           "The runs did **not** all choose the same best parameters")
          + " (largest difference of a candidate's mean CV MCC from the first run: "
          f"{b['max_abs_score_diff'].max():.2g}; seeds and folds are fixed, so differences can only come "
          "from the floating-point order of multi- vs single-threaded torch kernels). Worker start-up is "
          "not in the wall times: before its timed search every worker process was started and warmed "
          "up by one tiny fit (importing torch, mapping the frames, initialising torch's kernels), so "
          "that no backend pays for a cold first fit" + (
              f"; starting and warming up the Dask cluster took {startup:.1f} s."
              if startup is not None else "."), ""]
    def short(name):
        return name.split(" (")[0]

    pure = ", ".join(f"{short(r.backend)} {r.speedup_vs_sequential_1thread:.2f}x"
                     for r in par.itertuples(index=False))
    vs_default = ", ".join(f"{short(r.backend)} {r.speedup_vs_sequential:.2f}x"
                           for r in par.itertuples(index=False))
    slow = {short(r.backend): r.mean_fit_time_s / seq1["mean_fit_time_s"]
            for r in par.itertuples(index=False) if seq1["mean_fit_time_s"] > 0}
    text = (f"**Reading the speedups ({cores} cores).** Two fits at a time can at best halve the time "
            f"of one-thread sequential fits; measured against the sequential run with one torch thread "
            f"({fmt(seq1['wall_time_s'], 1)} s) the parallel speedups are {pure}. ")
    if (par["speedup_vs_sequential_1thread"] >= 2).any():
        text += ("A ratio of 2 or more cannot come from two workers alone: the load of the shared "
                 "machine changed between the runs (see the load column), so these single runs "
                 "are only indicative. ")
    else:
        per_fit = ", ".join(f"{k} {v:.1f}x" for k, v in slow.items())
        text += ("Below 2 because of the per-fit time: one fit inside a worker took, on average, "
                 f"{per_fit} as long as the same fit alone in the main process "
                 f"({fmt(seq1['mean_fit_time_s'], 2)} s). ")
        if slow and max(slow.values()) > 1.3:
            text += ("Where fits ran slower inside workers than alone, the likely causes are the "
                     "shared machine (load column) and two convolution-heavy processes competing for "
                     "memory bandwidth and caches. ")
        text += ("On top come shipping the estimator and the objects table to the workers and "
                 "waiting for the slower of two concurrent fits (Dask adds its scheduler's per-task "
                 "overhead). ")
    if DASK_LABEL in by.index and DASK_TRIM_LABEL in by.index:
        d, dt = by.loc[DASK_LABEL], by.loc[DASK_TRIM_LABEL]
        ratio = dt["mean_fit_time_s"] / d["mean_fit_time_s"] if d["mean_fit_time_s"] > 0 else np.nan
        text += ("**Dask's allocator setting.** Its nanny starts workers with "
                 "`MALLOC_TRIM_THRESHOLD_=65536` by default, which switches off glibc's dynamic mmap "
                 "threshold, so large buffers such as torch's per-batch tensors can be mapped, "
                 "page-faulted and unmapped at every step. With that setting a fit took "
                 f"{fmt(dt['mean_fit_time_s'], 2)} s on average and the search {fmt(dt['wall_time_s'], 1)} "
                 f"s, against {fmt(d['mean_fit_time_s'], 2)} s and {fmt(d['wall_time_s'], 1)} s with the "
                 "variable removed (`dask.config` key `distributed.nanny.pre-spawn-environ`, as this "
                 "stage does for its main Dask row)" + (
                     f": {ratio:.1f}x slower per fit. " if ratio > 1.3 else
                     ": no clear difference at this size. "))
    if seq["wall_time_s"] > seq1["wall_time_s"]:
        text += (f"Against the plain `n_jobs=1` run ({fmt(seq['wall_time_s'], 1)} s, torch's default "
                 f"{threads} intra-op threads) the ratios are {vs_default}: here the sequential fits were "
                 f"{seq['wall_time_s'] / seq1['wall_time_s']:.1f}x faster with one torch thread than "
                 f"with {threads} (process CPU time {fmt(seq['main_process_cpu_s'], 1)} s vs "
                 f"{fmt(seq1['main_process_cpu_s'], 1)} s for the same work). Convolutions on "
                 f"{cfg.cutout_size}x{cfg.cutout_size} cutouts in batches of {cfg.cnn['batch_size']} are "
                 "too small to split across threads efficiently, and when another process holds a core "
                 "the threads of one operation wait (spinning) for each other; one single-threaded fit "
                 "per core avoids this, which is what the loky and Dask backends do "
                 "(`stargal.tuning` caps each worker's threads).")
    else:
        text += (f"Against the plain `n_jobs=1` run ({fmt(seq['wall_time_s'], 1)} s) the ratios are "
                 f"{vs_default}: there torch's {threads} intra-op threads already spread every fit "
                 "over both cores, so fit-level parallelism has little left to gain.")
    L += [text + " With more cores (or a Dask cluster of several machines) the same code runs one "
          "fit per core.", ""]
    return L


def _cpu_count() -> int:
    from joblib import cpu_count

    return int(cpu_count())


def _default_value(ctx, param):
    base = ctx.pipeline("cnn").get_params()
    return base.get(param)


def _eq(a, b) -> bool:
    try:
        return bool(np.isclose(float(a), float(b)))
    except (TypeError, ValueError):
        return a == b


# --------------------------------------------------------------------------- command line
def _context(quick: bool, out: Path, n_jobs: int, scheduler):
    from .common import use_local_mirror

    use_local_mirror()
    from stargal.config import load_config
    from stargal.fetch import get_fetcher
    from stargal.training import study_table

    from .common import StudyContext

    cfg = load_config()
    fetcher = get_fetcher(None)
    table = study_table(cfg, fetcher)
    return StudyContext(cfg, fetcher, table, out, quick=quick, n_jobs=n_jobs, scheduler=scheduler)


def main(argv=None) -> int:
    """``python -m experiments.tuning_stage [--quick] [--out DIR]``."""
    parser = argparse.ArgumentParser(description="Modelling and tuning stage of the stargal study")
    parser.add_argument("--quick", action="store_true", help="few-minute smoke run")
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--scheduler", default=None, help="Dask scheduler address (default: LocalCluster)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    ctx = _context(args.quick, args.out, args.n_jobs, args.scheduler)
    print(f"context: {len(ctx.table)} objects in {time.perf_counter() - t0:.1f} s", flush=True)
    t1 = time.perf_counter()
    res = run(ctx)
    total = time.perf_counter() - t1
    numbers = res.numbers
    numbers["timings"]["stage_s"] = round(total, 1)
    write_json(args.out / "tuning.json", res.summary())
    (args.out / "tuning.md").write_text(res.markdown)
    print(f"stage done in {total:.1f} s; timings {numbers['timings']}")
    print(f"best params {numbers['best_params']}")
    for split in SPLITS:
        b, a = numbers["before"][split], numbers["after"][split]
        print(f"  {split}: MCC before {b['mcc']:.3f} after {a['mcc']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
