"""What is installed: the versions ``trml-edge --version`` prints, and the ONNX Runtime check of the runtime.

Read from package metadata and module specs, never by importing torch, onnxruntime or tensorrt, so it stays
fast. Standard library only.

ONNX Runtime comes in several distributions that all provide the one ``onnxruntime`` module: ``onnxruntime``
(CPU), ``onnxruntime-gpu`` (CUDA) and NVIDIA's Jetson builds. trml-edge works with whichever is installed,
so it depends on none of them by default (``pip install 'trml-edge[cpu]'`` or ``[gpu]`` picks one); two at
once overwrite each other's files, which is reported here.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import platform
import shutil
from pathlib import Path

from trml_edge import tensorrt_env
from trml_edge.errors import ORT_FIX

JETPACK_TRITON = Path("/opt/tritonserver/bin/tritonserver")


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def onnxruntime_distributions() -> list[str]:
    """The installed distributions that provide the ``onnxruntime`` module (normally one)."""
    return sorted(set(md.packages_distributions().get("onnxruntime", [])))


def report() -> list[tuple[str, str]]:
    """(part, what is installed) for ``trml-edge --version``."""
    from trml_edge import __version__

    rows = [("trml-edge", __version__), ("python", platform.python_version() + f" ({platform.machine()})")]
    dists = onnxruntime_distributions()
    if importlib.util.find_spec("onnxruntime") is None:
        rows.append(("onnxruntime", "not installed; " + ORT_FIX.split(": ", 1)[1]))
    elif not dists:  # a module without package metadata (a source build copied in)
        rows.append(("onnxruntime", "present, from no installed distribution (a build without package metadata)"))
    else:
        desc = ", ".join(f"{_version(d)} (distribution {d})" for d in dists)
        if len(dists) > 1:
            desc += (" - more than one distribution provides the onnxruntime module and their files overwrite each "
                     f"other: pip uninstall -y {' '.join(dists)}, then install the one this machine needs")
        rows.append(("onnxruntime", desc))
    for part, dist, extra in (("torch", "torch", "train"), ("open_clip", "open_clip_torch", "train")):
        v = _version(dist)
        rows.append((part, v if v else f"not installed (pip install 'trml-edge[{extra}]')"))
    rows.append(("tensorrt", _tensorrt()))
    rows.append(("tritonserver", _tritonserver()))
    return rows


def _tensorrt() -> str:
    """TensorRT's version and the CUDA major of its pip wheel (its distributions are tensorrt-cu12, -cu13, ...)."""
    wheels = tensorrt_env.tensorrt_wheels()
    if importlib.util.find_spec("tensorrt") is None:
        return f"not installed ({tensorrt_env.install_advice()})"
    if not wheels:
        return "present, without pip metadata (JetPack's python3-libnvinfer or a system install)"
    versions = "/".join(sorted(set(wheels.values())))
    return f"{versions} (CUDA {tensorrt_env.wheel_cuda_major(wheels) or '?'}: {', '.join(sorted(wheels))})"


def _tritonserver() -> str:
    found = []
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "tritonserver" / "bin" / "tritonserver"
        found.append(f"bundled by nvidia-pytriton {_version('nvidia-pytriton')} ({binary})")
    for path in (shutil.which("tritonserver"), JETPACK_TRITON):
        if path and Path(path).is_file() and str(path) not in " ".join(found):
            found.append(f"{path} (pass it with --tritonserver)")
    return "; ".join(found) if found else ("none: pip install 'trml-edge[serve]' (bundled, runs on CPU), or "
                                           "JetPack's /opt/tritonserver with --tritonserver")


# Top-level module -> the extra that installs it, for the one-line message of a command that needs it.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "torchvision", "open_clip", "safetensors", "PIL", "onnxconverter_common",
                     "huggingface_hub", "timm"), "train"),
    "av": "video",  # PyAV: the runtime's video decoding (trml-edge predict); train brings it too
    **dict.fromkeys(("pytriton", "tritonclient", "grpc"), "serve"),
    **dict.fromkeys(("onnx_tool", "matplotlib"), "profile"),
}


def missing_module_message(module: str | None) -> str | None:
    """The one-line fix for a missing optional module, or None when it is not one of trml-edge's extras."""
    top = (module or "").split(".")[0]
    if top == "onnxruntime":
        return ORT_FIX
    if top in ("tensorrt", "cuda"):  # the extra depends on the driver's CUDA major (on a Jetson: none)
        return f"'{top}' is not installed: {tensorrt_env.install_advice()}"
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return f"'{top}' is not installed; this command needs the {extra} extra: pip install 'trml-edge[{extra}]'"
