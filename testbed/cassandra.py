"""Apache Cassandra nodes as subprocesses of the test run.

Each node is ``org.apache.cassandra.service.CassandraDaemon`` on the classpath of
the jars in ``$CRS4_CASSANDRA_HOME/lib`` (fetched by `make cassandra`), with a
generated ``cassandra.yaml`` and its own directories under a temp dir. A node
is ready when its log says it listens for CQL clients; one that exits or
takes too long raises ``NodeStartError`` with its log's last lines.

A cluster of N nodes puts node i on 127.0.0.(i+1) and, in front of it, a
toxiproxy proxy on 127.0.1.(i+1) with the same port. Every node advertises
its proxy as ``broadcast_rpc_address``, so a driver that discovers the ring
from ``system.peers`` connects through the proxies and the tests can add
latency or faults to any node.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# From Cassandra's conf/jvm17-server.options (Java 17 module access and G1).
JVM17_OPTIONS = [
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:G1HeapRegionSize=16m",
    "-XX:G1RSetUpdatingPauseTimePercent=5",
    "-XX:MaxGCPauseMillis=300",
    "-XX:InitiatingHeapOccupancyPercent=70",
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports", "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports", "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports", "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports", "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports", "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports", "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports", "jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens", "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens", "java.base/java.io=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens", "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
]  # fmt: skip

READY = "Starting listening for CQL clients"

LOGBACK = """<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{log}</file>
    <encoder><pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"""


class NodeStartError(RuntimeError):
    pass


def die_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGKILL when the test process dies,
    however it dies, so no node outlives a crashed or killed run."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def cassandra_home() -> Path:
    home = os.environ.get("CRS4_CASSANDRA_HOME")
    if not home:
        raise NodeStartError(
            "CRS4_CASSANDRA_HOME is not set: run the tests through `make test`, which fetches "
            "Apache Cassandra's jars into the cache and sets it"
        )
    lib = Path(home) / "lib"
    if not any(lib.glob("cassandra-all-*.jar")):
        raise NodeStartError(f"no cassandra-all jar in {lib} (CRS4_CASSANDRA_HOME)")
    return Path(home)


def java_binary() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java") or "java"


def free_port(host: str = "127.0.0.1", *also: str) -> int:
    """A port free on ``host`` and on every address in ``also``."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        try:
            for other in also:
                with socket.socket() as s:
                    s.bind((other, port))
        except OSError:
            continue
        return port
    raise OSError(f"no port free on {host} and {also}")


