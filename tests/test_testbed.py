"""The test servers themselves: a Cassandra node that cannot start fails with
its log's last lines instead of hanging, and toxiproxy's toxics do what the
other tests rely on."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from testbed import Cluster, Node, NodeStartError, Proxy, free_port

pytestmark = pytest.mark.timeout(120)


def test_a_node_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    node = Node(
        tmp_path / "bad",
        address="127.0.0.1",
        native_port=port,
        storage_port=free_port("127.0.0.1"),
        cluster_name="bad",
        seeds=["127.0.0.1"],
        initial_token=0,
        heap="256m",
        extra_yaml={"num_tokens": "not-a-number"},
    )
    t0 = time.monotonic()
    with pytest.raises(NodeStartError) as ei:
        node.start(timeout=100)
    assert time.monotonic() - t0 < 100
    msg = str(ei.value)
    assert f"127.0.0.1:{port}" in msg and "exited" in msg
    assert "num_tokens" in msg  # Cassandra's own complaint, from its log
    assert not node.running


def test_latency_toxic_delays_each_round_trip(cassandra: Cluster, proxy: Proxy) -> None:
    host, port = proxy.host, cassandra.port

    def connect_and_ping() -> float:
        # A CQL OPTIONS request (v4 header, opcode 5) and its SUPPORTED answer.
        with socket.create_connection((host, port), timeout=5) as s:
            t0 = time.perf_counter()
            s.sendall(bytes([4, 0, 0, 1, 5, 0, 0, 0, 0]))
            header = s.recv(9)
            assert len(header) == 9 and header[4] == 6
            return time.perf_counter() - t0

    base = min(connect_and_ping() for _ in range(3))
    proxy.latency(100)
    slow = min(connect_and_ping() for _ in range(3))
    assert 0.09 < slow - base < 0.3, (base, slow)
    proxy.remove("latency_downstream")
    again = min(connect_and_ping() for _ in range(3))
    assert again - base < 0.05, (base, again)
    # Made anew (what removing a toxic falls back to when toxiproxy cannot
    # drain it in time): no toxics, same address, still forwarding.
    proxy.latency(100)
    proxy.recreate()
    assert proxy.server.request("GET", f"/proxies/{proxy.name}/toxics") == []
    assert connect_and_ping() - base < 0.05
