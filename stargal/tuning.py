"""Group-aware hyper-parameter search on joblib (loky) or a Dask cluster.

:func:`grid_search` wraps :class:`sklearn.model_selection.GridSearchCV` with

* group-aware folds (``StratifiedGroupKFold`` on sky-region groups, see :mod:`stargal.split`),
  so no sky region is in both the training and the scoring part of a fold;
* Matthews correlation as the default score (robust to the star/galaxy imbalance);
* a choice of parallel backend through :func:`parallel_backend_for`: in-process (``n_jobs=1``),
  local loky worker processes (``n_jobs > 1``) or a Dask ``distributed`` cluster
  (``scheduler='tcp://host:port'`` or a ``distributed.Client``);
* wall-clock timing recorded on the result (``search.timing_``).

Threads per worker (avoiding oversubscription)
----------------------------------------------
A CV fit of the CNN uses torch, which by default starts one thread per core; ``k`` parallel fits
would then run ``k x cores`` threads. The backends here cap the threads of native thread pools
(OpenMP -- torch's intra-op pool --, MKL, OpenBLAS) inside each worker to
``inner_max_num_threads`` (default ``max(1, cores // workers)``):

* **loky** (``n_jobs > 1``): joblib starts the worker processes with ``OMP_NUM_THREADS``,
  ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ... set to the cap
  (``joblib.parallel_config(inner_max_num_threads=...)``); torch reads ``OMP_NUM_THREADS`` when it
  is first imported in the worker, so ``torch.get_num_threads()`` there equals the cap.
* **dask**: for every worker running in *another process*, the cap ``max(1, cpus_of_host //
  threads_of_all_workers_on_that_host)`` is applied once per search with ``Client.run``: the
  environment variables above are set, ``threadpoolctl.threadpool_limits`` is applied and, if
  torch is already imported there, ``torch.set_num_threads`` is called. These settings persist
  for the lifetime of the worker. (Dask's nanny already starts worker processes with
  ``OMP_NUM_THREADS=1``.) Workers that are threads of the calling process
  (``LocalCluster(processes=False)``) are left untouched, since changing them would change the
  caller's own process. Start such clusters with ``threads_per_worker=1``.
* **sequential** (``n_jobs=1``): nothing is changed.

Inside the loky and dask contexts the backend is set explicitly, so nested joblib calls made in
the *calling* process (e.g. a random forest's ``n_jobs`` during the final refit) also use it
rather than their preferred threads.

Examples
--------
>>> import numpy as np
>>> from sklearn.linear_model import LogisticRegression
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(120, 3)); y = (X[:, 0] + 0.5 * rng.normal(size=120) > 0).astype(int)
>>> groups = np.repeat(np.arange(12), 10)
>>> search = grid_search(LogisticRegression(), {"C": [0.1, 1.0]}, X, y, groups, cv=3)
>>> sorted(search.best_params_)
['C']
>>> search.timing_["backend"]
'sequential'
"""

from __future__ import annotations

import os
import time
import warnings
from contextlib import contextmanager
from numbers import Integral

import numpy as np
import pandas as pd

__all__ = [
    "grid_search",
    "cv_results_frame",
    "parallel_backend_for",
    "resolve_scoring",
    "THREAD_ENV_VARS",
]

#: Environment variables that cap native thread pools (OpenMP/torch, MKL, OpenBLAS, ...).
THREAD_ENV_VARS: tuple[str, ...] = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def _cpu_count() -> int:
    from joblib import cpu_count

    return max(1, int(cpu_count()))


def _check_n_jobs(n_jobs):
    if n_jobs is None:
        return 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, Integral) or n_jobs == 0:
        raise ValueError(f"n_jobs must be a non-zero integer (-1 = all cores), got {n_jobs!r}")
    return int(n_jobs)


def _check_inner(inner):
    if inner is None:
        return None
    if isinstance(inner, bool) or not isinstance(inner, Integral) or inner < 1:
        raise ValueError(f"inner_max_num_threads must be None or an integer >= 1, got {inner!r}")
    return int(inner)


