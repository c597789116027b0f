"""The study's split reports (experiments.splits): per-split summary and magnitude KS tests."""

import numpy as np
import pandas as pd
import pytest

from experiments.splits import magnitude_ks, split_report


def _report_table():
    return pd.DataFrame(
        {
            "split": ["test", "train", "train", "train", "valid", "valid", "excluded"],
            "label": ["star", "galaxy", "star", "galaxy", "star", None, "star"],
            "psfmag_r": [18.0, 17.0, 19.0, 21.0, 20.0, 22.0, np.nan],
            "field_id": [
                "8162-6-80",
                "1035-6-17",
                "1043-5-25",
                "1035-6-17",
                "1992-1-87",
                "1992-1-87",
                "1035-6-17",
            ],
        }
    )


def test_split_report():
    rep = split_report(_report_table())
    assert list(rep.index) == ["train", "valid", "test", "excluded"]
    assert list(rep.columns) == [
        "n_objects",
        "n_stars",
        "n_galaxies",
        "galaxy_fraction",
        "psfmag_r_median",
        "psfmag_r_q10",
        "psfmag_r_q90",
        "n_fields",
        "fields",
    ]
    tr = rep.loc["train"]
    assert (tr.n_objects, tr.n_stars, tr.n_galaxies) == (3, 1, 2)
    assert tr.galaxy_fraction == pytest.approx(2 / 3)
    assert tr.psfmag_r_median == 19.0
    assert tr.psfmag_r_q10 == pytest.approx(np.quantile([17, 19, 21], 0.1))
    assert tr.fields == "1035-6-17, 1043-5-25" and tr.n_fields == 2
    va = rep.loc["valid"]
    assert (va.n_objects, va.n_stars, va.n_galaxies, va.galaxy_fraction) == (2, 1, 0, 0.0)
    assert np.isnan(rep.loc["excluded", "psfmag_r_median"])
    # integer labels work the same
    t = _report_table().dropna(subset=["label"])
    t["label"] = (t["label"] == "galaxy").astype(int)
    assert split_report(t).loc["train", "n_galaxies"] == 2


def test_split_report_errors():
    with pytest.raises(ValueError, match="'split'"):
        split_report(_report_table().drop(columns="split"))
    with pytest.raises(ValueError, match="quasar"):
        split_report(_report_table().assign(label="quasar"))


def test_magnitude_ks():
    rng = np.random.default_rng(0)
    t = pd.DataFrame(
        {
            "split": ["train"] * 400 + ["valid"] * 400 + ["test"] * 400,
            "psfmag_r": np.r_[
                rng.normal(20, 1, 400), rng.normal(20, 1, 400), rng.normal(21.5, 1, 400)
            ],
        }
    )
    ks = magnitude_ks(t)
    assert list(ks.columns) == ["split_a", "split_b", "n_a", "n_b", "ks_statistic", "p_value"]
    assert len(ks) == 3
    by = {(a, b): row for a, b, row in zip(ks.split_a, ks.split_b, ks.itertuples())}
    assert by[("train", "valid")].p_value > 0.01
    assert by[("train", "test")].p_value < 1e-6
    assert by[("train", "test")].ks_statistic > 0.3
