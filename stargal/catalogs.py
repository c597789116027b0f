"""Object tables: SDSS ``calibObj`` star/galaxy catalogs and user coordinate lists.

``calibObj-RRRRRR-C-{star,gal}.fits.gz`` sweeps cover a whole run+camcol; we keep the
rows of the requested field (``FIELD`` column) and, optionally, only objects whose
position falls on all five band frames. Only the columns named below are read, by
name, so real SDSS sweeps (many more columns) work as well.

Labels follow SDSS's ``OBJC_TYPE`` (6 = star, 3 = galaxy). The flux columns define
those labels, so ``psfmag_r``/``modelmag_r`` are kept for *reporting* (magnitude bins)
and must never be used as model features.

Magnitudes: Pogson, ``m = 22.5 - 2.5 log10(flux / nanomaggy)``; NaN for flux <= 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from .fetch import get_fetcher
from .sdss import FieldID, calibobj_path

__all__ = [
    "objects_table",
    "table_coordinates",
    "explicit_field_ids",
    "LABELS",
    "LABEL_NAMES",
    "CoordinateError",
    "nmgy_to_mag",
    "read_calibobj",
    "read_band_centroids",
    "load_catalog",
    "read_coordinates",
    "labels_to_y",
]

#: Integer class codes used for ``y`` everywhere: 0 = star, 1 = galaxy.
LABELS = {"star": 0, "galaxy": 1}
#: Inverse of :data:`LABELS`.
LABEL_NAMES = np.array(["star", "galaxy"])

_OBJC_TYPE = {6: "star", 3: "galaxy"}
_R = 2  # index of r in u,g,r,i,z flux vectors


class CoordinateError(ValueError):
    """A coordinate list is malformed; the message names the bad rows/columns."""


def nmgy_to_mag(flux) -> np.ndarray:
    """Nanomaggies -> Pogson AB magnitude (NaN where flux <= 0 or not finite)."""
    flux = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = 22.5 - 2.5 * np.log10(flux)
    mag[~np.isfinite(mag)] = np.nan
    return mag


def labels_to_y(labels) -> np.ndarray:
    """``'star'``/``'galaxy'`` strings -> int array (0/1); unknown labels raise."""
    labels = pd.Series(labels, dtype="object")
    bad = ~labels.isin(list(LABELS))
    if bad.any():
        raise ValueError(f"unknown labels {sorted(set(labels[bad].astype(str)))[:5]}; expected 'star'/'galaxy'")
    return labels.map(LABELS).to_numpy(dtype=np.int64)


#: Columns with SDSS photo's per-band centroids, read only with ``band_centroids=True``.
_CENTROID_COLUMNS = {"ROWC", "COLC", "PSFFLUX_IVAR"}


class _NotASweepError(ValueError):
    """A readable FITS table without the columns of a calibObj sweep (not a damaged copy)."""


def _read_sweep(path: Path, kind: str, fid: FieldID, band_centroids: bool = False) -> pd.DataFrame:
    with fits.open(path, memmap=False) as hdul:
        data = hdul[1].data
        names = {n.upper() for n in data.columns.names}
        if band_centroids and _CENTROID_COLUMNS - names:
            raise _NotASweepError(f"{path}: this sweep has no per-band centroids, missing columns "
                             f"{sorted(_CENTROID_COLUMNS - names)}")
        need = {"RUN", "CAMCOL", "FIELD", "ID", "OBJC_TYPE", "RA", "DEC", "PSFFLUX", "MODELFLUX"}
        missing = need - names
        if missing:
            raise _NotASweepError(f"{path}: not a calibObj sweep, missing columns {sorted(missing)}")
        sel = (data["RUN"] == fid.run) & (data["CAMCOL"] == fid.camcol) & (data["FIELD"] == fid.field)
        d = data[sel]
        types = np.asarray(d["OBJC_TYPE"]).astype(int)
        label = np.array([_OBJC_TYPE.get(t, "") for t in types], dtype=object)
        table = pd.DataFrame(
            {
                # star and gal sweeps may number objects independently: keep the kind in the id
                "objid": [f"{fid.padded}-{kind}-{int(i):05d}" for i in d["ID"]],
                "run": np.asarray(d["RUN"], dtype=np.int64),
                "camcol": np.asarray(d["CAMCOL"], dtype=np.int64),
                "field": np.asarray(d["FIELD"], dtype=np.int64),
                "field_id": str(fid),
                "ra": np.asarray(d["RA"], dtype=float),
                "dec": np.asarray(d["DEC"], dtype=float),
                "label": label,
                "psfmag_r": nmgy_to_mag(np.asarray(d["PSFFLUX"])[:, _R]),
                "modelmag_r": nmgy_to_mag(np.asarray(d["MODELFLUX"])[:, _R]),
            }
        )
        if band_centroids:
            rowc, colc = np.asarray(d["ROWC"], float), np.asarray(d["COLC"], float)
            flux, ivar = np.asarray(d["PSFFLUX"], float), np.asarray(d["PSFFLUX_IVAR"], float)
            for i, b in enumerate("ugriz"):
                table[f"x_sdss_{b}"] = colc[:, i] - 0.5  # SDSS photo: first pixel's centre at 0.5
                table[f"y_sdss_{b}"] = rowc[:, i] - 0.5
                table[f"psf_snr_{b}"] = flux[:, i] * np.sqrt(np.clip(ivar[:, i], 0, None))
    # A star file holds stars and a gal file galaxies; anything else is not labelled.
    expected = "star" if kind == "star" else "galaxy"
    return table[table["label"] == expected]


def read_calibobj(fid, fetcher=None, *, on_frames: bool = True, margin_pix: float = 0.0,
                  band_centroids: bool = False, sas_url=None, cache_dir=None) -> pd.DataFrame:
    """Read one field's stars and galaxies from its run+camcol ``calibObj`` sweeps.

    Parameters
    ----------
    fid : str or FieldID
        Field, e.g. ``'8162-6-80'``.
    fetcher : Fetcher, optional
        Data source; default from ``sas_url`` / ``cache_dir`` / environment.
    on_frames : bool, default=True
        Keep only objects that fall inside every band's frame of this field
        (at least ``margin_pix`` pixels from the edges).
    band_centroids : bool, default=False
        Also SDSS photo's per-band centroids (the columns of :func:`read_band_centroids`);
        a sweep without them raises ``ValueError``.

    Returns
    -------
    pandas.DataFrame
        Columns ``objid, run, camcol, field, field_id, ra, dec, label, psfmag_r, modelmag_r``
        (and the centroid columns), sorted by ``objid``, with a fresh ``RangeIndex``.
    """
    fid = FieldID.parse(fid)
    fetcher = get_fetcher(fetcher, sas_url=sas_url, cache_dir=cache_dir)
    # a cached sweep that cannot be read is named in a warning, removed and fetched again once
    parts = [fetcher.read(calibobj_path(fid, k), lambda p, k=k: _read_sweep(p, k, fid, band_centroids),
                          passthrough=(_NotASweepError,)) for k in ("star", "gal")]
    table = pd.concat(parts, ignore_index=True).sort_values("objid", kind="stable")
    table = table.reset_index(drop=True)
    if on_frames and len(table):
        from .frames import Field  # local import: frames is heavier and optional here

        field = Field(fid, fetcher)
        keep = field.contains(table["ra"].to_numpy(), table["dec"].to_numpy(), margin_pix)
        field.release()
        table = table[keep].reset_index(drop=True)
    return table


def read_band_centroids(fid, fetcher=None, *, sas_url=None, cache_dir=None) -> pd.DataFrame:
    """SDSS photo's own centroid of every labelled catalog object in each band's frame.

    The ``calibObj`` sweeps carry, per band, the position where the SDSS pipeline measured the
    object in that band's frame (``COLC``, ``ROWC``). They are an independent measurement of
    where each object sits in each band, used to check :class:`stargal.align.Aligner`; they
    are not used to align (arbitrary coordinates have no such measurement).

    Parameters
    ----------
    fid : str or FieldID
    fetcher : Fetcher, optional

    Returns
    -------
    pandas.DataFrame
        ``objid`` (the rows of ``read_calibobj(fid, on_frames=False)``), ``x_sdss_{b}``, ``y_sdss_{b}`` for b in ugriz:
        0-based pixel coordinates in band b's frame (pixel centres at integers, the WCS origin
        0 convention of :class:`stargal.frames.Frame`; SDSS's own convention puts the first
        pixel's centre at 0.5, so ``x = COLC - 0.5``), and ``psf_snr_{b}`` (PSF flux S/N).

    Raises
    ------
    ValueError
        The sweep lacks the per-band centroid columns.
    """
    table = read_calibobj(fid, fetcher, on_frames=False, band_centroids=True, sas_url=sas_url, cache_dir=cache_dir)
    return table[["objid"] + [c for c in table.columns if c.startswith(("x_sdss_", "y_sdss_", "psf_snr_"))]]


def load_catalog(fields, fetcher=None, *, on_frames: bool = True, margin_pix: float = 0.0,
                 sas_url=None, cache_dir=None) -> pd.DataFrame:
    """Concatenate :func:`read_calibobj` over several fields (one row per object)."""
    fetcher = get_fetcher(fetcher, sas_url=sas_url, cache_dir=cache_dir)
    tables = [read_calibobj(f, fetcher, on_frames=on_frames, margin_pix=margin_pix) for f in fields]
    if not tables:
        raise ValueError("load_catalog needs at least one field")
    return pd.concat(tables, ignore_index=True)


def read_coordinates(source, *, ra: str = "ra", dec: str = "dec") -> pd.DataFrame:
    """Read and validate a user's coordinate list.

    Parameters
    ----------
    source : path, DataFrame, dict or (n, 2) array
        A CSV file with ``ra`` and ``dec`` columns (degrees, ICRS), a DataFrame, a
        mapping of columns, or an array of ``(ra, dec)`` rows. Other columns are kept.
    ra, dec : str
        Column names to use (case-insensitive), renamed to ``ra``/``dec``.

    Returns
    -------
    pandas.DataFrame
        A copy with float ``ra`` in [0, 360) and ``dec`` in [-90, 90]; the index is kept.

    Raises
    ------
    CoordinateError
        Missing columns, non-numeric values, NaN/inf, or values out of range; the
        message lists the offending rows (first 10) and columns.

    Examples
    --------
    >>> read_coordinates({"ra": [331.7], "dec": [26.9]})
         ra   dec
    0  331.7  26.9
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise CoordinateError(f"coordinate file {path} does not exist")
        try:
            table = pd.read_csv(path)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise CoordinateError(f"cannot read {path} as CSV: {exc}") from exc
    elif isinstance(source, pd.DataFrame):
        table = source.copy()
    elif isinstance(source, dict):
        table = pd.DataFrame(source)
    else:
        arr = np.asarray(source)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise CoordinateError(f"expected an (n, 2) array of (ra, dec), got shape {arr.shape}")
        table = pd.DataFrame({ra: arr[:, 0], dec: arr[:, 1]})
    lower = {str(c).strip().lower(): c for c in table.columns}
    missing = [c for c in (ra, dec) if c.lower() not in lower]
    if missing:
        raise CoordinateError(
            f"coordinate list lacks column(s) {missing}; found {list(table.columns)} "
            "(expected 'ra' and 'dec' in degrees)"
        )
    table = table.rename(columns={lower[ra.lower()]: "ra", lower[dec.lower()]: "dec"})
    problems = []
    for col, lo, hi, closed in (("ra", 0.0, 360.0, False), ("dec", -90.0, 90.0, True)):
        values = pd.to_numeric(table[col], errors="coerce")
        nonnum = values.isna() & table[col].notna()
        nan = table[col].isna() | ~np.isfinite(values.fillna(0.0))
        with np.errstate(invalid="ignore"):
            out = (values < lo) | ((values > hi) if closed else (values >= hi))
        for what, mask in (("not a number", nonnum), ("NaN/missing/inf", nan & ~nonnum), (
                f"outside [{lo:g}, {hi:g}{']' if closed else ')'}", out & ~nan & ~nonnum)):
            if mask.any():
                rows = list(table.index[mask.to_numpy()])
                problems.append(f"{col} {what} in {len(rows)} row(s): {rows[:10]}{' ...' if len(rows) > 10 else ''}")
        table[col] = values.astype(float)
    if problems:
        raise CoordinateError("invalid coordinates: " + "; ".join(problems))
    if len(table) == 0:
        raise CoordinateError("coordinate list is empty")
    return table


