from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from crs4_cassandra import SplitFile, _native
from crs4_cassandra.ingest import ingest_folder
from crs4_cassandra.synthetic import make_image_folder

from .cqlserver import CqlServer


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(
        tmp_path_factory.mktemp("images"), classes=5, per_class=21, small=True, seed=3
    )


@pytest.fixture(scope="session")
def local_store(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A local store with table "shapes" (105 samples, int labels) and its split file."""
    root = tmp_path_factory.mktemp("store")
    url = f"local:{root / 'store'}"
    split = root / "shapes.split"
    ingest_folder(
        image_folder, url, "shapes", val_frac=0.2, seed=0, split_file=split, progress=False
    )
    return url, split


@pytest.fixture(scope="session")
def all_uuids(local_store: tuple[str, Path]) -> np.ndarray:
    sf = SplitFile.load(local_store[1])
    return np.concatenate([sf.uuids("train"), sf.uuids("val")])


def fill_table(
    url: str, table: str, label_type: str, n: int, seed: int = 0
) -> tuple[np.ndarray, list[bytes], list[object]]:
    """Writes n samples with random bytes and labels; returns (uuids, data, labels)."""
    rng = np.random.default_rng(seed)
    st = _native.open_store(url, create=True)
    st.create_tables(table, f"{table}_metadata", label_type, overwrite=True)
    ids = [uuid.uuid4().bytes for _ in range(n)]
    data = [rng.bytes(int(rng.integers(1, 300))) for _ in range(n)]
    labels: list[object]
    if label_type == "int":
        labels = [int(x) for x in rng.integers(-5, 1000, n)]
    elif label_type == "blob":
        labels = [rng.bytes(int(rng.integers(1, 40))) for _ in range(n)]
    else:
        labels = [None] * n
    st.put_samples(table, b"".join(ids), labels, data)  # type: ignore[arg-type]
    return np.frombuffer(b"".join(ids), dtype=np.uint8).reshape(-1, 16), data, labels


@pytest.fixture(scope="session")
def cql_server() -> Iterator[CqlServer]:
    with CqlServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def cassandra_store(
    cql_server: CqlServer, image_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """The image folder ingested into the CQL test server: ks.shapes + split file."""
    url = f"cassandra://127.0.0.1:{cql_server.port}/ks"
    split = tmp_path_factory.mktemp("cass") / "shapes.split"
    ingest_folder(
        image_folder, url, "shapes", val_frac=0.2, seed=0, split_file=split, progress=False
    )
    return url, split
