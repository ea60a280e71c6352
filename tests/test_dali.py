"""crs4_cassandra.dali.reader in real DALI pipelines (CPU only: device_id=None)."""

from __future__ import annotations

import gc
import io
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.dlpack import from_dlpack

import crs4_cassandra as cc
from crs4_cassandra import _native
from crs4_cassandra.dali import _Source, decode_npy_batch, reader
from crs4_cassandra.errors import InvalidArgumentError
from crs4_cassandra.testing import SHAPES, shape_image

from .conftest import Secure

dali = pytest.importorskip("nvidia.dali")
fn = pytest.importorskip("nvidia.dali.fn")
types = pytest.importorskip("nvidia.dali.types")
from nvidia.dali import pipeline_def  # noqa: E402
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy  # noqa: E402

N = 150


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(autouse=True)
def _pipelines_die_here() -> Iterator[None]:
    # A DALI pipeline left in a reference cycle would otherwise be collected
    # later, possibly in a DataLoader worker forked from this process, where
    # its destructor waits forever for executor threads only this process has.
    yield
    gc.collect()


@pytest.fixture(scope="module")
def shapes_table(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray, list[bytes]]:
    """N 48x40 JPEGs whose int label is their position (so every sample is identifiable)."""
    rng = np.random.default_rng(5)
    blobs = [jpeg(shape_image(rng, SHAPES[i % 10], (48, 40), 10.0)) for i in range(N)]
    url = f"local:{tmp_path_factory.mktemp('dali') / 'store'}"
    st = _native.open_store(url, create=True)
    st.create_tables("shapes", "shapes_metadata", "int", overwrite=True)
    ids = [uuid.uuid4().bytes for _ in blobs]
    st.put_samples("shapes", b"".join(ids), list(range(N)), blobs)
    return url, np.frombuffer(b"".join(ids), dtype=np.uint8).reshape(-1, 16), blobs


def build(define: Callable[[], Any], batch_size: int) -> Any:
    @pipeline_def(batch_size=batch_size, num_threads=2, device_id=None, prefetch_queue_depth=2)
    def pipe() -> Any:
        return define()

    p = pipe()
    p.build()
    return p


def labels_of(p: Any, policy: LastBatchPolicy, epochs: int) -> list[list[int]]:
    it = DALIGenericIterator(
        p, ["images", "labels"], reader_name="Reader", last_batch_policy=policy
    )
    out = []
    for _ in range(epochs):
        seen: list[int] = []
        for (b,) in it:
            assert b["labels"].dtype == torch.int32 and b["labels"].shape[1] == 1
            seen += b["labels"][:, 0].tolist()
        it.reset()
        out.append(seen)
    return out


@pytest.mark.timeout(60)
def test_pixels_match_pillow(shapes_table: tuple[str, np.ndarray, list[bytes]]) -> None:
    url, ids, blobs = shapes_table

    def define() -> Any:
        jpegs, labels = reader(name="Reader", store=url, table="shapes", source_uuids=ids)
        images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        small = fn.resize(images, resize_x=24, resize_y=20)
        return images, small, labels

    p = build(define, 32)
    images, small, labels = p.run()
    assert len(images) == 32
    for i in range(len(images)):
        label = int(np.asarray(labels[i])[0])
        ref = Image.open(io.BytesIO(blobs[label])).convert("RGB")
        full = np.asarray(images[i]).astype(int)
        assert full.shape == (40, 48, 3)
        assert np.abs(full - np.asarray(ref).astype(int)).mean() < 1.5
        resized = np.asarray(ref.resize((24, 20), Image.BILINEAR)).astype(int)
        assert np.abs(np.asarray(small[i]).astype(int) - resized).mean() < 6


def reader_pipeline(url: str, ids: np.ndarray, batch: int, **kw: Any) -> Any:
    def define() -> Any:
        jpegs, labels = reader(name="Reader", store=url, table="shapes", source_uuids=ids, **kw)
        images = fn.resize(fn.decoders.image(jpegs, device="cpu"), resize_x=8, resize_y=8)
        return images, labels

    return build(define, batch)


@pytest.mark.timeout(90)
def test_partial_serves_every_sample_once_per_epoch(
    shapes_table: tuple[str, np.ndarray, list[bytes]],
) -> None:
    url, ids, _ = shapes_table
    p = reader_pipeline(url, ids, 32, shuffle_every_epoch=True, seed=11)
    epochs = labels_of(p, LastBatchPolicy.PARTIAL, 3)
    for seen in epochs:
        assert sorted(seen) == list(range(N))
    assert epochs[0] != epochs[1], "shuffle_every_epoch must reshuffle"


@pytest.mark.timeout(90)
def test_two_shards_cover_the_split(shapes_table: tuple[str, np.ndarray, list[bytes]]) -> None:
    url, ids, _ = shapes_table
    per_shard = []
    for shard in range(2):
        p = reader_pipeline(url, ids, 16, shard_id=shard, num_shards=2, shuffle_every_epoch=True)
        per_shard.append(labels_of(p, LastBatchPolicy.PARTIAL, 2))
    for epoch in range(2):
        a, b = per_shard[0][epoch], per_shard[1][epoch]
        assert not set(a) & set(b)
        assert sorted(a + b) == list(range(N))


