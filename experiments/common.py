"""What every stage of the study shares: the context, the stage result, timing, and small writers.

A stage is a module with ``run(ctx) -> StageResult``. It writes its files into ``ctx.out_dir``
and returns a :class:`StageResult`: the numbers the report quotes (JSON-serialisable; written to
``<stage>_summary.json``), its report section (Markdown) and its artefacts (fitted models and other
in-memory objects that later stages use; never written to disk). A stage takes what it needs from
earlier stages through the context: :meth:`StudyContext.numbers`, :meth:`StudyContext.artefact` and
the study's choices :meth:`StudyContext.final_cnn` and :meth:`StudyContext.shipped_cnn`, never
through extra arguments. ``experiments/run.py`` runs the stages in order, records each result in the
context (:meth:`StudyContext.record`) and writes ``report.md`` from the template
``experiments/templates/report.md.j2`` (:func:`render_template`).

Tables of the report go through :func:`markdown_table` (pandas ``to_markdown``); the fixed prose of every
stage's section lives in its template ``experiments/templates/<stage>.md.j2`` (:func:`render_template`;
stage 1's parts are macros, :func:`render_macro`).
"""

from __future__ import annotations

import functools
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from stargal._io import atomic_write_text  # noqa: E402
from stargal.catalogs import labels_to_y  # noqa: E402
from stargal.config import StudyConfig  # noqa: E402
from stargal.fetch import Fetcher  # noqa: E402
from stargal.training import build_pipeline, evaluate_predictions, fit_pipeline  # noqa: E402

__all__ = ["StageResult", "StudyContext", "stage_timer", "write_json", "write_csv", "fmt", "markdown_table",
           "render_template", "render_macro", "TEMPLATES", "LOCAL_MIRROR", "use_local_mirror"]


@dataclass
class StageResult:
    """What a stage returns.

    Attributes
    ----------
    numbers : dict
        JSON-serialisable numbers the report quotes; written to ``<stage>_summary.json``
        (with the section, :meth:`summary`).
    markdown : str
        The stage's report section (without its ``##`` title).
    artefacts : dict
        Fitted models and other in-memory objects that later stages use (by name, unique across the
        study: :meth:`StudyContext.record` refuses a name published twice). Never written to disk.
    """

    numbers: dict = field(default_factory=dict)
    markdown: str = ""
    artefacts: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """What ``<stage>_summary.json`` holds: the numbers and the section's Markdown."""
        return {**self.numbers, "markdown": self.markdown}


