"""Starting and stopping a ``tritonserver`` process over a model repository."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from types import TracebackType

from . import env as triton_env


def package_root() -> str:
    """The directory holding the crs4_cassandra package in use (for the models'
    sys.path, so that they run this same package)."""
    return str(Path(__file__).resolve().parents[2])


class TritonServer:
    """A ``tritonserver`` process serving ``repository``; a context manager
    that waits until the server is ready and always stops it (its whole
    process group: the backend stubs too).

    ``tritonserver``: a path to a stock binary, or None for the one bundled in
    the Triton environment (built on first use, see :mod:`.env`), which runs
    the models in this Python environment."""

    def __init__(
        self,
        repository: str | os.PathLike[str],
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        tritonserver: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        verbose: bool = False,
        ready_timeout: float = 180.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.repository = Path(repository)
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.tritonserver = tritonserver
        self.log_path = Path(log_path) if log_path else None
        self.verbose = verbose
        self.ready_timeout = ready_timeout
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: object = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The command line and environment the server runs with."""
        environ = dict(os.environ)
        args = [
            f"--model-repository={self.repository}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--exit-timeout-secs=5",
            "--log-verbose=1" if self.verbose else "--log-verbose=0",
            *self.extra_args,
        ]
        if self.tritonserver is not None:
            binary = shutil.which(self.tritonserver) or self.tritonserver
            return [binary, *args], environ
        env = triton_env.ensure_env()
        # The stub embeds Python and takes the python3 first on PATH as its
        # home: the Triton environment's (numpy 1.26, then this environment).
        environ["PATH"] = f"{env / 'bin'}{os.pathsep}{environ.get('PATH', '')}"
        libs = [triton_env.libpython_dir(), environ.get("LD_LIBRARY_PATH", "")]
        environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
        binary = str(triton_env.bundled_tritonserver(env))
        backends = f"--backend-directory={triton_env.bundled_backends(env)}"
        return [binary, backends, *args], environ

    @property
    def http_url(self) -> str:
        return f"localhost:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    def start(self) -> TritonServer:
        cmd, environ = self.command()
        out = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log_file = out
        self.process = subprocess.Popen(
            cmd, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        url = f"http://localhost:{self.http_port}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.25)
        raise TimeoutError(
            f"tritonserver not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log: pass log_path)"
        with open(self.log_path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the server (it drains for up to 5 s), SIGKILL to its whole
        process group after ``timeout``."""
        p, self.process = self.process, None
        if p is not None:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # stubs left behind, if any
            except ProcessLookupError:
                pass
            p.wait()
        if self._log_file not in (None, subprocess.DEVNULL):
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait(self) -> int:
        """Blocks until the server exits; Ctrl-C or SIGTERM stops it. Its exit code."""
        assert self.process is not None

        def terminate(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            return self.process.wait()
        except KeyboardInterrupt:
            print("stopping tritonserver", file=sys.stderr)
            return 130
        finally:
            self.stop()
            signal.signal(signal.SIGTERM, previous)
