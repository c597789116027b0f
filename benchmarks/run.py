"""Run every registered speed benchmark and print a table of side-by-side ratios.

Usage::

    python -m benchmarks.run                       # all benchmarks; table on stdout and in benchmarks/results.md
    python -m benchmarks.run --out other.md        # ... written elsewhere (--no-write: stdout only)
    python -m benchmarks.run --only cutter --n 2000

Data: the SAS mirror named by ``STARGAL_SAS_URL`` (the Makefile sets it), else
``../shared/sdss`` beside the project when it exists. Benchmarks that need data are
reported as skipped when neither is available.

Adding a benchmark: put it in a module ``benchmarks/bench_<topic>.py`` (imported
automatically by :func:`main`), or in any module imported before :func:`run` is called::

    from benchmarks.run import benchmark, Result

    @benchmark("my-thing")
    def bench_my_thing(ctx):
        ...                                  # time ours and a baseline in this same run
        return [Result("my thing", ours=..., baseline=..., unit="items/s", target=10.0)]

Every ratio is ``ours / baseline`` for throughputs (higher is better) and
``baseline / ours`` for durations, measured in the same process, one after the other,
best of ``repeat`` runs each, so machine load affects both sides alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["Result", "Context", "BENCHMARKS", "benchmark", "best_time", "main"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MIRROR = REPO_ROOT.parent / "shared" / "sdss"
BENCH_FIELD = "8162-6-80"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results.md"


@dataclass
class Result:
    """One measured comparison.

    Parameters
    ----------
    name : str
        What is compared.
    ours, baseline : float
        Throughputs (``unit`` per second, higher is better) or durations in seconds
        (``unit='s'``, lower is better).
    unit : str
        ``'s'`` for durations, otherwise the throughput unit (e.g. ``'cutouts/s'``).
    target : float, optional
        Required ratio (ours better by at least this factor).
    note : str
        What exactly each side does.
    """

    name: str
    ours: float
    baseline: float
    unit: str
    target: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        if self.unit == "s":
            return self.baseline / self.ours if self.ours > 0 else float("inf")
        return self.ours / self.baseline if self.baseline > 0 else float("inf")

    @property
    def status(self) -> str:
        if self.target is None:
            return ""
        return "met" if self.ratio >= self.target else "NOT met"


@dataclass
class Context:
    """What a benchmark gets: data source, a scratch directory, sizes."""

    sas_url: str | None
    scratch: Path
    n_cutouts: int = 5000
    repeat: int = 3
    notes: list[str] = field(default_factory=list)

    def require_data(self) -> str:
        if self.sas_url is None:
            raise SkipBenchmark("no SDSS data: set STARGAL_SAS_URL or provide ../shared/sdss")
        return self.sas_url

    @property
    def cache_dir(self) -> str:
        """Cache shared by the benchmarks of one run (decompressed once)."""
        path = self.scratch / "cache"
        path.mkdir(parents=True, exist_ok=True)
        return str(path)


class SkipBenchmark(Exception):
    """Raised by a benchmark that cannot run here (reported, not fatal)."""


#: Registered benchmarks, in run order: ``(name, function)``.
BENCHMARKS: list[tuple[str, Callable[[Context], list[Result]]]] = []


def benchmark(name: str):
    """Decorator registering ``func(ctx) -> list[Result]`` under ``name``."""

    def register(func):
        BENCHMARKS.append((name, func))
        return func

    return register


def best_time(func, repeat: int = 3) -> float:
    """Smallest wall-clock time (seconds) of ``repeat`` calls of ``func()``."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - t0)
    return best


def _default_sas_url() -> str | None:
    env = os.environ.get("STARGAL_SAS_URL", "").strip()
    if env:
        return env
    if (DEFAULT_MIRROR / "dr17").is_dir():
        return DEFAULT_MIRROR.as_uri()
    return None


# ----------------------------------------------------------------------------- benchmarks
def _engine_note() -> str:
    from stargal._imaging import _numba_threads, numba_available

    if not numba_available():
        return "numpy engine (numba not available)"
    import numba

    return (f"numba {numba.__version__} engine; 1 thread unless the row says otherwise "
            f"(n_jobs=-1 = {_numba_threads(-1)} threads)")


