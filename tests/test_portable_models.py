"""Model files that travel (issue #18), end to end on real frames of the mirror.

* the shipped study model predicts from the mirror that ``STARGAL_SAS_URL`` names, in a fresh
  process, whatever it was trained with, even with a cache another source filled;
* a model saved with one source predicts, in a process whose environment names another, from that one
  (the first source no longer exists);
* the files of the previous release (``tests/data/*-v0.1.0.stargal``) predict as the code that wrote
  them did;
* the bad-input tour (headers, sexagesimal, galactic frame, unparseable values), in Python and on the
  command line: every input value survives into the output.

"Another mirror" is a subset of ``../shared/sdss`` (symbolic links: ``window_flist`` and the test
field's frames) served over HTTP on 127.0.0.1, so every file it gives is a request the server sees.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord

from conftest import MIRROR_DIR, ServedDirectory
from stargal.catalogs import read_calibobj
from stargal.fetch import SOURCES_DIR, Fetcher, cache_source
from stargal.persist import ModelVersionWarning, load_model, save_model
from stargal.predict import OUTPUT_COLUMNS, predict_coordinates
from stargal.sdss import BANDS, frame_path
from stargal.window import WINDOW_FLIST_PATH
from synthetic import write_window_flist

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "experiments" / "results" / "cnn.stargal"
DATA = Path(__file__).resolve().parent / "data"
FIELD = "8162-6-80"


def _sub_mirror(root: Path) -> Path:
    """``window_flist`` and the five frames of the test field, linked from the mirror."""
    for rel in [WINDOW_FLIST_PATH] + [frame_path(FIELD, b) for b in BANDS]:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(MIRROR_DIR / rel)
    return root


@pytest.fixture(scope="module")
def other_mirror(mirror_url, tmp_path_factory):
    """Another mirror (HTTP on 127.0.0.1) and one cache for it, shared by this module's tests."""
    served = ServedDirectory(_sub_mirror(tmp_path_factory.mktemp("other-mirror")))
    yield served, tmp_path_factory.mktemp("other-cache")
    served.close()


@pytest.fixture(scope="module")
def objects(mirror_url, mirror_cache):
    """24 bright catalog objects of the test field (12 stars, 12 galaxies): those of the fixture's
    recorded predictions."""
    recorded = pd.read_csv(DATA / "v0.1.0-predictions.csv")
    catalog = read_calibobj(FIELD, sas_url=mirror_url, cache_dir=str(mirror_cache)).set_index("objid")
    assert np.allclose(catalog.loc[recorded["objid"], "ra"], recorded["ra"])
    return recorded


def _old(kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelVersionWarning)
        return load_model(DATA / f"{kind}-v0.1.0.stargal")


def _cli(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "stargal.cli", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=600, **kw)


def test_shipped_model_reads_the_mirror_named_by_the_environment(other_mirror, objects, tmp_path):
    """`STARGAL_SAS_URL=<another mirror> stargal predict --model experiments/results/cnn.stargal coords.csv`
    in a fresh process reads that mirror, even though the file was trained from another place and
    the cache was filled before from a third source whose window_flist holds none of these points."""
    server, cache = other_mirror
    stale = None
    if cache_source(cache) is None:  # first in this cache: another source fills it first
        stale = tmp_path / "stale-mirror"
        far = {"RUN": 1, "CAMCOL": 1, "FIELD": 10, "NODE": 95.0, "INCL": 0.0, "MU_START": 10.0,
               "MU_END": 10.2, "NU_START": -0.1, "NU_END": 0.1, "RA": 10.0, "DEC": 0.0}
        write_window_flist(stale, [far])
        Fetcher(stale.as_uri(), cache).fetch(WINDOW_FLIST_PATH)
    csv = tmp_path / "coords.csv"
    objects[["ra", "dec", "label"]].to_csv(csv, index=False)
    before = server.count()
    run = _cli(["predict", "--model", SHIPPED, csv], {"STARGAL_SAS_URL": server.url, "STARGAL_CACHE": str(cache)})
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    if stale is not None:  # one line naming both sources
        assert f"holds files from {stale.as_uri()}/, not from the configured source {server.url}" in run.stderr
    out = pd.read_csv(io.StringIO(run.stdout), keep_default_na=False)
    assert list(out.columns) == ["ra", "dec", "input_label"] + OUTPUT_COLUMNS
    assert (out["flag"] == "").all() and (out["field"] == FIELD).all()
    correct = (out["label"] == objects["label"]).to_numpy()
    print(f"shipped CNN on 24 bright objects read from another mirror: {correct.sum()} correct")
    assert correct[objects["label"] == "star"].mean() >= 0.9 and correct[objects["label"] == "galaxy"].mean() >= 0.75
    if before == 0:  # the files came from this mirror: its window_flist and the field's frames
        assert server.count("window_flist.fits") == 1
        assert sum(server.count(f"frame-{b}-008162-6-0080.fits.bz2") for b in BANDS) == 5
    sub = cache / SOURCES_DIR
    used = cache if cache_source(cache) == server.url else next(sub.iterdir())
    assert cache_source(used) == server.url


