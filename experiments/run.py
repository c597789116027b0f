"""The full stargal study: ``make experiments`` (``QUICK=1`` for a few-minute run).

Stages (:data:`STAGES`), in the order of the exercise; each is a module whose ``run(ctx)`` writes its
files into the output directory and returns a :class:`~experiments.common.StageResult` (the numbers
quoted in ``report.md``, its section, the models later stages use):

1. data acquisition and alignment   (``experiments/alignment.py``)
1b. measuring the way SDSS types    (``experiments/measurement.py``: our fits vs the catalogs', training fields)
2. data preparation: the split      (``experiments/splits.py``)
3. modelling and tuning             (``experiments/tuning_stage.py``)
4. data augmentation                (``experiments/augmentation.py``)
5. baselines                        (``experiments/baselines.py``)
6. explanations                     (``experiments/explanations.py``)
7. held-out fields                  (``experiments/seeing.py``: leave one field out; the shipped default)
8. how hard, with exact truth       (``experiments/synthetic.py``: injected stars and galaxies)

:func:`main` runs the selected stages in order (:func:`run_stage`), saves the shipped models
(:func:`save_models`), writes ``report.md`` from ``experiments/templates/report.md.j2``
(:func:`write_report`) and, after a full run into ``experiments/results``, the README's headline
(:func:`update_readme`).

Usage::

    python -m experiments.run [--quick] [--out DIR] [--n-jobs 2] [--scheduler tcp://...] [--stages a,b]

Data come through :class:`stargal.fetch.Fetcher` (``STARGAL_SAS_URL``: the mirror here, the
SAS elsewhere). Seeds are fixed by the study config; see the report for what remains
nondeterministic.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "experiments" / "results"

__all__ = ["Stage", "STAGES", "SECTIONS", "main", "run_stage", "save_models", "write_report", "targets_markdown",
           "readme_headline", "reliability_headline", "alignment_headline", "update_readme"]


def _has_final_cnn(ctx) -> bool:
    """Stage 6 explains the final CNN: it runs when an earlier stage fitted one."""
    return ctx.final_cnn()[0] is not None


@dataclass(frozen=True)
class Stage:
    """One stage of the study.

    Attributes
    ----------
    name : str
        Its key: ``--stages``, ``ctx.results``, ``<name>_summary.json``.
    title : str
        Its section title in ``report.md``.
    label : str
        Its timer label (progress output and the report's per-stage wall times).
    module : str
        The module of ``experiments`` whose ``run(ctx) -> StageResult`` it is.
    needs : callable, optional
        ``needs(ctx) -> bool``: whether what the stage needs from earlier stages is there (else it is
        skipped and its section says so).
    """

    name: str
    title: str
    label: str
    module: str
    needs: Callable | None = None


#: The study's stages, in order.
STAGES: tuple[Stage, ...] = (
    Stage("alignment", "1. Data acquisition and alignment", "1 alignment", "alignment"),
    Stage("measurement", "1b. Measuring the way SDSS types: our fits vs the catalogs' (training fields)",
          "1b measurement", "measurement"),
    Stage("splits", "2. Data preparation: splits without leakage", "2 splits", "splits"),
    Stage("tuning", "3. Modelling and tuning", "3 tuning", "tuning_stage"),
    Stage("augmentation", "4. Data augmentation", "4 augmentation", "augmentation"),
    Stage("baselines", "5. Baselines", "5 baselines", "baselines"),
    Stage("explanations", "6. Explanations", "6 explanations", "explanations", needs=_has_final_cnn),
    Stage("seeing", "7. Held-out fields: leave one field out, and the shipped default", "7 held-out fields", "seeing"),
    Stage("synthetic", "8. How hard is it, with exact truth: synthetic objects injected into real frames",
          "8 synthetic", "synthetic"),
)
#: ``(name, section title)`` of every stage, in order.
SECTIONS = [(stage.name, stage.title) for stage in STAGES]


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


def run_stage(ctx, stage: Stage, timings: dict):
    """Run one stage (timed), record its result in ``ctx`` and write ``<name>_summary.json``.

    Returns the stage's :class:`~experiments.common.StageResult`, or None when ``stage.needs`` says
    that what it needs is not there.
    """
    from .common import stage_timer, write_json

    if stage.needs is not None and not stage.needs(ctx):
        return None
    module = importlib.import_module(f"{__package__ or 'experiments'}.{stage.module}")
    with stage_timer(stage.label, timings):
        result = module.run(ctx)
    ctx.record(stage.name, result)
    write_json(ctx.out_dir / f"{stage.name}_summary.json", result.summary())
    return result


def save_models(ctx, out: Path, quick: bool) -> None:
    """Save the shipped CNN (``cnn.stargal``) and, when section 7 chose another kind as the default,
    that kind's calibrated model (``<kind>.stargal``)."""
    from stargal.persist import save_model

    cnn = ctx.shipped_cnn()
    if cnn is not None:
        save_model(cnn, out / "cnn.stargal", metadata={"study": "make experiments", "choice": ctx.final_cnn()[1],
                                                       "quick": quick})
    default = ctx.numbers("seeing").get("default_model")
    calibrated = ctx.artefact("calibrated_models", {})
    if default in calibrated and default != "cnn":  # the default kind's calibrated model, as shipped
        save_model(calibrated[default], out / f"{default}.stargal",
                   metadata={"study": "make experiments", "default_model": default, "quick": quick})


def targets_markdown(ctx, meta: dict) -> str:
    """The measurement work's targets (issue #17), each with the number this run measured and met / missed."""
    from .baselines import RULE, SHIPPED
    from .common import fmt, markdown_table

    base, see, mea = (ctx.numbers(k) for k in ("baselines", "seeing", "measurement"))
    rows = []

    def add(target, value, ok, note=""):
        rows.append([target, value, "–" if ok is None else ("met" if ok else "**missed**"), note])

    def by(value, goal):
        return f"by {fmt(goal - value)}" if value < goal else ""

    test = base.get("test", {})
    spans = base.get("test_mcc_interval", {})

    def by_test(name, value, goal):
        """How far, and the test MCC's 95 % bootstrap interval (the field's sampling error)."""
        notes = [by(value, goal)]
        if name in spans:
            low, high = spans[name]
            notes.append(f"95 % interval {fmt(low)}–{fmt(high)}")
        return "; ".join(n for n in notes if n)

    if RULE in test:
        m = test[RULE]["mcc"]
        add("SDSS rule (measured) test MCC ≥ 0.88", fmt(m), m >= 0.88, by_test(RULE, m, 0.88))
    default = see.get("default_model")
    name = SHIPPED.get(default)
    if name in test:
        m = test[name]["mcc"]
        add(f"shipped default ({default}, calibrated) test MCC ≥ 0.92", fmt(m), m >= 0.92, by_test(name, m, 0.92))
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
    return markdown_table(pd.DataFrame(rows, columns=["target", "measured (this run)", "", "how far"]))


def write_report(ctx, timings: dict, meta: dict) -> Path:
    """``report.md`` from ``experiments/templates/report.md.j2``: the run's metadata, the headline and
    targets, every stage's section in :data:`STAGES` order (``(stage not run)`` for those that did not
    run) and the reproducibility note."""
    from .baselines import LABEL_NOTE
    from .common import _atomic_text, render_template

    text = render_template(
        "report.md.j2", quick=ctx.quick, date=meta["date"], commit=meta["commit"], data_url=ctx.fetcher.base_url,
        cache_dir=ctx.fetcher.cache_dir, test_fields=list(ctx.config.test_fields), train_fields=meta["train_fields"],
        versions=meta["versions"], final_choice=meta.get("final_choice", "–"),
        total_seconds=f"{meta['total_seconds']:.0f}", stage_seconds=[f"{k} {v:.0f} s" for k, v in timings.items()],
        headline=ctx.numbers("baselines").get("headline"), targets=targets_markdown(ctx, meta), label_note=LABEL_NOTE,
        sections=[{"title": stage.title, "markdown": ctx.results[stage.name].markdown
                   if stage.name in ctx.results else None} for stage in STAGES],
        seed=ctx.seed)
    path = ctx.out_dir / "report.md"
    _atomic_text(path, text + "\n")
    return path


def readme_headline(ctx, meta: dict) -> str:
    """The README's headline block: the test-field table, the targets, reliability, alignment, run time."""
    base = ctx.numbers("baselines")
    targets = targets_markdown(ctx, meta)
    parts = [base["headline"],
             ("Targets (test field and held-out fields; section 'Targets' of the report):\n\n" + targets)
             if targets else "",
             reliability_headline(base),
             alignment_headline(ctx.numbers("alignment")),
             f"The run took {meta['total_seconds']:.0f} s on {os.cpu_count()} CPU core(s) ({meta['date']}, "
             f"commit {meta['commit']}); per-stage times are in the report."]
    return "\n\n".join(p for p in parts if p)


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
    from .common import markdown_table

    bias = res.get("bias_px", {})
    if "sdss_refined" not in bias or "sdss_scatter_median_px" not in res:
        return ""

    def num(v):
        return "–" if v is None else f"{v:.3f}"

    n = res.get("n_alignment_stars", {})
    worst = res.get("bias_worst_field_px", {}).get("sdss_refined_loo", {})
    rows = [[b, str(n.get(b, "–")), num(res.get("before_median_px", {}).get(b)), num(bias["sdss_refined"].get(b)),
             num(bias.get("sdss_refined_loo", {}).get(b)), f"{num(worst[b][0])} ({worst[b][1]})" if b in worst else "–",
             num(res.get("sdss_refined_loo_median_px", {}).get(b)), num(res["sdss_scatter_median_px"].get(b))]
            for b in "ugiz"]
    columns = ["band", "stars", "before: raw pixel indices", "systematic offset, held out: x-split",
               "systematic, leave-one-out", "worst single field (leave-one-out)",
               "per-star median, ours (leave-one-out)", "per-star median, SDSS's own astrometry"]
    return "\n".join(["Band-to-band alignment of the cutouts, bright isolated stars of the study's "
                      f"{len(res.get('fields', []))} fields (pixels of 0.396″; section 1 of the report): the "
                      "systematic offset left by the Aligner, and the star-to-star scatter of the cutout centre "
                      "about the star's SDSS-measured centroid in that band, next to the scatter of SDSS's own "
                      "band-to-band astrometry:", "", markdown_table(pd.DataFrame(rows, columns=columns))])


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
    selected = set(args.stages.split(",")) if args.stages else {stage.name for stage in STAGES}
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

    for stage in STAGES:
        if stage.name in selected:
            run_stage(ctx, stage, timings)
    save_models(ctx, out, args.quick)
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "versions": _versions(),
        "train_fields": train_fields,
        "final_choice": ctx.final_cnn()[1],
        "total_seconds": time.perf_counter() - t_start,
    }
    report = write_report(ctx, timings, meta)
    if not args.quick and out.resolve() == DEFAULT_OUT.resolve() and "baselines" in ctx.results:
        update_readme(readme_headline(ctx, meta), os.path.relpath(report, ROOT))
    print(f"\nreport: {report}  ({meta['total_seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
