"""Stage 2 -- data preparation: the split, its leakage guarantees, and how similar the splits are.

Writes ``split_report.csv``, ``split_magnitude_ks.csv``, ``split_magnitudes.png`` and
``split_sky.png`` (each field's objects coloured by split). The per-split summary
(:func:`split_report`) and the magnitude KS tests (:func:`magnitude_ks`) live here, with the
study that reports them.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from stargal.frames import Field, in_footprints, min_separation_arcsec
from stargal.sdss import PIXEL_SCALE_ARCSEC

from .common import StageResult, fmt, markdown_table, render_template, write_csv

__all__ = ["run", "split_report", "magnitude_ks", "SPLIT_ORDER"]

SPLITS = ("train", "valid", "test", "excluded")
#: Order in which split names are reported (others follow alphabetically).
SPLIT_ORDER: tuple[str, ...] = ("train", "valid", "validation", "test", "excluded")
COLOURS = {"train": "tab:blue", "valid": "tab:orange", "test": "tab:red", "excluded": "0.6"}


def _plot_magnitudes(table, path):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    bins = np.arange(14, 25.01, 0.5)
    for ax, label in zip(axes, ("star", "galaxy")):
        for split in ("train", "valid", "test"):
            m = table.loc[(table["split"] == split) & (table["label"] == label), "psfmag_r"].dropna()
            if len(m):
                ax.hist(m, bins=bins, density=True, histtype="step", lw=1.6, color=COLOURS[split],
                        label=f"{split} (n={len(m)})")
        ax.set_title(f"{label}s")
        ax.set_xlabel("r PSF magnitude")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("density")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_sky(table, ctx, path):
    fields = list(dict.fromkeys(table["field_id"]))
    n = len(fields)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, fid in zip(axes.ravel(), fields):
        sub = table[table["field_id"] == fid]
        fp = Field(fid, ctx.fetcher).footprint()
        ax.plot(np.r_[fp[:, 0], fp[0, 0]], np.r_[fp[:, 1], fp[0, 1]], "k-", lw=0.8)
        for split in SPLITS:
            s = sub[sub["split"] == split]
            if len(s):
                ax.scatter(s["ra"], s["dec"], s=4, color=COLOURS[split], label=split)
        ax.set_title(f"{fid}", fontsize=9)
        ax.invert_xaxis()
        ax.set_xlabel("RA [deg]", fontsize=8)
        ax.set_ylabel("Dec [deg]", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, markerscale=2)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("objects by split (validation = whole 3' sky cells held out)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(ctx) -> StageResult:
    """Stage 2: the split's report, figures and leakage checks (section from ``templates/splits.md.j2``).

    Returns
    -------
    StageResult
        Numbers: ``counts`` per split, ``n_fit_in_test_footprint``, ``min_separation_arcsec``,
        ``shared_groups_train_valid``; no artefacts.
    """
    table, out = ctx.table, ctx.out_dir
    report = split_report(table)
    write_csv(out / "split_report.csv", report, index=True)
    ks = magnitude_ks(table)
    write_csv(out / "split_magnitude_ks.csv", ks, index=False)
    _plot_magnitudes(table, out / "split_magnitudes.png")
    _plot_sky(table, ctx, out / "split_sky.png")

    # Leakage checks, independent of how the split was built.
    test = table[table["split"] == "test"]
    fit = table[table["split"].isin(["train", "valid"])]
    test_fps = [Field(f, ctx.fetcher) for f in ctx.config.test_fields]  # their r frames
    margin = ctx.config.exclusion_margin_arcsec
    n_fit_in_test_fp = int(in_footprints(fit["ra"], fit["dec"], test_fps, margin_arcsec=margin).sum())
    min_sep = float(min_separation_arcsec(fit["ra"], fit["dec"], test["ra"], test["dec"]))
    train, valid = table[table["split"] == "train"], table[table["split"] == "valid"]
    shared_groups = len(set(train["group"]) & set(valid["group"]))
    half_diag_arcsec = ctx.config.cutout_size / 2 * np.sqrt(2) * PIXEL_SCALE_ARCSEC

    markdown = render_template(
        "splits.md.j2", n_objects=len(table), n_fields=table["field_id"].nunique(),
        n_dropped_edge=table.attrs.get("n_dropped_edge", 0), test_fields=list(ctx.config.test_fields),
        split_table=_split_table(report), margin=f"{margin:g}", group_cell=f"{ctx.config.group_cell_arcmin:g}",
        valid_fraction=f"{ctx.config.valid_fraction:.0%}", n_fit_in_test_fp=n_fit_in_test_fp,
        min_sep=f"{min_sep:.0f}", cutout_size=ctx.config.cutout_size, half_diag=f"{half_diag_arcsec:.1f}",
        shared_groups=shared_groups, ks_table=_ks_table(ks))
    numbers = {
        "counts": table["split"].value_counts().to_dict(),
        "n_fit_in_test_footprint": n_fit_in_test_fp,
        "min_separation_arcsec": min_sep,
        "shared_groups_train_valid": shared_groups,
    }
    return StageResult(numbers=numbers, markdown=markdown)


def _split_table(report) -> str:
    """Per split: objects, stars, galaxies, galaxy fraction, r median (10 %–90 %), fields."""
    rows = []
    for split in SPLITS:
        if split not in report.index:
            continue
        r = report.loc[split]
        rows.append([split, int(r["n_objects"]), int(r["n_stars"]), int(r["n_galaxies"]), fmt(r["galaxy_fraction"]),
                     f"{fmt(r['psfmag_r_median'], 2)} ({fmt(r['psfmag_r_q10'], 1)}–{fmt(r['psfmag_r_q90'], 1)})",
                     r["fields"]])
    columns = ["split", "objects", "stars", "galaxies", "galaxy fraction", "r median (10%–90%)", "fields"]
    return markdown_table(pd.DataFrame(rows, columns=columns))


def _ks_table(ks) -> str:
    rows = [[f"{r.split_a} vs {r.split_b}", f"{r.n_a} / {r.n_b}", f"{r.ks_statistic:.3f}", f"{r.p_value:.2g}"]
            for r in ks.itertuples(index=False)]
    return markdown_table(pd.DataFrame(rows, columns=["splits", "n", "KS statistic", "p-value"]))


# --------------------------------------------------------------------------- split reports
def _split_names(values):
    uniq = list(pd.unique(values))
    known = [s for s in SPLIT_ORDER if s in uniq]
    others = sorted((s for s in uniq if s not in SPLIT_ORDER), key=str)
    return known + others


def _is_galaxy(labels):
    """Labels ('galaxy'/'star' or 1/0) -> float array 1/0, NaN for missing."""
    s = pd.Series(labels)
    out = np.full(len(s), np.nan)
    low = s.astype(str).str.strip().str.lower()
    gal = low.isin(["galaxy", "1", "1.0", "true"])
    star = low.isin(["star", "0", "0.0", "false"])
    missing = s.isna().to_numpy()
    bad = ~(gal | star).to_numpy() & ~missing
    if bad.any():
        examples = sorted(set(s[bad].astype(str)))[:5]
        raise ValueError(f"labels must be 'star'/'galaxy' or 0/1; got {examples}")
    out[gal.to_numpy()] = 1.0
    out[star.to_numpy()] = 0.0
    return out


def _field_strings(table):
    if "field_id" in table:
        return table["field_id"].astype(str).to_numpy()
    if all(c in table for c in ("run", "camcol", "field")):
        triples = zip(table["run"], table["camcol"], table["field"])
        return np.array([f"{r}-{c}-{f}" for r, c, f in triples], dtype=object)
    return None


def split_report(table, split_col="split", label_col="label", mag_col="psfmag_r"):
    """Per-split summary: counts, class balance, r magnitudes and fields.

    Parameters
    ----------
    table : pandas.DataFrame
        Objects with ``split_col``, ``label_col`` (``'star'``/``'galaxy'`` or 0/1; missing
        labels are counted in ``n_objects`` only) and optionally ``mag_col`` and ``field_id``
        (or ``run``/``camcol``/``field``).
    split_col, label_col, mag_col : str

    Returns
    -------
    pandas.DataFrame
        Indexed by split (train, valid, test, excluded first), columns ``n_objects``,
        ``n_stars``, ``n_galaxies``, ``galaxy_fraction``, ``{mag_col}_median``,
        ``{mag_col}_q10``, ``{mag_col}_q90`` (NaN without ``mag_col``), ``n_fields``, ``fields``
        (comma-separated, sorted; empty when the table has no field columns).

    Examples
    --------
    >>> t = pd.DataFrame({"split": ["train", "train", "test"],
    ...                   "label": ["star", "galaxy", "star"],
    ...                   "psfmag_r": [18.0, 20.0, 19.0],
    ...                   "field_id": ["1035-6-17"] * 2 + ["8162-6-80"]})
    >>> cols = ["n_objects", "n_galaxies", "galaxy_fraction", "fields"]
    >>> split_report(t)[cols]  # doctest: +NORMALIZE_WHITESPACE
           n_objects  n_galaxies  galaxy_fraction     fields
    split
    train          2           1              0.5  1035-6-17
    test           1           0              0.0  8162-6-80
    """
    for col in (split_col, label_col):
        if col not in table:
            raise ValueError(f"split_report needs a {col!r} column")
    gal = _is_galaxy(table[label_col].to_numpy())
    mags = None
    if mag_col in table:
        mags = pd.to_numeric(table[mag_col], errors="coerce").to_numpy(dtype=float)
    fields_ = _field_strings(table)
    splits = table[split_col].to_numpy()
    rows = {}
    for name in _split_names(splits):
        m = splits == name
        g = gal[m]
        n_gal = int(np.nansum(g == 1))
        n_star = int(np.nansum(g == 0))
        row = {
            "n_objects": int(m.sum()),
            "n_stars": n_star,
            "n_galaxies": n_gal,
            "galaxy_fraction": n_gal / (n_gal + n_star) if n_gal + n_star else np.nan,
        }
        mm = mags[m] if mags is not None else np.array([])
        mm = mm[np.isfinite(mm)]
        q = np.quantile(mm, [0.5, 0.1, 0.9]) if len(mm) else [np.nan] * 3
        for suffix, value in zip(("median", "q10", "q90"), q):
            row[f"{mag_col}_{suffix}"] = float(value)
        fs = sorted(set(fields_[m])) if fields_ is not None else []
        row["n_fields"] = len(fs)
        row["fields"] = ", ".join(fs)
        rows[name] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "split"
    return out


def magnitude_ks(table, split_col="split", mag_col="psfmag_r"):
    """Two-sample Kolmogorov-Smirnov tests of ``mag_col`` between every pair of splits.

    Parameters
    ----------
    table : pandas.DataFrame
    split_col, mag_col : str

    Returns
    -------
    pandas.DataFrame
        One row per pair: ``split_a``, ``split_b``, ``n_a``, ``n_b``, ``ks_statistic``,
        ``p_value`` (NaN when a split has no finite magnitude).

    Examples
    --------
    >>> t = pd.DataFrame({"split": ["train"] * 50 + ["test"] * 50,
    ...                   "psfmag_r": np.r_[np.linspace(16, 22, 50), np.linspace(16, 22, 50)]})
    >>> magnitude_ks(t)[["split_a", "split_b", "ks_statistic"]]
      split_a split_b  ks_statistic
    0   train    test           0.0
    """
    from scipy.stats import ks_2samp

    for col in (split_col, mag_col):
        if col not in table:
            raise ValueError(f"magnitude_ks needs a {col!r} column")
    splits = table[split_col].to_numpy()
    mags = pd.to_numeric(table[mag_col], errors="coerce").to_numpy(dtype=float)
    names = _split_names(splits)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ma = mags[(splits == a) & np.isfinite(mags)]
            mb = mags[(splits == b) & np.isfinite(mags)]
            if len(ma) and len(mb):
                res = ks_2samp(ma, mb)
                stat, p = float(res.statistic), float(res.pvalue)
            else:
                stat = p = np.nan
            rows.append((a, b, len(ma), len(mb), stat, p))
    columns = ["split_a", "split_b", "n_a", "n_b", "ks_statistic", "p_value"]
    return pd.DataFrame(rows, columns=columns)
