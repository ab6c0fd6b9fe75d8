"""Evaluation under a test-time missing-modality protocol, and the comparison of TRML with its baselines.

The methods compared on the same split and the same test masks:

* ``TRML``: trained with missing modalities; a missing embedding is generated from the present one.
* ``zero-fill`` / ``mean-fill``: the complete-modality model; a missing embedding becomes 0 / the training
  mean of that embedding.
* ``modality dropout``: trained with the same missing protocol as TRML, missing embeddings zeroed, no
  generators and no SML.
* ``upper bound``: the complete-modality model given every modality (the test masks are ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trml_edge.config import MissingConfig
from trml_edge.data.corpus import ClipArrays
from trml_edge.metrics import json_ready, task_metrics
from trml_edge.missing import sample_masks
from trml_edge.model.checkpoint import load_run
from trml_edge.model.trml import TRML
from trml_edge.train.features import SplitTensors, prepare_inputs, split_tensors
from trml_edge.train.loop import predict

TEST_SEED = 2024  # salt for the test masks: every method sees the same missing samples


def evaluate_model(model: TRML, data: SplitTensors, missing: MissingConfig, fill: str | None = None,
                   seed: int = 0) -> dict[str, float]:
    """Metrics of ``model`` on ``data`` with the test masks drawn from ``(seed, rate)``."""
    has_v, has_t = sample_masks(len(data), missing, [seed, TEST_SEED, int(round(missing.rate * 1000))])
    model.eval()
    pred = predict(model, data, torch.from_numpy(has_v), torch.from_numpy(has_t), fill)
    return task_metrics(model.cfg.head.task, pred, data.labels.numpy())


def evaluate_run(run: Path, data: Path, missing: MissingConfig, fill: str | None = None, seed: int = 0,
                 split: str = "test") -> dict[str, Any]:
    """Load a run and evaluate it on a split of ``data`` under the ``missing`` protocol.

    The result is strict JSON: a metric undefined on the split is ``None`` and ``undefined`` says why.
    """
    model = load_run(run)
    arrays, inputs = prepare_inputs(model, data, splits=(split,))
    arrays = arrays[split]
    metrics, undefined = json_ready(evaluate_model(model, inputs[split], missing, fill, seed))
    return {"run": str(run), "split": split, "n": len(arrays), "skipped_clips": len(arrays.skipped),
            "missing": {"rate": missing.rate, "modality": missing.modality}, "fill": fill or model.fill,
            "metrics": metrics, "undefined": undefined}


@dataclass
class Method:
    name: str
    model: TRML
    fill: str
    complete_input: bool = False  # the upper bound: ignore the test masks


def methods(trml: TRML, complete: TRML, dropout: TRML) -> list[Method]:
    return [
        Method("TRML", trml, "generator"),
        Method("zero-fill", complete, "zero"),
        Method("mean-fill", complete, "mean"),
        Method("modality dropout", dropout, "zero"),
        Method("upper bound", complete, "zero", complete_input=True),
    ]


def compare(ms: list[Method], test: ClipArrays, rates: list[float], modality: str = "either",
            seed: int = 0, inputs: dict[int, SplitTensors] | None = None) -> list[dict[str, Any]]:
    """One row per (rate, method), every method on the same test masks.

    ``inputs`` may map ``id(model)`` to that model's precomputed test inputs (shared by the demo).
    """
    inputs = dict(inputs or {})
    rows = []
    for rate in rates:
        for m in ms:
            if id(m.model) not in inputs:
                inputs[id(m.model)] = split_tensors(m.model, test)
            cfg = MissingConfig(rate=0.0 if m.complete_input else rate, modality=modality)
            metrics = evaluate_model(m.model, inputs[id(m.model)], cfg, m.fill, seed)
            rows.append({"method": m.name, "test_missing_rate": rate, **metrics})
    return rows
