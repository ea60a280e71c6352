"""One streaming request over gRPC to crs4_cassandra_stream: a long uuid list in,
responses of batch_size samples each back as the server reads them (prefetching),
then a final empty response.

python examples/triton/client_grpc_stream.py --split-file inet.split [--batch-size 64]
    [--url localhost:8001]
"""

from __future__ import annotations

import queue
import time

import numpy as np
from common import import_tritonclient, parser, split_uuids

from crs4_cassandra.triton import STREAM, to_pairs

import_tritonclient()
import tritonclient.grpc as grpcclient  # noqa: E402


def main() -> None:
    p = parser(__doc__, "localhost:8001")
    p.add_argument("--batch-size", type=int, default=64, help="samples per response")
    a = p.parse_args()
    pairs = to_pairs(split_uuids(a.split_file, a.split))
    client = grpcclient.InferenceServerClient(a.url)
    responses: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    uuids = grpcclient.InferInput("UUID", list(pairs.shape), "UINT64")
    uuids.set_data_from_numpy(pairs)
    size = grpcclient.InferInput("BATCH_SIZE", [1], "INT32")
    size.set_data_from_numpy(np.array([a.batch_size], dtype=np.int32))
    t0 = time.perf_counter()
    client.async_stream_infer(STREAM, [uuids, size], enable_empty_final_response=True)
    seen = np.zeros(len(pairs), dtype=np.int64)
    n_responses = 0
    while True:
        result, error = responses.get()
        if error is not None:
            raise SystemExit(f"stream failed: {error}")
        index = result.as_numpy("INDEX")  # type: ignore[attr-defined]
        if index is not None:  # positions in the request of this response's samples
            seen[index] += 1
            n_responses += 1
        final = result.get_response().parameters["triton_final_response"]  # type: ignore[attr-defined]
        if final.bool_param:
            break
    dt = time.perf_counter() - t0
    client.stop_stream()
    client.close()
    assert (seen == 1).all(), "every uuid exactly once"
    print(f"{len(pairs)} samples in {n_responses} responses, {dt:.2f} s ({len(pairs) / dt:,.0f}/s)")


if __name__ == "__main__":
    main()
