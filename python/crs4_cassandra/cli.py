"""The ``crs4-cassandra`` command."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import LoaderError, StoreConnectionError, StoreIOError, StoreTimeoutError


def add_transform_args(p: argparse.ArgumentParser) -> None:
    """The ingest transform flags (--resize-shorter, --center-crop,
    --jpeg-quality, --to-jpeg); :func:`transform_from_args` reads them."""
    g = p.add_argument_group(
        "transforms",
        "applied once, as images are written (Rust, on the writer's threads); JPEG and PNG inputs",
    )
    g.add_argument(
        "--resize-shorter",
        type=int,
        metavar="N",
        help="shorter side to N pixels, aspect kept (bicubic, as Pillow's resize); "
        "smaller images keep their size",
    )
    g.add_argument("--center-crop", action="store_true", help="then keep the centre square (N x N)")
    g.add_argument(
        "--jpeg-quality",
        type=int,
        metavar="Q",
        help="re-encode JPEGs at quality Q (1-100; default 90 for images re-encoded anyway)",
    )
    g.add_argument("--to-jpeg", action="store_true", help="store PNGs (and JPEG outputs) as JPEG")


def transform_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~crs4_cassandra.ingest.Transform` the flags of
    :func:`add_transform_args` ask for, None when none is given."""
    from .ingest import Transform

    t = Transform(
        resize_shorter=getattr(args, "resize_shorter", None),
        center_crop=getattr(args, "center_crop", False),
        jpeg_quality=getattr(args, "jpeg_quality", None),
        to_jpeg=getattr(args, "to_jpeg", False),
    )
    return None if t.is_identity() else t


def _ingest_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options every ingest command takes: split, write mode, progress
    and transforms."""
    return {
        "val_frac": args.val_frac,
        "seed": args.seed,
        "split_file": args.split_file,
        "overwrite": args.overwrite,
        "resume": args.resume,
        "progress": not args.quiet,
        "transform": transform_from_args(args),
    }


def _ingest_folder(args: argparse.Namespace) -> int:
    if args.ray is not None:
        from . import ray as ray_ingest

        report = ray_ingest.ingest_folder(
            args.src,
            args.store_url,
            args.table,
            address=args.ray,
            **_ingest_options(args),
            **_connection_options(args),
        )
        return _report(report, args)
    from .ingest import ingest_folder

    report = ingest_folder(
        args.src,
        args.store,
        args.table,
        **_ingest_options(args),
    )
    print(report.summary())
    if args.split_file:
        print(f"split file written to {args.split_file}")
    return 0


def _ingest_array(args: argparse.Namespace) -> int:
    from .arrays import ingest

    chunks = None if args.chunks is None else [int(c) for c in args.chunks.split(",")]
    written = ingest(
        args.src,
        args.store,
        name=args.name,
        chunks=chunks,
        compression=None if args.compression == "none" else args.compression,
        level=args.level,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    for a in written:
        print(
            f"array {a.name!r}: shape {a.shape} {a.dtype}, chunks {a.chunks}, "
            f"{a.num_chunks} chunks, {a.nbytes} bytes"
        )
    return 0


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        required=True,
        help="store URL: local:/data/store or cassandra://host1,host2:9042/keyspace",
    )
    g = p.add_argument_group(
        "Cassandra connection",
        "the password is read from $CRS4_CASSANDRA_PASSWORD (or the variable named by "
        "--password-env), never from the command line",
    )
    g.add_argument("--username")
    g.add_argument("--password-env", help="environment variable holding the password")
    g.add_argument("--use-ssl", action="store_true", default=None, help="connect with TLS")
    g.add_argument("--ssl-certificate", help="PEM certificate (or CA) to trust for the server")
    g.add_argument("--ssl-own-certificate", help="client certificate (PEM) for mutual TLS")
    g.add_argument("--ssl-own-key", help="client private key (PEM) for mutual TLS")
    g.add_argument("--connect-timeout", type=float, help="seconds")
    g.add_argument(
        "--replication",
        help="replication of a keyspace ingest creates, default "
        "\"{'class': 'SimpleStrategy', 'replication_factor': 1}\"",
    )


# The connection flags (see _store_args), by their option names.
CONNECTION_OPTIONS = (
    "username",
    "password_env",
    "use_ssl",
    "ssl_certificate",
    "ssl_own_certificate",
    "ssl_own_key",
    "connect_timeout",
    "replication",
)


def _connection_options(args: argparse.Namespace) -> dict[str, Any]:
    """The connection flags given on the command line, as open_store options."""
    return {k: getattr(args, k) for k in CONNECTION_OPTIONS if getattr(args, k, None) is not None}


def _open_store(args: argparse.Namespace) -> Any:
    """The store named by --store and the connection flags; ingest creates a local store."""
    from . import _native
    from .dataset import open_store

    url: str = args.store
    if url.startswith("local:"):
        if args.command == "ingest":
            # Ingest creates the store itself, once it has checked the source:
            # a missing or empty source leaves no empty store behind.
            return url
        return _native.open_store(url)
    return open_store(url, **_connection_options(args))


def _common_ingest_args(p: argparse.ArgumentParser) -> None:
    _store_args(p)
    p.add_argument("--table", required=True, help="data table name")
    p.add_argument(
        "--val-frac",
        type=float,
        default=0.2,
        help="fraction for the val split, where the source has no split of its own",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument("--split-file", help="where to write the split file")
    _write_mode_args(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_ray_argument(p: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]``: the ingest runs on a Ray cluster (see crs4_cassandra.ray)."""
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run the ingest on the Ray cluster at ADDRESS ('auto', 'ray://host:10001'), "
        "or on a local one started for it when no address is given; the files must be "
        "readable at the same path from every node",
    )


