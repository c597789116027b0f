"""Aligned multi-band cutouts: each band resampled so the object sits on the central pixel.

:class:`Cutter` turns the :class:`~stargal.align.Aligner`'s table into a float32 tensor
``(n, 5, size, size)`` (bands ``u, g, r, i, z``, nanomaggies). Every band is resampled from
its *own* frame around the object's position in *that* frame, so the object's sky position
falls exactly on pixel ``((size - 1) / 2, (size - 1) / 2)`` of all five bands, even though
the SDSS band frames are offset from each other by several pixels.

How it works (vectorised, one field and one band at a time)
------------------------------------------------------------
For an object at 0-based position ``x`` in a band (same for ``y``):

* integer base pixel ``ix = floor(x + 0.5)`` (the pixel containing ``x``) and fractional
  offset ``d = x - ix`` in ``[-0.5, 0.5)``;
* a stamp of ``size + 2k`` pixels centred on ``ix`` is gathered for *all* objects at once by
  fancy indexing (``k`` = kernel half-width: 3 for Lanczos-3, 2 for bicubic, 0 for nearest);
* output pixel ``j`` (``0..size-1``) samples the image at ``x + (j - (size - 1) / 2)``; with
  ``m`` the stamp index, its weight on stamp pixel ``m`` is ``K(m - j - k - d)``, normalised so
  each row of weights sums to 1 (flux conservation for smooth images). So a positive ``d``
  (object right of/above its base pixel centre) moves the sampling grid by ``+d``, bringing the
  object onto the centre;
* separable interpolation: ``out = Ky @ stamp @ Kx^T`` with ``Kx, Ky`` of shape
  ``(n, size, size + 2k)``.

Two engines compute this (:func:`resample_stamps`, ``engine=``): numpy (batched matrix
products) and, when numba imports, a compiled kernel (``stargal._cutout_kernels``; 2-3x faster
on one thread, optionally multi-threaded with ``Cutter(n_jobs=...)``); they agree to float32
rounding. The numba kernels are compiled on first use (a few seconds) and cached on disk.
Set the environment variable ``STARGAL_NUMBA=0`` to force numpy.

Interpolation choice
--------------------
``'lanczos3'`` (default): windowed sinc ``sinc(t) sinc(t / 3)``, ``|t| < 3``. It is the near-ideal
band-limited interpolator used for astronomical resampling (SWarp's default); SDSS images are
well sampled (seeing FWHM ~1.4" ~ 3.5 px at 0.396"/px), so Lanczos-3 preserves the PSF's shape,
centroid and flux; its small ringing (a few per cent next to sharp features) is acceptable.
``'bicubic'``: Keys' cubic convolution with ``a = -0.5`` (support 2 px), slightly smoother.
``'nearest'``: no resampling at all: the integer-pixel cutout around ``ix``; the object is then
off-centre by ``d`` (up to half a pixel, differently in each band), kept for comparison.

Rows flagged by the Aligner (``flag != ''``) get ``fill_value`` everywhere; output pixels whose
sample position falls outside the frame also get ``fill_value`` (flagged ``'edge'`` rows normally
never reach here).

Examples
--------
>>> from sklearn.pipeline import make_pipeline
>>> from stargal.align import Aligner
>>> from stargal.cutouts import Cutter
>>> pipe = make_pipeline(Aligner(fields=["8162-6-80"]), Cutter(size=15))   # doctest: +SKIP
>>> X = pipe.fit_transform(catalog)                                         # doctest: +SKIP
>>> X.shape, X.dtype                                                         # doctest: +SKIP
((1147, 5, 15, 15), dtype('float32'))
"""

from __future__ import annotations


import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from .fetch import get_fetcher
from .frames import Field
from ._validation import (N_JOBS, PATH_LIKE, POSITIVE_INT, Real, StrOptions, check_odd, table_input_tags,
                          validate_params)
from .align import check_aligned_table
from .sdss import BANDS

#: Values of :class:`Cutter`'s ``psf_source`` (see :func:`stargal.psf.field_psf`).
PSF_SOURCES = ("stars", "psfield", "auto")

__all__ = [
    "CUTOUT_SIZE",
    "PSF_SOURCES",
    "Cutter",
    "INTERPOLATIONS",
    "ENGINES",
    "kernel_weights",
    "resample_stamps",
    "centroid_offsets",
    "numba_available",
]

# the resampling lives in the shared helpers (stargal._imaging); its public names are re-exported
from ._imaging import (  # noqa: E402
    CUTOUT_SIZE, ENGINES, INTERPOLATIONS, _cut_into, centroid_offsets, kernel_weights, numba_available,
    resample_stamps,
)


