"""The Cassandra store against real Apache Cassandra nodes: same guarantees as
the local store, plus connection, authentication and TLS behaviour."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import crs4_cassandra as cc
from crs4_cassandra import errors
from crs4_cassandra.split_builder import create_split
from testbed import gen_certs

from .conftest import Secure

pytestmark = pytest.mark.timeout(120)

PASSWORD = "Pw-7f3kq!zz-distinctive"


def collect(ds: cc.ShardedDataset, num_workers: int = 0) -> list[cc.Batch]:
    return list(DataLoader(ds, batch_size=None, num_workers=num_workers))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_epoch_exactly_once_and_bytes_match(
    cassandra_store: tuple[str, Path], image_folder: Path, num_workers: int
) -> None:
    url, split = cassandra_store
    sf = cc.SplitFile.load(split)
    st = cc.open_store(url)
    meta = {bytes(r[0]): r for r in st.scan_metadata("shapes_metadata")}
    assert len(meta) == len(sf.uuids("train")) + len(sf.uuids("val"))
    ds = cc.ShardedDataset.from_split(url, sf, "train", 8, seed=2)
    batches = collect(ds, num_workers)
    assert len(batches) == len(ds)
    idx = torch.cat([b.indices[~b.is_pad] for b in batches]).tolist()
    assert sorted(idx) == list(range(len(sf.uuids("train"))))
    for b in batches[:3]:
        for i, (s, uid) in enumerate(zip(b.samples(), b.ids, strict=True)):
            _, label, _, path, _ = meta[uid.bytes]
            assert s.numpy().tobytes() == (image_folder / path).read_bytes()
            assert int(b.labels[i]) == label


def test_same_batches_as_the_local_store(
    cassandra_store: tuple[str, Path], local_store: tuple[str, Path]
) -> None:
    # The plan depends only on (uuid count, seed, epoch): both stores serve the same positions.
    url, split = cassandra_store
    sf = cc.SplitFile.load(split)
    a = [b.indices.tolist() for b in cc.ShardedDataset.from_split(url, sf, "train", 8, seed=4)]
    local_url, _ = local_store
    uuids = sf.uuids("train")
    # Same number of uuids, so the same plan: compare positions only.
    st = cc.open_store(local_url)
    del st
    b = [
        x.indices.tolist()
        for x in cc.ShardedDataset(url, sf.table, uuids, 8, seed=4, ordered=False)
    ]
    assert sorted(a) == sorted(b)


def test_resume_mid_epoch(cassandra_store: tuple[str, Path]) -> None:
    url, split = cassandra_store
    full = [b.indices.tolist() for b in cc.ShardedDataset.from_split(url, split, "train", 8)]
    ds = cc.ShardedDataset.from_split(url, split, "train", 8)
    it = iter(ds)
    taken = [next(it).indices.tolist() for _ in range(3)]
    state = ds.state_dict()
    del it
    fresh = cc.ShardedDataset.from_split(url, split, "train", 8)
    fresh.load_state_dict(state)
    assert taken + [b.indices.tolist() for b in fresh] == full


def test_missing_uuid_table_and_column(cassandra_store: tuple[str, Path]) -> None:
    url, split = cassandra_store
    uuids = cc.SplitFile.load(split).uuids("train")[:5]
    ghost = uuid.uuid4()
    with_ghost = np.concatenate([uuids, np.frombuffer(ghost.bytes, np.uint8)[None]])
    with pytest.raises(errors.SampleNotFoundError, match=str(ghost)):
        list(cc.ShardedDataset(url, "shapes", with_ghost, 4))
    # The tables that do exist are listed, as the schema has them.
    listed = r'ks\.nope.*available tables: \[.*"shapes"'
    with pytest.raises(errors.TableNotFoundError, match=listed):
        cc.ShardedDataset(url, "nope", uuids, 4)
    with pytest.raises(errors.TableNotFoundError, match='keyspace "no_such_ks" .* does not exist'):
        cc.ShardedDataset(url, "no_such_ks.shapes", uuids, 4)
    with pytest.raises(errors.QueryError, match="Undefined column name lbl"):
        cc.ShardedDataset(url, "shapes", uuids, 4, label_col="lbl")
    with pytest.raises(errors.SchemaError, match="label"):
        cc.ShardedDataset(url, "shapes", uuids, 4, label_type="blob")


def test_missing_metadata_table_or_keyspace_when_splitting_and_reading(
    cassandra_store: tuple[str, Path], tmp_path: Path
) -> None:
    url, split = cassandra_store
    uuids = cc.SplitFile.load(split).uuids("train")[:5]
    listed = r'ks\.nothing_metadata.*available tables: \[.*"shapes_metadata"'
    with pytest.raises(errors.TableNotFoundError, match=listed):
        create_split(url, "nothing_metadata")
    r = subprocess.run(
        [sys.executable, "-m", "crs4_cassandra.cli", "split", "create", "--store", url]
        + ["-m", "nothing_metadata", "-o", str(tmp_path / "s.split")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert re.search(listed, r.stderr) and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "s.split").exists()
    # A store URL naming a keyspace that does not exist: said so, for a scan and a read.
    gone = url.rsplit("/", 1)[0] + "/no_such_keyspace"
    missing = 'keyspace "no_such_keyspace" .* does not exist'
    with pytest.raises(errors.TableNotFoundError, match=missing):
        create_split(gone, "shapes_metadata")
    with pytest.raises(errors.TableNotFoundError, match=missing):
        cc.ShardedDataset(gone, "shapes", uuids, 4)


def test_unreachable_host_fails_fast_and_names_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    st = cc.open_store(f"cassandra://127.0.0.1:{port}/ks", connect_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(errors.StoreConnectionError) as info:
        cc.ShardedDataset(st, "shapes", np.zeros((1, 16), np.uint8), 4)
    assert time.monotonic() - t0 < 10
    assert f"127.0.0.1:{port}" in str(info.value)
    assert isinstance(info.value, ConnectionError)


def test_authentication(secure: Secure) -> None:
    secure.role("trainer", PASSWORD)
    url = secure.url("auth_ks")
    st = cc.open_store(url, username="trainer", password=PASSWORD)
    assert PASSWORD not in repr(st)
    st.create_tables("t", "t_metadata", "int", overwrite=True)
    ids = uuid.uuid4().bytes
    st.put_samples("t", ids, [3], [b"abc"])
    b = next(iter(cc.ShardedDataset(st, "t", [ids], 1)))
    assert b.data.numpy().tobytes() == b"abc" and int(b.labels[0]) == 3

    wrong = cc.open_store(url, username="trainer", password="not-it-" + PASSWORD[::-1])
    with pytest.raises(errors.AuthenticationError) as info:
        cc.ShardedDataset(wrong, "t", [ids], 1)
    assert PASSWORD[::-1] not in str(info.value)
    assert PASSWORD not in str(info.value)
    # No credentials at all against a node that requires them.
    with pytest.raises(errors.AuthenticationError):
        cc.ShardedDataset(cc.open_store(url), "t", [ids], 1)


def test_password_from_environment(secure: Secure, monkeypatch: pytest.MonkeyPatch) -> None:
    secure.role("u", PASSWORD)
    monkeypatch.setenv("MY_DB_PW", PASSWORD)
    url = secure.url("env_ks")
    st = cc.open_store(url, username="u", password_env="MY_DB_PW")
    st.create_tables("t", "t_metadata", "none", overwrite=True)
    with pytest.raises(ValueError, match="NOPE_UNSET"):
        cc.open_store(url, username="u", password_env="NOPE_UNSET")


def test_tls_verifies_the_server(secure: Secure, tmp_path: Path) -> None:
    other = gen_certs(tmp_path / "other")
    secure.role("tls_user", PASSWORD)
    url = secure.url("tls_ks")
    creds = {"username": "tls_user", "password": PASSWORD}
    ok = cc.open_store(url, use_ssl=True, ssl_certificate=secure.certs["ca"], **creds)
    ok.create_tables("t", "t_metadata", "int", overwrite=True)
    ids = uuid.uuid4().bytes
    ok.put_samples("t", ids, [1], [b"x"])
    assert next(iter(cc.ShardedDataset(ok, "t", [ids], 1))).data.numpy().tobytes() == b"x"

    bad = cc.open_store(
        url, use_ssl=True, ssl_certificate=other["ca"], connect_timeout=2.0, **creds
    )
    with pytest.raises(errors.StoreConnectionError) as info:
        cc.ShardedDataset(bad, "t", [ids], 1)
    assert secure.host in str(info.value)
    with pytest.raises(errors.TLSConfigError, match="ssl_certificate"):
        cc.open_store(url, use_ssl=True)
    with pytest.raises(ValueError, match='unknown Cassandra option "pasword"'):
        cc.open_store("cassandra://127.0.0.1/ks", pasword="x")


@pytest.mark.slow
def test_cli_ingest_and_split_over_cassandra(
    secure: Secure, image_folder: Path, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "crs4_cassandra.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    secure.role("ingest", PASSWORD)
    url = secure.url("imgs")
    env = {**os.environ, "CRS4_CASSANDRA_PASSWORD": PASSWORD}
    split = tmp_path / "s.split"
    r = cli(
        "ingest", "folder", str(image_folder), "--store", url, "--table", "shapes",
        "--username", "ingest", "--split-file", str(split), "-q", env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert PASSWORD not in r.stdout + r.stderr
    out = tmp_path / "w.split"
    r = cli(
        "split", "create", "--store", url, "--username", "ingest",
        "-m", "shapes_metadata", "-r", "8,2", "--mode", "weighted", "-o", str(out), env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    sf = cc.SplitFile.load(out)
    total = sum(len(sf.uuids(n)) for n in sf.names())
    assert total == 105
    st = cc.open_store(url, username="ingest", password=PASSWORD)
    ds = cc.ShardedDataset.from_split(st, sf, sf.names()[0], 16)
    assert sum(int((~b.is_pad).sum()) for b in ds) == len(sf.uuids(sf.names()[0]))
    r = cli("split", "create", "--store", url, "-m", "shapes_metadata", "-r", "1", "-o", str(out))
    assert r.returncode == 2 and "authentication" in r.stderr.lower()


@pytest.mark.timeout(120)
def test_latency_aware_routing_reads_every_sample(cassandra_store: tuple[str, Path]) -> None:
    url, split = cassandra_store
    store = cc.open_store(url, latency_aware=True)
    ds = cc.ShardedDataset.from_split(store, split, "train", 16)
    served = [i for b in ds for i in b.indices[~b.is_pad].tolist()]
    assert sorted(served) == list(range(ds.num_samples))
