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

Which fields are searched: the ``fields`` argument, else the input's
``run``/``camcol``/``field`` columns, else the aligner's own ``fields`` parameter
(by default the fields of the study the model was trained for).
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import clone
from tqdm.auto import tqdm

from .catalogs import LABEL_NAMES, CoordinateError, read_coordinates

__all__ = ["predict_coordinates", "OUTPUT_COLUMNS"]

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


def predict_coordinates(model, coords, *, fields=None, strict: bool = False, n_jobs: int = 1,
                        scheduler=None, sas_url=None, cache_dir=None, progress: bool = True) -> pd.DataFrame:
    """Galaxy probabilities for a list of RA/Dec coordinates.

    Parameters
    ----------
    model : fitted Pipeline
        A stargal pipeline (first step ``'align'``), e.g. from :func:`stargal.persist.load_model`.
    coords : DataFrame, dict, (n, 2) array or CSV path
        ``ra``, ``dec`` in degrees (ICRS); other columns are carried through.
    fields : list of str, optional
        Candidate SDSS fields (``'8162-6-80'``). See the module docstring for the default.
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
        Show a progress bar over fields.

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
    if strict:
        read_coordinates(table)  # raises with the offending rows listed
    aligner, tail = _split_pipeline(model)
    overrides = {k: v for k, v in {"sas_url": sas_url, "cache_dir": cache_dir}.items() if v is not None}
    aligner = clone(aligner).set_params(policy="flag", **overrides)
    if fields is not None:
        aligner.set_params(fields=[str(f) for f in fields])
    if overrides:  # point the data-reading steps at another source without touching the model
        tail.steps = [(name, _with_params(step, overrides)) for name, step in tail.steps]

    # Keep the caller's rows and order; work on a positional index internally.
    work = table.reset_index(drop=True)
    numeric = work[["ra", "dec"]].apply(pd.to_numeric, errors="coerce")
    aligned = aligner.fit(numeric).transform(numeric)
    flags = aligned["flag"].astype(str).to_numpy()
    field_ids = np.where(flags == "", aligned["field_id"].astype(str).to_numpy(), "")
    p_galaxy = np.full(len(work), np.nan)

    groups = pd.Series(np.arange(len(work)))[flags == ""].groupby(field_ids[flags == ""])
    jobs = [(fid, idx.to_numpy()) for fid, idx in groups]
    if jobs:
        from .tuning import parallel_backend_for  # local: tuning imports dask lazily

        bar = tqdm(total=len(jobs), desc="fields", unit="field", disable=not progress)
        with parallel_backend_for(scheduler=scheduler, n_jobs=n_jobs):
            runner = Parallel(return_as="generator", n_jobs=None if scheduler is not None else n_jobs)
            results = runner(delayed(_predict_field)(tail, aligned.iloc[idx]) for _, idx in jobs)
            for (fid, idx), p in zip(jobs, results):
                p_galaxy[idx] = p
                bar.update(1)
        bar.close()

    out = table.copy()
    out["ra"], out["dec"] = numeric["ra"].to_numpy(), numeric["dec"].to_numpy()
    out["field"] = field_ids
    out["p_galaxy"] = p_galaxy
    label = np.where(np.isnan(p_galaxy), "", LABEL_NAMES[(np.nan_to_num(p_galaxy) >= 0.5).astype(int)])
    out["label"] = label
    out["flag"] = flags
    return out[OUTPUT_COLUMNS + [c for c in out.columns if c not in OUTPUT_COLUMNS]]
