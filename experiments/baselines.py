"""Stage 5 -- baselines: SDSS's rule (measured), the CNN, the hybrid CNN, the forest, the majority class.

Same splits, same metrics, and accuracy/MCC per r-magnitude bin for each model. The rule
(:class:`stargal.rule.SDSSTypeRule` on :class:`stargal.photo.SDSSPhotometry`) learns one number, its
boundary, on the training split; it is the reference line of every table. Writes
``baselines_metrics.csv``, ``baselines_by_magnitude.csv``, ``baselines_by_magnitude.png``,
``forest_cv_results.csv`` and ``forest_importances.csv``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from sklearn.base import clone

from stargal.calibration import adapt_to_field, calibrate_pipeline
from stargal.metrics import mcc_difference, mcc_interval
from stargal.tuning import cv_results_frame, grid_search

from .common import StageResult, fmt, markdown_table, render_template, write_csv

__all__ = ["run", "LABEL_NOTE", "RULE", "RULE_CAL", "CNN_CAL", "HYBRID_CAL", "FOREST_CAL", "SHIPPED", "CALIBRATION",
           "MAG_BINS"]

MAG_BINS = (-np.inf, 18.0, 19.0, 20.0, 21.0, 22.0, np.inf)
#: How p_galaxy is calibrated on the validation groups (``stargal.calibration.calibrate_pipeline``).
CALIBRATION = "sigmoid"


#: Said next to every test-field number: where its labels come from.
LABEL_NOTE = (
    "**Read the test-field numbers with the labels' origin in mind.** The mirror's catalogs (labels included) "
    "were made by re-measuring the frames the way SDSS types objects (`../shared/sdss/README.md`, "
    "\"How the types were measured\"), so a faithful measurement of the same pixels agrees with these labels "
    "better than it would with SDSS's own types (on a field with real SDSS types the reconstruction agrees "
    "with SDSS on 96.4 % of objects, 93 % at r = 21–22). The honest judges of the rule and of the models "
    "built on the measurement are held-out fields (section 7) and fields with SDSS's own types."
)


class _FieldPrior:
    """A fitted model whose p_galaxy is moved, field by field, to the field's own galaxy fraction.

    The fraction is estimated from the model's probabilities on that field's objects, without
    labels (:func:`stargal.calibration.adapt_to_field`); what ``stargal predict --field-prior``
    does for a list with many objects per field.
    """

    def __init__(self, model, calibration_fraction):
        self.model = model
        self.calibration_fraction = calibration_fraction
        self.priors_ = {}

    def predict_proba(self, rows):
        p = self.model.predict_proba(rows)[:, 1]
        out = np.empty_like(p)
        fields = rows["field_id"].astype(str).to_numpy()
        for fid in np.unique(fields):
            sel = fields == fid
            out[sel], self.priors_[fid] = adapt_to_field(p[sel], self.calibration_fraction)
        return np.column_stack([1 - out, out])

    def predict(self, rows):
        return (self.predict_proba(rows)[:, 1] >= 0.5).astype(int)


def _forest(ctx):
    """Tune the forest with the same group-aware CV as the CNN, then refit on train."""
    train = ctx.rows("train")
    grid = {f"forest__{k}": list(v) for k, v in ctx.config.forest_grid.items()}
    if ctx.quick:
        grid = {k: v[:1] for k, v in grid.items()}
        grid["forest__n_estimators"] = [100]
    search = grid_search(ctx.pipeline("forest"), grid, train, ctx.y(train), train["group"].to_numpy(),
                         cv=min(2, ctx.config.cv_folds) if ctx.quick else ctx.config.cv_folds,
                         n_jobs=ctx.n_jobs, random_state=ctx.seed)
    write_csv(ctx.out_dir / "forest_cv_results.csv", cv_results_frame(search))
    best = search.best_estimator_
    feats = best.named_steps["features"]
    names = feats.get_feature_names_out()
    imp = pd.DataFrame({"feature": names, "importance": best.named_steps["forest"].feature_importances_})
    imp = imp.sort_values("importance", ascending=False)
    write_csv(ctx.out_dir / "forest_importances.csv", imp)
    return best, search, imp


def _plot_by_magnitude(by_mag: dict, path):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, tab in by_mag.items():
        centres = np.arange(len(tab))
        for ax, col in zip(axes, ("accuracy", "mcc")):
            ax.plot(centres, tab[col], "o-", label=name)
    for ax, col in zip(axes, ("accuracy", "MCC")):
        first = next(iter(by_mag.values()))
        ax.set_xticks(np.arange(len(first)))
        ax.set_xticklabels([f"{b}\n(n={n})" for b, n in zip(first["bin"], first["n"])], fontsize=7)
        ax.set_xlabel("r PSF magnitude bin (test field)")
        ax.set_ylabel(col)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _reliability(models: dict, rows, y, path, n_bins=10) -> pd.DataFrame:
    """Brier score, expected calibration error and a reliability diagram of p_galaxy on ``rows``."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfectly calibrated")
    out = []
    for name, model in models.items():
        p = model.predict_proba(rows)[:, 1]
        edges = np.linspace(0, 1, n_bins + 1)
        idx = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
        ece = sum(abs(p[idx == b].mean() - y[idx == b].mean()) * (idx == b).mean()
                  for b in range(n_bins) if (idx == b).any())
        out.append({"model": name, "brier": float(brier_score_loss(y, p)), "ece": float(ece),
                    "mean_p_galaxy": float(p.mean()), "galaxy_fraction": float(y.mean())})
        frac, mean_p = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
        ax.plot(mean_p, frac, "o-", ms=3, label=name)
    ax.set_xlabel("predicted p_galaxy")
    ax.set_ylabel("observed galaxy fraction")
    ax.set_title("reliability on the test field", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return pd.DataFrame(out)


#: Row names of the models (the headline table's first column).
RULE, RULE_CAL = "SDSS rule (measured)", "SDSS rule (measured, calibrated)"
CNN_CAL, HYBRID_CAL, FOREST_CAL = "CNN (calibrated)", "hybrid CNN (calibrated)", "random forest (calibrated)"
#: The calibrated model of each kind (what ``stargal train`` ships for that kind).
SHIPPED = {"rule": RULE_CAL, "cnn": CNN_CAL, "hybrid": HYBRID_CAL, "forest": FOREST_CAL}


#: Bootstrap resamples of the test field's objects behind each MCC interval (:func:`stargal.metrics.mcc_interval`).
N_BOOT = 2000
#: Paired test-field MCC differences the report gives an interval for: (model, against).
DIFFERENCES = ((FOREST_CAL, RULE), (FOREST_CAL, CNN_CAL), (HYBRID_CAL, CNN_CAL), (FOREST_CAL, HYBRID_CAL))


def _span(interval) -> str:
    return "–" if interval is None else f"{fmt(interval[0])}–{fmt(interval[1])}"


def _test_intervals(models: dict, test: pd.DataFrame, y: np.ndarray, seed: int):
    """95 % bootstrap intervals of each model's test MCC (objects resampled; abstentions left out, as in
    the metrics) and of the paired differences :data:`DIFFERENCES`: ``({name: (low, high)},
    {"a − b": (difference, low, high)})``. The majority class (MCC 0 in every resample) gets none."""
    pred = {}
    for name, model in models.items():
        if name == "majority class":
            continue
        p = model.predict_proba(test)[:, 1]
        pred[name] = np.where(np.isfinite(p), (p >= 0.5).astype(float), np.nan)
    intervals = {}
    for name, p in pred.items():
        known = np.isfinite(p)
        intervals[name] = mcc_interval(y[known], p[known].astype(int), n_resamples=N_BOOT, random_state=seed)
    differences = {}
    for a, b in DIFFERENCES:
        if a in pred and b in pred:
            known = np.isfinite(pred[a]) & np.isfinite(pred[b])
            differences[f"{a} − {b}"] = mcc_difference(y[known], pred[a][known].astype(int), pred[b][known].astype(int),
                                                      n_resamples=N_BOOT, random_state=seed)
    return intervals, differences


def run(ctx) -> StageResult:
    """Stage 5: every model on the same splits, calibrated on the validation groups, scored on the test field
    (section from ``templates/baselines.md.j2``).

    The CNN is the study's final CNN (:meth:`~experiments.common.StudyContext.final_cnn`), fitted here
    with the defaults when no earlier stage made one. The hybrid CNN is fitted here with the final
    recipe (artefacts ``tuned_params`` and ``final_augmenter``), its measured features added.

    Returns
    -------
    StageResult
        Numbers: test metrics per model, the forest's search, recalls, reliability, ``headline`` (the
        test-field table), ``rule_boundary``. Artefacts: ``baseline_models`` (``rule``, ``forest``,
        ``cnn``, ``hybrid`` as fitted on the train split), ``calibrated_models`` (the same kinds
        calibrated: what ``stargal train`` ships for each) and ``forest_params`` (the forest's best
        parameters).
    """
    cnn = ctx.final_cnn()[0]
    hybrid_params, augmenter = ctx.artefact("tuned_params"), ctx.artefact("final_augmenter")
    train = ctx.rows("train")
    epochs = {"net__max_epochs": ctx.epochs(ctx.config.cnn["max_epochs"])}
    if cnn is None:
        cnn = ctx.fit(ctx.pipeline("cnn", params=epochs), train)
    rule = ctx.fit(ctx.pipeline("rule", params={"rule__unmeasured": "prior"}), train)
    hybrid = ctx.fit(ctx.pipeline("hybrid", augmenter=None if augmenter is None else clone(augmenter),
                                  params={**epochs, **(hybrid_params or {})}), train)
    forest, search, imp = _forest(ctx)
    majority = ctx.fit(ctx.pipeline("majority"), train)
    # Calibrated p_galaxy: Platt scaling of the frozen models on the validation sky groups (never test).
    valid = ctx.rows("valid")
    cal = {name: calibrate_pipeline(model, valid, ctx.y(valid), method=CALIBRATION)
           for name, model in (("rule", rule), ("cnn", cnn), ("hybrid", hybrid), ("forest", forest))}
    cnn_cal, forest_cal = cal["cnn"], cal["forest"]
    models = {RULE: rule, RULE_CAL: cal["rule"],
              CNN_CAL: cnn_cal, "CNN (calibrated, field prior)": _FieldPrior(
                  cnn_cal, cnn_cal.calibration_fraction_), "CNN": cnn,
              HYBRID_CAL: cal["hybrid"], "hybrid CNN": hybrid,
              FOREST_CAL: forest_cal, "random forest (calibrated, field prior)": _FieldPrior(
                  forest_cal, forest_cal.calibration_fraction_), "random forest": forest,
              "majority class": majority}
    boundary = float(rule.named_steps["rule"].boundary_)

    test = ctx.rows("test")
    rows, by_mag = [], {}
    for name, model in models.items():
        for split in ("train", "valid", "test"):
            m, mag = ctx.evaluate(model, ctx.rows(split), by_magnitude=(split == "test"))
            rows.append({"model": name, "split": split, **{k: v for k, v in m.items() if np.isscalar(v)}})
            if mag is not None:
                by_mag[name] = mag
    metrics = pd.DataFrame(rows)
    write_csv(ctx.out_dir / "baselines_metrics.csv", metrics)
    mag_frame = pd.concat([t.assign(model=n) for n, t in by_mag.items()], ignore_index=True)
    write_csv(ctx.out_dir / "baselines_by_magnitude.csv", mag_frame)
    _plot_by_magnitude(by_mag, ctx.out_dir / "baselines_by_magnitude.png")

    t = metrics[metrics["split"] == "test"].set_index("model")
    intervals, differences = _test_intervals(models, test, ctx.y(test), ctx.seed)
    headline = markdown_table(pd.DataFrame(
        [[name, fmt(r["accuracy"]), fmt(r["balanced_accuracy"]), fmt(r["mcc"]), _span(intervals.get(name)),
          fmt(r.get("roc_auc")), fmt(r["recall_galaxy"]), fmt(r["recall_star"])]
         for name, r in ((n, t.loc[n]) for n in models)],
        columns=["model (test field " + ", ".join(ctx.config.test_fields) + f", n={len(test)})", "accuracy",
                 "balanced accuracy", "MCC", "MCC 95 % interval", "ROC AUC", "galaxy recall", "star recall"]))

    rel = _reliability({k: v for k, v in models.items() if k != "majority class"}, test, ctx.y(test),
                       ctx.out_dir / "baselines_reliability.png")
    write_csv(ctx.out_dir / "baselines_reliability.csv", rel)
    rel_table = markdown_table(rel.rename(columns={"brier": "Brier score", "ece": "ECE (10 bins)",
                                                   "mean_p_galaxy": "mean p_galaxy",
                                                   "galaxy_fraction": "galaxy fraction"}))
    mag_table, recall_table = _magnitude_tables(by_mag, list(models))
    # Predictions on the whole test field once, then subsets (a field prior is estimated on the whole field).
    test_pred = {name: model.predict(test) for name, model in models.items()}
    faint_stars = (test["psfmag_r"].to_numpy() > 22.0) & (ctx.y(test) == 0)
    faint_star = {name: float((test_pred[name][faint_stars] == 0).mean()) if faint_stars.any() else float("nan")
                  for name in models if name != "majority class"}
    faint = faint_stars
    faint_objects = test["psfmag_r"].to_numpy() > 22.0
    faint_accuracy = {name: float((test_pred[name][faint_objects] == ctx.y(test)[faint_objects]).mean())
                      for name in models if name != "majority class"} if faint_objects.any() else {}

    # Accuracy of each model on bright (r < 20) and faint (r >= 21) test objects, from the predictions.
    mags = test["psfmag_r"].to_numpy()
    y_test = ctx.y(test)
    ranges = {"r < 20": mags < 20, "20 <= r < 21": (mags >= 20) & (mags < 21), "r >= 21": mags >= 21}
    acc_ranges = {name: {k: float((test_pred[name][m] == y_test[m]).mean()) for k, m in ranges.items()}
                  for name, model in models.items() if name != "majority class"}
    range_text = "; ".join(
        f"{name}: " + ", ".join(f"{fmt(v)} at {k}" for k, v in acc.items()) for name, acc in acc_ranges.items())
    top = ", ".join(f"`{f}`" for f in imp["feature"].head(5))
    gal_frac = float(ctx.y(ctx.rows("train")).mean())
    majority_label = "galaxy" if gal_frac > 0.5 else "star"
    n_unmeasured = int((rule[:-1].transform(test)["fit_flag"] != "").sum())
    field_priors = ", ".join(f"{n.split(' (')[0]} {fmt(m.priors_.get(ctx.config.test_fields[0], float('nan')))}"
                             for n, m in models.items() if isinstance(m, _FieldPrior))
    md = render_template(
        "baselines.md.j2", headline=headline, label_note=LABEL_NOTE, rule=RULE, boundary=fmt(boundary),
        n_unmeasured=n_unmeasured, n_test=len(test), forest_params=f"{search.best_params_}",
        forest_cv_mcc=fmt(search.best_score_), top_features=top, rel_table=rel_table, field_priors=field_priors,
        test_gal_frac=fmt(ctx.y(test).mean()), calibration=CALIBRATION, valid_gal_frac=fmt(ctx.y(valid).mean()),
        mag_table=mag_table, recall_table=recall_table, n_faint_stars=int((faint & (ctx.y(test) == 0)).sum()),
        faint_star_recall=", ".join(f"{n} {fmt(v)}" for n, v in faint_star.items()), range_text=range_text,
        majority_label=majority_label, train_gal_pct=fmt(100 * gal_frac, 1), n_boot=N_BOOT,
        differences=[f"{k}: {d:+.3f} (95 % interval {lo:+.3f} to {hi:+.3f})"
                     for k, (d, lo, hi) in differences.items()])
    numbers = {
        "test": {name: {k: float(t.loc[name][k]) for k in ("accuracy", "balanced_accuracy", "mcc", "roc_auc")
                        if k in t.columns} for name in models},
        "forest_best_params": search.best_params_,
        "forest_cv_mcc": float(search.best_score_),
        "accuracy_by_range": acc_ranges,
        "faint_star_recall": faint_star,
        "faint_accuracy": faint_accuracy,
        "test_recalls": {name: {k: float(t.loc[name][k]) for k in ("recall_galaxy", "recall_star")}
                         for name in models},
        "reliability": rel.to_dict(orient="records"),
        "headline": headline,
        "test_mcc_interval": intervals,
        "test_mcc_difference": differences,
        "rule_boundary": boundary,
        "n_unmeasured_test": n_unmeasured,
    }
    artefacts = {"baseline_models": {"rule": rule, "forest": forest, "cnn": cnn, "hybrid": hybrid},
                 "calibrated_models": dict(cal), "forest_params": search.best_params_}
    return StageResult(numbers=numbers, markdown=md, artefacts=artefacts)


def _magnitude_tables(by_mag: dict, models: list) -> tuple[str, str]:
    """Per r bin of the test field: accuracy / MCC of every model (with the bin's counts), and star /
    galaxy recall of every model but the majority class."""
    first = by_mag[CNN_CAL]
    shown = [n for n in models if n != "majority class"]
    scores, recalls = [], []
    for i in range(len(first)):
        scores.append([first["bin"].iloc[i],
                       f"{first['n'].iloc[i]} ({first['n_star'].iloc[i]}/{first['n_galaxy'].iloc[i]})",
                       *(f"{fmt(by_mag[n]['accuracy'].iloc[i])} / {fmt(by_mag[n]['mcc'].iloc[i])}" for n in models)])
        recalls.append([first["bin"].iloc[i], *(f"{fmt(by_mag[n]['recall_star'].iloc[i])} / "
                                                f"{fmt(by_mag[n]['recall_galaxy'].iloc[i])}" for n in shown)])
    scores = pd.DataFrame(scores, columns=["r bin", "n (stars/galaxies)", *(f"{n} acc / MCC" for n in models)])
    recalls = pd.DataFrame(recalls, columns=["r bin", *(f"{n} star / galaxy recall" for n in shown)])
    return markdown_table(scores), markdown_table(recalls)
