"""The two Triton models, as Python-backend models (they run inside Triton's
backend stub, where ``triton_python_backend_utils`` is importable).

- :class:`InteractiveModel` (``crs4_cassandra_interactive``): one request, a
  batch of uuids; one response with their samples (and, optionally, decoded
  images and a TorchScript model's outputs), in the order of the request.
- :class:`StreamModel` (``crs4_cassandra_stream``, decoupled): one request, a
  long list of uuids; responses of ``batch_size`` samples each, read by the
  fetch engine with its self-tuning prefetching (``shuffle=False``), then a
  final empty response. Pads of the plan's last batch are not sent.

Both read their settings from the model configuration's ``parameters``
(written by :func:`crs4_cassandra.triton.write_repository`), each falling back
to an environment variable (``CRS4_TRITON_<NAME>``), so that a repository
shipped without a store can be pointed at one when the server starts.

Errors (an unknown uuid, a malformed uuid string, both uuid inputs or neither)
answer an error response naming the culprit; the model keeps serving.
Wrong dtypes and shapes are refused by Triton itself, from the configuration.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .. import _native
from ..errors import InvalidArgumentError, LoaderError
from .uuids import from_pairs, from_strings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RequestError(InvalidArgumentError):
    """A request the model cannot answer (named in its error response)."""


def _pb() -> Any:
    # Only inside the backend stub.
    return importlib.import_module("triton_python_backend_utils")


class _Settings:
    """The model's parameters, each overridable by $CRS4_TRITON_<NAME>."""

    def __init__(self, model_config: dict[str, Any]) -> None:
        self._params = {
            k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()
        }

    def get(self, name: str, default: str = "") -> str:
        value = str(self._params.get(name, ""))
        if not value:
            value = os.environ.get(f"CRS4_TRITON_{name.upper()}", "") or default
        return value


