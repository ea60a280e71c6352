"""What ingest says about the files it skips: the path under the source and a
reason a person can act on, never an object's repr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crs4_cassandra.ingest import check_image, ingest_folder, ingest_segmentation
from crs4_cassandra.testing import make_image_folder

pytestmark = pytest.mark.timeout(120)


def bad_files(src: Path) -> None:
    """An empty file, a text file named .jpg and a JPEG cut in half, in class "circle"."""
    good = (src / "circle" / "circle_00000.jpg").read_bytes()
    (src / "circle" / "empty.jpg").write_bytes(b"")
    (src / "circle" / "notes.jpg").write_text("these are my notes, not a picture\n")
    (src / "circle" / "cut.jpg").write_bytes(good[: len(good) // 2])


EXPECTED = {
    "circle/empty.jpg": "empty file (0 bytes)",
    "circle/notes.jpg": "not an image (PIL: cannot identify image file)",
}


def check_lines(text: str) -> None:
    assert "BytesIO" not in text and "0x" not in text, text
    lines = {ln.strip() for ln in text.splitlines()}
    for path, why in EXPECTED.items():
        assert f"{path}: {why}" in lines, text
    (cut,) = [ln for ln in lines if ln.startswith("circle/cut.jpg: ")]
    # Checked by the decoder the loader reads with: where the data ends, in bytes.
    assert cut.startswith("circle/cut.jpg: truncated image (JPEG: the data ("), cut
    assert "before the end-of-image (EOI) marker" in cut, cut


def test_check_image_reasons() -> None:
    assert check_image(b"") == "empty file (0 bytes)"
    assert check_image(b"hello") == "not an image (PIL: cannot identify image file)"


def test_skipped_files_named_with_reasons_python_api(tmp_path: Path) -> None:
    src = make_image_folder(tmp_path / "src", classes=2, per_class=3, small=True)
    bad_files(src)
    report = ingest_folder(src, f"local:{tmp_path / 'store'}", "t", progress=False)
    assert report.written == 6
    assert sorted(p for p, _ in report.skipped) == [
        "circle/cut.jpg",
        "circle/empty.jpg",
        "circle/notes.jpg",
    ]
    check_lines(report.summary())


def test_skipped_files_named_with_reasons_cli(tmp_path: Path) -> None:
    src = make_image_folder(tmp_path / "src", classes=2, per_class=3, small=True)
    bad_files(src)
    r = subprocess.run(
        [sys.executable, "-m", "crs4_cassandra.cli", "ingest", "folder", str(src)]
        + ["--store", f"local:{tmp_path / 'store'}", "--table", "t", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "wrote 6 samples" in r.stdout and "skipped 3 files" in r.stdout
    check_lines(r.stdout)


def test_segmentation_names_the_bad_mask(tmp_path: Path) -> None:
    src = tmp_path / "ade"
    for name in ("a", "b"):
        (src / "images").mkdir(parents=True, exist_ok=True)
        (src / "annotations").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(src / "images" / f"{name}.jpg")
        Image.fromarray(np.ones((8, 8), np.uint8)).save(src / "annotations" / f"{name}.png")
    (src / "annotations" / "b.png").write_bytes(b"")
    report = ingest_segmentation(src, f"local:{tmp_path / 'store'}", "seg", progress=False)
    assert report.skipped == [("images/b.jpg", "mask annotations/b.png: empty file (0 bytes)")]
