"""`python -m bench.tuner --report FILE`, as bench/README.md shows it, prints
the tables of bench/results.md from the saved result."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_tuner_report_prints_the_saved_tables() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "bench.tuner", "--report", "bench/results/tuner.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "python -m bench.tuner --report bench/results/tuner.json" in (
        ROOT / "bench" / "README.md"
    ).read_text().replace("\n", " ")
    # Every table row it prints is in bench/results.md as committed.
    results = (ROOT / "bench" / "results.md").read_text()
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) > 20, r.stdout
    missing = [row for row in rows if row not in results]
    assert not missing, missing