# ----------------------------------------------------------------------------- objects tables
# The estimators' input: a table with ``ra``/``dec`` (degrees) and optionally ``run``/``camcol``/``field``.

def objects_table(X) -> pd.DataFrame:
    """An objects table from a DataFrame, a dict of columns or an ``(n, 2)`` array of ``(ra, dec)``."""
    if isinstance(X, pd.DataFrame):
        return X
    if isinstance(X, dict):
        return pd.DataFrame(X)
    if isinstance(X, (str, bytes)) or hasattr(X, "__fspath__"):
        raise TypeError(
            "Aligner expects a table (DataFrame, dict or (n, 2) array), not a path; "
            "read the file with stargal.catalogs.read_coordinates first"
        )
    arr = np.asarray(X, dtype=object)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise CoordinateError(
            f"Aligner expects a DataFrame with 'ra' and 'dec' columns or an (n, 2) array of "
            f"(ra, dec) in degrees; got an array of shape {arr.shape}"
        )
    return pd.DataFrame({"ra": arr[:, 0], "dec": arr[:, 1]})


def _coordinate_columns(table: pd.DataFrame) -> tuple:
    lower = {str(c).strip().lower(): c for c in table.columns}
    missing = [c for c in ("ra", "dec") if c not in lower]
    if missing:
        raise CoordinateError(
            f"Aligner input lacks column(s) {missing}; found {list(table.columns)} "
            "(expected 'ra' and 'dec' in degrees, ICRS)"
        )
    return lower["ra"], lower["dec"]


