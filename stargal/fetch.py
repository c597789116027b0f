"""Download SDSS files into a local cache: atomic, validated and retried.

A :class:`Fetcher` maps a *relative* SAS path (see :mod:`stargal.sdss`) to a
file in the local cache, downloading it from a base URL when it is not there
yet. The cache uses the SAS layout: ``cache_dir / relpath``.

Where the data come from and where they go
------------------------------------------
Base URL, first match wins:

1. the ``base_url`` argument;
2. the ``STARGAL_SAS_URL`` environment variable;
3. :data:`stargal.sdss.DEFAULT_SAS_URL` (``https://data.sdss.org/sas/``).

``http://``, ``https://`` and ``file://`` URLs are accepted, and so is a bare
local directory path (for example a mirror such as ``../shared/sdss``), which
is made absolute and treated as a ``file://`` URL.

Cache directory, first match wins: the ``cache_dir`` argument, the
``STARGAL_CACHE`` environment variable, ``platformdirs.user_cache_dir("stargal")``.

One cache, one source
---------------------
A cache directory records the base URL its files came from, in a small manifest
at its root (:data:`CACHE_MANIFEST`, ``{"sas_url": ...}``), written atomically
the first time a fetcher uses the directory. A fetcher whose base URL differs
from the one recorded keeps its files apart, in
``cache_dir/sources/<source key>/`` (:func:`source_key`: the URL made readable
plus a hash), which records its own source: so a cache filled from one mirror
is never answered from for another (a ``window_flist`` of another mirror would
put every point of this one ``outside``). Files derived from the downloads
(decompressed frames, registrations, PSF models, the field index) live under
the same root, so they are kept apart too. The first time in a process that a
cache meets another source, a :class:`CacheSourceWarning` names both sources and
where the new one's files go. A cache written before this manifest existed is
claimed for the first source that uses it, with a warning. ``Fetcher.cache_dir``
is the directory this source's files go to; ``Fetcher.cache_root`` the
configured one.

Atomic-write protocol
---------------------
The cache never holds a partial or unvalidated file under its final name:

1. the file is streamed in chunks into a temporary file in the *same*
   directory as its final path, named ``.{name}.part-<random>``;
2. while streaming, the byte count is checked against ``Content-Length`` and
   the content is validated incrementally according to its suffix (``.bz2``
   and ``.gz`` streams must decompress to their end with no trailing garbage;
   ``.fits[.bz2|.gz]`` must start with a FITS primary header astropy can
   parse; ``.jpg`` must start with ``FF D8`` and end with ``FF D9``), so memory
   use stays small whatever the file size;
3. the temporary file is flushed and ``fsync``-ed, then ``os.replace``-d onto
   the final path (atomic on POSIX and Windows) and the directory is
   ``fsync``-ed;
4. on *any* failure, including ``KeyboardInterrupt``, the temporary file is
   deleted.

Because only validated files are ever renamed into place,
:meth:`Fetcher.is_cached` only checks that the final path exists (no sidecar
marker files). Two processes fetching the same file concurrently each write
their own temporary file; whichever rename comes last wins, and both results
are complete and valid.

Retries
-------
Transient failures (connection refused/reset/dropped, timeouts, HTTP 5xx and
429, short reads against ``Content-Length``) are retried up to ``retries``
times with exponential backoff ``backoff * 2**k`` seconds (a numeric
``Retry-After`` header, capped at 60 s, is honoured when longer). HTTP 404 (or
a missing ``file://`` file) raises :class:`NotFoundError` at once; other 4xx
raise :class:`FetchError` at once. A download that completes but fails
validation is retried once (if ``retries >= 1``), then raises
:class:`CorruptFileError`.

Examples
--------
>>> from stargal.fetch import Fetcher
>>> f = Fetcher("/data/sdss-mirror", cache_dir="/tmp/stargal-cache")  # doctest: +SKIP
>>> from stargal.sdss import frame_path
>>> path = f.fetch(frame_path("8162-6-80", "r"))  # doctest: +SKIP
>>> paths = fetch_field("8162-6-80", fetcher=f)  # doctest: +SKIP
"""

from __future__ import annotations

