from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

import crs4_cassandra as cc
from crs4_cassandra import errors
from crs4_cassandra.ingest import sample_uuid
from crs4_cassandra.testing import make_image_folder

pytestmark = pytest.mark.timeout(120)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crs4_cassandra.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_split_file_round_trip(tmp_path: Path) -> None:
    sf = cc.SplitFile("t", "blob", classes=["a", "b"], store="local:/x", info={"seed": 1})
    ids = [uuid.uuid4() for _ in range(10)]
    sf.add("train", ids[:7])
    sf.add("val", [str(u) for u in ids[7:]])
    sf.save(tmp_path / "f.split")
    back = cc.SplitFile.load(tmp_path / "f.split")
    assert back.names() == ["train", "val"]
    assert back.table == "t" and back.label_type == "blob" and back.classes == ["a", "b"]
    assert back.store == "local:/x" and back.info == {"seed": 1}
    assert back.uuids("train").shape == (7, 16)
    assert [uuid.UUID(bytes=r.tobytes()) for r in back.uuids("val")] == ids[7:]
    with pytest.raises(errors.SplitNotFoundError, match="'test'.*train"):
        back.uuids("test")


def test_corrupt_split_files_are_named(tmp_path: Path) -> None:
    sf = cc.SplitFile("t", "int")
    sf.add("train", [uuid.uuid4() for _ in range(5)])
    p = tmp_path / "x.split"
    sf.save(p)
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(errors.SplitFileError, match=r"x\.split.*truncated"):
        cc.SplitFile.load(p)
    p.write_text("hello")
    with pytest.raises(errors.SplitFileError, match="not a split file"):
        cc.SplitFile.load(p)
    with pytest.raises(FileNotFoundError):
        cc.SplitFile.load(tmp_path / "missing.split")


@pytest.mark.slow
def test_ingest_cli_skips_bad_files_and_refuses_to_overwrite(tmp_path: Path) -> None:
    src = make_image_folder(tmp_path / "src", classes=3, per_class=6, small=True)
    (src / "circle" / "notes.txt").write_text("not an image")
    (src / "square" / "broken.jpg").write_bytes(
        (src / "square" / "square_00000.jpg").read_bytes()[:50]
    )
    store = f"local:{tmp_path / 'store'}"
    split = tmp_path / "s.split"
    r = cli(
        "ingest",
        "folder",
        str(src),
        "--store",
        store,
        "--table",
        "t",
        "--split-file",
        str(split),
        "-q",
    )
    assert r.returncode == 0, r.stderr
    assert "wrote 18 samples" in r.stdout
    assert "skipped 2 files" in r.stdout
    assert "circle/notes.txt" in r.stdout and "square/broken.jpg" in r.stdout
    sf = cc.SplitFile.load(split)
    assert sf.classes == ["circle", "square", "triangle"]
    assert len(sf.uuids("train")) + len(sf.uuids("val")) == 18
    assert len(sf.uuids("val")) == round(0.2 * 18)

    again = cli("ingest", "folder", str(src), "--store", store, "--table", "t", "-q")
    assert again.returncode == 2
    assert "already exists" in again.stderr and "--overwrite" in again.stderr
    assert "--resume" in again.stderr
    # Overwriting replaces the tables: a sample whose file is gone from the
    # source is gone from the table; the others keep their ids (a uuid5 of
    # the table and the path).
    gone = src / "circle" / "circle_00000.jpg"
    gone.unlink()
    over = cli("ingest", "folder", str(src), "--store", store, "--table", "t", "-q", "--overwrite")
    assert over.returncode == 0, over.stderr
    assert "wrote 17 samples" in over.stdout
    gone_id = np.frombuffer(sample_uuid("t", "circle/circle_00000.jpg"), np.uint8)
    kept = np.array([u for u in np.concatenate([sf.uuids("train"), sf.uuids("val")])
                     if not np.array_equal(u, gone_id)])  # fmt: skip
    assert len(kept) == 17
    assert sum(len(b) - int(b.is_pad.sum()) for b in cc.ShardedDataset(store, "t", kept, 4)) == 17
    with pytest.raises(errors.SampleNotFoundError):
        list(cc.ShardedDataset(store, "t", gone_id.reshape(1, 16), 1))


def test_ingest_rejects_missing_or_empty_sources(tmp_path: Path) -> None:
    store = f"local:{tmp_path / 'store'}"
    r = cli("ingest", "folder", str(tmp_path / "nope"), "--store", store, "--table", "t")
    assert r.returncode == 2 and "does not exist" in r.stderr
    (tmp_path / "empty").mkdir()
    r = cli("ingest", "folder", str(tmp_path / "empty"), "--store", store, "--table", "t")
    assert r.returncode == 2 and "no class sub-folders" in r.stderr


def test_store_path_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "data.mdb").write_bytes(b"garbage" * 100)
    with pytest.raises(errors.LoaderError) as info:
        cc.open_store(f"local:{tmp_path}")
    assert str(tmp_path) in str(info.value)
