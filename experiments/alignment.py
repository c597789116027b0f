"""Alignment proof and data statistics for a set of SDSS fields.

:func:`run` writes into ``out_dir``:

``alignment_residuals.csv``
    Per band (rows ``field='all'`` and per field), bright isolated catalog stars' offsets in
    pixels at each stage of :data:`STAGES`: median and 95th percentile of ``|offset|``
    (``<stage>_median_px``, ``<stage>_p95_px``) and ``n_stars``:

    * ``before``: raw pixel indices (the band's WCS position minus the r position: what using
      the same pixel indices in every band would do);
    * ``wcs``: header-WCS alignment (``Aligner(refine=False)``): windowed centroid of the
      Lanczos-3 aligned cutout minus its centre pixel;
    * ``refined``: header WCS + the field's registration (:class:`stargal.align.Registration`,
      what ``Aligner(refine=True)`` applies) **held out**: for stars with ``x_r < nx / 2`` the
      registration is fitted only on reference stars of the other half (``x_r >= nx / 2``) and
      vice versa, so no evaluation star fits its own correction; ``refined_const``: the same
      with the constant term only; ``refined_loo``: leave-one-out (all reference stars farther
      than 5 px from the star: the density the production model has); ``refined_colour``: a
      diagnostic g-r term on top of ``refined`` (differential chromatic refraction).

    With SDSS photo's own per-band centroids (:func:`stargal.catalogs.read_band_centroids`) also
    the stages of :data:`SDSS_STAGES` (the cutout centre against an independent measurement of
    where the star is in that band, and the survey's own star-to-star band-to-band scatter) and
    ``<stage>_bias_px`` for the stages of :data:`SIGNED`: ``|median (dx, dy)|``, the systematic
    offset that alignment leaves, as opposed to star-to-star scatter.

    Also the median signed ``wcs``/``refined`` ``dx``/``dy``, the correlation of the refined
    residual with the star's g-r (``refined_dx_gr_corr``, ``refined_dy_gr_corr``) and
    ``resampling_err_median_px``: the aligned centroid minus the raw-frame centroid relative to
    the WCS position (what the resampling itself adds). Stars: catalog label ``star``,
    16 < psfmag_r < 19.5, no other catalog object within 10 px, flag ``''``, and per band an
    aperture S/N > 20. (The reference stars of the registration are found in the frames, not
    taken from the catalog; many of them are these same stars, hence the held-out schemes.)
``alignment_residuals.png``
    Cumulative distributions of ``|offset|`` per band: header WCS, refined (x-split), refined
    (leave-one-out).
``registration_offsets.csv``
    Per field and band: the registration's constant offset ``dx, dy`` (pixels, relative to r),
    reference stars found / used, and their median residual about the constant.
``alignment_irg.png``
    IRG composite (i, r, g as R, G, B; Lupton asinh stretch) of a 101 x 101 px region:
    left, the same pixel indices in each band's frame (unaligned: coloured ghosts several
    pixels apart); right, each band resampled onto the r frame's pixel grid with :class:`Cutter`.
``example_cutouts.png``
    A few stars and galaxies (rows) x the five bands (columns), aligned 15 x 15 cutouts.
``band_stats.csv``
    Per field and band: mean, std, median and robust sky noise (``Frame.sky_noise``) of the
    whole frame, nanomaggies.
``object_counts.csv``
    Per field: number of catalog stars and galaxies on the frames, and how many the Aligner
    flags (``edge``) for 15 x 15 cutouts.
``magnitude_hist.png``
    psfmag_r distributions per label and field.
``tensors.npz``
    ``images`` ``[N, 5, H, W]`` float32: every field's five bands resampled onto its r frame's
    pixel grid (tiles of 101 x 101 px resampled with Lanczos-3 at each tile's own offset; over a
    tile the band-to-r mapping departs from a translation by < 0.01 px), then binned
    ``binning x binning`` (sum, so values are nanomaggies per binned pixel; default 2, giving
    1024 x 744 per band, ~91 MB for six fields; NaN where a band's frame does not cover the r
    frame). ``stars`` ``[N, S, 2]`` and ``galaxies`` ``[N, G, 2]``: 0-based ``(x, y)`` of the
    catalog objects on that binned r grid (``x_bin = (x_r + 0.5) / binning - 0.5``), padded with
    NaN; ``n_stars``/``n_galaxies`` ``[N]``; ``stars_r``/``galaxies_r``: the same at full r-frame
    resolution; ``fields``, ``bands``, ``binning``.

Run it with ``python -m experiments.alignment --out DIR [--fields F ...] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from stargal.align import Aligner, Registration, field_registration
from stargal.catalogs import read_calibobj
from stargal.cutouts import Cutter, centroid_offsets, resample_stamps
from stargal.fetch import get_fetcher
from stargal.frames import Field
from stargal.sdss import BANDS, FieldID

from .common import StageResult, markdown_table, render_macro, write_csv

__all__ = ["run", "select_alignment_stars", "measure_alignment", "heldout_shifts", "resample_field_to_r", "STAGES"]

STAR_MAG = (16.0, 19.5)
ISOLATION_PX = 10.0
MIN_SNR = 20.0
TILE = 101
_AP_RADIUS = 3.0


def select_alignment_stars(aligned: pd.DataFrame) -> np.ndarray:
    """Boolean mask: bright (16 < psfmag_r < 19.5), isolated (> 10 px), unflagged catalog stars."""
    x, y = aligned["x_r"].to_numpy(), aligned["y_r"].to_numpy()
    d2 = (x[:, None] - x[None]) ** 2 + (y[:, None] - y[None]) ** 2
    np.fill_diagonal(d2, np.inf)
    with np.errstate(invalid="ignore"):
        isolated = np.nanmin(d2, axis=1) > ISOLATION_PX**2
    return (
        (aligned["flag"] == "").to_numpy()
        & (aligned["label"] == "star").to_numpy()
        & aligned["psfmag_r"].between(*STAR_MAG).to_numpy()
        & isolated
    )


def _fractional(table: pd.DataFrame) -> np.ndarray:
    out = []
    for b in BANDS:
        x, y = table[f"x_{b}"].to_numpy(), table[f"y_{b}"].to_numpy()
        out.append(np.column_stack([x - np.floor(x + 0.5), y - np.floor(y + 0.5)]))
    return np.stack(out, axis=1)


#: Stages of the residual table (columns ``<stage>_median_px`` / ``<stage>_p95_px``).
STAGES = {
    "before": "raw pixel indices: |position in the band - position in r| (no alignment)",
    "wcs": "aligned with each band's header WCS (Aligner(refine=False))",
    "refined": "header WCS + registration (constant + local term) fitted on reference stars of the "
               "OTHER half of the frame (x < nx/2 vs >=): held out",
    "refined_const": "as 'refined' with the constant term only (held out, other half)",
    "refined_loo": "header WCS + registration from all reference stars farther than 5 px from the "
                   "star (leave-one-out: the production model's density, still held out)",
    "refined_colour": "as 'refined' plus a per-field, per-band linear g-r term fitted on the other "
                      "half's reference stars (diagnostic for differential chromatic refraction)",
}
LOO_RADIUS_PX = 5.0
#: Stages measured with SDSS photo's per-band centroids (calibObj ``COLC``/``ROWC``) instead of our
#: windowed centroid of the cutout: an independent, PSF-fit measurement of where each star is.
SDSS_STAGES = {
    "sdss_wcs": "SDSS photo's centroid of the star in the band minus the header-WCS position (the cutout centre "
                "of Aligner(refine=False))",
    "sdss_refined": "SDSS photo's centroid minus the refined position (registration from the other half: "
                    "held out), i.e. the cutout centre of Aligner(refine=True)",
    "sdss_refined_loo": "as 'sdss_refined' with the leave-one-out registration",
    "sdss_scatter": "SDSS photo's centroid minus the header-WCS position minus the field's median offset in that "
                    "band: the star-to-star scatter of the survey's own band-to-band astrometry, which no "
                    "per-field translation can remove (the field median is fitted on these very stars: "
                    "optimistic)",
}
STAGES.update(SDSS_STAGES)
#: Stages whose signed median is reported as the alignment *bias* (``<stage>_bias_px``).
SIGNED = ("wcs", "refined", "sdss_wcs", "sdss_refined", "sdss_refined_loo")


def _offsets_of(table: pd.DataFrame, kw: dict) -> np.ndarray:
    """Windowed-centroid offsets ``(n, 5, 2)`` of the Lanczos-3 cutouts made at the table's positions."""
    return centroid_offsets(Cutter(**kw).transform(table))


