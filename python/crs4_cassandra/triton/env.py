"""The Triton environment: NVIDIA's ``tritonserver`` binary with its Python
backend, and the ``tritonclient`` library, installed apart from the user's
environment.

The ``nvidia-pytriton`` wheel bundles a ``tritonserver`` build (with the Python
backend and one backend stub per Python version) that runs on CPU-only
machines as well as on GPUs. Its own Python package pins ``numpy<2``, but
nothing here imports it: only its binaries are used. So the wheels in ``PINS``
are installed with ``pip install --target DIR --no-deps`` into a directory
outside the user's environment (``$ENV_CACHE/triton-<hash>-cpXY``, keyed by a
hash of the pins and the Python version; ``$ENV_CACHE`` defaults to
``~/.cache/crs4_cassandra``), built once under a temporary name and renamed,
then reused. numpy, aiohttp, urllib3, certifi and packaging (what
``tritonclient`` needs besides) come from the running environment, which is
also the one the backend stub runs the models in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

PYTRITON_VERSION = "0.7.0"
PINS = [
    f"nvidia-pytriton=={PYTRITON_VERSION}",  # tritonserver 2.51 + Python backend
    # The backend stub reads numpy arrays through the numpy 1 C layout: with numpy 2
    # its outputs come out empty. This numpy comes first on the models' path.
    "numpy==1.26.4",
    "tritonclient==2.73.0",
    "ml-dtypes==0.5.4",
    "python-rapidjson==1.25",
    "grpcio==1.85.3",
    "protobuf==6.33.6",
    "geventhttpclient==2.6.1",
    "gevent==26.9.0",
    "greenlet==3.3.2",
    "zope.event==6.2",
    "zope.interface==8.7",
    "brotli==1.2.1",
]


def base_site_packages() -> list[str]:
    """The running environment's site-packages (where torch, DALI and this
    package come from, for the models)."""
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return sorted(paths)


def _digest() -> str:
    text = "\n".join([*PINS, sys.prefix, *base_site_packages()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def env_dir() -> Path:
    """Where the environment lives for this Python and base environment."""
    cache = Path(os.environ.get("ENV_CACHE", Path.home() / ".cache" / "crs4_cassandra"))
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return cache / f"triton-{_digest()}-{tag}"


def _log(msg: str) -> None:
    print(f"[crs4_cassandra.triton] {msg}", file=sys.stderr, flush=True)


def _site(venv: Path) -> Path:
    v = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return venv / "lib" / v / "site-packages"


def ensure_env() -> Path:
    """Builds the environment once (about 90 MB of wheels, some 20 s) and
    returns it; a complete one is reused as it is.

    It is a virtualenv of this Python without pip: ``PINS`` go into its
    site-packages (``pip install --target --no-deps``, run by this
    environment's pip), and a ``.pth`` file adds this environment's
    site-packages after them, so that the models see numpy 1.26 first and
    everything else (this package, torch, DALI) from here. The backend stub
    runs in it: it takes the ``python3`` first on ``PATH`` as its home.
    """
    target = env_dir()
    marker = target / ".complete"
    if marker.exists() and marker.read_text().strip() == _digest():
        return target
    _log(f"installing tritonserver and tritonclient into {target} (pip --target, no deps)")
    t0 = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        base = getattr(sys, "_base_executable", sys.executable)
        # venv writes absolute paths into pyvenv.cfg and bin/: build it under
        # its final name (the temporary directory only holds the wheels).
        if target.exists():
            shutil.rmtree(target)
        subprocess.run([base, "-m", "venv", "--without-pip", str(target)], check=True)
        site = _site(target)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--no-deps",
                "--only-binary=:all:",
                "--target",
                str(tmp),
                *PINS,
            ],
            check=True,
        )
        for entry in tmp.iterdir():
            shutil.move(str(entry), site / entry.name)
        # After the environment's own packages: this one's, .pth files included.
        lines = [f"import site; site.addsitedir({p!r})" for p in base_site_packages()]
        (site / "zz_crs4_cassandra_base.pth").write_text("\n".join(lines) + "\n")
        # The backend loads the stub next to itself: the one built for this Python.
        tree = site / "pytriton" / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = tree / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise RuntimeError(
                f"nvidia-pytriton {PYTRITON_VERSION} has no backend stub for Python {version}"
            )
        shutil.copy2(stub, tree / "backends" / "python" / stub.name)
        marker.write_text(_digest())
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _log(f"Triton environment ready in {time.perf_counter() - t0:.0f} s")
    return target


def client_path(env: Path) -> str:
    """The directory to append to ``sys.path`` for ``tritonclient`` (after this
    environment's own packages, so that its numpy stays the one in use)."""
    return str(_site(env))


def bundled_tritonserver(env: Path) -> Path:
    return _site(env) / "pytriton" / "tritonserver" / "bin" / "tritonserver"


def bundled_backends(env: Path) -> Path:
    return _site(env) / "pytriton" / "tritonserver" / "backends"


def libpython_dir() -> str:
    """The directory of this Python's libpython (the backend stub links it)."""
    return str(sysconfig.get_config_var("LIBDIR") or "")