@pytest.mark.timeout(90)
def test_fill_and_drop_policies(shapes_table: tuple[str, np.ndarray, list[bytes]]) -> None:
    url, ids, _ = shapes_table
    # 150 samples, batch 32: 4 full batches and 22 samples in the last.
    fill = labels_of(reader_pipeline(url, ids, 32), LastBatchPolicy.FILL, 2)
    for seen in fill:
        assert len(seen) == 160 and set(seen) == set(range(N))
    drop = labels_of(reader_pipeline(url, ids, 32), LastBatchPolicy.DROP, 2)
    for seen in drop:
        assert len(seen) == 128 == len(set(seen))
    assert drop[0] == drop[1], "without shuffle_every_epoch every epoch has the same order"


@pytest.mark.timeout(60)
def test_without_loop_forever_epochs_end_with_stop_iteration(
    shapes_table: tuple[str, np.ndarray, list[bytes]],
) -> None:
    url, ids, _ = shapes_table
    p = reader_pipeline(url, ids, 64, loop_forever=False)
    it = DALIGenericIterator(p, ["images", "labels"], last_batch_policy=LastBatchPolicy.PARTIAL)
    for _ in range(2):
        seen = [x for (b,) in it for x in b["labels"][:, 0].tolist()]
        it.reset()
        # Without reader_name the iterator cannot trim: the pads come through.
        assert len(seen) == 192 and set(seen) == set(range(N))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop_forever", [True, False])
def test_the_next_epoch_is_read_ahead_on_the_same_reader(
    shapes_table: tuple[str, np.ndarray, list[bytes]], loop_forever: bool
) -> None:
    """The source queues each next epoch behind the current one on one native
    reader, and still serves, epoch after epoch, what a fresh reader of that
    epoch would: here shard 2 of 4, whose last batch of each epoch is pads
    only (read, not served)."""
    url, ids, _ = shapes_table
    batch, shards, shard = 16, 4, 2

    def dataset() -> cc.ShardedDataset:
        return cc.ShardedDataset(url, "shapes", ids, batch, seed=7, rank=shard, world_size=shards)

    real, batches = dataset()._rank_counts()
    assert (real, batches) == (32, 2) and len(dataset()) == 3

    src = _Source(dataset(), batches, True, loop_forever, "int32", keep_alive=4)
    readers = []
    for epoch in range(3):
        if epoch and not loop_forever:
            with pytest.raises(StopIteration):
                src()
        served = [src()[1][:, 0].tolist() for _ in range(batches)]
        readers.append(src._it)
        assert src._it.has_next_epoch, "the next epoch is queued"
        fresh = dataset()
        fresh.set_epoch(epoch)
        want = [b.labels.tolist() for b in fresh]
        assert len(want) == 3 and served == want[:batches], f"epoch {epoch}"
    assert readers[0] is readers[1] is readers[2]


@pytest.mark.timeout(60)
def test_samples_are_exported_without_copies(
    shapes_table: tuple[str, np.ndarray, list[bytes]],
) -> None:
    url, ids, _ = shapes_table
    config = _native.ReaderConfig("shapes", ids.tobytes(), 16)
    nb = next(iter(_native.Reader(_native.open_store(url), config)))
    base = from_dlpack(nb.data()).data_ptr()
    offsets = from_dlpack(nb.offsets()).tolist()
    caps = nb.sample_capsules()
    assert len(caps) == 16
    views = [from_dlpack(cap) for cap in caps]
    for i, t in enumerate(views):
        assert t.data_ptr() == base + offsets[i] and t.numel() == offsets[i + 1] - offsets[i]
    del nb, caps
    # Each sample's tensor keeps the arena alive on its own.
    assert all(bytes(t[:2].numpy()) == b"\xff\xd8" for t in views)