def table_coordinates(table: pd.DataFrame, policy: str = "raise"):
    """``(ra, dec, invalid)`` float arrays of an objects table; ``invalid`` marks bad rows.

    With ``policy='raise'`` bad rows raise :class:`CoordinateError` naming them.
    """
    ra_col, dec_col = _coordinate_columns(table)
    ra = pd.to_numeric(table[ra_col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    dec = pd.to_numeric(table[dec_col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        invalid = ~(np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra < 360) & (dec >= -90) & (dec <= 90))
    if policy == "raise" and invalid.any():
        # Same checks and message as the catalog reader (it names the rows and reasons).
        read_coordinates(table[[ra_col, dec_col]], ra=str(ra_col), dec=str(dec_col))
        rows = list(table.index[invalid])
        raise CoordinateError(f"invalid coordinates in {len(rows)} row(s): {rows[:10]}")
    return ra, dec, invalid


def explicit_field_ids(table: pd.DataFrame, invalid: np.ndarray) -> np.ndarray:
    """Per row, the canonical field string from ``run``/``camcol``/``field`` ('' if absent)."""
    out = np.full(len(table), "", dtype=object)
    lower = {str(c).strip().lower(): c for c in table.columns}
    if not all(c in lower for c in ("run", "camcol", "field")):
        return out
    vals = np.column_stack([
        pd.to_numeric(table[lower[c]], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        for c in ("run", "camcol", "field")
    ])
    ok = np.isfinite(vals).all(axis=1) & ~invalid
    if not ok.any():
        return out
    combos, inverse = np.unique(vals[ok].astype(np.int64), axis=0, return_inverse=True)
    names = []
    for run, camcol, fld in combos:
        try:
            names.append(str(FieldID(int(run), int(camcol), int(fld))))
        except ValueError as exc:
            raise ValueError(f"Aligner input has an invalid run/camcol/field: {exc}") from None
    out[np.flatnonzero(ok)] = np.asarray(names, dtype=object)[inverse.ravel()]
    return out
