"""The first step of ``make target-check``: the environment the target check needs on this machine, written as
the commands that build it (``target_check/setup.sh``), or a refusal that says what to do first.

    python3 -m trml_edge.target_env --venv .venv-target --out target_check/setup.sh

The system's python3 runs it before any virtual environment exists, so it uses the standard library only.
What it picks, from what ``trml_edge.tensorrt_env`` reads of the machine:

* a GPU box whose driver runs CUDA 13 (R580 and newer): ``.[cpu,train,serve,profile,test,trt-cu13]`` with
  ``constraints.txt`` as it is (PyPI's x86_64 torch 2.14.1 is a CUDA 13 build as well);
* a GPU box whose driver runs CUDA 12 (R535 to R575): the same with ``trt-cu12``, and ``constraints.txt``'s CUDA 13
  stack swapped for its CUDA 12 one: the lines tagged ``# cu13`` (torch 2.14.1, which requires cuda-bindings 13,
  and its CUDA 13 libraries) are dropped and the ``#cu12`` lines (torch 2.9.1, PyPI's x86_64 build for CUDA 12.8,
  and cuda-bindings 12) take their place;
* a Jetson (JetPack 6: L4T R36, CUDA 12; JetPack 7: L4T R38, CUDA 13): a virtual environment that sees the
  system packages (JetPack's TensorRT, and NVIDIA's torch and ONNX Runtime where they are installed), the
  cuda-bindings of JetPack's CUDA major, no pip TensorRT and no constraints file (NVIDIA's builds stay);
* anything else is refused with the reason and the fix: no driver and no Jetson, a driver older than R535, a
  JetPack older than 6.1 (TensorRT 8.x: move to 6.1 or later), an L4T release whose CUDA is not known here,
  JetPack's TensorRT not installed, a python3 without ``venv``.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from trml_edge import tensorrt_env as env
from trml_edge.errors import MissingDependencyError

CONSTRAINTS = Path("constraints.txt")
CU13_TAG = "# cu13"  # a constraints line of the CUDA 13 stack (trailing comment: pip ignores it)
CU12_PREFIX = "#cu12 "  # a commented constraints line that replaces that stack for a CUDA 12 driver
EXTRAS = ("train", "serve", "profile", "test")  # what the target check runs: export fixtures, Triton, profile, pytest


def constraints_for(text: str, cuda_major: int) -> str:
    """``constraints.txt`` for a box whose driver runs ``cuda_major``: as it is for 13; for 12 without the
    ``# cu13`` lines and with the ``#cu12`` lines in force."""
    if cuda_major == 13:
        return text
    out = []
    for line in text.splitlines():
        if line.rstrip().endswith(CU13_TAG):
            continue
        out.append(line[len(CU12_PREFIX):] if line.startswith(CU12_PREFIX) else line)
    return "\n".join(out) + "\n"


@dataclass
class Plan:
    summary: str  # the machine, in one line
    commands: list[list[str]]  # run in order from the repository root
    files: dict[str, str] = field(default_factory=dict)  # name -> text, written beside setup.sh


def plan(venv: str, m: dict, has_module: Callable[[str], bool], constraints: str, out_dir: Path,
         python: str = sys.executable) -> Plan:
    """The commands that build ``venv`` for the target check on machine ``m`` (``tensorrt_env.machine()``);
    MissingDependencyError with the fix where this machine needs something first."""
    if not has_module("ensurepip"):
        raise MissingDependencyError(f"{python} cannot create virtual environments (no ensurepip): install it "
                                     "(Debian/Ubuntu, JetPack: sudo apt install python3-venv), then run make "
                                     "target-check again")
    vpy = str(Path(venv) / "bin" / "python")
    pip = [vpy, "-m", "pip", "install"]
    major = m.get("cuda_major")
    if m.get("jetson"):
        if env.jetpack_tensorrt_problem(m.get("l4t")):  # JetPack 6.0 or older: its TensorRT is 8.x
            raise MissingDependencyError(env.jetson_advice(m))
        if major is None:
            raise MissingDependencyError(f"this Jetson's L4T release ({m.get('l4t')}) is not one whose CUDA trml-edge "
                                         "knows (JetPack 6 is R36, JetPack 7 is R38); build the environment by hand: "
                                         + env.jetson_advice(m))
        if not has_module("tensorrt"):
            raise MissingDependencyError(f"JetPack's TensorRT is not installed for {python}: sudo apt install "
                                         "python3-libnvinfer (JetPack 6.1+ ships TensorRT 10.3), then run make "
                                         "target-check again; PyPI's TensorRT wheels are not built for JetPack")
        # NVIDIA's torch and onnxruntime-gpu stay when the system has them: no train extra (it would fetch PyPI's
        # torch) without a torch, and the CPU ONNX Runtime only where there is none
        extras = ("serve", "profile", "test", *(("train",) if has_module("torch") else ()),
                  *(() if has_module("onnxruntime") else ("cpu",)))
        return Plan(f"Jetson ({m.get('l4t')}): JetPack's TensorRT, CUDA {major}", [
            [python, "-m", "venv", "--system-site-packages", venv],
            [*pip, "--upgrade", "pip"],
            [*pip, "-e", f".[{','.join(sorted(extras))}]", env.BINDINGS[major]],
            [vpy, "-c", "import tensorrt, cuda.bindings.runtime"],  # JetPack's TensorRT is visible in the venv
        ])
    if m.get("driver") is None:
        raise MissingDependencyError("no NVIDIA driver here (nvidia-smi not found) and not a Jetson: run make "
                                     "target-check on the GPU box or Jetson, with its driver installed")
    if major is None:
        raise MissingDependencyError(env.install_advice(m))
    spec = f".[{','.join(('cpu', *EXTRAS, env.EXTRAS[major]))}]"
    files = {}
    if major == 13:
        pins = str(CONSTRAINTS)
    else:
        name = f"constraints-cu{major}.txt"
        files[name] = constraints_for(constraints, major)
        pins = str(out_dir / name)
    return Plan(f"GPU box: driver {m['driver']}, CUDA {major}: {env.EXTRAS[major]}", [
        [python, "-m", "venv", venv],
        [*pip, "--upgrade", "pip"],
        [*pip, "-e", spec, "-c", pins],
    ], files)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m trml_edge.target_env", description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", default=".venv-target", help="the virtual environment to build")
    ap.add_argument("--out", default="target_check/setup.sh", help="the shell script to write")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.unlink(missing_ok=True)  # a refusal leaves no script of an earlier run behind
    try:
        p = plan(args.venv, env.machine(), lambda name: importlib.util.find_spec(name) is not None,
                 CONSTRAINTS.read_text(encoding="utf-8"), out.parent)
    except MissingDependencyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, text in p.files.items():
        _write(out.parent / name, text)
    lines = [shlex.join(c) for c in p.commands]
    _write(out, "\n".join(["#!/bin/sh", f"# {p.summary} (written by python3 -m trml_edge.target_env)", "set -e",
                           *lines, ""]))
    print(f"{p.summary}; the environment {args.venv} is built by {out}:", *lines, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