def _make_thread_limiter():
    """A function that caps native thread pools in the process it runs in.

    Built as a closure so that cloudpickle ships it *by value*: Dask workers need not have
    stargal installed to run it.
    """

    def limit_threads(n, env_vars):
        import os as _os
        import sys as _sys

        for var in env_vars:
            _os.environ[var] = str(n)
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=n)  # called as a function: stays in effect
        except Exception:  # threadpoolctl missing or a library refusing: env vars still apply
            pass
        torch = _sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(n)
        return n

    return limit_threads


def _make_worker_probe():
    def probe():
        import os as _os
        import socket

        return socket.gethostname(), _os.getpid(), _os.cpu_count() or 1

    return probe


def _cap_dask_workers(client, inner=None):
    """Cap native threads on Dask workers in other processes; returns {worker address: cap}."""
    import socket

    probes = client.run(_make_worker_probe())
    nthreads = client.nthreads()
    per_host = {}
    for addr, (host, _pid, _cpus) in probes.items():
        per_host[host] = per_host.get(host, 0) + int(nthreads.get(addr, 1))
    here = (socket.gethostname(), os.getpid())
    caps = {}
    limiter = _make_thread_limiter()
    for addr, (host, pid, cpus) in probes.items():
        if (host, pid) == here:
            continue  # a thread of this very process: leave the caller's settings alone
        cap = inner if inner is not None else max(1, int(cpus) // max(1, per_host[host]))
        client.run(limiter, cap, THREAD_ENV_VARS, workers=[addr])
        caps[addr] = cap
    return caps


@contextmanager
def parallel_backend_for(scheduler=None, n_jobs=1, inner_max_num_threads=None):
    """Context manager selecting the joblib backend for stargal's parallel work.

    Inside the block, scikit-learn estimators created with ``n_jobs=None`` and
    ``joblib.Parallel(n_jobs=None)`` calls run on the chosen backend.

    Parameters
    ----------
    scheduler : str or distributed.Client, optional
        Dask scheduler address (``'tcp://127.0.0.1:8786'``) or a connected client. A client
        created here from an address is closed on exit; a given client is left open.
    n_jobs : int, default=1
        Without a scheduler: ``1`` runs in-process, ``k > 1`` uses ``k`` loky processes,
        ``-1`` all cores. With a scheduler: ``1`` or ``-1`` use every worker thread; ``k > 1``
        caps the number of concurrent tasks at ``k``.
    inner_max_num_threads : int, optional
        Native threads per worker; default ``max(1, cores // workers)`` (see module notes).

    Yields
    ------
    info : dict
        ``backend`` (``'sequential'``, ``'loky'`` or ``'dask'``), ``n_jobs`` (effective
        number of concurrent tasks), ``inner_max_num_threads`` (int, or for dask a dict
        ``{worker address: cap}``), ``scheduler`` (address or None) and ``client``.

    Examples
    --------
    >>> from joblib import Parallel, delayed
    >>> with parallel_backend_for(n_jobs=1) as info:
    ...     out = Parallel()(delayed(abs)(v) for v in (-1, -2))
    >>> info["backend"], out
    ('sequential', [1, 2])
    """
    from joblib import effective_n_jobs, parallel_config

    n_jobs = _check_n_jobs(n_jobs)
    inner = _check_inner(inner_max_num_threads)

    if scheduler is None:
        n_eff = 1 if n_jobs == 1 else int(effective_n_jobs(n_jobs))
        if n_eff == 1:
            info = {"backend": "sequential", "n_jobs": 1, "inner_max_num_threads": None,
                    "scheduler": None, "client": None}
            # only n_jobs: estimators' own explicit n_jobs (a forest's threads) still apply
            with parallel_config(n_jobs=1):
                yield info
            return
        cap = inner if inner is not None else max(1, _cpu_count() // n_eff)
        info = {"backend": "loky", "n_jobs": n_eff, "inner_max_num_threads": cap,
                "scheduler": None, "client": None}
        with parallel_config(backend="loky", n_jobs=n_eff, inner_max_num_threads=cap):
            yield info
        return

    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover - distributed is a dependency
        raise ImportError("a Dask scheduler needs the 'distributed' package") from exc

    own_client = False
    if isinstance(scheduler, Client):
        client = scheduler
    elif isinstance(scheduler, str):
        try:
            client = Client(scheduler, set_as_default=False, timeout="20s")
        except OSError as exc:
            raise ConnectionError(
                f"cannot connect to the Dask scheduler at {scheduler!r}: {exc}"
            ) from exc
        own_client = True
    else:
        raise TypeError(
            "scheduler must be an address string such as 'tcp://127.0.0.1:8786' or a "
            "distributed.Client, "
            f"got {type(scheduler).__name__}"
        )
    try:
        total_threads = sum(client.nthreads().values())
        if total_threads == 0:
            raise RuntimeError(f"the Dask cluster at {client.scheduler.address} has no workers")
        caps = _cap_dask_workers(client, inner)
        n_dask = -1 if n_jobs in (1, -1) else n_jobs
        info = {
            "backend": "dask",
            "n_jobs": total_threads if n_dask == -1 else min(n_dask, total_threads),
            "inner_max_num_threads": caps,
            "scheduler": client.scheduler.address,
            "client": client,
        }
        with parallel_config(backend="dask", n_jobs=n_dask, client=client):
            yield info
    finally:
        if own_client:
            client.close()


def resolve_scoring(scoring):
    """Scorer name or callable; ``'matthews_corrcoef'`` falls back to ``make_scorer`` if needed.

    Examples
    --------
    >>> resolve_scoring("matthews_corrcoef")
    'matthews_corrcoef'
    """
    from sklearn.metrics import get_scorer_names, make_scorer, matthews_corrcoef

    if scoring == "matthews_corrcoef" and scoring not in get_scorer_names():  # pragma: no cover
        return make_scorer(matthews_corrcoef)
    return scoring


def _n_samples(X):
    from ._validation import num_samples

    return num_samples(X)


def grid_search(
    estimator,
    param_grid,
    X,
    y,
    groups,
    *,
    cv=5,
    scoring="matthews_corrcoef",
    n_jobs=1,
    scheduler=None,
    refit=True,
    verbose=0,
    fit_params=None,
    random_state=0,
    inner_max_num_threads=None,
    error_score="raise",
):
    """Exhaustive, group-aware grid search on the chosen parallel backend.

    Parameters
    ----------
    estimator : estimator
        Any scikit-learn compatible estimator or pipeline (cloned for every fit).
    param_grid : dict or list of dict
        As for ``GridSearchCV`` (pipeline parameter names, e.g. ``'net__lr'``).
    X : array-like or DataFrame, shape (n, ...)
    y : array-like, shape (n,)
        Labels (1 = galaxy, 0 = star).
    groups : array-like, shape (n,)
        Sky-region groups (:func:`stargal.split.make_groups`). Required: folds never split a
        group.
    cv : int or CV splitter, default=5
        An int builds ``StratifiedGroupKFold(cv, shuffle=True, random_state=random_state)``; a
        splitter is used as given (it receives ``groups``).
    scoring : str, callable or dict, default='matthews_corrcoef'
    n_jobs : int, default=1
        See :func:`parallel_backend_for`.
    scheduler : str or distributed.Client, optional
        Run the CV fits on a Dask cluster (see :func:`parallel_backend_for`). The estimator and
        the data are shipped to the workers; anything the estimator reads from disk (the SDSS
        cache) must be reachable from them.
    refit : bool or str, default=True
        Refit the best candidate on all of ``X`` (in the calling process).
    verbose : int, default=0
    fit_params : dict, optional
        Extra keyword arguments for ``estimator.fit``.
    random_state : int, default=0
        Fold shuffling when ``cv`` is an int.
    inner_max_num_threads : int, optional
        Native threads per worker (see module notes).
    error_score : 'raise' or float, default='raise'
        What a failing fit does (``GridSearchCV`` semantics).

    Returns
    -------
    search : sklearn.model_selection.GridSearchCV
        Fitted. ``search.timing_`` is a dict with ``wall_time_s`` (seconds, the whole search
        including the refit), ``backend``, ``n_jobs``, ``inner_max_num_threads``, ``scheduler``,
        ``n_candidates`` and ``n_splits``.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> rng = np.random.default_rng(1)
    >>> X = rng.normal(size=(60, 2)); y = (X[:, 0] > 0).astype(int); g = np.arange(60) // 6
    >>> s = grid_search(LogisticRegression(), {"C": [1.0]}, X, y, g, cv=2)
    >>> s.n_splits_, round(s.timing_["wall_time_s"] >= 0)
    (2, 1)
    """
    from sklearn.model_selection import GridSearchCV

    from stargal.split import make_cv

    if groups is None:
        raise ValueError(
            "groups is required: pass sky-region groups (stargal.split.make_groups) so folds "
            "never split a region"
        )
    groups = np.asarray(groups)
    n = _n_samples(X)
    if groups.ndim != 1 or len(groups) != n:
        raise ValueError(
            f"groups must be 1-d with one entry per sample ({n}), got shape {groups.shape}"
        )
    if y is not None and len(y) != n:
        raise ValueError(f"X has {n} samples but y has {len(y)}")
    if fit_params is not None and not isinstance(fit_params, dict):
        raise TypeError(f"fit_params must be a dict or None, got {type(fit_params).__name__}")
    if isinstance(cv, Integral) and not isinstance(cv, bool):
        n_groups = len(np.unique(groups))
        if n_groups < cv:
            raise ValueError(
                f"cv={cv} folds need at least {cv} groups, got {n_groups}; use smaller sky cells "
                "or fewer folds"
            )
        cv = make_cv(int(cv), stratified=True, shuffle=True, random_state=random_state)
    elif not hasattr(cv, "split"):
        raise TypeError(f"cv must be an int or a CV splitter with a split() method, got {cv!r}")

    search = GridSearchCV(
        estimator,
        param_grid,
        scoring=resolve_scoring(scoring),
        n_jobs=None,  # taken from the parallel_backend_for context
        cv=cv,
        refit=refit,
        verbose=verbose,
        error_score=error_score,
    )
    with parallel_backend_for(scheduler, n_jobs, inner_max_num_threads) as info:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*least populated class.*", category=UserWarning
            )
            search.fit(X, y, groups=groups, **(fit_params or {}))
        wall = time.perf_counter() - start
    search.timing_ = {
        "wall_time_s": wall,
        "backend": info["backend"],
        "n_jobs": info["n_jobs"],
        "inner_max_num_threads": info["inner_max_num_threads"],
        "scheduler": info["scheduler"],
        "n_candidates": len(search.cv_results_["params"]),
        "n_splits": search.n_splits_,
    }
    return search


def cv_results_frame(search):
    """Tidy ``cv_results_``: one row per candidate, best first.

    Parameters
    ----------
    search : fitted GridSearchCV (or any fitted ``BaseSearchCV``)

    Returns
    -------
    pandas.DataFrame
        One column per hyper-parameter (``param_`` prefix removed), then ``mean_test_*``,
        ``std_test_*``, ``rank_test_*``, per-split ``split{k}_test_*`` scores,
        ``mean_fit_time``/``std_fit_time``/``mean_score_time``/``std_score_time`` (seconds)
        and train scores if recorded. Sorted by the refit metric's rank. ``frame.attrs['timing']``
        holds ``search.timing_`` when present.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 2)); y = (X[:, 0] > 0).astype(int); g = np.arange(60) // 6
    >>> s = grid_search(LogisticRegression(), {"C": [0.01, 1.0]}, X, y, g, cv=2)
    >>> list(cv_results_frame(s).columns[:3])
    ['C', 'mean_test_score', 'std_test_score']
    """
    res = getattr(search, "cv_results_", None)
    if res is None:
        raise ValueError("search is not fitted: it has no cv_results_")
    params = pd.DataFrame(list(res["params"]))
    metric_cols = [k for k in res if k != "params" and not k.startswith("param_")]

    def order(col):
        prefixes = ("mean_test", "std_test", "rank_test", "split", "mean_train", "std_train")
        for rank, prefix in enumerate(prefixes):
            if col.startswith(prefix):
                return (rank, col)
        return (9, col)

    metric_cols = sorted(metric_cols, key=order)
    metrics = pd.DataFrame({k: np.asarray(res[k]) for k in metric_cols})
    out = pd.concat([params, metrics], axis=1)
    refit = getattr(search, "refit", True)
    rank_col = "rank_test_score"
    if isinstance(refit, str) and f"rank_test_{refit}" in out:
        rank_col = f"rank_test_{refit}"
    if rank_col not in out:
        rank_col = next((c for c in out if c.startswith("rank_test_")), None)
    if rank_col is not None:
        out = out.sort_values(rank_col, kind="stable").reset_index(drop=True)
    timing = getattr(search, "timing_", None)
    if timing is not None:
        out.attrs["timing"] = {k: v for k, v in timing.items()}
    return out
