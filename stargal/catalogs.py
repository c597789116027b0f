"""Object tables: SDSS ``calibObj`` star/galaxy catalogs and user coordinate lists.

``calibObj-RRRRRR-C-{star,gal}.fits.gz`` sweeps cover a whole run+camcol; we keep the
rows of the requested field (``FIELD`` column) and, optionally, only objects whose
position falls on all five band frames. Only the columns named below are read, by
name, so real SDSS sweeps (many more columns) work as well.

Labels follow SDSS's ``OBJC_TYPE`` (6 = star, 3 = galaxy). The flux columns define
those labels, so ``psfmag_r``/``modelmag_r`` are kept for *reporting* (magnitude bins)
and must never be used as model features.

Magnitudes: Pogson, ``m = 22.5 - 2.5 log10(flux / nanomaggy)``; NaN for flux <= 0.

Coordinate lists as people have them
------------------------------------
:func:`parse_coordinates` reads the coordinates of a user's list, row by row, without losing any:

* columns are found by name, case-insensitively, from :data:`COORDINATE_COLUMNS` (``RA``/``DEC``,
  ``ra_deg``, ``RAJ2000``/``DEJ2000``, ``RA_ICRS``/``DE_ICRS``, ``alpha``/``delta``, ...; for
  ``frame='galactic'``: ``l``/``b``, ``glon``/``glat``, ...), or named explicitly (``columns=``);
* a value is a number of degrees, or a sexagesimal string (``22:06:48.0``, ``22 06 48``,
  ``22h06m48s``, ``+26:57:00``, ``26d57m00s``); for equatorial frames RA written with ``:`` or
  spaces is in hours (astropy ``unit=(hourangle, deg)``); a value with ``h``/``d`` says its unit;
* ``frame`` (:data:`FRAMES`: ``icrs``, ``fk5``, ``fk4``, ``galactic``) names the input's frame;
  values are converted to ICRS degrees (``ra_deg``, ``dec_deg``);
* a value that cannot be used gets a short reason (``flag_detail``: ``"dec 95.0 out of range
  [-90, 90]"``, ``"cannot parse ra '12h3'"``, ``"ra missing"``) instead of an error.
"""

from __future__ import annotations

import re
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
    "parse_coordinates",
    "coordinate_columns",
    "invalid_rows_message",
    "COORDINATE_COLUMNS",
    "FRAMES",
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


#: Frames a coordinate list may be given in (astropy names) and the kind of columns each uses.
FRAMES = {"icrs": "equatorial", "fk5": "equatorial", "fk4": "equatorial", "galactic": "galactic"}
#: Accepted column names (case-insensitive; the first present wins) of longitude and latitude,
#: by kind of frame. SIMBAD/NED/SDSS (``ra``, ``dec``), VizieR (``RAJ2000``, ``_RAJ2000``),
#: Gaia (``ra_icrs``/``RA_ICRS``, ``DE_ICRS``), and common spellings.
COORDINATE_COLUMNS = {
    "equatorial": (
        ("ra", "ra_deg", "radeg", "ra_icrs", "raj2000", "ra_j2000", "_raj2000", "rab1950", "ra_b1950",
         "alpha", "alpha_j2000", "right_ascension"),
        ("dec", "dec_deg", "decdeg", "de", "dec_icrs", "de_icrs", "dej2000", "decj2000", "de_j2000",
         "dec_j2000", "_dej2000", "deb1950", "decb1950", "dec_b1950", "delta", "delta_j2000", "decl",
         "declination"),
    ),
    "galactic": (
        ("l", "glon", "gal_l", "lii", "l_deg", "glon_deg"),
        ("b", "glat", "gal_b", "bii", "b_deg", "glat_deg"),
    ),
}
_ROLES = {"equatorial": ("ra", "dec"), "galactic": ("l", "b")}
# sexagesimal: "22:06:48.0", "22 06 48", "+26:57" (separators), "22h06m48.0s", "26d57m", "26°57′00″"
_SEXAGESIMAL_SEP = re.compile(r"^[+-]?\d{1,3}(?:(?::\s*|\s+)\d{1,2}(?:\.\d*)?){1,2}$")
_SEXAGESIMAL_UNITS = re.compile(
    r"^[+-]?\d+(?:\.\d*)?\s*[hd°](?:\s*\d+(?:\.\d*)?\s*[m'′](?:\s*\d+(?:\.\d*)?\s*[s\"″]?)?)?$")
