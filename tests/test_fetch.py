"""Tests for stargal.fetch: real HTTP against a local ThreadingHTTPServer, no mocks of urllib."""

from __future__ import annotations

import bz2
import gzip
import io
import os
import stat
import pickle
import time
from pathlib import Path

import numpy as np
import platformdirs
import pytest
from astropy.io import fits

from stargal import sdss
from stargal.fetch import (
    CACHE_MANIFEST,
    CacheSourceWarning,
    CorruptFileError,
    FetchError,
    Fetcher,
    NotFoundError,
    fetch_field,
    get_fetcher,
    source_key,
)

FID = "8162-6-80"
GOOD_BZ2 = sdss.frame_path(FID, "r")
GOOD_GZ = sdss.calibobj_path(FID, "star")
GOOD_GZ2 = sdss.calibobj_path(FID, "gal")
GOOD_JPG = sdss.preview_path(FID)
CORRUPT = sdss.frame_path(FID, "g")  # random bytes
TRUNCATED = sdss.frame_path(FID, "i")  # first half of a valid .fits.bz2
DROPPED = sdss.frame_path(FID, "u")  # server sends full Content-Length, then half, then closes
FLAKY = sdss.frame_path(FID, "z")  # server answers an error status the first N times
MISSING = sdss.frame_path("1006-6-11", "i")  # 404
FORBIDDEN = sdss.frame_path("1035-6-17", "r")  # 403
SLOW = sdss.frame_path("1043-5-25", "r")  # server stalls longer than the client timeout
WATCHED = sdss.frame_path("1992-1-87", "r")  # server looks at the cache while streaming

FAST = dict(retries=2, backoff=0.01, timeout=5.0, quiet=True)


