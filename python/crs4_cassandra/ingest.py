"""Ingest datasets into a store: the data table (id, label, data), the metadata
table (id, label, label_name, path, split) and a split file.

Every ingest writes through one :class:`Writer` (the Rust core's per-partition
writer): the ``ingest`` commands here, and Ray or Spark tasks writing their
partitions. Images may be transformed once, as they are written
(:class:`Transform`), on the writer's threads, without the GIL.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import uuid as uuidlib
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import _native
from .errors import InvalidArgumentError, TableExistsError, TableNotFoundError
from .split_builder import MULTILABEL_SEP, add_splits, split_name
from .split_file import LabelType, SplitFile

_T = TypeVar("_T")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class IngestReport:
    table: str
    metadata_table: str
    # Samples in the table once ingest is done, and of them those an earlier,
    # interrupted run had written (``resume``).
    written: int = 0
    resumed: int = 0
    source: str = ""
    per_class: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    split_file: SplitFile | None = None
    # What the skipped entries are: files of a folder (not decodable images),
    # or samples of shards (each with its reason).
    skipped_noun: str = "files"

    def summary(self) -> str:
        classes = f" ({len(self.per_class)} classes)" if self.per_class else ""
        lines = [
            f"wrote {self.written} samples into {self.table!r}{classes}, "
            f"metadata into {self.metadata_table!r}"
        ]
        if self.resumed:
            lines.append(
                f"resumed: {self.resumed} of them were written by an earlier run, "
                f"{self.written - self.resumed} now"
            )
        if self.skipped:
            under = f" under {self.source}" if self.source else ""
            why = ", not decodable images" if self.skipped_noun == "files" else ""
            lines.append(f"skipped {len(self.skipped)} {self.skipped_noun}{under}{why}:")
            # One line a file: its path under the source, then why it was skipped.
            lines += [f"  {path}: {why}" for path, why in self.skipped]
        if self.split_file is not None:
            sizes = ", ".join(
                f"{n}={len(self.split_file.uuids(n))}" for n in self.split_file.names()
            )
            lines.append(f"split: {sizes}")
        return "\n".join(lines)


JPEG_MAGIC = b"\xff\xd8"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_image(data: bytes) -> str | None:
    """None if ``data`` decodes as an image, else the reason it does not:
    "empty file (0 bytes)", "not an image (...)", "truncated image (...)" or
    "cannot decode (...)". JPEGs and PNGs are decoded whole by the Rust
    decoder the loader reads them with; other formats (GIF, BMP, WebP, TIFF)
    are checked by PIL, whose words are in the brackets."""
    if not data:
        return "empty file (0 bytes)"
    if data.startswith(JPEG_MAGIC) or data.startswith(PNG_MAGIC):
        return _native.check_image(data)
    return _pil_check(data)


def _pil_check(data: bytes) -> str | None:
    import io

    from PIL import UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return None
    except UnidentifiedImageError:
        return "not an image (PIL: cannot identify image file)"
    except Exception as e:  # PIL raises many types for bad files
        # PIL names the file it read, here a BytesIO: "<_io.BytesIO object at 0x...>".
        msg = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(e)).strip()
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            return f"truncated image (PIL: {msg})"
        return f"cannot decode ({type(e).__name__}: {msg})"


SPLIT_TAGS = ("train", "val", "valid", "validation", "test")


@dataclass
class FolderScan:
    classes: list[str]
    # (file, class index, original split tag or None)
    files: list[tuple[Path, int, str | None]]

    @property
    def tagged(self) -> bool:
        return any(tag is not None for _, _, tag in self.files)


def _class_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path) -> list[Path]:
    out = []
    for dirpath, _, names in os.walk(folder):
        out += [Path(dirpath) / fn for fn in sorted(names) if not fn.startswith(".")]
    return sorted(out)


def scan_image_folder(src: Path) -> FolderScan:
    """Classes and files of an ImageFolder layout, ``SRC/<class>/<image>``, or of
    one split by the dataset's own tags, ``SRC/{train,val}/<class>/<image>`` (as
    imagenette is distributed); the tags are kept in the metadata."""
    if not src.exists():
        raise FileNotFoundError(f"source folder {src} does not exist")
    if not src.is_dir():
        raise NotADirectoryError(f"source {src} is not a folder")
    top = _class_dirs(src)
    if not top:
        raise InvalidArgumentError(
            f"source folder {src} has no class sub-folders (expected SRC/<class>/<image>)"
        )
    tagged = all(t.lower() in SPLIT_TAGS for t in top) and all(_class_dirs(src / t) for t in top)
    files: list[tuple[Path, int, str | None]]
    if tagged:
        classes = sorted({c for t in top for c in _class_dirs(src / t)})
        index = {c: i for i, c in enumerate(classes)}
        files = [
            (f, index[c], t) for t in top for c in _class_dirs(src / t) for f in _files(src / t / c)
        ]
    else:
        classes = top
        files = [(f, i, None) for i, c in enumerate(classes) for f in _files(src / c)]
    if not files:
        raise InvalidArgumentError(f"source folder {src} has class folders but no files")
    return FolderScan(classes, files)


def open_for_writing(store: str | _native.Store) -> _native.Store:
    if isinstance(store, str):
        if store.startswith("local:"):
            return _native.open_store(store, create=True)
        return _native.open_store(store)
    return store


# A sample's id is a uuid5 of the table's name and the source file's path under
# the source folder (computed by the Rust core, for every engine alike), so that
# running an ingest again (``resume``), or a retried task of a distributed one,
# gives every sample the id the first run gave it: a resumed ingest ends with the
# ids, the rows and the split file an uninterrupted one writes.
ID_NAMESPACE = uuidlib.UUID("5d0c3b7e-8a4f-5c1e-9b2d-6f7a8e9c0d1b")


def sample_uuid(table: str, path: str, occurrence: int = 0) -> bytes:
    """The id ingest gives the sample of ``path`` (relative to the source, with
    "/") in ``table``; ``occurrence`` counts earlier samples of the same path
    (a multilabel list may name an image twice): the uuid5, in ID_NAMESPACE, of
    "table\npath", or "table\npath\noccurrence" past the first."""
    return _native.sample_uuid(table, path, occurrence)


@dataclass(frozen=True)
class Transform:
    """What to do to each image as it is written; ``Transform()`` does nothing
    and leaves the bytes as they are.

    ``resize_shorter=N``: the shorter side to N pixels, the longer to
    ``floor(N * long / short)`` (as ``torchvision.transforms.Resize(N)``), with
    Pillow's default filter (bicubic, antialiased); an image whose shorter side
    is N or less keeps its size (never upscaled). ``center_crop``: then keep the
    centre square (N x N when resized; the shorter side otherwise).
    ``jpeg_quality=Q``: JPEGs (and JPEG outputs) encoded at Q, 1-100 (default
    90 where an image is re-encoded). ``to_jpeg``: PNGs stored as JPEG.

    Re-encoded images are 8-bit RGB (grey becomes RGB, alpha is dropped, EXIF
    is not kept); a PNG stays PNG (lossless) unless ``to_jpeg``. An image whose
    pixels do not change (already small enough, no crop) and that is not to be
    re-encoded keeps its bytes. Transforms read JPEG and PNG; other formats
    are rejected when a transform is asked for.
    """

    resize_shorter: int | None = None
    center_crop: bool = False
    jpeg_quality: int | None = None
    to_jpeg: bool = False

    def __post_init__(self) -> None:
        if self.resize_shorter is not None and self.resize_shorter < 1:
            raise InvalidArgumentError(
                f"resize_shorter must be 1 or more, got {self.resize_shorter}"
            )
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise InvalidArgumentError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    def is_identity(self) -> bool:
        return self == Transform()

    def changes_geometry(self) -> bool:
        """Whether images change size (a mask stored beside one would not match)."""
        return self.resize_shorter is not None or self.center_crop

    def options(self) -> dict[str, Any]:
        """The parameters that are set, as keyword arguments."""
        return {k: v for k, v in asdict(self).items() if v not in (None, False)}

    def apply(self, data: bytes) -> bytes:
        """``data`` transformed as the writer transforms it (the Rust core's
        code); raises InvalidArgumentError with the reason if it cannot be."""
        return _native.transform_image(data, **self.options())


@dataclass
class WriteSummary:
    """What a :class:`Writer` wrote: rows and data bytes (after transforms),
    the rows rejected as (key or id, reason), the ids written in input order;
    ``max_in_flight`` is the most chunks that were written at once and
    ``retries`` the chunk writes repeated after transient store errors."""

    rows_written: int = 0
    bytes_written: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    ids: list[bytes] = field(default_factory=list)
    max_in_flight: int = 0
    retries: int = 0

    def merge(self, other: WriteSummary) -> WriteSummary:
        """Both summaries as one (of two partitions, say): self's rows first."""
        return WriteSummary(
            self.rows_written + other.rows_written,
            self.bytes_written + other.bytes_written,
            self.rejected + other.rejected,
            self.ids + other.ids,
            max(self.max_in_flight, other.max_in_flight),
            self.retries + other.retries,
        )

    def summary(self) -> str:
        lines = [f"wrote {self.rows_written} rows ({self.bytes_written:,} bytes of data)"]
        if self.retries:
            lines.append(f"{self.retries} chunk writes repeated after transient errors")
        if self.rejected:
            lines.append(f"rejected {len(self.rejected)} rows:")
            lines += [f"  {key}: {why}" for key, why in self.rejected]
        return "\n".join(lines)


