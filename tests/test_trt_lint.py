"""The CPU TensorRT lint: one small graph per refusal (built here with onnx.helper), and the exported graphs of
every shipped TensorRT recipe pass it.

The expected refusals come from onnx-tensorrt release/10.1-GA (docs/operators.md and the Q/DQ importer), not
from this code: AffineGrid, Unique... are marked "N" there, a UINT8 Q zero point is rejected by its type
check, and "TensorRT only supports symmetric quantization".
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trml_edge.export.trt_lint import TRT_SUPPORTED_OPS, graph_precision, lint_tensorrt

ROOT = Path(__file__).resolve().parents[1]
# the twelve operators the old allow-list trusted that onnx-tensorrt 10.x marks unsupported (issue 17)
REJECTED_IN_10X = ("AffineGrid", "BitShift", "BlackmanWindow", "Compress", "ConcatFromSequence",
                   "DynamicQuantizeLinear", "HammingWindow", "HannWindow", "MaxRoiPool", "Multinomial", "STFT",
                   "Unique")


def _save(tmp_path, nodes, inputs, outputs, inits=(), opset=17, name="g.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def _f(name, shape=("batch", 4)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _qdq(tmp_path, zp_array, name="q.onnx", with_zp=True):
    """x -> Q -> DQ -> MatMul(w): the pattern ORT's quantizer writes."""
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "scale")
    inits = [w, scale]
    ins = ["x", "scale"]
    if with_zp:
        inits.append(numpy_helper.from_array(zp_array, "zp"))
        ins.append("zp")
    nodes = [helper.make_node("QuantizeLinear", ins, ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq"] + ins[1:], ["xd"], name="dq_x"),
             helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm")]
    return _save(tmp_path, nodes, [_f("x")], [_f("y", ("batch", 3))], inits, name=name)


def test_op_table_is_onnx_tensorrt_10_1():
    assert len(TRT_SUPPORTED_OPS) == 150  # rows marked "Y" in release/10.1-GA docs/operators.md
    assert not set(REJECTED_IN_10X) & TRT_SUPPORTED_OPS
    assert {"LayerNormalization", "Gelu", "QuantizeLinear", "DequantizeLinear", "If", "Loop", "Scan"} <= \
        TRT_SUPPORTED_OPS


@pytest.mark.parametrize("op", ["Unique", "DynamicQuantizeLinear"])
def test_refuses_an_operator_the_parser_marks_unsupported(tmp_path, op):
    outs = ["y"] if op == "Unique" else ["y", "s", "z"]
    path = _save(tmp_path, [helper.make_node(op, ["x"], outs, name="the_node")], [_f("x")], [_f("y")])
    problems = lint_tensorrt(path)
    assert len(problems) == 1
    assert "the_node" in problems[0] and op in problems[0] and "not supported" in problems[0]


def test_refuses_an_unsupported_operator_inside_an_if_branch(tmp_path):
    then = helper.make_graph([helper.make_node("Compress", ["x", "c"], ["t"], name="inner_compress")], "then",
                             [], [_f("t")])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="inner_id")], "else", [], [_f("e")])
    cond = numpy_helper.from_array(np.array(True), "cond")
    keep = numpy_helper.from_array(np.array([True, False, True, True]), "c")
    node = helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=other)
    problems = lint_tensorrt(_save(tmp_path, [node], [_f("x")], [_f("y")], [cond, keep]))
    assert len(problems) == 1
    assert "inner_compress" in problems[0] and "branch" in problems[0] and "then_branch" in problems[0]


