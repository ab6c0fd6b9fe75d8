"""FP16 conversion and INT8 (QDQ) quantization of exported ONNX graphs.

INT8 uses explicit quantization: ``onnxruntime.quantization.quantize_static`` writes QuantizeLinear /
DequantizeLinear pairs that ORT runs on CPU and TensorRT builds from directly. The two presets are
validated dataclasses with named constructors, because the CPU and TensorRT targets want different things.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from trml_edge.errors import ConfigError, ExportError
from trml_edge.routing import trim_to_eot

PRECISIONS = ("fp32", "fp16", "int8")

# Ops kept in FP32 inside FP16 graphs: reductions and normalizations whose intermediate values (sums of
# squares, variances, exponentials) leave FP16's range (max 65504) or lose too many bits.
FP16_BLOCK_LIST = ("LayerNormalization", "ReduceL2", "ReduceSum", "ReduceMean", "Pow", "Sqrt", "Softmax", "Exp",
                   "Erf")


def check_precision(p: str) -> str:
    if p not in PRECISIONS:
        raise ConfigError(f"unknown precision {p!r}; choose one of {', '.join(PRECISIONS)}")
    return p


@dataclass(frozen=True)
class Int8Preset:
    name: str
    activation_type: str  # "uint8" or "int8"
    weight_type: str  # "int8" (both targets want signed weights)
    per_channel: bool  # one scale per output channel of a weight
    symmetric_activations: bool  # zero-point fixed at 0 for activations
    symmetric_weights: bool  # zero-point fixed at 0 for weights
    qdq_on_weights: bool  # keep FP32 weights behind a Q/DQ pair instead of storing them as int8 initializers
    reduce_range: bool  # 7-bit weights, avoids the U8S8 overflow of AVX2 without VNNI
    op_types: tuple[str, ...]  # only these ops get quantized inputs; everything else stays in float
    calibrate_method: str  # "MinMax", "Entropy" or "Percentile"
    quantize_attention: bool = True  # also the activation x activation MatMuls (Q.K^T, softmax.V), not only weights
    quantize_bias: bool = True  # ORT's INT32 bias + DequantizeLinear; TensorRT dequantizes only INT8/FP8/INT4

    def validate(self) -> None:
        if self.activation_type not in ("uint8", "int8") or self.weight_type not in ("uint8", "int8"):
            raise ConfigError(f"INT8 preset {self.name}: types must be uint8 or int8")
        if self.calibrate_method not in ("MinMax", "Entropy", "Percentile"):
            raise ConfigError(f"INT8 preset {self.name}: calibrate_method must be MinMax, Entropy or Percentile")
        if self.activation_type == "uint8" and self.symmetric_activations:
            raise ConfigError(f"INT8 preset {self.name}: uint8 activations cannot be symmetric around 0")
        if not self.op_types:
            raise ConfigError(f"INT8 preset {self.name}: op_types is empty, nothing would be quantized")

    @classmethod
    def cpu(cls) -> Int8Preset:
        return cls(
            name="cpu",
            activation_type="uint8",  # ORT's x86 kernels are U8S8; S8S8 measured slower than FP32 on AVX2
            weight_type="int8",
            per_channel=True,  # per-channel weight scales cost nothing at run time and keep accuracy
            symmetric_activations=False,  # asymmetric U8 uses the full range of post-GELU/ReLU activations
            symmetric_weights=True,  # signed weights are centred; a zero-point would only add work
            qdq_on_weights=False,  # int8 initializers: ORT folds them into integer MatMul/Conv directly
            reduce_range=True,  # 7-bit weights: VPMADDUBSW on AVX2 saturates with full 8-bit U8*S8 pairs
            op_types=("MatMul", "Gemm", "Conv"),  # the compute; LayerNorm/Softmax/Add stay FP32
            calibrate_method="MinMax",  # small calibration sets: MinMax is stable, Entropy needs many samples
        )

    @classmethod
    def tensorrt(cls) -> Int8Preset:
        return cls(
            name="tensorrt",
            activation_type="int8",  # TensorRT's INT8 tensors are signed
            weight_type="int8",
            per_channel=True,  # TensorRT supports per-channel weight scales on the output axis
            symmetric_activations=True,  # TensorRT rejects non-zero zero-points
            symmetric_weights=True,  # likewise for weights
            qdq_on_weights=True,  # TensorRT expects DQ(Q(W)) in front of MatMul/Conv and folds it itself
            reduce_range=False,  # GPUs have native int8 dot products; no overflow workaround needed
            op_types=("MatMul", "Gemm", "Conv"),  # LayerNorm, Softmax and residual Adds stay in higher precision
            calibrate_method="MinMax",
            # an INT32 bias behind a DequantizeLinear fails TensorRT's parser ("only activation types allowed as
            # input to this layer"; onnx-tensorrt 10.1 operators.md: DequantizeLinear takes INT8, FP8, INT4):
            # biases stay float and TensorRT fuses them into the INT8 layer itself
            quantize_bias=False,
        )

    @classmethod
    def named(cls, name: str) -> Int8Preset:
        presets = {"cpu": cls.cpu, "tensorrt": cls.tensorrt}
        if name not in presets:
            raise ConfigError(f"unknown INT8 preset {name!r}; choose one of {', '.join(presets)}")
        preset = presets[name]()
        preset.validate()
        return preset


def to_fp16(src: Path, dst: Path) -> Path:
    """FP16 weights and compute, FP32 inputs and outputs, ``FP16_BLOCK_LIST`` ops kept in FP32.

    Uses ORT's float16 converter (onnxconverter-common 1.16's ``remove_unnecessary_cast_node`` crashes
    on these graphs), then sorts the nodes topologically, which the converter does not do.
    """
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "constant truncated to FP16 range" notes; parity judges the result
        model = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP16_BLOCK_LIST))
    wrapped = OnnxModel(model)
    wrapped.topological_sort()
    try:
        onnx.checker.check_model(wrapped.model)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"FP16 conversion of {src.name} produced an invalid graph: {e}") from e
    onnx.save(wrapped.model, str(dst))
    return dst


class _Reader:
    """``CalibrationDataReader`` over a dict of arrays whose first axis is the sample axis."""

    def __init__(self, arrays: dict[str, np.ndarray], batch: int, trim_tokens: bool):
        self.arrays, self.batch, self.trim = arrays, batch, trim_tokens
        self.n = len(next(iter(arrays.values())))
        self._it = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, self.n, self.batch):
            feed = {k: v[i : i + self.batch] for k, v in self.arrays.items()}
            if self.trim and "tokens" in feed:
                feed["tokens"] = trim_to_eot(feed["tokens"])
            yield feed

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = self._batches()


def activation_matmuls(path: Path) -> list[str]:
    """Names of the MatMuls that multiply two activations (attention's Q.K^T and softmax.V): no weight input."""
    model = onnx.load(str(path), load_external_data=False)
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    names = [n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in consts for i in n.input[:2])]
    if not all(names):  # the quantizer excludes nodes by name: an unnamed one would be quantized after all
        raise ExportError(f"{path.name} has unnamed activation MatMuls, which quantize_attention = False cannot "
                          "exclude; re-export the graph (torch.onnx names every node)")
    return names


