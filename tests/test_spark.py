"""Spark (local mode) through examples/spark/ingest_spark.py: partitions written
by foreachPartition with the Writer hold what the single-process ingest writes;
a table the Spark Cassandra Connector writes is read exactly once by
ShardedDataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import crs4_cassandra as cc
from crs4_cassandra.ingest import ingest_folder, sample_uuid
from crs4_cassandra.testing import make_image_folder
from testbed import Cluster

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "spark" / "ingest_spark.py"
JARS = os.environ.get(
    "CRS4_SPARK_JARS",
    str(Path.home() / ".cache/crs4_cassandra/spark-cassandra-connector-3.5.1"),
)


def run_example(*args: str | Path) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, str(EXAMPLE), *map(str, args), "--jars", JARS],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    [line] = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    out: dict[str, object] = json.loads(line[len("RESULT ") :])
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(
        tmp_path_factory.mktemp("spark") / "src", classes=3, per_class=10, small=True
    )


def test_foreach_partition_writes_what_the_ingest_command_writes(
    folder: Path, tmp_path: Path
) -> None:
    bad = folder / "circle" / "notes.txt"
    bad.write_text("not an image")
    try:
        ref_url = f"local:{tmp_path / 'ref'}"
        ref = ingest_folder(folder, ref_url, "imgs", val_frac=0.25, seed=1, progress=False)
        url = f"local:{tmp_path / 'store'}"
        split = tmp_path / "s.split"
        out = run_example(folder, "--store", url, "--table", "imgs", "--split-file", split,
                          "--val-frac", "0.25", "--seed", "1")  # fmt: skip
    finally:
        bad.unlink()
    assert out["rows"] == 30 and out["rejected"] == ["circle/notes.txt"]
    assert ref.split_file is not None
    sf = cc.SplitFile.load(split)
    assert sf.names() == ref.split_file.names()
    st, ref_st = cc.open_store(url), cc.open_store(ref_url)
    for n in sf.names():
        assert sf.uuids(n).tobytes() == ref.split_file.uuids(n).tobytes()
        for r in sf.uuids(n):
            assert st.get("imgs", r.tobytes()) == ref_st.get("imgs", r.tobytes())
    assert sorted(map(tuple, st.scan_metadata("imgs_metadata"))) == sorted(
        map(tuple, ref_st.scan_metadata("imgs_metadata"))
    )


def test_a_table_written_by_the_spark_cassandra_connector_is_read_once(
    folder: Path, keyspace_url: str, cassandra: Cluster, tmp_path: Path
) -> None:
    # The connector talks to the node itself, not through the test proxy.
    url = cassandra.direct_url(keyspace_url.rsplit("/", 1)[1])
    split = tmp_path / "c.split"
    out = run_example(folder, "--store", url, "--table", "imgs", "--engine", "connector",
                      "--split-file", split)  # fmt: skip
    assert out["rows"] == 30
    sf = cc.SplitFile.load(split)
    files = {
        sample_uuid("imgs", p.relative_to(folder).as_posix()): p for p in folder.rglob("*.jpg")
    }
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    st = cc.open_store(url)
    seen: list[bytes] = []
    for n in sf.names():
        ds = cc.ShardedDataset.from_split(st, sf, n, 8, shuffle=False)
        for batch in ds:
            for i in range(len(batch)):
                s = batch[i]
                if s.is_pad:
                    continue
                p = files[s.id.bytes]
                assert bytes(s.data.numpy()) == p.read_bytes()
                assert s.label == classes.index(p.parent.name)
                seen.append(s.id.bytes)
    assert sorted(seen) == sorted(files)
