"""Latency measurement: interleaved rounds, percentiles, and a per-graph breakdown of the edge pipeline.

Configurations that are compared with each other (bundles and backends, for one scenario and batch) are
timed in interleaved rounds in one process, A, B, C, A, B, C, ..., as ``benchmarks/bench_export.py`` does:
a change of machine load hits all of them alike, so their *ratios* stay fair on a busy machine.

Every configuration is warmed up first, then run until it has run ``min_runs`` times and for ``min_time``
seconds. Each run of the pipeline records the time of every graph call, of preprocessing and of
tokenization; what is left (numpy glue: masks, copies, concatenation) is reported as ``other``.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from trml_edge.routing import COMPLETE, TEXT_MISSING, VISUAL_MISSING
from trml_edge.runtime.bundle import Bundle
from trml_edge.runtime.pipeline import Pipeline

# The measured parts (graphs + preprocess + tokenize) add up to a run's end-to-end time within this much
# (relative to the p50, or absolute, whichever is larger; checked on the median run); the remainder is the
# numpy glue between the graphs (the "other" row) plus the timer calls themselves.
BREAKDOWN_REL_TOL = 0.10
BREAKDOWN_ABS_TOL_MS = 0.2
HOST_PARTS = ("preprocess", "tokenize")
SENTENCES = (  # 10-20 tokens each: a typical utterance of the sentiment corpora
    "honestly i think the acting was really not very good overall to me",
    "the plot was great and i loved the ending",
    "it was boring at times but the music kept me watching until the end",
)
MASKS = {COMPLETE: (True, True), VISUAL_MISSING: (False, True), TEXT_MISSING: (True, False)}


def percentiles(seconds: list[float], batch: int = 1) -> dict[str, float]:
    """Latency percentiles in ms, mean, and throughput in samples/s (``batch`` samples per call)."""
    ms = np.asarray(seconds, np.float64) * 1e3
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return {"runs": int(len(ms)), "mean_ms": float(ms.mean()), "p50_ms": float(p50), "p90_ms": float(p90),
            "p95_ms": float(p95), "p99_ms": float(p99), "throughput_per_s": float(batch * 1e3 / ms.mean())}


class TimedPipeline(Pipeline):
    """The shipped ``Pipeline`` with a stopwatch on every graph call, preprocessing and tokenization.

    Graphs run on the runtime's own sessions (``Bundle.session``: each graph's recorded level, no spinning, so
    idle ORT pools do not steal the cores from the other configurations of an interleaved round).
    """

    label = "ort-cpu"

    def __init__(self, bundle: Bundle, providers: tuple[str, ...] = ("CPUExecutionProvider",), threads: int = 0):
        super().__init__(bundle, providers, threads)
        self.parts: dict[str, float] = defaultdict(float)  # stage -> seconds, since the last reset
        self.shapes: dict[str, dict[str, tuple[int, ...]]] = {}  # graph -> input shapes of its last call

    def call(self, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.bundle.session(graph, self.providers, self.threads).run(None, feeds)[0]  # the runtime's session

    def run(self, graph: str, **feeds: np.ndarray) -> np.ndarray:
        self.trace.append(graph)
        self.shapes[graph] = {k: tuple(v.shape) for k, v in feeds.items()}
        t0 = time.perf_counter()
        out = self.call(graph, feeds)
        self.parts[graph] += time.perf_counter() - t0
        return out

    def preprocess(self, frames: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = super().preprocess(frames)
        self.parts["preprocess"] += time.perf_counter() - t0
        return out

    def tokenize(self, texts: list[str]) -> np.ndarray:
        t0 = time.perf_counter()
        out = super().tokenize(texts)
        self.parts["tokenize"] += time.perf_counter() - t0
        return out

    def reset(self) -> None:
        self.parts = defaultdict(float)


class TorchPipeline(TimedPipeline):
    """PyTorch eager FP32, the reference: the same routing, preprocessing and tokenizer as the runtime, with
    each graph replaced by its PyTorch submodule from the bundle's source run (``graph_module``)."""

    label = "pytorch-eager"

    def __init__(self, bundle: Bundle, model, threads: int = 0):
        super().__init__(bundle, threads=threads)
        from trml_edge.export.onnx_export import graph_module
        from trml_edge.graphs import GRAPHS

        self.model = model.eval()
        self.modules = {g: graph_module(model, g) for g in GRAPHS}
        self.inputs = {g: [t.name for t in spec.inputs] for g, spec in GRAPHS.items()}

    def call(self, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.modules[graph](*[torch.from_numpy(feeds[k]) for k in self.inputs[graph]]).numpy()


@dataclass
class Requests:
    """A batch of synthetic requests for one scenario: what the pipeline and Triton get."""

    frames: np.ndarray  # (B, T, H, W, 3) uint8
    frame_mask: np.ndarray  # (B, T) bool
    texts: list[str]
    has_visual: np.ndarray  # (B,) bool
    has_text: np.ndarray  # (B,) bool


def make_requests(scenario: str, batch: int, frames: int, size: int, seed: int = 0) -> Requests:
    """Smooth random frames at the model's input size, ``frames`` per clip, and real-length sentences."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (batch, frames, 6, 6, 3)).astype(np.uint8)
    rep = -(-size // 6)
    pix = np.repeat(np.repeat(coarse, rep, axis=2), rep, axis=3)[:, :, :size, :size]
    hv, ht = MASKS[scenario]
    return Requests(np.ascontiguousarray(pix), np.ones((batch, frames), bool),
                    [SENTENCES[i % len(SENTENCES)] for i in range(batch)],
                    np.full(batch, hv), np.full(batch, ht))


@dataclass
class Measured:
    seconds: list[float] = field(default_factory=list)  # end to end, per call
    parts: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # stage -> per call

    def summary(self, batch: int) -> dict[str, Any]:
        out = percentiles(self.seconds, batch)
        parts = {k: float(np.mean(v) * 1e3) for k, v in self.parts.items()}
        parts["other"] = out["mean_ms"] - sum(parts.values())
        out["breakdown_ms"] = parts  # means: with "other" they add up to mean_ms
        out["breakdown_p50_ms"] = {k: float(np.median(v) * 1e3) for k, v in self.parts.items()}  # robust to spikes
        # per run: how far the measured parts fall short of that run's end-to-end time (the median run is
        # checked against the tolerance, so one preemption inside the numpy glue does not decide it)
        n = len(self.seconds)
        measured = np.sum([v for v in self.parts.values()], axis=0) if self.parts else np.zeros(n)
        residual = (np.asarray(self.seconds) - measured) * 1e3
        out["breakdown_residual_p50_ms"] = float(np.median(np.abs(residual)))
        out["breakdown_tolerance_ms"] = max(BREAKDOWN_REL_TOL * out["p50_ms"], BREAKDOWN_ABS_TOL_MS)
        out["breakdown_within_tolerance"] = bool(out["breakdown_residual_p50_ms"] <= out["breakdown_tolerance_ms"])
        return out


def pipeline_call(pipe: TimedPipeline, req: Requests) -> Callable[[], dict[str, float]]:
    """One timed unit: ``predict_batch`` on the whole request batch; returns the stage times of that call."""

    def fn() -> dict[str, float]:
        pipe.reset()
        pipe.predict_batch(req.frames, req.frame_mask, req.texts, req.has_visual, req.has_text,
                           batch=len(req.texts))
        return dict(pipe.parts)

    return fn


def interleaved(fns: dict[str, Callable[[], dict[str, float] | None]], warmup: int, min_time: float,
                min_runs: int, tick: Callable[[], None] | None = None, block_s: float = 0.0) -> dict[str, Measured]:
    """Time several configurations in interleaved rounds until each ran ``min_runs`` times and ``min_time``
    seconds in total. A function may return its stage times, which become that run's breakdown.

    ``block_s``: each configuration runs back to back for about this long per round (at most 50 calls, at least
    one) instead of once. Configurations in different processes (the runtime and a server) then do not evict
    each other's caches and thread pools on every call, which on a small machine inflates both (measured in
    docs/serving.md), while alternating blocks still spread the machine's drift over all of them."""
    per_call = {}
    for k, fn in fns.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        per_call[k] = (time.perf_counter() - t0) / max(warmup, 1)
    block = {k: max(1, min(50, int(block_s / max(t, 1e-6)))) if block_s > 0 else 1 for k, t in per_call.items()}
    res = {k: Measured() for k in fns}
    while any(len(m.seconds) < min_runs or sum(m.seconds) < min_time for m in res.values()):
        for k, fn in fns.items():
            for _ in range(block[k]):
                t0 = time.perf_counter()
                parts = fn()
                res[k].seconds.append(time.perf_counter() - t0)
                for stage, s in (parts or {}).items():
                    res[k].parts[stage].append(s)
        if tick is not None:
            tick()
    return res


