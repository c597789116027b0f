"""The full stargal study: ``make experiments`` (``QUICK=1`` for a few-minute run).

Stages, in the order of the exercise; each writes its files into the output directory and
returns the numbers quoted in ``report.md``:

1. data acquisition and alignment   (``experiments/alignment.py``)
1b. measuring the way SDSS types    (``experiments/measurement.py``: our fits vs the catalogs', training fields)
2. data preparation: the split      (``experiments/splits.py``)
3. modelling and tuning             (``experiments/tuning_stage.py``)
4. data augmentation                (``experiments/augmentation.py``)
5. baselines                        (``experiments/baselines.py``)
6. explanations                     (``experiments/explanations.py``)
7. held-out fields                  (``experiments/seeing.py``: leave one field out; the shipped default)
8. how hard, with exact truth       (``experiments/synthetic.py``: injected stars and galaxies)

Usage::

    python -m experiments.run [--quick] [--out DIR] [--n-jobs 2] [--scheduler tcp://...]

Data come through :class:`stargal.fetch.Fetcher` (``STARGAL_SAS_URL``: the mirror here, the
SAS elsewhere). Seeds are fixed by the study config; see the report for what remains
nondeterministic.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "experiments" / "results"

SECTIONS = [
    ("alignment", "1. Data acquisition and alignment"),
    ("measurement", "1b. Measuring the way SDSS types: our fits vs the catalogs' (training fields)"),
    ("splits", "2. Data preparation: splits without leakage"),
    ("tuning", "3. Modelling and tuning"),
    ("augmentation", "4. Data augmentation"),
    ("baselines", "5. Baselines"),
    ("explanations", "6. Explanations"),
    ("seeing", "7. Held-out fields: leave one field out, and the shipped default"),
    ("synthetic", "8. How hard is it, with exact truth: synthetic objects injected into real frames"),
]


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "stargal", "experiments/*.py"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def _versions() -> str:
    import sklearn
    import skorch
    import torch

    return (f"Python {platform.python_version()}, torch {torch.__version__}, scikit-learn {sklearn.__version__}, "
            f"skorch {skorch.__version__}, numpy {np.__version__}; {os.cpu_count()} CPU cores")


def _choose_final(ctx):
    """The final CNN: tuned, with the augmentation recipe that scored best on *held-out training fields*
    (stage 4, never the test field)."""
    tuned = ctx.results.get("tuning", {}).get("_objects", {}).get("tuned")
    res = ctx.results.get("augmentation", {})
    objs = res.get("_objects", {})
    final = objs.get("final")
    if final is None:
        return tuned, "tuned"
    means = res.get("held_out_mcc", {})
    winner = res.get("final_recipe", "")
    others = ", ".join(f"{k} {v:.3f}" for k, v in means.items() if k != winner)
    return final, (f"tuned, {winner} (held-out-field MCC {means.get(winner, float('nan')):.3f}; "
                   f"{others})")


def _psfield_note(cmp) -> str:
    """Where the psField target is measured, and how both models compare with the stars themselves."""
    from .common import fmt
    from .seeing import CENTRE_RADIUS_PX

    def ratios(num, den):
        return ", ".join(f"{r['band']} {fmt(r[num] / r[den], 3)}" for r in cmp)

    if not all("fwhm_star_stamps" in r for r in cmp):
        return ""
    note = ("at the frame centre; at the PSF stars themselves our model / their own stamps: "
            + ratios("fwhm_stars_at_stars", "fwhm_star_stamps")
            + ", psField / stamps: " + ratios("fwhm_psfield_at_stars", "fwhm_star_stamps"))
    if all("fwhm_star_stamps_centre" in r for r in cmp):
        note += (f"; stars within {CENTRE_RADIUS_PX:.0f} px of the centre, ours / stamps: "
                 + ratios("fwhm_stars_centre", "fwhm_star_stamps_centre")
                 + ", psField / stamps: " + ratios("fwhm_psfield_centre", "fwhm_star_stamps_centre"))
    return note


def targets_markdown(ctx, meta: dict) -> str:
    """The measurement work's targets (issue #17), each with the number this run measured and met / missed."""
    from .baselines import RULE, SHIPPED
    from .common import fmt

    base, see, mea = (ctx.results.get(k, {}) for k in ("baselines", "seeing", "measurement"))
    rows = []

    def add(target, value, ok, note=""):
        verdict = "–" if ok is None else ("met" if ok else "**missed**")
        rows.append(f"| {target} | {value} | {verdict} |" + (f" {note} |" if note else " |"))

    def by(value, goal):
        return f"by {fmt(goal - value)}" if value < goal else ""

    test = base.get("test", {})
    if RULE in test:
        m = test[RULE]["mcc"]
        add("SDSS rule (measured) test MCC ≥ 0.88", fmt(m), m >= 0.88, by(m, 0.88))
    default = see.get("default_model")
    name = SHIPPED.get(default)
    if name in test:
        m = test[name]["mcc"]
        add(f"shipped default ({default}, calibrated) test MCC ≥ 0.92", fmt(m), m >= 0.92, by(m, 0.92))
        acc = base.get("faint_accuracy", {}).get(name)
        if acc is not None:
            add("  accuracy at r > 22 ≥ 0.90", fmt(acc), acc >= 0.90, by(acc, 0.90))
        st = base.get("faint_star_recall", {}).get(name)
        if st is not None:
            add("  star recall at r > 22 ≥ 0.92", fmt(st), st >= 0.92, by(st, 0.92))
    if default is not None:
        mean, worst = see["default_mean_mcc"], see["default_worst_mcc"]
        add(f"leave one field out, shipped default ({default}): mean MCC ≥ 0.88", fmt(mean), mean >= 0.88,
            by(mean, 0.88))
        add("  worst held-out field ≥ 0.84", f"{fmt(worst)} ({see.get('default_worst_field')})", worst >= 0.84,
            by(worst, 0.84))
    if "offset_r_lt_21" in mea:
        off, agree = mea["offset_r_lt_21"], mea["agreement_r_lt_21"]
        add("our psf − cModel vs the catalogs' (training fields, r < 21): median offset within ±0.02 mag",
            fmt(off, 4), abs(off) <= 0.02)
        add("  type agreement ≥ 97 %", fmt(agree), agree >= 0.97, by(agree, 0.97))
    if not ctx.quick:
        add("`make experiments` ≤ 20 min on this machine", f"{meta['total_seconds'] / 60:.1f} min",
            meta["total_seconds"] <= 1200)
    if not rows:
        return ""
    return "\n".join(["| target | measured (this run) | | how far |", "|---|---|---|---|"] + rows)


