"""TensorRT: the CPU lint (always), engine building (on a GPU with TensorRT only)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export_fixtures import ROOT, bundle
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
    assert any("UINT8" in p and "'tensorrt' INT8 preset" in p for p in problems)  # U8 activations


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
    assert len([p for p in problems if "non-zero zero point" in p]) == 2  # the Q and the DQ
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
    assert "trml-edge[trt-cu1" in str(res.exception)  # the extra for this driver, or both with the drivers they need
    assert not list(path.glob("engines/*.plan"))
    assert json.loads((path / "manifest.json").read_text())["engines"] == {}


def test_build_engines_lints_before_it_needs_tensorrt():
    """The CPU preset's asymmetric UINT8 activations fail on the exporting machine, naming the node and the fix."""
    from trml_edge.export.tensorrt import build_engines

    with pytest.raises(ExportError, match="cannot be built by TensorRT.*'tensorrt' INT8 preset"):
        build_engines(bundle("int8-cpu"))


def test_supported_range_is_the_pyproject_pin():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    from trml_edge.tensorrt_env import EXTRAS, TRT_RANGE, tensorrt_version_problem

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for major, name in EXTRAS.items():
        pinned = {r.name: r.specifier for r in map(Requirement, extras[name])}
        assert pinned[f"tensorrt-cu{major}"] == SpecifierSet(TRT_RANGE), name
    for ok in ("10.1.0", "10.3.0.30", "10.13.2", "11.0.0", "11.4.1.7"):
        assert tensorrt_version_problem(ok) is None, ok
    for bad in ("8.6.1", "10.0.1.6", "12.0.0"):
        assert "outside the supported range (10.1 to 11.x)" in tensorrt_version_problem(bad), bad


def _cuda12_box_with_a_cuda13_tensorrt(tmp_path, monkeypatch):
    from trt_fakes import fake_dists, fake_nvidia_smi, not_a_jetson

    not_a_jetson(tmp_path, monkeypatch)
    fake_nvidia_smi(tmp_path, monkeypatch, driver="550.54.15")
    fake_dists(tmp_path, monkeypatch, {"tensorrt-cu13": "11.4.0.106"})


def test_a_cuda_failure_creating_the_builder_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    """TensorRT logs "CUDA initialization failure with error: 35" and its binding raises TypeError from
    trt.Builder: build-engines says why (the CUDA builds against the driver) and what to install."""
    from trml_edge.export.tensorrt import build_engine
    from trt_fakes import FakeTensorRT

    _cuda12_box_with_a_cuda13_tensorrt(tmp_path, monkeypatch)
    b = load_bundle(bundle("fp32"))
    entry = b.graphs["fusion_head"]
    plan, cache = tmp_path / "fusion_head.plan", tmp_path / "timing.cache"
    with pytest.raises(ExportError) as e:
        build_engine(FakeTensorRT(), b.path("fusion_head"), plan, "fusion_head", entry["precision"],
                     {k: tuple(map(tuple, v)) for k, v in entry["profile"].items()}, 64, cache)
    msg = str(e.value)
    assert "TensorRT could not create its Builder (pybind11::init(): factory function returned nullptr)" in msg
    assert "tensorrt-cu13 11.4.0.106 (CUDA 13)" in msg and "driver 550.54.15 (CUDA 12)" in msg
    assert msg.endswith("pip install 'trml-edge[trt-cu12]' (this driver, 550.54.15, runs CUDA 12)")
    assert not plan.exists() and not cache.exists()


def test_a_cuda_failure_creating_the_runtime_is_one_line_and_one_logger_serves_both(tmp_path, monkeypatch):
    """The engine runner's trt.Runtime fails the same way; and the Builder and the Runtime get the same logger
    (TensorRT keeps one and warns on every parity run when handed a second)."""
    import trml_edge.export.trt_runner as runner
    from trml_edge.export.tensorrt import build_engine
    from trt_fakes import FakeTensorRT, fake_cuda

    _cuda12_box_with_a_cuda13_tensorrt(tmp_path, monkeypatch)
    monkeypatch.setattr(runner, "_cuda", lambda: fake_cuda())
    trt = FakeTensorRT()
    with pytest.raises(ExportError, match=r"could not create its Runtime .*trml-edge\[trt-cu12\]"):
        runner.EngineRunner(trt, tmp_path / "any.plan")
    b = load_bundle(bundle("fp32"))
    with pytest.raises(ExportError, match="could not create its Builder"):
        build_engine(trt, b.path("fusion_head"), tmp_path / "p.plan", "fusion_head", "fp32", {}, 64, tmp_path / "c")
    assert len(trt.loggers) == 2 and trt.loggers[0] is trt.loggers[1] and trt.Logger.made == 1
    assert trt.loggers[0].severity == trt.Logger.WARNING


