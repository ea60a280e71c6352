"""Bad data gets a clear error naming the culprit (uuid, table, column or
file), on both stores where it applies; with ``on_error="skip"`` undecodable
samples are reported, never silently lost."""

from __future__ import annotations

import io
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import crs4_cassandra as cc
from crs4_cassandra import _native, errors

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["local", "cassandra"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "local":
        yield f"local:{tmp_path / 'store'}"
    else:
        yield request.getfixturevalue("keyspace_url")


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def make(url: str, table: str, label_type: str, labels: list, data: list[bytes]) -> np.ndarray:
    st = _native.open_store(url, create=True)
    st.create_tables(table, f"{table}_metadata", label_type, overwrite=True)
    ids = [uuid.uuid4().bytes for _ in data]
    st.put_samples(table, b"".join(ids), labels, data)
    return np.frombuffer(b"".join(ids), dtype=np.uint8).reshape(-1, 16)


def uuid_at(ids: np.ndarray, i: int) -> str:
    return str(uuid.UUID(bytes=ids[i].tobytes()))


def read_all(url: str, table: str, ids: np.ndarray, **kw: object) -> list[cc.Batch]:
    return list(cc.ShardedDataset(url, table, ids, 4, shuffle=False, **kw))  # type: ignore[arg-type]


def test_empty_data_blob_names_uuid_table_and_column(store_url: str) -> None:
    ids = make(store_url, "t", "int", [1, 2, 3], [b"a", b"", b"c"])
    with pytest.raises(errors.CorruptSampleError) as ei:
        read_all(store_url, "t", ids)
    e = ei.value
    assert uuid_at(ids, 1) in str(e) and "data" in str(e) and "t" in e.table  # type: ignore[attr-defined]
    assert e.uuid == uuid_at(ids, 1) and e.column == "data"  # type: ignore[attr-defined]


def test_null_label_names_the_label_column(store_url: str) -> None:
    ids = make(store_url, "t", "int", [1, None, 3], [b"a", b"b", b"c"])
    with pytest.raises(errors.CorruptSampleError, match="null label") as ei:
        read_all(store_url, "t", ids)
    assert ei.value.uuid == uuid_at(ids, 1)  # type: ignore[attr-defined]
    assert ei.value.column == "label"  # type: ignore[attr-defined]


def test_label_of_the_wrong_type_is_refused_naming_the_sample(store_url: str) -> None:
    # Written through the library, a label that does not fit the table's label
    # type never reaches the store (the local store would otherwise hold any
    # bytes; records it cannot parse are covered by the Rust property tests).
    make(store_url, "t", "int", [1], [b"a"])
    st = _native.open_store(store_url)
    bad = uuid.uuid4()
    with pytest.raises(errors.LoaderError) as ei:
        st.put_samples("t", bad.bytes, [b"xyz"], [b"c"])
    assert isinstance(ei.value, (errors.InvalidArgumentError, errors.QueryError))
    if store_url.startswith("local:"):
        assert str(bad) in str(ei.value) and '"t"' in str(ei.value)


def test_label_type_mismatch_fails_at_construction(store_url: str) -> None:
    ids = make(store_url, "t", "blob", [b"x", b"y"], [b"a", b"b"])
    with pytest.raises(errors.SchemaError) as ei:
        cc.ShardedDataset(store_url, "t", ids, 2, label_type="int")
    assert "t" in str(ei.value)


def test_uuid_absent_from_the_table_is_named(store_url: str) -> None:
    ids = make(store_url, "t", "int", [1, 2, 3], [b"a", b"b", b"c"])
    ghost = uuid.uuid4()
    ids = np.concatenate([ids, np.frombuffer(ghost.bytes, np.uint8)[None]])
    with pytest.raises(errors.SampleNotFoundError) as ei:
        read_all(store_url, "t", ids)
    assert str(ghost) in str(ei.value) and ei.value.uuid == str(ghost)  # type: ignore[attr-defined]


def test_missing_empty_and_null_samples_are_skipped_and_reported(store_url: str) -> None:
    labels: list[int | None] = list(range(9))
    data = [bytes([i + 1]) * 10 for i in range(9)]
    data[2] = b""  # empty data blob
    labels[5] = None  # null label
    ids = make(store_url, "t", "int", labels, data)
    ghost = uuid.uuid4()
    ids = np.concatenate([ids, np.frombuffer(ghost.bytes, np.uint8)[None]])  # index 9
    ds = cc.ShardedDataset(store_url, "t", ids, 4, shuffle=False, on_error="skip")
    batches = list(ds)
    assert len(batches) == len(ds)  # every rank still gets its planned batch count
    kept = sorted(i for b in batches for i in b.indices[~b.is_pad].tolist())
    skipped = sorted(i for b in batches for i in b.skipped.tolist())
    assert skipped == [2, 5, 9] and sorted(ds.skipped) == [2, 5, 9]
    assert sorted(kept + skipped) == list(range(10))
    for b in batches:
        for s, i in zip(b.samples(), b.indices.tolist(), strict=True):
            assert s.numpy().tobytes() == data[i]
    reported = {str(u) for b in batches for u in b.skipped_ids}
    assert reported == {uuid_at(ids, 2), uuid_at(ids, 5), str(ghost)}


def test_corrupt_jpeg_raises_or_is_skipped_and_reported(store_url: str) -> None:
    data = [jpeg(i) for i in range(10)]
    data[3] = b"\xff\xd8\xff not really a jpeg"
    data[7] = data[7][: len(data[7]) // 3]  # truncated
    ids = make(store_url, "t", "int", list(range(10)), data)
    with pytest.raises(errors.CorruptSampleError, match="decode") as ei:
        read_all(store_url, "t", ids, decode="rgb", size=(8, 8))
    assert ei.value.uuid in (uuid_at(ids, 3), uuid_at(ids, 7))  # type: ignore[attr-defined]
    ds = cc.ShardedDataset(
        store_url, "t", ids, 4, shuffle=False, decode="rgb", size=(8, 8), on_error="skip"
    )
    batches = list(ds)
    kept = sorted(i for b in batches for i in b.indices[~b.is_pad].tolist())
    skipped = sorted(i for b in batches for i in b.skipped.tolist())
    # Exactly-once accounting: every sample is either served or reported skipped.
    assert skipped == [3, 7] and sorted(ds.skipped) == [3, 7]
    assert sorted(kept + skipped) == list(range(10))
    reported = {str(u) for b in batches for u in b.skipped_ids}
    assert reported == {uuid_at(ids, 3), uuid_at(ids, 7)}


def test_split_from_another_table_names_the_first_missing_uuid(
    store_url: str, tmp_path: Path
) -> None:
    make(store_url, "t", "int", [1, 2], [b"a", b"b"])
    other = [uuid.uuid4() for _ in range(5)]
    sf = cc.SplitFile("t", "int")
    sf.add("train", other)
    path = tmp_path / "other.split"
    sf.save(path)
    ds = cc.ShardedDataset.from_split(store_url, path, "train", 2, shuffle=False)
    with pytest.raises(errors.SampleNotFoundError) as ei:
        list(ds)
    # Reads run concurrently: whichever missing uuid failed first is named.
    assert ei.value.uuid in {str(u) for u in other}  # type: ignore[attr-defined]
    assert ei.value.uuid in str(ei.value) and "t" in ei.value.table  # type: ignore[attr-defined]
    # A split naming a table the store lacks fails at construction, naming it.
    sf2 = cc.SplitFile("elsewhere", "int")
    sf2.add("train", other)
    sf2.save(tmp_path / "elsewhere.split")
    with pytest.raises(errors.TableNotFoundError, match="elsewhere"):
        cc.ShardedDataset.from_split(store_url, tmp_path / "elsewhere.split", "train", 2)


def test_truncated_or_garbage_split_file_names_the_file(tmp_path: Path) -> None:
    sf = cc.SplitFile("t", "int")
    sf.add("train", [uuid.uuid4() for _ in range(50)])
    good = tmp_path / "good.split"
    sf.save(good)
    raw = good.read_bytes()
    for name, content in (
        ("cut.split", raw[: len(raw) - 7]),
        ("half.split", raw[: len(raw) // 2]),
        ("garbage.split", b"this is not a split file at all"),
        ("empty.split", b""),
    ):
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(errors.SplitFileError) as ei:
            cc.SplitFile.load(p)
        assert name in str(ei.value), str(ei.value)
    with pytest.raises(errors.SplitFileNotFoundError, match="nowhere.split"):
        cc.SplitFile.load(tmp_path / "nowhere.split")


def test_a_path_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    for path in (tmp_path / "plain", tmp_path / "plain" / "notes.txt", tmp_path / "missing"):
        with pytest.raises(errors.LoaderError) as ei:
            cc.open_store(f"local:{path}")
        assert isinstance(ei.value, (errors.StoreNotFoundError, errors.StoreIOError))
        assert str(path) in str(ei.value)


def test_a_uuid_listed_twice_is_refused_naming_it(tmp_path: Path) -> None:
    url = f"local:{tmp_path / 'store'}"
    ids = make(url, "t", "int", [1, 2, 3, 4], [b"a", b"b", b"c", b"d"])
    twice = np.concatenate([ids, ids[2:3]])  # uuid #2 again, at position 4
    culprit = uuid_at(ids, 2)
    with pytest.raises(errors.InvalidArgumentError, match=f"{culprit}.*positions 2 and 4"):
        cc.ShardedDataset(url, "t", twice, 2)
    with pytest.raises(errors.InvalidArgumentError, match=culprit):
        cc.ShardedDataset(url, "t", [uuid.UUID(bytes=bytes(u)) for u in twice], 2)
    # A split file with a uuid twice can neither be written nor served...
    sf = cc.SplitFile("t", "int")
    sf.add("train", twice)
    with pytest.raises(errors.InvalidArgumentError, match=f'"train".*{culprit}'):
        sf.save(tmp_path / "twice.split")
    assert not (tmp_path / "twice.split").exists()
    with pytest.raises(errors.InvalidArgumentError, match=culprit):
        cc.ShardedDataset.from_split(url, sf, "train", 2)
    # ...and one written before duplicates were refused names file, split and uuid.
    sf.add("train", ids)
    sf.save(tmp_path / "old.split")
    raw = (tmp_path / "old.split").read_bytes()[:-4]
    raw = raw.replace(ids[3].tobytes(), ids[2].tobytes())
    (tmp_path / "old.split").write_bytes(raw + zlib.crc32(raw).to_bytes(4, "little"))
    with pytest.raises(errors.SplitFileError) as ei:
        cc.SplitFile.load(tmp_path / "old.split")
    message = str(ei.value)
    assert "old.split" in message and '"train"' in message and culprit in message, message
    with pytest.raises(errors.SplitFileError, match=culprit):
        cc.ShardedDataset.from_split(url, tmp_path / "old.split", "train", 2)
    # Deliberate oversampling: each entry of the list is served once per epoch.
    over = cc.ShardedDataset(url, "t", twice, 2, allow_repeats=True, shuffle=False)
    served = [i for b in over for i in b.indices[~b.is_pad].tolist()]
    assert sorted(served) == [0, 1, 2, 3, 4]
    assert [uuid_at(twice, i) for i in (2, 4)] == [culprit, culprit]
