"""Write the old-version model-file fixtures ``tests/data/*-v0.1.0.stargal`` (run once, kept as data).

These files stand for "a model file written by the previous release": they were written with
``stargal.persist.save_model`` of stargal 0.1.0 (``stargal_format = 1``) at commit 48e9727 of
main, *before* any change of issue #18, and must never be rewritten with newer code (that would
defeat their purpose). ``tests/test_persist_versions.py`` loads them with today's code.

Both are small (tiny networks / few trees), trained on the mirror's field 1035-6-17 and calibrated
on its validation sky groups, the way ``stargal train`` does. They keep everything a file of that
release kept, machine paths included (``sas_url`` = the mirror's ``file://`` URL and ``cache_dir``
= a temporary directory of the machine that wrote them)::

    STARGAL_SAS_URL=file:///work/shared/sdss .venv/bin/python tests/data/make_v0_1_0_models.py

``v0.1.0-predictions.csv`` holds what that code predicted with these files for 24 bright catalog
objects of the test field (12 stars, 12 galaxies, ``random_state=0``); written with the code of
48e9727 exported beside (``git archive 48e9727 stargal | tar -x -C /tmp/stargal-010``)::

    cd /tmp/stargal-010 && STARGAL_SAS_URL=file:///work/shared/sdss PYTHONPATH=. \\
        /path/to/.venv/bin/python /path/to/tests/data/make_v0_1_0_models.py predictions
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

STUDY = """
test_fields = ["8162-6-80"]
train_fields = ["1035-6-17"]
[cnn]
width = 4
depth = 1
max_epochs = 2
patience = 2
"""


def main() -> int:
    import os

    from stargal.augment import CutoutAugmenter
    from stargal.calibration import calibrate_pipeline
    from stargal.catalogs import labels_to_y
    from stargal.persist import save_model
    from stargal.training import build_pipeline, fit_pipeline, study_table

    sas_url = os.environ["STARGAL_SAS_URL"]
    with tempfile.TemporaryDirectory(prefix="stargal-fixture-cache-") as cache:
        cfg = Path(cache) / "tiny.toml"
        cfg.write_text(STUDY)
        table = study_table(cfg, sas_url=sas_url, cache_dir=cache)
        train, valid = table[table["split"] == "train"], table[table["split"] == "valid"]
        for kind, params, augmenter in (
                ("forest", {"forest__n_estimators": 8, "forest__max_depth": 6}, None),
                ("cnn", None, CutoutAugmenter(n_copies=1, shift=0.0, noise=0.0, random_state=0))):
            pipe = build_pipeline(kind, cfg, sas_url=sas_url, cache_dir=cache, params=params,
                                  augmenter=augmenter)
            fit_pipeline(pipe, train)
            pipe = calibrate_pipeline(pipe, valid, labels_to_y(valid["label"]))
            out = HERE / f"{kind}-v0.1.0.stargal"
            save_model(pipe, out, metadata={"fixture": "previous release (stargal 0.1.0, format 1)",
                                            "commit": "48e9727", "train_fields": ["1035-6-17"]})
            print(out, out.stat().st_size, "bytes")
    return 0


def predictions() -> int:
    """Predictions of the fixtures by the code that imports as ``stargal`` (run with 48e9727's)."""
    import pandas as pd

    from stargal.catalogs import read_calibobj
    from stargal.persist import load_model
    from stargal.predict import predict_coordinates

    with tempfile.TemporaryDirectory(prefix="stargal-fixture-cache-") as cache:
        t = read_calibobj("8162-6-80", cache_dir=cache)
        b = t[t.psfmag_r < 20]
        s = pd.concat([b[b.label == "star"].sample(12, random_state=0),
                       b[b.label == "galaxy"].sample(12, random_state=0)])
        out = s[["objid", "ra", "dec", "label", "psfmag_r"]].reset_index(drop=True)
        for kind in ("forest", "cnn"):
            model = load_model(HERE / f"{kind}-v0.1.0.stargal")
            model.set_params(align__cache_dir=cache, cut__cache_dir=cache)
            o = predict_coordinates(model, out[["ra", "dec"]], fields=["8162-6-80"], progress=False)
            assert (o.flag == "").all()
            out[f"p_galaxy_{kind}"] = o["p_galaxy"].to_numpy()
    out.to_csv(HERE / "v0.1.0-predictions.csv", index=False)  # full precision: positions round-trip
    return 0


if __name__ == "__main__":
    sys.exit(predictions() if sys.argv[1:] == ["predictions"] else main())
