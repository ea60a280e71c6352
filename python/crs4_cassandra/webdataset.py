"""WebDataset shards in and out: ingest tar shards into a store, export a split
or a table of a store as tar shards that ``webdataset.WebDataset`` reads.

A shard is a tar file whose members are grouped into samples by key, as
WebDataset groups them: a member's key is its path up to the first dot of its
file name, the rest its extension (``train/000017.seg.png``: key
``train/000017``, extension ``seg.png``); consecutive members of one key are
one sample.

Ingest reads the shards twice, member after member and never a whole shard at
once: first the tar headers and the small label members (``.cls``,
``.json``), so that the source is checked and listed before the store is
touched, then the image (and mask) members as the samples are written. A
sample's id is ``sample_uuid(table, path)``, ``path`` being the ``.json``'s
``"path"`` when it has one, else the sample key: running an ingest again
(``resume``) gives every sample the id it had, and shards exported from a
table, ingested into a table of the same name, give every sample the id it
had there (the export writes the sample's path into its ``.json``).

Export reads the samples through the prefetching reader, in the order of the
split (or of the metadata table), batch after batch, and writes
``<key>.<ext>`` members: the data (``jpg``, ``png``... from its magic bytes),
``<key>.cls`` (int labels) or ``<key>.<label ext>`` (blob labels) and
``<key>.json`` (id, path, label_name, split) where there is a metadata table.
The key is the sample's uuid in hex. Tar headers are fixed (mtime 0, uid and
gid 0, mode 0644), so the same samples give the same bytes.
"""

from __future__ import annotations

import functools
import glob
import io
import json
import os
import re
import sys
import tarfile
import uuid as uuidlib
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _native
from .errors import InvalidArgumentError, TableNotFoundError
from .ingest import (
    IngestReport,
    Label,
    Transform,
    _check_args,
    _ingest,
    _Sample,
    check_image,
)
from .split_builder import _classes, detect_label_type, split_name
from .split_file import LabelType, SplitFile

# Member extensions taken for the image, in the order a sample's members are
# searched when no --image-ext is given (the first one present wins).
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
# The members the first pass reads for the labels and the metadata.
LABEL_EXTS = ("cls", "json")
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_SHARD_SUFFIX = re.compile(r"\.(tar|tar\.gz|tgz|tar\.bz2|tar\.xz)$", re.I)


# ---- shard lists ---------------------------------------------------------


def expand_shards(patterns: str | Sequence[str]) -> list[Path]:
    """The shard files ``patterns`` name: brace patterns
    (``train-{000000..000099}.tar``, expanded as WebDataset expands them),
    globs (``train-*.tar``), folders (their ``*.tar`` files) or files. A name
    that matches no file is an error naming it."""
    try:
        from braceexpand import braceexpand
    except ImportError:
        raise ImportError(
            "shard patterns need the braceexpand package: pip install 'crs4_cassandra[webdataset]'"
        ) from None

    if isinstance(patterns, (str, os.PathLike)):
        patterns = [os.fspath(patterns)]
    out: list[Path] = []
    for pattern in patterns:
        for name in braceexpand(os.fspath(pattern)):
            if glob.has_magic(name):
                found = sorted(glob.glob(name))
                if not found:
                    raise FileNotFoundError(f"no shard file matches {name!r}")
                out += [Path(f) for f in found]
            elif os.path.isdir(name):
                found = sorted(glob.glob(os.path.join(glob.escape(name), "*.tar")))
                if not found:
                    raise FileNotFoundError(f"shard folder {name} holds no .tar file")
                out += [Path(f) for f in found]
            elif not os.path.exists(name):
                raise FileNotFoundError(f"shard file {name} does not exist")
            else:
                out.append(Path(name))
    if not out:
        raise InvalidArgumentError(f"no shard file in {list(patterns)}")
    return out


# ---- reading shards --------------------------------------------------------


@dataclass
class ShardSample:
    """One sample of a shard: its key, its members by extension (the bytes of
    those read, None for the others) and what is wrong with its members."""

    shard: Path
    index: int
    key: str
    members: dict[str, bytes | None]
    problems: list[str] = field(default_factory=list)


