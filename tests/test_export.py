"""Export bundles: per-graph parity, manifest integrity, text trimming, budgets, atomicity, calibration."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from export_fixtures import ROOT, bundle, calibration_set, random_run, synth_data, trained_run, workdir  # noqa: F401 (fixtures)
from trml_edge.errors import BundleError, ConfigError, DataError, ParityError
from trml_edge.graphs import GRAPH_NAMES, GRAPHS, model_dims
from trml_edge.runtime.bundle import load_bundle, sha256_file


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8-trt"])
def test_bundle_manifest_hashes_specs_and_parity(kind):
    b = load_bundle(bundle(kind))  # verifies every sha256
    m = b.manifest
    cfg = json.loads((trained_run() / "trml_config.json").read_text())
    dims = model_dims(cfg)
    assert set(m["graphs"]) == set(GRAPH_NAMES)
    for name, entry in m["graphs"].items():
        path = b.root / entry["file"]
        assert entry["sha256"] == sha256_file(path)
        spec = GRAPHS[name]
        assert entry["inputs"] == spec.to_dict(dims)["inputs"] and entry["outputs"] == spec.to_dict(dims)["outputs"]
        model = onnx.load(str(path))
        assert [i.name for i in model.graph.input] == [t.name for t in spec.inputs]
        assert all(i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for i in model.graph.input)
        ops = {n.op_type for n in model.graph.node}
        inits = {i.data_type for i in model.graph.initializer}
        if entry["precision"] == "int8":
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        if entry["precision"] == "fp16":
            assert onnx.TensorProto.FLOAT16 in inits
        par = m["parity"]["graphs"][name]
        assert par["ok"] and par["max_abs"] <= par["budget"]["max_abs"] and par["min_cos"] >= par["budget"]["min_cos"]
    assert {m["graphs"][g]["precision"] for g in ("image_encoder", "text_encoder")} == \
           {"fp32": {"fp32"}, "fp16": {"fp16"}, "int8-trt": {"int8"}}[kind]
    assert set(m["versions"]) >= {"torch", "onnx", "onnxruntime"} and m["opset"] == 17
    assert m["tokenizer"]["sha256"] == sha256_file(b.root / m["tokenizer"]["file"])
    assert m["preprocess"]["image_size"] == cfg["preprocess"]["image_size"]
    assert m["preprocess"]["mean"] == list(cfg["preprocess"]["mean"])
    assert (m["calibration"] is not None) == (kind == "int8-trt")
    if kind == "int8-trt":
        assert m["calibration"]["manifest_sha256"] == sha256_file(calibration_set() / "manifest.json")
    assert all(s["status"] in ("OK", "SKIPPED") for s in m["steps"])


@pytest.mark.parametrize("kind", ["fp32", "int8-trt"])
def test_end_to_end_gate_covers_every_scenario(kind):
    rows = load_bundle(bundle(kind)).manifest["parity"]["end_to_end"]
    assert [r["scenario"] for r in rows] == ["complete", "visual_missing", "text_missing"]
    for r in rows:
        assert r["ok"] and r["samples"] > 10
        assert r["onnx"]["has0_acc2"] >= r["torch"]["has0_acc2"] - r["budget"]["acc_drop"]
        assert r["onnx"]["mae"] <= r["torch"]["mae"] + r["budget"]["mae_rise"]
        # Acc-2 can differ only on the samples whose decision changed
        assert abs(r["onnx"]["has0_acc2"] - r["torch"]["has0_acc2"]) <= 1 - r["decision_agreement"] + 1e-12
        if kind == "fp32":  # same math, other kernels: predictions agree to float rounding
            assert r["pred_max_abs"] < 1e-3 and r["decision_agreement"] == 1.0


def test_tampered_or_missing_file_is_rejected(tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle("fp32"), copy)
    path = copy / "graphs" / "fusion_head.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="fusion_head.*sha256.*trml-edge export"):
        load_bundle(copy)
    path.unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not an export bundle"):
        load_bundle(tmp_path)


def test_text_trimming_is_exact_against_fixed_77():
    import torch
    import torch.nn.functional as F

    from trml_edge.model.backbone import tokenize
    from trml_edge.model.checkpoint import load_run
    from trml_edge.model.trml import text_features
    from trml_edge.routing import trim_to_eot

    model = load_run(trained_run())
    texts = ["good", "i think the acting was really not very good overall to me", "okay movie", "so the plot"]
    tokens = tokenize(texts, 77)  # (4, 77)
    with torch.no_grad():
        fixed = F.normalize(text_features(model.clip, tokens), dim=-1).numpy()  # open_clip at full length
    sess = load_bundle(bundle("fp32")).session("text_encoder")
    trimmed = trim_to_eot(tokens.numpy())
    assert trimmed.shape[1] < 20
    got_trim = sess.run(None, {"tokens": trimmed})[0]
    got_77 = sess.run(None, {"tokens": tokens.numpy()})[0]
    np.testing.assert_allclose(got_trim, fixed, atol=1e-5)
    np.testing.assert_allclose(got_77, fixed, atol=1e-5)
    for i in range(len(texts)):  # one text at a time: its own, shorter length
        one = trim_to_eot(tokens[i : i + 1].numpy())
        np.testing.assert_allclose(sess.run(None, {"tokens": one})[0][0], fixed[i], atol=1e-5)


def _leftovers(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.partial")]


def test_impossible_graph_budget_fails_loudly_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from trml_edge.cli import app
    import trml_edge.cli.export_cmds  # noqa: F401  (registers the commands)

    recipe = tmp_path / "tight.toml"
    recipe.write_text('name = "tight"\n[budgets.fp32]\nmax_abs = 1e-12\n')
    out = tmp_path / "bundle"
    res = CliRunner().invoke(app, ["export", str(random_run()), "--out", str(out), "--recipe", str(recipe)])
    assert res.exit_code != 0
    assert isinstance(res.exception, ParityError)
    assert "image_encoder: parity" in str(res.exception) and "FAIL" in res.output
    assert not out.exists() and not _leftovers(tmp_path, "bundle")


def test_impossible_end_to_end_budget_names_the_scenario(tmp_path):
    from trml_edge.export.exporter import export_bundle
    from trml_edge.export.recipe import ExportConfig, apply_recipe

    recipe = tmp_path / "tight.toml"
    recipe.write_text('name = "tight"\n[budgets.fp32]\nmae_rise = -1.0\n')  # demands 1.0 MAE better than torch
    cfg = apply_recipe(ExportConfig(run=str(trained_run()), out=str(tmp_path / "b"), data=str(synth_data())), recipe)
    with pytest.raises(ParityError, match="end-to-end.*complete.*visual_missing.*text_missing"):
        export_bundle(cfg)
    assert not (tmp_path / "b").exists() and not _leftovers(tmp_path, "b")


def test_killed_export_leaves_no_valid_looking_bundle(tmp_path):
    out = tmp_path / "bundle"
    code = ("from trml_edge.export.exporter import export_bundle; from trml_edge.export.recipe import ExportConfig; "
            f"export_bundle(ExportConfig(run={str(random_run())!r}, out={str(out)!r}))")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # kill it once it has started writing graphs
            partial = _leftovers(tmp_path, "bundle")
            if partial and any((partial[0] / "graphs").glob("*.onnx")):
                break
            if proc.poll() is not None:
                pytest.fail("the export finished before it could be interrupted")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not out.exists()
    for leftover in _leftovers(tmp_path, "bundle"):
        with pytest.raises(BundleError):
            load_bundle(leftover)


def test_calibration_set_format_and_checks(tmp_path):
    from trml_edge.data.corpus import load_split, read_corpus
    from trml_edge.export.calibration import build_calibration, load_calibration
    from trml_edge.model.checkpoint import load_run

    path = calibration_set()
    manifest = json.loads((path / "manifest.json").read_text())
    dims = model_dims(json.loads((trained_run() / "trml_config.json").read_text()))
    _, data = load_calibration(path, dims)
    for name, spec in GRAPHS.items():
        assert sha256_file(path / manifest["graphs"][name]["file"]) == manifest["graphs"][name]["sha256"]
        assert set(data[name]) == {t.name for t in spec.inputs}
        for t in spec.inputs:
            assert data[name][t.name].dtype == np.dtype(t.dtype)
    assert manifest["samples"] == 24 and len(data["text_encoder"]["tokens"]) == 24
    assert set(manifest["strata"]["scenarios"]) == {"complete", "visual_missing", "text_missing"}
    assert min(manifest["strata"]["scenarios"].values()) >= 8
    labels = np.array(manifest["strata"]["labels"])
    assert labels.min() < 0 < labels.max()  # both ends of the label range are represented

    model = load_run(trained_run())
    arrays = load_split(read_corpus(synth_data()), "train", 8, 48)
    with pytest.raises(ConfigError, match="batch size"):
        build_calibration(model, arrays, samples=4, out=tmp_path / "c", batch_size=8)
    with pytest.raises(DataError, match="other model dimensions"):
        load_calibration(path, dict(dims, embed=dims["embed"] * 2))
    f = path / manifest["graphs"]["fusion_head"]["file"]
    shutil.copytree(path, tmp_path / "copy")
    (tmp_path / "copy" / f.name).write_bytes(b"junk")
    with pytest.raises(DataError, match="sha256"):
        load_calibration(tmp_path / "copy", dims)


def test_shipped_default_calibration_set_is_small_and_loads():
    from trml_edge.config import TRMLConfig
    from trml_edge.export.calibration import load_calibration
    from trml_edge.model.backbone import image_size, resolve_arch

    path = ROOT / "calibration" / "default"
    size = sum(p.stat().st_size for p in path.iterdir())
    assert size < 2 * 1024 * 1024
    cfg = TRMLConfig()
    cfg.backbone.clip_cfg = resolve_arch(cfg.backbone.arch)
    cfg.preprocess.image_size = image_size(cfg.backbone.clip_cfg)
    manifest, data = load_calibration(path, model_dims(cfg.to_dict()))
    assert manifest["samples"] >= manifest["batch_size"]


def test_shipped_recipes_parse_and_validate():
    from trml_edge.export.recipe import ExportConfig, apply_recipe

    seen = {}
    for path in sorted((ROOT / "export").glob("*.toml")):
        cfg = apply_recipe(ExportConfig(run="r", out="o"), path)
        cfg.validate()
        seen[cfg.recipe] = cfg
    assert {"cpu-int8", "jetson-orin-int8", "gpu-fp16"} <= set(seen)
    assert seen["jetson-orin-int8"].int8_preset == "tensorrt" and seen["jetson-orin-int8"].target == "tensorrt"
    assert seen["cpu-int8"].int8_preset == "cpu" and seen["cpu-int8"].precision["image_encoder"] == "int8"
    assert set(seen["gpu-fp16"].precision.values()) == {"fp16"}
    assert seen["jetson-orin-int8"].tensorrt.profiles["batch"].max == 16


def test_graph_declaration_is_torch_free_and_drives_dynamic_axes():
    code = "import sys; sys.modules['torch'] = None; from trml_edge.graphs import GRAPHS; print(len(GRAPHS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "6"
    model = onnx.load(str(bundle("fp32") / "graphs" / "text_encoder.onnx"))
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq"]
    prof = GRAPHS["text_encoder"].profile({"embed": 64, "context_length": 77})
    assert prof["tokens"][2] == (64, 77)


def test_calibrate_command_warns_below_the_recommended_minimum(tmp_path, caplog):
    from typer.testing import CliRunner

    import trml_edge.cli.export_cmds  # noqa: F401
    from trml_edge.cli import app
    from trml_edge.export.calibration import MIN_RECOMMENDED

    out = tmp_path / "cal"
    with caplog.at_level("WARNING", logger="trml_edge.export.calibration"):
        res = CliRunner().invoke(app, ["calibrate", str(trained_run()), "--data", str(synth_data()), "--out", str(out),
                                       "--samples", "16", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    assert 16 < MIN_RECOMMENDED and any("16 samples" in r.getMessage() for r in caplog.records)
    assert json.loads((out / "manifest.json").read_text())["samples"] == 16
    res = CliRunner().invoke(app, ["calibrate", str(trained_run()), "--data", str(synth_data()),
                                   "--out", str(tmp_path / "c2"), "--samples", "4", "--batch-size", "8"])
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError)
    assert not (tmp_path / "c2").exists()


def test_int8_presets_are_validated():
    from dataclasses import replace

    from trml_edge.export.precision import Int8Preset

    trt, cpu = Int8Preset.named("tensorrt"), Int8Preset.named("cpu")
    assert trt.symmetric_activations and trt.symmetric_weights and trt.activation_type == "int8" and trt.qdq_on_weights
    assert cpu.activation_type == "uint8" and cpu.weight_type == "int8" and cpu.per_channel
    assert not {"LayerNormalization", "Softmax", "Add"} & set(trt.op_types)
    with pytest.raises(ConfigError, match="unknown INT8 preset"):
        Int8Preset.named("avx512")
    with pytest.raises(ConfigError, match="symmetric"):
        replace(cpu, symmetric_activations=True).validate()
    with pytest.raises(ConfigError, match="op_types"):
        replace(trt, op_types=()).validate()