def to_int8(src: Path, dst: Path, preset: Int8Preset, calibration: dict[str, np.ndarray], batch: int = 8) -> Path:
    """Static QDQ quantization of one graph with the given preset and calibration inputs."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    preset.validate()
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    pre = dst.with_name(dst.stem + ".pre.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # ORT's quantizer logs every tensor copy on the root logger
    try:
        # shape inference + constant folding, as ORT recommends before quantize_static
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(dst), _Reader(calibration, batch, trim_tokens=True),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(preset.op_types),
            nodes_to_exclude=[] if preset.quantize_attention else activation_matmuls(pre),
            per_channel=preset.per_channel,
            reduce_range=preset.reduce_range,
            activation_type=qtype[preset.activation_type],
            weight_type=qtype[preset.weight_type],
            calibrate_method=getattr(CalibrationMethod, preset.calibrate_method),
            extra_options={
                "ActivationSymmetric": preset.symmetric_activations,
                "WeightSymmetric": preset.symmetric_weights,
                "AddQDQPairToWeight": preset.qdq_on_weights,
                "DedicatedQDQPair": preset.qdq_on_weights,  # TensorRT wants one Q/DQ pair per consumer
                "QuantizeBias": preset.quantize_bias,
            },
        )
    except Exception as e:  # ORT's quantizer raises plain Exceptions with the reason in the message
        raise ExportError(f"INT8 quantization of {src.name} with preset {preset.name} failed: {e}") from e
    finally:
        root.setLevel(level)
        pre.unlink(missing_ok=True)
    left = float_weight_ops(dst, preset.op_types)
    if left:
        raise ExportError(f"INT8 quantization of {src.name} left {len(left)} weight op(s) with a float activation "
                          f"input, which would run in float ({', '.join(left[:3])}...): the quantizer could not type "
                          "their inputs; export this graph without ort_optimize or report the graph")
    return dst


def float_weight_ops(path: Path, op_types: tuple[str, ...]) -> list[str]:
    """Names of ``op_types`` nodes whose weight is quantized (fed by a DequantizeLinear of a constant) but whose
    activation input is not: ORT runs those in float, so a graph with any is not the INT8 graph asked for."""
    model = onnx.load(str(path), load_external_data=False)
    consts = {i.name for i in model.graph.initializer}
    consts |= {n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in consts}
    dq_const = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in consts}
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in model.graph.node if n.op_type in op_types and len(n.input) > 1
            and n.input[1] in dq_const and n.input[0] not in dq]
