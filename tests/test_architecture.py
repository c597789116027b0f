"""The import graph of the repository: data flows one way, and private names stay private.

Parses every ``*.py`` of ``stargal/``, ``experiments/`` and ``benchmarks/`` with :mod:`ast`
(imports at module level *and* inside functions) and checks that

* imports between the trees go one way: ``benchmarks -> experiments -> stargal``
  (:data:`TREES`, earliest first: a tree imports only itself and earlier trees);
* there is no import circle anywhere in these trees (module to module, function-level imports
  included);
* within ``stargal/``, no module imports a module of a later pipeline step (:data:`LAYERS`,
  earliest first; modules of one layer may import each other), and every module is placed in a
  layer (a new module must be placed deliberately);
* no module of ``stargal`` imports another module's private (underscore) name or private
  module, except from its shared private helpers (:data:`SHARED_PRIVATE`), and no module imports
  a private name of another tree (within ``experiments/`` or ``benchmarks/`` the study's modules
  may share helpers; :data:`KNOWN_PRIVATE` lists the exceptions still to be removed);
* the layer table of ``docs/ARCHITECTURE.md`` is :data:`LAYERS`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stargal"

#: The trees of the repository in import order: each may import itself and the trees before it.
TREES = ("stargal", "experiments", "benchmarks")

#: The pipeline order of the ``stargal`` modules, earliest step first.
LAYERS: list[set[str]] = [
    {"sdss", "_io", "_validation", "_cutout_kernels", "_photo_kernels", "_augment_kernels", "_imaging",
     "_transforms", "_threads"},                                     # foundations
    {"fetch"},                                                       # data source
    {"window", "frames", "noise", "catalogs", "config", "split"},    # where things are; the study
    {"registration", "align"},                                       # per-band positions
    {"psf_model"},                                                   # PSF model classes
    {"psf_stars", "psfield"},                                        # PSF from stars, from psField
    {"psf"},                                                         # a field's PSF, cached
    {"cutouts"},                                                     # cutouts
    {"photo"},                                                       # model-fit photometry (SDSS's measurement)
    {"augment", "psf_channels", "scale", "features", "synth", "inject"},  # cutout -> model input
    {"cnn", "nets", "classifier", "pipelines", "models", "rule"},    # estimators
    {"calibration", "tuning", "metrics"},                            # fitting and scoring
    {"training", "persist", "predict", "explain", "cli"},            # workflows
]
#: Private modules of ``stargal`` whose underscore names the other modules may use.
SHARED_PRIVATE = {"_imaging", "_io", "_validation", "_cutout_kernels", "_photo_kernels", "_augment_kernels",
                  "_transforms", "_threads"}
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
#: Private imports across trees still to be removed: (module, imported name) -> why still here.
KNOWN_PRIVATE: dict[tuple[str, str], str] = {}


# ----------------------------------------------------------------------------- the graph
def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of :data:`TREES` under ``root``."""
    out = {}
    for tree in TREES:
        for path in sorted((root / tree).rglob("*.py")):
            out[_module_name(path, root)] = path
    return out


def _resolve(name: str, known) -> str | None:
    """The known module ``name`` refers to (``pkg.mod.attr`` -> ``pkg.mod``); None if external."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _edges(module: str, path: Path, known):
    """``(line, target module, imported names)`` for every import of ``module`` inside the trees."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, known)
                if target is not None:
                    yield node.lineno, target, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                if sub in known:  # from package import module
                    yield node.lineno, sub, []
                    continue
                target = _resolve(mod, known)
                if target is not None:
                    yield node.lineno, target, [alias.name]


def _graph(root: Path = ROOT):
    known = _sources(root)
    return {m: list(_edges(m, p, known)) for m, p in known.items()}


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for _, w, _ in graph[v]:
            if w == v:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


GRAPH = _graph()


def _stargal_modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _short(module: str) -> str:
    """``stargal.psf`` -> ``psf`` (the names of :data:`LAYERS`)."""
    return module.split(".", 1)[1] if module.startswith("stargal.") else module


# ----------------------------------------------------------------------------- the checks
def test_every_module_has_a_layer():
    missing = [m for m in _stargal_modules() if m not in LAYER]
    assert not missing, f"place these modules in LAYERS: {missing}"
    stale = sorted(set(LAYER) - set(_stargal_modules()))
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


@pytest.mark.parametrize("name", _stargal_modules())
def test_no_module_imports_a_later_step(name):
    later = [f"line {line}: {_short(mod)} (layer {LAYER[_short(mod)]} > {LAYER[name]})"
             for line, mod, _ in GRAPH[f"stargal.{name}"]
             if _short(mod) in LAYER and LAYER[_short(mod)] > LAYER[name]]
    assert not later, f"stargal.{name} imports a later pipeline step: {later}"


