"""Inference through a real tritonserver process (the binary bundled in
nvidia-pytriton, Python backend, on CPU): the interactive and stream models,
over the local store and over the Cassandra node."""

from __future__ import annotations

import filecmp
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crs4_cassandra import ShardedDataset, SplitFile, _native
from crs4_cassandra.ingest import ingest_folder
from crs4_cassandra.triton import (
    INTERACTIVE,
    STREAM,
    ModelSettings,
    TritonServer,
    to_pairs,
    write_repository,
)
from crs4_cassandra.triton import env as triton_env
from crs4_cassandra.triton.server import package_root

from .conftest import fill_table

ROOT = Path(__file__).resolve().parents[1]
SIZE = (32, 32)
EXTRA = 4895  # random-byte samples added to the 105 images: 5,000 in the table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tc() -> Any:
    """tritonclient, from the Triton environment (built here when missing)."""
    path = triton_env.client_path(triton_env.ensure_env())
    if path not in sys.path:
        sys.path.append(path)  # after this environment: its numpy stays in use
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    class Clients:
        grpc = grpcclient
        http = httpclient

    return Clients


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tiny_model(path: Path) -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 5),
    ).eval()
    scripted = torch.jit.script(net)
    scripted.save(str(path))
    return scripted


class Served:
    """A running server and what it serves."""

    def __init__(self, http: str, grpc: str, uuids: np.ndarray, store: Any, table: str) -> None:
        self.http, self.grpc, self.uuids, self.store, self.table = http, grpc, uuids, store, table

    def expected(self, raw: np.ndarray) -> tuple[list[bytes], list[object]]:
        got = [self.store.get(self.table, bytes(r)) for r in raw]
        return [d for _, d in got], [label for label, _ in got]


