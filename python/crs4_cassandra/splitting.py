"""Split files built from a metadata table: which samples train, which validate.

Three modes, all seeded:

- ``original``: the dataset's own split, as ingest recorded it in the metadata
  (e.g. imagenette's train/ and val/ folders); the ratios are not used.
- ``random``: a random permutation cut by the ratios.
- ``weighted``: stratified by class, so every split has the class proportions
  of the whole table (each class is cut by the ratios on its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _native
from .errors import InvalidArgumentError, SchemaError
from .ingest import MULTILABEL_SEP, make_split, split_name
from .splits import LABEL_TYPES, SplitFile

MODES = ("random", "original", "weighted")
METADATA_SUFFIX = "_metadata"


def data_table_for(metadata_table: str) -> str:
    """The data table of a metadata table named as ingest names it (``<table>_metadata``)."""
    if not metadata_table.endswith(METADATA_SUFFIX) or metadata_table == METADATA_SUFFIX:
        raise InvalidArgumentError(
            f"cannot tell the data table of metadata table {metadata_table!r} "
            f"(it does not end in {METADATA_SUFFIX!r}): name it"
        )
    return metadata_table[: -len(METADATA_SUFFIX)]


def detect_label_type(store: _native.Store, table: str) -> str:
    """The label type of ``table``: the first of int, blob, none its schema accepts."""
    for lt in LABEL_TYPES:
        try:
            store.check_table(table, lt)
            return lt
        except SchemaError:
            continue
    raise SchemaError(f"table {table!r} has a label column of none of the types {LABEL_TYPES}")


def _classes(rows: Sequence[tuple[Any, ...]], label_type: str) -> list[str]:
    if label_type == "int":
        names: dict[int, str] = {}
        for _, label, name, _, _ in rows:
            if label is not None:
                names.setdefault(int(label), name if name is not None else str(label))
        if not names:
            return []
        if min(names) < 0:
            return []
        return [names.get(i, str(i)) for i in range(max(names) + 1)]
    # Multilabel metadata keep each sample's label names; the label vector
    # indexes their sorted union (see ingest_multilabel).
    return sorted({x for r in rows if r[2] for x in str(r[2]).split(MULTILABEL_SEP) if x})


def create_split(
    store: _native.Store | str,
    metadata_table: str,
    ratios: Sequence[float] = (8, 2),
    *,
    names: Sequence[str] | None = None,
    seed: int = 0,
    mode: str = "random",
    table: str | None = None,
    label_type: str | None = None,
    classes: Sequence[str] | None = None,
) -> SplitFile:
    """A split file over the samples of ``metadata_table``.

    ``ratios`` are relative sizes of the splits (``(8, 2)``: 80% and 20%),
    named by ``names`` (default train, val, then test, split3...). The data
    table defaults to the metadata table's name without its ``_metadata``
    suffix, the label type to what the data table holds, and the class names to
    what the metadata say (int labels and multilabel names); pass ``classes``
    where the metadata do not say (segmentation masks).
    """
    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {MODES}, got {mode!r}")
    st = _native.open_store(store) if isinstance(store, str) else store
    table = table or data_table_for(metadata_table)
    label_type = label_type or detect_label_type(st, table)
    rows = sorted(st.scan_metadata(metadata_table), key=lambda r: bytes(r[0]))
    if not rows:
        raise InvalidArgumentError(f"metadata table {metadata_table!r} is empty")
    uuids = np.frombuffer(b"".join(bytes(r[0]) for r in rows), dtype=np.uint8).reshape(-1, 16)
    ratios = [float(r) for r in ratios]
    if mode != "original":
        if not ratios or any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise InvalidArgumentError(
                f"split ratios must be non-negative with a positive sum, got {ratios}"
            )
        if names is None:
            default = ["train", "val", "test"]
            names = [default[i] if i < 3 else f"split{i}" for i in range(len(ratios))]
        if len(names) != len(ratios) or len(set(names)) != len(names):
            raise InvalidArgumentError(
                f"give one distinct name a ratio: {len(ratios)} ratios, names {list(names)}"
            )
    sf = SplitFile(
        table,
        label_type,
        classes=list(classes) if classes is not None else _classes(rows, label_type),
        store=st.url,
        metadata_table=metadata_table,
        info={"mode": mode, "seed": seed, "ratios": ratios if mode != "original" else None},
    )
    if mode == "original":
        tags = [r[4] for r in rows]
        if any(t is None for t in tags):
            raise InvalidArgumentError(
                f"metadata table {metadata_table!r} has samples without a split tag: "
                "the source had no split of its own; use mode random or weighted"
            )
        split_of = np.array([split_name(str(t)) for t in tags], dtype=object)
        wanted = list(names) if names is not None else None
        order = {"train": 0, "val": 1}
        for name in sorted(set(split_of), key=lambda n: (order.get(n, 2), n)):
            if wanted is None or name in wanted:
                sf.add(name, uuids[split_of == name])
        if wanted is not None and set(wanted) - set(sf.names()):
            raise InvalidArgumentError(
                f"splits {sorted(set(wanted) - set(sf.names()))} are not among the "
                f"original tags {sorted(set(split_of))}"
            )
        return sf
    assert names is not None
    if mode == "random":
        for name, part in make_split(uuids, ratios, names, seed).items():
            sf.add(name, part)
        return sf
    # weighted: stratify by class.
    keys: list[object] = [r[1] if label_type == "int" else r[2] for r in rows]
    if any(k is None for k in keys):
        raise InvalidArgumentError(
            f"mode weighted needs a class for every sample; metadata table "
            f"{metadata_table!r} has samples without a label"
        )
    key_arr = np.array([str(k) for k in keys], dtype=object)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for k, cls in enumerate(sorted(set(key_arr))):
        for name, part in make_split(uuids[key_arr == cls], ratios, names, seed + 7919 * k).items():
            parts[name].append(part)
    rng = np.random.default_rng(seed)
    for name in names:
        joined = np.concatenate(parts[name]) if parts[name] else uuids[:0]
        # Interleave the classes, for readers that do not shuffle.
        sf.add(name, joined[rng.permutation(len(joined))])
    return sf
