"""Stage 7 -- seeing robustness: does the model work at a seeing it was not trained on?

SDSS's star/galaxy label is relative to each field's PSF, and the test field (r FWHM 1.18″) is
sharper than every training field (1.34–1.55″). This stage measures how much each model depends
on the seeing it was trained at:

* **PSF per field** (:func:`psf_table`): FWHM per band of every study field from the PSF model
  (:func:`stargal.psf.field_psf`), with the model's source and the number of stars behind it.
  Quoted in section 1 of the report.
* **Leave one field out** over the labelled training fields: each field in turn is held out
  completely, the models are fitted on the train + validation objects of the other fields (the
  tuned hyper-parameters are reused: no tuning here) and scored on every object of the held-out
  field: SDSS's rule on our measurement, the forest (with and without the measured features), the
  CNN (PSF-aware, 3 seeds; PSF-blind, 1) and the hybrid CNN (3 seeds). MCC, galaxy recall and star
  recall are plotted against the held-out field's r FWHM. The test field stays out of all of it.
  The kind with the best mean MCC is what ``stargal train`` ships by default.
* **Star-richer mixes** (:func:`mix_scores`): the training fields all hold about half galaxies, so
  leaving one out cannot show what estimating a field's own mix (``stargal predict --field-prior``)
  does where the mix differs. Each held-out field's predictions are also scored on random subsets
  with fewer galaxies (:data:`SHIFT_MIXES`), with and without the field prior estimated from
  that subset alone.
* **Test field**: the same models fitted on the train split, scored on the test field.

Writes ``seeing_psf.csv``, ``seeing_lofo.csv``, ``seeing_lofo.png`` and ``seeing_test.csv``.
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from stargal.calibration import adapt_to_field
from stargal.catalogs import labels_to_y
from stargal.sdss import BANDS
from stargal.training import build_pipeline, evaluate_predictions, fit_pipeline

from .common import StageResult, fmt, markdown_table, render_macro, render_template, write_csv

__all__ = ["psf_table", "star_fwhms", "star_check", "psf_markdown", "psfield_comparison", "psfield_markdown",
           "lofo_tasks", "run_lofo", "lofo", "per_field", "choose_default", "mix_scores", "N_SEEDS",
           "DEFAULT_CANDIDATES", "SHIFT_MIXES", "SHIFT_DRAWS", "run"]

_METRICS = ("mcc", "recall_galaxy", "recall_star", "balanced_accuracy", "roc_auc")
#: Galaxy fractions a held-out field is resampled to (star-richer than the training fields' ~0.5, as
#: fields towards the Galactic plane are), and the random subsets drawn per fraction.
SHIFT_MIXES = (0.1, 0.2, 0.3)
SHIFT_DRAWS = 20


def psf_table(fields, fetcher, source="stars") -> pd.DataFrame:
    """FWHM (arcsec) per band of each field's PSF model, its source and star count."""
    from stargal.frames import Field
    from stargal.psf import field_psf

    rows = []
    for fid in fields:
        field = Field(fid, fetcher)
        model = field_psf(field, fetcher, source=source)
        row = {"field": fid}
        for b in BANDS:
            row[f"fwhm_{b}"] = float(model.fwhm(b))
        for b in BANDS:
            row[f"source_{b}"] = model.source[b]
            row[f"n_stars_{b}"] = int(model.n_stars[b])
        for b in BANDS:
            row[f"star_ratio_{b}"] = star_check(field, model, b)
        rows.append(row)
    return pd.DataFrame(rows)


def star_fwhms(field, model, band):
    """FWHM (pixels) of the band's PSF stars' own stamps and of ``model`` drawn at each of them.

    The stars are the band's PSF-star candidates (:func:`stargal.psf.psf_star_table`: found
    without catalog labels; stamps without positive flux left out); the model is drawn at each
    star's position with the cutter's sub-pixel resampling, and both are measured alike
    (:func:`stargal.psf.measure_fwhm` on unit-sum stamps). Returns ``(x, y, own, there)``.
    """
    from stargal.psf import PSF_STAMP, measure_fwhm, psf_star_table

    table = psf_star_table(field, band, PSF_STAMP)
    stamps = table["stamps"].astype(float)
    flux = stamps.sum(axis=(1, 2))
    ok = flux > 0
    x, y = table["x"][ok], table["y"][ok]
    if not ok.any():
        return x, y, np.zeros(0), np.zeros(0)
    own = measure_fwhm(stamps[ok] / flux[ok, None, None])
    there = measure_fwhm(model.stamps(band, x, y, PSF_STAMP, resampled=True))
    return x, y, own, there


