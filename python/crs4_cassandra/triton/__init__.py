"""Inference through NVIDIA Triton: two Python-backend models over the reader.

- ``crs4_cassandra_interactive``: a batch of uuids in, their samples out
  (``DATA``, ``LABELS``; ``IMAGES`` and ``PREDICTIONS`` when a size and a
  TorchScript model are configured).
- ``crs4_cassandra_stream`` (decoupled): a long uuid list in, responses of
  ``batch_size`` samples each, read with the fetch engine's prefetching.

:func:`write_repository` writes the model repository a ``tritonserver``
serves; :class:`TritonServer` starts one (a stock binary, or the one bundled in
``nvidia-pytriton``, installed apart by :func:`env.ensure_env`);
``crs4-cassandra serve triton`` does both. uuids travel as (N, 2) uint64
(:func:`to_pairs`) or as strings.
"""

from .repository import INTERACTIVE, STREAM, ModelSettings, write_repository
from .server import TritonServer
from .uuids import from_pairs, to_pairs

__all__ = [
    "INTERACTIVE",
    "STREAM",
    "ModelSettings",
    "TritonServer",
    "from_pairs",
    "to_pairs",
    "write_repository",
]
