"""Benchmark: the tuning stage's parallel backends timed side by side (``make bench``).

The timing itself is :func:`experiments.backends.backend_timing` (the tuning stage reports it
too); this module registers it with :mod:`benchmarks.run`, on the quick study's train rows.
"""

from __future__ import annotations

from experiments.backends import SEQ_LABEL, backend_timing

from .run import Result, SkipBenchmark, benchmark

__all__ = ["bench_tuning_backends"]


@benchmark("tuning-backends")
def bench_tuning_backends(ctx) -> list[Result]:
    """The tuning stage's backend timing on the quick study (3 training fields); wall times."""
    sas_url = ctx.require_data()
    import importlib.util

    if importlib.util.find_spec("distributed") is None:  # pragma: no cover - dask is a dependency
        raise SkipBenchmark("dask.distributed is not installed")
    from experiments.common import StudyContext
    from experiments.tuning_stage import cnn_search, search_settings
    from stargal.config import load_config
    from stargal.fetch import get_fetcher
    from stargal.training import study_table

    config = load_config()
    fetcher = get_fetcher(sas_url=sas_url, cache_dir=ctx.cache_dir)
    table = study_table(config, fetcher, fields=list(config.train_fields)[:3])
    study = StudyContext(config, fetcher, table, ctx.scratch / "tuning-backends", quick=True)
    frame, _ = backend_timing(study, search_settings(True, config.cv_folds), cnn_search)
    by = frame.set_index("backend")
    seq = float(by.loc[SEQ_LABEL, "wall_time_s"])
    return [Result(f"grid search wall time: {name} vs sequential", ours=float(row["wall_time_s"]),
                   baseline=seq, unit="s",
                   note="one small CNN grid search; workers warmed up first")
            for name, row in by.iterrows() if name != SEQ_LABEL]
