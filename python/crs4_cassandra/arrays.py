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

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import _native
from .dataset import open_store

__all__ = ["Array", "create", "delete", "names", "open"]


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
