"""Fakes for what cannot run here: a Jetson, an NVIDIA driver, pip metadata of TensorRT and cuda-bindings, a
Triton server tree with its TensorRT libraries, and cuda-python's driver and runtime modules.

Each fake stands in for the outside thing only (a file, a command on PATH, a package's metadata, a binding's
return values); the code under test reads it the way it reads the real one.
"""

from __future__ import annotations

import enum
import os
import sys
from pathlib import Path
from types import SimpleNamespace

# the first line of L4T's release file on JetPack 6.2 (Jetson Linux 36.4.3), in the format L4T writes it
JETPACK6 = ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
            "DATE: Wed Jan  8 01:49:37 UTC 2025")
# JetPack 6.0 (Jetson Linux 36.3: TensorRT 8.6, below the supported range), in the same format
JETPACK60 = ("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, "
             "DATE: Mon May  6 17:34:21 UTC 2024")


def fake_jetson(tmp: Path, monkeypatch, release: str = JETPACK6) -> Path:
    """A Jetson: ``tensorrt_env.TEGRA_RELEASE`` points at a file holding ``release``."""
    from trml_edge import tensorrt_env

    path = tmp / "nv_tegra_release"
    path.write_text(release + "\n# KERNEL_VARIANT: oot\n")
    monkeypatch.setattr(tensorrt_env, "TEGRA_RELEASE", path)
    return path


def not_a_jetson(tmp: Path, monkeypatch) -> None:
    from trml_edge import tensorrt_env

    monkeypatch.setattr(tensorrt_env, "TEGRA_RELEASE", tmp / "no_nv_tegra_release")


def fake_nvidia_smi(tmp: Path, monkeypatch, driver: str = "550.54.15", compute_cap: str = "8.9",
                    name: str = "NVIDIA L4", memory: str = "23034 MiB", gpus: int = 1) -> None:
    """An ``nvidia-smi`` first on PATH answering ``--query-gpu=FIELDS --format=csv,noheader`` like the real one."""
    bin_dir = tmp / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    values = {"name": name, "driver_version": driver, "compute_cap": compute_cap, "memory.total": memory}
    script = bin_dir / "nvidia-smi"
    script.write_text(f"#!{sys.executable}\nimport sys\nvalues = {values!r}\n"
                      "fields = next(a for a in sys.argv if a.startswith('--query-gpu=')).split('=', 1)[1].split(',')\n"
                      f"for _ in range({gpus}):\n    print(', '.join(values[f] for f in fields))\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]))


def no_nvidia_smi(tmp: Path, monkeypatch) -> None:
    """PATH without any nvidia-smi (the system folders only)."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")


def fake_dists(tmp: Path, monkeypatch, dists: dict[str, str], requires: dict[str, list[str]] | None = None,
               top_level: dict[str, str] | None = None) -> Path:
    """Installed-package metadata (``NAME-VERSION.dist-info``) for each name -> version, first on sys.path."""
    site = tmp / "fake-site"
    site.mkdir(parents=True, exist_ok=True)
    for name, version in dists.items():
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        lines += [f"Requires-Dist: {r}" for r in (requires or {}).get(name, [])]
        (info / "METADATA").write_text("\n".join(lines) + "\n")
        if top_level and name in top_level:
            (info / "top_level.txt").write_text(top_level[name] + "\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def fake_triton(tmp: Path, libs: dict[str, str | None], linked: str | None = "libnvinfer.so.10") -> Path:
    """A Triton install as the NGC container or JetPack lays it out: ``bin/tritonserver``, ``backends/python``,
    ``backends/tensorrt/libtriton_tensorrt.so`` linking ``linked`` (its DT_NEEDED string), and a library folder
    ``lib/`` with ``libs``: file name -> None for a file, or the name of the file it links to.
    Returns the tritonserver binary."""
    root = tmp / "triton"
    (root / "bin").mkdir(parents=True)
    binary = root / "bin" / "tritonserver"
    binary.write_text("#!/bin/sh\necho 'fake tritonserver: exits at once' >&2\nexit 1\n")
    binary.chmod(0o755)
    (root / "backends" / "python").mkdir(parents=True)
    (root / "backends" / "tensorrt").mkdir(parents=True)
    needed = [b"libtritonserver.so", *([linked.encode()] if linked else []), b"libnvinfer_plugin.so.10", b"libc.so.6"]
    (root / "backends" / "tensorrt" / "libtriton_tensorrt.so").write_bytes(
        b"\x7fELF\x02\x01\x01" + b"\x00" * 64 + b"\x00".join(needed) + b"\x00TRITONBACKEND_ModelInitialize\x00")
    lib = root / "lib"
    lib.mkdir()
    for name, target in libs.items():
        if target is None:
            (lib / name).write_bytes(b"\x7fELF fake " + name.encode())
        else:
            (lib / name).symlink_to(target)
    return binary


CudaError = enum.IntEnum("cudaError_t", {"cudaSuccess": 0, "cudaErrorInsufficientDriver": 35,
                                         "cudaErrorNoDevice": 100})


def fake_cuda(driver_cuda: int = 12040, runtime_cuda: int = 13000, device_count_status: int = 35,
              name: bytes = b"NVIDIA L4", cc: tuple[int, int] = (8, 9), memory: int = 23034 << 20):
    """cuda.bindings' (driver, runtime) modules as a machine with one GPU answers them: the driver API works (it
    does with any binding), and the runtime API answers ``cudaGetDeviceCount`` with ``device_count_status``
    (35: the binding's runtime is newer than the driver)."""
    attr = SimpleNamespace(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR="major",
                           CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR="minor")
    driver = SimpleNamespace(
        cuInit=lambda flags: (0,), cuDeviceGetCount=lambda: (0, 1), cuDeviceGet=lambda i: (0, i),
        cuDeviceGetName=lambda n, dev: (0, name + b"\0" * (n - len(name))), CUdevice_attribute=attr,
        cuDeviceGetAttribute=lambda a, dev: (0, cc[0] if a == "major" else cc[1]),
        cuDeviceTotalMem=lambda dev: (0, memory), cuDriverGetVersion=lambda: (0, driver_cuda))
    status = CudaError(device_count_status)
    runtime = SimpleNamespace(cudaRuntimeGetVersion=lambda: (CudaError.cudaSuccess, runtime_cuda),
                              cudaGetDeviceCount=lambda: (status, 1 if status == 0 else 0))
    return driver, runtime


class FakeTensorRT:
    """The few ``tensorrt`` names that creating a Builder or Runtime touches. ``fail`` makes their constructors
    raise the TypeError TensorRT's binding raises when CUDA does not initialize."""

    class Logger:
        WARNING = 2
        made = 0

        def __init__(self, severity):
            type(self).made += 1
            self.severity = severity

    def __init__(self, version: str = "11.4.0.106", fail: bool = True):
        self.__version__ = version
        self.fail = fail
        self.loggers: list = []  # the logger each Builder / Runtime was given
        self.Logger = type("Logger", (FakeTensorRT.Logger,), {"made": 0})

    def _make(self, logger):
        self.loggers.append(logger)
        if self.fail:
            raise TypeError("pybind11::init(): factory function returned nullptr")
        return SimpleNamespace(deserialize_cuda_engine=lambda blob: None)

    def Builder(self, logger):  # noqa: N802 - TensorRT's names
        return self._make(logger)

    def Runtime(self, logger):  # noqa: N802
        return self._make(logger)
