"""Ctrl-C stops any blocking call into Rust within about a second: connecting,
retrying, ingest writes, metadata scans, split creation and iteration, all
against a Cassandra node that has stopped answering (toxiproxy's `timeout`
toxic: connections stay open and nothing comes back). And local-store work
runs without the GIL: other Python threads keep running meanwhile."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import crs4_cassandra as cc
from crs4_cassandra import _native
from testbed.toxiproxy import Proxy

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent

# Waits for "go" on stdin after setting up (connected, tables made), then
# makes one blocking call that would take minutes against a hung node.
CHILD = textwrap.dedent(
    """
    import sys, uuid
    import numpy as np
    import crs4_cassandra as cc
    from crs4_cassandra.split_builder import create_split

    url, what = sys.argv[1:3]
    slow = dict(connect_timeout=60.0, request_timeout=60.0, retry_time_limit=300.0)
    st = cc.open_store(url, **slow)
    ids = [uuid.uuid4().bytes for _ in range(8)]
    if what != "connect":
        st.create_tables("t", "t_metadata", "int")
        st.put_samples("t", b"".join(ids), list(range(8)), [b"x" * 100] * 8)
        st.put_metadata("t_metadata", [(i, 0, "a", None, None) for i in ids])
        uuids = np.frombuffer(b"".join(ids), np.uint8).reshape(-1, 16)
        ds = cc.ShardedDataset(st, "t", uuids, 4, shuffle=False)
    print("ready", flush=True)
    sys.stdin.readline()
    print("blocking", flush=True)
    if what == "connect":
        st.check_table("t", "int")
    elif what == "write":
        st.put_samples("t", b"".join(ids), list(range(8)), [b"y" * 100] * 8)
    elif what == "scan":
        st.scan_metadata("t_metadata")
    elif what == "split":
        create_split(st, "t_metadata", (1, 1))
    elif what == "iterate":
        for _ in ds:
            pass
    print("returned", flush=True)
    """
)


@pytest.mark.parametrize("what", ["connect", "write", "scan", "split", "iterate"])
def test_ctrl_c_stops_a_call_blocked_on_a_hung_node(
    keyspace_url: str, proxy: Proxy, what: str
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, keyspace_url, what],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        ready = child.stdout.readline().strip()
        assert ready == "ready", child.stderr.read() if child.stderr else ""
        proxy.toxic("timeout", timeout=0)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "blocking"
        time.sleep(1.0)  # well into the blocked call
        assert child.poll() is None, "the call returned although the node is hung"
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        child.kill()
        child.wait()
    assert "KeyboardInterrupt" in err, err
    # Checked every 100 ms; the rest is the interpreter's exit on a loaded machine.
    assert took < 2.0, f"{what}: Ctrl-C took {took:.2f} s to stop the call"


def test_local_store_work_releases_the_gil(tmp_path: Path) -> None:
    st = _native.open_store(f"local:{tmp_path / 's'}", create=True)
    st.create_tables("t", "t_metadata", "none")
    n, size = 400, 256 * 1024
    ids = [uuid.uuid4().bytes for _ in range(n)]
    data = [np.random.default_rng(i).bytes(size) for i in range(n)]
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        before, started = ticks, time.monotonic()
        st.put_samples("t", b"".join(ids), [None] * n, data)
        took, during = time.monotonic() - started, ticks - before
    finally:
        stop.set()
        counter.join()
    # With the GIL held throughout, the counting thread would not tick at all
    # while the 100 MB are written; it ticks about once a millisecond when free.
    assert during > took * 1000 * 0.2, f"{during} ticks in {took:.2f} s"
    uuids = np.frombuffer(b"".join(ids), np.uint8).reshape(-1, 16)
    got = [b for b in cc.ShardedDataset(st, "t", uuids, 50, label_type="none", shuffle=False)]
    assert bytes(got[0].samples()[0].numpy()) == data[0]