def _fits_bytes(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    hdu = fits.PrimaryHDU(rng.normal(size=(16, 12)).astype("float32"))
    hdu.header["BUNIT"] = "nanomaggy"
    buf = io.BytesIO()
    fits.HDUList([hdu, fits.ImageHDU(np.arange(10.0))]).writeto(buf)
    return buf.getvalue()


def _write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _files(directory: Path) -> list[str]:
    """Every file (hidden ones included) under ``directory``, except the cache's source manifest."""
    found = []
    for dirpath, _dirs, names in os.walk(directory):
        found += [os.path.relpath(os.path.join(dirpath, n), directory) for n in names]
    return sorted(f for f in found if f != CACHE_MANIFEST)


@pytest.fixture(scope="module")
def sas_dir(tmp_path_factory) -> Path:
    """A small synthetic SAS tree in the DR17 layout."""
    root = tmp_path_factory.mktemp("sas")
    rng = np.random.default_rng(42)
    good_bz2 = bz2.compress(_fits_bytes(1))
    _write(root, GOOD_BZ2, good_bz2)
    _write(root, GOOD_GZ, gzip.compress(_fits_bytes(2)))
    _write(root, GOOD_GZ2, gzip.compress(_fits_bytes(3)))
    _write(root, GOOD_JPG, b"\xff\xd8\xff\xe0" + rng.bytes(3000) + b"\xff\xd9")
    _write(root, CORRUPT, rng.bytes(5000))
    _write(root, TRUNCATED, good_bz2[: len(good_bz2) // 2])
    for rel, seed in ((DROPPED, 4), (FLAKY, 5), (FORBIDDEN, 6), (SLOW, 7), (WATCHED, 8)):
        _write(root, rel, bz2.compress(_fits_bytes(seed)))
    return root


@pytest.fixture
def server(sas_dir, http_serve):
    """The synthetic SAS over HTTP, with fault injection; ``server.state`` tunes and records it."""
    state = {"fail_first": 2, "fail_status": 503, "seen_during_stream": None, "cache_dir": None}

    def hook(h) -> bool:
        rel = h.path.lstrip("/")
        if rel == DROPPED:
            data = (sas_dir / rel).read_bytes()
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            return True
        if rel == FLAKY and state["fail_first"] > 0:
            state["fail_first"] -= 1
            h.send_error(state["fail_status"])
            return True
        if rel == FORBIDDEN:
            h.send_error(403)
            return True
        if rel == SLOW:
            time.sleep(1.0)
            try:
                h.send_error(500)
            except OSError:
                pass
            return True
        if rel == WATCHED and state["cache_dir"] is not None:
            parent = Path(state["cache_dir"]) / Path(rel).parent
            state["seen_during_stream"] = sorted(os.listdir(parent)) if parent.is_dir() else []
        return False

    served = http_serve(sas_dir, hook=hook)
    served.state = state
    return served


# ----------------------------------------------------------------------- success / cache
@pytest.mark.parametrize("rel", [GOOD_BZ2, GOOD_GZ, GOOD_JPG])
def test_fetch_success_identical_content_in_sas_layout(server, sas_dir, tmp_path, rel):
    f = Fetcher(server.url, cache_dir=tmp_path, **FAST)
    path = f.fetch(rel)
    assert path == tmp_path.joinpath(*rel.split("/"))
    assert path == f.cached_path(rel)
    assert path.read_bytes() == (sas_dir / rel).read_bytes()
    assert f.is_cached(rel)
    assert _files(tmp_path) == [str(Path(rel))]  # no leftover temp files
    assert server.count(rel) == 1
    from stargal._io import UMASK

    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~UMASK  # the mode of a plainly created file, as _io


def test_cache_hit_makes_no_request(server, tmp_path):
    f = Fetcher(server.url, cache_dir=tmp_path, **FAST)
    assert not f.is_cached(GOOD_BZ2)
    first = f.fetch(GOOD_BZ2)
    assert server.count() == 1
    assert f.fetch(GOOD_BZ2) == first
    # a fresh Fetcher on the same cache does not go to the network either
    assert Fetcher(server.url, cache_dir=tmp_path, **FAST).fetch(GOOD_BZ2) == first
    assert server.count() == 1


def test_force_downloads_again(server, tmp_path):
    f = Fetcher(server.url, cache_dir=tmp_path, **FAST)
    f.fetch(GOOD_GZ)
    f.fetch(GOOD_GZ, force=True)
    assert server.count(GOOD_GZ) == 2
    assert _files(tmp_path) == [str(Path(GOOD_GZ))]


def test_download_goes_to_hidden_part_file_then_renamed(server, tmp_path):
    server.state["cache_dir"] = tmp_path
    f = Fetcher(server.url, cache_dir=tmp_path, **FAST)
    f.fetch(WATCHED)
    name = WATCHED.rsplit("/", 1)[-1]
    seen = server.state["seen_during_stream"]
    assert name not in seen  # the final name appears only after validation
    assert len(seen) == 1 and seen[0].startswith(f".{name}.part-")
    assert _files(tmp_path) == [str(Path(WATCHED))]


# ---------------------------------------------------------------------------- failures
def test_404_raises_not_found_with_url_and_caches_nothing(server, tmp_path):
    f = Fetcher(server.url, cache_dir=tmp_path, **FAST)
    with pytest.raises(NotFoundError) as info:
        f.fetch(MISSING)
    assert server.url + MISSING in str(info.value)
    assert server.count(MISSING) == 1  # no retry on 404
    assert _files(tmp_path) == []
    assert not f.is_cached(MISSING)


def test_other_4xx_is_not_retried(server, tmp_path):
    f = Fetcher(server.url, cache_dir=tmp_path, **FAST)
    with pytest.raises(FetchError, match="403") as info:
        f.fetch(FORBIDDEN)
    assert not isinstance(info.value, NotFoundError)
    assert server.count(FORBIDDEN) == 1
    assert _files(tmp_path) == []


def test_dropped_connection_retried_then_fails_leaving_nothing(server, tmp_path):
    f = Fetcher(server.url, cache_dir=tmp_path, **FAST)
    with pytest.raises(FetchError) as info:
        f.fetch(DROPPED)
    assert not isinstance(info.value, (NotFoundError, CorruptFileError))
    assert DROPPED in str(info.value) and "Content-Length" in str(info.value)
    assert server.count(DROPPED) == FAST["retries"] + 1
    assert _files(tmp_path) == []  # no partial file, no .part file


@pytest.mark.parametrize("rel, why", [(CORRUPT, "bzip2"), (TRUNCATED, "truncated")])
def test_corrupt_and_truncated_raise_corrupt_file_error(server, tmp_path, rel, why):
    f = Fetcher(server.url, cache_dir=tmp_path, **FAST)
    with pytest.raises(CorruptFileError, match=why) as info:
        f.fetch(rel)
    assert server.url + rel in str(info.value)
    assert server.count(rel) == 2  # retried once
    assert _files(tmp_path) == []


@pytest.mark.parametrize("status", [503, 500, 429])
def test_transient_status_then_ok_succeeds(server, sas_dir, tmp_path, status):
    server.state["fail_status"] = status
    f = Fetcher(server.url, cache_dir=tmp_path, **FAST)
    path = f.fetch(FLAKY)
    assert path.read_bytes() == (sas_dir / FLAKY).read_bytes()
    assert server.count(FLAKY) == 3  # two failures + success


def test_transient_status_exhausts_retries(server, tmp_path):
    server.state["fail_first"] = 5
    f = Fetcher(server.url, cache_dir=tmp_path, retries=1, backoff=0.01, quiet=True)
    with pytest.raises(FetchError, match="503"):
        f.fetch(FLAKY)
    assert server.count(FLAKY) == 2
    assert _files(tmp_path) == []


def test_timeout_is_retried_then_fails(server, tmp_path):
    f = Fetcher(server.url, cache_dir=tmp_path, retries=1, backoff=0.01, timeout=0.2, quiet=True)
    t0 = time.perf_counter()
    with pytest.raises(FetchError) as info:
        f.fetch(SLOW)
    assert time.perf_counter() - t0 < 5
    assert "timed out" in str(info.value).lower()
    assert server.count(SLOW) == 2
    assert _files(tmp_path) == []


def test_connection_refused_is_a_fetch_error(tmp_path, http_serve, sas_dir):
    served = http_serve(sas_dir)
    url = served.url
    served.close()  # nothing listens on that port any more
    f = Fetcher(url, cache_dir=tmp_path, retries=1, backoff=0.01, timeout=2, quiet=True)
    with pytest.raises(FetchError, match="2 attempt"):
        f.fetch(GOOD_BZ2)
    assert _files(tmp_path) == []


# ------------------------------------------------------------------- validation (file://)
@pytest.mark.parametrize(
    "name, data, ok",
    [
        ("a.fits.bz2", bz2.compress(_fits_bytes()) * 2, True),  # concatenated streams (pbzip2)
        ("a.fits.bz2", bz2.compress(_fits_bytes()) + b"junk", False),
        ("a.fits.bz2", bz2.compress(b"not a fits file" * 300), False),
        ("a.fits.gz", gzip.compress(_fits_bytes()) + b"\0" * 8, True),  # zero padding
        ("a.fits.gz", gzip.compress(_fits_bytes())[:-4], False),  # truncated trailer
        ("a.fits.gz", gzip.compress(_fits_bytes()) + b"junk", False),
        ("a.fits", _fits_bytes(), True),
        ("a.fits", _fits_bytes()[:1000], False),  # header cut before END
        ("a.fits", b"x" * 5760, False),
        ("a.jpg", b"\xff\xd8" + b"\x00" * 10, False),
        ("a.jpg", b"GIF89a\xff\xd9", False),
        ("notes.txt", b"anything", True),
        ("notes.txt", b"", False),
    ],
)
def test_validation_by_suffix(tmp_path, name, data, ok):
    src = tmp_path / "src"
    _write(src, f"d/{name}", data)
    f = Fetcher(src.as_uri(), cache_dir=tmp_path / "cache", retries=1, backoff=0.01, quiet=True)
    if ok:
        assert f.fetch(f"d/{name}").read_bytes() == data
    else:
        with pytest.raises(CorruptFileError, match=name):
            f.fetch(f"d/{name}")
        assert _files(tmp_path / "cache") == []


def test_corrupt_gzip_crc_is_detected(tmp_path):
    data = bytearray(gzip.compress(_fits_bytes()))
    data[-6] ^= 0xFF  # flip a CRC byte
    _write(tmp_path / "src", "c.fits.gz", bytes(data))
    f = Fetcher(tmp_path / "src", cache_dir=tmp_path / "cache", retries=0, quiet=True)
    with pytest.raises(CorruptFileError, match="gzip"):
        f.fetch("c.fits.gz")


# ----------------------------------------------------------------------- local sources
def test_file_url_and_bare_directory(sas_dir, tmp_path, monkeypatch):
    by_url = Fetcher(sas_dir.as_uri(), cache_dir=tmp_path / "a", **FAST)
    assert by_url.base_url == sas_dir.as_uri() + "/"
    assert by_url.fetch(GOOD_GZ).read_bytes() == (sas_dir / GOOD_GZ).read_bytes()

    by_dir = Fetcher(str(sas_dir), cache_dir=tmp_path / "b", **FAST)
    assert by_dir.base_url == by_url.base_url
    assert by_dir.fetch(GOOD_BZ2).read_bytes() == (sas_dir / GOOD_BZ2).read_bytes()

    monkeypatch.chdir(sas_dir.parent)
    relative = Fetcher(sas_dir.name, cache_dir=tmp_path / "c", **FAST)  # absolute-ised
    assert relative.base_url == by_url.base_url
    assert Fetcher(sas_dir, cache_dir=tmp_path / "c").base_url == by_url.base_url  # Path object

    with pytest.raises(NotFoundError, match="1006"):
        by_dir.fetch(MISSING)
    with pytest.raises(CorruptFileError):
        by_dir.fetch(TRUNCATED)
    assert _files(tmp_path / "b") == [str(Path(GOOD_BZ2))]


# -------------------------------------------------------------------- configuration
def test_env_vars_are_honoured(server, tmp_path, monkeypatch):
    monkeypatch.setenv("STARGAL_SAS_URL", server.url)
    monkeypatch.setenv("STARGAL_CACHE", str(tmp_path / "envcache"))
    f = Fetcher(retries=0, quiet=True)
    assert f.base_url == server.url
    assert f.cache_dir == tmp_path / "envcache"
    assert f.fetch(GOOD_JPG) == tmp_path / "envcache" / GOOD_JPG
    assert server.count(GOOD_JPG) == 1
    # explicit arguments beat the environment
    g = Fetcher("https://example.org/sas", cache_dir=tmp_path / "arg")
    assert (g.base_url, g.cache_dir) == ("https://example.org/sas/", tmp_path / "arg")


def test_defaults_without_env(monkeypatch):
    monkeypatch.delenv("STARGAL_SAS_URL", raising=False)
    monkeypatch.delenv("STARGAL_CACHE", raising=False)
    f = Fetcher()
    assert f.base_url == sdss.DEFAULT_SAS_URL == "https://data.sdss.org/sas/"
    assert f.cache_root == Path(platformdirs.user_cache_dir("stargal")).absolute()
    assert f._cache_dir is None  # nothing resolved (or written) before the cache is used
    assert (f.retries, f.backoff, f.timeout, f.quiet) == (3, 0.5, 60.0, False)
    assert f.url(GOOD_BZ2) == "https://data.sdss.org/sas/" + GOOD_BZ2 == sdss.sas_url(GOOD_BZ2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(base_url="ftp://example.org/sas"), "scheme"),
        (dict(base_url=""), "base_url"),
        (dict(base_url="http:///nohost"), "host"),
        (dict(retries=-1), "retries"),
        (dict(retries=1.5), "retries"),
        (dict(backoff=-0.1), "backoff"),
        (dict(timeout=0), "timeout"),
    ],
)
def test_bad_parameters(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Fetcher(**{"cache_dir": tmp_path, **kwargs})


@pytest.mark.parametrize(
    "rel", ["../etc/passwd", "dr17/../../x.fits", "", "/", "http://evil/x.fits"]
)
def test_relpath_must_stay_inside_archive(tmp_path, rel):
    f = Fetcher("https://example.org/sas/", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="relpath"):
        f.fetch(rel)


def test_repr_pickle_and_get_fetcher(tmp_path):
    f = Fetcher("https://example.org/sas", cache_dir=tmp_path, retries=1)
    assert repr(f) == f"Fetcher(base_url='https://example.org/sas/', cache_dir='{tmp_path}')"
    g = pickle.loads(pickle.dumps(f))
    assert (g.base_url, g.cache_dir, g.retries) == (f.base_url, f.cache_dir, 1)
    assert get_fetcher(f) is f
    built = get_fetcher(sas_url="https://example.org/other", cache_dir=str(tmp_path))
    assert built.base_url == "https://example.org/other/"
    assert (built.cache_root, built.quiet) == (tmp_path, True)
    with pytest.warns(CacheSourceWarning, match="example.org/sas/.*example.org/other/"):
        assert built.cache_dir == tmp_path / "sources" / source_key("https://example.org/other/")
    with pytest.raises(TypeError, match="Fetcher"):
        get_fetcher("https://example.org/")


# ------------------------------------------------------------------ many files / fields
def test_fetch_many_keeps_order_and_shows_progress(server, tmp_path, capsys):
    f = Fetcher(server.url, cache_dir=tmp_path, retries=0, quiet=False)
    rels = [GOOD_JPG, GOOD_BZ2, GOOD_JPG, GOOD_GZ]
    paths = f.fetch_many(rels, desc="testbar")
    assert paths == [f.cached_path(r) for r in rels]
    assert server.count() == 3  # the duplicate is fetched once
    assert "testbar" in capsys.readouterr().err
    assert f.fetch_many(rels, desc="testbar") == paths  # all cached: no bar, no request
    assert "testbar" not in capsys.readouterr().err
    assert server.count() == 3
    with pytest.raises(TypeError):
        f.fetch_many(GOOD_JPG)


def test_fetch_many_quiet_prints_nothing(server, tmp_path, capsys):
    Fetcher(server.url, cache_dir=tmp_path, **FAST).fetch_many([GOOD_GZ], desc="quietbar")
    assert "quietbar" not in capsys.readouterr().err


def test_fetch_field(server, tmp_path):
    f = Fetcher(server.url, cache_dir=tmp_path, **FAST)
    got = fetch_field(FID, fetcher=f, bands=("r",), catalogs=True, preview=True)
    assert list(got) == sdss.field_paths(FID, bands=("r",), catalogs=True, preview=True)
    assert list(got) == [GOOD_BZ2, GOOD_GZ, GOOD_GZ2, GOOD_JPG]
    assert all(p == f.cached_path(r) and p.is_file() for r, p in got.items())
    with pytest.raises(NotFoundError):
        fetch_field("1006-6-11", fetcher=f, bands=("i",), catalogs=False)


# ------------------------------------------------------------------------- integration
@pytest.mark.integration
def test_real_mirror_over_http(mirror_dir, http_serve, tmp_path):
    served = http_serve(mirror_dir)
    f = Fetcher(served.url, cache_dir=tmp_path, retries=1, backoff=0.01, quiet=True)
    rels = [sdss.frame_path(FID, "r"), sdss.calibobj_path(FID, "star"),
            sdss.calibobj_path(FID, "gal")]
    paths = f.fetch_many(rels)
    for rel, path in zip(rels, paths):
        assert path.stat().st_size == (mirror_dir / rel).stat().st_size > 0
    assert served.count() == 3
    with fits.open(paths[0]) as hdul:  # the cached frame is a real, readable SDSS frame
        assert hdul[0].data.shape == (1489, 2048)
    assert _files(tmp_path) == sorted(str(Path(r)) for r in rels)