def connections_to(host: str, port: int) -> int:
    """How many of this process's TCP sockets are connected to ``host:port``."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    a, b, c, d = (int(x) for x in host.split("."))
    remote = f"{d:02X}{c:02X}{b:02X}{a:02X}:{port:04X}"
    count = 0
    with open("/proc/self/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            # fields: sl, local, remote, state (01 = established), ..., inode
            if fields[2] == remote and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def wait_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Node:
    """One Cassandra process. ``start()`` blocks until it serves CQL."""

    def __init__(
        self,
        root: Path,
        *,
        address: str,
        native_port: int,
        storage_port: int,
        cluster_name: str,
        seeds: list[str],
        initial_token: int,
        broadcast_rpc_address: str | None = None,
        auth: bool = False,
        tls: dict[str, Any] | None = None,
        heap: str = "768m",
        extra_yaml: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.address = address
        self.native_port = native_port
        self.storage_port = storage_port
        self.heap = heap
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.log = root / "system.log"
        self.stdout = root / "stdout.log"
        config: dict[str, Any] = {
            "cluster_name": cluster_name,
            "num_tokens": 1,
            "initial_token": str(initial_token),
            "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
            "endpoint_snitch": "SimpleSnitch",
            "auto_bootstrap": False,
            "seed_provider": [
                {
                    "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                    "parameters": [{"seeds": ",".join(f"{s}:{storage_port}" for s in seeds)}],
                }
            ],
            "listen_address": address,
            "rpc_address": address,
            "storage_port": storage_port,
            "native_transport_port": native_port,
            "start_native_transport": True,
            "data_file_directories": [str(root / "data")],
            "commitlog_directory": str(root / "commitlog"),
            "saved_caches_directory": str(root / "saved_caches"),
            "hints_directory": str(root / "hints"),
            "cdc_raw_directory": str(root / "cdc_raw"),
            "commitlog_sync": "periodic",
            "commitlog_sync_period": "10000ms",
            "disk_optimization_strategy": "ssd",
            "authenticator": "PasswordAuthenticator" if auth else "AllowAllAuthenticator",
            "authorizer": "CassandraAuthorizer" if auth else "AllowAllAuthorizer",
            "role_manager": "CassandraRoleManager",
            "roles_validity": "0ms",
            "permissions_validity": "0ms",
            "credentials_validity": "0ms",
        }
        if broadcast_rpc_address:
            config["broadcast_rpc_address"] = broadcast_rpc_address
        if tls:
            config["client_encryption_options"] = {"enabled": True, **tls}
        config.update(extra_yaml or {})
        self.yaml = root / "cassandra.yaml"
        # JSON is YAML too, and Cassandra's loader reads it as such.
        self.yaml.write_text(json.dumps(config, indent=2) + "\n")
        (root / "logback.xml").write_text(LOGBACK.format(log=self.log))

    def command(self) -> list[str]:
        home = cassandra_home()
        jna = self.root / "jna"
        jna.mkdir(exist_ok=True)
        return [
            java_binary(),
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-Xss256k",
            "-XX:+PerfDisableSharedMem",
            "-Djava.net.preferIPv4Stack=true",
            *JVM17_OPTIONS,
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.config=file://{self.yaml}",
            f"-Dcassandra.storagedir={self.root}",
            f"-Dcassandra.logdir={self.root}",
            f"-Dlogback.configurationFile=file://{self.root / 'logback.xml'}",
            f"-Djna.tmpdir={jna}",
            f"-Djava.io.tmpdir={jna}",
            "-Dcassandra.superuser_setup_delay_ms=0",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=1000",
            "-Dcassandra.load_ring_state=false",
            "-cp",
            str(home / "lib" / "*"),
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    def launch(self) -> None:
        """Starts the process without waiting (see ``wait_ready``)."""
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.stdout, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def wait_ready(self, timeout: float = 240.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.log.exists():
                with open(self.log, "rb") as f:
                    f.seek(self._log_offset)
                    if READY.encode() in f.read():
                        break
            if self.proc.poll() is not None:
                raise NodeStartError(
                    f"Cassandra node {self.address}:{self.native_port} exited with "
                    f"{self.proc.returncode} while starting:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise NodeStartError(
                    f"Cassandra node {self.address}:{self.native_port} did not listen for CQL "
                    f"clients within {timeout:.0f} s:\n{self.tail()}"
                )
            time.sleep(0.1)
        wait_port(self.address, self.native_port, 30.0)

    def start(self, timeout: float = 240.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def tail(self, lines: int = 40) -> str:
        text = []
        for path in (self.stdout, self.log):
            if path.exists():
                text.append(
                    f"--- {path}:\n" + "".join(path.open(errors="replace").readlines()[-lines:])
                )
        return "\n".join(text)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Cassandra drains and exits), SIGKILL past the timeout."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        return 0.0 if self.proc is None else process_cpu_seconds(self.proc.pid)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tokens(n: int) -> list[int]:
    return [-(2**63) + i * (2**64 // n) for i in range(n)]


class Cluster:
    """N Cassandra nodes, each behind a toxiproxy proxy (see the module doc).

    ``url(keyspace)`` names the proxies; ``direct_url`` the nodes themselves.
    ``auth=True`` enables PasswordAuthenticator (superuser cassandra/cassandra).
    ``tls`` is the ``client_encryption_options`` (``enabled`` is added).
    """

    def __init__(
        self,
        nodes: int = 1,
        *,
        name: str = "crs4",
        auth: bool = False,
        tls: dict[str, Any] | None = None,
        toxiproxy: Any = None,
        heap: str = "768m",
        root: Path | None = None,
        start_timeout: float = 240.0,
    ) -> None:
        from .toxiproxy import Toxiproxy

        self._tmp = None if root is not None else tempfile.mkdtemp(prefix=f"cassandra-{name}-")
        self.root = Path(root if root is not None else self._tmp)  # type: ignore[arg-type]
        self.auth = auth
        self.node_addresses = [f"127.0.0.{i + 1}" for i in range(nodes)]
        self.proxy_addresses = [f"127.0.1.{i + 1}" for i in range(nodes)]
        everywhere = self.node_addresses + self.proxy_addresses
        self.port = free_port(everywhere[0], *everywhere[1:])
        storage_port = free_port(self.node_addresses[0], *self.node_addresses[1:])
        self._own_toxiproxy = toxiproxy is None
        self.toxiproxy = toxiproxy or Toxiproxy()
        self.nodes: list[Node] = []
        self.proxies = []
        try:
            tokens = _tokens(nodes)
            for i, (addr, token) in enumerate(zip(self.node_addresses, tokens, strict=True)):
                self.nodes.append(
                    Node(
                        self.root / f"node{i + 1}",
                        address=addr,
                        native_port=self.port,
                        storage_port=storage_port,
                        cluster_name=name,
                        seeds=self.node_addresses,
                        initial_token=token,
                        broadcast_rpc_address=self.proxy_addresses[i],
                        auth=auth,
                        tls=tls,
                        heap=heap,
                    )
                )
                self.proxies.append(
                    self.toxiproxy.proxy(
                        f"{name}-{self.port}-node{i + 1}",
                        f"{self.proxy_addresses[i]}:{self.port}",
                        f"{addr}:{self.port}",
                    )
                )
            # The first node alone (it creates the schema), then the rest together.
            self.nodes[0].start(start_timeout)
            for n in self.nodes[1:]:
                n.launch()
            for n in self.nodes[1:]:
                n.wait_ready(start_timeout)
            if nodes > 1:
                self.wait_ring(start_timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ring(self, timeout: float = 240.0) -> None:
        """Waits until every node knows every other node's token: a node
        listening for clients may not have heard of the others yet, and would
        then take writes of their token ranges for its own (with replication
        factor 1, a row written there is never found by its owner)."""
        deadline = time.monotonic() + timeout
        want = len(self.nodes) - 1
        for i in range(len(self.nodes)):
            while True:
                try:
                    (peers,) = self.cql("SELECT peer, tokens FROM system.peers", node=i)
                    known = [p for p in peers if any(c.isdigit() for c in p.get("tokens", ""))]
                    if len(known) == want:
                        break
                except RuntimeError:
                    pass  # not serving CQL yet
                if time.monotonic() > deadline:
                    raise NodeStartError(
                        f"node {self.nodes[i].address} did not learn the tokens of the other "
                        f"{want} nodes within {timeout:.0f} s"
                    )
                time.sleep(0.5)

    @property
    def hosts(self) -> list[str]:
        return list(self.proxy_addresses)

    def url(self, keyspace: str) -> str:
        hosts = ",".join(f"{h}:{self.port}" for h in self.proxy_addresses)
        return f"cassandra://{hosts}/{keyspace}"

    def direct_url(self, keyspace: str) -> str:
        return f"cassandra://{self.node_addresses[0]}:{self.port}/{keyspace}"

    def cql(self, *statements: str, node: int = 0) -> list[list[dict[str, str]]]:
        """Runs statements on one node (as the superuser when ``auth``) through
        the DataStax Python driver in a subprocess (see ``testbed.cqlexec``);
        returns each statement's rows, values as strings."""
        n = self.nodes[node]
        cmd = [sys.executable, "-m", "testbed.cqlexec", n.address, str(n.native_port)]
        r = subprocess.run(
            cmd + (["--auth"] if self.auth else []) + list(statements),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parent.parent,
        )
        if r.returncode != 0:
            raise RuntimeError(f"CQL on {n.address}:{n.native_port} failed: {r.stderr[-2000:]}")
        return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("[")]

    def reads(self, keyspace: str, table: str) -> list[int]:
        """Reads of ``keyspace.table`` each running node has coordinated so far
        (its ``system_views.coordinator_read_latency`` count); 0 for a stopped node."""
        q = (
            "SELECT count FROM system_views.coordinator_read_latency "
            f"WHERE keyspace_name = '{keyspace}' AND table_name = '{table}'"
        )
        return [
            sum(int(r["count"]) for r in self.cql(q, node=i)[0]) if n.running else 0
            for i, n in enumerate(self.nodes)
        ]

    def cpu_seconds(self) -> float:
        return sum(n.cpu_seconds() for n in self.nodes if n.running)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        for p in self.proxies:
            with contextlib.suppress(Exception):
                self.toxiproxy.request("DELETE", f"/proxies/{p.name}")
        if self._own_toxiproxy:
            self.toxiproxy.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gen_certs(directory: str | os.PathLike[str], *, password: str = "changeit") -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.x/127.0.1.x/localhost and a client
    certificate, as PEM (for the loader) and PKCS12 key and trust stores (for
    Cassandra). Returns the paths by name."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(args, check=True, cwd=d, capture_output=True, timeout=60)

    san = ",".join(["DNS:localhost"] + [f"IP:127.0.{a}.{b}" for a in (0, 1) for b in (1, 2, 3)])
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        "-subj", "/CN=crs4 test CA", "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    for who, cn in (("server", "127.0.0.1"), ("client", "trainer")):
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{who}.key", "-out", f"{who}.csr")  # fmt: skip
        ext = d / f"{who}.ext"
        ext.write_text(
            f"subjectAltName={san}\n" if who == "server" else "extendedKeyUsage=clientAuth\n"
        )
        run("openssl", "x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem",
            "-CAkey", "ca.key", "-CAcreateserial", "-days", "30", "-extfile", str(ext),
            "-out", f"{who}.pem")  # fmt: skip
    run("openssl", "pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key",
        "-name", "server", "-passout", f"pass:{password}", "-out", "server.p12")  # fmt: skip
    run("keytool", "-importcert", "-noprompt", "-alias", "ca", "-file", "ca.pem",
        "-keystore", "truststore.p12", "-storetype", "PKCS12", "-storepass", password)  # fmt: skip
    return {
        "ca": str(d / "ca.pem"),
        "cert": str(d / "server.pem"),
        "key": str(d / "server.key"),
        "client_cert": str(d / "client.pem"),
        "client_key": str(d / "client.key"),
        "keystore": str(d / "server.p12"),
        "truststore": str(d / "truststore.p12"),
        "password": password,
    }
