"""``serve``'s check of a TensorRT repository against the server and GPU that would load its plans.

A plan deserializes only on the TensorRT release that built it and runs only on the GPU architecture it was built
for (TensorRT developer guide, "Version Compatibility" and "Hardware Compatibility"). ``trml-edge triton build``
records both per plan in ``trml/1/router.json`` (from the bundle's manifest); ``check_plan_versions`` compares
them with the TensorRT the server's ``tensorrt`` backend loads and the GPUs nvidia-smi lists, and refuses a
mismatch in one line, before Triton would fail inside a model load. What it cannot tell goes to ``log``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from trml_edge.errors import ServingError
from trml_edge.tensorrt_env import gpu_architectures, plan_loads, server_tensorrt

REBUILD = ("rebuild the engines on this machine with `trml-edge build-engines BUNDLE` (with the server's TensorRT), "
           "then run triton build again")


def check_plan_versions(repo: str | Path, tritonserver: str | Path | None = None,
                        backend_directory: str | Path | None = None,
                        log: Callable[[str], None] | None = None) -> str | None:
    """Refuse a TensorRT repository whose plans this server or GPU cannot load; returns the server's TensorRT
    version (None when the repository holds no plans or the version cannot be told)."""
    say = log or (lambda line: None)
    from trml_edge.serving.versions import router_dir

    try:
        router = router_dir(Path(repo)) / "router.json"
        plans = json.loads(router.read_text()).get("tensorrt") or {}
    except (OSError, ValueError, ServingError):
        return None  # not a trml repository, or not readable: TritonServer says so when it starts
    if not plans:
        return None
    if tritonserver is None:
        raise ServingError(f"{repo} holds TensorRT plans, and the tritonserver bundled by nvidia-pytriton has no "
                           "tensorrt backend; pass --tritonserver PATH (JetPack: /opt/tritonserver/bin/tritonserver, "
                           "or the NGC Triton container's), or build a --backend python|onnxruntime repository")
    backends = Path(backend_directory) if backend_directory else Path(tritonserver).resolve().parents[1] / "backends"
    if not (backends / "tensorrt").is_dir():
        raise ServingError(f"the server's backends ({backends}) have no tensorrt backend for the plans in {repo}; "
                           "use a Triton build with it, or a --backend python|onnxruntime repository")
    problems = []
    server, how = server_tensorrt(backends)
    if server is None:
        say(f"could not tell the server's TensorRT version ({how}); the plans were built with TensorRT "
            f"{', '.join(sorted({p['version'] for p in plans.values()}))}")
    else:
        bad = {g: p["version"] for g, p in plans.items() if not plan_loads(p["version"], server)}
        if bad:
            built = ", ".join(f"{g} with {v}" for g, v in sorted(bad.items()))
            problems.append(f"the plans were built with TensorRT {built}, the server loads TensorRT {server} ({how})")
    gpus = sorted(set(gpu_architectures()))
    built_for = {g: p.get("compute_capability") for g, p in plans.items()}
    if not gpus:
        say(f"could not tell this machine's GPU architecture (nvidia-smi); the plans were built for "
            f"{', '.join(sorted({str(a) for a in built_for.values()}))}")
    elif None in built_for.values():
        say(f"{router} records no GPU architecture for the plans (a repository from before it did): run triton build "
            "again to have serve check it")
    else:
        other = {g: a for g, a in built_for.items() if [a] != gpus}
        if other:
            problems.append(f"the plans of {', '.join(sorted(other))} were built for "
                            f"{', '.join(sorted(set(other.values())))} and this machine's GPUs are {', '.join(gpus)} "
                            "(Triton runs a plan on every GPU it sees)")
    if problems:
        raise ServingError(f"these TensorRT plans cannot load here: {'; '.join(problems)}; {REBUILD}")
    return server
