"""The PSF of a field, per band: which model, measured once and cached (:func:`field_psf`).

SDSS types an object as a galaxy when it is broader than *that field's* PSF, so models must
know each field's PSF. :func:`field_psf` gives a :class:`~stargal.psf_model.FieldPSF` whose
band models come from (``FieldPSF.source[band]``):

``'stars'``
    :func:`stargal.psf_stars.estimate_psf`: a stack of the frame's own bright, isolated,
    unsaturated point sources, found without any catalog.
``'psfield'``
    :func:`stargal.psfield.psfield_psf`: SDSS's own PSF model (the field's ``psField``).
``'gaussian'``
    Fallback for a band with fewer than :data:`~stargal.psf_stars.MIN_STARS` usable stars and no
    psField: a constant circular Gaussian whose width is the frame's own measured seeing
    (:func:`stargal.psf_stars.measured_seeing`). Always announced with a :class:`PSFWarning`
    naming the field; ``FieldPSF.notes[band]`` says why.

Caching: the model is stored as JSON beside the field's decompressed frames
(``psf-RRRRRR-C-FFFF.<source>.v<N>-<R>.json``, written atomically; ``N`` = :data:`PSF_VERSION`,
``R`` = :data:`stargal.registration.REGISTRATION_VERSION`, whose reference stars it uses), kept in
a per-process memo, and rebuilt (with a :class:`PSFWarning`) when unreadable
(:func:`stargal._io.cached_json`).

The model classes, the star-based estimate and the psField reader live in
:mod:`stargal.psf_model`, :mod:`stargal.psf_stars` and :mod:`stargal.psfield`; their public
names are importable from here too.

Examples
--------
>>> psf = field_psf("8162-6-80", sas_url="file:///data/sdss")          # doctest: +SKIP
>>> psf.source["r"], psf.n_stars["r"], round(psf.fwhm("r"), 2)          # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ._imaging import FWHM_PER_SIGMA
from ._imaging import half_max_area_fwhm as measure_fwhm
from ._io import cached_json
from .fetch import FetchError
from .frames import Field, MissingBandError, decompressed_paths
from .psf_model import (PSF_STAMP, PSF_VERSION, SOURCES, BandPSF, FieldPSF, PSFWarning,
                        gaussian_band_psf)
from .psf_stars import (DEFAULT_SEEING_ARCSEC, MIN_STARS, MIN_STARS_LINEAR, MIN_STARS_QUADRATIC, PSF_CRITERIA,
                        InsufficientStarsError, estimate_psf, measured_seeing, psf_star_table)
from .psfield import psfield_psf
from .registration import REGISTRATION_VERSION
from .sdss import BANDS, FRAME_SHAPE, PIXEL_SCALE_ARCSEC, FieldID, frame_path, psfield_path

#: The SDSS frame shape under its former name here (:data:`stargal.sdss.FRAME_SHAPE`).
SDSS_FRAME_SHAPE = FRAME_SHAPE

__all__ = [
    "PSF_STAMP",
    "PSF_VERSION",
    "MIN_STARS",
    "MIN_STARS_LINEAR",
    "MIN_STARS_QUADRATIC",
    "DEFAULT_SEEING_ARCSEC",
    "PIXEL_SCALE_ARCSEC",
    "SDSS_FRAME_SHAPE",
    "SOURCES",
    "PSF_CRITERIA",
    "BandPSF",
    "FieldPSF",
    "PSFWarning",
    "InsufficientStarsError",
    "estimate_psf",
    "psfield_psf",
    "field_psf",
    "measure_fwhm",
    "psf_star_table",
]

_MEMO: dict = {}  # per-process memo of field_psf (stargal._io.cached_json)


# ----------------------------------------------------------------------------- per field, cached
def _cache_path(cache_dir, fid: FieldID, source: str) -> Path:
    # the reference stars come with the registration: its version is part of the name
    npy, _ = decompressed_paths(Path(cache_dir), frame_path(fid, "r"))
    return npy.with_name(f"psf-{fid.padded}.{source}.v{PSF_VERSION}-{REGISTRATION_VERSION}.json")


def _warn(msg: str) -> None:
    warnings.warn(msg, PSFWarning, stacklevel=3)


def _try_psfield(field: Field, bands, shape):
    """:func:`psfield_psf`, with a download or read failure (other than a 404) reported as a
    warning and treated as "no psField", so that a PSF model is always returned."""
    try:
        return psfield_psf(field.fid, field.fetcher, bands=bands, shape=shape)
    except (FetchError, OSError, ValueError, KeyError, IndexError) as exc:
        _warn(f"field {field.fid}: the psField {psfield_path(field.fid)} could not be used "
              f"({exc}); treating it as absent")
        return None


def _build(field: Field, source: str) -> FieldPSF:
    fid = field.fid
    present = []
    for b in BANDS:
        try:
            field.frame(b)
            present.append(b)
        except MissingBandError:
            pass
    missing = [b for b in BANDS if b not in present]
    if missing:
        _warn(f"field {fid}: no frame in band(s) {', '.join(missing)}: no PSF model for them")
    shape = field.frame(present[0]).shape if present else FRAME_SHAPE
    psfield = None
    if source in ("psfield", "auto"):
        psfield = _try_psfield(field, present, shape)
        if psfield is not None:
            return psfield
        if source == "psfield":
            _warn(f"field {fid}: no psField ({psfield_path(fid)}); "
                  "using the PSF estimated from the frame's stars")
    models = {}
    tried_psfield = source in ("psfield", "auto")
    for b in present:
        try:
            models[b] = estimate_psf(field, b)
            continue
        except InsufficientStarsError as exc:
            reason = str(exc)
        if not tried_psfield:
            psfield = _try_psfield(field, present, shape)
            tried_psfield = True
        if psfield is not None and b in psfield.models:
            m = psfield.models[b]
            m.note = f"{reason}: SDSS psField used" + (f"; {m.note}" if m.note else "")
            models[b] = m
            _warn(f"{reason}; using SDSS's psField instead")
            continue
        sigma, what = measured_seeing(field, b)
        frame = field.frame(b)
        fwhm = sigma * FWHM_PER_SIGMA * frame.pixel_scale
        note = f"{reason}; no psField: constant Gaussian, FWHM {fwhm:.2f}\" ({what})"
        models[b] = gaussian_band_psf(b, sigma, frame.shape, PSF_STAMP, frame.pixel_scale, note)
        _warn(note)
    return FieldPSF(fid, models)


def field_psf(field, fetcher=None, *, sas_url=None, cache_dir=None, source: str = "stars",
              refresh: bool = False) -> FieldPSF:
    """The PSF model of a field (all its bands), measured once and cached.

    Parameters
    ----------
    field : Field or str
        An open :class:`~stargal.frames.Field` (its fetcher is used) or a field id string.
    fetcher, sas_url, cache_dir
        Data source when ``field`` is a string.
    source : {'stars', 'psfield', 'auto'}, default='stars'
        ``'stars'``: :func:`estimate_psf` per band. ``'psfield'``: SDSS's psField
        (:func:`psfield_psf`); when the field has none, the star estimate with a
        :class:`PSFWarning`. ``'auto'``: the psField when there is one, else the stars (no warning).
    refresh : bool
        Measure again even when cached.

    Returns
    -------
    FieldPSF
        ``source[band]`` tells where each band's model came from. A band with fewer than
        :data:`MIN_STARS` usable stars falls back to the psField when the field has one, else to
        a constant Gaussian of the frame's own measured seeing; either way a :class:`PSFWarning`
        names the field and ``notes[band]`` says why. A band whose frame is missing has no
        model (warning) and is absent from ``bands``.

    Notes
    -----
    The model is cached as ``psf-RRRRRR-C-FFFF.<source>.v<N>-<R>.json`` beside the field's
    decompressed frames (atomic write), plus a per-process memo (:func:`stargal._io.cached_json`).
    A cache file that cannot be read is rebuilt with a :class:`PSFWarning`; one that cannot be
    written only costs a warning.
    The warnings about fallbacks are issued when the model is built, not when it is read from
    the cache (its ``source`` and ``notes`` still record them).

    Examples
    --------
    >>> psf = field_psf("8162-6-80", sas_url="file:///data/sdss")          # doctest: +SKIP
    >>> psf.source["r"], psf.n_stars["r"], round(psf.fwhm("r"), 2)          # doctest: +SKIP
    """
    if source not in ("stars", "psfield", "auto"):
        raise ValueError(f"source must be 'stars', 'psfield' or 'auto', got {source!r}")
    if not isinstance(field, Field):
        field = Field(field, fetcher, sas_url=sas_url, cache_dir=cache_dir)
    fid = field.fid

    def parse(data: dict) -> FieldPSF:
        if data.get("fid") != str(fid):
            raise ValueError(f"cache holds field {data.get('fid')!r}")
        return FieldPSF.from_dict(data)

    return cached_json(_cache_path(field.fetcher.cache_dir, fid, source),
                       lambda: _build(field, source).to_dict(), parse, memo=_MEMO, refresh=refresh,
                       what=f"field {fid}: PSF model", category=PSFWarning)