_ANGLE_ERRORS = {"IllegalHourError": "hours must be below 24", "IllegalMinuteError": "minutes must be below 60",
                 "IllegalSecondError": "seconds must be below 60"}
_MISSING_TEXT = {"", "nan", "na", "n/a", "null", "none", "--"}


def _check_frame(frame) -> str:
    key = str(frame).strip().lower() if isinstance(frame, str) else None
    if key not in FRAMES:
        raise ValueError(f"frame must be one of {sorted(FRAMES)}, got {frame!r}")
    return key


def coordinate_columns(table: pd.DataFrame, frame: str = "icrs", columns=None) -> tuple:
    """The names of ``table``'s longitude and latitude columns (RA/Dec, or l/b for galactic).

    Parameters
    ----------
    table : pandas.DataFrame
    frame : str, default='icrs'
        One of :data:`FRAMES`; ``'galactic'`` looks for l/b columns.
    columns : (str, str), optional
        The two names, given explicitly (matched case-insensitively).

    Returns
    -------
    (lon, lat) : column labels of ``table``

    Raises
    ------
    CoordinateError
        A column is missing; the message lists the names looked for.

    Examples
    --------
    >>> coordinate_columns(pd.DataFrame({"RAJ2000": [1.0], "DEJ2000": [2.0], "id": [3]}))
    ('RAJ2000', 'DEJ2000')
    """
    kind = FRAMES[_check_frame(frame)]
    lower = {}
    for c in table.columns:
        lower.setdefault(str(c).strip().lower(), c)
    if columns is not None:
        if isinstance(columns, str) or len(columns) != 2:
            raise ValueError(f"columns must be two column names (longitude, latitude), got {columns!r}")
        wanted = [((str(columns[i]).strip().lower(),), role) for i, role in enumerate(_ROLES[kind])]
    else:
        wanted = list(zip(COORDINATE_COLUMNS[kind], _ROLES[kind]))
    found, missing = [], []
    for names, role in wanted:
        hit = next((lower[n] for n in names if n in lower), None)
        if hit is None:
            missing.append(f"{role} (looked for {', '.join(names)})")
        found.append(hit)
    if missing:
        raise CoordinateError(
            f"coordinate list lacks a column for {'; '.join(missing)}; found {list(table.columns)}. "
            f"Names are matched case-insensitively; name other columns explicitly "
            f"(--ra-column/--dec-column, columns=)")
    return tuple(found)