@benchmark("cutter")
def bench_cutter(ctx: Context) -> list[Result]:
    """Aligned 5-band cutouts: ours vs per-object astropy Cutout2D loops, all in this run.

    (a) like for like, object-centric from RA/Dec: Aligner (each band's WCS + registration
        refinement) + Cutter (Lanczos-3 resampling) vs, per object and band,
        ``Cutout2D(image, SkyCoord(ra, dec), size, wcs=band_wcs, mode='partial')`` (the usual
        astronomer's loop; it does less work: integer-pixel cutouts, no resampling).
    (b) least favourable, reported without a target: Cutter at known pixel positions vs a bare
        pixel-position Cutout2D loop (no WCS, no resampling: not the same job); also the numpy
        engine and a per-object loop doing the same Lanczos-3 work.

    The >= 100x target (the transformers issue: "against a per-object Cutout2D loop") is held
    to (a): the loop an astronomer writes to get object-centred cutouts from an RA/Dec table.

    """
    from astropy.coordinates import SkyCoord
    from astropy.nddata import Cutout2D

    import stargal.registration as align
    from stargal.align import Aligner
    from stargal.catalogs import read_calibobj
    from stargal.cutouts import CUTOUT_SIZE, Cutter, kernel_weights, numba_available
    from stargal.frames import Field
    from stargal.sdss import BANDS

    kw = {"sas_url": ctx.require_data(), "cache_dir": ctx.cache_dir}
    catalog = read_calibobj(BENCH_FIELD, **kw)  # also fills the decompressed cache
    aligner = Aligner(fields=[BENCH_FIELD], policy="flag", **kw)
    aligned = aligner.fit_transform(catalog)  # also measures and caches the field's registration
    good = (aligned["flag"] == "").to_numpy()
    reps = -(-ctx.n_cutouts // int(good.sum()))
    rows = np.tile(np.flatnonzero(good), reps)[: ctx.n_cutouts]
    coords = catalog.iloc[rows][["ra", "dec"]].reset_index(drop=True)
    table = aligned.iloc[rows].reset_index(drop=True)
    n = len(table)
    size = CUTOUT_SIZE

    cutter = Cutter(size=size, **kw)
    threaded = Cutter(size=size, n_jobs=-1, **kw)
    numpy_cutter = Cutter(size=size, **kw)

    def numpy_engine():
        old = os.environ.get("STARGAL_NUMBA")
        os.environ["STARGAL_NUMBA"] = "0"
        try:
            return numpy_cutter.transform(table)
        finally:
            if old is None:
                os.environ.pop("STARGAL_NUMBA")
            else:
                os.environ["STARGAL_NUMBA"] = old

    def ours_from_radec(c):
        align._MEMO.clear()  # as in a new process: the registration is read from its JSON cache
        return c.transform(aligner.transform(coords))

    # warm-up, not timed: imports, numba compilation or cache load (both kernels), page cache
    cutter.transform(table.iloc[:200])
    threaded.transform(table.iloc[:200])
    numpy_engine()
    t_ours = best_time(lambda: cutter.transform(table), ctx.repeat)
    t_threads = best_time(lambda: threaded.transform(table), ctx.repeat)
    t_numpy = best_time(numpy_engine, ctx.repeat)
    t_radec = best_time(lambda: ours_from_radec(cutter), ctx.repeat)
    t_radec_threads = best_time(lambda: ours_from_radec(threaded), ctx.repeat)

    # Baselines: frames (and WCS) loaded once beforehand, in their favour; timed on a subset, scaled.
    field_ = Field(BENCH_FIELD, **kw)
    frames = {b: field_.frame(b) for b in BANDS}
    images = {b: frames[b].image for b in BANDS}
    wcss = {b: frames[b].wcs for b in BANDS}
    xy = {b: (table[f"x_{b}"].to_numpy(), table[f"y_{b}"].to_numpy()) for b in BANDS}
    ra, dec = coords["ra"].to_numpy(), coords["dec"].to_numpy()

    def astronomer_loop(m):
        out = np.empty((m, len(BANDS), size, size), dtype=np.float32)
        for i in range(m):
            for j, b in enumerate(BANDS):
                out[i, j] = Cutout2D(images[b], SkyCoord(ra[i], dec[i], unit="deg"), size, wcs=wcss[b],
                                     mode="partial", fill_value=np.nan).data
        return out

    def bare_loop(m):
        out = np.empty((m, len(BANDS), size, size), dtype=np.float32)
        for i in range(m):
            for j, b in enumerate(BANDS):
                out[i, j] = Cutout2D(images[b], (xy[b][0][i], xy[b][1][i]), size, mode="partial",
                                     fill_value=np.nan).data
        return out

    def same_job_loop(m):
        # what Cutter computes, one object and band at a time: slice, then Lanczos-3 resample
        half = (size - 1) // 2 + 3
        out = np.empty((m, len(BANDS), size, size), dtype=np.float32)
        for i in range(m):
            for j, b in enumerate(BANDS):
                x, y = xy[b][0][i], xy[b][1][i]
                ix, iy = np.floor(x + 0.5), np.floor(y + 0.5)
                stamp = Cutout2D(images[b], (ix, iy), 2 * half + 1, mode="partial", fill_value=np.nan).data
                kx, ky = kernel_weights([x - ix], size)[0], kernel_weights([y - iy], size)[0]
                out[i, j] = ky @ stamp @ kx.T
        return out

    n_astro, n_bare, n_same = min(n, 300), min(n, 1000), min(n, 300)
    t_astro = best_time(lambda: astronomer_loop(n_astro), 1) * n / n_astro
    t_bare = best_time(lambda: bare_loop(n_bare), ctx.repeat) * n / n_bare
    t_same = best_time(lambda: same_job_loop(n_same), 1) * n / n_same
    field_.release()

    common = f"{n} five-band {size}x{size} cutouts of real frames ({BENCH_FIELD}, catalog repeated)"
    engine = "numba" if numba_available() else "numpy"
    return [
        Result("(a) RA/Dec -> aligned cutouts: Aligner+Cutter vs Cutout2D(SkyCoord, wcs=) loop",
               n / t_radec, n / t_astro, "cutouts/s", 100.0,
               f"like for like, object-centric. Ours: Aligner.transform (field lookup, each band's WCS, "
               f"registration read from its JSON cache) + Cutter.transform (opens the 5 frames, Lanczos-3 "
               f"resampling, {engine} engine, 1 thread). Baseline: for each object and band "
               f"Cutout2D(image, SkyCoord(ra, dec), {size}, wcs=band_wcs, mode='partial'): positions from "
               f"each band's WCS but integer-pixel cutouts (no sub-pixel alignment: less work), frames and WCS "
               f"preloaded; timed on {n_astro} objects and scaled. {common}"),
        Result("(a) same, ours with n_jobs=-1 (numba threads)", n / t_radec_threads, n / t_astro, "cutouts/s",
               None, "as above; ours resamples on all the threads numba may use, the baseline uses one"),
        Result("(b) pixel positions -> cutouts: Cutter vs bare Cutout2D loop", n / t_ours, n / t_bare,
               "cutouts/s", None,
               f"least favourable, no target (the loop does a different, smaller job: it aligns nothing, so its "
               f"cutouts are off by up to half a pixel in every band and by the band offsets unless positions "
               "come from each band's WCS; the target applies to (a), the object-centric "
               f"job): Cutter resamples every band (Lanczos-3, {engine} engine, 1 thread) "
               f"including opening the field (5 memory-mapped frames, no WCS built); the loop only slices "
               f"integer pixels at given positions (no WCS, no resampling), frames preloaded; timed on "
               f"{n_bare} objects and scaled. {common}"),
        Result("(b) same, Cutter with n_jobs=-1 (numba threads)", n / t_threads, n / t_bare, "cutouts/s", None,
               "as above; ours on all the threads numba may use"),
        Result("Cutter: numba engine vs numpy engine", n / t_ours, n / t_numpy, "cutouts/s", None,
               "same Cutter, same cutouts (equal to float32 rounding); numpy engine = STARGAL_NUMBA=0"),
        Result("Cutter vs per-object Cutout2D + Lanczos-3 (same job)", n / t_ours, n / t_same, "cutouts/s", None,
               f"like for like on the resampling: the per-object loop computes what Cutter computes; "
               f"timed on {n_same} objects and scaled"),
    ]


@benchmark("frame-cache")
def bench_frame_cache(ctx: Context) -> list[Result]:
    """First load of a field's 5 bands (decompress .bz2) vs second load (memory-mapped .npy)."""
    from stargal.fetch import Fetcher
    from stargal.frames import Field
    from stargal.sdss import BANDS, frame_path

    sas_url = ctx.require_data()
    cache = Path(tempfile.mkdtemp(prefix="frame-cache-", dir=ctx.scratch))
    fetcher = Fetcher(sas_url, cache_dir=cache, quiet=True)
    # Bring the compressed files into the fresh cache first (not timed: that is the download).
    fetcher.fetch_many([frame_path(BENCH_FIELD, b) for b in BANDS])

    from stargal import frames as frames_module

    def load():
        frames_module._FRAMES.clear()  # the process's loaded frames: the second load maps the .npy again
        field_ = Field(BENCH_FIELD, fetcher)
        frames = field_.frames()
        total = sum(float(f.image[::64, ::64].sum()) for f in frames.values())  # touch the data
        field_.release()
        return total

    t0 = time.perf_counter()
    load()
    t_first = time.perf_counter() - t0
    t_second = best_time(load, max(ctx.repeat, 3))
    return [
        Result("field load: first (bz2) vs cached (.npy memmap)", t_second, t_first, "s", 10.0,
               f"5 bands of {BENCH_FIELD} (2048x1489 float32 each) from a fresh cache: first load "
               "decompresses .fits.bz2, measures sky noise, writes .npy; second memory-maps it"),
    ]


# ----------------------------------------------------------------------------- driver
def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:,.0f} {unit}"


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if value < 10 else f"{value:,.1f}x"


