"""Model inputs for a split: pixels and tokens, or, with a frozen backbone, CLIP embeddings computed once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trml_edge.data.corpus import ClipArrays
from trml_edge.model.backbone import tokenize
from trml_edge.model.trml import TRML
from trml_edge.preprocess import normalize


@dataclass
class SplitTensors:
    """Everything a training or evaluation step reads, indexed by sample."""

    labels: torch.Tensor  # (N,)
    frame_mask: torch.Tensor  # (N, T) bool
    tokens: torch.Tensor  # (N, L) int64
    frames: np.ndarray | None  # (N, T, S, S, 3) uint8, when the backbone trains
    frame_emb: torch.Tensor | None  # (N, T, D), when the backbone is frozen
    text_emb: torch.Tensor | None  # (N, D), when the backbone is frozen

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def cached(self) -> bool:
        return self.frame_emb is not None


def pixels(model: TRML, frames: np.ndarray) -> torch.Tensor:
    p = model.cfg.preprocess
    return torch.from_numpy(normalize(frames, p.mean, p.std))


@torch.no_grad()
def embed_arrays(model: TRML, arrays: ClipArrays, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame image embeddings (N, T, D) and text embeddings (N, D), computed once in eval mode."""
    was_training = model.training
    model.eval()
    tokens = tokenize(arrays.texts, model.cfg.preprocess.context_length)
    frame_emb, text_emb = [], []
    for i in range(0, len(arrays), batch):
        fr = arrays.frames[i : i + batch]  # (b, T, S, S, 3)
        mask = torch.from_numpy(arrays.frame_mask[i : i + batch])
        emb = model.encode_frames(pixels(model, fr))  # (b, T, D)
        frame_emb.append(emb * mask.unsqueeze(-1))  # padded frames carry no embedding
        text_emb.append(model.encode_text(tokens[i : i + batch]))
    model.train(was_training)
    return torch.cat(frame_emb), torch.cat(text_emb)


def split_tensors(model: TRML, arrays: ClipArrays, embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> SplitTensors:
    """Inputs for a split. A frozen backbone gets its embeddings computed now (or taken from ``embeddings``)."""
    labels = torch.from_numpy(arrays.labels)
    mask = torch.from_numpy(arrays.frame_mask)
    tokens = tokenize(arrays.texts, model.cfg.preprocess.context_length)
    if model.cfg.backbone.freeze:
        frame_emb, text_emb = embeddings if embeddings is not None else embed_arrays(model, arrays)
        return SplitTensors(labels, mask, tokens, None, frame_emb, text_emb)
    return SplitTensors(labels, mask, tokens, arrays.frames, None, None)


def fuse_batch(model: TRML, data: SplitTensors, idx: np.ndarray, has_visual, has_text, fill=None):
    """Run the model on samples ``idx`` with the given modality masks."""
    mask = data.frame_mask[idx]
    if data.cached:
        frame_emb, t = data.frame_emb[idx], data.text_emb[idx]
    else:
        frame_emb = model.encode_frames(pixels(model, data.frames[idx]))
        t = model.encode_text(data.tokens[idx])
    return model.fuse(frame_emb, mask, t, has_visual, has_text, fill)
