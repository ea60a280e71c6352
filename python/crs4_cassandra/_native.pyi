"""Type stubs of the Rust extension module (kept true by tests/test_stubs.py)."""

from collections.abc import Iterator
from os import PathLike
from typing import Any, final

__all__ = [
    "ArenaTensor",
    "NativeBatch",
    "Reader",
    "Store",
    "batches_per_rank",
    "consumed_after",
    "open_store",
    "read_split_file",
    "write_split_file",
]

@final
class Store:
    @property
    def url(self) -> str: ...
    def check_table(
        self,
        table: str,
        label_type: str,
        id_col: str = "id",
        label_col: str = "label",
        data_col: str = "data",
    ) -> None: ...
    def create_tables(
        self, table: str, metadata_table: str, label_type: str, overwrite: bool = False
    ) -> None: ...
    def put_samples(
        self, table: str, ids: bytes, labels: list[int | bytes | None], data: list[bytes]
    ) -> None: ...
    def put_metadata(
        self,
        table: str,
        rows: list[tuple[bytes, int | None, str | None, str | None, str | None]],
    ) -> None: ...
    def scan_metadata(
        self, table: str
    ) -> list[tuple[bytes, int | None, str | None, str | None, str | None]]: ...

@final
class ArenaTensor:
    @property
    def shape(self) -> list[int]: ...
    def __dlpack__(
        self,
        *,
        stream: Any = None,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...
    def legacy_capsule(self) -> Any: ...

@final
class NativeBatch:
    @property
    def position(self) -> int: ...
    @property
    def label_type(self) -> str: ...
    def __len__(self) -> int: ...
    def data(self) -> ArenaTensor: ...
    def offsets(self) -> ArenaTensor: ...
    def indices(self) -> ArenaTensor: ...
    def is_pad(self) -> ArenaTensor: ...
    def ids(self) -> ArenaTensor: ...
    def labels(self) -> ArenaTensor | None: ...
    def label_offsets(self) -> ArenaTensor | None: ...
    def images(self) -> ArenaTensor | None: ...
    def image_shapes(self) -> list[tuple[int, int]] | None: ...
    def image_offsets(self) -> ArenaTensor | None: ...
    def skipped(self) -> list[int]: ...
    def skipped_ids(self) -> bytes: ...
    def sample_capsules(self) -> list[Any]: ...
    def label_capsules(self) -> list[Any] | None: ...

@final
class Reader:
    def __new__(
        cls,
        store: Store,
        table: str,
        uuids: bytes,
        batch_size: int,
        *,
        label_type: str = "int",
        id_col: str = "id",
        label_col: str = "label",
        data_col: str = "data",
        world_size: int = 1,
        rank: int = 0,
        num_workers: int = 1,
        worker_id: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        start: int = 0,
        ordered: bool = True,
        window: int | None = None,
        decode: str | None = None,
        size: tuple[int, int] | None = None,
        on_error: str = "raise",
        memory_budget: int | None = None,
        skip: list[int] | None = None,
    ) -> Reader: ...
    def __iter__(self) -> Iterator[NativeBatch]: ...
    def __next__(self) -> NativeBatch: ...
    def __len__(self) -> int: ...
    @property
    def window(self) -> int: ...
    def close(self) -> None: ...

def open_store(url: str, create: bool = False, options: dict[str, Any] | None = None) -> Store: ...
def batches_per_rank(
    n: int, batch_size: int, world_size: int, drop_last: bool, start: int = 0
) -> int: ...
def consumed_after(
    n: int, batch_size: int, world_size: int, drop_last: bool, start: int, batches: int
) -> int: ...
def read_split_file(path: str | PathLike[str]) -> tuple[str, list[tuple[str, bytes]]]: ...
def write_split_file(
    path: str | PathLike[str], header: str, splits: list[tuple[str, bytes]]
) -> None: ...
