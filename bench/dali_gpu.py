"""GPU decoding through DALI, fed by crs4_cassandra against an in-memory ceiling.

python -m bench.dali_gpu [--images 4096] [--batch 128] [--seconds 8] [--out results.json]

Generates ImageNet-like JPEGs (~110 KB), ingests them into a local store and
runs the same DALI pipeline (``fn.decoders.image(device="mixed")``,
``fn.random_resized_crop``, ``fn.crop_mirror_normalize``) fed two ways:

- ``crs4_cassandra.dali.reader`` over the local store (zero-copy capsules);
- ceilings, what the pipeline does when loading costs (next to) nothing:
  ``dali_preloaded``, ``fn.external_source`` handing over prebuilt batches
  (the same few lists of arrays again and again, ``no_copy``: no Python work
  per sample); ``dali_file_reader``, DALI's own C++ reader
  (``fn.readers.file``) over the JPEGs copied to tmpfs (/dev/shm);
  ``dali_memory``, a Python generator building each batch (what the earlier
  version of this benchmark called the ceiling: at small images it is itself
  the bottleneck).

Also times ``crs4_cassandra.decode.decode_jpeg(device="cuda")`` (torchvision,
nvJPEG) on batches from ShardedDataset against the same call on in-memory
tensors. Needs a CUDA GPU and nvidia-dali.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np


def _make_one(args: tuple[Path, str, int, int, float]) -> int:
    from crs4_cassandra.testing import imagenet_like_size, noise_for_kb, shape_image

    root, shape, i, seed, kb = args
    rng = np.random.default_rng([seed, i])
    img = shape_image(rng, shape, imagenet_like_size(rng), noise_for_kb(kb))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    (root / shape / f"{shape}_{i:05d}.jpg").write_bytes(buf.getvalue())
    return len(buf.getvalue())


def make_folder(root: Path, n: int, kb: float, classes: int = 10) -> list[int]:
    """ImageNet-like JPEGs of crs4_cassandra.testing's generator, made on every core."""
    from crs4_cassandra.testing import SHAPES

    shapes = SHAPES[:classes]
    for s in shapes:
        (root / s).mkdir(parents=True, exist_ok=True)
    jobs = [(root, shapes[i % classes], i, 0, kb) for i in range(n)]
    with Pool(os.cpu_count()) as pool:
        return pool.map(_make_one, jobs, chunksize=16)


def pipeline(feed: Callable[[], tuple[Any, Any]], batch: int, threads: int) -> Any:
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=0, prefetch_queue_depth=2)
    def pipe() -> Any:
        jpegs, labels = feed()
        images = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB)
        images = fn.random_resized_crop(images, size=(224, 224))
        images = fn.crop_mirror_normalize(
            images,
            dtype=types.FLOAT,
            output_layout="CHW",
            mean=[0.485 * 255, 0.456 * 255, 0.406 * 255],
            std=[0.229 * 255, 0.224 * 255, 0.225 * 255],
            mirror=fn.random.coin_flip(),
        )
        return images, labels.gpu()

    p = pipe()
    p.build()
    return p


def time_pipe(p: Any, batch: int, seconds: float, warmup: int = 20) -> float:
    """Images/s of ``p.run()`` over at least ``seconds`` after ``warmup`` iterations."""
    for _ in range(warmup):
        p.run()
    n = 0
    t0 = time.perf_counter()
    while True:
        out = p.run()
        n += len(out[0])
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt


def memory_feed(files: list[bytes], labels: list[int], batch: int) -> Callable[[], Any]:
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    arrays = [np.frombuffer(f, dtype=np.uint8) for f in files]
    labs = [np.array([x], dtype=np.int32) for x in labels]

    def source() -> Any:
        i = 0
        while True:
            idx = [(i + k) % len(arrays) for k in range(batch)]
            i += batch
            yield [arrays[j] for j in idx], [labs[j] for j in idx]

    def feed() -> tuple[Any, Any]:
        data, labels = fn.external_source(
            source=source, num_outputs=2, batch=True, dtype=[types.UINT8, types.INT32]
        )
        return data, labels

    return feed


def preloaded_feed(files: list[bytes], labels: list[int], batch: int) -> Callable[[], Any]:
    """Prebuilt batches handed over as they are, round-robin: the cost per
    call is one Python call, none per sample."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    arrays = [np.frombuffer(f, dtype=np.uint8) for f in files]
    labs = [np.array([x], dtype=np.int32) for x in labels]
    prebuilt = []
    for start in range(0, len(arrays) - batch + 1, batch):
        idx = range(start, start + batch)
        prebuilt.append(([arrays[j] for j in idx], [labs[j] for j in idx]))

    def source() -> Any:
        i = 0
        while True:
            yield prebuilt[i % len(prebuilt)]
            i += 1

    def feed() -> tuple[Any, Any]:
        data, labels = fn.external_source(
            source=source,
            num_outputs=2,
            batch=True,
            no_copy=True,
            dtype=[types.UINT8, types.INT32],
        )
        return data, labels

    return feed


def file_reader_feed(root: Path) -> Callable[[], Any]:
    """DALI's own file reader over ``root`` (class folders of JPEGs)."""
    import nvidia.dali.fn as fn

    def feed() -> tuple[Any, Any]:
        jpegs, labels = fn.readers.file(
            file_root=str(root), random_shuffle=True, name="Files", seed=1
        )
        return jpegs, labels

    return feed


