"""Inference serving through Triton on CPU: the interactive model's requests/s and
samples/s at concurrency 1, 4 and 16 (batch 64), and the stream model's samples/s,
against an Apache Cassandra node behind toxiproxy with 0 and 50 ms of added latency.

python -m bench.triton [--images 2000] [--kb 110] [--seconds 6] [--instances 4]
    [--folder DIR] [--out bench/results/triton.json]

One process does it all: it starts the Cassandra node (testbed), ingests the
generated JPEGs, starts ``tritonserver`` (the binary bundled in nvidia-pytriton,
models ``crs4_cassandra_interactive`` with ``--instances`` instances and
``crs4_cassandra_stream``) over it, and drives it with ``tritonclient`` gRPC
clients, one thread each, each request 64 random uuids (``DATA`` and ``LABELS``
asked for: the encoded samples, no decoding). The stream is one request for
every uuid of the table repeated to 10,000 or more, in responses of 64. Each
figure is one run of ``--seconds`` after a warm-up. The CPU shares are CPU
seconds over the wall time of the runs, per process group, on a machine whose
cores the node, the server, its stubs and the clients all share.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

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

from .common import HERE, folder_stats, image_folder, log, machine, write_json

sys.path.insert(0, str(HERE.parent))
from testbed import Cluster  # noqa: E402

BATCH = 64
CONCURRENCY = (1, 4, 16)
DELAYS_MS = (0, 50)
STREAM_MIN = 10_000


def _group_cpu(pgid: int) -> float:
    """CPU seconds of every live process in process group ``pgid``."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields[0] is the state; pgrp is the 5th field
            total += (int(fields[11]) + int(fields[12])) / tck
    return total


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def interactive(
    grpc: Any,
    url: str,
    uuids: np.ndarray,
    clients: int,
    seconds: float,
    batch: int = BATCH,
    outputs: tuple[str, ...] = ("DATA", "LABELS"),
) -> dict[str, float]:
    """requests/s and samples/s of ``clients`` threads over ``seconds``, each
    request ``batch`` random uuids asking for ``outputs``."""
    stop = time.monotonic() + seconds
    counts = [0] * clients
    errors: list[str] = []

    def run(k: int) -> None:
        rng = np.random.default_rng(k)
        c = grpc.InferenceServerClient(url)
        outs = [grpc.InferRequestedOutput(o) for o in outputs]
        try:
            while time.monotonic() < stop:
                pairs = to_pairs(uuids[rng.choice(len(uuids), batch, replace=False)])
                i = grpc.InferInput("UUID", list(pairs.shape), "UINT64")
                i.set_data_from_numpy(pairs)
                r = c.infer(INTERACTIVE, [i], outputs=outs)
                if len(r.as_numpy(outputs[0])) != batch:
                    errors.append("short answer")
                counts[k] += 1
        except Exception as e:
            errors.append(str(e))
        finally:
            c.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    n = sum(counts)
    return {"requests_per_s": n / dt, "samples_per_s": n * batch / dt, "seconds": dt}


def stream(grpc: Any, url: str, uuids: np.ndarray) -> dict[str, Any]:
    """samples/s of one stream request for all of ``uuids``."""
    c = grpc.InferenceServerClient(url)
    q: queue.Queue[tuple[Any, Any]] = queue.Queue()
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    try:
        pairs = to_pairs(uuids)
        i = grpc.InferInput("UUID", list(pairs.shape), "UINT64")
        i.set_data_from_numpy(pairs)
        outs = [grpc.InferRequestedOutput("DATA"), grpc.InferRequestedOutput("INDEX")]
        t0 = time.perf_counter()
        c.async_stream_infer(STREAM, [i], outputs=outs, enable_empty_final_response=True)
        n = nbytes = 0
        first = None
        while True:
            result, error = q.get(timeout=120)
            if error is not None:
                raise RuntimeError(str(error))
            data = result.as_numpy("DATA")
            if data is not None:
                first = first or time.perf_counter() - t0
                n += len(data)
                nbytes += sum(len(d) for d in data)
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
        dt = time.perf_counter() - t0
    finally:
        c.stop_stream()
        c.close()
    if n != len(uuids):
        raise RuntimeError(f"the stream returned {n} of {len(uuids)} samples")
    return {"samples_per_s": n / dt, "gbps": nbytes / dt / 1e9, "first_response_s": first}


