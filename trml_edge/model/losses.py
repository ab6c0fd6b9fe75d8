"""Training losses: the task loss, and the matching loss that pulls a generated embedding to the real one.

The matching objective is the paper's Semantic Matching Learning (SML, symmetric InfoNCE) by default;
``cosine`` regresses the generated embedding onto the real one (1 - cosine, the conditional-mean
direction), and ``sml+cosine`` adds the two. InfoNCE only asks a generated embedding to be nearer its own
partner than the rest of the batch; it does not ask it to be near: see docs/results.md, section 6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OBJECTIVES = ("sml", "cosine", "sml+cosine")


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


def cosine_loss(generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(generated, real) over unit vectors; the real embeddings are detached targets."""
    return 1.0 - (generated * real.detach()).sum(-1).mean()


def matching_loss(generated: torch.Tensor, real: torch.Tensor, tau: float, objective: str = "sml") -> torch.Tensor:
    """One generator's matching loss under ``objective`` (one of ``OBJECTIVES``)."""
    if objective == "sml":
        return info_nce(generated, real, tau)
    if objective == "cosine":
        return cosine_loss(generated, real)
    return info_nce(generated, real, tau) + cosine_loss(generated, real)


def sml_loss(v_hat, v, t_hat, t, complete: torch.Tensor, tau: float, objective: str = "sml") -> torch.Tensor:
    """The two generators' matching losses, averaged, over the samples that have both modalities."""
    if int(complete.sum()) < 2:
        # needs a positive and at least one negative; keeps both generators in the graph (under DDP every
        # trained parameter must get a gradient, and with the head's gradient stopped this is their only path)
        return (v_hat.sum() + t_hat.sum()) * 0.0
    c = complete
    return 0.5 * (matching_loss(v_hat[c], v[c], tau, objective) + matching_loss(t_hat[c], t[c], tau, objective))