import bz2
import email.utils
import http.client
import logging
import os
import re
import hashlib
import json
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from stargal._io import UMASK
from stargal.sdss import BANDS, DEFAULT_SAS_URL, FieldID, field_paths

__all__ = [
    "Fetcher",
    "get_fetcher",
    "fetch_field",
    "FetchError",
    "NotFoundError",
    "CorruptFileError",
    "CacheHealWarning",
    "CacheSourceWarning",
    "source_key",
    "cache_source",
    "CACHE_MANIFEST",
    "SOURCES_DIR",
    "ENV_SAS_URL",
    "ENV_CACHE",
]

logger = logging.getLogger(__name__)

#: Environment variable overriding the default base URL.
ENV_SAS_URL = "STARGAL_SAS_URL"
#: Environment variable overriding the default cache directory.
ENV_CACHE = "STARGAL_CACHE"
#: File at the root of a cache that records the base URL its files came from.
CACHE_MANIFEST = "stargal-cache.json"
#: Folder of a cache holding the files of sources other than the one it records.
SOURCES_DIR = "sources"

_CHUNK = 1 << 20  # bytes read from the network per step
_DECOMP_STEP = 4 << 20  # max decompressed bytes produced per decompressor call
_FITS_BLOCK = 2880
_FITS_MAX_HEADER_BLOCKS = 36  # the primary header's END must appear within ~100 kB
_MAX_RETRY_AFTER = 60.0
_BAR_MIN_BYTES = 64 << 20  # downloads at least this large show a byte progress bar (unless quiet)
_USER_AGENT = "stargal-fetch (python urllib)"
_FITS_SUFFIXES = (".fits", ".fits.bz2", ".fits.gz", ".fit", ".fit.gz", ".fit.bz2")


# --------------------------------------------------------------------------- errors
class FetchError(IOError):
    """A file could not be fetched into the cache."""


class NotFoundError(FetchError):
    """The file does not exist at the source (HTTP 404 or missing local file)."""


class CorruptFileError(FetchError):
    """The downloaded file failed validation (truncated, wrong format, trailing garbage)."""


class CacheHealWarning(UserWarning):
    """A cached file could not be read; it is removed and fetched again (see :meth:`Fetcher.read`)."""


class CacheSourceWarning(UserWarning):
    """A cache holds files of another source than the configured one; they are kept apart."""


