"""Explain the fitted CNN: SHAP and Integrated Gradients maps for example objects.

:func:`explain` picks example objects -- correctly classified stars, correctly
classified galaxies, and misclassified objects (by the pipeline's own
predictions) -- computes attribution maps of the galaxy log-odds with
:func:`stargal.explain.shap_maps` (``shap.GradientExplainer``, background =
~50 other objects' network inputs) and
:func:`stargal.explain.integrated_gradients`, and writes to ``out_dir``:

``explain_shap.png``, ``explain_ig.png``
    rows = objects (stars, galaxies, misclassified), columns = the 5 bands of
    the network's input then the 5 bands of attribution (red = towards galaxy).
``band_importance.csv``
    tidy table ``method, band, importance, mean_abs`` (importance = share of
    ``|attr|`` per band, averaged over the explained objects; sums to 1 per
    method).
``radial_importance.png``
    mean ``|attr|`` vs distance from the cutout centre and the cumulative
    share of ``|attr|`` within a radius, both methods.
``explain_summary.json``
    the dictionary returned by :func:`explain` (the study's stage is :func:`run`, which calls it).

Everything is computed on the tensor the network sees
(:func:`stargal.explain.net_inputs`), so ``X`` may be an objects table (the
pipeline's front steps make and scale the cutouts) or whatever else the
pipeline's first step accepts. Pixel positions are 0-based; the centre of an
``H x W`` cutout is ``((W - 1) / 2, (H - 1) / 2)``.

Examples
--------
>>> from experiments.explanations import explain  # doctest: +SKIP
>>> res = explain("results/explain", pipe, table, y, mags=table["psfmag_r"])  # doctest: +SKIP
>>> res["top_band_shap"], res["frac_abs_within_2px_ig"]  # doctest: +SKIP
('r', 0.41)
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from stargal.explain import (
    band_importance,
    fraction_within,
    get_module,
    ig_completeness_gap,
    integrated_gradients,
    net_inputs,
    radial_profile,
    shap_maps,
)

from experiments.explain_plots import plot_attributions

from .common import StageResult

__all__ = ["run", "explain", "select_examples"]

GROUPS = ("star", "galaxy", "misclassified")


def _n_rows(X) -> int:
    if hasattr(X, "shape"):
        return int(X.shape[0])
    return len(X)


def _predict(pipeline, Xin: np.ndarray):
    """(p_galaxy, predicted label) from the final step applied to the network inputs."""
    import torch

    final = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    if hasattr(final, "predict_proba") and hasattr(final, "predict"):
        proba = np.asarray(final.predict_proba(Xin))[:, 1]
        pred = np.asarray(final.predict(Xin)).astype(int)
        return proba, pred
    module = get_module(pipeline)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            z = module(torch.from_numpy(Xin))
    finally:
        for m, mode in modes:
            m.training = mode
    proba = torch.softmax(z, 1)[:, 1].numpy()
    return proba, z.argmax(1).numpy().astype(int)


def select_examples(y, pred, usable, n_examples=4, random_state=0) -> dict[str, list[int]]:
    """Positional indices of example objects in each group.

    Parameters
    ----------
    y, pred : array-like of int, shape (n,)
        True and predicted labels (1 = galaxy, 0 = star).
    usable : array-like of bool, shape (n,)
        Objects that may be picked (finite network input).
    n_examples : int
        Objects per group (fewer when a group is smaller).
    random_state : int or None

    Returns
    -------
    dict
        ``{'star': [...], 'galaxy': [...], 'misclassified': [...]}``: correctly
        classified stars and galaxies and misclassified objects, each sorted.

    Examples
    --------
    >>> select_examples([0, 0, 1], [0, 1, 1], [True] * 3, n_examples=1)
    {'star': [0], 'galaxy': [2], 'misclassified': [1]}
    """
    y, pred, usable = np.asarray(y), np.asarray(pred), np.asarray(usable, bool)
    rng = np.random.default_rng(random_state)
    masks = {
        "star": usable & (y == 0) & (pred == 0),
        "galaxy": usable & (y == 1) & (pred == 1),
        "misclassified": usable & (y != pred),
    }
    out = {}
    for group in GROUPS:
        idx = np.flatnonzero(masks[group])
        pick = rng.choice(idx, size=min(n_examples, len(idx)), replace=False) if len(idx) else idx
        out[group] = sorted(int(i) for i in pick)
    return out


def _radial_figure(profiles: dict[str, pd.DataFrame], shape_hw, path: Path) -> Path:
    from matplotlib.figure import Figure

    h, w = shape_hw
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.rint(np.hypot(xx - (w - 1) / 2, yy - (h - 1) / 2)).astype(int)
    fig = Figure(figsize=(9, 3.5), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    for name, prof in profiles.items():
        rel = prof["mean_abs"] / prof["mean_abs"].max()
        ax1.plot(prof.index, rel, marker="o", ms=3, label=name)
        ax2.plot(prof.index, prof["cumulative_fraction"], marker="o", ms=3, label=name)
    radii = np.unique(r)
    area = np.array([(r <= k).sum() for k in radii]) / r.size
    ax2.plot(radii, area, ls="--", color="grey", label="uniform map")
    ax1.set_xlabel("distance from cutout centre (px)")
    ax1.set_ylabel("mean |attribution| per pixel (/ max)")
    ax2.set_xlabel("distance from cutout centre (px)")
    ax2.set_ylabel("cumulative share of |attribution|")
    ax2.set_ylim(0, 1.02)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def explain(
    out_dir,
    pipeline,
    X,
    y,
    mags=None,
    n_examples: int = 4,
    random_state=0,
    *,
    background=None,
    n_background: int = 50,
    ig_steps: int = 32,
    ig_baseline="zeros",
    shap_nsamples: int = 200,
    output: str = "log_odds",
    radius: float = 2.0,
) -> dict:
    """Explain a fitted CNN pipeline on example objects and write figures/tables.

    Parameters
    ----------
    out_dir : str or Path
        Created if needed; see the module docstring for the files written.
    pipeline : fitted Pipeline (last step the skorch net), skorch net or torch module
    X : DataFrame or array-like
        Objects the pipeline accepts (objects table or cutouts); examples are
        drawn from these rows.
    y : array-like of int, shape (n,)
        True labels, 1 = galaxy, 0 = star.
    mags : array-like of float, shape (n,), optional
        e.g. r magnitudes, shown in the row labels.
    n_examples : int
        Objects per group (correct stars, correct galaxies, misclassified).
    random_state : int or None
        Seeds the example/background choice and SHAP sampling.
    background : DataFrame or array-like, optional
        Objects (same kind as ``X``, e.g. training objects) for the SHAP
        background; default: rows of ``X`` that are not explained.
    n_background : int
        Background size (a random subset when more are available).
    ig_steps, ig_baseline
        Integrated Gradients trapezoid intervals and baseline
        (``'zeros'``, ``'blur'`` or an array; see
        :func:`stargal.explain.make_baseline`).
    shap_nsamples : int
        Gradient samples per object for SHAP.
    output : {'log_odds', 'logit', 'probability'}
        The explained galaxy score.
    radius : float
        Radius in pixels for the concentration headline.

    Returns
    -------
    dict
        JSON-serialisable: ``examples`` (positional indices per group),
        ``index_labels`` (the same as ``X``'s index labels when ``X`` is a
        DataFrame), ``n_objects``, ``n_explained``, ``accuracy`` (of the
        pipeline on the usable rows), ``top_band_shap``/``top_band_ig``,
        ``band_importance_shap``/``band_importance_ig`` (band -> share),
        ``frac_abs_within_2px_shap``/``_ig`` (share of ``|attr|`` within
        ``radius`` px of the centre), ``area_frac_within_2px`` (the same for a
        uniform map), ``ig_median_relative_gap`` (completeness check),
        the settings used, and ``files``.
    """
    out_dir = Path(out_dir)
    for name, val, lo in (("n_examples", n_examples, 1), ("n_background", n_background, 1)):
        if isinstance(val, bool) or not isinstance(val, numbers.Integral) or val < lo:
            raise ValueError(f"{name} must be an integer >= {lo}; got {val!r}")
    if random_state is not None and (isinstance(random_state, bool)
                                     or not isinstance(random_state, numbers.Integral)):
        raise ValueError(f"random_state must be an int or None; got {random_state!r}")
    y = np.asarray(y).ravel()
    n = _n_rows(X)
    if len(y) != n:
        raise ValueError(f"y has {len(y)} labels for {n} objects in X")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must contain only 0 (star) and 1 (galaxy)")
    if mags is not None:
        mags = np.asarray(mags, dtype=float).ravel()
        if len(mags) != n:
            raise ValueError(f"mags has {len(mags)} values for {n} objects in X")

    Xin = net_inputs(pipeline, X)
    if len(Xin) != n:
        raise ValueError(f"the pipeline's front steps returned {len(Xin)} rows for {n} objects")
    usable = np.isfinite(Xin).all(axis=(1, 2, 3))
    if not usable.any():
        raise ValueError("no object has a finite network input (all cutouts failed?)")
    proba = np.full(n, np.nan)
    pred = np.full(n, -1)
    proba[usable], pred[usable] = _predict(pipeline, Xin[usable])

    examples = select_examples(y, pred, usable, n_examples, random_state)
    chosen = np.array([i for g in GROUPS for i in examples[g]], dtype=int)
    groups = [g for g in GROUPS for _ in examples[g]]
    # one object can be in at most one group (correct vs misclassified), so no duplicates
    if len(chosen) == 0:
        raise ValueError("no example object could be selected")
    rng = np.random.default_rng(None if random_state is None else random_state + 1)

    if background is None:
        pool = np.flatnonzero(usable & ~np.isin(np.arange(n), chosen))
        if len(pool) == 0:
            pool = chosen
        bg = Xin[rng.choice(pool, size=min(n_background, len(pool)), replace=False)]
    else:
        bg = net_inputs(pipeline, background)
        bg = bg[np.isfinite(bg).all(axis=(1, 2, 3))]
        if len(bg) == 0:
            raise ValueError("background has no object with a finite network input")
        if len(bg) > n_background:
            bg = bg[rng.choice(len(bg), size=n_background, replace=False)]

    module = get_module(pipeline)
    x = Xin[chosen]
    sv = shap_maps(
        module, x, bg, target=1, nsamples=shap_nsamples, output=output, random_state=random_state
    )
    ig = integrated_gradients(
        module, x, target=1, baseline=ig_baseline, steps=ig_steps, output=output
    )
    gap = ig_completeness_gap(module, x, ig, target=1, baseline=ig_baseline, output=output)

    out_dir.mkdir(parents=True, exist_ok=True)
    titles = []
    for i, g in zip(chosen, groups):
        t = f"{g} #{i}\ny={'gal' if y[i] else 'star'} p_gal={proba[i]:.2f}"
        if mags is not None and np.isfinite(mags[i]):
            t += f" m={mags[i]:.1f}"
        titles.append(t)
    files = {
        "explain_shap.png": plot_attributions(x, sv, titles, out_dir / "explain_shap.png"),
        "explain_ig.png": plot_attributions(x, ig, titles, out_dir / "explain_ig.png"),
    }
    maps = {"shap": sv, "integrated_gradients": ig}
    bands = {name: band_importance(a) for name, a in maps.items()}
    table = pd.concat(
        [df.reset_index().assign(method=name) for name, df in bands.items()], ignore_index=True
    )
    table = table[["method", "band", "importance", "mean_abs"]]
    files["band_importance.csv"] = out_dir / "band_importance.csv"
    table.to_csv(files["band_importance.csv"], index=False)
    profiles = {name: radial_profile(a) for name, a in maps.items()}
    files["radial_importance.png"] = _radial_figure(
        profiles, x.shape[2:], out_dir / "radial_importance.png"
    )

    h, w = x.shape[2:]
    yy, xx = np.mgrid[0:h, 0:w]
    area = float((np.hypot(xx - (w - 1) / 2, yy - (h - 1) / 2) <= radius).mean())
    result = {
        "n_objects": int(n),
        "n_usable": int(usable.sum()),
        "accuracy": float((pred[usable] == y[usable]).mean()),
        "n_explained": int(len(chosen)),
        "examples": examples,
        "output": output,
        "ig_baseline": ig_baseline if isinstance(ig_baseline, str) else "array",
        "ig_steps": int(ig_steps),
        "shap_nsamples": int(shap_nsamples),
        "n_background": int(len(bg)),
        "top_band_shap": str(bands["shap"]["importance"].idxmax()),
        "top_band_ig": str(bands["integrated_gradients"]["importance"].idxmax()),
        "band_importance_shap": bands["shap"]["importance"].astype(float).to_dict(),
        "band_importance_ig": bands["integrated_gradients"]["importance"].astype(float).to_dict(),
        "frac_abs_within_2px_shap": fraction_within(sv, radius),
        "frac_abs_within_2px_ig": fraction_within(ig, radius),
        "area_frac_within_2px": area,
        "radius_px": float(radius),
        "ig_median_relative_gap": float(gap["relative_gap"].median()),
    }
    if isinstance(X, pd.DataFrame):
        result["index_labels"] = {g: X.index[examples[g]].tolist() for g in GROUPS}
    files["explain_summary.json"] = out_dir / "explain_summary.json"
    result["files"] = {k: str(v) for k, v in files.items()}
    files["explain_summary.json"].write_text(json.dumps(result, indent=2, default=str))
    return result


def run(ctx) -> StageResult:
    """The study's stage 6: :func:`explain` on the final CNN (:meth:`~experiments.common.StudyContext.final_cnn`,
    not calibrated) and the test field's objects (SHAP background: 50 training objects).

    Returns
    -------
    StageResult
        Numbers: :func:`explain`'s; no artefacts.
    """
    model = ctx.final_cnn()[0]
    if model is None:
        raise ValueError("stage 6 explains the final CNN: no earlier stage fitted one")
    test = ctx.rows("test")
    background = ctx.rows("train").sample(n=min(50, len(ctx.rows("train"))), random_state=ctx.seed)
    res = explain(ctx.out_dir, model, test, ctx.y(test), mags=test["psfmag_r"].to_numpy(),
                  n_examples=3 if ctx.quick else 4, random_state=ctx.seed, background=background,
                  ig_steps=16 if ctx.quick else 32, shap_nsamples=50 if ctx.quick else 200)
    return StageResult(numbers=res, markdown=_explain_markdown(res))


def _explain_markdown(res: dict) -> str:
    """The stage's report section from ``templates/explanations.md.j2``."""
    from .common import fmt, render_template

    methods = []
    for method in ("shap", "ig"):
        bi = res.get(f"band_importance_{method}")
        methods.append({"name": method.upper(),
                        "bands": " | ".join(f"{b}: {fmt(v)}" for b, v in bi.items()) if isinstance(bi, dict) else None,
                        "top": res.get(f"top_band_{method}"),
                        "within": fmt(res.get(f"frac_abs_within_2px_{method}"))})
    gap = res.get("ig_median_relative_gap")
    conc = [res.get(f"frac_abs_within_2px_{m}") for m in ("shap", "ig")]
    area = res.get("area_frac_within_2px")
    concentration = None
    if area and all(c is not None for c in conc):
        ratio = min(conc) / area
        concentration = {"lo": fmt(min(conc)), "hi": fmt(max(conc)), "ratio": f"{ratio:.1f}",
                         "concentrated": bool(ratio > 1.2), "area": fmt(area)}
    bi = [res.get(f"band_importance_{m}") for m in ("shap", "ig")]
    band_spread = None
    if all(isinstance(b, dict) for b in bi):
        spread = max(max(b.values()) - min(b.values()) for b in bi)
        band_spread = {"spread": fmt(spread), "even": bool(spread < 0.15)}
    return render_template("explanations.md.j2", methods=methods, uniform=fmt(res.get("area_frac_within_2px")),
                           gap=None if gap is None else fmt(gap), concentration=concentration,
                           band_spread=band_spread)
