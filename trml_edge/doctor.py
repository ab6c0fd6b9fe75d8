"""``trml-edge doctor``: what this machine has, and which of the three uses (export, serve, profile) run here.

The first command to run on a new device. Every probe is independent and guarded: a machine that lacks a
GPU, a driver, TensorRT, ONNX Runtime or a tritonserver gets a line saying so and the one-line fix, never a
traceback. The report is a plain dict (``--json`` prints it); ``render`` turns it into text.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

SCHEMA = "trml-edge-doctor"
OK, MISSING, WARN, ERROR = "ok", "missing", "warn", "error"


def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def _has(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a broken parent package counts as absent)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _guard(fn: Callable[..., dict[str, Any]], *args) -> dict[str, Any]:
    """Run one probe; an unexpected failure becomes an ``error`` entry, so one broken probe spoils nothing else."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - recorded in the report: doctor must finish on any machine
        return {"status": ERROR, "detail": f"{type(e).__name__}: {e}",
                "fix": "report this with the output of `trml-edge doctor --json`"}


def probe_cpu() -> dict[str, Any]:
    from trml_edge.profile.report import cpu_info

    cpu = cpu_info()
    return {"status": OK, "detail": f"{cpu['cpu_model']} ({cpu['logical_cpus']} logical CPUs; ISA "
            f"{' '.join(cpu['isa_flags']) or 'n/a'})", **cpu, "python": sys.version.split()[0],
            "os": platform.platform()}


def probe_memory() -> dict[str, Any]:
    info = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                info[key] = int(rest.split()[0]) >> 10  # kB -> MiB
    except OSError:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["MemTotal"] = pages * size >> 20
    total, avail = info.get("MemTotal"), info.get("MemAvailable")
    return {"status": OK, "detail": f"{total} MiB total" + (f", {avail} MiB available" if avail else ""),
            "total_mib": total, "available_mib": avail}


def _nvidia_smi() -> list[dict[str, str]]:
    if not shutil.which("nvidia-smi"):
        return []
    fields = "name,driver_version,compute_cap,memory.total"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = [dict(zip(fields.split(","), (c.strip() for c in line.split(",")))) for line in out.stdout.splitlines()
            if line.strip()]
    return [r for r in rows if len(r) == 4]


def probe_gpu() -> dict[str, Any]:
    from trml_edge.export.trt_runner import probe_gpu as cuda_probe

    jetson = Path("/etc/nv_tegra_release")
    l4t = jetson.read_text(errors="replace").splitlines()[0].strip() if jetson.is_file() else None
    smi = _nvidia_smi()
    dev, why = cuda_probe()
    if dev is not None:
        driver = f"driver {smi[0]['driver_version']}, " if smi else ""
        return {"status": OK, "detail": f"{dev['name']} (compute capability {dev['compute_capability']}, "
                f"{dev['memory_mib']} MiB; {driver}supports CUDA {dev['driver_cuda']})" +
                (f"; {l4t}" if l4t else ""), "device": dev, "nvidia_smi": smi, "l4t": l4t}
    if smi or l4t:
        return {"status": WARN, "detail": f"a GPU is present ({smi[0]['name'] if smi else l4t}) but CUDA cannot be "
                f"used from Python: {why}", "fix": "pip install 'trml-edge[trt]' (cuda-python), and check the driver",
                "nvidia_smi": smi, "l4t": l4t}
    return {"status": MISSING, "detail": f"no NVIDIA GPU ({why})", "fix": "TensorRT engines need an NVIDIA GPU or "
            "Jetson: run build-engines and the engine profile there", "nvidia_smi": [], "l4t": None}


def probe_tensorrt() -> dict[str, Any]:
    from trml_edge.export.tensorrt import TRT_REQUIREMENT, tensorrt_version_problem

    if not _has("tensorrt"):
        return {"status": MISSING, "detail": f"not installed (supported: {TRT_REQUIREMENT})",
                "fix": "on the GPU machine: pip install 'trml-edge[trt]' (Jetson: JetPack's python3-libnvinfer)"}
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # the wheel is there but libnvinfer is not loadable
        return {"status": ERROR, "detail": f"installed but does not import: {e}",
                "fix": f"reinstall it: pip install --force-reinstall '{TRT_REQUIREMENT}'"}
    problem = tensorrt_version_problem(trt.__version__)
    if problem:
        return {"status": WARN, "detail": problem, "version": trt.__version__,
                "fix": f"pip install '{TRT_REQUIREMENT}'"}
    return {"status": OK, "detail": f"{trt.__version__} (supported: {TRT_REQUIREMENT})", "version": trt.__version__}