def iter_shard(
    shard: Path, read: Callable[[str], bool] = lambda ext: True
) -> Generator[ShardSample, None, None]:
    """The samples of ``shard`` in order, the members whose extension ``read``
    accepts read. A file that is not a readable tar is an error naming it."""
    try:
        tf = tarfile.open(shard, "r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InvalidArgumentError(f"shard {shard} is not a readable tar file: {e}") from None
    current: ShardSample | None = None
    index = 0
    with tf:
        try:
            for m in tf:
                if not m.isfile():
                    continue
                name = m.name[2:] if m.name.startswith("./") else m.name
                match = _KEY_EXT.match(name)
                if match is None:
                    continue  # no extension: not a member of a sample (as in WebDataset)
                key, ext = match.group(1), match.group(2).lower()
                if current is None or current.key != key:
                    if current is not None:
                        yield current
                        index += 1
                    current = ShardSample(shard, index, key, {})
                if ext in current.members:
                    current.problems.append(f"two members {key}.{ext}")
                    continue
                data = None
                if read(ext):
                    f = tf.extractfile(m)
                    assert f is not None
                    data = f.read()
                current.members[ext] = data
        except (tarfile.TarError, OSError, EOFError) as e:
            where = f" after key {current.key!r}" if current is not None else ""
            raise InvalidArgumentError(
                f"shard {shard} is broken{where}: {type(e).__name__}: {e}"
            ) from None
    if current is not None:
        yield current


class _ShardCursor:
    """Reads the samples of the shards in order, on demand: ``get(shard,
    index)`` goes on from the last sample it gave (a shard is opened again
    only when asked for an earlier sample)."""

    def __init__(self, read: Callable[[str], bool]) -> None:
        self.read = read
        self.shard: Path | None = None
        self.it: Generator[ShardSample, None, None] | None = None
        self.last = -1

    def close(self) -> None:
        if self.it is not None:
            self.it.close()
        self.shard, self.it, self.last = None, None, -1

    def get(self, shard: Path, index: int, key: str) -> ShardSample:
        if self.shard != shard or index <= self.last or self.it is None:
            self.shard, self.it, self.last = shard, iter_shard(shard, self.read), -1
        for s in self.it:
            self.last = s.index
            if s.index == index:
                if s.key != key:
                    break
                return s
        raise InvalidArgumentError(
            f"shard {shard} changed while it was ingested: sample {index} is no longer {key!r}"
        )


# ---- samples to rows -------------------------------------------------------


@dataclass(frozen=True)
class WebDatasetOptions:
    """How the members of a sample make a row.

    - ``label_type``: "int" (from the ``.cls`` member, else the ``.json``'s
      ``label_key`` field), "blob" (the bytes of the ``mask_ext`` member) or
      "none".
    - ``image_ext``: the image member's extensions, in order of preference
      (default: the first member with one of ``IMAGE_EXTS``).
    - ``name_key``: the ``.json`` field with the label's name; ``classes``:
      the name of each int label, where the ``.json`` has none.
    - ``split``: every sample's split tag (default: the ``.json``'s
      ``"split"``, else the shard's name, e.g. ``train-000003.tar``: train).
    """

    label_type: LabelType = "int"
    image_ext: tuple[str, ...] = ()
    label_key: str = "label"
    name_key: str = "label_name"
    mask_ext: str | None = None
    classes: tuple[str, ...] = ()
    split: str | None = None

    def __post_init__(self) -> None:
        if self.label_type not in ("int", "blob", "none"):
            raise InvalidArgumentError(
                f"label_type must be int, blob or none, got {self.label_type!r}"
            )
        if self.label_type == "blob" and not self.mask_ext:
            raise InvalidArgumentError(
                "blob labels are read from a member: give its extension (mask_ext, --mask-ext)"
            )
        if self.mask_ext and self.label_type != "blob":
            raise InvalidArgumentError(
                f"mask_ext {self.mask_ext!r} makes blob labels, but label_type is "
                f"{self.label_type!r}"
            )

    def image_of(self, exts: Sequence[str]) -> str | None:
        """The extension of a sample's image member, or None."""
        if self.image_ext:
            return next((e for e in self.image_ext if e in exts), None)
        return next((e for e in exts if e in IMAGE_EXTS and e != self.mask_ext), None)

    def data_exts(self) -> Callable[[str], bool]:
        """Which members the second pass reads: images and masks."""
        wanted = set(self.image_ext or IMAGE_EXTS) | {self.mask_ext}
        return wanted.__contains__


def split_of_shard(shard: Path) -> str | None:
    """The split a shard's name or folder says: ``train-000003.tar``,
    ``val_0.tar`` or ``train/000003.tar``; None for other names."""
    stem = _SHARD_SUFFIX.sub("", shard.name)
    for name in (re.sub(r"[-_.]*\d+$", "", stem), shard.parent.name):
        if name and split_name(name) in ("train", "val", "test"):
            return name
    return None


@dataclass(slots=True)
class SampleInfo:
    """What the first pass knows of a sample: its metadata and image member,
    or why it cannot be ingested."""

    path: str
    label: Label
    label_name: str | None
    tag: str | None
    image: str | None
    problem: str | None


def sample_info(s: ShardSample, opts: WebDatasetOptions) -> SampleInfo:
    """A sample's metadata from its ``.cls`` and ``.json`` members."""
    problems = list(s.problems)
    meta: dict[str, Any] = {}
    if s.members.get("json") is not None:
        try:
            doc = json.loads(s.members["json"] or b"")
            if not isinstance(doc, dict):
                raise ValueError(f"a JSON {type(doc).__name__}, not an object")
            meta = doc
        except ValueError as e:
            problems.append(f".json is not a JSON object ({e})")
    path = meta.get("path") if isinstance(meta.get("path"), str) else None
    tag = opts.split
    if tag is None:
        tag = meta.get("split") if isinstance(meta.get("split"), str) else split_of_shard(s.shard)
    label: Label = None
    if opts.label_type == "int":
        if s.members.get("cls") is not None:
            text = (s.members["cls"] or b"").decode("utf-8", "replace").strip()
            try:
                label = int(text)
            except ValueError:
                problems.append(f".cls is not an integer ({text[:40]!r})")
        elif opts.label_key in meta:
            v = meta[opts.label_key]
            if isinstance(v, int) and not isinstance(v, bool):
                label = v
            elif isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
                label = int(v)
            else:
                problems.append(f".json {opts.label_key!r} is not an integer ({v!r})")
        else:
            problems.append(f"no label: neither a .cls member nor {opts.label_key!r} in a .json")
    elif opts.label_type == "blob" and opts.mask_ext not in s.members:
        problems.append(f"no .{opts.mask_ext} member (the label)")
    name = meta.get(opts.name_key)
    label_name = name if isinstance(name, str) else None
    if label_name is None and isinstance(label, int) and 0 <= label < len(opts.classes):
        label_name = opts.classes[label]
    image = opts.image_of(list(s.members))
    if image is None:
        want = ", ".join(opts.image_ext or IMAGE_EXTS)
        problems.append(f"no image member ({want}) among {sorted(s.members)}")
    return SampleInfo(path or s.key, label, label_name, tag, image, "; ".join(problems) or None)


def sample_row(
    s: ShardSample, opts: WebDatasetOptions, validate: bool = True
) -> dict[str, Any] | str:
    """The row a sample (its members read) makes: data, label and metadata by
    the keys ingest writes (``key``, ``data``, ``label``, ``label_name``,
    ``path``, ``split``), or why it cannot be ingested."""
    info = sample_info(s, opts)
    got = _read_data(s, info, opts, validate)
    if isinstance(got, str):
        return got
    label, data = got
    return {
        "key": info.path,
        "data": data,
        "label": label,
        "label_name": info.label_name,
        "path": info.path,
        "split": info.tag,
    }


def _read_data(
    s: ShardSample, info: SampleInfo, opts: WebDatasetOptions, validate: bool = True
) -> tuple[Label, bytes] | str:
    if info.problem is not None:
        return info.problem
    assert info.image is not None
    data = s.members.get(info.image)
    if data is None:
        return f"member {s.key}.{info.image} was not read"
    why = check_image(data) if validate else None
    if why is not None:
        return f".{info.image}: {why}"
    label = info.label
    if opts.label_type == "blob":
        assert opts.mask_ext is not None
        label = s.members.get(opts.mask_ext) or b""
        if opts.mask_ext.rsplit(".", 1)[-1] in IMAGE_EXTS and validate:
            mask_why = check_image(label)
            if mask_why is not None:
                return f"mask .{opts.mask_ext}: {mask_why}"
        elif not label:
            return f".{opts.mask_ext} is empty"
    return label, data


def _read_later(
    cursor: _ShardCursor,
    shard: Path,
    index: int,
    key: str,
    info: SampleInfo,
    opts: WebDatasetOptions,
) -> tuple[Label, bytes] | str:
    if info.problem is not None:
        return info.problem
    return _read_data(cursor.get(shard, index, key), info, opts)


# ---- ingest ------------------------------------------------------------------


def ingest_webdataset(
    shards: str | Sequence[str],
    store: str | _native.Store,
    table: str,
    *,
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
    chunk: int = 64,
    progress: bool = True,
    transform: Transform | None = None,
    window: int | None = None,
) -> IngestReport:
    """Ingests WebDataset shards (brace patterns, globs, folders or files, see
    :func:`expand_shards`) into ``table`` of ``store``, metadata into
    ``<table>_metadata``, as ``ingest_folder`` does: the same tables, split
    file (the samples' split tags where every one has one, else a seeded
    ``val_frac`` cut), ``overwrite`` and ``resume``.

    Labels and images as :class:`WebDatasetOptions` says (``label_type``
    defaults to "blob" with a ``mask_ext``, else "int"). Samples without an
    image or a label, or whose image (or mask) does not decode, are skipped
    and listed in the report with their shard and key; a missing or broken
    shard is an error naming it. The split file's classes are ``classes``, else
    the label names the samples give. ``transform`` (a
    :class:`~crs4_cassandra.ingest.Transform`) applies to the images, not to
    mask labels: with ``mask_ext`` only re-encoding is taken (a resize or crop
    would leave the masks behind).
    """
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
    try:
        return _ingest(
            Path(scan.source),
            store,
            table,
            scan.opts.label_type,
            scan.samples,
            scan.classes,
            val_frac=val_frac,
            seed=seed,
            split_file=split_file,
            overwrite=overwrite,
            resume=resume,
            chunk=chunk,
            progress=progress,
            transform=transform,
            window=window,
            skipped_noun="samples",
        )
    finally:
        scan.cursor.close()


@dataclass
class ShardScan:
    """What the first pass over the shards (their label and metadata members
    only) finds: the options, the shards, every sample in order with its
    metadata (and how to read its data later), the class names, and the
    samples Ray Data's reader would refuse (a key whose members are not
    contiguous, a member twice). ``problems`` says, for each sample, why its
    metadata already rules it out (None: it is read)."""

    opts: WebDatasetOptions
    paths: list[Path]
    source: str
    samples: list[_Sample]
    keys: list[tuple[Path, str]]
    classes: list[str]
    problems: list[str | None]
    cursor: _ShardCursor
    irregular: list[str]


def scan_shards(
    shards: str | Sequence[str],
    *,
    label_type: LabelType | None = None,
    image_ext: Sequence[str] = (),
    label_key: str = "label",
    name_key: str = "label_name",
    mask_ext: str | None = None,
    classes: Sequence[str] = (),
    split: str | None = None,
    transform: Transform | None = None,
    progress: bool = True,
) -> ShardScan:
    """The first pass of :func:`ingest_webdataset` (its arguments): the
    options checked, the shards listed, each sample's metadata read."""
    label_type = label_type or ("blob" if mask_ext else "int")
    if mask_ext and transform is not None and transform.changes_geometry():
        raise InvalidArgumentError(
            f"resize_shorter and center_crop (--resize-shorter, --center-crop) would change "
            f"the images of {shards!r} but not their {mask_ext} masks; only jpeg_quality and "
            "to_jpeg are taken with mask labels"
        )
    opts = WebDatasetOptions(
        label_type=label_type,
        image_ext=tuple(e.lower().lstrip(".") for e in image_ext),
        label_key=label_key,
        name_key=name_key,
        mask_ext=mask_ext.lower().lstrip(".") if mask_ext else None,
        classes=tuple(classes),
        split=split,
    )
    paths = expand_shards(shards)
    source = shards if isinstance(shards, str) else " ".join(map(str, shards))
    cursor = _ShardCursor(opts.data_exts())
    samples: list[_Sample] = []
    keys: list[tuple[Path, str]] = []
    problems: list[str | None] = []
    irregular: list[str] = []
    rows: list[tuple[bytes, Label, str | None, str | None, str | None]] = []
    for shard in _bar(paths, "scan shards", "shard", progress and len(paths) > 1):
        seen: set[str] = set()
        for s in iter_shard(shard, LABEL_EXTS.__contains__):
            if s.key in seen or s.problems:
                irregular.append(f"{shard}, key {s.key}")
            seen.add(s.key)
            info = sample_info(s, opts)
            label_id = info.label if isinstance(info.label, int) else None
            samples.append(
                _Sample(
                    info.path,
                    label_id,
                    info.label_name,
                    info.tag,
                    functools.partial(_read_later, cursor, shard, s.index, s.key, info, opts),
                    (info.label_name or str(label_id),) if label_id is not None else (),
                    where=f"{shard}, key {s.key}",
                )
            )
            keys.append((shard, s.key))
            problems.append(info.problem)
            if info.problem is None:
                rows.append((b"", label_id, info.label_name, info.path, info.tag))
    names = list(classes) or _classes(rows, label_type)
    return ShardScan(opts, paths, source, samples, keys, names, problems, cursor, irregular)


def _bar(items: Sequence[Any], desc: str, unit: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit, disable=not progress, file=sys.stderr)


# ---- export ------------------------------------------------------------------


_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str | int) -> int:
    """Bytes from ``"1GB"`` (10^9), ``"500MB"``, ``"2GiB"`` (2^31), ``"1.5G"``
    or a plain number of bytes."""
    if isinstance(text, int):
        n = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", text)
        if m is None or m.group(2).lower() not in _UNITS:
            raise InvalidArgumentError(
                f"size {text!r} is not a size: give bytes or a number with KB, MB, GB, TB "
                "(powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
            )
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise InvalidArgumentError(f"size {text!r} must be positive")
    return n


