"""Start the crs4-cqlserver test instrument as a subprocess.

The binary is taken from ``$CRS4_CQLSERVER`` or ``<repo>/target/release/crs4-cqlserver``.

    with CqlServer(admin=True) as srv:
        cluster = Cluster([srv.host], port=srv.port)
        srv.admin("delay 5")
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def server_binary() -> str:
    return os.environ.get("CRS4_CQLSERVER") or str(REPO / "target" / "release" / "crs4-cqlserver")


def gen_certs(directory: str | os.PathLike) -> dict[str, str]:
    """Writes a self-signed CA and a server certificate for 127.0.0.x/localhost.

    Returns the paths as ``{"ca": ..., "cert": ..., "key": ...}``.
    """
    d = Path(directory)
    subprocess.run([server_binary(), "gen-cert", str(d)], check=True, timeout=30)
    return {"ca": str(d / "ca.pem"), "cert": str(d / "server.pem"), "key": str(d / "server.key")}


class CqlServer:
    """A running server; also a context manager that stops it on exit.

    Keyword arguments map to CLI flags: ``username``, ``password``,
    ``tls_cert``, ``tls_key``, ``delay_ms``, ``error_rate``, ``error_kind``,
    ``nodes``, ``data_file``, ``host``, ``port`` (0 = ephemeral) and
    ``admin`` (True enables the admin port, the default).
    """

    def __init__(self, *, admin: bool = True, startup_timeout: float = 15.0, **flags):
        self.host = flags.pop("host", "127.0.0.1")
        port = flags.pop("port", 0)
        cmd = [server_binary(), "--host", self.host, "--port", str(port), "--print-port"]
        if admin:
            cmd += ["--admin-port", "0"]
        for name, value in flags.items():
            if value is None or value is False:
                continue
            cmd += ["--" + name.replace("_", "-"), str(value)]
        self.cmd = cmd
        self.port: int | None = None
        self.admin_port: int | None = None
        self._admin_sock: socket.socket | None = None
        self._admin_buf = b""
        # stderr goes to a file: a pipe nobody reads would block a chatty server.
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr)
        try:
            self._read_ports(admin, startup_timeout)
        except Exception:
            self.stop()
            raise

    def _read_ports(self, admin: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        want = 2 if admin else 1
        lines: list[str] = []
        buf = b""
        fd = self.proc.stdout.fileno()
        while len(lines) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"crs4-cqlserver did not report its ports: {self.cmd}")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                self.proc.wait(5)
                self._stderr.seek(0)
                err = self._stderr.read().decode(errors="replace")
                raise RuntimeError(f"crs4-cqlserver exited: {err.strip()}")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                lines.append(line.decode().strip())
        for line in lines:
            key, _, value = line.partition(" ")
            if key == "PORT":
                self.port = int(value)
            elif key == "ADMIN":
                self.admin_port = int(value)
        if self.port is None:
            raise RuntimeError(f"unexpected startup output: {lines}")

    @property
    def hosts(self) -> list[str]:
        """Addresses of all nodes (127.0.0.1, 127.0.0.2, ... for --nodes N)."""
        n = int(self._flag("--nodes") or 1)
        base = self.host.rsplit(".", 1)
        return [f"{base[0]}.{int(base[1]) + i}" for i in range(n)]

    def _flag(self, name: str) -> str | None:
        if name in self.cmd:
            return self.cmd[self.cmd.index(name) + 1]
        return None

    def admin(self, command: str, timeout: float = 10.0) -> str:
        """Sends one admin command (``drop``, ``delay N``, ``error-rate F [kind]``,
        ``error-kind K``, ``stats``, ``reset-stats``, ``save``, ``ping``) and returns
        the reply line."""
        if self.admin_port is None:
            raise RuntimeError("admin port not enabled")
        if self._admin_sock is None:
            self._admin_sock = socket.create_connection(
                (self.host, self.admin_port), timeout=timeout
            )
        self._admin_sock.settimeout(timeout)
        self._admin_sock.sendall(command.strip().encode() + b"\n")
        while b"\n" not in self._admin_buf:
            chunk = self._admin_sock.recv(65536)
            if not chunk:
                raise ConnectionError("admin connection closed")
            self._admin_buf += chunk
        line, self._admin_buf = self._admin_buf.split(b"\n", 1)
        return line.decode()

    def stats(self) -> dict:
        return json.loads(self.admin("stats"))

    def stop(self, timeout: float = 10.0) -> int | None:
        """Graceful stop (SIGTERM: the data file, if any, is saved)."""
        if self._admin_sock is not None:
            self._admin_sock.close()
            self._admin_sock = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self._stderr):
            if f is not None:
                f.close()
        return self.proc.returncode

    def __enter__(self) -> CqlServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
