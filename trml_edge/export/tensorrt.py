"""TensorRT: a CPU-side lint of bundle graphs, and engine building on the target (TensorRT 10 Python API).

Engines are built on the device that runs them, because a plan is tied to the GPU architecture and the
TensorRT version; both are in the file name (``image_encoder.sm87.trt10.3.plan``). The plan file stays a
plain plan that ``trtexec`` and Triton load; its metadata goes into the bundle's ``manifest.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import onnx

from trml_edge.config import write_json_atomic
from trml_edge.errors import ExportError, MissingDependencyError
from trml_edge.graphs import GRAPHS, Profile

# Ops the TensorRT 10 ONNX parser (onnx-tensorrt, docs/operators.md) imports. A graph with any other op
# fails to parse on the target, so the lint reports it on the exporting machine already.
TRT_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BitShift BlackmanWindow Cast CastLike Ceil Celu Clip Compress Concat ConcatFromSequence Constant ConstantOfShape
Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout DynamicQuantizeLinear
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow
HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization
LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool LRN LSTM MatMul Max MaxPool MaxRoiPool
Mean MeanVarianceNormalization Min Mish Mod Mul Multinomial Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split
Sqrt Squeeze STFT Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unique Unsqueeze Upsample Where Xor
""".split())


def lint_tensorrt(onnx_path: str | Path, graph: str | None = None, dims: dict[str, int] | None = None,
                  profiles: dict[str, Profile] | None = None) -> list[str]:
    """Problems that would stop (or silently degrade) a TensorRT build of this graph. Empty list = clean.

    * every op is in the TensorRT ONNX parser's supported set;
    * every Q/DQ zero-point is all zeros (TensorRT only does symmetric quantization);
    * every dynamic input axis is a declared axis with an optimization profile (when ``graph`` is given).
    """
    model = onnx.load(str(onnx_path))
    problems = []
    unsupported = sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")} - TRT_SUPPORTED_OPS)
    custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if unsupported or custom:
        problems.append(f"ops the TensorRT ONNX parser does not support: {unsupported + custom}")
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant" and n.attribute}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2]:
            zp = inits.get(n.input[2]) or consts.get(n.input[2])
            if zp is None:
                problems.append(f"{n.op_type} {n.name}: zero-point {n.input[2]} is not a constant")
            elif onnx.numpy_helper.to_array(zp).any():
                problems.append(f"{n.op_type} {n.name}: non-zero zero-point (asymmetric quantization); "
                                "TensorRT needs symmetric INT8: export with the 'tensorrt' INT8 preset")
    if graph is not None:
        spec = GRAPHS[graph]
        declared = {t.name: t for t in spec.inputs}
        for inp in model.graph.input:
            if inp.name not in declared:
                problems.append(f"input {inp.name} is not in the I/O declaration of {graph}")
                continue
            for i, d in enumerate(inp.type.tensor_type.shape.dim):
                if d.dim_param:
                    axis = declared[inp.name].dynamic_axes().get(i)
                    if axis is None:
                        problems.append(f"input {inp.name} axis {i} ({d.dim_param}) is dynamic but has no profile")
        if dims is not None:
            try:
                spec.profile(dims, profiles)
            except (KeyError, ValueError) as e:
                problems.append(f"cannot build an optimization profile for {graph}: {e}")
    return problems


def _trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise MissingDependencyError("TensorRT is not installed; on the GPU target run: pip install 'trml-edge[trt]' "
                                     "(on Jetson, use the JetPack python3-libnvinfer package)") from e
    return trt


def _compute_capability() -> str:
    """``sm87`` style name of GPU 0, via the CUDA driver API (no torch needed on the target)."""
    import ctypes

    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
            break
        except OSError:
            continue
    else:
        raise ExportError("no CUDA driver found: building TensorRT engines needs an NVIDIA GPU; "
                          "run `trml-edge build-engines` on the target device")
    if cuda.cuInit(0) != 0:
        raise ExportError("the CUDA driver found no usable GPU; run `trml-edge build-engines` on the target device")
    major, minor, dev = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    cuda.cuDeviceGet(ctypes.byref(dev), 0)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # ..._MINOR
    return f"sm{major.value}{minor.value}"


def engine_name(graph: str, sm: str, trt_version: str) -> str:
    major_minor = ".".join(trt_version.split(".")[:2])
    return f"{graph}.{sm}.trt{major_minor}.plan"


def build_engine(trt, onnx_path: Path, plan_path: Path, graph: str, precision: str, dims: dict[str, int],
                 profiles: dict[str, Profile], workspace_mb: int, cache_path: Path) -> dict[str, Any]:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if precision == "int8":  # QDQ graphs: the Q/DQ nodes fix every INT8 tensor's type and scale
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors}; run the CPU lint "
                          "(`trml-edge export --check-tensorrt`) to see unsupported ops")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp16":
        if not builder.platform_has_fast_fp16:
            raise ExportError(f"{graph} asks for FP16 but this GPU has no fast FP16; export it as fp32 instead")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in GRAPHS[graph].profile(dims, profiles).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build {graph}; see the log above (try a larger --workspace)")
    tmp = plan_path.with_name(f".{plan_path.name}.tmp")
    tmp.write_bytes(bytes(plan))
    tmp.replace(plan_path)
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"seconds": round(time.perf_counter() - t0, 2), "size": plan_path.stat().st_size}


def build_engines(bundle_dir: str | Path, workspace_mb: int | None = None, graphs: list[str] | None = None
                  ) -> dict[str, Any]:
    """Build one engine per bundle graph into ``BUNDLE/engines/`` and record them in the manifest."""
    from trml_edge.runtime.bundle import MANIFEST, load_bundle, sha256_file

    bundle = load_bundle(bundle_dir)  # hash-checked before anything is built from it
    trt = _trt()
    sm = _compute_capability()
    dims = bundle.manifest["model"]["dims"]
    recipe_ws = workspace_mb or int(bundle.manifest.get("tensorrt", {}).get("workspace_mb", 1024))
    out = bundle.root / "engines"
    out.mkdir(exist_ok=True)
    cache = out / f"timing.{sm}.trt{'.'.join(trt.__version__.split('.')[:2])}.cache"
    profiles = {}
    engines = dict(bundle.manifest.get("engines", {}))
    for graph in graphs or list(bundle.graphs):
        entry = bundle.graphs[graph]
        for axis, (lo, opt, hi) in _axis_sizes(entry).items():
            profiles[axis] = Profile(lo, opt, hi)
        plan = out / engine_name(graph, sm, trt.__version__)
        info = build_engine(trt, bundle.path(graph), plan, graph, entry["precision"], dims, profiles, recipe_ws, cache)
        engines[graph] = {"file": f"engines/{plan.name}", "sha256": sha256_file(plan), "compute_capability": sm,
                          "tensorrt": trt.__version__, "precision": entry["precision"], "workspace_mb": recipe_ws,
                          "profile": entry["profile"], "timing_cache": f"engines/{cache.name}", **info}
    manifest = json.loads((bundle.root / MANIFEST).read_text())
    manifest["engines"] = engines
    write_json_atomic(bundle.root / MANIFEST, manifest)
    return engines


def _axis_sizes(entry: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    """Recover per-axis (min, opt, max) from the profile recorded in the manifest at export time."""
    sizes = {}
    for t in entry["inputs"]:
        lo, opt, hi = entry["profile"][t["name"]]
        for i, d in enumerate(t["shape"]):
            if isinstance(d, str):
                sizes[d] = (lo[i], opt[i], hi[i])
    return sizes