def probe_cuda_python() -> dict[str, Any]:
    v = _version("cuda-bindings", "cuda-python")
    if v is None or not _has("cuda.bindings"):
        return {"status": MISSING, "detail": "cuda-python (cuda.bindings) is not installed",
                "fix": "pip install 'trml-edge[trt]'"}
    return {"status": OK, "detail": f"cuda-bindings {v}", "version": v}


def probe_onnxruntime() -> dict[str, Any]:
    if not _has("onnxruntime"):
        return {"status": MISSING, "detail": "onnxruntime is not installed", "fix": "pip install trml-edge"}
    import onnxruntime as ort

    providers = ort.get_available_providers()
    return {"status": OK, "detail": f"{ort.__version__}; providers {', '.join(providers)}",
            "version": ort.__version__, "providers": providers}


def probe_training() -> dict[str, Any]:
    missing = [m for m in ("torch", "open_clip", "onnxconverter_common") if not _has(m)]
    if missing:
        return {"status": MISSING, "detail": f"not installed: {', '.join(missing)}",
                "fix": "pip install 'trml-edge[train]' (export needs the PyTorch model)"}
    return {"status": OK, "detail": f"torch {_version('torch')}, open_clip {_version('open_clip_torch')}"}


def _server_tensorrt(backend_dir: Path) -> str | None:
    """The TensorRT the server's tensorrt backend links (libnvinfer.so.N), with the full version when found."""
    lib = backend_dir / "tensorrt" / "libtriton_tensorrt.so"
    if not lib.is_file():
        return None
    m = re.search(rb"libnvinfer\.so\.(\d+)", lib.read_bytes())
    if not m:
        return "linked TensorRT version not found in libtriton_tensorrt.so"
    major = m.group(1).decode()
    if shutil.which("ldconfig"):
        try:
            out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        for path in re.findall(rf"libnvinfer\.so\.{major}\s.*=>\s*(\S+)", out):
            real = Path(path).resolve().name  # libnvinfer.so.10.3.0
            return real.replace("libnvinfer.so.", "")
    return f"{major}.x (libnvinfer.so.{major})"


def probe_tritonserver(binary: str | None = None) -> dict[str, Any]:
    from trml_edge.errors import TrmlEdgeError

    if binary:
        exe = Path(binary)
        if not (exe.is_file() and os.access(exe, os.X_OK)):
            return {"status": ERROR, "detail": f"{exe} is not an executable file",
                    "fix": "pass the tritonserver binary (JetPack: /opt/tritonserver/bin/tritonserver)"}
        backends, source = exe.resolve().parents[1] / "backends", "given with --tritonserver"
    elif not _has("pytriton"):
        return {"status": MISSING, "detail": "no tritonserver: nvidia-pytriton (which bundles one) is not installed",
                "fix": "pip install 'trml-edge[serve]', or pass --tritonserver PATH (JetPack: /opt/tritonserver)"}
    else:
        from trml_edge.serving.server import bundled_tritonserver

        try:
            exe, backends, _ = bundled_tritonserver()  # the one `trml-edge serve` would start
        except TrmlEdgeError as e:
            return {"status": MISSING, "detail": str(e), "fix": "pip install 'trml-edge[serve]', or pass "
                    "--tritonserver PATH"}
        source = f"bundled by nvidia-pytriton {_version('nvidia-pytriton')}"
    names = sorted(p.name for p in backends.iterdir() if p.is_dir()) if backends.is_dir() else []
    version_file = exe.resolve().parents[1] / "TRITON_VERSION"  # NGC containers and JetPack releases have it
    version = version_file.read_text().strip() if version_file.is_file() else None
    trt = _server_tensorrt(backends)
    return {"status": OK if "python" in names else WARN,
            "detail": f"{exe} ({source}); backends: {', '.join(names) or 'none'}; Triton "
                      f"{version or 'version: see the server log'}; TensorRT: {trt or 'no tensorrt backend'}",
            "binary": str(exe), "backends": names, "triton_version": version, "tensorrt": trt,
            **({} if "python" in names else {"fix": "the router needs the python backend: use a tritonserver "
                                                    "built with it (JetPack's, or pip install 'trml-edge[serve]')"})}


