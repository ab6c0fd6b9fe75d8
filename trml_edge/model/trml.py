"""The TRML model: CLIP towers, a temporal encoder, two virtual-modality generators and a fusion head.

All embeddings live in CLIP's aligned space and are L2-normalized, so a generator can start as the identity
map (``v_hat = t``) and begin from CLIP's own text-image alignment. The submodules match the exported graphs
one to one: ``encode_image``, ``encode_text``, ``temporal``, ``gen_text_to_visual``, ``gen_visual_to_text``
and ``head``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn

from trml_edge.config import TRMLConfig
from trml_edge.errors import MissingModalityError
from trml_edge.model.backbone import build_clip

MASK_FILL = -1e4  # masked attention score: far below any real score, and still finite in FP16


def can_trim(clip: nn.Module) -> bool:
    """Trimming is exact when the text tower is causal and pools at the EOT token."""
    return getattr(clip, "attn_mask", None) is not None and getattr(clip, "text_pool_type", "") == "argmax"


def trim_tokens(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Cut (B, L) tokens to the batch's longest EOT position (EOT has the largest id in CLIP's vocabulary).

    Exact: under the causal mask no position attends to a later one, and the output is read at EOT.
    """
    if not can_trim(clip):
        return tokens
    return tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]


def text_features(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``encode_text`` for any length L <= context_length (the exported graph's dynamic axis)."""
    length = tokens.shape[1]
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding[:length].to(cast)  # (B, L, W)
    mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
    x = clip.ln_final(clip.transformer(x, attn_mask=mask))  # (B, L, W)
    x = text_global_pool(x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))  # (B, W)
    proj = clip.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj  # (B, D)


class TemporalEncoder(nn.Module):
    """Frame embeddings (B,T,D) + mask (B,T) -> clip embedding (B,D).

    Starts as the masked mean of the frames (the attention branch's projection is zero-initialized), so it
    begins in CLIP's space and learns which frames matter.
    """

    def __init__(self, dim: int, max_frames: int):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(max_frames, dim))
        self.norm = nn.LayerNorm(dim)
        self.key = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.randn(dim) * dim**-0.5)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        m = frame_mask.to(frames.dtype)  # (B, T)
        mean = (frames * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)  # (B, D)
        h = self.norm(frames + self.pos[: frames.shape[1]])  # (B, T, D)
        scores = self.key(h) @ self.query / math.sqrt(h.shape[-1])  # (B, T)
        scores = torch.where(m > 0, scores, torch.full_like(scores, MASK_FILL))
        pooled = (scores.softmax(dim=1).unsqueeze(-1) * h).sum(1)  # (B, D)
        return F.normalize(mean + self.proj(pooled), dim=-1)


class Generator(nn.Module):
    """Virtual-modality generator: ``x + MLP(x)``, renormalized. The last layer starts at zero -> identity."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x + self.net(x), dim=-1)


class FusionHead(nn.Module):
    """(t, v) -> regression score in [-3, 3] (B,) or class logits (B, C)."""

    def __init__(self, dim: int, hidden: int, out: int, dropout: float, regression: bool):
        super().__init__()
        self.regression = regression
        self.net = nn.Sequential(
            nn.LayerNorm(2 * dim), nn.Linear(2 * dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out)
        )

    def forward(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        y = self.net(torch.cat([t, v], dim=-1))  # (B, out)
        return 3.0 * torch.tanh(y.squeeze(-1)) if self.regression else y


@dataclass
class FusionOutput:
    output: torch.Tensor  # (B,) score or (B, C) logits
    v: torch.Tensor  # real visual embedding (B, D); meaningless where visual is missing
    t: torch.Tensor  # real text embedding (B, D); meaningless where text is missing
    v_hat: torch.Tensor  # generated visual embedding (B, D)
    t_hat: torch.Tensor  # generated text embedding (B, D)
    v_used: torch.Tensor  # what the head saw
    t_used: torch.Tensor


class TRML(nn.Module):
    def __init__(self, cfg: TRMLConfig, clip: nn.Module | None = None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.clip = clip if clip is not None else build_clip(cfg.backbone.clip_cfg)
        dim = int(cfg.backbone.clip_cfg["embed_dim"])
        self.dim = dim
        self.temporal = TemporalEncoder(dim, cfg.temporal.max_frames)
        self.gen_text_to_visual = Generator(dim, cfg.generator.hidden_mult * dim)
        self.gen_visual_to_text = Generator(dim, cfg.generator.hidden_mult * dim)
        head = cfg.head
        self.head = FusionHead(dim, head.hidden, head.num_classes, head.dropout, head.task == "regression")
        # training-set means of v and t, for the mean-fill baseline (set after training)
        self.register_buffer("mean_v", torch.zeros(dim))
        self.register_buffer("mean_t", torch.zeros(dim))
        self.fill = cfg.fill
        self.set_backbone_frozen(cfg.backbone.freeze)

    def set_backbone_frozen(self, frozen: bool) -> None:
        for p in self.clip.parameters():
            p.requires_grad_(not frozen)

    # --- encoders (the image_encoder and text_encoder graphs) ---
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalized pixels -> (N, D) unit embeddings."""
        return F.normalize(self.clip.encode_image(pixels), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) BPE tokens -> (B, D) unit embeddings. The batch is first cut to its longest EOT position."""
        return F.normalize(text_features(self.clip, trim_tokens(self.clip, tokens)), dim=-1)

    def encode_frames(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) -> per-frame embeddings (B, T, D)."""
        b, t = pixels.shape[:2]
        return self.encode_image(pixels.flatten(0, 1)).view(b, t, -1)

    # --- everything after the encoders ---
    def fuse(
        self,
        frame_emb: torch.Tensor,  # (B, T, D)
        frame_mask: torch.Tensor,  # (B, T) bool
        t: torch.Tensor,  # (B, D)
        has_visual: torch.Tensor,  # (B,) bool
        has_text: torch.Tensor,  # (B,) bool
        fill: str | None = None,
        detach_generated: bool = False,  # training only: the head's gradient stops at a generated embedding
    ) -> FusionOutput:
        neither = ~(has_visual | has_text)
        if bool(neither.any()):
            idx = neither.nonzero().flatten().tolist()
            raise MissingModalityError(
                f"samples {idx[:10]} have neither FRAMES nor TEXT; at least one modality is needed per sample"
            )
        fill = fill or self.fill
        v = self.temporal(frame_emb, frame_mask)  # (B, D)
        v_hat = self.gen_text_to_visual(t)
        t_hat = self.gen_visual_to_text(v)
        if fill == "generator":
            v_fill, t_fill = (v_hat.detach(), t_hat.detach()) if detach_generated else (v_hat, t_hat)
        elif fill == "zero":
            v_fill, t_fill = torch.zeros_like(v), torch.zeros_like(t)
        else:  # mean
            v_fill, t_fill = self.mean_v.expand_as(v), self.mean_t.expand_as(t)
        v_used = torch.where(has_visual.unsqueeze(-1), v, v_fill)
        t_used = torch.where(has_text.unsqueeze(-1), t, t_fill)
        return FusionOutput(self.head(t_used, v_used), v, t, v_hat, t_hat, v_used, t_used)

    def forward(self, pixels, frame_mask, tokens, has_visual, has_text, fill: str | None = None) -> FusionOutput:
        return self.fuse(self.encode_frames(pixels), frame_mask, self.encode_text(tokens), has_visual, has_text, fill)
