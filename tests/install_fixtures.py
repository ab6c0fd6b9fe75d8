"""A wheel of this checkout, installed into fresh virtual environments that cannot see the source tree.

The wheel is built from a copy of the checkout (the checkout stays clean). A fresh environment gets the
wheel itself with pip, and its dependencies from this test environment's own installed distributions: only
those that the wheel's metadata asks for (for the chosen extras), followed through their own requirements,
are linked into a folder the environment reads through a .pth file. So a dependency missing from
pyproject.toml is missing there too, torch is absent unless an extra asks for it, and nothing is downloaded.
"""

from __future__ import annotations

import atexit
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from functools import cache
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


@cache
def _workdir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="trml-install-tests-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


@cache
def wheel() -> Path:
    """Build the wheel from a copy of the checkout's files (tracked and new, as git lists them)."""
    src = _workdir() / "src"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    dist = _workdir() / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(src)], check=True, capture_output=True, text=True)
    (whl,) = dist.glob("trml_edge-*.whl")
    return whl


def wheel_requirements(whl: Path, extras: tuple[str, ...]) -> list[Requirement]:
    """The wheel's Requires-Dist that apply with these extras on this machine."""
    with zipfile.ZipFile(whl) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in meta.splitlines()
            if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ("", *extras))]


def _closure(reqs: list[Requirement]) -> dict[str, md.Distribution]:
    """Installed distributions that ``reqs`` need, with their own requirements, transitively."""
    found: dict[str, md.Distribution] = {}
    todo = list(reqs)
    while todo:
        r = todo.pop()
        name = canonicalize_name(r.name)
        dist = md.distribution(r.name)  # raises if this test environment lacks it: the test cannot run here
        if name not in found:
            found[name] = dist
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *r.extras)):
                todo.append(sub)
    return found


def _link_deps(reqs: list[Requirement], dest: Path) -> list[str]:
    """Symlink every top-level file or folder of the needed distributions into ``dest``; their names."""
    dest.mkdir(parents=True)
    dists = _closure(reqs)
    for dist in dists.values():
        for f in dist.files or []:
            top = f.parts[0]
            if top == ".." or top == "__pycache__":  # scripts in bin/, byte code
                continue
            target = dest / top
            if not target.exists() and not target.is_symlink():
                target.symlink_to(Path(dist.locate_file(top)).resolve())
    return sorted(dists)


def fresh_env(name: str, extras: tuple[str, ...]) -> tuple[Path, list[str]]:
    """A new virtual environment with the wheel installed by pip and its dependencies for ``extras`` linked
    in. Returns its bin/ directory and the distributions linked."""
    env = _workdir() / name
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    whl = wheel()
    site = next((env / "lib").glob("python3*/site-packages"))
    dists = _link_deps(wheel_requirements(whl, extras), env / "deps")
    (site / "_trml_test_deps.pth").write_text(str(env / "deps") + "\n")
    py = env / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    str(whl)], check=True, capture_output=True, text=True)
    return env / "bin", dists


def run(bin_dir: Path, *args, cwd: Path, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """A command of the environment (``trml-edge`` or ``python``), as its user runs it: its bin/ first on PATH,
    no PYTHONPATH, from ``cwd`` (outside the checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    cmd = [str(bin_dir / args[0]), *map(str, args[1:])]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, **kw)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """The error of a command that must fail with exit 2 and a single line on stderr, no traceback."""
    err = re.sub(r"\x1b\[[0-9;]*m", "", r.stderr).strip()
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err