def uses(checks: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """For export, serve and profile: does it run here (yes / cpu-only / no), and the one-line fix."""
    ok = {k: v.get("status") == OK for k, v in checks.items()}
    engines = ok["gpu"] and ok["tensorrt"] and ok["cuda_python"]
    engine_fix = next((checks[k]["fix"] for k in ("gpu", "tensorrt", "cuda_python") if not ok[k]), "")
    server = checks["tritonserver"]
    out = {}
    if not ok["training"]:
        out["export"] = {"runs": "no", "detail": "the ONNX export needs PyTorch and open_clip",
                         "fix": checks["training"]["fix"]}
    else:
        out["export"] = {"runs": "yes" if engines else "cpu-only",
                         "detail": "ONNX bundles, the TensorRT lint" + (", and TensorRT engines (build-engines)"
                                                                       if engines else "; no TensorRT engines here"),
                         "fix": "" if engines else f"engines: {engine_fix}"}
    if server.get("status") not in (OK, WARN) or "python" not in server.get("backends", []):
        out["serve"] = {"runs": "no", "detail": "no tritonserver with the python backend",
                        "fix": server.get("fix", "pip install 'trml-edge[serve]'")}
    else:
        gpu_serving = "tensorrt" in server["backends"] and engines
        out["serve"] = {"runs": "yes" if gpu_serving else "cpu-only",
                        "detail": "Triton with the python backend (ORT graph models)" +
                                  (" and tensorrt_plan graph models" if gpu_serving else ""),
                        "fix": "" if gpu_serving else ("a tritonserver with the tensorrt backend on a GPU box "
                                                       "(--tritonserver PATH), and engines: " + (engine_fix or "ok"))}
    if not ok["onnxruntime"]:
        out["profile"] = {"runs": "no", "detail": "profile runs the bundles with ONNX Runtime",
                          "fix": checks["onnxruntime"]["fix"]}
    else:
        out["profile"] = {"runs": "yes" if engines else "cpu-only",
                          "detail": "ONNX Runtime (" + ", ".join(checks["onnxruntime"].get("providers", [])) + ")" +
                                    (" and the bundles' TensorRT engines" if engines else
                                     "; tensorrt-engines rows SKIPPED"),
                          "fix": "" if engines else f"engines: {engine_fix}"}
    return out


def doctor(tritonserver: str | None = None) -> dict[str, Any]:
    checks = {
        "cpu": _guard(probe_cpu), "memory": _guard(probe_memory), "gpu": _guard(probe_gpu),
        "tensorrt": _guard(probe_tensorrt), "cuda_python": _guard(probe_cuda_python),
        "onnxruntime": _guard(probe_onnxruntime), "training": _guard(probe_training),
        "tritonserver": _guard(probe_tritonserver, tritonserver),
    }
    return {"schema": SCHEMA, "schema_version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "trml_edge": _version("trml-edge"), "checks": checks, "uses": _guard(uses, checks)}


def render(rep: dict[str, Any]) -> str:
    """Plain text, one line per check and per use (readable in a bug report)."""
    lines = [f"trml-edge {rep.get('trml_edge')} doctor ({rep['created']})", ""]
    for name, c in rep["checks"].items():
        lines.append(f"{name:<13} {c.get('status', '?'):<8} {c.get('detail', '')}")
        if c.get("fix"):
            lines.append(f"{'':<13} {'fix:':<8} {c['fix']}")
    lines.append("")
    if "status" in rep["uses"]:  # the uses could not be worked out: say why instead
        return "\n".join(lines + [f"uses         {rep['uses']['status']:<8} {rep['uses'].get('detail', '')}"]) + "\n"
    for name, u in rep["uses"].items():
        lines.append(f"use {name:<9} {u.get('runs', '?'):<8} {u.get('detail', '')}")
        if u.get("fix"):
            lines.append(f"{'':<13} {'fix:':<8} {u['fix']}")
    return "\n".join(lines) + "\n"
