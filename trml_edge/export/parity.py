"""Parity gates: every converted graph, and the whole exported pipeline, against PyTorch FP32.

Per graph: max-abs error and cosine similarity on held-out inputs. End to end: the task metrics of the
ONNX pipeline (``trml_edge.runtime.Pipeline``, the code that ships) against the PyTorch model under each
missing-modality scenario. Every check is compared with a budget for its precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from trml_edge.config import MissingConfig
from trml_edge.errors import ConfigError
from trml_edge.export.calibration import graph_inputs
from trml_edge.graphs import GRAPHS
from trml_edge.metrics import output_error
from trml_edge.export.onnx_export import graph_module
from trml_edge.metrics import task_metrics
from trml_edge.missing import sample_masks
from trml_edge.model.trml import TRML
from trml_edge.routing import trim_to_eot

PRECISION_RANK = {"fp32": 0, "fp16": 1, "int8": 2}
SCENARIO_MASKS = {"complete": None, "visual_missing": "visual", "text_missing": "text"}


@dataclass(frozen=True)
class Budget:
    max_abs: float  # largest |onnx - torch| over every output element
    min_cos: float  # smallest cosine similarity between output rows (whole batch for 1-wide outputs)
    acc_drop: float  # end to end: largest fall of Has0 Acc-2 (regression) or accuracy (classification)
    mae_rise: float  # end to end: largest rise of MAE (regression)

    @classmethod
    def for_precision(cls, precision: str) -> Budget:
        return DEFAULT_BUDGETS[precision]

    def updated(self, overrides: dict[str, Any], where: str) -> Budget:
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"{where}: unknown budget keys {sorted(unknown)}; use {sorted(known)}")
        return replace(self, **{k: float(v) for k, v in overrides.items()})


DEFAULT_BUDGETS = {
    # FP32 ORT differs from PyTorch only by kernel summation order (~1e-6 on unit embeddings).
    "fp32": Budget(max_abs=1e-4, min_cos=0.99999, acc_drop=0.005, mae_rise=0.005),
    # FP16 keeps ~3 significant digits; the blocked reductions keep norms and variances exact.
    "fp16": Budget(max_abs=5e-3, min_cos=0.999, acc_drop=0.01, mae_rise=0.02),
    # INT8: the accuracy budget (1 point of Has0 Acc-2, 0.05 MAE); per graph, a cosine of 0.98 keeps
    # an embedding's nearest neighbours, and 0.15 bounds the error of a [-3, 3] score or a unit vector.
    "int8": Budget(max_abs=0.15, min_cos=0.98, acc_drop=0.01, mae_rise=0.05),
}


def heldout_inputs(model: TRML, arrays, n: int = 24, seed: int = 1) -> dict[str, dict[str, np.ndarray]]:
    """Per-graph inputs from clips of ``arrays`` (the test split), or seeded synthetic clips when None."""
    if arrays is not None:
        idx = np.random.default_rng(seed).permutation(len(arrays))[: min(n, len(arrays))]
        frames, mask, texts = arrays.frames[idx], arrays.frame_mask[idx], [arrays.texts[i] for i in idx]
    else:
        frames, mask, texts = synthetic_clips(model, n, seed)
    scenarios = np.arange(len(texts)) % 3
    return graph_inputs(model, frames, mask, texts, scenarios)


def synthetic_clips(model: TRML, n: int, seed: int):
    """Smooth random images and varied-length sentences, for parity when no dataset is given."""
    rng = np.random.default_rng(seed)
    s, t = model.cfg.preprocess.image_size, model.cfg.temporal.max_frames
    coarse = rng.integers(0, 256, (n, t, 6, 6, 3)).astype(np.float32)
    frames = np.repeat(np.repeat(coarse, -(-s // 6), axis=2), -(-s // 6), axis=3)[:, :, :s, :s].astype(np.uint8)
    mask = np.arange(t)[None, :] < rng.integers(1, t + 1, n)[:, None]
    words = "the movie was really quite good bad boring great not at all i think acting plot ending".split()
    texts = [" ".join(rng.choice(words, rng.integers(2, 30))) for _ in range(n)]
    return frames, mask, texts


@torch.no_grad()
def graph_parity(model: TRML, name: str, session, feeds: dict[str, np.ndarray], budget: Budget) -> dict[str, Any]:
    """One graph: PyTorch submodule vs ONNX session on the same inputs (text trimmed like the runtime)."""
    feeds = dict(feeds)
    if "tokens" in feeds:
        feeds["tokens"] = trim_to_eot(feeds["tokens"])
    args = [torch.from_numpy(feeds[t.name]) for t in GRAPHS[name].inputs]
    ref = graph_module(model, name)(*args).numpy()
    got = session.run(None, feeds)[0]
    res = output_error(ref, got)
    res["ok"] = res["max_abs"] <= budget.max_abs and res["min_cos"] >= budget.min_cos
    res["budget"] = {"max_abs": budget.max_abs, "min_cos": budget.min_cos}
    res["samples"] = int(len(got))
    return res


@torch.no_grad()
def torch_predict(model: TRML, arrays, has_v: np.ndarray, has_t: np.ndarray, batch: int = 64) -> np.ndarray:
    """The PyTorch FP32 reference on a split, with open_clip's tokenizer and the shared preprocessing."""
    from trml_edge.model.backbone import tokenize
    from trml_edge.preprocess import normalize

    p = model.cfg.preprocess
    outs = []
    for b in range(0, len(arrays), batch):
        sl = slice(b, b + batch)
        mask = torch.from_numpy(arrays.frame_mask[sl])
        frame_emb = model.encode_frames(torch.from_numpy(normalize(arrays.frames[sl], p.mean, p.std)))
        t = model.encode_text(tokenize(arrays.texts[sl], p.context_length))
        o = model.fuse(frame_emb * mask.unsqueeze(-1), mask, t, torch.from_numpy(has_v[sl]),
                       torch.from_numpy(has_t[sl]))
        outs.append(o.output)
    return torch.cat(outs).numpy()


