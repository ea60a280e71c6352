"""toxiproxy (Shopify/toxiproxy v2) as a subprocess, driven over its HTTP API.

A proxy listens on one address and forwards to an upstream; toxics change what
crosses it: ``latency`` (added delay on the responses), ``reset_peer``
(connections reset), ``timeout`` (data stops, connections stay open: a hung
node). ``enabled=False`` closes the listener and every connection through it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

from .cassandra import die_with_parent, free_port, process_cpu_seconds


def toxiproxy_binary() -> str:
    path = os.environ.get("CRS4_TOXIPROXY")
    if not path:
        raise RuntimeError(
            "CRS4_TOXIPROXY is not set: run the tests through `make test`, which builds "
            "toxiproxy into the cache and sets it"
        )
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"toxiproxy server binary not found at {path} (CRS4_TOXIPROXY)")
    return path


class Toxiproxy:
    """One toxiproxy server; stopped by ``stop()`` or on leaving a ``with``."""

    def __init__(self, *, startup_timeout: float = 15.0) -> None:
        self.port = free_port("127.0.0.1")
        self._log = tempfile.NamedTemporaryFile(prefix="toxiproxy-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [toxiproxy_binary(), "-host", "127.0.0.1", "-port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                self.request("GET", "/version")
                break
            except OSError as e:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"toxiproxy did not start: {e}; log: {self.log_tail()}"
                    ) from e
                time.sleep(0.05)
        self.proxies: dict[str, Proxy] = {}

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as e:
            raise RuntimeError(
                f"toxiproxy {method} {path}: {e.code} {e.read().decode(errors='replace')}"
            ) from None
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return text

    def proxy(self, name: str, listen: str, upstream: str) -> Proxy:
        self.request(
            "POST",
            "/proxies",
            {"name": name, "listen": listen, "upstream": upstream, "enabled": True},
        )
        p = Proxy(self, name, listen, upstream)
        self.proxies[name] = p
        return p

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self._log.name, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass

    def __enter__(self) -> Toxiproxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Proxy:
    def __init__(self, server: Toxiproxy, name: str, listen: str, upstream: str) -> None:
        self.server = server
        self.name = name
        self.listen = listen
        self.upstream = upstream

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    def toxic(self, kind: str, *, stream: str = "downstream", **attributes: Any) -> str:
        """Adds a toxic; returns its name (for ``remove``)."""
        name = f"{kind}_{stream}"
        self.server.request(
            "POST",
            f"/proxies/{self.name}/toxics",
            {
                "name": name,
                "type": kind,
                "stream": stream,
                "toxicity": 1.0,
                "attributes": attributes,
            },
        )
        return name

    def latency(self, ms: float, jitter: float = 0) -> str:
        """Delays every response chunk by ``ms`` (a round trip that much longer)."""
        return self.toxic("latency", latency=int(ms), jitter=int(jitter))

    def remove(self, toxic: str) -> None:
        """Removes a toxic. toxiproxy first drains the toxic's data in flight,
        and with connections that keep a latency toxic busy that can outlast
        its own request timeout (a 503): then the proxy is made anew, without
        toxics (its open connections are closed, as a restarted proxy's)."""
        try:
            self.server.request("DELETE", f"/proxies/{self.name}/toxics/{toxic}", timeout=60)
        except (RuntimeError, OSError) as e:
            if "404" in str(e):
                return  # already gone
            self.recreate()

    def recreate(self) -> None:
        """Deletes the proxy (closing its connections) and makes it again,
        enabled and without toxics, on the same address and upstream."""
        try:
            self.server.request("DELETE", f"/proxies/{self.name}", timeout=60)
        except RuntimeError as e:
            if "404" not in str(e):
                raise
        self.server.request(
            "POST",
            "/proxies",
            {"name": self.name, "listen": self.listen, "upstream": self.upstream, "enabled": True},
        )

    def clear(self) -> None:
        for t in self.server.request("GET", f"/proxies/{self.name}/toxics") or []:
            self.remove(t["name"])

    def set_upstream(self, upstream: str) -> None:
        """Forwards to another address from now on (open connections are closed)."""
        self.server.request("POST", f"/proxies/{self.name}", {"upstream": upstream})
        self.upstream = upstream

    def set_enabled(self, enabled: bool) -> None:
        self.server.request("POST", f"/proxies/{self.name}", {"enabled": enabled})
