"""TensorRT engines, built on the target from the bundle's typed ONNX graphs (TensorRT 10.1 to 11.x).

Engines are built on the device that runs them, because a plan is tied to the GPU architecture and the
TensorRT version; both are in the file name (``image_encoder.sm87.trt10.3.plan``). The plan stays a plain
plan that ``trtexec`` and Triton load; its metadata goes into the bundle's ``manifest.json``.

**One build path for 10.x and 11.x: strongly typed networks.** The exported ONNX already carries every
tensor's type (FP16 graphs are FP16 with FP32 I/O and FP32 islands; INT8 graphs are FP32 with explicit
Q/DQ pairs), so every precision is built with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (in the
Python API since TensorRT 10.0; "deprecated, always on, ignored" in 11.x) and no precision builder flag:

* FP16: TensorRT 11 removed ``BuilderFlag.FP16`` and ``Builder.platform_has_fast_fp16`` ("TensorRT 10.x to
  11.x" migration guide, removed Python APIs: "use strongly typed networks"). A strongly typed network runs
  each layer in the ONNX type, so the engine computes what ONNX Runtime's parity gate measured (the FP32
  islands stay FP32); with the 10.x FP16 flag TensorRT could pick FP16 anywhere.
* INT8: "Use explicit quantization with Strong Typing. Precision-control build flags are not required and
  should not be specified" (developer guide, "Explicit Quantization"); Q/DQ fix every INT8 tensor.
* FP32: every tensor stays FP32, but ``BuilderFlag.TF32`` (on by default, kept in 11.x) lets TensorRT use
  TF32 tensor cores for FP32 convolutions and matrix multiplies on compute capability 8.0+. It is left on
  unless ``tf32=False``; the manifest records it and whether the GPU has TF32, and the parity gate on the
  target (engine vs ONNX Runtime on the same graph, with the graph precision's budget) decides: an FP32
  graph out of its FP32 budget fails, and the error names ``--no-tf32``.

The CPU lint (``trt_lint``) runs first, so a graph the parser would refuse fails before any GPU work.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from trml_edge.config import write_json_atomic
from trml_edge.errors import ExportError, MissingDependencyError
from trml_edge.export.trt_lint import TRT_SUPPORTED_OPS, graph_precision, lint_tensorrt  # noqa: F401 (re-exported)
from trml_edge.tensorrt_env import install_advice, tensorrt_version_problem, version_tuple

log = logging.getLogger(__name__)


def _trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise MissingDependencyError(f"TensorRT is not installed: {install_advice()}") from e
    problem = tensorrt_version_problem(trt.__version__)
    if problem:
        raise MissingDependencyError(problem)
    return trt


def engine_name(graph: str, sm: str, trt_version: str) -> str:
    major_minor = ".".join(trt_version.split(".")[:2])
    return f"{graph}.{sm}.trt{major_minor}.plan"


def network_flags(trt) -> int:
    """``create_network`` flags for a strongly typed network on TensorRT 10.x and 11.x."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        if version_tuple(trt.__version__)[0] >= 11:
            return 0  # 11.x: every network is strongly typed; the flag may be gone in a later 11.x
        raise ExportError(f"TensorRT {trt.__version__} has no strongly typed networks (10.0+): {install_advice()}")
    return 1 << int(flag)


def _attach_timing_cache(trt, config, cache_path: Path) -> str:
    """Attach the kept timing cache; one that does not match this GPU/TensorRT is replaced by a fresh one."""
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return "reused" if blob else "new"
    log.warning("timing cache %s does not match this GPU or TensorRT version; starting a fresh one", cache_path)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise ExportError("TensorRT could not attach an empty timing cache; check the TensorRT installation")
    return "replaced (the kept cache did not match)"


