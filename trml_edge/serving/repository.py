"""``trml-edge triton build``: a Triton model repository generated from an export bundle, in one of two layouts.

**fused** (the default for ``--backend python``: a Triton whose only backend is Python, the one a CPU box
runs). Every Python-backend step is a process round trip (+2.3 to +5.2 ms a request with graphs that compute
nothing, docs/serving.md), so the routers run the bundle's graphs with ONNX Runtime in their own process::

    REPO/
      trml/config.pbtxt              the router: TEXT, FRAMES optional -> OUTPUT, VIRTUAL_MODALITY
      trml/1/model.py                triton_models/trml/model.py
      trml/1/trml_respond.py         triton_models/common/trml_respond.py: error statuses, outputs, metrics
      trml/1/trml_core/*.py          byte-identical copies of the package's torch-free modules, the runtime too
      trml/1/router.json             layout, graph chunk limits, ORT threads, preprocessing, the bundle's identity
      trml/1/bundle/                 the export bundle's graphs, manifest and tokenizer (sha256 checked at load)
      trml_stream/...                the stream router, likewise (its bundle/ hard-linked to trml's)

**ensemble** (the default for ``--backend onnxruntime|tensorrt``, where Triton runs the graph steps natively
in its own process, and a GPU keeps the embeddings on the device)::

    REPO/
      trml/config.pbtxt              the BLS router
      trml/1/model.py                triton_models/trml/model.py
      trml/1/trml_respond.py, trml_bls.py    what it answers; its BLS calls
      trml/1/trml_core/*.py          byte-identical copies of the package's torch-free leaf modules
      trml/1/router.json             the models it calls, preprocessing, tokenizer, the bundle's identity
      trml/1/bundle_manifest.json    the bundle's manifest, so a served model traces back to its export
      trml/1/assets/...              the tokenizer vocabulary
      <graph>/config.pbtxt           one model per graph: onnxruntime | tensorrt_plan | python (ORT inside)
      <graph>/1/model.onnx           (model.plan for tensorrt; model.py + model.onnx for python)
      trml_complete/config.pbtxt     one ensemble per scenario: the fixed chain of graph models behind it
      trml_visual_missing/...        (platform "ensemble", an empty version folder)
      trml_text_missing/...

Either way the graphs are the bundle's separate ONNX files, exported, quantized and parity-gated one by one;
only where they run differs. Every ``config.pbtxt`` is built as Triton's own ``ModelConfig`` protobuf from the
I/O declaration in ``trml_edge.graphs``, the routes in ``trml_edge.routing`` and the bundle's manifest (dims,
TensorRT profiles); no name, dtype or dim is typed here a second time. The ensembles are wired by tensor name:
a graph's input is fed by the graph output of the same name, and a generator's ``x_hat`` stands in for ``x``.
The repository is assembled in a hidden directory beside ``out`` and renamed into place. It is version 1 of
itself: ``REPO/trml_versions.json`` records it, and each router's config serves version 1 by name and keeps a
copy in its version folder (``trml_config.pbtxt``), so that ``triton update`` can add version 2 beside it
(``serving/versions.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trml_edge
from trml_edge.config import publish_dir
from trml_edge.errors import ConfigError, ServingError
from trml_edge.graphs import GRAPH_NAMES, GRAPHS, PROFILES, GraphSpec
from trml_edge.routing import ROUTES, SCENARIOS, RequestLimits
from trml_edge.serving.configs import (BUNDLE_DIR, RUNTIME_MODULES, TRITON_DTYPES, add_router_io, copy_bundle,
                                       copy_router_code, ensemble_batch, ensemble_io, protobuf, templates_dir,
                                       triton_dims, write_config, write_ensemble)

BACKENDS = ("onnxruntime", "tensorrt", "python")
LAYOUTS = ("fused", "ensemble")
ROUTER = "trml"
ROUTER_FILE = "router.json"
ENSEMBLES = {s: f"{ROUTER}_{s}" for s in SCENARIOS}  # scenario -> its ensemble model
# Graphs the router calls itself: the image encoder's batch axis is frames, every later graph's is clips, and
# an ensemble cannot regroup a batch axis.
ROUTER_CALLS = ("image_encoder",)


@dataclass
class ModelSettings:
    """Scheduling of one model: Triton's dynamic batcher and instance group."""

    instances: int = 1  # model instances (each Python-backend instance is its own process)
    kind: str = "auto"  # cpu | gpu | auto (gpu for tensorrt, cpu otherwise)
    # how long an idle model waits to fill a batch; it adds to every batch-1 request, and 0 still batches the
    # requests that queue while the model is busy (measured in docs/serving.md)
    max_queue_delay_us: int = 0
    max_batch_size: int | None = None  # None: the bundle's TensorRT profile max of the batch axis

    def validate(self, where: str) -> None:
        if self.instances < 1:
            raise ConfigError(f"{where}: instances must be >= 1, got {self.instances}")
        if self.kind not in ("cpu", "gpu", "auto"):
            raise ConfigError(f"{where}: kind must be cpu, gpu or auto, got {self.kind!r}")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"{where}: max_queue_delay_us must be >= 0")
        if self.max_batch_size is not None and self.max_batch_size < 0:
            raise ConfigError(f"{where}: max_batch_size must be >= 0")


