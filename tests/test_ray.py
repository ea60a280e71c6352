"""Ray Data: a folder and WebDataset shards ingested by a local Ray cluster
into the local store and into Cassandra hold what the single-process ingest
writes; a write task killed mid-block is retried and every row is there once;
bad files and samples are reported; read_split returns every row of a split
once."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from PIL import Image

import crs4_cassandra as cc
from crs4_cassandra import errors
from crs4_cassandra import ray as cray
from crs4_cassandra.ingest import Transform, ingest_folder, sample_uuid
from crs4_cassandra.testing import make_image_folder
from crs4_cassandra.webdataset import ingest_webdataset
from testbed import Cluster

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster of two CPUs for the module; its workers import
    this module's classes by value (tests/ is not on their path)."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 small JPEGs in 4 classes, and a file of each class that is not an image."""
    src = make_image_folder(
        tmp_path_factory.mktemp("ray") / "src", classes=4, per_class=10, small=True
    )
    (src / "circle" / "notes.txt").write_text("not an image")
    good = (src / "square").iterdir().__next__().read_bytes()
    (src / "square" / "broken.jpg").write_bytes(good[:60])
    return src


BAD = {"circle/notes.txt", "square/broken.jpg"}


@pytest.fixture(scope="module")
def single(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, cc.SplitFile]:
    """The single-process ingest of the folder into a local store."""
    url = f"local:{tmp_path_factory.mktemp('single') / 'store'}"
    report = ingest_folder(folder, url, "imgs", val_frac=0.25, seed=3, progress=False)
    assert report.split_file is not None
    return url, report.split_file


def all_ids(sf: cc.SplitFile) -> list[bytes]:
    return [r.tobytes() for n in sf.names() for r in sf.uuids(n)]


def assert_same_ingest(
    url: str, sf: cc.SplitFile, ref_url: str, ref: cc.SplitFile, table: str = "imgs"
) -> None:
    """Same splits (same ids), same label and bytes per id, same metadata rows."""
    assert sf.names() == ref.names()
    for n in ref.names():
        assert sf.uuids(n).tobytes() == ref.uuids(n).tobytes(), n
    st, ref_st = cc.open_store(url), cc.open_store(ref_url)
    for uid in all_ids(ref):
        assert st.get(table, uid, ref.label_type) == ref_st.get(table, uid, ref.label_type)
    rows = sorted(tuple(r) for r in st.scan_metadata(f"{table}_metadata"))
    assert rows == sorted(tuple(r) for r in ref_st.scan_metadata(f"{table}_metadata"))


def test_ray_ingest_into_the_local_store_is_the_single_process_one(
    ray_cluster: None, folder: Path, single: tuple[str, cc.SplitFile], tmp_path: Path
) -> None:
    url = f"local:{tmp_path / 'store'}"
    report = cray.ingest_folder(folder, url, "imgs", val_frac=0.25, seed=3, progress=False)
    assert report.written == 40
    # Bad files are reported with their paths, as the single-process ingest does.
    assert {p for p, _ in report.skipped} == BAD
    assert all(why for _, why in report.skipped)
    assert report.split_file is not None
    assert_same_ingest(url, report.split_file, *single)
    with pytest.raises(errors.TableExistsError, match="imgs"):
        cray.ingest_folder(folder, url, "imgs", progress=False)


def test_ray_ingest_into_cassandra_is_the_single_process_one(
    ray_cluster: None,
    folder: Path,
    single: tuple[str, cc.SplitFile],
    cassandra: Cluster,
    keyspace_url: str,
) -> None:
    report = cray.ingest_folder(
        folder, keyspace_url, "imgs", val_frac=0.25, seed=3, progress=False, concurrency=2
    )
    assert {p for p, _ in report.skipped} == BAD
    assert report.split_file is not None
    assert_same_ingest(keyspace_url, report.split_file, *single)
    ks = keyspace_url.rsplit("/", 1)[1]
    [[count]] = cassandra.cql(f"SELECT count(*) AS n FROM {ks}.imgs")
    assert int(count["n"]) == 40


