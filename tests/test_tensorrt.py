"""TensorRT: the CPU lint (always), engine building (on a GPU with TensorRT only)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export_fixtures import bundle
from trml_edge.errors import ExportError, MissingDependencyError
from trml_edge.export.tensorrt import engine_name, lint_tensorrt
from trml_edge.runtime.bundle import load_bundle


def test_lint_passes_on_tensorrt_preset_bundle():
    b = load_bundle(bundle("int8-trt"))
    dims = b.manifest["model"]["dims"]
    for graph in b.graphs:
        assert lint_tensorrt(b.path(graph), graph, dims) == [], graph
    step = [s for s in b.manifest["steps"] if s["name"] == "tensorrt: lint"][0]
    assert step["status"] == "OK"
    image = onnx.load(str(b.path("image_encoder")))
    assert any(n.op_type == "QuantizeLinear" for n in image.graph.node)


def test_lint_flags_the_cpu_preset():
    b = load_bundle(bundle("int8-cpu"))
    problems = lint_tensorrt(b.path("image_encoder"), "image_encoder", b.manifest["model"]["dims"])
    assert any("zero-point" in p for p in problems)


def _asymmetric_qdq(path, zero_point: int):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "scale")
    zp = numpy_helper.from_array(np.array(zero_point, np.int8), "zp")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "scale", "zp"], ["xd"], name="dq"),
        helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
                              initializer=[w, scale, zp])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_lint_fails_on_hand_made_asymmetric_qdq(tmp_path):
    _asymmetric_qdq(tmp_path / "asym.onnx", 3)
    problems = lint_tensorrt(tmp_path / "asym.onnx")
    assert len([p for p in problems if "zero-point" in p]) == 2  # the Q and the DQ
    _asymmetric_qdq(tmp_path / "sym.onnx", 0)
    assert lint_tensorrt(tmp_path / "sym.onnx") == []


def test_lint_flags_unsupported_ops_and_undeclared_dynamic_axes(tmp_path):
    nodes = [helper.make_node("Det", ["x"], ["y"], name="det")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", "weird"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    graph.node[0].input[0] = "t"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "bad.onnx"))
    problems = lint_tensorrt(tmp_path / "bad.onnx", "gen_text_to_visual")
    assert any("Det" in p for p in problems)
    assert any("axis 1" in p and "no profile" in p for p in problems)


def test_engine_name_shows_architecture_and_version():
    assert engine_name("image_encoder", "sm87", "10.3.0.26") == "image_encoder.sm87.trt10.3.plan"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_engines_without_tensorrt_fails_clearly_and_writes_no_engine():
    from typer.testing import CliRunner

    import trml_edge.cli.export_cmds  # noqa: F401
    from trml_edge.cli import app

    path = bundle("int8-trt")
    res = CliRunner().invoke(app, ["build-engines", str(path)])
    assert res.exit_code != 0
    assert isinstance(res.exception, (MissingDependencyError, ExportError))
    assert "trml-edge[trt]" in str(res.exception)
    assert not list(path.glob("engines/*.plan"))
    assert json.loads((path / "manifest.json").read_text())["engines"] == {}


@pytest.mark.gpu
@pytest.mark.trt
def test_build_engines_on_gpu_matches_onnxruntime(tmp_path):
    import shutil

    import tensorrt as trt
    import torch

    from trml_edge.export.tensorrt import build_engines

    path = tmp_path / "b"
    shutil.copytree(bundle("int8-trt"), path)
    engines = build_engines(path)
    assert set(engines) == set(load_bundle(path).graphs)
    b = load_bundle(path)
    for graph, entry in engines.items():
        plan = path / entry["file"]
        assert plan.is_file() and entry["tensorrt"] == trt.__version__ and entry["compute_capability"] in plan.name
    assert (path / engines["image_encoder"]["timing_cache"]).is_file()
    # run the image encoder engine and compare with ORT on the same pixels
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine((path / engines["image_encoder"]["file"]).read_bytes())
    ctx = engine.create_execution_context()
    pixels = np.random.default_rng(0).standard_normal((4, 3, 48, 48)).astype(np.float32)
    x = torch.from_numpy(pixels).cuda()
    y = torch.empty((4, b.manifest["model"]["dims"]["embed"]), device="cuda")
    ctx.set_input_shape("pixels", tuple(x.shape))
    ctx.set_tensor_address("pixels", x.data_ptr())
    ctx.set_tensor_address("frame_emb", y.data_ptr())
    stream = torch.cuda.current_stream()
    assert ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    ref = b.session("image_encoder").run(None, {"pixels": pixels})[0]
    cos = (y.cpu().numpy() * ref).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(y.cpu().numpy(), axis=-1)
    assert cos.min() > 0.98
