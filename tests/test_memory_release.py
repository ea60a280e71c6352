"""Memory freed by the reads is kept for reuse while a reader is open and goes
back to the OS once the last one closes. Measured in a fresh process, on its
anonymous resident memory (/proc/self/status)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from crs4_cassandra import _native

pytestmark = pytest.mark.timeout(120)

N, SIZE, BATCH = 416, 200_000, 32

CHILD = r"""
import json, sys, time
from crs4_cassandra import _native

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

url, uuids, BATCH = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3])
store = _native.open_store(url)
out = {"base": anon()}
r = _native.Reader(store, _native.ReaderConfig("t", uuids, BATCH, label_type="int", window=8))
r.read_next(1)
r.read_next(2)  # left unread: the reader stays open after two epochs
n = 0
for epoch in range(2):
    if epoch:
        assert r.next_epoch()
    for nb in r:
        n += len(nb)
    del nb
out["open"] = anon()
time.sleep(2.5)  # past the release delay, with the reader still open
out["open_later"] = anon()
r.close()
time.sleep(2.5)
out["closed"] = anon()
out["samples"] = n
print(json.dumps(out))
"""


@pytest.mark.slow
def test_freed_memory_is_kept_while_reading_and_returned_after(tmp_path: Path) -> None:
    url = f"local:{tmp_path / 'store'}"
    st = _native.open_store(url, create=True)
    st.create_tables("t", "t_metadata", "int", overwrite=True)
    ids = [uuid.uuid4().bytes for _ in range(N)]
    blobs = [bytes([i % 251]) * SIZE for i in range(N)]
    st.put_samples("t", b"".join(ids), list(range(N)), blobs)
    del st
    env = {k: v for k, v in os.environ.items() if k != "MIMALLOC_PURGE_DELAY"}
    r = subprocess.run(
        [sys.executable, "-c", CHILD, url, b"".join(ids).hex(), str(BATCH)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["samples"] == 2 * N
    held = m["open"] - m["base"]
    # Eight batches in flight of 6.4 MB, and more pooled: the reads hold tens of MB.
    assert held > 30 << 20, m
    # An open reader keeps what it freed for reuse, past the release delay.
    assert m["open_later"] - m["base"] > held * 0.8, m
    # Once it is closed, that memory goes back.
    assert m["closed"] - m["base"] < held * 0.3, m