@dataclass
class RepoConfig:
    bundle: str  # export bundle directory
    out: str  # repository directory to create
    backend: str = "python"  # onnxruntime | tensorrt | python: how the per-graph models run
    layout: str | None = None  # fused | ensemble; None: fused for the python backend, ensemble for the native ones
    graphs: ModelSettings = field(default_factory=ModelSettings)  # every per-graph model (fused: max_batch_size only)
    router: ModelSettings = field(default_factory=lambda: ModelSettings(max_batch_size=8))
    limits: RequestLimits = field(default_factory=RequestLimits)  # what one request may carry
    intra_op_threads: int = 0  # python backend: ORT threads per graph session (0 = ORT's default: every core)
    force: bool = False  # replace an existing repository
    stream: Any = None  # serving/stream_repo.py StreamSettings of the trml_stream router (None: its defaults)

    @property
    def resolved_layout(self) -> str:
        return self.layout or ("fused" if self.backend == "python" else "ensemble")

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ConfigError(f"unknown layout {self.layout!r}; choose fused or ensemble")
        if self.resolved_layout == "fused":
            if self.backend != "python":
                raise ConfigError(f"--layout fused runs the graphs with ONNX Runtime inside the Python-backend router, "
                                  f"so it cannot use --backend {self.backend}, whose Triton backend runs each graph "
                                  "natively in Triton's own process: use --layout ensemble with it (the default), or "
                                  "--backend python for the fused layout")
            g, default = self.graphs, ModelSettings()
            if (g.instances, g.kind, g.max_queue_delay_us) != (default.instances, default.kind,
                                                                default.max_queue_delay_us):
                raise ConfigError("the fused layout has no per-graph models, so --instances, --kind and "
                                  "--max-queue-delay-us have nothing to set: use --router-instances and "
                                  "--router-queue-delay-us, or --layout ensemble")
        self.graphs.validate("graph models")
        self.router.validate("router")
        if self.router.kind == "gpu":
            raise ConfigError("the router runs on the Python backend; give it kind cpu (its graphs may use the GPU)")
        if self.backend == "tensorrt" and self.graphs.kind == "cpu":
            raise ConfigError("--kind cpu cannot run TensorRT plans (Triton's tensorrt backend accepts KIND_GPU "
                              "only); use --kind gpu or auto, or --backend onnxruntime/python for a CPU box")
        lim = self.limits
        if min(lim.max_frames, lim.max_frame_side, lim.max_text_bytes) < 1:
            raise ConfigError(f"request limits must be positive, got {lim}")


def _batch_axis(spec: GraphSpec) -> str:
    """The dynamic axis every input and output of a graph starts with: Triton's batch dimension."""
    axes = {t.shape[0] for t in spec.inputs + spec.outputs}
    if len(axes) != 1 or next(iter(axes)) not in PROFILES:
        raise ServingError(f"graph {spec.name} has no common leading dynamic axis ({axes}); it cannot be batched")
    return next(iter(axes))


def _profile_max(entry: dict[str, Any], spec: GraphSpec) -> int:
    """Max size of the batch axis from the profile recorded in the bundle (TensorRT engines are built to it)."""
    first = spec.inputs[0].name
    return int(entry["profile"][first][2][0])


def graph_config(spec: GraphSpec, entry: dict[str, Any], dims: dict[str, int], cfg: RepoConfig,
                 ort_level: str = "extended"):
    """Triton's ModelConfig for one graph, from the I/O declaration and the bundle's manifest entry.

    ``ort_level`` is the ORT graph optimization level the bundle records for the graph (the runtime's own).
    """
    mc, _ = protobuf()
    s = cfg.graphs
    c = mc.ModelConfig(name=spec.name)
    if cfg.backend == "tensorrt":
        c.platform, c.backend, c.default_model_filename = "tensorrt_plan", "tensorrt", "model.plan"
    elif cfg.backend == "onnxruntime":
        c.platform, c.backend, c.default_model_filename = "onnxruntime_onnx", "onnxruntime", "model.onnx"
    else:
        c.backend = "python"
        c.parameters["intra_op_threads"].string_value = str(cfg.intra_op_threads)
        c.parameters["graph_optimization_level"].string_value = ort_level  # as the edge runtime's session
    _batch_axis(spec)
    profile_max = _profile_max(entry, spec)
    if cfg.backend == "tensorrt" and s.max_batch_size == 0:
        raise ConfigError(f"--max-batch 0 (no batching) with TensorRT would send {spec.name} all the rows of a batch "
                          f"of requests in one call, which can exceed the {profile_max} its engine's optimization "
                          f"profile takes and fail those requests; use --max-batch {profile_max} or less")
    if cfg.backend == "tensorrt" and s.max_batch_size is not None and s.max_batch_size > profile_max:
        raise ConfigError(f"--max-batch {s.max_batch_size} is above the batch size {profile_max} that {spec.name}'s "
                          "TensorRT engine was built for (its optimization profile), and Triton would refuse the "
                          f"model; use --max-batch {profile_max} or less, or re-export with a larger "
                          "[tensorrt.profiles.batch] max and rebuild the engines")
    c.max_batch_size = s.max_batch_size if s.max_batch_size is not None else profile_max
    for specs, add in ((spec.inputs, c.input.add), (spec.outputs, c.output.add)):
        for t in specs:
            io = add()
            io.name, io.data_type = t.name, getattr(mc, TRITON_DTYPES[t.dtype])
            io.dims.extend(triton_dims(t.shape, dims, c.max_batch_size > 0))
    if c.max_batch_size > 0:
        c.dynamic_batching.max_queue_delay_microseconds = s.max_queue_delay_us
    kind = s.kind if s.kind != "auto" else ("gpu" if cfg.backend == "tensorrt" else "cpu")
    group = c.instance_group.add()
    group.count = s.instances
    group.kind = mc.ModelInstanceGroup.KIND_GPU if kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    c.parameters["bundle_sha256"].string_value = entry["sha256"]  # the ONNX graph this model was built from
    return c


def router_config(dims: dict[str, int], cfg: RepoConfig, manifest_sha: str, model_frames: int):
    """Triton's ModelConfig for the ``trml`` router. ``model_frames``: the frames the temporal encoder takes
    (a client that sends only those of a long clip, picked as the router picks them, gets the same answer)."""
    mc, _ = protobuf()
    s = cfg.router
    c = mc.ModelConfig(name=ROUTER, backend="python", max_batch_size=s.max_batch_size or 0)
    add_router_io(c, dims["classes"], ragged=c.max_batch_size > 0)
    if c.max_batch_size > 0:
        c.dynamic_batching.max_queue_delay_microseconds = s.max_queue_delay_us
    group = c.instance_group.add()
    group.count, group.kind = s.instances, mc.ModelInstanceGroup.KIND_CPU
    params = {"max_frames_per_request": cfg.limits.max_frames, "max_frame_side": cfg.limits.max_frame_side,
              "max_text_bytes": cfg.limits.max_text_bytes, "model_frames": model_frames,
              "bundle_manifest_sha256": manifest_sha, "layout": cfg.resolved_layout}
    for k, v in params.items():
        c.parameters[k].string_value = str(v)
    return c


def ensemble_steps(scenario: str) -> tuple[str, ...]:
    """The graphs of a scenario's ensemble: its route without the graphs the router calls itself."""
    return tuple(g for g in ROUTES[scenario] if g not in ROUTER_CALLS)


def _model_file(bundle, graph: str, backend: str) -> tuple[Path, str]:
    """(source file, name in the version folder) of one graph for the chosen backend."""
    if backend != "tensorrt":
        return bundle.path(graph), "model.onnx"
    engines = bundle.manifest.get("engines") or {}
    if graph not in engines:
        have = ", ".join(sorted(engines)) or "none"
        raise ServingError(f"bundle {bundle.root} has no TensorRT engine for {graph} (engines: {have}); build them "
                           f"on the target GPU with `trml-edge build-engines {bundle.root}`, then run triton build "
                           "there, or use --backend onnxruntime or python")
    return bundle.root / engines[graph]["file"], "model.plan"


