"""The commands the READMEs show, as the tests run them.

A fenced ``bash`` or ``python`` block right after an HTML comment
``<!-- tested: ... -->`` is a recipe that a test runs as written. The comment
holds space-separated options (shell-quoted where they contain spaces):

- ``recipe=NAME``: blocks of one README with the same name are one recipe,
  run in order in one work directory (default: each block on its own, named
  after its section);
- ``cwd=work``: run in an empty work directory instead of the clone's root
  (where a user runs the examples' recipes, which make their own directory
  with ``mktemp -d``);
- ``standin=DIR``: before running, write an imagenette stand-in (the real
  download's layout) to DIR in the work directory;
- ``KEY>=VALUE``: the last ``METRICS {json}`` or ``FINAL {json}`` line printed
  must have KEY at VALUE or more, and the README must state ``>= VALUE``;
- ``prints="TEXT"``: the output must contain TEXT, and so must the README.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READMES = [
    "examples/imagenette/README.md",
    "examples/ade20k/README.md",
    "examples/corel5k/README.md",
    "examples/lightning/README.md",
    "examples/splitfile/README.md",
    "README.md",
]
BLOCK = re.compile(
    r"<!-- tested(?::(?P<spec>.*?))? -->\n```(?P<lang>bash|python)\n(?P<code>.*?)\n```\n", re.S
)
COMMENT = re.compile(r"<!--.*?-->", re.S)


@dataclass
class Recipe:
    readme: str
    name: str
    blocks: list[tuple[str, str]] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)
    at_least: dict[str, float] = field(default_factory=dict)
    prints: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.readme}:{self.name}"

    def key(self) -> tuple[object, ...]:
        """What a run depends on: two READMEs showing the same recipe run it once."""
        return (
            tuple(self.blocks),
            tuple(sorted(self.options.items())),
            tuple(sorted(self.at_least.items())),
            tuple(self.prints),
        )


def recipes(readme: str) -> list[Recipe]:
    text = (ROOT / readme).read_text()
    prose = COMMENT.sub("", text)
    out: dict[str, Recipe] = {}
    for k, m in enumerate(BLOCK.finditer(text)):
        opts: dict[str, str] = {}
        at_least: dict[str, float] = {}
        prints: list[str] = []
        for tok in shlex.split(m["spec"] or ""):
            if ">=" in tok:
                key, value = tok.split(">=")
                assert f">= {value}" in prose, f"{readme} does not state {key} >= {value}"
                at_least[key] = float(value)
            elif tok.startswith("prints="):
                prints.append(tok.removeprefix("prints="))
                assert prints[-1] in prose, f"{readme} does not show {prints[-1]!r}"
            else:
                key, _, value = tok.partition("=")
                assert key in ("recipe", "cwd", "standin") and value, f"{readme}: {tok!r}"
                opts[key] = value
        heading = re.findall(r"^#+ (.+)$", text[: m.start()], re.M)
        slug = re.sub(r"[^a-z0-9]+", "-", heading[-1].lower()).strip("-") if heading else "top"
        name = opts.pop("recipe", slug if slug not in out else f"{slug}-{k}")
        r = out.setdefault(name, Recipe(readme, name))
        r.blocks.append((m["lang"], m["code"]))
        r.options.update(opts)
        r.at_least.update(at_least)
        r.prints.extend(prints)
    return list(out.values())


def all_recipes() -> list[Recipe]:
    seen: dict[tuple[object, ...], Recipe] = {}
    for readme in READMES:
        for r in recipes(readme):
            seen.setdefault(r.key(), r)
    return list(seen.values())


def clone_state() -> set[str]:
    """Every path git reports as changed, untracked or ignored, but bytecode."""
    r = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return {ln for ln in r.stdout.splitlines() if "__pycache__/" not in ln}


def last_metrics(stdout: str) -> dict[str, object]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith(("METRICS {", "FINAL {"))]
    assert lines, stdout[-2000:]
    out: dict[str, object] = json.loads(lines[-1].split(" ", 1)[1])
    return out


def run_recipe(
    r: Recipe,
    tmp: Path,
    python: Path,
    *,
    timeout: float = 300,
    epilogue: str = "",
    env: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
) -> tuple[str, Path]:
    """Runs the recipe's blocks as written with `python` (its bin folder first
    on PATH, so `python`, `torchrun` and `crs4-cassandra` are its own), mktemp
    directories under tmp/tmp. Checks what the README states; returns the
    output and the directory the recipe worked in. `epilogue` is Python run
    after the first Python block, in its process (checks on its variables);
    `drop` names variables of this environment the recipe must not see."""
    work, scratch = tmp / "work", tmp / "tmp"
    work.mkdir()
    scratch.mkdir()
    environ = {
        **os.environ,
        **(env or {}),
        "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}",
        "TMPDIR": str(scratch),
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("VIRTUAL_ENV", *drop):
        environ.pop(name, None)
    if "standin" in r.options:
        subprocess.run(
            [python, ROOT / "examples/imagenette/make_standin.py", work / r.options["standin"],
             "--classes", "5", "--train-per-class", "40", "--val-per-class", "10"],
            check=True, capture_output=True, timeout=120, env=environ,
        )  # fmt: skip
    cwd = work if r.options.get("cwd") == "work" else ROOT
    first_py = min((i for i, (lang, _) in enumerate(r.blocks) if lang == "python"), default=-1)
    stdout = ""
    for i, (lang, code) in enumerate(r.blocks):
        if lang == "bash":
            cmd = ["bash", "-e", "-o", "pipefail", "-c", code]
        else:
            cmd = [str(python), "-c", code + ("\n" + epilogue if i == first_py else "")]
        p = subprocess.run(
            cmd, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout
        )
        stdout += p.stdout
        assert p.returncode == 0, f"{r.id} block {i}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    made = sorted(scratch.glob("tmp.*"))
    where = made[0] if len(made) == 1 else cwd
    if r.at_least:
        m = last_metrics(stdout)
        for key, bar in r.at_least.items():
            value = m.get(key)
            assert isinstance(value, int | float) and value >= bar, (r.id, key, m)
    for text in r.prints:
        assert text in stdout, (r.id, text, stdout[-3000:])
    return stdout, where