def torchvision_rate(batches: Callable[[], Any], seconds: float) -> float:
    """Images/s of batched nvJPEG decoding through torchvision."""
    import torch

    it = batches()
    n = 0
    for _ in range(3):
        next(it)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    while True:
        n += next(it)
        dt = time.perf_counter() - t0
        if dt >= seconds:
            torch.cuda.synchronize()
            return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--kb", type=float, default=110.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=8, help="DALI CPU threads")
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="JSON results file")
    args = ap.parse_args()

    import nvidia.dali
    import torch
    from torchvision.io import decode_jpeg as tv_decode_jpeg

    import crs4_cassandra as cc
    from crs4_cassandra import dali as cdali
    from crs4_cassandra.decode import decode_jpeg
    from crs4_cassandra.ingest import ingest_folder

    work = Path(args.workdir or tempfile.mkdtemp(prefix="dali_gpu_"))
    folder = work / "jpeg"
    t0 = time.perf_counter()
    sizes = make_folder(folder, args.images, args.kb)
    print(
        f"generated {len(sizes)} JPEGs, mean {statistics.mean(sizes) / 1e3:.0f} KB "
        f"in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    url = f"local:{work / 'store'}"
    split = work / "bench.split"
    ingest_folder(folder, url, "bench", val_frac=0.0, split_file=split, progress=False)
    sf = cc.SplitFile.load(split)
    files = sorted(folder.rglob("*.jpg"))
    blobs = [p.read_bytes() for p in files]
    labels = [i % 10 for i in range(len(blobs))]
    dims = []
    from PIL import Image

    for b in blobs[:512]:
        dims.append(Image.open(io.BytesIO(b)).size)

    def ours_feed() -> tuple[Any, Any]:
        return cdali.reader(
            name="Reader",
            store=url,
            split_file=sf,
            split="train",
            shuffle_every_epoch=True,
        )

    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "dali": nvidia.dali.__version__,
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "images": len(blobs),
        "mean_kb": statistics.mean(sizes) / 1e3,
        "mean_wh": [statistics.mean(d[0] for d in dims), statistics.mean(d[1] for d in dims)],
        "batch": args.batch,
        "dali_threads": args.threads,
        "seconds": args.seconds,
    }
    shm = Path(tempfile.mkdtemp(prefix="dali_gpu_", dir="/dev/shm"))
    for f in files:
        (shm / f.parent.name).mkdir(exist_ok=True)
        (shm / f.parent.name / f.name).write_bytes(f.read_bytes())
    pipes = {
        "dali_preloaded": pipeline(
            preloaded_feed(blobs, labels, args.batch), args.batch, args.threads
        ),
        "dali_file_reader": pipeline(file_reader_feed(shm), args.batch, args.threads),
        "dali_memory": pipeline(memory_feed(blobs, labels, args.batch), args.batch, args.threads),
        "dali_crs4_cassandra": pipeline(ours_feed, args.batch, args.threads),
    }
    rates: dict[str, list[float]] = {name: [] for name in pipes}
    for r in range(args.runs):
        # Interleaved, so that clocks and page cache treat all alike.
        for name, p in pipes.items():
            rate = time_pipe(p, args.batch, args.seconds)
            rates[name].append(rate)
            print(f"run {r + 1}: {name}: {rate:,.0f} images/s", flush=True)
    del pipes
    for f in shm.rglob("*.jpg"):
        f.unlink()

    # torchvision nvJPEG, batched, same bytes.
    mem_tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]

    def tv_memory() -> Any:
        i = 0
        while True:
            chunk = [mem_tensors[(i + k) % len(mem_tensors)] for k in range(args.batch)]
            i += args.batch
            tv_decode_jpeg(chunk, device="cuda")
            yield len(chunk)

    def tv_ours() -> Any:
        ds = cc.ShardedDataset.from_split(url, sf, "train", args.batch)
        epoch = 0
        while True:
            ds.set_epoch(epoch)
            for b in ds:
                decode_jpeg(b, device="cuda")
                yield len(b)
            epoch += 1

    rates["torchvision_memory"] = []
    rates["torchvision_crs4_cassandra"] = []
    for r in range(args.runs):
        for name, fn_ in (
            ("torchvision_memory", tv_memory),
            ("torchvision_crs4_cassandra", tv_ours),
        ):
            rate = torchvision_rate(fn_, args.seconds / 2)
            rates[name].append(rate)
            print(f"run {r + 1}: {name}: {rate:,.0f} images/s", flush=True)
    results["rates"] = rates
    med = {k: statistics.median(v) for k, v in rates.items()}
    results["median"] = med
    results["ratio_dali"] = med["dali_crs4_cassandra"] / med["dali_memory"]
    results["ratio_dali_preloaded"] = med["dali_crs4_cassandra"] / med["dali_preloaded"]
    results["ratio_dali_file_reader"] = med["dali_crs4_cassandra"] / med["dali_file_reader"]
    results["ratio_torchvision"] = med["torchvision_crs4_cassandra"] / med["torchvision_memory"]
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
