"""A one-minute tour of stargal (``make demo``): fetch, train a small model, classify coordinates.

1. fetch the test field 8162-6-80 and one training field (frames + catalogs) into the cache;
2. fit the random-forest baseline on the training field (the CNN is what ``make experiments``
   studies; the forest trains in seconds);
3. save it as a safe model file, load it back, and classify a few coordinates -- real objects
   of the test field, one position outside every field, and one NaN -- printing p_galaxy and flags.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd

DEMO_STUDY = """
test_fields = ["8162-6-80"]
train_fields = ["1035-6-17"]
"""


def main() -> int:
    from stargal.catalogs import read_calibobj
    from stargal.persist import load_model
    from stargal.predict import predict_coordinates
    from stargal.training import train_model

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "demo.toml"
        cfg.write_text(DEMO_STUDY)
        path = Path(tmp) / "forest.stargal"
        _, info = train_model("forest", config=cfg, params={"forest__n_estimators": 200}, model_path=path)
        print(info["summary"])
        model = load_model(path)
    test = read_calibobj("8162-6-80")
    sample = test[test["psfmag_r"] < 21].sample(frac=1.0, random_state=1).groupby("label").head(3)
    coords = pd.concat([sample[["ra", "dec", "label"]].rename(columns={"label": "catalog_label"}),
                        pd.DataFrame({"ra": [10.0, float("nan")], "dec": [-30.0, 5.0],
                                      "catalog_label": ["", ""]})], ignore_index=True)
    out = predict_coordinates(model, coords, fields=["8162-6-80", "1035-6-17"], progress=False)
    with pd.option_context("display.width", 120, "display.max_columns", 10):
        print(out.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
