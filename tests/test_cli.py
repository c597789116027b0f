import subprocess
import sys


from stargal.cli import main
from stargal.fetch import CACHE_MANIFEST, cache_source


def test_fetch_fills_cache_from_http_mirror(http_serve, mirror_dir, tmp_path, capsys):
    server = http_serve(mirror_dir)
    cache = tmp_path / "cache"
    assert main(["fetch", "8162-6-80", "--sas-url", server.url, "--cache-dir", str(cache), "--quiet"]) == 0
    got = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert got == sorted(["calibObj-008162-6-gal.fits.gz", "calibObj-008162-6-star.fits.gz"]
                         + [f"frame-{b}-008162-6-0080.fits.bz2" for b in "ugriz"] + [CACHE_MANIFEST])
    assert cache_source(cache) == server.url  # the cache records where its files came from
    n = len(server.requests)
    assert main(["fetch", "008162-6-0080", "--sas-url", server.url, "--cache-dir", str(cache)]) == 0
    assert len(server.requests) == n  # second run: everything cached, no request
    assert "7 files" in capsys.readouterr().out


def test_fetch_missing_band_is_a_clear_error(mirror_url, tmp_path, capsys):
    rc = main(["fetch", "1006-6-11", "--sas-url", mirror_url, "--cache-dir", str(tmp_path), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "frame-i-001006-6-0011.fits.bz2" in err and "Traceback" not in err


def test_bad_field_string(capsys):
    assert main(["fetch", "8162-9-80", "--quiet"]) == 2
    assert "cannot parse SDSS field '8162-9-80'" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "stargal.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "predict" in out.stdout