def _plan_versions(bundle) -> dict[str, dict[str, Any]]:
    """Per graph: the TensorRT version its plan was built with and the GPU architecture it was built for (``sm87``),
    both of which ``serve`` checks (serving/plans.py)."""
    engines = bundle.manifest.get("engines") or {}
    return {g: {"version": str(e.get("tensorrt", "")), "compute_capability": e.get("compute_capability")}
            for g, e in engines.items()}


def fused_graph_limits(bundle, cfg: RepoConfig) -> dict[str, int]:
    """Per graph, the most rows the fused router gives one session run: ``--max-batch`` if set, else the bundle's
    profile max of the batch axis (0: no limit)."""
    return {g: int(cfg.graphs.max_batch_size if cfg.graphs.max_batch_size is not None
                   else _profile_max(bundle.graphs[g], GRAPHS[g])) for g in GRAPH_NAMES}


def _router_record(cfg: RepoConfig, bundle, manifest_sha: str, copies: dict[str, str]) -> dict[str, Any]:
    """What both layouts' ``router.json`` hold: the layout, the bundle's identity, task, preprocessing, limits."""
    manifest = bundle.manifest
    tok = manifest["tokenizer"]
    return {
        "format": "trml-edge-triton-router", "format_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "trml_edge": trml_edge.__version__, "layout": cfg.resolved_layout, "backend": cfg.backend,
        "bundle": {"path": str(bundle.root.resolve()), "manifest_sha256": manifest_sha,
                   "recipe": manifest.get("recipe"), "created": manifest.get("created"),
                   "precision": {g: e["precision"] for g, e in bundle.graphs.items()}},
        "task": manifest["model"]["task"], "dims": manifest["model"]["dims"], "preprocess": manifest["preprocess"],
        "tokenizer": {"file": tok["file"], "sha256": tok["sha256"], "context_length": tok["context_length"]},
        "limits": asdict(cfg.limits), "core_modules": copies,
    }


def _graph_models(tmp: Path, bundle, cfg: RepoConfig) -> dict[str, int]:
    """The ensemble layout's model per graph and ensemble per scenario; each graph's max batch."""
    dims = bundle.manifest["model"]["dims"]
    graph_max = {}
    for name in GRAPH_NAMES:
        spec, entry = GRAPHS[name], bundle.graphs[name]
        src, filename = _model_file(bundle, name, cfg.backend)
        version = tmp / name / "1"
        version.mkdir(parents=True)
        shutil.copyfile(src, version / filename)
        if cfg.backend == "python":
            shutil.copyfile(templates_dir() / "graph_python" / "model.py", version / "model.py")
        config = graph_config(spec, entry, dims, cfg, bundle.ort_level(name))
        graph_max[name] = config.max_batch_size
        write_config(config, tmp / name / "config.pbtxt")
    for scenario, name in ENSEMBLES.items():
        write_ensemble(tmp, name, ensemble_steps(scenario), dims, graph_max)
    return graph_max


def settings_of(cfg: RepoConfig) -> dict[str, Any]:
    """The settings a repository was built with (everything but the bundle and the paths): an update builds the
    new bundle's version with the same ones."""
    d = asdict(cfg)
    for k in ("bundle", "out", "force"):
        d.pop(k)
    d["layout"] = cfg.resolved_layout
    return d


def config_from_settings(settings: dict[str, Any], bundle: str, out: str) -> RepoConfig:
    from trml_edge.serving.stream_repo import StreamSettings

    s = dict(settings)
    stream = s.pop("stream", None)
    return RepoConfig(bundle=bundle, out=out, graphs=ModelSettings(**s.pop("graphs")),
                      router=ModelSettings(**s.pop("router")), limits=RequestLimits(**s.pop("limits")),
                      stream=StreamSettings(**stream) if stream else None, **s)


def bundle_identity(bundle, manifest_sha: str) -> dict[str, Any]:
    """What a version record says of its bundle."""
    m = bundle.manifest
    return {"path": str(bundle.root.resolve()), "manifest_sha256": manifest_sha, "task": m["model"]["task"],
            "classes": int(m["model"]["dims"].get("classes", 1)), "recipe": m.get("recipe"),
            "created": m.get("created"), "precision": {g: e["precision"] for g, e in bundle.graphs.items()}}