def star_check(field, model, band) -> float:
    """Median over the PSF stars of the model's FWHM at each star over the star's own (label-free).

    See :func:`star_fwhms`. 1 means the model is as broad as the stars it stands for. Star by star, so
    that a model that follows the PSF across the frame is compared with each star where it stands. NaN
    for a model that is not star-based or a band without candidates.
    """
    if model.source[band] != "stars":
        return float("nan")
    _, _, own, there = star_fwhms(field, model, band)
    ratio = there / own if own.size else np.zeros(0)
    ratio = ratio[np.isfinite(ratio)]
    return float(np.median(ratio)) if ratio.size else float("nan")


#: The mirror's field with SDSS's own PSF model (psField), to check our star-based estimate against.
PSFIELD_FIELD = "2583-2-136"
#: "Near the frame centre" for the psField comparison: PSF stars within this many pixels of it.
CENTRE_RADIUS_PX = 400.0


def psfield_comparison(fetcher, fid=PSFIELD_FIELD) -> pd.DataFrame:
    """Our star-based PSF vs SDSS's psField of ``fid``, per band, at the frame centre and at the stars.

    Columns: ``band``, ``fwhm_stars``, ``fwhm_psfield`` (arcsec, at the frame centre), ``ratio``,
    ``n_stars``, ``sum_abs_diff`` (sum of |difference| of the unit-sum 25 x 25 stamps) and
    ``max_diff_rel`` (largest |difference| over the psField's peak); and, at the positions of the
    band's PSF stars (:func:`stargal.psf.psf_star_table`: the stamps our model is built from),
    the median FWHM of **the stars' own stamps** (``fwhm_star_stamps``) and of both models drawn
    there with the same sub-pixel resampling (``fwhm_stars_at_stars``, ``fwhm_psfield_at_stars``,
    ``ratio_at_stars``): the data both models should reproduce. Empty when the field has no
    psField.
    """
    from stargal.frames import Field
    from stargal.psf import PSF_STAMP, field_psf, measure_fwhm, psfield_psf

    ps = psfield_psf(fid, fetcher)
    if ps is None:
        return pd.DataFrame()
    field = Field(fid, fetcher)
    st = field_psf(field, fetcher, source="stars")
    rows = []
    for b in BANDS:
        ny, nx = field.frame(b).shape
        x, y = np.array([(nx - 1) / 2]), np.array([(ny - 1) / 2])
        a, c = st.stamps(b, x, y, PSF_STAMP)[0].astype(float), ps.stamps(b, x, y, PSF_STAMP)[0].astype(float)
        row = {"band": b, "fwhm_stars": float(st.fwhm(b)), "fwhm_psfield": float(ps.fwhm(b)),
               "ratio": float(st.fwhm(b) / ps.fwhm(b)), "n_stars": int(st.n_stars[b]),
               "source": st.source[b], "sum_abs_diff": float(np.abs(a - c).sum()),
               "max_diff_rel": float(np.abs(a - c).max() / c.max())}
        sx, sy, own, ours = star_fwhms(field, st, b)
        if own.size:
            scale = st.models[b].pixel_scale
            own, ours = own * scale, ours * scale
            theirs = measure_fwhm(ps.stamps(b, sx, sy, PSF_STAMP, resampled=True)) * scale
            row.update(n_star_stamps=int(own.size), fwhm_star_stamps=float(np.nanmedian(own)),
                       fwhm_stars_at_stars=float(np.nanmedian(ours)),
                       fwhm_psfield_at_stars=float(np.nanmedian(theirs)),
                       ratio_at_stars=float(np.nanmedian(ours) / np.nanmedian(theirs)))
            # the stars nearest the frame centre, where the target compares the two models
            near = np.hypot(sx - x[0], sy - y[0]) <= CENTRE_RADIUS_PX
            row.update(n_centre=int(near.sum()),
                       fwhm_star_stamps_centre=float(np.nanmedian(own[near])) if near.any() else np.nan,
                       fwhm_stars_centre=float(np.nanmedian(ours[near])) if near.any() else np.nan,
                       fwhm_psfield_centre=float(np.nanmedian(theirs[near])) if near.any() else np.nan)
        rows.append(row)
    field.release()
    return pd.DataFrame(rows)