def run(folder: Path, seconds: float, instances: int) -> dict[str, Any]:
    n_images, mean = folder_stats(folder)
    sys.path.append(triton_env.client_path(triton_env.ensure_env()))
    import tritonclient.grpc as grpc

    rows: list[dict[str, Any]] = []
    with Cluster(1, name="triton", heap="1g") as cl, tempfile.TemporaryDirectory() as tmp:
        url = cl.url("tri")
        report = ingest_folder(folder, url, "data", val_frac=0.0, progress=False)
        assert report.split_file is not None
        uuids = report.split_file.uuids("train")
        repeat = -(-STREAM_MIN // len(uuids))
        stream_uuids = np.tile(uuids, (repeat, 1))
        http, grpc_port, metrics = _free_ports(3)
        settings = ModelSettings(
            store=url, table="data", instances=instances, python_path=package_root()
        )
        repo = write_repository(Path(tmp) / "models", settings)
        with TritonServer(
            repo,
            http_port=http,
            grpc_port=grpc_port,
            metrics_port=metrics,
            log_path=Path(tmp) / "tritonserver.log",
        ) as server:
            assert server.process is not None
            pgid = server.process.pid
            for delay in DELAYS_MS:
                cl.proxies[0].clear()
                if delay:
                    cl.proxies[0].latency(delay)
                interactive(grpc, server.grpc_url, uuids, 4, 1.5)  # warm-up
                for clients in CONCURRENCY:
                    before = (_self_cpu(), _group_cpu(pgid), cl.cpu_seconds())
                    r = interactive(grpc, server.grpc_url, uuids, clients, seconds)
                    after = (_self_cpu(), _group_cpu(pgid), cl.cpu_seconds())
                    shares = [(b - a) / r["seconds"] for a, b in zip(before, after, strict=True)]
                    rows.append(
                        {
                            "model": "interactive",
                            "delay_ms": delay,
                            "concurrency": clients,
                            **r,
                            "cores": dict(
                                zip(("clients", "triton", "cassandra"), shares, strict=True)
                            ),
                        }
                    )
                    log(
                        f"+{delay} ms, interactive x{clients}: {r['requests_per_s']:.1f} req/s, "
                        f"{r['samples_per_s']:,.0f} samples/s; cores clients/triton/cassandra "
                        + "/".join(f"{s:.2f}" for s in shares)
                    )
                stream(grpc, server.grpc_url, uuids)  # warm-up (and the tuner's learning)
                t0 = time.perf_counter()
                before = (_self_cpu(), _group_cpu(pgid), cl.cpu_seconds())
                r = stream(grpc, server.grpc_url, stream_uuids)
                after = (_self_cpu(), _group_cpu(pgid), cl.cpu_seconds())
                dt = time.perf_counter() - t0
                shares = [(b - a) / dt for a, b in zip(before, after, strict=True)]
                rows.append(
                    {
                        "model": "stream",
                        "delay_ms": delay,
                        "samples": len(stream_uuids),
                        **r,
                        "cores": dict(zip(("clients", "triton", "cassandra"), shares, strict=True)),
                    }
                )
                log(
                    f"+{delay} ms, stream of {len(stream_uuids)}: {r['samples_per_s']:,.0f} "
                    f"samples/s, first response {r['first_response_s']:.2f} s; cores "
                    + "/".join(f"{s:.2f}" for s in shares)
                )
            cl.proxies[0].clear()
    return {
        "machine": machine(),
        "images": n_images,
        "mean_kb": mean / 1000,
        "batch": BATCH,
        "instances": instances,
        "seconds": seconds,
        "rows": rows,
    }


def table(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Inference serving through Triton (CPU, Apache Cassandra behind toxiproxy)",
        "",
        f"`python -m bench.triton`: {r['images']} JPEGs, mean {r['mean_kb']:.0f} KB, in one "
        "Cassandra node; `crs4-cassandra serve triton` models (the tritonserver bundled in "
        f"nvidia-pytriton, Python backend, {r['instances']} interactive instances, CPU); "
        f"gRPC clients in threads of one process, each request {r['batch']} random uuids, "
        "encoded samples back (no decoding). The stream is one request for the table "
        "repeated to 10,000+ uuids, in responses of 64. One run of "
        f"{r['seconds']:.0f} s each after a warm-up, on {r['machine']}: the node, the server, "
        "its backend stubs and the clients share these cores with other users' jobs, so "
        "figures move by 10-20% between runs. Cores used: CPU seconds per second of clients "
        "/ tritonserver and its stubs / Cassandra.",
        "",
        "| model | added latency | concurrency | requests/s | samples/s | cores used |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in r["rows"]:
        cores = " / ".join(f"{v:.2f}" for v in row["cores"].values())
        if row["model"] == "interactive":
            lines.append(
                f"| interactive | {row['delay_ms']} ms | {row['concurrency']} "
                f"| {row['requests_per_s']:,.1f} | {row['samples_per_s']:,.0f} | {cores} |"
            )
        else:
            lines.append(
                f"| stream ({row['samples']:,} uuids) | {row['delay_ms']} ms | 1 | "
                f"| {row['samples_per_s']:,.0f} | {cores} |"
            )
    lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--kb", type=float, default=110.0)
    ap.add_argument("--folder", type=Path, help="an existing image folder instead")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "triton.json")
    a = ap.parse_args()
    folder = a.folder or image_folder(a.images, a.kb)
    r = run(folder, a.seconds, a.instances)
    a.out.parent.mkdir(exist_ok=True)
    if a.out == HERE / "results" / "triton.json":
        write_json("triton", r)
    else:
        a.out.write_text(json.dumps(r, indent=2))
    print("\n".join(table(r)))


if __name__ == "__main__":
    main()
