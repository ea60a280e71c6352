"""N-dimensional arrays chunked over a store, read and written with numpy
indexing.

An array is cut into chunks of a fixed shape; each chunk is one value in the
store (a row of Cassandra, a key of the local store), compressed with zstd by
default. A selection reads or writes only the chunks it touches, many at once,
through the store's connection pool; chunks are decompressed in Rust without
the GIL and copied straight into the result::

    from crs4_cassandra import arrays, open_store

    store = open_store("local:/data/store", create=True)
    a = arrays.create(store, "slide-17", shape=(20000, 20000, 3), dtype="uint8",
                      chunks=(512, 512, 3))
    a[0:512, 0:1024] = tile          # read-modify-write of the chunks touched
    patch = a[1000:1256, 2000:2256]  # numpy array (256, 256, 3)

Indexing is numpy's basic indexing: integers, slices (with steps, negative
too), ``...`` and ``None``. A chunk never written reads as the fill value.
Writers of different chunks never interfere; two writers of parts of the same
chunk at once may lose one's update (each rewrites the whole chunk).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _native
from .dataset import open_store
from .errors import InvalidArgumentError

__all__ = ["Array", "create", "delete", "ingest", "names", "open"]


def _store(store: Any) -> _native.Store:
    return open_store(store) if isinstance(store, str) else store


def _dims(values: Iterable[int], what: str) -> list[int]:
    out = [int(v) for v in values]
    if any(v < 0 for v in out):
        raise ValueError(f"{what} must be >= 0, got {tuple(out)}")
    return out


def create(
    store: Any,
    name: str,
    shape: Sequence[int],
    dtype: Any,
    chunks: Sequence[int],
    *,
    compression: str | None = "zstd",
    level: int | None = None,
    fill_value: Any = 0,
    overwrite: bool = False,
) -> Array:
    """Creates array ``name`` in ``store`` (a store or its URL).

    ``chunks`` is the chunk shape (one entry per dimension, each > 0);
    ``compression`` is ``"zstd"`` (``level`` 1-22, default 3) or None;
    ``fill_value`` is what a chunk never written reads as. An existing array
    of that name raises :class:`~crs4_cassandra.errors.ArrayExistsError`
    unless ``overwrite`` (which deletes it first).
    """
    dt = np.dtype(dtype)
    if dt.kind not in "biufcmM" or dt.fields is not None:
        raise ValueError(f"array {name!r}: dtype {dt} is not a numeric dtype")
    shape = _dims(shape, "shape")
    chunks = _dims(chunks, "chunks")
    fill = np.array(fill_value, dtype=dt).tobytes()
    store = _store(store)
    native = _native.array_create(
        store,
        name,
        shape,
        chunks,
        dt.str,
        dt.itemsize,
        list(fill),
        compression=compression,
        level=level,
        overwrite=overwrite,
    )
    return Array(native, store)


def open(store: Any, name: str) -> Array:  # noqa: A001 (as h5py.File / zarr.open)
    """Opens array ``name`` of ``store``; a missing one raises
    :class:`~crs4_cassandra.errors.ArrayNotFoundError` naming the arrays there are."""
    store = _store(store)
    return Array(_native.array_open(store, name), store)


def delete(store: Any, name: str) -> None:
    """Deletes array ``name`` (its metadata, then its chunks)."""
    _native.array_delete(_store(store), name)


def names(store: Any) -> list[str]:
    """The names of the arrays in ``store``, sorted."""
    return list(_native.array_list(_store(store)))


def _normalize(
    key: Any, shape: tuple[int, ...]
) -> tuple[list[tuple[int, int, int]], tuple[int, ...]]:
    """numpy basic indexing of ``shape`` as one (start, step, count) per
    dimension, and the shape of the result (integer indices dropped, ``None``
    added)."""
    if not isinstance(key, tuple):
        key = (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    used = sum(1 for k in key if k is not None and k is not Ellipsis)
    if used > len(shape):
        raise IndexError(
            f"too many indices for array: array is {len(shape)}-dimensional, "
            f"but {used} were indexed"
        )
    expanded: list[Any] = []
    for k in key:
        if k is Ellipsis:
            expanded.extend([slice(None)] * (len(shape) - used))
        else:
            expanded.append(k)
    expanded.extend([slice(None)] * (len(shape) - sum(1 for k in expanded if k is not None)))
    sel: list[tuple[int, int, int]] = []
    out_shape: list[int] = []
    dim = 0
    for k in expanded:
        if k is None:
            out_shape.append(1)
            continue
        n = shape[dim]
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            count = len(range(start, stop, step))
            sel.append((start, step, count))
            out_shape.append(count)
        elif isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
            i = int(k)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis {dim} with size {n}")
            sel.append((i % n, 1, 1))
        else:
            raise IndexError(
                f"only integers, slices, ellipsis and None index an array, got {type(k).__name__}"
            )
        dim += 1
    return sel, tuple(out_shape)


class Array:
    """An array of a store (see :func:`create` and :func:`open`). Picklable:
    a copy in another process (a DataLoader worker) reopens it by name."""

    def __init__(self, native: _native.NativeArray, store: _native.Store) -> None:
        self._native = native
        self._store = store
        self.dtype = np.dtype(native.dtype)
        self.shape = tuple(int(n) for n in native.shape)
        self.chunks = tuple(int(n) for n in native.chunks)

    @property
    def name(self) -> str:
        return str(self._native.name)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def compression(self) -> str | None:
        return self._native.compression

    @property
    def fill_value(self) -> Any:
        return np.frombuffer(bytes(self._native.fill), dtype=self.dtype)[0]

    @property
    def num_chunks(self) -> int:
        """Chunks in the chunk grid (written or not)."""
        return int(self._native.num_chunks)

    @property
    def store_url(self) -> str:
        return self._native.store_url

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        sel, out_shape = _normalize(key, self.shape)
        out = np.empty([c for _, _, c in sel], dtype=self.dtype)
        if out.nbytes:
            self._native.read(sel, out.ctypes.data, out.nbytes)
        out = out.reshape(out_shape)
        return out[()] if out.ndim == 0 else out

    def __setitem__(self, key: Any, value: Any) -> None:
        sel, out_shape = _normalize(key, self.shape)
        data = np.broadcast_to(np.asarray(value, dtype=self.dtype), out_shape)
        data = np.ascontiguousarray(data.reshape([c for _, _, c in sel]))
        if data.nbytes:
            self._native.write(sel, data.ctypes.data, data.nbytes)

    def read(self) -> np.ndarray:
        """The whole array."""
        out: np.ndarray = self[...]
        return out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out: np.ndarray = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self._store, self.name))

    def __repr__(self) -> str:
        return (
            f"<crs4_cassandra.arrays.Array {self.name!r} shape={self.shape} dtype={self.dtype} "
            f"chunks={self.chunks} compression={self.compression!r} in {self.store_url}>"
        )


# Ingest

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_SLAB_BYTES = 256 << 20


def _source_arrays(src: Path) -> list[tuple[str, Any]]:
    """(name, array-like) of each array of ``src``: a .npy file, a zarr array
    or group, an image file, or a folder of images (named by their path
    relative to it, without suffix). Every image's header is read here, so a
    bad file stops the ingest before anything is written."""
    if src.is_file() and src.suffix == ".npy":
        return [(src.stem, np.load(src, mmap_mode="r"))]
    if src.is_dir() and any((src / m).exists() for m in ("zarr.json", ".zarray", ".zgroup")):
        import zarr

        opened = zarr.open(str(src), mode="r")
        if isinstance(opened, zarr.Array):
            return [(src.stem, opened)]
        found = [(f"{src.stem}/{k}", a) for k, a in opened.arrays()]
        if not found:
            raise InvalidArgumentError(f"zarr group {src} holds no arrays")
        return sorted(found, key=lambda t: t[0])
    if src.is_file() and src.suffix.lower() in IMAGE_SUFFIXES:
        return [(src.stem, _ImageFile(src))]
    if src.is_dir():
        files = sorted(
            p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise InvalidArgumentError(
                f"{src} holds no .npy, zarr array or image ({', '.join(IMAGE_SUFFIXES)})"
            )
        return [(p.relative_to(src).with_suffix("").as_posix(), _ImageFile(p)) for p in files]
    raise InvalidArgumentError(
        f"{src}: not a .npy file, a zarr array, an image or a folder of images"
    )


_PIL_MODES: dict[str, tuple[int, str]] = {
    # mode: (channels, dtype); other modes are converted to RGB
    "L": (1, "uint8"),
    "RGB": (3, "uint8"),
    "RGBA": (4, "uint8"),
    "I;16": (1, "<u2"),
    "I": (1, "<i4"),
    "F": (1, "<f4"),
}


class _ImageFile:
    """An image file seen as an array (H, W[, C]): its shape and dtype from
    the header, its pixels decoded when first sliced (TIFF with tifffile, any
    size and dtype; others with Pillow). Errors name the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pixels: np.ndarray | None = None
        try:
            if self._tiff:
                import tifffile

                with tifffile.TiffFile(path) as tif:
                    series = tif.series[0]
                    self.shape = tuple(int(n) for n in series.shape)
                    self.dtype = np.dtype(series.dtype)
            else:
                from PIL import Image

                Image.MAX_IMAGE_PIXELS = None  # our own files: no decompression-bomb limit
                with Image.open(path) as im:
                    channels, dtype = _PIL_MODES.get(im.mode, (3, "uint8"))
                    w, h = im.size
                    self.shape = (h, w) if channels == 1 else (h, w, channels)
                    self.dtype = np.dtype(dtype)
        except Exception as e:  # noqa: BLE001 (any decoder's error names the file)
            raise InvalidArgumentError(f"{path}: cannot read the image: {e}") from e

    @property
    def _tiff(self) -> bool:
        return self.path.suffix.lower() in (".tif", ".tiff")

    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            try:
                if self._tiff:
                    import tifffile

                    pixels = np.asarray(tifffile.imread(self.path))
                else:
                    from PIL import Image

                    with Image.open(self.path) as opened:
                        keep = opened.mode in _PIL_MODES
                        pixels = np.asarray(opened if keep else opened.convert("RGB"))
            except Exception as e:  # noqa: BLE001
                raise InvalidArgumentError(f"{self.path}: cannot read the image: {e}") from e
            if pixels.shape != self.shape:
                raise InvalidArgumentError(
                    f"{self.path}: decoded to {pixels.shape}, its header says {self.shape}"
                )
            self._pixels = pixels
        return self._pixels

    def __getitem__(self, key: Any) -> np.ndarray:
        out: np.ndarray = self.pixels()[key]
        return out

    def release(self) -> None:
        self._pixels = None