class Cutter(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Aligned table -> float32 cutouts ``(n, 5, size, size)`` in nanomaggies.

    Stateless: :meth:`fit` only validates. Each band is resampled so the object's sky
    position is exactly on the central pixel ``(size - 1) / 2`` in every band (see the module
    docstring for the method, the sign convention and the interpolation choice). Fields are
    processed one at a time and released; work per band is chunked (bounded memory).

    Parameters
    ----------
    size : int, default=CUTOUT_SIZE
        Cutout side in pixels (15 by default); must be odd (an even size has no central pixel).
    interpolation : {'lanczos3', 'bicubic', 'nearest'}, default='lanczos3'
        Resampling kernel; ``'nearest'`` cuts at integer pixels without resampling.
    sas_url, cache_dir : str, optional
        Data source and cache (``None``: ``STARGAL_SAS_URL`` / ``STARGAL_CACHE`` / defaults).
    fill_value : float, default=nan
        Value of every pixel of rows flagged by the Aligner (``flag != ''``).
    n_jobs : int, optional
        Threads for the resampling when the numba engine is used (see
        :func:`resample_stamps`): ``None`` or 1 one thread, ``-1`` all CPUs numba may use.
        Leave it at 1 inside joblib/Dask workers, which already run in parallel.
    psf : bool, default=False
        Also cut the field's PSF model (:func:`stargal.psf.field_psf`) at every object's
        position in each band: the output then has 10 channels, the five images followed by
        the five PSF stamps (centred on the central pixel, unit sum over the cutout). This is
        the input of :class:`stargal.psf_channels.PSFChannels` and of the PSF-relative
        features of :class:`stargal.features.PhotometricFeatures`.
    psf_source : {'stars', 'psfield', 'auto'}, default='stars'
        Which PSF model (see :func:`stargal.psf.field_psf`): estimated from the frame's own
        stars, SDSS's psField, or the psField where the SAS has one.

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from stargal.align import Aligner
    >>> pipe = make_pipeline(Aligner(fields=["8162-6-80"], policy="flag"), Cutter())  # doctest: +SKIP
    >>> cutouts = pipe.fit_transform({"ra": [331.70], "dec": [26.95]})                 # doctest: +SKIP
    >>> cutouts.shape                                                                   # doctest: +SKIP
    (1, 5, 15, 15)
    """

    def __init__(self, size=CUTOUT_SIZE, interpolation="lanczos3", sas_url=None, cache_dir=None,
                 fill_value=np.nan, n_jobs=None, psf=False, psf_source="stars"):
        self.size = size
        self.psf = psf
        self.psf_source = psf_source
        self.interpolation = interpolation
        self.sas_url = sas_url
        self.cache_dir = cache_dir
        self.fill_value = fill_value
        self.n_jobs = n_jobs

    def __sklearn_tags__(self):
        return table_input_tags(super().__sklearn_tags__(), requires_fit=False)

    _parameter_constraints = {
        "size": POSITIVE_INT,
        "interpolation": [StrOptions(set(INTERPOLATIONS))],
        "sas_url": PATH_LIKE,
        "cache_dir": PATH_LIKE,
        "fill_value": [Real],
        "n_jobs": N_JOBS,
        "psf": ["boolean"],
        "psf_source": [StrOptions(set(PSF_SOURCES))],
    }
    _parameter_hints = {
        "size": "size must be a positive odd integer",
        "fill_value": "fill_value must be a real number (NaN allowed)",
        "n_jobs": "n_jobs must be None or a non-zero integer (-1: all CPUs)",
        "psf": "psf must be True or False",
    }

    def _check_params(self) -> None:
        validate_params(self)
        size = int(self.size)
        check_odd(self, "size", "an even cutout has no central pixel: the object would sit on a pixel "
                  "corner, half a pixel off-centre in an arbitrary direction (a 1-pixel ambiguity). "
                  f"Use {size - 1} or {size + 1}.")

    @staticmethod
    def _check_table(X) -> pd.DataFrame:
        return check_aligned_table(X, "Cutter", "Cutter(...)")

    def fit(self, X, y=None):
        """Validate the parameters and the table; nothing is learned.

        Parameters
        ----------
        X : DataFrame
            The :class:`~stargal.align.Aligner`'s output.
        y : ignored

        Returns
        -------
        self
        """
        self._check_params()
        self._check_table(X)
        return self

    def set_output(self, *, transform=None):
        """Accepted for pipeline compatibility; the output is always a 4-D numpy array."""
        return self

    def get_feature_names_out(self, input_features=None):
        """Names of the output channels: the bands, then (``psf=True``) ``psf_<band>``.

        Examples
        --------
        >>> Cutter(psf=True).get_feature_names_out().tolist()[4:6]
        ['z', 'psf_u']
        """
        names = list(BANDS) + ([f"psf_{b}" for b in BANDS] if self.psf else [])
        return np.asarray(names, dtype=object)

    def transform(self, X) -> np.ndarray:
        """Cut and resample every row's five bands.

        Parameters
        ----------
        X : DataFrame
            The Aligner's output: ``field_id``, ``x_<band>``, ``y_<band>`` (0-based pixels in
            each band's frame) and ``flag``.

        Returns
        -------
        ndarray, float32, shape (n, 5, size, size) or (n, 10, size, size) with ``psf=True``
            Bands ``u, g, r, i, z``; nanomaggies; rows in input order; flagged rows all
            ``fill_value``. With ``psf=True`` channels 5-9 are the unit-sum PSF stamps of
            the same bands at the object's position.
        """
        self._check_params()
        table = self._check_table(X)
        size = int(self.size)
        n = len(table)
        nb = len(BANDS)
        out = np.empty((n, 2 * nb if self.psf else nb, size, size), dtype=np.float32)
        if n == 0:
            return out
        flag = table["flag"].fillna("").astype(str).to_numpy() if "flag" in table.columns else np.full(n, "")
        fids = table["field_id"].fillna("").astype(str).to_numpy()
        ok = flag == ""
        out[~ok] = self.fill_value
        orphans = np.flatnonzero(ok & (fids == ""))
        if orphans.size:
            raise ValueError(
                f"Cutter: {orphans.size} unflagged row(s) have no field_id (rows "
                f"{list(table.index[orphans[:10]])}); the table does not look like an Aligner output"
            )
        fetcher = get_fetcher(sas_url=self.sas_url, cache_dir=self.cache_dir)
        for fid in dict.fromkeys(fids[ok]):
            idx = np.flatnonzero(ok & (fids == fid))
            field = Field(fid, fetcher)
            try:
                self._cut_rows(out, idx, table, field, field.fetcher, size)
            finally:
                field.release()
        return out

    def cut_field(self, X, field) -> np.ndarray:
        """Cut the rows of ``X`` from the frames of one given :class:`~stargal.frames.Field` object.

        Like :meth:`transform`, but the images come from ``field`` instead of the cache: e.g. an
        in-memory :class:`stargal.inject.InjectedField` holding copies of a field's frames with
        synthetic sources added. Every row must be unflagged and on that field (``field_id``);
        the PSF channels (``psf=True``) are the real field's PSF model.
        """
        self._validate_params()
        table = self._check_table(X)
        size = int(self.size)
        nb = len(BANDS)
        out = np.empty((len(table), 2 * nb if self.psf else nb, size, size), dtype=np.float32)
        if len(table) == 0:
            return out
        flag = table["flag"].fillna("").astype(str).to_numpy() if "flag" in table.columns else np.full(len(table), "")
        fids = table["field_id"].fillna("").astype(str).to_numpy()
        bad = np.flatnonzero((flag != "") | (fids != field.name))
        if bad.size:
            raise ValueError(f"Cutter.cut_field: {bad.size} row(s) are flagged or not on field {field.name} "
                             f"(rows {list(table.index[bad[:10]])})")
        self._cut_rows(out, np.arange(len(table)), table, field, field.fetcher, size)
        return out

    def _cut_rows(self, out, idx, table, field, fetcher, size):
        """Rows ``idx`` of ``table``, all on ``field``, into ``out`` (images, then PSF stamps)."""
        for bi, band in enumerate(BANDS):
            frame = field.frame(band)
            x = np.ascontiguousarray(table[f"x_{band}"].to_numpy(dtype=np.float64)[idx])
            y = np.ascontiguousarray(table[f"y_{band}"].to_numpy(dtype=np.float64)[idx])
            _cut_into(out, idx, bi, frame.image, x, y, size, self.interpolation, self.fill_value,
                      self.n_jobs)
        if self.psf:
            self._cut_psf(out, idx, table, field, fetcher, size)

    def _cut_psf(self, out, idx, table, field, fetcher, size):
        """PSF stamps of one field's rows ``idx`` into channels 5-9 of ``out``."""
        from .psf import field_psf  # the PSF model of the field (cached per field)

        model = field_psf(field, fetcher, source=self.psf_source)
        nb = len(BANDS)
        for bi, band in enumerate(BANDS):
            x = table[f"x_{band}"].to_numpy(dtype=np.float64)[idx]
            y = table[f"y_{band}"].to_numpy(dtype=np.float64)[idx]
            # as a point source at (x, y) looks after this cutter's resampling (sub-pixel phase)
            out[idx, nb + bi] = model.stamps(band, x, y, size, resampled=self.interpolation != "nearest")
