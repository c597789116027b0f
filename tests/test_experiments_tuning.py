"""Fast checks of the tuning stage's helpers (the stage itself runs in ``make experiments``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.tuning_stage import (
    FULL_MAX_WIDTH,
    architecture_summary,
    metrics_frame,
    search_grid,
    search_settings,
)
from stargal.config import load_config
from stargal.cnn import StarGalaxyCNN


def test_search_grids_fit_the_budget():
    cfg = load_config()
    quick, pruned = search_grid(cfg, quick=True)
    assert pruned == {}
    assert np.prod([len(v) for v in quick.values()]) <= 4
    assert search_settings(True)["cv"] == 2

    full, pruned = search_grid(cfg, quick=False)
    assert set(full) == {"net__lr", "net__module__width", "cut__size"}
    assert max(full["net__module__width"]) <= FULL_MAX_WIDTH
    assert cfg.cutout_size in full["cut__size"] and 11 in full["cut__size"]
    assert all(s % 2 == 1 for s in full["cut__size"])
    assert full["net__lr"] == list(cfg.param_grid("full")["lr"])
    # everything of the configured grid is either searched or reported as pruned
    for key, values in cfg.param_grid("full").items():
        searched = full.get({"lr": "net__lr", "width": "net__module__width"}.get(key, key), [])
        assert sorted(set(searched) | set(pruned.get(key, []))) == sorted(values)
    assert np.prod([len(v) for v in full.values()]) <= 18


@pytest.mark.parametrize("size", [9, 15])
def test_architecture_summary_shapes_and_counts(size):
    torch.set_num_threads(1)
    net = StarGalaxyCNN(width=4, depth=3, input_size=15)
    text, table, n_params = architecture_summary(net, size)
    assert n_params == sum(p.numel() for p in net.parameters())
    assert table["params"].sum() == n_params  # every parameter sits in a leaf layer
    assert table["output_shape"].iloc[-1] == "(1, 2)"
    side = net.feature_map_size(size)
    assert f"(1, 16, {side}, {side})" in set(table["output_shape"])
    assert f"input: (1, 5, {size}, {size})" in text
    assert net.training  # the caller's module is left untouched


def test_metrics_frame_layout():
    m = {"n": 10, "accuracy": 0.9, "balanced_accuracy": 0.8, "mcc": 0.7, "roc_auc": 0.95}
    frame = metrics_frame({"train": m, "test": m}, {"train": m, "test": {**m, "mcc": 0.5}})
    assert list(frame.columns) == ["model", "split", "n", "accuracy", "balanced_accuracy", "mcc",
                                   "roc_auc"]
    assert frame["model"].tolist() == ["before", "before", "after", "after"]
    assert frame.loc[(frame["model"] == "after") & (frame["split"] == "test"), "mcc"].item() == 0.5


def test_preserved_environ_undoes_changes(monkeypatch):
    import os

    from experiments.backends import preserved_environ

    monkeypatch.setenv("STARGAL_TEST_KEEP", "1")
    monkeypatch.delenv("STARGAL_TEST_NEW", raising=False)
    with preserved_environ():
        os.environ["STARGAL_TEST_NEW"] = "x"
        os.environ["STARGAL_TEST_KEEP"] = "2"
    assert "STARGAL_TEST_NEW" not in os.environ
    assert os.environ["STARGAL_TEST_KEEP"] == "1"
