"""N-d arrays chunked over the store, against numpy, on the local store and on
the real Cassandra node; and patch datasets over them."""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from crs4_cassandra import arrays, open_store
from crs4_cassandra.errors import (
    ArrayExistsError,
    ArrayNotFoundError,
    CorruptChunkError,
    InvalidArgumentError,
)
from crs4_cassandra.patches import PatchDataset

DTYPES = ["uint8", "int16", "<u4", "float32", "float64", "complex64", "bool"]
_names = itertools.count()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return open_store(f"local:{tmp_path_factory.mktemp('arrays')}/store", create=True)


@pytest.fixture(scope="module")
def cass(cassandra: Any) -> Any:
    return open_store(cassandra.url("arrays"))


@st.composite
def index_for(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[Any, ...]:
    """A numpy basic index of ``shape``: ints, slices with steps, ``...``, None."""
    parts: list[Any] = []
    for n in shape:
        kind = draw(st.sampled_from(["int", "slice", "slice", "all"]))
        if kind == "int":
            parts.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            bound = st.none() | st.integers(-n - 2, n + 2)
            step = draw(st.sampled_from([None, 1, 2, 3, -1, -2]))
            parts.append(slice(draw(bound), draw(bound), step))
        else:
            parts.append(slice(None))
    if parts and draw(st.booleans()):
        # Trailing full slices become an ellipsis.
        cut = draw(st.integers(0, len(parts)))
        if all(p == slice(None) for p in parts[cut:]):
            parts = parts[:cut] + [Ellipsis]
    if draw(st.booleans()):
        parts.insert(draw(st.integers(0, len(parts))), None)
    return tuple(parts)


@st.composite
def cases(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...], str, str | None, Any]:
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=4)))
    chunks = tuple(draw(st.integers(1, n + 2)) for n in shape)
    dtype = draw(st.sampled_from(DTYPES))
    compression = draw(st.sampled_from(["zstd", None]))
    return shape, chunks, dtype, compression, draw(index_for(shape))


def values(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 2**31, size=shape)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return raw % 2 == 1
    if dt.kind == "c":
        return (raw + 1j * raw[::-1] if raw.ndim else raw).astype(dt)
    return raw.astype(dt)


def check_case(store: Any, case: tuple[Any, ...]) -> None:
    shape, chunks, dtype, compression, key = case
    ref = values(shape, dtype, seed=len(shape))
    a = arrays.create(
        store, f"p{next(_names)}", shape, dtype, chunks, compression=compression, fill_value=1
    )
    # Never written: the fill value everywhere.
    np.testing.assert_array_equal(a[key], np.ones(shape, dtype=dtype)[key])
    a[...] = ref
    np.testing.assert_array_equal(a[...], ref)
    np.testing.assert_array_equal(a[key], ref[key])
    # A write through the same index, then the whole array, as numpy has it.
    patch = values(np.empty(shape)[key].shape, dtype, seed=99)
    a[key] = patch
    ref[key] = patch
    np.testing.assert_array_equal(a[...], ref)
    arrays.delete(store, a.name)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=cases())
def test_indexing_matches_numpy_on_the_local_store(local: Any, case: tuple[Any, ...]) -> None:
    check_case(local, case)


@pytest.mark.slow
@pytest.mark.timeout(600)
@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=cases())
def test_indexing_matches_numpy_on_cassandra(cass: Any, case: tuple[Any, ...]) -> None:
    check_case(cass, case)