@dataclass
class StudyContext:
    """Inputs shared by the stages.

    Attributes
    ----------
    config : StudyConfig
        The study (fields, seeds, CNN defaults, grids).
    fetcher : Fetcher
        Data source (mirror here, SAS elsewhere) and cache.
    table : pandas.DataFrame
        :func:`stargal.training.study_table`: labelled objects with ``group`` and ``split``
        (``train``/``valid``/``test``/``excluded``).
    out_dir : Path
        ``experiments/results`` (or another directory).
    quick : bool
        Few-minute mode: fewer epochs, grid points, seeds.
    n_jobs : int
        Workers for parallel stages.
    scheduler : str, optional
        Dask scheduler address for the Dask-backed runs (None: a LocalCluster is started).
    results : dict
        The :class:`StageResult` of every stage run so far, by stage name (:meth:`record`).
    artefacts : dict
        The artefacts of every stage run so far, by artefact name (:meth:`record`; read them with
        :meth:`artefact`). Names in use: ``tuned_params``, ``tuned_cnn`` (stage 3); ``final_cnn``,
        ``final_cnn_choice``, ``final_augmenter``, ``final_lofo`` (stage 4); ``baseline_models``,
        ``calibrated_models``, ``forest_params`` (stage 5).
    """

    config: StudyConfig
    fetcher: Fetcher
    table: pd.DataFrame
    out_dir: Path
    quick: bool = False
    n_jobs: int = 2
    scheduler: str | None = None
    results: dict = field(default_factory=dict)
    artefacts: dict = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.config.seed

    # ------------------------------------------------------------------ what earlier stages left
    def record(self, name: str, result: StageResult) -> None:
        """Keep a stage's result under ``name`` and add its artefacts to :attr:`artefacts`."""
        if not isinstance(result, StageResult):
            raise TypeError(f"stage {name!r} returned {type(result).__name__}, not a StageResult")
        clash = sorted(set(result.artefacts) & set(self.artefacts))
        if clash:
            raise ValueError(f"stage {name!r} publishes artefacts an earlier stage published: {clash}")
        self.results[name] = result
        self.artefacts.update(result.artefacts)

    def numbers(self, name: str) -> dict:
        """The numbers of stage ``name`` (``{}`` when it has not run)."""
        result = self.results.get(name)
        return result.numbers if result is not None else {}

    def artefact(self, name: str, default=None):
        """An artefact of an earlier stage (``default`` when no stage run so far published it)."""
        return self.artefacts.get(name, default)

    def final_cnn(self) -> tuple:
        """The study's final CNN, fitted on the train split and not calibrated, and how it was chosen.

        The augmentation stage's final recipe (chosen on held-out training fields), else the tuned CNN
        of stage 3, else the CNN the baselines stage fitted with the defaults; ``(None, 'tuned')``
        before any of them has run.

        Returns
        -------
        model : Pipeline or None
        choice : str
            For the report and the model file's metadata.
        """
        if "final_cnn" in self.artefacts:
            return self.artefacts["final_cnn"], self.artefacts["final_cnn_choice"]
        for fallback in (self.artefact("tuned_cnn"), self.artefact("baseline_models", {}).get("cnn")):
            if fallback is not None:
                return fallback, "tuned"
        return None, "tuned"

    def shipped_cnn(self):
        """The CNN the study ships (``cnn.stargal``): :meth:`final_cnn` calibrated on the validation
        groups by the baselines stage, or as it is when that stage has not run (None: no CNN yet)."""
        calibrated = self.artefact("calibrated_models", {}).get("cnn")
        return calibrated if calibrated is not None else self.final_cnn()[0]

    # ------------------------------------------------------------------ data and models

    def rows(self, *splits) -> pd.DataFrame:
        """Objects of the given splits (``'train'``, ``'valid'``, ``'test'``)."""
        return self.table[self.table["split"].isin(splits)]

    def y(self, rows: pd.DataFrame) -> np.ndarray:
        return labels_to_y(rows["label"])

    def epochs(self, full: int) -> int:
        """Epoch budget: ``full`` normally, a few in quick mode."""
        return max(3, full // 6) if self.quick else full

    def pipeline(self, kind="cnn", *, augmenter=None, params=None):
        """A fresh pipeline of the study (data read through ``self.fetcher``)."""
        return build_pipeline(kind, self.config, sas_url=self.fetcher.base_url,
                              cache_dir=str(self.fetcher.cache_dir), augmenter=augmenter, params=params)

    def fit(self, pipe, rows: pd.DataFrame):
        """Fit on labelled rows, sky groups routed to the CNN's early-stopping split."""
        return fit_pipeline(pipe, rows)

    def evaluate(self, pipe, rows: pd.DataFrame, by_magnitude=False):
        """``(metrics dict, per-magnitude table or None)`` of a fitted pipeline on rows."""
        proba = pipe.predict_proba(rows)[:, 1]
        mags = rows["psfmag_r"].to_numpy() if by_magnitude else None
        return evaluate_predictions(self.y(rows), proba, mags)

    def evaluate_splits(self, pipe, splits=("train", "valid", "test")) -> dict:
        """Metrics on each split: ``{'train': {...}, 'valid': {...}, 'test': {...}}``."""
        return {s: self.evaluate(pipe, self.rows(s))[0] for s in splits}


@contextmanager
def stage_timer(name: str, timings: dict):
    """Print the start and wall time of a stage; record seconds in ``timings[name]``."""
    print(f"\n=== {name} ===", flush=True)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - t0, 1)
        print(f"=== {name}: {timings[name]:.1f} s ===", flush=True)


