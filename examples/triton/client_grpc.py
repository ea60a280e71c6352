"""Asynchronous requests over gRPC to crs4_cassandra_interactive: a split's uuids
in batches, every request in flight at once, each answer checked as it comes.

python examples/triton/client_grpc.py --split-file inet.split [--batch 64] [--url localhost:8001]
"""

from __future__ import annotations

import queue
import time

from common import import_tritonclient, parser, split_uuids

from crs4_cassandra.triton import INTERACTIVE, to_pairs

import_tritonclient()
import tritonclient.grpc as grpcclient  # noqa: E402


def main() -> None:
    p = parser(__doc__, "localhost:8001")
    p.add_argument("--batch", type=int, default=64)
    a = p.parse_args()
    uuids = split_uuids(a.split_file, a.split)
    client = grpcclient.InferenceServerClient(a.url)
    done: queue.Queue[tuple[int, object, object]] = queue.Queue()
    t0 = time.perf_counter()
    batches = range(0, len(uuids), a.batch)
    for k, start in enumerate(batches):
        pairs = to_pairs(uuids[start : start + a.batch])
        i = grpcclient.InferInput("UUID", list(pairs.shape), "UINT64")
        i.set_data_from_numpy(pairs)
        client.async_infer(
            INTERACTIVE,
            [i],
            callback=lambda result, error, k=k: done.put((k, result, error)),
            outputs=[grpcclient.InferRequestedOutput("DATA")],
            client_timeout=60,
        )
    samples = 0
    for _ in batches:
        k, result, error = done.get()
        if error is not None:
            raise SystemExit(f"request {k}: {error}")
        samples += len(result.as_numpy("DATA"))  # type: ignore[attr-defined]
    dt = time.perf_counter() - t0
    print(f"{len(batches)} requests, {samples} samples in {dt:.2f} s ({samples / dt:,.0f}/s)")
    client.close()


if __name__ == "__main__":
    main()
