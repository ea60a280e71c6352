"""A local store on a read-only filesystem (a dataset volume shared read-only,
as on clusters) is read like any other; a write to it is refused, naming it.

The store is made read-only by a real read-only bind mount, in a mount
namespace of its own (``unshare -m``), so the reading runs in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import fill_table

pytestmark = pytest.mark.timeout(120)

CHILD = textwrap.dedent(
    """
    import json, os, sys, uuid
    import numpy as np
    import crs4_cassandra as cc
    from crs4_cassandra import _native, errors
    from torch.utils.data import DataLoader

    store, expected_path = os.path.realpath(sys.argv[1]), sys.argv[2]
    written = json.load(open(expected_path))
    expected = {bytes.fromhex(k): bytes.fromhex(v) for k, v in written.items()}
    url = f"local:{store}"
    ids = np.frombuffer(b"".join(expected), np.uint8).reshape(-1, 16)
    for workers in (0, 2):
        ds = cc.ShardedDataset(url, "t", ids, 4, seed=1)
        seen = {}
        for b in DataLoader(ds, batch_size=None, num_workers=workers):
            for uid, sample, pad in zip(b.ids, b.samples(), b.is_pad.tolist()):
                if not pad:
                    assert uid.bytes not in seen, f"{uid} served twice"
                    seen[uid.bytes] = sample.numpy().tobytes()
        assert seen == expected, "served samples differ from the ones written"
    st = _native.open_store(url)
    for name, write in [
        ("put_samples", lambda: st.put_samples("t", uuid.uuid4().bytes, [1], [b"x"])),
        ("create_tables", lambda: st.create_tables("u", "u_metadata", "int")),
        ("open_store(create=True)", lambda: _native.open_store(url, create=True)),
    ]:
        try:
            write()
        except errors.StoreIOError as e:
            message = str(e)
            assert store in message and "read-only" in message, message
            assert e.path == store, e.path
        else:
            raise AssertionError(f"{name} wrote to a read-only store")
    print("OK")
    """
)


def unshare_available() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount --bind /tmp /tmp"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not unshare_available(), reason="needs root and unshare -m (mount namespaces)")
def test_read_only_local_store_is_read_and_refuses_writes(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ids, data, _ = fill_table(f"local:{store}", "t", "int", 37, seed=5)
    expected = tmp_path / "expected.json"
    expected.write_text(
        json.dumps({bytes(u).hex(): d.hex() for u, d in zip(ids, data, strict=True)})
    )
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    d = str(store)
    script = (
        f"mount --bind {d} {d} && mount -o remount,bind,ro {d} && "
        # The mount really is read-only.
        f"! touch {d}/probe 2>/dev/null && "
        f"exec {sys.executable} {child} {d} {expected}"
    )
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=100
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr
