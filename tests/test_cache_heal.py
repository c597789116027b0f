"""A cache that heals itself: a cached file that cannot be read is named, removed and fetched again once.

Every kind of cached SAS file is tested with a truncated and a garbage cached copy, served by a real
``http.server`` on 127.0.0.1: frames (``.fits.bz2``), calibObj sweeps (``.fits.gz``), ``window_flist``
(``.fits``) and psField (``.fits``, read through the generic :meth:`Fetcher.read`). When the copy fetched
again is bad too, the error names the file, its URL and what to do; the CLI prints it on one line.
"""

import bz2
import gzip
import io
import re

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

import stargal.window as window
from stargal import sdss
from stargal.catalogs import read_calibobj
from stargal.fetch import CacheHealWarning, CorruptFileError, Fetcher
from stargal.frames import load_frame
from stargal.window import WINDOW_FLIST_PATH, load_window_index
from synthetic import make_synthetic_sas, window_row, write_window_flist

FID = "1000-1-10"
FAST = dict(retries=1, backoff=0.01, timeout=5.0, quiet=True)


def _psfield_bytes() -> bytes:
    """A small psField-like file: HDUs 1-5 (u g r i z) hold a table of eigen-images."""
    hdus = [fits.PrimaryHDU()]
    for k in range(5):
        hdus.append(fits.BinTableHDU.from_columns(
            [fits.Column(name="RROWS", format="441E", array=np.full((4, 441), k, np.float32))]))
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    return buf.getvalue()


def _read_psfield(path):
    with fits.open(path, memmap=False) as hdul:
        return [np.array(hdul[i].data["RROWS"]) for i in range(1, 6)]


