"""What every stage of the study shares: the context, timing, and small writers.

A stage is a module with ``run(ctx) -> dict``; it writes its files into ``ctx.out_dir``
and returns the numbers the report quotes (JSON-serialisable). ``experiments/run.py``
runs the stages in order and writes ``report.md`` from what they return.
"""

from __future__ import annotations

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

__all__ = ["StudyContext", "stage_timer", "write_json", "write_csv", "fmt"]


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
        What earlier stages returned, by stage name (later stages may reuse fitted models
        through ``results[name]['_objects']``, which is never written to disk).
    """

    config: StudyConfig
    fetcher: Fetcher
    table: pd.DataFrame
    out_dir: Path
    quick: bool = False
    n_jobs: int = 2
    scheduler: str | None = None
    results: dict = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.config.seed

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
    """A DataFrame as a Markdown table (pandas ``to_markdown``; floats through :func:`fmt`)."""
    shown = frame.map(lambda v: fmt(v, digits) if isinstance(v, (float, np.floating)) else str(v))
    return shown.to_markdown(index=False, disable_numparse=True)


#: The local SAS mirror beside the project (``../shared/sdss``), used when ``STARGAL_SAS_URL`` is unset.
LOCAL_MIRROR = Path(__file__).resolve().parents[2] / "shared" / "sdss"


def use_local_mirror() -> str | None:
    """Like the Makefile: point ``STARGAL_SAS_URL`` at :data:`LOCAL_MIRROR` when it is unset and
    the mirror exists; returns the URL in effect (``None``: the library's default SAS)."""
    import os

    if not os.environ.get("STARGAL_SAS_URL", "").strip() and (LOCAL_MIRROR / "dr17").is_dir():
        os.environ["STARGAL_SAS_URL"] = LOCAL_MIRROR.as_uri()
    return os.environ.get("STARGAL_SAS_URL") or None
