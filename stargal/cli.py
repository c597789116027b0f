"""Command line: ``stargal fetch | train | predict | evaluate``.

Examples
--------
::

    export STARGAL_SAS_URL=file:///path/to/sdss-mirror     # default: https://data.sdss.org/sas/
    stargal fetch 8162-6-80 1035-6-17
    stargal train --model-type cnn -o model.stargal          # default study, test field excluded
    stargal predict --model model.stargal coords.csv -o out.csv
    stargal evaluate --model model.stargal 8162-6-80
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sas-url", default=None,
                   help="SAS base URL (https://, http:// or file://); default $STARGAL_SAS_URL or the real SAS")
    p.add_argument("--cache-dir", default=None, help="cache directory; default $STARGAL_CACHE or the user cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stargal", description="Star/galaxy classification of SDSS objects.")
    parser.add_argument("--version", action="version", version=f"stargal {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="download frames and catalogs of SDSS fields into the cache")
    p.add_argument("fields", nargs="+", help="fields as RUN-CAMCOL-FIELD, e.g. 8162-6-80")
    p.add_argument("--bands", default="ugriz", help="bands to fetch (default ugriz)")
    p.add_argument("--no-catalogs", action="store_true", help="skip the calibObj star/gal catalogs")
    p.add_argument("--preview", action="store_true", help="also fetch the irg colour JPEG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_source(p)

    p = sub.add_parser("train", help="fit a model on the study's train fields (test fields excluded)")
    p.add_argument("--config", default=None, help="study TOML (default: the packaged study)")
    p.add_argument("--model-type", choices=["cnn", "hybrid", "forest", "rule", "majority"], default=None,
                   help="model kind (default: the study config's default_model, the kind that won "
                        "leave-one-field-out in the study)")
    p.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                   help="pipeline parameter, e.g. net__max_epochs=10 or cut__size=21 (repeatable)")
    p.add_argument("-o", "--output", default="model.stargal", help="model file to write")
    p.add_argument("--no-calibrate", action="store_true",
                   help="fit on train + validation objects and skip calibrating p_galaxy on the validation "
                        "sky groups (default: fit on train, calibrate on validation)")
    _add_source(p)

    p = sub.add_parser("predict", help="galaxy probabilities for a CSV of coordinates",
                       description="Galaxy probabilities for a CSV of coordinates. Coordinate columns are "
                                   "found by name, in any case: " + _column_names() + ". Values are "
                                   "degrees or sexagesimal (22:06:48.0 +26:57:00, 22h06m48s; RA with ':' in "
                                   "hours). The output keeps every input column as it was and adds "
                                   "ra_deg, dec_deg (ICRS), field, p_galaxy, label, flag, flag_detail.")
    p.add_argument("coords", help="CSV of coordinates (RA/Dec, or l/b with --frame galactic)")
    p.add_argument("--model", required=True, help="model file from `stargal train`")
    p.add_argument("-o", "--output", default="-", help="output CSV (default stdout)")
    p.add_argument("--fields", nargs="*", default=None,
                   help="candidate fields, skipping the lookup (default: each row's run/camcol/field "
                        "columns, else SDSS's window_flist index: anywhere in the survey)")
    p.add_argument("--field-prior", action="store_true",
                   help="move each field's probabilities to that field's own galaxy fraction, estimated "
                        "from the listed objects without labels (for catalogs of whole fields)")
    p.add_argument("--chunksize", type=int, default=100_000,
                   help="rows read and classified at a time (memory: one chunk + one field's frames)")
    p.add_argument("--n-jobs", type=int, default=1, help="workers: fields processed in parallel; with fewer "
                   "fields than workers, a measured model (forest, rule) splits the rows over threads")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address tcp://host:port")
    p.add_argument("--frame", default="icrs", choices=["icrs", "fk5", "fk4", "galactic"],
                   help="frame of the input coordinates (default icrs); galactic reads l/b columns")
    p.add_argument("--ra-column", default=None, metavar="NAME",
                   help="name of the RA (or l) column, if it is not one of the accepted names")
    p.add_argument("--dec-column", default=None, metavar="NAME",
                   help="name of the Dec (or b) column, if it is not one of the accepted names")
    p.add_argument("--strict", action="store_true",
                   help="error on unusable coordinates (missing, unparseable, out of range) instead of a flag")
    _add_source(p)

    p = sub.add_parser("evaluate", help="metrics of a model on labelled objects")
    p.add_argument("catalog", nargs="+",
                   help="fields (RUN-CAMCOL-FIELD: their calibObj labels) or a CSV with ra, dec, label")
    p.add_argument("--model", required=True, action="append",
                   help="model file from `stargal train` (repeat to compare models side by side)")
    p.add_argument("--by-magnitude", action="store_true", help="also print metrics per r-magnitude bin")
    _add_source(p)
    return parser


def _column_names() -> str:
    from .catalogs import COORDINATE_COLUMNS

    ra, dec = COORDINATE_COLUMNS["equatorial"]
    lon, lat = COORDINATE_COLUMNS["galactic"]
    return (f"RA: {', '.join(ra)}; Dec: {', '.join(dec)}; with --frame galactic, longitude: "
            f"{', '.join(lon)}; latitude: {', '.join(lat)}")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("stargal")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


def _cmd_fetch(args) -> int:
    from .fetch import Fetcher, fetch_field
    from .sdss import FieldID

    fids = [FieldID.parse(f) for f in args.fields]
    fetcher = Fetcher(args.sas_url, args.cache_dir, quiet=args.quiet)
    for fid in fids:
        paths = fetch_field(fid, fetcher, bands=tuple(args.bands), catalogs=not args.no_catalogs,
                            preview=args.preview)
        if not args.quiet:
            print(f"{fid}: {len(paths)} files in {fetcher.cache_dir}")
    return 0


def _cmd_train(args) -> int:
    from .training import parse_param_overrides, train_model

    params = parse_param_overrides(args.set)
    model, info = train_model(args.model_type, config=args.config, params=params,
                              sas_url=args.sas_url, cache_dir=args.cache_dir, model_path=args.output,
                              calibrate=not args.no_calibrate)
    print(info["summary"])
    print(f"model written to {args.output}")
    return 0


def _cmd_predict(args) -> int:
    from .persist import load_model
    from .predict import predict_csv

    model = load_model(args.model)
    if args.fields is not None and not args.fields:
        raise ValueError("--fields needs at least one RUN-CAMCOL-FIELD (omit it to look fields up in window_flist)")
    if (args.ra_column is None) != (args.dec_column is None):
        raise ValueError("give both --ra-column and --dec-column (or neither)")
    columns = (args.ra_column, args.dec_column) if args.ra_column is not None else None
    output = sys.stdout if args.output == "-" else args.output
    stats = predict_csv(model, args.coords, output, chunksize=args.chunksize, fields=args.fields,
                        field_prior=args.field_prior, frame=args.frame, columns=columns,
                        strict=args.strict, n_jobs=args.n_jobs, scheduler=args.scheduler, sas_url=args.sas_url,
                        cache_dir=args.cache_dir, progress=sys.stderr.isatty())
    if args.output != "-":
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(stats["flags"].items()))
        print(f"{stats['n_rows']} objects -> {args.output} ({stats['n_flagged']} flagged: no data"
              f"{'; ' + detail if detail else ''})", file=sys.stderr)
    return 0


def _cmd_evaluate(args) -> int:
    from .training import evaluate_model

    report = evaluate_model(args.model, args.catalog, sas_url=args.sas_url, cache_dir=args.cache_dir,
                            by_magnitude=args.by_magnitude)
    print(report)
    return 0


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    """Warnings as ``stargal: warning: ...`` lines on stderr (no source line echoed)."""
    print(f"stargal: warning: {message}", file=file or sys.stderr)


def main(argv=None) -> int:
    """Entry point of the ``stargal`` console script."""
    import warnings

    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warnings
    handlers = {"fetch": _cmd_fetch, "train": _cmd_train, "predict": _cmd_predict, "evaluate": _cmd_evaluate}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, LookupError, TypeError) as exc:
        # Bad input and missing data: a clear one-line message, not a traceback.
        print(f"stargal {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