class _Transient(Exception):
    """Internal: a failure worth retrying."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Corrupt(Exception):
    """Internal: content failed validation."""


# ----------------------------------------------------------------------- validators
def _check_fits_header(head: bytes, complete: bool) -> bool | None:
    """Check the start of a FITS file.

    Returns True when a full primary header (through its END card) is present
    and parses, None when more bytes are needed; raises :class:`_Corrupt`.
    """
    if len(head) >= 9 and not head.startswith(b"SIMPLE  ="):
        raise _Corrupt("not a FITS file (does not start with 'SIMPLE  =')")
    limit = _FITS_BLOCK * _FITS_MAX_HEADER_BLOCKS
    n_cards = min(len(head), limit) // 80
    for i in range(n_cards):
        card = head[80 * i : 80 * (i + 1)]
        if card[:8] == b"END     " and card[8:].strip(b" ") == b"":
            end = 80 * (i + 1)
            try:
                from astropy.io import fits

                fits.Header.fromstring(head[:end].decode("ascii"))
            except Exception as exc:  # noqa: BLE001 - any parse error means corrupt
                raise _Corrupt(f"FITS primary header does not parse: {exc}") from None
            return True
    if len(head) >= limit:
        raise _Corrupt(f"no END card in the first {_FITS_MAX_HEADER_BLOCKS} FITS header blocks")
    if complete:
        raise _Corrupt("file ends before the FITS primary header's END card")
    return None


class _Validator:
    """Streaming content check, fed the raw bytes chunk by chunk."""

    def __init__(self, name: str):
        self.name = name
        lower = name.lower()
        self.fits = lower.endswith(_FITS_SUFFIXES)
        if lower.endswith(".bz2"):
            self.kind = "bz2"
        elif lower.endswith(".gz"):
            self.kind = "gz"
        elif lower.endswith((".jpg", ".jpeg")):
            self.kind = "jpg"
        else:
            self.kind = "raw"
        self._dec = self._new_decompressor() if self.kind in ("bz2", "gz") else None
        self._head = b""  # first bytes of the (decompressed) content, for FITS
        self._head_done = not self.fits
        self._raw_head = b""
        self._raw_tail = b""
        self._nraw = 0
        self._nout = 0
        self._trailing_zeros = False

    def _new_decompressor(self):
        if self.kind == "bz2":
            return bz2.BZ2Decompressor()
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip container, CRC checked

    # -- decompressed content
    def _content(self, data: bytes) -> None:
        self._nout += len(data)
        if not self._head_done and data:
            self._head += data[: _FITS_BLOCK * _FITS_MAX_HEADER_BLOCKS - len(self._head)]
            if _check_fits_header(self._head, complete=False):
                self._head_done = True

    def _decompress(self, data: bytes) -> None:
        fmt = "bzip2" if self.kind == "bz2" else "gzip"
        magic = b"BZh" if self.kind == "bz2" else b"\x1f\x8b"
        while data:
            if self._trailing_zeros:
                if data.strip(b"\0"):
                    raise _Corrupt("trailing garbage after the zero padding of the gzip stream")
                return
            if self._dec.eof:
                # Something follows a complete stream: a concatenated stream/member
                # (as written by pbzip2 or `cat a.gz b.gz`), gzip zero padding, or garbage.
                if self.kind == "gz" and not data.strip(b"\0"):
                    self._trailing_zeros = True
                    return
                if data[: len(magic)] != magic[: len(data)]:
                    raise _Corrupt(f"trailing garbage after the end of the {fmt} stream")
                self._dec = self._new_decompressor()
            try:
                self._content(self._dec.decompress(data, _DECOMP_STEP))
                if self.kind == "bz2":
                    while not self._dec.eof and not self._dec.needs_input:
                        self._content(self._dec.decompress(b"", _DECOMP_STEP))
                else:
                    while self._dec.unconsumed_tail and not self._dec.eof:
                        self._content(self._dec.decompress(self._dec.unconsumed_tail, _DECOMP_STEP))
            except (OSError, EOFError, ValueError, zlib.error) as exc:
                raise _Corrupt(f"invalid {fmt} data: {exc}") from None
            data = self._dec.unused_data if self._dec.eof else b""

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if len(self._raw_head) < 16:
            self._raw_head += data[: 16 - len(self._raw_head)]
        self._raw_tail = (self._raw_tail + data)[-2:]
        self._nraw += len(data)
        if self.kind in ("bz2", "gz"):
            self._decompress(data)
        elif self.kind == "raw":
            self._content(data)
        elif self.kind == "jpg" and len(self._raw_head) >= 2 and self._raw_head[:2] != b"\xff\xd8":
            raise _Corrupt("not a JPEG file (does not start with FF D8)")

    def finish(self) -> None:
        if self._nraw == 0:
            raise _Corrupt("file is empty")
        if self.kind in ("bz2", "gz"):
            fmt = "bzip2" if self.kind == "bz2" else "gzip"
            if not self._trailing_zeros:
                if not self._dec.eof:
                    raise _Corrupt(f"{fmt} stream is truncated (no end-of-stream marker)")
            if self._nout == 0:
                raise _Corrupt(f"{fmt} stream decompresses to nothing")
        if self.kind == "jpg":
            if self._raw_head[:2] != b"\xff\xd8":
                raise _Corrupt("not a JPEG file (does not start with FF D8)")
            if self._raw_tail != b"\xff\xd9":
                raise _Corrupt("JPEG file is truncated (does not end with FF D9)")
        if not self._head_done:
            _check_fits_header(self._head, complete=True)


def _validate_path(path: Path, name: str) -> None:
    """Validate a whole local file (streaming); raise :class:`_Corrupt`."""
    v = _Validator(name)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            v.feed(chunk)
    v.finish()
    if name.lower().endswith((".fits", ".fit")):
        from astropy.io import fits

        try:
            fits.Header.fromfile(str(path))
        except Exception as exc:  # noqa: BLE001
            raise _Corrupt(f"astropy cannot parse the FITS header: {exc}") from None


# ------------------------------------------------------------------------- helpers
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def _normalise_base_url(url) -> str:
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"base_url must be a non-empty URL or directory path, got {url!r}")
    url = url.strip()
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        if not parsed.netloc:
            raise ValueError(f"base_url {url!r} has no host")
        return url.rstrip("/") + "/"
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(
                f"file:// base_url must be absolute (file:///path/to/mirror), got {url!r}"
            )
        local = Path(urllib.request.url2pathname(parsed.path))
        if not local.is_absolute():
            raise ValueError(f"file:// base_url must name an absolute path, got {url!r}")
        return local.as_uri().rstrip("/") + "/"
    if scheme and not _WINDOWS_DRIVE.match(url) and "://" in url:
        raise ValueError(
            f"unsupported base_url scheme {parsed.scheme!r} in {url!r}; "
            "use http://, https://, file:// or a local directory path"
        )
    local = Path(url).expanduser().resolve()
    return local.as_uri().rstrip("/") + "/"


def _check_relpath(relpath) -> str:
    if isinstance(relpath, os.PathLike):
        relpath = os.fspath(relpath)
    if not isinstance(relpath, str) or not relpath.strip("/ "):
        raise ValueError(f"relpath must be a non-empty relative path string, got {relpath!r}")
    rel = relpath.replace("\\", "/").lstrip("/")
    parts = PurePosixPath(rel).parts
    if any(p in ("..", ".") for p in parts) or _WINDOWS_DRIVE.match(rel) or ":" in parts[0]:
        raise ValueError(f"relpath must stay inside the archive (no '..'), got {relpath!r}")
    return "/".join(parts)


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min(when.timestamp() - time.time(), _MAX_RETRY_AFTER))


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE, "").strip()
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("stargal"))


# ------------------------------------------------------------------ one cache, one source
_WARNED: set = set()
_WARNED_LOCK = threading.Lock()


def source_key(base_url) -> str:
    """Folder name of a source's files inside another source's cache: readable URL + hash.

    Examples
    --------
    >>> source_key("http://127.0.0.1:8000/")
    'http_127.0.0.1_8000-628be10f84'
    """
    url = _normalise_base_url(base_url)
    readable = re.sub(r"[^A-Za-z0-9.]+", "_", url).strip("_")
    if len(readable) > 48:
        readable = readable[:20] + "_" + readable[-27:]
    return f"{readable}-{hashlib.sha256(url.encode()).hexdigest()[:10]}"


def cache_source(directory) -> str | None:
    """The base URL a cache directory records as the source of its files (None: no record)."""
    try:
        with open(Path(directory) / CACHE_MANIFEST, encoding="utf-8") as fh:
            value = json.load(fh).get("sas_url")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _claim(directory: Path, base_url: str) -> str | None:
    """Record ``base_url`` as the source of ``directory`` unless one is recorded already.

    The manifest is created atomically and exclusively (a complete temporary file hard-linked to
    its name), so two processes claiming at once agree on one source. Returns the source recorded
    now, or None when nothing can be written there (a read-only cache is used as it is).
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{CACHE_MANIFEST}.", suffix=".part", dir=directory)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"sas_url": base_url, "note": "stargal cache: files here came from this source"}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # like a plainly created file, as stargal._io does
        try:
            os.link(tmp, directory / CACHE_MANIFEST)
        except FileExistsError:
            pass
        except OSError:  # no hard links here: the rename is atomic, the check before it is not
            if not (directory / CACHE_MANIFEST).exists():
                os.replace(tmp, directory / CACHE_MANIFEST)
    except OSError:
        return None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return cache_source(directory)


