"""`make experiments QUICK=1` runs every stage of the study and writes a complete report."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_experiments_quick(mirror_url, mirror_cache, tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "STARGAL_SAS_URL": mirror_url, "STARGAL_CACHE": str(mirror_cache),
           "PYTHONUNBUFFERED": "1"}
    run = subprocess.run(["make", "-s", "experiments", "QUICK=1", f"EXPERIMENT_ARGS=--out {out}"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # progress and per-stage timings are printed
    for stage in ("1 alignment", "1b measurement", "2 splits", "3 tuning", "4 augmentation", "5 baselines",
                  "6 explanations", "7 held-out fields", "8 synthetic"):
        assert re.search(rf"=== {stage}: [0-9.]+ s ===", run.stdout), stage
    report = (out / "report.md").read_text()
    for title in ("1. Data acquisition and alignment", "1b. Measuring the way SDSS types", "2. Data preparation",
                  "3. Modelling and tuning", "4. Data augmentation", "5. Baselines", "6. Explanations",
                  "7. Held-out fields", "8. How hard is it, with exact truth", "Headline", "Targets"):
        assert f"## {title}" in report
    assert "(stage not run)" not in report
    # every figure the report links exists, and every figure the study writes is shown in the report
    linked = set(re.findall(r"\]\(([^)]+\.png)\)", report))
    for png in linked:
        assert (out / png).is_file() and (out / png).stat().st_size > 1000, png
    assert {p.name for p in out.glob("*.png")} <= linked, sorted({p.name for p in out.glob("*.png")} - linked)
    # headline numbers are real metrics in range
    summary = json.loads((out / "baselines_summary.json").read_text())
    for model, metrics in summary["test"].items():
        assert 0.0 <= metrics["accuracy"] <= 1.0 and -1.0 <= metrics["mcc"] <= 1.0, model
    assert summary["test"]["majority class"]["mcc"] == 0.0
    # each test MCC carries its bootstrap interval, which holds it; paired differences are consistent
    for model, (low, high) in summary["test_mcc_interval"].items():
        assert -1.0 <= low <= summary["test"][model]["mcc"] <= high <= 1.0, model
    assert "majority class" not in summary["test_mcc_interval"]
    for pair, (diff, low, high) in summary["test_mcc_difference"].items():
        a, b = pair.split(" − ")
        assert diff == pytest.approx(summary["test"][a]["mcc"] - summary["test"][b]["mcc"], abs=1e-9), pair
        assert low <= diff <= high, pair
    assert "| MCC 95 % interval |" in report and "**How sure are these numbers?**" in report
    # the rule is the reference line: it is in the headline, with its one fitted number
    assert "SDSS rule (measured)" in summary["test"] and 0.0 < summary["rule_boundary"] < 1.0
    assert "hybrid CNN (calibrated)" in summary["test"]
    # the final recipe is chosen on held-out training fields, and section 7 reuses those fits
    import pandas as pd

    assert "### Final recipe: chosen on held-out training fields" in report
    held = pd.read_csv(out / "augmentation_held_out.csv")
    aug = json.loads((out / "augmentation_summary.json").read_text())
    assert aug["final_recipe"] in set(held["recipe"])
    assert {"no augmentation", "chosen augmentation"} <= set(held["recipe"])
    assert held.groupby("recipe").size().nunique() == 1 and held["held_out"].nunique() >= 2
    means = held.groupby("recipe")["mcc"].mean()
    assert means[aug["final_recipe"]] == means.max()
    lofo = pd.read_csv(out / "seeing_lofo.csv")
    aware = lofo[(lofo["variant"] == "CNN") & (lofo["seed"] == 0)].set_index("held_out")["mcc"].sort_index()
    win = held[held["recipe"] == aug["final_recipe"]].set_index("held_out")["mcc"].sort_index()
    pd.testing.assert_series_equal(aware, win, check_names=False)
    # every PSF model is checked against its own stars
    assert "Does each model reproduce its own stars?" in report
    psf = pd.read_csv(out / "seeing_psf.csv")
    ratios = psf[[f"star_ratio_{b}" for b in "ugriz"]].to_numpy(float)
    assert np.isfinite(ratios).all() and (abs(ratios - 1) < 0.1).all()
    # every kind was scored leaving each field out; the default is the best mean, and the one shipped
    seeing = json.loads((out / "seeing_summary.json").read_text())
    assert {"SDSS rule (measured)", "forest", "CNN", "hybrid CNN"} <= set(lofo["variant"])
    assert seeing["default_model"] == max(seeing["default_means"], key=seeing["default_means"].get)
    # ... and rescored on star-richer subsets of each held-out field, with and without the field prior
    from experiments.seeing import SHIFT_MIXES

    assert {f"mcc_mix{m:g}" for m in SHIFT_MIXES} <= set(lofo.columns)
    assert seeing["mix_shift"] and all(0.0 <= r["prior_estimate"] <= 1.0 for r in seeing["mix_shift"])
    assert "**Star-richer fields.**" in report and "For the shipped default" in report
    # injected training objects are judged on held-out training fields, paired by field (one seed per fold)
    abl = pd.read_csv(out / "synthetic_ablation_runs.csv")
    assert set(abl["config"]) == {"none", "synthetic", "synthetic_rule"}
    assert abl["held_out_field"].nunique() >= 2 and "8162-6-80" not in set(abl["held_out_field"])
    assert (abl.groupby("held_out_field")["seed"].nunique() == 1).all() and abl["seed"].nunique() == len(
        abl["held_out_field"].unique())
    assert abl["rule_boundary"].between(0.0, 1.0).all()
    # our measurement is checked against the catalogs on training fields only
    meas = json.loads((out / "measurement_summary.json").read_text())
    assert meas["n_measured"] > 100 and abs(meas["offset_r_lt_21"]) < 0.1
    # the study's model file loads safely
    from stargal.persist import load_model

    import warnings

    import stargal
    from stargal.persist import STARGAL_FORMAT, ModelVersionWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelVersionWarning)  # written by this version: loads as it is
        model, info = load_model(out / "cnn.stargal", with_info=True)
    assert model.steps[0][0] == "align"
    # ... and travels: the study's data source and cache are not in it (issue #18)
    assert (info["stargal_version"], info["stargal_format"]) == (stargal.__version__, STARGAL_FORMAT)
    assert {"align.sas_url", "align.cache_dir", "cut.sas_url", "cut.cache_dir"} <= set(info["unset_params"])
    import zipfile
    with zipfile.ZipFile(out / "cnn.stargal") as z:
        saved = b"".join(z.read(n) for n in z.namelist())
    assert str(mirror_cache).encode() not in saved and mirror_url.rstrip("/").encode() not in saved
