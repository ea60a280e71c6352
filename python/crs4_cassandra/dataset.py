"""ShardedDataset: an IterableDataset of whole batches, sharded over DDP ranks
and DataLoader workers, read by the Rust fetch engine."""

from __future__ import annotations

import json
import os
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, NamedTuple, TypeVar

import torch
from torch.utils.data import IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate_fn_map
from torch.utils.dlpack import from_dlpack

from . import _native
from . import stats as stats_mod
from .errors import InvalidArgumentError
from .split_file import SplitFile, as_uuid_array

T = TypeVar("T")

Consistency = Literal["one", "local_one", "two", "quorum", "local_quorum", "all"]


class Batch:
    """A batch of encoded samples. Tensors share the Rust arena (zero-copy);
    per-sample objects exist only if ``samples()`` or ``ids`` is asked for.

    - ``data``: flat uint8 tensor of all samples' bytes; ``offsets``: int64 (B+1).
    - ``labels``: int64 (B) for "int"; flat uint8 bytes with ``label_offsets``
      for "blob"; None for "none".
    - ``indices``: int64 positions of the samples in the dataset's uuid list.
    - ``is_pad``: bool; True for samples repeated only to fill the last batches.
    - ``position``: the batch's index in this rank's epoch; ``epoch``.
    - ``images``: with ``decode="rgb"``, the decoded pixels: a uint8
      (B, H, W, 3) tensor when the dataset has a ``size``, else a list of
      (H, W, 3) tensors; with ``layout="NCHW"``, (B, 3, H, W) (and (3, H, W)
      each): a view of the same pixels in PyTorch's channels-last memory
      format, no copy. None without ``decode``.
    - ``skipped``: int64 positions in the uuid list of samples dropped from
      this batch because they could not be decoded (``on_error="skip"``);
      ``skipped_ids`` their uuids. The other fields hold only the kept samples.

    ``len(batch)`` is its number of samples, ``batch[i]`` one of them (a
    :class:`Sample`); ``batch.to(device, non_blocking=True)`` moves every
    tensor, and ``pin_memory()`` (what ``DataLoader(pin_memory=True)`` calls)
    pins them.
    """

    __slots__ = (
        "data",
        "offsets",
        "labels",
        "label_offsets",
        "indices",
        "is_pad",
        "id_bytes",
        "position",
        "epoch",
        "images",
        "skipped",
        "skipped_id_bytes",
    )

    def __init__(
        self,
        data: torch.Tensor,
        offsets: torch.Tensor,
        labels: torch.Tensor | None,
        label_offsets: torch.Tensor | None,
        indices: torch.Tensor,
        is_pad: torch.Tensor,
        id_bytes: torch.Tensor,
        position: int,
        epoch: int,
        images: torch.Tensor | list[torch.Tensor] | None = None,
        skipped: torch.Tensor | None = None,
        skipped_id_bytes: bytes = b"",
    ) -> None:
        self.data = data
        self.offsets = offsets
        self.labels = labels
        self.label_offsets = label_offsets
        self.indices = indices
        self.is_pad = is_pad
        self.id_bytes = id_bytes
        self.position = position
        self.epoch = epoch
        self.images = images
        self.skipped = torch.zeros(0, dtype=torch.int64) if skipped is None else skipped
        self.skipped_id_bytes = skipped_id_bytes

    @classmethod
    def from_native(
        cls,
        nb: _native.NativeBatch,
        epoch: int,
        size: tuple[int, int] | None = None,
        layout: str = "NHWC",
    ) -> Batch:
        labels = nb.labels()
        label_offsets = nb.label_offsets()
        return cls(
            data=from_dlpack(nb.data()),
            offsets=from_dlpack(nb.offsets()),
            labels=None if labels is None else from_dlpack(labels),
            label_offsets=None if label_offsets is None else from_dlpack(label_offsets),
            indices=from_dlpack(nb.indices()),
            is_pad=from_dlpack(nb.is_pad()),
            id_bytes=from_dlpack(nb.ids()),
            position=nb.position,
            epoch=epoch,
            images=_images(nb, size, layout),
            skipped=torch.tensor(nb.skipped(), dtype=torch.int64),
            skipped_id_bytes=nb.skipped_ids(),
        )

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def __getitem__(self, i: int) -> Sample:
        """Sample ``i`` (negative counts from the end): views, no copies."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} of a batch of {n}")
        i %= n
        o = self.offsets
        label: int | torch.Tensor | None = None
        if self.labels is not None and self.label_offsets is not None:
            lo = self.label_offsets
            label = self.labels[int(lo[i]) : int(lo[i + 1])]
        elif self.labels is not None:
            label = int(self.labels[i])
        image = self.images[i] if self.images is not None else None
        raw = self.id_bytes[i].numpy().tobytes()
        return Sample(
            data=self.data[int(o[i]) : int(o[i + 1])],
            label=label,
            id=uuidlib.UUID(bytes=raw),
            list_index=int(self.indices[i]),
            is_pad=bool(self.is_pad[i]),
            image=image,
        )

    def _map(self, f: Any) -> Batch:
        """A batch whose tensors are ``f`` of these (positions unchanged)."""
        state = self.__getstate__()
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                state[k] = f(v)
            elif isinstance(v, list):
                state[k] = [f(t) for t in v]
        out = type(self).__new__(type(self))
        out.__setstate__(state)
        return out

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """This batch with every tensor on ``device`` (``non_blocking`` as in
        ``Tensor.to``: asynchronous from pinned memory)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """This batch with every tensor in page-locked memory (copies), so that
        ``to("cuda", non_blocking=True)`` overlaps the transfer."""
        return self._map(lambda t: t.pin_memory())

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in Batch.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def samples(self) -> list[torch.Tensor]:
        """Per-sample uint8 views of ``data`` (no copies)."""
        o = self.offsets.tolist()
        return [self.data[o[i] : o[i + 1]] for i in range(len(o) - 1)]

    def label_samples(self) -> list[torch.Tensor]:
        """Per-sample views of blob labels."""
        if self.labels is None or self.label_offsets is None:
            raise InvalidArgumentError("label_samples() needs blob labels")
        o = self.label_offsets.tolist()
        return [self.labels[o[i] : o[i + 1]] for i in range(len(o) - 1)]

    @property
    def ids(self) -> list[uuidlib.UUID]:
        raw = self.id_bytes.numpy().tobytes()
        return [uuidlib.UUID(bytes=raw[i : i + 16]) for i in range(0, len(raw), 16)]

    @property
    def skipped_ids(self) -> list[uuidlib.UUID]:
        raw = self.skipped_id_bytes
        return [uuidlib.UUID(bytes=raw[i : i + 16]) for i in range(0, len(raw), 16)]

    def __repr__(self) -> str:
        return (
            f"Batch(size={len(self)}, bytes={self.data.numel()}, position={self.position}, "
            f"epoch={self.epoch}, pads={int(self.is_pad.sum())})"
        )