def test_metadata_listing_and_errors(local: Any) -> None:
    a = arrays.create(local, "meta-a", (10, 7), "float32", (4, 4), fill_value=2.5)
    assert (a.shape, a.chunks, a.dtype, a.ndim, a.size) == ((10, 7), (4, 4), np.float32, 2, 70)
    assert a.nbytes == 280 and a.num_chunks == 6 and a.compression == "zstd"
    assert a.fill_value == np.float32(2.5) and len(a) == 10
    assert "meta-a" in arrays.names(local)
    b = arrays.open(local, "meta-a")
    assert (b.shape, b.dtype, b.chunks) == (a.shape, a.dtype, a.chunks)
    np.testing.assert_array_equal(np.asarray(b), np.full((10, 7), 2.5, np.float32))
    with pytest.raises(ArrayExistsError, match="meta-a"):
        arrays.create(local, "meta-a", (3,), "uint8", (1,))
    with pytest.raises(ArrayNotFoundError, match="meta-b.*meta-a"):
        arrays.open(local, "meta-b")
    with pytest.raises(IndexError, match="out of bounds"):
        a[10, 0]
    with pytest.raises(IndexError, match="too many indices"):
        a[1, 2, 3]
    with pytest.raises(ValueError, match="broadcast"):
        a[0:2] = np.zeros((3, 7))
    with pytest.raises(ValueError, match="numeric"):
        arrays.create(local, "obj", (3,), object, (1,))
    with pytest.raises(InvalidArgumentError, match="chunk sizes must be > 0"):
        arrays.create(local, "zero", (3,), "uint8", (0,))
    with pytest.raises(InvalidArgumentError, match="one entry per dimension"):
        arrays.create(local, "dims", (3, 3), "uint8", (1,))
    with pytest.raises(InvalidArgumentError, match="gzip"):
        arrays.create(local, "codec", (3,), "uint8", (1,), compression="gzip")
    # Made again under the same name: none of the old chunks show through.
    a[...] = 9
    c = arrays.create(local, "meta-a", (10, 7), "float32", (4, 4), overwrite=True)
    np.testing.assert_array_equal(c[...], np.zeros((10, 7), np.float32))
    arrays.delete(local, "meta-a")
    assert "meta-a" not in arrays.names(local)
    with pytest.raises(ArrayNotFoundError):
        arrays.delete(local, "meta-a")


def test_cassandra_refuses_chunks_larger_than_a_mutation(cass: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="smaller chunks"):
        arrays.create(cass, "huge", (8192, 8192), "uint8", (8192, 8192))


def test_corrupt_chunk_is_named(tmp_path: Path) -> None:
    store = open_store(f"local:{tmp_path}/s", create=True)
    a = arrays.create(store, "scan", (8, 8), "uint8", (4, 4), compression=None)
    marker = np.arange(100, 116, dtype=np.uint8).reshape(4, 4)
    a[...] = 0
    a[4:8, 0:4] = marker  # chunk (1, 0), stored raw: its bytes are in the file as they are
    del a, store
    path = tmp_path / "s" / "data.mdb"
    raw = bytearray(path.read_bytes())
    at = raw.find(marker.tobytes())
    assert at > 0
    raw[at + 5] ^= 0xFF
    path.write_bytes(raw)
    a = arrays.open(open_store(f"local:{tmp_path}/s"), "scan")
    np.testing.assert_array_equal(a[0:4, 0:4], np.zeros((4, 4), np.uint8))  # other chunks read
    with pytest.raises(CorruptChunkError, match=r'"scan".*\[1, 0\].*checksum') as e:
        a[5, 1]
    assert e.value.array == "scan"  # type: ignore[attr-defined]


def test_corrupt_chunk_on_cassandra_is_named(cass: Any, cassandra: Any) -> None:
    a = arrays.create(cass, "bad", (6,), "int32", (3,), overwrite=True)
    a[...] = np.arange(6, dtype=np.int32)
    (row,) = cassandra.cql("SELECT meta FROM arrays.crs4_arrays WHERE name = 'bad'")[0]
    array_id = json.loads(row["meta"])["id"]
    cassandra.cql(
        f"UPDATE arrays.crs4_array_chunks SET data = 0x00112233 "
        f"WHERE array = {array_id} AND chunk = 1"
    )
    np.testing.assert_array_equal(a[:3], np.arange(3, dtype=np.int32))
    with pytest.raises(CorruptChunkError, match=r'"bad".*\[1\]'):
        a[3:]


