"""``profile``: the latency x accuracy matrix of one or more bundles, and the per-graph recommendation.

Cells: bundle (precision) x backend x scenario x batch (or concurrency, for a live Triton endpoint).
Backends: PyTorch eager FP32 from the bundles' source run (the reference, when torch is installed), ONNX
Runtime CPU, ONNX Runtime's CUDA and TensorRT execution providers where present, the bundles' own TensorRT
engines (``tensorrt-engines``: built by ``trml-edge build-engines``, run on this GPU), and ``--url``'s Triton
server. What cannot run here is reported as SKIPPED with the reason. When every bundle's engines run here,
the engines' per-graph times rank the recommendation's candidates and the engines score them, so the
recommended recipe is measured on the target runtime.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trml_edge.errors import ConfigError
from trml_edge.graphs import GRAPH_NAMES
from trml_edge.profile import timing
from trml_edge.profile.engines import BACKEND as ENGINES, EnginePipeline, engine_backends, engine_predict
from trml_edge.profile.report import SCHEMA, SCHEMA_VERSION, environment, markdown
from trml_edge.routing import ROUTES, SCENARIOS
from trml_edge.runtime.bundle import Bundle, load_bundle

GPU_PROVIDERS = {"ort-cuda": "CUDAExecutionProvider", "ort-tensorrt": "TensorrtExecutionProvider"}


@dataclass
class ProfileConfig:
    bundles: list[str]
    out: str
    data: str | None = None  # dataset directory: accuracy per scenario and the recommendation
    url: str | None = None  # a live Triton endpoint, HOST:PORT (HTTP)
    url_bundle: str = "served"  # what the server at --url serves, for the report's bundle column
    batches: list[int] = field(default_factory=lambda: [1, 8])
    concurrency: list[int] = field(default_factory=lambda: [1, 8])
    budget: str | None = None  # "acc2=0.01,mae=0.05"; None: the task's default
    min_time: float = 1.0  # seconds each configuration runs, at least
    min_runs: int = 10  # runs each configuration makes, at least
    warmup: int = 3
    threads: int = 0  # intra-op threads for ORT and PyTorch alike (0: every core)
    torch: bool = True  # time PyTorch eager as the reference (needs the [train] extra)
    frames: int | None = None  # frames per clip in the timed requests (default: the model's max_frames)
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        if not self.bundles:
            raise ConfigError("profile needs at least one bundle")
        if not self.batches or min(self.batches) < 1 or not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError("--batch and --concurrency need positive integers, for example --batch 1,8")
        if self.min_time <= 0 or self.min_runs < 3:
            raise ConfigError("--min-time must be > 0 s and --min-runs at least 3 (p99 needs some runs)")


def _labels(bundles: list[Bundle]) -> dict[str, Bundle]:
    out = {}
    for b in bundles:
        label = b.root.name
        while label in out:
            label += "'"
        out[label] = b
    return out


def _precisions(b: Bundle) -> dict[str, str]:
    return {g: e["precision"] for g, e in b.graphs.items()}


def _clean(x: Any) -> Any:
    """Strict JSON: NaN and infinities become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


class _Progress:
    def __init__(self, enabled: bool, total: int):
        self.p = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                              TimeElapsedColumn())
            self.task = self.p.add_task("profile", total=total)

    def __enter__(self):
        if self.p:
            self.p.start()
        return self

    def __exit__(self, *exc):
        if self.p:
            if exc[0] is None:  # the recommendation may stop before its worst-case number of trials
                self.p.update(self.task, completed=self.p.tasks[0].total, description="profile done")
            self.p.stop()

    def step(self, what: str, n: int = 1) -> None:
        if self.p:
            self.p.update(self.task, advance=n, description=what)

    def grow(self, n: int) -> None:
        if self.p:
            self.p.update(self.task, total=self.p.tasks[0].total + n)


