"""One request over HTTP to crs4_cassandra_interactive: a batch of uuids in, the
encoded samples and their labels out (and PREDICTIONS when the server runs a model).

python examples/triton/client_http.py --split-file inet.split [--batch 64] [--url localhost:8000]
"""

from __future__ import annotations

from common import import_tritonclient, parser, split_uuids

from crs4_cassandra.triton import INTERACTIVE, to_pairs

import_tritonclient()
import tritonclient.http as httpclient  # noqa: E402


def main() -> None:
    p = parser(__doc__, "localhost:8000")
    p.add_argument("--batch", type=int, default=64)
    a = p.parse_args()
    pairs = to_pairs(split_uuids(a.split_file, a.split)[: a.batch])  # (N, 2) uint64
    client = httpclient.InferenceServerClient(a.url)
    uuids = httpclient.InferInput("UUID", list(pairs.shape), "UINT64")
    uuids.set_data_from_numpy(pairs, binary_data=True)
    wanted = ["DATA", "LABELS"]
    outputs = {o["name"] for o in client.get_model_metadata(INTERACTIVE)["outputs"]}
    if "PREDICTIONS" in outputs:
        wanted.append("PREDICTIONS")
    result = client.infer(
        INTERACTIVE,
        [uuids],
        outputs=[httpclient.InferRequestedOutput(o, binary_data=True) for o in wanted],
    )
    data, labels = result.as_numpy("DATA"), result.as_numpy("LABELS")
    print(f"{len(data)} samples, {sum(len(d) for d in data):,} bytes; labels {labels[:8]}...")
    if "PREDICTIONS" in wanted:
        predicted = result.as_numpy("PREDICTIONS").argmax(1)
        print(f"predicted {predicted[:8]}...; accuracy {(predicted == labels).mean():.3f}")
    client.close()


if __name__ == "__main__":
    main()
