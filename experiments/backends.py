"""Parallel backends for the CNN grid search: sequential, loky and Dask, timed side by side.

The tuning stage (:mod:`experiments.tuning_stage`) reports one small search timed on each
backend, one after the other in one process: in-process with torch's default threads and with
one thread, on 2 loky processes, and on a 2-worker Dask ``LocalCluster`` twice (with and without
the nanny's ``MALLOC_TRIM_THRESHOLD_``), or on ``ctx.scheduler``. Worker start-up is excluded:
every worker is warmed up by one tiny fit first. :func:`backend_timing` does the timing and
:func:`backends_markdown` its table; ``python -m benchmarks.run --only tuning-backends``
(:mod:`benchmarks.bench_backends`) runs it on the quick study's train rows. Imports go one way:
``benchmarks -> experiments -> stargal``.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from stargal.training import cnn_param_grid

from .common import fmt, markdown_table

__all__ = ["backend_timing", "backends_markdown", "preserved_environ", "SEQ_LABEL", "SEQ1_LABEL",
           "DASK_LABEL", "DASK_TRIM_LABEL"]


def _same_params(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    return all(np.isclose(a[k], b[k]) if isinstance(a[k], float) else a[k] == b[k] for k in a)


def _make_warmup():
    """A function fitting a pipeline once (1 epoch, few rows): imports torch and stargal, maps
    the frames and builds torch's kernels in the process it runs in. A closure, so that
    cloudpickle ships it by value to loky and Dask workers."""

    def warmup(pipe, rows):
        from stargal.training import fit_pipeline

        fit_pipeline(pipe, rows)
        return True

    return warmup


def _warmup_args(ctx):
    rows = ctx.rows("train")
    rows = rows.groupby("label", group_keys=False).head(100)
    return ctx.pipeline("cnn", params={"net__max_epochs": 1}), rows


def _warm_loky(ctx, n_jobs: int) -> None:
    """Start the loky workers (with the search's thread cap) and warm them up."""
    from joblib import Parallel, delayed

    from stargal.tuning import parallel_backend_for

    pipe, rows = _warmup_args(ctx)
    with parallel_backend_for(n_jobs=n_jobs):
        Parallel()(delayed(_make_warmup())(pipe, rows) for _ in range(n_jobs))


def _warm_dask(ctx, client) -> None:
    """Warm up every Dask worker (not part of the timed search)."""
    pipe, rows = _warmup_args(ctx)
    client.run(_make_warmup(), pipe, rows)


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on every platform
        return float("nan")


SEQ_LABEL = "sequential (n_jobs=1)"
SEQ1_LABEL = "sequential, 1 torch thread"


def backend_timing(ctx, settings, search) -> tuple[pd.DataFrame, dict]:
    """Time one small search on each backend (worker start-up excluded).

    Runs, in order: in-process with torch's default threads (``n_jobs=1``); in-process with
    ``torch.set_num_threads(1)`` (restored afterwards), separating the per-fit threading effect
    from parallelism; 2 loky processes; Dask (``ctx.scheduler`` or a 2-worker LocalCluster).

    ``ctx`` is an :class:`experiments.common.StudyContext`; ``search(ctx, grid, *, epochs, cv,
    n_jobs=1, scheduler=None)`` runs one grid search and returns the fitted search object (the
    tuning stage's own search function, so that the timed search is the stage's search).
    """
    grid = cnn_param_grid(settings["timing_grid"])
    kw = dict(epochs=settings["timing_epochs"], cv=settings["timing_cv"])
    searches, loads, cpu = {}, {}, {}

    def timed(label, **extra):
        print(f"  timing {label} ...", flush=True)
        loads[label] = _load()
        c0 = time.process_time()
        searches[label] = search(ctx, grid, **kw, **extra)
        cpu[label] = time.process_time() - c0

    default_threads = torch.get_num_threads()
    timed(SEQ_LABEL, n_jobs=1)
    torch.set_num_threads(1)
    try:
        timed(SEQ1_LABEL, n_jobs=1)
    finally:
        torch.set_num_threads(default_threads)
    _warm_loky(ctx, 2)
    timed("loky (n_jobs=2)", n_jobs=2)
    startup, dask_error = np.nan, None
    try:  # a failing Dask run is reported, not allowed to discard the tuned model
        startup = _dask_timing(ctx, timed)
    except Exception as exc:  # noqa: BLE001 - reported in the CSV-adjacent info and markdown
        dask_error = f"{type(exc).__name__}: {exc}"
        print(f"  Dask timing failed: {dask_error}", flush=True)

    ref, ref1 = searches[SEQ_LABEL], searches[SEQ1_LABEL]
    ref_scores = np.asarray(ref.cv_results_["mean_test_score"], float)
    rows = []
    for name, s in searches.items():
        t = s.timing_
        inner = t["inner_max_num_threads"]
        if isinstance(inner, dict):
            inner = ",".join(str(v) for v in sorted(set(inner.values()))) or "caller's"
        elif inner is None:
            inner = str(1 if name == SEQ1_LABEL else default_threads)
        wall = float(t["wall_time_s"])
        scores = np.asarray(s.cv_results_["mean_test_score"], float)
        rows.append({
            "backend": name,
            "workers": int(t["n_jobs"]),
            "torch_threads_per_worker": str(inner),
            "n_fits": int(t["n_candidates"] * t["n_splits"]),
            "wall_time_s": round(wall, 2),
            "speedup_vs_sequential": round(ref.timing_["wall_time_s"] / wall, 2),
            "speedup_vs_sequential_1thread": round(ref1.timing_["wall_time_s"] / wall, 2),
            "mean_fit_time_s": round(float(np.mean(s.cv_results_["mean_fit_time"])), 2),
            "main_process_cpu_s": round(cpu[name], 1),
            "load_avg_1min_at_start": loads[name],
            "best_params": str(s.best_params_),
            "best_mcc": round(float(s.best_score_), 4),
            "same_best_params": bool(_same_params(s.best_params_, ref.best_params_)),
            "max_abs_score_diff": float(np.max(np.abs(scores - ref_scores))),
        })
    frame = pd.DataFrame(rows)
    info = {"grid": grid, "epochs": settings["timing_epochs"], "cv": settings["timing_cv"],
            "default_torch_threads": default_threads,
            "dask_startup_s": None if not np.isfinite(startup) else round(startup, 1),
            "dask_error": dask_error}
    return frame, info


DASK_LABEL = "dask LocalCluster (2 workers x 1 thread)"
DASK_TRIM_LABEL = "dask LocalCluster, nanny's default malloc trim (2 workers x 1 thread)"


@contextmanager
def preserved_environ():
    """Restore ``os.environ`` on exit: a Dask nanny writes its ``pre-spawn-environ`` variables
    (``OMP_NUM_THREADS=1``, ``MALLOC_TRIM_THRESHOLD_``, ...) into the *calling* process's
    environment, where they would reach every process started later in the study."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def _local_cluster_timing(ctx, timed, label, *, malloc_trim: bool) -> float:
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which switches off glibc's
    # dynamic mmap threshold: torch's per-batch buffers are then mapped and unmapped on every
    # step. ``malloc_trim=False`` drops the variable (also from this process's environment,
    # which the workers inherit, until the cluster is closed).
    overrides = {} if malloc_trim else {
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    t0 = time.perf_counter()
    with preserved_environ():
        if not malloc_trim:
            os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        return _cluster_run(ctx, timed, label, overrides, t0)


def _cluster_run(ctx, timed, label, overrides, t0) -> float:
    import logging

    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(overrides), \
            LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                         dashboard_address=None, processes=True,
                         silence_logs=logging.ERROR) as cluster, \
            Client(cluster, set_as_default=False) as client:
        _warm_dask(ctx, client)
        startup = time.perf_counter() - t0
        print(f"  dask LocalCluster up in {startup:.1f} s", flush=True)
        timed(label, scheduler=client)
    return startup


def _dask_timing(ctx, timed) -> float:
    """Time the search on ``ctx.scheduler``, or on two fresh 2-worker LocalClusters (malloc trim
    off, then Dask's default); returns the start-up seconds of the first cluster."""
    from distributed import Client

    t0 = time.perf_counter()
    if ctx.scheduler is not None:
        with Client(ctx.scheduler, set_as_default=False, timeout="20s") as client:
            _warm_dask(ctx, client)
            startup = time.perf_counter() - t0
            timed(f"dask ({ctx.scheduler})", scheduler=client)
        return startup
    startup = _local_cluster_timing(ctx, timed, DASK_LABEL, malloc_trim=False)
    _local_cluster_timing(ctx, timed, DASK_TRIM_LABEL, malloc_trim=True)
    return startup


def backends_markdown(frame: pd.DataFrame) -> str:
    """The timing table (:func:`backend_timing`'s frame) as Markdown."""
    rows = [[r.backend, r.workers, r.torch_threads_per_worker, r.n_fits, fmt(r.wall_time_s, 1),
             fmt(r.speedup_vs_sequential, 2), fmt(r.speedup_vs_sequential_1thread, 2),
             fmt(r.load_avg_1min_at_start, 1), fmt(r.best_mcc), "yes" if r.same_best_params else "no"]
            for r in frame.itertuples(index=False)]
    columns = ["backend", "concurrent fits", "torch threads / worker", "fits", "wall s", "speedup vs n_jobs=1",
               "speedup vs 1-thread sequential", "load avg at start", "best MCC", "same best params"]
    return markdown_table(pd.DataFrame(rows, columns=columns))
