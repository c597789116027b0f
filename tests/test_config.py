"""Tests for stargal.config: the packaged study, overrides, user files and validation."""

from __future__ import annotations

import pickle
import tomllib

import pytest

from stargal import sdss
from stargal.config import CNN_KEYS, StudyConfig, default_config_text, load_config


def test_default_study_matches_readme_roles():
    cfg = load_config()
    assert cfg.test_fields == ("8162-6-80",)
    assert cfg.train_fields == ("1035-6-17", "1043-5-25", "1992-1-87", "3184-2-169", "7264-3-111")
    assert cfg.extra_fields == ("5405-6-99",)
    assert "crowded" in cfg.extra_field_notes["5405-6-99"]
    # the field without an i band is in no list
    assert "1006-6-11" not in cfg.all_fields + cfg.extra_fields
    assert cfg.cutout_size == 15
    assert set(cfg.cnn) == set(CNN_KEYS)
    assert {"quick", "full"} <= set(cfg.tuning_grid)
    assert cfg.forest_grid and all(isinstance(v, list) and v for v in cfg.forest_grid.values())
    assert cfg.group_by in ("cell", "field")
    assert cfg.exclusion_margin_arcsec > 0 and cfg.group_cell_arcmin > 0


def test_types_are_normalised():
    cfg = load_config()
    assert isinstance(cfg.cnn["lr"], float) and isinstance(cfg.cnn["width"], int)
    assert all(isinstance(v, float) for v in cfg.tuning_grid["full"]["lr"])
    assert isinstance(cfg.test_fields, tuple)


def test_padded_field_strings_are_canonicalised():
    cfg = load_config(test_fields=["008162-6-0080"], train_fields=["1035_6_17"])
    assert cfg.test_fields == ("8162-6-80",)
    assert cfg.train_fields == ("1035-6-17",)


def test_scalar_and_cnn_overrides():
    cfg = load_config(seed=7, cnn__lr=3e-3, cnn={"width": 8})
    assert cfg.seed == 7
    assert cfg.cnn["lr"] == pytest.approx(3e-3)
    assert cfg.cnn["width"] == 8
    assert cfg.cnn["depth"] == load_config().cnn["depth"]  # merged, not replaced


def test_grid_layering_rules():
    default = load_config()
    cfg = load_config(tuning_grid={"quick": {"lr": [0.01]}}, forest_grid={"n_estimators": [10]})
    assert cfg.tuning_grid["quick"] == {"lr": [0.01]}
    assert cfg.tuning_grid["full"] == default.tuning_grid["full"]  # other mode kept
    assert cfg.forest_grid == {"n_estimators": [10]}  # replaced whole


def test_param_grid_returns_copy_and_rejects_unknown_mode():
    cfg = load_config()
    g = cfg.param_grid("quick")
    g["lr"].append(99.0)
    assert 99.0 not in cfg.tuning_grid["quick"]["lr"]
    with pytest.raises(ValueError, match="unknown tuning mode 'huge'"):
        cfg.param_grid("huge")


@pytest.mark.parametrize("key", ["seeed", "cnn_lr", "test_field"])
def test_unknown_override_keys_are_named(key):
    with pytest.raises(ValueError, match=key):
        load_config(**{key: 1})


def test_unknown_cnn_keys_are_named():
    with pytest.raises(ValueError, match="widht"):
        load_config(cnn__widht=3)
    with pytest.raises(ValueError, match="kernel"):
        load_config(cnn={"kernel": 3})
    with pytest.raises(ValueError, match="tuning_grid.quick.momentum"):
        load_config(tuning_grid={"quick": {"momentum": [0.9]}})


@pytest.mark.parametrize(
    "fields",
    [["8162-6"], ["8162-7-80"], ["not a field"], "8162-6-80", [8162]],
)
def test_bad_field_strings(fields):
    with pytest.raises(ValueError, match="test_fields"):
        load_config(test_fields=fields)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"train_fields": ["8162-6-80"]}, "disjoint"),
        ({"test_fields": []}, "at least one"),
        ({"train_fields": ["1035-6-17", "001035-6-0017"]}, "more than once"),
        ({"cutout_size": 16}, "odd"),
        ({"cutout_size": 15.0}, "cutout_size"),
        ({"cutout_size": True}, "cutout_size"),
        ({"exclusion_margin_arcsec": -1}, "exclusion_margin_arcsec"),
        ({"group_cell_arcmin": 0}, "group_cell_arcmin"),
        ({"group_by": "run"}, "group_by"),
        ({"cv_folds": 1}, "cv_folds"),
        ({"valid_fraction": 0.9}, "valid_fraction"),
        ({"seed": -1}, "seed"),
        ({"cnn__dropout": 1.0}, "cnn.dropout"),
        ({"cnn__lr": 0}, "cnn.lr"),
        ({"cnn__lr": float("nan")}, "cnn.lr"),
        ({"tuning_grid": {"quick": {"lr": []}}}, "non-empty"),
        ({"tuning_grid": {"quick": {"width": [0]}}}, "tuning_grid.quick.width"),
        ({"forest_grid": {}}, "forest_grid"),
    ],
)
def test_invalid_values_raise_clear_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(**overrides)