class _Base:
    """What both models share: the store, the uuid inputs, the outputs."""

    streaming = False

    def initialize(self, args: dict[str, Any]) -> None:
        from ..dataset import open_store

        self.pb = _pb()
        self.model_config: dict[str, Any] = json.loads(args["model_config"])
        s = _Settings(self.model_config)
        url = s.get("store")
        self.table = s.get("table")
        if not url or not self.table:
            raise InvalidArgumentError(
                "the model needs a store and a table: set the parameters 'store' and 'table' "
                "in config.pbtxt, or $CRS4_TRITON_STORE and $CRS4_TRITON_TABLE"
            )
        self.label_type: Literal["int", "blob", "none"] = s.get("label_type", "int")  # type: ignore[assignment]
        self.columns = (
            s.get("id_col", "id"),
            s.get("label_col", "label"),
            s.get("data_col", "data"),
        )
        options = json.loads(s.get("store_options", "{}") or "{}")
        self.store = open_store(url, **options)
        if self.label_type not in ("int", "blob", "none"):
            raise InvalidArgumentError(f"label_type must be int, blob or none: {self.label_type!r}")
        self.store.check_table(self.table, self.label_type, *self.columns)
        self.max_uuids = int(s.get("max_uuids", "0") or 0)
        self.batch_size = int(s.get("batch_size", "64"))
        size = s.get("size")
        self.size: tuple[int, int] | None = None
        if size:
            h, w = (int(x) for x in size.lower().replace("x", ",").split(","))
            self.size = (h, w)
        gpu = args.get("model_instance_kind") == "GPU"
        self.device = f"cuda:{args.get('model_instance_device_id', 0)}" if gpu else "cpu"
        decoder = s.get("decoder", "auto")
        self.dali: _DaliDecoder | None = None
        if self.size is not None and decoder in ("auto", "dali") and gpu:
            try:
                self.dali = _DaliDecoder(self.size, int(args.get("model_instance_device_id", 0)))
            except ImportError:
                if decoder == "dali":
                    raise
        self.model: Any = None
        model_path = s.get("model")
        if model_path:
            import torch

            if self.size is None:
                raise InvalidArgumentError("a model needs decoded images: set the 'size' parameter")
            jit: Any = torch.jit
            self.model = jit.load(model_path, map_location=self.device).eval()
            mean = [float(x) for x in s.get("mean", ",".join(map(str, IMAGENET_MEAN))).split(",")]
            std = [float(x) for x in s.get("std", ",".join(map(str, IMAGENET_STD))).split(",")]
            self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
            self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255
        self.outputs = [o["name"] for o in self.model_config.get("output", [])]

    # --- requests --------------------------------------------------------------------

    def uuids(self, request: Any) -> npt.NDArray[np.uint8]:
        """The request's uuids as (N, 16) uint8, from UUID ((N, 2) uint64) or UUID_STR."""
        pairs = self.pb.get_input_tensor_by_name(request, "UUID")
        strings = self.pb.get_input_tensor_by_name(request, "UUID_STR")
        if (pairs is None) == (strings is None):
            raise RequestError(
                "give the uuids in exactly one input: UUID ((N, 2) uint64) or UUID_STR "
                f"((N,) strings); got {'both' if pairs is not None else 'neither'}"
            )
        raw = (
            from_pairs(pairs.as_numpy()) if pairs is not None else from_strings(strings.as_numpy())
        )
        if self.max_uuids and len(raw) > self.max_uuids and not self.streaming:
            raise RequestError(
                f"{len(raw)} uuids in one request, more than this model's max_uuids "
                f"({self.max_uuids}): split it, or use the crs4_cassandra_stream model"
            )
        return raw

    def wanted(self, request: Any) -> set[str]:
        names = set(request.requested_output_names())
        return names or set(self.outputs)

    def config(self, raw: npt.NDArray[np.uint8], batch_size: int, decode: bool) -> Any:
        id_col, label_col, data_col = self.columns
        rust = decode and self.dali is None
        return _native.ReaderConfig(
            self.table,
            raw.tobytes(),
            batch_size,
            label_type=self.label_type,
            id_col=id_col,
            label_col=label_col,
            data_col=data_col,
            shuffle=False,
            decode="rgb" if rust else None,
            size=self.size if rust else None,
            # A request may name a sample more than once: each entry is answered.
            allow_repeats=True,
        )

    def tensors(self, nb: Any, wanted: set[str], keep: npt.NDArray[np.intp]) -> list[Any]:
        """Output tensors of batch ``nb``'s samples at positions ``keep`` (in that order)."""
        pb = self.pb
        out = []
        data = np.from_dlpack(nb.data())
        offsets = np.from_dlpack(nb.offsets())
        samples = [data[offsets[i] : offsets[i + 1]] for i in keep]
        if "DATA" in wanted:
            blobs = np.empty(len(keep), dtype=object)
            blobs[:] = [s.tobytes() for s in samples]
            out.append(pb.Tensor("DATA", blobs))
        if "LABELS" in wanted and self.label_type != "none":
            labels = nb.labels()
            if self.label_type == "int":
                values = np.from_dlpack(labels)[keep].astype(np.int64)
                out.append(pb.Tensor("LABELS", values))
            else:
                flat = np.from_dlpack(labels)
                lo = np.from_dlpack(nb.label_offsets())
                blobs = np.empty(len(keep), dtype=object)
                blobs[:] = [flat[lo[i] : lo[i + 1]].tobytes() for i in keep]
                out.append(pb.Tensor("LABELS", blobs))
        if "INDEX" in wanted:
            out.append(pb.Tensor("INDEX", np.from_dlpack(nb.indices())[keep].astype(np.int64)))
        if wanted & {"IMAGES", "PREDICTIONS"}:
            images = self.images(nb, samples, keep)
            if "IMAGES" in wanted:
                out.append(pb.Tensor("IMAGES", np.ascontiguousarray(images.cpu().numpy())))
            if "PREDICTIONS" in wanted and self.model is not None:
                out.append(pb.Tensor("PREDICTIONS", self.predict(images)))
        return out

    def images(self, nb: Any, samples: list[Any], keep: npt.NDArray[np.intp]) -> Any:
        """Decoded (N, H, W, 3) uint8 images, a torch tensor on the model's device."""
        import torch
        from torch.utils.dlpack import from_dlpack

        if self.size is None:
            raise RequestError("IMAGES and PREDICTIONS need the 'size' parameter")
        if self.dali is not None:
            return self.dali.decode(samples)
        h, w = self.size
        pixels = from_dlpack(nb.images()).view(-1, h, w, 3)
        return pixels[torch.from_numpy(np.asarray(keep, dtype=np.int64))]

    def predict(self, images: Any) -> npt.NDArray[np.float32]:
        import torch

        with torch.inference_mode():
            x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
            y = self.model((x - self.mean) / self.std)
        return np.ascontiguousarray(y.float().cpu().numpy())

    def error(self, e: BaseException) -> Any:
        kind = "" if isinstance(e, (LoaderError, RequestError)) else f"{type(e).__name__}: "
        return self.pb.InferenceResponse(error=self.pb.TritonError(f"{kind}{e}"))

    def finalize(self) -> None:
        pass


