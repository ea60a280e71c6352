"""An ingest interrupted by Ctrl-C (a real SIGINT, to the real CLI or to this
process) is finished by running it again with --resume / resume=True: the store
then holds what an uninterrupted ingest writes (ids, labels, bytes, metadata,
split file), with nothing missing and nothing twice.

Where the interruption lands is pinned by a FIFO standing in for one source
file: ingest blocks reading it after the chunks before it are written; the test
sees it blocked (a non-blocking open for writing succeeds only once a reader
has it open), checks the partial state and sends SIGINT."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import crs4_cassandra as cc
from crs4_cassandra import errors
from crs4_cassandra.ingest import ingest_folder, sample_uuid, scan_image_folder
from crs4_cassandra.testing import make_image_folder
from testbed import Cluster

pytestmark = pytest.mark.timeout(240)

CHUNK = 64  # ingest's default
BLOCK_AT = 300  # the source file (in scan order) that a FIFO stands in for
TABLE = "t"


def cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crs4_cassandra.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        **kw,
    )


def ingest_args(src: Path, url: str, split: Path, *more: str) -> list[str]:
    return ["ingest", "folder", str(src), "--store", url, "--table", TABLE] + [
        "--split-file",
        str(split),
        "-q",
        *more,
    ]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """320 small images in 4 classes, and one empty file that ingest skips."""
    src = make_image_folder(
        tmp_path_factory.mktemp("resume") / "src", classes=4, per_class=80, small=True
    )
    (src / "circle" / "zz_empty.jpg").write_bytes(b"")
    return src


def blocked_file(src: Path) -> Path:
    return scan_image_folder(src).files[BLOCK_AT][0]


def written_before_block(src: Path) -> int:
    """Samples written when ingest blocks on the FIFO: the whole chunks of CHUNK
    files handed to the writer before it, less the files among them that the
    writer rejects (the empty one)."""
    sent = scan_image_folder(src).files[: BLOCK_AT // CHUNK * CHUNK]
    return sum(1 for f, _, _ in sent if f.stat().st_size > 0)


def wait_until(cond: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@contextmanager
def fifo_in_place_of(path: Path) -> Iterator[Callable[[], bool]]:
    """Replaces ``path`` by a FIFO; yields "is a reader blocked on it?". The
    writing end stays open until the block ends, so the reader never sees EOF."""
    data = path.read_bytes()
    path.unlink()
    os.mkfifo(path)
    fds: list[int] = []

    def reader_waiting() -> bool:
        try:
            fds.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            return True
        except OSError as e:
            if e.errno == errno.ENXIO:
                return False
            raise

    try:
        yield reader_waiting
    finally:
        for fd in fds:
            os.close(fd)
        path.unlink()
        path.write_bytes(data)


def contents(url: str, split: Path) -> dict[str, Any]:
    """Everything an ingest leaves: metadata rows, the split file, and each
    sample's label and bytes as the reader serves them."""
    st = cc.open_store(url)
    meta = sorted((bytes(r[0]), *r[1:]) for r in st.scan_metadata(f"{TABLE}_metadata"))
    sf = cc.SplitFile.load(split)
    splits = {n: sf.uuids(n).tobytes() for n in sf.names()}
    ids = np.concatenate([sf.uuids(n) for n in sf.names()])
    samples: dict[bytes, tuple[int, bytes]] = {}
    for b in cc.ShardedDataset(st, TABLE, ids, 64, shuffle=False):
        for i, (s, uid) in enumerate(zip(b.samples(), b.ids, strict=True)):
            if not bool(b.is_pad[i]):
                samples[uid.bytes] = (int(b.labels[i]), s.numpy().tobytes())
    return {
        "meta": meta,
        "splits": splits,
        "classes": sf.classes,
        "table": (sf.table, sf.label_type, sf.metadata_table),
        "info": sf.info,
        "samples": samples,
    }


