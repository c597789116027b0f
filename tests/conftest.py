"""Shared test fixtures: serve a directory over HTTP on 127.0.0.1, and the SDSS mirror.

``http_serve`` yields a factory::

    server = http_serve(directory, hook=None)
    server.url        # 'http://127.0.0.1:PORT/' (trailing slash)
    server.requests   # list of request paths seen so far, e.g. ['/dr17/.../frame-r-....fits.bz2']
    server.count(s)   # number of requests whose path ends with s

``hook(handler)`` (optional) is called for every GET before the file is served;
when it returns True it has answered the request itself (fault injection:
``handler.send_error(503)``, short bodies, ...). ``handler.path`` is the request
path. Servers are shut down at the end of the test.
"""

from __future__ import annotations

import http.server
import threading
from functools import partial
from pathlib import Path

import pytest

#: The read-only SDSS mirror beside the project root (``../shared/sdss``).
MIRROR_DIR = Path(__file__).resolve().parents[2] / "shared" / "sdss"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static-file handler that records requests and lets a hook answer first."""

    def __init__(self, *args, served, **kwargs):
        self._served = served
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802 - http.server naming
        self._served._record(self.path)
        hook = self._served.hook
        if hook is not None and hook(self):
            return
        super().do_GET()

    def log_message(self, format, *args):  # noqa: A002 - keep test output clean
        pass


class ServedDirectory:
    """A running ``ThreadingHTTPServer`` serving one directory (see module docstring)."""

    def __init__(self, directory, hook=None):
        self.directory = Path(directory)
        self.hook = hook
        self.requests: list[str] = []
        self._lock = threading.Lock()
        handler = partial(_Handler, served=self, directory=str(self.directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        host, port = self.server.server_address[:2]
        self.url = f"http://{host}:{port}/"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)

    def count(self, suffix: str = "") -> int:
        """Number of requests so far whose path ends with ``suffix``."""
        with self._lock:
            return sum(p.endswith(suffix) for p in self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def http_serve():
    """Factory ``http_serve(directory, hook=None) -> ServedDirectory`` on 127.0.0.1, random port."""
    servers: list[ServedDirectory] = []

    def serve(directory, hook=None) -> ServedDirectory:
        served = ServedDirectory(directory, hook=hook)
        servers.append(served)
        return served

    yield serve
    for served in servers:
        served.close()


@pytest.fixture
def mirror_dir() -> Path:
    """The SDSS mirror at ``../shared/sdss`` beside the project root; skips the test when absent."""
    if not (MIRROR_DIR / "dr17").is_dir():
        pytest.skip(f"SDSS mirror not found at {MIRROR_DIR}")
    return MIRROR_DIR


@pytest.fixture(scope="session")
def mirror_url():
    """``file://`` URL of the SDSS mirror beside the project (skips when absent)."""
    if not (MIRROR_DIR / "dr17").is_dir():
        pytest.skip(f"SDSS mirror not found at {MIRROR_DIR}")
    return MIRROR_DIR.as_uri() + "/"


@pytest.fixture(scope="session")
def mirror_cache(tmp_path_factory):
    """One cache directory for the whole test session, so each mirror frame decompresses once."""
    return tmp_path_factory.mktemp("stargal-cache")


@pytest.fixture(scope="session")
def mirror_fetcher(mirror_url, mirror_cache):
    """A quiet :class:`~stargal.fetch.Fetcher` reading the mirror into the session cache."""
    from stargal.fetch import Fetcher

    return Fetcher(mirror_url, mirror_cache, quiet=True)


# ------------------------------------------------------------------ CNN tests (test_classifier, test_pipelines)
@pytest.fixture(scope="module")
def cnn_cutouts():
    """``(X, y, groups)``: 300 synthetic cutouts (:func:`cnn_testing.synthetic_cutouts`, seed 1)."""
    from cnn_testing import synthetic_cutouts

    return synthetic_cutouts(300, seed=1)


@pytest.fixture
def split_seen():
    """``(seen, callback)``: a fresh record of the CNN's train/valid splits for each test, shared by every clone
    of the callback (:func:`cnn_testing.split_recorder`)."""
    from cnn_testing import split_recorder

    return split_recorder()
