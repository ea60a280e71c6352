"""Triton on a GPU: the interactive model with DALI GPU decoding and a ResNet-50,
images/s end to end, against the same pipeline fed from memory in the same run.

python -m bench.triton_gpu [--images 4096] [--kb 110] [--batch 64] [--concurrency 16]
    [--instances 2] [--seconds 10] [--out bench/results/triton_gpu.json]

Needs a CUDA GPU, torch, torchvision and nvidia-dali in this environment (the
project's virtualenv has them); the Triton environment (the tritonserver bundled
in nvidia-pytriton) is built on first use like everywhere else.

1. Generates ImageNet-like JPEGs (~110 KB; bench.dali_gpu's generator, on every
   core) and ingests them into a local store.
2. Saves a ResNet-50 (torchvision, random weights: no download; the work per
   image is the real one) as TorchScript.
3. Triton: ``crs4_cassandra_interactive`` on GPU 0 (``decoder="dali"``: nvJPEG
   through ``fn.decoders.image(device="mixed")``, resize to 224x224, then the
   ResNet-50 in float32), ``--instances`` instances; ``--concurrency`` gRPC
   clients in threads, each request ``--batch`` random uuids asking for
   PREDICTIONS only. Also the same with DATA only (no decode, no model): what
   serving the bytes costs.
4. From memory: the same decoder class and model, in this process, one per
   ``--instances`` thread, fed the same JPEGs held in memory, ``--batch`` at a
   time: the ceiling without the store, the server and the network.

Each figure is one run of ``--seconds`` after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from crs4_cassandra.ingest import ingest_folder
from crs4_cassandra.triton import ModelSettings, TritonServer, write_repository
from crs4_cassandra.triton import env as triton_env
from crs4_cassandra.triton.backend import IMAGENET_MEAN, IMAGENET_STD, _DaliDecoder
from crs4_cassandra.triton.server import package_root

from .dali_gpu import make_folder
from .triton import _free_ports, interactive

SIZE = (224, 224)


def resnet50(path: Path) -> None:
    import torch
    import torchvision

    net = torchvision.models.resnet50(weights=None).eval().cuda()
    with torch.inference_mode():
        traced = torch.jit.trace(net, torch.zeros(1, 3, *SIZE, device="cuda"))
    traced.save(str(path))


def from_memory(
    model_path: Path, jpegs: list[np.ndarray], batch: int, threads: int, seconds: float
) -> float:
    """images/s of the same decode + model on in-memory JPEGs, ``threads`` at once."""
    import torch

    counts = [0] * threads

    def run(k: int, stop: float) -> None:
        decoder = _DaliDecoder(SIZE, 0)
        model = torch.jit.load(str(model_path), map_location="cuda:0").eval()
        mean = torch.tensor(IMAGENET_MEAN, device="cuda:0").view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device="cuda:0").view(1, 3, 1, 1) * 255
        rng = np.random.default_rng(k)
        while time.monotonic() < stop:
            pick = rng.choice(len(jpegs), batch, replace=False)
            images = decoder.decode([jpegs[i] for i in pick])
            with torch.inference_mode():
                x = images.permute(0, 3, 1, 2).float()
                y = model((x - mean) / std)
            np.ascontiguousarray(y.float().cpu().numpy())  # as the model answers
            counts[k] += batch

    for warm, span in ((True, 3.0), (False, seconds)):
        counts[:] = [0] * threads
        stop = time.monotonic() + span
        t0 = time.perf_counter()
        ts = [threading.Thread(target=run, args=(k, stop)) for k in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        dt = time.perf_counter() - t0
        if not warm:
            return sum(counts) / dt
    raise AssertionError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--kb", type=float, default=110.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "triton_gpu.json"
    )
    a = ap.parse_args()
    import torch

    sys.path.append(triton_env.client_path(triton_env.ensure_env()))
    import tritonclient.grpc as grpc

    result: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0),
        "args": vars(a) | {"out": str(a.out)},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sizes = make_folder(root / "jpeg", a.images, a.kb)
        result["mean_kb"] = float(np.mean(sizes)) / 1000
        url = f"local:{root / 'store'}"
        report = ingest_folder(root / "jpeg", url, "data", val_frac=0.0, progress=False)
        assert report.split_file is not None
        uuids = report.split_file.uuids("train")
        model = root / "resnet50.pt"
        resnet50(model)
        jpegs = [
            np.frombuffer(p.read_bytes(), np.uint8) for p in sorted((root / "jpeg").rglob("*.jpg"))
        ]
        http, grpc_port, metrics = _free_ports(3)
        settings = ModelSettings(
            store=url,
            table="data",
            size=SIZE,
            decoder="dali",
            model=str(model),
            num_outputs=1000,
            instances=a.instances,
            gpu=True,
            max_uuids=max(4096, a.batch),
            python_path=package_root(),
        )
        repo = write_repository(root / "models", settings)
        with TritonServer(
            repo,
            http_port=http,
            grpc_port=grpc_port,
            metrics_port=metrics,
            log_path=root / "tritonserver.log",
        ) as server:
            for name, outs in (
                ("triton: DATA only", ("DATA",)),
                ("triton: PREDICTIONS", ("PREDICTIONS",)),
            ):
                interactive(grpc, server.grpc_url, uuids, a.concurrency, 3.0, a.batch, outs)
                r = interactive(
                    grpc, server.grpc_url, uuids, a.concurrency, a.seconds, a.batch, outs
                )
                result[name] = r
                print(
                    f"{name}: {r['samples_per_s']:,.0f} images/s, {r['requests_per_s']:.1f} req/s",
                    flush=True,
                )
        mem = from_memory(model, jpegs, a.batch, a.instances, a.seconds)
        result["from memory: DALI + ResNet-50"] = {"samples_per_s": mem}
        end_to_end = result["triton: PREDICTIONS"]["samples_per_s"]
        result["triton vs memory"] = end_to_end / mem
        print(
            f"from memory: {mem:,.0f} images/s; Triton end to end is {end_to_end / mem:.1%} of it"
        )
    a.out.parent.mkdir(exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
