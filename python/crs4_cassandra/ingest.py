"""Ingest datasets into a store: the data table (id, label, data), the metadata
table (id, label, label_name, path, split) and a split file."""

from __future__ import annotations

import functools
import os
import re
import sys
import uuid as uuidlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

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


def check_image(data: bytes) -> str | None:
    """None if ``data`` decodes as an image, else the reason it does not: "empty
    file (0 bytes)", "not an image (...)", "truncated image (...)" or "cannot
    decode (...)", PIL's own words in the brackets."""
    import io

    from PIL import UnidentifiedImageError

    if not data:
        return "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            # Decoding at 1/8 scale (JPEG DCT scaling) still reads the whole
            # entropy-coded stream, at a fraction of the cost of a full decode.
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
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
# the source folder, so that running an ingest again (``resume``) gives every
# sample the id the first run gave it: a resumed ingest ends with the ids, the
# rows and the split file an uninterrupted one writes.
ID_NAMESPACE = uuidlib.UUID("5d0c3b7e-8a4f-5c1e-9b2d-6f7a8e9c0d1b")


def sample_uuid(table: str, path: str, occurrence: int = 0) -> bytes:
    """The id ingest gives the sample of ``path`` (relative to the source, with
    "/") in ``table``; ``occurrence`` counts earlier samples of the same path
    (a multilabel list may name an image twice)."""
    name = f"{table}\n{path}" if occurrence == 0 else f"{table}\n{path}\n{occurrence}"
    return uuidlib.uuid5(ID_NAMESPACE, name).bytes


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
    data = path.read_bytes()
    return check_image(data) or (label, data)


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
) -> IngestReport:
    """Ingests an ImageFolder layout (one sub-folder per class, optionally under
    train/ and val/ folders whose split is then kept) into ``table``
    of ``store`` with int labels; metadata goes to ``<table>_metadata``.

    Files that are not decodable images are skipped, counted and listed in the
    report. Refuses to replace existing tables unless ``overwrite``; ``resume``
    finishes an interrupted ingest of the same source into them (see
    :func:`sample_uuid`).
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
    )


# Shared by the ingest functions below and ingest_folder: creating or resuming
# the tables, writing in chunks, and the split file from the dataset's own
# split tags or from val_frac.

MetadataRow = tuple[bytes, int | None, str | None, str | None, str | None]


class SampleWriter:
    """Writes samples and their metadata rows in chunks, counting what it wrote.

    Each chunk's data rows are written before its metadata rows, so that a
    metadata row is there only if its sample is: after an interruption the
    metadata table says which samples are written (``resume`` trusts it)."""

    def __init__(
        self, store: _native.Store, table: str, metadata_table: str, chunk: int = 64
    ) -> None:
        self.store = store
        self.table = table
        self.metadata_table = metadata_table
        self.chunk = chunk
        self.ids: list[bytes] = []
        self.tags: list[str | None] = []
        self._pending: list[tuple[bytes, Label, bytes, MetadataRow]] = []

    def add(
        self,
        label: Label,
        data: bytes,
        *,
        label_id: int | None = None,
        label_name: str | None = None,
        path: str | None = None,
        tag: str | None = None,
        uid: bytes | None = None,
    ) -> bytes:
        """Queues a sample (its id ``uid``, a random one if None) and returns its id."""
        uid = uid if uid is not None else uuidlib.uuid4().bytes
        self.ids.append(uid)
        self.tags.append(tag)
        self._pending.append((uid, label, data, (uid, label_id, label_name, path, tag)))
        if len(self._pending) >= self.chunk:
            self.flush()
        return uid

    def keep(self, uid: bytes, tag: str | None) -> None:
        """Counts a sample that is in the tables already (written by an earlier run)."""
        self.ids.append(uid)
        self.tags.append(tag)

    def flush(self) -> None:
        if not self._pending:
            return
        p = self._pending
        self.store.put_samples(
            self.table, b"".join(x[0] for x in p), [x[1] for x in p], [x[2] for x in p]
        )
        self.store.put_metadata(self.metadata_table, [x[3] for x in p])
        self._pending = []

    def uuid_array(self) -> np.ndarray:
        return np.frombuffer(b"".join(self.ids), dtype=np.uint8).reshape(-1, 16)


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
    skipped_noun: str = "files",
) -> IngestReport:
    """Writes ``samples`` (what a source lists, not yet read) into ``table``,
    skipping those an earlier run wrote when ``resume``, then the split file."""
    seen: dict[str, int] = {}
    ids = []
    for s in samples:
        ids.append(sample_uuid(table, s.path, seen.get(s.path, 0)))
        seen[s.path] = seen.get(s.path, 0) + 1
    # The source is scanned and checked before the store is touched.
    st = open_for_writing(store)
    metadata_table = f"{table}_metadata"
    done = _prepare_tables(st, table, metadata_table, label_type, overwrite, resume)
    if done:
        _check_resumable(done, samples, ids, table, metadata_table, src)
    report = IngestReport(table=table, metadata_table=metadata_table, skipped_noun=skipped_noun)
    w = SampleWriter(st, table, metadata_table, chunk)
    for s, uid in progress_bar(list(zip(samples, ids, strict=True)), f"ingest {table}", progress):
        if uid in done:
            w.keep(uid, s.tag)
            report.resumed += 1
        else:
            got = s.read()
            if isinstance(got, str):
                report.skipped.append((s.where or s.path, got))
                continue
            label, data = got
            w.add(
                label,
                data,
                label_id=s.label_id,
                label_name=s.label_name,
                path=s.path,
                tag=s.tag,
                uid=uid,
            )
        for c in s.counts:
            report.per_class[c] = report.per_class.get(c, 0) + 1
    w.flush()
    return _finish(report, w, st, label_type, classes, src, val_frac, seed, split_file)


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
) -> IngestReport:
    """Ingests a segmentation dataset laid out as ADE20k is
    (``SRC/images/{training,validation}/*.jpg`` and the masks,
    ``SRC/annotations/{training,validation}/*.png``, one class index a pixel):
    the image is the data, the mask file's bytes the label blob. ``classes`` (the
    name of each mask value) goes into the split file.

    Images without a mask, and images or masks that do not decode, are skipped
    and listed in the report; the split tags of the folders are kept.
    ``overwrite`` and ``resume`` as for :func:`ingest_folder`.
    """
    _check_args(val_frac, chunk, overwrite, resume)
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
    )


def _read_segmentation_pair(img: Path, mask: Path | None, src: Path) -> tuple[Label, bytes] | str:
    if mask is None:
        return "no mask of the same name"
    data, label = img.read_bytes(), mask.read_bytes()
    why = check_image(data)
    if why is None and (mask_why := check_image(label)) is not None:
        why = f"mask {mask.relative_to(src).as_posix()}: {mask_why}"
    return why or (label, data)


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
) -> IngestReport:
    """Ingests a multilabel dataset laid out as Corel-5k is (``SRC/images/*.jpeg``
    and ``SRC/train.json``, ``SRC/test.json`` label files): the label blob is the
    multi-hot vector over the sorted classes, serialized with ``np.save``. The
    metadata keeps the label names (``|``-separated), the split file the classes
    and the label files' tags as splits. Images the lists name but that are
    missing or do not decode are skipped and listed in the report.
    ``overwrite`` and ``resume`` as for :func:`ingest_folder`.
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
    )


def _read_multilabel_image(path: Path, label: bytes) -> tuple[Label, bytes] | str:
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"cannot read ({type(e).__name__}: {e.strerror or e})"
    return check_image(data) or (label, data)


def _finish(
    report: IngestReport,
    w: SampleWriter,
    st: _native.Store,
    label_type: LabelType,
    classes: Sequence[str],
    src: Path,
    val_frac: float,
    seed: int,
    split_file: str | os.PathLike[str] | None,
) -> IngestReport:
    report.written = len(w.ids)
    report.source = str(src)
    if not w.ids:
        raise InvalidArgumentError(f"no decodable image in {src}")
    sf = SplitFile(
        w.table,
        label_type,
        classes=classes,
        store=st.url,
        metadata_table=w.metadata_table,
        info={"source": str(src), "seed": seed, "val_frac": val_frac},
    )
    add_splits(sf, w.uuid_array(), w.tags, val_frac, seed)
    if split_file is not None:
        sf.save(split_file)
    report.split_file = sf
    return report
