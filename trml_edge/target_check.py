"""The target check (``trml-edge doctor --run``, ``make target-check``): the first thing to run on a new GPU box
or Jetson, writing one report a user can attach to a bug.

``make target-check`` first builds the environment this machine needs (``trml_edge/target_env.py`` writes the
commands to ``target_check/setup.sh``, which the report quotes). Steps, each OK / FAIL / SKIPPED with its time and
the reason:

1. ``doctor``: the machine and which uses run here;
2. ``build-engines`` on each bundle (default: the demo's ``demo_out/bundles/*``) that the TensorRT lint
   accepts (the demo's INT8 bundle uses the CPU preset, which TensorRT cannot build: SKIPPED with the lint's
   reason), with the parity gate against ONNX Runtime on this GPU;
3. the ``gpu``/``trt`` tests (``pytest -m "gpu or trt"``), when run from a source checkout;
4. ``profile`` of the bundles with engines: the ``tensorrt-engines`` backend beside ONNX Runtime.

It is sized to finish in well under 10 minutes on the tiny demo model (short profile windows).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from trml_edge.config import write_json_atomic
from trml_edge.errors import TrmlEdgeError

DEMO = Path("demo_out")
TESTS = Path(__file__).resolve().parents[1] / "tests"


@dataclass
class TargetCheckConfig:
    out: str = "target_check"
    bundles: list[str] = field(default_factory=list)  # empty: every bundle under demo_out/bundles
    data: str | None = None  # profile accuracy; default demo_out/data when present
    min_time: float = 0.5  # profile seconds per configuration
    tests_timeout: float = 420.0
    tritonserver: str | None = None


def _step(steps: list[dict[str, Any]], name: str, fn: Callable[[], tuple[str, str]]) -> None:
    t0 = time.perf_counter()
    try:
        status, detail = fn()
    except TrmlEdgeError as e:
        status, detail = "FAIL", str(e)
    except Exception as e:  # noqa: BLE001 - recorded in the report, which is what the user attaches
        status, detail = "FAIL", f"{type(e).__name__}: {e}"
    steps.append({"name": name, "status": status, "seconds": round(time.perf_counter() - t0, 2), "detail": detail})


def target_check(cfg: TargetCheckConfig) -> dict[str, Any]:
    from trml_edge.doctor import doctor, render

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []
    doc: dict[str, Any] = {}

    def run_doctor():
        doc.update(doctor(cfg.tritonserver))
        return "OK", "; ".join(f"{k}: {u.get('runs')}" for k, u in doc["uses"].items())

    _step(steps, "doctor", run_doctor)
    bundles = [Path(b) for b in cfg.bundles] or sorted(p for p in (DEMO / "bundles").glob("*") if p.is_dir())
    built: list[str] = []
    if not bundles:
        steps.append({"name": "build-engines", "status": "SKIPPED", "seconds": 0.0,
                      "detail": "no bundle: run `make demo` first, or pass --bundle BUNDLE"})
    for b in bundles:
        _step(steps, f"build-engines {b}", lambda b=b: _build(b, built))
    _step(steps, "gpu tests", lambda: _gpu_tests(cfg, out))
    _step(steps, "profile with engines", lambda: _profile(cfg, built, out))
    rep = {"schema": "trml-edge-target-check", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "settings": asdict(cfg), "doctor": doc, "steps": steps}
    text = _markdown(rep, render(doc) if doc else "doctor failed: see its step")
    rep["summary"] = "\n".join(f"{s['status']:<8} {s['name']} ({s['seconds']:.1f} s): {s['detail'][:200]}"
                               for s in steps)
    write_json_atomic(out / "report.json", rep)
    tmp = out / ".report.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out / "report.md")
    return rep


def _build(path: Path, built: list[str]) -> tuple[str, str]:
    from trml_edge.export.tensorrt import build_engines, lint_tensorrt
    from trml_edge.runtime.bundle import load_bundle

    b = load_bundle(path)
    for g in b.graphs:
        problems = lint_tensorrt(b.path(g), g)
        if problems:
            return "SKIPPED", f"not a TensorRT bundle: {g}: {problems[0]}"
    engines = build_engines(path)
    built.append(str(path))
    return "OK", ", ".join(f"{g} {e['precision']} {e['seconds']} s (max_abs {e['parity']['max_abs']:.1e})"
                           for g, e in engines.items())


def _gpu_tests(cfg: TargetCheckConfig, out: Path) -> tuple[str, str]:
    if not TESTS.is_dir():
        return "SKIPPED", "the tests are not installed with the wheel: run from a source checkout (make target-check)"
    cmd = [sys.executable, "-m", "pytest", str(TESTS), "-m", "gpu or trt", "-q", "-rs", "-p", "no:cacheprovider"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=cfg.tests_timeout, cwd=TESTS.parent)
    except subprocess.TimeoutExpired:
        return "FAIL", f"the gpu tests ran past {cfg.tests_timeout:.0f} s"
    (out / "gpu_tests.log").write_text(res.stdout + res.stderr, encoding="utf-8")
    last = (res.stdout.strip().splitlines() or ["no output"])[-1]
    if res.returncode == 5:  # pytest: no tests collected
        return "SKIPPED", "no gpu/trt tests were collected"
    if res.returncode == 0 and "passed" not in last:  # every one skipped itself: say why (the -rs lines)
        reasons = sorted({ln.split(": ", 1)[-1] for ln in res.stdout.splitlines() if ln.startswith("SKIPPED")})
        return "SKIPPED", f"{last}: {'; '.join(reasons)[:300]}"
    return ("OK" if res.returncode == 0 else "FAIL"), f"{last} (log: {out / 'gpu_tests.log'})"


def _profile(cfg: TargetCheckConfig, built: list[str], out: Path) -> tuple[str, str]:
    if not built:
        return "SKIPPED", "no bundle has engines built here (see the build-engines steps)"
    from trml_edge.profile import ProfileConfig, profile

    data = cfg.data or (str(DEMO / "data") if (DEMO / "data").is_dir() else None)
    rep = profile(ProfileConfig(bundles=built, out=str(out / "profile"), data=data, min_time=cfg.min_time,
                                min_runs=5, warmup=2, progress=False))
    rows = [r for r in rep["latency"] if r["backend"] == "tensorrt-engines"]
    ok = [r for r in rows if r["status"] == "OK"]
    if not ok:
        return "FAIL", "; ".join(r.get("reason", r["status"]) for r in rows) or "no tensorrt-engines row"
    fastest = min(ok, key=lambda r: r["latency"]["p50_ms"])
    return "OK", (f"{len(ok)} tensorrt-engines configurations timed; fastest p50 {fastest['latency']['p50_ms']:.2f} ms "
                  f"({fastest['bundle']}, {fastest['scenario']}, batch {fastest['batch']}); "
                  f"report {out / 'profile' / 'report.md'}")


def _markdown(rep: dict[str, Any], doctor_text: str) -> str:
    lines = ["# trml-edge target check", "", f"Created {rep['created']}. Attach this file to a bug report.", "",
             "## Steps", "", "| step | status | seconds | detail |", "| --- | --- | --- | --- |"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['detail'].replace('|', '/')} |"
              for s in rep["steps"]]
    lines += ["", "## Doctor", "", "```", doctor_text.rstrip(), "```", ""]
    setup = Path(rep["settings"]["out"]) / "setup.sh"  # what make target-check installed (trml_edge/target_env.py)
    if setup.is_file():
        lines += ["## Environment", "", "```sh", setup.read_text(encoding="utf-8").rstrip(), "```", ""]
    prof = Path(rep["settings"]["out"]) / "profile" / "report.md"
    if prof.is_file():
        lines += ["## Profile", "", prof.read_text(encoding="utf-8").split("## Latency", 1)[0].split("\n", 1)[1]]
    lines += ["## Doctor (JSON)", "", "```json", json.dumps(rep["doctor"], indent=2), "```", ""]
    return "\n".join(lines)
