"""The CUDA side of the engines: which GPU this is, and running one TensorRT engine on numpy inputs.

CUDA is reached through NVIDIA's ``cuda-python`` bindings (``cuda.bindings.driver`` / ``.runtime``, in the
``trt-cu12``/``trt-cu13`` extras), the binding TensorRT's own Python samples use (``samples/python/common_runtime.py``).
It was chosen over Polygraphy's ``TrtRunner`` because the timing and the parity check need exactly one
context, one stream and reusable device buffers per graph, with the input-shape call per request that
the dynamic profiles need; cuda-python gives that in a few calls whose statuses are all checked here,
while Polygraphy adds its own runner layer (and its own CUDA wrapper) between us and the engine. No CUDA
function is bound by hand.

Every CUDA call returns ``(status, *values)``; ``_ok`` turns a failed status into ``ExportError`` with the
call's name, so nothing proceeds on an ignored error. GPU-only lines follow:

* CUDA Driver API reference (cuInit, cuDeviceGetCount, cuDeviceGet, cuDeviceGetName, cuDeviceGetAttribute
  with CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR/MINOR, cuDeviceTotalMem, cuDriverGetVersion);
* CUDA Runtime API reference, "Version Management" and "Device Management": cudaRuntimeGetVersion (the CUDA
  version the binding's runtime is, which needs no driver) and cudaGetDeviceCount (the first call that needs
  one: cudaErrorInsufficientDriver, error 35, when the runtime is newer than the driver). cuda-bindings 13
  links the CUDA 13 runtime statically, so the driver API alone cannot tell that the runtime will fail;
* TensorRT Python API, ``Logger``, ``Builder`` and ``Runtime`` (each takes the logger; "TensorRT maintains only
  a single logger pointer at any given time" and warns when another one is passed); a constructor that gets no CUDA context returns null,
  which the Python binding raises as ``TypeError``;
* TensorRT Python API, ``ICudaEngine``/``IExecutionContext`` (10.x name-based I/O, unchanged in 11.x):
  ``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_dtype``, ``set_input_shape``
  (returns False for a shape outside the profile), ``get_tensor_shape``, ``set_tensor_address``,
  ``execute_async_v3`` (returns False on failure); TensorRT developer guide, "Performing Inference".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trml_edge.errors import ExportError, MissingDependencyError
from trml_edge.tensorrt_env import cuda_summary, install_advice


def _cuda():
    try:
        from cuda.bindings import driver, runtime
    except ImportError as e:
        raise MissingDependencyError(f"cuda-python (cuda.bindings) is not installed: {install_advice()}") from e
    return driver, runtime


_LOGGER: tuple = (None, None)  # (tensorrt module, its one Logger)


def trt_logger(trt):
    """The process's one TensorRT logger (warnings and errors), shared by every Builder, parser and Runtime."""
    global _LOGGER
    if _LOGGER[0] is not trt:
        _LOGGER = (trt, trt.Logger(trt.Logger.WARNING))
    return _LOGGER[1]


def trt_create(trt, kind: str):
    """``trt.Builder`` or ``trt.Runtime`` on the shared logger. Both need CUDA: a TensorRT or cuda-python built
    for a newer CUDA than the driver makes TensorRT log "CUDA initialization failure with error: 35" and the
    constructor fail (a TypeError from the binding); that becomes one ExportError naming the versions."""
    try:
        obj, why = getattr(trt, kind)(trt_logger(trt)), "it returned None"
    except TypeError as e:
        obj, why = None, str(e)
    if obj is None:
        raise ExportError(f"TensorRT could not create its {kind} ({why}): CUDA did not initialize, most often "
                          "because TensorRT or cuda-python is built for a newer CUDA than the driver "
                          f"({cuda_summary()}); {install_advice()}")
    return obj


def _ok(result, call: str):
    """``(status, *values)`` of a cuda-python call -> the values; a failed status raises ExportError."""
    status, *values = result if isinstance(result, tuple) else (result,)
    if int(status) != 0:
        raise ExportError(f"CUDA call {call} failed with {getattr(status, 'name', status)}; check the driver "
                          "(nvidia-smi, or tegrastats on Jetson) and that no other process holds the GPU")
    return values[0] if len(values) == 1 else tuple(values)


