"""Classify a list of sky coordinates with a fitted stargal pipeline.

A fitted pipeline starts with an ``'align'`` step (:class:`~stargal.align.Aligner`)
followed by ``'cut'`` and the model. Scikit-learn's ``predict`` must return one
answer per row, so objects that cannot be classified would have to crash it;
:func:`predict_coordinates` is the forgiving entry point instead:

1. validate and align every coordinate with the pipeline's aligner in ``policy='flag'``
   mode (objects outside every available field, too close to an edge, on a field
   with a missing band, or with NaN/out-of-range coordinates get a ``flag``);
2. group the good rows by field and run the rest of the pipeline field by field,
   so at most one field's frames are open per worker (bounded memory); fields can be
   spread over joblib workers (``n_jobs``) or a Dask cluster (``scheduler``);
3. return one row per input row, in input order: ``ra, dec, field, p_galaxy, label,
   flag``; flagged rows have ``p_galaxy = NaN`` and ``label = ''``.

Which field holds each object: the input's ``run``/``camcol``/``field`` columns where
present, else one of the ``fields`` you name, else (the default) SDSS's own field index
``window_flist`` (:mod:`stargal.window`): any point of the survey, whichever fields the
model was trained on. Naming fields or giving the columns skips the index lookup.

Large lists: :func:`predict_csv` reads a CSV in chunks (``pandas.read_csv(chunksize=...)``)
and writes its output as it goes, atomically (a temporary file in the output's directory,
``fsync``, ``os.replace`` at the end; removed on failure or interruption), so memory stays
bounded by one chunk plus one field's frames whatever the length of the list.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import clone
from tqdm.auto import tqdm

from .calibration import adapt_to_field
from .catalogs import LABEL_NAMES, CoordinateError, read_coordinates

__all__ = ["predict_coordinates", "predict_csv", "OUTPUT_COLUMNS", "DEFAULT_CHUNKSIZE"]

#: Rows read (and classified) per chunk by :func:`predict_csv`.
DEFAULT_CHUNKSIZE = 100_000

#: Columns of the table :func:`predict_coordinates` returns (plus any input columns kept).
OUTPUT_COLUMNS = ["ra", "dec", "field", "p_galaxy", "label", "flag"]


def _split_pipeline(model):
    steps = getattr(model, "steps", None)
    if not steps or steps[0][0] != "align":
        raise TypeError(
            "predict_coordinates needs a fitted stargal pipeline whose first step is 'align' "
            f"(an Aligner); got {type(model).__name__} with steps "
            f"{[name for name, _ in steps] if steps else None}"
        )
    return steps[0][1], model[1:]


def _with_params(step, overrides):
    """A shallow copy of ``step`` with those of ``overrides`` that it accepts set."""
    params = step.get_params(deep=False) if hasattr(step, "get_params") else {}
    accepted = {k: v for k, v in overrides.items() if k in params}
    return copy.copy(step).set_params(**accepted) if accepted else step


def _predict_field(tail, rows: pd.DataFrame) -> np.ndarray:
    """Galaxy probability for the aligned rows of one field (runs in a worker)."""
    proba = tail.predict_proba(rows)
    return np.asarray(proba, dtype=float)[:, 1]


def _coerce_table(coords) -> pd.DataFrame:
    if isinstance(coords, pd.DataFrame):
        table = coords.copy()
    elif isinstance(coords, dict):
        table = pd.DataFrame(coords)
    elif isinstance(coords, (str, bytes)) or hasattr(coords, "__fspath__"):
        try:
            table = pd.read_csv(coords)
        except FileNotFoundError as exc:
            raise CoordinateError(f"coordinate file {coords} does not exist") from exc
    else:
        arr = np.asarray(coords, dtype=object)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise CoordinateError(f"expected an (n, 2) array of (ra, dec), got shape {arr.shape}")
        table = pd.DataFrame({"ra": arr[:, 0], "dec": arr[:, 1]})
    lower = {str(c).strip().lower(): c for c in table.columns}
    if "ra" not in lower or "dec" not in lower:
        raise CoordinateError(f"coordinate list needs 'ra' and 'dec' columns; found {list(table.columns)}")
    table = table.rename(columns={lower["ra"]: "ra", lower["dec"]: "dec"})
    if len(table) == 0:
        raise CoordinateError("coordinate list is empty")
    return table


def _prepare(model, fields, sas_url, cache_dir):
    """The model's aligner (flagging, pointed at the fields or the window index) and the rest."""
    from .align import WINDOW

    aligner, tail = _split_pipeline(model)
    overrides = {k: v for k, v in {"sas_url": sas_url, "cache_dir": cache_dir}.items() if v is not None}
    aligner = clone(aligner).set_params(policy="flag", **overrides)
    if fields is None or (isinstance(fields, str) and fields.strip().lower() == WINDOW):
        aligner.set_params(fields=WINDOW)
    else:
        aligner.set_params(fields=[str(f) for f in ([fields] if isinstance(fields, str) else fields)])
    if overrides:  # point the data-reading steps at another source without touching the model
        tail = copy.copy(tail)
        tail.steps = [(name, _with_params(step, overrides)) for name, step in tail.steps]
    return aligner, tail


