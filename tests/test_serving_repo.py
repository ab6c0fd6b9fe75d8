"""Triton repositories without a server: configs parsed by Triton's own protobuf, byte-identical router modules,
a router that imports nothing of the installed package, and the pure routing functions."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from export_fixtures import bundle, workdir
from serving_fixtures import repository
from trml_edge.errors import MissingModalityError, RequestError, ServingError
from trml_edge.graphs import GRAPH_NAMES, GRAPHS
from trml_edge.routing import (COMPLETE, TEXT_MISSING, VISUAL_MISSING, RequestLimits, check_frames, check_text,
                               group_by_scenario, pick_frames, route)
from trml_edge.serving.configs import CORE_MODULES, RUNTIME_MODULES, core_path, core_sources
from trml_edge.serving.repository import RepoConfig, build_repository

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64",
                  onnx.TensorProto.BOOL: "TYPE_BOOL"}


def _parse(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(path.read_text(), mc.ModelConfig()), mc


def _tensorrt_bundle() -> Path:
    """A copy of the FP32 bundle with an engine entry per graph, as `build-engines` records them on a GPU box.

    The plan bytes are a stand-in (no GPU here): only the repository layout and configs are checked on CPU.
    """
    dst = workdir() / "bundle_with_engines"
    if not dst.exists():
        shutil.copytree(bundle("fp32"), dst)
        m = json.loads((dst / "manifest.json").read_text())
        (dst / "engines").mkdir()
        for g in GRAPH_NAMES:
            plan = dst / "engines" / f"{g}.sm87.trt10.3.plan"
            plan.write_bytes(b"not a real plan: " + g.encode())
            m["engines"][g] = {"file": f"engines/{plan.name}", "precision": "fp32", "compute_capability": "sm87"}
        (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("backend", ["python", "onnxruntime", "tensorrt"])
def test_configs_match_the_io_declaration_and_the_onnx_graphs(backend, tmp_path):
    src = _tensorrt_bundle() if backend == "tensorrt" else bundle("fp32")
    repo = build_repository(RepoConfig(bundle=str(src), out=str(tmp_path / "repo"), backend=backend,
                                       layout="ensemble"))
    manifest = json.loads((src / "manifest.json").read_text())
    dims = manifest["model"]["dims"]
    for name in GRAPH_NAMES:
        cfg, mc = _parse(repo / name / "config.pbtxt")
        assert cfg.name == name
        spec = GRAPHS[name]
        # against the ONNX file itself, independent of the generator's reading of graphs.py
        path = bundle("fp32") / manifest["graphs"][name]["file"]
        graph = onnx.load(str(path)).graph
        assert [t.name for t in cfg.input] == [t.name for t in graph.input] == [t.name for t in spec.inputs]
        assert [t.name for t in cfg.output] == [t.name for t in graph.output] == [t.name for t in spec.outputs]
        feeds = {}
        for t_cfg, t_onnx in zip(cfg.input, graph.input):
            assert mc.DataType.Name(t_cfg.data_type) == ONNX_TO_TRITON[t_onnx.type.tensor_type.elem_type]
            onnx_dims = [d.dim_value if d.dim_value else -1 for d in t_onnx.type.tensor_type.shape.dim]
            assert onnx_dims[0] == -1  # the batch axis, which Triton keeps out of dims
            assert list(t_cfg.dims) == onnx_dims[1:]
            shape = [2] + [3 if d == -1 else d for d in t_cfg.dims]
            dtype = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64, "TYPE_BOOL": bool}[mc.DataType.Name(
                t_cfg.data_type)]
            feeds[t_cfg.name] = np.ones(shape, dtype)
        # output dims: what the graph really returns for a batch of 2
        import onnxruntime as ort

        outs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
        for t_cfg, t_onnx, got in zip(cfg.output, graph.output, outs):
            assert mc.DataType.Name(t_cfg.data_type) == ONNX_TO_TRITON[t_onnx.type.tensor_type.elem_type]
            assert [2, *t_cfg.dims] == list(got.shape)
        axis_max = manifest["graphs"][name]["profile"][spec.inputs[0].name][2][0]
        assert cfg.max_batch_size == axis_max > 0
        # batched, and an idle model does not wait for company (0 still batches what queues while it is busy)
        assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 0
        assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == 1
        kind = cfg.instance_group[0].kind
        assert kind == (mc.ModelInstanceGroup.KIND_GPU if backend == "tensorrt" else mc.ModelInstanceGroup.KIND_CPU)
        files = {p.name for p in (repo / name / "1").iterdir()}
        expected = {"python": {"model.py", "model.onnx"}, "onnxruntime": {"model.onnx"},
                    "tensorrt": {"model.plan"}}[backend]
        assert files == expected
        if backend == "tensorrt":
            assert cfg.platform == "tensorrt_plan"
            assert (repo / name / "1" / "model.plan").read_bytes() == b"not a real plan: " + name.encode()
        else:
            assert (repo / name / "1" / "model.onnx").read_bytes() == (src / manifest["graphs"][name]["file"]
                                                                       ).read_bytes()
        assert cfg.parameters["bundle_sha256"].string_value == manifest["graphs"][name]["sha256"]
    router, mc = _parse(repo / "trml" / "config.pbtxt")
    assert router.backend == "python" and router.max_batch_size == 8
    ins = {t.name: t for t in router.input}
    assert set(ins) == {"TEXT", "FRAMES"} and all(t.optional for t in ins.values())
    assert mc.DataType.Name(ins["TEXT"].data_type) == "TYPE_STRING" and list(ins["TEXT"].dims) == [1]
    assert mc.DataType.Name(ins["FRAMES"].data_type) == "TYPE_UINT8" and list(ins["FRAMES"].dims) == [-1, -1, -1, 3]
    outs = {t.name: t for t in router.output}
    assert list(outs["OUTPUT"].dims) == [dims["classes"]] and list(outs["VIRTUAL_MODALITY"].dims) == [1]
    assert router.parameters["bundle_manifest_sha256"].string_value == \
        __import__("hashlib").sha256((src / "manifest.json").read_bytes()).hexdigest()
    assert (repo / "trml" / "1" / "bundle_manifest.json").read_bytes() == (src / "manifest.json").read_bytes()


def test_settings_from_the_command_line_reach_the_configs(tmp_path):
    from typer.testing import CliRunner

    from trml_edge.cli import _register, app

    _register()
    out = tmp_path / "repo"
    res = CliRunner().invoke(app, ["triton", "build", str(bundle("fp32")), "--out", str(out), "--backend",
                                   "onnxruntime", "--instances", "3", "--max-queue-delay-us", "1234", "--max-batch",
                                   "4", "--router-instances", "2", "--router-max-batch", "16", "--max-frame-side",
                                   "999"])
    assert res.exit_code == 0, res.output
    cfg, _ = _parse(out / "image_encoder" / "config.pbtxt")
    assert (cfg.instance_group[0].count, cfg.dynamic_batching.max_queue_delay_microseconds,
            cfg.max_batch_size) == (3, 1234, 4)
    router, _ = _parse(out / "trml" / "config.pbtxt")
    assert (router.instance_group[0].count, router.max_batch_size) == (2, 16)
    assert router.parameters["max_frame_side"].string_value == "999"


def test_tensorrt_backend_without_engines_is_a_clear_error(tmp_path):
    with pytest.raises(ServingError, match="no TensorRT engine for image_encoder.*build-engines"):
        build_repository(RepoConfig(bundle=str(bundle("fp32")), out=str(tmp_path / "r"), backend="tensorrt"))
    assert not (tmp_path / "r").exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_existing_repository_needs_force_and_a_bad_bundle_is_refused(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    with pytest.raises(ServingError, match="already exists.*--force"):
        build_repository(RepoConfig(bundle=str(bundle("fp32")), out=str(out)))
    bad = tmp_path / "bad_bundle"
    shutil.copytree(bundle("fp32"), bad)
    with open(bad / "graphs" / "fusion_head.onnx", "ab") as f:
        f.write(b"\0")
    from trml_edge.errors import BundleError

    with pytest.raises(BundleError, match="fusion_head"):
        build_repository(RepoConfig(bundle=str(bad), out=str(tmp_path / "r2")))


@pytest.mark.parametrize("layout", ["ensemble", "fused"])
def test_router_modules_are_byte_identical_copies_of_the_package(layout):
    """Ensemble: the leaf modules; fused: the runtime too (the package's own code runs the graphs)."""
    import hashlib

    version = repository(layout=layout) / "trml" / "1"
    extra = RUNTIME_MODULES if layout == "fused" else ()
    for module, src in core_sources(extra).items():
        assert (version / core_path(module)).read_bytes() == src.read_bytes(), module
    copied = {p.relative_to(version / "trml_core").as_posix() for p in (version / "trml_core").rglob("*.py")}
    want = {f"{m}.py" for m in CORE_MODULES} | {"__init__.py"}
    if layout == "fused":
        want |= {"streaming.py", "runtime/__init__.py", "runtime/bundle.py", "runtime/pipeline.py",
                 "runtime/prediction.py", "runtime/stream.py"}
    assert copied == want
    router = json.loads((version / "router.json").read_text())
    assert router["layout"] == layout
    assert router["core_modules"] == {m: hashlib.sha256(p.read_bytes()).hexdigest()
                                      for m, p in core_sources(extra).items()}


def _imports(path: Path) -> set[tuple[int, str]]:
    """(relative level, module) of every import in a file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {(0, a.name.split(".")[0]) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add((node.level, (node.module or "").split(".")[0]))
    return out


def test_router_and_its_modules_import_only_numpy_stdlib_and_each_other():
    """Both layouts' routers import numpy, triton_python_backend_utils, the stdlib and their copied siblings;
    the fused layout's runtime adds onnxruntime, and nothing else (no torch, no trml_edge)."""
    stdlib = set(sys.stdlib_module_names)
    templates = Path(__file__).resolve().parents[1] / "triton_models"
    for layout in ("ensemble", "fused"):
        version = repository(layout=layout) / "trml" / "1"
        allowed = {"numpy", "triton_python_backend_utils", "trml_core", "trml_bls", "trml_respond"}
        if layout == "fused":
            allowed.add("onnxruntime")
        shared = ["trml_respond.py"] + (["trml_bls.py"] if layout == "ensemble" else [])
        for name in shared:
            assert (version / name).read_bytes() == (templates / "common" / name).read_bytes()
        assert (version / "trml_bls.py").exists() == (layout == "ensemble")  # the fused router makes no BLS call
        files = [*(version / "trml_core").rglob("*.py"), version / "model.py", *(version / n for n in shared)]
        copied = {p.stem for p in (version / "trml_core").rglob("*.py")} | {"runtime"}
        for f in files:
            for level, mod in _imports(f):
                if level:  # relative: only the copied siblings
                    assert mod in copied or mod == "", (f, mod)
                else:
                    assert mod in stdlib or mod in allowed or mod == "__future__", (layout, f.name, mod)


def test_the_fused_routers_runtime_works_without_the_package(tmp_path):
    """A Jetson's Triton has no trml_edge: the fused router's copy of the runtime loads its bundle copy and answers
    every scenario as the package's Pipeline does, with trml_edge blocked from import."""
    from trml_edge.runtime import Pipeline

    version = repository(layout="fused") / "trml" / "1"
    frames = np.random.default_rng(0).integers(0, 256, (5, 40, 56, 3), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    code = f"""
import sys, json
import numpy as np
sys.modules['trml_edge'] = None
sys.path.insert(0, {str(version)!r})
from trml_core.runtime.bundle import load_bundle
from trml_core.runtime.pipeline import Pipeline
pipe = Pipeline(load_bundle({str(version / 'bundle')!r}))
f = np.load({str(tmp_path / 'frames.npy')!r})
out = [pipe.predict(*x).output.tolist() for x in ((f, "a fine film"), (None, "a fine film"), (f, None))]
loaded = sorted(m for m in sys.modules if m.startswith('trml_edge') and sys.modules[m])
print(json.dumps({{"out": out, "loaded": loaded}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    pipe = Pipeline(bundle("fp32"))
    want = [pipe.predict(*x).output.tolist() for x in ((frames, "a fine film"), (None, "a fine film"), (frames, None))]
    assert got["loaded"] == [] and np.allclose(got["out"], want, atol=1e-6)


def test_copied_modules_work_without_the_package():
    """Import trml_core from the repository with trml_edge blocked; it tokenizes and routes as the package does."""
    from trml_edge.tokenizer import BPETokenizer

    version = repository(layout="ensemble") / "trml" / "1"
    texts = ["i really liked it", "naïve café &amp; emoji 😀", "not good at all " * 20]
    code = f"""
import sys, json
sys.modules['trml_edge'] = None
sys.path.insert(0, {str(version)!r})
from trml_core import routing, tokenizer, preprocess, graphs
tok = tokenizer.BPETokenizer({str(version / 'assets' / 'bpe_simple_vocab_16e6.txt.gz')!r}, 77)
try:
    routing.route(False, False)
    missing = None
except Exception as e:
    missing = type(e).__name__ + ': ' + str(e)
print(json.dumps({{"tokens": tok({texts!r}).tolist(), "route": routing.route(True, False), "missing": missing,
                   "loaded": sorted(m for m in sys.modules if m.startswith('trml_edge') and sys.modules[m])}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    ours = BPETokenizer(bundle("fp32") / "assets" / "bpe_simple_vocab_16e6.txt.gz", 77)
    assert got["tokens"] == ours(texts).tolist()
    assert got["route"] == TEXT_MISSING and got["loaded"] == []
    assert got["missing"].startswith("MissingModalityError") and "FRAMES" in got["missing"] and "TEXT" in got["missing"]


# --- the pure routing functions, no model and no server ---

def test_route_and_grouping():
    assert [route(*x) for x in [(True, True), (False, True), (True, False)]] == [COMPLETE, VISUAL_MISSING,
                                                                                 TEXT_MISSING]
    with pytest.raises(MissingModalityError, match="FRAMES.*TEXT"):
        route(False, False)
    scen = [COMPLETE, TEXT_MISSING, COMPLETE, VISUAL_MISSING, TEXT_MISSING]
    assert group_by_scenario(scen) == {COMPLETE: [0, 2], TEXT_MISSING: [1, 4], VISUAL_MISSING: [3]}


def test_pick_frames_is_uniform_and_keeps_short_clips():
    assert pick_frames(3, 8).tolist() == [0, 1, 2]
    assert pick_frames(8, 8).tolist() == list(range(8))
    assert pick_frames(22, 8).tolist() == [0, 3, 6, 9, 12, 15, 18, 21]  # 21/7 = 3 apart, first and last kept
    assert pick_frames(1, 8).tolist() == [0]


def test_request_checks_name_the_problem():
    lim = RequestLimits(max_frames=10, max_frame_side=100, max_text_bytes=20)
    ok = np.zeros((2, 100, 50, 3), np.uint8)
    assert check_frames(ok, lim) is ok
    cases = [(ok.astype(np.float32), "dtype float32"), (ok[0], r"shape \[100, 50, 3\]"), (ok[:0], "0 frames"),
             (np.zeros((1, 101, 5, 3), np.uint8), "101x5 pixels, over the limit of 100"),
             (np.zeros((11, 4, 4, 3), np.uint8), "11 frames, over the limit of 10"),
             (np.zeros((1, 4, 4, 4), np.uint8), r"shape \[1, 4, 4, 4\]"), ([1, 2], "numpy uint8 array")]
    for bad, msg in cases:
        with pytest.raises(RequestError, match=msg):
            check_frames(bad, lim)
    assert check_text("fine", lim) == "fine" and check_text("é".encode(), lim) == "é"
    for bad, msg in [(b"\xff\xfe", "not valid utf-8"), ("", "TEXT is empty"), (" \n ", "TEXT is empty"),
                     (b"x" * 21, "21 bytes, over the limit of 20"), ("é" * 11, "over the limit of 20"),
                     (3, "must be a string")]:
        with pytest.raises(RequestError, match=msg):
            check_text(bad, lim)


def test_python_graph_models_use_the_bundles_ort_level(tmp_path):
    """The Python-backend graph model builds its ORT session at the level the runtime uses for that graph."""
    from trml_edge.runtime.bundle import load_bundle

    b = load_bundle(bundle("fp16"))
    repo = build_repository(RepoConfig(bundle=str(bundle("fp16")), out=str(tmp_path / "r"), layout="ensemble"))
    levels = {}
    for name in GRAPH_NAMES:
        cfg, _ = _parse(repo / name / "config.pbtxt")
        levels[name] = cfg.parameters["graph_optimization_level"].string_value
        assert levels[name] == b.ort_level(name)
    assert levels["image_encoder"] == "extended"  # FP16 convolution: the level ORT 1.32 does not crash on


# --- one ensemble per scenario, and the configs Triton would refuse ---

# Written out by hand from the design card's data flow (not derived from the generator's own tables): per
# scenario, each step's model and where each of its inputs comes from ("<in>" = fed by the router).
EXPECTED_WIRING = {
    VISUAL_MISSING: {"text_encoder": {"tokens": "<in>"}, "gen_text_to_visual": {"t": "text_encoder"},
                     "fusion_head": {"t": "text_encoder", "v": "gen_text_to_visual"}},
    TEXT_MISSING: {"temporal_encoder": {"frame_emb": "<in>", "frame_mask": "<in>"},
                   "gen_visual_to_text": {"v": "temporal_encoder"},
                   "fusion_head": {"t": "gen_visual_to_text", "v": "temporal_encoder"}},
    COMPLETE: {"temporal_encoder": {"frame_emb": "<in>", "frame_mask": "<in>"}, "text_encoder": {"tokens": "<in>"},
               "fusion_head": {"t": "text_encoder", "v": "temporal_encoder"}},
}


def test_one_ensemble_per_scenario_wired_as_the_design_says():
    repo = repository(layout="ensemble")
    graph_max = {g: _parse(repo / g / "config.pbtxt")[0].max_batch_size for g in GRAPH_NAMES}
    router = json.loads((repo / "trml" / "1" / "router.json").read_text())
    for scenario, expected in EXPECTED_WIRING.items():
        name = f"trml_{scenario}"
        cfg, mc = _parse(repo / name / "config.pbtxt")
        assert cfg.platform == "ensemble" and (repo / name / "1").is_dir()
        steps = {st.model_name: st for st in cfg.ensemble_scheduling.step}
        assert set(steps) == set(expected), scenario  # the image encoder is the router's own call
        assert "image_encoder" not in steps
        produced = {}  # ensemble tensor -> the step that writes it
        for st in steps.values():
            for tensor in st.output_map.values():
                assert tensor not in produced, (scenario, tensor)  # one writer per tensor
                produced[tensor] = st.model_name
        ens_inputs = {t.name for t in cfg.input}
        for model, inputs in expected.items():
            assert set(steps[model].input_map) == set(inputs), (scenario, model)
            for model_input, source in inputs.items():
                tensor = steps[model].input_map[model_input]
                if source == "<in>":
                    assert tensor in ens_inputs and tensor not in produced, (scenario, model, tensor)
                else:
                    assert produced.get(tensor) == source, (scenario, model, model_input, tensor)
        assert [t.name for t in cfg.output] == ["output"] and produced["output"] == "fusion_head"
        assert ens_inputs == {t for ins in expected.values() for t, src in ins.items() if src == "<in>"}
        assert cfg.max_batch_size == min(graph_max[m] for m in expected)
        assert router["ensembles"][scenario] == {"model": name, "inputs": [t.name for t in cfg.input],
                                                 "output": "output", "max_batch": cfg.max_batch_size,
                                                 "steps": [st.model_name for st in cfg.ensemble_scheduling.step]}
    assert router["image_encoder"]["model"] == "image_encoder"


def test_tensorrt_refuses_cpu_instances_and_a_batch_over_the_engine_profile(tmp_path):
    from trml_edge.errors import ConfigError
    from trml_edge.serving.repository import ModelSettings

    src = _tensorrt_bundle()
    with pytest.raises(ConfigError, match="--kind cpu cannot run TensorRT plans"):
        build_repository(RepoConfig(bundle=str(src), out=str(tmp_path / "a"), backend="tensorrt",
                                    graphs=ModelSettings(kind="cpu")))
    profile_max = json.loads((src / "manifest.json").read_text())["graphs"]["text_encoder"]["profile"]["tokens"][2][0]
    with pytest.raises(ConfigError, match=f"--max-batch {profile_max + 1} is above the batch size {profile_max}"):
        build_repository(RepoConfig(bundle=str(src), out=str(tmp_path / "b"), backend="tensorrt",
                                    graphs=ModelSettings(max_batch_size=profile_max + 1)))
    # --max-batch 0: no batch axis, so a batch of requests' frames would reach the image encoder's engine in one
    # call, past its profile's max
    first = GRAPHS["image_encoder"].inputs[0].name
    frames_max = json.loads((src / "manifest.json").read_text())["graphs"]["image_encoder"]["profile"][first][2][0]
    with pytest.raises(ConfigError, match=rf"--max-batch 0 .* image_encoder .* can exceed the {frames_max} .* use "
                                          rf"--max-batch {frames_max} or less"):
        build_repository(RepoConfig(bundle=str(src), out=str(tmp_path / "z"), backend="tensorrt",
                                    graphs=ModelSettings(max_batch_size=0)))
    assert not list(tmp_path.iterdir())  # nothing half-written
    # at the profile max it builds; ONNX Runtime graphs have no such limit
    build_repository(RepoConfig(bundle=str(src), out=str(tmp_path / "c"), backend="tensorrt",
                                graphs=ModelSettings(max_batch_size=profile_max)))
    build_repository(RepoConfig(bundle=str(src), out=str(tmp_path / "d"), backend="onnxruntime",
                                graphs=ModelSettings(max_batch_size=profile_max + 1)))


def test_unbatched_graph_models_keep_the_graphs_rank(tmp_path):
    """--max-batch 0: Triton adds no batch axis, so the dims must carry it (the engine's rank)."""
    from trml_edge.serving.repository import ModelSettings

    repo = build_repository(RepoConfig(bundle=str(bundle("fp32")), out=str(tmp_path / "r"), layout="ensemble",
                                       graphs=ModelSettings(max_batch_size=0)))
    for name in GRAPH_NAMES:
        cfg, _ = _parse(repo / name / "config.pbtxt")
        graph = onnx.load(str(repo / name / "1" / "model.onnx")).graph
        assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
        for t_cfg, t_onnx in [*zip(cfg.input, graph.input), *zip(cfg.output, graph.output)]:
            onnx_dims = [d.dim_value if d.dim_value else -1 for d in t_onnx.type.tensor_type.shape.dim]
            assert len(t_cfg.dims) == len(onnx_dims) and t_cfg.dims[0] == -1, (name, t_cfg.name)
            assert all(o in (-1, c) for c, o in zip(t_cfg.dims, onnx_dims)), (name, t_cfg.name)
    for scenario in EXPECTED_WIRING:
        ens, _ = _parse(repo / f"trml_{scenario}" / "config.pbtxt")
        assert ens.max_batch_size == 0 and all(t.dims[0] == -1 for t in ens.input)


def test_plan_versions_are_recorded_and_checked_against_the_server(tmp_path, monkeypatch):
    """router.json records each plan's TensorRT version and GPU architecture; serve's check compares them with the
    TensorRT the server's tensorrt backend loads (tests/test_serve_plans.py has the rest of that check)."""
    from trml_edge import tensorrt_env
    from trml_edge.serving.plans import check_plan_versions
    from trt_fakes import fake_triton, no_nvidia_smi

    src = tmp_path / "bundle"
    shutil.copytree(_tensorrt_bundle(), src)
    m = json.loads((src / "manifest.json").read_text())
    for g in GRAPH_NAMES:
        m["engines"][g]["tensorrt"] = "10.3.0"
    m["engines"]["fusion_head"]["tensorrt"] = "10.12.0"
    (src / "manifest.json").write_text(json.dumps(m))
    repo = build_repository(RepoConfig(bundle=str(src), out=str(tmp_path / "repo"), backend="tensorrt"))
    recorded = json.loads((repo / "trml" / "1" / "router.json").read_text())["tensorrt"]
    assert recorded["image_encoder"] == {"version": "10.3.0", "compute_capability": "sm87"}
    assert recorded["fusion_head"]["version"] == "10.12.0"

    # a server tree as JetPack lays it out, both releases in its library folder; the backend links 10.3.0
    binary = fake_triton(tmp_path, {"libnvinfer.so.10.12.0": None, "libnvinfer.so.10.3.0": None,
                                    "libnvinfer.so.10": "libnvinfer.so.10.3.0"})
    lib = binary.parents[1] / "lib"
    monkeypatch.setenv("LD_LIBRARY_PATH", str(lib))
    monkeypatch.setattr(tensorrt_env, "_ldconfig", lambda soname: [])
    no_nvidia_smi(tmp_path, monkeypatch)
    with pytest.raises(ServingError, match=r"fusion_head with 10\.12\.0, the server loads TensorRT 10\.3\.0.*"
                                           r"build-engines"):
        check_plan_versions(repo, binary)
    with pytest.raises(ServingError, match="bundled by nvidia-pytriton has no tensorrt backend"):
        check_plan_versions(repo, None)
    (lib / "libnvinfer.so.10").unlink()
    (lib / "libnvinfer.so.10").symlink_to("libnvinfer.so.10.12.0")
    with pytest.raises(ServingError, match=r"image_encoder with 10\.3\.0.*TensorRT 10\.12\.0"):
        check_plan_versions(repo, binary)
    # a python-backend repository has nothing to check
    assert check_plan_versions(repository(), None) is None


def test_serve_gives_the_plan_check_its_log(tmp_path, monkeypatch):
    """What the check cannot tell (here: the server's TensorRT, whose libnvinfer is nowhere) reaches serve's stderr;
    the fake tritonserver then exits at start."""
    from typer.testing import CliRunner

    import trml_edge.cli.serve_cmds  # noqa: F401
    from trml_edge import tensorrt_env
    from trml_edge.cli import app
    from trt_fakes import fake_triton

    binary = fake_triton(tmp_path, {})
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    monkeypatch.setattr(tensorrt_env, "LIB_DIRS", ())
    monkeypatch.setattr(tensorrt_env, "_ldconfig", lambda soname: [])
    repo = tmp_path / "repo"
    (repo / "trml" / "1").mkdir(parents=True)
    (repo / "trml" / "config.pbtxt").write_text('name: "trml"\nbackend: "python"\n')
    (repo / "trml" / "1" / "router.json").write_text(json.dumps({"tensorrt": {"fusion_head": {
        "version": "10.3.0", "compute_capability": "sm87"}}}))
    res = CliRunner().invoke(app, ["serve", str(repo), "--tritonserver", str(binary), "--no-supervise"])
    assert res.exit_code != 0
    assert "could not tell the server's TensorRT version" in res.stderr, res.stderr


def test_every_bls_request_of_the_routers_asks_for_cpu_outputs():
    """On a discrete GPU, TensorRT outputs come back in device memory unless the request asks for CPU memory,
    and numpy cannot read them. No CPU server can show that, so check the code: every InferenceRequest the
    routers build sets preferred_memory to TRITONSERVER_MEMORY_CPU, and the routers build none of their own."""
    root = Path(__file__).resolve().parents[1] / "triton_models"
    calls = {}
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "InferenceRequest":
                calls.setdefault(f.relative_to(root).as_posix(), []).append(node)
    assert set(calls) == {"common/trml_bls.py"}, calls.keys()
    for node in calls["common/trml_bls.py"]:
        kw = {k.arg: k.value for k in node.keywords}
        assert "preferred_memory" in kw
    src = (root / "common" / "trml_bls.py").read_text()
    assert "PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)" in src and "is_cpu()" in src
