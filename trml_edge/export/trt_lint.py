"""The CPU-side TensorRT lint: what would stop (or silently change) a TensorRT build of an ONNX graph.

It runs on the exporting machine (no TensorRT, no GPU), so that a bundle meant for a GPU box or a Jetson
fails at export time, with the node and the fix, rather than on the device. Each rule follows a source:

* the operator table is onnx-tensorrt's ``docs/operators.md`` at the ``release/10.1-GA`` tag, the oldest
  TensorRT this package supports (``TRT_MIN`` in ``trml_edge.tensorrt_env``); newer parsers
  import more operators, never fewer;
* the opset range is the same page's "opset 9 to opset 20";
* the Q/DQ rules follow ``QuantDequantLinearHelper`` in onnx-tensorrt's ``onnxOpImporters.cpp`` (10.1-GA):
  a UINT8 data input or Q zero point is refused; the quantized type is the zero point's, and only INT8,
  FP8 (E4M3) and INT4 are TensorRT quantized types; constant zero points must be all zeros (symmetric);
  scales must be positive;
* subgraphs (the ``then_branch``/``else_branch`` of If, the ``body`` of Loop and Scan) are parsed like the
  main graph, so they are walked with the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from trml_edge.graphs import GRAPHS, Profile

# onnx-tensorrt release/10.1-GA docs/operators.md, every row marked "Y" (150 operators).
TRT_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil Celu
Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear
Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid
HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu
Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min
Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad ParametricSoftplus Pow QuantizeLinear RNN
RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign
Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu
Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
OPSET_RANGE = (9, 20)  # "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20"
# Zero-point (= quantized) types TensorRT builds: onnx-tensorrt maps FLOAT8E4M3FN to kFP8 and INT4 to kINT4.
QUANTIZED_TYPES = {TensorProto.INT8: "INT8", TensorProto.FLOAT8E4M3FN: "FP8 (E4M3)", TensorProto.INT4: "INT4"}
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_PRESET_FIX = "export with the 'tensorrt' INT8 preset (symmetric S8S8: --target tensorrt or --int8-preset tensorrt)"


@dataclass
class _Scope:
    """What a (sub)graph can see: constants by name (initializers and Constant outputs) and tensor types."""

    consts: dict[str, np.ndarray]
    types: dict[str, int]

    def child(self, g: onnx.GraphProto) -> _Scope:
        consts, types = dict(self.consts), dict(self.types)
        _collect(g, consts, types)
        return _Scope(consts, types)


def _collect(g: onnx.GraphProto, consts: dict[str, np.ndarray], types: dict[str, int]) -> None:
    for init in g.initializer:
        consts[init.name] = numpy_helper.to_array(init)
        types[init.name] = init.data_type
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
                    types[n.output[0]] = a.t.data_type
        elif n.op_type == "Identity" and n.input and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
            types[n.output[0]] = types.get(n.input[0], 0)


def _where(n: onnx.NodeProto, i: int, path: str) -> str:
    name = n.name or f"#{i} (output {n.output[0] if n.output else '?'})"
    return f"{n.op_type} node {name!r}" + (f" in {path}" if path else "")


def _type_name(t: int) -> str:
    return TensorProto.DataType.Name(t) if t else "unknown"


def _qdq_problems(n: onnx.NodeProto, where: str, scope: _Scope) -> list[str]:
    out = []
    if len(n.input) > 1 and n.input[1] in scope.consts:
        if not (np.asarray(scope.consts[n.input[1]], np.float64) > 0).all():
            out.append(f"{where}: scale {n.input[1]!r} has a value <= 0; TensorRT needs positive scales: "
                       "recalibrate (a constant calibration input gives a zero scale)")
    zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
    attrs = {a.name: a for a in n.attribute}
    if zp is None:
        if n.op_type == "QuantizeLinear" and "output_dtype" not in attrs:
            out.append(f"{where}: no zero point, so ONNX (and ONNX Runtime's parity gate) quantize to UINT8 while "
                       f"TensorRT quantizes to INT8: the engine would compute something else; {_PRESET_FIX}")
        return out
    ztype = scope.types.get(zp, 0)
    if ztype not in QUANTIZED_TYPES:
        out.append(f"{where}: zero point {zp!r} is {_type_name(ztype)}; TensorRT quantizes only to "
                   f"{', '.join(QUANTIZED_TYPES.values())} (a UINT8 pair fails to parse); {_PRESET_FIX}")
    if zp not in scope.consts:
        out.append(f"{where}: zero point {zp!r} is not a constant, so symmetric quantization cannot be checked; "
                   "make it an initializer")
    elif ztype != TensorProto.FLOAT8E4M3FN and np.asarray(scope.consts[zp]).astype(np.float64).any():
        out.append(f"{where}: non-zero zero point {zp!r} (asymmetric quantization); TensorRT quantizes "
                   f"symmetrically only: {_PRESET_FIX}")
    return out


def _walk(g: onnx.GraphProto, scope: _Scope, path: str, problems: list[str]) -> None:
    for i, n in enumerate(g.node):
        where = _where(n, i, path)
        if n.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: operator {n.domain}::{n.op_type} is not an ONNX operator and TensorRT has "
                            "no parser for it; export with standard operators only (no ORT fusions: "
                            "ort_optimize = false)")
        elif n.op_type not in TRT_SUPPORTED_OPS:
            problems.append(f"{where}: operator {n.op_type} is not supported by the TensorRT 10.1 ONNX parser "
                            "(onnx-tensorrt docs/operators.md); keep that computation out of the graph or "
                            "rewrite it with supported operators")
        if n.op_type in _QDQ and n.domain in ("", "ai.onnx"):
            if n.input and scope.types.get(n.input[0]) == TensorProto.UINT8:
                problems.append(f"{where}: data input {n.input[0]!r} is UINT8, which TensorRT does not "
                                f"(de)quantize; {_PRESET_FIX}")
            problems += _qdq_problems(n, where, scope)
        for a in n.attribute:  # If: then_branch/else_branch, Loop/Scan: body
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sub in subs:
                here = f"{path}/" if path else ""
                _walk(sub, scope.child(sub), f"{here}{_where(n, i, '')}.{a.name}", problems)


def lint_tensorrt(onnx_path: str | Path, graph: str | None = None, dims: dict[str, int] | None = None,
                  profiles: dict[str, Profile] | None = None) -> list[str]:
    """Problems that would stop (or silently change) a TensorRT build of this graph; [] when clean.

    Each problem names the node (or input) and the fix. With ``graph``, the inputs are also checked against
    the I/O declaration: every dynamic axis must be a declared axis with an optimization profile.
    """
    model = onnx.load(str(onnx_path))
    problems: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    lo, hi = OPSET_RANGE
    if opset is not None and not lo <= opset <= hi:
        problems.append(f"the graph uses opset {opset}; the TensorRT 10.1 parser imports opsets {lo} to {hi}: "
                        "export with --opset 17")
    scope = _Scope({}, {})
    _collect(model.graph, scope.consts, scope.types)
    _walk(model.graph, scope, "", problems)
    if graph is not None:
        problems += _io_problems(model, graph, dims, profiles)
    return problems


def _io_problems(model: onnx.ModelProto, graph: str, dims: dict[str, int] | None,
                 profiles: dict[str, Profile] | None) -> list[str]:
    spec = GRAPHS[graph]
    declared = {t.name: t for t in spec.inputs}
    problems = []
    for inp in model.graph.input:
        if inp.name not in declared:
            problems.append(f"input {inp.name} is not in the I/O declaration of {graph} (trml_edge/graphs.py); "
                            "re-export the graph")
            continue
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.dim_param and declared[inp.name].dynamic_axes().get(i) is None:
                problems.append(f"input {inp.name} axis {i} ({d.dim_param}) is dynamic but has no profile; "
                                "declare it in trml_edge/graphs.py or export it with a fixed size")
    if dims is not None:
        try:
            spec.profile(dims, profiles)
        except (KeyError, ValueError) as e:
            problems.append(f"cannot build an optimization profile for {graph}: {e}; fix the recipe's "
                            "[tensorrt.profiles] sizes")
    return problems


def graph_precision(onnx_path: str | Path) -> str:
    """The precision the typed ONNX carries, as a strongly typed TensorRT network will build it: ``int8``
    with Q/DQ nodes, ``fp16`` with FLOAT16 tensors, else ``fp32``."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    types: dict[str, int] = {}
    _collect(model.graph, {}, types)
    if any(n.op_type in _QDQ for n in model.graph.node):
        return "int8"
    if TensorProto.FLOAT16 in types.values() or any(
            a.name == "to" and a.i == TensorProto.FLOAT16 for n in model.graph.node if n.op_type == "Cast"
            for a in n.attribute):
        return "fp16"
    return "fp32"
