"""The ``tensorrt-engines`` backend of ``profile``: a bundle's TensorRT engines run by the shipped pipeline.

``EnginePipeline`` is the runtime's ``Pipeline`` (same routing, preprocessing, tokenizer and numpy glue)
with each graph call going to that graph's engine through ``trml_edge.export.trt_runner.EngineRunner``
(TensorRT's Python API + cuda-python). A graph's time is measured around the whole call: host-to-device
copies, the engine, device-to-host copies and the stream synchronization, so the per-graph breakdown and
the end-to-end time are what a request pays on the device. On a machine without a GPU, TensorRT or engines
that match it, ``engine_backends`` says why, and the report keeps a SKIPPED row with that reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trml_edge.profile.timing import TimedPipeline
from trml_edge.runtime.bundle import Bundle, sha256_file

BACKEND = "tensorrt-engines"


class EnginePipeline(TimedPipeline):
    label = BACKEND

    def __init__(self, bundle: Bundle, trt, threads: int = 0):
        super().__init__(bundle, threads=threads)
        self.trt = trt
        self.runners: dict[str, Any] = {}

    def max_batch(self, frames: int) -> int:
        """The largest request batch whose every graph call fits the engines' optimization profiles (the image
        encoder sees batch x frames frames at once)."""
        limits = axis_limits(self.bundle)
        return max(0, min(limits.get("batch", 1 << 30), limits.get("frames", 1 << 30) // max(frames, 1)))

    def call(self, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        from trml_edge.export.trt_runner import EngineRunner

        runner = self.runners.get(graph)
        if runner is None:  # created on the first (warm-up) call, so loading is never timed
            runner = self.runners[graph] = EngineRunner(self.trt, self.bundle.root / self.bundle.manifest[
                "engines"][graph]["file"])
        return runner.run(feeds)[self.bundle.graphs[graph]["outputs"][0]["name"]]

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()
        self.runners = {}


def axis_limits(bundle: Bundle) -> dict[str, int]:
    """Per dynamic axis, the smallest profile max over the graphs (what every engine accepts)."""
    out: dict[str, int] = {}
    for entry in bundle.graphs.values():
        for t in entry["inputs"]:
            hi = entry["profile"][t["name"]][2]
            for i, d in enumerate(t["shape"]):
                if isinstance(d, str):
                    out[d] = min(out.get(d, hi[i]), hi[i])
    return out


def engine_problem(bundle: Bundle, trt_version: str, sm: str) -> str | None:
    """Why this bundle's engines cannot run here (None: they can): missing, stale or from another GPU/TensorRT."""
    engines = bundle.manifest.get("engines") or {}
    missing = [g for g in bundle.graphs if g not in engines]
    if missing:
        return (f"no engine for {', '.join(missing)}: build them on this GPU with `trml-edge build-engines "
                f"{bundle.root}`")
    for g, e in engines.items():
        if e.get("tensorrt") != trt_version or e.get("compute_capability") != sm:
            return (f"{g}'s engine was built for {e.get('compute_capability')} with TensorRT {e.get('tensorrt')}, "
                    f"this is {sm} with TensorRT {trt_version}: rebuild with `trml-edge build-engines {bundle.root}`")
        path = bundle.root / e["file"]
        if not path.is_file() or sha256_file(path) != e.get("sha256"):
            return f"{path} is missing or does not match its sha256: rebuild with `trml-edge build-engines`"
        if bundle.graphs[g].get("sha256") and e.get("parity") is None:
            return f"{g}'s engine has no parity record: rebuild with this version's `trml-edge build-engines`"
    return None


def engine_backends(bundles: dict[str, Bundle]) -> tuple[Any, dict[str, str], str | None]:
    """(tensorrt module or None, {label: why its engines cannot run}, why none can run here or None)."""
    labels_with = [k for k, b in bundles.items() if b.manifest.get("engines")]
    if not labels_with:
        return None, {}, ("no bundle has TensorRT engines (build them with `trml-edge build-engines BUNDLE` on the "
                          "target GPU)")
    from trml_edge.errors import MissingDependencyError
    from trml_edge.export.tensorrt import _trt
    from trml_edge.export.trt_runner import probe_gpu

    try:
        trt = _trt()
    except MissingDependencyError as e:
        return None, {}, f"bundles {labels_with} have engines, but {e}"
    gpu, why = probe_gpu()
    if gpu is None:
        return None, {}, f"bundles {labels_with} have engines, but {why}"
    problems = {k: engine_problem(b, trt.__version__, gpu["sm"]) for k, b in bundles.items()}
    return trt, {k: p for k, p in problems.items() if p}, None


def engine_predict(pipe: EnginePipeline):
    """A ``Predict`` (arrays, has_visual, has_text) -> predictions that runs the engines."""
    batch = pipe.max_batch(int(pipe.bundle.preprocess["max_frames"]))
    return lambda a, hv, ht: pipe.predict_batch(a.frames, a.frame_mask, list(a.texts), hv, ht, batch=batch)
