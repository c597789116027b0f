"""Tests for stargal.tuning: group-aware grid search on sequential, loky and Dask backends."""

from __future__ import annotations

import os

import numpy as np
import pytest
from joblib import Parallel, delayed
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stargal.tuning import THREAD_ENV_VARS, cv_results_frame, grid_search, parallel_backend_for

GRID = {
    "logisticregression__C": [0.01, 0.1, 1.0],
    "logisticregression__fit_intercept": [True, False],
}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n = 240
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=1.0, size=n) > 0.3).astype(int)
    groups = np.repeat(np.arange(24) * 11, 10)  # 24 sky regions of 10 objects
    return X, y, groups


def pipeline():
    return make_pipeline(StandardScaler(), LogisticRegression())


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    cl = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    try:
        yield cl
    finally:
        cl.close()


def _thread_state():
    import os as _os

    return _os.environ.get("OMP_NUM_THREADS"), _os.getpid()


def _torch_threads():
    import torch

    return torch.get_num_threads()


@pytest.fixture(scope="module")
def reference(data):
    X, y, groups = data
    return grid_search(pipeline(), GRID, X, y, groups, cv=4, n_jobs=1)


def test_sequential_search(reference, data):
    X, y, groups = data
    s = reference
    assert s.timing_["backend"] == "sequential"
    assert s.timing_["wall_time_s"] > 0
    assert s.timing_["n_candidates"] == 6 and s.timing_["n_splits"] == 4
    assert isinstance(s.cv, StratifiedGroupKFold)
    assert s.scoring == "matthews_corrcoef"
    assert set(s.best_params_) == set(GRID)
    # a real fit: the informative model beats chance clearly
    assert s.best_score_ > 0.2
    assert s.predict(X).shape == y.shape


def test_folds_never_split_groups(reference, data):
    X, y, groups = data
    n_seen = np.zeros(len(y), dtype=int)
    for tr, te in reference.cv.split(X, y, groups):
        assert set(groups[tr]).isdisjoint(groups[te])
        n_seen[te] += 1
    assert (n_seen == 1).all()


def _assert_same_search(a, b):
    assert a.best_params_ == b.best_params_
    for key in ("mean_test_score", "std_test_score", "rank_test_score"):
        np.testing.assert_allclose(a.cv_results_[key], b.cv_results_[key], rtol=1e-12, atol=0)
    for k in range(a.n_splits_):
        key = f"split{k}_test_score"
        np.testing.assert_allclose(a.cv_results_[key], b.cv_results_[key], rtol=1e-12, atol=0)