def _value_text(value) -> str:
    text = value.strip() if isinstance(value, str) else repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _parse_axis(values, role: str, sexagesimal_unit, lo: float, hi: float, closed: bool):
    """Degrees and a reason ('' when fine) for every value of one coordinate column."""
    from astropy.coordinates import Angle

    plain = np.asarray(values)
    if plain.dtype.kind in "fiu":  # numbers only (the usual list): no per-value parsing
        return _numeric_axis(plain, role, lo, hi, closed)
    raw = np.asarray(values, dtype=object)
    n = raw.size
    deg = np.array(pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce")
                   .to_numpy(dtype=float, na_value=np.nan), dtype=float)  # a writable copy
    detail = np.full(n, "", dtype=object)
    is_str = np.array([isinstance(v, str) for v in raw], dtype=bool)
    text = np.array([v.strip() if isinstance(v, str) else "" for v in raw], dtype=object)
    missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or v is pd.NaT
                        for v in raw], dtype=bool)
    missing |= is_str & np.isin(np.char.lower(text.astype(str)), list(_MISSING_TEXT))
    # strings that are not numbers: sexagesimal, or unparseable
    other = np.isnan(deg) & ~missing
    sexa = other & is_str & np.array([bool(_SEXAGESIMAL_SEP.match(t) or _SEXAGESIMAL_UNITS.match(t))
                                      for t in text], dtype=bool)
    if sexa.any():
        idx = np.flatnonzero(sexa)
        try:
            deg[idx] = Angle(list(text[idx]), unit=sexagesimal_unit).degree
        except Exception:  # noqa: BLE001 - one bad value: parse them one by one to find it
            for i in idx:
                try:
                    deg[i] = Angle(text[i], unit=sexagesimal_unit).degree
                except Exception as exc:  # noqa: BLE001 - astropy's parse errors vary
                    reason = _ANGLE_ERRORS.get(type(exc).__name__)
                    detail[i] = f"cannot parse {role} {_value_text(raw[i])!r}" + (f" ({reason})" if reason else "")
    unparsed = other & ~sexa
    for i in np.flatnonzero(unparsed):
        detail[i] = f"cannot parse {role} {_value_text(raw[i])!r}"
    for i in np.flatnonzero(missing):
        detail[i] = f"{role} missing"
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(deg) | (deg < lo) | ((deg > hi) if closed else (deg >= hi))
    bad &= detail == ""
    for i in np.flatnonzero(bad):
        detail[i] = f"{role} {_value_text(raw[i])} out of range [{lo:g}, {hi:g}{']' if closed else ')'}"
    deg[detail != ""] = np.nan
    return deg, detail


def _numeric_axis(values: np.ndarray, role: str, lo: float, hi: float, closed: bool):
    """:func:`_parse_axis` for a numeric column: the same degrees and reasons, vectorised."""
    deg = values.astype(float)  # a copy
    detail = np.full(deg.size, "", dtype=object)
    missing = np.isnan(deg)
    detail[missing] = f"{role} missing"
    with np.errstate(invalid="ignore"):
        bad = ~missing & (~np.isfinite(deg) | (deg < lo) | ((deg > hi) if closed else (deg >= hi)))
    for i in np.flatnonzero(bad):
        detail[i] = f"{role} {_value_text(values[i].item())} out of range [{lo:g}, {hi:g}{']' if closed else ')'}"
    deg[detail != ""] = np.nan
    return deg, detail


def parse_coordinates(table, frame: str = "icrs", columns=None) -> pd.DataFrame:
    """ICRS degrees of every row of a coordinate list, and why a row cannot be used.

    Parameters
    ----------
    table : pandas.DataFrame or dict of columns
        The user's list; its coordinate columns are found with :func:`coordinate_columns`.
        Values are numbers (degrees) or sexagesimal strings (see the module docstring).
    frame : str, default='icrs'
        The input's frame, one of :data:`FRAMES`.
    columns : (str, str), optional
        Names of the longitude and latitude columns, if not one of :data:`COORDINATE_COLUMNS`.

    Returns
    -------
    pandas.DataFrame
        Same index as ``table``: ``ra_deg``, ``dec_deg`` (float, ICRS; NaN where the row cannot be
        used) and ``flag_detail`` (``''``, or a short reason such as ``"dec 95.0 out of range
        [-90, 90]"``). ``table`` is not modified.

    Raises
    ------
    CoordinateError
        A coordinate column is missing.

    Examples
    --------
    >>> t = pd.DataFrame({"RA": ["22:06:48.0", "331.7", "12h3"], "DEC": ["+26:57:00", "95.0", "0"]})
    >>> out = parse_coordinates(t)
    >>> out["ra_deg"].round(4).tolist()[:1], out["flag_detail"].tolist()
    ([331.7], ['', 'dec 95.0 out of range [-90, 90]', "cannot parse ra '12h3'"])
    """
    import astropy.units as u

    table = pd.DataFrame(table) if isinstance(table, dict) else table
    frame = _check_frame(frame)
    kind = FRAMES[frame]
    lon_col, lat_col = coordinate_columns(table, frame, columns)
    lon_role, lat_role = _ROLES[kind]
    lon_unit = u.hourangle if kind == "equatorial" else u.deg
    lon, lon_detail = _parse_axis(table[lon_col].to_numpy(dtype=object), lon_role, lon_unit, 0.0, 360.0, False)
    lat, lat_detail = _parse_axis(table[lat_col].to_numpy(dtype=object), lat_role, u.deg, -90.0, 90.0, True)
    detail = np.array(["; ".join(d for d in pair if d) for pair in zip(lon_detail, lat_detail)], dtype=object)
    ok = detail == ""
    lon[~ok] = np.nan
    lat[~ok] = np.nan
    if frame != "icrs" and ok.any():
        from astropy.coordinates import SkyCoord

        icrs = SkyCoord(lon[ok] * u.deg, lat[ok] * u.deg, frame=frame).icrs
        lon[ok] = icrs.ra.deg
        lat[ok] = icrs.dec.deg
    return pd.DataFrame({"ra_deg": lon, "dec_deg": lat, "flag_detail": detail}, index=table.index)


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