class KilledOnceDatasink(cray.StoreDatasink):
    """Its first write task writes half its block, then its process dies: the
    marker file says whether that already happened."""

    def __init__(self, *args: Any, marker: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.marker = marker

    def write(self, blocks: Any, ctx: Any) -> Any:
        blocks = list(blocks)
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            with open(self.marker, "r+") as f:
                if f.readline().split() == ["killed", str(ctx.task_idx)]:
                    f.seek(0, os.SEEK_END)
                    f.write(f"retry {ctx.task_idx}\n")
            return super().write(blocks, ctx)
        os.write(fd, f"killed {ctx.task_idx}\n".encode())
        os.close(fd)
        from ray.data.block import BlockAccessor

        first = BlockAccessor.for_block(blocks[0])
        super().write([first.slice(0, first.num_rows() // 2)], ctx)
        os._exit(1)


def test_a_task_killed_mid_write_is_retried_and_every_row_is_there_once(
    ray_cluster: None, folder: Path, cassandra: Cluster, keyspace_url: str, tmp_path: Path
) -> None:
    files = sorted(p for p in folder.rglob("*.jpg") if p.name != "broken.jpg")
    rows = [
        {
            "key": p.relative_to(folder).as_posix(),
            "label": i % 4,
            "data": p.read_bytes(),
            "path": p.relative_to(folder).as_posix(),
        }
        for i, p in enumerate(files)
    ]
    ds = ray.data.from_items(rows, override_num_blocks=4)
    marker = tmp_path / "attempts"
    sink = KilledOnceDatasink(keyspace_url, "t", label_type="int", marker=str(marker))
    ds.write_datasink(sink)
    # The first attempt died after writing half a block; the retry wrote it all.
    killed, *retried = marker.read_text().splitlines()
    assert retried == [killed.replace("killed", "retry")]
    assert sink.summary is not None and sink.summary.rows_written == len(rows)
    ks = keyspace_url.rsplit("/", 1)[1]
    [[data], [meta]] = cassandra.cql(
        f"SELECT count(*) AS n FROM {ks}.t", f"SELECT count(*) AS n FROM {ks}.t_metadata"
    )
    assert int(data["n"]) == len(rows) and int(meta["n"]) == len(rows)
    st = cc.open_store(keyspace_url)
    for r in rows:
        assert st.get("t", sample_uuid("t", r["key"])) == (r["label"], r["data"])


def test_the_datasink_reports_rejected_rows_by_key(
    ray_cluster: None, folder: Path, tmp_path: Path
) -> None:
    ds = ray.data.read_binary_files(str(folder), include_paths=True)
    url = f"local:{tmp_path / 'store'}"
    sink = cray.StoreDatasink(
        url, "raw", label_type="none", columns={"data": "bytes", "key": "path"}
    )
    ds.write_datasink(sink)
    assert sink.summary is not None
    assert sink.summary.rows_written == 40
    assert {Path(k).relative_to(folder).as_posix() for k, _ in sink.summary.rejected} == BAD
    with pytest.raises(errors.InvalidArgumentError, match="no column 'data'.*columns="):
        ds.write_datasink(cray.StoreDatasink(url, "raw", label_type="none"))


def test_read_split_returns_every_row_of_the_split_once(
    ray_cluster: None, single: tuple[str, cc.SplitFile], tmp_path: Path
) -> None:
    url, sf = single
    path = tmp_path / "s.split"
    sf.save(path)
    st = cc.open_store(url)
    for split in sf.names():
        want = [uuid.UUID(bytes=r.tobytes()) for r in sf.uuids(split)]
        ds = cray.read_split(url, path, split, batch_size=4, override_num_blocks=3)
        got = ds.take_all()
        assert sorted(str(u) for u in want) == sorted(r["id"] for r in got)
        assert len(got) == len(want)
        for r in got:
            assert (r["label"], r["data"]) == st.get("imgs", r["id"])
    whole = cray.read_split(url, sf).count()
    assert whole == sum(len(sf.uuids(n)) for n in sf.names()) == 40
    with pytest.raises(errors.SplitNotFoundError, match="'nope'"):
        cray.read_split(url, sf, "nope")


def test_read_split_from_cassandra_feeds_map_batches(
    ray_cluster: None, folder: Path, keyspace_url: str, single: tuple[str, cc.SplitFile]
) -> None:
    """Batch inference's shape: rows read from Cassandra, a function per batch."""
    report = ingest_folder(folder, keyspace_url, "imgs", val_frac=0.25, seed=3, progress=False)
    assert report.split_file is not None
    sizes = (
        cray.read_split(keyspace_url, report.split_file, "train", batch_size=8)
        .map_batches(lambda b: {"id": b["id"], "n": [len(x) for x in b["data"]]})
        .take_all()
    )
    st = cc.open_store(single[0])
    assert len(sizes) == len(report.split_file.uuids("train"))
    assert all(r["n"] == len(st.get("imgs", r["id"])[1]) for r in sizes)


def test_cli_ingest_folder_with_ray(
    folder: Path, single: tuple[str, cc.SplitFile], tmp_path: Path
) -> None:
    """``--ray`` with no address starts a local cluster in the command's process."""
    url = f"local:{tmp_path / 'store'}"
    split = tmp_path / "r.split"
    r = subprocess.run(
        [sys.executable, "-m", "crs4_cassandra.cli", "ingest", "folder", str(folder),
         "--store", url, "--table", "imgs", "--val-frac", "0.25", "--seed", "3",
         "--split-file", str(split), "--ray", "-q"],
        capture_output=True, text=True, timeout=200, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 40 samples" in r.stdout
    for bad in BAD:
        assert bad in r.stdout
    assert_same_ingest(url, cc.SplitFile.load(split), *single)


def test_store_datasink_checks_its_arguments() -> None:
    with pytest.raises(errors.InvalidArgumentError, match="unknown keys.*'bytes'"):
        cray.StoreDatasink("local:/x", "t", label_type="int", columns={"bytes": "data"})
    with pytest.raises(errors.InvalidArgumentError, match="store URL"):
        cray.StoreDatasink(np.zeros(1), "t", label_type="int")  # type: ignore[arg-type]


# --- WebDataset shards --------------------------------------------------------


def tar_of(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def shards(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three shards of the folder's images with .cls and .json members (one
    with .jpeg images, the others .jpg), and
    bad samples: a broken JPEG, no label, no image, a .json that is not JSON;
    two samples whose .json give the same path (two ids under one path)."""
    out = tmp_path_factory.mktemp("shards")
    files = sorted(p for p in folder.rglob("*.jpg") if p.name != "broken.jpg")
    classes = sorted({p.parent.name for p in files})
    for n in range(3):
        members: list[tuple[str, bytes]] = []
        for i, p in enumerate(files[n::3]):
            key = f"s{n}/{i:03d}"
            # The second shard's images are .jpeg: shards of other members.
            members.append((f"{key}.{'jpeg' if n == 1 else 'jpg'}", p.read_bytes()))
            if i % 2:
                members.append((f"{key}.cls", str(classes.index(p.parent.name)).encode()))
            else:
                doc = {"label": classes.index(p.parent.name), "label_name": p.parent.name}
                if i == 2:
                    doc["path"] = "same/path.jpg"
                members.append((f"{key}.json", json.dumps(doc).encode()))
        members += [
            (f"s{n}/bad-jpeg.jpg", files[n].read_bytes()[:80]),
            (f"s{n}/bad-jpeg.cls", b"1"),
            (f"s{n}/no-label.jpg", files[n].read_bytes()),
            (f"s{n}/no-image.cls", b"2"),
            (f"s{n}/no-image.txt", b"caption"),
            (f"s{n}/bad-json.jpg", files[n].read_bytes()),
            (f"s{n}/bad-json.json", b"{nope"),
        ]
        tar_of(out / f"train-{n:06d}.tar", members)
    return out


def test_ray_webdataset_ingest_is_the_single_process_one(
    ray_cluster: None, shards: Path, tmp_path: Path
) -> None:
    pattern = str(shards / "train-{000000..000002}.tar")
    t = Transform(resize_shorter=16)
    ref_url = f"local:{tmp_path / 'ref'}"
    ref = ingest_webdataset(pattern, ref_url, "w", transform=t, progress=False)
    url = f"local:{tmp_path / 'ray'}"
    report = cray.ingest_webdataset(pattern, url, "w", transform=t, progress=False)
    assert report.written == ref.written == 40
    # Every bad sample is reported by shard and key, for the same reason.
    assert sorted(report.skipped) == sorted(ref.skipped)
    assert len(report.skipped) == 12
    assert sum("bad-jpeg" in w for w, _ in report.skipped) == 3
    assert report.split_file is not None and ref.split_file is not None
    assert_same_ingest(url, report.split_file, ref_url, ref.split_file, table="w")
    st = cc.open_store(url)
    # The two samples under one path got the ids the single-process ingest gives.
    for n in range(2):
        label, data = st.get("w", sample_uuid("w", "same/path.jpg", n))
        assert min(Image.open(io.BytesIO(data)).size) == 16
    # A resumed run with nothing left to write finishes with the same split.
    again = cray.ingest_webdataset(pattern, url, "w", resume=True, progress=False)
    assert again.resumed == 40 and again.written == 40
    assert again.split_file is not None
    assert_same_ingest(url, again.split_file, ref_url, ref.split_file, table="w")


def test_ray_webdataset_ingest_of_masks_into_cassandra_from_the_cli(
    ray_cluster: None, folder: Path, keyspace_url: str, tmp_path: Path
) -> None:
    """``ingest webdataset --ray`` (the test's cluster: --ray auto would join
    it too) with mask labels; a mask that is not an image is reported."""
    files = sorted(p for p in folder.rglob("*.jpg") if p.name != "broken.jpg")[:12]
    members: list[tuple[str, bytes]] = []
    for i, p in enumerate(files):
        mask = io.BytesIO()
        Image.fromarray(np.full((8, 8), i, np.uint8), "L").save(mask, format="PNG")
        members += [(f"m{i:02d}.jpg", p.read_bytes()), (f"m{i:02d}.seg.png", mask.getvalue())]
    members += [("bad.jpg", files[0].read_bytes()), ("bad.seg.png", b"\x89PNG not a mask")]
    shard = tar_of(tmp_path / "val-000000.tar", members)
    ref_url = f"local:{tmp_path / 'ref'}"
    ref = ingest_webdataset(str(shard), ref_url, "seg", mask_ext="seg.png", progress=False)
    split = tmp_path / "seg.split"
    address = ray.get_runtime_context().gcs_address
    r = subprocess.run(
        [sys.executable, "-m", "crs4_cassandra.cli", "ingest", "webdataset", str(shard),
         "--store", keyspace_url, "--table", "seg", "--mask-ext", "seg.png",
         "--split-file", str(split), "--ray", address, "-q"],
        capture_output=True, text=True, timeout=200, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 12 samples into 'seg'" in r.stdout
    assert f"{shard}, key bad: mask .seg.png: " in r.stdout
    assert [w for w, _ in ref.skipped] == [f"{shard}, key bad"]
    assert ref.split_file is not None
    sf = cc.SplitFile.load(split)
    assert sf.label_type == "blob" and sf.names() == ["val"]
    assert_same_ingest(keyspace_url, sf, ref_url, ref.split_file, table="seg")


def test_ray_webdataset_ingest_refuses_what_read_webdataset_cannot_read(
    shards: Path, tmp_path: Path
) -> None:
    """Before any table is made or any task starts: no cluster is needed."""
    odd = tar_of(
        tmp_path / "odd.tar",
        [("a.jpg", b"x"), ("b.jpg", b"y"), ("a.cls", b"1")],
    )
    url = f"local:{tmp_path / 'store'}"
    with pytest.raises(errors.InvalidArgumentError, match=rf"{odd}, key a.*without Ray"):
        cray.ingest_webdataset(str(odd), url, "t", progress=False)
    one = str(shards / "train-000000.tar")
    with pytest.raises(errors.InvalidArgumentError, match="listed twice"):
        cray.ingest_webdataset([one, one], url, "t", progress=False)
    assert not (tmp_path / "store").exists()
