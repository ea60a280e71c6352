"""WebDataset shards in and out, with the real webdataset package and real tar
files: folder -> store -> shards -> store keeps every sample's bytes, labels
and (into a table of the same name) id; webdataset reads the exported shards;
ingest takes .cls, .json and mask labels and reports bad samples by shard and
key; shards rotate by size; brace patterns, missing and broken shards; resume."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

import crs4_cassandra as cc
from crs4_cassandra import _native, errors
from crs4_cassandra.errors import InvalidArgumentError
from crs4_cassandra.ingest import Transform, ingest_folder, sample_uuid
from crs4_cassandra.webdataset import (
    brace_pattern,
    expand_shards,
    export_webdataset,
    ingest_webdataset,
    parse_size,
)

pytestmark = pytest.mark.timeout(180)


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crs4_cassandra.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def image(seed: int, fmt: str = "JPEG", mode: str = "RGB", size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buf, format=fmt)
    return buf.getvalue()


def write_shard(path: Path, samples: list[dict[str, bytes | str]]) -> Path:
    """A shard written by webdataset's own TarWriter (members as given)."""
    with wds.TarWriter(str(path), encoder=False) as w:
        for s in samples:
            w.write(s)
    return path


def rows_by_id(url: str, table: str) -> dict[bytes, tuple[object, ...]]:
    st = _native.open_store(url)
    return {bytes(r[0]): tuple(r[1:]) for r in st.scan_metadata(f"{table}_metadata")}


def samples_of(url: str, table: str, label_type: str = "int") -> dict[bytes, tuple[object, bytes]]:
    st = _native.open_store(url)
    return {
        uid: tuple(st.get(table, uid, label_type))  # type: ignore[misc]
        for uid in rows_by_id(url, table)
    }