def profile(cfg: ProfileConfig) -> dict[str, Any]:
    """Measure, write REPORT/report.json, report.md and the charts; return the report."""

    from trml_edge.profile import accuracy as acc_mod
    from trml_edge.profile.flops import graph_flops, matmul_peak

    cfg.validate()
    import sys

    # PyTorch's OpenMP threads busy-wait by default; between interleaved ORT runs on a shared machine that
    # made eager 10-100x slower than it is. Passive waiting only works if set before torch is first imported.
    omp = os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE") if "torch" not in sys.modules else \
        os.environ.get("OMP_WAIT_POLICY", "unset (torch was imported before profile)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    bundles = _labels([load_bundle(p) for p in cfg.bundles])
    first = next(iter(bundles.values()))
    runs = {b.manifest["model"].get("trml_config_sha256") for b in bundles.values()}
    threads = cfg.threads or os.cpu_count() or 1
    env = environment(threads)
    rep: dict[str, Any] = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {**{k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
                     "min_time_s": cfg.min_time, "threads": threads,
                     "breakdown_tolerance": {"relative": timing.BREAKDOWN_REL_TOL,
                                             "absolute_ms": timing.BREAKDOWN_ABS_TOL_MS},
                     "omp_wait_policy": omp,
                     "ort_session": "runtime.bundle.session_options: each graph's recorded optimization level "
                                    "(graphs.<g>.ort in the manifest), allow_spinning=0, as the runtime"},
        "environment": env,
        "bundles": {k: {"path": str(b.root), "precision": _precisions(b), "run": b.manifest["model"].get("run"),
                        "calibration": (b.manifest.get("calibration") or {}).get("path")}
                    for k, b in bundles.items()},
        "latency": [],
    }
    model, torch_reason = (None, "disabled (--no-torch)")
    if cfg.torch:
        model, torch_reason = acc_mod.torch_reference_model(first)
    if model is not None:
        import torch

        torch.set_num_threads(threads)
    peak = matmul_peak(threads)
    rep["matmul_peak"] = peak
    frames = cfg.frames or int(first.preprocess["max_frames"])
    size = int(first.preprocess["image_size"])

    # --- which backends run here ---
    import onnxruntime as ort

    available = ort.get_available_providers()
    backends: dict[str, tuple[str, ...]] = {"ort-cpu": ("CPUExecutionProvider",)}
    for name, prov in GPU_PROVIDERS.items():
        if prov in available:
            backends[name] = (prov, "CPUExecutionProvider")
        else:
            rep["latency"].append({"backend": name, "bundle": "all", "scenario": "all", "status": "SKIPPED",
                                   "reason": f"onnxruntime has no {prov} here (available: {', '.join(available)})"})
    trt, engine_skips, engines_reason = engine_backends(bundles)
    if engines_reason:
        rep["latency"].append({"backend": ENGINES, "bundle": "all", "scenario": "all", "status": "SKIPPED",
                               "reason": engines_reason})
    for label, why in engine_skips.items():
        rep["latency"].append({"backend": ENGINES, "bundle": label, "scenario": "all", "status": "SKIPPED",
                               "reason": why})
    if model is None:
        rep["latency"].append({"backend": "pytorch-eager", "bundle": "pytorch-fp32", "scenario": "all",
                               "status": "SKIPPED", "reason": torch_reason})
    if not cfg.url:
        rep["latency"].append({"backend": "triton", "bundle": cfg.url_bundle, "scenario": "all", "status": "SKIPPED",
                               "reason": "no --url HOST:PORT given"})

    pipes: dict[tuple[str, str], timing.TimedPipeline] = {}
    for label, b in bundles.items():
        for backend, providers in backends.items():
            pipes[backend, label] = timing.TimedPipeline(b, providers, cfg.threads)
        if trt is not None and label not in engine_skips:
            pipes[ENGINES, label] = EnginePipeline(b, trt, cfg.threads)
    if model is not None:
        pipes["pytorch-eager", "pytorch-fp32"] = timing.TorchPipeline(first, model, cfg.threads)
    # the backend whose per-graph medians rank the recommendation: the engines when all of them run here
    rank_backend = ENGINES if trt is not None and not engine_skips else "ort-cpu"
    rep["settings"]["recommendation_ranked_by"] = rank_backend
    fp32_bundle = next((b for b in bundles.values() if set(_precisions(b).values()) == {"fp32"}), None)

    n_groups = len(SCENARIOS) * len(cfg.batches)
    accuracy_steps = (1 + len(bundles)) if cfg.data else 0
    triton_steps = len(SCENARIOS) * len(cfg.concurrency) if cfg.url else 0
    with _Progress(cfg.progress, n_groups + accuracy_steps + triton_steps) as bar:
        # --- local timing: interleaved per (scenario, batch) ---
        graph_ms = {label: {g: 0.0 for g in GRAPH_NAMES} for label in bundles}
        for scenario in SCENARIOS:
            for batch in cfg.batches:
                req = timing.make_requests(scenario, batch, frames, size, cfg.seed)
                fns = {}
                for (backend, label), p in pipes.items():
                    if isinstance(p, EnginePipeline) and batch > p.max_batch(frames):
                        rep["latency"].append({"backend": backend, "bundle": label, "scenario": scenario,
                                               "batch": batch, "status": "SKIPPED", "reason": (
                                                   f"batch {batch} x {frames} frames is outside the engines' "
                                                   f"optimization profiles (largest batch {p.max_batch(frames)}); "
                                                   "export with a recipe whose [tensorrt.profiles] cover it")})
                        continue
                    fns[backend, label] = timing.pipeline_call(p, req)
                res = timing.interleaved(fns, cfg.warmup, cfg.min_time, cfg.min_runs)
                for (backend, label), m in res.items():
                    pipe = pipes[backend, label]
                    lat = m.summary(batch)
                    ran = [g for g in ROUTES[scenario]]
                    graphs = {}
                    src = bundles.get(label) or fp32_bundle
                    for g in ran:
                        ms = lat["breakdown_ms"].get(g, 0.0)
                        row = {"ms": ms}
                        if src is not None:
                            fl = graph_flops(src.path(g), pipe.shapes[g])
                            gfs = fl["flops"] / (ms / 1e3) / 1e9 if ms > 0 else 0.0
                            row.update(flops=fl["flops"], counter=fl["counter"], gflops_per_s=gfs,
                                       pct_of_peak=100.0 * gfs / peak["gflops"])
                        graphs[g] = row
                        if backend == rank_backend:  # medians rank the options (robust to one load spike)
                            graph_ms[label][g] += lat["breakdown_p50_ms"].get(g, 0.0)
                    rep["latency"].append({"backend": backend, "bundle": label, "scenario": scenario,
                                           "batch": batch, "status": "OK", "graphs_run": ran, "latency": lat,
                                           "graphs": graphs})
                bar.step(f"timed {scenario} batch {batch}")

        # --- Triton ---
        if cfg.url:
            from trml_edge.serving.client import TritonClient

            probe = TritonClient(cfg.url)
            try:
                layout = probe.layout()  # which repository layout the server's figures are of
            finally:
                probe.close()
            rep["settings"]["triton_layout"] = layout
            for scenario in SCENARIOS:
                req = timing.make_requests(scenario, 1, frames, size, cfg.seed)
                for c in cfg.concurrency:
                    lat = timing.triton_load(cfg.url, req, c, cfg.warmup, cfg.min_time, cfg.min_runs)
                    rep["latency"].append({"backend": "triton", "bundle": cfg.url_bundle, "scenario": scenario,
                                           "batch": 1, "concurrency": c, "status": "OK", "url": cfg.url,
                                           "layout": layout, "latency": lat,
                                           "breakdown": "n/a: the graphs run inside the server (Triton's "
                                           "statistics extension has per-model times)"})
                    bar.step(f"triton {scenario} x{c}")

        # --- accuracy and recommendation ---
        engine_pipes = {label: p for (backend, label), p in pipes.items() if backend == ENGINES}
        rep["accuracy"], rep["recommendation"] = _accuracy(cfg, bundles, first, model, torch_reason, graph_ms,
                                                             runs, out, bar, size, frames, engine_pipes,
                                                             trt if rank_backend == ENGINES else None)
        if rep["recommendation"].get("status") == "ok":
            rep["recommendation"]["ranked_by"] = rank_backend
            _time_recommended(cfg, rep, bundles, first, frames, size, trt if rank_backend == ENGINES else None)
    for p in pipes.values():
        if isinstance(p, EnginePipeline):
            p.close()  # device buffers and streams back to the GPU
    charts = _charts(rep, out)
    rep["charts"] = charts
    rep = _clean(rep)
    (out / "report.json").write_text(json.dumps(rep, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(rep), encoding="utf-8")
    return rep


def _accuracy(cfg, bundles, first, model, torch_reason, graph_ms, runs, out, bar, size, frames, engine_pipes=None,
              trt=None):
    from trml_edge.profile import accuracy as acc_mod
    from trml_edge.profile.recommend import mixable, recommend, write_recipe

    if not cfg.data:
        reason = "no --data DIR given: accuracy is only ever measured, never assumed"
        return {"status": "n/a", "reason": reason}, {"status": "n/a", "reason": reason}
    if model is None:
        reason = f"no FP32 reference: {torch_reason}"
        return {"status": "n/a", "reason": reason}, {"status": "n/a", "reason": reason}
    task = first.task
    budget = acc_mod.parse_budget(cfg.budget, task)
    arrays = acc_mod.load_test_split(cfg.data, first)
    ref = acc_mod.Reference.build(arrays, task, acc_mod.torch_predict_fn(model), "pytorch-fp32", cfg.seed)
    bar.step("accuracy: pytorch-fp32 reference")
    headline = "has0_acc2" if task == "regression" else "acc"
    # the reference against itself: its metrics for the chart, and a zero delta by construction
    rows = [{"bundle": ref.name, **r} for r in ref.score(budget, preds=ref.preds)]
    for label, b in bundles.items():
        for r in ref.score(budget, acc_mod.bundle_predict(b, cfg.threads)):
            rows.append({"bundle": label, **r})
        bar.step(f"accuracy: {label}")
    # the engines' own accuracy: same samples, masks and reference, run through each bundle's engines
    engine_rows = [{"bundle": label, "backend": ENGINES, **r}
                   for label, pipe in (engine_pipes or {}).items() for r in ref.score(budget, engine_predict(pipe))]
    accuracy = {"status": "ok", "reference": ref.name, "budget": budget, "headline_metric": headline,
                "samples": len(arrays), "seed": cfg.seed, "rows": rows, "engine_rows": engine_rows}
    if len(runs) != 1:
        return accuracy, {"status": "n/a", "reason": "the bundles come from different runs, so their graphs "
                                                     "cannot be mixed"}

    def score(picks):
        comp = acc_mod.composite({g: bundles[o.label] for g, o in picks.items()}, first)
        if trt is None:
            return ref.score(budget, acc_mod.bundle_predict(comp, cfg.threads))
        pipe = EnginePipeline(comp, trt, cfg.threads)  # candidates scored on the engines they would ship as
        try:
            return ref.score(budget, engine_predict(pipe))
        finally:
            pipe.close()

    bar.grow(len(GRAPH_NAMES) * 2 + 1)
    keep, left_out = mixable(bundles)
    rec = recommend(keep, graph_ms, score, tick=lambda: bar.step("recommendation: scoring a candidate"))
    rec["left_out"] = left_out
    if rec["status"] == "ok":
        rec["recipe"] = str(write_recipe(rec, keep, budget, out / "recommended.toml"))
        rec["composite"] = {g: o.label for g, o in rec.pop("picks").items()}
    return accuracy, rec


def _time_recommended(cfg, rep, bundles, first, frames, size, trt=None) -> None:
    """The recommended mix against the most precise bundle, interleaved, per scenario at the first batch."""
    from trml_edge.profile import accuracy as acc_mod

    rec = rep["recommendation"]
    comp = acc_mod.composite({g: bundles[label] for g, label in rec["composite"].items()}, first)
    base_label = min(bundles, key=lambda k: sum(p != "fp32" for p in _precisions(bundles[k]).values()))
    rec["baseline"] = base_label
    batch = cfg.batches[0]
    rows = []
    for scenario in SCENARIOS:
        req = timing.make_requests(scenario, batch, frames, size, cfg.seed)
        if trt is None:
            pipes = {"recommended": timing.TimedPipeline(comp, threads=cfg.threads),
                     "baseline": timing.TimedPipeline(bundles[base_label], threads=cfg.threads)}
        else:
            pipes = {"recommended": EnginePipeline(comp, trt, cfg.threads),
                     "baseline": EnginePipeline(bundles[base_label], trt, cfg.threads)}
        res = timing.interleaved({k: timing.pipeline_call(p, req) for k, p in pipes.items()}, cfg.warmup,
                                 cfg.min_time, cfg.min_runs)
        for p in pipes.values():
            if isinstance(p, EnginePipeline):
                p.close()
        r, b = res["recommended"].summary(batch), res["baseline"].summary(batch)
        rows.append({"scenario": scenario, "batch": batch, **r, "baseline_p50_ms": b["p50_ms"],
                     "speedup": b["p50_ms"] / r["p50_ms"]})
    rec["latency"] = rows


def _charts(rep, out: Path) -> list[str]:
    from trml_edge.profile import charts

    charts.pareto(rep, out / "pareto.png")
    charts.breakdown(rep, out / "breakdown.png")
    return ["pareto.png", "breakdown.png"]