def psfield_markdown(cmp: pd.DataFrame, fid=PSFIELD_FIELD) -> str:
    """The comparison as a report paragraph with its tables (``templates/alignment.md.j2``, macro ``psfield``)."""
    values = {"fid": fid, "centre_table": None, "met": None, "worst_band": None, "worst_ratio": None,
              "stars_table": None, "dev_ours": None, "dev_psfield": None, "dev_band": None,
              "centre_stars_table": None, "centre_radius": f"{CENTRE_RADIUS_PX:.0f}"}
    if cmp.empty:
        return render_macro("alignment.md.j2", "psfield", **values)
    values["centre_table"] = markdown_table(pd.DataFrame(
        [[r.band, fmt(r.fwhm_stars, 3), fmt(r.fwhm_psfield, 3), fmt(r.ratio, 3), str(r.n_stars),
          fmt(r.sum_abs_diff, 3), fmt(r.max_diff_rel, 3)] for r in cmp.itertuples(index=False)],
        columns=["band", "FWHM ours (″)", "FWHM psField (″)", "ratio", "stars used", "Σ abs difference",
                 "max difference / peak"]))
    columns = ["band", "stars", "FWHM of the stars' own stamps (″)", "our model there (″)", "psField there (″)",
               "ours / stars", "psField / stars"]
    gri = cmp[cmp["band"].isin(["g", "r", "i"])]
    worst = gri.loc[(gri["ratio"] - 1).abs().idxmax()]
    values.update(met=bool(((gri["ratio"] - 1).abs() <= 0.05).all()), worst_band=worst["band"],
                  worst_ratio=fmt(worst["ratio"], 3))
    if "fwhm_star_stamps" in cmp:
        values["stars_table"] = markdown_table(pd.DataFrame(
            [[r.band, str(r.n_star_stamps), fmt(r.fwhm_star_stamps, 3), fmt(r.fwhm_stars_at_stars, 3),
              fmt(r.fwhm_psfield_at_stars, 3), fmt(r.fwhm_stars_at_stars / r.fwhm_star_stamps, 3),
              fmt(r.fwhm_psfield_at_stars / r.fwhm_star_stamps, 3)] for r in cmp.itertuples(index=False)],
            columns=columns))
        dev_ours = float((cmp["fwhm_stars_at_stars"] / cmp["fwhm_star_stamps"] - 1).abs().max())
        dev_ps = (cmp["fwhm_psfield_at_stars"] / cmp["fwhm_star_stamps"] - 1).abs()
        values.update(dev_ours=fmt(100 * dev_ours, 1), dev_psfield=fmt(100 * float(dev_ps.max()), 1),
                      dev_band=cmp.loc[dev_ps.idxmax(), "band"])
    if "n_centre" in cmp and (cmp["n_centre"] > 0).any():
        values["centre_stars_table"] = markdown_table(pd.DataFrame(
            [[r.band, str(r.n_centre), fmt(r.fwhm_star_stamps_centre, 3), fmt(r.fwhm_stars_centre, 3),
              fmt(r.fwhm_psfield_centre, 3), fmt(r.fwhm_stars_centre / r.fwhm_star_stamps_centre, 3),
              fmt(r.fwhm_psfield_centre / r.fwhm_star_stamps_centre, 3)] for r in cmp.itertuples(index=False)],
            columns=["band", f"stars within {CENTRE_RADIUS_PX:.0f} px of the centre", "their own stamps (″)",
                     *columns[3:]]))
    return render_macro("alignment.md.j2", "psfield", **values)


def mix_scores(y, proba, mixes=SHIFT_MIXES, draws=SHIFT_DRAWS, seed=0) -> dict:
    """MCC of one field's predictions on random subsets at other galaxy fractions, with and without
    the field prior.

    For each fraction in ``mixes``, ``draws`` subsets keep as many objects as the field allows at
    that fraction (without replacement); each is scored at ``p >= 0.5`` as it is and after
    :func:`stargal.calibration.adapt_to_field` estimated the subset's galaxy fraction from its
    probabilities alone (taken as calibrated at a 50 % mix, like the leave-one-field-out rows).
    Objects without a probability are left out, as in the other metrics.

    Returns ``{'mcc_mix0.3': mean MCC, 'mcc_mix0.3_field_prior': ..., 'prior_mix0.3': mean estimated
    fraction, ...}`` (NaN for a fraction the field cannot be resampled to).

    Examples
    --------
    >>> y = np.r_[np.zeros(300), np.ones(300)]
    >>> p = np.r_[np.linspace(0.0, 0.6, 300), np.linspace(0.4, 1.0, 300)]
    >>> out = mix_scores(y, p, mixes=(0.2,), draws=2)
    >>> sorted(out)
    ['mcc_mix0.2', 'mcc_mix0.2_field_prior', 'prior_mix0.2']
    """
    from sklearn.metrics import matthews_corrcoef

    y = np.asarray(y).astype(int)
    proba = np.asarray(proba, float)
    known = np.isfinite(proba)
    y, proba = y[known], proba[known]
    gal, star = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    out = {}
    for mix in mixes:
        key = f"mix{mix:g}"
        n_gal = min(len(gal), int(len(star) * mix / (1.0 - mix)))
        n_star = min(len(star), int(n_gal * (1.0 - mix) / mix)) if n_gal else 0
        if n_gal < 1 or n_star < 1:
            out.update({f"mcc_{key}": float("nan"), f"mcc_{key}_field_prior": float("nan"),
                        f"prior_{key}": float("nan")})
            continue
        rng = np.random.default_rng([seed, int(round(mix * 1000))])
        plain, adapted, priors = [], [], []
        for _ in range(draws):
            idx = np.concatenate([rng.choice(gal, n_gal, replace=False), rng.choice(star, n_star, replace=False)])
            p, t = proba[idx], y[idx]
            moved, prior = adapt_to_field(p, 0.5)
            plain.append(matthews_corrcoef(t, (p >= 0.5).astype(int)))
            adapted.append(matthews_corrcoef(t, (moved >= 0.5).astype(int)))
            priors.append(prior)
        out.update({f"mcc_{key}": float(np.mean(plain)), f"mcc_{key}_field_prior": float(np.mean(adapted)),
                    f"prior_{key}": float(np.mean(priors))})
    return out