def _write_mode_args(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace existing tables")
    mode.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted ingest of the same source into the same tables: "
        "write the samples it had not written, then the split file",
    )


def _report(report: Any, args: argparse.Namespace) -> int:
    print(report.summary())
    if args.split_file:
        print(f"split file written to {args.split_file}")
    return 0


def _ingest_segmentation(args: argparse.Namespace) -> int:
    from .ingest import ingest_segmentation

    classes = _names(args.classes)
    report = ingest_segmentation(
        args.src,
        args.store,
        args.table,
        classes=classes,
        images=args.images,
        annotations=args.annotations,
        **_ingest_options(args),
    )
    return _report(report, args)


def _ingest_multilabel(args: argparse.Namespace) -> int:
    from .ingest import ingest_multilabel

    report = ingest_multilabel(
        args.src,
        args.store,
        args.table,
        label_files=args.labels or None,
        images=args.images,
        **_ingest_options(args),
    )
    return _report(report, args)


def _ingest_webdataset(args: argparse.Namespace) -> int:
    options = {
        "label_type": args.label_type,
        "image_ext": _names(args.image_ext),
        "label_key": args.label_key,
        "name_key": args.name_key,
        "mask_ext": args.mask_ext,
        "classes": _names(args.classes),
        "split": args.split,
        **_ingest_options(args),
    }
    if args.ray is not None:
        from . import ray as ray_ingest

        report = ray_ingest.ingest_webdataset(
            args.shards,
            args.store_url,
            args.table,
            address=args.ray,
            **options,
            **_connection_options(args),
        )
        return _report(report, args)
    from .webdataset import ingest_webdataset

    report = ingest_webdataset(args.shards, args.store, args.table, **options)
    return _report(report, args)


