"""Prediction without the mirror: batch-independent CNN probabilities, thread control, chunked atomic CSV output."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.pipeline import Pipeline

import stargal.predict as predict_module
from stargal.align import Aligner
from stargal.catalogs import CoordinateError
from stargal.cutouts import Cutter
from stargal.models import ENV_PREDICT_THREADS, PREDICT_BATCH_SIZE, StarGalaxyNet, torch_threads
from stargal.predict import predict_csv
from cnn_testing import synthetic_cutouts


@pytest.fixture(scope="module")
def net_and_data():
    X, y, _ = synthetic_cutouts(600, seed=3)
    net = StarGalaxyNet(module__width=8, module__depth=2, max_epochs=1, train_split=None, batch_size=64)
    return net.fit(X, y), X


def test_probability_does_not_depend_on_which_objects_share_its_batch(net_and_data, monkeypatch):
    net, X = net_and_data
    threads = torch.get_num_threads()
    full = net.predict_proba(X)
    assert full.dtype == np.float64 and full.shape == (600, 2)
    np.testing.assert_allclose(full.sum(axis=1), 1.0, rtol=1e-6)
    rows = np.arange(0, 600, 7)
    # alone, in a small crowd, in another order, across a batch boundary: bit for bit the same
    alone = np.array([net.predict_proba(X[i:i + 1])[0] for i in rows])
    np.testing.assert_array_equal(alone, full[rows])
    perm = np.random.default_rng(0).permutation(600)
    np.testing.assert_array_equal(net.predict_proba(X[perm]), full[perm])
    span = slice(PREDICT_BATCH_SIZE - 20, 600)
    np.testing.assert_array_equal(net.predict_proba(X[span]), full[span])
    # ... whatever the number of threads, and the caller's thread setting is left as it was
    for n in ("1", "2"):
        monkeypatch.setenv(ENV_PREDICT_THREADS, n)
        np.testing.assert_array_equal(net.predict_proba(X[:50]), full[:50])
    assert torch.get_num_threads() == threads


def test_predict_restores_training_mode_and_rejects_bad_thread_setting(net_and_data, monkeypatch):
    net, X = net_and_data
    net.module_.train()
    net.predict_proba(X[:3])
    assert net.module_.training
    net.module_.eval()
    monkeypatch.setenv(ENV_PREDICT_THREADS, "0")
    with pytest.raises(ValueError, match=ENV_PREDICT_THREADS):
        net.predict_proba(X[:3])


def test_torch_threads_restores_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------ predict_csv: chunks, atomic output
def _model():
    return Pipeline([("align", Aligner()), ("cut", Cutter())])


def _fake_predict(calls, fail_at=None):
    def fake(aligner, tail, table, *, strict, n_jobs, scheduler, bar, field_prior=None, frame="icrs",
             columns=None):
        calls.append(len(table))
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        assert all(isinstance(v, str) for v in table.iloc[:, 0])  # a CSV is read as text
        out = table.copy()
        out["field"], out["p_galaxy"], out["label"] = "1-1-1", 0.25, "star"
        out["flag"] = np.where(pd.to_numeric(table.iloc[:, 1]) > 300, "outside", "")
        bar.update(len(table))
        return out
    return fake


def test_predict_csv_reads_in_chunks_and_writes_as_it_goes(tmp_path, monkeypatch, capsys):
    src = tmp_path / "coords.csv"
    n = 2_345
    pd.DataFrame({"id": np.arange(n), "RA": np.linspace(0, 359, n), "Dec": np.zeros(n)}).to_csv(src, index=False)
    calls = []
    monkeypatch.setattr(predict_module, "_predict_table", _fake_predict(calls))
    out = tmp_path / "sub" / "out.csv"
    stats = predict_csv(_model(), src, out, chunksize=500, progress=True)
    assert calls == [500] * 4 + [345] and stats["n_chunks"] == 5 and stats["n_rows"] == n
    result = pd.read_csv(out, keep_default_na=False)
    assert list(result.columns) == ["id", "RA", "Dec", "field", "p_galaxy", "label", "flag"]
    assert result["id"].tolist() == list(range(n))  # one header, every row once, in input order
    assert stats["n_flagged"] == stats["flags"]["outside"] == int((result["flag"] == "outside").sum()) > 0
    assert "stargal predict" in capsys.readouterr().err  # the progress bar over objects
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.csv"]


def test_interrupted_predict_csv_leaves_no_half_file(tmp_path, monkeypatch):
    src = tmp_path / "coords.csv"
    pd.DataFrame({"ra": np.linspace(0, 10, 1000), "dec": np.zeros(1000)}).to_csv(src, index=False)
    out = tmp_path / "out.csv"
    out.write_text("an earlier result\n")
    calls = []
    monkeypatch.setattr(predict_module, "_predict_table", _fake_predict(calls, fail_at=3))
    with pytest.raises(KeyboardInterrupt):
        predict_csv(_model(), src, out, chunksize=200, progress=False)
    assert len(calls) == 3
    assert out.read_text() == "an earlier result\n"  # untouched: nothing is lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coords.csv", "out.csv"]  # no temporary file


def test_predict_csv_bad_input_is_a_clear_error_and_writes_nothing(tmp_path):
    out = tmp_path / "out.csv"
    with pytest.raises(CoordinateError, match="does not exist"):
        predict_csv(_model(), tmp_path / "nope.csv", out)
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    with pytest.raises(CoordinateError, match="lacks a column for ra .* dec"):
        predict_csv(_model(), bad, out, progress=False)
    with pytest.raises(ValueError, match="chunksize"):
        predict_csv(_model(), bad, out, chunksize=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


@pytest.mark.parametrize("bad", [0, "abc", 2.5, True])
def test_a_bad_n_jobs_is_left_to_the_backend_check_which_names_it(bad):
    """_chunk_threads never decides on a bad n_jobs; parallel_backend_for refuses it in one line."""
    from sklearn.linear_model import LogisticRegression

    from stargal.tuning import parallel_backend_for

    tail = Pipeline([("model", LogisticRegression())])
    assert predict_module._chunk_threads(tail, [("f", np.arange(500))], bad, None) == 1
    with pytest.raises(ValueError, match="n_jobs must be a non-zero integer"):
        with parallel_backend_for(n_jobs=bad):
            pass


def test_rows_of_one_field_go_to_threads_only_when_they_fill_them():
    from sklearn.linear_model import LogisticRegression

    tail = Pipeline([("model", LogisticRegression())])
    one = [("f", np.arange(500))]
    assert predict_module._chunk_threads(tail, one, 2, None) == 2
    assert predict_module._chunk_threads(tail, one, 1, None) == 1
    assert predict_module._chunk_threads(tail, [("f", np.arange(300))], 2, None) == 1  # < 2 x 200 rows
    assert predict_module._chunk_threads(tail, one + [("g", np.arange(500))], 2, None) == 1  # fields fill them
    assert predict_module._chunk_threads(tail, one, 2, "tcp://127.0.0.1:1") == 1  # Dask spreads fields
