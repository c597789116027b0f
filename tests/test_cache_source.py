"""One cache, two sources: a cache records where its files came from and keeps other sources apart.

Issue #18: a cache that held another mirror's ``window_flist`` answered ``outside`` for every point of
the new one. Two real sources here: one as a ``file://`` directory, one served over HTTP on 127.0.0.1,
each with its own ``window_flist.fits`` (a synthetic one, real layout).
"""

import json
import subprocess
import sys
import textwrap
import warnings

import pytest

from stargal.fetch import (CACHE_MANIFEST, SOURCES_DIR, CacheSourceWarning, Fetcher, cache_source,
                           source_key)
from stargal.window import WINDOW_FLIST_PATH, load_window_index
from synthetic import write_window_flist

POINT = ([100.1], [0.0])


def _row(mu_start):
    return {"RUN": 1, "CAMCOL": 1, "FIELD": 10, "NODE": 95.0, "INCL": 0.0, "MU_START": mu_start,
            "MU_END": mu_start + 0.2, "NU_START": -0.1, "NU_END": 0.1, "RA": mu_start, "DEC": 0.0}


@pytest.fixture
def two_sources(tmp_path, http_serve):
    """Source A (file://) lists field 1-1-10 elsewhere on the sky; source B (HTTP) where POINT is."""
    a, b = tmp_path / "mirror-a", tmp_path / "mirror-b"
    write_window_flist(a, [_row(200.0)])
    write_window_flist(b, [_row(100.0)])
    return a.as_uri() + "/", http_serve(b)


def test_a_cache_filled_from_one_source_does_not_answer_for_another(two_sources, tmp_path):
    url_a, server_b = two_sources
    cache = tmp_path / "cache"
    assert load_window_index(sas_url=url_a, cache_dir=str(cache)).locate(*POINT).tolist() == [""]
    assert cache_source(cache) == url_a
    with pytest.warns(CacheSourceWarning) as record:
        index = load_window_index(sas_url=server_b.url, cache_dir=str(cache))
    assert index.locate(*POINT).tolist() == ["1-1-10"]  # B's own field index, fetched from B
    assert server_b.count("window_flist.fits") == 1
    message = str(record[0].message)
    assert url_a in message and server_b.url in message  # both sources named
    sub = cache / SOURCES_DIR / source_key(server_b.url)
    assert cache_source(sub) == server_b.url and (sub / WINDOW_FLIST_PATH).is_file()
    # A's files are untouched and A still gets its own answer; B again: no second warning, no refetch
    assert load_window_index(sas_url=url_a, cache_dir=str(cache)).locate(*POINT).tolist() == [""]
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert load_window_index(sas_url=server_b.url, cache_dir=str(cache)).locate(*POINT).tolist() == ["1-1-10"]
    assert not [w for w in again if issubclass(w.category, CacheSourceWarning)]
    assert server_b.count("window_flist.fits") == 1


def test_the_other_source_is_kept_apart_in_a_fresh_process_too(two_sources, tmp_path):
    url_a, server_b = two_sources
    cache = tmp_path / "cache"
    Fetcher(url_a, cache).fetch(WINDOW_FLIST_PATH)
    code = textwrap.dedent("""
        from stargal.window import load_window_index
        print(load_window_index().locate([100.1], [0.0])[0])
    """)
    env = {"STARGAL_SAS_URL": server_b.url, "STARGAL_CACHE": str(cache), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1-1-10"
    assert "CacheSourceWarning" in done.stderr and url_a in done.stderr and server_b.url in done.stderr


def test_the_manifest_records_the_source_and_a_cache_from_before_it_is_claimed_with_a_warning(tmp_path):
    cache = tmp_path / "old-cache"
    (cache / "dr17").mkdir(parents=True)  # files written before caches recorded their source
    with pytest.warns(CacheSourceWarning, match="no record of the source"):
        fetcher = Fetcher("https://example.org/sas", cache)
        assert fetcher.cache_dir == cache
    assert json.loads((cache / CACHE_MANIFEST).read_text())["sas_url"] == "https://example.org/sas/"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same source again: nothing to say
        assert Fetcher("https://example.org/sas/", cache).cache_dir == cache
        fresh = tmp_path / "fresh-cache"
        assert Fetcher("https://example.org/sas/", fresh).cache_dir == fresh  # empty: claimed silently
    assert cache_source(fresh) == "https://example.org/sas/"


def test_a_source_subfolder_is_used_as_it_is(tmp_path):
    """Steps pass ``str(fetcher.cache_dir)`` on: the subfolder of a source is that source's cache."""
    cache = tmp_path / "c"
    Fetcher("https://example.org/a", cache).cache_dir
    with pytest.warns(CacheSourceWarning):
        sub = Fetcher("https://example.org/b", cache).cache_dir
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Fetcher("https://example.org/b", str(sub)).cache_dir == sub
