"""Ray Data: a Dataset written into a store (:class:`StoreDatasink`), a split
or a whole ingest read back as a Dataset (:func:`read_split`), and the folder
and WebDataset ingests run on a Ray cluster (:func:`ingest_folder`,
:func:`ingest_webdataset`).

Needs ``ray[data]`` (``pip install crs4_cassandra[ray]``). Every write task
writes its blocks through the same :class:`~crs4_cassandra.ingest.Writer` a
single-process ingest uses, so ids, rows and rejections are the same; ids are
deterministic, so a task Ray retries after a failure rewrites its rows in
place and the tables end with every row once.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid as uuidlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data import Datasink, Datasource, ReadTask
from ray.data.block import Block, BlockAccessor, BlockMetadata

from . import _native
from .errors import InvalidArgumentError
from .ingest import (
    IngestReport,
    Transform,
    Writer,
    WriteSummary,
    _check_args,
    _check_resumable,
    _finish,
    _prepare_tables,
    _Sample,
    _sample_ids,
    _tally,
    sample_uuid,
    scan_image_folder,
)
from .split_file import LabelType, SplitFile, as_uuid_array
from .webdataset import (
    _KEY_EXT,
    IMAGE_EXTS,
    LABEL_EXTS,
    ShardSample,
    WebDatasetOptions,
    _read_data,
    sample_info,
    scan_shards,
)

if TYPE_CHECKING:
    from ray.data._internal.execution.interfaces import TaskContext

__all__ = [
    "SplitDatasource",
    "StoreDatasink",
    "connect",
    "ingest_folder",
    "ingest_webdataset",
    "read_split",
    "write_dataset",
]

logger = logging.getLogger(__name__)

# The keys a row hands the writer (see Writer.write).
ROW_KEYS = ("id", "key", "label", "data", "label_id", "label_name", "path", "split", "reject")


def _open(url: str, options: Mapping[str, Any], *, create: bool = False) -> _native.Store:
    """The store of ``url`` with ``options`` (those of
    :func:`crs4_cassandra.open_store`), without importing torch."""
    given = {k: v for k, v in options.items() if v is not None}
    if url.startswith("local:"):
        if given:
            raise InvalidArgumentError(
                f"the local store {url} takes no option, got {sorted(given)}"
            )
        return _native.open_store(url, create=create)
    return _native.open_store(url, options=given or None)


# The stores this worker process opened for its tasks, by URL and options:
# Ray runs many tasks in one worker, and a Cassandra session is worth
# keeping between them (connecting takes round trips and CPU).
_TASK_STORES: dict[tuple[str, str], _native.Store] = {}


def _task_store(url: str, options: Mapping[str, Any]) -> _native.Store:
    """The store of ``url`` for a read or write task: opened once a worker."""
    key = (url, repr(sorted(options.items())))
    store = _TASK_STORES.get(key)
    if store is None:
        store = _TASK_STORES[key] = _open(url, options)
    return store


class StoreDatasink(Datasink[WriteSummary]):
    """Writes a Ray Dataset into ``table`` of the store at ``url`` (local or
    Cassandra): ``ds.write_datasink(StoreDatasink(url, table, label_type="int"))``.

    Rows hold the keys :meth:`Writer.write <crs4_cassandra.ingest.Writer.write>`
    takes: ``data`` (the encoded bytes), ``label``, ``id`` or ``key`` (a row
    without an id gets ``sample_uuid(table, key)``, the id the single-process
    ingest gives), and the optional metadata ``path``, ``label_name``,
    ``split``, ``label_id``; a row with a ``reject`` reason is not written but
    listed among the rejected rows. ``columns`` maps those keys to the dataset's own
    column names, e.g. ``{"data": "bytes", "key": "path"}`` for
    ``ray.data.read_binary_files(..., include_paths=True)``; other columns are
    ignored.

    Each write task writes its blocks through one writer, with at most
    ``window`` chunks of ``chunk`` rows in flight (the writer's defaults
    otherwise). The tables are created once, on the driver, before the first
    task writes (``create``; ``overwrite`` replaces them). A row whose data is
    not a decodable image, or whose ``transform`` fails, is rejected and
    listed, never fatal. When the write is done, ``summary`` holds the merged
    :class:`~crs4_cassandra.ingest.WriteSummary` of all tasks (rows written,
    bytes, rejected rows with their keys), also logged. ``store_options`` are
    those of :func:`crs4_cassandra.open_store`.
    """

    def __init__(
        self,
        url: str,
        table: str,
        *,
        label_type: LabelType,
        metadata_table: str | bool | None = None,
        create: bool = True,
        overwrite: bool = False,
        transform: Transform | None = None,
        window: int | None = None,
        chunk: int = 64,
        validate: bool = True,
        columns: Mapping[str, str] | None = None,
        **store_options: Any,
    ) -> None:
        super().__init__()
        if not isinstance(url, str):
            raise InvalidArgumentError(
                f"StoreDatasink needs a store URL (each write task opens its own store), "
                f"got {type(url).__name__}"
            )
        unknown = sorted(set(columns or {}) - set(ROW_KEYS))
        if unknown:
            raise InvalidArgumentError(
                f"columns maps writer keys to dataset columns; unknown keys {unknown}, "
                f"known: {list(ROW_KEYS)}"
            )
        self.url = url
        self.table = table
        self.label_type: LabelType = label_type
        self.metadata_table = metadata_table
        self.create = create
        self.overwrite = overwrite
        self.transform = transform
        self.window = window
        self.chunk = chunk
        self.validate = validate
        self.columns = dict(columns or {})
        self.store_options = store_options
        self.summary: WriteSummary | None = None
        # Whether on_write_start checks the columns (the tasks always do):
        # where Ray fuses a map into the write, the schema it hands is the
        # map's input's.
        self.check_schema = True

    def _writer(self, store: _native.Store, *, create: bool, overwrite: bool) -> Writer:
        return Writer(
            store,
            self.table,
            label_type=self.label_type,
            metadata_table=self.metadata_table,
            create=create,
            overwrite=overwrite,
            window=self.window,
            chunk=self.chunk,
            transform=self.transform,
            validate=self.validate,
        )

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        # On the driver, before any task writes: write tasks never race on
        # creating (or dropping) the tables.
        names = getattr(schema, "names", None)
        if names is not None and self.check_schema:
            self._check_columns(list(names))
        if self.create or self.overwrite:
            store = _open(self.url, self.store_options, create=True)
            self._writer(store, create=True, overwrite=self.overwrite).close()

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> WriteSummary:
        store = _task_store(self.url, self.store_options)
        w = self._writer(store, create=False, overwrite=False)
        try:
            for block in blocks:
                for batch in BlockAccessor.for_block(block).to_arrow().to_batches(self.chunk):
                    w.write(self._rows(batch))
            summary = w.close()
        except BaseException:
            w.abort()
            raise
        # The ids go back to the driver in the task's result: keep it small.
        summary.ids = []
        return summary

    def _check_columns(self, names: list[str]) -> None:
        data = self.columns.get("data", "data")
        if data not in names:
            raise InvalidArgumentError(
                f"the dataset has no column {data!r} for the sample bytes (its columns: "
                f"{names}); name it with columns={{'data': ...}}"
            )

    def _rows(self, batch: pa.RecordBatch) -> list[dict[str, Any]]:
        self._check_columns(batch.schema.names)
        names = set(batch.schema.names)
        pick = {k: self.columns.get(k, k) for k in ROW_KEYS}
        pick = {k: c for k, c in pick.items() if c in names}
        cols = {k: batch.column(c).to_pylist() for k, c in pick.items()}
        return [{k: v[i] for k, v in cols.items()} for i in range(batch.num_rows)]

    def on_write_complete(self, write_result: Any) -> None:
        total = WriteSummary()
        for s in write_result.write_returns:
            total = total.merge(s)
        self.summary = total
        logger.info("%s", total.summary())


def connect(address: str | None = None, **init_options: Any) -> None:
    """Joins the Ray cluster at ``address`` ("auto", "ray://host:10001", ...),
    or starts a local one (``None`` or "local"), unless this process is
    connected already. ``init_options`` go to ``ray.init``."""
    if ray.is_initialized():
        return
    local = address in (None, "local")
    opts: dict[str, Any] = {"include_dashboard": False} if local else {}
    opts.update(init_options)
    # "local" starts a new instance even where another runs on this machine.
    ray.init(address=address or "local", **opts)


def write_dataset(
    ds: ray.data.Dataset,
    url: str,
    table: str,
    *,
    label_type: LabelType,
    concurrency: int | None = None,
    check_schema: bool = True,
    **sink_options: Any,
) -> WriteSummary:
    """Writes ``ds`` with a :class:`StoreDatasink` (``sink_options`` are its
    keywords) in at most ``concurrency`` tasks at once; returns its summary.
    What ``ingest ... --ray`` runs after reading its source. ``check_schema``
    False: the columns are checked in the write tasks only (where ``ds`` ends
    with a map that Ray fuses into the write, and so tells the sink the
    schema of the map's input)."""
    sink = StoreDatasink(url, table, label_type=label_type, **sink_options)
    sink.check_schema = check_schema
    ds.write_datasink(sink, concurrency=concurrency)
    return sink.summary if sink.summary is not None else WriteSummary()


# --- reading back ----------------------------------------------------------


def _schema(label_type: LabelType) -> pa.Schema:
    label = {"int": pa.int64(), "blob": pa.large_binary(), "none": pa.null()}[label_type]
    return pa.schema([("id", pa.string()), ("label", label), ("data", pa.large_binary())])


def _batch_table(nb: _native.NativeBatch, label_type: LabelType) -> pa.Table:
    """A native batch as an Arrow table (copies: the batch's memory goes back to
    the reader at once), pads left out."""
    keep = ~np.from_dlpack(nb.is_pad()).astype(bool)
    n = int(keep.size)
    offsets = np.from_dlpack(nb.offsets()).astype(np.int64)
    data = np.from_dlpack(nb.data())
    raw = np.from_dlpack(nb.ids()).reshape(-1, 16).tobytes()
    ids = [str(uuidlib.UUID(bytes=raw[i * 16 : i * 16 + 16])) for i in range(n)]
    data_col = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data.tobytes())]
    )
    labels = nb.labels()
    if label_type == "int" and labels is not None:
        label_col: pa.Array = pa.array(np.from_dlpack(labels).astype(np.int64))
    elif label_type == "blob" and labels is not None:
        lo = nb.label_offsets()
        assert lo is not None
        label_col = pa.LargeBinaryArray.from_buffers(
            pa.large_binary(),
            n,
            [
                None,
                pa.py_buffer(np.from_dlpack(lo).astype(np.int64).tobytes()),
                pa.py_buffer(np.from_dlpack(labels).tobytes()),
            ],
        )
    else:
        label_col = pa.nulls(n)
    t = pa.Table.from_arrays([pa.array(ids), label_col, data_col], schema=_schema(label_type))
    return t if keep.all() else t.filter(pa.array(keep))


