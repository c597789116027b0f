"""Inject synthetic sources into copies of a field's real frames, and a sampler that trains on them.

Source injection (as Balrog does for DES, synthetic-source injection for HSC and LSST) keeps
everything real but the sources: the sky, its noise, the neighbours, the PSF and the band-to-band
astrometry are the field's own, and the truth (kind, flux, size) is exact.

How a source is placed
----------------------
A source is defined on the sky (RA/Dec). :class:`~stargal.align.Aligner` maps it into every band's
own frame (that band's WCS plus the field's registration), exactly as it maps a real object, and
the renderer (:func:`stargal.synth.render_source`) draws it there at its sub-pixel position with
that band's PSF model at that position. The same Aligner positions and
:meth:`stargal.cutouts.Cutter.cut_field` then cut it, so injected sources carry the same
band-to-band offsets as real ones and pass through the same resampling.

Positions are **refused and counted, never moved** (:data:`REFUSALS`): ``'off_frame'`` (the Aligner
flags the position: outside or too near an edge of some band's frame for a full cutout),
``'masked'`` (a non-finite pixel within :data:`MASK_RADIUS_PX` of it in some band),
``'near_source'`` (closer than ``min_separation_arcsec`` to a pixel of a detected source, see
:func:`detection_distance`) and ``'near_injected'`` (closer than that to a source injected before
it). :func:`inject_random` draws fresh positions (never nudges refused ones) until it has enough.

Noise
-----
The frames are real, so the sky's Poisson noise, read noise and the real sources' noise are
already in every pixel. What an added source lacks is **its own** Poisson noise: per pixel, the
source's model ``m`` (nanomaggies) is ``lam = m * gain / calib[x]`` photo-electrons, with
``calib[x]`` the frame's per-column calibration (HDU1, nanomaggies per count) and ``gain`` the
camera's electrons per count (:data:`stargal.noise.GAIN`); the pixel gets ``(Poisson(lam) - lam) * calib[x] /
gain`` added. The sky level behind the frame (HDU2, counts) is read too, to state how much of the
measured sky noise is the sky's own Poisson noise (:attr:`FrameCalibration.sky_sigma_nmgy`).

Injected frames live only in memory (:class:`InjectedField`, copies of the five band images); no
injected pixel is ever written to disk. The one file this module writes is a small cache of each
real frame's own calibration vector and sky level (``<frame>.calib.npz`` beside the decompressed
frame, atomic), because reading HDU1 means decompressing the whole ``.fits.bz2`` (seconds).

Examples
--------
>>> from stargal.frames import open_field                                          # doctest: +SKIP
>>> field = open_field("1035-6-17")                                                # doctest: +SKIP
>>> pop = SyntheticPopulation(measured_photometry(["1035-6-17"]))                  # doctest: +SKIP
>>> res = inject_random(field, pop, 200, random_state=0)                           # doctest: +SKIP
>>> X = Cutter(size=15, psf=True).cut_field(res.table, res.field)                  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field as dc_field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from ._imaging import CUTOUT_SIZE
from ._validation import PATH_LIKE, Integral, Interval, Real, StrOptions, validate_params
from ._validation import check_range as _check_range
from .frames import Field, Frame
from .noise import GAIN, FrameCalibration, camera_gain, frame_calibration  # noqa: F401 - re-exported
from .sdss import BANDS, FieldID
from .synth import (HLR_RANGE_ARCSEC, MAG_RANGE, PIXEL_SCALE_ARCSEC, SERSIC_RANGE, SyntheticPopulation,
                    measured_photometry, render_source)

__all__ = [
    "GAIN",
    "REFUSALS",
    "MASK_RADIUS_PX",
    "MIN_SEPARATION_ARCSEC",
    "PSF_STAMP_PX",
    "camera_gain",
    "FrameCalibration",
    "frame_calibration",
    "detection_distance",
    "InjectedField",
    "Injection",
    "random_positions",
    "check_positions",
    "inject",
    "inject_random",
    "SyntheticInjector",
]

#: Why a position was refused (keys of the counts).
REFUSALS = ("off_frame", "masked", "near_source", "near_injected")
#: A non-finite pixel this close (pixels) to a position, in any band, makes it 'masked'.
MASK_RADIUS_PX = 5.0
#: Default minimum distance (arcsec) from any detected source's pixels and from other injected sources.
MIN_SEPARATION_ARCSEC = 4.0
#: Side of the PSF stamps the renderer convolves with (pixels).
PSF_STAMP_PX = 25
#: detection: threshold (sigma of the smoothed image) and smoothing (Gaussian sigma, px); components
#: smaller than _DETECT_MIN_PX pixels are noise peaks
_DETECT_NSIGMA = 3.0
_DETECT_SMOOTH_PX = 1.0
_DETECT_MIN_PX = 4
_MEMO: dict = {}
_MEMO_LOCK = threading.Lock()
#: The last injection set of a :class:`SyntheticInjector` with an integer ``random_state``, per process:
#: ``key -> (fields' Injection results, generator state after them)``. Fitting the same injector again
#: (e.g. ``label='truth'`` and then ``'rule'``, same seed) reuses the rendered frames instead of drawing
#: and rendering them again; one entry (the injected copies of its fields' frames) is kept.
_LAST_INJECTION: dict = {}


def detection_distance(field: Field, band: str = "r") -> np.ndarray:
    """Distance (pixels) of every pixel of a band's frame to the nearest pixel of a detected source.

    Detection on the real frame: the image smoothed with a Gaussian of sigma 1 px, pixels above
    3 sigma of the smoothed sky noise (from the frame's robust sky noise), connected components of at
    least 4 pixels. Memoised per process; shape ``(ny, nx)``, float32.
    """
    from scipy import ndimage

    key = ("detect", str(field.fetcher.cache_dir), str(field.fid), band)
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    frame = field.frame(band)
    img = np.nan_to_num(np.asarray(frame.image, dtype=np.float32), nan=0.0)
    smooth = ndimage.gaussian_filter(img, _DETECT_SMOOTH_PX)
    sigma = frame.sky_noise / (2.0 * np.sqrt(np.pi) * _DETECT_SMOOTH_PX)  # white noise after smoothing
    det = smooth > frame.sky_median + _DETECT_NSIGMA * sigma
    lab, n = ndimage.label(det)
    if n:
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        det = sizes[lab] >= _DETECT_MIN_PX
        det[lab == 0] = False
    dist = ndimage.distance_transform_edt(~det).astype(np.float32) if det.any() else \
        np.full(img.shape, np.inf, np.float32)
    with _MEMO_LOCK:
        _MEMO[key] = dist
    return dist


class InjectedField(Field):
    """A :class:`~stargal.frames.Field` whose band images are in-memory copies with sources added.

    Everything else (id, WCS, headers, sky statistics, fetcher, PSF model) is the real field's.
    :meth:`release` keeps the images (they exist nowhere else). Nothing is ever written to disk.
    """

    def __init__(self, base: Field, images: dict):
        super().__init__(base.fid, base.fetcher, bands=base.bands)
        for band in base.bands:
            real = base.frame(band)
            self._frames[band] = Frame(band, images[band], real.wcs, real.sky_median, real.sky_noise,
                                       real.header)

    def __repr__(self) -> str:
        return f"InjectedField({self.name!r}, in memory)"

    def release(self) -> None:
        """No-op: the injected images live only here."""


@dataclass
class Injection:
    """Result of :func:`inject`: the injected field, the injected sources and the refusals.

    Attributes
    ----------
    field : InjectedField
    table : DataFrame
        One row per injected source: an Aligner table (``ra, dec, field_id, x_<band>, y_<band>,
        flag``) plus the truth (:data:`stargal.synth.SOURCE_COLUMNS`) and ``fwhm_r`` (the r PSF FWHM
        at the position, arcsec) and ``hlr_fwhm`` (``hlr_arcsec / fwhm_r``).
    counts : dict
        ``'injected'`` and each of :data:`REFUSALS`: how many positions ended where.
    refused : DataFrame
        The refused input rows with a ``reason`` column.
    """

    field: InjectedField
    table: pd.DataFrame
    counts: dict
    refused: pd.DataFrame = dc_field(default_factory=pd.DataFrame)


def _common(field):
    return {"sas_url": field.fetcher.base_url, "cache_dir": str(field.fetcher.cache_dir)}


def random_positions(field: Field, n: int, rng, margin_pix: float = 0.0):
    """``n`` RA/Dec positions uniform over the field's r frame (``margin_pix`` inside its edges)."""
    frame = field.frame("r")
    ny, nx = frame.shape
    rng = np.random.default_rng(rng)
    x = rng.uniform(-0.5 + margin_pix, nx - 0.5 - margin_pix, n)
    y = rng.uniform(-0.5 + margin_pix, ny - 0.5 - margin_pix, n)
    return frame.pixel_to_world(x, y)


def check_positions(field: Field, ra, dec, *, min_separation_arcsec=MIN_SEPARATION_ARCSEC,
                    cutout_size=CUTOUT_SIZE, taken=None, min_injected_separation_arcsec=None):
    """Aligner table of positions and the reason each is refused (``''`` when accepted).

    ``min_separation_arcsec``: distance to detected sources' pixels; ``min_injected_separation_arcsec``
    (default the same): distance between injected sources. ``taken`` is an optional ``(x_r, y_r)`` pair of
    r-frame positions already injected.
    """
    from .align import Aligner

    table = pd.DataFrame({"ra": np.asarray(ra, float), "dec": np.asarray(dec, float)})
    aligned = Aligner(fields=[field.name], cutout_size=cutout_size, policy="flag", **_common(field)) \
        .fit_transform(table)
    n = len(aligned)
    reason = np.full(n, "", dtype=object)
    reason[aligned["flag"].to_numpy() != ""] = "off_frame"
    ok = reason == ""
    scale = _pixel_scale(field)
    min_px = float(min_separation_arcsec) / scale
    for band in BANDS:
        img = field.frame(band).image
        ny, nx = img.shape
        x = aligned[f"x_{band}"].to_numpy()
        y = aligned[f"y_{band}"].to_numpy()
        r = int(np.ceil(MASK_RADIUS_PX))
        for i in np.flatnonzero(ok & (reason == "")):
            ix, iy = int(round(x[i])), int(round(y[i]))
            patch = np.asarray(img[max(iy - r, 0):iy + r + 1, max(ix - r, 0):ix + r + 1])
            if not np.isfinite(patch).all():
                reason[i] = "masked"
    dist = detection_distance(field, "r")
    xr, yr = aligned["x_r"].to_numpy(), aligned["y_r"].to_numpy()
    ok = reason == ""
    ix = np.clip(np.round(np.nan_to_num(xr)).astype(int), 0, dist.shape[1] - 1)
    iy = np.clip(np.round(np.nan_to_num(yr)).astype(int), 0, dist.shape[0] - 1)
    near = ok & (dist[iy, ix] < min_px)
    reason[near] = "near_source"
    sep = min_separation_arcsec if min_injected_separation_arcsec is None else min_injected_separation_arcsec
    min_px = float(sep) / scale
    tx = list(taken[0]) if taken is not None else []
    ty = list(taken[1]) if taken is not None else []
    for i in np.flatnonzero(reason == ""):
        if tx and np.min((np.asarray(tx) - xr[i]) ** 2 + (np.asarray(ty) - yr[i]) ** 2) < min_px ** 2:
            reason[i] = "near_injected"
            continue
        tx.append(xr[i])
        ty.append(yr[i])
    return aligned, reason


def _pixel_scale(field: Field) -> float:
    try:
        return field.frame("r").pixel_scale
    except Exception:  # noqa: BLE001 - a WCS without a celestial part: SDSS's scale
        return PIXEL_SCALE_ARCSEC


def _counts(reason) -> dict:
    reason = np.asarray(reason, dtype=object)
    out = {"injected": int((reason == "").sum())}
    out.update({k: int((reason == k).sum()) for k in REFUSALS})
    return out


def inject(field: Field, sources: pd.DataFrame, *, psf_source: str = "stars",
           min_separation_arcsec: float = MIN_SEPARATION_ARCSEC, cutout_size: int = CUTOUT_SIZE,
           noise: bool = True, random_state=None, min_injected_separation_arcsec=None) -> Injection:
    """Add ``sources`` (``ra``, ``dec`` + :data:`stargal.synth.SOURCE_COLUMNS`) to copies of ``field``'s frames.

    Refused positions (:data:`REFUSALS`) are counted in ``counts`` and returned in ``refused``; the
    others are rendered in every band at their Aligner position with the band's PSF model there,
    plus their own Poisson noise when ``noise``. The real frames are not modified.
    """
    from .psf import field_psf

    need = {"ra", "dec", "kind", "label"} | {f"flux_{b}" for b in BANDS}
    missing = need - set(sources.columns)
    if missing:
        raise ValueError(f"inject: sources lack column(s) {sorted(missing)}")
    gal = sources["kind"].to_numpy() == "galaxy"
    if gal.any():
        _check_range("hlr_arcsec", (sources.loc[gal, "hlr_arcsec"].min(), sources.loc[gal, "hlr_arcsec"].max()),
                     *HLR_RANGE_ARCSEC, who="inject")
        _check_range("sersic_n", (sources.loc[gal, "sersic_n"].min(), sources.loc[gal, "sersic_n"].max()),
                     *SERSIC_RANGE, who="inject")
    rng = np.random.default_rng(random_state)
    psf = field_psf(field, field.fetcher, source=psf_source)  # the real field's model (cached)
    aligned, reason = check_positions(field, sources["ra"], sources["dec"],
                                      min_separation_arcsec=min_separation_arcsec, cutout_size=cutout_size,
                                      min_injected_separation_arcsec=min_injected_separation_arcsec)
    keep = reason == ""
    src = sources.reset_index(drop=True)
    truth_cols = [c for c in src.columns if c not in ("ra", "dec")]
    table = pd.concat([aligned.reset_index(drop=True), src[truth_cols]], axis=1)
    refused = table[~keep].assign(reason=reason[~keep]).reset_index(drop=True)
    table = table[keep].reset_index(drop=True)
    scale = _pixel_scale(field)
    images = {}
    for band in BANDS:
        real = field.frame(band)
        img = np.array(real.image, dtype=np.float32, copy=True)
        ny, nx = img.shape
        x = table[f"x_{band}"].to_numpy()
        y = table[f"y_{band}"].to_numpy()
        stamps = psf.stamps(band, x, y, size=PSF_STAMP_PX) if len(table) else np.zeros((0, 1, 1))
        cal = frame_calibration(field, band) if noise else None
        rows = table.to_dict("records")
        for i in range(len(table)):
            ix, iy = int(np.floor(x[i] + 0.5)), int(np.floor(y[i] + 0.5))
            row = rows[i]
            model = render_source(stamps[i], float(row[f"flux_{band}"]), x[i] - ix, y[i] - iy, kind=row["kind"],
                                  sersic_n=row.get("sersic_n", 1.0), hlr_arcsec=row.get("hlr_arcsec", 1.0),
                                  q=row.get("q", 1.0), beta_deg=row.get("beta_deg", 0.0), pixel_scale=scale)
            h = model.shape[0] // 2
            x0, y0 = ix - h, iy - h
            if cal is not None:
                model = model + cal.source_noise(model, x0, rng)
            xa, ya = max(x0, 0), max(y0, 0)
            xb, yb = min(x0 + model.shape[1], nx), min(y0 + model.shape[0], ny)
            img[ya:yb, xa:xb] += model[ya - y0:yb - y0, xa - x0:xb - x0].astype(np.float32)
        images[band] = img
    if len(table):
        table["fwhm_r"] = psf.fwhm("r", table["x_r"].to_numpy(), table["y_r"].to_numpy())
        table["hlr_fwhm"] = table["hlr_arcsec"] / table["fwhm_r"] if "hlr_arcsec" in table else 0.0
    return Injection(InjectedField(field, images), table, _counts(reason), refused)


def inject_random(field: Field, population: SyntheticPopulation, n: int, *, random_state=None,
                  psf_source: str = "stars", min_separation_arcsec: float = MIN_SEPARATION_ARCSEC,
                  cutout_size: int = CUTOUT_SIZE, noise: bool = True, kinds=None, max_rounds: int = 8,
                  min_injected_separation_arcsec=None) -> Injection:
    """Inject ``n`` sources of ``population`` at random positions of ``field``.

    Candidate positions are drawn uniformly over the r frame; refused ones are counted (``counts``
    sums every round) and replaced by fresh draws, never moved. Stops after ``max_rounds`` rounds
    with fewer sources if the frame is too crowded. ``kinds`` (array of labels, length ``n``) forces
    the kinds.
    """
    rng = np.random.default_rng(random_state)
    accepted_ra, accepted_dec, xr, yr = [], [], [], []
    counts = dict.fromkeys(("injected",) + REFUSALS, 0)
    need = int(n)
    for _ in range(max_rounds):
        if need <= 0:
            break
        m = int(np.ceil(need * 1.3)) + 5
        ra, dec = random_positions(field, m, rng)
        aligned, reason = check_positions(field, ra, dec, min_separation_arcsec=min_separation_arcsec,
                                          cutout_size=cutout_size, taken=(xr, yr),
                                          min_injected_separation_arcsec=min_injected_separation_arcsec)
        ok = np.flatnonzero(reason == "")[:need]
        extra = np.flatnonzero(reason == "")[need:]
        for k in REFUSALS:
            counts[k] += int((reason == k).sum())
        accepted_ra += list(np.asarray(ra)[ok])
        accepted_dec += list(np.asarray(dec)[ok])
        xr += list(aligned["x_r"].to_numpy()[ok])
        yr += list(aligned["y_r"].to_numpy()[ok])
        need -= ok.size
        del extra  # surplus accepted candidates of the last round are simply not used
    k = len(accepted_ra)
    kinds = None if kinds is None else np.asarray(kinds)[:k]
    sources = population.sample(k, rng, kinds=kinds)
    sources.insert(0, "dec", accepted_dec)
    sources.insert(0, "ra", accepted_ra)
    res = inject(field, sources, psf_source=psf_source, min_separation_arcsec=min_separation_arcsec,
                 cutout_size=cutout_size, noise=noise, random_state=rng,
                 min_injected_separation_arcsec=min_injected_separation_arcsec)
    counts["injected"] = res.counts["injected"]
    for r in REFUSALS:  # the final call re-checks accepted positions: anything refused there counts too
        counts[r] += res.counts[r]
    res.counts = counts
    return res


# ------------------------------------------------------------------------- the sampler
class SyntheticInjector(BaseEstimator):
    """Add cutouts of synthetic stars and galaxies injected into real frames (imblearn sampler, fit only).

    Inside an :class:`imblearn.pipeline.Pipeline` after the :class:`~stargal.cutouts.Cutter` (the
    study's ``'augment'`` step) it acts only during ``fit``: the training cutouts are returned
    unchanged, followed by ``n_objects`` injected objects (label 1 galaxy, 0 star) cut from
    in-memory copies of the frames of ``fields`` with the same size and channels as ``X`` (5 image
    channels, or 10 with the PSF stamps). Prediction never sees it.

    Sky groups: an injected row has no source row; ``sample_indices_`` attributes it to a random
    input row of the same label (seeded), so :class:`~stargal.pipelines.SkyPipeline` gives it that
    row's group and injected rows split between the early-stopping train and validation parts in the
    same proportions as the real rows.

    Parameters
    ----------
    fields : list of str
        Field ids (``'1035-6-17'``) whose frames receive the sources (split evenly). Required.
    n_objects : int, default=500
        Objects to inject per fit (fewer only if the frames are too crowded; see ``counts_``).
    mag_range : (float, float), default=(17.0, 23.0)
        r magnitudes, inside :data:`stargal.synth.MAG_RANGE`.
    hlr_range : (float, float), default=(0.1, 3.0)
        Galaxy half-light radii (arcsec), inside :data:`stargal.synth.HLR_RANGE_ARCSEC`.
    galaxy_fraction : float, default=0.5
    sersic_range : (float, float), default=(0.5, 4.0)
    mag_distribution : {'measured', 'uniform'}, default='measured'
        See :class:`~stargal.synth.SyntheticPopulation`; colours always come from the fields' measured
        photometry (:func:`~stargal.synth.measured_photometry`).
    min_separation_arcsec : float, default=4.0
        Distance from detected sources and between injected ones.
    psf_source : {'stars', 'psfield', 'auto'}, default='stars'
    label : {'truth', 'rule'}, default='truth'
        The label an injected object gets: what it is (``'truth'``: star or galaxy as drawn), or
        what SDSS's rule calls it (``'rule'``): the object measured in the injected frames like a
        real one (:class:`stargal.photo.SDSSPhotometry`) and typed galaxy when its type statistic
        is above ``rule_boundary``; as SDSS would, the rule calls a small faint galaxy a star. An
        injected object the rule cannot measure (not detected, ...) is left out and counted
        (``counts_['unmeasured']``).
    rule_boundary : float, default=0.145
        Boundary of ``label='rule'`` (SDSS's; the study passes the one its rule fitted).
    random_state : int, optional
        With an integer seed the drawn and rendered objects are kept per process (the last injection
        only, about 60 MB per field) and reused by the next fit with the same parameters, ``label`` and
        ``rule_boundary`` aside: ``label='rule'`` after ``label='truth'`` types the same objects without
        rendering them again.
    sas_url, cache_dir : str, optional

    Attributes
    ----------
    sample_indices_ : ndarray
        Input row behind each output row (see above).
    counts_ : dict
        Injected and refused positions (:data:`REFUSALS`), summed over fields; with
        ``label='rule'`` also ``'unmeasured'`` (injected, left out).
    truth_ : DataFrame
        The injected objects' truth and positions, in output order (rows ``n_in ...``).
    n_injected_ : int

    Examples
    --------
    >>> inj = SyntheticInjector(fields=["1035-6-17"], n_objects=200, random_state=0)   # doctest: +SKIP
    >>> X_res, y_res = inj.fit_resample(X, y)                                          # doctest: +SKIP
    >>> len(X_res) == len(X) + inj.n_injected_                                         # doctest: +SKIP
    True
    """

    _estimator_type = "sampler"
    _sampling_type = "over-sampling"

    def __init__(self, fields=None, n_objects=500, *, mag_range=(17.0, 23.0), hlr_range=(0.1, 3.0),
                 galaxy_fraction=0.5, sersic_range=(0.5, 4.0), mag_distribution="measured",
                 min_separation_arcsec=MIN_SEPARATION_ARCSEC, psf_source="stars", label="truth",
                 rule_boundary=0.145, random_state=None, sas_url=None, cache_dir=None):
        self.fields = fields
        self.n_objects = n_objects
        self.mag_range = mag_range
        self.hlr_range = hlr_range
        self.galaxy_fraction = galaxy_fraction
        self.sersic_range = sersic_range
        self.mag_distribution = mag_distribution
        self.min_separation_arcsec = min_separation_arcsec
        self.psf_source = psf_source
        self.label = label
        self.rule_boundary = rule_boundary
        self.random_state = random_state
        self.sas_url = sas_url
        self.cache_dir = cache_dir

    def _injections(self, fetcher, fields, per, pop, rng, h) -> list:
        """The :func:`inject_random` result of each field with objects to receive, in order; ``rng``
        ends in the state the injections leave it in.

        With an integer ``random_state`` the results are kept per process (:data:`_LAST_INJECTION`):
        the same injection (every parameter but ``label`` and ``rule_boundary``, same data source and
        cutout size) reuses them, so a fit with ``label='rule'`` after one with ``label='truth'``
        types the very objects the other was given.
        """
        key = None
        if isinstance(self.random_state, Integral) and not isinstance(self.random_state, bool):
            params = {k: v for k, v in self.get_params().items() if k not in ("label", "rule_boundary")}
            key = (repr(sorted(params.items())), fetcher.base_url, str(fetcher.cache_dir), int(h))
            with _MEMO_LOCK:
                hit = _LAST_INJECTION.get(key)
            if hit is not None:
                results, state = hit
                rng.bit_generator.state = state
                return list(results)
        results = []
        for fid, k in zip(fields, per):
            if k == 0:
                continue
            field = Field(fid, fetcher)
            results.append(inject_random(field, pop, int(k), random_state=rng, psf_source=self.psf_source,
                                         min_separation_arcsec=self.min_separation_arcsec, cutout_size=h))
            field.release()
        if key is not None:
            with _MEMO_LOCK:
                _LAST_INJECTION.clear()
                _LAST_INJECTION[key] = (tuple(results), rng.bit_generator.state)
        return results

    def __sklearn_tags__(self):
        from imblearn.utils._tags import InputTags, SamplerTags, Tags
        from sklearn.utils import TargetTags

        tags = Tags(estimator_type="sampler", target_tags=TargetTags(required=True),
                    sampler_tags=SamplerTags())
        tags.input_tags = InputTags(two_d_array=False)  # 4-D cutouts only
        return tags

    _parameter_constraints = {
        "fields": [list, tuple, None],
        "n_objects": [Interval(Integral, 0, None, closed="left")],
        "mag_range": [tuple, list],
        "hlr_range": [tuple, list],
        "galaxy_fraction": [Interval(Real, 0, 1, closed="both")],
        "sersic_range": [tuple, list],
        "mag_distribution": [StrOptions({"measured", "uniform"})],
        "min_separation_arcsec": [Interval(Real, 0, None, closed="left")],
        "psf_source": [StrOptions({"stars", "psfield", "auto"})],
        "label": [StrOptions({"truth", "rule"})],
        "rule_boundary": [Interval(Real, None, None, closed="neither")],
        "random_state": ["random_state"],
        "sas_url": PATH_LIKE,
        "cache_dir": PATH_LIKE,
    }
    _parameter_hints = {
        "fields": "fields must be a non-empty list of field ids like ['1035-6-17']",
        "n_objects": "n_objects must be an integer >= 0",
        "galaxy_fraction": "galaxy_fraction must be a number in [0, 1]",
        "min_separation_arcsec": "min_separation_arcsec must be a finite number >= 0",
    }

    def _check_params(self):
        who = type(self).__name__
        validate_params(self)
        if self.fields is None or isinstance(self.fields, str) or len(list(self.fields)) == 0:
            raise ValueError(f"{who}: fields must be a non-empty list of field ids like ['1035-6-17'], "
                             f"got {self.fields!r}")
        for f in self.fields:
            FieldID.parse(f)
        # types and simple ranges: _parameter_constraints (validate_params above); what remains is
        # domain-specific: the (min, max) ranges inside the renderer's supported ones, a finite distance
        _check_range("mag_range", self.mag_range, *MAG_RANGE, who=who)
        _check_range("hlr_range", self.hlr_range, *HLR_RANGE_ARCSEC, who=who)
        _check_range("sersic_range", self.sersic_range, *SERSIC_RANGE, who=who)
        if not np.isfinite(self.min_separation_arcsec):
            raise ValueError(f"{who}: min_separation_arcsec must be a finite number >= 0, "
                             f"got {self.min_separation_arcsec!r}")

    def _validate_data(self, X, y):
        who = type(self).__name__
        X = np.asarray(X)
        if X.ndim != 4 or X.shape[1] not in (5, 10) or X.shape[2] != X.shape[3] or X.shape[2] % 2 == 0:
            raise ValueError(f"{who}: X must be cutouts of shape (n, 5 or 10, H, H) with H odd "
                             f"(Cutter output), got shape {X.shape}")
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ValueError(f"{who}: y must be 1-D with one label per cutout, got shape {y.shape} "
                             f"for {X.shape[0]} cutouts")
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"{who}: y must hold binary labels (1 galaxy, 0 star)")
        return X.astype(np.float32, copy=False), y

    def fit(self, X, y, **params):
        """Validate parameters and data (use :meth:`fit_resample` for the rows). Returns self."""
        self._check_params()
        self._validate_data(X, y)
        return self

    def fit_resample(self, X, y, **params):
        """``X`` and ``y`` followed by the injected objects' cutouts and labels.

        Returns
        -------
        X_res : ndarray (n + n_injected_, C, H, H), float32
        y_res : ndarray (n + n_injected_,)
        """
        from .cutouts import Cutter
        from .fetch import get_fetcher

        self._check_params()
        X, y = self._validate_data(X, y)
        n, c, h, _ = X.shape
        fetcher = get_fetcher(sas_url=self.sas_url, cache_dir=self.cache_dir)
        fields = list(self.fields)
        phot = measured_photometry(fields, fetcher, psf_source=self.psf_source)
        pop = SyntheticPopulation(phot, mag_range=self.mag_range, hlr_range=self.hlr_range,
                                  sersic_range=self.sersic_range, galaxy_fraction=self.galaxy_fraction,
                                  mag_distribution=self.mag_distribution)
        rng = np.random.default_rng(self.random_state)
        per = np.full(len(fields), int(self.n_objects) // len(fields))
        per[: int(self.n_objects) % len(fields)] += 1
        cutter = Cutter(size=h, psf=c == 10, psf_source=self.psf_source, sas_url=fetcher.base_url,
                        cache_dir=str(fetcher.cache_dir))
        parts, labels, truth = [], [], []
        counts = dict.fromkeys(("injected",) + REFUSALS + (("unmeasured",) if self.label == "rule" else ()), 0)
        photometry = None
        if self.label == "rule":
            from .photo import SDSSPhotometry

            photometry = SDSSPhotometry(psf_source=self.psf_source, sas_url=fetcher.base_url,
                                        cache_dir=str(fetcher.cache_dir))
        for res in self._injections(fetcher, fields, per, pop, rng, h):
            for key in ("injected",) + REFUSALS:
                counts[key] += res.counts[key]
            table = res.table
            if len(table) and photometry is not None:  # typed by the measured rule, as SDSS would
                measured = photometry.measure_field(table, res.field)
                stat = measured["type_stat"].to_numpy(float)
                keep = np.isfinite(stat)
                counts["unmeasured"] += int((~keep).sum())
                table = table[keep].assign(true_label=table["label"][keep], type_stat=stat[keep],
                                           label=(stat[keep] > float(self.rule_boundary)).astype(int))
            if len(table):
                cut = cutter.cut_field(table, res.field)
                parts.append(cut[:, :c])
                labels.append(table["label"].to_numpy())
                truth.append(table)
        X_new = np.concatenate(parts) if parts else np.zeros((0, c, h, h), np.float32)
        y_new = np.concatenate(labels).astype(y.dtype) if labels else np.zeros(0, y.dtype)
        src = np.empty(len(y_new), dtype=np.intp)
        for label in (0, 1):
            sel = np.flatnonzero(y_new == label)
            pool = np.flatnonzero(y == label)
            pool = pool if pool.size else np.arange(n)
            if sel.size and pool.size:
                src[sel] = rng.choice(pool, sel.size)
        if n == 0 and len(y_new):
            raise ValueError(f"{type(self).__name__}: cannot attribute injected rows to sky groups without "
                             "any input row")
        self.sample_indices_ = np.concatenate([np.arange(n), src])
        self.counts_ = counts
        self.truth_ = pd.concat(truth, ignore_index=True) if truth else pd.DataFrame()
        self.n_injected_ = int(len(y_new))
        return np.concatenate([X, X_new.astype(np.float32)]), np.concatenate([y, y_new])
