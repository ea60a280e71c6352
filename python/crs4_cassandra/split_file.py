"""Split files: what a training run reads, and nothing more."""

from __future__ import annotations

import json
import os
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from . import _native
from .errors import InvalidArgumentError

UuidArray = npt.NDArray[np.uint8]

# What a sample's label is: an int column, a blob column (masks, serialized
# vectors...) or no label.
LabelType = Literal["int", "blob", "none"]
LABEL_TYPES: tuple[LabelType, ...] = get_args(LabelType)


def as_uuid_array(uuids: Any) -> UuidArray:
    """Normalises uuids to a contiguous (n, 16) uint8 array.

    Accepts such an array (or anything convertible to one), or an iterable of
    ``uuid.UUID``, uuid strings or 16-byte ``bytes``.
    """
    if isinstance(uuids, np.ndarray):
        if uuids.dtype == np.uint8 and uuids.ndim == 2 and uuids.shape[1] == 16:
            return np.ascontiguousarray(uuids)
        if uuids.dtype == np.uint8 and uuids.ndim == 1 and uuids.size % 16 == 0:
            return np.ascontiguousarray(uuids.reshape(-1, 16))
        uuids = uuids.tolist()
    if hasattr(uuids, "numpy") and hasattr(uuids, "dtype"):  # a torch tensor
        return as_uuid_array(uuids.numpy())
    items = list(uuids)
    out = np.empty((len(items), 16), dtype=np.uint8)
    for i, u in enumerate(items):
        if isinstance(u, uuidlib.UUID):
            b = u.bytes
        elif isinstance(u, str):
            try:
                b = uuidlib.UUID(u).bytes
            except ValueError:
                raise InvalidArgumentError(f"uuid #{i} {u!r} is not a valid uuid") from None
        elif isinstance(u, (bytes, bytearray)) and len(u) == 16:
            b = bytes(u)
        else:
            raise InvalidArgumentError(
                f"uuid #{i} {u!r} is neither a uuid.UUID, a uuid string nor 16 bytes"
            )
        out[i] = np.frombuffer(b, dtype=np.uint8)
    return out


class SplitFile:
    """Store, table and column names, label type, class names and the uuids of
    each split (e.g. "train", "val")."""

    def __init__(
        self,
        table: str,
        label_type: LabelType = "int",
        *,
        classes: Sequence[str] = (),
        store: str | None = None,
        metadata_table: str | None = None,
        id_col: str = "id",
        label_col: str = "label",
        data_col: str = "data",
        info: dict[str, Any] | None = None,
    ) -> None:
        if label_type not in LABEL_TYPES:
            raise InvalidArgumentError(
                f"label_type must be one of {LABEL_TYPES}, got {label_type!r}"
            )
        self.table = table
        self.label_type: LabelType = label_type
        self.classes = list(classes)
        self.store = store
        self.metadata_table = metadata_table
        self.id_col = id_col
        self.label_col = label_col
        self.data_col = data_col
        self.info: dict[str, Any] = dict(info or {})
        self._splits: dict[str, UuidArray] = {}

    def names(self) -> list[str]:
        return list(self._splits)

    def uuids(self, name: str) -> UuidArray:
        """The uuids of a split as an (n, 16) uint8 array."""
        try:
            return self._splits[name]
        except KeyError:
            from .errors import SplitNotFoundError

            raise SplitNotFoundError(
                f"split {name!r} not found; the file has {self.names()}"
            ) from None

    def add(self, name: str, uuids: Iterable[Any] | UuidArray) -> None:
        self._splits[name] = as_uuid_array(uuids)

    def __len__(self) -> int:
        return len(self._splits)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self._splits.items())
        return f"SplitFile(table={self.table!r}, label_type={self.label_type!r}, {sizes})"

    def _header(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "table": self.table,
            "metadata_table": self.metadata_table,
            "id_col": self.id_col,
            "label_col": self.label_col,
            "data_col": self.data_col,
            "label_type": self.label_type,
            "classes": self.classes,
            "info": self.info,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        _native.write_split_file(
            path,
            json.dumps(self._header()),
            [(name, arr.tobytes()) for name, arr in self._splits.items()],
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SplitFile:
        header_json, splits = _native.read_split_file(path)
        h = json.loads(header_json)
        f = cls(
            h["table"],
            h["label_type"],
            classes=h.get("classes") or [],
            store=h.get("store"),
            metadata_table=h.get("metadata_table"),
            id_col=h.get("id_col", "id"),
            label_col=h.get("label_col", "label"),
            data_col=h.get("data_col", "data"),
            info=h.get("info") or {},
        )
        for name, raw in splits:
            f._splits[name] = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 16)
        return f
