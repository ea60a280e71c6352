"""crs4_cassandra: a deep-learning data loader for samples stored as BLOBs in
Cassandra, ScyllaDB or an embedded local store."""

from . import errors
from ._native import Store
from .dataset import Batch, Sample, ShardedDataset, open_store
from .errors import LoaderError
from .split_file import SplitFile

__all__ = [
    "Batch",
    "LoaderError",
    "Sample",
    "ShardedDataset",
    "SplitFile",
    "Store",
    "errors",
    "open_store",
]
__version__ = "0.1.0"
