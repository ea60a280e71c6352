"""Real servers for the tests and benchmarks: Apache Cassandra nodes started
from the jars `make cassandra` fetched, and toxiproxy in front of them.

    with Cluster(nodes=3) as cl:          # 127.0.0.1-3, each behind a proxy
        url = cl.url("ks")                # cassandra://127.0.1.1:PORT,.../ks
        cl.proxies[1].latency(50)         # 50 ms more on node 2's responses

The jars and the toxiproxy binary live in caches outside the clone
(``$CRS4_CASSANDRA_HOME``, ``$CRS4_TOXIPROXY``, set by the Makefile).
"""

from __future__ import annotations

from .cassandra import (
    Cluster,
    Node,
    NodeStartError,
    connections_to,
    free_port,
    gen_certs,
    process_cpu_seconds,
)
from .toxiproxy import Proxy, Toxiproxy

__all__ = [
    "Cluster",
    "Node",
    "NodeStartError",
    "Proxy",
    "Toxiproxy",
    "connections_to",
    "free_port",
    "gen_certs",
    "process_cpu_seconds",
]