def _fit_score(kind, psf, config, sas_url, cache_dir, params, fit_rows, eval_rows, augmenter=None, mixes=()):
    """Fit one model and score it (runs in a worker; one torch thread); with ``mixes``, also
    :func:`mix_scores` on ``eval_rows`` (held-out training fields only, never the test field)."""
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    pipe = build_pipeline(kind, config, sas_url=sas_url, cache_dir=cache_dir, psf=psf,
                          augmenter=augmenter, params=params)
    fit_pipeline(pipe, fit_rows)
    fit_s = time.perf_counter() - t0
    proba = pipe.predict_proba(eval_rows)[:, 1]
    y = labels_to_y(eval_rows["label"])
    metrics, by_mag = evaluate_predictions(y, proba, eval_rows["psfmag_r"].to_numpy())
    out = {k: float(metrics[k]) for k in _METRICS if k in metrics}
    # The held-out field's own galaxy fraction, estimated without labels (class-weighted fit: a 50 % mix).
    adapted, prior = adapt_to_field(proba, 0.5)
    fp, _ = evaluate_predictions(y, adapted)
    out.update({f"{k}_field_prior": float(fp[k]) for k in ("mcc", "recall_galaxy", "recall_star")})
    out["prior_estimate"] = prior
    if mixes:
        out.update(mix_scores(y, proba, mixes))
    return out, by_mag, round(fit_s, 1)


#: LOFO variants: label -> (kind, psf 'aware'/'none', extra pipeline parameters, seeds). CNN-type fits are
#: averaged over :data:`N_SEEDS` seeds (single fits move by a few hundredths); the rule and forests are
#: deterministic given the study seed.
N_SEEDS = {"quick": 1, "full": 3}
#: The kinds ``stargal train`` may ship by default, and the row that stands for each.
DEFAULT_CANDIDATES = {"rule": "SDSS rule (measured)", "forest": "forest", "cnn": "CNN", "hybrid": "hybrid CNN"}


def _variants(ctx):
    seeds = [ctx.seed + k for k in range(N_SEEDS["quick" if ctx.quick else "full"])]
    return [("SDSS rule (measured)", "rule", "aware", {"rule__unmeasured": "prior"}, seeds[:1]),
            ("forest", "forest", "aware", {}, seeds[:1]),
            ("forest, aperture features only", "forest", "aware", {"features__measured": "drop"}, seeds[:1]),
            ("forest, measured features only", "forest", "aware", {"features__pixels": "drop"}, seeds[:1]),
            ("CNN, PSF-blind", "cnn", "none", {}, seeds[:1]),
            ("CNN", "cnn", "aware", {}, seeds),
            ("hybrid CNN", "hybrid", "aware", {}, seeds)]


def _label(model, psf):
    return f"{model}, PSF-blind" if psf == "none" else f"{model}, PSF-aware"


def _blind_augmenter(augmenter):
    """The final recipe's augmenter without techniques that need the PSF channels."""
    if augmenter is None:
        return None
    from sklearn.base import clone

    aug = clone(augmenter)
    if "seeing" in aug.get_params():
        aug.set_params(seeing=0.0)
    return aug


def _seeded(augmenter, seed):
    if augmenter is None:
        return None
    from sklearn.base import clone

    aug = clone(augmenter)
    return aug.set_params(random_state=seed) if "random_state" in aug.get_params() else aug