def _shifted(stars: pd.DataFrame, shifts: dict) -> pd.DataFrame:
    out = stars.copy()
    for b, (dx, dy) in shifts.items():
        out[f"x_{b}"] = out[f"x_{b}"].to_numpy() + dx
        out[f"y_{b}"] = out[f"y_{b}"].to_numpy() + dy
    return out


def _robust_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y on x after 3-sigma (MAD) clipping; 0 with < 5 points."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 5:
        return 0.0
    x, y = x[ok], y[ok]
    keep = np.ones(x.size, dtype=bool)
    slope = 0.0
    for _ in range(5):
        if keep.sum() < 5 or np.ptp(x[keep]) == 0:
            break
        slope, icpt = np.polyfit(x[keep], y[keep], 1)
        res = y - (slope * x + icpt)
        scale = 1.4826 * np.median(np.abs(res[keep]))
        new = np.abs(res) < 3 * max(scale, 1e-3)
        if (new == keep).all():
            break
        keep = new
    return float(slope)


def _colour(flux_g, flux_r) -> np.ndarray:
    flux_g, flux_r = np.asarray(flux_g, float), np.asarray(flux_r, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((flux_g > 0) & (flux_r > 0), -2.5 * np.log10(flux_g / flux_r), np.nan)


def heldout_shifts(stars: pd.DataFrame, registration: Registration, nx: int, mode: str = "xsplit",
                   colour: np.ndarray | None = None) -> dict:
    """Per band ``(dx, dy)`` corrections for evaluation stars that never fit their own correction.

    ``mode='xsplit'``: stars with ``x_r < nx / 2`` get the registration fitted on reference stars
    with ``x_r >= nx / 2`` and vice versa. ``'xsplit_const'``: the same with the constant term
    only. ``'loo'``: all reference stars farther than :data:`LOO_RADIUS_PX` from the star.
    ``'xsplit_colour'``: ``'xsplit'`` plus ``k (g-r - median)``, ``k`` fitted per band on the
    other half's reference stars (their residuals after the registration vs their g-r);
    ``colour`` is the evaluation stars' g-r.
    """
    xr, yr = stars["x_r"].to_numpy(float), stars["y_r"].to_numpy(float)
    out = {b: (np.zeros(len(stars)), np.zeros(len(stars))) for b in BANDS if b != "r"}
    refs = registration.references
    if mode == "loo":
        for b in out:
            out[b] = registration.offsets(b, xr, yr, exclude_within=LOO_RADIUS_PX)
        return out
    ref_left = (refs["x_r"] < nx / 2).to_numpy()
    left = xr < nx / 2
    for side in (True, False):
        train = registration.subset(ref_left != side)
        if mode == "xsplit_const":
            train = Registration(train.fid, train.references, local_scale=None)
        sel = left == side
        for b in out:
            dx, dy = train.offsets(b, xr[sel], yr[sel])
            if mode == "xsplit_colour" and colour is not None and train.n_used[b]:
                tr = train.used_references(b)
                rdx, rdy = train.offsets(b, tr["x_r"], tr["y_r"])
                gr = _colour(tr["flux_g"], tr["flux_r"])
                centre = float(np.nanmedian(gr)) if np.isfinite(gr).any() else 0.0
                kx = _robust_slope(gr - centre, tr[f"dx_{b}"].to_numpy(float) - rdx)
                ky = _robust_slope(gr - centre, tr[f"dy_{b}"].to_numpy(float) - rdy)
                c = np.nan_to_num(colour[sel] - centre)
                dx, dy = dx + kx * c, dy + ky * c
            out[b][0][sel], out[b][1][sel] = dx, dy
    return out


def _sdss_offsets(stars: pd.DataFrame, centroids: pd.DataFrame, shifts: dict) -> np.ndarray:
    """SDSS photo's centroid in each band minus where the Aligner centres the cutout, ``(n, 5, 2)``.

    ``shifts``: band -> ``(dx, dy)`` corrections added to the header-WCS positions (as in
    :func:`heldout_shifts`; ``{}`` for header WCS only).
    """
    out = np.empty((len(stars), len(BANDS), 2))
    for i, b in enumerate(BANDS):
        dx, dy = shifts.get(b, (0.0, 0.0))
        out[:, i, 0] = centroids[f"x_sdss_{b}"].to_numpy(float) - (stars[f"x_{b}"].to_numpy(float) + dx)
        out[:, i, 1] = centroids[f"y_sdss_{b}"].to_numpy(float) - (stars[f"y_{b}"].to_numpy(float) + dy)
    return out


def measure_alignment(stars: pd.DataFrame, sky_noise: dict, sas_url: str, cache_dir: str,
                      registration: Registration | None = None, nx: int | None = None,
                      centroids: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per star and band: offsets at every stage of :data:`STAGES` and the aperture S/N (long table).

    ``stars`` is the header-WCS aligned table (``Aligner(refine=False)``). Returns columns
    ``band, x_r, g_r, before, wcs, wcs_dx, wcs_dy, resampling_err, snr`` and, with a
    ``registration`` and the r frame's width ``nx``, ``refined, refined_dx, refined_dy,
    refined_const, refined_loo, refined_colour`` (pixels; every offset but ``before`` is the
    windowed centroid of the aligned Lanczos-3 cutout minus its centre). With ``centroids``
    (a table with the columns of :func:`stargal.catalogs.read_band_centroids`, rows in the order
    of ``stars``; ``stars`` itself when read with ``read_calibobj(..., band_centroids=True)``) also
    ``sdss_wcs, sdss_scatter`` and, with a registration, ``sdss_refined, sdss_refined_loo``:
    SDSS photo's own per-band centroid minus the cutout centre (see :data:`STAGES`). Stages in
    :data:`SIGNED` also get signed ``<stage>_dx``/``<stage>_dy`` columns.
    """
    kw = {"sas_url": sas_url, "cache_dir": cache_dir}
    cut = Cutter(**kw).transform(stars)
    raw = Cutter(interpolation="nearest", **kw).transform(stars)
    wcs = centroid_offsets(cut)
    raw_off = centroid_offsets(raw) - _fractional(stars)
    size = cut.shape[-1]
    yy, xx = np.mgrid[:size, :size]
    ap = np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2) <= _AP_RADIUS
    noise = np.array([sky_noise[b] for b in BANDS])
    flux = (cut * ap).sum(axis=(2, 3))
    snr = flux / (noise * np.sqrt(ap.sum()))
    g_r = _colour(flux[:, BANDS.index("g")], flux[:, BANDS.index("r")])
    stages, sdss = {}, {}
    if centroids is not None:
        sdss["sdss_wcs"] = _sdss_offsets(stars, centroids, {})
        med = np.nanmedian(sdss["sdss_wcs"], axis=0)  # (5, 2): the field's constant per-band offset
        sdss["sdss_scatter"] = sdss["sdss_wcs"] - med[None]
    if registration is not None and nx is not None:
        for name, mode in (("refined", "xsplit"), ("refined_const", "xsplit_const"), ("refined_loo", "loo"),
                           ("refined_colour", "xsplit_colour")):
            shifts = heldout_shifts(stars, registration, nx, mode, colour=g_r)
            stages[name] = _offsets_of(_shifted(stars, shifts), kw)
            if centroids is not None and name in ("refined", "refined_loo"):
                sdss[name.replace("refined", "sdss_refined")] = _sdss_offsets(stars, centroids, shifts)
    rows = []
    for i, b in enumerate(BANDS):
        before = np.hypot(stars[f"x_{b}"] - stars["x_r"], stars[f"y_{b}"] - stars["y_r"]).to_numpy()
        cols = {
            "band": b,
            "x_r": stars["x_r"].to_numpy(),
            "g_r": g_r,
            "before": before,
            "wcs": np.hypot(wcs[:, i, 0], wcs[:, i, 1]),
            "wcs_dx": wcs[:, i, 0],
            "wcs_dy": wcs[:, i, 1],
            "resampling_err": np.hypot(*(wcs[:, i] - raw_off[:, i]).T),
            "snr": snr[:, i],
        }
        for name, off in {**stages, **sdss}.items():
            cols[name] = np.hypot(off[:, i, 0], off[:, i, 1])
            if name in SIGNED:
                cols[f"{name}_dx"], cols[f"{name}_dy"] = off[:, i, 0], off[:, i, 1]
        rows.append(pd.DataFrame(cols))
    return pd.concat(rows, ignore_index=True)


def _summarise(long: pd.DataFrame) -> pd.DataFrame:
    good = long[(long["snr"] > MIN_SNR) & np.isfinite(long["wcs"])]
    rows = []
    for b in BANDS:
        g = good[good["band"] == b]
        row = {"band": b, "n_stars": len(g)}
        for stage in STAGES:
            if stage in g:
                vals = g[stage].dropna()
                row[f"{stage}_median_px"] = vals.median()
                row[f"{stage}_p95_px"] = vals.quantile(0.95)
        row["wcs_median_dx_px"], row["wcs_median_dy_px"] = g["wcs_dx"].median(), g["wcs_dy"].median()
        if "refined_dx" in g:
            row["refined_median_dx_px"] = g["refined_dx"].median()
            row["refined_median_dy_px"] = g["refined_dy"].median()
            # remaining colour-correlated scatter: correlation of the refined residual with g-r
            ok = (np.isfinite(g["g_r"]) & np.isfinite(g["refined_dx"])).to_numpy()
            for axis in ("dx", "dy"):
                corr = np.nan
                if ok.sum() > 5 and b != "r":
                    corr = float(np.corrcoef(g["g_r"].to_numpy()[ok], g[f"refined_{axis}"].to_numpy()[ok])[0, 1])
                row[f"refined_{axis}_gr_corr"] = corr
        for stage in SIGNED:  # alignment bias: |median signed offset|
            if f"{stage}_dx" in g and g[f"{stage}_dx"].notna().any():
                row[f"{stage}_bias_px"] = float(np.hypot(g[f"{stage}_dx"].median(), g[f"{stage}_dy"].median()))
        if "sdss_wcs_dx" in g and g["sdss_wcs_dx"].notna().any():
            # do the two centroid estimators agree on where the star is? (PSF asymmetries: no)
            ddx, ddy = g["wcs_dx"] - g["sdss_wcs_dx"], g["wcs_dy"] - g["sdss_wcs_dy"]
            row["estimators_bias_px"] = float(np.hypot(ddx.median(), ddy.median()))
            row["estimators_median_px"] = float(np.hypot(ddx, ddy).median())
        row["resampling_err_median_px"] = g["resampling_err"].median()
        rows.append(row)
    return pd.DataFrame(rows)


def _residual_figure(path: Path, long: pd.DataFrame) -> None:
    """Cumulative distributions of |offset| per band: header WCS vs refined (held out), and the
    refined positions against SDSS photo's centroids next to the survey's own scatter."""
    from matplotlib.figure import Figure

    good = long[(long["snr"] > MIN_SNR) & np.isfinite(long["wcs"])]
    fig = Figure(figsize=(13, 4.2), constrained_layout=True)
    axes = fig.subplots(1, len(BANDS), sharey=True)
    styles = {"wcs": ("header WCS (our centroid)", "tab:red", "-"),
              "refined": ("refined, x-split (our centroid)", "tab:blue", "-"),
              "refined_loo": ("refined, leave-one-out (our centroid)", "tab:green", "-"),
              "sdss_refined_loo": ("refined, leave-one-out (SDSS centroid)", "tab:purple", "--"),
              "sdss_scatter": ("scatter of SDSS's own band-to-band astrometry", "0.3", ":")}
    handles = {}
    for ax, b in zip(axes, BANDS):
        g = good[good["band"] == b]
        medians = []
        for stage, (label, colour, ls) in styles.items():
            if stage not in g or g[stage].dropna().empty:
                continue
            v = np.sort(g[stage].dropna().to_numpy())
            (line,) = ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", color=colour, ls=ls, lw=1.2)
            handles.setdefault(label, line)
            medians.append((f"{np.median(v):.3f}", colour))
        ax.axvline(0.1, color="0.5", lw=0.6, ls=":")
        ax.axhline(0.5, color="0.8", lw=0.5)
        ax.set_xlim(0, 0.5)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{b} (n={len(g)})")
        ax.set_xlabel("|centroid offset| (px)")
        for k, (text, colour) in enumerate(medians):  # medians, in the legend's colours
            ax.text(0.97, 0.05 + 0.07 * k, f"median {text}", color=colour, fontsize=7, ha="right",
                    transform=ax.transAxes)
    axes[0].set_ylabel("fraction of stars")
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center", ncol=3, fontsize=8)
    fig.suptitle("Bright isolated catalog stars: distance of the star's centroid from the cutout centre, per band",
                 fontsize=10)
    fig.savefig(path, dpi=110)


def _markdown(summary: pd.DataFrame, n_fields: int, per_field: pd.DataFrame | None = None) -> str:
    """The residual tables (``templates/alignment.md.j2``, macro ``residuals``)."""
    def cell(r, stage):
        med, p95 = r.get(f"{stage}_median_px", np.nan), r.get(f"{stage}_p95_px", np.nan)
        return "–" if not np.isfinite(med) else f"{med:.3f} ({p95:.3f})"

    def num(v):
        return "–" if v is None or not np.isfinite(v) else f"{v:.3f}"

    def table(columns, rows):
        return markdown_table(pd.DataFrame(rows, columns=columns))

    recs = summary.to_dict("records")
    stages = {"before": "before (raw pixels)", "wcs": "header WCS", "refined": "refined (held out, x-split)",
              "refined_loo": "refined (leave-one-out)", "refined_const": "constant only (x-split)",
              "refined_colour": "+ g-r term (x-split)"}
    tables = {"sdss_table": None, "bias_table": None, "estimators_table": None}
    tables["table"] = table(["band", "n", *stages.values()],
                            [[r["band"], r["n_stars"], *(cell(r, st) for st in stages)] for r in recs])
    if "sdss_wcs_median_px" in summary:
        sdss = {"sdss_wcs": "header WCS", "sdss_refined": "refined (held out, x-split)",
                "sdss_refined_loo": "refined (leave-one-out)",
                "sdss_scatter": "survey scatter (no per-field translation can remove)"}
        tables["sdss_table"] = table(["band", *sdss.values()],
                                     [[r["band"], *(cell(r, st) for st in sdss)] for r in recs])
    bias_stages = [st for st in SIGNED if f"{st}_bias_px" in summary]
    if bias_stages:
        names = {"wcs": "header WCS, our centroid", "refined": "refined (x-split), our centroid",
                 "sdss_wcs": "header WCS, SDSS centroid", "sdss_refined": "refined (x-split), SDSS centroid",
                 "sdss_refined_loo": "refined (leave-one-out), SDSS centroid"}
        worst = _worst_field_bias(per_field)
        rows = [[r["band"], *(f"{num(r.get(f'{st}_bias_px'))} ({num(worst.get(st, {}).get(r['band'], [np.nan])[0])})"
                              for st in bias_stages)] for r in recs]
        tables["bias_table"] = table(["band", *(names[st] for st in bias_stages)], rows)
    if per_field is not None and "estimators_bias_px" in per_field:
        rows = []
        for fid, g in per_field.groupby("field", sort=False):
            vals = {r["band"]: r for r in g.to_dict("records")}
            rows.append([fid, *(f"{num(vals[b].get('estimators_bias_px'))} ({num(vals[b].get('estimators_median_px'))})"
                                if b in vals else "–" for b in BANDS)])
        tables["estimators_table"] = table(["field", *BANDS], rows)
    return render_macro("alignment.md.j2", "residuals", n_fields=n_fields, min_snr=f"{MIN_SNR:g}",
                        stages="; ".join(f"**{k}**: {v}" for k, v in STAGES.items()), **tables)


def resample_field_to_r(field: Field, tile: int = TILE, registration: Registration | None = None) -> np.ndarray:
    """The field's five bands on the r frame's pixel grid, ``(5, ny, nx)`` float32, nanomaggies.

    The r grid is cut into ``tile x tile`` tiles; each band is resampled (Lanczos-3) at the
    band-frame position of each tile's centre, i.e. with a per-tile translation (the residual
    rotation/scale between band WCSs is < 1e-4, so < 0.01 px across a 101 px tile). With a
    ``registration`` the tile centres are corrected as the Aligner corrects objects.
    """
    r = field.frame("r")
    ny, nx = r.shape
    h = (tile - 1) // 2
    cx = np.arange(h, nx + h, tile, dtype=float)
    cy = np.arange(h, ny + h, tile, dtype=float)
    gx, gy = np.meshgrid(cx, cy)
    ra, dec = r.pixel_to_world(gx.ravel(), gy.ravel())
    out = np.empty((len(BANDS), ny, nx), dtype=np.float32)
    for bi, b in enumerate(BANDS):
        frame = field.frame(b)
        x, y = frame.world_to_pixel(ra, dec)
        if registration is not None and b != "r":
            dx, dy = registration.offsets(b, gx.ravel(), gy.ravel())
            x, y = x + dx, y + dy
        tiles = resample_stamps(frame.image, x, y, tile, "lanczos3")
        mosaic = tiles.reshape(len(cy), len(cx), tile, tile).transpose(0, 2, 1, 3)
        out[bi] = mosaic.reshape(len(cy) * tile, len(cx) * tile)[:ny, :nx]
    return out


def _bin(images: np.ndarray, factor: int) -> np.ndarray:
    c, ny, nx = images.shape
    ny2, nx2 = ny // factor, nx // factor
    v = images[:, : ny2 * factor, : nx2 * factor].reshape(c, ny2, factor, nx2, factor)
    return v.sum(axis=(2, 4), dtype=np.float64).astype(np.float32)


def _lupton(i, r, g, stretch, q=8.0):
    from astropy.visualization import make_lupton_rgb

    return make_lupton_rgb(np.nan_to_num(i), np.nan_to_num(r), np.nan_to_num(g), minimum=0.0,
                           stretch=stretch, Q=q)


def _busy_region(aligned: pd.DataFrame, shape, size: int) -> tuple[float, float]:
    """r-frame centre of a ``size`` box with the most bright objects, away from the edges."""
    ny, nx = shape
    bright = aligned[(aligned["psfmag_r"] < 20.5) & (aligned["flag"] == "")]
    half = size / 2 + 20
    best, centre = -1, (nx / 2, ny / 2)
    for cy in np.arange(half, ny - half, 25.0):
        for cx in np.arange(half, nx - half, 25.0):
            inside = ((bright["x_r"] - cx).abs() < size / 2 - 8) & ((bright["y_r"] - cy).abs() < size / 2 - 8)
            k = int(inside.sum())
            if k > best:
                best, centre = k, (cx, cy)
    return centre


def _irg_figure(path: Path, fid: str, aligned: pd.DataFrame, field: Field, kw: dict, size: int = TILE):
    from matplotlib.figure import Figure

    r = field.frame("r")
    cx, cy = _busy_region(aligned, r.shape, size)
    cx, cy = float(np.floor(cx)), float(np.floor(cy))
    h = (size - 1) // 2
    raw = {b: np.asarray(field.frame(b).image[int(cy) - h:int(cy) + h + 1, int(cx) - h:int(cx) + h + 1])
           for b in "irg"}
    ra, dec = r.pixel_to_world([cx], [cy])
    aligner = Aligner(fields=[fid], cutout_size=size, policy="flag", **kw)
    point = aligner.fit_transform(pd.DataFrame({"ra": ra, "dec": dec}))
    cut = Cutter(size=size, **kw).transform(point)[0]
    al = {b: cut[BANDS.index(b)] for b in "irg"}
    noise = field.frame("r").sky_noise
    stretch = max(float(np.nanpercentile(al["r"], 99.5)), 20 * noise)
    fig = Figure(figsize=(9, 4.8), constrained_layout=True)
    axes = fig.subplots(1, 2)
    for ax, imgs, title in ((axes[0], raw, "unaligned: same pixel indices in each band"),
                            (axes[1], al, "aligned: resampled onto the r grid (Lanczos-3)")):
        ax.imshow(_lupton(imgs["i"], imgs["r"], imgs["g"], stretch), origin="lower")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    offs = {b: (float(point[f"x_{b}"][0] - point["x_r"][0]), float(point[f"y_{b}"][0] - point["y_r"][0]))
            for b in "ig"}
    fig.suptitle(f"{fid}: i, r, g as R, G, B; {size}x{size} px at r pixel ({cx:.0f}, {cy:.0f}); "
                 f"g frame offset ({offs['g'][0]:+.1f}, {offs['g'][1]:+.1f}) px, "
                 f"i ({offs['i'][0]:+.1f}, {offs['i'][1]:+.1f}) px", fontsize=10)
    fig.savefig(path, dpi=110)


def _examples_figure(path: Path, fid: str, aligned: pd.DataFrame, kw: dict, n_each: int = 3):
    from matplotlib.figure import Figure

    ok = aligned[(aligned["flag"] == "")]
    picks = []
    for label in ("star", "galaxy"):
        sub = ok[(ok["label"] == label) & ok["psfmag_r"].between(17.0, 20.0)]
        if len(sub) == 0:
            sub = ok[ok["label"] == label]
        sub = sub.sort_values("psfmag_r")
        idx = np.linspace(0, len(sub) - 1, min(n_each, len(sub))).round().astype(int) if len(sub) else []
        picks.append(sub.iloc[idx])
    rows = pd.concat(picks)
    if len(rows) == 0:
        return
    cut = Cutter(**kw).transform(rows)
    fig = Figure(figsize=(1.5 * len(BANDS) + 1.2, 1.5 * len(rows) + 0.6), constrained_layout=True)
    axes = np.atleast_2d(fig.subplots(len(rows), len(BANDS)))
    for i in range(len(rows)):
        soft = max(float(np.nanstd(cut[i, :, 0, :])), 1e-3)
        for j, b in enumerate(BANDS):
            ax = axes[i, j]
            ax.imshow(np.arcsinh(cut[i, j] / soft), origin="lower", cmap="gray")
            ax.axhline(7, color="tab:red", lw=0.4, alpha=0.6)
            ax.axvline(7, color="tab:red", lw=0.4, alpha=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(b)
        axes[i, 0].set_ylabel(f"{rows['label'].iloc[i]}\nr={rows['psfmag_r'].iloc[i]:.1f}", fontsize=8)
    fig.suptitle(f"{fid}: aligned 15x15 cutouts (asinh stretch; red lines through the centre pixel)",
                 fontsize=9)
    fig.savefig(path, dpi=110)


def _magnitude_figure(path: Path, catalogs: dict):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), constrained_layout=True)
    axes = fig.subplots(1, 2, sharey=True)
    bins = np.arange(13.0, 24.01, 0.25)
    for ax, label in zip(axes, ("star", "galaxy")):
        for fid, cat in catalogs.items():
            mags = cat.loc[cat["label"] == label, "psfmag_r"].dropna()
            ax.hist(mags, bins=bins, histtype="step", label=f"{fid} ({len(mags)})")
        ax.set_title("stars" if label == "star" else "galaxies")
        ax.set_xlabel("psfmag_r")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("objects per 0.25 mag")
    fig.savefig(path, dpi=110)


def _pad(arrays: list[np.ndarray]) -> np.ndarray:
    m = max([len(a) for a in arrays] + [1])
    out = np.full((len(arrays), m, 2), np.nan, dtype=np.float32)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


def measure(out_dir, fields, fetcher=None, quick: bool = False, binning: int | None = None) -> dict:
    """Alignment proof, data statistics and the fields' image tensors (see the module docstring).

    Parameters
    ----------
    out_dir : path
        Output directory (created).
    fields : list of str
        SDSS fields, e.g. ``['8162-6-80', '1035-6-17']``; the first one is used for the figures.
    fetcher : stargal.fetch.Fetcher, optional
        Data source and cache (default: environment / defaults).
    quick : bool
        Smaller tensors (``binning=4``).
    binning : int, optional
        Binning of the full-frame tensors (default 2, or 4 when ``quick``).

    Returns
    -------
    dict
        Headline numbers: per-band median ``|offset|`` before/after, star counts, object counts,
        tensor file size, written files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = [str(FieldID.parse(f)) for f in fields]
    if not fields:
        raise ValueError("experiments.alignment.measure needs at least one field")
    binning = binning or (4 if quick else 2)
    fetcher = get_fetcher(fetcher)
    kw = {"sas_url": fetcher.base_url, "cache_dir": str(fetcher.cache_dir)}

    long_tables, band_rows, count_rows, catalogs, reg_rows = [], [], [], {}, []
    images, stars_r, gals_r = [], [], []
    for k, fid in enumerate(fields):
        try:  # one read of the sweeps, SDSS photo's per-band centroids included
            catalog = read_calibobj(fid, fetcher, band_centroids=True)
        except ValueError:  # a sweep without per-band centroids: our own centroids only
            catalog = read_calibobj(fid, fetcher)
        aligned = Aligner(policy="flag", **kw).fit_transform(catalog)  # production: refine=True
        wcs_aligned = Aligner(policy="flag", refine=False, **kw).fit_transform(catalog)
        catalogs[fid] = catalog
        field = Field(fid, fetcher)
        frames = field.frames()
        registration = field_registration(field)
        reg_rows.append(registration.summary().assign(field=fid, n_references=len(registration.references)))
        for b, fr in frames.items():
            img = np.asarray(fr.image)
            band_rows.append({"field": fid, "band": b, "mean": float(img.mean(dtype=np.float64)),
                              "std": float(img.std(dtype=np.float64)), "median": float(np.median(img)),
                              "sky_noise": fr.sky_noise})
        for label in ("star", "galaxy"):
            lab = aligned["label"] == label
            count_rows.append({"field": fid, "label": label, "n": int(lab.sum()),
                               "n_flagged_edge": int((lab & (aligned["flag"] == "edge")).sum()),
                               "n_usable": int((lab & (aligned["flag"] == "")).sum())})
        sel = select_alignment_stars(wcs_aligned)
        if sel.any():
            stars = wcs_aligned[sel]
            long = measure_alignment(stars, {b: fr.sky_noise for b, fr in frames.items()}, **kw,
                                     registration=registration, nx=frames["r"].shape[1],
                                     centroids=stars if "x_sdss_r" in stars else None)
            long.insert(0, "field", fid)
            long_tables.append(long)
        if k == 0:
            _irg_figure(out / "alignment_irg.png", fid, aligned, field, kw)
            _examples_figure(out / "example_cutouts.png", fid, aligned, kw)
        images.append(_bin(resample_field_to_r(field, registration=registration), binning))
        for store, label in ((stars_r, "star"), (gals_r, "galaxy")):
            sub = aligned[aligned["label"] == label]
            store.append(sub[["x_r", "y_r"]].to_numpy(dtype=np.float32))
        field.release()

    long = pd.concat(long_tables, ignore_index=True) if long_tables else pd.DataFrame(
        columns=["field", "band", "x_r", "g_r", "before", "wcs", "wcs_dx", "wcs_dy", "resampling_err", "snr"])
    summary = _summarise(long).assign(field="all")
    per_field = [_summarise(g).assign(field=f) for f, g in long.groupby("field", sort=False)]
    per_field_table = pd.concat(per_field, ignore_index=True) if per_field else None
    residuals = pd.concat([summary] + per_field, ignore_index=True)
    residuals = residuals[["field"] + [c for c in residuals.columns if c != "field"]]
    residuals.to_csv(out / "alignment_residuals.csv", index=False, float_format="%.4f")
    registrations = pd.concat(reg_rows, ignore_index=True)
    registrations = registrations[["field", "band", "n_references", "n_used", "dx", "dy", "median_abs_residual"]]
    registrations.to_csv(out / "registration_offsets.csv", index=False, float_format="%.4f")
    if len(long):
        _residual_figure(out / "alignment_residuals.png", long)
    pd.DataFrame(band_rows).to_csv(out / "band_stats.csv", index=False, float_format="%.6g")
    counts = pd.DataFrame(count_rows)
    counts.to_csv(out / "object_counts.csv", index=False)
    _magnitude_figure(out / "magnitude_hist.png", catalogs)

    to_bin = lambda a: (a + 0.5) / binning - 0.5  # noqa: E731 - 0-based full-res -> binned grid
    np.savez_compressed(
        out / "tensors.npz",
        images=np.stack(images),
        stars=_pad([to_bin(a) for a in stars_r]),
        galaxies=_pad([to_bin(a) for a in gals_r]),
        stars_r=_pad(stars_r),
        galaxies_r=_pad(gals_r),
        n_stars=np.array([len(a) for a in stars_r]),
        n_galaxies=np.array([len(a) for a in gals_r]),
        fields=np.array(fields),
        bands=np.array(BANDS),
        binning=np.array(binning),
    )
    size_mb = (out / "tensors.npz").stat().st_size / 1e6
    records = summary.to_dict("records")

    def num(value, digits=3):
        value = float(value)
        return round(value, digits) if np.isfinite(value) else None  # JSON has no NaN

    def per_band(col, digits=3):
        return {r["band"]: num(r[col], digits) for r in records if col in r}

    headline = {
        "fields": fields,
        "n_alignment_stars": {r["band"]: int(r["n_stars"]) for r in records},
        **{f"{stage}_{stat}_px": per_band(f"{stage}_{stat}_px") for stage in STAGES for stat in ("median", "p95")
           if f"{stage}_median_px" in summary},
        "refined_gr_corr": {r["band"]: [num(r.get("refined_dx_gr_corr", np.nan), 2),
                                        num(r.get("refined_dy_gr_corr", np.nan), 2)] for r in records},
        "resampling_err_median_px": per_band("resampling_err_median_px", 4),
        "bias_px": {st: per_band(f"{st}_bias_px", 4) for st in SIGNED if f"{st}_bias_px" in summary},
        "bias_worst_field_px": _worst_field_bias(per_field_table),
        "registration_px": {f: {r["band"]: [num(r["dx"]), num(r["dy"]), int(r["n_used"])]
                                for r in g.to_dict("records")} for f, g in registrations.groupby("field", sort=False)},
        "stages": STAGES,
        "objects": {lab: int(counts.loc[counts["label"] == lab, "n"].sum()) for lab in ("star", "galaxy")},
        "tensors_shape": list(np.stack(images).shape) if images else [],
        "tensors_mb": round(size_mb, 1),
        "binning": binning,
        "files": sorted(p.name for p in out.iterdir() if p.is_file()),
    }
    (out / "alignment_summary.json").write_text(json.dumps(headline, indent=2, allow_nan=False))
    headline["markdown"] = _markdown(summary, len(fields), per_field_table)
    return headline


def _worst_field_bias(per_field: pd.DataFrame | None) -> dict:
    """Per stage of :data:`SIGNED` and band: ``[largest per-field bias (px), that field]``."""
    if per_field is None or not len(per_field):
        return {}
    table = per_field.reset_index(drop=True)
    out = {}
    for st in SIGNED:
        col = f"{st}_bias_px"
        if col not in table:
            continue
        out[st] = {}
        for b, g in table.groupby("band", sort=False):
            g = g.dropna(subset=[col])
            if len(g):
                worst = g.loc[g[col].idxmax()]
                out[st][b] = [round(float(worst[col]), 4), str(worst["field"])]
    return out


def report_markdown(out: Path, res: dict, residuals: bool = True) -> str:
    """Counts, alignment figures, sky noise and tensors (plus the residual table if ``residuals``), from
    ``templates/alignment.md.j2`` (macro ``report``)."""
    counts = pd.read_csv(out / "object_counts.csv") if (out / "object_counts.csv").exists() else None
    counts_table = residuals_table = noise_table = None
    if counts is not None:
        wide = counts.pivot_table(index="field", columns="label", values="n", aggfunc="sum").reset_index()
        counts_table = markdown_table(wide)
    if residuals:
        resid = pd.read_csv(out / "alignment_residuals.csv")
        residuals_table = markdown_table(resid[resid["field"] == "all"].drop(columns=["field"]))
    if (out / "band_stats.csv").exists():
        bs = pd.read_csv(out / "band_stats.csv")
        keep = [c for c in bs.columns if c in ("field", "band", "mean", "std", "median", "sky_noise")]
        piv = bs[keep]
        if "sky_noise" in piv:
            noise = piv.pivot_table(index="field", columns="band", values="sky_noise").reset_index()
            noise = noise[["field"] + [b for b in "ugriz" if b in noise.columns]]
            noise_table = markdown_table(noise, 4)
    return render_macro("alignment.md.j2", "report", counts_table=counts_table, residuals_table=residuals_table,
                        noise_table=noise_table, tensors_mb=res.get("tensors_mb"),
                        tensors_shape=res.get("tensors_shape"), binning=res.get("binning"))


def run(ctx) -> StageResult:
    """The study's stage 1: :func:`measure` on the study's fields, the report section and the
    seeing (each field's PSF model, and how it compares with SDSS's psField).

    Parameters
    ----------
    ctx : experiments.common.StudyContext

    Returns
    -------
    StageResult
        Numbers: :func:`measure`'s plus ``psf`` and ``psf_vs_psfield``; no artefacts.
    """
    from .seeing import psf_markdown, psf_table, psfield_comparison, psfield_markdown

    config, out = ctx.config, Path(ctx.out_dir)
    fields = list(ctx.table.attrs.get("fields") or list(config.test_fields) + list(config.train_fields))
    res = measure(out, fields, ctx.fetcher, quick=ctx.quick)
    own = res.pop("markdown", "")
    markdown = (own + "\n\n" + report_markdown(out, res, residuals=not own)).strip()
    psf = psf_table(fields, ctx.fetcher, config.psf_source)
    res["psf"] = psf.to_dict(orient="records")
    cmp = psfield_comparison(ctx.fetcher)
    res["psf_vs_psfield"] = cmp.to_dict(orient="records")
    write_csv(out / "psf_vs_psfield.csv", cmp)
    markdown += "\n\n" + render_macro("alignment.md.j2", "seeing", psf_source=config.psf_source,
                                      psf_section=psf_markdown(psf, config.test_fields),
                                      psfield_section=psfield_markdown(cmp))
    return StageResult(numbers=res, markdown=markdown)


def _default_fields() -> list[str]:
    from stargal.config import load_config

    return list(load_config().all_fields)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.alignment",
                                     description="Alignment proof and data statistics")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--fields", nargs="*", help="fields (default: the study's test + train fields)")
    parser.add_argument("--quick", action="store_true", help="smaller tensors (binning 4)")
    parser.add_argument("--binning", type=int, help="tensor binning factor (default 2; 4 with --quick)")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    from .common import use_local_mirror

    use_local_mirror()
    result = measure(args.out, args.fields or _default_fields(), quick=args.quick, binning=args.binning)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
