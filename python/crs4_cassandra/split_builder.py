"""Building split files: which samples train, which validate.

``create_split`` builds one from a metadata table, in one of three modes, all
seeded:

- ``original``: the dataset's own split, as ingest recorded it in the metadata
  (e.g. imagenette's train/ and val/ folders); the ratios are not used.
- ``random``: a random permutation cut by the ratios.
- ``weighted``: stratified by class, so every split has the class proportions
  of the whole table (each class is cut by the ratios on its own).

Ingest builds the split file it writes beside a dataset with the same helpers
(``add_splits``, ``make_split``, ``split_name``); this module does not depend
on ingest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np

from . import _native
from .errors import InvalidArgumentError, SchemaError
from .split_file import LABEL_TYPES, LabelType, SplitFile

SplitMode = Literal["random", "original", "weighted"]
MODES: tuple[SplitMode, ...] = get_args(SplitMode)
METADATA_SUFFIX = "_metadata"
# How ingest joins a multilabel sample's label names in the metadata's
# label_name column.
MULTILABEL_SEP = "|"


def make_split(
    uuids: np.ndarray,
    fractions: Sequence[float],
    names: Sequence[str],
    seed: int,
) -> dict[str, np.ndarray]:
    """Shuffles ``uuids`` with ``seed`` and cuts them by ``fractions``."""
    total = float(sum(fractions))
    if total <= 0 or any(f < 0 for f in fractions):
        raise InvalidArgumentError(
            f"split ratios must be non-negative with a positive sum, got {fractions}"
        )
    perm = np.random.default_rng(seed).permutation(len(uuids))
    bounds = np.round(np.cumsum([0.0, *fractions]) / total * len(uuids)).astype(int)
    return {name: uuids[perm[bounds[i] : bounds[i + 1]]] for i, name in enumerate(names)}


def split_name(tag: str) -> str:
    """The split name for a dataset's own folder or file tag: "training" and
    "train" are "train"; "val", "valid" and "validation" are "val"; others
    (e.g. "test") stay as they are."""
    low = tag.lower()
    if low in ("train", "training"):
        return "train"
    if low in ("val", "valid", "validation"):
        return "val"
    return tag


def split_by_tags(uuids: np.ndarray, tags: Sequence[str | None]) -> dict[str, np.ndarray]:
    """The uuids of each split the samples' own tags name (see ``split_name``):
    train first, then val, then the others by name."""
    names = np.array([split_name(str(t)) for t in tags], dtype=object)
    order = {"train": 0, "val": 1}
    return {n: uuids[names == n] for n in sorted(set(names), key=lambda n: (order.get(n, 2), n))}


def add_splits(
    sf: SplitFile,
    uuids: np.ndarray,
    tags: Sequence[str | None],
    val_frac: float,
    seed: int,
) -> None:
    """Adds the splits to ``sf``: the dataset's own tags when every sample has
    one (they win over ``val_frac``), else a seeded ``val_frac`` cut."""
    if tags and all(t is not None for t in tags):
        sf.info["split_from"] = "source tags"
        for name, part in split_by_tags(uuids, tags).items():
            sf.add(name, part)
    elif val_frac > 0:
        for name, part in make_split(
            uuids, [1.0 - val_frac, val_frac], ["train", "val"], seed
        ).items():
            sf.add(name, part)
    else:
        sf.add("train", uuids)


def data_table_for(metadata_table: str) -> str:
    """The data table of a metadata table named as ingest names it (``<table>_metadata``)."""
    if not metadata_table.endswith(METADATA_SUFFIX) or metadata_table == METADATA_SUFFIX:
        raise InvalidArgumentError(
            f"cannot tell the data table of metadata table {metadata_table!r} "
            f"(it does not end in {METADATA_SUFFIX!r}): name it"
        )
    return metadata_table[: -len(METADATA_SUFFIX)]


def detect_label_type(store: _native.Store, table: str) -> LabelType:
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
    mode: SplitMode = "random",
    table: str | None = None,
    label_type: LabelType | None = None,
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
    # The metadata table first: a missing one is reported by its own name, not
    # as the data table derived from it.
    rows = sorted(st.scan_metadata(metadata_table), key=lambda r: bytes(r[0]))
    label_type = label_type or detect_label_type(st, table)
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
        by_tag = split_by_tags(uuids, tags)
        missing = sorted(set(names or ()) - set(by_tag))
        if missing:
            raise InvalidArgumentError(
                f"splits {missing} are not among the original tags {sorted(by_tag)}"
            )
        for name, part in by_tag.items():
            if names is None or name in names:
                sf.add(name, part)
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
