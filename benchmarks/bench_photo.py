"""Model-fit photometry on the prediction path: how fast SDSS's measurement runs, and what it costs
``stargal predict``.

* **measurement, one core**: :class:`stargal.photo.SDSSPhotometry` on the catalog objects of a training
  field (1043-5-25) from a warm cache (frames decompressed, the field's PSF model and template banks
  built by a first call), the per-object memo cleared before every timed call, one BLAS/numba thread.
  Target: at least 2,000 objects/s.
* **predict with the shipped default vs the CNN path**: :func:`stargal.predict.predict_coordinates` from
  plain RA/Dec (fields named: no index lookup), warm cache, ``n_jobs=-1`` (one field: its rows split over
  the machine's cores as threads), and again with ``n_jobs=1``, with the model kind
  ``stargal train`` ships by default (``study.toml``'s ``default_model``; the study's saved model when it
  exists, else a small one fitted here) against the study's CNN (``experiments/results/cnn.stargal``) in the
  same run. Target: the default at least 3,000 objects/s.
"""

from __future__ import annotations

import os

from benchmarks.run import REPO_ROOT, Result, benchmark, best_time

FIELD = "1043-5-25"
RESULTS = REPO_ROOT / "experiments" / "results"


def _default_model(kind, kw):
    """The study's shipped model of ``kind`` if saved, else one fitted here on two training fields."""
    from stargal.persist import load_model

    path = RESULTS / f"{kind}.stargal"
    if path.is_file():
        return load_model(path), f"the study's `{path.name}`"
    from stargal.training import build_pipeline, fit_pipeline, study_table

    table = study_table(fields=["1035-6-17", "3184-2-169"], **kw)
    rows = table[table["split"] == "train"]
    params = {"forest__n_estimators": 300} if kind == "forest" else {"net__max_epochs": 2} if kind in (
        "cnn", "hybrid") else {}
    pipe = build_pipeline(kind, params=params, **kw)
    return fit_pipeline(pipe, rows), f"a {kind} fitted here on {len(rows)} objects (no study model saved)"


@benchmark("photometry")
def bench_photometry(ctx) -> list[Result]:
    """SDSSPhotometry objects/s on one core; predict objects/s with the default model vs the CNN."""
    from threadpoolctl import threadpool_limits

    import stargal.photo as photo
    from stargal.align import Aligner
    from stargal.catalogs import read_calibobj
    from stargal.config import load_config
    from stargal.persist import load_model
    from stargal.predict import predict_coordinates

    kw = {"sas_url": ctx.require_data(), "cache_dir": ctx.cache_dir}
    coords = read_calibobj(FIELD, **kw)[["ra", "dec"]]
    aligned = Aligner(fields=[FIELD], policy="flag", **kw).fit_transform(coords)
    good = aligned[aligned["flag"] == ""]
    measure = photo.SDSSPhotometry(**kw)
    measure.fit(good).transform(good)  # warm: frames, PSF model, template banks, normalisations

    def run_measure():
        photo._ROWS.clear()  # every object measured afresh
        measure.transform(good)

    import numba

    numba.set_num_threads(1)
    with threadpool_limits(1):  # a call takes a third of a second: best of at least 5 (other users' load)
        t_measure = best_time(run_measure, max(ctx.repeat, 5))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    rate = len(good) / t_measure

    out = [Result("SDSSPhotometry (model-fit photometry), one core (target: 2,000 objects/s)", rate, 2000.0,
                  "objects/s", 1.0,
                  f"{len(good)} catalog objects of {FIELD} (aligned, warm cache, banks built), per-object memo "
                  f"cleared before each call (best of {max(ctx.repeat, 5)}), one BLAS and numba thread: five bands "
                  "of stamps, neighbour masks, "
                  "PSF-fitted centres, PSF flux, exp/deV template fits, cModel, type statistic")]

    kind = load_config().default_model
    default, how = _default_model(kind, kw)
    cnn_path = RESULTS / "cnn.stargal"
    field = [FIELD]
    if kind != "cnn" and cnn_path.is_file():
        cnn = load_model(cnn_path)
        predict_coordinates(default, coords, fields=field, progress=False, **kw)
        predict_coordinates(cnn, coords, fields=field, progress=False, **kw)

        def run_default(n_jobs):
            photo._ROWS.clear()
            predict_coordinates(default, coords, fields=field, progress=False, n_jobs=n_jobs, **kw)

        predict_coordinates(default, coords, fields=field, progress=False, n_jobs=-1, **kw)  # threads warmed
        repeat = max(ctx.repeat, 5)  # a call takes a fifth of a second: best of at least 5, like the measurement's
        t_default = best_time(lambda: run_default(-1), repeat)
        t_serial = best_time(lambda: run_default(1), repeat)
        t_cnn = best_time(lambda: predict_coordinates(cnn, coords, fields=field, progress=False, **kw), repeat)
        out += [
            Result(f"stargal predict, shipped default ({kind}) (target: 3,000 objects/s)", len(coords) / t_default,
                   3000.0, "objects/s", 1.0,
                   f"predict_coordinates(n_jobs=-1) from {len(coords)} plain RA/Dec of {FIELD} (fields named), "
                   f"warm cache, {os.cpu_count()} CPUs (one field: its rows split over {os.cpu_count()} threads), "
                   f"per-object memo cleared, best of {max(ctx.repeat, 5)}; model: {how}"),
            Result(f"stargal predict, shipped default ({kind}): n_jobs=-1 vs n_jobs=1", len(coords) / t_default,
                   len(coords) / t_serial, "objects/s", None,
                   "the same call on one thread (the measurement's BLAS at its default threads)"),
            Result(f"stargal predict, shipped default ({kind}) vs the CNN path", len(coords) / t_default,
                   len(coords) / t_cnn, "objects/s", None,
                   "the same call with the study's calibrated CNN (`cnn.stargal`), measured one after the other "
                   "in this run"),
        ]
    return out
