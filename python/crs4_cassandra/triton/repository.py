"""A Triton model repository holding the two models (Python backend)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

INTERACTIVE = "crs4_cassandra_interactive"
STREAM = "crs4_cassandra_stream"

_MODEL_PY = '''"""Triton Python-backend model {name}:
crs4_cassandra.triton.backend.{cls}.

Written by crs4_cassandra.triton.write_repository; settings are the parameters in
config.pbtxt (or $CRS4_TRITON_<NAME> where a parameter is left empty).
"""

import json
import os
import sys


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {{}})
        path = params.get("python_path", {{}}).get("string_value", "")
        path = path or os.environ.get("CRS4_TRITON_PYTHON_PATH", "")
        if path:  # where crs4_cassandra is, when not in the backend's Python
            sys.path[:0] = [p for p in path.split(os.pathsep) if p]
        from crs4_cassandra.triton.backend import {cls}

        self.impl = {cls}()
        self.impl.initialize(args)

    def execute(self, requests):
        return self.impl.execute(requests)

    def finalize(self):
        self.impl.finalize()
'''


@dataclass
class ModelSettings:
    """What the models read and serve (each a ``parameters`` entry of config.pbtxt).

    ``store`` and ``table`` left empty are read from $CRS4_TRITON_STORE and
    $CRS4_TRITON_TABLE when the server starts (as are the others, by their
    names in upper case)."""

    store: str = ""
    table: str = ""
    label_type: Literal["int", "blob", "none"] = "int"
    store_options: dict[str, object] = field(default_factory=dict)
    """open_store keywords (username, use_ssl, ...); the password comes from
    $CRS4_CASSANDRA_PASSWORD in the server's environment, never from here."""
    batch_size: int = 64
    """Samples per response of the stream model."""
    max_uuids: int = 4096
    """The most uuids one interactive request may carry."""
    size: tuple[int, int] | None = None
    """(H, W) images are decoded and resized to; IMAGES and PREDICTIONS need it."""
    decoder: Literal["auto", "rust", "dali"] = "auto"
    """auto: DALI on GPU instances when installed, else the Rust decoder (CPU)."""
    model: str = ""
    """A TorchScript file run on the decoded images: PREDICTIONS is its output."""
    num_outputs: int = -1
    """The model's output width (-1: any)."""
    instances: int = 2
    """Instances of the interactive model (each a process; requests beyond wait)."""
    gpu: bool = False
    """Run the instances on GPU 0 (KIND_GPU), for DALI decoding and the model."""
    python_path: str = ""
    """Directories put first on the models' sys.path (where crs4_cassandra is)."""
    id_col: str = "id"
    label_col: str = "label"
    data_col: str = "data"

    def parameters(self) -> dict[str, str]:
        size = "" if self.size is None else f"{self.size[0]},{self.size[1]}"
        return {
            "store": self.store,
            "table": self.table,
            "label_type": self.label_type,
            "store_options": json.dumps(self.store_options) if self.store_options else "",
            "batch_size": str(self.batch_size),
            "max_uuids": str(self.max_uuids),
            "size": size,
            "decoder": self.decoder,
            "model": os.path.abspath(self.model) if self.model else "",
            "python_path": self.python_path,
            "id_col": self.id_col,
            "label_col": self.label_col,
            "data_col": self.data_col,
        }


def _tensor(name: str, dtype: str, dims: list[int], optional: bool = False) -> str:
    opt = " optional: true" if optional else ""
    return f'  {{ name: "{name}" data_type: {dtype} dims: {json.dumps(dims)}{opt} }}'


def _config(name: str, s: ModelSettings, stream: bool) -> str:
    inputs = [
        _tensor("UUID", "TYPE_UINT64", [-1, 2], optional=True),
        _tensor("UUID_STR", "TYPE_STRING", [-1], optional=True),
    ]
    if stream:
        inputs.append(_tensor("BATCH_SIZE", "TYPE_INT32", [1], optional=True))
    outputs = [_tensor("DATA", "TYPE_STRING", [-1])]
    if s.label_type == "int":
        outputs.append(_tensor("LABELS", "TYPE_INT64", [-1]))
    elif s.label_type == "blob":
        outputs.append(_tensor("LABELS", "TYPE_STRING", [-1]))
    if stream:
        outputs.append(_tensor("INDEX", "TYPE_INT64", [-1]))
    if s.size is not None:
        outputs.append(_tensor("IMAGES", "TYPE_UINT8", [-1, s.size[0], s.size[1], 3]))
    if s.model:
        outputs.append(_tensor("PREDICTIONS", "TYPE_FP32", [-1, s.num_outputs]))
    kind = "KIND_GPU" if s.gpu else "KIND_CPU"
    # One stream instance serves any number of streams (a thread each).
    count = 1 if stream else max(1, s.instances)
    gpus = " gpus: [ 0 ]" if s.gpu else ""
    params = ",\n".join(
        f'  {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}'
        for k, v in s.parameters().items()
    )
    policy = "model_transaction_policy { decoupled: true }\n" if stream else ""
    return (
        f'name: "{name}"\n'
        'backend: "python"\n'
        "max_batch_size: 0\n"
        f"{policy}"
        "input [\n" + ",\n".join(inputs) + "\n]\n"
        "output [\n" + ",\n".join(outputs) + "\n]\n"
        f"instance_group [ {{ kind: {kind} count: {count}{gpus} }} ]\n"
        "parameters [\n" + params + "\n]\n"
    )


def write_repository(out: str | os.PathLike[str], settings: ModelSettings | None = None) -> Path:
    """Writes ``out/crs4_cassandra_interactive`` and ``out/crs4_cassandra_stream``
    (config.pbtxt and 1/model.py each) for ``tritonserver --model-repository out``."""
    s = settings or ModelSettings()
    root = Path(out)
    for name, cls, stream in (
        (INTERACTIVE, "InteractiveModel", False),
        (STREAM, "StreamModel", True),
    ):
        d = root / name
        (d / "1").mkdir(parents=True, exist_ok=True)
        (d / "config.pbtxt").write_text(_config(name, s, stream))
        (d / "1" / "model.py").write_text(_MODEL_PY.format(name=name, cls=cls))
    return root
