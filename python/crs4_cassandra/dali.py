"""NVIDIA DALI integration: :func:`reader` stands in for cassandra-dali-plugin's
``fn.crs4.cassandra`` inside a pipeline definition.

It feeds ``fn.external_source`` from a :class:`~crs4_cassandra.ShardedDataset`:
samples reach DALI as legacy ``dltensor`` capsules over the batch arena (no
copy), and :func:`reader` registers reader metadata under its ``name`` so that
``DALIGenericIterator(pipe, ..., reader_name=name)`` sizes epochs and applies
its ``last_batch_policy`` exactly as with the plugin::

    @pipeline_def(batch_size=128, num_threads=4, device_id=0)
    def pipe():
        jpegs, labels = crs4_cassandra.dali.reader(
            name="Reader", store="local:/data/store", split_file="imagenet.split",
            split="train", shard_id=rank, num_shards=world_size,
            shuffle_every_epoch=True)
        images = fn.decoders.image(jpegs, device="mixed")
        ...
"""

from __future__ import annotations

import collections
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _native
from .dataset import ShardedDataset, open_store
from .errors import InvalidArgumentError
from .split_file import SplitFile

# Knobs of cassandra-dali-plugin that this loader sets by itself: the fetch
# engine sizes its window of requests in flight from the observed throughput.
TUNED_ARGUMENTS = (
    "prefetch_buffers",
    "io_threads",
    "copy_threads",
    "wait_threads",
    "comm_threads",
    "ooo",
    "slow_start",
    "mini_batch_size",
    "blocking",
    "no_copy",
)

LABEL_DTYPES = ("int32", "int64")


class _Source:
    """The ``external_source`` callback: one batch per call, epoch after epoch.

    With ``loop_forever`` the next epoch starts right after the last batch of
    the previous one (like the plugin); otherwise each epoch ends with
    StopIteration and the next call starts the next one. Either way the next
    epoch's reads are queued behind the current one's on the same native
    reader, so that they start as soon as this epoch's are all issued and the
    window of reads stays full across the boundary.
    """

    def __init__(
        self,
        dataset: ShardedDataset,
        batches: int,
        shuffle_every_epoch: bool,
        loop_forever: bool,
        label_dtype: str,
        keep_alive: int,
    ) -> None:
        self.dataset = dataset
        self.batches = batches
        self.shuffle_every_epoch = shuffle_every_epoch
        self.loop_forever = loop_forever
        self.label_dtype = np.dtype(label_dtype)
        self.epoch = 0
        self._it: Any = None
        self._served = 0
        # DALI reads no_copy inputs some iterations after they are fed: keep the
        # batches (and so their arenas) referenced until well past that.
        self._alive: collections.deque[_native.NativeBatch] = collections.deque(maxlen=keep_alive)
        # The figures of the last reader, once it is gone.
        self._stats: str | None = None

    def stats(self) -> dict[str, Any]:
        """The reader's figures (see :mod:`crs4_cassandra.stats`); the wait
        is DALI's, which calls this source ahead of the training loop."""
        it = self._it
        raw = it.stats() if it is not None else self._stats
        out: dict[str, Any] = json.loads(raw) if raw else {"current": None, "last": None}
        for key in ("current", "last"):
            if out[key]:
                out[key]["stall_source"] = "reader"
        return out

    def _plan_epoch(self, epoch: int) -> int:
        """The epoch of the plan (the shuffle) that epoch ``epoch`` serves."""
        return epoch if self.shuffle_every_epoch else 0

    def _open(self) -> None:
        """A reader of the current epoch, with the next one queued behind it."""
        self.dataset.set_epoch(self._plan_epoch(self.epoch))
        self._it = self.dataset._reader()
        self._it.read_ahead(self._plan_epoch(self.epoch + 1))
        self._served = 0

    def _end_epoch(self) -> None:
        it = self._it
        # A shard's batches of pads only come last; they are read (the
        # plan has them) but not served, as the epoch size tells DALI.
        for _ in it:
            pass
        self.epoch += 1
        self._stats = it.stats()
        if it.next_epoch():
            it.read_ahead(self._plan_epoch(self.epoch + 1))
            self._served = 0
        else:
            self._it = None

    def _next_native(self) -> _native.NativeBatch:
        while True:
            if self._it is None:
                self._open()
            if self._served < self.batches:
                nb: _native.NativeBatch = next(self._it)
                self._served += 1
                return nb
            self._end_epoch()
            if not self.loop_forever:
                raise StopIteration

    def __call__(self) -> tuple[list[Any], Any]:
        nb = self._next_native()
        self._alive.append(nb)
        data = nb.sample_capsules()
        labels: Any
        if self.dataset.label_type == "int":
            raw = nb.labels()
            assert raw is not None
            labels = np.from_dlpack(raw).astype(self.label_dtype).reshape(-1, 1)
        elif self.dataset.label_type == "blob":
            labels = nb.label_capsules()
        else:
            labels = np.zeros((len(nb), 0), dtype=np.uint8)
        return data, labels