class Sample(NamedTuple):
    """One sample of a :class:`Batch` (``batch[i]``): views, no copies."""

    data: torch.Tensor
    """Its encoded bytes (uint8)."""
    label: int | torch.Tensor | None
    """An int, the label bytes (uint8) for "blob" labels, or None."""
    id: uuidlib.UUID
    list_index: int
    """Its position in the dataset's uuid list."""
    is_pad: bool
    image: torch.Tensor | None
    """Its decoded pixels, with ``decode="rgb"``."""


def _images(
    nb: _native.NativeBatch, size: tuple[int, int] | None, layout: str = "NHWC"
) -> torch.Tensor | list[torch.Tensor] | None:
    pixels = nb.images()
    shapes = nb.image_shapes()
    if pixels is None or shapes is None:
        return None
    flat = from_dlpack(pixels)
    if size is not None:
        nhwc = flat.view(len(shapes), size[0], size[1], 3)
        return nhwc.permute(0, 3, 1, 2) if layout == "NCHW" else nhwc
    offsets = nb.image_offsets()
    o = from_dlpack(offsets).tolist() if offsets is not None else []
    hwc = [flat[o[i] : o[i + 1]].view(h, w, 3) for i, (h, w) in enumerate(shapes)]
    return [t.permute(2, 0, 1) for t in hwc] if layout == "NCHW" else hwc


