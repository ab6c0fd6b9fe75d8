"""The FLOPs counter of `trml-edge profile`: when onnx-tool is not there and ONNX's shape inference cannot give
a MatMul its shapes, the graph gets no count (NaN, null in report.json) and the reasons, not a crash."""

from __future__ import annotations

import math
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _graph_with_runtime_reshape(path):
    """x [N, 6] reshaped by a runtime shape input, then a MatMul: its input shape is unknown until run time."""
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "w")
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"]), helper.make_node("MatMul", ["y", "w"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6]),
                                           helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _plain_matmul(path):
    w = numpy_helper.from_array(np.ones((6, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["out"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_no_counter_can_count_the_graph_says_why_instead_of_crashing(tmp_path, monkeypatch):
    from trml_edge.profile.flops import graph_flops

    monkeypatch.setitem(sys.modules, "onnx_tool", None)  # the profile extra is not installed
    res = graph_flops(_graph_with_runtime_reshape(tmp_path / "dyn.onnx"), {"x": (2, 6), "s": (2,)})
    assert math.isnan(res["flops"])
    assert res["counter"].startswith("none") and "pip install 'trml-edge[profile]'" in res["counter"]
    assert "no static shape for MatMul" in res["counter"]


def test_matmul_count_still_counts_what_it_can(tmp_path, monkeypatch):
    from trml_edge.profile.flops import graph_flops

    monkeypatch.setitem(sys.modules, "onnx_tool", None)
    res = graph_flops(_plain_matmul(tmp_path / "mm.onnx"), {"x": (5, 6)})
    assert res["flops"] == 2 * 5 * 6 * 4 and res["counter"].startswith("matmul-count")