def build_engine(trt, onnx_path: Path, plan_path: Path, graph: str, precision: str,
                 shapes: dict[str, tuple[tuple[int, ...], ...]], workspace_mb: int, cache_path: Path,
                 tf32: bool = True) -> dict[str, Any]:
    """Build one plan from a typed ONNX graph (strongly typed network) and return what the manifest records."""
    carried = graph_precision(onnx_path)
    if carried != precision:
        raise ExportError(f"{graph}: the manifest says {precision} but the ONNX graph carries {carried} types; a "
                          "strongly typed build follows the graph, so re-export the bundle")
    from trml_edge.export.trt_runner import trt_create, trt_logger

    builder = trt_create(trt, "Builder")
    if precision == "fp16" and hasattr(builder, "platform_has_fast_fp16") and not builder.platform_has_fast_fp16:
        # 10.x only (removed in 11.x, whose supported GPUs all have FP16): never a quiet FP32 build
        raise ExportError(f"{graph} is FP16 but this GPU has no fast FP16; export it as fp32 for this device")
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, trt_logger(trt))
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors}; run the CPU lint "
                          "(`trml-edge export --check-tensorrt`) to see unsupported ops")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    if config.add_optimization_profile(profile) < 0:
        raise ExportError(f"{graph}: TensorRT refused the optimization profile {shapes}; fix the recipe's "
                          "[tensorrt.profiles] sizes")
    cache_state = _attach_timing_cache(trt, config, cache_path)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build {graph}; see the log above (try a larger --workspace)")
    tmp = plan_path.with_name(f".{plan_path.name}.tmp")
    tmp.write_bytes(bytes(plan))
    tmp.replace(plan_path)
    cache_tmp = cache_path.with_name(f".{cache_path.name}.tmp")
    cache_tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    cache_tmp.replace(cache_path)
    return {"seconds": round(time.perf_counter() - t0, 2), "size": plan_path.stat().st_size,
            "build_flags": {"strongly_typed": True, "precision_flags": [], "tf32": bool(config.get_flag(
                trt.BuilderFlag.TF32)), "workspace_mb": workspace_mb}, "timing_cache_state": cache_state}