def _export_webdataset(args: argparse.Namespace) -> int:
    from .webdataset import export_webdataset

    report = export_webdataset(
        args.store,
        args.output,
        split_file=args.split_file,
        split=args.split,
        table=args.table,
        label_type=args.label_type,
        metadata_table=args.metadata_table,
        shard_size=args.shard_size,
        samples_per_shard=args.samples_per_shard,
        max_samples=args.max_samples,
        label_ext=args.label_ext,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(report.summary())
    return 0


def _add_webdataset_parsers(isub: Any, sub: Any) -> None:
    w = isub.add_parser(
        "webdataset",
        aliases=["wds"],
        help="WebDataset tar shards: 'shards/train-{000000..000099}.tar', globs or files",
    )
    w.add_argument(
        "shards", nargs="+", help="shard files: brace patterns (quoted), globs, folders or files"
    )
    _common_ingest_args(w)
    w.add_argument(
        "--label-type",
        choices=("int", "blob", "none"),
        help="int: from the .cls member or a .json field (the default); blob: the --mask-ext "
        "member (the default with --mask-ext); none",
    )
    w.add_argument(
        "--image-ext",
        help="image member extensions, in order of preference, e.g. jpg,png (default: the "
        "first member with an image extension)",
    )
    w.add_argument("--label-key", default="label", help=".json field of an int label")
    w.add_argument("--name-key", default="label_name", help=".json field of the label's name")
    w.add_argument(
        "--mask-ext", help="extension of the member holding a blob label, e.g. seg.png or png"
    )
    w.add_argument("--classes", help="name of each int label: a,b,c or @file (one a line)")
    w.add_argument(
        "--split",
        help="every sample's split tag (default: the .json's \"split\", else the shard's "
        "name: train-000003.tar is train)",
    )
    add_transform_args(w)
    add_ray_argument(w)
    w.set_defaults(func=_ingest_webdataset)

    export = sub.add_parser("export", help="write a store's samples out as files")
    esub = export.add_subparsers(dest="format", required=True)
    e = esub.add_parser(
        "webdataset", aliases=["wds"], help="WebDataset tar shards that webdataset reads"
    )
    e.add_argument("output", help="shard names, with a shard number: OUT/train-%%06d.tar")
    _store_args(e)
    e.add_argument("--split-file", help="export a split of this split file")
    e.add_argument("--split", help="the split to export")
    e.add_argument(
        "--table",
        help="data table (default: the split file's); without a split file, every sample "
        "of its metadata table, in its order",
    )
    e.add_argument(
        "-m",
        "--metadata-table",
        help="metadata table (default: the split file's, or TABLE_metadata)",
    )
    e.add_argument("--label-type", choices=("int", "blob", "none"))
    e.add_argument(
        "--shard-size",
        default="1GB",
        help="largest shard: bytes, or with KB, MB, GB (1000s) or KiB, MiB, GiB (1024s); "
        "default 1GB",
    )
    e.add_argument("--samples-per-shard", type=int, help="most samples in one shard")
    e.add_argument("--max-samples", type=int, help="export the first N samples only")
    e.add_argument(
        "--label-ext",
        help="member extension of blob labels (default: label.png, label.npy... by their content)",
    )
    e.add_argument("--batch-size", type=int, default=64, help="samples a store read fetches")
    e.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the shards of the pattern (those not written again are removed)",
    )
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_export_webdataset)


def _names(text: str | None) -> list[str]:
    """Names from "a,b,c" or "@file" (one a line)."""
    if not text:
        return []
    if text.startswith("@"):
        with open(text[1:]) as f:
            return [line.strip() for line in f if line.strip()]
    return [x.strip() for x in text.split(",") if x.strip()]


def _split_create(args: argparse.Namespace) -> int:
    from .split_builder import create_split

    try:
        ratios = [float(x) for x in args.ratios.split(",")]
    except ValueError:
        raise ValueError(
            f"--ratios must be numbers separated by commas, got {args.ratios!r}"
        ) from None
    sf = create_split(
        args.store,
        args.metadata_table,
        ratios,
        names=_names(args.names) or None,
        seed=args.seed,
        mode=args.mode,
        table=args.table,
        classes=_names(args.classes) or None,
    )
    sf.save(args.output)
    sizes = ", ".join(f"{n}={len(sf.uuids(n))}" for n in sf.names())
    print(
        f"split file {args.output}: table {sf.table!r} ({sf.label_type} labels, "
        f"{len(sf.classes)} classes), mode {args.mode}: {sizes}"
    )
    return 0


def _serve_triton(args: argparse.Namespace) -> int:
    """``serve triton``: writes the model repository and runs tritonserver over it."""
    import tempfile

    from .triton import ModelSettings, TritonServer, write_repository
    from .triton.server import package_root

    options = _connection_options(args)
    size = None
    if args.size:
        h, w = (int(x) for x in args.size.lower().replace("x", ",").split(","))
        size = (h, w)
    elif args.model:
        size = (224, 224)
    settings = ModelSettings(
        store=args.store.url,
        table=args.table,
        label_type=args.label_type,
        store_options=options,
        batch_size=args.batch_size,
        max_uuids=args.max_uuids,
        size=size,
        decoder=args.decoder,
        model=args.model or "",
        instances=args.instances,
        gpu=args.gpu,
        python_path=args.python_path or package_root(),
    )
    if args.write_repository:
        out = write_repository(args.write_repository, settings)
        print(f"model repository written to {out}: tritonserver --model-repository {out}")
        return 0
    with tempfile.TemporaryDirectory(prefix="crs4-triton-") as tmp:
        repo = write_repository(args.repository or f"{tmp}/models", settings)
        server = TritonServer(
            repo,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            tritonserver=args.tritonserver,
            log_path=args.log,
            verbose=args.verbose,
        )
        server.start()
        print(
            f"serving {args.table!r} of {args.store.url}: models crs4_cassandra_interactive and "
            f"crs4_cassandra_stream; HTTP on :{args.http_port}, gRPC on :{args.grpc_port}, "
            f"metrics on :{args.metrics_port} (Ctrl-C stops)",
            flush=True,
        )
        return server.wait()


