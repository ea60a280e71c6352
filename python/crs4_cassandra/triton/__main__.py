"""python -m crs4_cassandra.triton DIR: writes the model repository with default
settings (the store and table come from $CRS4_TRITON_STORE and $CRS4_TRITON_TABLE
when the server starts); what examples/triton/models holds."""

import sys

from .repository import write_repository

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m crs4_cassandra.triton DIR")
    print(write_repository(sys.argv[1]))