def test_a_model_saved_with_one_source_predicts_from_another_in_a_fresh_process(other_mirror, objects, tmp_path):
    server, cache = other_mirror
    first = _sub_mirror(tmp_path / "first-source")
    model = _old("forest")
    model.set_params(align__sas_url=first.as_uri(), cut__sas_url=first.as_uri(),
                     align__cache_dir=str(tmp_path / "first-cache"), cut__cache_dir=str(tmp_path / "first-cache"))
    path = save_model(model, tmp_path / "forest.stargal")
    import zipfile
    with zipfile.ZipFile(path) as z:
        text = b"".join(z.read(n) for n in z.namelist())
    assert b"first-source" not in text and b"first-cache" not in text
    shutil.rmtree(first)  # the first source is gone
    csv = tmp_path / "coords.csv"
    objects[["ra", "dec"]].to_csv(csv, index=False)
    run = _cli(["predict", "--model", path, csv, "-o", tmp_path / "out.csv"],
               {"STARGAL_SAS_URL": server.url, "STARGAL_CACHE": str(cache)})
    assert run.returncode == 0, run.stderr
    assert "written by stargal" not in run.stderr  # a file of this version: nothing to bring up to date
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert (out["field"] == FIELD).all()
    np.testing.assert_allclose(out["p_galaxy"], objects["p_galaxy_forest"], rtol=0, atol=1e-6)
    assert not (tmp_path / "first-cache").exists()


@pytest.mark.parametrize("kind", ["forest", "cnn"])
def test_files_of_the_previous_release_predict_as_the_code_that_wrote_them(kind, objects, mirror_url, mirror_cache,
                                                                           monkeypatch):
    """Loaded with today's code, a 0.1.0 file gives the probabilities 0.1.0 gave (recorded in
    tests/data/v0.1.0-predictions.csv). An explicit source wins over the environment."""
    monkeypatch.setenv("STARGAL_SAS_URL", "file:///nonexistent/sdss")
    model = _old(kind)
    out = predict_coordinates(model, objects[["ra", "dec"]], sas_url=mirror_url, cache_dir=str(mirror_cache),
                              progress=False)
    assert (out["flag"] == "").all() and (out["field"] == FIELD).all()
    np.testing.assert_allclose(out["p_galaxy"], objects[f"p_galaxy_{kind}"], rtol=0, atol=1e-5,
                               err_msg="a model file of 0.1.0 predicts differently with this code: if features or "
                                       "cutouts changed on purpose, old files must be refused (persist) or migrated")


# ------------------------------------------------------------------------------ the bad-input tour
RA0, DEC0 = 331.6577187, 26.9362829  # a bright star of the test field, and its galactic l, b
_GAL = SkyCoord(RA0, DEC0, unit="deg").galactic
SEXA = SkyCoord(RA0, DEC0, unit="deg").to_string("hmsdms", sep=":", precision=3).split()

#: (case, input columns, keyword arguments, expected flags, expected flag_detail)
TOUR = [
    ("RA/DEC headers", {"RA": [RA0], "DEC": [DEC0]}, {}, [""], [""]),
    ("ra_deg/dec_deg", {"ra_deg": [RA0], "dec_deg": [DEC0]}, {}, [""], [""]),
    ("RAJ2000/DEJ2000", {"RAJ2000": [RA0], "DEJ2000": [DEC0]}, {"frame": "fk5"}, [""], [""]),
    ("alpha/delta", {"alpha": [RA0], "delta": [DEC0]}, {}, [""], [""]),
    ("sexagesimal", {"ra": [SEXA[0]], "dec": [SEXA[1]], "name": ["from NED"]}, {}, [""], [""]),
    ("galactic frame", {"l": [_GAL.l.deg], "b": [_GAL.b.deg]}, {"frame": "galactic"}, [""], [""]),
    ("unparseable", {"ra": ["12h3", RA0], "dec": ["+26:57:00", DEC0]}, {},
     ["invalid_coord", ""], ["cannot parse ra '12h3'", ""]),
    ("out of range", {"ra": [RA0, RA0], "dec": [95.0, DEC0]}, {},
     ["invalid_coord", ""], ["dec 95.0 out of range [-90, 90]", ""]),
    ("missing", {"ra": [None, RA0], "dec": [DEC0, DEC0]}, {}, ["invalid_coord", ""], ["ra missing", ""]),
    ("no field there", {"ra": [100.0], "dec": [0.0]}, {}, ["outside"], ["no field holds this position"]),
    ("columns named like the output", {"ra": [RA0], "dec": [DEC0], "label": ["my star"], "flag": ["x"]}, {},
     [""], [""]),
]