def _add_serve_parser(sub: Any) -> None:
    serve = sub.add_parser("serve", help="serve the samples for inference")
    ssub = serve.add_subparsers(dest="server", required=True)
    t = ssub.add_parser(
        "triton",
        help="NVIDIA Triton: models crs4_cassandra_interactive and crs4_cassandra_stream",
    )
    _store_args(t)
    t.add_argument("--table", required=True, help="data table")
    t.add_argument("--label-type", choices=("int", "blob", "none"), default="int")
    t.add_argument("--model", help="TorchScript file run on the decoded images (PREDICTIONS)")
    t.add_argument("--size", help="decode and resize images to H,W (default 224,224 with --model)")
    t.add_argument(
        "--decoder",
        choices=("auto", "rust", "dali"),
        default="auto",
        help="auto: DALI on GPU instances when installed, else Rust on CPU",
    )
    t.add_argument("--gpu", action="store_true", help="run the model instances on GPU 0")
    t.add_argument("--instances", type=int, default=2, help="interactive model instances")
    t.add_argument("--batch-size", type=int, default=64, help="samples per stream response")
    t.add_argument("--max-uuids", type=int, default=4096, help="uuids per interactive request")
    t.add_argument("--http-port", type=int, default=8000)
    t.add_argument("--grpc-port", type=int, default=8001)
    t.add_argument("--metrics-port", type=int, default=8002)
    t.add_argument("--tritonserver", help="a stock tritonserver binary (default: the bundled one)")
    t.add_argument("--python-path", help="where the models import crs4_cassandra from")
    t.add_argument("--repository", help="where to write the model repository (default: a temp dir)")
    t.add_argument(
        "--write-repository",
        metavar="DIR",
        help="only write the model repository to DIR, for a stock tritonserver",
    )
    t.add_argument("--log", help="tritonserver's log file (default: discarded)")
    t.add_argument("--verbose", action="store_true", help="tritonserver --log-verbose=1")
    t.set_defaults(func=_serve_triton)


def _probe(args: argparse.Namespace) -> int:
    """Reads for a few seconds, as training would, and prints what was seen."""
    import json
    import time

    import numpy as np

    from .dataset import ShardedDataset
    from .errors import InvalidArgumentError
    from .split_file import SplitFile

    if args.split_file:
        sf = SplitFile.load(args.split_file)
        table = args.table or sf.table
        uuids = sf.uuids(args.split)
        label_type = args.label_type or sf.label_type
    else:
        if not args.table:
            raise InvalidArgumentError("give --table, or a --split-file")
        table = args.table
        rows = args.store.scan_metadata(args.metadata_table or f"{table}_metadata")
        uuids = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.uint8).reshape(-1, 16)
        label_type = args.label_type or "int"
    if len(uuids) == 0:
        raise InvalidArgumentError(f"no samples to read for table {table!r}")
    ds = ShardedDataset(
        args.store, table, uuids, args.batch_size, label_type=label_type, rank=0, world_size=1
    )
    deadline = time.monotonic() + args.seconds
    epochs: list[dict[str, object]] = []
    epoch = 0
    while time.monotonic() < deadline:
        ds.set_epoch(epoch)
        for _ in ds:
            if time.monotonic() >= deadline:
                break
        figures = ds.stats()
        e = figures["last"] if figures["last"] and figures["last"]["epoch"] == epoch else None
        epochs.append(e or figures["current"] or {})
        epoch += 1
    ds.close()
    steady = [e for e in epochs[1:] if e.get("complete")] or epochs[-1:]
    last = _sequential(steady)
    report = {
        "table": table,
        "samples": len(uuids),
        "batch_size": args.batch_size,
        "epochs_read": len(epochs),
        "first_epoch": _probe_line(epochs[0]),
        "steady": _probe_line(last),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"table {table}: {len(uuids)} samples, batch size {args.batch_size}, "
          f"{len(epochs)} epoch(s) in {args.seconds:g} s")  # fmt: skip
    for name in ("first_epoch", "steady"):
        r = report[name]
        assert isinstance(r, dict)
        print(f"{name.replace('_', ' ')}: {r['samples_per_s']:,.0f} samples/s, "
              f"{r['mb_per_s']:.1f} MB/s, batch read p50/p90/p99 {r['batch_read_ms']} ms, "
              f"window {r['window']}, in flight {r['in_flight']}, "
              f"{r['reads']} reads, {r['retries']} retries, {r['timeouts']} timeouts, "
              f"{r['hedged']} hedged ({r['hedges_won']} won)")  # fmt: skip
        for addr, node in r["nodes"].items():
            print(f"  node {addr}: {node['reads']} reads, latency p50/p90/p99 "
                  f"{node['latency_ms']} ms")  # fmt: skip
    return 0