def _warn_once(key, message) -> None:
    with _WARNED_LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    import warnings

    warnings.warn(message, CacheSourceWarning, stacklevel=4)
    logger.warning("%s", message)


def _source_cache_dir(root: Path, base_url: str) -> Path:
    """The directory of ``root`` holding ``base_url``'s files (``root`` itself, or a folder of it)."""
    recorded = cache_source(root)
    if recorded is None:
        try:
            legacy = root.is_dir() and any(p.name not in (CACHE_MANIFEST, SOURCES_DIR)
                                           and not p.name.startswith(f".{CACHE_MANIFEST}.")
                                           for p in root.iterdir())
        except OSError:
            legacy = False
        recorded = _claim(root, base_url)
        if recorded is None:
            return root
        if recorded == base_url and legacy:
            _warn_once((str(root), None, base_url),
                       f"cache {root} has no record of the source of its files (written before stargal "
                       f"0.2.0); recording {base_url} as their source. If they came from another "
                       f"source, delete the cache (make clean-cache) so that it is filled again")
    if recorded == base_url:
        return root
    sub = root / SOURCES_DIR / source_key(base_url)
    _warn_once((str(root), recorded, base_url),
               f"cache {root} holds files from {recorded}, not from the configured source {base_url}; "
               f"keeping the two apart: files from {base_url} go to {sub}")
    other = cache_source(sub) or _claim(sub, base_url)
    if other not in (None, base_url):
        raise FetchError(f"cache folder {sub} records the source {other}, not {base_url}; remove it")
    return sub


