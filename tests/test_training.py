"""The study's data split on the mirror: no leakage of the test field, in sky position or in pixels."""

import numpy as np
import pytest

from stargal.config import load_config
from stargal.frames import Field, in_footprints, min_separation_arcsec
from stargal.sdss import PIXEL_SCALE_ARCSEC
from stargal.training import CNN_PARAM_NAMES, build_pipeline, cnn_param_grid, parse_param_overrides, study_table


def test_param_overrides_and_grid_mapping():
    assert parse_param_overrides(["net__lr=0.003", "cut__size=21", "forest__max_features=sqrt"]) == {
        "net__lr": 0.003, "cut__size": 21, "forest__max_features": "sqrt"}
    with pytest.raises(ValueError, match="PARAM=VALUE"):
        parse_param_overrides(["oops"])
    assert cnn_param_grid({"lr": [1e-3], "width": [8, 16]}) == {"net__lr": [1e-3], "net__module__width": [8, 16]}
    pipe = build_pipeline("cnn")
    params = pipe.get_params()
    assert all(name in params for name in CNN_PARAM_NAMES.values())
    assert [n for n, _ in pipe.steps] == ["align", "cut", "psf", "scale", "net"]  # PSF-aware by default
    assert [n for n, _ in build_pipeline("cnn", psf="none").steps] == ["align", "cut", "scale", "net"]
    # PSF-blind under either name: the same pipelines, and no PSF stamps are cut (for the forest too)
    for kind, cut in (("cnn", "cut"), ("forest", "features__pixels__cut")):  # the forest's cutter is in its union
        blind = build_pipeline(kind, psf="none")
        with pytest.warns(FutureWarning, match="psf='none'"):
            old = build_pipeline(kind, psf="drop")
        assert [n for n, _ in old.steps] == [n for n, _ in blind.steps]
        assert old.get_params()[f"{cut}__psf"] is blind.get_params()[f"{cut}__psf"] is False
        assert build_pipeline(kind, psf="scaled").get_params()[f"{cut}__psf"] is True
    with pytest.raises(ValueError, match="unknown model kind"):
        build_pipeline("svm")


@pytest.mark.integration
def test_study_split_never_leaks_the_test_field(mirror_fetcher):
    cfg = load_config()
    table = study_table(cfg, mirror_fetcher)
    test = table[table["split"] == "test"]
    fit = table[table["split"].isin(["train", "valid"])]
    assert set(test["field_id"]) == set(cfg.test_fields)
    assert not set(fit["field_id"]) & set(cfg.test_fields)
    assert set(fit["field_id"]) == set(cfg.train_fields)
    # validation holds out whole sky cells
    train, valid = table[table["split"] == "train"], table[table["split"] == "valid"]
    assert not set(train["group"]) & set(valid["group"]) and len(valid) > 0.1 * len(fit)

    # sky position: no train/validation object inside the test footprint + margin
    test_field = Field(cfg.test_fields[0], mirror_fetcher)
    assert not in_footprints(fit["ra"], fit["dec"], [test_field], margin_arcsec=cfg.exclusion_margin_arcsec).any()

    # pixels: no training cutout covers any pixel of any of the test field's band frames
    half = (cfg.cutout_size - 1) / 2 + 0.5
    sep = min_separation_arcsec(fit["ra"], fit["dec"], test["ra"], test["dec"])
    assert sep > 2 * half * PIXEL_SCALE_ARCSEC * np.sqrt(2)  # train and test cutouts share no sky pixel
    for band, frame in test_field.frames().items():
        reach = half * np.sqrt(2) * frame.pixel_scale  # a cutout's half-diagonal, arcsec
        assert not frame.near(fit["ra"], fit["dec"], reach).any(), band  # each band's own frame
        assert frame.near(test["ra"], test["dec"], reach).all(), band  # the check can fail