def _calibration_fraction(model) -> float:
    """The galaxy fraction the model's p_galaxy is calibrated at (0.5: class-weighted, uncalibrated)."""
    return float(getattr(model, "calibration_fraction_", 0.5))


def _predict_table(aligner, tail, table: pd.DataFrame, *, strict, n_jobs, scheduler, bar,
                   field_prior=None) -> pd.DataFrame:
    """Classify one table (all of a small list, or one chunk of a large one)."""
    if strict:
        read_coordinates(table)  # raises with the offending rows listed
    # Keep the caller's rows and order; work on a positional index internally.
    work = table.reset_index(drop=True)
    numeric = work[["ra", "dec"]].apply(pd.to_numeric, errors="coerce")
    explicit = [c for c in work.columns if str(c).strip().lower() in ("run", "camcol", "field")]
    aligned = aligner.fit(numeric).transform(pd.concat([numeric, work[explicit]], axis=1)
                                             if len(explicit) == 3 else numeric)
    flags = aligned["flag"].astype(str).to_numpy()
    field_ids = np.where(flags == "", aligned["field_id"].astype(str).to_numpy(), "")
    p_galaxy = np.full(len(work), np.nan)
    priors = np.full(len(work), np.nan)

    groups = pd.Series(np.arange(len(work)))[flags == ""].groupby(field_ids[flags == ""])
    jobs = [(fid, idx.to_numpy()) for fid, idx in groups]
    if bar is not None:
        bar.update(int((flags != "").sum()))
    if jobs:
        from .tuning import parallel_backend_for  # local: tuning imports dask lazily

        with parallel_backend_for(scheduler=scheduler, n_jobs=n_jobs):
            runner = Parallel(return_as="generator", n_jobs=None if scheduler is not None else n_jobs)
            results = runner(delayed(_predict_field)(tail, aligned.iloc[idx]) for _, idx in jobs)
            for (fid, idx), p in zip(jobs, results):
                known = np.isfinite(p)  # a rule abstains (NaN) on objects it cannot measure
                if field_prior is not None and known.any():  # the field's own mix, estimated without labels
                    p = p.copy()
                    p[known], priors[idx] = adapt_to_field(p[known], field_prior)
                p_galaxy[idx] = p
                if bar is not None:
                    bar.update(len(idx))

    flags = np.where((flags == "") & np.isnan(p_galaxy), "unmeasured", flags)
    out = table.copy()
    out["ra"], out["dec"] = numeric["ra"].to_numpy(), numeric["dec"].to_numpy()
    out["field"] = field_ids
    out["p_galaxy"] = p_galaxy
    label = np.where(np.isnan(p_galaxy), "", LABEL_NAMES[(np.nan_to_num(p_galaxy) >= 0.5).astype(int)])
    out["label"] = label
    out["flag"] = flags
    if field_prior is not None:
        out["field_prior"] = priors
    return out[OUTPUT_COLUMNS + [c for c in out.columns if c not in OUTPUT_COLUMNS]]


def predict_coordinates(model, coords, *, fields=None, strict: bool = False, n_jobs: int = 1,
                        scheduler=None, sas_url=None, cache_dir=None, progress: bool = True,
                        field_prior: bool = False) -> pd.DataFrame:
    """Galaxy probabilities for a list of RA/Dec coordinates.

    Parameters
    ----------
    model : fitted Pipeline
        A stargal pipeline (first step ``'align'``), e.g. from :func:`stargal.persist.load_model`.
    coords : DataFrame, dict, (n, 2) array or CSV path
        ``ra``, ``dec`` in degrees (ICRS); other columns are carried through.
    fields : list of str, optional
        Candidate SDSS fields (``'8162-6-80'``): skips the index lookup. Default: each object's
        ``run``/``camcol``/``field`` columns if present, else SDSS's ``window_flist``
        (fetched and cached once; see :mod:`stargal.window`).
    strict : bool, default=False
        Raise :class:`~stargal.catalogs.CoordinateError` on NaN/out-of-range coordinates
        instead of flagging them ``'invalid_coord'``.
    n_jobs : int, default=1
        Fields processed in parallel (joblib). Ignored when ``scheduler`` is given.
    scheduler : str or distributed.Client, optional
        ``'tcp://host:port'`` of a Dask scheduler: fields are spread over its workers.
    sas_url, cache_dir : str, optional
        Data source and cache for the frames (default: what the model was built with).
    progress : bool, default=True
        Show a progress bar over objects (tqdm).
    field_prior : bool, default=False
        Move each field's probabilities to that field's own galaxy fraction, estimated from
        the model's probabilities of the listed objects of the field, without labels
        (:func:`stargal.calibration.adapt_to_field`; fields with fewer than
        :data:`stargal.calibration.MIN_FIELD_OBJECTS` objects are left as they are). Meant for
        catalogs of whole fields (SDSS fields differ from ~10 % to ~60 % galaxies); a
        probability then depends on the other objects of its field in the list, so it is off
        by default. Adds the column ``field_prior`` (the fraction used).

    Returns
    -------
    pandas.DataFrame
        Input rows in input order with :data:`OUTPUT_COLUMNS` (``field`` is ``''`` and
        ``p_galaxy`` NaN where ``flag`` is set).

    Examples
    --------
    >>> out = predict_coordinates(model, {"ra": [331.70], "dec": [26.95]})  # doctest: +SKIP
    >>> out[["field", "p_galaxy", "label", "flag"]]                         # doctest: +SKIP
    """
    table = _coerce_table(coords)
    aligner, tail = _prepare(model, fields, sas_url, cache_dir)
    bar = tqdm(total=len(table), desc="stargal predict", unit="obj", disable=not progress)
    try:
        return _predict_table(aligner, tail, table, strict=strict, n_jobs=n_jobs, scheduler=scheduler, bar=bar,
                              field_prior=_calibration_fraction(model) if field_prior else None)
    finally:
        bar.close()