def scenario_masks(n: int, scenario: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(has_visual, has_text) for ``n`` samples under one scenario: every sample complete, or every sample
    missing that modality. The same seed gives the same masks, so two predictors compare on equal terms."""
    if scenario not in SCENARIO_MASKS:
        raise ConfigError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIO_MASKS)}")
    modality = SCENARIO_MASKS[scenario]
    if modality is None:
        return np.ones(n, bool), np.ones(n, bool)
    return sample_masks(n, MissingConfig(rate=1.0, modality=modality), seed)


def compare_predictions(task: str, ref_pred: np.ndarray, got_pred: np.ndarray, labels: np.ndarray,
                        budget: Budget) -> dict[str, Any]:
    """Task metrics of ``got_pred`` against those of the reference ``ref_pred`` on the same samples, and the
    verdict of ``budget`` (Acc-2/accuracy drop; MAE rise for regression)."""
    regression = task == "regression"
    ref, got = task_metrics(task, ref_pred, labels), task_metrics(task, got_pred, labels)
    key = "has0_acc2" if regression else "acc"
    drop = ref[key] - got[key]
    # model-independent view: how far the predictions moved, and how often the decision changed
    decide = (lambda p: p >= 0) if regression else (lambda p: p.argmax(-1))
    row = {"torch": ref, "onnx": got, "acc_drop": drop, "samples": len(labels),
           "pred_max_abs": float(np.abs(ref_pred - got_pred).max()),
           "decision_agreement": float(np.mean(decide(ref_pred) == decide(got_pred)))}
    ok = drop <= budget.acc_drop + 1e-12
    if regression:
        row["mae_rise"] = got["mae"] - ref["mae"]
        ok = ok and row["mae_rise"] <= budget.mae_rise + 1e-12
    row["ok"] = bool(ok)
    row["budget"] = {"acc_drop": budget.acc_drop, "mae_rise": budget.mae_rise}
    return row


def end_to_end(model: TRML, pipeline, arrays, budget: Budget, seed: int = 0) -> list[dict[str, Any]]:
    """Task metrics of the ONNX pipeline vs PyTorch FP32 under each scenario, checked against ``budget``."""
    labels = np.asarray(arrays.labels)
    rows = []
    for scenario in SCENARIO_MASKS:
        has_v, has_t = scenario_masks(len(arrays), scenario, seed)
        ref_pred = torch_predict(model, arrays, has_v, has_t)
        got_pred = pipeline.predict_batch(arrays.frames, arrays.frame_mask, list(arrays.texts), has_v, has_t)
        rows.append({"scenario": scenario, **compare_predictions(model.cfg.head.task, ref_pred, got_pred, labels,
                                                                 budget)})
    return rows


def worst_precision(precisions: dict[str, str]) -> str:
    return max(precisions.values(), key=PRECISION_RANK.__getitem__)


def budgets_dict(budgets: dict[str, Budget]) -> dict[str, dict[str, float]]:
    return {k: asdict(v) for k, v in budgets.items()}
