"""Stage 1b -- measuring the way SDSS types: our model-fit photometry against the catalogs' own.

The mirror's catalogs were made by re-measuring every object like SDSS's photometric pipeline (PSF
flux, PSF-convolved exponential and de Vaucouleurs fits, cModel; ``../shared/sdss/README.md``).
:class:`stargal.photo.SDSSPhotometry` measures the same pixels independently (our PSF models, our
fits). This stage compares the two on the **training fields** -- a check of the measurement, never
a feature: per r-magnitude bin, the median and robust scatter of (ours - catalog's)
``psfMag - cModelMag`` (the summed type statistic), and how often the resulting type agrees
(at the catalogs' own boundary, 0.19 mag). The catalogs' flux columns are read here only.

Writes ``measurement_check.csv`` (per object), ``measurement_bins.csv`` and ``measurement_check.png``.
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from astropy.io import fits

from stargal.align import Aligner
from stargal.photo import MIRROR_TYPE_BOUNDARY, SDSSPhotometry
from stargal.sdss import FieldID, calibobj_path

from .common import StageResult, fmt, markdown_table, render_template, write_csv

__all__ = ["MAG_BINS", "catalog_measurements", "compare", "run"]

#: r PSF-magnitude bins of the comparison.
MAG_BINS = (-np.inf, 19.0, 20.0, 21.0, 22.0, np.inf)
#: Targets (issue #17): |median offset| at r < 21 and type agreement at r < 21.
TARGET_OFFSET, TARGET_AGREEMENT = 0.02, 0.97


def catalog_measurements(fid, fetcher) -> pd.DataFrame:
    """The catalog's own type statistic and r PSF magnitude of a field's objects (ra, dec, type)."""
    f = FieldID.parse(fid)
    parts = []
    for kind in ("star", "gal"):
        path = fetcher.fetch(calibobj_path(f, kind))
        with fits.open(path, memmap=False) as hdul:
            d = hdul[1].data
            d = d[d["FIELD"] == f.field]
            cols = hdul[1].columns.names
            if "PSF_MINUS_CMODEL" not in cols:  # real SDSS sweeps: no reconstructed statistic to compare
                continue
            parts.append(pd.DataFrame({
                "ra": d["RA"].astype(float), "dec": d["DEC"].astype(float),
                "galaxy": (d["OBJC_TYPE"] == 3), "catalog_stat": d["PSF_MINUS_CMODEL"].astype(float),
                "psfmag_r": 22.5 - 2.5 * np.log10(np.clip(d["PSFFLUX"][:, 2].astype(float), 1e-3, None)),
            }))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    out["field_id"] = str(f)
    return out


def compare(frame: pd.DataFrame, boundary: float = MIRROR_TYPE_BOUNDARY) -> pd.DataFrame:
    """Per r bin: n, median and robust scatter of the difference, type agreement at ``boundary``."""
    rows = []
    bins = pd.cut(frame["psfmag_r"], MAG_BINS, right=False)
    for b, g in list(frame.groupby(bins, observed=True)) + [("r < 21", frame[frame["psfmag_r"] < 21])]:
        d = (g["stat"] - g["catalog_stat"]).to_numpy()
        rows.append({"r_bin": str(b), "n": len(g), "median_offset": float(np.median(d)) if len(d) else np.nan,
                     "robust_scatter": float(1.4826 * np.median(np.abs(d - np.median(d)))) if len(d) else np.nan,
                     "type_agreement": float(((g["stat"] > boundary) == g["galaxy"]).mean()) if len(g) else np.nan})
    return pd.DataFrame(rows)


def _plot(frame, path):
    fig, ax = plt.subplots(figsize=(6, 3.6))
    d = frame["stat"] - frame["catalog_stat"]
    ax.scatter(frame["psfmag_r"], d, s=3, alpha=0.4, c=np.where(frame["galaxy"], "tab:orange", "tab:blue"))
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylim(-0.5, 0.5)
    ax.set_xlabel("r PSF magnitude (catalog)")
    ax.set_ylabel("ours − catalog: psfMag − cModelMag")
    ax.set_title("training fields; orange: catalog galaxies, blue: stars", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(ctx) -> StageResult:
    """Measure every catalog object of the training fields and compare with the catalogs (no artefacts;
    section from ``templates/measurement.md.j2``)."""
    t0 = time.perf_counter()
    fields = sorted(ctx.rows("train", "valid")["field_id"].unique())
    kw = dict(sas_url=ctx.fetcher.base_url, cache_dir=str(ctx.fetcher.cache_dir))
    parts = []
    for fid in fields:
        cat = catalog_measurements(fid, ctx.fetcher)
        if cat.empty:
            continue
        aligned = Aligner(fields=[fid], policy="flag", cutout_size=ctx.config.cutout_size, **kw).fit_transform(cat)
        phot = SDSSPhotometry(psf_source=ctx.config.psf_source, **kw).fit_transform(aligned)
        parts.append(cat.assign(stat=phot["type_stat"].to_numpy(), fit_flag=phot["fit_flag"].to_numpy()))
    if not parts:
        return StageResult(markdown=render_template("measurement.md.j2", empty=True))
    frame = pd.concat(parts, ignore_index=True)
    measured = frame[frame["fit_flag"] == ""]
    write_csv(ctx.out_dir / "measurement_check.csv", frame)
    bins = compare(measured)
    write_csv(ctx.out_dir / "measurement_bins.csv", bins)
    per_field = pd.DataFrame([{"field": fid, **compare(g).set_index("r_bin").loc["r < 21"].to_dict()}
                              for fid, g in measured.groupby("field_id")])
    per_field["n"] = per_field["n"].astype(int)
    _plot(measured, ctx.out_dir / "measurement_check.png")
    bright = bins.set_index("r_bin").loc["r < 21"]
    flags = frame.loc[frame["fit_flag"] != "", "fit_flag"].value_counts().to_dict()
    ok_offset = abs(bright["median_offset"]) <= TARGET_OFFSET
    ok_agree = bright["type_agreement"] >= TARGET_AGREEMENT
    table = markdown_table(bins.rename(columns={"r_bin": "r bin", "median_offset": "median ours − catalog",
                                                "robust_scatter": "robust scatter", "type_agreement":
                                                f"type agreement (boundary {MIRROR_TYPE_BOUNDARY})"}))
    field_table = markdown_table(per_field.rename(columns={"median_offset": "median offset, r < 21",
                                                           "robust_scatter": "robust scatter, r < 21",
                                                           "type_agreement": "type agreement, r < 21"}))
    md = render_template(
        "measurement.md.j2", empty=False, n_measured=len(measured), n_objects=len(frame),
        flags=", ".join(f"{k} {v}" for k, v in flags.items()), table=table, field_table=field_table,
        target_offset=TARGET_OFFSET, offset=fmt(bright["median_offset"], 4), ok_offset=ok_offset,
        target_agreement=f"{TARGET_AGREEMENT:.0%}", agreement=fmt(bright["type_agreement"]), ok_agree=ok_agree,
        stage_s=f"{time.perf_counter() - t0:.0f}")
    numbers = {"bins": bins.to_dict(orient="records"), "per_field": per_field.to_dict(orient="records"),
               "n_measured": int(len(measured)), "n_objects": int(len(frame)), "flags": flags,
               "offset_r_lt_21": float(bright["median_offset"]), "agreement_r_lt_21": float(bright["type_agreement"])}
    return StageResult(numbers=numbers, markdown=md)