@pytest.mark.timeout(60)
def test_blob_labels_masks_and_multilabels(tmp_path: Any) -> None:
    rng = np.random.default_rng(2)
    n = 20
    images, masks, vectors = [], [], []
    for i in range(n):
        images.append(jpeg(shape_image(rng, SHAPES[i % 10], (32, 24), 5.0)))
        mask = rng.integers(0, 5, size=(24, 32), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(mask).save(buf, format="PNG")
        masks.append((mask, buf.getvalue()))
        vec = (rng.random(7) < 0.3).astype(np.uint8)
        vec[0] = i  # identifies the sample
        npy = io.BytesIO()
        np.save(npy, vec)
        vectors.append((vec, npy.getvalue()))
    url = f"local:{tmp_path / 'store'}"
    st = _native.open_store(url, create=True)
    ids = [uuid.uuid4().bytes for _ in range(n)]
    for table, labels in (("seg", [m[1] for m in masks]), ("multi", [v[1] for v in vectors])):
        st.create_tables(table, f"{table}_metadata", "blob", overwrite=True)
        st.put_samples(table, b"".join(ids), labels, images)  # type: ignore[arg-type]
    uuids = np.frombuffer(b"".join(ids), dtype=np.uint8).reshape(-1, 16)

    def seg() -> Any:
        jpegs, labels = reader(
            name="Reader", store=url, table="seg", source_uuids=uuids, label_type="blob"
        )
        return fn.decoders.image(labels, device="cpu", output_type=types.GRAY), jpegs

    decoded, _ = build(seg, n).run()
    found = [np.asarray(decoded[i])[:, :, 0] for i in range(n)]
    for mask, _ in masks:
        assert any(np.array_equal(mask, f) for f in found)

    def multi() -> Any:
        jpegs, labels = reader(
            name="Reader", store=url, table="multi", source_uuids=uuids, label_type="blob"
        )
        return jpegs, labels

    _, raw = build(multi, n).run()
    vecs = decode_npy_batch(raw)
    assert vecs.shape == (n, 7)
    assert sorted(vecs[:, 0].tolist()) == list(range(n))
    for row in vecs:
        assert np.array_equal(row, vectors[int(row[0])][0])


@pytest.mark.timeout(60)
def test_split_file_and_plugin_arguments(local_store: tuple[str, Any]) -> None:
    url, split = local_store
    sf = cc.SplitFile.load(split)

    def define() -> Any:
        # The plugin's tuning knobs are accepted and ignored.
        jpegs, labels = reader(
            name="Reader",
            store=url,
            split_file=split,
            split="val",
            prefetch_buffers=4,
            io_threads=2,
            comm_threads=2,
            copy_threads=2,
            wait_threads=2,
            ooo=True,
            slow_start=4,
            label_type="int",
        )
        return fn.resize(fn.decoders.image(jpegs), resize_x=8, resize_y=8), labels

    p = build(define, 8)
    it = DALIGenericIterator(
        p, ["images", "labels"], reader_name="Reader", last_batch_policy=LastBatchPolicy.PARTIAL
    )
    n = sum(b["images"].shape[0] for (b,) in it)
    assert n == len(sf.uuids("val"))


@pytest.mark.timeout(30)
def test_bad_arguments(shapes_table: tuple[str, np.ndarray, list[bytes]]) -> None:
    url, ids, _ = shapes_table
    with pytest.raises(InvalidArgumentError, match="inside a DALI pipeline"):
        reader(store=url, table="shapes", source_uuids=ids)

    def attempt(**kw: Any) -> Callable[[], Any]:
        def define() -> Any:
            return reader(name="Reader", **kw)

        return define

    cases: list[tuple[dict[str, Any], str]] = [
        ({"store": url, "table": "shapes", "source_uuids": ids, "io_treads": 2}, "io_treads"),
        (
            {"cassandra_ips": ["h"], "cloud_config": {"x": 1}, "table": "t.d", "source_uuids": ids},
            "cloud_config",
        ),
        ({"table": "shapes", "source_uuids": ids}, "store"),
        (
            {"store": url, "table": "shapes", "source_uuids": ids, "shard_id": 2, "num_shards": 2},
            "shard_id",
        ),
        (
            {
                "store": url,
                "table": "shapes",
                "source_uuids": ids[:3],
                "shard_id": 1,
                "num_shards": 2,
            },
            "no sample",
        ),
    ]
    for kw, match in cases:
        with pytest.raises(InvalidArgumentError, match=match):
            build(attempt(**kw), 4)


@pytest.mark.timeout(90)
def test_plugin_call_against_cassandra(
    shapes_table: tuple[str, np.ndarray, list[bytes]], secure: Secure
) -> None:
    _, ids, blobs = shapes_table
    password = "Dali-pw-93kq"
    secure.role("dali_trainer", password)
    host, port = secure.host.split(":")
    st = cc.open_store(secure.url("imagenet"), username="dali_trainer", password=password)
    st.create_tables("train_data", "train_metadata", "int", overwrite=True)
    n = 40
    st.put_samples("train_data", ids[:n].tobytes(), list(range(n)), blobs[:n])
    train_uuids = [str(uuid.UUID(bytes=ids[i].tobytes())) for i in range(n)]

    def define() -> Any:
        # A cassandra-dali-plugin call, unchanged but for the function.
        images, labels = reader(
            name="Reader",
            cassandra_ips=[host],
            cassandra_port=int(port),
            username="dali_trainer",
            password=password,
            table="imagenet.train_data",
            label_col="label",
            label_type="int",
            data_col="data",
            id_col="id",
            source_uuids=train_uuids,
            prefetch_buffers=2,
            shuffle_every_epoch=True,
        )
        return fn.resize(fn.decoders.image(images), resize_x=8, resize_y=8), labels

    for seen in labels_of(build(define, 16), LastBatchPolicy.PARTIAL, 2):
        assert sorted(seen) == list(range(n))