def _read_shard(
    url: str,
    options: Mapping[str, Any],
    config: _native.ReaderConfig,
    label_type: LabelType,
) -> Iterator[pa.Table]:
    store = _task_store(url, options)
    reader = _native.Reader(store, config, rank=0, world_size=1)
    try:
        for nb in reader:
            yield _batch_table(nb, label_type)
    finally:
        reader.close()


class SplitDatasource(Datasource):
    """The samples of a split (or of every split) of a split file, as a Ray
    Datasource of ``{id, label, data}`` rows: ``id`` the uuid string, ``label``
    an int, bytes or None after the file's label type, ``data`` the encoded
    bytes. Read tasks get contiguous shares of the split's uuids, each read
    by the store's batched, concurrent reader in the split's order. See
    :func:`read_split`."""

    def __init__(
        self,
        url: str | None,
        split_file: SplitFile | str | os.PathLike[str],
        split: str | Sequence[str] | None = None,
        *,
        batch_size: int = 256,
        **store_options: Any,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        sf = split_file if isinstance(split_file, SplitFile) else SplitFile.load(split_file)
        names = sf.names() if split is None else [split] if isinstance(split, str) else list(split)
        parts = [sf.uuids(n) for n in names]
        uuids = np.concatenate(parts) if parts else np.zeros((0, 16), np.uint8)
        # A sample in two splits is read once.
        _, first = np.unique(uuids.view("V16").ravel(), return_index=True)
        self.uuids = as_uuid_array(uuids[np.sort(first)])
        url = url or sf.store
        if not url:
            raise InvalidArgumentError(
                "the split file names no store: pass the store URL to read_split"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
        self.url = url
        self.store_options = store_options
        self.table = sf.table
        self.label_type: LabelType = sf.label_type
        self.batch_size = batch_size
        self._config = functools.partial(
            _native.ReaderConfig,
            sf.table,
            label_type=sf.label_type,
            id_col=sf.id_col,
            label_col=sf.label_col,
            data_col=sf.data_col,
            shuffle=False,
            ordered=True,
            drop_last=False,
            rank=0,
            world_size=1,
        )
        # Fail here, on the driver, not in every task: store, table, columns.
        _open(url, store_options).check_table(
            sf.table, sf.label_type, sf.id_col, sf.label_col, sf.data_col
        )

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: int | None = None,
        data_context: Any = None,
    ) -> list[ReadTask]:
        n = len(self.uuids)
        if n == 0:
            return []
        tasks = max(1, min(int(parallelism), -(-n // self.batch_size)))
        out = []
        for share in np.array_split(np.arange(n), tasks):
            ids = self.uuids[share[0] : share[-1] + 1]
            config = self._config(ids.tobytes(), min(self.batch_size, len(ids)))
            read = functools.partial(
                _read_shard, self.url, self.store_options, config, self.label_type
            )
            meta = BlockMetadata(
                num_rows=len(ids), size_bytes=None, input_files=None, exec_stats=None
            )
            out.append(
                ReadTask(
                    read,
                    meta,
                    schema=_schema(self.label_type),
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return out

    def get_name(self) -> str:
        return f"ReadSplit({self.table})"


def read_split(
    url: str | None,
    split_file: SplitFile | str | os.PathLike[str],
    split: str | Sequence[str] | None = None,
    *,
    batch_size: int = 256,
    override_num_blocks: int | None = None,
    concurrency: int | None = None,
    **store_options: Any,
) -> ray.data.Dataset:
    """A Ray Dataset of the ``{id, label, data}`` rows of ``split`` of
    ``split_file`` (a path or a :class:`SplitFile`; several names, or None for
    every split: the whole ingest), read from the store at ``url`` (None: the
    one the split file names), for batch inference and offline ETL.

    Every sample of the split is one row, once; rows come in the split's
    order within each read task. The uuids are dealt in contiguous shares to
    ``override_num_blocks`` read tasks (Ray's choice by default), each reading
    ``batch_size`` samples a request, concurrently. ``store_options`` are
    those of :func:`crs4_cassandra.open_store`."""
    source = SplitDatasource(url, split_file, split, batch_size=batch_size, **store_options)
    ds: ray.data.Dataset = ray.data.read_datasource(
        source, override_num_blocks=override_num_blocks, concurrency=concurrency
    )
    return ds


# --- the folder ingest on Ray ----------------------------------------------


class _FolderRows:
    """Turns ``read_binary_files(..., include_paths=True)`` batches of an
    ImageFolder into writer rows: the path under the source as the key (the
    single-process ingest's id), the class from the path."""

    def __init__(self, root: str, classes: Sequence[str], tagged: bool) -> None:
        self.root = root
        self.index = {c: i for i, c in enumerate(classes)}
        self.tagged = tagged

    def __call__(self, batch: pa.Table) -> pa.Table:
        keys, labels, names, tags = [], [], [], []
        for p in batch.column("path").to_pylist():
            rel = Path(p).relative_to(self.root).as_posix()
            parts = rel.split("/")
            tag, cls = (parts[0], parts[1]) if self.tagged else (None, parts[0])
            keys.append(rel)
            labels.append(self.index[cls])
            names.append(cls)
            tags.append(tag)
        return pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "path": pa.array(keys, pa.string()),
                "label": pa.array(labels, pa.int64()),
                "label_name": pa.array(names, pa.string()),
                "split": pa.array(tags, pa.string()),
                "data": batch.column("bytes"),
            }
        )


def _blocks(files: int, chunk: int) -> int:
    """Blocks to read ``files`` in: a write task's writer has a few chunks
    to keep in flight (Ray's default, 200 blocks, gives tasks of a few files,
    each paying for its own writer), and every CPU of the cluster a task."""
    cpus = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
    per_task = chunk * 4
    return max(1, min(files, max(-(-files // per_task), 2 * cpus)))


def ingest_folder(
    src: str | os.PathLike[str],
    store: str,
    table: str,
    *,
    address: str | None = None,
    val_frac: float = 0.2,
    seed: int = 0,
    split_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    transform: Transform | None = None,
    chunk: int = 64,
    window: int | None = None,
    concurrency: int | None = None,
    progress: bool = True,
    **store_options: Any,
) -> IngestReport:
    """:func:`crs4_cassandra.ingest.ingest_folder` on a Ray cluster (joined at
    ``address``, or a local one): the files are read by
    ``ray.data.read_binary_files`` and written by :class:`StoreDatasink` in
    at most ``concurrency`` tasks at once. The tables are prepared, and the
    split file made, as the single-process ingest does (same refusals, same
    ``resume``), so the ids, rows, rejected files and split file are those of
    the single-process ingest of the same folder."""
    _check_args(val_frac, chunk, overwrite, resume)
    src_path = Path(src)
    root = src_path.resolve()
    scan = scan_image_folder(root)
    rels = [f.relative_to(root).as_posix() for f, _, _ in scan.files]
    ids = [sample_uuid(table, rel) for rel in rels]
    st = _open(store, store_options, create=True)
    metadata_table = f"{table}_metadata"
    # On the driver, before any task writes: created, replaced, or (resume)
    # read for what an earlier run wrote.
    done = _prepare_tables(st, table, metadata_table, "int", overwrite, resume)
    samples = [
        _Sample(rel, label, scan.classes[label], tag, lambda: "", (scan.classes[label],))
        for rel, (_, label, tag) in zip(rels, scan.files, strict=True)
    ]
    if done:
        _check_resumable(done, samples, ids, table, metadata_table, src_path)
    todo = [str(f) for (f, _, _), uid in zip(scan.files, ids, strict=True) if uid not in done]
    summary = WriteSummary()
    if todo:
        connect(address)
        ray.data.DataContext.get_current().enable_progress_bars = progress
        files = ray.data.read_binary_files(
            todo, include_paths=True, override_num_blocks=_blocks(len(todo), chunk)
        )
        rows = files.map_batches(
            _FolderRows(str(root), scan.classes, scan.tagged), batch_format="pyarrow"
        )
        summary = write_dataset(
            rows,
            store,
            table,
            label_type="int",
            create=False,
            transform=transform,
            chunk=chunk,
            window=window,
            concurrency=concurrency,
            **store_options,
        )
    report = IngestReport(table=table, metadata_table=metadata_table)
    kept, tags = _tally(report, samples, ids, done, {}, summary.rejected)
    return _finish(
        report,
        table,
        metadata_table,
        kept,
        tags,
        st,
        "int",
        scan.classes,
        src_path,
        val_frac,
        seed,
        split_file,
        transform,
    )


# --- the WebDataset ingest on Ray ------------------------------------------


def _member_wanted(exts: frozenset[str], name: str) -> bool:
    match = _KEY_EXT.match(name)
    return match is not None and match.group(2).lower() in exts


def _shard_url(url: str) -> str:
    return os.path.abspath(url[len("local://") :] if url.startswith("local://") else url)


def _webdataset_rows(
    batch: Any,
    *,
    opts: WebDatasetOptions,
    table: str,
    shards: Mapping[str, str],
    skip: frozenset[tuple[str, str]],
    ids: Mapping[tuple[str, str], bytes],
) -> pa.Table:
    """``read_webdataset(..., decoder=None)`` rows as writer rows, made by the
    functions the single-process ingest uses: the metadata from the sample's
    ``.cls``/``.json`` members, the id from its path (``ids`` where the driver
    gave another: a path listed twice), the data checked (a sample whose data
    is bad is handed on with a ``reject`` reason). Samples in ``skip`` (written
    before, or ruled out by their metadata: the driver reports those) go."""
    # A pandas batch, as the reader makes its blocks: a member a sample lacks
    # is NaN there.
    members = [c for c in batch.columns if not c.startswith("__")]
    cols = {c: batch[c].tolist() for c in members}
    urls = batch["__url__"].tolist()
    keys = batch["__key__"].tolist()
    out: dict[str, list[Any]] = {k: [] for k in ROW_KEYS}
    for i, (url, key) in enumerate(zip(urls, keys, strict=True)):
        key = key[2:] if key.startswith("./") else key
        where = (_shard_url(url), key)
        if where in skip:
            continue
        got = {c.lower(): cols[c][i] for c in members if isinstance(cols[c][i], bytes)}
        # The shard as the driver named it: its name may give the split.
        sample = ShardSample(Path(shards.get(where[0], where[0])), -1, key, got)
        info = sample_info(sample, opts)
        if info.problem is not None:
            continue
        data = _read_data(sample, info, opts)
        reject = data if isinstance(data, str) else None
        label, blob = (None, b"") if isinstance(data, str) else data
        row = {
            "id": ids.get(where) or sample_uuid(table, info.path),
            "key": info.path,
            "label": label,
            "data": blob,
            "label_id": info.label if isinstance(info.label, int) else None,
            "label_name": info.label_name,
            "path": info.path,
            "split": info.tag,
            "reject": reject,
        }
        for k, v in row.items():
            out[k].append(v)
    label = pa.large_binary() if opts.label_type == "blob" else pa.int64()
    types = {
        "id": pa.binary(16),
        "key": pa.string(),
        "label": label if opts.label_type != "none" else pa.null(),
        "data": pa.large_binary(),
        "label_id": pa.int64(),
        "label_name": pa.string(),
        "path": pa.string(),
        "split": pa.string(),
        "reject": pa.string(),
    }
    return pa.table({k: pa.array(v, types[k]) for k, v in out.items()})


def ingest_webdataset(
    shards: str | Sequence[str],
    store: str,
    table: str,
    *,
    address: str | None = None,
    label_type: LabelType | None = None,
    image_ext: Sequence[str] = (),
    label_key: str = "label",
    name_key: str = "label_name",
    mask_ext: str | None = None,
    classes: Sequence[str] = (),
    split: str | None = None,
    val_frac: float = 0.2,
    seed: int = 0,
    split_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    transform: Transform | None = None,
    chunk: int = 64,
    window: int | None = None,
    concurrency: int | None = None,
    progress: bool = True,
    **store_options: Any,
) -> IngestReport:
    """:func:`crs4_cassandra.webdataset.ingest_webdataset` on a Ray cluster
    (joined at ``address``, or a local one): the driver reads the shards'
    label and metadata members (as the single-process ingest's first pass
    does) and prepares the tables; ``ray.data.read_webdataset`` reads the
    shards in read tasks and :class:`StoreDatasink` writes them in at most
    ``concurrency`` tasks at once. Ids, rows, skipped samples (by shard and
    key) and the split file are those of the single-process ingest of the
    same shards. Shards Ray's reader refuses (a sample whose members are not
    contiguous, a member twice) and a shard listed twice are refused here,
    naming them, before anything is written."""
    _check_args(val_frac, chunk, overwrite, resume)
    scan = scan_shards(
        shards,
        label_type=label_type,
        image_ext=image_ext,
        label_key=label_key,
        name_key=name_key,
        mask_ext=mask_ext,
        classes=classes,
        split=split,
        transform=transform,
        progress=progress,
    )
    scan.cursor.close()
    urls = [_shard_url(str(p)) for p in scan.paths]
    twice = sorted({u for u in urls if urls.count(u) > 1})
    if twice or scan.irregular:
        what = [f"shard {u} is listed twice" for u in twice] + [
            f"{w}: its members are not contiguous, or one is there twice" for w in scan.irregular
        ]
        more = f" (and {len(what) - 5} more)" if len(what) > 5 else ""
        raise InvalidArgumentError(
            f"cannot read {scan.source!r} with Ray Data's read_webdataset: "
            f"{'; '.join(what[:5])}{more}; ingest it without Ray (no --ray), which "
            "reports such samples and goes on"
        )
    source = Path(scan.source)
    ids = _sample_ids(table, scan.samples)
    st = _open(store, store_options, create=True)
    metadata_table = f"{table}_metadata"
    done = _prepare_tables(st, table, metadata_table, scan.opts.label_type, overwrite, resume)
    if done:
        _check_resumable(done, scan.samples, ids, table, metadata_table, source)
    unread = {
        i: why for i, why in enumerate(scan.problems) if why is not None and ids[i] not in done
    }
    skip: set[tuple[str, str]] = set()
    given: dict[tuple[str, str], bytes] = {}
    todo: set[str] = set()
    for i, ((shard, key), s, uid) in enumerate(zip(scan.keys, scan.samples, ids, strict=True)):
        where = (_shard_url(str(shard)), key)
        if uid in done or i in unread:
            skip.add(where)
            continue
        todo.add(where[0])
        if uid != sample_uuid(table, s.path):
            given[where] = uid
    summary = WriteSummary()
    if todo:
        connect(address)
        ray.data.DataContext.get_current().enable_progress_bars = progress
        wanted = frozenset(LABEL_EXTS) | frozenset(
            e for e in (scan.opts.image_ext or IMAGE_EXTS) + (scan.opts.mask_ext or "",) if e
        )
        ds = ray.data.read_webdataset(
            [u for u in urls if u in todo],
            decoder=None,
            fileselect=functools.partial(_member_wanted, wanted),
        )
        rows = ds.map_batches(
            functools.partial(
                _webdataset_rows,
                opts=scan.opts,
                table=table,
                shards=dict(zip(urls, map(str, scan.paths), strict=True)),
                skip=frozenset(skip),
                ids=given,
            ),
            batch_format="pandas",
            # A block at a time: blocks of shards with other members have
            # other columns, which a batch across blocks would have to unify.
            batch_size=None,
        )
        summary = write_dataset(
            rows,
            store,
            table,
            label_type=scan.opts.label_type,
            check_schema=False,
            create=False,
            transform=transform,
            chunk=chunk,
            window=window,
            concurrency=concurrency,
            **store_options,
        )
    report = IngestReport(table=table, metadata_table=metadata_table, skipped_noun="samples")
    kept, tags = _tally(report, scan.samples, ids, done, unread, summary.rejected)
    return _finish(
        report,
        table,
        metadata_table,
        kept,
        tags,
        st,
        scan.opts.label_type,
        scan.classes,
        source,
        val_frac,
        seed,
        split_file,
        transform,
    )
