"""Stage 4 -- data augmentation: a seeded ablation with proxy CNNs, a rule-based choice, a final check.

1. **Ablation** (train -> validation only; the test field is never looked at). Small *proxy* CNNs
   (width :data:`PROXY_WIDTH`, the study's depth, a short epoch budget with early stopping) are fitted on
   ``ctx.rows('train')`` once per configuration and seed, and scored on ``ctx.rows('valid')``. The
   configurations (:data:`CONFIGS`) are a control ``none`` and each technique alone. Every configuration,
   the control included, is a :class:`~stargal.augment.CutoutAugmenter` with ``n_copies=1``: the control
   adds *unperturbed* copies, so all configurations see the same number of rows and optimiser steps per
   epoch and a delta measures the perturbation itself, not "twice the steps". A seed sets the network
   initialisation and batch order (``net__random_state``) and the augmentation draws (``random_state``);
   the early-stopping split (sky groups, :class:`~stargal.models.SkyValidSplit`) is the same for all.
   Deltas are *paired by seed* (technique minus control with the same seed).
2. **Choice** (:func:`choose`): every technique whose mean delta MCC over seeds is > 0; if none is, the
   single technique with the highest mean delta is taken as a flagged *fallback*, so that the full-size
   comparison still tests one. The chosen techniques are merged into one augmenter.
3. **Final check**: the full-size CNN (config defaults, or the tuning stage's ``tuned_params``) trained on
   ``train`` without augmentation, with the control augmenter (identical copies) and with the chosen
   augmentation (and the extra candidate of :func:`final_recipes`); evaluated on train, valid and test.
4. **Final recipe** (:func:`held_out_choice`): each candidate recipe (no augmentation, the choice, the choice
   plus ``seeing`` when the ablation left it out) is scored by leaving each training field out in turn
   (full-size CNN fitted on the other fields, scored on the held-out one); the highest mean MCC wins. The
   validation groups share the training fields' seeing, held-out fields do not: this is the choice that
   matters for a field the model has never seen. The test field takes no part.

Files written to ``ctx.out_dir``: ``augmentation_ablation.csv`` (one row per configuration: means, stds,
paired deltas, wins over seeds), ``augmentation_ablation_runs.csv`` (one row per fit),
``augmentation_ablation.png``, ``augmentation_final.csv``, ``augmentation_final_by_magnitude.csv`` and
``augmentation_held_out.csv`` (one row per candidate recipe and held-out field).

Run alone with ``python -m experiments.augmentation [--quick] --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from joblib import Parallel, delayed  # noqa: E402

from stargal.augment import DEFAULT_STRENGTHS, CutoutAugmenter  # noqa: E402

from .common import StageResult, fmt, markdown_table, render_template, write_csv  # noqa: E402

__all__ = ["CONFIGS", "SAMPLER_CONFIGS", "PROXY_WIDTH", "FAINT_MAG", "make_augmenter", "proxy_params",
           "proxy_fit_score", "ablation", "summarise", "choose", "final_recipes", "held_out_choice", "final_choice",
           "run", "main"]

#: Ablation configurations: name -> the CutoutAugmenter parameters switched on (all others off).
#: ``zoom_shear`` is one configuration (both are small affine distortions about the centre);
#: ``balance`` adds unperturbed extra copies of the minority class (random over-sampling).
CONFIGS: dict[str, dict] = {
    "none": {},
    "dihedral": {"dihedral": DEFAULT_STRENGTHS["dihedral"]},
    "shift": {"shift": DEFAULT_STRENGTHS["shift"]},
    "noise": {"noise": DEFAULT_STRENGTHS["noise"]},
    "zoom_shear": {"zoom": DEFAULT_STRENGTHS["zoom"], "shear": DEFAULT_STRENGTHS["shear"]},
    "blur": {"blur": DEFAULT_STRENGTHS["blur"]},
    "seeing": {"seeing": DEFAULT_STRENGTHS["seeing"], "seeing_bands": "independent"},
    "balance": {"balance": True},
}



def _synthetic_injector(ctx, random_state, train=None):
    """Injected synthetic stars and galaxies in the training fields' frames
    (:class:`~stargal.inject.SyntheticInjector`).

    ``train``: the rows the proxy is fitted on (the study's train split by default); objects are injected
    into the frames of their fields only, as many as these rows (the row count of the control's unperturbed
    copies); fewer in quick mode. Magnitudes and colours from those fields' measured photometry, r in 17-23,
    hlr 0.1-3″.
    """
    from stargal.inject import SyntheticInjector

    train = ctx.rows("train") if train is None else train
    fields = sorted(train["field_id"].unique())
    n = min(len(train), 300) if ctx.quick else len(train)
    return SyntheticInjector(fields=fields, n_objects=int(n), mag_range=(17.0, 23.0), hlr_range=(0.1, 3.0),
                             galaxy_fraction=0.5, psf_source=ctx.config.psf_source, random_state=random_state,
                             sas_url=ctx.fetcher.base_url, cache_dir=str(ctx.fetcher.cache_dir))


def _rule_injector(ctx, random_state, train=None, boundary=None):
    """:func:`_synthetic_injector` with ``label='rule'``: injected objects typed by SDSS's rule on our
    measurement of the injected frames, with ``boundary`` (default: the one the study's rule fitted in
    stage 5)."""
    from stargal.photo import MIRROR_TYPE_BOUNDARY

    if boundary is None:
        boundary = ctx.numbers("baselines").get("rule_boundary", MIRROR_TYPE_BOUNDARY)
    return _synthetic_injector(ctx, random_state, train).set_params(label="rule", rule_boundary=float(boundary))


#: Ablation configurations that are samplers other than the CutoutAugmenter: name -> ``factory(ctx,
#: random_state, train)`` (``train``: the rows the proxy is fitted on). They are not in the default ablation
#: (rendering costs time): ``experiments/synthetic.py`` runs them paired with the control on held-out fields
#: (:func:`experiments.synthetic.held_out_ablation`).
SAMPLER_CONFIGS: dict = {"synthetic": _synthetic_injector, "synthetic_rule": _rule_injector}

#: Width of the proxy CNNs (the study's depth, dropout, lr, ... are kept).
PROXY_WIDTH = 16
#: Proxy epoch budget and early-stopping patience (full mode / quick mode).
PROXY_EPOCHS = {"full": 10, "quick": 3}
PROXY_PATIENCE = 3
#: Seeds per configuration (offsets added to the study seed).
N_SEEDS = {"full": 3, "quick": 1}
#: torch intra-op threads while this stage runs (restored afterwards). These CNNs are small
#: (15 x 15 inputs, batches of 128): on the shared 2-core machine one thread measured 1.6-10x faster
#: per epoch than two, which mostly spin-wait on each other.
TORCH_THREADS = 1
#: Objects with r PSF magnitude >= this are "faint" in the per-magnitude summaries.
FAINT_MAG = 21.0

_OFF = {"dihedral": False, "shift": 0.0, "noise": 0.0, "zoom": 0.0, "shear": 0.0, "blur": 0.0,
        "seeing": 0.0, "balance": False}
_SCORES = ("mcc", "balanced_accuracy", "roc_auc")


@contextmanager
def torch_threads(n=TORCH_THREADS):
    """Run the block with ``torch.set_num_threads(n)``; the previous setting is restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_augmenter(names, *, random_state=None, n_copies=1) -> CutoutAugmenter:
    """One :class:`CutoutAugmenter` with the techniques of the named configurations on, the rest off.

    ``names`` are keys of :data:`CONFIGS` (``'none'`` or an empty list: unperturbed copies).
    """
    names = [names] if isinstance(names, str) else list(names)
    params = dict(_OFF)
    for name in names:
        if name not in CONFIGS:
            raise ValueError(f"unknown augmentation configuration {name!r}; expected one of {list(CONFIGS)}")
        params.update(CONFIGS[name])
    return CutoutAugmenter(n_copies=n_copies, random_state=random_state, **params)


def _describe(name: str) -> str:
    if name == "none":
        return "control: unperturbed copies"
    if name == "balance":
        return "minority class topped up with unperturbed copies"
    parts = []
    for key, value in CONFIGS[name].items():
        if key == "dihedral":
            parts.append("random one of 8 rotations/flips")
        elif key == "shift":
            parts.append(f"shift U(±{value}) px")
        elif key == "noise":
            parts.append(f"+ Gaussian noise {value}× sky σ")
        elif key == "zoom":
            parts.append(f"zoom 1 ± {value}")
        elif key == "shear":
            parts.append(f"shear ≤ {value}")
        elif key == "blur":
            parts.append(f"extra Gaussian PSF σ ≤ {value} px")
        elif key == "seeing":
            each = CONFIGS[name].get("seeing_bands", "same") == "independent"
            parts.append(("each band's image and PSF broadened together to its own FWHM U(own, " if each else
                          "image and PSF broadened together to r FWHM U(own, ") + f"{value}″), sky noise restored; "
                         "galaxy copies this makes point-like by SDSS's rule left out")
    return ", ".join(parts)


def proxy_params(ctx, seed_offset: int) -> dict:
    """Pipeline parameters of a proxy CNN for one seed."""
    mode = "quick" if ctx.quick else "full"
    return {"net__module__width": PROXY_WIDTH, "net__module__members": 1, "net__max_epochs": PROXY_EPOCHS[mode],
            "net__patience": PROXY_PATIENCE, "net__random_state": int(ctx.seed + seed_offset)}


def _scores(pipe, rows) -> dict:
    """MCC / balanced accuracy / ROC AUC on rows, overall and for faint and bright objects."""
    from stargal.training import evaluate_predictions, labels_to_y

    y = labels_to_y(rows["label"])
    proba = pipe.predict_proba(rows)[:, 1]
    out = {k: float(v) for k, v in evaluate_predictions(y, proba)[0].items() if k in _SCORES}
    faint = rows["psfmag_r"].to_numpy() >= FAINT_MAG
    for tag, mask in (("faint", faint), ("bright", ~faint)):
        m = evaluate_predictions(y[mask], proba[mask])[0] if mask.any() else {}
        out[f"mcc_{tag}"] = float(m.get("mcc", np.nan))
    return out


def ablation(ctx, configs=None, seeds=None, log=print, train=None, valid=None, samplers=None) -> pd.DataFrame:
    """One proxy fit per configuration and seed, on ``ctx.n_jobs`` workers: fitted on ``train``, scored on
    ``valid`` (the study's train and validation splits by default).

    ``samplers``: factories that replace :data:`SAMPLER_CONFIGS`' for some configurations (name ->
    ``factory(ctx, random_state, train)``).

    Returns one row per fit: ``config``, ``seed``, ``epochs`` (run before early stopping ended it),
    ``fit_s``, ``mcc``, ``balanced_accuracy``, ``roc_auc``, ``mcc_faint``, ``mcc_bright``.
    """
    configs = list(CONFIGS) if configs is None else list(configs)
    if seeds is None:
        seeds = range(N_SEEDS["quick" if ctx.quick else "full"])
    train = ctx.rows("train") if train is None else train
    valid = ctx.rows("valid") if valid is None else valid
    factories = {**SAMPLER_CONFIGS, **(samplers or {})}
    tasks = []
    for seed in seeds:
        for name in configs:
            params = proxy_params(ctx, seed)
            if name in factories:
                aug = factories[name](ctx, params["net__random_state"], train)
            else:
                aug = make_augmenter(name, random_state=params["net__random_state"])
            tasks.append(({"config": name, "seed": int(params["net__random_state"])},
                          (ctx.config, ctx.fetcher.base_url, str(ctx.fetcher.cache_dir), params, train, valid, aug)))
    results = Parallel(n_jobs=ctx.n_jobs)(delayed(proxy_fit_score)(*args) for _, args in tasks)
    runs = []
    for (meta, _), res in zip(tasks, results):
        runs.append({**meta, **res})
        log(f"  {meta['config']:<11s} seed {meta['seed']}: valid MCC {res['mcc']:.3f}  ({res['epochs']} epochs, "
            f"{res['fit_s']:.1f} s)")
    return pd.DataFrame(runs)


def proxy_fit_score(config, sas_url, cache_dir, params, fit_rows, eval_rows, augmenter) -> dict:
    """Fit one proxy CNN on ``fit_rows`` and score it on ``eval_rows`` (runs in a worker, one torch thread).

    Returns ``epochs`` (run before early stopping ended it), ``fit_s`` and the scores of :func:`_scores`.
    """
    from stargal.training import build_pipeline, fit_pipeline

    with torch_threads():
        t0 = time.perf_counter()
        pipe = build_pipeline("cnn", config, sas_url=sas_url, cache_dir=cache_dir, augmenter=augmenter,
                              params=params)
        fit_pipeline(pipe, fit_rows)
        fit_s = time.perf_counter() - t0
        return {"epochs": len(pipe.named_steps["net"].history), "fit_s": round(fit_s, 1),
                **_scores(pipe, eval_rows)}


def _fit_timed(pipe, rows):
    """``(pipe fitted on rows, seconds)`` (runs in a worker, one torch thread)."""
    from stargal.training import fit_pipeline

    with torch_threads():
        t0 = time.perf_counter()
        fit_pipeline(pipe, rows)
        return pipe, round(time.perf_counter() - t0, 1)


def summarise(runs: pd.DataFrame, control: str = "none") -> pd.DataFrame:
    """Mean and std over seeds per configuration, and deltas vs ``control`` paired by seed.

    Std is the sample standard deviation (``ddof=1``; NaN with one seed). ``wins`` counts the
    seeds where the configuration's validation MCC beat the control's.
    """
    metrics = list(_SCORES) + ["mcc_faint", "mcc_bright"]
    base = runs[runs["config"] == control].set_index("seed")[metrics]
    rows = []
    for name, group in runs.groupby("config", sort=False):
        g = group.set_index("seed")
        delta = g[metrics] - base.reindex(g.index)
        row = {"config": name, "n_seeds": len(g), "fit_s_mean": g["fit_s"].mean(),
               "epochs_mean": g["epochs"].mean()}
        for m in metrics:
            row[f"{m}_mean"] = g[m].mean()
            row[f"{m}_std"] = g[m].std(ddof=1) if len(g) > 1 else np.nan
            row[f"delta_{m}_mean"] = delta[m].mean()
            row[f"delta_{m}_std"] = delta[m].std(ddof=1) if len(g) > 1 else np.nan
        row["wins"] = int((delta["mcc"] > 0).sum())
        rows.append(row)
    out = pd.DataFrame(rows)
    order = {name: i for i, name in enumerate(CONFIGS)}
    return out.sort_values("config", key=lambda s: s.map(lambda n: order.get(n, len(order)))).reset_index(drop=True)


def choose(summary: pd.DataFrame, control: str = "none") -> tuple[list[str], bool]:
    """Techniques with mean delta MCC > 0; else the best single one as a fallback.

    Returns ``(chosen names, fallback)``; ``fallback`` is True when no technique had a positive mean delta.
    """
    cand = summary[summary["config"] != control]
    positive = cand[cand["delta_mcc_mean"] > 0]
    if len(positive):
        return positive.sort_values("delta_mcc_mean", ascending=False)["config"].tolist(), False
    return [cand.sort_values("delta_mcc_mean", ascending=False)["config"].iloc[0]], True


def _plot(summary: pd.DataFrame, runs: pd.DataFrame, path: Path, control="none") -> None:
    s = summary[summary["config"] != control].reset_index(drop=True)
    base = runs[runs["config"] == control].set_index("seed")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    ypos = np.arange(len(s))
    panels = (("mcc", "all validation objects"), ("mcc_faint", f"faint (r ≥ {FAINT_MAG:g})"))
    for ax, (metric, title) in zip(axes, panels):
        mean = s[f"delta_{metric}_mean"].to_numpy()
        err = np.nan_to_num(s[f"delta_{metric}_std"].to_numpy())
        colors = ["tab:green" if m > 0 else "tab:red" for m in mean]
        ax.barh(ypos, mean, xerr=err, color=colors, alpha=0.6, capsize=4)
        for i, name in enumerate(s["config"]):  # individual seeds (paired deltas)
            g = runs[runs["config"] == name].set_index("seed")
            d = (g[metric] - base[metric].reindex(g.index)).to_numpy()
            ax.plot(d, np.full(d.shape, i), "k.", ms=5)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel(f"Δ MCC vs '{control}' (technique − control, same seed)")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ypos)
    axes[0].set_yticklabels(s["config"])
    axes[0].invert_yaxis()
    n_seeds = int(summary["n_seeds"].max())
    fig.suptitle(f"Augmentation ablation, proxy CNNs: mean ± std over {n_seeds} seed(s); dots = seeds",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _final_params(ctx, tuned_params) -> dict:
    params = dict(tuned_params or {})
    params["net__max_epochs"] = ctx.epochs(int(params.get("net__max_epochs", ctx.config.cnn["max_epochs"])))
    return params


def _verdict(mean, std, n, spread="seed-to-seed") -> str:
    """A plain-words reading of a paired delta (``spread``: what its standard deviation is over)."""
    if n < 2 or not np.isfinite(std):
        return "one seed only: no noise estimate" if spread == "seed-to-seed" else "one pair only: no noise estimate"
    if mean - std > 0:
        return f"gain larger than the {spread} spread"
    if mean + std < 0:
        return f"loss larger than the {spread} spread"
    return f"within the {spread} spread" if spread != "seed-to-seed" else "within seed noise"


def _pm(mean, std) -> str:
    return fmt(mean) if not np.isfinite(std) else f"{fmt(mean)} ± {fmt(std)}"


def _signed(v) -> str:
    return "–" if not np.isfinite(v) else f"{v:+.3f}"


def run(ctx) -> StageResult:
    """Ablation, choice and final comparison (see the module docstring). Writes into ``ctx.out_dir``.

    The full-size models use the tuning stage's parameters (artefact ``tuned_params``:
    ``{'net__lr': ..., 'net__module__width': ...}``; the study's defaults without it), with the epoch
    budget ``ctx.epochs(...)``.

    Parameters
    ----------
    ctx : experiments.common.StudyContext

    Returns
    -------
    StageResult
        Numbers for the report (the final recipe included) and artefacts: ``final_cnn`` (the final
        recipe's CNN fitted on the train split), ``final_cnn_choice`` (:func:`final_choice`),
        ``final_augmenter`` (the recipe's augmenter, None for no augmentation) and ``final_lofo`` (its
        leave-one-training-field-out rows, reused by stage 7).
    """
    with torch_threads():
        return _run(ctx, ctx.artefact("tuned_params"), print)


def final_choice(held_out_mcc: dict, winner: str) -> str:
    """How the final CNN was chosen, for the report and the model file: the winning recipe's mean
    held-out-field MCC and the others'.

    Examples
    --------
    >>> final_choice({"no augmentation": 0.8, "chosen augmentation": 0.85}, "chosen augmentation")
    'tuned, chosen augmentation (held-out-field MCC 0.850; no augmentation 0.800)'
    """
    others = ", ".join(f"{k} {v:.3f}" for k, v in held_out_mcc.items() if k != winner)
    return (f"tuned, {winner} (held-out-field MCC {held_out_mcc.get(winner, float('nan')):.3f}; "
            f"{others})")


def _run(ctx, tuned_params, log) -> StageResult:
    t_stage = time.perf_counter()
    out = Path(ctx.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mode = "quick" if ctx.quick else "full"
    train, valid, test = ctx.rows("train"), ctx.rows("valid"), ctx.rows("test")

    # 1. ablation ---------------------------------------------------------------------------
    log(f"augmentation ablation: {len(CONFIGS)} configs x {N_SEEDS[mode]} seed(s), proxy width {PROXY_WIDTH}, "
        f"<= {PROXY_EPOCHS[mode]} epochs")
    t0 = time.perf_counter()
    runs = ablation(ctx, log=log)
    ablation_s = time.perf_counter() - t0
    summary = summarise(runs)
    summary.insert(1, "augmentation", summary["config"].map(_describe))
    write_csv(out / "augmentation_ablation_runs.csv", runs)
    write_csv(out / "augmentation_ablation.csv", summary)
    _plot(summary, runs, out / "augmentation_ablation.png")

    # 2. choice -----------------------------------------------------------------------------
    chosen, fallback = choose(summary)
    log(f"chosen: {chosen}{' (fallback: no technique had a positive mean delta)' if fallback else ''}")

    # 3. final models -----------------------------------------------------------------------
    params = _final_params(ctx, tuned_params)
    recipes = final_recipes(ctx, chosen)
    variants = {
        "no augmentation": None,
        "control (unperturbed copies)": make_augmenter("none", random_state=ctx.seed),
        **{label: make_augmenter(names, random_state=ctx.seed) for label, names in recipes.items() if names},
    }
    final_rows, by_mag, fitted, final_s = [], [], {}, {}
    done = Parallel(n_jobs=ctx.n_jobs)(delayed(_fit_timed)(ctx.pipeline("cnn", augmenter=aug, params=params), train)
                                       for aug in variants.values())
    for label, (pipe, seconds) in zip(variants, done):
        final_s[label] = seconds
        fitted[label] = pipe
        for split, rows in (("train", train), ("valid", valid), ("test", test)):
            m, mag = ctx.evaluate(pipe, rows, by_magnitude=(split != "train"))
            final_rows.append({"model": label, "split": split, "epochs": len(pipe.named_steps["net"].history),
                               "fit_s": final_s[label],
                               **{k: v for k, v in m.items() if np.isscalar(v)}})
            if mag is not None:
                by_mag.append(mag.assign(model=label, split=split))
        log(f"  final '{label}': {final_s[label]:.1f} s, valid MCC "
            f"{final_rows[-2]['mcc']:.3f}, test MCC {final_rows[-1]['mcc']:.3f}")
    final = pd.DataFrame(final_rows)
    write_csv(out / "augmentation_final.csv", final)
    mag_frame = pd.concat(by_mag, ignore_index=True)
    write_csv(out / "augmentation_final_by_magnitude.csv", mag_frame)

    # 4. the final recipe, chosen on held-out training fields ---------------------------------
    log(f"final recipe on held-out fields: {len(recipes)} recipes x leave one training field out")
    t0 = time.perf_counter()
    held_out = held_out_choice(ctx, recipes, params)
    held_out_s = time.perf_counter() - t0
    write_csv(out / "augmentation_held_out.csv", held_out)
    means = held_out.groupby("recipe", sort=False)["mcc"].mean()
    winner = max(recipes, key=lambda label: (means[label], -list(recipes).index(label)))
    log("  held-out-field MCC: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()) + f" -> {winner}")

    numbers, values = _result(ctx, summary, runs, chosen, fallback, final, mag_frame, params, tuned_params,
                              ablation_s, final_s, len(train), len(valid), len(test))
    markdown = render_template("augmentation.md.j2", **values, **_held_out_values(held_out, recipes, winner,
                                                                                   held_out_s))
    numbers["final_recipe"] = winner
    numbers["final_techniques"] = list(recipes[winner])
    numbers["held_out_mcc"] = {k: float(v) for k, v in means.items()}
    numbers["seconds"] = round(time.perf_counter() - t_stage, 1)
    winner_aug = make_augmenter(recipes[winner], random_state=ctx.seed) if recipes[winner] else None
    artefacts = {"final_cnn": fitted[winner], "final_cnn_choice": final_choice(numbers["held_out_mcc"], winner),
                 "final_augmenter": winner_aug,
                 "final_lofo": held_out[held_out["recipe"] == winner].drop(columns="recipe")}
    return StageResult(numbers=numbers, markdown=markdown, artefacts=artefacts)


def final_recipes(ctx, chosen) -> dict:
    """Candidate recipes for the final CNN: label -> technique names (``[]``: no augmentation).

    No augmentation, the ablation's choice, and, when the ablation did not choose it, the choice plus
    ``seeing`` (PSF-aware models only): the validation groups share the training fields' seeing, so
    the ablation cannot see what broader seeing teaches about *other* fields; the held-out fields can.
    """
    recipes = {"no augmentation": [], "chosen augmentation": list(chosen)}
    if ctx.config.psf != "none" and "seeing" not in chosen:
        recipes["chosen augmentation + seeing"] = list(chosen) + ["seeing"]
    return recipes


def held_out_choice(ctx, recipes, params) -> pd.DataFrame:
    """Leave-one-training-field-out scores of the full-size PSF-aware CNN for each recipe.

    Each training field in turn is held out; the CNN (``params``, study seed) is fitted on the other
    fields' train + validation objects with the recipe's augmenter and scored on every object of the
    held-out field. The test field takes no part. One row per recipe and held-out field.
    """
    from .seeing import lofo_tasks, run_lofo

    tasks = []
    for label, names in recipes.items():
        aug = make_augmenter(names, random_state=ctx.seed) if names else None
        tasks += [(label, t) for t in lofo_tasks(ctx, "CNN", "cnn", ctx.config.psf, params, aug)]
    frame = run_lofo(ctx, [t for _, t in tasks])
    frame.insert(0, "recipe", [label for label, _ in tasks])
    return frame


def _held_out_values(frame, recipes, winner, seconds) -> dict:
    """The values of the section's last part (the final recipe) for ``templates/augmentation.md.j2``."""
    fields = list(dict.fromkeys(frame["held_out"]))
    rows = []
    for label, names in recipes.items():
        g = frame[frame["recipe"] == label].set_index("held_out")["mcc"]
        name = f"**{label}**" if label == winner else label
        rows.append([name, ", ".join(names) or "–", *(fmt(g[f]) for f in fields), fmt(g.mean()),
                     fmt(g.std(ddof=1))])
    table = markdown_table(pd.DataFrame(rows, columns=["recipe", "techniques", *fields, "mean MCC", "std"]))
    return {"held_out_min": f"{seconds / 60:.1f}", "held_out_table": table, "winner": winner}


def _result(ctx, summary, runs, chosen, fallback, final, mag_frame, params, tuned_params, ablation_s,
            final_s, n_train, n_valid, n_test) -> tuple[dict, dict]:
    """The stage's numbers and the values of its report section (``templates/augmentation.md.j2``) up to
    the final recipe."""
    mode = "quick" if ctx.quick else "full"
    n_seeds = int(summary["n_seeds"].max())
    s = summary.set_index("config")
    f = final.set_index(["model", "split"])
    models = list(dict.fromkeys(final["model"]))

    # ---- tables
    abl = []
    for name, r in s.iterrows():
        is_ctrl = name == "none"
        delta = lambda m: "–" if is_ctrl else _pm(r[f"delta_{m}_mean"], r[f"delta_{m}_std"])  # noqa: E731
        abl.append([name, r["augmentation"], _pm(r["mcc_mean"], r["mcc_std"]), delta("mcc"),
                    "–" if is_ctrl else f"{int(r.wins)}/{int(r.n_seeds)}", delta("balanced_accuracy"),
                    delta("roc_auc"), delta("mcc_faint"), delta("mcc_bright")])
    abl = markdown_table(pd.DataFrame(abl, columns=[
        "configuration", "what the copies get", "valid MCC", "Δ MCC", "seeds better", "Δ bal. acc.", "Δ ROC AUC",
        f"Δ MCC r ≥ {FAINT_MAG:g}", f"Δ MCC r < {FAINT_MAG:g}"]))
    fin = []
    for model in models:
        for split in ("train", "valid", "test"):
            r = f.loc[(model, split)]
            fin.append([model, split, fmt(r["accuracy"]), fmt(r["balanced_accuracy"]), fmt(r["mcc"]),
                        fmt(r.get("roc_auc")), int(r["epochs"]), fmt(r["fit_s"], 1)])
    fin = markdown_table(pd.DataFrame(fin, columns=["model", "split", "accuracy", "balanced accuracy", "MCC",
                                                    "ROC AUC", "epochs", "fit s"]))
    faint_rows = mag_frame[(mag_frame["split"] == "test") & (mag_frame["mag_lo"] >= FAINT_MAG)]
    faint_acc = {m: faint_rows[faint_rows["model"] == m] for m in models}

    # ---- prose from the numbers
    def d(name, m="mcc"):
        return s.loc[name, f"delta_{m}_mean"], s.loc[name, f"delta_{m}_std"]

    if fallback:
        choice = (f"**No technique beat the control on average.** Fallback: `{chosen[0]}` "
                  f"(Δ MCC {_signed(d(chosen[0])[0])}), kept only to test it at full size; the ablation gives no "
                  "reason to expect a gain.")
    else:
        choice = ("**Chosen:** " + ", ".join(f"`{c}` (Δ MCC {_signed(d(c)[0])}, "
                                             f"{_verdict(*d(c), n_seeds)})" for c in chosen)
                  + ". A positive mean alone is a weak criterion with few seeds: the verdict in brackets compares "
                    "it with the seed-to-seed spread.")
    v = {m: f.loc[(m, "valid"), "mcc"] for m in models}
    t = {m: f.loc[(m, "test"), "mcc"] for m in models}
    gain_valid = v["chosen augmentation"] - v["no augmentation"]
    gain_ctrl = v["chosen augmentation"] - v["control (unperturbed copies)"]
    gain_test = t["chosen augmentation"] - t["no augmentation"]
    spread = summary.loc[summary["config"] != "none", "delta_mcc_std"].dropna()
    spread = float(spread.median()) if len(spread) else float("nan")
    spread = fmt(spread) if np.isfinite(spread) else ""
    dn, dd, dz, db, dsh = d("noise"), d("dihedral"), d("zoom_shear"), d("blur"), d("shift")
    dn_f = d("noise", "mcc_faint")
    dn_b = d("noise", "mcc_bright")
    n_star, n_gal = int((ctx.y(ctx.rows("train")) == 0).sum()), int((ctx.y(ctx.rows("train")) == 1).sum())
    dbal = d("balance")
    noise_faint_verdict = ((("positive" if dn_f[0] > 0 else "not positive") + f" ({_verdict(*dn_f, n_seeds)})")
                           if np.isfinite(dn_f[0]) else "undefined")
    faint_line = ""
    if all(len(x) for x in faint_acc.values()):
        cells = "; ".join(
            f"{m}: " + ", ".join(f"{b} acc {fmt(a)}" for b, a in zip(x["bin"], x["accuracy"]))
            for m, x in faint_acc.items() if m != "control (unperturbed copies)")
        faint_line = (f"Faint test objects (r ≥ {FAINT_MAG:g}) by magnitude bin — {cells} "
                      "(`augmentation_final_by_magnitude.csv`).")

    proxy_epochs = PROXY_EPOCHS[mode]
    values = dict(
        proxy_width=PROXY_WIDTH, width=ctx.config.cnn["width"], depth=ctx.config.cnn["depth"],
        proxy_epochs=proxy_epochs, proxy_patience=PROXY_PATIENCE, n_configs=len(CONFIGS), n_seeds=n_seeds,
        n_runs=len(runs), ablation_min=f"{ablation_s / 60:.1f}", n_jobs=ctx.n_jobs, n_train=n_train,
        n_valid=n_valid,
        seeds=f"{sorted(runs['seed'].unique().tolist())}", ablation_table=abl, choice=choice,
        tuned_params=f"`{tuned_params}`" if tuned_params else "", max_epochs=params["net__max_epochs"],
        seed=ctx.seed, test_fields=list(ctx.config.test_fields), n_test=n_test, final_table=fin,
        gain_valid=_signed(gain_valid), gain_ctrl=_signed(gain_ctrl), gain_test=_signed(gain_test), spread=spread,
        faint_line=faint_line,
        d_dihedral=_pm(*dd), v_dihedral=_verdict(*dd, n_seeds), d_shift=_pm(*dsh), v_shift=_verdict(*dsh, n_seeds),
        shift_px=f"{DEFAULT_STRENGTHS['shift']}", d_zoom=_pm(*dz), v_zoom=_verdict(*dz, n_seeds), d_blur=_pm(*db),
        v_blur=_verdict(*db, n_seeds), d_noise=_pm(*dn), d_noise_faint=_pm(*dn_f), d_noise_bright=_pm(*dn_b),
        faint_mag=f"{FAINT_MAG:g}", noise_sigma=f"{DEFAULT_STRENGTHS['noise']:g}",
        noise_faint_verdict=noise_faint_verdict, noise_faint_helped=bool(np.isfinite(dn_f[0]) and dn_f[0] > 0),
        d_balance=_pm(*dbal), v_balance=_verdict(*dbal, n_seeds), n_star=n_star, n_gal=n_gal, mode=mode,
        quick=ctx.quick)
    numbers = {
        "mode": mode,
        "proxy": {"width": PROXY_WIDTH, "max_epochs": proxy_epochs, "patience": PROXY_PATIENCE, "n_seeds": n_seeds},
        "seeds": sorted(int(x) for x in runs["seed"].unique()),
        "ablation": {name: {k: (None if not np.isfinite(v) else float(v)) for k, v in r.items()
                            if isinstance(v, (int, float, np.integer, np.floating))}
                     for name, r in s.iterrows()},
        "chosen": list(chosen),
        "fallback": bool(fallback),
        "final_params": params,
        "final": {m: {sp: {k: float(f.loc[(m, sp), k]) for k in ("accuracy", "balanced_accuracy", "mcc", "roc_auc")}
                      for sp in ("train", "valid", "test")} for m in models},
        "timings": {"ablation_s": round(ablation_s, 1), "proxy_fit_s_mean": float(runs["fit_s"].mean()),
                    "final_fit_s": final_s},
    }
    return numbers, values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.augmentation", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--quick", action="store_true", help="1 seed, 3-epoch proxies, short final fits")
    parser.add_argument("--config", default=None, help="study TOML (default: the packaged study)")
    parser.add_argument("--fields", nargs="*", default=None, help="train fields (default: the study's)")
    args = parser.parse_args(argv)
    from .common import use_local_mirror

    use_local_mirror()
    from stargal.config import load_config
    from stargal.fetch import get_fetcher
    from stargal.training import study_table

    from .common import StudyContext, write_json

    config = load_config(args.config)
    fetcher = get_fetcher(None)
    fields = args.fields
    if fields is None and args.quick:  # as experiments/run.py --quick: the first 3 train fields
        fields = list(config.train_fields)[:3]
    table = study_table(config, fetcher, fields=fields)
    ctx = StudyContext(config, fetcher, table, args.out, quick=args.quick)
    res = run(ctx)
    write_json(args.out / "augmentation_summary.json", res.summary())
    (args.out / "augmentation.md").write_text(res.markdown)
    print(json.dumps({k: v for k, v in res.numbers.items() if k in ("chosen", "fallback", "timings", "seconds")},
                     indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
