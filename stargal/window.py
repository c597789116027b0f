"""Which SDSS field holds an RA/Dec: a compact index of SDSS's own ``window_flist``.

The SAS file ``dr17/eboss/resolve/2013-07-29/window_flist.fits`` lists every imaging field
of the survey (about 0.5 GB on the real SAS) with its run, camcol, field and its extent in
the survey's **great-circle coordinates**: each scan follows a great circle with ascending
node ``NODE`` and inclination ``INCL`` (degrees); along it a field spans great-circle
longitude ``[MU_START, MU_END]`` and latitude ``[NU_START, NU_END]`` (degrees).

This module reads that file through the :class:`~stargal.fetch.Fetcher` (so it is cached
and healed like every other SAS file), keeps only the columns it needs, **read by name**
(``RUN``, ``CAMCOL``, ``FIELD``, ``NODE``, ``INCL``, ``MU_START``, ``MU_END``, ``NU_START``,
``NU_END``; ``RERUN`` and ``SCORE`` when present; the real file's many other columns are
ignored), and writes them to a small ``.npz`` beside the cached FITS file::

    <cache>/dr17/eboss/resolve/2013-07-29/window_flist.fits
    <cache>/dr17/eboss/resolve/2013-07-29/window_flist.index-v1.npz

The ``.npz`` is written atomically (temporary file, ``fsync``, ``os.replace``), records the
size and modification time of the FITS file it was built from, and is rebuilt when it is
stale or unreadable. Within a process the index is kept in memory, so the FITS file is read
once per cache, not once per call.

A point lies in a field when, converted to ``(mu, nu)`` with that row's ``NODE``/``INCL``
(:func:`radec_to_munu`), it falls inside the field's box. Neighbouring fields of a run (and
of neighbouring camcols and repeated scans) overlap; :meth:`WindowIndex.lookup` ranks the
fields that hold a point by how far inside the box the point lies (degrees on the sky), then
by ``SCORE``. The final choice is confirmed with the frames' own WCS by
:class:`stargal.align.Aligner` (``fields="window"``).

Units: RA, Dec, mu, nu, NODE, INCL and every distance here are in **degrees**.

Examples
--------
>>> index = load_window_index(sas_url="file:///data/sdss")            # doctest: +SKIP
>>> index.locate([283.374], [-1.372])                                     # doctest: +SKIP
array(['5405-6-99'], dtype=object)
"""

from __future__ import annotations

import copy
import threading
import warnings
from pathlib import Path

import numpy as np

from ._io import atomic_write_bytes
from .fetch import get_fetcher
from .sdss import DEFAULT_RERUN

__all__ = [
    "WINDOW_FLIST_PATH",
    "INDEX_VERSION",
    "REQUIRED_COLUMNS",
    "OPTIONAL_COLUMNS",
    "WindowIndex",
    "WindowIndexError",
    "load_window_index",
    "index_path",
    "radec_to_munu",
    "munu_to_radec",
]

#: Relative SAS path of SDSS's field index.
WINDOW_FLIST_PATH = "dr17/eboss/resolve/2013-07-29/window_flist.fits"
#: Version of the compact index format (part of its file name).
INDEX_VERSION = 1
#: Columns read from ``window_flist`` (by name); a file without any of them is refused.
REQUIRED_COLUMNS = ("RUN", "CAMCOL", "FIELD", "NODE", "INCL", "MU_START", "MU_END", "NU_START", "NU_END")
#: Columns read when present: ``RERUN`` (only rerun 301 rows are kept) and ``SCORE`` (default 1.0).
OPTIONAL_COLUMNS = ("RERUN", "SCORE")

_FLOAT_COLS = ("node", "incl", "mu_start", "mu_end", "nu_start", "nu_end", "score")
# Boxes larger than this (half-diagonal, degrees) are tested against every point instead of going
# into the tree, so that one odd row cannot inflate the tree's search radius for all the others.
_MAX_TREE_RADIUS_DEG = 1.0
_MAX_BIG_ROWS = 100
_LOOKUP_CHUNK = 50_000  # points per tree query (bounds the memory of the candidate pairs)
_MEMO: dict = {}
_MEMO_LOCK = threading.Lock()


