"""Training losses: the task loss and the Semantic Matching Learning (SML) InfoNCE loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def task_loss(output: torch.Tensor, target: torch.Tensor, task: str, reduction: str = "mean") -> torch.Tensor:
    """L1 for the regression score (MOSI/MOSEI), cross-entropy for class logits (MELD)."""
    if task == "regression":
        return F.l1_loss(output, target.to(output.dtype), reduction=reduction)
    return F.cross_entropy(output, target.long(), reduction=reduction)


def info_nce(generated: torch.Tensor, real: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE between unit vectors: pair i is the positive, the rest of the batch are negatives.

    The real embeddings are the targets and are detached: SML moves the generators toward the real
    embeddings, not the encoders toward what the generators can produce.
    """
    real = real.detach()
    logits = generated @ real.T / tau  # (N, N)
    labels = torch.arange(len(generated), device=generated.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def sml_loss(v_hat, v, t_hat, t, complete: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE(v_hat, v) + InfoNCE(t_hat, t), over the samples that have both modalities."""
    if int(complete.sum()) < 2:
        return v_hat.sum() * 0.0  # needs a positive and at least one negative; keeps the graph connected
    c = complete
    return 0.5 * (info_nce(v_hat[c], v[c], tau) + info_nce(t_hat[c], t[c], tau))
