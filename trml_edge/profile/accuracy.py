"""Accuracy per bundle and scenario, and its delta against PyTorch FP32 on the same samples and masks.

One source with the export gate: the masks come from ``parity.scenario_masks`` and the comparison from
``parity.compare_predictions``, the functions ``parity.end_to_end`` itself runs. The reference is the
bundle's source run in PyTorch eager FP32 (``parity.torch_predict``), so it needs the ``[train]`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from trml_edge.errors import ConfigError
from trml_edge.routing import SCENARIOS
from trml_edge.runtime.bundle import Bundle
from trml_edge.runtime.pipeline import Pipeline

Predict = Callable[[Any, np.ndarray, np.ndarray], np.ndarray]  # (arrays, has_visual, has_text) -> predictions

# budget key -> (metric, direction): the delta is "how much worse", so a positive delta costs accuracy
BUDGET_KEYS = {
    "regression": {"acc2": ("has0_acc2", "drop"), "mae": ("mae", "rise"), "f1": ("has0_f1", "drop"),
                   "corr": ("corr", "drop"), "pred": ("pred_max_abs", "abs")},
    "classification": {"acc": ("acc", "drop"), "f1": ("f1", "drop"), "pred": ("pred_max_abs", "abs")},
}
DEFAULT_BUDGET = {"regression": {"acc2": 0.01, "mae": 0.05}, "classification": {"acc": 0.01}}


def parse_budget(text: str | None, task: str) -> dict[str, float]:
    """``"acc2=0.01,mae=0.05"`` -> {"acc2": 0.01, "mae": 0.05}; None gives the task's default budget."""
    kind = "regression" if task == "regression" else "classification"
    if not text:
        return dict(DEFAULT_BUDGET[kind])
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in BUDGET_KEYS[kind]:
            raise ConfigError(f"--accuracy-budget: {item!r} is not KEY=VALUE with KEY one of "
                              f"{', '.join(BUDGET_KEYS[kind])} (a {kind} model)")
        try:
            out[key] = float(value)
        except ValueError as e:
            raise ConfigError(f"--accuracy-budget: {value!r} for {key} is not a number") from e
    return out


@dataclass
class Reference:
    """The FP32 reference predictions per scenario on one test split, computed once and shared."""

    arrays: Any  # ClipArrays of the test split
    task: str
    masks: dict[str, tuple[np.ndarray, np.ndarray]]
    preds: dict[str, np.ndarray]
    name: str

    @classmethod
    def build(cls, arrays, task: str, predict: Predict, name: str, seed: int = 0) -> Reference:
        from trml_edge.export.parity import scenario_masks

        masks = {s: scenario_masks(len(arrays), s, seed) for s in SCENARIOS}
        return cls(arrays, task, masks, {s: predict(arrays, *masks[s]) for s in SCENARIOS}, name)

    def score(self, budget: dict[str, float], predict: Predict | None = None,
              preds: dict[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
        """Per scenario: the task metrics of ``predict`` (or of ready ``preds`` per scenario) and of the
        reference, the deltas named by the budget keys (positive = worse), and whether every delta is within
        its budget."""
        from trml_edge.export.parity import Budget, compare_predictions

        kind = "regression" if self.task == "regression" else "classification"
        labels = np.asarray(self.arrays.labels)
        rows = []
        for s in SCENARIOS:
            got = preds[s] if preds is not None else predict(self.arrays, *self.masks[s])
            cmp = compare_predictions(self.task, self.preds[s], got, labels,
                                      Budget(np.inf, -1.0, np.inf, np.inf))  # the verdict is taken below
            deltas = {}
            for key, (metric, direction) in BUDGET_KEYS[kind].items():
                if direction == "abs":
                    deltas[key] = cmp["pred_max_abs"]
                elif direction == "drop":
                    deltas[key] = cmp["torch"][metric] - cmp["onnx"][metric]
                else:
                    deltas[key] = cmp["onnx"][metric] - cmp["torch"][metric]
            ok = all(deltas[k] <= v + 1e-12 for k, v in budget.items())
            rows.append({"scenario": s, "samples": cmp["samples"], "metrics": cmp["onnx"],
                         "reference_metrics": cmp["torch"], "delta": deltas,
                         "decision_agreement": cmp["decision_agreement"], "within_budget": bool(ok)})
        return rows


def load_test_split(data: str | Path, bundle: Bundle):
    """The test split of ``data`` decoded at the bundle's frame count and image size."""
    from trml_edge.data.corpus import load_split, read_corpus

    pre = bundle.preprocess
    return load_split(read_corpus(Path(data)), "test", int(pre["max_frames"]), int(pre["image_size"]))


def bundle_predict(bundle: Bundle, threads: int = 0) -> Predict:
    pipe = Pipeline(bundle, threads=threads)
    return lambda a, hv, ht: pipe.predict_batch(a.frames, a.frame_mask, list(a.texts), hv, ht)


def torch_reference_model(bundle: Bundle):
    """(model, None) from the bundle's source run, or (None, reason) when it cannot be had."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return None, "PyTorch is not installed (pip install 'trml-edge[train]'), so there is no FP32 reference"
    run = bundle.manifest["model"].get("run")
    if not run or not (Path(run) / "model.safetensors").is_file():
        return None, f"the bundle's source run {run!r} is not on this machine, so there is no FP32 reference"
    from trml_edge.model.checkpoint import load_run

    return load_run(Path(run)).eval(), None


def torch_predict_fn(model) -> Predict:
    from trml_edge.export.parity import torch_predict

    return lambda a, hv, ht: torch_predict(model, a, hv, ht)


def composite(picks: dict[str, Bundle], base: Bundle) -> Bundle:
    """A bundle whose graphs come from several verified bundles of the same run (files by absolute path)."""
    graphs, engines = {}, {}
    for g, b in picks.items():
        if not b.verified:
            raise ConfigError(f"bundle {b.root} was not verified; load it with load_bundle(path)")
        entry = dict(b.graphs[g])
        entry["file"] = str((b.root / entry["file"]).resolve())
        graphs[g] = entry
        engine = (b.manifest.get("engines") or {}).get(g)
        if engine is not None:  # the graph's TensorRT engine travels with it (the tensorrt-engines backend)
            engines[g] = {**engine, "file": str((b.root / engine["file"]).resolve())}
    manifest = {**base.manifest, "graphs": graphs, "engines": engines}
    return Bundle(base.root, manifest, verified=True)