def triton_load(url: str, req: Requests, concurrency: int, warmup: int, min_time: float,
                min_runs: int) -> dict[str, Any]:
    """``concurrency`` client threads (one client each) send one-sample requests back to back for
    ``min_time`` seconds; latency percentiles per request and throughput over the whole window."""
    from trml_edge.serving.client import TritonClient

    frames = req.frames[0] if req.has_visual[0] else None
    text = req.texts[0] if req.has_text[0] else None
    clients = [TritonClient(url) for _ in range(concurrency)]
    lat: list[list[float]] = [[] for _ in clients]
    errors: list[BaseException] = []
    try:
        for c in clients:
            for _ in range(warmup):
                c.infer(frames, text)
        deadline = [0.0]

        def worker(i: int) -> None:
            try:
                while time.perf_counter() < deadline[0] or len(lat[i]) < min_runs:
                    t0 = time.perf_counter()
                    clients[i].infer(frames, text)
                    lat[i].append(time.perf_counter() - t0)
            except BaseException as e:  # re-raised in the main thread below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
        start = time.perf_counter()
        deadline[0] = start + min_time
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        for c in clients:
            c.close()
    if errors:
        raise errors[0]
    all_lat = [x for per in lat for x in per]
    out = percentiles(all_lat)
    out["throughput_per_s"] = len(all_lat) / wall  # requests completed per second by all clients together
    return out