def write_report(ctx, timings: dict, meta: dict) -> Path:
    from .common import write_json

    lines = [
        "# stargal study report",
        "",
        "Generated by `make experiments`" + (" (QUICK mode: fewer fields, epochs and grid points)" if ctx.quick
                                              else "") + f" on {meta['date']}. Nothing here is hand-edited.",
        "",
        f"- code: commit {meta['commit']}",
        f"- data: {ctx.fetcher.base_url} (cache {ctx.fetcher.cache_dir})",
        f"- fields: test {', '.join(ctx.config.test_fields)}; train/validation "
        f"{', '.join(meta['train_fields'])}",
        f"- environment: {meta['versions']}",
        f"- final CNN: {meta.get('final_choice', '–')}",
        f"- wall time: {meta['total_seconds']:.0f} s in all; per stage: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
        "",
    ]
    headline = ctx.results.get("baselines", {}).get("headline")
    if headline:
        lines += ["## Headline: test-field metrics", "", headline, ""]
    targets = targets_markdown(ctx, meta)
    if targets:
        from .baselines import LABEL_NOTE

        lines += ["## Targets", "",
                  "Judged on the test field, which played no part in training, tuning, calibration or model "
                  "choice, and on held-out training fields; the shipped default is the kind that won leave one "
                  "field out (section 7), calibrated on the validation groups. Bench targets (throughput) are in "
                  "`benchmarks/results.md`.", "", targets, "", LABEL_NOTE, ""]
    for key, title in SECTIONS:
        res = ctx.results.get(key)
        lines += [f"## {title}", ""]
        if res is None:
            lines += ["(stage not run)", ""]
            continue
        lines += [res.get("markdown", "(no summary)"), ""]
        write_json(ctx.out_dir / f"{key}_summary.json", res)
    lines += [
        "## Reproducibility",
        "",
        f"Seeds are fixed (study seed {ctx.seed}: splits, CV folds, network initialisation, augmentation "
        "draws, forest). On CPU, rerunning gives the same splits and forest results; CNN fits run with one torch "
        "thread per process and are repeatable on the same machine, but numbers can differ in the last "
        "digits between machines or thread counts (floating-point reductions in PyTorch's CPU kernels are "
        "not order-stable across thread counts; one fit's validation MCC moved by ~0.03 between 1 and 2 "
        "threads in development), so treat differences of a few hundredths between single "
        "fits as noise. Per-stage numbers: `*_summary.json`.",
        "",
    ]
    path = ctx.out_dir / "report.md"
    from .common import _atomic_text

    _atomic_text(path, "\n".join(lines))
    return path