def test_user_file_is_layered_over_default(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text(
        'train_fields = ["1035-6-17", "7264-3-111"]\n'
        "[study]\nseed = 42\ncutout_size = 21\n"
        "[cnn]\nlr = 0.01\n",
        encoding="utf-8",
    )
    cfg = load_config(p, seed=5)
    assert cfg.train_fields == ("1035-6-17", "7264-3-111")
    assert cfg.test_fields == ("8162-6-80",)  # default kept
    assert cfg.cutout_size == 21
    assert cfg.seed == 5  # keyword override wins over the file
    assert cfg.cnn["lr"] == 0.01 and cfg.cnn["width"] == load_config().cnn["width"]


def test_user_file_unknown_keys_and_bad_fields(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[study]\nseeds = 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="seeds"):
        load_config(p)
    p.write_text("colour = 'red'\n", encoding="utf-8")
    with pytest.raises(ValueError, match="colour"):
        load_config(p)
    p.write_text('test_fields = ["8162-x-80"]\n', encoding="utf-8")
    with pytest.raises(ValueError, match="8162-x-80"):
        load_config(p)
    p.write_text("this is = = not toml\n", encoding="utf-8")
    with pytest.raises(ValueError, match="TOML"):
        load_config(p)
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load_config(tmp_path / "nope.toml")


def test_default_text_is_the_loaded_config():
    doc = tomllib.loads(default_config_text())
    assert doc["test_fields"] == ["8162-6-80"]
    assert doc["study"]["cutout_size"] == load_config().cutout_size


def test_to_dict_roundtrip_and_pickle():
    cfg = load_config(seed=3)
    again = StudyConfig(**cfg.to_dict())
    assert again == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_direct_construction_defaults_to_the_packaged_study_and_validates():
    lists = dict(test_fields=["8162-6-80"], train_fields=["1035-6-17"])
    assert StudyConfig(**lists) == load_config(**lists)
    with pytest.raises(ValueError, match="cnn.width"):
        StudyConfig(**lists, cnn={**load_config().cnn, "width": 0})
    with pytest.raises(ValueError, match="'cnn' is missing: lr"):
        StudyConfig(**lists, cnn={k: v for k, v in load_config().cnn.items() if k != "lr"})
    with pytest.raises(TypeError, match="train_fields"):
        StudyConfig(test_fields=["8162-6-80"])  # the fields themselves have no default


@pytest.mark.integration
def test_configured_fields_exist_in_mirror(mirror_dir):
    cfg = load_config()
    for fid in cfg.all_fields + cfg.extra_fields:
        for band in sdss.BANDS:
            path = mirror_dir / sdss.frame_path(fid, band)
            assert path.is_file(), f"{fid}: missing {path}"
        for kind in ("star", "gal"):
            path = mirror_dir / sdss.calibobj_path(fid, kind)
            assert path.is_file(), f"{fid}: missing {path}"


def test_training_shares_the_one_cnn_name_map():
    from stargal.config import CNN_PARAM_NAMES
    from stargal.training import CNN_PARAM_NAMES as training_names

    assert training_names is CNN_PARAM_NAMES and set(CNN_KEYS) <= set(CNN_PARAM_NAMES)


# the [cnn] values of this edited copy of the packaged study.toml differ from every shipped default
EDITED_CNN = {"width": 24, "depth": 2, "dropout": 0.25, "lr": 0.002, "weight_decay": 0.0003, "max_epochs": 7,
              "batch_size": 64, "patience": 3, "members": 2}
_REPORT_DEFAULTS = """
import inspect, json, sys
import stargal
from stargal.classifier import StarGalaxyNet, make_cnn_net
from stargal.cnn import HybridCNN, StarGalaxyCNN
from stargal.config import CNN_DEFAULTS, StudyConfig, load_config

def defaults(obj, names):
    params = inspect.signature(obj).parameters
    return {k: params[k].default for k in names}

keys = list(CNN_DEFAULTS)
json.dump({"package": stargal.__file__, "CNN_DEFAULTS": dict(CNN_DEFAULTS),
           "make_cnn_net": defaults(make_cnn_net, keys),
           "StarGalaxyCNN": defaults(StarGalaxyCNN, ["width", "depth", "dropout", "members"]),
           "HybridCNN": defaults(HybridCNN, ["width", "depth", "dropout"]),
           "StarGalaxyNet": defaults(StarGalaxyNet, ["lr", "max_epochs", "batch_size", "patience"]),
           "StudyConfig": StudyConfig(test_fields=["8162-6-80"], train_fields=["1035-6-17"]).cnn,
           "load_config": load_config().cnn}, sys.stdout)
"""


def test_the_packaged_study_is_the_one_source_of_the_cnn_defaults(tmp_path):
    """Edit the packaged study.toml's [cnn] (in a copy of the package): every default follows."""
    import json
    import os
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import stargal

    package = tmp_path / "stargal"
    shutil.copytree(Path(stargal.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    toml = package / "data" / "study.toml"
    text = toml.read_text()
    for key, value in EDITED_CNN.items():
        text, n = re.subn(rf"^{key} = [^#\n]*", f"{key} = {value!r} ", text, count=1, flags=re.M)
        assert n == 1, key
    toml.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", _REPORT_DEFAULTS], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout)
    assert Path(found.pop("package")).parent == package  # the edited copy was imported
    for where, values in found.items():
        assert values == {k: EDITED_CNN[k] for k in values}, where
    assert found["CNN_DEFAULTS"] == found["make_cnn_net"] == found["StudyConfig"] == EDITED_CNN


def test_default_model_is_the_study_s_leave_one_field_out_winner():
    """`stargal train` ships by default the kind the committed study chose on held-out fields."""
    import json
    from pathlib import Path

    summary = Path(__file__).resolve().parents[1] / "experiments" / "results" / "seeing_summary.json"
    data = json.loads(summary.read_text())
    if "default_model" not in data:
        pytest.skip("the committed study predates the default-model choice")
    assert load_config().default_model == data["default_model"], (
        "study.toml's default_model differs from the committed study's leave-one-field-out winner "
        f"({data['default_means']}); update one or rerun make experiments")
