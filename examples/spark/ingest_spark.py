"""An ImageFolder written into a store from Spark, in either of two ways.

``--engine writer`` (default): Spark reads the files (its ``binaryFile``
source) and each partition is written by ``foreachPartition`` through
crs4_cassandra's Writer, into the local store or Cassandra: the ids, rows and
rejected files are those of ``crs4-cassandra ingest folder``.

``--engine connector`` (Cassandra): the DataFrame (id, label, data) is written
by the Spark Cassandra Connector's DataFrame writer into a table of the
loader's data model (``id uuid PRIMARY KEY, label int, data blob``), which
``ShardedDataset`` then reads like any other. Needs the connector's jars:
``--jars DIR`` (default ``$CRS4_SPARK_JARS``, which ``make spark-connector``
fills).

    python examples/spark/ingest_spark.py SRC --store local:/data/store --table imgs \\
        --split-file imgs.split

Prints the write summary, then a last line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from pyspark import AccumulatorParam
from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from crs4_cassandra import SplitFile
from crs4_cassandra.ingest import Writer, WriteSummary, sample_uuid, scan_image_folder
from crs4_cassandra.split_builder import add_splits


class SummaryParam(AccumulatorParam):  # type: ignore[type-arg]
    """Merges the write summaries of the partitions (once per task: Spark
    applies an action's accumulator updates of a retried task once)."""

    def zero(self, value: WriteSummary) -> WriteSummary:
        return WriteSummary()

    def addInPlace(self, a: WriteSummary, b: WriteSummary) -> WriteSummary:  # noqa: N802
        return a.merge(b)


def local_path(uri: str) -> str:
    """The file path of a ``file:`` URI as Spark's binaryFile source gives it."""
    return unquote(urlparse(uri).path)


def spark_session(jars: str | None, cassandra: tuple[str, int] | None) -> SparkSession:
    # Local mode: the Python workers run this interpreter (and see its packages).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    b = (
        SparkSession.builder.master("local[2]")
        .appName("crs4_cassandra ingest")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
    )
    if jars:
        files = sorted(str(p) for p in Path(jars).glob("*.jar"))
        if not files:
            raise SystemExit(f"no jar in {jars}: run `make spark-connector`")
        b = b.config("spark.jars", ",".join(files))
    if cassandra is not None:
        host, port = cassandra
        b = b.config("spark.cassandra.connection.host", host).config(
            "spark.cassandra.connection.port", str(port)
        )
    return b.getOrCreate()


def cassandra_host(url: str) -> tuple[str, str, int]:
    """(host, keyspace, port) of ``cassandra://host[:port]/keyspace``."""
    u = urlparse(url)
    if u.scheme != "cassandra" or not u.hostname or not u.path.strip("/"):
        raise SystemExit(f"--engine connector needs cassandra://host:port/keyspace, got {url}")
    return u.hostname, u.path.strip("/"), u.port or 9042


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="ImageFolder root: SRC/<class>/<image>")
    ap.add_argument("--store", required=True, help="local:/path or cassandra://host:port/ks")
    ap.add_argument("--table", required=True)
    ap.add_argument("--engine", choices=("writer", "connector"), default="writer")
    ap.add_argument("--split-file", type=Path, help="where to write the split file")
    ap.add_argument("--val-frac", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jars", default=os.environ.get("CRS4_SPARK_JARS"))
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()

    root = args.src.resolve()
    scan = scan_image_folder(root)  # classes and files, as the ingest command lists them
    index = {c: i for i, c in enumerate(scan.classes)}
    url, table = args.store, args.table
    cassandra = None
    if args.engine == "connector":
        host, keyspace, port = cassandra_host(url)
        cassandra = (host, port)
    spark = spark_session(args.jars if args.engine == "connector" else None, cassandra)
    files = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .load(str(root))
        .repartition(args.partitions)
    )

    # The tables, made once on the driver, before any partition writes.
    Writer(url, table, label_type="int", create=True).close()

    def row(uri: str) -> tuple[str, str, int]:
        rel = Path(local_path(uri)).relative_to(root).as_posix()
        cls = rel.split("/")[-2]
        return rel, cls, index[cls]

    if args.engine == "writer":
        acc = spark.sparkContext.accumulator(WriteSummary(), SummaryParam())

        def record(r: Row) -> dict[str, object]:
            rel, cls, label = row(r.path)
            return {"key": rel, "path": rel, "label": label, "label_name": cls,
                    "data": bytes(r.content)}  # fmt: skip

        def write_partition(rows: Iterable[Row]) -> None:
            w = Writer(url, table, label_type="int")
            w.write(record(r) for r in rows)
            acc.add(w.close())

        files.foreachPartition(write_partition)
        summary: WriteSummary = acc.value
        rejected = {k for k, _ in summary.rejected}
        print(summary.summary())
    else:
        # The connector writes uuid columns from their string form.
        ids = F.udf(lambda uri: str(uuid.UUID(bytes=sample_uuid(table, row(uri)[0]))))
        labels = F.udf(lambda uri: row(uri)[2], T.IntegerType())
        frame = files.select(
            ids("path").alias("id"), labels("path").alias("label"), F.col("content").alias("data")
        )
        frame.write.format("org.apache.spark.sql.cassandra").options(
            keyspace=keyspace, table=table
        ).mode("append").save()
        rejected = set()
        print(f"wrote {frame.count()} rows with the Spark Cassandra Connector")
    spark.stop()

    kept = [(f, label, tag) for f, label, tag in scan.files
            if f.relative_to(root).as_posix() not in rejected]  # fmt: skip
    uuids = np.frombuffer(
        b"".join(sample_uuid(table, f.relative_to(root).as_posix()) for f, _, _ in kept),
        dtype=np.uint8,
    ).reshape(-1, 16)
    metadata = f"{table}_metadata" if args.engine == "writer" else None
    sf = SplitFile(table, "int", classes=scan.classes, store=url, metadata_table=metadata)
    add_splits(sf, uuids, [tag for _, _, tag in kept], args.val_frac, args.seed)
    if args.split_file:
        sf.save(args.split_file)
    sizes = {n: len(sf.uuids(n)) for n in sf.names()}
    print(
        "RESULT " + json.dumps({"rows": len(kept), "rejected": sorted(rejected), "splits": sizes})
    )


if __name__ == "__main__":
    main()