def _private_imports(module: str, graph) -> list[str]:
    bad = []
    for line, target, names in graph[module]:
        if not module.startswith("stargal.") and target.split(".")[0] == module.split(".")[0]:
            continue  # the study's (or the benchmarks') own modules may share private helpers
        shared = target.startswith("stargal.") and _short(target) in SHARED_PRIVATE
        last = target.rpartition(".")[2]
        if last.startswith("_") and not last.startswith("__") and not shared and target != module:
            bad.append(f"line {line}: module {target}")
        if not shared and target != module:
            bad += [f"line {line}: {target}.{n}" for n in names
                    if n.startswith("_") and not n.startswith("__")
                    and (module, f"{target}.{n}") not in KNOWN_PRIVATE]
    return bad


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_a_private_name(module):
    bad = _private_imports(module, GRAPH)
    assert not bad, f"{module} imports private names of other modules: {bad}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_one_way_between_trees(module):
    mine = TREES.index(module.split(".")[0])
    later = [f"line {line}: {target}" for line, target, _ in GRAPH[module]
             if TREES.index(target.split(".")[0]) > mine]
    assert not later, (f"{module} imports a later tree ({' -> '.join(reversed(TREES))} only): "
                       f"{later}")


def test_no_import_circle_anywhere():
    circles = _cycles(GRAPH)
    assert not circles, f"import circles: {circles}"


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """The parser sees function-level imports, relative and absolute ones, across trees."""
    for tree in TREES:
        (tmp_path / tree).mkdir()
        (tmp_path / tree / "__init__.py").write_text("")
    (tmp_path / "stargal" / "sdss.py").write_text("def f():\n    from .cutouts import Cutter\n")
    (tmp_path / "stargal" / "cutouts.py").write_text("import stargal.sdss\n")
    (tmp_path / "stargal" / "frames.py").write_text("from stargal.augment import _check_cutouts\n")
    (tmp_path / "stargal" / "augment.py").write_text("from experiments import backends\n")
    (tmp_path / "experiments" / "backends.py").write_text("from benchmarks.bench import x\n")
    (tmp_path / "benchmarks" / "bench.py").write_text("from experiments.backends import _t\n")
    graph = _graph(tmp_path)
    assert graph["stargal.sdss"] == [(2, "stargal.cutouts", ["Cutter"])]
    assert graph["stargal.frames"] == [(1, "stargal.augment", ["_check_cutouts"])]
    assert graph["stargal.augment"] == [(1, "experiments.backends", [])]
    assert _private_imports("stargal.frames", graph) == ["line 1: stargal.augment._check_cutouts"]
    assert _private_imports("benchmarks.bench", graph) == ["line 1: experiments.backends._t"]
    for (module, name), why in KNOWN_PRIVATE.items():  # an exception that is gone must be removed
        assert any(f"{t}.{n}" == name for _, t, names in GRAPH[module] for n in names), (name, why)
    assert _cycles(graph) == [["benchmarks.bench", "experiments.backends"],
                              ["stargal.cutouts", "stargal.sdss"]]
    monkeypatch.setitem(globals(), "GRAPH", graph)
    with pytest.raises(AssertionError, match="later pipeline step"):
        test_no_module_imports_a_later_step("sdss")
    with pytest.raises(AssertionError, match="private names"):
        test_no_module_imports_a_private_name("stargal.frames")
    with pytest.raises(AssertionError, match="later tree"):
        test_imports_go_one_way_between_trees("experiments.backends")
    with pytest.raises(AssertionError, match="later tree"):
        test_imports_go_one_way_between_trees("stargal.augment")
    with pytest.raises(AssertionError, match="import circles"):
        test_no_import_circle_anywhere()


# ----------------------------------------------------------------------------- the doc
def _doc_layers(text: str) -> list[set[str]]:
    """The ``| layer | modules |`` table of docs/ARCHITECTURE.md as a list of module sets."""
    rows = re.findall(r"^\| *(\d+) [^|]*\| *([^|]+?) *\|\s*$", text, flags=re.M)
    rows = sorted((int(n), {m.strip(" `") for m in mods.split(",")}) for n, mods in rows)
    assert [n for n, _ in rows] == list(range(len(rows))), "layer numbers must run 0, 1, 2, ..."
    return [mods for _, mods in rows]


def test_architecture_doc_lists_the_layers():
    doc = _doc_layers((ROOT / "docs" / "ARCHITECTURE.md").read_text())
    assert doc == LAYERS, "docs/ARCHITECTURE.md's layer table differs from LAYERS"


def test_doc_table_parser_can_fail():
    text = "| layer | modules |\n|---|---|\n| 0 base | `sdss`, `_io` |\n| 1 data | `fetch` |\n"
    assert _doc_layers(text) == [{"sdss", "_io"}, {"fetch"}]
    assert _doc_layers(text) != LAYERS
