"""File-system helpers shared by every module that writes a file (private)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "UMASK"]


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


def atomic_write_bytes(path: Path, write) -> Path:
    """Write ``path`` atomically: ``write(fh)`` into a temp file beside it, fsync, ``os.replace``.

    The temp file (``.<name>.<random>.part``) gets the permissions of a plainly created file
    (``0o666`` less the umask). On any error (or an interrupt) it is removed and ``path`` is left
    as it was, so a reader never sees a half-written file. Returns ``path``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a" / "b.txt"
    >>> atomic_write_bytes(target, lambda fh: fh.write(b"hello")).read_bytes()
    b'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
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
    return path


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    data = text.encode(encoding)
    return atomic_write_bytes(path, lambda fh: fh.write(data))
