"""Process safety: DataLoader workers started with fork after the parent
iterated, with spawn, persistent workers; Ctrl-C stops iteration promptly;
stopping early leaves no thread or connection behind; a consumer that stops
early does not block the others."""

from __future__ import annotations

import gc
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

import crs4_cassandra as cc
from testbed import Cluster, Proxy, connections_to

from .conftest import fill_table

pytestmark = pytest.mark.timeout(90)

N = 120
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["local", "cassandra"])
def table(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, np.ndarray]:
    if request.param == "local":
        url = f"local:{tmp_path_factory.mktemp('ps') / 'store'}"
    else:
        url = request.getfixturevalue("keyspace_url")
    uuids, _, _ = fill_table(url, "t", "int", N)
    return url, uuids


def exactly_once(batches: list[cc.Batch]) -> None:
    idx = [i for b in batches for i in b.indices[~b.is_pad].tolist()]
    assert not [i for i, c in Counter(idx).items() if c > 1], "a sample was served twice"
    assert sorted(idx) == list(range(N))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_after_the_parent_iterated(table: tuple[str, np.ndarray], context: str) -> None:
    url, uuids = table
    ds = cc.ShardedDataset(url, "t", uuids, 8, seed=1)
    # The parent has a runtime, an open LMDB environment or a driver session.
    exactly_once(list(ds))
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context)
    exactly_once(list(loader))
    exactly_once(list(ds))  # and the parent still works afterwards


def test_persistent_workers_over_several_epochs(table: tuple[str, np.ndarray]) -> None:
    url, uuids = table
    ds = cc.ShardedDataset(url, "t", uuids, 8, seed=2)
    list(ds)
    loader = DataLoader(
        ds, batch_size=None, num_workers=2, persistent_workers=True, multiprocessing_context="fork"
    )
    for _ in range(3):
        exactly_once(list(loader))


INTERRUPTED = textwrap.dedent(
    """
    import sys, numpy as np
    import crs4_cassandra as cc
    url = sys.argv[1]
    uuids = np.load(sys.argv[2])
    ds = cc.ShardedDataset(url, "t", uuids, 4, window=2)  # connects
    print("READY", flush=True)
    sys.stdin.readline()
    try:
        for _ in ds:
            pass
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        raise
    print("FINISHED", flush=True)
    """
)


def test_ctrl_c_stops_a_stalled_iteration_within_a_second(
    keyspace_url: str, proxy: Proxy, tmp_path: Path
) -> None:
    url = keyspace_url
    uuids, _, _ = fill_table(url, "slow", "int", 40)
    np.save(tmp_path / "u.npy", uuids)
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED.replace('"t"', '"slow"'))
    proc = subprocess.Popen(
        [sys.executable, str(script), url, str(tmp_path / "u.npy")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == b"READY"
        hang = proxy.toxic("timeout", timeout=0)  # nothing comes back any more
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        time.sleep(0.5)  # now blocked waiting for the first batch
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        # The iteration's KeyboardInterrupt, timed apart from the interpreter's
        # teardown (which a loaded machine can slow down by itself).
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        line = proc.stdout.readline().strip() if ready else b""
        elapsed = time.monotonic() - t0
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proxy.remove(hang)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode() if proc.stderr else ""
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            f.close()
    assert line == b"INTERRUPTED", (line, proc.returncode, err)
    assert "KeyboardInterrupt" in err, (proc.returncode, elapsed, err)
    assert proc.returncode != 0
    assert elapsed < 1.0, f"took {elapsed:.2f} s to stop"


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def wait_for(pred, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_stopping_early_leaves_no_thread_or_connection(
    keyspace_url: str, cassandra: Cluster
) -> None:
    url = keyspace_url
    uuids, _, _ = fill_table(url, "leak", "int", N)
    gc.collect()  # earlier stores of this process close their connections

    def open_conns() -> int:
        # This process's sockets connected to the node's address.
        return connections_to(cassandra.hosts[0], cassandra.port)

    st = cc.open_store(url)
    ds = cc.ShardedDataset(st, "leak", uuids, 4)
    list(ds)  # the runtime and the session exist from here on
    base_threads = threads()
    base_conns = open_conns()
    for i in range(10):
        it = iter(ds)
        next(it)
        if i % 2:
            del it  # deleting the iterator
        else:
            for _ in it:  # breaking out of a loop
                break
            it.close()
    gc.collect()
    assert wait_for(lambda: threads() <= base_threads), (threads(), base_threads)
    # The driver fills its pool in the background: bounded by the pool size
    # (4 per node) plus the control connection, not growing with iterations.
    assert base_conns <= open_conns() <= 5
    # Dropping the store closes its connections.
    del ds, st
    gc.collect()
    assert wait_for(lambda: open_conns() == 0), open_conns()


def test_a_consumer_that_stops_early_does_not_block_the_others(keyspace_url: str) -> None:
    url = keyspace_url
    uuids, _, _ = fill_table(url, "uneven", "int", N)
    st = cc.open_store(url, max_in_flight=8)  # one store, a small shared request budget
    rank0 = cc.ShardedDataset(st, "uneven", uuids, 4, rank=0, world_size=2)
    rank1 = cc.ShardedDataset(st, "uneven", uuids, 4, rank=1, world_size=2)
    stalled = iter(rank0)
    next(stalled)  # rank 0 stops consuming but keeps its loader open
    t0 = time.monotonic()
    got = list(rank1)
    assert len(got) == len(rank1)
    assert time.monotonic() - t0 < 10
    del stalled
