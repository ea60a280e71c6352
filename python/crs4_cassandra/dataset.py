"""ShardedDataset: an IterableDataset of whole batches, sharded over DDP ranks
and DataLoader workers, read by the Rust fetch engine."""

from __future__ import annotations

import hashlib
import os
import uuid as uuidlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info
from torch.utils.dlpack import from_dlpack

from . import _native
from .errors import InvalidArgumentError, StateDictError
from .split_file import LABEL_TYPES, SplitFile, as_uuid_array

STATE_VERSION = 2
# Versions load_state_dict reads (1 had no "consumed_positions").
_READABLE_STATE_VERSIONS = (1, 2)


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
      (H, W, 3) tensors; None otherwise.
    - ``skipped``: int64 positions in the uuid list of samples dropped from
      this batch because they could not be decoded (``on_error="skip"``);
      ``skipped_ids`` their uuids. The other fields hold only the kept samples.
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
        cls, nb: _native.NativeBatch, epoch: int, size: tuple[int, int] | None = None
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
            images=_images(nb, size),
            skipped=torch.tensor(nb.skipped(), dtype=torch.int64),
            skipped_id_bytes=nb.skipped_ids(),
        )

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

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


def _images(
    nb: _native.NativeBatch, size: tuple[int, int] | None
) -> torch.Tensor | list[torch.Tensor] | None:
    pixels = nb.images()
    shapes = nb.image_shapes()
    if pixels is None or shapes is None:
        return None
    flat = from_dlpack(pixels)
    if size is not None:
        return flat.view(len(shapes), size[0], size[1], 3)
    offsets = nb.image_offsets()
    o = from_dlpack(offsets).tolist() if offsets is not None else []
    return [flat[o[i] : o[i + 1]].view(h, w, 3) for i, (h, w) in enumerate(shapes)]


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def open_store(url: str, **options: Any) -> _native.Store:
    """Opens a store.

    - ``"local:PATH"``: the embedded local store (no options).
    - ``"cassandra://host1,host2:9042/keyspace"``: Cassandra or ScyllaDB. Options
      (names as in cassandra-dali-plugin): ``username``, ``password`` (or
      ``password_env``, the name of an environment variable; by default
      ``CRS4_CASSANDRA_PASSWORD`` is read), ``use_ssl``, ``ssl_certificate``
      (PEM to trust), ``ssl_own_certificate``, ``ssl_own_key``, ``ssl_verify``
      (default True; ``ssl_verify=False`` turns certificate verification OFF,
      which lets anyone on the network impersonate the server: it emits an
      ``InsecureTLSWarning`` and is meant for tests only), ``connect_timeout``,
      ``request_timeout``, ``retries``,
      ``retry_time_limit`` (seconds), ``speculative_delay`` (seconds),
      ``consistency``, ``max_in_flight``, ``replication`` (for keyspaces ingest
      creates). Passwords never appear in reprs, logs or error messages.
    """
    return _native.open_store(url, options=options or None)