def _sequential(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of consecutive epochs of one reader as one: histograms
    added (the percentiles recomputed), rates over the summed time, the
    window of the last."""
    import json

    from . import _native

    if len(epochs) == 1 or not epochs[0]:
        return epochs[-1]
    merged = _native.merge_stats([json.dumps(e) for e in epochs])
    assert merged is not None
    out: dict[str, Any] = json.loads(merged)
    seconds = sum(e["seconds"] for e in epochs)
    out["seconds"] = seconds
    out["samples_per_s"] = out["samples"] / seconds if seconds else 0.0
    out["mb_per_s"] = out["bytes"] / 1e6 / seconds if seconds else 0.0
    out["window"], out["in_flight"] = epochs[-1]["window"], epochs[-1]["in_flight"]
    return out


def _fmt_ms(p: dict[str, float | None]) -> str:
    return "/".join("-" if p[k] is None else f"{p[k]:.1f}" for k in ("p50", "p90", "p99"))


def _probe_line(e: dict[str, Any]) -> dict[str, Any]:
    if not e:
        return {}
    return {
        "samples_per_s": e["samples_per_s"],
        "mb_per_s": e["mb_per_s"],
        "seconds": e["seconds"],
        "batch_read_ms": _fmt_ms(e["batch_read_ms"]),
        "window": round(e["window"]["last"]),
        "in_flight": round(e["in_flight"]["mean"], 1),
        "reads": e["reads"],
        "retries": e["retries"],
        "timeouts": e["timeouts"],
        "hedged": e["hedged"],
        "hedges_won": e["hedges_won"],
        "nodes": {
            a: {"reads": n["reads"], "latency_ms": _fmt_ms(n["latency_ms"])}
            for a, n in e["nodes"].items()
        },
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crs4-cassandra", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="write a dataset into a store")
    isub = ingest.add_subparsers(dest="layout", required=True)
    folder = isub.add_parser("folder", help="an ImageFolder layout: SRC/<class>/<image>")
    folder.add_argument("src", help="dataset root, one sub-folder per class")
    _store_args(folder)
    folder.add_argument("--table", required=True, help="data table name")
    folder.add_argument("--val-frac", type=float, default=0.2, help="fraction for the val split")
    folder.add_argument("--seed", type=int, default=0, help="seed of the split")
    folder.add_argument("--split-file", help="where to write the split file")
    _write_mode_args(folder)
    folder.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_transform_args(folder)
    add_ray_argument(folder)
    folder.set_defaults(func=_ingest_folder)

    seg = isub.add_parser(
        "segmentation",
        aliases=["ade20k"],
        help="images and PNG masks: SRC/images/[<split>/]*.jpg, SRC/annotations/[<split>/]*.png",
    )
    seg.add_argument("src", help="dataset root (e.g. ADEChallengeData2016)")
    _common_ingest_args(seg)
    seg.add_argument("--images", default="images", help="images folder under SRC")
    seg.add_argument("--annotations", default="annotations", help="masks folder under SRC")
    seg.add_argument("--classes", help="name of each mask value: a,b,c or @file (one a line)")
    # Re-encoding only: resizing or cropping the images would leave their masks behind.
    add_transform_args(seg)
    seg.set_defaults(func=_ingest_segmentation)

    ml = isub.add_parser(
        "multilabel",
        aliases=["corel5k"],
        help="images and JSON label lists: SRC/images/*, SRC/{train,test}.json",
    )
    ml.add_argument("src", help="dataset root (e.g. Corel-5k)")
    _common_ingest_args(ml)
    ml.add_argument("--images", default="images", help="images folder under SRC")
    ml.add_argument(
        "--labels", nargs="+", help="label files (default: every SRC/*.json; each one a split)"
    )
    add_transform_args(ml)
    ml.set_defaults(func=_ingest_multilabel)
    _add_webdataset_parsers(isub, sub)

    arr = isub.add_parser(
        "array",
        help="N-d arrays: a .npy file, a zarr array or group, an image, or a folder of images",
    )
    arr.add_argument("src", help=".npy file, zarr array/group, TIFF/PNG/JPEG image or folder")
    _store_args(arr)
    arr.add_argument("--name", help="array name (default: the source's; a prefix for several)")
    arr.add_argument("--chunks", help="chunk shape, e.g. 512,512,3 (default: 512x512 tiles)")
    arr.add_argument("--compression", choices=("zstd", "none"), default="zstd")
    arr.add_argument("--level", type=int, help="zstd level (1-22, default 3)")
    arr.add_argument("--overwrite", action="store_true", help="replace existing arrays")
    arr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    arr.set_defaults(func=_ingest_array)

    split = sub.add_parser("split", help="split files")
    ssub = split.add_subparsers(dest="split_command", required=True)
    create = ssub.add_parser("create", help="build a split file from a metadata table")
    _store_args(create)
    create.add_argument("-m", "--metadata-table", required=True, help="metadata table")
    create.add_argument(
        "--table", help="data table (default: the metadata table without its _metadata suffix)"
    )
    create.add_argument(
        "-r", "--ratios", default="8,2", help="relative split sizes, e.g. 8,2 or 7,2,1"
    )
    create.add_argument("--names", help="split names (default: train,val,test)")
    create.add_argument("--seed", type=int, default=0, help="seed of the shuffle")
    create.add_argument(
        "--mode",
        choices=("random", "original", "weighted"),
        default="random",
        help="random: shuffle and cut; original: the dataset's own split tags; "
        "weighted: stratified, each split with the class proportions",
    )
    create.add_argument(
        "--classes", help="class names, where the metadata lack them: a,b,c or @file"
    )
    create.add_argument("-o", "--output", required=True, help="split file to write")
    create.set_defaults(func=_split_create)
    probe = sub.add_parser(
        "probe",
        help="read a table for a few seconds and print throughput, round trips and window",
    )
    _store_args(probe)
    probe.add_argument("--table", help="data table (default: the split file's)")
    probe.add_argument("--split-file", help="read the samples of a split of this split file")
    probe.add_argument("--split", default="train", help="split to read (default: train)")
    probe.add_argument(
        "-m", "--metadata-table", help="without a split file: the uuids of this metadata table "
        "(default: TABLE_metadata)"
    )  # fmt: skip
    probe.add_argument("--label-type", choices=("int", "blob", "none"))
    probe.add_argument("--batch-size", type=int, default=32)
    probe.add_argument("--seconds", type=float, default=5.0, help="how long to read")
    probe.add_argument("--json", action="store_true", help="print the report as JSON")
    probe.set_defaults(func=_probe)
    _add_serve_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "store", None) is not None:
            # Ray tasks open stores of their own, from the URL and the flags.
            args.store_url = args.store
            args.store = _open_store(args)
        code: int = args.func(args)
        return code
    except (LoaderError, OSError, ValueError) as e:
        print(f"crs4-cassandra: error: {e}", file=sys.stderr)
        if args.command == "ingest" and isinstance(
            e, (StoreConnectionError, StoreTimeoutError, StoreIOError)
        ):
            print(
                "crs4-cassandra: what was written is kept: run the same command with "
                "--resume to finish it",
                file=sys.stderr,
            )
        return 2
    except KeyboardInterrupt:
        if args.command != "ingest":
            raise
        print(
            "crs4-cassandra: interrupted; what was written is kept: run the same command "
            "with --resume to finish it (or --overwrite to start over)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
