"""Runs CQL statements on one node with the DataStax Python driver and prints
each statement's rows as JSON lines: ``python -m testbed.cqlexec HOST PORT
[--auth] STATEMENT...``.

The test process calls this as a subprocess rather than importing the driver:
the driver's event-loop thread stays alive after ``shutdown()``, and a
DataLoader worker forked from a process with such a thread can deadlock.
"""

from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--auth", action="store_true", help="log in as cassandra/cassandra")
    ap.add_argument("statements", nargs="+")
    args = ap.parse_args()

    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster
    from cassandra.policies import WhiteListRoundRobinPolicy

    cl = Cluster(
        [args.host],
        port=args.port,
        auth_provider=PlainTextAuthProvider("cassandra", "cassandra") if args.auth else None,
        load_balancing_policy=WhiteListRoundRobinPolicy([args.host]),
        protocol_version=5,
    )
    try:
        session = cl.connect()
        for q in args.statements:
            rows = session.execute(q, timeout=60)
            print(json.dumps([{k: str(v) for k, v in r._asdict().items()} for r in rows]))
    finally:
        cl.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
