"""The wheel `make wheel` builds, as a user on an older distribution installs
it: tagged for glibc 2.28 (RHEL/Rocky 8), needing no newer glibc symbol, and
installed with --no-deps into a virtualenv of its runtime dependencies alone,
beside an older torch than development uses (requirements-compat.txt), where
the README's quick start runs as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.readme_recipes import ROOT, recipes, run_recipe

MANYLINUX = (2, 28)


def make(*args: str, timeout: float) -> str:
    r = subprocess.run(
        ["make", "-s", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"make {args}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r.stdout + r.stderr


def pinned(requirements: str, name: str) -> tuple[int, ...]:
    text = (ROOT / requirements).read_text()
    m = re.search(rf"^{name}==([\d.]+)", text, re.M)
    assert m, f"{requirements} pins no {name}"
    return tuple(int(x) for x in m[1].split("."))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_wheel_for_glibc_2_28_runs_the_quick_start_beside_an_older_torch(tmp_path: Path) -> None:
    # First build: every dependency for the zig target (some minutes on two
    # cores); afterwards cargo's cache leaves little but the link.
    out = make("wheel", f"WHEEL_DIR={tmp_path / 'dist'}", timeout=1500)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.startswith("crs4_cassandra-"), wheel.name
    tags = wheel.name.removesuffix(".whl").split("-")
    assert tags[2:4] == ["cp310", "abi3"], wheel.name
    assert "manylinux_2_28_x86_64" in tags[4].split("."), wheel.name
    # auditwheel's verdict: the oldest policy the wheel satisfies, and every
    # versioned glibc symbol it needs.
    policy = re.search(
        r'consistent with the\s+following platform tag:\s+"manylinux_(\d+)_(\d+)_', out
    )
    assert policy, out
    assert (int(policy[1]), int(policy[2])) <= MANYLINUX, out
    glibc = {tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_([\d.]+\d)", out)}
    assert glibc and max(glibc) <= MANYLINUX, sorted(glibc)

    venv = Path(make("compat-env", timeout=1200).split()[-1])
    python = venv / "bin" / "python"
    old_torch = pinned("requirements-compat.txt", "torch")
    assert old_torch < pinned("requirements-dev.txt", "torch")
    old_torch_str = ".".join(map(str, old_torch))
    try:
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", wheel],
            check=True,
            timeout=300,
        )
        # The wheel's own requirements are met by what the virtualenv holds.
        check = subprocess.run(
            [python, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
        )
        assert check.returncode == 0, check.stdout + check.stderr
        (quickstart,) = [r for r in recipes("README.md") if r.name == "quickstart"]
        stdout, _ = run_recipe(
            quickstart,
            tmp_path,
            python,
            epilogue=f"""
import sys, torch
assert cc.__file__.startswith({str(venv)!r}), cc.__file__
assert torch.__version__.split("+")[0] == {old_torch_str!r}, torch.__version__
assert labels.dtype == torch.int64 and len(jpegs) == labels.shape[0] == 128
assert all(bytes(j[:2].numpy()) == b"\\xff\\xd8" for j in jpegs)
print("QUICKSTART OK", torch.__version__)
""",
            drop=("PYTHONPATH",),
        )
        assert f"QUICKSTART OK {old_torch_str}" in stdout, stdout[-2000:]
    finally:
        # Leave the cached virtualenv as requirements-compat.txt made it.
        subprocess.run(
            [python, "-m", "pip", "uninstall", "-q", "-y", "crs4_cassandra"], timeout=120
        )
