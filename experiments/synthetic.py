"""Stage 8 -- how hard is it, with exact truth: synthetic stars and galaxies injected into real frames.

1. **Renderer checks** (the issue's targets). Bright galaxies (r 15.5-16.5, hlr 0.3-3″) are injected into a
   training field's frames, at least 40″ from each other; on the injected pixels (injected frame minus
   real frame: the source and its Poisson noise) the unweighted second moments minus the PSF's give the
   half-light radius (:func:`stargal.synth.deconvolved_hlr`), compared with the requested one. Injected
   stars at r < 21 are typed by our own SDSS-like rule (below): the fraction typed as stars.
2. **Recall maps**: stars and galaxies (half each; r uniform in 17-23.5, hlr log-uniform 0.1-3″, Sérsic n
   0.5-4, colours from the training fields' measured photometry) are injected into the frames of the test
   field 8162-6-80 (r seeing about 1.2″) and of the training field 1035-6-17 (about 1.5″), in batches of
   :data:`BATCH` (each batch into fresh copies of the frames, so injected objects do not crowd each other),
   cut like real objects (Aligner positions, ``Cutter.cut_field``, PSF channels) and classified by the final
   CNN, the forest and SDSS's rule. Injected objects are used for evaluation only; no model is refitted.
   Galaxy recall per (r magnitude x hlr / PSF FWHM) cell, star recall per r bin.
3. **Ablation with real labels as the judge, on held-out fields** (:func:`held_out_ablation`): each training
   field in turn is held out; proxy CNNs (as in stage 4) are fitted on the other fields' real rows with the
   control augmenter (unperturbed copies) or with :class:`stargal.inject.SyntheticInjector` (injected objects
   in those fields' frames), the same seed per fold; MCC on every *real* object of the held-out field,
   overall and at r ≥ 21.

SDSS's rule (``measured_rule``): the injected frames measured like real ones
(:meth:`stargal.photo.SDSSPhotometry.measure_field`: PSF and cModel fits, the type statistic summed over the
detected bands) and typed with the boundary the rule fitted in stage 5 (the mirror's 0.19 without it); an
object the rule cannot measure counts as a star. The ablation also trains with
``SyntheticInjector(label='rule')``: injected objects labelled by that rule, as SDSS would type them, instead
of their true type.

Files: ``synthetic_injected.csv`` (one row per injected object: truth, predictions), ``synthetic_recall.csv``
(the maps), ``synthetic_recall_maps.png``, ``synthetic_hlr_check.csv``, ``synthetic_ablation_runs.csv``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .common import StageResult, fmt, markdown_table, render_template, write_csv  # noqa: E402

__all__ = ["MAP_FIELDS", "MAG_EDGES", "SIZE_EDGES", "BATCH", "HELD_OUT_CONFIGS", "measured_rule", "rule_boundary",
           "recall_maps", "data_limit", "held_out_ablation", "run"]

#: Fields whose frames receive the evaluation objects: the test field (sharp) and a broad-seeing training field.
MAP_FIELDS = ("8162-6-80", "1035-6-17")
#: r magnitude bins of the maps.
MAG_EDGES = (17.0, 19.0, 20.0, 21.0, 22.0, 23.5)
#: hlr / PSF FWHM bins of the maps.
SIZE_EDGES = (0.06, 0.15, 0.3, 0.6, 1.2, 2.5)
#: Objects per injection batch (each batch into fresh copies of the frames).
BATCH = 400
#: Objects per map field (half stars, half galaxies): full / quick.
N_MAP = {"full": 2000, "quick": 400}
#: Bright galaxies for the size check: full / quick.
N_HLR = {"full": 200, "quick": 60}
#: Configurations of the held-out-field ablation: the control (unperturbed copies), injected objects with
#: their true type, injected objects typed by the rule.
HELD_OUT_CONFIGS = ("none", "synthetic", "synthetic_rule")
#: Training fields held out in turn in quick mode (every training field in full mode).
N_HELD_OUT_QUICK = 2
#: Size check: galaxies per batch and their minimum mutual separation (arcsec; a 3″ galaxy's stamp is 46 px).
HLR_BATCH, HLR_SEPARATION_ARCSEC = 50, 40.0
#: Galaxy recall at least this (with star recall at least STAR_OK in the same r bin) counts as "told apart".
GALAXY_OK, STAR_OK = 0.8, 0.9


def rule_boundary(ctx) -> float:
    """The boundary the study's rule fitted (stage 5), else the mirror catalogs' 0.19."""
    from stargal.photo import MIRROR_TYPE_BOUNDARY

    return float(ctx.numbers("baselines").get("rule_boundary", MIRROR_TYPE_BOUNDARY))


def measured_rule(table, field, boundary, psf_source="stars") -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """``(is_galaxy, type_stat, measurements)`` of an Aligner table's rows on ``field`` (e.g. injected).

    SDSS's rule on our measurement (:class:`stargal.photo.SDSSPhotometry`); unmeasured objects (NaN
    statistic) count as stars.
    """
    from stargal.photo import SDSSPhotometry

    phot = SDSSPhotometry(psf_source=psf_source, sas_url=field.fetcher.base_url,
                          cache_dir=str(field.fetcher.cache_dir)).measure_field(table, field)
    stat = phot["type_stat"].to_numpy(float)
    return np.nan_to_num(stat, nan=-np.inf) > boundary, stat, phot


def _forest_on(forest, X, phot):
    """A measured forest (``align -> features -> forest``) on given cutouts and measurements."""
    union = forest.named_steps["features"]
    parts = dict(union.transformer_list)
    feats = [parts["pixels"].named_steps["aperture"].transform(X)]
    if parts.get("measured") not in (None, "drop"):
        feats.append(parts["measured"].named_steps["fit"].transform(phot))
    return forest[-1].predict_proba(np.hstack(feats))


def _after_cutter(pipe):
    names = [n for n, _ in pipe.steps]
    return pipe[names.index("cut") + 1:] if "cut" in names else pipe


def _population(ctx, fields, mag_range, hlr_range, dist):
    from stargal.synth import SyntheticPopulation, measured_photometry

    phot = measured_photometry(fields, ctx.fetcher, psf_source=ctx.config.psf_source)
    return SyntheticPopulation(phot, mag_range=mag_range, hlr_range=hlr_range, galaxy_fraction=0.5,
                               mag_distribution=dist)


def _inject_batches(ctx, fid, pop, n, rng, log, kinds=None, batch=BATCH, **inject_kw):
    """Inject ``n`` objects into ``fid`` in batches; yields ``(Injection, cutouts)``."""
    from stargal.cutouts import Cutter
    from stargal.frames import Field
    from stargal.inject import inject_random

    size = int(ctx.config.cutout_size)
    cutter = Cutter(size=size, psf=True, psf_source=ctx.config.psf_source, sas_url=ctx.fetcher.base_url,
                    cache_dir=str(ctx.fetcher.cache_dir))
    field = Field(fid, ctx.fetcher)
    done = 0
    while done < n:
        k = min(batch, n - done)
        kk = None if kinds is None else kinds[done:done + k]
        res = inject_random(field, pop, k, random_state=rng, psf_source=ctx.config.psf_source, cutout_size=size,
                            kinds=kk, **inject_kw)
        done += k
        X = cutter.cut_field(res.table, res.field) if len(res.table) else np.zeros((0, 10, size, size), np.float32)
        log(f"  {fid}: injected {res.counts['injected']} of {k} (refused: "
            + ", ".join(f"{r} {v}" for r, v in res.counts.items() if r != "injected") + ")")
        yield field, res, X
    field.release()


def _hlr_check(ctx, rng, log) -> pd.DataFrame:
    """Bright galaxies in a training field: requested vs measured (deconvolved) hlr and flux."""
    from stargal.inject import PSF_STAMP_PX
    from stargal.psf import field_psf
    from stargal.synth import PIXEL_SCALE_ARCSEC, deconvolved_hlr

    fid = MAP_FIELDS[1]
    pop = _population(ctx, [fid], (15.5, 16.5), (0.3, 3.0), "uniform")
    n = N_HLR["quick" if ctx.quick else "full"]
    rows = []
    # the size is measured on the injected pixels in a stamp of 4.5 hlr + 12 px: injected neighbours stay
    # farther than twice that (HLR_SEPARATION_ARCSEC), so each stamp holds one injected galaxy
    for field, res, _ in _inject_batches(ctx, fid, pop, n, rng, log, kinds=np.ones(n, int), batch=HLR_BATCH,
                                         min_injected_separation_arcsec=HLR_SEPARATION_ARCSEC):
        psf = field_psf(field, ctx.fetcher, source=ctx.config.psf_source)
        t = res.table
        stamps = psf.stamps("r", t["x_r"].to_numpy(), t["y_r"].to_numpy(), size=PSF_STAMP_PX)
        real, fake = np.asarray(field.frame("r").image), res.field.frame("r").image
        ny, nx = real.shape
        for i, row in t.iterrows():
            hlr_px = row["hlr_arcsec"] / PIXEL_SCALE_ARCSEC
            h = int(np.ceil(4.5 * hlr_px)) + 12
            ix, iy = int(np.floor(row["x_r"] + 0.5)), int(np.floor(row["y_r"] + 0.5))
            if ix - h < 0 or iy - h < 0 or ix + h >= nx or iy + h >= ny:
                continue
            diff = (fake[iy - h:iy + h + 1, ix - h:ix + h + 1].astype(np.float64)
                    - real[iy - h:iy + h + 1, ix - h:ix + h + 1])
            rows.append({"hlr_arcsec": row["hlr_arcsec"], "sersic_n": row["sersic_n"], "q": row["q"],
                         "mag_r": row["mag_r"],
                         "hlr_measured": deconvolved_hlr(diff, stamps[i], row["sersic_n"]),
                         "flux_ratio": diff.sum() / row["flux_r"]})
    out = pd.DataFrame(rows)
    out["ratio"] = out["hlr_measured"] / out["hlr_arcsec"]
    return out


def _noise_table(ctx) -> list:
    """Per map field and band: the sky's expected Poisson noise vs the frame's measured pixel noise."""
    from stargal.frames import Field
    from stargal.inject import frame_calibration

    rows = []
    for fid in MAP_FIELDS:
        field = Field(fid, ctx.fetcher)
        cells = []
        for band in "ugriz":
            cal = frame_calibration(field, band)
            measured = field.frame(band).sky_noise
            cells.append(f"{fmt(cal.sky_sigma_nmgy, 4)} / {fmt(measured, 4)}")
        rows.append([fid] + cells)
        field.release()
    return rows


def _fit_in_turn(task_args) -> list:
    """:func:`~experiments.augmentation.proxy_fit_score` of each task, in order, in this worker."""
    from .augmentation import proxy_fit_score

    return [proxy_fit_score(*args) for args in task_args]


def held_out_ablation(ctx, configs=HELD_OUT_CONFIGS, log=print) -> pd.DataFrame:
    """Does training with injected objects help on a field the model has never seen?

    Each training field in turn is held out (the first :data:`N_HELD_OUT_QUICK` in quick mode). Per fold,
    proxy CNNs (stage 4's) are fitted on the other fields' train + validation rows with each configuration
    of ``configs`` (``'none'``: unperturbed copies; ``'synthetic'``: :class:`~stargal.inject.SyntheticInjector`
    objects with their true type; ``'synthetic_rule'``: typed by SDSS's rule on our measurement) and scored on
    every object of the held-out field. Objects are injected into the fitting fields' frames only, and the
    rule's boundary is refitted on the fold's fitting rows, so nothing of the held-out field enters. One seed
    per fold (the study seed + the fold's index), shared by its configurations: the deltas are paired by
    fold. The fits run in ``ctx.n_jobs`` workers.

    Returns one row per fold and configuration: ``held_out_field``, ``rule_boundary``, ``config``, ``seed``,
    ``epochs``, ``fit_s``, ``mcc``, ``balanced_accuracy``, ``roc_auc``, ``mcc_faint``, ``mcc_bright``.
    """
    from joblib import Parallel, delayed

    from .augmentation import _rule_injector, _synthetic_injector, make_augmenter, proxy_params

    rows = ctx.rows("train", "valid")
    fields = sorted(rows["field_id"].unique())
    if ctx.quick:
        fields = fields[:N_HELD_OUT_QUICK]
    tasks = []
    for k, fid in enumerate(fields):
        fit_rows, held = rows[rows["field_id"] != fid], rows[rows["field_id"] == fid]
        boundary = None
        if "synthetic_rule" in configs:
            rule = ctx.fit(ctx.pipeline("rule"), fit_rows)
            boundary = float(rule.named_steps["rule"].boundary_)
        params = proxy_params(ctx, k)
        seed = params["net__random_state"]
        for name in configs:
            if name == "synthetic":
                aug = _synthetic_injector(ctx, seed, fit_rows)
            elif name == "synthetic_rule":
                aug = _rule_injector(ctx, seed, fit_rows, boundary=boundary)
            else:
                aug = make_augmenter(name, random_state=seed)
            tasks.append(({"held_out_field": fid, "rule_boundary": boundary, "config": name, "seed": int(seed)},
                          (ctx.config, ctx.fetcher.base_url, str(ctx.fetcher.cache_dir), params, fit_rows, held, aug)))
    log(f"  {len(tasks)} proxy fits ({len(fields)} held-out fields x {len(configs)} configurations), "
        f"{ctx.n_jobs} workers")
    # A fold's injected fits run one after the other in one worker: the same seed injects the same objects,
    # so the second reuses the first's rendered frames (SyntheticInjector keeps its last injection). Largest
    # jobs first.
    jobs = {}
    for index, (meta, _) in enumerate(tasks):
        injected = meta["config"] in ("synthetic", "synthetic_rule")
        jobs.setdefault((not injected, meta["held_out_field"], -1 if injected else index), []).append(index)
    order = sorted(jobs)
    done = Parallel(n_jobs=ctx.n_jobs)(delayed(_fit_in_turn)([tasks[i][1] for i in jobs[k]]) for k in order)
    results = [None] * len(tasks)
    for k, res in zip(order, done):
        for i, r in zip(jobs[k], res):
            results[i] = r
    out = []
    for (meta, _), res in zip(tasks, results):
        out.append({**meta, **res})
        log(f"  held out {meta['held_out_field']}, {meta['config']:<14s}: MCC {res['mcc']:.3f} "
            f"({res['epochs']} epochs, {res['fit_s']:.1f} s)")
    return pd.DataFrame(out)


def recall_maps(objects: pd.DataFrame, models) -> pd.DataFrame:
    """Recall per (field, model, kind, r bin, size bin): ``n``, ``recall``."""
    rows = []
    mag_bin = pd.cut(objects["mag_r"], MAG_EDGES, right=False)
    size_bin = pd.cut(objects["hlr_fwhm"], SIZE_EDGES, right=False)
    for (fid, mb), g in objects.groupby([objects["field_id"], mag_bin], observed=True):
        for model in models:
            truth = g["label"].to_numpy()
            pred = g[f"pred_{model}"].to_numpy()
            star = truth == 0
            if star.any():
                rows.append({"field_id": fid, "model": model, "kind": "star", "mag_lo": mb.left, "mag_hi": mb.right,
                             "size_lo": 0.0, "size_hi": 0.0, "n": int(star.sum()),
                             "recall": float((pred[star] == 0).mean())})
            gal = g[truth == 1]
            for sb, gg in gal.groupby(size_bin[gal.index], observed=True):
                rows.append({"field_id": fid, "model": model, "kind": "galaxy", "mag_lo": mb.left,
                             "mag_hi": mb.right, "size_lo": sb.left, "size_hi": sb.right, "n": len(gg),
                             "recall": float((gg[f"pred_{model}"] == 1).mean())})
    return pd.DataFrame(rows)


def data_limit(maps: pd.DataFrame, fwhm: dict) -> pd.DataFrame:
    """Per field, model and r bin: the smallest hlr (bin) from which galaxies are told from stars.

    "Told apart": galaxy recall >= GALAXY_OK in that size bin and every larger one, with star recall >= STAR_OK
    in the same r bin. ``hlr_min_arcsec`` is the bin's lower edge times the field's median r FWHM (NaN: never).
    """
    rows = []
    for (fid, model, lo, hi), g in maps.groupby(["field_id", "model", "mag_lo", "mag_hi"], observed=True):
        star = g[g["kind"] == "star"]["recall"]
        srec = float(star.iloc[0]) if len(star) else np.nan
        gal = g[g["kind"] == "galaxy"].sort_values("size_lo")
        ok = (gal["recall"] >= GALAXY_OK).to_numpy()
        edge = np.nan
        if srec >= STAR_OK and ok.size:
            # smallest bin from which every larger bin is ok
            for j in range(ok.size):
                if ok[j:].all():
                    edge = float(gal["size_lo"].iloc[j])
                    break
        rows.append({"field_id": fid, "model": model, "mag_lo": lo, "mag_hi": hi, "star_recall": srec,
                     "size_min_over_fwhm": edge, "hlr_min_arcsec": edge * fwhm.get(fid, np.nan)})
    return pd.DataFrame(rows)


def _plot(maps: pd.DataFrame, models, labels, fwhm, path: Path) -> None:
    present = set(maps["field_id"])
    fields = [f for f in MAP_FIELDS if f in present] + sorted(present - set(MAP_FIELDS))
    fig, axes = plt.subplots(len(fields), len(models), figsize=(4.8 * len(models), 3.9 * len(fields)),
                             squeeze=False)
    nm, ns = len(MAG_EDGES) - 1, len(SIZE_EDGES) - 1
    for i, fid in enumerate(fields):
        for j, model in enumerate(models):
            ax = axes[i][j]
            grid = np.full((nm, ns + 1), np.nan)
            g = maps[(maps["field_id"] == fid) & (maps["model"] == model)]
            for _, r in g.iterrows():
                mi = MAG_EDGES.index(r["mag_lo"]) if r["mag_lo"] in MAG_EDGES else None
                if mi is None:
                    continue
                col = 0 if r["kind"] == "star" else 1 + SIZE_EDGES.index(r["size_lo"])
                grid[mi, col] = r["recall"]
            im = ax.imshow(grid, origin="lower", vmin=0, vmax=1, cmap="viridis", aspect="auto")
            for (a, b), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="w" if v < 0.6 else "k")
            ax.axvline(0.5, color="w", lw=2)
            ax.set_xticks(range(ns + 1))
            ax.set_xticklabels(["stars"] + [f"{SIZE_EDGES[k]:g}-{SIZE_EDGES[k + 1]:g}" for k in range(ns)],
                               fontsize=7, rotation=30)
            ax.set_yticks(range(nm))
            ax.set_yticklabels([f"{MAG_EDGES[k]:g}-{MAG_EDGES[k + 1]:g}" for k in range(nm)], fontsize=7)
            ax.set_title(f"{labels[model]}: {fid} (r FWHM {fwhm.get(fid, np.nan):.2f}″)", fontsize=9)
            if i == len(fields) - 1:
                ax.set_xlabel("star recall | galaxy recall by hlr / PSF FWHM", fontsize=8)
            if j == 0:
                ax.set_ylabel("r magnitude", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="recall")
    fig.suptitle("Injected objects, exact truth: recall of stars (left column) and of galaxies by size", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def run(ctx) -> StageResult:
    """Renderer checks, recall maps and the ablation (see the module docstring). Writes into ``ctx.out_dir``;
    the section comes from ``templates/synthetic.md.j2``.

    The maps classify with the study's shipped models: the CNN (:meth:`~experiments.common.StudyContext.shipped_cnn`)
    and the calibrated forest of stage 5 (artefact ``calibrated_models``); a model that no earlier stage
    fitted is left out of the maps. No artefacts.
    """
    from .augmentation import _verdict, summarise, torch_threads

    cnn, forest = ctx.shipped_cnn(), ctx.artefact("calibrated_models", {}).get("forest")
    log = print

    t_stage = time.perf_counter()
    mode = "quick" if ctx.quick else "full"
    out = Path(ctx.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(ctx.seed + 811)
    train_fields = sorted(ctx.rows("train")["field_id"].unique())
    timings = {}

    # 1. size check ----------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hlr = _hlr_check(ctx, rng, log)
    write_csv(out / "synthetic_hlr_check.csv", hlr)
    hlr_within = float((np.abs(hlr["ratio"] - 1) <= 0.10).mean()) if len(hlr) else np.nan
    timings["hlr_check_s"] = round(time.perf_counter() - t0, 1)

    # 2. maps ----------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    models = {}
    if cnn is not None:
        models["cnn"] = _after_cutter(cnn)

    labels = {"cnn": "final CNN", "forest": "forest", "sdss": "SDSS's rule (measured)"}
    boundary = rule_boundary(ctx)
    pop = _population(ctx, train_fields, (17.0, 23.5), (0.1, 3.0), "uniform")
    n_map = N_MAP[mode]
    parts, counts = [], {}
    for fid in MAP_FIELDS:
        kinds = np.tile([0, 1], n_map // 2 + 1)[:n_map]
        rng.shuffle(kinds)
        c_f = {}
        for _, res, X in _inject_batches(ctx, fid, pop, n_map, rng, log, kinds=kinds):
            for k, v in res.counts.items():
                c_f[k] = c_f.get(k, 0) + v
            t = res.table.copy()
            if not len(t):
                continue
            gal, t["psf_minus_model"], phot = measured_rule(res.table, res.field, boundary, ctx.config.psf_source)
            t["pred_sdss"] = gal.astype(int)
            with torch_threads():
                for name, m in models.items():
                    t[f"p_{name}"] = m.predict_proba(X)[:, 1]
                    t[f"pred_{name}"] = (t[f"p_{name}"] >= 0.5).astype(int)
                if forest is not None:
                    t["p_forest"] = _forest_on(forest, X, phot)[:, 1]
                    t["pred_forest"] = (t["p_forest"] >= 0.5).astype(int)
            parts.append(t)
        counts[fid] = c_f
    objects = pd.concat(parts, ignore_index=True)
    keep = [c for c in objects.columns if not c.startswith(("x_", "y_")) and c not in ("flag",)]
    write_csv(out / "synthetic_injected.csv", objects[keep])
    names = list(models) + (["forest"] if forest is not None else []) + ["sdss"]
    maps = recall_maps(objects, names)
    write_csv(out / "synthetic_recall.csv", maps)
    fwhm = objects.groupby("field_id")["fwhm_r"].median().to_dict()
    _plot(maps, names, labels, fwhm, out / "synthetic_recall_maps.png")
    limit = data_limit(maps, fwhm)
    small = objects[(objects["label"] == 1) & (objects["hlr_fwhm"] < 0.3) & (objects["mag_r"] < 21)]
    small_called_stars = float((small["pred_sdss"] == 0).mean()) if len(small) else np.nan
    stars = objects[(objects["label"] == 0) & (objects["mag_r"] < 21)]
    star_pass = float((stars["pred_sdss"] == 0).mean()) if len(stars) else np.nan
    star_pass_by_field = stars.groupby("field_id")["pred_sdss"].apply(lambda s: float((s == 0).mean())).to_dict()
    timings["maps_s"] = round(time.perf_counter() - t0, 1)

    noise_rows = _noise_table(ctx)

    # 3. ablation ------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    runs = held_out_ablation(ctx, log=log)
    write_csv(out / "synthetic_ablation_runs.csv", runs)
    summary = summarise(runs)
    timings["ablation_s"] = round(time.perf_counter() - t0, 1)
    syn = summary[summary["config"] == "synthetic"].iloc[0]
    synr = summary[summary["config"] == "synthetic_rule"].iloc[0]
    ctl = summary[summary["config"] == "none"].iloc[0]

    # markdown ---------------------------------------------------------------------------------------------
    def pm(row, m):
        s = row[f"{m}_std"]
        return fmt(row[f"{m}_mean"]) + ("" if not np.isfinite(s) else f" ± {fmt(s)}")

    def dpm(m, row=syn):
        s = row[f"delta_{m}_std"]
        return f"{row[f'delta_{m}_mean']:+.3f}" + ("" if not np.isfinite(s) else f" ± {fmt(s)}")

    by_hlr = hlr.assign(bin=pd.cut(hlr["hlr_arcsec"], [0.3, 0.6, 1.2, 3.0])).groupby("bin", observed=True)
    hlr_rows = [[f"{b.left:g}–{b.right:g}″", len(g), fmt(g["ratio"].median()),
                 fmt((np.abs(g["ratio"] - 1) <= 0.1).mean()), fmt(g["flux_ratio"].median(), 4)] for b, g in by_hlr]
    lim_rows = []
    for fid in MAP_FIELDS:
        for (lo, hi), g in limit[limit["field_id"] == fid].groupby(["mag_lo", "mag_hi"]):
            cells = []
            for name in names:
                r = g[g["model"] == name]
                if not len(r):
                    cells.append("–")
                    continue
                r = r.iloc[0]
                v = r["hlr_min_arcsec"]
                cells.append((f"≥ {v:.2f}″" if np.isfinite(v) else "never") + f" (stars {fmt(r['star_recall'], 2)})")
            lim_rows.append([f"{fid} ({fwhm.get(fid, np.nan):.2f}″)", f"{lo:g}–{hi:g}"] + cells)
    sentences = []
    for fid in MAP_FIELDS:
        lf = limit[limit["field_id"] == fid]
        best = lf.groupby(["mag_lo", "mag_hi"])["hlr_min_arcsec"].min().reset_index().sort_values("mag_lo")
        told = best[np.isfinite(best["hlr_min_arcsec"])]
        see = f"at {fwhm.get(fid, np.nan):.2f}″ seeing ({fid})"
        if not len(told):
            sentences.append(f"{see} no classifier separates galaxies from stars in any r bin by this criterion")
            continue
        parts = ", ".join(f"r {r['mag_lo']:g}–{r['mag_hi']:g}: hlr ≥ {r['hlr_min_arcsec']:.2f}″"
                          for _, r in told.iterrows())
        never = best[~np.isfinite(best["hlr_min_arcsec"])]
        tail = (f"; at r {', '.join(f'{r.mag_lo:g}–{r.mag_hi:g}' for r in never.itertuples())} none of the three "
                "meets it at any size") if len(never) else ""
        sentences.append(f"{see}, the best of the three classifiers per r bin: {parts}{tail}")
    cnt_txt = "; ".join(f"{fid}: " + ", ".join(f"{k} {v}" for k, v in c.items()) for fid, c in counts.items())
    ablation_table = markdown_table(pd.DataFrame(
        [["control (copies)", pm(ctl, "mcc"), pm(ctl, "mcc_faint"), "", "", ""],
         ["+ injected objects, true type", pm(syn, "mcc"), pm(syn, "mcc_faint"), dpm("mcc"),
          dpm("mcc_faint"), f"{int(syn['wins'])}/{int(syn['n_seeds'])}"],
         ["+ injected objects, typed by the rule", pm(synr, "mcc"), pm(synr, "mcc_faint"),
          dpm("mcc", synr), dpm("mcc_faint", synr), f"{int(synr['wins'])}/{int(synr['n_seeds'])}"]],
        columns=["training", "MCC", "MCC r ≥ 21", "Δ MCC vs control (paired by field)", "Δ MCC r ≥ 21",
                 "fields where it beats the control"]))
    per_field = runs.pivot(index="held_out_field", columns="config", values="mcc")
    per_field = per_field.assign(rule_boundary=runs.groupby("held_out_field")["rule_boundary"].first()).reset_index()
    field_table = markdown_table(pd.DataFrame(
        [[r["held_out_field"], fmt(r["rule_boundary"]), fmt(r["none"]), fmt(r["synthetic"]), fmt(r["synthetic_rule"])]
         for _, r in per_field.iterrows()],
        columns=["held-out field", "rule boundary (fitted without it)", "control MCC", "true type MCC",
                 "typed by the rule MCC"]))
    spread = "field-to-field"
    md = render_template(
        "synthetic.md.j2", counts=cnt_txt,
        noise_table=markdown_table(pd.DataFrame(noise_rows, columns=["field", "u", "g", "r", "i", "z"])),
        boundary=fmt(boundary), star_pass=fmt(star_pass),
        star_pass_by_field=", ".join(f"{k} {fmt(v)}" for k, v in star_pass_by_field.items()),
        hlr_field=MAP_FIELDS[1], hlr_within=fmt(hlr_within), n_hlr=len(hlr),
        hlr_table=markdown_table(pd.DataFrame(hlr_rows, columns=["requested hlr", "n", "median measured / requested",
                                                                 "within 10 %", "median flux injected / requested"])),
        n_map=n_map, galaxy_ok=GALAXY_OK, star_ok=STAR_OK,
        limit_table=markdown_table(pd.DataFrame(lim_rows,
                                                columns=["field (r FWHM)", "r"] + [labels[n] for n in names])),
        limit_sentences=sentences, quick=ctx.quick, n_folds=int(ctl["n_seeds"]), ablation_table=ablation_table,
        field_table=field_table, n_jobs=ctx.n_jobs,
        verdict_true=_verdict(syn["delta_mcc_mean"], syn["delta_mcc_std"], int(syn["n_seeds"]), spread),
        verdict_true_faint=_verdict(syn["delta_mcc_faint_mean"], syn["delta_mcc_faint_std"], int(syn["n_seeds"]),
                                    spread),
        verdict_rule=_verdict(synr["delta_mcc_mean"], synr["delta_mcc_std"], int(synr["n_seeds"]), spread),
        verdict_rule_faint=_verdict(synr["delta_mcc_faint_mean"], synr["delta_mcc_faint_std"], int(synr["n_seeds"]),
                                    spread),
        small_called_stars=fmt(small_called_stars), stage_s=f"{time.perf_counter() - t_stage:.0f}",
        hlr_check_s=f"{timings['hlr_check_s']:.0f}", maps_s=f"{timings['maps_s']:.0f}",
        ablation_s=f"{timings['ablation_s']:.0f}")
    numbers = {
        "star_pass_r_lt_21": star_pass,
        "star_pass_by_field": star_pass_by_field,
        "small_galaxies_called_stars_by_sdss_rule": small_called_stars,
        "rule_boundary": boundary,
        "hlr_within_10pct": hlr_within,
        "hlr_median_ratio": float(hlr["ratio"].median()) if len(hlr) else np.nan,
        "counts": counts,
        "fwhm_r": fwhm,
        "limit": limit.to_dict(orient="records"),
        "ablation": summary.to_dict(orient="records"),
        "ablation_held_out_fields": per_field.to_dict(orient="records"),
        "timings": timings,
    }
    return StageResult(numbers=numbers, markdown=md)