def check_clean(got: dict[str, Any], src: Path) -> None:
    """What an uninterrupted ingest of ``source`` holds, from the source itself."""
    files = [(p, label) for p, label, _ in scan_image_folder(src).files if p.stat().st_size]
    assert len(files) == 4 * 80 and len(got["meta"]) == len(files)
    want = {
        sample_uuid(TABLE, p.relative_to(src).as_posix()): (label, p.read_bytes())
        for p, label in files
    }
    assert got["samples"] == want
    assert sum(len(v) for v in got["splits"].values()) == 16 * len(files)


def test_cli_resume_after_sigint_local(source: Path, tmp_path: Path) -> None:
    clean_url, url = f"local:{tmp_path / 'clean'}", f"local:{tmp_path / 'store'}"
    clean_split, split = tmp_path / "clean.split", tmp_path / "s.split"
    r = cli(*ingest_args(source, clean_url, clean_split))
    assert r.returncode == 0, r.stderr
    clean = contents(clean_url, clean_split)
    check_clean(clean, source)
    run_interrupted_then_resume(source, url, split, lambda: cc.open_store(url))
    assert contents(url, split) == clean


def run_interrupted_then_resume(
    src: Path, url: str, split: Path, store: Callable[[], Any], env: dict[str, str] | None = None
) -> None:
    with fifo_in_place_of(blocked_file(src)) as reader_waiting:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crs4_cassandra.cli", *ingest_args(src, url, split)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            wait_until(lambda: reader_waiting() or proc.poll() is not None)
            assert proc.poll() is None, proc.communicate()
            # Mid-ingest: the chunks before the blocked file are written (the
            # writer writes them in the background), and no more.
            done = written_before_block(src)
            wait_until(lambda: len(store().scan_metadata(f"{TABLE}_metadata")) >= done)
            assert len(store().scan_metadata(f"{TABLE}_metadata")) == done
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err, err
    assert not split.exists()
    # A plain re-run refuses, and says both ways on.
    again = cli(*ingest_args(src, url, split), env=env)
    assert again.returncode == 2
    assert "already exists" in again.stderr, again.stderr
    assert "--resume" in again.stderr and "--overwrite" in again.stderr, again.stderr
    r = cli(*ingest_args(src, url, split, "--resume"), env=env)
    assert r.returncode == 0, r.stderr
    assert "wrote 320 samples" in r.stdout, r.stdout
    assert f"resumed: {written_before_block(src)} of them" in r.stdout, r.stdout
    assert "circle/zz_empty.jpg: empty file (0 bytes)" in r.stdout, r.stdout
    # Resuming a finished ingest changes nothing.
    r = cli(*ingest_args(src, url, split, "--resume"), env=env)
    assert r.returncode == 0 and "resumed: 320 of them" in r.stdout, r.stderr


def data_ids(cassandra: Cluster, url: str) -> list[str]:
    keyspace = url.rsplit("/", 1)[1]
    (rows,) = cassandra.cql(f"SELECT id FROM {keyspace}.{TABLE}")
    return sorted(r["id"] for r in rows)


@pytest.mark.slow
def test_cli_resume_after_sigint_cassandra(
    source: Path, tmp_path: Path, cassandra: Cluster, keyspace_url: str
) -> None:
    clean_url, url = keyspace_url + "clean", keyspace_url
    clean_split, split = tmp_path / "clean.split", tmp_path / "s.split"
    r = cli(*ingest_args(source, clean_url, clean_split))
    assert r.returncode == 0, r.stderr
    clean = contents(clean_url, clean_split)
    check_clean(clean, source)
    run_interrupted_then_resume(source, url, split, lambda: cc.open_store(url))
    got = contents(url, split)
    assert got == clean
    # The data table holds each sample once, and no other row.
    ids = data_ids(cassandra, url)
    assert ids == data_ids(cassandra, clean_url)
    assert ids == sorted(str(uuid.UUID(bytes=m[0])) for m in got["meta"])