class ShardedDataset(IterableDataset[Batch]):
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
    ``Batch.skipped``.

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
    """

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
        label_type: str = "int",
        ordered: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        id_col: str = "id",
        label_col: str = "label",
        data_col: str = "data",
        window: int | None = None,
        memory_budget: int | None = None,
        decode: str | None = None,
        size: tuple[int, int] | None = None,
        on_error: str = "raise",
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
        if label_type not in LABEL_TYPES:
            raise InvalidArgumentError(
                f"label_type must be one of {LABEL_TYPES}, got {label_type!r}"
            )
        if (rank is None) != (world_size is None):
            raise InvalidArgumentError("give both rank and world_size, or neither")
        if world_size is not None and rank is not None and not 0 <= rank < world_size:
            raise InvalidArgumentError(f"rank {rank} is out of range for world_size {world_size}")
        if window is not None and window <= 0:
            raise InvalidArgumentError(f"window must be positive, got {window}")
        if memory_budget is not None and memory_budget <= 0:
            raise InvalidArgumentError(f"memory_budget must be positive, got {memory_budget}")
        if decode not in (None, "rgb"):
            raise InvalidArgumentError(f'decode must be "rgb" or None, got {decode!r}')
        if size is not None:
            if decode is None:
                raise InvalidArgumentError('size needs decode="rgb"')
            if len(size) != 2 or min(size) <= 0:
                raise InvalidArgumentError(f"size must be (height, width) > 0, got {size!r}")
            size = (int(size[0]), int(size[1]))
        if on_error not in ("raise", "skip"):
            raise InvalidArgumentError(f'on_error must be "raise" or "skip", got {on_error!r}')
        self.store = _native.open_store(store) if isinstance(store, str) else store
        self.table = table
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.label_type = label_type
        self.ordered = ordered
        self.columns = (id_col, label_col, data_col)
        self.window = window
        self.memory_budget = memory_budget
        self.decode = decode
        self.size = size
        self.on_error = on_error
        # Positions of the samples skipped (undecodable) in the epoch being
        # iterated in this process; with DataLoader workers, read Batch.skipped.
        self.skipped: list[int] = []
        self._rank = rank
        self._world_size = world_size
        arr = as_uuid_array(uuids)
        self._uuid_bytes = arr.tobytes()
        self.num_samples = int(arr.shape[0])
        self._fingerprint = hashlib.blake2b(self._uuid_bytes, digest_size=8).hexdigest()
        # Fail here, not in a worker: missing table, columns or label type mismatch.
        self.store.check_table(table, label_type, id_col, label_col, data_col)
        self._epoch = 0
        self._start = 0
        # Rank-local positions (counted from _start) consumed before a resume,
        # out of order: not served again.
        self._skip: list[int] = []
        self._yielded = 0
        # Positions of the batches yielded by this process in this iteration.
        self._positions: list[int] = []
        # Batch reads in flight allowed when the last batch was delivered here.
        self.current_window: int | None = None
        # (pid, epoch) of the last iteration started by this object.
        self._last_iterated: tuple[int, int] | None = None
        # A reader whose epoch is over and which is already reading the next
        # one: (pid, arguments, epoch, reader).
        self._ahead: tuple[int, dict[str, Any], int, _native.Reader] | None = None

    @classmethod
    def from_split(
        cls,
        store: _native.Store | str,
        split_file: SplitFile | str | os.PathLike[str],
        name: str,
        batch_size: int,
        **kw: Any,
    ) -> ShardedDataset:
        sf = split_file if isinstance(split_file, SplitFile) else SplitFile.load(split_file)
        kw.setdefault("label_type", sf.label_type)
        kw.setdefault("id_col", sf.id_col)
        kw.setdefault("label_col", sf.label_col)
        kw.setdefault("data_col", sf.data_col)
        return cls(store, sf.table, sf.uuids(name), batch_size, **kw)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started with spawn (the default inside processes
        # that were themselves spawned, as DDP ranks often are) do not inherit
        # the process group: resolve the rank here, in the rank's process.
        state = self.__dict__.copy()
        # A copy starts afresh: a read-ahead belongs to this process, and a
        # copy sent to a worker each epoch would only guess wrong.
        state["_ahead"] = None
        state["_last_iterated"] = None
        if state["_rank"] is None:
            state["_rank"], state["_world_size"] = _distributed()
        return state

    @property
    def rank(self) -> int:
        return self._rank if self._rank is not None else _distributed()[0]

    @property
    def world_size(self) -> int:
        return self._world_size if self._world_size is not None else _distributed()[1]

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch (and so the shuffle); a resume point set by
        ``load_state_dict`` applies only to its own epoch."""
        if epoch != self._epoch:
            self._start = 0
            self._skip = []
        self._epoch = int(epoch)

    def __len__(self) -> int:
        return self._planned() - len(self._skip)

    def _planned(self) -> int:
        return _native.batches_per_rank(
            self.num_samples, self.batch_size, self.world_size, self.drop_last, self._start
        )

    def _reader_args(self) -> dict[str, Any]:
        """What the native reader is built from, but the epoch and resume point."""
        info = get_worker_info()
        num_workers, worker_id = (info.num_workers, info.id) if info is not None else (1, 0)
        id_col, label_col, data_col = self.columns
        return dict(
            store=self.store,
            table=self.table,
            uuids=self._uuid_bytes,
            batch_size=self.batch_size,
            label_type=self.label_type,
            id_col=id_col,
            label_col=label_col,
            data_col=data_col,
            world_size=self.world_size,
            rank=self.rank,
            num_workers=num_workers,
            worker_id=worker_id,
            shuffle=self.shuffle,
            seed=self.seed,
            drop_last=self.drop_last,
            ordered=self.ordered,
            window=self.window,
            memory_budget=self.memory_budget,
            decode=self.decode,
            size=self.size,
            on_error=self.on_error,
        )

    def _reader(self, args: dict[str, Any] | None = None) -> _native.Reader:
        """A native reader of the current epoch, from the resume point."""
        return _native.Reader(
            **(args or self._reader_args()),
            epoch=self._epoch,
            start=self._start,
            skip=self._skip or None,
        )

    def _guess_next_epoch(self, pid: int, epoch: int) -> int | None:
        """The epoch the next iteration will most likely read: after epochs
        e-1 and e, e+1 (a loop calling set_epoch); after e and e, e again (no
        set_epoch, or persistent workers). No guess on a first iteration: a
        DataLoader worker that is not persistent iterates a fresh copy each
        epoch and would only waste reads."""
        last = self._last_iterated
        if last is None or last[0] != pid or epoch - last[1] not in (0, 1):
            return None
        return epoch + (epoch - last[1])

    def _take_ahead(self, pid: int, args: dict[str, Any], epoch: int) -> _native.Reader | None:
        """The reader already reading this epoch, if the last iteration guessed it."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        a_pid, a_args, a_epoch, reader = ahead
        if a_pid != pid:
            return None  # inherited through fork: its reads belong to the parent
        if (a_epoch, a_args) == (epoch, args) and self._start == 0 and not self._skip:
            if reader.next_epoch():
                return reader
        reader.close()
        return None

    def __iter__(self) -> Iterator[Batch]:
        pid = os.getpid()
        args = self._reader_args()
        epoch = self._epoch
        then = self._guess_next_epoch(pid, epoch)
        self._last_iterated = (pid, epoch)
        reader = self._take_ahead(pid, args, epoch)
        if reader is None:  # (not `or`: a reader's truth is its length)
            reader = self._reader(args)
        if then is not None:
            # Its reads start once this epoch's are all issued: the window
            # stays full across the boundary instead of draining and refilling.
            reader.read_next(then)
        self._yielded = 0
        self._positions = []
        self.skipped = []
        finished = False
        try:
            for nb in reader:
                batch = Batch.from_native(nb, epoch, self.size)
                if batch.skipped.numel():
                    self.skipped.extend(batch.skipped.tolist())
                self._yielded += 1
                self._positions.append(batch.position)
                self.current_window = reader.window
                yield batch
            finished = True
        finally:
            if finished and then is not None and reader.has_next_epoch:
                # Keep the reads of the guessed epoch going for the next iteration.
                self._ahead = (pid, args, then, reader)
            else:
                reader.close()

    def close(self) -> None:
        """Stops the reads of a next epoch started ahead (see the class
        docstring) and frees their memory; the dataset stays usable."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == os.getpid():
            ahead[3].close()

    def state_dict(
        self,
        batches_consumed: int | None = None,
        *,
        consumed_positions: Any = None,
    ) -> dict[str, Any]:
        """A plain, versioned, JSON-able state from which ``load_state_dict``
        resumes the epoch exactly where this rank stopped.

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
        planned = self._planned()
        if consumed_positions is not None:
            taken = {int(p) for p in consumed_positions}
        elif batches_consumed is not None:
            count = int(batches_consumed)
            if not 0 <= count <= planned - len(self._skip):
                raise InvalidArgumentError(
                    f"batches_consumed={count} is outside 0..{planned - len(self._skip)} "
                    "for this epoch"
                )
            skip = set(self._skip)
            taken = set([q for q in range(planned) if q not in skip][:count])
        else:
            taken = set(self._positions)
        bad = [q for q in taken if not 0 <= q < planned]
        if bad:
            raise InvalidArgumentError(
                f"consumed position {bad[0]} is outside 0..{planned - 1} for this epoch"
            )
        taken |= set(self._skip)
        prefix = 0
        while prefix in taken:
            prefix += 1
        # Inside a DataLoader worker, batches are dealt to workers by position
        # from the resume point: keep that dealing by folding only whole rounds.
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            prefix -= prefix % info.num_workers
        extra = sorted(q - prefix for q in taken if q >= prefix)
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "batch_size": self.batch_size,
            "num_samples": self.num_samples,
            "uuids_fingerprint": self._fingerprint,
            "table": self.table,
            "world_size": self.world_size,
            "rank": self.rank,
            "consumed_samples": _native.consumed_after(
                self.num_samples,
                self.batch_size,
                self.world_size,
                self.drop_last,
                self._start,
                prefix,
            ),
            "consumed_positions": extra,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes from ``state_dict()``: the next iteration yields exactly the
        batches that had not been consumed (on any world size when the state
        has no ``consumed_positions``: the remaining samples are re-dealt over
        the current ranks)."""
        if state.get("version") not in _READABLE_STATE_VERSIONS:
            raise StateDictError(
                f"unsupported state version {state.get('version')!r} (expected {STATE_VERSION})"
            )
        mine = self.state_dict(0)
        for key in (
            "seed",
            "shuffle",
            "drop_last",
            "batch_size",
            "num_samples",
            "uuids_fingerprint",
            "table",
        ):
            if state.get(key) != mine[key]:
                raise StateDictError(
                    f"state was saved with {key}={state.get(key)!r} but this dataset has "
                    f"{key}={mine[key]!r}: it belongs to another run"
                )
        consumed = int(state["consumed_samples"])
        if not 0 <= consumed <= self.num_samples:
            raise StateDictError(f"consumed_samples={consumed} is out of range")
        extra = [int(q) for q in state.get("consumed_positions", [])]
        if extra:
            saved = (state.get("rank"), state.get("world_size"))
            if saved != (self.rank, self.world_size):
                raise StateDictError(
                    f"state has batches consumed out of order on rank {saved[0]} of "
                    f"{saved[1]}: it resumes only there, not on rank {self.rank} of "
                    f"{self.world_size} (save states with ordered=True to change world size)"
                )
            steps = _native.batches_per_rank(
                self.num_samples, self.batch_size, self.world_size, self.drop_last, consumed
            )
            if not all(0 <= q < steps for q in extra) or len(set(extra)) != len(extra):
                raise StateDictError(f"consumed_positions are out of range 0..{steps - 1}")
        self._epoch = int(state["epoch"])
        self._start = consumed
        self._skip = sorted(extra)
        self._yielded = 0
        self._positions = []
