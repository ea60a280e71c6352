"""MosaicML ``streaming`` (MDS shards on local disk) as a peer of the loaders in local_read.py.

Environment. mosaicml-streaming is pinned to 0.13.0. It is NOT installed in the project's
virtualenv: its metadata pins numpy<2.2 and drags in the cloud SDKs (boto3, google-cloud-storage,
azure, oci, paramiko) and transformers. Instead the wheels in ``PINS`` are installed without
dependencies into a directory outside the repository::

    python -m pip install --target $ENV_CACHE/streaming-0.13.0-cp311 --no-deps \\
        --only-binary=:all: mosaicml-streaming==0.13.0 transformers==4.57.6 ...  # see PINS

(``$ENV_CACHE`` defaults to ~/.cache/crs4_cassandra, as in the Makefile; the directory is built
once, under a temporary name then renamed, and reused.) ``PINS`` is what ``import streaming``
really imports for local MDS reading and writing: the compression and hashing modules (brotli,
python-snappy + cramjam, zstd, xxhash), catalogue, and transformers, which
streaming.base.dataloader imports at module level (with its own import-time needs:
huggingface-hub, tokenizers, safetensors, regex). torch, numpy, tqdm, filelock, requests, PyYAML
and the rest come from the project's venv; streaming 0.13.0 runs with its torch 2.13 and numpy
2.4 despite the numpy<2.2 pin. The cloud SDKs are only imported for remote storage and are left
out. The directory is put on sys.path only inside child processes of the venv's python
(``python -m bench.streaming_read --child ...``), which write the MDS shards and do the timing,
printing JSON on stdout.

Measurement: the JPEG folder is written once as MDS shards (columns: raw JPEG bytes, int label;
no compression) under bench/data/mds-<folder name>; then
``StreamingDataset(local=..., remote=None, shuffle=True, batch_size=128)`` is read through
``DataLoader(num_workers=2, batch_size=128)`` whose collate turns each sample's bytes into a
uint8 tensor, timed by common.measure in the child (whose CPU time includes its reaped DataLoader
workers). Streaming's shared memory is cleaned before and after (clean_stale_shared_memory), and
its file locks go to a private TMPDIR that is removed afterwards, so runs can be repeated.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .common import DATA, HERE, Measure, log, measure

VERSION = "0.13.0"
PINS = [
    f"mosaicml-streaming=={VERSION}",
    "transformers==4.57.6",
    "huggingface-hub==0.36.2",
    "tokenizers==0.22.2",
    "safetensors==0.8.0",
    "regex==2026.11.15",
    "xxhash==3.6.0",
    "brotli==1.2.1",
    "python-snappy==0.7.3",
    "cramjam==2.14.0",
    "zstd==1.5.7.2",
    "catalogue==2.0.10",
]
NAME = "MosaicML streaming, MDS shards (2 workers)"
CHILD_TIMEOUT_S = 900


def env_dir() -> Path:
    cache = Path(os.environ.get("ENV_CACHE", Path.home() / ".cache" / "crs4_cassandra"))
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return cache / f"streaming-{VERSION}-{tag}"


def _pins_digest() -> str:
    return hashlib.sha256("\n".join(PINS).encode()).hexdigest()


def ensure_env() -> Path:
    """Installs PINS into env_dir() with pip --target --no-deps, once; checks the import."""
    target = env_dir()
    marker = target / ".complete"
    if marker.exists() and marker.read_text().strip() == _pins_digest():
        return target
    log(f"building the streaming environment in {target} (pip --target, no deps)")
    t0 = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--no-deps",
                "--only-binary=:all:",
                "--target",
                str(tmp),
                *PINS,
            ],
            check=True,
        )
        check = "import streaming, sys; sys.stdout.write(streaming.__version__)"
        r = subprocess.run(
            [sys.executable, "-c", check],
            env={**os.environ, "PYTHONPATH": str(tmp)},
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode != 0 or r.stdout.strip() != VERSION:
            raise RuntimeError(f"streaming does not import from {tmp}:\n{r.stderr}")
        (tmp / ".complete").write_text(_pins_digest())
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"streaming {VERSION} environment ready in {time.perf_counter() - t0:.0f} s")
    return target


def _child(site: Path, args: list[str], tmpdir: Path | None = None) -> Any:
    """Runs this module with --child in the venv's python, site first on sys.path; the
    last stdout line is JSON."""
    env = dict(os.environ)
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    r = subprocess.run(
        [sys.executable, "-m", "bench.streaming_read", "--site", str(site), *args],
        cwd=HERE.parent,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=True,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def mds_shards(folder: Path, site: Path) -> Path:
    """The folder as MDS shards (cached under bench/data), written by a child process."""
    out = DATA / f"mds-{folder.name}"
    if not (out / ".complete").exists():
        log(f"writing {folder} as MDS shards in {out}")
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _child(site, ["--child", "write", str(folder.resolve()), str(tmp)])
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        (out / ".complete").write_text("ok")
    return out


def run(folder: Path, runs: int, batch_size: int = 128) -> Measure:
    site = ensure_env()
    local = mds_shards(folder, site)
    with tempfile.TemporaryDirectory(prefix="streaming-bench-") as tmpdir:
        args = ["--child", "measure", str(local.resolve()), str(runs), str(batch_size)]
        r = _child(site, args, Path(tmpdir))
    return Measure(r["name"], r["samples"], r["gbps"], r["cpu_s_per_gb"])


# --- child side (streaming importable) ----------------------------------------------------


def _streaming(module: str = "streaming") -> Any:
    """streaming is only importable in the child (and unknown to mypy)."""
    return importlib.import_module(module)


def _write(folder: Path, out: Path) -> dict[str, int]:
    MDSWriter = _streaming().MDSWriter

    files = sorted(folder.rglob("*.jpg"))
    classes = sorted({f.parent.name for f in files})
    index = {c: i for i, c in enumerate(classes)}
    with MDSWriter(
        out=str(out), columns={"jpg": "bytes", "label": "int"}, compression=None
    ) as writer:
        for f in files:
            writer.write({"jpg": f.read_bytes(), "label": index[f.parent.name]})
    return {"samples": len(files), "shards": len(list(out.glob("shard.*.mds")))}


def _to_tensors(samples: list[dict[str, Any]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    xs = [torch.frombuffer(bytearray(s["jpg"]), dtype=torch.uint8) for s in samples]
    return xs, torch.tensor([s["label"] for s in samples])


def _epoch(ds: Any, batch_size: int) -> Iterator[tuple[int, int]]:
    from torch.utils.data import DataLoader

    dl = DataLoader(ds, batch_size=batch_size, num_workers=2, collate_fn=_to_tensors)
    for xs, _ in dl:
        yield len(xs), sum(x.numel() for x in xs)


def _measure(local: Path, runs: int, batch_size: int) -> dict[str, Any]:
    StreamingDataset = _streaming().StreamingDataset
    clean_stale_shared_memory = _streaming("streaming.base.util").clean_stale_shared_memory

    clean_stale_shared_memory()
    try:
        ds = StreamingDataset(local=str(local), remote=None, shuffle=True, batch_size=batch_size)
        log(f"streaming: {ds.num_samples} samples in {len(ds.shards)} shards")
        m = measure(NAME, functools.partial(_epoch, ds, batch_size), runs)
        del ds
    finally:
        clean_stale_shared_memory()
    return m.__dict__


def _main() -> None:
    ap = argparse.ArgumentParser(description="child process of bench.streaming_read")
    ap.add_argument("--site", type=Path, required=True, help="streaming's --target dir")
    ap.add_argument("--child", choices=["write", "measure"], required=True)
    ap.add_argument("args", nargs="*")
    a = ap.parse_args()
    sys.path.insert(0, str(a.site))
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # progress to stderr, JSON to stdout
        if a.child == "write":
            result: dict[str, Any] = _write(Path(a.args[0]), Path(a.args[1]))
        else:
            result = _measure(Path(a.args[0]), int(a.args[1]), int(a.args[2]))
    out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    _main()
