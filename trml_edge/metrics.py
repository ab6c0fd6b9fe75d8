"""Task metrics, as the MMSA benchmark code defines them. numpy only.

Regression (CMU-MOSI / CMU-MOSEI), predictions and labels in [-3, 3]:

* Has0 Acc-2 / F1: negative (< 0) against non-negative (>= 0), over every sample;
* Non0 Acc-2 / F1: samples whose label is exactly 0 are dropped, then > 0 against <= 0 for predictions;
* Acc-7: clip both to [-3, 3], round, compare; Acc-5: the same after clipping to [-2, 2];
  rounding is numpy's (half to even), as in MMSA;
* MAE and Pearson correlation. Pearson's r is undefined (NaN) when the predictions or the labels are
  constant, as in MMSA (``np.corrcoef``); it is never reported as 0.

A metric that is undefined on the data is NaN in these dicts; ``undefined_reasons`` says why, and
``json_ready`` turns the NaNs into ``null`` for a JSON report (strict JSON has no NaN).

F1 is the support-weighted mean of the per-class F1 scores. Classification (MELD): accuracy and weighted F1.
"""

from __future__ import annotations

import numpy as np


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Per-class F1, averaged with weights proportional to each class's support in ``y_true``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    total = 0.0
    for c in np.unique(y_true):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        total += f1 * np.sum(y_true == c)
    return float(total / len(y_true)) if len(y_true) else 0.0


def _multiclass_acc(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.round(pred) == np.round(truth)))


def regression_metrics(pred, truth) -> dict[str, float]:
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1)
    if pred.shape != truth.shape or not len(pred):
        raise ValueError(f"need equal, non-empty prediction and label arrays, got {pred.shape} and {truth.shape}")
    non0 = truth != 0
    has0_true, has0_pred = truth >= 0, pred >= 0
    non0_true, non0_pred = truth[non0] > 0, pred[non0] > 0
    corr = float(np.corrcoef(pred, truth)[0, 1]) if pred.std() > 0 and truth.std() > 0 else float("nan")
    return {
        "has0_acc2": float(np.mean(has0_true == has0_pred)),
        "has0_f1": weighted_f1(has0_true, has0_pred),
        "non0_acc2": float(np.mean(non0_true == non0_pred)) if non0.any() else float("nan"),
        "non0_f1": weighted_f1(non0_true, non0_pred) if non0.any() else float("nan"),
        "acc5": _multiclass_acc(np.clip(pred, -2, 2), np.clip(truth, -2, 2)),
        "acc7": _multiclass_acc(np.clip(pred, -3, 3), np.clip(truth, -3, 3)),
        "mae": float(np.mean(np.abs(pred - truth))),
        "corr": corr,
    }


def task_metrics(task: str, pred, truth) -> dict[str, float]:
    """Regression metrics for a score, or classification metrics for logits (argmax over the last axis)."""
    if task == "regression":
        return regression_metrics(pred, truth)
    return classification_metrics(np.asarray(pred).argmax(-1), np.asarray(truth).astype(int))


def classification_metrics(pred_labels, truth) -> dict[str, float]:
    pred_labels = np.asarray(pred_labels).reshape(-1)
    truth = np.asarray(truth).reshape(-1)
    return {"acc": float(np.mean(pred_labels == truth)), "f1": weighted_f1(truth, pred_labels)}


UNDEFINED = {  # metric -> why it can be undefined (NaN)
    "non0_acc2": "every label is 0: Non0 drops the samples whose label is 0, so none is left",
    "non0_f1": "every label is 0: Non0 drops the samples whose label is 0, so none is left",
    "corr": "the predictions or the labels are constant: Pearson's r is undefined (0 / 0)",
}


def undefined_reasons(metrics: dict[str, float]) -> dict[str, str]:
    """{metric: why} for every metric of ``metrics`` that is NaN."""
    return {k: UNDEFINED.get(k, "undefined on these data") for k, v in metrics.items()
            if isinstance(v, float) and not np.isfinite(v)}


def json_ready(metrics: dict[str, float]) -> tuple[dict[str, float | None], dict[str, str]]:
    """(``metrics`` with ``None`` for each undefined value, {metric: why it is undefined}) for a JSON report."""
    reasons = undefined_reasons(metrics)
    return {k: None if k in reasons else v for k, v in metrics.items()}, reasons


def output_error(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """A converted graph's output against its reference: max |ref - got| and the smallest row cosine (a shape
    mismatch is infinitely wrong). Numpy only, so the export gate and a GPU target (no torch) share it."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        return {"max_abs": float("inf"), "min_cos": -1.0}
    a, b = (ref, got) if ref.ndim > 1 and ref.shape[-1] > 1 else (ref.reshape(1, -1), got.reshape(1, -1))
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cos = np.where(den > 0, (a * b).sum(-1) / np.maximum(den, 1e-30), 1.0)
    return {"max_abs": float(np.abs(ref - got).max()), "min_cos": float(cos.min())}