def read_coordinates(source, *, ra=None, dec=None, frame: str = "icrs") -> pd.DataFrame:
    """Read and validate a user's coordinate list (strictly: any unusable row is an error).

    Parameters
    ----------
    source : path, DataFrame, dict or (n, 2) array
        A CSV file, a DataFrame, a mapping of columns, or an array of ``(ra, dec)`` rows
        (degrees). Coordinate columns are found by name (:data:`COORDINATE_COLUMNS`); values may
        be degrees or sexagesimal strings (:func:`parse_coordinates`). Other columns are kept.
    ra, dec : str, optional
        Column names to use (case-insensitive) instead of looking them up.
    frame : str, default='icrs'
        The input's frame (:data:`FRAMES`); coordinates are converted to ICRS.

    Returns
    -------
    pandas.DataFrame
        A copy whose coordinate columns are renamed ``ra``/``dec`` and hold float ICRS degrees
        (``ra`` in [0, 360), ``dec`` in [-90, 90]); the index is kept.

    Raises
    ------
    CoordinateError
        Missing columns, or rows that cannot be used; the message lists the offending rows
        (first 10) with the reason of each.

    Examples
    --------
    >>> read_coordinates({"ra": [331.7], "dec": [26.9]})
         ra   dec
    0  331.7  26.9
    >>> read_coordinates({"RAJ2000": ["22:06:48.0"], "DEJ2000": ["+26:57:00"]}).round(2)
          ra    dec
    0  331.7  26.95
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
        table = pd.DataFrame({ra or "ra": arr[:, 0], dec or "dec": arr[:, 1]})
    columns = None if ra is None and dec is None else (ra or "ra", dec or "dec")
    lon_col, lat_col = coordinate_columns(table, frame, columns)
    if len(table) == 0:
        raise CoordinateError("coordinate list is empty")
    parsed = parse_coordinates(table, frame, (str(lon_col), str(lat_col)))
    bad = (parsed["flag_detail"] != "").to_numpy()
    if bad.any():
        raise CoordinateError(invalid_rows_message(table.index[bad], parsed["flag_detail"][bad]))
    table = table.rename(columns={lon_col: "ra", lat_col: "dec"})
    table["ra"] = parsed["ra_deg"].to_numpy()
    table["dec"] = parsed["dec_deg"].to_numpy()
    return table


def invalid_rows_message(rows, details, limit: int = 10) -> str:
    """``'invalid coordinates in 3 row(s): row 1: ra missing; row 4: ...'`` (first ``limit`` rows)."""
    rows, details = list(rows), list(details)
    shown = "; ".join(f"row {r}: {d}" for r, d in zip(rows[:limit], details[:limit]))
    return f"invalid coordinates in {len(rows)} row(s): {shown}{' ...' if len(rows) > limit else ''}"


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
