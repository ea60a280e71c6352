"""Faults a cluster throws at a days-long training job, against real CQL test
server processes: restarts, injected overload/timeouts, a node dropping out,
a server that stays down. Each epoch must complete with every sample exactly
once, or fail with a clear error within the configured limit, never hang."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest

import crs4_cassandra as cc
from crs4_cassandra import errors

from .conftest import fill_table
from .cqlserver import CqlServer

pytestmark = pytest.mark.timeout(60)

N = 240


def served(batches: list[cc.Batch]) -> list[int]:
    return sorted(i for b in batches for i in b.indices[~b.is_pad].tolist())


def assert_exactly_once(batches: list[cc.Batch], n: int = N) -> None:
    idx = served(batches)
    dupes = [i for i, c in Counter(idx).items() if c > 1]
    assert not dupes, f"served twice: {dupes[:10]}"
    assert idx == list(range(n)), f"missing: {sorted(set(range(n)) - set(idx))[:10]}"


def kill(srv: CqlServer) -> None:
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    srv.stop()


def test_server_killed_and_restarted_mid_epoch(tmp_path: Path) -> None:
    data = tmp_path / "cql.data"
    srv = CqlServer(data_file=data)
    restarted: CqlServer | None = None
    try:
        url = f"cassandra://127.0.0.1:{srv.port}/ks"
        uuids, _, _ = fill_table(url, "t", "int", N)
        assert srv.admin("save") == "OK"
        srv.admin("delay 5")  # the epoch lasts long enough to be interrupted
        st = cc.open_store(url, retry_time_limit=30.0, connect_timeout=1.0)
        ds = cc.ShardedDataset(st, "t", uuids, 8, seed=1, window=2)
        batches = []
        t_kill = None
        for b in ds:
            batches.append(b)
            if len(batches) == 5:
                port = srv.port
                kill(srv)  # SIGKILL: no goodbye to the clients
                t_kill = time.monotonic()
                time.sleep(1.0)  # down for a while: several backoffs' worth
                restarted = CqlServer(data_file=data, port=port)
        assert t_kill is not None and restarted is not None
        assert len(batches) == len(ds)
        assert_exactly_once(batches)
        # The loader did reconnect to the new process.
        assert restarted.stats()["nodes"][0]["executes"] > 0
    finally:
        srv.stop()
        if restarted is not None:
            restarted.stop()


@pytest.mark.parametrize("kind", ["overloaded", "read_timeout"])
def test_injected_errors_are_retried(kind: str) -> None:
    with CqlServer() as srv:
        url = f"cassandra://127.0.0.1:{srv.port}/ks"
        uuids, data, _ = fill_table(url, "t", "int", N)
        srv.admin(f"error-rate 0.15 {kind}")
        st = cc.open_store(url, retries=10, retry_time_limit=20.0)
        batches = list(cc.ShardedDataset(st, "t", uuids, 8, seed=2, ordered=False))
        assert_exactly_once(batches)
        for b in batches[:5]:  # retried reads return the right bytes
            for i, s in zip(b.indices.tolist(), b.samples(), strict=True):
                assert s.numpy().tobytes() == data[i]
        assert sum(n["injected_errors"] for n in srv.stats()["nodes"]) > 10


def test_persistent_errors_fail_clearly_after_the_retries() -> None:
    with CqlServer() as srv:
        url = f"cassandra://127.0.0.1:{srv.port}/ks"
        uuids, _, _ = fill_table(url, "t", "int", 40)
        srv.admin("error-rate 1 overloaded")
        st = cc.open_store(url, retries=2, retry_time_limit=10.0)
        t0 = time.monotonic()
        with pytest.raises(errors.QueryError, match="(?i)overload") as ei:
            list(cc.ShardedDataset(st, "t", uuids, 8))
        assert time.monotonic() - t0 < 5
        assert "ks.t" in str(ei.value)


def test_server_down_past_the_limit_raises_connection_error() -> None:
    srv = CqlServer()
    try:
        url = f"cassandra://127.0.0.1:{srv.port}/ks"
        uuids, _, _ = fill_table(url, "t", "int", N)
        srv.admin("delay 5")
        limit = 2.0
        st = cc.open_store(url, retry_time_limit=limit, connect_timeout=1.0)
        ds = cc.ShardedDataset(st, "t", uuids, 8, window=2)
        it = iter(ds)
        next(it)
        kill(srv)
        t0 = time.monotonic()
        with pytest.raises(errors.StoreConnectionError) as ei:
            for _ in it:
                pass
        elapsed = time.monotonic() - t0
        assert elapsed < limit + 2.5, f"took {elapsed:.1f} s with retry_time_limit={limit}"
        assert f"127.0.0.1:{srv.port}" in str(ei.value)
        assert ei.value.hosts == f"127.0.0.1:{srv.port}"  # type: ignore[attr-defined]
        assert "retry_time_limit" in str(ei.value)
    finally:
        srv.stop()


def test_token_aware_routing_spreads_over_three_nodes() -> None:
    with CqlServer(nodes=3) as srv:
        url = f"cassandra://127.0.0.1:{srv.port}/ks"
        uuids, _, _ = fill_table(url, "t", "int", N)
        srv.admin("reset-stats")
        batches = list(cc.ShardedDataset(url, "t", uuids, 8, seed=3))
        assert_exactly_once(batches)
        executes = [n["executes"] for n in srv.stats()["nodes"]]
        assert sum(executes) >= N
        # Even token ranges and random uuids: each node serves about a third.
        assert min(executes) > N * 0.15, executes


def test_node_down_mid_epoch_leaves_the_epoch_complete() -> None:
    with CqlServer(nodes=3) as srv:
        url = f"cassandra://127.0.0.1:{srv.port}/ks"
        uuids, _, _ = fill_table(url, "t", "int", N)
        srv.admin("delay 3")
        st = cc.open_store(url, retry_time_limit=20.0, connect_timeout=1.0)
        batches = []
        for b in cc.ShardedDataset(st, "t", uuids, 8, seed=4, window=2):
            batches.append(b)
            if len(batches) == 4:
                assert srv.admin("node-down 1") == "OK"
                srv.admin("reset-stats")
        assert_exactly_once(batches)
        nodes = srv.stats()["nodes"]
        assert nodes[1]["down"] is True and nodes[1]["open_connections"] == 0
        assert nodes[1]["executes"] == 0  # nothing reached the down node
        assert nodes[0]["executes"] + nodes[2]["executes"] > 0
        assert srv.admin("node-up 1") == "OK"
        assert srv.stats()["nodes"][1]["down"] is False


def test_admin_rejects_bad_node_commands() -> None:
    with CqlServer(nodes=2) as srv:
        assert srv.admin("node-down 5").startswith("ERR")
        assert srv.admin("node-up").startswith("ERR")
        assert srv.admin("delay 10 node 9").startswith("ERR")
        assert srv.admin("delay 10 node 1") == "OK"
        assert srv.stats()["nodes"][1]["node_delay_ms"] == 10


def test_slow_node_with_speculative_execution_keeps_the_epoch_fast() -> None:
    with CqlServer(nodes=3) as srv:
        url = f"cassandra://127.0.0.1:{srv.port}/ks"
        uuids, _, _ = fill_table(url, "t", "int", 96)

        def epoch(**opts: object) -> float:
            st = cc.open_store(url, **opts)  # type: ignore[arg-type]
            ds = cc.ShardedDataset(st, "t", uuids, 8, ordered=False, window=4)
            list(ds)  # connect and warm up
            t0 = time.monotonic()
            batches = list(ds)
            assert_exactly_once(batches, 96)
            return time.monotonic() - t0

        assert srv.admin("delay 400 node 1") == "OK"
        slow = epoch()
        fast = epoch(speculative_delay=0.02)
        # Without speculation every batch touching node 1 waits 400 ms.
        assert slow > 1.0, slow
        assert fast < slow / 2, (fast, slow)


@pytest.mark.parametrize("label_type", ["int", "blob"])
@pytest.mark.parametrize("ordered", [True, False])
def test_latency_keeps_every_byte_in_its_slot(label_type: str, ordered: bool) -> None:
    # Samples of a batch arrive out of order over several connections; each
    # must land in its own slot with its own label, whatever the window does.
    with CqlServer() as srv:
        url = f"cassandra://127.0.0.1:{srv.port}/ks"
        uuids, data, labels = fill_table(url, "t", label_type, N, seed=3)
        srv.admin("delay 15")
        ds = cc.ShardedDataset(url, "t", uuids, 8, seed=5, label_type=label_type, ordered=ordered)
        batches = list(ds)
        assert_exactly_once(batches)
        for b in batches:
            for slot, (i, sample) in enumerate(zip(b.indices.tolist(), b.samples(), strict=True)):
                assert sample.numpy().tobytes() == data[i]
                if label_type == "int":
                    assert int(b.labels[slot]) == labels[i]
                else:
                    assert b.label_samples()[slot].numpy().tobytes() == labels[i]
        assert ds.current_window is not None and ds.current_window >= 1
        fixed = cc.ShardedDataset(url, "t", uuids, 8, label_type=label_type, window=3)
        assert len(list(fixed)) == len(fixed) and fixed.current_window == 3