def _default_chunks(source: Any, shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    own = getattr(source, "chunks", None)
    if isinstance(own, tuple) and len(own) == len(shape):  # a zarr array's
        return tuple(int(c) for c in own)
    # 512 along the first two dimensions (tiles of images), whole beyond; a
    # 1-D array in chunks of 1 MiB; at most 8 MiB a chunk.
    if len(shape) == 1:
        return (max(1, min(shape[0], (1 << 20) // itemsize)),)
    chunks = [min(n, 512) for n in shape[:2]] + [int(n) for n in shape[2:]]
    while int(np.prod(chunks)) * itemsize > 8 << 20 and len(chunks) > 2 and chunks[-1] > 1:
        chunks[-1] = max(1, chunks[-1] // 2)
    return tuple(chunks)


def ingest(
    src: str | os.PathLike[str],
    store: Any,
    *,
    name: str | None = None,
    chunks: Sequence[int] | None = None,
    compression: str | None = "zstd",
    level: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[Array]:
    """Writes the arrays of ``src`` into ``store`` (a store or its URL; a
    ``local:`` store is made if missing): a ``.npy`` file (read through a
    memory map), a zarr array or group (each of its arrays), an image file
    (TIFF, PNG or JPEG), or a folder of images (one array per image, named by
    its path under the folder without suffix). ``name`` replaces the source's
    name (a prefix for several arrays). ``chunks`` defaults to the zarr
    array's own, else 512 x 512 over the first two dimensions and whole
    beyond. Written a slab of chunk rows at a time (at most about 256 MB in
    memory); an existing array is refused unless ``overwrite``."""
    from tqdm import tqdm

    path = Path(src)
    if not path.exists():
        raise InvalidArgumentError(f"{path} does not exist")
    found = _source_arrays(path)
    if isinstance(store, str):
        store = open_store(store, create=True) if store.startswith("local:") else open_store(store)
    if name is not None:
        found = [(name if len(found) == 1 else f"{name}/{n}", a) for n, a in found]
    written = []
    total = sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for _, a in found)
    with tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc="ingest") as bar:
        for array_name, source in found:
            shape = tuple(int(n) for n in source.shape)
            dt = np.dtype(source.dtype)
            ch = (
                tuple(chunks) if chunks is not None else _default_chunks(source, shape, dt.itemsize)
            )
            a = create(
                store, array_name, shape, dt, ch,
                compression=compression, level=level, overwrite=overwrite,
            )  # fmt: skip
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dt.itemsize
            step = a.chunks[0] * max(1, _SLAB_BYTES // max(1, row_bytes * a.chunks[0]))
            for r in range(0, shape[0], step):
                slab = np.ascontiguousarray(source[r : r + step], dtype=dt)
                a[r : r + slab.shape[0]] = slab
                bar.update(slab.nbytes)
            if isinstance(source, _ImageFile):
                source.release()  # one decoded image in memory at a time
            written.append(a)
    return written