def _write_rows(url: str, name: str, rows: range, value: int) -> None:
    a = arrays.open(open_store(url), name)
    for r in rows:
        a[r * 4 : (r + 1) * 4] = value + r


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["local", "cassandra"])
def test_concurrent_writers_of_different_chunks(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"local:{tmp_path}/s"
        if kind == "local"
        else request.getfixturevalue("cassandra").url("arrays")
    )
    store = open_store(url, create=True) if kind == "local" else open_store(url)
    name = f"shared{next(_names)}"
    arrays.create(store, name, (64, 32), "int32", (4, 32), overwrite=True)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_write_rows, args=(url, name, range(w, 16, 2), 1000 * (w + 1)))
        for w in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
        assert p.exitcode == 0
    got = arrays.open(store, name)[...]
    for r in range(16):
        np.testing.assert_array_equal(got[r * 4 : (r + 1) * 4], 1000 * (r % 2 + 1) + r)


# Patches


@pytest.fixture(scope="module")
def slide(local: Any) -> tuple[np.ndarray, np.ndarray]:
    img = (np.arange(96 * 80 * 3) % 251).astype(np.uint8).reshape(96, 80, 3)
    mask = np.arange(96 * 80, dtype=np.int64).reshape(96, 80)
    a = arrays.create(local, "slide", img.shape, "uint8", (32, 32, 3))
    a[...] = img
    m = arrays.create(local, "slide-mask", mask.shape, "int64", (32, 32))
    m[...] = mask
    small = arrays.create(local, "slide2", (40, 50, 3), "uint8", (16, 16, 3))
    small[...] = 7
    arrays.create(local, "slide2-mask", (40, 50), "int64", (16, 16))
    return img, mask


def served(ds: PatchDataset, epoch: int, **loader: Any) -> list[tuple[int, Any, Any, bool]]:
    ds.set_epoch(epoch)
    out = []
    for b in DataLoader(ds, batch_size=None, **loader):
        for i in range(len(b.indices)):
            label = None if b.labels is None else b.labels[i].numpy().copy()
            out.append((int(b.indices[i]), b.images[i].numpy().copy(), label, bool(b.is_pad[i])))
    return out


def test_patches_are_the_arrays_at_their_located_origins(
    local: Any, slide: tuple[np.ndarray, np.ndarray]
) -> None:
    img, mask = slide
    ds = PatchDataset(
        local, ["slide", "slide2"], (16, 24), per_epoch=40, batch_size=8,
        labels=["slide-mask", "slide2-mask"], seed=3,
    )  # fmt: skip
    assert ds.patch_shape == (16, 24, 3) and ds.label_shape == (16, 24) and len(ds) == 5
    for epoch in (0, 1):
        got = served(ds, epoch)
        assert sorted(i for i, *_ in got) == list(range(40))
        seen = set()
        for i, image, label, _ in got:
            name, (y, x) = ds.locate(epoch, i)
            seen.add(name)
            if name == "slide":
                np.testing.assert_array_equal(image, img[y : y + 16, x : x + 24])
                np.testing.assert_array_equal(label, mask[y : y + 16, x : x + 24])
            else:
                assert (image == 7).all() and (label == 0).all()
        assert seen == {"slide", "slide2"}
    # Random positions: a function of (seed, epoch, slot), new each epoch.
    assert ds.locate(0, 5) == ds.locate(0, 5) and ds.locate(0, 5) != ds.locate(1, 5)
    other = PatchDataset(local, ["slide"], (16, 24), per_epoch=40, batch_size=8, seed=4)
    assert [other.locate(0, i) for i in range(10)] != [ds.locate(0, i) for i in range(10)]


