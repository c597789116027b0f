"""The package's import graph: data flows one way, and private names stay private.

Parses every ``stargal/*.py`` with :mod:`ast` (imports at module level *and* inside functions)
and checks that

* no module imports a module of a later pipeline step (:data:`LAYERS`, earliest first; modules
  of one layer may import each other);
* no module imports another module's private (underscore) name, except from the shared private
  helper modules (:data:`SHARED_PRIVATE`);
* every module of the package is placed in a layer (a new module must be placed deliberately).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stargal"

#: The pipeline order, earliest step first.
LAYERS: list[set[str]] = [
    {"sdss", "_io", "_validation", "_cutout_kernels", "_imaging", "_transforms"},  # identifiers, files, checks, images
    {"fetch"},                                                   # data source
    {"window", "frames", "catalogs", "config", "split"},         # where things are; the study
    {"registration", "align"},                                   # per-band positions
    {"psf_model"},                                               # PSF model classes
    {"psf_stars", "psfield"},                                    # PSF models from stars, psField
    {"psf"},                                                     # the PSF of a field (cached)
    {"cutouts"},                                                 # cutouts
    {"augment", "psf_channels", "scale", "features", "synth", "inject"},  # cutout -> model input (synthetic sources too)
    {"nets", "models"},                                          # estimators
    {"calibration", "tuning", "metrics"},                        # fitting and scoring
    {"training", "persist", "predict", "explain", "cli"},        # workflows
]
#: Private modules whose underscore names the other modules may use.
SHARED_PRIVATE = {"_imaging", "_io", "_validation", "_cutout_kernels", "_transforms"}
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _imports(name: str):
    """``(line, imported module, imported names)`` for every import of a stargal module."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text(), filename=f"{name}.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1:
                parts = mod.split(".") if mod else []
            elif node.level == 0 and (mod == "stargal" or mod.startswith("stargal.")):
                parts = mod.split(".")[1:]
            else:
                continue
            if parts:
                yield node.lineno, parts[0], [a.name for a in node.names]
            else:  # from . import x / from stargal import x
                for a in node.names:
                    yield node.lineno, a.name, []
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("stargal."):
                    yield node.lineno, a.name.split(".")[1], []


def test_every_module_has_a_layer():
    missing = [m for m in _modules() if m not in LAYER]
    assert not missing, f"place these modules in LAYERS: {missing}"
    stale = sorted(set(LAYER) - set(_modules()))
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


@pytest.mark.parametrize("name", _modules())
def test_no_module_imports_a_later_step(name):
    later = [f"line {line}: {mod} (layer {LAYER[mod]} > {LAYER[name]})"
             for line, mod, _ in _imports(name) if mod in LAYER and LAYER[mod] > LAYER[name]]
    assert not later, f"stargal.{name} imports a later pipeline step: {later}"


@pytest.mark.parametrize("name", _modules())
def test_no_module_imports_a_private_name(name):
    private = [f"line {line}: {mod}.{n}" for line, mod, names in _imports(name)
               if mod not in SHARED_PRIVATE for n in names if n.startswith("_")]
    private += [f"line {line}: module {mod}" for line, mod, _ in _imports(name)
                if mod.startswith("_") and mod not in SHARED_PRIVATE]
    assert not private, f"stargal.{name} imports private names of other modules: {private}"


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """The parser sees function-level imports, relative and absolute ones."""
    (tmp_path / "sdss.py").write_text("def f():\n    from .cutouts import Cutter\n")
    (tmp_path / "frames.py").write_text("from stargal.augment import _check_cutouts\n")
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path)
    assert list(_imports("sdss")) == [(2, "cutouts", ["Cutter"])]
    assert list(_imports("frames")) == [(1, "augment", ["_check_cutouts"])]
    with pytest.raises(AssertionError, match="later pipeline step"):
        test_no_module_imports_a_later_step("sdss")
    with pytest.raises(AssertionError, match="private names"):
        test_no_module_imports_a_private_name("frames")