def _reader_metas(pipe: Any) -> dict[str, dict[str, Any]]:
    """Our readers' metadata for ``pipe``, answering ``pipe.reader_meta`` (what
    DALI iterators ask when given ``reader_name``) before DALI's own readers."""
    metas: dict[str, dict[str, Any]] | None = getattr(pipe, "_crs4_cassandra_readers", None)
    if metas is not None:
        return metas
    metas = {}
    original = pipe.reader_meta

    def reader_meta(name: str | None = None) -> Any:
        if name is None:
            return {**original(), **metas} if original is not None else dict(metas)
        if name in metas:
            return metas[name]
        return original(name)

    pipe._crs4_cassandra_readers = metas
    pipe.reader_meta = reader_meta
    return metas


def _reader_sources(pipe: Any) -> dict[str, _Source]:
    sources: dict[str, _Source] | None = getattr(pipe, "_crs4_cassandra_sources", None)
    if sources is None:
        sources = {}
        pipe._crs4_cassandra_sources = sources
    return sources


def stats(pipe: Any, name: str = "Reader") -> dict[str, Any]:
    """Loader statistics of reader ``name`` of a built pipeline:
    ``{"current": ..., "last": ...}`` as ``ShardedDataset.stats()`` gives
    them (see :mod:`crs4_cassandra.stats`)."""
    sources = getattr(pipe, "_crs4_cassandra_sources", {})
    if name not in sources:
        raise InvalidArgumentError(
            f"the pipeline has no crs4_cassandra reader named {name!r} (it has {sorted(sources)})"
        )
    figures: dict[str, Any] = sources[name].stats()
    return figures


