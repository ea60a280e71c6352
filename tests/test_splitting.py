"""Split files built from metadata tables: random, original and weighted modes,
the data table's default name, the CLI."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import crs4_cassandra as cc
from crs4_cassandra import errors
from crs4_cassandra.ingest import ingest_folder
from crs4_cassandra.split_builder import create_split
from crs4_cassandra.testing import make_image_folder

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tagged_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, cc.SplitFile]:
    """An imagenette-like store: train/ and val/ folders, unbalanced classes."""
    root = tmp_path_factory.mktemp("tagged")
    src = root / "src"
    for tag, per_class in (("train", 12), ("val", 4)):
        make_image_folder(src / tag, classes=3, per_class=per_class, small=True, seed=len(tag))
    # Unbalance: drop some images of one class.
    for f in sorted((src / "train" / "square").iterdir())[:6]:
        f.unlink()
    url = f"local:{root / 'store'}"
    report = ingest_folder(src, url, "imgs", split_file=root / "in.split", progress=False)
    assert report.split_file is not None
    return url, report.split_file


def as_set(arr: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in arr}


def labels_of(url: str, metadata_table: str) -> dict[bytes, int]:
    return {
        bytes(r[0]): int(r[1])
        for r in cc.open_store(url).scan_metadata(metadata_table)
        if r[1] is not None
    }


def test_random_split_is_a_seeded_partition(tagged_store: tuple[str, cc.SplitFile]) -> None:
    url, ingested = tagged_store
    everything = as_set(ingested.uuids("train")) | as_set(ingested.uuids("val"))
    sf = create_split(url, "imgs_metadata", [7, 2, 1], seed=3)
    assert sf.names() == ["train", "val", "test"]
    assert sf.table == "imgs" and sf.label_type == "int"
    assert sf.classes == ["circle", "square", "triangle"]
    assert sf.metadata_table == "imgs_metadata" and sf.store == url
    parts = [as_set(sf.uuids(n)) for n in sf.names()]
    assert set().union(*parts) == everything
    assert sum(len(p) for p in parts) == len(everything) == 42
    assert [len(p) for p in parts] == [29, 9, 4]  # round(42 * cumulative ratios)
    again = create_split(url, "imgs_metadata", [7, 2, 1], seed=3)
    assert all((again.uuids(n) == sf.uuids(n)).all() for n in sf.names())
    other = create_split(url, "imgs_metadata", [7, 2, 1], seed=4)
    assert as_set(other.uuids("train")) != parts[0]


def test_original_mode_keeps_the_source_split(tagged_store: tuple[str, cc.SplitFile]) -> None:
    url, ingested = tagged_store
    sf = create_split(url, "imgs_metadata", mode="original")
    assert sf.names() == ["train", "val"]
    for name in ("train", "val"):
        assert as_set(sf.uuids(name)) == as_set(ingested.uuids(name))
    only_val = create_split(url, "imgs_metadata", mode="original", names=["val"])
    assert only_val.names() == ["val"]
    with pytest.raises(errors.InvalidArgumentError, match="test"):
        create_split(url, "imgs_metadata", mode="original", names=["test"])


def test_weighted_mode_keeps_class_proportions(tagged_store: tuple[str, cc.SplitFile]) -> None:
    url, _ = tagged_store
    labels = labels_of(url, "imgs_metadata")
    whole = Counter(labels.values())
    assert whole == {0: 16, 1: 10, 2: 16}
    sf = create_split(url, "imgs_metadata", [3, 1], mode="weighted", seed=1)
    train = Counter(labels[u] for u in as_set(sf.uuids("train")))
    val = Counter(labels[u] for u in as_set(sf.uuids("val")))
    assert train + val == whole
    assert val == {0: 4, 1: 2, 2: 4}  # a quarter of each class, rounded
    # Whatever the seed, each class keeps its share (a random cut would not).
    for seed in range(2, 6):
        s = create_split(url, "imgs_metadata", [3, 1], mode="weighted", seed=seed)
        assert Counter(labels[u] for u in as_set(s.uuids("val"))) == val


def test_table_names_and_errors(tagged_store: tuple[str, cc.SplitFile], tmp_path: Path) -> None:
    url, _ = tagged_store
    sf = create_split(url, "imgs_metadata", table="imgs", names=["a", "b"])
    assert sf.names() == ["a", "b"] and sf.table == "imgs"
    with pytest.raises(errors.InvalidArgumentError, match="_metadata"):
        create_split(url, "imgsmeta")
    with pytest.raises(errors.InvalidArgumentError, match="mode"):
        create_split(url, "imgs_metadata", mode="balanced")
    with pytest.raises(errors.InvalidArgumentError, match="name"):
        create_split(url, "imgs_metadata", [1, 1, 1], names=["a", "b"])
    with pytest.raises(errors.InvalidArgumentError, match="ratios"):
        create_split(url, "imgs_metadata", [0, 0])
    with pytest.raises(errors.TableNotFoundError):
        create_split(url, "nothing_metadata")
    # An untagged table has no original split.
    src = make_image_folder(tmp_path / "flat", classes=2, per_class=3, small=True)
    ingest_folder(src, url, "flat", progress=False)
    with pytest.raises(errors.InvalidArgumentError, match="split tag"):
        create_split(url, "flat_metadata", mode="original")


def test_split_read_by_the_dataset(tagged_store: tuple[str, cc.SplitFile], tmp_path: Path) -> None:
    url, _ = tagged_store
    sf = create_split(url, "imgs_metadata", [8, 2], seed=0)
    sf.save(tmp_path / "s.split")
    ds = cc.ShardedDataset.from_split(url, tmp_path / "s.split", "val", 4, shuffle=False)
    got = set()
    for b in ds:
        got |= {u for u, pad in zip(b.ids, b.is_pad.tolist(), strict=True) if not pad}
    assert got == {uuid.UUID(bytes=r.tobytes()) for r in sf.uuids("val")}


def test_cli_split_create(tagged_store: tuple[str, cc.SplitFile], tmp_path: Path) -> None:
    url, _ = tagged_store
    out = tmp_path / "cli.split"
    cmd = [sys.executable, "-m", "crs4_cassandra.cli", "split", "create", "--store", url]
    r = subprocess.run(
        [*cmd, "-m", "imgs_metadata", "-r", "8,2", "--mode", "weighted", "--seed", "5", "-o", out],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "train=34, val=8" in r.stdout, r.stdout
    sf = cc.SplitFile.load(out)
    same = create_split(url, "imgs_metadata", [8, 2], mode="weighted", seed=5)
    assert (sf.uuids("val") == same.uuids("val")).all()
    bad = subprocess.run(
        [*cmd, "-m", "imgs", "-o", tmp_path / "x.split"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "_metadata" in bad.stderr
