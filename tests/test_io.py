"""File helpers (stargal._io): the atomic write and the JSON cache with its per-process memo."""

import json
import os
import stat

import pytest

from stargal._io import UMASK, atomic_open, atomic_write_text, cached_json


def test_atomic_open_replaces_only_on_success(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w", encoding="utf-8") as fh:
            fh.write("half a fil")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old"  # untouched, and no temp file left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]
    with atomic_open(path, "wb") as fh:
        fh.write(b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~UMASK  # a plainly created file's mode
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(path, "a"):
            pass


def test_cached_json_memo_file_and_rebuild(tmp_path):
    path, memo, calls = tmp_path / "c.json", {}, []

    def build():
        calls.append(1)
        return {"version": 1, "value": 0.1 + 0.2}

    def parse(data):
        if data.get("version") != 1:
            raise ValueError(f"version {data.get('version')!r}")
        return data["value"]

    first = cached_json(path, build, parse, memo=memo, what="field X: thing")
    assert first == json.loads(json.dumps(0.1 + 0.2)) and len(calls) == 1
    assert cached_json(path, build, parse, memo=memo) == first and len(calls) == 1  # memo
    memo.clear()
    assert cached_json(path, build, parse, memo=memo) == first and len(calls) == 1  # the file
    for bad in (
        "{not json",
        json.dumps({"version": 2, "value": 5}),
    ):  # unreadable / another version
        path.write_text(bad)
        memo.clear()
        with pytest.warns(UserWarning, match="field X: thing: unreadable cache file"):
            assert cached_json(path, build, parse, memo=memo, what="field X: thing") == first
        assert json.loads(path.read_text())["version"] == 1  # rewritten
    assert len(calls) == 3
    assert cached_json(path, build, parse, memo=memo, refresh=True) == first and len(calls) == 4