def reliability_headline(res: dict) -> str:
    """One sentence on the test-field probability reliability (Brier score, ECE) per model."""
    rel = res.get("reliability") or []
    if not rel:
        return ""
    parts = [f"{r['model']} Brier {r['brier']:.3f}, ECE {r['ece']:.3f}" for r in rel]
    return ("Probability reliability on the test field (lower is better; *calibrated*: Platt scaling on the "
            "validation sky groups, at the training fields' star/galaxy mix): " + "; ".join(parts) + ".")


def alignment_headline(res: dict) -> str:
    """Per-band alignment accuracy from the alignment stage's summary (empty without SDSS centroids)."""
    bias = res.get("bias_px", {})
    if "sdss_refined" not in bias or "sdss_scatter_median_px" not in res:
        return ""

    def num(v):
        return "–" if v is None else f"{v:.3f}"

    n = res.get("n_alignment_stars", {})
    lines = ["Band-to-band alignment of the cutouts, bright isolated stars of the study's "
             f"{len(res.get('fields', []))} fields (pixels of 0.396″; section 1 of the report): the systematic "
             "offset left by the Aligner, and the star-to-star scatter of the cutout centre about the star's "
             "SDSS-measured centroid in that band, next to the scatter of SDSS's own band-to-band astrometry:", "",
             "| band | stars | before: raw pixel indices | systematic offset, held out: x-split | "
             "systematic, leave-one-out | worst single field (leave-one-out) | per-star median, ours "
             "(leave-one-out) | per-star median, SDSS's own astrometry |",
             "|---|---|---|---|---|---|---|---|"]
    worst = res.get("bias_worst_field_px", {}).get("sdss_refined_loo", {})
    for b in "ugiz":
        lines.append(f"| {b} | {n.get(b, '–')} | {num(res.get('before_median_px', {}).get(b))} | "
                     f"{num(bias['sdss_refined'].get(b))} | {num(bias.get('sdss_refined_loo', {}).get(b))} | "
                     + (f"{num(worst[b][0])} ({worst[b][1]}) | " if b in worst else "– | ")
                     + f"{num(res.get('sdss_refined_loo_median_px', {}).get(b))} | "
                     f"{num(res['sdss_scatter_median_px'].get(b))} |")
    return "\n".join(lines)