def _collate_batches(batches: list[Batch], **_: Any) -> Batch:
    """What ``DataLoader``'s default collation does with this dataset's
    batches: ``DataLoader(ds)`` (one item at a time) passes each batch on as
    it is; more than one item at a time is refused, naming the fix."""
    if len(batches) == 1:
        return batches[0]
    raise InvalidArgumentError(
        f"DataLoader(batch_size={len(batches)}) would stack {len(batches)} whole batches: "
        "ShardedDataset already yields batches of its own batch_size; "
        "use DataLoader(dataset, batch_size=None)"
    )


# DataLoader's default collate function looks up element types here.
default_collate_fn_map[Batch] = _collate_batches


def _latest_epoch(stats: dict[str, Any]) -> int:
    """The highest epoch a reader's figures cover (-1: none)."""
    return max((stats[k]["epoch"] for k in ("current", "last") if stats[k]), default=-1)


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def open_store(
    url: str,
    *,
    create: bool | None = None,
    username: str | None = None,
    password: str | None = None,
    password_env: str | None = None,
    use_ssl: bool | None = None,
    ssl_certificate: str | None = None,
    ssl_own_certificate: str | None = None,
    ssl_own_key: str | None = None,
    ssl_own_key_pass: str | None = None,
    ssl_verify: bool | None = None,
    connect_timeout: float | None = None,
    request_timeout: float | None = None,
    retries: int | None = None,
    retry_time_limit: float | None = None,
    speculative_delay: float | None = None,
    latency_aware: bool | None = None,
    hedged_reads: bool | None = None,
    hedge_percentile: float | None = None,
    hedge_min_delay: float | None = None,
    consistency: Consistency | None = None,
    max_in_flight: int | None = None,
    replication: str | None = None,
    connections: int | None = None,
    cache: str | None = None,
    cache_size: int | str | None = None,
    cache_policy: Literal["plan", "lru"] | None = None,
    **other: Any,
) -> _native.Store:
    """Opens a store; options left at None take the store's defaults.

    - ``"local:PATH"``: the embedded local store (``create=True`` makes it if
      missing, as ingest does; no other option).
    - ``"cassandra://host1,host2:9042/keyspace"``: Cassandra or ScyllaDB. Options
      (names as in cassandra-dali-plugin): ``username``, ``password`` (or
      ``password_env``, the name of an environment variable; by default
      ``CRS4_CASSANDRA_PASSWORD`` is read), ``use_ssl``, ``ssl_certificate``
      (PEM to trust), ``ssl_own_certificate`` and ``ssl_own_key`` (mutual TLS),
      ``ssl_verify`` (default True; ``ssl_verify=False`` turns certificate
      verification OFF, which lets anyone on the network impersonate the
      server: it emits an ``InsecureTLSWarning`` and is meant for tests only),
      ``connect_timeout``, ``request_timeout`` and ``retry_time_limit``
      (seconds; defaults 5, 10 and 60), ``retries`` (5), ``speculative_delay``
      (seconds; a second copy of a read that has not answered by then,
      instead of hedged reads), ``hedged_reads`` (default True: on tables
      whose keyspace has two replicas or more, on two nodes or more, a sample
      read that has not answered after ``hedge_percentile`` (99) of recent
      reads' latencies, at least ``hedge_min_delay`` seconds (0.005), is sent
      to another replica too and the first answer wins, for at most 5% of
      reads; a node over twice as slow as the others, or whose reads keep
      needing hedges, goes to the end of query plans for 10 s;
      ``store.read_stats()`` counts reads, hedges and hedges won),
      ``latency_aware`` (default False; True routes reads away from a node
      whose recent average latency is over twice the fastest node's, which
      helps where replicas can serve the reads instead), ``consistency``
      (default ``"local_one"``), ``max_in_flight`` (sample requests at once,
      16384), ``replication`` (for keyspaces ingest
      creates), ``connections`` (per node, 4). Passwords never appear in
      reprs, logs or error messages. An option not listed here is refused by
      name, with the list of known ones.

    A local sample cache for a remote store: ``cache="local:PATH"`` (a
    directory on a local disk, shared by the DataLoader workers and ranks of
    a host) and ``cache_size`` (bytes of samples, an int or a string such as
    ``"200GB"`` or ``"512MiB"``). Samples read from the store are kept there
    and later reads of them are local; what is served never changes (same
    bytes, labels, order and errors). ``cache_policy`` decides what stays
    when it is full: ``"plan"`` (default) keeps the samples whose next use in
    the epoch plans comes soonest, ``"lru"`` the most recently used. A
    directory that cannot be written turns the cache off and a damaged one is
    rebuilt, each with a ``CacheWarning``; ``store.read_stats()`` counts
    ``cache_hits`` and ``cache_misses``. A local store refuses ``cache``.
    """
    named = {k: v for k, v in locals().items() if k not in ("url", "other")}
    given = {k: v for k, v in {**named, **other}.items() if v is not None}
    return _native.open_store(url, options=given or None)