def lofo_tasks(ctx, model, kind, psf, params, augmenter=None, fields=None, variant=None, seed=None) -> list:
    """The leave-one-field-out fits of one model: ``(held_out, model, psf, args of _fit_score)``."""
    pool = ctx.rows("train", "valid")
    fields = list(fields) if fields is not None else sorted(pool["field_id"].unique())
    tasks = []
    for fid in fields:
        fit_rows, eval_rows = pool[pool["field_id"] != fid], pool[pool["field_id"] == fid]
        tasks.append((fid, variant or _label(model, psf), seed if seed is not None else ctx.seed,
                      (kind, psf, ctx.config, ctx.fetcher.base_url, str(ctx.fetcher.cache_dir),
                       params, fit_rows, eval_rows, augmenter, SHIFT_MIXES)))
    return tasks


def run_lofo(ctx, tasks) -> pd.DataFrame:
    """Run :func:`lofo_tasks` fits (``ctx.n_jobs`` workers): one row per model, seed and held-out field."""
    results = Parallel(n_jobs=ctx.n_jobs)(delayed(_fit_score)(*args) for *_, args in tasks)
    rows = []
    for (fid, variant, seed, args), (metrics, _, fit_s) in zip(tasks, results):
        rows.append({"held_out": fid, "variant": variant, "seed": int(seed), "psf": args[1],
                     "n": len(args[7]), "galaxy_fraction": float(labels_to_y(args[7]["label"]).mean()),
                     "fit_s": fit_s, **metrics})
    return pd.DataFrame(rows)


def lofo(ctx, cnn_params, forest_params, augmenter=None, fields=None, aware_cnn=None) -> pd.DataFrame:
    """Leave-one-field-out scores of every variant (one row per variant, seed and held-out field).

    ``aware_cnn``: rows of the PSF-aware CNN (study seed) already fitted this way with the same
    parameters and augmenter (the augmentation stage's choice, :func:`run_lofo`); they are reused.
    """
    aware = ctx.config.psf if ctx.config.psf != "none" else "scaled"
    tasks = []
    for variant, kind, psf, extra, seeds in _variants(ctx):
        psf = aware if psf == "aware" else "none"
        base = dict(cnn_params if kind in ("cnn", "hybrid") else forest_params if kind == "forest" else {})
        for seed in seeds:
            if variant == "CNN" and seed == ctx.seed and aware_cnn is not None:
                continue
            params = {**base, **extra}
            aug = None
            if kind in ("cnn", "hybrid"):
                params["net__random_state"] = seed
                aug = _seeded(augmenter if psf != "none" else _blind_augmenter(augmenter), seed)
            tasks += lofo_tasks(ctx, variant, kind, psf, params, aug, fields, variant=variant, seed=seed)
    frame = run_lofo(ctx, tasks)
    if aware_cnn is not None:
        frame = pd.concat([frame, aware_cnn.assign(variant="CNN", seed=ctx.seed)], ignore_index=True)
    order = {v[0]: i for i, v in enumerate(_variants(ctx))}
    return frame.sort_values(["held_out", "variant", "seed"], key=lambda c: c.map(order) if c.name == "variant" else c,
                             kind="stable").reset_index(drop=True)


