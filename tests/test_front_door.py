"""The front door: ``from stargal import ...`` has what the README uses, and the README's
fit -> save -> load -> predict block runs as written (on the mirror)."""

import re
import zipfile
from pathlib import Path

import pytest

import stargal

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDED = ["build_pipeline", "fit_pipeline", "study_table", "labels_to_y", "calibrate_pipeline", "field_psf",
          "predict_csv", "predict_coordinates", "save_model", "load_model", "load_window_index",
          "parse_coordinates", "read_coordinates", "Aligner", "Cutter", "make_cnn_pipeline"]


def _readme_block() -> str:
    match = re.search(r"<!-- readme-test: fit-save-load-predict -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert match, "the README's fit-save-load-predict block (marked readme-test) is missing"
    return match.group(1)


def test_all_is_the_table_and_every_name_resolves():
    assert stargal.__all__ == list(stargal._WHERE)
    assert not set(NEEDED) - set(stargal.__all__)
    for name in stargal.__all__:
        obj = getattr(stargal, name)
        assert getattr(obj, "__name__", name) == name and obj.__module__ == f"stargal.{stargal._WHERE[name]}"
    assert set(stargal.__all__) <= set(dir(stargal))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        stargal.nope  # noqa: B018


def test_every_name_the_readme_imports_from_stargal_is_exported():
    text = README.read_text()
    names = set()
    for group in re.findall(r"^from stargal import ([^\n#]+)", text, re.M):
        names |= {n.strip() for n in group.split(",")}
    assert names and not names - set(stargal.__all__)


def test_the_readme_block_is_short_and_the_package_docstring_shows_it():
    block = _readme_block()
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) <= 6
    doc = [line.strip() for line in stargal.__doc__.splitlines()]
    assert all(line.split("#")[0].strip() in " ".join(doc) for line in lines)


@pytest.mark.integration
def test_the_readme_block_runs(mirror_url, mirror_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("STARGAL_SAS_URL", mirror_url)
    monkeypatch.setenv("STARGAL_CACHE", str(mirror_cache))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(_readme_block(), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    out = namespace["out"]
    assert out[["ra", "dec"]].values.tolist() == [["22:06:48.0", "+26:57:00"]]
    assert out["flag"].tolist() == [""] and out["field"].tolist() == ["8162-6-80"]
    assert 0 <= out["p_galaxy"].iloc[0] <= 1 and abs(out["ra_deg"].iloc[0] - 331.7) < 1e-9
    with zipfile.ZipFile(tmp_path / "forest.stargal") as z:
        saved = b"".join(z.read(n) for n in z.namelist())
    assert str(mirror_cache).encode() not in saved and b"shared/sdss" not in saved