def update_readme(headline: str, report_rel: str) -> None:
    """Put the headline table (from this run) between the README's HEADLINE markers."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = ("<!-- HEADLINE -->\n## Headline result\n\nFrom the last full `make experiments` run "
             f"([report]({report_rel})):\n\n{headline}\n<!-- /HEADLINE -->")
    if "<!-- HEADLINE -->" not in text:
        return
    text = re.sub(r"<!-- HEADLINE -->.*?(<!-- /HEADLINE -->|$)", lambda m: block, text, count=1, flags=re.S) \
        if "<!-- /HEADLINE -->" in text else text.replace("<!-- HEADLINE -->", block, 1)
    readme.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few-minute run exercising every stage")
    parser.add_argument("--out", default=None, help="output directory (default experiments/results, "
                                                    "experiments/results-quick with --quick)")
    parser.add_argument("--config", default=None, help="study TOML (default: the packaged study)")
    parser.add_argument("--n-jobs", type=int, default=2, help="workers for parallel stages")
    parser.add_argument("--scheduler", default=None, help="Dask scheduler for the Dask-backed timing run")
    parser.add_argument("--stages", default=None, help="comma-separated subset of stages (debugging)")
    args = parser.parse_args(argv)

    import matplotlib
    import torch

    matplotlib.use("Agg")
    # One torch thread per process: on a 2-core machine this is as fast as two for these small nets
    # (faster under load), parallelism comes from n_jobs workers, and results are reproducible for
    # a fixed thread count.
    torch.set_num_threads(1)
    from stargal.config import load_config
    from stargal.fetch import get_fetcher
    from stargal.sdss import field_paths
    from stargal.training import study_table

    from .common import StudyContext, stage_timer

    out = Path(args.out) if args.out else (ROOT / "experiments" / "results-quick" if args.quick else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    config = load_config(args.config)
    fetcher = get_fetcher(None, quiet=False)
    stages = set(args.stages.split(",")) if args.stages else {k for k, _ in SECTIONS}
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    print(f"stargal study -> {out}  (data: {fetcher.base_url}; quick={args.quick})", flush=True)

    with stage_timer("fetch and catalog", timings):
        train_fields = list(config.train_fields)[:2] if args.quick else list(config.train_fields)
        fetcher.fetch_many([p for f in list(config.test_fields) + train_fields for p in field_paths(f)],
                           desc="SDSS files")
        table = study_table(config, fetcher, fields=train_fields)
        print(f"{len(table)} objects: {table['split'].value_counts().to_dict()}", flush=True)
    ctx = StudyContext(config, fetcher, table, out, quick=args.quick, n_jobs=args.n_jobs, scheduler=args.scheduler)

    if "alignment" in stages:
        from . import alignment

        with stage_timer("1 alignment", timings):
            ctx.results["alignment"] = alignment.run(ctx)
    if "measurement" in stages:
        from . import measurement

        with stage_timer("1b measurement", timings):
            ctx.results["measurement"] = measurement.run(ctx)
    if "splits" in stages:
        from . import splits

        with stage_timer("2 splits", timings):
            ctx.results["splits"] = splits.run(ctx)
    if "tuning" in stages:
        from . import tuning_stage

        with stage_timer("3 tuning", timings):
            ctx.results["tuning"] = tuning_stage.run(ctx)
    if "augmentation" in stages:
        from . import augmentation

        tuned_params = ctx.results.get("tuning", {}).get("_objects", {}).get("best_params")
        with stage_timer("4 augmentation", timings):
            ctx.results["augmentation"] = augmentation.run(ctx, tuned_params=tuned_params)
    final, choice = _choose_final(ctx)
    if "baselines" in stages:
        from . import baselines

        aug = ctx.results.get("augmentation", {}).get("_objects", {})
        with stage_timer("5 baselines", timings):
            ctx.results["baselines"] = baselines.run(
                ctx, cnn=final, hybrid_params=ctx.results.get("tuning", {}).get("_objects", {}).get("best_params"),
                augmenter=aug.get("final_augmenter"))
            final = final or ctx.results["baselines"]["_objects"]["cnn_raw"]
    if "explanations" in stages and final is not None:
        from . import explanations

        with stage_timer("6 explanations", timings):
            ctx.results["explanations"] = explanations.run(ctx, final)
    if "seeing" in stages:
        from . import seeing

        base = ctx.results.get("baselines", {})
        objs = base.get("_objects", {})
        aug = ctx.results.get("augmentation", {}).get("_objects", {})

        shown = {"SDSS rule (measured)": objs.get("rule_raw"), "forest": objs.get("forest_raw"),
                 "CNN": objs.get("cnn_raw", final), "hybrid CNN": objs.get("hybrid_raw")}
        with stage_timer("7 held-out fields", timings):
            ctx.results["seeing"] = seeing.run(
                ctx, models={k: v for k, v in shown.items() if v is not None},
                cnn_params=ctx.results.get("tuning", {}).get("_objects", {}).get("best_params"),
                forest_params=base.get("forest_best_params"),
                augmenter=aug.get("final_augmenter"), aware_cnn=aug.get("final_lofo"))
    if "baselines" in ctx.results:  # ship the calibrated CNN (calibrated on the validation groups)
        final = ctx.results["baselines"]["_objects"].get("cnn", final)
    if "synthetic" in stages:
        from . import synthetic

        objs = ctx.results.get("baselines", {}).get("_objects", {})
        with stage_timer("8 synthetic", timings):
            ctx.results["synthetic"] = synthetic.run(ctx, cnn=final, forest=objs.get("forest"))

    if final is not None:
        from stargal.persist import save_model

        save_model(final, out / "cnn.stargal", metadata={"study": "make experiments", "choice": choice,
                                                         "quick": args.quick})
    default = ctx.results.get("seeing", {}).get("default_model")
    shipped = ctx.results.get("baselines", {}).get("_objects", {}).get("shipped", {})
    if default in shipped and default != "cnn":  # the default kind's calibrated model, as shipped
        from stargal.persist import save_model

        save_model(shipped[default], out / f"{default}.stargal",
                   metadata={"study": "make experiments", "default_model": default, "quick": args.quick})
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "versions": _versions(),
        "train_fields": train_fields,
        "final_choice": choice,
        "total_seconds": time.perf_counter() - t_start,
    }
    report = write_report(ctx, timings, meta)
    if not args.quick and out.resolve() == DEFAULT_OUT.resolve() and "baselines" in ctx.results:
        targets = targets_markdown(ctx, meta)
        parts = [ctx.results["baselines"]["headline"],
                 ("Targets (test field and held-out fields; section 'Targets' of the report):\n\n" + targets)
                 if targets else "",
                 reliability_headline(ctx.results["baselines"]),
                 alignment_headline(ctx.results.get("alignment", {})),
                 f"The run took {meta['total_seconds']:.0f} s on {os.cpu_count()} CPU core(s) ({meta['date']}, "
                 f"commit {meta['commit']}); per-stage times are in the report."]
        update_readme("\n\n".join(p for p in parts if p), os.path.relpath(report, ROOT))
    print(f"\nreport: {report}  ({meta['total_seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
