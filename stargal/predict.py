"""Classify a list of sky coordinates with a fitted stargal pipeline.

A fitted pipeline starts with an ``'align'`` step (:class:`~stargal.align.Aligner`)
followed by ``'cut'`` and the model. Scikit-learn's ``predict`` must return one
answer per row, so objects that cannot be classified would have to crash it;
:func:`predict_coordinates` is the forgiving entry point instead:

1. read every row's coordinates (:func:`stargal.catalogs.parse_coordinates`: column names
   such as ``RA``/``DEC``, ``ra_deg``, ``RAJ2000``/``DEJ2000``, ``alpha``/``delta``;
   degrees or sexagesimal strings; ``frame`` for input that is not ICRS) and align them
   with the pipeline's aligner in ``policy='flag'`` mode (objects outside every available
   field, too close to an edge, on a field with a missing band, or with unusable
   coordinates get a ``flag`` and a short ``flag_detail``);
2. group the good rows by field and run the rest of the pipeline field by field,
   so at most one field's frames are open per worker (bounded memory); fields can be
   spread over joblib workers (``n_jobs``) or a Dask cluster (``scheduler``); with fewer
   fields than workers, a measured model's rows of one field are split over threads
   (:func:`_chunk_threads`);
3. return one row per input row, in input order: the input's own columns with their
   values as given, then :data:`OUTPUT_COLUMNS` (``ra_deg, dec_deg, field, p_galaxy,
   label, flag, flag_detail``); flagged rows have ``p_galaxy = NaN`` and ``label = ''``.
   An input column whose name is one of those is kept as ``input_<name>``.

Where the data come from: the model's steps read frames from the source and cache given
here (``sas_url``, ``cache_dir``), else from ``STARGAL_SAS_URL`` / ``STARGAL_CACHE``, else
from the defaults; never from where the model was trained (model files do not carry it,
see :mod:`stargal.persist`).

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
import numbers
import os
import sys
import tempfile
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, clone
from sklearn.pipeline import Pipeline as _SkPipeline
from tqdm.auto import tqdm

from .calibration import adapt_to_field
from .catalogs import (LABEL_NAMES, CoordinateError, coordinate_columns, invalid_rows_message,
                       parse_coordinates)

__all__ = ["predict_coordinates", "predict_csv", "OUTPUT_COLUMNS", "FLAG_DETAILS", "DEFAULT_CHUNKSIZE"]

#: Rows read (and classified) per chunk by :func:`predict_csv`.
DEFAULT_CHUNKSIZE = 100_000

#: Columns :func:`predict_coordinates` adds after the input's own columns.
OUTPUT_COLUMNS = ["ra_deg", "dec_deg", "field", "p_galaxy", "label", "flag", "flag_detail"]

#: ``flag_detail`` of each flag (``invalid_coord`` rows say what is wrong with their values).
FLAG_DETAILS = {
    "outside": "no field holds this position",
    "edge": "too close to a frame edge for a cutout",
    "missing_band": "its field lacks a band's frame",
    "no_frames": "window_flist lists its field but the source has no frames for it",
    "invalid_coord": "invalid coordinates",
    "unmeasured": "the model cannot measure this object (not detected, saturated or masked) and abstains",
}


def _split_pipeline(model):
    steps = getattr(model, "steps", None)
    if not steps or steps[0][0] != "align":
        raise TypeError(
            "predict_coordinates needs a fitted stargal pipeline whose first step is 'align' "
            f"(an Aligner); got {type(model).__name__} with steps "
            f"{[name for name, _ in steps] if steps else None}"
        )
    return steps[0][1], model[1:]


#: Rows per thread at least, when one field's rows are split over threads (:func:`_chunk_threads`).
MIN_CHUNK_ROWS = 200


def _n_rows(jobs) -> int:
    return sum(len(idx) for _, idx in jobs)


def _chunk_threads(tail, jobs, n_jobs, scheduler) -> int:
    """Threads to split the fields' rows over: ``n_jobs`` workers (joblib's count) when there are
    fewer fields than that, at least :data:`MIN_CHUNK_ROWS` rows each and no torch network in the
    model (a network already runs on torch's threads); else 1 (fields go to workers whole).

    Threads share the per-process caches (frames, PSF models, template banks), which a process
    per chunk would each rebuild; the measurement's kernels and numpy release the GIL."""
    from joblib import effective_n_jobs

    if scheduler is not None or isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral) \
            or n_jobs in (0, 1):
        return 1  # one worker, or a value parallel_backend_for refuses with a clear error
    workers = int(effective_n_jobs(n_jobs))
    if workers <= len(jobs) or _contains_net(tail):
        return 1
    return max(1, min(workers, _n_rows(jobs) // MIN_CHUNK_ROWS))


#: ``contains_net`` per pipeline step (walking a 200-tree forest costs ~10 ms a call; a step keeps
#: its identity across calls, while the tail around it is a fresh slice each time).
_HAS_NET = weakref.WeakKeyDictionary()


def _contains_net(tail) -> bool:
    from .persist import contains_net

    found = False
    for step in [est for _, est in tail.steps] if isinstance(tail, _SkPipeline) else [tail]:
        try:
            has = _HAS_NET[step]
        except (KeyError, TypeError):
            has = contains_net(step)
            try:
                _HAS_NET[step] = has
            except TypeError:  # not weakly referable
                pass
        found = found or has
    return found


_CONTROLLER = []


def _one_native_thread():
    """One BLAS/OpenMP thread per Python thread while rows run on several threads (no oversubscription).

    threadpoolctl's controller is made once per process (finding the loaded libraries costs ~5 ms);
    libraries loaded after that are not limited."""
    from threadpoolctl import ThreadpoolController

    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1)


def _predict_field(tail, rows: pd.DataFrame) -> np.ndarray:
    """Galaxy probability for the aligned rows of one field (runs in a worker)."""
    proba = tail.predict_proba(rows)
    return np.asarray(proba, dtype=float)[:, 1]


def _stack_rows(parts):
    """The transformed row chunks of one field as one matrix (arrays, DataFrames or sparse)."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, pd.DataFrame) for p in parts):
        return pd.concat(parts, axis=0)
    import scipy.sparse as sp

    if any(sp.issparse(p) for p in parts):
        return sp.vstack(parts, format="csr")
    return np.concatenate([np.asarray(p) for p in parts], axis=0)


def _predict_split(tail, aligned: pd.DataFrame, parts, executor) -> np.ndarray:
    """Galaxy probability for one field whose rows ``parts`` (positions in ``aligned``) are
    transformed on ``executor``'s threads; the final estimator then runs once on all of them
    (a forest's trees split over threads would contend for the GIL)."""
    if len(tail.steps) == 1:
        return _predict_field(tail, aligned.iloc[np.concatenate(parts)])
    head, final = tail[:-1], tail.steps[-1][1]
    X = _stack_rows(list(executor.map(lambda part: head.transform(aligned.iloc[part]), parts)))
    return np.asarray(final.predict_proba(X), dtype=float)[:, 1]


def _point_at(obj, source):
    """``obj`` with every data-reading step (parameters ``sas_url``/``cache_dir``) pointed at
    ``source``: shallow copies along the way, so the model itself is not modified."""
    if isinstance(obj, _SkPipeline):
        steps = [(name, _point_at(step, source)) for name, step in obj.steps]
        if all(a is b for (_, a), (_, b) in zip(steps, obj.steps)):
            return obj
        new = copy.copy(obj)
        new.steps = steps
        return new
    if isinstance(getattr(obj, "transformer_list", None), list):  # FeatureUnion, InputUnion: their branches
        parts = [(name, _point_at(t, source) if isinstance(t, BaseEstimator) else t)
                 for name, t in obj.transformer_list]
        if all(a is b for (_, a), (_, b) in zip(parts, obj.transformer_list)):
            return obj
        new = copy.copy(obj)
        new.transformer_list = parts
        return new
    if isinstance(obj, BaseEstimator) and hasattr(obj, "get_params"):
        try:
            params = obj.get_params(deep=False)
        except AttributeError:
            return obj
        accepted = {k: v for k, v in source.items() if k in params}
        if accepted:
            return copy.copy(obj).set_params(**accepted)
    return obj


def _read_table(path, chunksize=None):
    """A CSV read with every value as the text it is (nothing reformatted or lost on output)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=chunksize)


def _coerce_table(coords, frame="icrs", columns=None) -> pd.DataFrame:
    if isinstance(coords, pd.DataFrame):
        table = coords.copy()
    elif isinstance(coords, dict):
        table = pd.DataFrame(coords)
    elif isinstance(coords, (str, bytes)) or hasattr(coords, "__fspath__"):
        try:
            table = _read_table(coords)
        except FileNotFoundError as exc:
            raise CoordinateError(f"coordinate file {coords} does not exist") from exc
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise CoordinateError(f"cannot read {coords} as CSV: {exc}") from exc
    else:
        arr = np.asarray(coords, dtype=object)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise CoordinateError(f"expected an (n, 2) array of (ra, dec), got shape {arr.shape}")
        table = pd.DataFrame({"ra": arr[:, 0], "dec": arr[:, 1]})
    coordinate_columns(table, frame, columns)  # raises naming the columns looked for
    if len(table) == 0:
        raise CoordinateError("coordinate list is empty")
    return table


def _prepare(model, fields, sas_url, cache_dir):
    """The model's aligner (flagging, pointed at the fields or the window index) and the rest.

    Every data-reading step is pointed at ``sas_url`` / ``cache_dir`` where they are given; the
    steps of a loaded model hold ``None`` otherwise (model files carry no source), so they read
    from ``STARGAL_SAS_URL`` / ``STARGAL_CACHE``, else the defaults.
    """
    from .align import WINDOW

    aligner, tail = _split_pipeline(model)
    source = {k: v for k, v in {"sas_url": sas_url, "cache_dir": cache_dir}.items() if v is not None}
    aligner = _point_at(clone(aligner), source).set_params(policy="flag")
    if fields is None or (isinstance(fields, str) and fields.strip().lower() == WINDOW):
        aligner.set_params(fields=WINDOW)
    else:
        aligner.set_params(fields=[str(f) for f in ([fields] if isinstance(fields, str) else fields)])
    return aligner, _point_at(tail, source) if source else tail


def _calibration_fraction(model) -> float:
    """The galaxy fraction the model's p_galaxy is calibrated at (0.5: class-weighted, uncalibrated)."""
    return float(getattr(model, "calibration_fraction_", 0.5))


def _output_frame(table: pd.DataFrame, added) -> pd.DataFrame:
    """The input's columns, values untouched; one named like an added column becomes ``input_<name>``."""
    taken = {str(c).lower() for c in added}
    names, used = {}, {str(c).lower() for c in table.columns}
    for c in table.columns:
        if str(c).lower() in taken:
            new = f"input_{c}"
            while new.lower() in used or new.lower() in taken:
                new = f"input_{new}"
            used.add(new.lower())
            names[c] = new
    return table.rename(columns=names) if names else table.copy()


def _predict_table(aligner, tail, table: pd.DataFrame, *, strict, n_jobs, scheduler, bar,
                   field_prior=None, frame="icrs", columns=None) -> pd.DataFrame:
    """Classify one table (all of a small list, or one chunk of a large one)."""
    # Keep the caller's rows and order; work on a positional index internally.
    work = table.reset_index(drop=True)
    parsed = parse_coordinates(work, frame, columns)
    detail = parsed["flag_detail"].to_numpy(dtype=object)
    if strict and (detail != "").any():
        bad = np.flatnonzero(detail != "")
        raise CoordinateError(invalid_rows_message(table.index[bad], detail[bad]))
    numeric = pd.DataFrame({"ra": parsed["ra_deg"].to_numpy(), "dec": parsed["dec_deg"].to_numpy()})
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

        threads = _chunk_threads(tail, jobs, n_jobs, scheduler)
        if threads > 1:  # fewer fields than workers: a field's rows split over threads, caches shared
            from concurrent.futures import ThreadPoolExecutor

            with parallel_backend_for(scheduler=None, n_jobs=1), _one_native_thread(), \
                    ThreadPoolExecutor(threads) as executor:
                for fid, idx in jobs:
                    parts = np.array_split(idx, max(1, min(threads, len(idx) // MIN_CHUNK_ROWS)))
                    p_galaxy[idx] = _predict_split(tail, aligned, parts, executor)
                    if bar is not None:
                        bar.update(len(idx))
        else:
            with parallel_backend_for(scheduler=scheduler, n_jobs=n_jobs):
                runner = Parallel(return_as="generator", n_jobs=None if scheduler is not None else n_jobs)
                results = runner(delayed(_predict_field)(tail, aligned.iloc[idx]) for _, idx in jobs)
                for (fid, idx), p in zip(jobs, results):
                    p_galaxy[idx] = p
                    if bar is not None:
                        bar.update(len(idx))
        if field_prior is not None:  # each field's own mix, estimated without labels (whole fields)
            for fid, idx in groups:
                idx = idx.to_numpy()
                p = p_galaxy[idx]
                known = np.isfinite(p)  # a rule abstains (NaN) on objects it cannot measure
                if known.any():
                    p[known], priors[idx] = adapt_to_field(p[known], field_prior)
                    p_galaxy[idx] = p

    flags = np.where((flags == "") & np.isnan(p_galaxy), "unmeasured", flags)
    added = OUTPUT_COLUMNS + (["field_prior"] if field_prior is not None else [])
    out = _output_frame(table, added)
    out["ra_deg"], out["dec_deg"] = parsed["ra_deg"].to_numpy(), parsed["dec_deg"].to_numpy()
    out["field"] = field_ids
    out["p_galaxy"] = p_galaxy
    out["label"] = np.where(np.isnan(p_galaxy), "", LABEL_NAMES[(np.nan_to_num(p_galaxy) >= 0.5).astype(int)])
    out["flag"] = flags
    out["flag_detail"] = np.where(detail != "", detail,
                                  [FLAG_DETAILS.get(f, f) if f else "" for f in flags]).astype(object)
    if field_prior is not None:
        out["field_prior"] = priors
    return out


def predict_coordinates(model, coords, *, fields=None, strict: bool = False, n_jobs: int = 1,
                        scheduler=None, sas_url=None, cache_dir=None, progress: bool = True,
                        field_prior: bool = False, frame: str = "icrs", columns=None) -> pd.DataFrame:
    """Galaxy probabilities for a list of RA/Dec coordinates.

    Parameters
    ----------
    model : fitted Pipeline
        A stargal pipeline (first step ``'align'``), e.g. from :func:`stargal.persist.load_model`.
    coords : DataFrame, dict, (n, 2) array or CSV path
        Coordinates in columns with one of the names of
        :data:`stargal.catalogs.COORDINATE_COLUMNS` (``ra``/``dec``, ``RAJ2000``/``DEJ2000``,
        ``alpha``/``delta``, ...; any case), in degrees or sexagesimal strings
        (``22:06:48.0``, ``+26:57:00``: RA in hours); other columns are carried through, values
        as given (a CSV is read as text).
    fields : list of str, optional
        Candidate SDSS fields (``'8162-6-80'``): skips the index lookup. Default: each object's
        ``run``/``camcol``/``field`` columns if present, else SDSS's ``window_flist``
        (fetched and cached once; see :mod:`stargal.window`).
    strict : bool, default=False
        Raise :class:`~stargal.catalogs.CoordinateError` on unusable coordinates (missing,
        unparseable, out of range) instead of flagging them ``'invalid_coord'``.
    n_jobs : int, default=1
        Workers (joblib; ``-1``: all cores). Fields go to worker processes whole; when there are
        fewer fields than workers, the rows are split over that many threads instead (at least
        :data:`MIN_CHUNK_ROWS` each; not for a model with a network, which runs on torch's own
        threads). Ignored when ``scheduler`` is given.
    scheduler : str or distributed.Client, optional
        ``'tcp://host:port'`` of a Dask scheduler: fields are spread over its workers.
    sas_url, cache_dir : str, optional
        Data source and cache of the frames and field index. Default: ``STARGAL_SAS_URL`` /
        ``STARGAL_CACHE``, else https://data.sdss.org/sas/ and the user cache directory; never
        where the model was trained.
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
    frame : {'icrs', 'fk5', 'fk4', 'galactic'}, default='icrs'
        The frame of the input coordinates (``'galactic'``: columns ``l``/``b``,
        ``glon``/``glat``, ...); ``ra_deg``/``dec_deg`` are ICRS.
    columns : (str, str), optional
        Names of the longitude and latitude columns, when they are not among the accepted ones.

    Returns
    -------
    pandas.DataFrame
        The input's rows in input order, its columns with their values as given (one named
        like an added column is kept as ``input_<name>``), then :data:`OUTPUT_COLUMNS`:
        ``ra_deg``/``dec_deg`` (parsed, ICRS), ``field`` (``''`` where flagged), ``p_galaxy``
        (NaN where flagged), ``label``, ``flag`` and ``flag_detail`` (why, in a few words).

    Examples
    --------
    >>> out = predict_coordinates(model, {"ra": [331.70], "dec": [26.95]})  # doctest: +SKIP
    >>> out[["field", "p_galaxy", "label", "flag"]]                         # doctest: +SKIP
    """
    table = _coerce_table(coords, frame, columns)
    aligner, tail = _prepare(model, fields, sas_url, cache_dir)
    bar = tqdm(total=len(table), desc="stargal predict", unit="obj", disable=not progress)
    try:
        return _predict_table(aligner, tail, table, strict=strict, n_jobs=n_jobs, scheduler=scheduler, bar=bar,
                              field_prior=_calibration_fraction(model) if field_prior else None,
                              frame=frame, columns=columns)
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
                field_prior: bool = False, frame: str = "icrs", columns=None) -> dict:
    """Classify a CSV of coordinates of any length, chunk by chunk, writing the output as it goes.

    Parameters
    ----------
    model : fitted Pipeline
        As for :func:`predict_coordinates`.
    source : path
        CSV with coordinate columns as for :func:`predict_coordinates`; every value is read as
        text and written back as it was.
    output : path or text file
        Output CSV (columns as :func:`predict_coordinates`). A path is written atomically:
        to a temporary file in the same directory, ``fsync``-ed and renamed onto ``output``
        at the end; after an error or an interruption no output file (and no temporary
        file) is left. An open text file (e.g. ``sys.stdout``) is written to chunk by chunk.
    chunksize : int, default=100_000
        Rows read and classified at a time: memory is bounded by one chunk plus one field's
        frames (fields are opened one at a time and released).
    fields, strict, n_jobs, scheduler, sas_url, cache_dir, field_prior, frame, columns
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
        The file is missing, not a CSV, or lacks coordinate columns (before anything is
        written); with ``strict=True`` also invalid coordinates (nothing is written).
    """
    path = Path(source)
    if not path.is_file():
        raise CoordinateError(f"coordinate file {path} does not exist")
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be a positive integer, got {chunksize!r}")
    aligner, tail = _prepare(model, fields, sas_url, cache_dir)
    try:
        reader = _read_table(path, chunksize=chunksize)
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
                    out = _predict_table(aligner, tail, _coerce_table(chunk, frame, columns), strict=strict,
                                         n_jobs=n_jobs, scheduler=scheduler, bar=bar,
                                         field_prior=_calibration_fraction(model) if field_prior else None,
                                         frame=frame, columns=columns)
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
