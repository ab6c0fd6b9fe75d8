"""CPU targets: ORT's transformer optimizer per graph, the ORT level per graph, and TensorRT bundles kept standard."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest

from export_fixtures import ROOT, bundle, calibration_set, synth_data, trained_run, workdir
from trml_edge.errors import ConfigError
from trml_edge.graphs import GRAPH_NAMES, model_dims
from trml_edge.runtime.bundle import Bundle, load_bundle

ORT_LEVEL = {"basic": 1, "extended": 2, "all": 99}  # ort.GraphOptimizationLevel values


@cache
def recipe_bundle(recipe: str, data: bool = True, fused: bool = False) -> Path:
    """The trained run exported with a shipped recipe (with ``data``: the test split's end-to-end gate too;
    with ``fused``: ORT's transformer optimizer switched on, as ``ort_optimize = true`` in the recipe does)."""
    from trml_edge.export.exporter import export_bundle
    from trml_edge.export.recipe import ExportConfig, apply_recipe

    cfg = apply_recipe(ExportConfig(run=str(trained_run()), out=str(workdir() / f"recipe_{recipe}_{data}_{fused}")),
                       ROOT / "export" / f"{recipe}.toml")
    cfg.calibration = str(calibration_set())  # the tiny model's own calibration set
    cfg.data = str(synth_data()) if data else None
    cfg.ort_optimize = cfg.ort_optimize or fused
    export_bundle(cfg)
    return Path(cfg.out)


def _dims() -> dict:
    return model_dims(json.loads((trained_run() / "trml_config.json").read_text()))


def test_tensorrt_bundle_keeps_standard_onnx_ops_and_passes_the_lint():
    from trml_edge.export.tensorrt import TRT_SUPPORTED_OPS, lint_tensorrt

    b = load_bundle(recipe_bundle("jetson-orin-int8", data=False))  # tensorrt preset INT8 encoders, FP16 rest
    assert b.manifest["target"] == "tensorrt" and b.manifest["ort_optimize"] is False
    for name, entry in b.graphs.items():
        model = onnx.load(str(b.path(name)))
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, name  # no com.microsoft op
        assert {n.op_type for n in model.graph.node} <= TRT_SUPPORTED_OPS, name
        assert entry["ort"]["transformer_optimizer"] is None
        assert lint_tensorrt(b.path(name), name, _dims()) == []
    assert [s["status"] for s in b.manifest["steps"] if s["name"] == "tensorrt: lint"] == ["OK"]
    assert not any(s["name"].endswith("ort-optimize") for s in b.manifest["steps"])


def test_ort_optimize_is_refused_where_tensorrt_must_read_the_graphs(tmp_path):
    from trml_edge.export.recipe import ExportConfig, apply_recipe

    with pytest.raises(ConfigError, match="Runtime-only.*target"):
        ExportConfig(run="r", out="o", target="tensorrt", int8_preset="tensorrt", ort_optimize=True).validate()
    with pytest.raises(ConfigError, match="check-tensorrt"):
        ExportConfig(run="r", out="o", ort_optimize=True, check_tensorrt=True).validate()
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ntarget = "tensorrt"\nort_optimize = true\n')
    with pytest.raises(ConfigError, match="TensorRT cannot parse"):
        apply_recipe(ExportConfig(run="r", out="o"), bad).validate()
    bad.write_text('name = "x"\nort_optimize = "yes"\n')
    with pytest.raises(ConfigError, match="true or false"):
        apply_recipe(ExportConfig(run="r", out="o"), bad)
    bad.write_text('name = "x"\n[cpu]\noptimize = true\n')  # unknown keys stay errors
    with pytest.raises(ConfigError, match="unknown keys"):
        apply_recipe(ExportConfig(run="r", out="o"), bad)
    for recipe in ("cpu-int8", "cpu-fp32"):
        cfg = apply_recipe(ExportConfig(run="r", out="o"), ROOT / "export" / f"{recipe}.toml")
        cfg.validate()
        assert cfg.target == "cpu"
        cfg.ort_optimize = True
        cfg.validate()  # allowed for CPU targets
    for recipe in ("gpu-fp16", "jetson-orin-int8"):
        assert not apply_recipe(ExportConfig(run="r", out="o"), ROOT / "export" / f"{recipe}.toml").ort_optimize


def test_fused_cpu_int8_bundle_records_the_fusions_and_quantizes_every_weight_op():
    from trml_edge.export.precision import Int8Preset, float_weight_ops
    from trml_edge.export.tensorrt import lint_tensorrt

    b = load_bundle(recipe_bundle("cpu-int8", data=False, fused=True))
    m = b.manifest
    assert m["ort_optimize"] is True and m["recipe"] == "cpu-int8"
    steps = {s["name"]: s for s in m["steps"]}
    for name in GRAPH_NAMES:
        assert steps[f"{name}: ort-optimize"]["status"] == "OK"
        opt = m["graphs"][name]["ort"]["transformer_optimizer"]
        assert opt["model_type"] == "clip" and opt["nodes_after"] <= opt["nodes_before"]
        model = onnx.load(str(b.path(name)))
        in_file = {f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")}
        assert in_file == set(opt["ort_only_ops"])  # what the manifest says is what the file holds
        assert m["parity"]["graphs"][name]["ok"]
    text = m["graphs"]["text_encoder"]["ort"]["transformer_optimizer"]
    assert text["fused"]["SkipLayerNormalization"] > 0 and text["fused"]["BiasGelu"] > 0
    assert "com.microsoft::SkipLayerNormalization" in text["ort_only_ops"]
    # the fused ops survive INT8 quantization (still in float) and the MatMuls are quantized
    ops = {n.op_type for n in onnx.load(str(b.path("text_encoder"))).graph.node}
    assert {"SkipLayerNormalization", "QuantizeLinear", "DequantizeLinear"} <= ops
    for name in ("image_encoder", "text_encoder"):  # every weight MatMul/Gemm/Conv runs in INT8, fused or not
        assert float_weight_ops(b.path(name), Int8Preset.named("cpu").op_types) == []
        assert m["graphs"][name]["precision"] == "int8"
    # ... and such a graph is exactly what the TensorRT lint must refuse
    assert any("com.microsoft::" in p for p in lint_tensorrt(b.path("text_encoder")))


def test_fused_cpu_fp32_pipeline_matches_pytorch_end_to_end():
    b = load_bundle(recipe_bundle("cpu-fp32", fused=True))
    m = b.manifest
    assert m["ort_optimize"] and set(m["graphs"]["text_encoder"]["ort"]["transformer_optimizer"]["fused"]) >= \
        {"SkipLayerNormalization", "BiasGelu"}
    rows = m["parity"]["end_to_end"]
    assert [r["scenario"] for r in rows] == ["complete", "visual_missing", "text_missing"]
    for r in rows:  # fused FP32 is the same math: the predictions agree to float rounding
        assert r["ok"] and r["pred_max_abs"] < 1e-3 and r["decision_agreement"] == 1.0


def test_int8_after_fusion_refuses_a_graph_whose_matmuls_would_stay_in_float(tmp_path):
    from trml_edge.errors import ExportError
    from trml_edge.export.calibration import load_calibration
    from trml_edge.export.ort_optimize import ort_optimize
    from trml_edge.export.precision import Int8Preset, to_int8

    src = load_bundle(bundle("fp32")).path("text_encoder")
    fused = tmp_path / "fused.onnx"
    ort_optimize(src, fused)
    model = onnx.load(str(fused))
    del model.graph.value_info[:]  # what the optimizer alone leaves: fused outputs of unknown type
    onnx.save(model, str(tmp_path / "untyped.onnx"))
    _, calib = load_calibration(calibration_set(), _dims())
    with pytest.raises(ExportError, match="float activation"):
        to_int8(tmp_path / "untyped.onnx", tmp_path / "q.onnx", Int8Preset.named("cpu"), calib["text_encoder"])
    to_int8(fused, tmp_path / "ok.onnx", Int8Preset.named("cpu"), calib["text_encoder"])  # typed: all quantized


def test_each_graph_runs_at_its_recorded_ort_level_and_fp16_conv_stays_extended():
    from trml_edge.runtime.pipeline import Pipeline

    fp16 = load_bundle(bundle("fp16"))
    ie = fp16.graphs["image_encoder"]["ort"]
    assert ie["graph_optimization_level"] == "extended" and "Conv" in ie["level_reason"]  # known ORT 1.32 crash
    assert fp16.graphs["text_encoder"]["ort"]["graph_optimization_level"] == "all"  # FP16 without a Conv: fine
    assert fp16.manifest["parity"]["graphs"]["image_encoder"]["graph_optimization_level"] == "extended"
    b = load_bundle(recipe_bundle("cpu-int8", data=False, fused=True))
    assert {e["ort"]["graph_optimization_level"] for e in b.graphs.values()} == {"all"}
    pipe = Pipeline(b)
    rng = np.random.default_rng(0)
    size = int(b.preprocess["image_size"])
    pred = pipe.predict(rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8), "a fine film")
    assert "image_encoder" in pred.graphs
    for name in pred.graphs:  # the sessions that ran use the level the parity gate checked
        opts = b.session(name).get_session_options()
        assert int(opts.graph_optimization_level) == ORT_LEVEL[b.graphs[name]["ort"]["graph_optimization_level"]]
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"  # idle pools sleep
    legacy = json.loads(json.dumps(b.manifest))
    for e in legacy["graphs"].values():
        del e["ort"]  # a bundle written before the level was recorded ran under "extended"
    assert Bundle(b.root, legacy).ort_level("text_encoder") == "extended"


def test_int8_preset_can_keep_attention_matmuls_in_float(tmp_path):
    from dataclasses import replace

    from trml_edge.export.calibration import load_calibration
    from trml_edge.export.precision import Int8Preset, activation_matmuls, to_int8

    src = load_bundle(bundle("fp32")).path("text_encoder")
    _, calib = load_calibration(calibration_set(), _dims())
    attn = activation_matmuls(src)
    assert len(attn) == 2 * 3  # Q.K^T and softmax.V in each of the tiny text tower's 3 blocks

    def quantized_matmuls(path: Path) -> set[str]:
        g = onnx.load(str(path)).graph
        dq = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
        return {n.name for n in g.node if n.op_type == "MatMul" and all(i in dq for i in n.input[:2])}

    cpu = Int8Preset.named("cpu")
    with_attn = quantized_matmuls(to_int8(src, tmp_path / "a.onnx", cpu, calib["text_encoder"]))
    without = quantized_matmuls(to_int8(src, tmp_path / "b.onnx", replace(cpu, quantize_attention=False),
                                        calib["text_encoder"]))
    assert set(attn) <= with_attn and not set(attn) & without
    assert with_attn - set(attn) == without  # the weight MatMuls are quantized either way