class WindowIndexError(ValueError):
    """``window_flist`` lacks a needed column or holds no usable rows."""


# --------------------------------------------------------------------------- geometry
def radec_to_munu(ra, dec, node, incl) -> tuple[np.ndarray, np.ndarray]:
    """Equatorial ``(ra, dec)`` -> SDSS great-circle ``(mu, nu)``, all in degrees.

    Parameters
    ----------
    ra, dec : array-like
        ICRS coordinates, degrees.
    node, incl : array-like
        Ascending node (RA, degrees) and inclination (degrees) of the scan's great circle;
        broadcast against ``ra``/``dec``.

    Returns
    -------
    mu, nu : numpy.ndarray
        Great-circle longitude in ``[0, 360)`` and latitude in ``[-90, 90]``, degrees
        (the convention of SDSS's ``radec_to_munu``).
    """
    ra, dec = np.deg2rad(np.asarray(ra, float)), np.deg2rad(np.asarray(dec, float))
    node, incl = np.deg2rad(np.asarray(node, float)), np.deg2rad(np.asarray(incl, float))
    x1 = np.cos(dec) * np.cos(ra - node)
    y1 = np.cos(dec) * np.sin(ra - node)
    z1 = np.sin(dec)
    y2 = y1 * np.cos(incl) + z1 * np.sin(incl)
    z2 = -y1 * np.sin(incl) + z1 * np.cos(incl)
    mu = np.rad2deg(np.arctan2(y2, x1) + node) % 360.0
    nu = np.rad2deg(np.arcsin(np.clip(z2, -1.0, 1.0)))
    return mu, nu