# ------------------------------------------------------------------------- Fetcher
class Fetcher:
    """Fetch SAS files into a local cache, atomically, validated and with retries.

    Parameters
    ----------
    base_url : str or path-like, optional
        ``http(s)://`` or ``file://`` URL of a SAS (or mirror) root, or a
        local directory path. Default: env ``STARGAL_SAS_URL``, else
        ``https://data.sdss.org/sas/``.
    cache_dir : str or path-like, optional
        Cache root. Default: env ``STARGAL_CACHE``, else
        ``platformdirs.user_cache_dir("stargal")``. Created, with its source manifest,
        when the fetcher first needs it; files land at ``self.cache_dir / relpath``.
    retries : int, default=3
        Retries after the first attempt for transient failures (so at most
        ``retries + 1`` attempts).
    backoff : float, default=0.5
        Base of the exponential backoff in seconds: waits ``backoff * 2**k``.
    timeout : float, default=60.0
        Socket timeout in seconds (connect and each read).
    quiet : bool, default=False
        Disable the progress bar of :meth:`fetch_many`.

    Attributes
    ----------
    base_url : str
        Normalised base URL, with a trailing slash (``file://`` for local paths).
    cache_root : pathlib.Path
        The configured cache directory, absolute.
    cache_dir : pathlib.Path
        Where this source's files go: ``cache_root`` when it records this source (or
        nothing yet), else ``cache_root / 'sources' / source_key(base_url)`` (see *One
        cache, one source* in :mod:`stargal.fetch`). Resolved on first use.

    Examples
    --------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> f = Fetcher("file:///data/sdss", cache_dir=root)
    >>> f.base_url, f.cache_dir == f.cache_root, cache_source(root)
    ('file:///data/sdss/', True, 'file:///data/sdss/')
    >>> f.cached_path("dr17/a/b.fits.bz2").relative_to(root).as_posix()
    'dr17/a/b.fits.bz2'
    >>> import warnings
    >>> with warnings.catch_warnings(record=True):
    ...     other = Fetcher("http://127.0.0.1:8000/", cache_dir=root).cache_dir   # another source
    >>> other.relative_to(root).as_posix()
    'sources/http_127.0.0.1_8000-628be10f84'
    """

    def __init__(
        self, base_url=None, cache_dir=None, retries=3, backoff=0.5, timeout=60.0, quiet=False
    ):
        if base_url is None:
            base_url = os.environ.get(ENV_SAS_URL, "").strip() or DEFAULT_SAS_URL
        self.base_url = _normalise_base_url(base_url)
        if cache_dir is None:
            cache_dir = _default_cache_dir()
        self.cache_root = Path(os.fspath(cache_dir)).expanduser().absolute()
        self._cache_dir = None
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
        for name, value, positive in (("backoff", backoff, False), ("timeout", timeout, True)):
            number = not isinstance(value, bool) and isinstance(value, (int, float))
            if not number or value < 0 or (positive and value == 0):
                kind = "positive" if positive else "non-negative"
                raise ValueError(f"{name} must be a {kind} number of seconds, got {value!r}")
        self.retries = retries
        self.backoff = float(backoff)
        self.timeout = float(timeout)
        self.quiet = bool(quiet)

    def __repr__(self) -> str:
        return f"Fetcher(base_url={self.base_url!r}, cache_dir={str(self.cache_root)!r})"

    @property
    def cache_dir(self) -> Path:
        """Where this source's files go (resolved, and the cache's manifest written, on first use)."""
        if self._cache_dir is None:
            self._cache_dir = _source_cache_dir(self.cache_root, self.base_url)
        return self._cache_dir

    # -- paths
    def url(self, relpath) -> str:
        """Full source URL of ``relpath`` (percent-quoted)."""
        rel = _check_relpath(relpath)
        return self.base_url + urllib.parse.quote(rel, safe="/")

    def cached_path(self, relpath) -> Path:
        """Path of ``relpath`` in the cache (whether or not it exists yet)."""
        return self.cache_dir.joinpath(*_check_relpath(relpath).split("/"))

    def is_cached(self, relpath) -> bool:
        """True when ``relpath`` is in the cache.

        Only an existence check: files are validated *before* they are
        atomically renamed to their final name, so an existing file is a
        complete, validated one (no sidecar markers are kept).
        """
        return self.cached_path(relpath).is_file()

    # -- fetching
    def fetch(self, relpath, force=False) -> Path:
        """Return the cached path of ``relpath``, downloading it first if needed.

        Parameters
        ----------
        relpath : str
            Path relative to the base URL, e.g. ``stargal.sdss.frame_path(fid, "r")``.
        force : bool, default=False
            Download again even when the file is cached (replaced atomically).

        Returns
        -------
        pathlib.Path
            ``cache_dir / relpath``.

        Raises
        ------
        NotFoundError
            The source has no such file (404); nothing is written.
        CorruptFileError
            The file failed validation twice; nothing is written.
        FetchError
            Any other failure after the retries; nothing is written.
        """
        rel = _check_relpath(relpath)
        target = self.cached_path(rel)
        if not force and target.is_file():
            return target
        url = self.url(rel)
        corrupt_left = min(1, self.retries)
        attempt = 0
        while True:
            try:
                self._download(url, target)
                logger.info("fetched %s -> %s", url, target)
                return target
            except _Transient as exc:
                if attempt >= self.retries:
                    raise FetchError(
                        f"could not fetch {url} after {attempt + 1} attempt(s): {exc.reason}"
                    ) from None
                delay = self.backoff * 2**attempt
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                logger.warning("fetch %s failed (%s); retrying in %.2f s", url, exc.reason, delay)
            except _Corrupt as exc:
                if corrupt_left <= 0 or attempt >= self.retries:
                    raise CorruptFileError(
                        f"downloaded file {url} is corrupt ({exc}); nothing was cached. The file at "
                        f"the source is damaged: check or repair it (or point STARGAL_SAS_URL / --sas-url at "
                        f"another mirror) and try again") from None
                corrupt_left -= 1
                delay = self.backoff * 2**attempt
                logger.warning("fetched %s is corrupt (%s); retrying in %.2f s", url, exc, delay)
            attempt += 1
            time.sleep(delay)

    def read(self, relpath, reader, *, passthrough=()):
        """Fetch ``relpath`` if needed and return ``reader(path)``, healing a bad cached copy.

        Every cached file was validated when it was downloaded, but a cache can still go
        bad later (a truncated copy, a disk error, a file written by another tool, or a
        defect the streaming check cannot see, such as FITS data cut short inside a
        complete compressed stream). When ``reader`` fails on the cached copy, the file is
        named in a :class:`CacheHealWarning`, removed, fetched again once
        (``force=True``) and read again. If that copy fails too,
        :class:`CorruptFileError` names the file, its URL and what to do.

        Parameters
        ----------
        relpath : str
            Relative SAS path.
        reader : callable
            ``reader(path) -> value``; any exception it raises (other than those in
            ``passthrough``, ``KeyboardInterrupt`` and ``SystemExit``) means "cannot read".
        passthrough : tuple of exception types
            Exceptions that say something other than "this copy is damaged" (e.g. a valid
            file of the wrong kind): re-raised at once, nothing is removed.

        Returns
        -------
        object
            What ``reader`` returned.

        Raises
        ------
        NotFoundError, FetchError
            As :meth:`fetch`.
        CorruptFileError
            The file cannot be read even after fetching it again.

        Examples
        --------
        >>> from astropy.io import fits
        >>> header = fetcher.read(rel, lambda p: fits.getheader(p))        # doctest: +SKIP
        """
        rel = _check_relpath(relpath)
        path = self.fetch(rel)
        try:
            return reader(path)
        except passthrough:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to read is a damaged copy
            first = exc
        import warnings

        url = self.url(rel)
        warnings.warn(f"cached file {path} cannot be read ({type(first).__name__}: {first}); "
                      f"removing it and fetching it again from {url}", CacheHealWarning, stacklevel=2)
        logger.warning("cached file %s cannot be read (%s); fetching it again", path, first)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise FetchError(f"cannot remove the damaged cached file {path}: {exc}") from exc
        try:
            path = self.fetch(rel, force=True)
        except CorruptFileError as exc:
            raise CorruptFileError(
                f"{rel}: the cached copy at {path} could not be read ({first}) and the copy fetched again "
                f"from {url} is corrupt too ({exc}); the file at the source is damaged: check or repair "
                f"{url} (or point STARGAL_SAS_URL / --sas-url at another mirror) and try again") from None
        try:
            return reader(path)
        except passthrough:
            raise
        except Exception as exc:  # noqa: BLE001
            try:
                path.unlink()  # never leave a copy known to be unreadable in the cache
            except OSError:
                pass
            raise CorruptFileError(
                f"{rel}: cannot read the file fetched from {url}, even after removing the cached copy and "
                f"fetching it again ({type(exc).__name__}: {exc}); the file at the source is damaged: "
                f"check or repair {url} (or point STARGAL_SAS_URL / --sas-url at another mirror) and "
                f"try again") from None

    def fetch_many(self, relpaths, desc=None) -> list[Path]:
        """Fetch several files in order, with a progress bar over files.

        The bar (tqdm, on stderr) is disabled when ``quiet=True`` or when every
        file is already cached. Stops at the first failure (files fetched before
        it stay cached).

        Returns
        -------
        list of pathlib.Path
            Cached paths, in the order of ``relpaths``.
        """
        if isinstance(relpaths, (str, os.PathLike)):
            raise TypeError("fetch_many expects a list of relative paths; use fetch() for one")
        rels = [_check_relpath(r) for r in relpaths]
        todo = [r for r in dict.fromkeys(rels) if not self.is_cached(r)]
        from tqdm.auto import tqdm

        with tqdm(
            total=len(todo), desc=desc or "stargal fetch", unit="file",
            disable=self.quiet or not todo, leave=False,
        ) as bar:
            for rel in todo:
                bar.set_postfix_str(rel.rsplit("/", 1)[-1], refresh=False)
                self.fetch(rel)
                bar.update(1)
        return [self.cached_path(r) for r in rels]

    # -- internals
    def _download(self, url: str, target: Path) -> None:
        """One attempt: stream to a temp file beside ``target``, validate, rename."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.part-")
        except OSError as exc:
            raise FetchError(f"cannot write to the cache at {target.parent}: {exc}") from exc
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                validator = _Validator(target.name)
                self._stream(url, out, validator)
                validator.finish()
                out.flush()
                os.fsync(out.fileno())
            if target.name.lower().endswith((".fits", ".fit")):
                _validate_path(tmp, target.name)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; a plainly created file, as in stargal._io
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except BaseException:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            raise

    def _bar(self, url: str, expected):
        """A byte progress bar for one large download (``contextlib.nullcontext`` when quiet/small)."""
        import contextlib

        if self.quiet or expected is None or expected < _BAR_MIN_BYTES:
            return contextlib.nullcontext()
        from tqdm.auto import tqdm

        return tqdm(total=expected, unit="B", unit_scale=True, leave=False, desc=url.rsplit("/", 1)[-1])

    def _stream(self, url: str, out, validator: _Validator) -> None:
        if url.startswith("file:"):
            self._stream_file(url, out, validator)
        else:
            self._stream_http(url, out, validator)

    @staticmethod
    def _copy(read, out, validator, url, expected, bar=None):
        n = 0
        while True:
            try:
                chunk = read(_CHUNK)
            except (http.client.HTTPException, OSError) as exc:  # dropped, reset, timeout
                why = f"{type(exc).__name__} while reading after {n} bytes: {exc}"
                raise _Transient(why) from None
            if not chunk:
                break
            n += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
            try:
                out.write(chunk)
            except OSError as exc:
                raise FetchError(f"cannot write {url} to the cache: {exc}") from exc
            validator.feed(chunk)
        if expected is not None and n != expected:
            raise _Transient(f"connection closed after {n} of {expected} bytes (Content-Length)")
        return n

    def _stream_http(self, url: str, out, validator: _Validator) -> None:
        headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
        req = urllib.request.Request(url, headers=headers)
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            code = exc.code
            exc.close()
            if code == 404 or code == 410:
                raise NotFoundError(f"not found (HTTP {code}): {url}") from None
            if code == 429 or 500 <= code < 600:
                raise _Transient(f"HTTP {code} {exc.reason}", _retry_after(exc.headers)) from None
            raise FetchError(f"HTTP {code} {exc.reason} for {url}") from None
        except urllib.error.URLError as exc:
            raise _Transient(f"cannot connect: {exc.reason}") from None
        except (http.client.HTTPException, OSError) as exc:  # timeout, reset during headers
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        with resp:
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.strip().isdigit() else None
            encoding = (resp.headers.get("Content-Encoding") or "identity").strip().lower()
            if encoding not in ("identity", ""):
                raise FetchError(f"unsupported Content-Encoding {encoding!r} for {url}")
            with self._bar(url, expected) as bar:
                self._copy(resp.read, out, validator, url, expected, bar)

    def _stream_file(self, url: str, out, validator: _Validator) -> None:
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
        try:
            src = open(path, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"not found: {url}") from None
        except (IsADirectoryError, PermissionError, NotADirectoryError) as exc:
            raise FetchError(f"cannot read {url}: {exc}") from None
        except OSError as exc:
            raise _Transient(f"cannot open {path}: {exc}") from None
        with src:
            expected = os.fstat(src.fileno()).st_size
            with self._bar(url, expected) as bar:
                self._copy(src.read, out, validator, url, expected, bar)


_UMASK = UMASK  # read once, in stargal._io


# --------------------------------------------------------------------- functions
def get_fetcher(fetcher=None, *, sas_url=None, cache_dir=None, quiet=True) -> Fetcher:
    """Return ``fetcher`` or build a :class:`Fetcher` from estimator parameters.

    Estimators carry ``sas_url``/``cache_dir`` string parameters (``None`` =
    environment/defaults) and call this inside ``fit``/``transform``. When
    ``fetcher`` is given it is returned unchanged and the other arguments are
    ignored.

    Examples
    --------
    >>> f = get_fetcher(sas_url="file:///data/sdss", cache_dir="/tmp/c")
    >>> get_fetcher(f) is f
    True
    """
    if fetcher is not None:
        if not isinstance(fetcher, Fetcher):
            raise TypeError(
                f"fetcher must be a stargal.fetch.Fetcher or None, got {type(fetcher).__name__}"
            )
        return fetcher
    return Fetcher(base_url=sas_url, cache_dir=cache_dir, quiet=quiet)


def fetch_field(fid, fetcher=None, bands=BANDS, catalogs=True, preview=False) -> dict[str, Path]:
    """Fetch the files of one SDSS field into the cache.

    Parameters
    ----------
    fid : FieldID or str
        Field, e.g. ``"8162-6-80"``.
    fetcher : Fetcher, optional
        Default: ``get_fetcher()`` (environment/defaults, quiet).
    bands : sequence of str, default=BANDS
        Frames to fetch.
    catalogs : bool, default=True
        Also fetch the run+camcol ``calibObj`` star and galaxy sweeps.
    preview : bool, default=False
        Also fetch the ``irg`` JPEG preview.

    Returns
    -------
    dict of str to pathlib.Path
        Relative SAS path -> cached path, in :func:`stargal.sdss.field_paths` order.

    Examples
    --------
    >>> paths = fetch_field("8162-6-80", Fetcher("/data/sdss"), bands=("r",))  # doctest: +SKIP
    """
    fetcher = get_fetcher(fetcher)
    fid = FieldID.parse(fid)
    rels = field_paths(fid, bands=bands, catalogs=catalogs, preview=preview)
    paths = fetcher.fetch_many(rels, desc=f"field {fid}")
    return dict(zip(rels, paths))
