"""File-system helpers shared by every module that writes a file (private).

* :func:`atomic_open` / :func:`atomic_write_bytes` / :func:`atomic_write_text`: the one atomic
  write (temp file beside the target with plain-file permissions, fsync, ``os.replace``; the
  temp file is removed on failure).
* :func:`cached_json`: a JSON file cache with a per-process memo (the per-field registration and
  PSF models), one behaviour for an unreadable cache file: warn, then rebuild.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "cached_json", "UMASK"]


def _read_umask() -> int:
    """The process umask, read without changing it where possible (Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # other platforms: read once, at import
    os.umask(mask)
    return mask


#: The process umask (read once, at import).
UMASK = _read_umask()


@contextmanager
def atomic_open(path, mode: str = "wb", encoding: str | None = None, newline: str | None = None):
    """Open a temp file beside ``path`` for writing; on a clean exit it replaces ``path``.

    The temp file (``.<name>.<random>.part``) gets the permissions of a plainly created file
    (``0o666`` less the umask); it is flushed and fsync-ed, then ``os.replace``-d onto ``path``.
    On any error (or an interrupt) inside the block it is removed and ``path`` is left as it was,
    so a reader never sees a half-written file. Parent directories are created.

    Parameters
    ----------
    path : str or Path
    mode : {'wb', 'w'}, default='wb'
    encoding, newline : str, optional
        Text mode only (as for :func:`open`).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a" / "b.txt"
    >>> with atomic_open(target, "w", encoding="utf-8") as fh:
    ...     _ = fh.write("hello")
    >>> target.read_text()
    'hello'
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: Path, write) -> Path:
    """Write ``path`` atomically: ``write(fh)`` into :func:`atomic_open`'s binary file.

    Returns ``path``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a" / "b.txt"
    >>> atomic_write_bytes(target, lambda fh: fh.write(b"hello")).read_bytes()
    b'hello'
    """
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        write(fh)
    return path


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    data = text.encode(encoding)
    return atomic_write_bytes(path, lambda fh: fh.write(data))


_MEMO_LOCK = threading.Lock()
#: What reading a cache file may raise when the file is unreadable or holds something else.
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, IndexError)


def cached_json(path, build, parse, *, memo: dict, refresh: bool = False, what: str = "cache",
                category=UserWarning, stacklevel: int = 3):
    """An object cached as a JSON file and memoised per process.

    1. Unless ``refresh``: the object memoised under ``str(path)`` in ``memo``, if any;
    2. else, when ``path`` exists, ``parse(json.loads(text))``. A file that cannot be read or
       parsed (``parse`` raises ``OSError``, ``ValueError``, ``KeyError``, ``TypeError`` or
       ``IndexError``, e.g. for another version or another field) is announced with a warning
       (``category``: ``"<what>: unreadable cache file <path> (<error>); rebuilding it"``) and
       rebuilt;
    3. else ``data = build()`` (a JSON-serialisable dict) is written atomically to ``path`` and
       the object is ``parse`` of exactly what the file holds (so that a process that built the
       object and one that read the file get identical objects). A file that cannot be written
       only costs a warning (``"<what>: could not write the cache file <path>: <error>"``).

    Parameters
    ----------
    path : str or Path
    build : callable
        ``build() -> dict``.
    parse : callable
        ``parse(dict) -> object``; raises one of the errors above on a dict it cannot use.
    memo : dict
        The caller's per-process memo (path string -> object).
    refresh : bool, default=False
        Build again even when memoised or cached.
    what : str
        Names the cached object in the warnings, e.g. ``"field 8162-6-80: PSF model"``.
    category : type of Warning, default=UserWarning
    stacklevel : int, default=3
        Of the warnings (3: the caller of the function that calls this one).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.json"
    >>> memo = {}
    >>> cached_json(path, lambda: {"a": 1}, lambda d: d["a"], memo=memo)
    1
    >>> memo.clear(); cached_json(path, lambda: {"a": 2}, lambda d: d["a"], memo=memo)  # the file
    1
    """
    path = Path(path)
    key = str(path)
    if not refresh:
        with _MEMO_LOCK:
            if key in memo:
                return memo[key]
        if path.exists():
            try:
                obj = parse(json.loads(path.read_text()))
                with _MEMO_LOCK:
                    memo[key] = obj
                return obj
            except _UNREADABLE as exc:
                warnings.warn(f"{what}: unreadable cache file {path} ({exc}); rebuilding it",
                              category, stacklevel=stacklevel)
    payload = json.dumps(build())
    obj = parse(json.loads(payload))  # exactly what the cache holds
    try:
        with atomic_open(path, "wb") as fh:
            fh.write(payload.encode())
    except OSError as exc:
        warnings.warn(f"{what}: could not write the cache file {path}: {exc}", category,
                      stacklevel=stacklevel)
    with _MEMO_LOCK:
        memo[key] = obj
    return obj