# Chunks a Writer keeps in flight unless told otherwise.
DEFAULT_WINDOW = 4

RowId = bytes | uuidlib.UUID | str


def _row_id(value: RowId | None, key: str | None, table: str, n: int) -> bytes:
    if value is None:
        if key is None:
            raise InvalidArgumentError(f"row {n} has neither an id nor a key to derive it from")
        return sample_uuid(table, key)
    if isinstance(value, uuidlib.UUID):
        return value.bytes
    if isinstance(value, str):
        try:
            return uuidlib.UUID(value).bytes
        except ValueError:
            raise InvalidArgumentError(f"row {n}: id {value!r} is not a uuid") from None
    b = bytes(value)
    if len(b) != 16:
        raise InvalidArgumentError(f"row {n}: id must be 16 bytes, got {len(b)}")
    return b


class Writer:
    """Writes rows into ``table`` of ``store`` and metadata rows into
    ``metadata_table`` (default ``<table>_metadata``; False: none), the same
    way for every engine: the ``ingest`` commands, Ray and Spark tasks.

    Rows are dicts: ``id`` (16 bytes, uuid.UUID or uuid string; None: derived
    from ``key`` with :func:`sample_uuid`, so a retried task writes the same
    ids), ``key`` (names the row in rejections), ``label`` (int, bytes or None),
    ``data`` (bytes), and the metadata ``label_id`` (default: the label if an
    int), ``label_name``, ``path``, ``split``. A row with ``reject`` (a
    reason) is not written but listed among the rejected rows with it, in
    order, as if the writer had found it bad (a source that finds a sample bad
    before writing reports it this way).

    They are written ``chunk`` at a time, data rows before metadata rows (a
    metadata row implies its sample), at most ``window`` chunks in flight:
    :meth:`write` waits, without the GIL, when that many are. Chunks failing
    with a transient store error (timeout, lost connection) are written again,
    ``retries`` times at most; then :meth:`write` or :meth:`close` raises,
    naming the table and the chunk's first id. With ``validate`` a row whose
    data is not a decodable image is rejected (reported with its key and the
    reason, see :func:`check_image`), as is one whose ``transform`` fails.

    ``create`` creates the tables if missing (checks their label type if not);
    ``overwrite`` replaces them. Without either the data table must exist.
    """

    def __init__(
        self,
        store: str | _native.Store,
        table: str,
        *,
        label_type: LabelType = "int",
        metadata_table: str | bool | None = None,
        create: bool = False,
        overwrite: bool = False,
        window: int | None = None,
        chunk: int = 64,
        transform: Transform | None = None,
        validate: bool = True,
        retries: int = 3,
    ) -> None:
        if chunk < 1:
            raise InvalidArgumentError(f"chunk must be 1 or more, got {chunk}")
        if window is not None and window < 1:
            raise InvalidArgumentError(f"window must be 1 or more, got {window}")
        self.store = open_for_writing(store)
        self.table = table
        if metadata_table is None or metadata_table is True:
            self.metadata_table: str | None = f"{table}_metadata"
        elif metadata_table is False:
            self.metadata_table = None
        else:
            self.metadata_table = metadata_table
        self.transform = transform or Transform()
        self.validate = validate
        self.chunk = chunk
        if create or overwrite:
            create_tables(
                self.store,
                table,
                self.metadata_table or f"{table}_metadata",
                label_type,
                overwrite=overwrite,
            )
        else:
            self.store.check_table(table, label_type)
        self._native = _native.Writer(
            self.store,
            table,
            label_type=label_type,
            metadata_table=self.metadata_table,
            window=window or DEFAULT_WINDOW,
            chunk=chunk,
            validate=validate,
            retries=retries,
            **self.transform.options(),
        )
        self._rows: list[tuple[Any, ...]] = []
        self._count = 0
        self._summary: WriteSummary | None = None

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Queues rows; returns at once unless ``window`` chunks are in flight."""
        if self._summary is not None:
            raise InvalidArgumentError(f"the writer of table {self.table!r} is closed")
        for r in rows:
            self._rows.append(self._convert(r))
            if len(self._rows) >= self.chunk:
                self._send()

    def _convert(self, r: Mapping[str, Any]) -> tuple[Any, ...]:
        n = self._count
        self._count += 1
        key = r.get("key")
        uid = _row_id(r.get("id"), key, self.table, n)
        reject = r.get("reject")
        if reject is not None:
            return (uid, key, None, b"", None, None, None, None, True, str(reject))
        data = r.get("data")
        if data is None:
            raise InvalidArgumentError(f"row {key or uuidlib.UUID(bytes=uid)} has no data")
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)
        label = r.get("label")
        label_id: int | None = None
        if "label_id" in r:
            label_id = r["label_id"]
        elif isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            label_id = int(label)
        checked, rejected = False, None
        if self.validate and data and not (data[:2] == JPEG_MAGIC or data[:8] == PNG_MAGIC):
            # A format the Rust decoder does not read: PIL says whether it is an image.
            rejected = _pil_check(bytes(data))
            checked = rejected is None
        return (
            uid,
            key,
            label,
            data,
            label_id,
            r.get("label_name"),
            r.get("path"),
            r.get("split"),
            checked,
            rejected,
        )

    def _send(self) -> None:
        rows, self._rows = self._rows, []
        self._native.write(rows)

    def close(self) -> WriteSummary:
        """Writes what is queued, waits for every chunk and says what was
        written; raises the first chunk's failure. Closing again returns the
        same summary."""
        if self._summary is None:
            if self._rows:
                self._send()
            d = self._native.close()
            ids = d["ids"]
            self._summary = WriteSummary(
                rows_written=d["rows_written"],
                bytes_written=d["bytes_written"],
                rejected=list(d["rejected"]),
                ids=[ids[i : i + 16] for i in range(0, len(ids), 16)],
                max_in_flight=d["max_in_flight"],
                retries=d["retries"],
            )
        return self._summary

    def abort(self, *, wait: bool = False) -> None:
        """Stops: drops the rows not yet sent and the chunks in flight, or with
        ``wait`` lets those finish first (Ctrl-C stops the wait). What was
        written stays; writing the same rows again completes it."""
        self._rows = []
        if wait:
            try:
                self._native.drain()
                return
            except BaseException:
                self._native.abort()
                raise
        self._native.abort()

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def create_tables(
    st: _native.Store,
    table: str,
    metadata_table: str,
    label_type: LabelType,
    *,
    overwrite: bool = False,
) -> None:
    """Creates the data and metadata tables; existing ones are kept (their
    label type checked) unless ``overwrite``, which replaces them."""
    try:
        st.create_tables(table, metadata_table, label_type, overwrite=overwrite)
    except TableExistsError:
        st.check_table(table, label_type)


Label = int | bytes | None


@dataclass
class _Sample:
    """One sample a source lists, before it is read: its metadata, and how to
    read its label and data (or why it is skipped)."""

    path: str
    label_id: int | None
    label_name: str | None
    tag: str | None
    read: Callable[[], tuple[Label, bytes] | str]
    counts: tuple[str, ...] = ()
    # Where the sample is, for the report of a skipped one (default: its path).
    where: str | None = None

    def metadata(self) -> tuple[int | None, str | None, str | None, str | None]:
        return (self.label_id, self.label_name, self.path, self.tag)


def _read_folder_file(path: Path, label: int) -> tuple[Label, bytes] | str:
    # The writer checks that the data is an image.
    return (label, path.read_bytes())


def ingest_folder(
    src: str | os.PathLike[str],
    store: str | _native.Store,
    table: str,
    *,
    val_frac: float = 0.2,
    seed: int = 0,
    split_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    chunk: int = 64,
    progress: bool = True,
    transform: Transform | None = None,
    window: int | None = None,
) -> IngestReport:
    """Ingests an ImageFolder layout (one sub-folder per class, optionally under
    train/ and val/ folders whose split is then kept) into ``table``
    of ``store`` with int labels; metadata goes to ``<table>_metadata``.

    Files that are not decodable images are skipped, counted and listed in the
    report. Refuses to replace existing tables unless ``overwrite``; ``resume``
    finishes an interrupted ingest of the same source into them (see
    :func:`sample_uuid`; give it the same ``transform``). ``transform``
    (a :class:`Transform`) changes the images as they are written; ``window``
    is the chunks of ``chunk`` samples written at once (default 4).
    """
    _check_args(val_frac, chunk, overwrite, resume)
    src_path = Path(src)
    scan = scan_image_folder(src_path)
    classes = scan.classes
    samples = [
        _Sample(
            rel,
            label,
            classes[label],
            tag,
            functools.partial(_read_folder_file, path, label),
            (classes[label],),
        )
        for path, label, tag in scan.files
        for rel in [path.relative_to(src_path).as_posix()]
    ]
    # The dataset's own split (train/ and val/ folders) wins over val_frac.
    return _ingest(
        src_path,
        store,
        table,
        "int",
        samples,
        classes,
        val_frac=val_frac,
        seed=seed,
        split_file=split_file,
        overwrite=overwrite,
        resume=resume,
        chunk=chunk,
        progress=progress,
        transform=transform,
        window=window,
    )


# Shared by the ingest functions below and ingest_folder: creating or resuming
# the tables, writing through a Writer, and the split file from the dataset's
# own split tags or from val_frac.

MetadataRow = tuple[bytes, int | None, str | None, str | None, str | None]


def _ingest(
    src: Path,
    store: str | _native.Store,
    table: str,
    label_type: LabelType,
    samples: Sequence[_Sample],
    classes: Sequence[str],
    *,
    val_frac: float,
    seed: int,
    split_file: str | os.PathLike[str] | None,
    overwrite: bool,
    resume: bool,
    chunk: int,
    progress: bool,
    transform: Transform | None,
    window: int | None,
    skipped_noun: str = "files",
) -> IngestReport:
    """Writes ``samples`` (what a source lists, not yet read) into ``table``,
    skipping those an earlier run wrote when ``resume``, then the split file."""
    ids = _sample_ids(table, samples)
    # The source is scanned and checked before the store is touched.
    st = open_for_writing(store)
    metadata_table = f"{table}_metadata"
    done = _prepare_tables(st, table, metadata_table, label_type, overwrite, resume)
    if done:
        _check_resumable(done, samples, ids, table, metadata_table, src)
    report = IngestReport(table=table, metadata_table=metadata_table, skipped_noun=skipped_noun)
    unread: dict[int, str] = {}
    w = Writer(
        st,
        table,
        label_type=label_type,
        metadata_table=metadata_table,
        chunk=chunk,
        window=window,
        transform=transform,
    )
    try:
        for i, (s, uid) in enumerate(
            progress_bar(list(zip(samples, ids, strict=True)), f"ingest {table}", progress)
        ):
            if uid in done:
                continue
            got = s.read()
            if isinstance(got, str):
                unread[i] = got
                continue
            label, data = got
            w.write(
                [
                    {
                        "id": uid,
                        "key": s.path,
                        "label": label,
                        "data": data,
                        "label_id": s.label_id,
                        "label_name": s.label_name,
                        "path": s.path,
                        "split": s.tag,
                    }
                ]
            )
        summary = w.close()
    except KeyboardInterrupt:
        # The chunks already sent are finished: what --resume trusts is whole.
        w.abort(wait=True)
        raise
    except BaseException:
        w.abort()
        raise
    kept, tags = _tally(report, samples, ids, done, unread, summary.rejected, set(summary.ids))
    return _finish(
        report,
        table,
        metadata_table,
        kept,
        tags,
        st,
        label_type,
        classes,
        src,
        val_frac,
        seed,
        split_file,
        transform,
    )


def _sample_ids(table: str, samples: Sequence[_Sample]) -> list[bytes]:
    """The ids of a source's samples: ``sample_uuid(table, path, n)``, ``n``
    counting the samples listed before under the same path."""
    seen: dict[str, int] = {}
    ids = []
    for s in samples:
        ids.append(sample_uuid(table, s.path, seen.get(s.path, 0)))
        seen[s.path] = seen.get(s.path, 0) + 1
    return ids


def _tally(
    report: IngestReport,
    samples: Sequence[_Sample],
    ids: Sequence[bytes],
    done: Mapping[bytes, Any] | set[bytes],
    unread: Mapping[int, str],
    rejected: Sequence[tuple[str, str]],
    written: set[bytes] | None = None,
) -> tuple[list[bytes], list[str | None]]:
    """Counts in ``report`` what became of each sample: resumed (``done``),
    unreadable (``unread``, by index), rejected by a writer (by path, in
    order), or written (``written``, else every sample not rejected). Returns
    the ids and split tags of the samples the tables hold."""
    by_path: defaultdict[str, deque[str]] = defaultdict(deque)
    for key, why in rejected:
        by_path[key].append(why)
    kept: list[bytes] = []
    tags: list[str | None] = []
    for i, (s, uid) in enumerate(zip(samples, ids, strict=True)):
        if uid in done:
            report.resumed += 1
        elif i in unread:
            report.skipped.append((s.where or s.path, unread[i]))
            continue
        elif (uid not in written) if written is not None else bool(by_path[s.path]):
            report.skipped.append((s.where or s.path, by_path[s.path].popleft()))
            continue
        kept.append(uid)
        tags.append(s.tag)
        for c in s.counts:
            report.per_class[c] = report.per_class.get(c, 0) + 1
    return kept, tags


def _prepare_tables(
    st: _native.Store,
    table: str,
    metadata_table: str,
    label_type: LabelType,
    overwrite: bool,
    resume: bool,
) -> dict[bytes, MetadataRow]:
    """Creates the tables, or with ``resume`` finds what they hold: the metadata
    rows by id (empty when the tables were missing and are created now)."""
    if not resume:
        try:
            st.create_tables(table, metadata_table, label_type, overwrite=overwrite)
        except TableExistsError as e:
            exists = TableExistsError(
                f"{e}, or resume=True (--resume) to finish an interrupted ingest into it"
            )
            exists.table = getattr(e, "table", table)  # type: ignore[attr-defined]
            raise exists from None
        return {}
    try:
        st.check_table(table, label_type)
        has_data = True
    except TableNotFoundError:
        has_data = False
    try:
        rows = st.scan_metadata(metadata_table)
        has_metadata = True
    except TableNotFoundError:
        rows, has_metadata = [], False
    if not has_data and not has_metadata:
        st.create_tables(table, metadata_table, label_type)
        return {}
    if not has_data or not has_metadata:
        there, missing = (table, metadata_table) if has_data else (metadata_table, table)
        absent = TableNotFoundError(
            f"cannot resume an ingest into {table!r} of {st.url}: table {there!r} exists "
            f"but {missing!r} does not, so what was written is not known; "
            "pass overwrite=True (--overwrite) to start over"
        )
        absent.table = missing  # type: ignore[attr-defined]
        raise absent
    return {bytes(r[0]): r for r in rows}


def _check_resumable(
    done: dict[bytes, MetadataRow],
    samples: Sequence[_Sample],
    ids: Sequence[bytes],
    table: str,
    metadata_table: str,
    src: Path,
) -> None:
    """Refuses to resume into tables that hold samples the source does not list,
    or list otherwise (another label or split): an ingest of something else."""
    listed = dict(zip(ids, samples, strict=True))
    foreign = [r for uid, r in done.items() if uid not in listed]
    if foreign:
        r = foreign[0]
        raise InvalidArgumentError(
            f"cannot resume the ingest into {table!r}: {metadata_table!r} holds "
            f"{len(foreign)} samples that {src} does not list (e.g. id "
            f"{uuidlib.UUID(bytes=bytes(r[0]))}, path {r[3]!r}), so it holds another "
            "ingest; pass overwrite=True (--overwrite) to replace it"
        )
    for uid, r in done.items():
        s = listed[uid]
        if tuple(r[1:]) != s.metadata():
            raise InvalidArgumentError(
                f"cannot resume the ingest into {table!r}: {s.path} is in {metadata_table!r} "
                f"with (label, label_name, path, split) {tuple(r[1:])}, but {src} now gives "
                f"{s.metadata()}: the source changed since; pass overwrite=True (--overwrite) "
                "to start over"
            )


def progress_bar(items: Sequence[_T], desc: str, progress: bool) -> Iterable[_T]:
    return tqdm(  # type: ignore[no-any-return]
        items, desc=desc, unit="img", disable=not progress, file=sys.stderr
    )


def _check_args(val_frac: float, chunk: int, overwrite: bool, resume: bool) -> None:
    if not 0.0 <= val_frac < 1.0:
        raise InvalidArgumentError(f"val_frac must be in [0, 1), got {val_frac}")
    if chunk < 1:
        raise InvalidArgumentError(f"chunk must be 1 or more, got {chunk}")
    if overwrite and resume:
        raise InvalidArgumentError(
            "overwrite and resume exclude each other: overwrite starts over, "
            "resume finishes what the tables hold"
        )


def _tagged_subfolders(folder: Path) -> list[tuple[Path, str | None]]:
    """``folder``'s split sub-folders (training/, validation/...) with their tags,
    or ``folder`` itself, untagged, when it has none."""
    subs = [d for d in _class_dirs(folder) if split_name(d) in ("train", "val", "test")]
    if subs:
        return [(folder / d, d) for d in subs]
    return [(folder, None)]


def scan_segmentation_folder(
    src: Path, images: str = "images", annotations: str = "annotations"
) -> list[tuple[Path, Path | None, str | None]]:
    """(image, mask or None, split tag) triples of an ADE20k-like layout,
    ``SRC/images/<split>/<name>.jpg`` with ``SRC/annotations/<split>/<name>.png``
    (the ``<split>`` level, e.g. training/ and validation/, is optional)."""
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    img_root, ann_root = src / images, src / annotations
    for d in (img_root, ann_root):
        if not d.is_dir():
            raise InvalidArgumentError(
                f"{d} is not a folder: expected SRC/{images}/[<split>/]<name>.jpg "
                f"and SRC/{annotations}/[<split>/]<name>.png"
            )
    out: list[tuple[Path, Path | None, str | None]] = []
    for folder, tag in _tagged_subfolders(img_root):
        masks = {p.stem: p for p in _files(ann_root / folder.relative_to(img_root))}
        for f in _files(folder):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                out.append((f, masks.get(f.stem), tag))
    if not out:
        raise InvalidArgumentError(f"no image under {img_root}")
    return out


def ingest_segmentation(
    src: str | os.PathLike[str],
    store: str | _native.Store,
    table: str,
    *,
    classes: Sequence[str] = (),
    images: str = "images",
    annotations: str = "annotations",
    val_frac: float = 0.2,
    seed: int = 0,
    split_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    chunk: int = 64,
    progress: bool = True,
    transform: Transform | None = None,
    window: int | None = None,
) -> IngestReport:
    """Ingests a segmentation dataset laid out as ADE20k is
    (``SRC/images/{training,validation}/*.jpg`` and the masks,
    ``SRC/annotations/{training,validation}/*.png``, one class index a pixel):
    the image is the data, the mask file's bytes the label blob. ``classes`` (the
    name of each mask value) goes into the split file.

    Images without a mask, and images or masks that do not decode, are skipped
    and listed in the report; the split tags of the folders are kept.
    ``overwrite``, ``resume`` and ``window`` as for :func:`ingest_folder`;
    ``transform`` may re-encode the images (``jpeg_quality``, ``to_jpeg``) but
    not resize or crop them: their masks would no longer match.
    """
    _check_args(val_frac, chunk, overwrite, resume)
    if transform is not None and transform.changes_geometry():
        raise InvalidArgumentError(
            "resize_shorter and center_crop (--resize-shorter, --center-crop) are not "
            "supported for segmentation: they would resize the images but not their masks; "
            "jpeg_quality and to_jpeg (--jpeg-quality, --to-jpeg) are"
        )
    src_path = Path(src)
    triples = scan_segmentation_folder(src_path, images, annotations)
    samples = [
        _Sample(
            img.relative_to(src_path).as_posix(),
            None,
            None,
            tag,
            functools.partial(_read_segmentation_pair, img, mask, src_path),
        )
        for img, mask, tag in triples
    ]
    return _ingest(
        src_path,
        store,
        table,
        "blob",
        samples,
        classes,
        val_frac=val_frac,
        seed=seed,
        split_file=split_file,
        overwrite=overwrite,
        resume=resume,
        chunk=chunk,
        progress=progress,
        transform=transform,
        window=window,
    )


def _read_segmentation_pair(img: Path, mask: Path | None, src: Path) -> tuple[Label, bytes] | str:
    if mask is None:
        return "no mask of the same name"
    data, label = img.read_bytes(), mask.read_bytes()
    # The writer checks the image; the mask (the label blob) is checked here.
    if (mask_why := check_image(label)) is not None:
        return f"mask {mask.relative_to(src).as_posix()}: {mask_why}"
    return (label, data)


def read_multilabel_lists(
    label_files: Sequence[Path],
) -> tuple[list[str], list[tuple[str, list[str], str]]]:
    """Classes (sorted) and (image name, labels, tag) rows from Corel-5k label
    files: JSON ``{"labels": [...], "samples": [{"image_name": ...,
    "image_labels": [...]}, ...]}``; the tag is the file's stem (train, test)."""
    import json

    rows: list[tuple[str, list[str], str]] = []
    for lf in label_files:
        try:
            doc = json.loads(lf.read_text())
            samples = doc["samples"]
            rows += [
                (s["image_name"], [str(x) for x in s["image_labels"]], lf.stem) for s in samples
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgumentError(
                f"{lf} is not a Corel-5k label file ({{'samples': [{{'image_name', "
                f"'image_labels'}}]}}): {type(e).__name__}: {e}"
            ) from None
    classes = sorted({x for _, labels, _ in rows for x in labels})
    return classes, rows


def encode_multihot(indices: Sequence[int], num_classes: int) -> bytes:
    """A multi-hot uint8 vector, serialized as an ``.npy`` file."""
    import io

    v = np.zeros(num_classes, dtype=np.uint8)
    v[list(indices)] = 1
    buf = io.BytesIO()
    np.save(buf, v, allow_pickle=False)
    return buf.getvalue()


def ingest_multilabel(
    src: str | os.PathLike[str],
    store: str | _native.Store,
    table: str,
    *,
    label_files: Sequence[str | os.PathLike[str]] | None = None,
    images: str = "images",
    val_frac: float = 0.2,
    seed: int = 0,
    split_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    chunk: int = 64,
    progress: bool = True,
    transform: Transform | None = None,
    window: int | None = None,
) -> IngestReport:
    """Ingests a multilabel dataset laid out as Corel-5k is (``SRC/images/*.jpeg``
    and ``SRC/train.json``, ``SRC/test.json`` label files): the label blob is the
    multi-hot vector over the sorted classes, serialized with ``np.save``. The
    metadata keeps the label names (``|``-separated), the split file the classes
    and the label files' tags as splits. Images the lists name but that are
    missing or do not decode are skipped and listed in the report.
    ``overwrite``, ``resume``, ``transform`` and ``window`` as for
    :func:`ingest_folder`.
    """
    _check_args(val_frac, chunk, overwrite, resume)
    src_path = Path(src)
    if not src_path.is_dir():
        raise FileNotFoundError(f"source folder {src_path} does not exist")
    files = (
        [Path(f) for f in label_files]
        if label_files
        else sorted(p for p in src_path.glob("*.json") if p.is_file())
    )
    if not files:
        raise InvalidArgumentError(
            f"no label file: expected {src_path}/train.json and {src_path}/test.json"
        )
    classes, rows = read_multilabel_lists(files)
    index = {c: i for i, c in enumerate(classes)}
    tagged = len(files) > 1
    samples = [
        _Sample(
            (src_path / images / name).relative_to(src_path).as_posix(),
            None,
            MULTILABEL_SEP.join(labels),
            tag if tagged else None,
            functools.partial(
                _read_multilabel_image,
                src_path / images / name,
                encode_multihot([index[x] for x in labels], len(classes)),
            ),
            tuple(labels),
        )
        for name, labels, tag in rows
    ]
    return _ingest(
        src_path,
        store,
        table,
        "blob",
        samples,
        classes,
        val_frac=val_frac,
        seed=seed,
        split_file=split_file,
        overwrite=overwrite,
        resume=resume,
        chunk=chunk,
        progress=progress,
        transform=transform,
        window=window,
    )


def _read_multilabel_image(path: Path, label: bytes) -> tuple[Label, bytes] | str:
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"cannot read ({type(e).__name__}: {e.strerror or e})"
    return (label, data)


def _finish(
    report: IngestReport,
    table: str,
    metadata_table: str,
    ids: list[bytes],
    tags: list[str | None],
    st: _native.Store,
    label_type: LabelType,
    classes: Sequence[str],
    src: Path,
    val_frac: float,
    seed: int,
    split_file: str | os.PathLike[str] | None,
    transform: Transform | None,
) -> IngestReport:
    report.written = len(ids)
    info: dict[str, Any] = {}
    if transform is not None and not transform.is_identity():
        # The split file says how its samples were made.
        info["transform"] = transform.options()
    report.source = str(src)
    if not ids:
        raise InvalidArgumentError(f"no decodable image in {src}")
    sf = SplitFile(
        table,
        label_type,
        classes=classes,
        store=st.url,
        metadata_table=metadata_table,
        info={"source": str(src), "seed": seed, "val_frac": val_frac, **info},
    )
    uuids = np.frombuffer(b"".join(ids), dtype=np.uint8).reshape(-1, 16)
    add_splits(sf, uuids, tags, val_frac, seed)
    if split_file is not None:
        sf.save(split_file)
    report.split_file = sf
    return report