def record_version_one(tmp: Path, cfg: RepoConfig, bundle: dict[str, Any]) -> None:
    """A new repository serves version 1 by name: each router's config keeps a copy in its version folder and
    selects it (``version_policy: specific [1]``), and ``trml_versions.json`` records it."""
    from trml_edge.serving import versions as v

    for router in v.ROUTERS:
        cfg_file = tmp / router / "config.pbtxt"
        if cfg_file.is_file():
            text = cfg_file.read_text(encoding="utf-8")
            (tmp / router / "1" / v.CONFIG_COPY).write_text(text, encoding="utf-8")
            cfg_file.write_text(v.with_version_policy(text, 1), encoding="utf-8")
    graph_models = sorted(p.name for p in tmp.iterdir() if (p / "config.pbtxt").is_file() and p.name not in v.ROUTERS)
    v.write_state(tmp, v.initial_state(cfg.resolved_layout, settings_of(cfg), bundle, graph_models))


def build_repository(cfg: RepoConfig) -> Path:
    """Generate the repository ``cfg.out`` from the (hash-checked) bundle ``cfg.bundle``."""
    from trml_edge.runtime.bundle import MANIFEST, load_bundle, sha256_file

    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not cfg.force:
        raise ServingError(f"{out} already exists; choose another --out or pass --force to replace it")
    bundle = load_bundle(cfg.bundle)  # every sha256 checked before anything is copied
    manifest = bundle.manifest
    dims = manifest["model"]["dims"]
    missing = set(GRAPH_NAMES) - set(bundle.graphs)
    if missing:
        raise ServingError(f"bundle {bundle.root} lacks graphs {sorted(missing)}; re-export it")
    manifest_sha = sha256_file(bundle.root / MANIFEST)
    fused = cfg.resolved_layout == "fused"
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        version = tmp / ROUTER / "1"
        if fused:
            graph_max = fused_graph_limits(bundle, cfg)
            copies = copy_router_code(version, ROUTER, RUNTIME_MODULES, listed_in=ROUTER_FILE, bls=False)
            copy_bundle(bundle, version / BUNDLE_DIR)
            router = {**_router_record(cfg, bundle, manifest_sha, copies), "bundle_dir": BUNDLE_DIR,
                      "threads": cfg.intra_op_threads, "graph_max_batch": graph_max}
        else:
            graph_max = _graph_models(tmp, bundle, cfg)
            copies = copy_router_code(version, ROUTER, listed_in=ROUTER_FILE)
            tok = manifest["tokenizer"]
            (version / Path(tok["file"]).parent).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle.root / tok["file"], version / tok["file"])
            shutil.copyfile(bundle.root / MANIFEST, version / "bundle_manifest.json")
            router = {
                **_router_record(cfg, bundle, manifest_sha, copies),
                "graph_models": {g: g for g in GRAPH_NAMES}, "graph_max_batch": graph_max,
                "image_encoder": {"model": "image_encoder", "input": GRAPHS["image_encoder"].inputs[0].name,
                                  "output": GRAPHS["image_encoder"].outputs[0].name,
                                  "max_batch": graph_max["image_encoder"]},
                "ensembles": {s: {"model": ENSEMBLES[s],
                                  "inputs": [t.name for t in ensemble_io(ensemble_steps(s))[0]],
                                  "output": ensemble_io(ensemble_steps(s))[1][0].name,
                                  "max_batch": ensemble_batch(ensemble_steps(s), graph_max),
                                  "steps": list(ensemble_steps(s))} for s in SCENARIOS},
                "tensorrt": _plan_versions(bundle) if cfg.backend == "tensorrt" else {},
            }
        (version / ROUTER_FILE).write_text(json.dumps(router, indent=2) + "\n", encoding="utf-8")
        write_config(router_config(dims, cfg, manifest_sha, int(bundle.preprocess["max_frames"])),
                 tmp / ROUTER / "config.pbtxt")
        from trml_edge.serving.stream_repo import add_stream_router  # the stateful stream router

        add_stream_router(tmp, cfg, bundle, graph_max, version / BUNDLE_DIR if fused else None)
        record_version_one(tmp, cfg, bundle_identity(bundle, manifest_sha))
        publish_dir(tmp, out, cfg.force, ServingError, "repository")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