@pytest.mark.parametrize("case, columns, kwargs, flags, details", TOUR, ids=[t[0] for t in TOUR])
def test_bad_input_tour_keeps_every_input_value(case, columns, kwargs, flags, details, mirror_url, mirror_cache):
    table = pd.DataFrame(columns)
    before = table.copy()
    out = predict_coordinates(_old("forest"), table, sas_url=mirror_url, cache_dir=str(mirror_cache),
                              progress=False, **kwargs)
    pd.testing.assert_frame_equal(table, before)
    assert out["flag"].tolist() == flags and out["flag_detail"].tolist() == details
    for name in table.columns:  # the user's columns and values, as given (renamed only on a clash)
        kept = f"input_{name}" if name.lower() in OUTPUT_COLUMNS else name
        pd.testing.assert_series_equal(out[kept], table[name], check_names=False)
    assert list(out.columns)[-len(OUTPUT_COLUMNS):] == OUTPUT_COLUMNS
    good = out["flag"] == ""
    assert out.loc[good, "p_galaxy"].between(0, 1).all() and out.loc[~good, "p_galaxy"].isna().all()
    if good.any():  # every way of writing the star's position finds it
        np.testing.assert_allclose(out.loc[good, ["ra_deg", "dec_deg"]].to_numpy(float),
                                   [[RA0, DEC0]] * int(good.sum()), atol=3e-6 if "frame" in kwargs else 1e-9)
        assert (out.loc[good, "field"] == FIELD).all()


def test_the_command_line_writes_every_input_value_back_as_it_was(tmp_path, mirror_url, mirror_cache, capsys):
    from stargal.cli import main

    text = ("id,RAJ2000,DEJ2000,note\n"
            f"007,{SEXA[0]},{SEXA[1]},copied from NED\n"
            f"008,{RA0:.7f},0{DEC0:.7f},leading zero\n"
            "009,12h3,+26:57:00,typo\n"
            "010,,,\n")
    csv = tmp_path / "mine.csv"
    csv.write_text(text)
    model = tmp_path / "forest.stargal"
    save_model(_old("forest"), model)
    source = ["--model", str(model), str(csv), "-o", str(tmp_path / "out.csv"), "--sas-url", mirror_url,
              "--cache-dir", str(mirror_cache)]
    assert main(["predict", *source, "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "row 2: cannot parse ra '12h3'" in err and "row 3: ra missing; dec missing" in err
    assert not (tmp_path / "out.csv").exists()
    assert main(["predict", *source]) == 0
    assert "2 flagged" in capsys.readouterr().err
    out = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    given = pd.read_csv(csv, dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(out[given.columns], given)  # character for character
    assert out["flag"].tolist() == ["", "", "invalid_coord", "invalid_coord"]
    assert out["flag_detail"].tolist()[2:] == ["cannot parse ra '12h3'", "ra missing; dec missing"]
    assert np.allclose(out["ra_deg"][:2].astype(float), RA0, atol=3e-6)


@pytest.mark.integration
def test_shipped_default_model_predicts_real_objects(mirror_url, mirror_cache):
    """The study's file of the kind `stargal train` ships by default loads (this version, no paths
    inside) and classifies real objects of a training field from RA/Dec."""
    from stargal.config import load_config

    kind = load_config().default_model
    path = Path(__file__).resolve().parents[1] / "experiments" / "results" / f"{kind}.stargal"
    if not path.is_file():
        pytest.skip(f"the committed study saved no {path.name} (its default is the CNN: cnn.stargal)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelVersionWarning)  # written by this version: nothing to migrate
        model = load_model(path)
    params = model.get_params(deep=True)
    assert all(v is None for k, v in params.items() if k.endswith(("sas_url", "cache_dir")))
    cat = read_calibobj("1043-5-25", sas_url=mirror_url, cache_dir=str(mirror_cache))
    rows = cat[(cat["psfmag_r"] < 20.5)].iloc[:30]
    out = predict_coordinates(model, rows[["ra", "dec"]], sas_url=mirror_url, cache_dir=str(mirror_cache),
                              fields=["1043-5-25"], progress=False)
    ok = out["flag"] == ""
    assert ok.sum() >= 25 and out.loc[ok, "p_galaxy"].between(0, 1).all()
    agree = (out.loc[ok, "label"].to_numpy() == rows.loc[ok.to_numpy(), "label"].to_numpy()).mean()
    assert agree >= 0.9  # bright objects of a training field