@pytest.fixture(scope="module")
def local_served(
    tc: Any, image_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`crs4-cassandra serve triton` over a local store of 5,000 samples (105 of
    them images), with a TorchScript model; stopped at the end."""
    root = tmp_path_factory.mktemp("triton-local")
    url = f"local:{root / 'store'}"
    split = root / "shapes.split"
    ingest_folder(image_folder, url, "shapes", val_frac=0.0, split_file=split, progress=False)
    images = SplitFile.load(split).uuids("train")
    st = _native.open_store(url)
    rng = np.random.default_rng(1)
    extra = [uuid.uuid4().bytes for _ in range(EXTRA)]
    st.put_samples(
        "shapes",
        b"".join(extra),
        [int(x) for x in rng.integers(0, 5, EXTRA)],
        [rng.bytes(int(rng.integers(1, 300))) for _ in range(EXTRA)],
    )
    uuids = np.concatenate([images, np.frombuffer(b"".join(extra), np.uint8).reshape(-1, 16)])
    tiny_model(root / "tiny.pt")
    http, grpc, metrics = free_ports(3)
    log = root / "tritonserver.log"
    cmd = [
        sys.executable,
        "-m",
        "crs4_cassandra.cli",
        "serve",
        "triton",
        "--store",
        url,
        "--table",
        "shapes",
        "--model",
        str(root / "tiny.pt"),
        "--size",
        f"{SIZE[0]},{SIZE[1]}",
        "--max-uuids",
        "1000",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
        f"--log={log}",
    ]
    environ = {**os.environ, "PYTHONPATH": package_root()}
    proc = subprocess.Popen(cmd, env=environ, start_new_session=True)
    probe = TritonServer(root, http_port=http)
    try:
        deadline = time.monotonic() + 180
        while not probe.ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text()[-3000:] if log.exists() else ""
                raise RuntimeError(f"serve triton did not come up (exit {proc.poll()}):\n{tail}")
            time.sleep(0.25)
        served = Served(f"localhost:{http}", f"localhost:{grpc}", uuids, st, "shapes")
        served.images = images  # type: ignore[attr-defined]
        served.model_path = root / "tiny.pt"  # type: ignore[attr-defined]
        served.url = url  # type: ignore[attr-defined]
        served.split = split  # type: ignore[attr-defined]
        yield served
    finally:
        proc.terminate()  # the CLI stops its tritonserver (and the stubs) on SIGTERM
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def uuid_input(tc: Any, proto: str, raw: np.ndarray, strings: bool = False) -> Any:
    mod = getattr(tc, proto)
    if strings:
        data = np.array([str(uuid.UUID(bytes=bytes(r))) for r in raw], dtype=object)
        i = mod.InferInput("UUID_STR", list(data.shape), "BYTES")
    else:
        data = to_pairs(raw)
        i = mod.InferInput("UUID", list(data.shape), "UINT64")
    i.set_data_from_numpy(data)
    return i


def infer(tc: Any, proto: str, url: str, raw: np.ndarray, *outputs: str, strings: bool = False):
    mod = getattr(tc, proto)
    client = mod.InferenceServerClient(url)
    try:
        requested = [mod.InferRequestedOutput(o) for o in outputs] or None
        return client.infer(INTERACTIVE, [uuid_input(tc, proto, raw, strings)], outputs=requested)
    finally:
        client.close()


def stream(
    tc: Any, url: str, raw: np.ndarray, batch_size: int | None = None, *outputs: str
) -> tuple[list[Any], str | None]:
    """The responses of one stream request (up to the final one) and the error, if any."""
    client = tc.grpc.InferenceServerClient(url)
    q: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    try:
        inputs = [uuid_input(tc, "grpc", raw)]
        if batch_size is not None:
            b = tc.grpc.InferInput("BATCH_SIZE", [1], "INT32")
            b.set_data_from_numpy(np.array([batch_size], dtype=np.int32))
            inputs.append(b)
        requested = [tc.grpc.InferRequestedOutput(o) for o in outputs] or None
        client.async_stream_infer(
            STREAM, inputs, outputs=requested, enable_empty_final_response=True
        )
        responses = []
        while True:
            result, error = q.get(timeout=60)
            if error is not None:
                return responses, str(error)
            params = result.get_response().parameters
            if result.as_numpy("DATA") is not None:
                responses.append(result)
            if params["triton_final_response"].bool_param:
                return responses, None
    finally:
        client.stop_stream()
        client.close()


# --- the repository shipped --------------------------------------------------------------


def test_shipped_repository_is_what_write_repository_writes(tmp_path: Path) -> None:
    fresh = write_repository(tmp_path / "models", ModelSettings())
    shipped = ROOT / "examples" / "triton" / "models"
    for model in (INTERACTIVE, STREAM):
        for f in ("config.pbtxt", "1/model.py"):
            assert filecmp.cmp(fresh / model / f, shipped / model / f, shallow=False), (
                f"examples/triton/models/{model}/{f} is stale: "
                "python -m crs4_cassandra.triton examples/triton/models"
            )


# --- local store, through `crs4-cassandra serve triton` ----------------------------------


@pytest.mark.parametrize("proto", ["http", "grpc"])
@pytest.mark.parametrize("strings", [False, True])
def test_interactive_samples_are_byte_identical(
    tc: Any, local_served: Served, proto: str, strings: bool
) -> None:
    rng = np.random.default_rng(0)
    raw = local_served.uuids[rng.choice(len(local_served.uuids), 64, replace=False)]
    url = local_served.http if proto == "http" else local_served.grpc
    r = infer(tc, proto, url, raw, "DATA", "LABELS", strings=strings)
    data, labels = local_served.expected(raw)
    assert list(r.as_numpy("DATA")) == data
    assert r.as_numpy("LABELS").tolist() == labels


def test_interactive_images_and_predictions(tc: Any, local_served: Served) -> None:
    images_uuids = local_served.images  # type: ignore[attr-defined]
    raw = images_uuids[:16]
    r = infer(tc, "grpc", local_served.grpc, raw, "IMAGES", "PREDICTIONS", "LABELS")
    ds = ShardedDataset(
        local_served.url,  # type: ignore[attr-defined]
        "shapes",
        raw,
        16,
        shuffle=False,
        decode="rgb",
        size=SIZE,
    )
    (batch,) = list(ds)
    assert batch.images is not None
    np.testing.assert_array_equal(r.as_numpy("IMAGES"), batch.images.numpy())
    model = torch.jit.load(str(local_served.model_path))  # type: ignore[attr-defined]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    x = batch.images.permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        want = model((x - mean) / std).numpy()
    np.testing.assert_allclose(r.as_numpy("PREDICTIONS"), want, rtol=1e-4, atol=1e-5)


def test_stream_returns_every_uuid_exactly_once(tc: Any, local_served: Served) -> None:
    raw = local_served.uuids
    assert len(raw) == 5000
    responses, error = stream(tc, local_served.grpc, raw, 64, "DATA", "LABELS", "INDEX")
    assert error is None
    sizes = [len(r.as_numpy("INDEX")) for r in responses]
    assert sizes == [64] * (5000 // 64) + [5000 % 64]  # pads of the last batch not sent
    index = np.concatenate([r.as_numpy("INDEX") for r in responses])
    assert sorted(index.tolist()) == list(range(5000))
    data = [d for r in responses for d in r.as_numpy("DATA")]
    want, _ = local_served.expected(raw[index])
    assert data == want


def test_sixteen_concurrent_clients(tc: Any, local_served: Served) -> None:
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            rng = np.random.default_rng(100 + k)
            proto = "grpc" if k % 2 else "http"
            url = local_served.grpc if k % 2 else local_served.http
            for _ in range(3):
                raw = local_served.uuids[rng.choice(len(local_served.uuids), 64, replace=False)]
                r = infer(tc, proto, url, raw, "DATA", "LABELS")
                data, labels = local_served.expected(raw)
                assert list(r.as_numpy("DATA")) == data
                assert r.as_numpy("LABELS").tolist() == labels
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors


def test_unknown_uuid_is_named_and_the_server_keeps_serving(tc: Any, local_served: Served) -> None:
    ghost = uuid.uuid4()
    raw = np.concatenate([local_served.uuids[:3], np.frombuffer(ghost.bytes, np.uint8)[None]])
    for proto, url in (("http", local_served.http), ("grpc", local_served.grpc)):
        with pytest.raises(tc.http.InferenceServerException if proto == "http" else Exception) as e:
            infer(tc, proto, url, raw, "DATA")
        assert str(ghost) in str(e.value)
    # The stream: the batches before it arrive, then the error naming it.
    raw = np.concatenate([local_served.uuids[:200], np.frombuffer(ghost.bytes, np.uint8)[None]])
    responses, error = stream(tc, local_served.grpc, raw, 50, "INDEX")
    assert error is not None and str(ghost) in error
    assert len(responses) <= 4
    r = infer(tc, "grpc", local_served.grpc, local_served.uuids[:3], "DATA")
    assert len(r.as_numpy("DATA")) == 3


def test_bad_requests_get_clear_errors_and_the_server_stays_healthy(
    tc: Any, local_served: Served
) -> None:
    g = tc.grpc
    client = g.InferenceServerClient(local_served.grpc)
    try:

        def refused(inputs: list[Any], model: str = INTERACTIVE) -> str:
            with pytest.raises(Exception) as e:
                client.infer(model, inputs)
            return str(e.value)

        wrong_dtype = g.InferInput("UUID", [4, 2], "INT64")
        wrong_dtype.set_data_from_numpy(np.zeros((4, 2), np.int64))
        assert "UINT64" in refused([wrong_dtype])
        wrong_shape = g.InferInput("UUID", [4, 3], "UINT64")
        wrong_shape.set_data_from_numpy(np.zeros((4, 3), np.uint64))
        assert "shape" in refused([wrong_shape])
        assert "neither" in refused([])
        pairs = uuid_input(tc, "grpc", local_served.uuids[:2])
        strings = uuid_input(tc, "grpc", local_served.uuids[:2], strings=True)
        assert "both" in refused([pairs, strings])
        bad = g.InferInput("UUID_STR", [2], "BYTES")
        bad.set_data_from_numpy(np.array([str(uuid.uuid4()), "not-a-uuid"], dtype=object))
        assert "not-a-uuid" in refused([bad])
        assert "max_uuids" in refused([uuid_input(tc, "grpc", local_served.uuids[:1001])])
        # A stream with a bad input answers its error and ends.
        _, error = stream(tc, local_served.grpc, np.zeros((0, 16), np.uint8), 0)
        assert error is not None and "BATCH_SIZE" in error
        for _ in range(3):
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready(INTERACTIVE) and client.is_model_ready(STREAM)
        r = client.infer(INTERACTIVE, [uuid_input(tc, "grpc", local_served.uuids[:5])])
        data, _ = local_served.expected(local_served.uuids[:5])
        assert list(r.as_numpy("DATA")) == data
        # No uuids: empty answers.
        r = client.infer(INTERACTIVE, [uuid_input(tc, "grpc", np.zeros((0, 16), np.uint8))])
        assert r.as_numpy("DATA").shape == (0,)
        responses, error = stream(tc, local_served.grpc, np.zeros((0, 16), np.uint8))
        assert error is None and responses == []
    finally:
        client.close()


@pytest.mark.parametrize(
    "client, port, extra",
    [
        ("client_http.py", "http", ["--batch", "16"]),
        ("client_grpc.py", "grpc", ["--batch", "16"]),
        ("client_grpc_stream.py", "grpc", ["--batch-size", "10"]),
    ],
)
def test_example_clients(local_served: Served, client: str, port: str, extra: list[str]) -> None:
    url = local_served.http if port == "http" else local_served.grpc
    split = str(local_served.split)  # type: ignore[attr-defined]
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "triton" / client), "--url", url]
        + ["--split-file", split, "--split", "train", *extra],
        env={**os.environ, "PYTHONPATH": package_root()},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert r.returncode == 0, r.stderr
    n = 16 if client == "client_http.py" else 105
    assert f"{n} samples" in r.stdout, r.stdout
    if client == "client_http.py":
        assert "accuracy" in r.stdout  # the server runs a model: PREDICTIONS came back


# --- the Cassandra node --------------------------------------------------------------------


@pytest.mark.timeout(400)
def test_cassandra_interactive_and_stream(tc: Any, keyspace_url: str, tmp_path: Path) -> None:
    ids, data, labels = fill_table(keyspace_url, "data", "int", 5000, seed=5)
    http, grpc, metrics = free_ports(3)
    repo = write_repository(
        tmp_path / "models",
        ModelSettings(store=keyspace_url, table="data", python_path=package_root()),
    )
    by_id = {bytes(r): (d, lab) for r, d, lab in zip(ids, data, labels, strict=True)}
    with TritonServer(
        repo,
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        log_path=tmp_path / "tritonserver.log",
    ) as server:
        raw = ids[np.random.default_rng(1).choice(5000, 64, replace=False)]
        r = infer(tc, "http", server.http_url, raw, "DATA", "LABELS")
        assert list(r.as_numpy("DATA")) == [by_id[bytes(x)][0] for x in raw]
        assert r.as_numpy("LABELS").tolist() == [by_id[bytes(x)][1] for x in raw]
        responses, error = stream(tc, server.grpc_url, ids, 64, "DATA", "INDEX")
        assert error is None
        index = np.concatenate([x.as_numpy("INDEX") for x in responses])
        assert sorted(index.tolist()) == list(range(5000))
        got = [d for x in responses for d in x.as_numpy("DATA")]
        assert got == [data[i] for i in index]
        ghost = uuid.uuid4()
        with pytest.raises(Exception) as e:
            infer(tc, "grpc", server.grpc_url, np.frombuffer(ghost.bytes, np.uint8)[None], "DATA")
        assert str(ghost) in str(e.value)
        assert infer(tc, "grpc", server.grpc_url, raw[:2], "DATA").as_numpy("DATA").shape == (2,)