def test_round_trip_folder_store_shards_store(
    local_store: tuple[str, Path], image_folder: Path, tmp_path: Path
) -> None:
    url, split_path = local_store
    sf = cc.SplitFile.load(split_path)
    before = samples_of(url, "shapes")
    meta = rows_by_id(url, "shapes")
    urls = {}
    for name in ("train", "val"):
        r = export_webdataset(
            url, str(tmp_path / f"shards/{name}-%06d.tar"), split_file=split_path, split=name,
            samples_per_shard=30, progress=False,
        )  # fmt: skip
        assert r.samples == len(sf.uuids(name))
        assert len(r.shards) == -(-r.samples // 30)
        urls[name] = r.urls
    assert urls["train"] == str(tmp_path / "shards/train-{000000..000002}.tar")

    # webdataset reads them: every sample of the split, in its order, keyed by
    # uuid hex, with the store's bytes, its label and its metadata.
    got = list(wds.WebDataset(urls["train"], shardshuffle=False))
    assert [s["__key__"] for s in got] == [bytes(u).hex() for u in sf.uuids("train")]
    for s in got:
        uid = bytes.fromhex(s["__key__"])
        label, data = before[uid]
        assert s["jpg"] == data and int(s["cls"]) == label
        doc = json.loads(s["json"])
        assert doc == {
            "id": str(uuid.UUID(bytes=uid)), "label_name": meta[uid][1], "path": meta[uid][2],
            "split": meta[uid][3],
        }  # fmt: skip

    # Into a table of the same name: the same ids, bytes, labels, paths and
    # label names; the splits follow the shards' names, so the split file
    # lists the same samples in each split, and the same classes.
    copy = f"local:{tmp_path / 'copy'}"
    report = ingest_webdataset(
        [urls["train"], urls["val"]], copy, "shapes", split_file=tmp_path / "copy.split",
        progress=False,
    )  # fmt: skip
    assert report.written == len(before) and not report.skipped
    assert samples_of(copy, "shapes") == before
    again = rows_by_id(copy, "shapes")
    assert {k: v[:3] for k, v in again.items()} == {k: v[:3] for k, v in meta.items()}
    sf2 = cc.SplitFile.load(tmp_path / "copy.split")
    assert sf2.classes == sf.classes == sorted(p.name for p in image_folder.iterdir())
    for name in ("train", "val"):
        assert sorted(map(bytes, sf2.uuids(name))) == sorted(map(bytes, sf.uuids(name)))

    # Into another table: other ids (a table's ids are its own), the same
    # samples by path.
    ingest_webdataset(urls["train"], copy, "other", progress=False, val_frac=0.0)
    other = samples_of(copy, "other")
    paths = {meta[u][2]: before[u] for u in map(bytes, sf.uuids("train"))}
    by_path = {rows_by_id(copy, "other")[u][2]: v for u, v in other.items()}
    assert by_path == paths and not set(other) & set(before)

    # The same samples give the same shards, byte for byte.
    r2 = export_webdataset(
        url, str(tmp_path / "again/train-%06d.tar"), split_file=split_path, split="train",
        samples_per_shard=30, progress=False,
    )  # fmt: skip
    for a, b in zip(sorted((tmp_path / "shards").glob("train-*.tar")), r2.shards, strict=True):
        assert a.read_bytes() == Path(b).read_bytes()
    with tarfile.open(r2.shards[0]) as tf:
        m = tf.getmembers()[0]
        assert (m.mtime, m.uid, m.gid, m.mode, m.uname) == (0, 0, 0, 0o644, "")


def test_export_whole_table_and_blob_labels(tmp_path: Path) -> None:
    # Without a split file: every sample of the table in metadata order; blob
    # labels (masks) as <key>.label.png, which ingest reads back with --mask-ext.
    url = f"local:{tmp_path / 'seg'}"
    shard = write_shard(
        tmp_path / "seg-000000.tar",
        [
            {"__key__": f"scene{i:03d}", "jpg": image(i), "seg.png": image(100 + i, "PNG", "L")}
            for i in range(12)
        ],
    )
    rep = ingest_webdataset(str(shard), url, "seg", mask_ext="seg.png", progress=False)
    assert rep.written == 12 and not rep.skipped
    before = samples_of(url, "seg", "blob")
    assert sorted(label for label, _ in before.values()) == sorted(  # type: ignore[type-var]
        image(100 + i, "PNG", "L") for i in range(12)
    )
    out = export_webdataset(url, str(tmp_path / "out/seg-%d.tar"), table="seg", progress=False)
    assert out.samples == 12 and out.urls == str(tmp_path / "out/seg-0.tar")
    got = list(wds.WebDataset(out.urls, shardshuffle=False))
    assert [s["__key__"] for s in got] == [u.hex() for u in rows_by_id(url, "seg")]
    assert all(s["label.png"] == before[bytes.fromhex(s["__key__"])][0] for s in got)
    # The exported .json keeps each sample's path (here the key in the first
    # shard): into a table of the same name, the ids come back.
    copy = f"local:{tmp_path / 'copy'}"
    ingest_webdataset(out.urls, copy, "seg", mask_ext="label.png", progress=False)
    assert samples_of(copy, "seg", "blob") == before

    # A table that is there but its metadata table not: named in the error.
    st = _native.open_store(url)
    st.create_tables("bare", "bare_metadata_x", "int")
    with pytest.raises(errors.TableNotFoundError, match="bare_metadata"):
        export_webdataset(st, str(tmp_path / "bare-%d.tar"), table="bare")


def test_ingest_cls_json_and_bad_samples_reported(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(
        shards / "train-000000.tar",
        [
            {"__key__": "a/000", "jpg": image(0), "cls": b"3"},
            {"__key__": "a/001", "png": image(1, "PNG"), "cls": b" 1\n"},
            {"__key__": "a/002", "jpg": image(2), "cls": b"three"},
            {"__key__": "a/003", "jpg": b"\xff\xd8\xff not a jpeg", "cls": b"0"},
            {"__key__": "a/004", "cls": b"2", "txt": b"caption"},
            {"__key__": "a/005", "jpg": image(5)},
        ],
    )
    write_shard(
        shards / "train-000001.tar",
        [
            {"__key__": "b/000", "webp": image(6, "WEBP"),
             "json": json.dumps({"class_id": 4, "name": "dog"}).encode()},
            {"__key__": "b/001", "jpg": image(7),
             "json": json.dumps({"class_id": "7", "name": "cat", "path": "cats/7.jpg"}).encode()},
            {"__key__": "b/002", "jpg": image(8), "json": b"{not json"},
        ],
    )  # fmt: skip
    url = f"local:{tmp_path / 'store'}"
    split = tmp_path / "s.split"
    r = cli(
        "ingest", "webdataset", str(shards / "train-{000000..000001}.tar"), "--store", url,
        "--table", "t", "--label-key", "class_id", "--name-key", "name", "--split-file", split,
        "-q",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "wrote 4 samples into 't'" in r.stdout
    assert "skipped 5 samples under" in r.stdout
    s0, s1 = shards / "train-000000.tar", shards / "train-000001.tar"
    for where, why in [
        (f"{s0}, key a/002", ".cls is not an integer ('three')"),
        (f"{s0}, key a/003", ".jpg: "),
        (f"{s0}, key a/004", "no image member"),
        (f"{s0}, key a/005", "no label: neither a .cls member nor 'class_id' in a .json"),
        (f"{s1}, key b/002", ".json is not a JSON object"),
    ]:
        assert any(ln.startswith(f"  {where}: {why}") for ln in r.stdout.splitlines()), (
            where,
            r.stdout,
        )
    rows = rows_by_id(url, "t")
    want = {
        sample_uuid("t", "a/000"): (3, None, "a/000", "train"),
        sample_uuid("t", "a/001"): (1, None, "a/001", "train"),
        sample_uuid("t", "b/000"): (4, "dog", "b/000", "train"),
        sample_uuid("t", "cats/7.jpg"): (7, "cat", "cats/7.jpg", "train"),
    }
    assert rows == want
    st = _native.open_store(url)
    assert st.get("t", sample_uuid("t", "a/001")) == (1, image(1, "PNG"))
    assert st.get("t", sample_uuid("t", "b/000")) == (4, image(6, "WEBP"))
    sf = cc.SplitFile.load(split)
    assert sf.names() == ["train"] and len(sf.uuids("train")) == 4
    assert sf.classes == ["0", "1", "2", "3", "dog", "5", "6", "cat"]

    # --image-ext picks among several image members; --split tags them all;
    # --label-type none needs no label.
    write_shard(
        shards / "two.tar",
        [{"__key__": f"k{i}", "jpg": image(i), "png": image(i, "PNG")} for i in range(3)],
    )
    rep = ingest_webdataset(
        str(shards / "two.tar"), url, "pngs", image_ext=["png", "jpg"], label_type="none",
        split="test", progress=False,
    )  # fmt: skip
    assert rep.written == 3 and not rep.skipped
    assert st.get("pngs", sample_uuid("pngs", "k1"), "none") == (None, image(1, "PNG"))
    assert {r[3] for r in rows_by_id(url, "pngs").values()} == {"test"}
    assert rep.split_file is not None and rep.split_file.names() == ["test"]


def test_shard_patterns_missing_and_broken_shards(tmp_path: Path) -> None:
    for i in range(3):
        write_shard(
            tmp_path / f"d-{i:02d}.tar", [{"__key__": f"x{i}", "jpg": image(i), "cls": b"0"}]
        )
    names = [str(tmp_path / f"d-{i:02d}.tar") for i in range(3)]
    assert list(map(str, expand_shards(str(tmp_path / "d-{00..02}.tar")))) == names
    assert list(map(str, expand_shards(str(tmp_path / "d-*.tar")))) == names
    assert list(map(str, expand_shards(str(tmp_path)))) == names
    assert list(map(str, expand_shards([names[2], names[0]]))) == [names[2], names[0]]
    with pytest.raises(FileNotFoundError, match="d-03.tar does not exist"):
        expand_shards(str(tmp_path / "d-{00..03}.tar"))
    with pytest.raises(FileNotFoundError, match="no shard file matches"):
        expand_shards(str(tmp_path / "e-*.tar"))

    url = f"local:{tmp_path / 'store'}"
    r = cli("ingest", "webdataset", tmp_path / "d-{00..05}.tar", "--store", url, "--table", "t")
    assert r.returncode == 2 and f"{tmp_path / 'd-03.tar'} does not exist" in r.stderr
    assert not (tmp_path / "store").exists()  # checked before the store is made

    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 100)
    whole = (tmp_path / "d-01.tar").read_bytes()
    with tarfile.open(tmp_path / "d-01.tar") as tf:
        last = tf.getmembers()[-1]
    # Cut in the middle of the last member's bytes: its header is whole.
    (tmp_path / "cut.tar").write_bytes(whole[: last.offset_data + last.size // 2])
    for bad, says in [("junk.tar", "not a readable tar file"), ("cut.tar", "is broken")]:
        with pytest.raises(errors.InvalidArgumentError, match=says):
            ingest_webdataset([names[0], str(tmp_path / bad)], url, "t", progress=False)
        r = cli("ingest", "webdataset", names[0], tmp_path / bad, "--store", url, "--table", "t")
        assert r.returncode == 2 and str(tmp_path / bad) in r.stderr, r.stderr
    assert brace_pattern("o/%03d.tar", 12) == "o/{000..011}.tar"
    assert brace_pattern("o/%d-%%.tar", 12) == "o/{0..11}-%.tar"


def test_shard_size_rotation_and_existing_shards(
    local_store: tuple[str, Path], tmp_path: Path
) -> None:
    url, split_path = local_store
    n = len(cc.SplitFile.load(split_path).uuids("train"))
    limit = 40_000
    r = export_webdataset(
        url, str(tmp_path / "s-%04d.tar"), split_file=split_path, split="train",
        shard_size="40KB", batch_size=7, progress=False,
    )  # fmt: skip
    sizes = [os.path.getsize(p) for p in r.shards]
    assert len(r.shards) > 3 and r.bytes == sum(sizes)
    assert all(s <= limit for s in sizes), sizes
    counts = [sum(1 for _ in wds.WebDataset(p, shardshuffle=False)) for p in r.shards]
    assert sum(counts) == n
    # Greedy: a shard is cut only when its next sample does not fit.
    for p, nxt in zip(r.shards[:-1], r.shards[1:], strict=True):
        with tarfile.open(nxt) as tf:
            key = tf.getmembers()[0].name[:32]
            first = [m for m in tf.getmembers() if m.name.startswith(key)]
        extra = sum(512 + -(-m.size // 512) * 512 for m in first)
        with tarfile.open(p) as tf:
            end = max(m.offset_data + -(-m.size // 512) * 512 for m in tf.getmembers())
        assert -(-(end + extra + 1024) // 10240) * 10240 > limit

    # An export does not replace shards unless told to; with --overwrite those
    # it does not write again go.
    with pytest.raises(FileExistsError, match="s-0000.tar exists"):
        export_webdataset(url, str(tmp_path / "s-%04d.tar"), split_file=split_path, split="val")
    r = cli(
        "export", "webdataset", tmp_path / "s-%04d.tar", "--store", url, "--split-file",
        split_path, "--split", "val", "--samples-per-shard", "100", "--max-samples", "15",
        "--overwrite", "-q",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("wrote 15 samples into 1 shards")
    assert sorted(os.listdir(tmp_path)) == ["s-0000.tar"]

    assert parse_size("1GB") == 10**9 and parse_size("500MB") == 5 * 10**8
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("1.5k") == 1500
    assert parse_size("4096") == 4096
    for bad in ("", "1XB", "-3", "0", "GB"):
        with pytest.raises(errors.InvalidArgumentError, match="size"):
            parse_size(bad)
    with pytest.raises(errors.InvalidArgumentError, match="shard number"):
        export_webdataset(url, str(tmp_path / "x.tar"), split_file=split_path, split="val")


def test_resume_finishes_an_ingest_of_shards(image_folder: Path, tmp_path: Path) -> None:
    url = f"local:{tmp_path / 'src'}"
    ingest_folder(image_folder, url, "shapes", val_frac=0.0, progress=False)
    r = export_webdataset(url, str(tmp_path / "sh/train-%03d.tar"), table="shapes",
                          samples_per_shard=40, progress=False)  # fmt: skip
    assert len(r.shards) == 3
    # An ingest that stopped after the first shard, finished by --resume: the
    # tables and the split file are what one uninterrupted ingest writes.
    part, full = f"local:{tmp_path / 'part'}", f"local:{tmp_path / 'full'}"
    ingest_webdataset(r.shards[0], part, "t", progress=False)
    r1 = cli(
        "ingest", "webdataset", r.urls, "--store", part, "--table", "t", "--resume",
        "--split-file", tmp_path / "part.split", "-q",
    )  # fmt: skip
    assert r1.returncode == 0, r1.stderr
    assert "resumed: 40 of them were written by an earlier run, 65 now" in r1.stdout
    ingest_webdataset(r.urls, full, "t", split_file=tmp_path / "full.split", progress=False)
    assert samples_of(part, "t") == samples_of(full, "t")
    assert rows_by_id(part, "t") == rows_by_id(full, "t")
    a, b = cc.SplitFile.load(tmp_path / "part.split"), cc.SplitFile.load(tmp_path / "full.split")
    assert a.names() == b.names() == ["train"]
    assert (a.uuids("train") == b.uuids("train")).all()
    # Without --resume the tables are not replaced.
    r2 = cli("ingest", "webdataset", r.urls, "--store", part, "--table", "t", "-q")
    assert r2.returncode == 2 and "--resume" in r2.stderr


@pytest.mark.timeout(240)
def test_cassandra_round_trip(
    cassandra_store: tuple[str, Path], keyspace_url: str, tmp_path: Path
) -> None:
    url, split_path = cassandra_store
    before = samples_of(url, "shapes")
    r = cli(
        "export", "webdataset", tmp_path / "val-%06d.tar", "--store", url, "--split-file",
        split_path, "--split", "val", "--shard-size", "100KB", "-q",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    n = len(cc.SplitFile.load(split_path).uuids("val"))
    assert f"wrote {n} samples" in r.stdout
    shards = str(tmp_path / "val-*.tar")
    r = cli("ingest", "webdataset", shards, "--store", keyspace_url, "--table", "shapes", "-q")
    assert r.returncode == 0, r.stderr
    after = samples_of(keyspace_url, "shapes")
    assert len(after) == n and all(after[u] == before[u] for u in after)


def test_ingest_from_shards_with_transforms(tmp_path: Path) -> None:
    # The writer's transforms apply to shard images as to a folder's: a PNG
    # re-encoded as JPEG and resized, its shorter side 16; masks refuse a resize.
    shard = write_shard(
        tmp_path / "train-000000.tar",
        [{"__key__": f"s/{i:03d}", "png": image(i, "PNG", size=40), "cls": b"1"} for i in range(4)],
    )
    url = f"local:{tmp_path / 'store'}"
    out = cli(
        "ingest",
        "webdataset",
        shard,
        "--store",
        url,
        "--table",
        "t",
        "-q",
        "--resize-shorter",
        "16",
        "--to-jpeg",
    )
    assert out.returncode == 0, out.stderr
    stored = samples_of(url, "t")
    assert len(stored) == 4
    for label, data in stored.values():
        assert label == 1
        with Image.open(io.BytesIO(data)) as im:
            assert (im.format, im.size) == ("JPEG", (16, 16))
    with pytest.raises(InvalidArgumentError, match="masks"):
        ingest_webdataset(
            str(shard),
            url,
            "m",
            mask_ext="png",
            transform=Transform(resize_shorter=16),
            progress=False,
        )