def per_field(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per variant and held-out field (and the seeds' spread)."""
    metrics = [c for c in ("mcc", "recall_galaxy", "recall_star", "mcc_field_prior") if c in frame]
    metrics += [c for c in frame if c.startswith(("mcc_mix", "prior_mix"))]
    g = frame.groupby(["variant", "held_out"], sort=False)
    out = g[metrics].mean()
    out["seed_std_mcc"] = g["mcc"].std(ddof=1)
    out["n_seeds"] = g["mcc"].size()
    out["n"] = g["n"].first()
    out["galaxy_fraction"] = g["galaxy_fraction"].first()
    return out.reset_index()


def choose_default(fields: pd.DataFrame) -> tuple[str, dict]:
    """The kind with the highest mean leave-one-field-out MCC (each field's MCC averaged over seeds)."""
    means = {kind: float(fields.loc[fields["variant"] == v, "mcc"].mean())
             for kind, v in DEFAULT_CANDIDATES.items() if (fields["variant"] == v).any()}
    return max(means, key=means.get), means


def _plot(frame, fwhm, path, test_points=None):
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    styles = {"SDSS rule (measured)": ("k", "D", "-"), "forest": ("tab:orange", "s", "-"),
              "forest, aperture features only": ("tab:orange", "s", ":"),
              "forest, measured features only": ("tab:red", "v", "--"), "CNN, PSF-blind": ("tab:blue", "o", "--"),
              "CNN": ("tab:blue", "o", "-"), "hybrid CNN": ("tab:green", "^", "-")}
    for ax, (col, title) in zip(axes, (("mcc", "MCC"), ("recall_galaxy", "galaxy recall"),
                                       ("recall_star", "star recall"))):
        for variant, g in frame.groupby("variant", sort=False):
            g = g.assign(fwhm=g["held_out"].map(fwhm)).sort_values("fwhm")
            color, marker, ls = styles.get(variant, ("k", ".", "-"))
            ax.plot(g["fwhm"], g[col], marker=marker, ls=ls, color=color, label=variant)
        if test_points is not None:
            for variant, row in test_points.iterrows():
                color, marker, _ = styles.get(variant, ("k", ".", "-"))
                ax.plot([row["fwhm"]], [row[col]], marker=marker, color=color, mfc="none", ms=10, ls="none")
        ax.set_xlabel("held-out field's r seeing FWHM (″)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Leave one field out (CNN and hybrid: mean of their seeds); open symbols: the test field "
                 "(models fitted on the train split)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section5_models(ctx) -> dict:
    """The models of stage 5 whose test-field scores join this stage's test table: label -> pipeline
    fitted on the train split (not calibrated); the final CNN stands in for stage 5's when that has
    not run. Models that no stage fitted are left out."""
    fitted = ctx.artefact("baseline_models", {})
    shown = {"SDSS rule (measured)": fitted.get("rule"), "forest": fitted.get("forest"),
             "CNN": fitted.get("cnn", ctx.final_cnn()[0]), "hybrid CNN": fitted.get("hybrid")}
    return {k: v for k, v in shown.items() if v is not None}


def run(ctx) -> StageResult:
    """Stage 7: leave one field out, the test field, and the kind ``stargal train`` ships by default (section
    from ``templates/seeing.md.j2``).

    Every fit here reuses the final recipes of earlier stages: the tuned CNN parameters (artefact
    ``tuned_params``), the forest's (``forest_params``) and the CNN's augmenter (``final_augmenter``).
    The final CNN recipe's leave-one-field-out rows, fitted by the augmentation stage for its choice
    (``final_lofo``), are reused, and stage 5's models (:func:`section5_models`) join the test table.
    The per-field PSF table comes from stage 1's numbers when it ran.

    Returns
    -------
    StageResult
        Numbers: every fit, per-field means, ``default_model`` and its mean and worst MCC, the test
        table, the PSF table; no artefacts.
    """
    t0 = time.perf_counter()
    models, augmenter, aware_cnn = section5_models(ctx), ctx.artefact("final_augmenter"), ctx.artefact("final_lofo")
    cnn_params = dict(ctx.artefact("tuned_params") or {})
    cnn_params.setdefault("net__max_epochs", ctx.epochs(ctx.config.cnn["max_epochs"]))
    forest_params = dict(ctx.artefact("forest_params") or {})
    fields_all = list(ctx.config.test_fields) + sorted(ctx.rows("train", "valid")["field_id"].unique())
    done = ctx.numbers("alignment").get("psf")  # stage 1 measured the same table
    psf = pd.DataFrame(done) if done else pd.DataFrame()
    if psf.empty or not set(fields_all) <= set(psf["field"]):
        psf = psf_table(fields_all, ctx.fetcher, ctx.config.psf_source)
    psf = psf.set_index("field").loc[fields_all].reset_index()
    write_csv(ctx.out_dir / "seeing_psf.csv", psf)
    fwhm = dict(zip(psf["field"], psf["fwhm_r"]))

    frame = lofo(ctx, cnn_params, forest_params, augmenter=augmenter, aware_cnn=aware_cnn)
    write_csv(ctx.out_dir / "seeing_lofo.csv", frame)
    fields = per_field(frame)
    write_csv(ctx.out_dir / "seeing_lofo_fields.csv", fields)
    default, default_means = choose_default(fields)

    # Test field: the PSF-blind CNN and the one-branch forests fitted like the final models; the others
    # are stage 5's (fitted on the same train split).
    test, train = ctx.rows("test"), ctx.rows("train")
    aware = ctx.config.psf if ctx.config.psf != "none" else "scaled"
    jobs = [("CNN, PSF-blind", "cnn", "none", cnn_params, _blind_augmenter(augmenter)),
            ("forest, aperture features only", "forest", aware, {**forest_params, "features__measured": "drop"}, None),
            ("forest, measured features only", "forest", aware, {**forest_params, "features__pixels": "drop"}, None)]
    extra = Parallel(n_jobs=ctx.n_jobs)(
        delayed(_fit_score)(kind, p, ctx.config, ctx.fetcher.base_url, str(ctx.fetcher.cache_dir), params,
                            train, test, aug) for _, kind, p, params, aug in jobs)
    trows = [{"variant": v, **metrics} for (v, *_), (metrics, _, _) in zip(jobs, extra)]
    y_test = labels_to_y(test["label"])
    for variant, pipe in models.items():
        m, _ = evaluate_predictions(y_test, pipe.predict_proba(test)[:, 1])
        trows.append({"variant": variant, **{k: float(m[k]) for k in _METRICS if k in m}})
    order = {v[0]: i for i, v in enumerate(_variants(ctx))}
    tframe = pd.DataFrame(trows).sort_values("variant", key=lambda c: c.map(order), kind="stable")
    write_csv(ctx.out_dir / "seeing_test.csv", tframe)
    test_fwhm = fwhm[ctx.config.test_fields[0]]
    _plot(fields, fwhm, ctx.out_dir / "seeing_lofo.png", tframe.set_index("variant").assign(fwhm=test_fwhm))

    spread = fields.groupby("variant", sort=False)["mcc"].agg(["mean", "std", "min", "max"])
    spread = spread.loc[sorted(spread.index, key=lambda v: order.get(v, 99))]
    seed_note = ", ".join(f"{v} {fmt(fields[fields['variant'] == v]['seed_std_mcc'].mean())}"
                          for v in spread.index if fields[fields["variant"] == v]["n_seeds"].max() > 1)

    lofo_table, recall_table = _lofo_tables(fields, spread, fwhm)
    test_table = markdown_table(pd.DataFrame(
        [[r.variant, fmt(r.mcc), fmt(r.recall_galaxy), fmt(r.recall_star), fmt(r.balanced_accuracy),
          fmt(getattr(r, "roc_auc", float("nan")))] for r in tframe.itertuples(index=False)],
        columns=["model (test field " + ", ".join(ctx.config.test_fields) + f", r FWHM {fmt(test_fwhm, 2)}″)",
                 "MCC", "galaxy recall", "star recall", "balanced accuracy", "ROC AUC"]))
    fp_rows = [[variant, fmt(g["mcc"].mean()), fmt(g["mcc_field_prior"].mean()),
                f"{int((g['mcc_field_prior'] > g['mcc']).sum())} of {len(g)}"]
               for variant, g in fields.groupby("variant", sort=False) if "mcc_field_prior" in g]
    fp_table = markdown_table(pd.DataFrame(fp_rows, columns=[
        "model", "mean MCC", "mean MCC, field prior", "held-out fields where the field prior helps"]))
    shift_table, shift_note, shift = _shift_table(fields, DEFAULT_CANDIDATES[default])
    d = fields[fields["variant"] == DEFAULT_CANDIDATES[default]]
    default_mean, default_worst = float(d["mcc"].mean()), float(d["mcc"].min())
    worst_field = d.loc[d["mcc"].idxmin(), "held_out"]
    n_seeds = N_SEEDS["quick" if ctx.quick else "full"]
    md = render_template(
        "seeing.md.j2", n_seeds=n_seeds, seed_note=seed_note, lofo_table=lofo_table, recall_table=recall_table,
        default_means=", ".join(f"{k} {fmt(v)}" for k, v in sorted(default_means.items(), key=lambda kv: -kv[1])),
        default=default, worst_field=worst_field, default_worst=fmt(default_worst), fp_table=fp_table,
        test_table=test_table, shift_table=shift_table, shift_note=shift_note, shift_draws=SHIFT_DRAWS,
        held_out_fractions=f"{fmt(fields['galaxy_fraction'].min(), 2)}–{fmt(fields['galaxy_fraction'].max(), 2)}")
    numbers = {
        "lofo": frame.to_dict(orient="records"),
        "lofo_fields": fields.to_dict(orient="records"),
        "mcc_spread": spread.reset_index().to_dict(orient="records"),
        "default_model": default,
        "default_means": default_means,
        "default_mean_mcc": default_mean,
        "default_worst_mcc": default_worst,
        "default_worst_field": worst_field,
        "mix_shift": shift,
        "test": tframe.to_dict(orient="records"),
        "psf": psf.to_dict(orient="records"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return StageResult(numbers=numbers, markdown=md)


def _shift_table(fields: pd.DataFrame, default_variant: str) -> tuple[str, str, list]:
    """The star-richer mixes (:func:`mix_scores`, seed means per held-out field): per candidate kind
    and galaxy fraction, mean MCC without and with the field prior, the fields where the prior
    helps and its mean estimate. Returns the table, one sentence on the shipped default and the
    rows."""
    rows = []
    for variant in DEFAULT_CANDIDATES.values():
        g = fields[fields["variant"] == variant]
        for mix in SHIFT_MIXES:
            key = f"mix{mix:g}"
            if g.empty or f"mcc_{key}" not in g or not g[f"mcc_{key}"].notna().any():
                continue
            plain, moved = g[f"mcc_{key}"], g[f"mcc_{key}_field_prior"]
            rows.append({"variant": variant, "galaxy_fraction": mix, "mcc": float(plain.mean()),
                         "mcc_field_prior": float(moved.mean()), "helps": int((moved > plain).sum()),
                         "fields": int(plain.notna().sum()), "prior_estimate": float(g[f"prior_{key}"].mean())})
    if not rows:
        return "(no held-out field could be resampled)", "", rows
    table = markdown_table(pd.DataFrame(
        [[r["variant"], fmt(r["galaxy_fraction"], 1), fmt(r["mcc"]), fmt(r["mcc_field_prior"]),
          f"{r['helps']} of {r['fields']}", fmt(r["prior_estimate"])] for r in rows],
        columns=["model", "galaxy fraction", "mean MCC", "mean MCC, field prior",
                 "held-out fields where the field prior helps", "estimated fraction (mean)"]))
    mine = [r for r in rows if r["variant"] == default_variant]
    parts = [f"{fmt(r['galaxy_fraction'], 1)}: {fmt(r['mcc'])} → {fmt(r['mcc_field_prior'])}" for r in mine]
    better = sum(r["mcc_field_prior"] > r["mcc"] for r in mine)
    estimates = ", ".join(f"{fmt(r['prior_estimate'])} for {fmt(r['galaxy_fraction'], 1)}" for r in mine)
    note = (f"For the shipped default ({default_variant}), mean MCC without → with the field prior at each "
            f"galaxy fraction: {'; '.join(parts)}; the prior is higher in {better} of {len(mine)}. Its estimates "
            f"of the fraction: {estimates}.") if mine else ""
    return table, note, rows


def _lofo_tables(fields: pd.DataFrame, spread: pd.DataFrame, fwhm: dict) -> tuple[str, str]:
    """Per held-out field: its r FWHM, size and every variant's MCC (last row: mean ± std (worst)), and
    every variant's galaxy / star recall; variants in the order of ``spread``'s index."""
    scores, recalls = [], []
    for fid, g in fields.groupby("held_out"):
        g = g.set_index("variant")
        scores.append([fid, fmt(fwhm[fid], 2), int(g["n"].iloc[0]),
                       *(fmt(g.loc[v, "mcc"]) if v in g.index else "–" for v in spread.index)])
        recalls.append([fid, *(f"{fmt(g.loc[v, 'recall_galaxy'])} / {fmt(g.loc[v, 'recall_star'])}"
                               if v in g.index else "–" for v in spread.index)])
    scores.append(["**mean ± std (worst)**", "", "",
                   *(f"{fmt(r['mean'])} ± {fmt(r['std'])} ({fmt(r['min'])})" for _, r in spread.iterrows())])
    scores = pd.DataFrame(scores, columns=["held-out field", "r FWHM (″)", "n", *(f"{v} MCC" for v in spread.index)])
    recalls = pd.DataFrame(recalls, columns=["held-out field", *(f"{v} gal./star recall" for v in spread.index)])
    return markdown_table(scores), markdown_table(recalls)


def psf_markdown(psf: pd.DataFrame, test_fields=()) -> str:
    """The per-field PSF table for the data section of the report (``templates/alignment.md.j2``, macro
    ``psf``)."""
    rows = []
    for r in psf.itertuples(index=False):
        d = r._asdict()
        rows.append([d["field"], "test" if d["field"] in test_fields else "train/valid",
                     *(fmt(d[f"fwhm_{b}"], 2) for b in BANDS), f"{d['source_r']} ({d['n_stars_r']})"])
    table = markdown_table(pd.DataFrame(rows, columns=["field", "role", *(f"{b} FWHM (″)" for b in BANDS),
                                                       "PSF source (stars used, r)"]))
    ratios_table = worst = None
    if any(f"star_ratio_{b}" in psf for b in BANDS):
        ratios = [[d["field"], *(fmt(d.get(f"star_ratio_{b}"), 3) for b in BANDS)]
                  for d in (r._asdict() for r in psf.itertuples(index=False))]
        ratios_table = markdown_table(pd.DataFrame(ratios, columns=["field", *BANDS]))
        worst = f"{np.nanmax(np.abs(psf[[f'star_ratio_{b}' for b in BANDS]].to_numpy(float) - 1.0)):.3f}"
    return render_macro("alignment.md.j2", "psf", table=table, ratios_table=ratios_table, worst=worst)
