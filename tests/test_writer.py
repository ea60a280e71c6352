"""The ingest writer every engine calls: rows written once (re-running them
leaves no duplicates), a window of chunks really in flight, rejected rows
named and not fatal, ids as ingest has always given them, transforms at
ingest close to Pillow's, store errors that fail clearly or are retried."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import crs4_cassandra as cc
from crs4_cassandra import _native, errors
from crs4_cassandra.ingest import (
    Transform,
    Writer,
    WriteSummary,
    ingest_folder,
    ingest_segmentation,
    sample_uuid,
)
from crs4_cassandra.testing import shape_image
from testbed import Proxy

pytestmark = pytest.mark.timeout(120)

NAMESPACE = uuid.UUID("5d0c3b7e-8a4f-5c1e-9b2d-6f7a8e9c0d1b")


def picture(size: tuple[int, int], seed: int = 0, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """A shape on a noisy background, encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    im = shape_image(rng, "star", size, 12.0).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def rows(n: int, seed: int = 0) -> list[dict[str, object]]:
    return [
        {
            "key": f"c{i % 3}/img_{i:03d}.png",
            "label": i % 3,
            "data": picture((24 + i % 5, 20), seed + i, "PNG"),
            "label_name": f"c{i % 3}",
            "path": f"c{i % 3}/img_{i:03d}.png",
            "split": "train" if i % 4 else "val",
        }
        for i in range(n)
    ]


def stored(url: str, table: str, ids: list[bytes], label_type: str = "int") -> list[bytes]:
    st = cc.open_store(url)
    return [st.get(table, u, label_type)[1] for u in ids]


def test_ids_are_todays_uuid5_of_table_and_path() -> None:
    # What ingest has always given: uuid5(namespace, "table\npath[\noccurrence]").
    assert sample_uuid("t", "circle/a.jpg") == uuid.uuid5(NAMESPACE, "t\ncircle/a.jpg").bytes
    assert sample_uuid("imagenette", "train/n01/x.JPEG") == (
        uuid.uuid5(NAMESPACE, "imagenette\ntrain/n01/x.JPEG").bytes
    )
    assert sample_uuid("t", "a.jpg", 2) == uuid.uuid5(NAMESPACE, "t\na.jpg\n2").bytes
    assert _native.sample_uuid("t", "a.jpg") != _native.sample_uuid("u", "a.jpg")


def test_local_rows_written_once_and_rerun_leaves_no_duplicates(tmp_path: Path) -> None:
    url = f"local:{tmp_path / 's'}"
    data = rows(23)
    with Writer(url, "t", create=True, chunk=5, window=3) as w:
        w.write(data)
    s = w.close()
    assert s.rows_written == 23 and not s.rejected
    assert s.ids == [uuid.uuid5(NAMESPACE, f"t\n{r['key']}").bytes for r in data]
    assert s.bytes_written == sum(len(r["data"]) for r in data)  # type: ignore[arg-type]
    assert stored(url, "t", s.ids) == [r["data"] for r in data]
    # A failed partition run again: same ids, same bytes, no second copy.
    with Writer(url, "t", create=True, chunk=7) as w2:
        w2.write(data)
    assert w2.close().ids == s.ids
    meta = cc.open_store(url).scan_metadata("t_metadata")
    assert len(meta) == 23
    by_id = {bytes(m[0]): m for m in meta}
    first = by_id[s.ids[1]]
    assert tuple(first[1:]) == (1, "c1", "c1/img_001.png", "train")
    assert stored(url, "t", s.ids) == [r["data"] for r in data]


def test_given_ids_labels_blobs_and_no_metadata(tmp_path: Path) -> None:
    url = f"local:{tmp_path / 's'}"
    u = uuid.uuid4()
    w = Writer(url, "b", label_type="blob", metadata_table=False, create=True)
    png = picture((8, 8), fmt="PNG")
    w.write([{"id": u, "label": b"mask", "data": png}, {"id": str(uuid.uuid4()), "data": png}])
    s = w.close()
    assert s.ids[0] == u.bytes and s.rows_written == 2
    assert cc.open_store(url).get("b", u, "blob") == (b"mask", png)
    with pytest.raises(errors.InvalidArgumentError, match="neither an id nor a key"):
        Writer(url, "b", label_type="blob").write([{"data": png}])
    with pytest.raises(errors.InvalidArgumentError, match="row k: label is an int"):
        w3 = Writer(url, "b", label_type="blob", chunk=1)
        w3.write([{"key": "k", "label": 3, "data": png}])


