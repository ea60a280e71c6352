from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from crs4_cassandra import SplitFile, _native
from crs4_cassandra.ingest import ingest_folder
from crs4_cassandra.testing import make_image_folder
from testbed import Cluster, Proxy, Toxiproxy, gen_certs

# Tests send Ctrl-C (SIGINT) to this process and to the processes it starts.
# A test run started in the background by a non-interactive shell inherits
# SIGINT ignored, and so would every child; Python then raises no
# KeyboardInterrupt. Restore Python's own handler, which children reset to
# the default when they start.
signal.signal(signal.SIGINT, signal.default_int_handler)


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
    url: str,
    table: str,
    label_type: str,
    n: int,
    seed: int = 0,
    sizes: tuple[int, int] = (1, 300),
    **options: object,
) -> tuple[np.ndarray, list[bytes], list[object]]:
    """Writes n samples with random bytes and labels; returns (uuids, data, labels)."""
    rng = np.random.default_rng(seed)
    st = _native.open_store(url, create=True, options=options or None)
    st.create_tables(table, f"{table}_metadata", label_type, overwrite=True)
    ids = [uuid.uuid4().bytes for _ in range(n)]
    data = [rng.bytes(int(rng.integers(*sizes))) for _ in range(n)]
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
def toxiproxy() -> Iterator[Toxiproxy]:
    with Toxiproxy() as t:
        yield t


@pytest.fixture(scope="session")
def cassandra(toxiproxy: Toxiproxy) -> Iterator[Cluster]:
    """One Apache Cassandra node for the whole run, behind a toxiproxy proxy;
    tests share it through keyspaces of their own."""
    with Cluster(1, name="main", toxiproxy=toxiproxy) as cl:
        yield cl


_keyspaces = iter(range(1_000_000))


@pytest.fixture
def keyspace_url(cassandra: Cluster, proxy: Proxy) -> str:
    """A store URL on the shared node (through its proxy) naming a new keyspace."""
    return cassandra.url(f"ks{next(_keyspaces)}")


@pytest.fixture
def proxy(cassandra: Cluster) -> Iterator[Proxy]:
    """The shared node's proxy, left without toxics and enabled after the test."""
    p = cassandra.proxies[0]
    yield p
    p.set_enabled(True)
    p.clear()


@pytest.fixture(scope="session")
def cluster3(toxiproxy: Toxiproxy) -> Iterator[Cluster]:
    """Three nodes on 127.0.0.1-3, each behind its proxy on 127.0.1.1-3."""
    with Cluster(3, name="three", toxiproxy=toxiproxy, heap="512m") as cl:
        yield cl


@pytest.fixture(scope="session")
def cassandra_store(
    cassandra: Cluster, image_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """The image folder ingested into the shared node: ks.shapes + split file."""
    url = cassandra.url("ks")
    split = tmp_path_factory.mktemp("cass") / "shapes.split"
    ingest_folder(
        image_folder, url, "shapes", val_frac=0.2, seed=0, split_file=split, progress=False
    )
    return url, split


class Secure:
    """A node with PasswordAuthenticator and TLS on its client port (TLS optional:
    plain and encrypted clients both connect), and the certificates it uses."""

    def __init__(self, cluster: Cluster, certs: dict[str, str]) -> None:
        self.cluster = cluster
        self.certs = certs
        self.host = f"{cluster.hosts[0]}:{cluster.port}"
        self._roles: dict[str, str] = {}

    def url(self, keyspace: str = "ks") -> str:
        return self.cluster.url(keyspace)

    def role(self, name: str, password: str) -> None:
        """Creates (or re-creates, with a new password) a login role allowed everything
        on every keyspace."""
        if self._roles.get(name) == password:
            return
        self.cluster.cql(
            f"DROP ROLE IF EXISTS {name}",
            f"CREATE ROLE {name} WITH PASSWORD = '{password}' AND LOGIN = true",
            f"GRANT ALL PERMISSIONS ON ALL KEYSPACES TO {name}",
        )
        self._roles[name] = password


def tls_options(certs: dict[str, str], **more: object) -> dict[str, object]:
    return {
        "keystore": certs["keystore"],
        "keystore_password": certs["password"],
        "store_type": "PKCS12",
        **more,
    }


@pytest.fixture(scope="session")
def secure(toxiproxy: Toxiproxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    certs = gen_certs(tmp_path_factory.mktemp("certs"))
    with Cluster(
        1,
        name="secure",
        auth=True,
        tls=tls_options(certs, optional=True),
        toxiproxy=toxiproxy,
        heap="512m",
    ) as cl:
        yield Secure(cl, certs)