_DIRECTIVE = re.compile(r"%(0?\d*)d")


def _check_pattern(pattern: str) -> None:
    rest = pattern.replace("%%", "")
    if len(_DIRECTIVE.findall(rest)) != 1 or "%" in _DIRECTIVE.sub("", rest):
        raise InvalidArgumentError(
            f"output pattern {pattern!r} must hold one shard number directive, "
            "e.g. out/train-%06d.tar"
        )


def brace_pattern(pattern: str, count: int) -> str:
    """The brace pattern of shards 0..count-1 of a %d ``pattern``, as
    WebDataset and ``ingest webdataset`` take it."""
    if count == 1:
        return pattern % 0
    m = _DIRECTIVE.search(pattern.replace("%%", "\0\0"))
    assert m is not None
    width = int(m.group(1) or 0) if m.group(1).startswith("0") else 0
    span = "{" + f"{0:0{width}d}..{count - 1:0{width}d}" + "}"
    return pattern[: m.start()].replace("%%", "%") + span + pattern[m.end() :].replace("%%", "%")


def image_ext(data: bytes) -> str:
    """The file extension of an encoded image, by its magic bytes ("bin" when
    it is none of JPEG, PNG, WebP, GIF, BMP, TIFF, or an .npy array)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:6] == b"\x93NUMPY":
        return "npy"
    return "bin"


@dataclass
class ExportReport:
    pattern: str
    samples: int = 0
    bytes: int = 0
    shards: list[str] = field(default_factory=list)

    @property
    def urls(self) -> str:
        """The shards written, as one brace pattern."""
        return brace_pattern(self.pattern, len(self.shards))

    def summary(self) -> str:
        return (
            f"wrote {self.samples} samples into {len(self.shards)} shards "
            f"({self.bytes:,} bytes): {self.urls}"
        )


class _ShardWriter:
    """Tar shards of a %d pattern, a new one before a sample would take the
    current one past ``max_bytes`` or ``max_samples``. Each shard is written
    under a temporary name and renamed when complete."""

    RECORD = tarfile.RECORDSIZE

    def __init__(self, pattern: str, max_bytes: int, max_samples: int | None) -> None:
        self.pattern = pattern
        self.max_bytes = max_bytes
        self.max_samples = max_samples
        self.tf: tarfile.TarFile | None = None
        self.path = ""
        self.offset = 0
        self.count = 0
        self.written: list[str] = []
        self.total_bytes = 0

    @staticmethod
    def member_size(n: int) -> int:
        return tarfile.BLOCKSIZE + -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE

    def closed_size(self, offset: int) -> int:
        """The size of a shard closed at ``offset``: two zero blocks, then
        padding to a whole record."""
        return -(-(offset + 2 * tarfile.BLOCKSIZE) // self.RECORD) * self.RECORD

    def add(self, members: list[tuple[str, bytes]]) -> None:
        size = sum(self.member_size(len(d)) for _, d in members)
        full = self.max_samples is not None and self.count >= self.max_samples
        if self.tf is not None and (full or self.closed_size(self.offset + size) > self.max_bytes):
            self.close()
        if self.tf is None:
            self._open()
        assert self.tf is not None
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            self.tf.addfile(ti, io.BytesIO(data))
        self.offset = self.tf.offset
        self.count += 1

    def _open(self) -> None:
        self.path = self.pattern % len(self.written)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.tf = tarfile.open(self.path + ".partial", "w", format=tarfile.PAX_FORMAT)
        self.offset = self.count = 0

    def close(self) -> None:
        if self.tf is None:
            return
        self.tf.close()
        self.tf = None
        os.replace(self.path + ".partial", self.path)
        self.total_bytes += os.path.getsize(self.path)
        self.written.append(self.path)

    def abort(self) -> None:
        if self.tf is not None:
            self.tf.close()
            self.tf = None
            Path(self.path + ".partial").unlink(missing_ok=True)


def _existing_shards(pattern: str) -> list[str]:
    """Files that a %d ``pattern`` names, whatever their number."""
    head = pattern % 0
    folder = os.path.dirname(head) or "."
    if not os.path.isdir(folder):
        return []
    rx = re.compile(
        "".join(
            r"\d+" if _DIRECTIVE.fullmatch(part) else re.escape(part.replace("%%", "%"))
            for part in re.split(r"(%0?\d*d)", os.path.basename(pattern))
        )
    )
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if rx.fullmatch(f))


def export_webdataset(
    store: str | _native.Store,
    pattern: str,
    *,
    split_file: str | os.PathLike[str] | SplitFile | None = None,
    split: str | None = None,
    table: str | None = None,
    label_type: LabelType | None = None,
    metadata_table: str | None = None,
    shard_size: int | str = "1GB",
    samples_per_shard: int | None = None,
    max_samples: int | None = None,
    label_ext: str | None = None,
    batch_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
) -> ExportReport:
    """Writes the samples of ``split`` of ``split_file`` (or, without a split
    file, every sample of ``table`` in its metadata table's order) as
    WebDataset shards named by ``pattern`` (``out/train-%06d.tar``), a new
    shard before one would pass ``shard_size`` (or hold more than
    ``samples_per_shard``); ``max_samples`` stops after so many samples.

    Blob labels are written as ``<key>.<label_ext>`` (default ``label.png``,
    ``label.npy``..., by their magic bytes). Existing shards of the pattern
    are an error unless ``overwrite``, which also removes those of the pattern
    this export does not write again.
    """
    _check_pattern(pattern)
    max_bytes = parse_size(shard_size)
    if samples_per_shard is not None and samples_per_shard < 1:
        raise InvalidArgumentError(f"samples_per_shard must be 1 or more, got {samples_per_shard}")
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be 1 or more, got {batch_size}")
    st = _native.open_store(store) if isinstance(store, str) else store
    if split_file is not None:
        sf = split_file if isinstance(split_file, SplitFile) else SplitFile.load(split_file)
        if split is None:
            raise InvalidArgumentError(f"name the split of {split_file} to export: {sf.names()}")
        uuids = sf.uuids(split)
        table = table or sf.table
        label_type = label_type or sf.label_type
        metadata_table = metadata_table or sf.metadata_table or f"{table}_metadata"
        meta = _metadata(st, metadata_table)
    else:
        if not table:
            raise InvalidArgumentError("give a split file and a split, or a table")
        metadata_table = metadata_table or f"{table}_metadata"
        meta = _metadata(st, metadata_table)
        if meta is None:
            raise TableNotFoundError(
                f"table {table!r} of {st.url} has no metadata table {metadata_table!r} "
                "listing its samples: export a split of a split file instead"
            )
        uuids = np.frombuffer(b"".join(meta), dtype=np.uint8).reshape(-1, 16)
        label_type = label_type or detect_label_type(st, table)
    st.check_table(table, label_type)
    if max_samples is not None:
        uuids = uuids[:max_samples]
    if len(uuids) == 0:
        raise InvalidArgumentError(f"no samples to export from {table!r}")
    existing = _existing_shards(pattern)
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} exists ({len(existing)} shards of {pattern!r}): "
            "pass overwrite=True (--overwrite) to replace them"
        )
    cfg = _native.ReaderConfig(
        table,
        np.ascontiguousarray(uuids).tobytes(),
        batch_size,
        label_type=label_type,
        shuffle=False,
        ordered=True,
        rank=0,
        world_size=1,
    )
    reader = _native.Reader(st, cfg)
    out = _ShardWriter(pattern, max_bytes, samples_per_shard)
    report = ExportReport(pattern)
    try:
        from tqdm import tqdm

        with tqdm(
            total=len(uuids), desc=f"export {table}", unit="img", disable=not progress,
            file=sys.stderr,
        ) as bar:  # fmt: skip
            for nb in reader:
                n = 0
                for members in _batch_members(nb, label_type, label_ext, meta):
                    out.add(members)
                    n += 1
                report.samples += n
                bar.update(n)
        out.close()
    except BaseException:
        out.abort()
        raise
    finally:
        reader.close()
    report.shards, report.bytes = out.written, out.total_bytes
    if overwrite:
        for stale in set(existing) - set(out.written):
            os.unlink(stale)
    return report


def _metadata(
    st: _native.Store, metadata_table: str
) -> dict[bytes, tuple[int | None, str | None, str | None, str | None]] | None:
    try:
        rows = st.scan_metadata(metadata_table)
    except TableNotFoundError:
        return None
    return {bytes(r[0]): (r[1], r[2], r[3], r[4]) for r in rows}


def _batch_members(
    nb: _native.NativeBatch,
    label_type: LabelType,
    label_ext: str | None,
    meta: dict[bytes, tuple[int | None, str | None, str | None, str | None]] | None,
) -> Iterator[list[tuple[str, bytes]]]:
    data = np.from_dlpack(nb.data())
    offsets = np.from_dlpack(nb.offsets()).tolist()
    ids = np.from_dlpack(nb.ids()).tobytes()
    pads = np.from_dlpack(nb.is_pad()).tolist()
    labels = nb.labels()
    lab = None if labels is None else np.from_dlpack(labels)
    lo_t = nb.label_offsets()
    lo = None if lo_t is None else np.from_dlpack(lo_t).tolist()
    for i in range(len(offsets) - 1):
        if pads[i]:
            continue
        uid = ids[16 * i : 16 * i + 16]
        key = uid.hex()
        blob = data[offsets[i] : offsets[i + 1]].tobytes()
        members = [(f"{key}.{image_ext(blob)}", blob)]
        if label_type == "int" and lab is not None:
            members.append((f"{key}.cls", str(int(lab[i])).encode()))
        elif label_type == "blob" and lab is not None and lo is not None:
            lb = lab[lo[i] : lo[i + 1]].tobytes()
            members.append((f"{key}.{label_ext or 'label.' + image_ext(lb)}", lb))
        if meta is not None:
            m = meta.get(uid)
            doc: dict[str, Any] = {"id": str(uuidlib.UUID(bytes=uid))}
            if m is not None:
                doc.update(label_name=m[1], path=m[2], split=m[3])
            members.append((f"{key}.json", json.dumps(doc, sort_keys=True).encode()))
        yield members