def cuda_device(index: int = 0) -> dict[str, Any]:
    """Name, compute capability, memory and driver CUDA version of GPU ``index``; ExportError when none."""
    cu, _ = _cuda()
    try:
        status = cu.cuInit(0)[0]
    except RuntimeError as e:  # cuda.pathfinder: the driver library (libcuda) is not on this machine
        raise ExportError(f"no NVIDIA driver here ({e}); TensorRT engines are built and run on the GPU target: "
                          "run this there") from e
    if int(status) != 0:
        raise ExportError(f"the CUDA driver found no usable GPU (cuInit: {getattr(status, 'name', status)}); "
                          "run this on the GPU target")
    count = _ok(cu.cuDeviceGetCount(), "cuDeviceGetCount")
    if index >= count:
        raise ExportError(f"GPU {index} does not exist ({count} found); pick one with CUDA_VISIBLE_DEVICES")
    dev = _ok(cu.cuDeviceGet(index), "cuDeviceGet")
    name = _ok(cu.cuDeviceGetName(256, dev), "cuDeviceGetName")
    attr = cu.CUdevice_attribute
    major = _ok(cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "cuDeviceGetAttribute")
    minor = _ok(cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "cuDeviceGetAttribute")
    total = _ok(cu.cuDeviceTotalMem(dev), "cuDeviceTotalMem")
    version = _ok(cu.cuDriverGetVersion(), "cuDriverGetVersion")  # e.g. 12080 -> CUDA 12.8
    name = name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(name, bytes) else str(name)
    return {"index": index, "name": name, "compute_capability": f"{major}.{minor}", "sm": f"sm{major}{minor}",
            "memory_mib": int(total) >> 20, "driver_cuda": f"{int(version) // 1000}.{int(version) % 1000 // 10}"}


def cuda_runtime() -> dict[str, Any]:
    """The runtime API as the engines use it: the binding's CUDA runtime version and the devices it sees; an
    ExportError naming the driver mismatch when the runtime is newer than the driver."""
    _, rt = _cuda()
    version = int(_ok(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion"))  # 13000 -> 13.0
    status, *rest = rt.cudaGetDeviceCount()
    runtime = f"{version // 1000}.{version % 1000 // 10}"
    if int(status) != 0:
        raise ExportError(f"the CUDA runtime {runtime} of cuda-python cannot use this GPU (cudaGetDeviceCount: "
                          f"{getattr(status, 'name', status)}, error {int(status)}; error 35 is a driver older than "
                          f"the runtime): {install_advice()}")
    return {"runtime_cuda": runtime, "devices": int(rest[0])}


def probe_gpu() -> tuple[dict[str, Any] | None, str]:
    """(device, "") or (None, why not): never raises, for doctor, pytest's skips and profile's SKIPPED rows."""
    try:
        return cuda_device(0), ""
    except (ExportError, MissingDependencyError) as e:
        return None, str(e)


class EngineRunner:
    """One deserialized engine with one execution context, one CUDA stream and device buffers that grow to
    the largest shape seen. ``run`` copies the inputs in, runs, copies the outputs back and synchronizes the
    stream, so the time around it is the graph's end-to-end time on the device."""

    def __init__(self, trt, plan: str | Path):
        _, self.rt = _cuda()
        self.trt = trt
        self.runtime = trt_create(trt, "Runtime")  # kept as long as the engine it deserialized
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise ExportError(f"TensorRT {trt.__version__} could not load {plan}: engines are tied to the TensorRT "
                              "version and GPU that built them; rebuild with `trml-edge build-engines BUNDLE`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = _ok(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if nbytes > size:
            if ptr:
                _ok(self.rt.cudaFree(ptr), "cudaFree")
            ptr = _ok(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
            self.buffers[name] = (int(ptr), nbytes)
        return self.buffers[name][0]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt, ctx = self.rt, self.context
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        keep = []  # host arrays must live until the stream is synchronized
        for name in self.inputs:
            arr = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            keep.append(arr)
            if not ctx.set_input_shape(name, arr.shape):
                raise ExportError(f"input {name} shape {arr.shape} is outside the engine's optimization profile; "
                                  "rebuild the bundle with a recipe whose [tensorrt.profiles] cover it")
            ptr = self._buffer(name, arr.nbytes)
            _ok(rt.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream), "cudaMemcpyAsync")
            ctx.set_tensor_address(name, ptr)
        outs = {}
        for name in self.outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ExportError(f"output {name} has an unresolved shape {shape}; every input shape must be set")
            outs[name] = np.empty(shape, self.dtypes[name])
            ctx.set_tensor_address(name, self._buffer(name, outs[name].nbytes))
        if not ctx.execute_async_v3(self.stream):
            raise ExportError("TensorRT execute_async_v3 failed; see the TensorRT log above")
        for name, arr in outs.items():
            _ok(rt.cudaMemcpyAsync(arr.ctypes.data, self.buffers[name][0], arr.nbytes, d2h, self.stream),
                "cudaMemcpyAsync")
        _ok(rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return outs

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            _ok(self.rt.cudaFree(ptr), "cudaFree")
        self.buffers = {}
        if self.stream is not None:
            _ok(self.rt.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None

    def __enter__(self) -> EngineRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
