"""The ``crs4-cassandra`` command."""

from __future__ import annotations

import argparse
import sys

from .errors import LoaderError


def _ingest_folder(args: argparse.Namespace) -> int:
    from .ingest import ingest_folder

    report = ingest_folder(
        args.src,
        args.store,
        args.table,
        val_frac=args.val_frac,
        seed=args.seed,
        split_file=args.split_file,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(report.summary())
    if args.split_file:
        print(f"split file written to {args.split_file}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crs4-cassandra", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="write a dataset into a store")
    isub = ingest.add_subparsers(dest="layout", required=True)
    folder = isub.add_parser("folder", help="an ImageFolder layout: SRC/<class>/<image>")
    folder.add_argument("src", help="dataset root, one sub-folder per class")
    folder.add_argument("--store", required=True, help="store URL, e.g. local:/data/store")
    folder.add_argument("--table", required=True, help="data table name")
    folder.add_argument("--val-frac", type=float, default=0.2, help="fraction for the val split")
    folder.add_argument("--seed", type=int, default=0, help="seed of the split")
    folder.add_argument("--split-file", help="where to write the split file")
    folder.add_argument("--overwrite", action="store_true", help="replace existing tables")
    folder.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    folder.set_defaults(func=_ingest_folder)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except (LoaderError, OSError, ValueError) as e:
        print(f"crs4-cassandra: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