def format_table(results: list[Result], skipped: list[tuple[str, str]]) -> str:
    lines = [
        "| benchmark | ours | baseline | ratio | target | status |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        target = f">= {r.target:g}x" if r.target else ""
        lines.append(f"| {r.name} | {_fmt(r.ours, r.unit)} | {_fmt(r.baseline, r.unit)} | "
                     f"{_ratio(r.ratio)} | {target} | {r.status} |")
    for name, why in skipped:
        lines.append(f"| {name} | skipped: {why} | | | | |")
    notes = [f"- **{r.name}**: {r.note}" for r in results if r.note]
    targeted = [r for r in results if r.target]
    verdict = []
    if targeted:
        met = [f"{r.name} ({_ratio(r.ratio)})" for r in targeted if r.status == "met"]
        missed = [f"{r.name} ({_ratio(r.ratio)} < {r.target:g}x)" for r in targeted if r.status != "met"]
        verdict = ["", "Targets: " + ("met by " + "; ".join(met) if met else "none met")
                   + ("; NOT met by " + "; ".join(missed) if missed else "") + "."]
    return "\n".join(lines + verdict + ([""] + notes if notes else []))


def discover() -> None:
    """Import every ``benchmarks/bench_*.py`` module so that its benchmarks register."""
    import importlib
    import pkgutil

    import benchmarks

    for info in pkgutil.iter_modules(benchmarks.__path__):
        if info.name.startswith("bench_"):
            importlib.import_module(f"benchmarks.{info.name}")


def run(names=None, n_cutouts: int = 5000, repeat: int = 3, sas_url=None) -> tuple[list[Result], list]:
    """Run the registered benchmarks (all, or those in ``names``); return results and skips."""
    results, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="stargal-bench-") as tmp:
        ctx = Context(sas_url if sas_url is not None else _default_sas_url(), Path(tmp), n_cutouts, repeat)
        for name, func in BENCHMARKS:
            if names and name not in names:
                continue
            try:
                results.extend(func(ctx))
            except SkipBenchmark as exc:
                skipped.append((name, str(exc)))
    return results, skipped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help=f"benchmarks to run (default all: "
                                                  f"{', '.join(n for n, _ in BENCHMARKS)})")
    parser.add_argument("--n", type=int, default=5000, help="number of cutouts for the Cutter benchmark")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many timings per side")
    default_out = DEFAULT_OUT.relative_to(REPO_ROOT)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"also write the table (markdown) to this file (default {default_out})")
    parser.add_argument("--no-write", action="store_true", help="only print the table")
    discover()
    args = parser.parse_args(argv)
    unknown = set(args.only or ()) - {n for n, _ in BENCHMARKS}
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}")
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results, skipped = run(args.only, args.n, args.repeat)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = format_table(results, skipped)
    header = (f"# stargal benchmarks\n\nMeasured side by side in one run ({time.perf_counter() - t0:.0f} s, "
              f"{os.cpu_count()} CPUs, numpy {np.__version__}; {_engine_note()}). Each ratio compares two "
              "timings taken one after the other in this process (best of several runs), so machine load "
              f"affects both sides alike. 1-minute load average at the start and end of the run: {load0:.1f}, "
              f"{load1:.1f} (this includes other users of the machine; above the number of CPUs the figures "
              "are noisy).\n\n")
    print(header + table)
    if args.out and not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(header + table + "\n")
    return 0


if __name__ == "__main__":
    # Run the registry of the importable module ``benchmarks.run`` (not this ``__main__`` copy),
    # so benchmarks registered from other modules via ``from benchmarks.run import benchmark`` count.
    from benchmarks.run import main as _main

    sys.exit(_main())