def test_rejected_rows_are_named_with_reasons_and_not_fatal(tmp_path: Path) -> None:
    url = f"local:{tmp_path / 's'}"
    good = picture((30, 20))
    gif = picture((30, 20), fmt="GIF")
    bad = [
        {"key": "empty.jpg", "label": 0, "data": b""},
        {"key": "notes.jpg", "label": 0, "data": b"my notes, not a picture"},
        {"key": "cut.jpg", "label": 0, "data": good[: len(good) // 2]},
        {"key": "ok.gif", "label": 0, "data": gif},
    ]
    oks = [{"key": f"ok{i}.jpg", "label": 1, "data": good} for i in range(3)]
    with Writer(url, "t", create=True, chunk=2) as w:
        w.write([oks[0], bad[0], bad[1], oks[1], bad[2], bad[3], oks[2]])
    s = w.close()
    assert s.rows_written == 4, "3 JPEGs and the GIF (PIL decodes it)"
    assert [k for k, _ in s.rejected] == ["empty.jpg", "notes.jpg", "cut.jpg"]
    why = dict(s.rejected)
    assert why["empty.jpg"] == "empty file (0 bytes)"
    assert why["notes.jpg"] == "not an image (PIL: cannot identify image file)"
    assert why["cut.jpg"].startswith("truncated image (JPEG: the data ("), why["cut.jpg"]
    assert "rejected 3 rows" in s.summary() and "  cut.jpg: truncated" in s.summary()
    # Transforms read JPEG and PNG: a GIF is rejected, named, when one is asked for.
    with Writer(url, "t", transform=Transform(resize_shorter=8)) as w:
        w.write([{"key": "ok.gif", "label": 0, "data": gif}, oks[0]])
    s = w.close()
    assert s.rows_written == 1
    assert s.rejected == [("ok.gif", "not a JPEG or PNG image (first bytes 47 49 46 38)")]


def test_summaries_merge_in_order() -> None:
    a = WriteSummary(2, 10, [("x", "bad")], [b"1" * 16, b"2" * 16], 2, 1)
    b = WriteSummary(1, 5, [], [b"3" * 16], 3, 0)
    m = a.merge(b)
    assert (m.rows_written, m.bytes_written, m.max_in_flight, m.retries) == (3, 15, 3, 1)
    assert m.ids == [b"1" * 16, b"2" * 16, b"3" * 16] and m.rejected == [("x", "bad")]


def jpeg_bound(ref: np.ndarray, quality: int = 90) -> float:
    """What JPEG at ``quality`` may lose on ``ref``: Pillow's own mean loss at
    that quality (4:4:4, as ours at 90 and above), times 1.5, plus a level."""
    buf = io.BytesIO()
    Image.fromarray(ref.astype(np.uint8)).save(buf, "JPEG", quality=quality, subsampling=0)
    return 1.5 * float(np.abs(rgb(buf.getvalue()) - ref).mean()) + 1.0


def pillow_resize(data: bytes, size: tuple[int, int]) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        # Pillow's default filter for RGB images is BICUBIC.
        return np.asarray(im.convert("RGB").resize(size), dtype=np.int16)


def test_transforms_give_the_size_and_pixels_close_to_pillow(tmp_path: Path) -> None:
    url = f"local:{tmp_path / 's'}"
    sources = [(picture(sz, i, "PNG"), sz) for i, sz in enumerate([(120, 90), (90, 160), (75, 75)])]
    t = Transform(resize_shorter=48)
    with Writer(url, "png", create=True, transform=t) as w:
        w.write([{"key": f"{i}", "label": 0, "data": d} for i, (d, _) in enumerate(sources)])
    s = w.close()
    # torchvision's Resize(48): shorter side 48, longer floor(48 * long / short).
    want = [(64, 48), (48, 85), (48, 48)]
    for out, (src, _), size in zip(stored(url, "png", s.ids), sources, want, strict=True):
        assert out.startswith(b"\x89PNG"), "a PNG stays PNG (lossless) without to_jpeg"
        got = rgb(out)
        assert (got.shape[1], got.shape[0]) == size
        # Same filter as Pillow (bicubic, a=-0.5, antialiased): they differ by
        # fixed-point rounding only: a level at most (measured: 0.2 on average;
        # Pillow's bilinear filter would be 0.9 off).
        diff = np.abs(got - pillow_resize(src, size))
        assert diff.mean() < 0.5 and diff.max() <= 2, (diff.mean(), diff.max())
    assert s.bytes_written == sum(len(b) for b in stored(url, "png", s.ids))

    # JPEG output at quality 90: within what JPEG itself loses. The bound is
    # Pillow's own loss at that quality (4:4:4, as ours above quality 90) on
    # its resize, times 1.5, plus a level for the resize's rounding.
    src = picture((160, 120), 7, "JPEG")
    t = Transform(resize_shorter=60, center_crop=True, jpeg_quality=90)
    out = t.apply(src)
    assert out.startswith(b"\xff\xd8")
    got = rgb(out)
    assert got.shape == (60, 60, 3)
    with Image.open(io.BytesIO(src)) as im:
        ref_img = im.convert("RGB").resize((80, 60)).crop((10, 0, 70, 60))
    ref = np.asarray(ref_img, dtype=np.int16)
    ours = np.abs(got - ref).mean()
    assert ours <= jpeg_bound(ref), (ours, jpeg_bound(ref))


def test_to_jpeg_identity_and_grey_alpha_inputs() -> None:
    png = picture((40, 30), 1, "PNG")
    jpg = picture((40, 30), 1, "JPEG")
    assert Transform().apply(png) == png and Transform().apply(jpg) == jpg
    out = Transform(to_jpeg=True).apply(png)
    assert out.startswith(b"\xff\xd8") and rgb(out).shape == (30, 40, 3)
    assert np.abs(rgb(out) - rgb(png)).mean() <= jpeg_bound(rgb(png))
    assert Transform(to_jpeg=True).apply(jpg) == jpg, "a JPEG is a JPEG already"
    assert Transform(resize_shorter=64).apply(jpg) == jpg, "never upscaled, bytes kept"
    # Grey and RGBA inputs come out RGB (alpha dropped, as Pillow's convert("RGB")).
    grey = picture((40, 30), 2, "PNG", mode="L")
    rgba = picture((40, 30), 3, "PNG", mode="RGBA")
    for src in (grey, rgba):
        out = Transform(resize_shorter=15, to_jpeg=True).apply(src)
        with Image.open(io.BytesIO(out)) as im:
            assert (im.mode, im.size) == ("RGB", (20, 15))
        ref = pillow_resize(src, (20, 15))
        diff = np.abs(rgb(out) - ref).mean()
        assert diff <= jpeg_bound(ref), (diff, jpeg_bound(ref))
    with pytest.raises(errors.InvalidArgumentError, match="jpeg_quality must be in 1..100"):
        Transform(jpeg_quality=0)
    with pytest.raises(errors.InvalidArgumentError, match="truncated image"):
        Transform(resize_shorter=8).apply(jpg[:100])


def test_cli_ingest_folder_with_transforms(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for c, fmt in (("a", "JPEG"), ("b", "PNG")):
        (src / c).mkdir(parents=True)
        for i in range(3):
            (src / c / f"{i}.{fmt.lower()}").write_bytes(picture((90, 70), i, fmt))
    (src / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    store, split = tmp_path / "store", tmp_path / "t.split"
    r = subprocess.run(
        [sys.executable, "-m", "crs4_cassandra.cli", "ingest", "folder", str(src)]
        + ["--store", f"local:{store}", "--table", "t", "-q", "--split-file", str(split)]
        + ["--resize-shorter", "32", "--center-crop", "--to-jpeg", "--jpeg-quality", "80"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "wrote 6 samples" in r.stdout and "skipped 1 files" in r.stdout, r.stdout
    assert "b/broken.png: truncated image (PNG: the data (" in r.stdout, r.stdout
    sf = cc.SplitFile.load(split)
    assert sf.info["transform"] == {
        "resize_shorter": 32,
        "center_crop": True,
        "jpeg_quality": 80,
        "to_jpeg": True,
    }
    ids = [bytes(u) for n in sf.names() for u in sf.uuids(n)]
    assert len(ids) == 6
    for data in stored(f"local:{store}", "t", ids):
        with Image.open(io.BytesIO(data)) as im:
            assert (im.format, im.size) == ("JPEG", (32, 32))
    # Resumed with the same flags: nothing written twice, the same split.
    r = subprocess.run(
        [sys.executable, "-m", "crs4_cassandra.cli", "ingest", "folder", str(src)]
        + ["--store", f"local:{store}", "--table", "t", "-q", "--resume"]
        + ["--resize-shorter", "32", "--center-crop", "--to-jpeg", "--jpeg-quality", "80"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "resumed: 6 of them" in r.stdout, r.stdout + r.stderr


def test_segmentation_refuses_resizing_but_reencodes(tmp_path: Path) -> None:
    src = tmp_path / "ade"
    (src / "images").mkdir(parents=True)
    (src / "annotations").mkdir(parents=True)
    for name in ("a", "b"):
        (src / "images" / f"{name}.png").write_bytes(picture((20, 16), fmt="PNG"))
        Image.fromarray(np.ones((16, 20), np.uint8)).save(src / "annotations" / f"{name}.png")
    r = subprocess.run(
        [sys.executable, "-m", "crs4_cassandra.cli", "ingest", "segmentation", str(src)]
        + ["--store", f"local:{tmp_path / 'st'}", "--table", "seg", "--resize-shorter", "8"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "not supported for segmentation" in r.stderr and "masks" in r.stderr, r.stderr
    assert not (tmp_path / "st").exists(), "refused before the store is made"
    url = f"local:{tmp_path / 'st'}"
    report = ingest_segmentation(src, url, "seg", progress=False, transform=Transform(to_jpeg=True))
    assert report.written == 2
    assert report.split_file is not None
    for u in report.split_file.uuids("train").tolist() + report.split_file.uuids("val").tolist():
        mask, data = cc.open_store(url).get("seg", bytes(u), "blob")
        assert data.startswith(b"\xff\xd8") and mask.startswith(b"\x89PNG")


def test_ingest_folder_ids_unchanged(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "x" / "1.jpg").write_bytes(picture((16, 16)))
    report = ingest_folder(src, f"local:{tmp_path / 's'}", "tab", progress=False, val_frac=0.0)
    assert report.split_file is not None
    assert [bytes(u) for u in report.split_file.uuids("train")] == [
        uuid.uuid5(NAMESPACE, "tab\nx/1.jpg").bytes
    ]


# Against the real Cassandra node (through its toxiproxy proxy).


def test_cassandra_rows_written_once_and_rerun_leaves_no_duplicates(keyspace_url: str) -> None:
    data = rows(30)
    with Writer(keyspace_url, "t", create=True, chunk=8) as w:
        w.write(data)
    s = w.close()
    assert s.rows_written == 30
    with Writer(keyspace_url, "t", create=True, chunk=5, window=2) as w:
        w.write(data)
    assert w.close().ids == s.ids
    st = cc.open_store(keyspace_url)
    assert len(st.scan_metadata("t_metadata")) == 30
    assert stored(keyspace_url, "t", s.ids) == [r["data"] for r in data]


def test_cassandra_window_overlaps_chunk_writes(keyspace_url: str, proxy: Proxy) -> None:
    data = rows(48)
    Writer(keyspace_url, "t", create=True).close()
    proxy.latency(40)

    def run(window: int) -> tuple[float, WriteSummary]:
        t0 = time.monotonic()
        with Writer(keyspace_url, "t", chunk=6, window=window) as w:
            w.write(data)
        return time.monotonic() - t0, w.close()

    t1, s1 = run(1)
    t4, s4 = run(4)
    assert s1.max_in_flight == 1
    # 8 chunks of 2 round trips of 40 ms or more each: ~0.7 s one at a time.
    assert s4.max_in_flight >= 3, s4
    assert t4 < 0.7 * t1, (t1, t4)
    assert s1.ids == s4.ids


def test_cassandra_hung_node_fails_clearly_naming_table_and_chunk(
    keyspace_url: str, proxy: Proxy
) -> None:
    data = rows(12)
    st = cc.open_store(keyspace_url, request_timeout=1.0, retry_time_limit=2.0, retries=1)
    # A first chunk before the node hangs: the statements are prepared (the
    # driver's prepare has no request timeout of its own).
    with Writer(st, "t", create=True, chunk=4) as w0:
        w0.write(data[:4])
    w = Writer(st, "t", chunk=4, window=1, retries=1)
    proxy.toxic("timeout", timeout=0)
    t0 = time.monotonic()
    # Timed out requests, or the connection found dead by its keepalive.
    with pytest.raises((errors.StoreTimeoutError, errors.StoreConnectionError)) as ei:
        w.write(data[4:])
        w.close()
    assert time.monotonic() - t0 < 30
    msg = str(ei.value)
    first = uuid.uuid5(NAMESPACE, f"t\n{data[4]['key']}")
    assert 'into table "t"' in msg and "after 2 attempt(s)" in msg, msg
    assert f'first id {first}, key "{data[4]["key"]}"' in msg, msg
    with pytest.raises(errors.InvalidArgumentError, match="cannot write"):
        w.write(data)


def test_cassandra_connections_reset_mid_write_lose_nothing(
    keyspace_url: str, proxy: Proxy
) -> None:
    data = rows(60)
    st = cc.open_store(keyspace_url, retry_time_limit=30.0, connect_timeout=1.0)
    proxy.latency(5)
    w = Writer(st, "t", create=True, chunk=6, window=2)
    w.write(data[:24])
    reset = proxy.toxic("reset_peer", timeout=0)
    time.sleep(0.3)
    proxy.remove(reset)
    w.write(data[24:])
    s = w.close()
    assert s.rows_written == 60
    assert len(st.scan_metadata("t_metadata")) == 60
    assert stored(keyspace_url, "t", s.ids) == [r["data"] for r in data]


def test_split_file_info_is_json(tmp_path: Path) -> None:
    # The transform recorded in a split file survives a save and load.
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "x" / "1.jpg").write_bytes(picture((40, 40)))
    split = tmp_path / "s.split"
    ingest_folder(
        src,
        f"local:{tmp_path / 's'}",
        "t",
        progress=False,
        split_file=split,
        transform=Transform(resize_shorter=20),
    )
    info = cc.SplitFile.load(split).info
    assert json.loads(json.dumps(info))["transform"] == {"resize_shorter": 20}