class InteractiveModel(_Base):
    """crs4_cassandra_interactive: a batch of uuids in, their samples out."""

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(self.infer(request))
            except Exception as e:  # answered, never fatal to the server
                responses.append(self.error(e))
        return responses

    def infer(self, request: Any) -> Any:
        raw = self.uuids(request)
        wanted = self.wanted(request)
        decode = bool(wanted & {"IMAGES", "PREDICTIONS"})
        if len(raw) == 0:
            return self.pb.InferenceResponse(output_tensors=self.empty(wanted))
        reader = _native.Reader(self.store, self.config(raw, len(raw), decode))
        try:
            (nb,) = list(reader)
        finally:
            reader.close()
        # One batch of exactly the request's samples: back into request order.
        keep = np.argsort(np.from_dlpack(nb.indices()), kind="stable")
        return self.pb.InferenceResponse(output_tensors=self.tensors(nb, wanted, keep))

    def empty(self, wanted: set[str]) -> list[Any]:
        pb = self.pb
        out = []
        for name in self.outputs:
            if name not in wanted:
                continue
            cfg = pb.get_output_config_by_name(self.model_config, name)
            dims = [0] + [max(int(d), 0) for d in cfg["dims"][1:]]
            dtype = pb.triton_string_to_numpy(cfg["data_type"])
            out.append(pb.Tensor(name, np.zeros(dims, dtype=dtype)))
        return out


class StreamModel(_Base):
    """crs4_cassandra_stream (decoupled): a long uuid list in, batches streamed back."""

    streaming = True

    def initialize(self, args: dict[str, Any]) -> None:
        super().initialize(args)
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def execute(self, requests: list[Any]) -> None:
        pb = self.pb
        for request in requests:
            sender = request.get_response_sender()
            try:
                raw = self.uuids(request)
                batch_size = self.batch_size
                given = pb.get_input_tensor_by_name(request, "BATCH_SIZE")
                if given is not None:
                    batch_size = int(given.as_numpy().reshape(-1)[0])
                    if batch_size < 1:
                        raise RequestError(f"BATCH_SIZE must be positive, got {batch_size}")
                wanted = self.wanted(request)
            except Exception as e:
                sender.send(self.error(e), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            t = threading.Thread(
                target=self.stream, args=(sender, raw, batch_size, wanted), daemon=True
            )
            with self._lock:
                self._threads.add(t)
            t.start()
        return None

    def stream(self, sender: Any, raw: Any, batch_size: int, wanted: set[str]) -> None:
        """Sends the batches of one request (in the request's order), then the final flag."""
        pb = self.pb
        reader = None
        try:
            if len(raw):
                decode = bool(wanted & {"IMAGES", "PREDICTIONS"})
                reader = _native.Reader(self.store, self.config(raw, batch_size, decode))
                for nb in reader:
                    if self._stopping.is_set() or sender.is_cancelled():
                        break
                    keep = np.flatnonzero(np.from_dlpack(nb.is_pad()) == 0)
                    if len(keep):
                        tensors = self.tensors(nb, wanted, keep)
                        sender.send(pb.InferenceResponse(output_tensors=tensors))
            sender.send(flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as e:
            try:
                sender.send(self.error(e), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception:
                pass  # the client went away
        finally:
            if reader is not None:
                reader.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def finalize(self) -> None:
        self._stopping.set()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout=10)


class _DaliDecoder:
    """JPEG/PNG decoding on the GPU with DALI (nvJPEG), resized to ``size``."""

    def __init__(self, size: tuple[int, int], device_id: int, max_batch: int = 1024) -> None:
        dali: Any = importlib.import_module("nvidia.dali")
        fn, types, pipeline_def = dali.fn, dali.types, dali.pipeline_def

        @pipeline_def(  # type: ignore[untyped-decorator]
            batch_size=max_batch, num_threads=4, device_id=device_id, prefetch_queue_depth=1
        )
        def pipe() -> Any:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, no_copy=False)
            images = fn.decoders.image(encoded, device="mixed", output_type=types.RGB)
            return fn.resize(images, resize_x=size[1], resize_y=size[0])

        self.pipe: Any = pipe()
        self.pipe.build()
        self.max_batch = max_batch
        self.device = f"cuda:{device_id}"
        self.feed = importlib.import_module("nvidia.dali.plugin.pytorch").feed_ndarray
        self.lock = threading.Lock()

    def decode(self, samples: list[Any]) -> Any:
        import torch

        outs = []
        with self.lock:
            for i in range(0, len(samples), self.max_batch):
                chunk = samples[i : i + self.max_batch]
                self.pipe.feed_input("encoded", [np.ascontiguousarray(s) for s in chunk])
                (tl,) = self.pipe.run()
                t = tl.as_tensor()  # (n, H, W, 3) on the GPU: resize gives one shape
                out = torch.empty(t.shape(), dtype=torch.uint8, device=self.device)
                self.feed(t, out, cuda_stream=torch.cuda.current_stream(self.device))
                outs.append(out)
        return torch.cat(outs) if len(outs) > 1 else outs[0]