def test_network_is_strongly_typed_on_10x_and_11x():
    """STRONGLY_TYPED is bit 0 of NetworkDefinitionCreationFlag in 10.x (its Python API docs); 11.x keeps it as
    an ignored, deprecated member, and a later 11.x may drop it (every network is strongly typed there)."""
    from types import SimpleNamespace

    from trml_edge.export.tensorrt import network_flags

    ten = SimpleNamespace(__version__="10.3.0", NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=0))
    assert network_flags(ten) == 1
    eleven = SimpleNamespace(__version__="11.4.0", NetworkDefinitionCreationFlag=SimpleNamespace())
    assert network_flags(eleven) == 0
    with pytest.raises(ExportError, match="strongly typed"):
        network_flags(SimpleNamespace(__version__="10.3.0", NetworkDefinitionCreationFlag=SimpleNamespace()))


def test_engine_parity_inputs_follow_the_manifest():
    """The target parity gate feeds each graph at its profile's 'opt' shape, tokens from the bundle's tokenizer."""
    from trml_edge.export.tensorrt import sample_feeds

    b = load_bundle(bundle("fp16"))
    for graph, entry in b.graphs.items():
        feeds = sample_feeds(b, graph)
        ref = b.session(graph).run(None, feeds)[0]  # ORT accepts them: right names, dtypes and ranks
        assert np.isfinite(ref).all(), graph
        for t in entry["inputs"]:
            assert feeds[t["name"]].dtype == np.dtype(t["dtype"]), (graph, t["name"])
            if t["name"] != "tokens":  # tokens are trimmed to their longest EOT, as the runtime does
                assert list(feeds[t["name"]].shape) == entry["profile"][t["name"]][1], (graph, t["name"])
    tokens = sample_feeds(b, "text_encoder")["tokens"]
    assert (tokens[:, 0] == b.manifest["tokenizer"]["sot_id"]).all()
    assert (tokens == b.manifest["tokenizer"]["eot_id"]).sum(axis=1).tolist() == [1] * len(tokens)


def _build_and_check(tmp_path, kind: str, precision: str, tf32: bool = True):
    import shutil

    import tensorrt as trt

    from trml_edge.export.tensorrt import build_engines

    path = tmp_path / kind
    shutil.copytree(bundle(kind), path)
    engines = build_engines(path, tf32=tf32)
    b = load_bundle(path)
    assert set(engines) == set(b.graphs)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["engines"] == json.loads(json.dumps(engines))
    for graph, entry in engines.items():
        plan = path / entry["file"]
        assert plan.is_file() and entry["tensorrt"] == trt.__version__ and entry["compute_capability"] in plan.name
        assert entry["gpu"]["name"] and entry["gpu"]["compute_capability"]
        assert entry["build_flags"]["strongly_typed"] and entry["build_flags"]["precision_flags"] == []
        assert entry["build_flags"]["tf32"] is tf32
        assert entry["parity"]["ok"], (graph, entry["parity"])
        assert entry["precision"] == b.graphs[graph]["precision"]
    assert {e["precision"] for e in engines.values()} >= {precision}
    assert (path / engines["image_encoder"]["timing_cache"]).is_file()
    return path, engines


def _engine_vs_ort(path, graph: str, budget_cos: float):
    """The engine, run by our own runner on fresh inputs, against ONNX Runtime on the same graph."""
    import tensorrt as trt

    from trml_edge.export.tensorrt import sample_feeds
    from trml_edge.export.trt_runner import EngineRunner
    from trml_edge.metrics import output_error

    b = load_bundle(path)
    feeds = sample_feeds(b, graph, seed=7)
    with EngineRunner(trt, path / b.manifest["engines"][graph]["file"]) as runner:
        got = runner.run(feeds)[b.graphs[graph]["outputs"][0]["name"]]
    res = output_error(b.session(graph).run(None, feeds)[0], got)
    assert res["min_cos"] >= budget_cos, (graph, res)


@pytest.mark.gpu
@pytest.mark.trt
def test_fp16_engines_build_strongly_typed_and_match_onnxruntime(tmp_path):
    """The FP16 path that broke on TensorRT 11 (BuilderFlag.FP16 is gone): strongly typed from the FP16 ONNX."""
    path, engines = _build_and_check(tmp_path, "fp16", "fp16")
    assert {e["precision"] for e in engines.values()} == {"fp16"}
    for graph in engines:
        _engine_vs_ort(path, graph, 0.999)


@pytest.mark.gpu
@pytest.mark.trt
def test_int8_qdq_engines_build_strongly_typed_and_match_onnxruntime(tmp_path):
    path, engines = _build_and_check(tmp_path, "int8-trt", "int8")
    _engine_vs_ort(path, "image_encoder", 0.98)


@pytest.mark.gpu
@pytest.mark.trt
def test_fp32_engines_without_tf32_stay_within_the_fp32_budget(tmp_path):
    path, engines = _build_and_check(tmp_path, "fp32", "fp32", tf32=False)
    for graph in engines:
        _engine_vs_ort(path, graph, 0.99999)