def _config_property(name: str, doc: str) -> Any:
    """A ShardedDataset attribute held by its native configuration; setting
    it makes a new configuration, validated like the first."""

    def get(self: ShardedDataset) -> Any:
        return getattr(self._config, name)

    def set_(self: ShardedDataset, value: Any) -> None:
        self._config = self._config.replace(**{name: value})

    return property(get, set_, doc=doc)


class ShardedDataset(IterableDataset[Any]):
    """Batches of samples read from ``table`` of ``store``, for the given uuids.

    Use with ``DataLoader(ds, batch_size=None, num_workers=k)``. Every sample is
    served exactly once per epoch over all ranks and workers (the last batches
    are padded with repeated samples, flagged in ``is_pad``, unless
    ``drop_last``); every rank yields ``len(ds)`` batches; the order is a
    deterministic function of ``seed`` and the epoch set by ``set_epoch``.

    ``decode="rgb"`` decodes JPEG and PNG samples in Rust, overlapped with
    reading, into ``Batch.images``: uint8 (B, H, W, 3) when ``size=(H, W)`` is
    given (images are stretched to it), else one (H, W, 3) tensor per image.
    A sample that cannot be decoded raises CorruptSampleError, or with
    ``on_error="skip"`` is left out of its batch and reported in
    ``Batch.skipped``. Decoded images are (B, H, W, 3) by default;
    ``layout="NCHW"`` gives (B, 3, H, W), what torchvision transforms and most
    models expect (a view of the same pixels, in channels-last memory format).

    ``transform`` is called on each :class:`Batch` where the batch is made
    (in the DataLoader worker, after decoding), and what it returns is what
    the dataset yields: e.g. ``lambda b: (b.images.float() / 255, b.labels)``.
    With DataLoader workers started by spawn it must be picklable (a
    module-level function, not a lambda).

    A uuid listed twice is refused (naming it): it would be served twice per
    epoch. ``allow_repeats=True`` lifts that for deliberate oversampling: each
    entry of the list is served once per epoch, so a uuid listed k times is
    served k times.

    Prefetching tunes itself: the number of batch reads in flight grows while it
    raises throughput, up to ``memory_budget`` bytes of batches (default 1 GiB,
    shared by the DataLoader workers of a process). ``window`` fixes that number
    instead (an expert knob, never required); ``current_window`` tells what the
    tuner chose in this process.
    ``ordered=False`` delivers batches as they complete, so a slow read delays
    only its own batch (the batches themselves are the same).

    From its third iteration in a process, the dataset guesses the next epoch
    (e+1 after e-1 and e, e again after e and e) and starts reading it as the
    current one ends, so a round trip is not lost at each epoch boundary; a
    wrong guess is dropped. ``close()`` stops such reads ahead.

    The arguments are checked, and the plan, resume state and reads are
    computed, by the native reader configuration (``_native.ReaderConfig``):
    this class converts and delegates.
    """

    table = _config_property("table", "The data table.")
    batch_size = _config_property("batch_size", "Samples per batch.")
    shuffle = _config_property("shuffle", "Whether each epoch is shuffled.")
    seed = _config_property("seed", "Seed of the shuffle, the same on every rank.")
    drop_last = _config_property("drop_last", "Drop the last incomplete round of batches.")
    label_type = _config_property("label_type", '"int", "blob" or "none".')
    ordered = _config_property("ordered", "Deliver batches in plan order.")
    window = _config_property("window", "A fixed window of batch reads, or None (tuned).")
    memory_budget = _config_property("memory_budget", "Bytes of batches in flight at most.")
    decode = _config_property("decode", '"rgb" or None.')
    size = _config_property("size", "(height, width) decoded images are resized to.")
    layout = _config_property("layout", '"NHWC" or "NCHW" decoded images.')
    on_error = _config_property("on_error", '"raise" or "skip" undecodable samples.')

    def __init__(
        self,
        store: _native.Store | str,
        table: str,
        uuids: Any,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        label_type: Literal["int", "blob", "none"] = "int",
        ordered: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        id_col: str = "id",
        label_col: str = "label",
        data_col: str = "data",
        window: int | None = None,
        memory_budget: int | None = None,
        decode: Literal["rgb"] | None = None,
        size: tuple[int, int] | None = None,
        layout: Literal["NHWC", "NCHW"] = "NHWC",
        on_error: Literal["raise", "skip"] = "raise",
        transform: Callable[[Batch], Any] | None = None,
        allow_repeats: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
        self._config = _native.ReaderConfig(
            table,
            as_uuid_array(uuids).tobytes(),
            batch_size,
            label_type=label_type,
            id_col=id_col,
            label_col=label_col,
            data_col=data_col,
            shuffle=shuffle,
            seed=int(seed),
            drop_last=drop_last,
            ordered=ordered,
            rank=rank,
            world_size=world_size,
            window=window,
            memory_budget=memory_budget,
            decode=decode,
            size=None if size is None else (int(size[0]), int(size[1])),
            layout=layout,
            on_error=on_error,
            allow_repeats=allow_repeats,
        )
        self._start(store, transform)
        # Fail here, not in a worker: missing table, columns or label type mismatch.
        self.store.check_table(table, label_type, id_col, label_col, data_col)

    def _start(self, store: _native.Store | str, transform: Callable[[Batch], Any] | None) -> None:
        """The state every dataset of batches starts with, its reader
        configuration (``self._config``) made."""
        if transform is not None and not callable(transform):
            raise InvalidArgumentError(f"transform must be callable, got {transform!r}")
        self.transform = transform
        self.store = open_store(store) if isinstance(store, str) else store
        # Positions of the samples skipped (undecodable) in the epoch being
        # iterated in this process; with DataLoader workers, read Batch.skipped.
        self.skipped: list[int] = []
        # The epoch and its resume point.
        self._progress = _native.Progress()
        # Positions of the batches yielded by this process in this iteration.
        self._positions: list[int] = []
        # Batch reads in flight allowed when the last batch was delivered here.
        self.current_window: int | None = None
        # The epoch last iterated by this object, and in which process.
        self._last_iterated: tuple[_native.ProcessMark, int] | None = None
        # A reader whose epoch is over and which is already reading the next
        # one: (configuration, share, epoch, reader).
        self._ahead: tuple[_native.ReaderConfig, tuple[int, ...], int, _native.Reader] | None = None
        # Loader statistics (see crs4_cassandra.stats): the reader being
        # iterated here, the figures of the last one, where DataLoader
        # workers publish theirs, and the training loop's waits.
        self._live: _native.Reader | None = None
        self._reader_stats: str | None = None
        self._board = stats_mod.Board()
        self._loop = stats_mod.LoopClock()

    @classmethod
    def from_split(
        cls,
        store: _native.Store | str,
        split_file: SplitFile | str | os.PathLike[str],
        name: str,
        batch_size: int,
        *,
        label_type: Literal["int", "blob", "none"] | None = None,
        id_col: str | None = None,
        label_col: str | None = None,
        data_col: str | None = None,
        **kw: Any,
    ) -> ShardedDataset:
        """The dataset of split ``name`` of a split file (a path or a
        :class:`SplitFile`): its table, uuids, label type and column names
        (each overridable); every other keyword is the constructor's
        (``shuffle``, ``seed``, ``drop_last``, ``decode``, ``size``, ...)."""
        sf = split_file if isinstance(split_file, SplitFile) else SplitFile.load(split_file)
        return cls(
            store,
            sf.table,
            sf.uuids(name),
            batch_size,
            label_type=label_type or sf.label_type,
            id_col=id_col or sf.id_col,
            label_col=label_col or sf.label_col,
            data_col=data_col or sf.data_col,
            **kw,
        )

    def __repr__(self) -> str:
        return (
            f"ShardedDataset(store={self.store.url!r}, table={self.table!r}, "
            f"samples={self.num_samples}, batch_size={self.batch_size}, "
            f"rank={self.rank}, world_size={self.world_size}, epoch={self.epoch}, "
            f"batches={len(self)})"
        )

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started with spawn (the default inside processes
        # that were themselves spawned, as DDP ranks often are) do not inherit
        # the process group: resolve the rank here, in the rank's process.
        state = self.__dict__.copy()
        # A copy starts afresh: a read-ahead belongs to this process, and a
        # copy sent to a worker each epoch would only guess wrong.
        state["_ahead"] = None
        state["_last_iterated"] = None
        state["_live"] = None
        state["_reader_stats"] = None
        if self._config.rank is None:
            rank, world_size = _distributed()
            state["_config"] = self._config.replace(rank=rank, world_size=world_size)
        return state

    @property
    def num_samples(self) -> int:
        """Samples in the uuid list (all ranks together)."""
        return int(self._config.num_samples)

    @property
    def columns(self) -> tuple[str, str, str]:
        """(id_col, label_col, data_col)."""
        return self._config.columns

    @property
    def rank(self) -> int:
        rank = self._config.rank
        return rank if rank is not None else _distributed()[0]

    @property
    def world_size(self) -> int:
        world_size = self._config.world_size
        return world_size if world_size is not None else _distributed()[1]

    @property
    def epoch(self) -> int:
        return self._progress.epoch

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch (and so the shuffle); a resume point set by
        ``load_state_dict`` applies only to its own epoch."""
        if int(epoch) != self._progress.epoch:
            self._progress = _native.Progress(int(epoch))

    def __len__(self) -> int:
        return self._config.batches_left(self.world_size, self._progress)

    def _rank_counts(self) -> tuple[int, int]:
        """(real samples, batches holding at least one) of this rank in a
        whole epoch; its other batches hold pads only, and come last."""
        return self._config.rank_counts(self.rank, self.world_size)

    def _share(self) -> tuple[int, int, int, int]:
        """(rank, world_size, num_workers, worker_id) of a reader made here."""
        info = get_worker_info()
        num_workers, worker_id = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank, self.world_size, num_workers, worker_id

    def _reader(self, share: tuple[int, ...] | None = None) -> _native.Reader:
        """A native reader of the current epoch, from the resume point."""
        rank, world_size, num_workers, worker_id = share or self._share()
        return _native.Reader(
            self.store,
            self._config,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            worker_id=worker_id,
            progress=self._progress,
        )

    def _take_ahead(self, share: tuple[int, ...], epoch: int) -> _native.Reader | None:
        """The reader already reading this epoch, if the last iteration guessed it."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        config, a_share, a_epoch, reader = ahead
        if reader.inherited:
            return None  # inherited through fork: its reads belong to the parent
        same = config is self._config and a_share == share and a_epoch == epoch
        if same and self._progress.fresh and reader.next_epoch():
            return reader
        reader.close()
        return None

    def __iter__(self) -> Iterator[Batch]:
        share = self._share()
        epoch = self.epoch
        last = self._last_iterated
        previous = last[1] if last is not None and not last[0].inherited else None
        then = _native.guess_next_epoch(previous, epoch)
        self._last_iterated = (_native.ProcessMark(), epoch)
        reader = self._take_ahead(share, epoch)
        if reader is None:  # (not `or`: a reader's truth is its length)
            reader = self._reader(share)
        if then is not None:
            # Its reads (and those of the epochs after it, as far as the
            # window reaches) start once this epoch's are all issued: the
            # window stays full across the boundary instead of draining and
            # refilling, however short the epochs.
            reader.read_ahead(then)
        self._positions = []
        self.skipped = []
        finished = False
        config, make, transform = self._config, self._batch, self.transform
        # In a DataLoader worker: (id, count), to publish the figures.
        info = get_worker_info()
        worker = (info.id, info.num_workers) if info is not None else None
        board = self._board
        self._live = reader
        try:
            for nb in reader:
                batch = make(nb, epoch)
                if batch.skipped.numel():
                    self.skipped.extend(batch.skipped.tolist())
                self._positions.append(batch.position)
                self.current_window = reader.window
                if worker is not None and board.due():
                    board.publish(*worker, reader.stats())
                yield batch if transform is None else transform(batch)
            finished = True
        finally:
            self._live = None
            self._reader_stats = reader.stats()
            if worker is not None:
                board.publish(*worker, self._reader_stats)
            if finished and then is not None and reader.has_next_epoch:
                # Keep the reads of the guessed epoch going for the next iteration.
                self._ahead = (config, share, then, reader)
            else:
                reader.close()

    def _batch(self, nb: _native.NativeBatch, epoch: int) -> Batch:
        """The batch yielded for a native one."""
        return Batch.from_native(nb, epoch, self.size, self.layout)

    def stats(self) -> dict[str, Any]:
        """Loader statistics: ``{"current": ..., "last": ...}``, the figures
        of the epoch under way in this process (None between epochs) and of
        the last one delivered; see :mod:`crs4_cassandra.stats` for what they
        hold. In the main process of a DataLoader with workers, the workers'
        figures merged per epoch. ``stall`` is the training loop's when it is
        measured (:meth:`watch`, the Lightning ``LoaderStats`` callback)."""
        live = self._live
        raw = live.stats() if live is not None else self._reader_stats
        own: dict[str, Any] = json.loads(raw) if raw else {"current": None, "last": None}
        source = "reader"
        if get_worker_info() is None:
            workers = self._board.collect()
            if workers:
                merged = stats_mod.merge_epochs([w["stats"] for w in workers])
                if _latest_epoch(merged) >= _latest_epoch(own):
                    own, source = merged, "workers"
        for key in ("current", "last"):
            if own[key]:
                own[key]["stall_source"] = source
                self._loop.apply(own[key])
        return own

    def watch(self, loader: Iterable[T]) -> Iterator[T]:
        """Iterates ``loader`` (a DataLoader over this dataset, say),
        measuring the time the loop waits for each batch: then
        ``stats()["stall"]`` is the loop's data stall, also with DataLoader
        workers (whose own waits say little about the loop's).

            for batch in ds.watch(loader): ...
        """
        return stats_mod.watch(loader, self._loop, lambda: self.epoch)

    def close(self) -> None:
        """Stops the reads of a next epoch started ahead (see the class
        docstring) and frees their memory; the dataset stays usable."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and not ahead[3].inherited:
            ahead[3].close()

    def state_dict(
        self,
        batches_consumed: int | None = None,
        *,
        consumed_positions: Any = None,
    ) -> dict[str, Any]:
        """A plain, versioned, JSON-able state from which ``load_state_dict``
        resumes the epoch exactly where this rank stopped (the same state the
        Rust loader of ``crs4-cassandra-tch`` saves and loads).

        What was consumed is, by default, what this object yielded in this
        process: exact without DataLoader workers, and inside workers (where
        torchdata's ``StatefulDataLoader`` calls it). With a plain DataLoader
        and workers the main process never sees the iteration: pass
        ``batches_consumed``, the count of batches your loop received (batches
        arrive in plan order when ``ordered=True``), or, with ``ordered=False``,
        ``consumed_positions``, the ``Batch.position`` of every batch received.

        The state holds ``consumed_samples``, a prefix of the epoch's global
        order that every rank has consumed, and ``consumed_positions``, this
        rank's batches consumed beyond it, out of order (``ordered=False``, or
        one DataLoader worker's share). A state with ``consumed_positions``
        resumes only on the same rank and world size; one without resumes on
        any world size.
        """
        info = get_worker_info()
        state = self._config.state(
            self.rank,
            self.world_size,
            self._progress,
            consumed_positions=(
                None if consumed_positions is None else [int(p) for p in consumed_positions]
            ),
            batches_consumed=None if batches_consumed is None else int(batches_consumed),
            yielded=self._positions,
            dealing_workers=info.num_workers if info is not None else 1,
        )
        result: dict[str, Any] = json.loads(state)
        return result

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes from ``state_dict()``: the next iteration yields exactly the
        batches that had not been consumed (on any world size when the state
        has no ``consumed_positions``: the remaining samples are re-dealt over
        the current ranks). States of every version ever written load."""
        self._progress = self._config.resume(
            json.dumps(state, default=int), self.rank, self.world_size
        )
        self._positions = []
