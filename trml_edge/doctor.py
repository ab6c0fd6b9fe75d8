"""``trml-edge doctor``: what this machine has, and which of the three uses (export, serve, profile) run here.

The first command to run on a new device. Every probe is independent and guarded: a machine that lacks a
GPU, a driver, TensorRT, ONNX Runtime or a tritonserver gets a line saying so and the one-line fix, never a
traceback. The report is a plain dict (``--json`` prints it); ``render`` turns it into text.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from trml_edge import tensorrt_env as env

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


def probe_gpu(m: dict[str, Any]) -> dict[str, Any]:
    from trml_edge.export.trt_runner import probe_gpu as cuda_probe

    l4t = m.get("l4t")
    smi = env.nvidia_smi()
    dev, why = cuda_probe()
    if dev is not None:
        driver = f"driver {smi[0]['driver_version']}, " if smi else ""
        return {"status": OK, "detail": f"{dev['name']} (compute capability {dev['compute_capability']}, "
                f"{dev['memory_mib']} MiB; {driver}supports CUDA {dev['driver_cuda']})" +
                (f"; {l4t}" if l4t else ""), "device": dev, "nvidia_smi": smi, "l4t": l4t}
    if smi or l4t:
        return {"status": WARN, "detail": f"a GPU is present ({smi[0]['name'] if smi else l4t}) but CUDA cannot be "
                f"used from Python: {why}", "fix": f"{env.install_advice(m)}; and check the driver",
                "nvidia_smi": smi, "l4t": l4t}
    return {"status": MISSING, "detail": f"no NVIDIA GPU ({why})", "fix": "TensorRT engines need an NVIDIA GPU or "
            "Jetson: run build-engines and the engine profile there", "nvidia_smi": [], "l4t": None}


def _driver_cuda(m: dict[str, Any], gpu: dict[str, Any]) -> tuple[int | None, str]:
    """(CUDA major, as text) the driver runs: exact from the CUDA driver API when the GPU probe reached it, else
    from the driver branch (nvidia-smi) or the L4T release."""
    exact = (gpu.get("device") or {}).get("driver_cuda")
    if exact:
        return int(exact.split(".")[0]), f"CUDA {exact}"
    if m.get("jetson"):
        return m.get("cuda_major"), f"CUDA {m.get('cuda_major') or '?'} ({m.get('l4t')})"
    major = m.get("cuda_major")
    return major, f"CUDA {major}" + (f" (driver {m['driver']})" if m.get("driver") else "")


def probe_tensorrt(m: dict[str, Any], gpu: dict[str, Any]) -> dict[str, Any]:
    """TensorRT's version against the supported range, and the CUDA major of its pip wheel against the driver's
    (a wheel built for a newer CUDA fails at trt.Builder with "CUDA initialization failure with error: 35")."""
    if not _has("tensorrt"):
        return {"status": MISSING, "detail": f"not installed (supported: {env.TRT_REQUIREMENT})",
                "fix": env.install_advice(m)}
    wheels = env.tensorrt_wheels()
    major = env.wheel_cuda_major(wheels)
    pip = " ".join(sorted(wheels))
    variant = (f"pip {pip}: CUDA {major or '?'}" if wheels else "no pip metadata: JetPack's or a system install")
    if m.get("jetson") and major is not None:
        return {"status": ERROR, "detail": f"a PyPI TensorRT wheel ({variant}) on a Jetson, not built for JetPack",
                "fix": f"pip uninstall -y {pip}, then {env.jetson_advice(m)}"}
    driver, driver_text = _driver_cuda(m, gpu)
    if major is not None and driver is not None and major > driver:
        return {"status": ERROR, "detail": f"the TensorRT wheel is built for CUDA {major} ({variant}) and this driver "
                f"runs {driver_text}: trt.Builder fails (CUDA initialization failure, error 35)",
                "fix": f"pip uninstall -y {pip}, then {env.install_advice(m)}"}
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # the wheel is there but libnvinfer is not loadable
        return {"status": ERROR, "detail": f"installed ({variant}) but does not import: {e}",
                "fix": f"reinstall it: {env.install_advice(m)}"}
    problem = env.tensorrt_version_problem(trt.__version__)
    if problem:
        return {"status": WARN, "detail": problem, "version": trt.__version__, "fix": env.install_advice(m)}
    return {"status": OK, "detail": f"{trt.__version__} ({variant}; supported: {env.TRT_REQUIREMENT})",
            "version": trt.__version__, "cuda_major": major}


def probe_cuda_python(m: dict[str, Any], gpu: dict[str, Any]) -> dict[str, Any]:
    """cuda-bindings: its CUDA major against the driver's, and the runtime API itself (the driver API probes of
    the GPU check pass with a binding whose runtime the driver cannot run)."""
    v = _version("cuda-bindings", "cuda-python")
    if v is None or not _has("cuda.bindings"):
        return {"status": MISSING, "detail": "cuda-python (cuda.bindings) is not installed",
                "fix": env.install_advice(m)}
    major = env.version_tuple(v, 1)[0]
    detail = f"cuda-bindings {v} (CUDA {major})"
    driver, driver_text = _driver_cuda(m, gpu)
    if driver is not None and major > driver:
        return {"status": ERROR, "detail": f"{detail} carries the CUDA {major} runtime and this driver runs "
                f"{driver_text}: every runtime call fails (cudaErrorInsufficientDriver, error 35)",
                "fix": f"pip uninstall -y cuda-bindings cuda-python, then {env.install_advice(m)}", "version": v}
    if gpu.get("status") != OK:  # no GPU reached: the runtime API has nothing to run on
        return {"status": OK, "detail": f"{detail}; runtime API not probed (no usable GPU)", "version": v}
    from trml_edge.errors import ExportError
    from trml_edge.export.trt_runner import cuda_runtime

    try:
        rt = cuda_runtime()
    except ExportError as e:
        return {"status": ERROR, "detail": f"{detail}: {e}", "fix": env.install_advice(m), "version": v}
    return {"status": OK, "detail": f"{detail}; runtime API: CUDA {rt['runtime_cuda']}, {rt['devices']} device(s)",
            "version": v, **rt}


def onnxruntime_fix(m: dict[str, Any]) -> str:
    """The install that brings an ONNX Runtime to this machine: the extra for it, or on a Jetson NVIDIA's wheel
    (pyproject.toml's extras; the base install brings none, so that one never overwrites another)."""
    if m.get("jetson"):
        return ("install NVIDIA's onnxruntime-gpu wheel for this JetPack (Jetson AI Lab / JetPack's pip index), "
                "not a PyPI one")
    if m.get("driver"):
        return "pip install 'trml-edge[gpu]' (onnxruntime-gpu: CUDA), or 'trml-edge[cpu]' for CPU only"
    return "pip install 'trml-edge[cpu]' (onnxruntime); on a GPU box 'trml-edge[gpu]'"


def _tiny_graph() -> bytes:
    """A one-node ONNX graph (y = x + x), the smallest thing a provider must compile and run."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "doctor", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def provider_works(ort, graph: bytes, provider: str) -> str | None:
    """None when ``provider`` builds a session for ``graph`` and runs it right; otherwise why not. ONNX Runtime
    lists a provider when its library is in the wheel, not when it loads: a CUDA provider whose CUDA or cuDNN is
    missing is dropped at session creation with a logged error and the session runs on the CPU, so the session
    is asked which providers it kept."""
    import warnings

    import numpy as np

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # the reason comes back here, not as log lines on doctor's output
    try:
        with warnings.catch_warnings():  # ONNX Runtime warns of a provider it cannot use: the answer says it
            warnings.simplefilter("ignore")
            sess = ort.InferenceSession(graph, opts, providers=[provider])
        kept = sess.get_providers()
        if provider not in kept:
            return f"a session fell back to {', '.join(kept) or 'nothing'} (its libraries did not load)"
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        (y,) = sess.run(None, {"x": x})
    except Exception as e:  # noqa: BLE001 - any failure to build or run is the answer
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return None if np.array_equal(y, x + x) else "a session ran and returned a wrong sum"


def probe_onnxruntime(m: dict[str, Any] | None = None) -> dict[str, Any]:
    m = m or {}
    if not _has("onnxruntime"):
        return {"status": MISSING, "detail": "onnxruntime is not installed", "fix": onnxruntime_fix(m)}
    import onnxruntime as ort

    graph = _tiny_graph()
    listed = ort.get_available_providers()
    broken = {p: why for p in listed if (why := provider_works(ort, graph, p))}
    providers = [p for p in listed if p not in broken]
    detail = f"{ort.__version__}; providers {', '.join(providers) or 'none'} (each ran a session)"
    if broken:
        detail += "; listed but broken: " + "; ".join(f"{p}: {why}" for p, why in broken.items())
    out = {"status": OK if providers and not broken else (WARN if providers else ERROR), "detail": detail,
           "version": ort.__version__, "providers": providers, "broken": broken}
    if broken:
        out["fix"] = ("the CUDA provider needs the CUDA and cuDNN runtime its onnxruntime-gpu was built for "
                      "(ONNX Runtime's CUDA EP requirements table); or " + onnxruntime_fix(m))
    return out


def probe_processes() -> dict[str, Any]:
    """Whether other local accounts can read this box's processes' command lines: ``serve`` passes the admin token
    on tritonserver's (the only place Triton reads it)."""
    from trml_edge.serving.security import proc_hides_processes

    hidden, how = proc_hides_processes()
    if hidden:
        return {"status": OK, "detail": f"/proc is mounted {how}: other accounts cannot read a server's command "
                                        "line (its admin token)", "hidepid": True}
    return {"status": WARN, "hidepid": False,
            "detail": f"/proc is mounted {how}: every local account can read a server's command line, the "
                      "admin token of serve --admin-token-file among it",
            "fix": "on a box with other accounts: mount -o remount,hidepid=invisible /proc (fstab: "
                   "proc /proc proc hidepid=invisible 0 0), or serve under its own account in a container"}


def probe_training() -> dict[str, Any]:
    missing = [m for m in ("torch", "open_clip", "onnxconverter_common") if not _has(m)]
    if missing:
        return {"status": MISSING, "detail": f"not installed: {', '.join(missing)}",
                "fix": "pip install 'trml-edge[train]' (export needs the PyTorch model)"}
    return {"status": OK, "detail": f"torch {_version('torch')}, open_clip {_version('open_clip_torch')}"}


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
    trt, how = env.server_tensorrt(backends) if "tensorrt" in names else (None, "")
    trt_text = f"{trt or 'version unknown'} ({how})" if "tensorrt" in names else "no tensorrt backend"
    return {"status": OK if "python" in names else WARN,
            "detail": f"{exe} ({source}); backends: {', '.join(names) or 'none'}; Triton "
                      f"{version or 'version: see the server log'}; TensorRT: {trt_text}",
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
    if not checks["onnxruntime"].get("providers"):  # a provider that ran a session is enough to profile
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
    m = _guard(env.machine)  # Jetson or not, the driver and its CUDA major: what the TensorRT checks compare with
    gpu = _guard(probe_gpu, m)
    checks = {
        "cpu": _guard(probe_cpu), "memory": _guard(probe_memory), "gpu": gpu,
        "tensorrt": _guard(probe_tensorrt, m, gpu), "cuda_python": _guard(probe_cuda_python, m, gpu),
        "onnxruntime": _guard(probe_onnxruntime, m), "processes": _guard(probe_processes), "training": _guard(probe_training),
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