def _count_rows(path: Path) -> int | None:
    """Data rows of a CSV (newlines minus the header), for the progress bar; None if unreadable."""
    try:
        n, last = 0, b"\n"
        with open(path, "rb") as fh:
            while block := fh.read(1 << 24):
                n += block.count(b"\n")
                last = block[-1:]
        return max(0, n - 1 + (last != b"\n"))
    except OSError:
        return None


def predict_csv(model, source, output, *, chunksize: int = DEFAULT_CHUNKSIZE, fields=None, strict: bool = False,
                n_jobs: int = 1, scheduler=None, sas_url=None, cache_dir=None, progress: bool = True,
                field_prior: bool = False) -> dict:
    """Classify a CSV of coordinates of any length, chunk by chunk, writing the output as it goes.

    Parameters
    ----------
    model : fitted Pipeline
        As for :func:`predict_coordinates`.
    source : path
        CSV with ``ra``, ``dec`` columns (degrees); other columns are carried through.
    output : path or text file
        Output CSV (columns as :func:`predict_coordinates`). A path is written atomically:
        to a temporary file in the same directory, ``fsync``-ed and renamed onto ``output``
        at the end; after an error or an interruption no output file (and no temporary
        file) is left. An open text file (e.g. ``sys.stdout``) is written to chunk by chunk.
    chunksize : int, default=100_000
        Rows read and classified at a time: memory is bounded by one chunk plus one field's
        frames (fields are opened one at a time and released).
    fields, strict, n_jobs, scheduler, sas_url, cache_dir, field_prior
        As for :func:`predict_coordinates` (``field_prior``: estimated per field within each chunk).
    progress : bool, default=True
        Progress bar over objects (tqdm, on stderr).

    Returns
    -------
    dict
        ``n_rows``, ``n_flagged``, ``flags`` (count per flag) and ``n_chunks``.

    Raises
    ------
    CoordinateError
        The file is missing, not a CSV, or lacks ``ra``/``dec`` (before anything is written);
        with ``strict=True`` also invalid coordinates (nothing is written).
    """
    path = Path(source)
    if not path.is_file():
        raise CoordinateError(f"coordinate file {path} does not exist")
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be a positive integer, got {chunksize!r}")
    aligner, tail = _prepare(model, fields, sas_url, cache_dir)
    try:
        reader = pd.read_csv(path, chunksize=chunksize)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise CoordinateError(f"cannot read {path} as CSV: {exc}") from exc

    to_file = not hasattr(output, "write")
    tmp = None
    if to_file:
        target = Path(output)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        fh = os.fdopen(fd, "w", newline="")
    else:
        fh = output
    stats = {"n_rows": 0, "n_flagged": 0, "flags": {}, "n_chunks": 0}
    bar = tqdm(total=_count_rows(path) if progress else None, desc="stargal predict", unit="obj",
               disable=not progress, file=sys.stderr)
    try:
        with reader:
            try:
                for chunk in reader:
                    out = _predict_table(aligner, tail, _coerce_table(chunk), strict=strict, n_jobs=n_jobs,
                                         scheduler=scheduler, bar=bar,
                                         field_prior=_calibration_fraction(model) if field_prior else None)
                    out.to_csv(fh, index=False, header=stats["n_chunks"] == 0)
                    stats["n_chunks"] += 1
                    stats["n_rows"] += len(out)
                    for flag, count in out["flag"][out["flag"] != ""].value_counts().items():
                        stats["flags"][flag] = stats["flags"].get(flag, 0) + int(count)
            except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
                raise CoordinateError(f"cannot read {path} as CSV: {exc}") from exc
        if stats["n_chunks"] == 0:
            raise CoordinateError(f"coordinate file {path} has no rows")
        fh.flush()
        if to_file:
            os.fsync(fh.fileno())
            fh.close()
            os.replace(tmp, target)
            tmp = None
    finally:
        bar.close()
        if tmp is not None:
            fh.close()
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    stats["n_flagged"] = sum(stats["flags"].values())
    return stats
