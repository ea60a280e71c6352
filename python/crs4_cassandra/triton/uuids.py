"""uuids as Triton tensors: cassandra-dali-plugin's (N, 2) uint64 pairs, or strings."""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidArgumentError


def to_pairs(uuids: Any) -> npt.NDArray[np.uint64]:
    """uuids (anything ``split_file.as_uuid_array`` takes) as an (N, 2) uint64
    array: the most significant 64 bits, then the least (``u.int >> 64``,
    ``u.int & (2**64 - 1)``), as cassandra-dali-plugin's Triton models take them."""
    from ..split_file import as_uuid_array

    raw = as_uuid_array(uuids)
    return raw.view(">u8").astype(np.uint64).reshape(-1, 2)


def from_pairs(pairs: Any) -> npt.NDArray[np.uint8]:
    """(N, 2) uint64 pairs back to the (N, 16) uint8 uuid bytes."""
    a = np.asarray(pairs)
    if a.dtype != np.uint64 or a.ndim != 2 or a.shape[1] != 2:
        raise InvalidArgumentError(
            f"uuids must be an (N, 2) uint64 array, got {a.dtype} of shape {a.shape}"
        )
    return np.ascontiguousarray(a.astype(">u8")).view(np.uint8).reshape(-1, 16)


def from_strings(strings: Any) -> npt.NDArray[np.uint8]:
    """uuid strings (str or bytes, as a Triton BYTES tensor gives them) to (N, 16) uint8."""
    items = np.asarray(strings, dtype=object).reshape(-1)
    out = np.empty((len(items), 16), dtype=np.uint8)
    for i, s in enumerate(items):
        text = s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s)
        try:
            out[i] = np.frombuffer(uuidlib.UUID(text).bytes, dtype=np.uint8)
        except ValueError:
            raise InvalidArgumentError(f"uuid #{i} {text!r} is not a valid uuid") from None
    return out


def to_strings(raw: npt.NDArray[np.uint8]) -> list[str]:
    """(N, 16) uint8 uuid bytes to their canonical strings."""
    return [str(uuidlib.UUID(bytes=bytes(r))) for r in np.asarray(raw, dtype=np.uint8)]