def reader(
    *,
    name: str = "Reader",
    store: _native.Store | str | None = None,
    split_file: SplitFile | str | os.PathLike[str] | None = None,
    split: str = "train",
    table: str | None = None,
    source_uuids: Any = None,
    cassandra_ips: Sequence[str] | None = None,
    cassandra_port: int = 9042,
    username: str | None = None,
    password: str | None = None,
    use_ssl: bool = False,
    ssl_certificate: str | None = None,
    ssl_own_certificate: str | None = None,
    ssl_own_key: str | None = None,
    ssl_own_key_pass: str | None = None,
    cloud_config: Any = None,
    label_type: str | None = None,
    label_col: str | None = None,
    data_col: str | None = None,
    id_col: str | None = None,
    shard_id: int = 0,
    num_shards: int = 1,
    seed: int = 0,
    shuffle_every_epoch: bool = False,
    loop_forever: bool = True,
    drop_last: bool = False,
    label_dtype: str = "int32",
    batch_size: int | None = None,
    **tuned: Any,
) -> tuple[Any, Any]:
    """Returns ``(data, labels)`` DALI nodes for the current pipeline.

    Where the samples are: either ``store`` (a Store or a URL such as
    ``"local:PATH"`` or ``"cassandra://host:9042"``) or the plugin's
    ``cassandra_ips``/``cassandra_port`` and credentials; which samples:
    ``split_file`` and ``split``, or ``table`` and ``source_uuids`` (uuid
    strings, ``uuid.UUID``\\ s or an (n, 16) uint8 array). Column names and the
    label type default to the split file's, else to the plugin's defaults.

    Outputs: ``data`` is one uint8 1-D tensor per sample (the encoded bytes);
    ``labels`` is an int32 (``label_dtype``) tensor of shape (1,) per sample for
    "int", the raw label bytes for "blob" (decode PNG masks with
    ``fn.decoders.image``, numpy vectors with :func:`decode_npy`) and an empty
    tensor for "none".

    Sharding: ``shard_id``/``num_shards`` split each epoch with no sample
    repeated or lost; every shard must use the same ``seed``. With
    ``DALIGenericIterator(..., reader_name=name)``: ``PARTIAL`` gives each
    sample exactly once (the last batch trimmed), ``FILL`` fills the last
    batch with repeated samples, ``DROP`` drops it. ``drop_last=True`` drops
    the last incomplete round of batches of all shards instead, so that every
    shard runs the same number of iterations (what DDP needs).

    The plugin's tuning knobs (``prefetch_buffers``, ``io_threads``,
    ``copy_threads``, ``wait_threads``, ``comm_threads``, ``ooo``,
    ``slow_start``...) are accepted and ignored: the loader tunes itself.
    """
    import nvidia.dali.fn as fn
    from nvidia.dali.pipeline import Pipeline
    from nvidia.dali.types import DALIDataType as DT

    unknown = sorted(set(tuned) - set(TUNED_ARGUMENTS))
    if unknown:
        raise InvalidArgumentError(f"crs4_cassandra.dali.reader: unknown arguments {unknown}")
    if label_dtype not in LABEL_DTYPES:
        raise InvalidArgumentError(
            f"label_dtype must be one of {LABEL_DTYPES}, got {label_dtype!r}"
        )
    if not 0 <= shard_id < num_shards:
        raise InvalidArgumentError(
            f"shard_id {shard_id} is out of range for num_shards {num_shards}"
        )
    pipe = Pipeline.current()  # type: ignore[no-untyped-call]
    if pipe is None:
        raise InvalidArgumentError(
            "crs4_cassandra.dali.reader must be called inside a DALI pipeline definition"
        )
    if batch_size is None:
        batch_size = int(pipe.max_batch_size)

    the_store = _store(
        store,
        cassandra_ips,
        cassandra_port,
        cloud_config,
        username=username,
        password=password,
        use_ssl=use_ssl,
        ssl_certificate=ssl_certificate,
        ssl_own_certificate=ssl_own_certificate,
        ssl_own_key=ssl_own_key,
        ssl_own_key_pass=ssl_own_key_pass,
    )
    columns: dict[str, Any] = {}
    if split_file is not None:
        sf = split_file if isinstance(split_file, SplitFile) else SplitFile.load(split_file)
        if source_uuids is not None:
            raise InvalidArgumentError("give split_file or source_uuids, not both")
        table = table or sf.table
        source_uuids = sf.uuids(split)
        columns = {
            "label_type": sf.label_type,
            "id_col": sf.id_col,
            "label_col": sf.label_col,
            "data_col": sf.data_col,
        }
    if table is None or source_uuids is None:
        raise InvalidArgumentError("give table and source_uuids, or a split_file")
    for key, value in (
        ("label_type", label_type),
        ("id_col", id_col),
        ("label_col", label_col),
        ("data_col", data_col),
    ):
        if value is not None:
            columns[key] = value
    columns.setdefault("label_type", "int")
    dataset = ShardedDataset(
        the_store,
        table,
        source_uuids,
        batch_size,
        shuffle=shuffle_every_epoch,
        seed=max(int(seed), 0),
        drop_last=drop_last,
        rank=shard_id,
        world_size=num_shards,
        **columns,
    )
    real, batches = dataset._rank_counts()
    if batches == 0:
        raise InvalidArgumentError(
            f"shard {shard_id} of {num_shards} gets no sample of the {dataset.num_samples} "
            f"in table {table!r} with batch size {batch_size}"
            + (" and drop_last" if drop_last else "")
        )
    _reader_metas(pipe)[name] = {
        # Per shard: the iterator must neither expect other shards' samples
        # nor count pads as data.
        "epoch_size": real,
        "epoch_size_padded": batches * batch_size,
        "number_of_shards": 1,
        "shard_id": 0,
        "pad_last_batch": True,
        "stick_to_shard": True,
    }
    depth = pipe.prefetch_queue_depth
    depth = max(depth.values()) if isinstance(depth, dict) else int(depth)
    source = _Source(
        dataset,
        batches,
        shuffle_every_epoch,
        loop_forever,
        label_dtype,
        keep_alive=depth + 3,
    )
    _reader_sources(pipe)[name] = source
    label_type_dali = {
        "int": DT.INT32 if label_dtype == "int32" else DT.INT64,
        "blob": DT.UINT8,
        "none": DT.UINT8,
    }[columns["label_type"]]
    data, labels = fn.external_source(
        source=source,
        num_outputs=2,
        batch=True,
        no_copy=True,
        dtype=[DT.UINT8, label_type_dali],
        ndim=[1, 1],
    )
    return data, labels


