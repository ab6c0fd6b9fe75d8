"""CPU targets: ONNX Runtime's own transformer optimizer on the FP32 graph, and the ORT level per graph.

``onnxruntime.transformers.optimizer.optimize_model`` fuses LayerNorm + residual Add into
``SkipLayerNormalization``, MatMul bias + GELU into ``BiasGelu``, and (where its pattern matches) the attention
subgraph into ``Attention``. Those are ``com.microsoft`` operators that only ONNX Runtime runs, so the step is
for ``target = "cpu"`` bundles alone: the recipe check refuses it for TensorRT targets, whose graphs keep
standard ONNX operators (``lint_tensorrt``).

It runs on the FP32 graph, before INT8 quantization (the quantizer keeps the fused operators in float and
quantizes the MatMuls around them). Its Python fusions only (``opt_level=0``): ORT's own runtime fusions are
applied when the session is created, at the level recorded in the manifest, so the saved file holds no
machine-specific layout (as ``opt_level=2`` would bake in). The parity gates judge the result like any other
conversion, and the manifest records which fusions each graph got (an empty dict when nothing matched).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx

from trml_edge.errors import ExportError

# ``clip``: the fusions for open_clip-style pre-LN transformer blocks (SkipLayerNormalization, BiasGelu, QuickGelu,
# HF-CLIP attention). ``vit`` and ``bert`` find the same fusions on these graphs and no more.
MODEL_TYPE = "clip"
# Operator domains that only ONNX Runtime implements (TensorRT's parser and other runtimes reject them).
ORT_ONLY_DOMAINS = ("com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental")


def ort_only_ops(model: onnx.ModelProto) -> list[str]:
    """``domain::op`` of every node outside the standard ONNX domain (sorted, unique)."""
    return sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})


def ort_optimize(src: Path, dst: Path) -> dict[str, Any]:
    """Fuse ``src`` (FP32 ONNX) with ORT's transformer optimizer into ``dst``; returns what was fused."""
    from onnxruntime.transformers.optimizer import optimize_model

    before = len(onnx.load(str(src), load_external_data=False).graph.node)
    loggers = [logging.getLogger(n) for n in ("onnxruntime.transformers", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:  # the optimizer logs every pattern it tried on the root logger
        lg.setLevel(max(lg.level, logging.ERROR))
    try:
        model = optimize_model(str(src), model_type=MODEL_TYPE, num_heads=0, hidden_size=0, opt_level=0,
                               only_onnxruntime=False)
        fused = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
        model.topological_sort()
        _declare_fused_output_types(model.model)
        domains = {o.domain for o in model.model.opset_import}
        for domain in sorted({n.domain for n in model.model.graph.node} - domains - {"", "ai.onnx"}):
            model.model.opset_import.append(onnx.helper.make_opsetid(domain, 1))  # the checker needs it declared
        onnx.checker.check_model(model.model)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"ORT's transformer optimizer produced an invalid {src.name}: {e}; "
                          "set ort_optimize = false in the recipe and report the graph") from e
    except Exception as e:  # the optimizer raises plain Exceptions/AssertionErrors with the reason in the message
        raise ExportError(f"ORT's transformer optimizer failed on {src.name}: {type(e).__name__}: {e}; "
                          "set ort_optimize = false in the recipe and report the graph") from e
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    model.save_model_to_file(str(dst))
    return {"tool": "onnxruntime.transformers.optimizer", "model_type": MODEL_TYPE, "opt_level": 0,
            "fused": fused, "nodes_before": before, "nodes_after": len(model.model.graph.node),
            "ort_only_ops": ort_only_ops(model.model)}


# The fused operators the optimizer writes into these FP32 graphs: every output is float, like their data input.
FLOAT_FUSED_OPS = frozenset({"SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "BiasGelu", "Gelu",
                             "FastGelu", "QuickGelu", "BiasAdd", "Attention", "MultiHeadAttention"})


def _declare_fused_output_types(model: onnx.ModelProto) -> None:
    """Give every output of a fused ``com.microsoft`` op a declared float type.

    ONNX shape inference does not know these operators, so without a declaration the INT8 quantizer cannot
    type their outputs and quietly leaves every MatMul they feed in float ("failed to infer the type of
    tensor ... Skip to quantize it"). ``to_int8`` also checks that no weight MatMul stayed in float.
    """
    typed = {v.name for v in model.graph.value_info}
    for n in model.graph.node:
        if n.domain in ("", "ai.onnx"):
            continue
        if n.op_type not in FLOAT_FUSED_OPS:
            raise ExportError(f"ORT's transformer optimizer wrote an operator this exporter does not know the "
                              f"output types of ({n.domain}::{n.op_type}); set ort_optimize = false and report it")
        for out in n.output:
            if out and out not in typed:
                model.graph.value_info.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
                typed.add(out)


def ort_level(precision: str, path: Path) -> tuple[str, str]:
    """(graph_optimization_level, why) for one bundle graph: "all" unless the known ORT 1.32 crash applies."""
    model = onnx.load(str(path), load_external_data=False)
    if precision == "fp16" and any(n.op_type == "Conv" for n in model.graph.node):
        return "extended", ("FP16 graph with a Conv: ORT 1.32 crashes creating its session under 'all' "
                            "(NCHWc layout transform of an FP16 convolution)")
    return "all", "ORT_ENABLE_ALL works for this graph"
