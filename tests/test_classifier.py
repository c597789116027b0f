"""Tests for stargal.classifier (StarGalaxyNet, SkyValidSplit, make_cnn_net) and the thread probe
of its prediction, stargal._threads (tiny synthetic cutouts, CPU)."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score

from cnn_testing import synthetic_cutouts, tiny
from stargal.classifier import LeakyValidationWarning, SkyValidSplit, make_cnn_net
from stargal.pipelines import make_cnn_pipeline

torch.set_num_threads(1)


# --------------------------------------------------------------------------- ensembles
def test_cnn_ensemble_trains_every_member_on_its_own_loss(cnn_cutouts):
    X, y, groups = cnn_cutouts
    net = make_cnn_net(**tiny(max_epochs=3, members=2)).fit(X, y, groups=groups)
    towers = net.module_.towers
    Xt = torch.as_tensor(X[:64])
    yt = torch.as_tensor(y[:64], dtype=torch.int64)
    net.module_.train()
    with torch.no_grad():
        torch.manual_seed(0)
        loss = net.get_loss(net.module_(Xt), yt, training=True)
        torch.manual_seed(0)
        per = [net.criterion_(t(Xt), yt) for t in towers]  # same dropout draws, in the same order
    torch.testing.assert_close(loss, torch.stack(per).mean())
    proba = net.predict_proba(X)
    net.module_.eval()
    with torch.no_grad():
        mean = torch.stack([torch.softmax(t(torch.as_tensor(X)), -1) for t in towers]).mean(0).numpy()
    np.testing.assert_allclose(proba, mean, atol=1e-6)
    assert balanced_accuracy_score(y, proba.argmax(axis=1)) > 0.8
    assert np.isfinite(net.history[-1, "valid_loss"])


# --------------------------------------------------------------------------- training
def test_cnn_learns_synthetic_problem(cnn_cutouts):
    X, y, groups = cnn_cutouts
    pipe = make_cnn_pipeline(**tiny(max_epochs=5))
    pipe.fit(X, y, net__groups=groups)
    Xt, yt, _ = synthetic_cutouts(300, seed=2)
    proba = pipe.predict_proba(Xt)
    assert proba.shape == (300, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert balanced_accuracy_score(yt, pipe.predict(Xt)) > 0.9
    hist = pipe.named_steps["net"].history
    for key in ("valid_loss", "valid_bacc", "valid_auc"):
        assert np.isfinite(hist[-1, key])


def test_class_weights_balanced_and_in_criterion(cnn_cutouts):
    X, y, groups = cnn_cutouts
    net = make_cnn_net(**tiny(max_epochs=1)).fit(X, y, groups=groups)
    counts = np.bincount(y)
    expected = len(y) / (2 * counts)
    np.testing.assert_allclose(net.class_weight_, expected)
    assert net.class_weight_[1] > net.class_weight_[0]  # galaxies are the minority here
    np.testing.assert_allclose(net.criterion_.weight.numpy(), expected, rtol=1e-6)

    none = make_cnn_net(**tiny(max_epochs=1), class_weight=None).fit(X, y, groups=groups)
    assert none.class_weight_ is None and none.criterion_.weight is None
    fixed = make_cnn_net(**tiny(max_epochs=1), class_weight={0: 1.0, 1: 3.0})
    fixed.fit(X, y, groups=groups)
    np.testing.assert_allclose(fixed.criterion_.weight.numpy(), [1.0, 3.0])


def test_class_weight_survives_clone_and_grid(cnn_cutouts):
    X, y, groups = cnn_cutouts
    net = make_cnn_net(**tiny(max_epochs=1))
    cloned = clone(net)
    assert cloned.class_weight == "balanced" and not hasattr(cloned, "class_weight_")
    cloned.fit(X[:100], y[:100], groups=groups[:100])
    np.testing.assert_allclose(cloned.class_weight_, 100 / (2 * np.bincount(y[:100])))


def test_seeded_training_is_reproducible_and_leaves_global_rng(cnn_cutouts):
    X, y, groups = cnn_cutouts
    state = torch.get_rng_state()
    net1 = make_cnn_net(**tiny(max_epochs=2)).fit(X, y, groups=groups)
    net2 = make_cnn_net(**tiny(max_epochs=2)).fit(X, y, groups=groups)
    assert torch.equal(state, torch.get_rng_state())  # fit does not touch the global RNG
    p1, p2 = net1.predict_proba(X[:20]), net2.predict_proba(X[:20])
    np.testing.assert_array_equal(p1, p2)
    p3 = make_cnn_net(**tiny(max_epochs=2), random_state=7).fit(
        X, y, groups=groups).predict_proba(X[:20])
    assert not np.array_equal(p1, p3)


def test_early_stopping_configured():
    net = make_cnn_net(patience=3).initialize()
    cbs = dict(net.callbacks_)
    assert cbs["early_stopping"].patience == 3 and cbs["early_stopping"].load_best
    assert cbs["early_stopping"].monitor == "valid_loss"
    assert "valid_auc" in cbs and "valid_bacc" in cbs
    no_valid = make_cnn_net(valid_fraction=None).initialize()
    assert "early_stopping" not in dict(no_valid.callbacks_)


def test_input_validation(cnn_cutouts):
    X, y, groups = cnn_cutouts
    net = make_cnn_net(**tiny(max_epochs=1))
    with pytest.raises(ValueError, match="two classes"):
        net.fit(X[:20], np.zeros(20, dtype=int), groups=groups[:20])
    with pytest.raises(ValueError, match="labels in 0..1"):
        net.fit(X[:20], np.arange(20) % 3, groups=groups[:20])
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        net.fit(X[:20, 0], y[:20], groups=groups[:20])
    with pytest.raises(ValueError, match="class_weight"):
        make_cnn_net(class_weight="auto").fit(X[:20], y[:20])


def test_own_parameters_are_validated_the_sklearn_way():
    # class_weight, patience and random_state go through stargal._validation (scikit-learn's
    # constraints plus the domain hint); skorch's own parameters are left to skorch
    from stargal._validation import InvalidParameterError

    cases = {"class_weight": ("auto", "class_weight must be 'balanced', None or a dict"),
             "patience": (-1, "patience must be a non-negative integer or None"),
             "random_state": (1.5, "random_state must be an int or None")}
    for name, (bad, hint) in cases.items():
        with pytest.raises(InvalidParameterError, match=f"The '{name}' parameter of StarGalaxyNet.*{hint}"):
            make_cnn_net(**{name: bad}).initialize()
    with pytest.raises(InvalidParameterError, match="not a boolean"):
        make_cnn_net(patience=True).initialize()
    make_cnn_net(class_weight={0: 1.0, 1: 2.0}, patience=None, random_state=None, warm_start=True).initialize()


def test_float64_and_list_inputs_are_cast(cnn_cutouts):
    X, y, groups = cnn_cutouts
    net = make_cnn_net(**tiny(max_epochs=1)).fit(X.astype(np.float64), y.astype(float),
                                                 groups=groups)
    assert net.predict_proba(X[:5].astype(np.float64)).shape == (5, 2)
    assert net.predict(X[:5]).dtype.kind == "i"


# --------------------------------------------------------------------------- sky split
def test_sky_valid_split_disjoint_groups_and_fraction():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, 1000)
    y = (rng.random(1000) < 0.3).astype(int)
    split = SkyValidSplit(fraction=0.2, random_state=3)
    train, valid = next(split.split(np.zeros(1000), y, groups))
    assert set(groups[train]).isdisjoint(groups[valid])
    assert len(train) + len(valid) == 1000 and len(np.intersect1d(train, valid)) == 0
    assert 0.15 < len(valid) / 1000 < 0.25
    assert set(y[valid]) == {0, 1} and abs(y[valid].mean() - y.mean()) < 0.1
    again = next(SkyValidSplit(fraction=0.2, random_state=3).split(np.zeros(1000), y, groups))
    np.testing.assert_array_equal(valid, again[1])


def test_sky_valid_split_errors_and_fallback():
    y = np.arange(50) % 2
    with pytest.raises(ValueError, match="at least 2 groups"):
        next(SkyValidSplit().split(np.zeros(50), y, np.zeros(50)))
    with pytest.raises(ValueError, match="groups has 10 entries"):
        next(SkyValidSplit().split(np.zeros(50), y, np.arange(10)))
    with pytest.raises(ValueError, match="fraction"):
        next(SkyValidSplit(fraction=1.5).split(np.zeros(50), y, np.arange(50)))
    with pytest.warns(LeakyValidationWarning):
        train, valid = next(SkyValidSplit().split(np.zeros(50), y))
    assert len(valid) == 10


def test_net_internal_split_is_leak_free(cnn_cutouts, split_seen):
    X, y, groups = cnn_cutouts
    seen, rec = split_seen
    pipe = make_cnn_pipeline(**tiny(max_epochs=1), callbacks=[("rec", rec)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakyValidationWarning)
        pipe.fit(X, y, net__groups=groups)
    (train, valid), = seen
    assert len(train) + len(valid) == len(y) and len(valid) > 0
    assert set(groups[train]).isdisjoint(groups[valid])


def test_no_groups_warns(cnn_cutouts):
    X, y, _ = cnn_cutouts
    with pytest.warns(LeakyValidationWarning):
        make_cnn_net(**tiny(max_epochs=1)).fit(X[:100], y[:100])


# --------------------------------------------------------------------------- the thread probe
class FakeClock:
    """``perf_counter`` of a machine where a batch on ``n`` threads takes ``cost[n]`` seconds."""

    def __init__(self, cost):
        self.cost, self.now = cost, 0.0

    def perf_counter(self):
        return self.now

    def run(self, threads):
        self.now += self.cost[threads]


def test_thread_probe_times_every_candidate_then_keeps_the_fastest(monkeypatch):
    from types import SimpleNamespace

    import stargal._threads as threads_module
    from stargal._threads import ThreadProbe

    clock = FakeClock({4: 3.0, 2: 1.0, 1: 2.0})
    monkeypatch.setattr(threads_module, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    before = torch.get_num_threads()
    probe, used = ThreadProbe([4, 2, 1], every=10, repeats=2), []
    with probe:
        for _ in range(13):
            with probe.timed() as n:
                assert torch.get_num_threads() == n
                used.append(n)
                clock.run(n)
    assert torch.get_num_threads() == before
    # warm-up on the first, two batches each, the fastest until the next probe (batch 11)
    assert used == [4, 4, 4, 2, 2, 1, 1, 2, 2, 2, 2, 4, 4]
    assert probe.best == 2 and probe.timings == {4: 6.0}  # the second probe has begun


def test_thread_probe_with_one_candidate_never_switches_and_restores_after_an_error():
    from stargal._threads import ThreadProbe

    before = torch.get_num_threads()
    probe, used = ThreadProbe([1], every=2), []
    with pytest.raises(RuntimeError, match="boom"):
        with probe:
            for k in range(5):
                with probe.timed() as n:
                    used.append(n)
                    if k == 4:
                        raise RuntimeError("boom")
    assert used == [1] * 5 and probe.best == 1
    assert torch.get_num_threads() == before
    for bad in ([], [0, 1]):
        with pytest.raises(ValueError, match="candidates"):
            ThreadProbe(bad)


def test_thread_candidates_halve_the_setting_capped_at_the_usable_cpus(monkeypatch):
    import stargal._threads as threads_module
    from stargal._threads import ENV_PREDICT_THREADS, thread_candidates

    monkeypatch.delenv(ENV_PREDICT_THREADS, raising=False)
    monkeypatch.setattr(threads_module.torch, "get_num_threads", lambda: 12)
    monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert thread_candidates() == [12, 6, 3, 1]
    monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4}, raising=False)
    assert thread_candidates() == [5, 2, 1]
    monkeypatch.setenv(ENV_PREDICT_THREADS, " 3 ")
    assert thread_candidates() == [3]
    for bad in ("0", "two"):
        monkeypatch.setenv(ENV_PREDICT_THREADS, bad)
        with pytest.raises(ValueError, match=ENV_PREDICT_THREADS):
            thread_candidates()


def test_predict_proba_runs_every_batch_under_the_probe(cnn_cutouts, monkeypatch):
    import stargal.classifier as classifier_module
    from stargal._threads import ThreadProbe

    X, y, _ = cnn_cutouts
    net = make_cnn_net(**tiny(width=4, depth=1, max_epochs=1), valid_fraction=None).fit(X, y)
    batches = []

    class Recording(ThreadProbe):
        def timed(self):
            batches.append(self.candidates)
            return super().timed()

    monkeypatch.setattr(classifier_module, "ThreadProbe", lambda: Recording([2, 1], every=2))
    rows = np.concatenate([X] * 4)[:2 * classifier_module.PREDICT_BATCH_SIZE + 1]  # three batches
    proba = net.predict_proba(rows)
    assert len(batches) == 3 and proba.shape == (len(rows), 2)
    monkeypatch.setattr(classifier_module, "ThreadProbe", lambda: Recording([1]))
    np.testing.assert_array_equal(net.predict_proba(rows), proba)  # whatever the thread counts