def test_loky_matches_sequential(reference, data):
    X, y, groups = data
    s = grid_search(pipeline(), GRID, X, y, groups, cv=4, n_jobs=2)
    assert s.timing_["backend"] == "loky" and s.timing_["n_jobs"] == 2
    assert s.timing_["inner_max_num_threads"] == max(1, os.cpu_count() // 2)
    _assert_same_search(s, reference)


def test_dask_matches_sequential(reference, data, cluster):
    X, y, groups = data
    s = grid_search(pipeline(), GRID, X, y, groups, cv=4, scheduler=cluster.scheduler_address)
    assert s.timing_["backend"] == "dask"
    assert s.timing_["scheduler"] == cluster.scheduler_address
    assert s.timing_["n_jobs"] == 2
    _assert_same_search(s, reference)


def test_dask_client_object_and_thread_caps(data, cluster):
    from distributed import Client

    X, y, groups = data
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        with parallel_backend_for(scheduler=client, inner_max_num_threads=2) as info:
            assert info["backend"] == "dask" and info["client"] is client
            assert set(info["inner_max_num_threads"]) == set(client.nthreads())
            assert set(info["inner_max_num_threads"].values()) == {2}
            # tasks dispatched through joblib run on the workers, with the cap applied
            out = Parallel()(delayed(_thread_state)() for _ in range(4))
        assert {env for env, _ in out} == {"2"}
        assert os.getpid() not in {pid for _, pid in out}
        env = client.run(lambda: os.environ["MKL_NUM_THREADS"])
        assert set(env.values()) == {"2"}
        # a client we passed in stays open
        assert client.status == "running"
        # default cap: the host's cores shared by the cluster's 2 worker threads
        with parallel_backend_for(scheduler=client) as info:
            assert set(info["inner_max_num_threads"].values()) == {max(1, os.cpu_count() // 2)}
        grid = {"logisticregression__C": [1.0]}
        s = grid_search(pipeline(), grid, X, y, groups, cv=3, scheduler=client)
        assert s.timing_["backend"] == "dask"


@pytest.mark.slow
def test_torch_threads_capped_in_workers(cluster):
    pytest.importorskip("torch")
    with parallel_backend_for(n_jobs=2, inner_max_num_threads=2) as info:
        assert info["backend"] == "loky"
        out = Parallel()(delayed(_torch_threads)() for _ in range(2))
    assert out == [2, 2]
    from distributed import Client

    with Client(cluster.scheduler_address, set_as_default=False) as client:
        client.run(_torch_threads)  # torch already imported on the workers ...
        with parallel_backend_for(scheduler=client, inner_max_num_threads=3):
            pass
        # ... and still capped, by torch.set_num_threads
        assert set(client.run(_torch_threads).values()) == {3}
        with parallel_backend_for(scheduler=client, inner_max_num_threads=1):
            pass
        assert set(client.run(_torch_threads).values()) == {1}


def test_loky_inner_threads_env():
    with parallel_backend_for(n_jobs=2, inner_max_num_threads=1) as info:
        out = Parallel()(delayed(_thread_state)() for _ in range(4))
    assert info == {
        "backend": "loky",
        "n_jobs": 2,
        "inner_max_num_threads": 1,
        "scheduler": None,
        "client": None,
    }
    assert {env for env, _ in out} == {"1"}
    assert os.getpid() not in {pid for _, pid in out}


def test_sequential_backend_runs_in_process():
    before = {v: os.environ.get(v) for v in THREAD_ENV_VARS}
    with parallel_backend_for(n_jobs=1) as info:
        out = Parallel()(delayed(_thread_state)() for _ in range(2))
    assert info["backend"] == "sequential"
    assert {pid for _, pid in out} == {os.getpid()}
    assert {v: os.environ.get(v) for v in THREAD_ENV_VARS} == before


def test_cv_results_frame(reference):
    df = cv_results_frame(reference)
    assert len(df) == 6
    assert list(df.columns[:2]) == ["logisticregression__C", "logisticregression__fit_intercept"]
    expected = {"mean_test_score", "std_test_score", "rank_test_score", "split0_test_score",
                "mean_fit_time"}
    assert expected <= set(df)
    assert df["rank_test_score"].is_monotonic_increasing
    best = df.iloc[0]
    assert {k: best[k] for k in GRID} == reference.best_params_
    assert best["mean_test_score"] == pytest.approx(reference.best_score_)
    assert df.attrs["timing"]["backend"] == "sequential"
    with pytest.raises(ValueError, match="not fitted"):
        cv_results_frame(object())


def test_custom_cv_splitter_and_fit_params(data):
    X, y, groups = data
    w = np.ones(len(y))
    s = grid_search(LogisticRegression(), {"C": [0.1, 1.0]}, X, y, groups, cv=GroupKFold(3),
                    fit_params={"sample_weight": w}, scoring="accuracy")
    assert isinstance(s.cv, GroupKFold) and s.n_splits_ == 3
    assert 0.5 < s.best_score_ <= 1.0


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"groups": None}, ValueError, "groups is required"),
        ({"groups": np.arange(5)}, ValueError, "one entry per sample"),
        ({"cv": 30}, ValueError, "at least 30 groups"),
        ({"cv": "five"}, TypeError, "split"),
        ({"n_jobs": 0}, ValueError, "n_jobs"),
        ({"inner_max_num_threads": 0}, ValueError, "inner_max_num_threads"),
        ({"scheduler": 8786}, TypeError, "scheduler"),
        ({"fit_params": [1]}, TypeError, "fit_params"),
    ],
)
def test_grid_search_input_errors(data, kwargs, exc, match):
    X, y, groups = data
    args = {"groups": groups, **kwargs}
    g = args.pop("groups")
    with pytest.raises(exc, match=match):
        grid_search(LogisticRegression(), {"C": [1.0]}, X, y, g, **args)


def test_failing_fit_raises_by_default(data):
    X, y, groups = data
    with pytest.raises(ValueError):
        grid_search(LogisticRegression(), {"C": [-1.0]}, X, y, groups, cv=3)
