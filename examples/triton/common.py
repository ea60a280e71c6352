"""What the three clients share: tritonclient, and the uuids of a split file."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from crs4_cassandra import SplitFile


def import_tritonclient() -> None:
    """tritonclient from this environment, or else from the Triton environment
    `crs4-cassandra serve triton` installs (appended: this numpy stays in use)."""
    try:
        import tritonclient  # noqa: F401
    except ImportError:
        from crs4_cassandra.triton import env

        sys.path.append(env.client_path(env.ensure_env()))


def parser(doc: str | None, url: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--url", default=url, help="the server's address")
    p.add_argument("--split-file", required=True, help="split file of the served table")
    p.add_argument("--split", default="val", help="which split's uuids to ask for")
    return p


def split_uuids(path: str, split: str) -> np.ndarray:
    """(N, 16) uint8 uuids of a split."""
    return SplitFile.load(path).uuids(split)