def munu_to_radec(mu, nu, node, incl) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`radec_to_munu`: ``(mu, nu)`` -> ``(ra, dec)``, degrees (RA in [0, 360))."""
    mu, nu = np.deg2rad(np.asarray(mu, float)), np.deg2rad(np.asarray(nu, float))
    node, incl = np.deg2rad(np.asarray(node, float)), np.deg2rad(np.asarray(incl, float))
    x2 = np.cos(nu) * np.cos(mu - node)
    y2 = np.cos(nu) * np.sin(mu - node)
    z2 = np.sin(nu)
    y1 = y2 * np.cos(incl) - z2 * np.sin(incl)
    z1 = y2 * np.sin(incl) + z2 * np.cos(incl)
    ra = np.rad2deg(np.arctan2(y1, x2) + node) % 360.0
    dec = np.rad2deg(np.arcsin(np.clip(z1, -1.0, 1.0)))
    return ra, dec


def _unit(ra, dec) -> np.ndarray:
    ra, dec = np.deg2rad(ra), np.deg2rad(dec)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


# ------------------------------------------------------------------------------ index
class WindowIndex:
    """Field boxes of ``window_flist`` and a spatial tree for point lookups.

    Parameters
    ----------
    columns : dict of str to numpy.ndarray
        Equal-length arrays ``run``, ``camcol``, ``field`` (ints) and ``node``, ``incl``,
        ``mu_start``, ``mu_end``, ``nu_start``, ``nu_end``, ``score`` (floats, degrees
        except ``score``), one entry per field. Usually built by :func:`load_window_index`.

    Attributes
    ----------
    columns : dict of str to numpy.ndarray
        As given.
    radius_deg : float
        Largest distance (degrees) from a field's box centre to its corners: the search
        radius of the spatial pre-selection.

    Examples
    --------
    >>> idx = WindowIndex({"run": [1], "camcol": [1], "field": [10], "node": [95.0], "incl": [0.0],
    ...                    "mu_start": [100.0], "mu_end": [100.2], "nu_start": [-0.1], "nu_end": [0.1],
    ...                    "score": [1.0]})
    >>> idx.locate([100.1, 50.0], [0.0, 0.0]).tolist()
    ['1-1-10', '']
    """

    def __init__(self, columns):
        cols = {k: np.asarray(v) for k, v in columns.items()}
        n = {len(v) for v in cols.values()}
        if len(n) != 1:
            lengths = {k: len(v) for k, v in cols.items()}
            raise WindowIndexError(f"window index columns differ in length: {lengths}")
        if cols["run"].size == 0:
            raise WindowIndexError("window index holds no fields")
        for k in ("run", "camcol", "field"):
            cols[k] = cols[k].astype(np.int64)
        for k in _FLOAT_COLS:
            cols[k] = cols[k].astype(np.float64)
        self.columns = cols
        # box extent (mu may wrap through 360) and centre on the sky
        self._mu_ext = (cols["mu_end"] - cols["mu_start"]) % 360.0
        mu_c = cols["mu_start"] + self._mu_ext / 2
        nu_c = (cols["nu_start"] + cols["nu_end"]) / 2
        ra_c, dec_c = munu_to_radec(mu_c, nu_c, cols["node"], cols["incl"])
        half = 0.5 * np.hypot(self._mu_ext, cols["nu_end"] - cols["nu_start"])
        big = half > _MAX_TREE_RADIUS_DEG
        if big.sum() > _MAX_BIG_ROWS:  # not a few odd rows but the layout itself: all go in the tree
            big[:] = False
        self._big_rows = np.flatnonzero(big)
        self._tree_rows = np.flatnonzero(~big)
        self.radius_deg = float(np.max(half[~big])) * 1.01 + 1e-6 if self._tree_rows.size else 0.0
        from scipy.spatial import cKDTree

        self._tree = cKDTree(_unit(ra_c[~big], dec_c[~big])) if self._tree_rows.size else None
        self._names = None

    def __len__(self) -> int:
        return int(self.columns["run"].size)

    def __repr__(self) -> str:
        return f"WindowIndex({len(self)} fields)"

    @property
    def field_ids(self) -> np.ndarray:
        """``'RUN-CAMCOL-FIELD'`` of every row (object array)."""
        if self._names is None:
            c = self.columns
            self._names = np.array([f"{r}-{cc}-{f}" for r, cc, f in zip(c["run"], c["camcol"], c["field"])],
                                   dtype=object)
        return self._names

    def lookup(self, ra, dec, max_candidates: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """The fields whose box holds each point, best first.

        Parameters
        ----------
        ra, dec : array-like
            Degrees. NaN or out-of-range values hold no field.
        max_candidates : int, default=3
            How many containing fields to return per point.

        Returns
        -------
        fields : numpy.ndarray of object, shape (n, max_candidates)
            Field strings (``'5405-6-99'``), ``''`` where fewer fields hold the point.
        inset : numpy.ndarray of float, shape (n, max_candidates)
            How far inside each field's box the point lies: the smallest distance to any of
            the box's four edges, in degrees on the sky (``nan`` where no field). Candidates
            are sorted by ``inset`` (largest first), then by ``SCORE``.
        """
        ra = np.atleast_1d(np.asarray(ra, float))
        dec = np.atleast_1d(np.asarray(dec, float))
        n, k = ra.size, int(max_candidates)
        if n > _LOOKUP_CHUNK:
            parts = [self.lookup(ra[i:i + _LOOKUP_CHUNK], dec[i:i + _LOOKUP_CHUNK], k)
                     for i in range(0, n, _LOOKUP_CHUNK)]
            return np.concatenate([f for f, _ in parts]), np.concatenate([d for _, d in parts])
        fields = np.full((n, k), "", dtype=object)
        inset = np.full((n, k), np.nan)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(ra) & np.isfinite(dec) & (dec >= -90) & (dec <= 90)
        if not ok.any():
            return fields, inset
        pts = np.flatnonzero(ok)
        p, r = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)  # (point, row) pairs to test
        if self._tree is not None:
            chord = 2 * np.sin(np.deg2rad(self.radius_deg) / 2)
            hits = self._tree.query_ball_point(_unit(ra[pts], dec[pts]), r=chord)
            lens = np.fromiter((len(h) for h in hits), dtype=np.int64, count=len(hits))
            p = np.repeat(pts, lens)
            r = self._tree_rows[np.fromiter((j for h in hits for j in h), dtype=np.int64, count=int(lens.sum()))]
        if self._big_rows.size:
            p = np.concatenate([p, np.repeat(pts, self._big_rows.size)])
            r = np.concatenate([r, np.tile(self._big_rows, pts.size)])
        if p.size == 0:
            return fields, inset
        c = self.columns
        mu, nu = radec_to_munu(ra[p], dec[p], c["node"][r], c["incl"][r])
        dmu = (mu - c["mu_start"][r]) % 360.0
        d = np.minimum.reduce([dmu * np.cos(np.deg2rad(nu)),
                               (self._mu_ext[r] - dmu) * np.cos(np.deg2rad(nu)),
                               nu - c["nu_start"][r], c["nu_end"][r] - nu])
        inside = d >= 0
        p, r, d = p[inside], r[inside], d[inside]
        if p.size == 0:
            return fields, inset
        order = np.lexsort((-c["score"][r], -d, p))     # by point, then inset desc, then score desc
        p, r, d = p[order], r[order], d[order]
        first = np.r_[0, np.flatnonzero(np.diff(p)) + 1]
        rank = np.arange(p.size) - np.repeat(first, np.diff(np.r_[first, p.size]))
        keep = rank < k
        names = self.field_ids
        fields[p[keep], rank[keep]] = names[r[keep]]
        inset[p[keep], rank[keep]] = d[keep]
        return fields, inset

    def locate(self, ra, dec) -> np.ndarray:
        """The best field holding each point (``''`` where none): first column of :meth:`lookup`."""
        return self.lookup(ra, dec, max_candidates=1)[0][:, 0]

    def candidates(self, ra, dec, rows=None, max_candidates: int = 3) -> dict[str, np.ndarray]:
        """Field -> the rows whose point its box holds (up to ``max_candidates`` fields a row).

        ``rows`` (default ``0..n-1``) label the points; fields holding the most rows come first
        (so that the rows of one field are handled together), each with its rows sorted.
        """
        rows = np.arange(np.size(ra)) if rows is None else np.asarray(rows)
        names, _ = self.lookup(ra, dec, max_candidates=max_candidates)
        flat = names.ravel()
        owner = np.repeat(rows, names.shape[1])
        has = flat != ""
        out: dict[str, np.ndarray] = {}
        if has.any():
            uniq, inv = np.unique(flat[has], return_inverse=True)
            members = np.argsort(inv, kind="stable")
            bounds = np.r_[0, np.cumsum(np.bincount(inv, minlength=uniq.size))]
            for j in np.argsort(-np.diff(bounds), kind="stable"):
                out[str(uniq[j])] = np.unique(owner[has][members[bounds[j]:bounds[j + 1]]])
        return out

    # ---------------------------------------------------------------- persistence
    @classmethod
    def from_fits(cls, path) -> "WindowIndex":
        """Read the needed columns of a ``window_flist`` FITS file (by name; others ignored)."""
        from astropy.io import fits

        with fits.open(path, memmap=True) as hdul:
            if len(hdul) < 2 or not hasattr(hdul[1], "columns"):
                raise ValueError(f"{path}: no binary table in HDU 1 (damaged or not a window_flist file)")
            data = hdul[1].data
            names = {n.upper(): n for n in hdul[1].columns.names}
            missing = [c for c in REQUIRED_COLUMNS if c not in names]
            if missing:
                raise WindowIndexError(f"{path}: window_flist lacks column(s) {missing} "
                                       f"(has {sorted(names)[:20]})")
            cols = {c.lower(): np.array(data[names[c]]) for c in REQUIRED_COLUMNS}
            n = cols["run"].size
            cols["score"] = (np.array(data[names["SCORE"]], dtype=float) if "SCORE" in names
                             else np.ones(n))
            keep = np.ones(n, dtype=bool)
            if "RERUN" in names:
                rerun = np.char.strip(np.asarray(data[names["RERUN"]]).astype(str))
                keep &= rerun == str(DEFAULT_RERUN)
        for key in ("node", "incl", "mu_start", "mu_end", "nu_start", "nu_end"):
            keep &= np.isfinite(cols[key].astype(float))
        cols = {k: v[keep] for k, v in cols.items()}
        if not keep.any():
            raise WindowIndexError(f"{path}: no usable rerun-{DEFAULT_RERUN} rows in window_flist")
        return cls(cols)

    def save(self, path, source_stat=None) -> None:
        """Write the compact index to ``path`` (``.npz``) atomically."""
        path = Path(path)
        payload = {k: self.columns[k] for k in ("run", "camcol", "field") + _FLOAT_COLS}
        payload["version"] = np.array(INDEX_VERSION)
        if source_stat is not None:
            payload["source_size"] = np.array(int(source_stat.st_size))
            payload["source_mtime_ns"] = np.array(int(source_stat.st_mtime_ns))
        atomic_write_bytes(path, lambda fh: np.savez(fh, **payload))

    @classmethod
    def load(cls, path, source_stat=None) -> "WindowIndex":
        """Read an index written by :meth:`save`; ``ValueError`` if stale, foreign or unreadable."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["version"]) != INDEX_VERSION:
                    raise ValueError(f"index version {int(z['version'])} != {INDEX_VERSION}")
                if source_stat is not None and (
                        int(z["source_size"]) != source_stat.st_size
                        or int(z["source_mtime_ns"]) != source_stat.st_mtime_ns):
                    raise ValueError("built from another copy of window_flist (stale)")
                cols = {k: z[k] for k in ("run", "camcol", "field") + _FLOAT_COLS}
        except (OSError, KeyError, EOFError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from exc
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 - zipfile.BadZipFile and friends
            raise ValueError(f"cannot read {path}: {exc}") from exc
        return cls(cols)


def index_path(fetcher) -> Path:
    """Where the compact index of ``fetcher``'s cache lives (beside the cached FITS file)."""
    fits_path = fetcher.cached_path(WINDOW_FLIST_PATH)
    return fits_path.with_name(f"{fits_path.stem}.index-v{INDEX_VERSION}.npz")


def load_window_index(fetcher=None, *, sas_url=None, cache_dir=None) -> WindowIndex:
    """The field index of a SAS (fetched, cached and kept in memory).

    The first call for a cache fetches ``window_flist.fits`` (through
    :meth:`stargal.fetch.Fetcher.read`: a cached copy that cannot be read is named in a
    warning, removed and fetched again once) and writes the compact ``.npz``; later calls
    read the ``.npz`` (or this process's copy in memory).

    Parameters
    ----------
    fetcher : Fetcher, optional
        Data source and cache; default from ``sas_url`` / ``cache_dir`` / environment.

    Returns
    -------
    WindowIndex

    Raises
    ------
    stargal.fetch.NotFoundError
        The SAS has no ``window_flist.fits``.
    stargal.fetch.CorruptFileError
        The file cannot be read even after fetching it again (the message names it).
    WindowIndexError
        The file lacks a needed column.
    """
    fetcher = get_fetcher(fetcher, sas_url=sas_url, cache_dir=cache_dir)
    npz = index_path(fetcher)
    fits_path = fetcher.cached_path(WINDOW_FLIST_PATH)
    key = str(npz)
    if fits_path.is_file():
        st = fits_path.stat()
        with _MEMO_LOCK:
            hit = _MEMO.get(key)
        if hit is not None and hit[0] == (st.st_size, st.st_mtime_ns):
            return hit[1]
        if npz.is_file():
            try:
                index = WindowIndex.load(npz, st)
            except ValueError as exc:
                if "stale" not in str(exc):
                    warnings.warn(f"window index {npz} cannot be read ({exc}); rebuilding it from "
                                  f"{fits_path}", RuntimeWarning, stacklevel=2)
            else:
                with _MEMO_LOCK:
                    _MEMO[key] = ((st.st_size, st.st_mtime_ns), index)
                return index
    if not fits_path.is_file():  # ~0.5 GB on the real SAS: show the download (a byte progress bar)
        fetcher = copy.copy(fetcher)
        fetcher.quiet = False
    index = fetcher.read(WINDOW_FLIST_PATH, WindowIndex.from_fits, passthrough=(WindowIndexError,))
    st = fits_path.stat()
    try:
        index.save(npz, st)
    except OSError as exc:
        warnings.warn(f"could not write the window index {npz}: {exc}", RuntimeWarning, stacklevel=2)
    with _MEMO_LOCK:
        _MEMO[key] = ((st.st_size, st.st_mtime_ns), index)
    return index

