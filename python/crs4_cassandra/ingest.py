"""Ingest datasets into a store: the data table (id, label, data), the metadata
table (id, label, label_name, path, split) and a split file."""

from __future__ import annotations

import os
import re
import sys
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import _native
from .errors import InvalidArgumentError
from .split_builder import MULTILABEL_SEP, add_splits, split_name
from .split_file import LabelType, SplitFile

_T = TypeVar("_T")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class IngestReport:
    table: str
    metadata_table: str
    written: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    split_file: SplitFile | None = None

    def summary(self) -> str:
        classes = f" ({len(self.per_class)} classes)" if self.per_class else ""
        lines = [
            f"wrote {self.written} samples into {self.table!r}{classes}, "
            f"metadata into {self.metadata_table!r}"
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} files that are not decodable images:")
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


def ingest_folder(
    src: str | os.PathLike[str],
    store: str | _native.Store,
    table: str,
    *,
    val_frac: float = 0.2,
    seed: int = 0,
    split_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    chunk: int = 64,
    progress: bool = True,
) -> IngestReport:
    """Ingests an ImageFolder layout (one sub-folder per class, optionally under
    train/ and val/ folders whose split is then kept) into ``table``
    of ``store`` with int labels; metadata goes to ``<table>_metadata``.

    Files that are not decodable images are skipped, counted and listed in the
    report. Refuses to replace existing tables unless ``overwrite``.
    """
    _check_val_frac(val_frac)
    src_path = Path(src)
    scan = scan_image_folder(src_path)
    classes = scan.classes
    st = open_for_writing(store)
    metadata_table = f"{table}_metadata"
    st.create_tables(table, metadata_table, "int", overwrite=overwrite)
    report = IngestReport(table=table, metadata_table=metadata_table)
    w = SampleWriter(st, table, metadata_table, chunk)
    for path, label, tag in progress_bar(scan.files, f"ingest {table}", progress):
        data = path.read_bytes()
        why = check_image(data)
        rel = str(path.relative_to(src_path))
        if why is not None:
            report.skipped.append((rel, why))
            continue
        w.add(label, data, label_id=label, label_name=classes[label], path=rel, tag=tag)
        report.per_class[classes[label]] = report.per_class.get(classes[label], 0) + 1
    w.flush()
    # The dataset's own split (train/ and val/ folders) wins over val_frac.
    return _finish(report, w, st, "int", classes, src_path, val_frac, seed, split_file)


# Shared by the ingest functions below and ingest_folder: writing in chunks,
# and the split file from the dataset's own split tags or from val_frac.

MetadataRow = tuple[bytes, int | None, str | None, str | None, str | None]


class SampleWriter:
    """Writes samples and their metadata rows in chunks, counting what it wrote."""

    def __init__(
        self, store: _native.Store, table: str, metadata_table: str, chunk: int = 64
    ) -> None:
        self.store = store
        self.table = table
        self.metadata_table = metadata_table
        self.chunk = chunk
        self.ids: list[bytes] = []
        self.tags: list[str | None] = []
        self._pending: list[tuple[bytes, int | bytes | None, bytes, MetadataRow]] = []

    def add(
        self,
        label: int | bytes | None,
        data: bytes,
        *,
        label_id: int | None = None,
        label_name: str | None = None,
        path: str | None = None,
        tag: str | None = None,
    ) -> bytes:
        uid = uuidlib.uuid4().bytes
        self.ids.append(uid)
        self.tags.append(tag)
        self._pending.append((uid, label, data, (uid, label_id, label_name, path, tag)))
        if len(self._pending) >= self.chunk:
            self.flush()
        return uid

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


def progress_bar(items: Sequence[_T], desc: str, progress: bool) -> Iterable[_T]:
    return tqdm(  # type: ignore[no-any-return]
        items, desc=desc, unit="img", disable=not progress, file=sys.stderr
    )


def _check_val_frac(val_frac: float) -> None:
    if not 0.0 <= val_frac < 1.0:
        raise InvalidArgumentError(f"val_frac must be in [0, 1), got {val_frac}")


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
    """
    _check_val_frac(val_frac)
    src_path = Path(src)
    triples = scan_segmentation_folder(src_path, images, annotations)
    st = open_for_writing(store)
    metadata_table = f"{table}_metadata"
    st.create_tables(table, metadata_table, "blob", overwrite=overwrite)
    report = IngestReport(table=table, metadata_table=metadata_table)
    w = SampleWriter(st, table, metadata_table, chunk)
    for img, mask, tag in progress_bar(triples, f"ingest {table}", progress):
        rel = str(img.relative_to(src_path))
        if mask is None:
            report.skipped.append((rel, "no mask of the same name"))
            continue
        data, label = img.read_bytes(), mask.read_bytes()
        why = check_image(data)
        if why is None and (mask_why := check_image(label)) is not None:
            why = f"mask {mask.relative_to(src_path)}: {mask_why}"
        if why is not None:
            report.skipped.append((rel, why))
            continue
        w.add(label, data, path=rel, tag=tag)
    w.flush()
    return _finish(report, w, st, "blob", classes, src_path, val_frac, seed, split_file)


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
    chunk: int = 64,
    progress: bool = True,
) -> IngestReport:
    """Ingests a multilabel dataset laid out as Corel-5k is (``SRC/images/*.jpeg``
    and ``SRC/train.json``, ``SRC/test.json`` label files): the label blob is the
    multi-hot vector over the sorted classes, serialized with ``np.save``. The
    metadata keeps the label names (``|``-separated), the split file the classes
    and the label files' tags as splits.
    """
    _check_val_frac(val_frac)
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
    st = open_for_writing(store)
    metadata_table = f"{table}_metadata"
    st.create_tables(table, metadata_table, "blob", overwrite=overwrite)
    report = IngestReport(table=table, metadata_table=metadata_table)
    w = SampleWriter(st, table, metadata_table, chunk)
    tagged = len(files) > 1
    for name, labels, tag in progress_bar(rows, f"ingest {table}", progress):
        path = src_path / images / name
        rel = str(path.relative_to(src_path))
        try:
            data = path.read_bytes()
        except OSError as e:
            report.skipped.append((rel, f"{type(e).__name__}: {e.strerror or e}"))
            continue
        why = check_image(data)
        if why is not None:
            report.skipped.append((rel, why))
            continue
        label = encode_multihot([index[x] for x in labels], len(classes))
        for x in labels:
            report.per_class[x] = report.per_class.get(x, 0) + 1
        w.add(
            label,
            data,
            label_name=MULTILABEL_SEP.join(labels),
            path=rel,
            tag=tag if tagged else None,
        )
    w.flush()
    return _finish(report, w, st, "blob", classes, src_path, val_frac, seed, split_file)


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