def _store(
    store: _native.Store | str | None,
    cassandra_ips: Sequence[str] | None,
    cassandra_port: int,
    cloud_config: Any,
    **options: Any,
) -> _native.Store:
    if cloud_config:
        raise InvalidArgumentError(
            "cloud_config (Astra secure connect bundles) is not supported; "
            "give cassandra_ips and credentials"
        )
    if store is not None:
        if cassandra_ips:
            raise InvalidArgumentError("give store or cassandra_ips, not both")
        if isinstance(store, str):
            given = {k: v for k, v in options.items() if v not in (None, False)}
            return open_store(store, **given)
        return store
    if not cassandra_ips:
        raise InvalidArgumentError("give store (e.g. 'local:PATH') or cassandra_ips")
    if isinstance(cassandra_ips, str):
        cassandra_ips = [cassandra_ips]
    url = f"cassandra://{','.join(cassandra_ips)}:{int(cassandra_port)}"
    given = {k: v for k, v in options.items() if v is not None}
    return open_store(url, **given)


def decode_npy(raw: Any) -> npt.NDArray[Any]:
    """Decodes a numpy-serialized label (``np.save`` bytes, e.g. a multilabel
    vector) from a "blob" label: bytes, a uint8 array or tensor, or a DALI
    TensorCPU."""
    if hasattr(raw, "as_array"):
        raw = raw.as_array()
    if hasattr(raw, "numpy") and not isinstance(raw, np.ndarray):
        raw = raw.numpy()
    buf = raw.tobytes() if isinstance(raw, np.ndarray) else bytes(raw)
    return np.asarray(np.load(io.BytesIO(buf), allow_pickle=False))


def decode_npy_batch(labels: Any) -> npt.NDArray[Any]:
    """Stacks the numpy-serialized labels of a batch (a DALI TensorListCPU or a
    list of per-sample byte arrays) into one array, e.g. (B, classes)."""
    items = [labels.at(i) for i in range(len(labels))] if hasattr(labels, "at") else labels
    return np.stack([decode_npy(x) for x in items])


__all__ = ["TUNED_ARGUMENTS", "decode_npy", "decode_npy_batch", "reader", "stats"]
