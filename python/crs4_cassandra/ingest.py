"""Ingest datasets into a store: the data table (id, label, data), the metadata
table (id, label, label_name, path, split) and a split file."""

from __future__ import annotations

import os
import sys
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import _native
from .errors import InvalidArgumentError
from .splits import SplitFile

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
        lines = [
            f"wrote {self.written} samples into {self.table!r} "
            f"({len(self.per_class)} classes), metadata into {self.metadata_table!r}"
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} files that are not decodable images:")
            lines += [f"  {path}: {why}" for path, why in self.skipped]
        if self.split_file is not None:
            sizes = ", ".join(
                f"{n}={len(self.split_file.uuids(n))}" for n in self.split_file.names()
            )
            lines.append(f"split: {sizes}")
        return "\n".join(lines)


def check_image(data: bytes) -> str | None:
    """None if ``data`` decodes as an image, else the reason it does not."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            # Decoding at 1/8 scale (JPEG DCT scaling) still reads the whole
            # entropy-coded stream, at a fraction of the cost of a full decode.
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
        return None
    except Exception as e:  # PIL raises many types for bad files
        return f"{type(e).__name__}: {e}"


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


def make_split(
    uuids: np.ndarray,
    fractions: Sequence[float],
    names: Sequence[str],
    seed: int,
) -> dict[str, np.ndarray]:
    """Shuffles ``uuids`` with ``seed`` and cuts them by ``fractions``."""
    total = float(sum(fractions))
    if total <= 0 or any(f < 0 for f in fractions):
        raise InvalidArgumentError(
            f"split ratios must be non-negative with a positive sum, got {fractions}"
        )
    perm = np.random.default_rng(seed).permutation(len(uuids))
    bounds = np.round(np.cumsum([0.0, *fractions]) / total * len(uuids)).astype(int)
    return {name: uuids[perm[bounds[i] : bounds[i + 1]]] for i, name in enumerate(names)}


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
    if not 0.0 <= val_frac < 1.0:
        raise InvalidArgumentError(f"val_frac must be in [0, 1), got {val_frac}")
    src_path = Path(src)
    scan = scan_image_folder(src_path)
    classes = scan.classes
    st = open_for_writing(store)
    metadata_table = f"{table}_metadata"
    st.create_tables(table, metadata_table, "int", overwrite=overwrite)
    report = IngestReport(table=table, metadata_table=metadata_table)
    ids: list[bytes] = []
    tags: list[str | None] = []
    pending: list[tuple[bytes, int, bytes, str, str | None]] = []

    def flush() -> None:
        if not pending:
            return
        st.put_samples(
            table,
            b"".join(p[0] for p in pending),
            [p[1] for p in pending],
            [p[2] for p in pending],
        )
        st.put_metadata(
            metadata_table,
            [(p[0], p[1], classes[p[1]], p[3], p[4]) for p in pending],
        )
        pending.clear()

    bar = tqdm(
        scan.files, desc=f"ingest {table}", unit="img", disable=not progress, file=sys.stderr
    )
    for path, label, tag in bar:
        data = path.read_bytes()
        why = check_image(data)
        rel = str(path.relative_to(src_path))
        if why is not None:
            report.skipped.append((rel, why))
            continue
        uid = uuidlib.uuid4().bytes
        ids.append(uid)
        tags.append(tag)
        pending.append((uid, label, data, rel, tag))
        report.per_class[classes[label]] = report.per_class.get(classes[label], 0) + 1
        if len(pending) >= chunk:
            flush()
    flush()
    report.written = len(ids)
    if not ids:
        raise InvalidArgumentError(f"no decodable image in {src_path}")

    sf = SplitFile(
        table,
        "int",
        classes=classes,
        store=st.url,
        metadata_table=metadata_table,
        info={"source": str(src_path), "seed": seed, "val_frac": val_frac},
    )
    arr = np.frombuffer(b"".join(ids), dtype=np.uint8).reshape(-1, 16)
    if scan.tagged:
        # The dataset's own split wins over val_frac.
        sf.info["split_from"] = "source tags"
        tag_arr = np.array(tags, dtype=object)
        for tag in sorted(set(tags), key=lambda t: SPLIT_TAGS.index(t.lower()) if t else 0):
            name = "val" if tag and tag.lower() in ("valid", "validation") else str(tag)
            sf.add(name, arr[tag_arr == tag])
    elif val_frac > 0:
        parts = make_split(arr, [1.0 - val_frac, val_frac], ["train", "val"], seed)
        for name, part in parts.items():
            sf.add(name, part)
    else:
        sf.add("train", arr)
    if split_file is not None:
        sf.save(split_file)
    report.split_file = sf
    return report