@pytest.mark.timeout(300)
def test_grid_patches_exactly_once_over_ranks_and_workers(
    local: Any, slide: tuple[np.ndarray, np.ndarray]
) -> None:
    img, _ = slide
    n = (96 // 32) * (80 // 16)
    seen: list[int] = []
    counts = []
    for rank in range(2):
        ds = PatchDataset(
            local, ["slide"], (32, 16), grid=True, batch_size=4, rank=rank, world_size=2
        )
        assert ds.num_samples == n
        got = served(ds, 2, num_workers=2)
        counts.append(len(got))
        for i, image, _, pad in got:
            _, (y, x) = ds.locate(2, i)
            assert y % 32 == 0 and x % 16 == 0
            np.testing.assert_array_equal(image, img[y : y + 32, x : x + 16])
            if not pad:
                seen.append(i)
    assert counts[0] == counts[1]
    assert sorted(seen) == list(range(n))


def test_patch_dataset_resumes_mid_epoch(local: Any, slide: tuple[np.ndarray, np.ndarray]) -> None:
    ds = PatchDataset(local, ["slide"], (8, 8), per_epoch=30, batch_size=4, seed=1)
    ds.set_epoch(4)
    it = iter(ds)
    first = [next(it) for _ in range(3)]
    state = ds.state_dict()
    del it
    again = PatchDataset(local, ["slide"], (8, 8), per_epoch=30, batch_size=4, seed=1)
    again.load_state_dict(state)
    rest = list(again)
    slots = [
        int(i) for b in first + rest for i, p in zip(b.indices, b.is_pad, strict=True) if not p
    ]
    assert sorted(slots) == list(range(30))
    # The resumed patches are those of the uninterrupted epoch.
    whole = {i: img for i, img, _, _ in served(ds, 4)}
    for b in rest:
        for i, image in zip(b.indices.tolist(), b.images, strict=True):
            np.testing.assert_array_equal(image.numpy(), whole[i])


def test_patch_dataset_errors_name_the_array(local: Any, slide: Any) -> None:
    with pytest.raises(ArrayNotFoundError, match="nope"):
        PatchDataset(local, ["nope"], (8, 8), per_epoch=4, batch_size=2)
    with pytest.raises(InvalidArgumentError, match='"slide2".*smaller than the patch'):
        PatchDataset(local, ["slide", "slide2"], (48, 8), per_epoch=4, batch_size=2)
    with pytest.raises(InvalidArgumentError, match="slide-mask.*does not match"):
        PatchDataset(local, ["slide", "slide-mask"], (8, 8), per_epoch=4, batch_size=2)
    with pytest.raises(InvalidArgumentError, match="per_epoch=N.*grid=True"):
        PatchDataset(local, ["slide"], (8, 8), batch_size=2)
    with pytest.raises(InvalidArgumentError, match="label arrays"):
        PatchDataset(local, ["slide"], (8, 8), grid=True, batch_size=2, labels=[])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_patches_from_cassandra(cass: Any) -> None:
    vol = (np.arange(40 * 40 * 40) % 241).astype(np.uint8).reshape(40, 40, 40)
    a = arrays.create(cass, "vol", vol.shape, "uint8", (16, 16, 16), overwrite=True)
    a[...] = vol
    ds = PatchDataset(cass, ["vol"], (8, 8, 8), per_epoch=24, batch_size=6, seed=2)
    got = served(ds, 0, num_workers=2)
    assert sorted(i for i, *_ in got) == list(range(24))
    for i, image, _, _ in got:
        _, (z, y, x) = ds.locate(0, i)
        np.testing.assert_array_equal(image, vol[z : z + 8, y : y + 8, x : x + 8])
    assert isinstance(got[0][1], np.ndarray) and torch.is_tensor(next(iter(ds)).images)


# Ingest


def test_ingest_npy_zarr_and_images_through_the_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    import tifffile
    import zarr
    from PIL import Image

    rng = np.random.default_rng(0)
    vol = rng.integers(0, 60000, size=(70, 33, 20), dtype=np.uint16)
    np.save(tmp_path / "vol.npy", vol)
    z = zarr.create_array(tmp_path / "scan.zarr", shape=(50, 40), chunks=(16, 8), dtype="f4")
    z[...] = rng.random((50, 40), dtype=np.float32)
    folder = tmp_path / "slides"
    (folder / "b").mkdir(parents=True)
    big = rng.integers(0, 255, size=(600, 700, 3), dtype=np.uint8)
    tifffile.imwrite(folder / "a.tif", big, tile=(256, 256))
    gray = rng.integers(0, 255, size=(90, 60), dtype=np.uint8)
    Image.fromarray(gray).save(folder / "b" / "gray.png")
    Image.fromarray(big[:100, :120]).save(folder / "b" / "c.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    url = f"local:{tmp_path}/store"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "crs4_cassandra.cli", "ingest", "array", *args, "--store", url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    r = cli(str(tmp_path / "vol.npy"), "--chunks", "16,16,20", "-q")
    assert r.returncode == 0, r.stderr
    assert "array 'vol': shape (70, 33, 20) uint16, chunks (16, 16, 20)" in r.stdout
    r = cli(str(tmp_path / "scan.zarr"), "--compression", "none", "-q")
    assert r.returncode == 0, r.stderr
    r = cli(str(folder), "--name", "slides", "-q")
    assert r.returncode == 0, r.stderr
    store = open_store(url)
    assert arrays.names(store) == ["scan", "slides/a", "slides/b/c", "slides/b/gray", "vol"]
    np.testing.assert_array_equal(arrays.open(store, "vol")[...], vol)
    scan = arrays.open(store, "scan")
    assert scan.chunks == (16, 8) and scan.compression is None  # the zarr array's own chunks
    np.testing.assert_array_equal(scan[...], z[...])
    a = arrays.open(store, "slides/a")
    assert a.chunks == (512, 512, 3)
    np.testing.assert_array_equal(a[...], big)
    np.testing.assert_array_equal(arrays.open(store, "slides/b/gray")[...], gray)
    with Image.open(folder / "b" / "c.jpg") as im:
        np.testing.assert_array_equal(arrays.open(store, "slides/b/c")[...], np.asarray(im))
    # Again: refused without --overwrite, naming the array; a bad image names its file.
    r = cli(str(tmp_path / "vol.npy"), "-q")
    assert r.returncode == 2 and "'vol'" in r.stderr.replace('"', "'") and "overwrite" in r.stderr
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = cli(str(folder), "--name", "again", "-q")
    assert r.returncode == 2 and "broken.png" in r.stderr
    assert not [n for n in arrays.names(store) if n.startswith("again")]  # nothing written
    r = cli(str(tmp_path / "missing.npy"), "-q")
    assert r.returncode == 2 and "missing.npy" in r.stderr


def _patch_rank(rank: int, url: str, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=3)
    try:
        ds = PatchDataset(url, ["grid"], (8, 8), grid=True, batch_size=4, seed=5)
        assert (ds.rank, ds.world_size) == (rank, 3)
        result = {}
        for epoch in (0, 1):
            ds.set_epoch(epoch)
            batches, slots = 0, []
            for b in DataLoader(ds, batch_size=None, num_workers=2):
                batches += 1
                slots += b.indices[~b.is_pad].tolist()
                t = torch.ones(1)
                dist.all_reduce(t)  # an uneven batch count would hang here
            result[epoch] = {"batches": batches, "len": len(ds), "slots": slots}
        gathered: list[object] = [None] * 3
        dist.all_gather_object(gathered, result)
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_patches_under_ddp_three_ranks_two_workers(tmp_path: Path) -> None:
    import torch.multiprocessing as tmp_mp

    from tests.test_ddp import free_port

    url = f"local:{tmp_path}/s"
    a = arrays.create(open_store(url, create=True), "grid", (40, 56), "float32", (16, 16))
    a[...] = np.arange(40 * 56, dtype=np.float32).reshape(40, 56)
    port = free_port()
    out = tmp_path / "ranks.json"
    tmp_mp.start_processes(
        _patch_rank, args=(url, port, str(out)), nprocs=3, join=True, start_method="spawn"
    )
    ranks = json.loads(out.read_text())
    n = (40 // 8) * (56 // 8)
    for epoch in ("0", "1"):
        assert {r[epoch]["batches"] for r in ranks} == {ranks[0][epoch]["len"]}
        assert sorted(i for r in ranks for i in r[epoch]["slots"]) == list(range(n))
    assert [r["0"]["slots"] for r in ranks] != [r["1"]["slots"] for r in ranks]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_patch_dataset_in_spawned_workers(local: Any, slide: tuple[np.ndarray, np.ndarray]) -> None:
    img, _ = slide
    ds = PatchDataset(local, ["slide"], (16, 16), per_epoch=24, batch_size=4, seed=8)
    got = served(ds, 3, num_workers=2, multiprocessing_context="spawn")
    assert sorted(i for i, *_ in got) == list(range(24))
    for i, image, _, _ in got:
        _, (y, x) = ds.locate(3, i)
        np.testing.assert_array_equal(image, img[y : y + 16, x : x + 16])
