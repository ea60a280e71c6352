"""The exception tree. Every error raised by crs4_cassandra derives from
:class:`LoaderError`; most also derive from the builtin a Python user would
catch (``KeyError`` for a missing sample, ``ValueError`` for bad arguments...).
Attributes such as ``uuid``, ``table``, ``column`` or ``path`` name the culprit
when known."""

from __future__ import annotations


class LoaderError(Exception):
    """Base class of every crs4_cassandra error."""

    def __str__(self) -> str:
        # KeyError would otherwise quote the message.
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(LoaderError, ValueError):
    """An argument is out of range or inconsistent."""


class StoreNotFoundError(LoaderError, FileNotFoundError):
    """The store URL or path does not lead to a store."""


class StoreIOError(LoaderError, OSError):
    """Reading or writing the store failed."""


class TableNotFoundError(LoaderError, LookupError):
    """The table does not exist in the store."""


class TableExistsError(LoaderError, FileExistsError):
    """The table exists already (pass overwrite=True to replace it)."""


class SchemaError(LoaderError, ValueError):
    """The table's columns or label type do not match what was asked."""


class SampleNotFoundError(LoaderError, KeyError):
    """A uuid of the split is absent from the data table."""


class CorruptSampleError(LoaderError, ValueError):
    """A sample has a null/empty value or a label of the wrong type."""


class SplitFileError(LoaderError, ValueError):
    """A split file is corrupt, truncated or inconsistent."""


class SplitFileNotFoundError(SplitFileError, FileNotFoundError):
    """The split file does not exist."""


class SplitNotFoundError(LoaderError, KeyError):
    """The split file has no split of that name."""


class StoreConnectionError(LoaderError, ConnectionError):
    """The database cannot be reached (``hosts`` names where it was looked for)."""


class AuthenticationError(LoaderError, PermissionError):
    """The database refused the credentials."""


class StoreTimeoutError(LoaderError, TimeoutError):
    """A request to the database timed out (after retries)."""


class QueryError(LoaderError, ValueError):
    """The database rejected a request (e.g. an unknown column)."""


class TLSConfigError(LoaderError, ValueError):
    """Certificates or keys for TLS are missing or unreadable."""


class StateDictError(LoaderError, ValueError):
    """A state dict does not belong to this dataset (seed, split or batch size differ)."""


class ArrayNotFoundError(LoaderError, KeyError):
    """The store has no array of that name (``array`` names it)."""


class ArrayExistsError(LoaderError, FileExistsError):
    """The array exists already (pass overwrite=True to replace it)."""


class CorruptChunkError(LoaderError, ValueError):
    """A stored chunk of an array is damaged (``array`` names it, ``chunk``
    its coordinates in the chunk grid)."""


class InsecureTLSWarning(UserWarning):
    """TLS is on but the server's certificate is not verified (``ssl_verify=False``)."""


class CacheWarning(UserWarning):
    """The local sample cache (``open_store(..., cache=...)``) is off, and
    samples are read from the store, or it was found damaged and rebuilt."""


__all__ = [
    "ArrayExistsError",
    "ArrayNotFoundError",
    "CorruptChunkError",
    "AuthenticationError",
    "CacheWarning",
    "InsecureTLSWarning",
    "QueryError",
    "StoreConnectionError",
    "StoreTimeoutError",
    "TLSConfigError",
    "CorruptSampleError",
    "InvalidArgumentError",
    "LoaderError",
    "SampleNotFoundError",
    "SchemaError",
    "SplitFileError",
    "SplitFileNotFoundError",
    "SplitNotFoundError",
    "StateDictError",
    "StoreIOError",
    "StoreNotFoundError",
    "TableExistsError",
    "TableNotFoundError",
]