def test_refuses_a_uint8_qdq_pair_inside_a_loop_body(tmp_path):
    """Zero point 0, so the old value check passed it; TensorRT refuses UINT8 quantization."""
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(0, np.uint8), "zp")
    body = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["v_in", "s", "zp"], ["vq"], name="body_q"),
         helper.make_node("DequantizeLinear", ["vq", "s", "zp"], ["v_out"], name="body_dq"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond")],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), _f("v_in")],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _f("v_out")], initializer=[scale, zp])
    trip = numpy_helper.from_array(np.array(2, np.int64), "trip")
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("Loop", ["trip", "cond", "x"], ["y"], name="the_loop", body=body)
    problems = lint_tensorrt(_save(tmp_path, [node], [_f("x")], [_f("y")], [trip, cond]))
    assert any("body_q" in p and "UINT8" in p and "the_loop" in p for p in problems), problems
    assert any("body_dq" in p and "UINT8" in p for p in problems), problems
    assert all("'tensorrt' INT8 preset" in p for p in problems)


def test_refuses_a_uint8_zero_point_of_zero(tmp_path):
    problems = lint_tensorrt(_qdq(tmp_path, np.array(0, np.uint8)))
    assert any("q_x" in p and "UINT8" in p for p in problems), problems


def test_refuses_a_non_zero_int8_zero_point(tmp_path):
    problems = lint_tensorrt(_qdq(tmp_path, np.array(3, np.int8)))
    assert len(problems) == 2 and all("asymmetric" in p for p in problems)  # the Q and the DQ
    assert "q_x" in problems[0] and "dq_x" in problems[1]


def test_refuses_a_quantize_without_zero_point(tmp_path):
    """ONNX's default is UINT8 (what ORT ran in the parity gate); TensorRT would quantize to INT8 instead."""
    problems = lint_tensorrt(_qdq(tmp_path, None, with_zp=False))
    assert len(problems) == 1 and "q_x" in problems[0] and "no zero point" in problems[0]


def test_refuses_a_non_positive_scale(tmp_path):
    path = _qdq(tmp_path, np.array(0, np.int8))
    model = onnx.load(str(path))
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array(0.0, np.float32), "scale"))
    onnx.save(model, str(path))
    assert any("scale" in p and "positive" in p for p in lint_tensorrt(path))


def test_accepts_a_symmetric_int8_pair(tmp_path):
    assert lint_tensorrt(_qdq(tmp_path, np.array(0, np.int8))) == []


def test_refuses_a_custom_domain_operator(tmp_path):
    node = helper.make_node("FusedGemm", ["x", "x"], ["y"], name="ort_fused", domain="com.microsoft")
    problems = lint_tensorrt(_save(tmp_path, [node], [_f("x")], [_f("y")]))
    assert len(problems) == 1 and "com.microsoft::FusedGemm" in problems[0] and "ort_fused" in problems[0]


def test_refuses_an_opset_newer_than_the_parser(tmp_path):
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="r")], [_f("x")], [_f("y")], opset=21)
    problems = lint_tensorrt(path)
    assert len(problems) == 1 and "opset 21" in problems[0] and "--opset 17" in problems[0]


def test_graph_precision_reads_the_types(tmp_path):
    assert graph_precision(_qdq(tmp_path, np.array(0, np.int8))) == "int8"
    relu = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    assert graph_precision(_save(tmp_path, relu, [_f("x")], [_f("y")], name="f32.onnx")) == "fp32"
    half = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16, name="c"),
            helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT, name="c2")]
    assert graph_precision(_save(tmp_path, half, [_f("x")], [_f("y")], name="f16.onnx")) == "fp16"


def _tensorrt_recipes() -> list[Path]:
    return sorted(p for p in (ROOT / "export").glob("*.toml")
                  if tomllib.loads(p.read_text(encoding="utf-8")).get("target") == "tensorrt")


def test_there_are_tensorrt_recipes():
    assert {p.stem for p in _tensorrt_recipes()} >= {"gpu-fp16", "jetson-orin-int8"}


@pytest.mark.parametrize("recipe", _tensorrt_recipes(), ids=lambda p: p.stem)
def test_every_tensorrt_recipe_exports_graphs_that_pass_the_lint(recipe):
    from export_fixtures import calibration_set, trained_run, workdir
    from trml_edge.export.exporter import export_bundle
    from trml_edge.export.recipe import ExportConfig, apply_recipe
    from trml_edge.runtime.bundle import load_bundle

    cfg = apply_recipe(ExportConfig(run=str(trained_run()), out=str(workdir() / f"recipe_{recipe.stem}")), recipe)
    if "int8" in cfg.precision.values():
        cfg.calibration = str(calibration_set())  # the recipe's default set is for the demo model's dims
    export_bundle(cfg)
    b = load_bundle(cfg.out)
    assert b.manifest["target"] == "tensorrt"
    for graph in b.graphs:
        assert lint_tensorrt(b.path(graph), graph, b.manifest["model"]["dims"]) == [], graph
        assert graph_precision(b.path(graph)) == b.graphs[graph]["precision"], graph
    assert [s for s in b.manifest["steps"] if s["name"] == "tensorrt: lint"][0]["status"] == "OK"
