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
    """The stage's section: ``templates/tuning.md.j2`` with the model description (``tuning_model.md.j2``) and
    the parallel backends (``backends.md.j2``) inserted."""
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

    model = render_template(
        "tuning_model.md.j2", width=cfg.cnn["width"], depth=cfg.cnn["depth"], dropout=f"{cfg.cnn['dropout']:g}",
        n_params=f"{n_params:,}", size=cfg.cutout_size, arch_text=arch_text.rstrip(), n_star=n_star, n_gal=n_gal,
        weight_star=f"{class_weight[0]:.3f}", weight_galaxy=f"{class_weight[1]:.3f}", test_star=t_star,
        test_gal=t_gal, cell=f"{cfg.group_cell_arcmin:g}", valid_fraction=f"{cfg.valid_fraction:.0%}",
        patience=cfg.cnn["patience"])
    why = None
    if not ctx.quick:
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
        why = {"n_full": n_full, "full_grid": "; ".join(f"`{k}` {list(v)}" for k, v in full_grid.items()),
               "n_full_fits": n_full * n_sizes * t["n_splits"], "est_min": f"{est / 60:.0f}", "pruned": pruned_txt,
               "wide_width": FULL_MAX_WIDTH * 2, "n_params_wide": f"{n_params_wide:,}"}
    deltas = []
    for split in ("valid", "test"):
        d = m.loc[("after", split), "mcc"] - m.loc[("before", split), "mcc"]
        deltas.append(f"{split} MCC {'+' if d >= 0 else ''}{d:.3f}")
    text = render_template(
        "tuning.md.j2", model=model, default_params=_params_text({p: defaults[p] for p in params}),
        batch_size=cfg.cnn["batch_size"], n_train=len(train_rows), full_epochs=full_epochs,
        fit_before_s=f"{timings['fit_before_s']:.0f}", epochs_run=cb["epochs_run"],
        seconds_per_epoch=f"{cb['seconds_per_epoch']:.1f}", best_epoch=cb["best_epoch"],
        best_valid_loss=f"{cb['best_valid_loss']:.3f}", valid_bacc=fmt(cb["valid_bacc_at_best"]),
        valid_auc=fmt(cb["valid_auc_at_best"]), best_is_default=best_is_default,
        psf_channels=ctx.config.psf != "none", n_splits=t["n_splits"], n_groups=train_rows["group"].nunique(),
        grid="; ".join(f"`{_config_name(k)}` {list(v)}" for k, v in grid.items()), n_cand=n_cand,
        n_fits=n_cand * t["n_splits"], search_epochs=settings["search_epochs"], backend=t["backend"],
        n_jobs=t["n_jobs"], wall_time_s=f"{t['wall_time_s']:.0f}", mean_fit_s=f"{cv['mean_fit_time'].mean():.1f}",
        min_fit_s=f"{cv['mean_fit_time'].min():.1f}", max_fit_s=f"{cv['mean_fit_time'].max():.1f}", why=why,
        n_params=f"{n_params:,}", width=cfg.cnn["width"], cutout_size=cfg.cutout_size,
        cv_table=_cv_md(cv, params, top=min(6, len(cv))),
        default_rank=None if default_row is None else int(default_row["rank_test_score"]),
        default_mcc=None if default_row is None else fmt(default_row["mean_test_score"]),
        best_mcc=fmt(best_row["mean_test_score"]), best_std=fmt(best_row["std_test_score"]),
        best_params=_params_text(best_params), best_score=fmt(search.best_score_),
        fit_after_s=f"{timings['fit_after_s']:.0f}", epochs_run_tuned=ca["epochs_run"],
        best_epoch_tuned=ca["best_epoch"], n_params_tuned=f"{n_params_tuned:,}", metrics_table=_metrics_md(mframe),
        deltas=", ".join(deltas), max_score_diff=f"{backends['max_abs_score_diff'].max():.3f}",
        backends=_backends_section(backends, binfo, cfg))
    return text.rstrip() + "\n"


def _backends_section(b: pd.DataFrame, binfo: dict, cfg) -> str:
    """The parallel-backends subsection (``templates/backends.md.j2``)."""
    by = b.set_index("backend")
    seq, seq1 = by.loc[SEQ_LABEL], by.loc[SEQ1_LABEL]
    par = b[~b["backend"].isin([SEQ_LABEL, SEQ1_LABEL])]
    startup = binfo.get("dask_startup_s")

    def short(name):
        return name.split(" (")[0]

    slow = {short(r.backend): r.mean_fit_time_s / seq1["mean_fit_time_s"]
            for r in par.itertuples(index=False) if seq1["mean_fit_time_s"] > 0}
    dask_trim = None
    if DASK_LABEL in by.index and DASK_TRIM_LABEL in by.index:
        d, dt = by.loc[DASK_LABEL], by.loc[DASK_TRIM_LABEL]
        ratio = dt["mean_fit_time_s"] / d["mean_fit_time_s"] if d["mean_fit_time_s"] > 0 else np.nan
        dask_trim = {"trim_fit_s": fmt(dt["mean_fit_time_s"], 2), "trim_wall_s": fmt(dt["wall_time_s"], 1),
                     "fit_s": fmt(d["mean_fit_time_s"], 2), "wall_s": fmt(d["wall_time_s"], 1),
                     "ratio": f"{ratio:.1f}", "slower": bool(ratio > 1.3)}
    seq_slower = bool(seq["wall_time_s"] > seq1["wall_time_s"])
    return render_template(
        "backends.md.j2", grid="; ".join(f"`{_config_name(k)}` {list(v)}" for k, v in binfo["grid"].items()),
        cv=binfo["cv"], epochs=binfo["epochs"], n_fits=int(seq["n_fits"]), table=backends_markdown(b),
        dask_error=binfo.get("dask_error"), all_same=bool(b["same_best_params"].all()),
        max_score_diff=f"{b['max_abs_score_diff'].max():.2g}",
        dask_startup_s=None if startup is None else f"{startup:.1f}", cores=_cpu_count(),
        seq1_wall_s=fmt(seq1["wall_time_s"], 1),
        pure=", ".join(f"{short(r.backend)} {r.speedup_vs_sequential_1thread:.2f}x"
                       for r in par.itertuples(index=False)),
        superlinear=bool((par["speedup_vs_sequential_1thread"] >= 2).any()),
        per_fit=", ".join(f"{k} {v:.1f}x" for k, v in slow.items()), seq1_fit_s=fmt(seq1["mean_fit_time_s"], 2),
        workers_slower=bool(slow and max(slow.values()) > 1.3), dask_trim=dask_trim, seq_slower=seq_slower,
        seq_wall_s=fmt(seq["wall_time_s"], 1), threads=binfo["default_torch_threads"],
        vs_default=", ".join(f"{short(r.backend)} {r.speedup_vs_sequential:.2f}x" for r in par.itertuples(index=False)),
        seq_ratio=f"{seq['wall_time_s'] / seq1['wall_time_s']:.1f}" if seq_slower else None,
        seq_cpu_s=fmt(seq["main_process_cpu_s"], 1), seq1_cpu_s=fmt(seq1["main_process_cpu_s"], 1),
        cutout_size=cfg.cutout_size, batch_size=cfg.cnn["batch_size"])


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