def _cut_data(raw: bytes, keep_header_blocks: int = 1) -> bytes:
    """A FITS file whose primary header is intact but whose data stop short (passes download checks)."""
    return raw[: 2880 * keep_header_blocks + (len(raw) - 2880 * keep_header_blocks) // 3]


def _cut_table_rows(raw: bytes) -> bytes:
    """A FITS file cut 40 bytes into the rows of its first table (every header intact)."""
    with fits.open(io.BytesIO(raw)) as hdul:
        start = hdul[1].fileinfo()["datLoc"]
    return raw[: start + 40]


@pytest.fixture(scope="module")
def sas(tmp_path_factory):
    root = tmp_path_factory.mktemp("sas")
    info = make_synthetic_sas(root, fid=FID, n_stars=3, n_gal=2, seed=3)
    write_window_flist(root, [window_row(info)])
    (root / sdss.psfield_path(FID)).parent.mkdir(parents=True, exist_ok=True)
    (root / sdss.psfield_path(FID)).write_bytes(_psfield_bytes())
    return {"root": root, "info": info}


KINDS = {
    "frame": sdss.frame_path(FID, "r"),
    "calibObj": sdss.calibobj_path(FID, "star"),
    "window_flist": WINDOW_FLIST_PATH,
    "psField": sdss.psfield_path(FID),
}


def _read(kind, fetcher):
    """Read one kind the way stargal does; returns something comparable with the source."""
    if kind == "frame":
        return load_frame(FID, "r", fetcher).image.copy()
    if kind == "calibObj":
        return read_calibobj(FID, fetcher, on_frames=False)[["objid", "ra", "dec"]]
    if kind == "window_flist":
        window._MEMO.clear()
        return load_window_index(fetcher).columns["mu_end"].copy()
    return fetcher.read(KINDS[kind], _read_psfield)


def _same(a, b):
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    elif isinstance(a, list):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    else:
        np.testing.assert_array_equal(a, b)


def _bad_copy(good: bytes, how: str) -> bytes:
    if how == "truncated":
        return good[: len(good) // 2]
    return np.random.default_rng(7).bytes(len(good))


@pytest.mark.parametrize("how", ["truncated", "garbage"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_cached_copy_is_named_removed_and_fetched_again(sas, http_serve, tmp_path, kind, how):
    server = http_serve(sas["root"])
    rel = KINDS[kind]
    reference = _read(kind, Fetcher(server.url, tmp_path / "ref", **FAST))
    fetcher = Fetcher(server.url, tmp_path / "cache", **FAST)
    good = (sas["root"] / rel).read_bytes()
    cached = fetcher.cached_path(rel)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(_bad_copy(good, how))
    before = server.count(rel)
    with pytest.warns(CacheHealWarning, match=re.escape(str(cached)) + ".*fetching it again from http://127.0.0.1"):
        result = _read(kind, fetcher)
    _same(result, reference)
    assert cached.read_bytes() == good          # the healed copy is the source's
    assert server.count(rel) - before == 1      # fetched again exactly once
    assert not [p for p in cached.parent.iterdir() if ".part" in p.name]


SOURCE_DAMAGE = {  # a copy that passes the download checks (complete stream, FITS header) but cannot be read
    "frame": lambda raw: bz2.compress(_cut_data(bz2.decompress(raw))),
    "calibObj": lambda raw: gzip.compress(_cut_data(gzip.decompress(raw), keep_header_blocks=2)),
    "window_flist": lambda raw: _cut_table_rows(raw),
    "psField": lambda raw: _cut_data(raw, keep_header_blocks=2),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_second_bad_copy_is_a_clear_error_naming_file_url_and_remedy(sas, http_serve, tmp_path, kind):
    root = tmp_path / "sas"
    for rel in set(KINDS.values()) | set(sdss.field_paths(FID)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((sas["root"] / rel).read_bytes())
    rel = KINDS[kind]
    (root / rel).write_bytes(SOURCE_DAMAGE[kind]((sas["root"] / rel).read_bytes()))
    server = http_serve(root)
    fetcher = Fetcher(server.url, tmp_path / "cache", **FAST)
    with pytest.warns(CacheHealWarning):
        with pytest.raises(CorruptFileError) as err:
            _read(kind, fetcher)
    msg = str(err.value)
    assert rel in msg and fetcher.url(rel) in msg and "check or repair" in msg and "mirror" in msg
    assert server.count(rel) == 2               # the first download and one more, no loop
    assert not fetcher.cached_path(rel).exists()  # no copy known to be bad is left in the cache


def test_garbage_at_the_source_is_refused_at_download(sas, http_serve, tmp_path):
    root = tmp_path / "sas"
    rel = KINDS["frame"]
    (root / rel).parent.mkdir(parents=True)
    (root / rel).write_bytes(b"BZh9" + np.random.default_rng(1).bytes(5000))
    server = http_serve(root)
    fetcher = Fetcher(server.url, tmp_path / "cache", **FAST)
    with pytest.raises(CorruptFileError, match=re.escape(fetcher.url(rel)) + ".*check or repair"):
        load_frame(FID, "r", fetcher)
    assert not fetcher.cached_path(rel).exists()


def test_reader_errors_in_passthrough_are_not_healed(sas, tmp_path):
    fetcher = Fetcher(sas["info"]["sas_url"], tmp_path / "cache", **FAST)

    class Different(Exception):
        pass

    def reader(path):
        raise Different("a valid file of another kind")

    with pytest.raises(Different):
        fetcher.read(KINDS["psField"], reader, passthrough=(Different,))
    assert fetcher.cached_path(KINDS["psField"]).exists()  # nothing removed


def test_cli_reports_a_damaged_source_on_one_line(sas, tmp_path, capsys):
    from stargal.align import Aligner
    from stargal.cli import main
    from stargal.cutouts import Cutter
    from stargal.models import make_forest_pipeline
    from stargal.persist import save_model

    objects = sas["info"]["objects"]
    kw = {"sas_url": sas["info"]["sas_url"], "cache_dir": str(tmp_path / "train-cache")}
    pipe = make_forest_pipeline(front=[("align", Aligner(**kw)), ("cut", Cutter(size=11, **kw))], n_estimators=5)
    pipe.fit(objects[["ra", "dec", "run", "camcol", "field"]], (objects["label"] == "galaxy").astype(int))
    model = tmp_path / "forest.stargal"
    save_model(pipe, model)

    root = tmp_path / "sas"
    for rel in set(KINDS.values()) | set(sdss.field_paths(FID)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((sas["root"] / rel).read_bytes())
    damaged = root / WINDOW_FLIST_PATH
    damaged.write_bytes(SOURCE_DAMAGE["window_flist"](damaged.read_bytes()))
    coords = tmp_path / "coords.csv"
    objects[["ra", "dec"]].to_csv(coords, index=False)
    out = tmp_path / "out.csv"
    rc = main(["predict", "--model", str(model), str(coords), "-o", str(out), "--sas-url", root.as_uri(),
               "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith("stargal predict: error: ") and WINDOW_FLIST_PATH in errors[0]
    assert "check or repair" in errors[0]
    assert "stargal: warning: cached file" in err  # the first bad copy was named, one line
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))  # nothing half-written
    # and with the fields named, the same command works: the index is not needed
    rc = main(["predict", "--model", str(model), str(coords), "-o", str(out), "--sas-url", root.as_uri(),
               "--cache-dir", str(tmp_path / "cache"), "--fields", FID])
    assert rc == 0 and len(pd.read_csv(out)) == len(objects)