def _atomic_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (:func:`stargal._io.atomic_write_text`)."""
    atomic_write_text(Path(path), text)


def _default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def write_json(path: Path, data) -> Path:
    """Write JSON atomically (keys starting with ``_`` are skipped at the top level)."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if not str(k).startswith("_")}
    _atomic_text(Path(path), json.dumps(data, indent=2, default=_default, allow_nan=True))
    return Path(path)


def write_csv(path: Path, frame: pd.DataFrame, index=False) -> Path:
    """Write a CSV atomically."""
    _atomic_text(Path(path), frame.to_csv(index=index))
    return Path(path)


def fmt(value, digits=3) -> str:
    """A number for the report (``nan`` -> ``–``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not np.isfinite(v):
        return "–"
    return f"{v:.{digits}f}"


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a Markdown table: the report's one table writer (pandas ``to_markdown``).

    Columns in the frame's order, headers as the column names; floats through :func:`fmt` with
    ``digits`` decimals, every other cell as ``str`` (format a column yourself, e.g. ``'0.12 (0.30)'``
    or ``'**best**'``, by giving it strings). Cells are not padded and the separator row has no
    alignment colons, so the table renders with the default alignment.

    Examples
    --------
    >>> print(markdown_table(pd.DataFrame({"model": ["rule", "CNN"], "MCC": [0.81234, float("nan")]})))
    | model | MCC |
    |---------|-------|
    | rule | 0.812 |
    | CNN | – |
    """
    shown = frame.map(lambda v: fmt(v, digits) if isinstance(v, (float, np.floating)) else str(v))
    return shown.to_markdown(index=False, disable_numparse=True, stralign=None)


#: The study's Jinja2 templates (``experiments/`` is not an installed package: found beside this file).
TEMPLATES = Path(__file__).resolve().parent / "templates"


@functools.lru_cache(maxsize=1)
def _template_environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, autoescape=False)


def render_template(name: str, **values) -> str:
    """Render the Markdown template ``experiments/templates/<name>`` with ``values``.

    Undefined names raise (``jinja2.StrictUndefined``); a block tag's own line break is dropped
    (``trim_blocks``, ``lstrip_blocks``), and so is the file's last newline (Jinja's default). Numbers
    are best formatted by the caller, the template holding the prose around them.
    """
    return _template_environment().get_template(name).render(**values)


def render_macro(name: str, macro: str, **values) -> str:
    """Call the macro ``macro`` of the template ``experiments/templates/<name>`` with ``values``.

    For a section assembled from parts that are also used on their own (stage 1's): each part is a
    macro of the stage's template, its text exactly what the macro body renders (same whitespace
    rules as :func:`render_template`, without the trailing-newline rule).
    """
    return str(getattr(_template_environment().get_template(name).module, macro)(**values))


#: The local SAS mirror beside the project (``../shared/sdss``), used when ``STARGAL_SAS_URL`` is unset.
LOCAL_MIRROR = Path(__file__).resolve().parents[2] / "shared" / "sdss"


def use_local_mirror() -> str | None:
    """Like the Makefile: point ``STARGAL_SAS_URL`` at :data:`LOCAL_MIRROR` when it is unset and
    the mirror exists; returns the URL in effect (``None``: the library's default SAS)."""
    import os

    if not os.environ.get("STARGAL_SAS_URL", "").strip() and (LOCAL_MIRROR / "dr17").is_dir():
        os.environ["STARGAL_SAS_URL"] = LOCAL_MIRROR.as_uri()
    return os.environ.get("STARGAL_SAS_URL") or None