def sample_feeds(bundle, graph: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs at each input's optimization-profile 'opt' shape, in its declared dtype; token inputs are
    real sentences through the bundle's own tokenizer, trimmed to EOT as the runtime does."""
    from trml_edge.routing import trim_to_eot
    from trml_edge.tokenizer import BPETokenizer

    entry = bundle.graphs[graph]
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in entry["inputs"]:
        shape = tuple(entry["profile"][t["name"]][1])
        dtype = np.dtype(t["dtype"])
        if dtype == np.bool_:
            arr = rng.random(shape) < 0.7
            arr[..., 0] = True  # a clip has at least one real frame
        elif dtype.kind in "iu":
            tok = bundle.manifest["tokenizer"]
            texts = [SENTENCES[i % len(SENTENCES)] for i in range(shape[0])]
            arr = trim_to_eot(BPETokenizer(bundle.root / tok["file"], int(tok["context_length"]))(texts))
            arr = arr.astype(dtype)
        else:
            arr = np.clip(rng.standard_normal(shape), -3, 3).astype(dtype)
        feeds[t["name"]] = arr
    return feeds


SENTENCES = ("i really liked the acting", "the plot was boring and far too long for me",
             "not bad", "honestly one of the best films i have seen this year")


def target_parity(trt, bundle, graph: str, plan: Path) -> dict[str, Any]:
    """The engine against ONNX Runtime (CPU) on the same graph and the same seeded inputs, judged by the budget
    the export recorded for this graph's precision."""
    from trml_edge.export.trt_runner import EngineRunner
    from trml_edge.metrics import output_error

    entry = bundle.graphs[graph]
    feeds = sample_feeds(bundle, graph)
    ref = bundle.session(graph).run(None, feeds)[0]
    with EngineRunner(trt, plan) as runner:
        got = runner.run(feeds)[entry["outputs"][0]["name"]]
    res = output_error(ref, got)
    budget = bundle.manifest.get("parity", {}).get("graphs", {}).get(graph, {}).get("budget")
    if budget is None:
        raise ExportError(f"the bundle records no parity budget for {graph}; re-export it with this version")
    ok = res["max_abs"] <= budget["max_abs"] and res["min_cos"] >= budget["min_cos"]
    return {**res, "budget": budget, "ok": bool(ok), "reference": "onnxruntime CPU, same graph",
            "shapes": {k: list(v.shape) for k, v in feeds.items()}}


def build_engines(bundle_dir: str | Path, workspace_mb: int | None = None, graphs: list[str] | None = None,
                  tf32: bool = True) -> dict[str, Any]:
    """Lint, build and parity-check one engine per bundle graph into ``BUNDLE/engines/``; record them in the
    manifest. Raises ExportError naming the graph on the first lint problem, build failure or parity miss."""
    from trml_edge.export.trt_runner import cuda_device
    from trml_edge.runtime.bundle import MANIFEST, load_bundle, sha256_file

    bundle = load_bundle(bundle_dir)  # hash-checked before anything is built from it
    chosen = graphs or list(bundle.graphs)
    for graph in chosen:  # on the CPU side first: a graph the parser refuses fails before any GPU work
        problems = lint_tensorrt(bundle.path(graph), graph)
        if problems:
            raise ExportError(f"{graph} cannot be built by TensorRT: {problems[0]}" +
                              (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    trt = _trt()
    gpu = cuda_device(0)
    sm = gpu["sm"]
    recipe_ws = workspace_mb or int(bundle.manifest.get("tensorrt", {}).get("workspace_mb", 1024))
    out = bundle.root / "engines"
    out.mkdir(exist_ok=True)
    cache = out / f"timing.{sm}.trt{'.'.join(trt.__version__.split('.')[:2])}.cache"
    engines = dict(bundle.manifest.get("engines", {}))
    major, minor = (int(x) for x in gpu["compute_capability"].split("."))
    built: list[Path] = []
    for graph in chosen:
        entry = bundle.graphs[graph]
        shapes = {name: tuple(tuple(s) for s in sizes) for name, sizes in entry["profile"].items()}
        plan = out / engine_name(graph, sm, trt.__version__)
        info = build_engine(trt, bundle.path(graph), plan, graph, entry["precision"], shapes, recipe_ws, cache, tf32)
        # TF32 exists on compute capability 8.0+; only FP32 layers can use it (FP16/INT8 layers are typed)
        info["build_flags"]["tf32_possible"] = bool(major >= 8 and info["build_flags"]["tf32"])
        parity = target_parity(trt, bundle, graph, plan)
        engines[graph] = {"file": f"engines/{plan.name}", "sha256": sha256_file(plan), "compute_capability": sm,
                          "tensorrt": trt.__version__, "gpu": {k: gpu[k] for k in ("name", "compute_capability",
                                                                                    "memory_mib", "driver_cuda")},
                          "precision": entry["precision"], "workspace_mb": recipe_ws, "profile": entry["profile"],
                          "timing_cache": f"engines/{cache.name}", "parity": parity, **info}
        built.append(plan)
        if not parity["ok"]:
            for done in built:  # all or nothing: the manifest records no engine of this run, so none stays
                done.unlink(missing_ok=True)
            hint = (" FP32 layers ran as TF32: rebuild with --no-tf32" if entry["precision"] == "fp32" and
                    info["build_flags"]["tf32"] and major >= 8 else "")
            raise ExportError(f"{graph}: the engine is out of its {entry['precision']} budget against ONNX Runtime "
                              f"(max_abs {parity['max_abs']:.2e} > {parity['budget']['max_abs']:g} or min_cos "
                              f"{parity['min_cos']:.6f} < {parity['budget']['min_cos']:g}); no engine kept.{hint}")
    manifest = json.loads((bundle.root / MANIFEST).read_text())
    manifest["engines"] = engines
    write_json_atomic(bundle.root / MANIFEST, manifest)
    return engines
