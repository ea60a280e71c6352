"""The hand-written stubs of the extension module match what it exports."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_native_stubs_match_the_module() -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy.stubtest",
            "crs4_cassandra._native",
            "--ignore-disjoint-bases",
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert r.returncode == 0, r.stdout + r.stderr
