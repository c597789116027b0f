"""Speed benchmarks for stargal; run them with ``python -m benchmarks.run`` (``make bench``).

Every benchmark is a function registered with :func:`benchmarks.run.benchmark`; it gets a
:class:`benchmarks.run.Context` (data source, scratch directory) and returns
:class:`benchmarks.run.Result` rows. Each ratio is measured side by side within one run.
"""
