"""FLOPs per graph from its ONNX file, and the machine's matmul peak measured in the same run.

FLOPs are counted by ``onnx-tool``'s profiler (``pip install 'trml-edge[profile]'``) for the input shapes the
pipeline actually ran with: FLOPs = 2 x its multiply-accumulate count. onnx-tool 1.0.1 cannot shape-infer the
temporal encoder (its ReduceSum -> Gemm chain fails with "Gemm inputs must have rank >= 2"); for a graph it
cannot read, the MatMul/Gemm/Conv MACs are counted from ONNX's own shape inference instead, and the report
says which counter produced each number. A graph neither can count (onnx-tool not installed, and a shape
ONNX cannot infer) gets NaN FLOPs (null in report.json) with both reasons as its counter, not a crash. QDQ INT8 graphs are counted as they are, Quantize/Dequantize
included, so their count is a little higher than the FP32 graph's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from functools import cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "bool": np.bool_}


def _zeros(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    import onnx

    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(path), load_external_data=False)
    types = {i.name: tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    return {k: np.zeros(s, types.get(k, np.float32)) for k, s in shapes.items()}


def _onnx_tool_macs(path: Path, feeds: dict[str, np.ndarray]) -> float:
    import onnx_tool

    with contextlib.redirect_stdout(io.StringIO()):  # onnx-tool prints its progress
        m = onnx_tool.Model(str(path))
        m.graph.shape_infer(feeds)
        m.graph.profile()
    return float(m.graph.macs[0])


def _matmul_macs(path: Path, shapes: dict[str, tuple[int, ...]]) -> float:
    """MACs of MatMul, Gemm and Conv nodes (the bulk of every graph here), from ONNX shape inference."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    for inp in model.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, size in zip(dims, shapes[inp.name]):
                d.ClearField("dim_param")
                d.dim_value = int(size)
    model = shape_inference.infer_shapes(model, data_prop=True)
    known = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        known[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        known[init.name] = list(init.dims)
    macs = 0.0
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        a, b = known.get(node.input[0]), known.get(node.input[1])
        out = known.get(node.output[0])
        if not a or not b or not out or None in a + b + out:
            raise ValueError(f"{path.name}: no static shape for {node.op_type} {node.name}")
        if node.op_type == "Conv":  # out (N, C_out, H', W') x weight (C_out, C_in/g, kh, kw)
            macs += float(np.prod(out)) * float(np.prod(b[1:]))
        else:  # out (..., M, N), reduced over K
            k = a[-1] if node.op_type == "MatMul" else (a[0] if any(at.name == "transA" and at.i for at in
                                                                    node.attribute) else a[-1])
            macs += float(np.prod(out)) * float(k)
    return macs


def graph_flops(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, object]:
    """{"flops": float, "counter": "onnx-tool" | "matmul-count (...)"} for one graph at these input shapes."""
    return _graph_flops(Path(path), tuple(sorted((k, tuple(v)) for k, v in shapes.items())))


@cache
def _graph_flops(path: Path, shapes_key: tuple) -> dict[str, object]:
    shapes = dict(shapes_key)
    try:
        from trml_edge.errors import require

        require("onnx_tool", "profile")
        return {"flops": 2.0 * _onnx_tool_macs(path, _zeros(path, shapes)), "counter": "onnx-tool"}
    except Exception as e:  # onnx-tool raises bare Exceptions/AssertionErrors on graphs it cannot read
        reason = f"{type(e).__name__}: {str(e)[:120]}"
        log.debug("onnx-tool failed on %s (%s); counting MatMul/Gemm/Conv", path, reason)
    try:
        return {"flops": 2.0 * _matmul_macs(path, shapes), "counter": f"matmul-count (onnx-tool failed: {reason})"}
    except ValueError as e:  # a shape ONNX's inference cannot resolve: no count, and the report says why
        log.warning("no FLOPs count for %s: onnx-tool failed (%s) and the MatMul count too (%s)", path.name, reason, e)
        return {"flops": float("nan"), "counter": f"none (onnx-tool failed: {reason}; matmul-count failed: {e})"}


def matmul_peak(threads: int = 0, n: int = 1024, min_time: float = 1.0) -> dict[str, float]:
    """The CPU's achievable FP32 matmul rate: ONNX Runtime running one n x n x n MatMul with the profile's
    thread count, best of the runs in ``min_time`` seconds (GFLOP/s = 2 n^3 / time)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
    w = helper.make_tensor("w", TensorProto.FLOAT, [n, n],
                           np.random.default_rng(0).standard_normal((n, n)).astype(np.float32).tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "peak", [a], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    sess.run(None, {"a": x})
    best, spent, runs = float("inf"), 0.0, 0
    while spent < min_time or runs < 3:
        t0 = time.perf_counter()
        sess.run(None, {"a": x})
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return {"gflops": 2.0 * n ** 3 / best / 1e9, "n": n, "runs": runs, "onnx_version": onnx.__version__}