def interrupt_this_process_when(cond: Callable[[], bool]) -> threading.Thread:
    def run() -> None:
        wait_until(cond)
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("where", ["local", "cassandra"])
def test_python_resume_after_sigint(
    source: Path, tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    if where == "local":
        clean_url, url = f"local:{tmp_path / 'clean'}", f"local:{tmp_path / 'store'}"
    else:
        url = request.getfixturevalue("keyspace_url")
        clean_url = url + "clean"
    clean_split, split = tmp_path / "clean.split", tmp_path / "s.split"
    ingest_folder(source, clean_url, TABLE, split_file=clean_split, progress=False)
    clean = contents(clean_url, clean_split)
    check_clean(clean, source)

    with fifo_in_place_of(blocked_file(source)) as reader_waiting:
        t = interrupt_this_process_when(reader_waiting)
        with pytest.raises(KeyboardInterrupt):
            ingest_folder(source, url, TABLE, split_file=split, progress=False)
        t.join()
    assert not split.exists()
    st = cc.open_store(url)
    assert len(st.scan_metadata(f"{TABLE}_metadata")) == written_before_block(source)
    # As if the interruption had come between a chunk's data and its metadata:
    # a data row (here with wrong bytes) that no metadata row vouches for.
    files = scan_image_folder(source).files
    orphan = files[BLOCK_AT - 10][0]
    st.put_samples(
        TABLE, sample_uuid(TABLE, orphan.relative_to(source).as_posix()), [0], [b"half-written"]
    )
    with pytest.raises(errors.TableExistsError, match=r"resume=True \(--resume\)"):
        ingest_folder(source, url, TABLE, split_file=split, progress=False)
    report = ingest_folder(source, url, TABLE, split_file=split, resume=True, progress=False)
    assert (report.written, report.resumed) == (320, written_before_block(source))
    assert report.skipped == [("circle/zz_empty.jpg", "empty file (0 bytes)")]
    assert contents(url, split) == clean


def test_resume_without_tables_is_a_plain_ingest(source: Path, tmp_path: Path) -> None:
    a, b = f"local:{tmp_path / 'a'}", f"local:{tmp_path / 'b'}"
    ingest_folder(source, a, TABLE, split_file=tmp_path / "a.split", progress=False)
    report = ingest_folder(
        source, b, TABLE, split_file=tmp_path / "b.split", resume=True, progress=False
    )
    assert (report.written, report.resumed) == (320, 0)
    assert contents(a, tmp_path / "a.split") == contents(b, tmp_path / "b.split")


def test_resume_refuses_tables_of_another_ingest(tmp_path: Path) -> None:
    one = make_image_folder(tmp_path / "one", classes=2, per_class=3, small=True)
    other = make_image_folder(tmp_path / "other", classes=3, per_class=2, small=True, seed=1)
    url = f"local:{tmp_path / 'store'}"
    ingest_folder(one, url, TABLE, progress=False)
    # Another source: samples the tables hold that it does not list.
    with pytest.raises(errors.InvalidArgumentError, match=r"another ingest.*--overwrite"):
        ingest_folder(other, url, TABLE, resume=True, progress=False)
    # The same files, but a new class folder that sorts first: every label moved.
    make_image_folder(tmp_path / "new", classes=1, per_class=1, small=True)
    (tmp_path / "new" / "circle").rename(one / "aaa")
    with pytest.raises(errors.InvalidArgumentError, match=r"the source changed.*--overwrite"):
        ingest_folder(one, url, TABLE, resume=True, progress=False)
    with pytest.raises(errors.InvalidArgumentError, match="exclude each other"):
        ingest_folder(one, url, TABLE, resume=True, overwrite=True, progress=False)


def test_failed_ingest_creates_no_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    r = cli("ingest", "folder", str(tmp_path / "nope"), "--store", f"local:{store}", "--table", "t")
    assert r.returncode == 2 and "does not exist" in r.stderr
    (tmp_path / "empty").mkdir()
    r = cli(
        "ingest", "folder", str(tmp_path / "empty"), "--store", f"local:{store}", "--table", "t"
    )
    assert r.returncode == 2 and "no class sub-folders" in r.stderr
    (tmp_path / "empty" / "cls").mkdir()
    r = cli(
        "ingest", "folder", str(tmp_path / "empty"), "--store", f"local:{store}", "--table", "t"
    )
    assert r.returncode == 2 and "no files" in r.stderr
    assert not store.exists()
