"""The one declaration of every exported graph's inputs and outputs. Pure Python: no torch, no onnx.

ONNX ``dynamic_axes``, TensorRT optimization profiles, the runtime and the Triton config generator all
read this module; none of them keeps its own copy of a name, dtype or axis.

A dimension in a shape is one of:

* a *dynamic axis* name (``batch``, ``frames``, ``seq``, ``time``), with min/opt/max sizes in ``PROFILES``;
* a *model dimension* name (``embed``, ``image``, ``classes``), fixed per model by :func:`model_dims`;
* a literal ``3`` (RGB channels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GRAPH_NAMES = (
    "image_encoder",
    "text_encoder",
    "temporal_encoder",
    "gen_text_to_visual",
    "gen_visual_to_text",
    "fusion_head",
)


@dataclass(frozen=True)
class Profile:
    """TensorRT-style size range of one dynamic axis. ``None`` for max means "the model's own limit"."""

    min: int
    opt: int
    max: int | None

    def resolve(self, limit: int | None) -> tuple[int, int, int]:
        hi = self.max if self.max is not None else limit
        if hi is None:
            raise ValueError("a profile without max needs the model's limit")
        return (min(self.min, hi), min(self.opt, hi), hi)


# Default profile sizes per dynamic axis. Recipes may override them (``[tensorrt.profiles.<axis>]``).
PROFILES: dict[str, Profile] = {
    "batch": Profile(1, 8, 64),  # requests batched together (Triton's dynamic batcher stays below 64)
    "frames": Profile(1, 8, 256),  # frames of every clip in a batch, flattened for the image encoder
    "seq": Profile(2, 16, None),  # tokens after EOT trimming: SOT+EOT at least, up to context_length
    "time": Profile(1, 8, None),  # frames per clip, up to max_frames
}

# Which model limit caps a dynamic axis whose profile has no max.
AXIS_LIMITS = {"seq": "context_length", "time": "max_frames"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name; ONNX and TensorRT types are derived from it
    shape: tuple[str | int, ...]

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str) and d in PROFILES}

    def resolve(self, dims: dict[str, int]) -> tuple[str | int, ...]:
        """Model dimensions replaced by numbers; dynamic axes stay symbolic."""
        return tuple(dims[d] if isinstance(d, str) and d not in PROFILES else d for d in self.shape)

    def to_dict(self, dims: dict[str, int]) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.resolve(dims))}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    source: str  # the TRML submodule the graph is exported from
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s ``dynamic_axes`` argument."""
        return {t.name: t.dynamic_axes() for t in self.inputs + self.outputs if t.dynamic_axes()}

    def axes(self) -> set[str]:
        return {a for t in self.inputs for a in t.dynamic_axes().values()}

    def profile(self, dims: dict[str, int], overrides: dict[str, Profile] | None = None
                ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Per input: (min, opt, max) concrete shapes, for TensorRT optimization profiles."""
        sizes = {}
        for axis in self.axes():
            prof = (overrides or {}).get(axis, PROFILES[axis])
            limit = dims.get(AXIS_LIMITS[axis]) if axis in AXIS_LIMITS else None
            sizes[axis] = prof.resolve(limit)
        out = {}
        for t in self.inputs:
            shape = t.resolve(dims)
            out[t.name] = tuple(tuple(sizes[d][k] if isinstance(d, str) else d for d in shape) for k in range(3))
        return out

    def to_dict(self, dims: dict[str, int]) -> dict[str, Any]:
        return {"inputs": [t.to_dict(dims) for t in self.inputs], "outputs": [t.to_dict(dims) for t in self.outputs]}


def _t(name: str, dtype: str, *shape: str | int) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(shape))


GRAPHS: dict[str, GraphSpec] = {
    g.name: g
    for g in (
        GraphSpec("image_encoder", "TRML.encode_image",
                  (_t("pixels", "float32", "frames", 3, "image", "image"),),
                  (_t("frame_emb", "float32", "frames", "embed"),)),
        GraphSpec("text_encoder", "normalize(text_features(TRML.clip, tokens))",
                  (_t("tokens", "int64", "batch", "seq"),),
                  (_t("t", "float32", "batch", "embed"),)),
        GraphSpec("temporal_encoder", "TRML.temporal",
                  (_t("frame_emb", "float32", "batch", "time", "embed"), _t("frame_mask", "bool", "batch", "time")),
                  (_t("v", "float32", "batch", "embed"),)),
        GraphSpec("gen_text_to_visual", "TRML.gen_text_to_visual",
                  (_t("t", "float32", "batch", "embed"),),
                  (_t("v_hat", "float32", "batch", "embed"),)),
        GraphSpec("gen_visual_to_text", "TRML.gen_visual_to_text",
                  (_t("v", "float32", "batch", "embed"),),
                  (_t("t_hat", "float32", "batch", "embed"),)),
        GraphSpec("fusion_head", "TRML.head",
                  (_t("t", "float32", "batch", "embed"), _t("v", "float32", "batch", "embed")),
                  # regression scores come out as (batch, 1), so both tasks share one spec
                  (_t("output", "float32", "batch", "classes"),)),
    )
}


def model_dims(cfg: dict[str, Any]) -> dict[str, int]:
    """Model dimensions from a ``trml_config.json`` dict (or ``TRMLConfig.to_dict()``)."""
    head = cfg["head"]
    return {
        "embed": int(cfg["backbone"]["clip_cfg"]["embed_dim"]),
        "image": int(cfg["preprocess"]["image_size"]),
        "classes": 1 if head["task"] == "regression" else int(head["num_classes"]),
        "context_length": int(cfg["preprocess"]["context_length"]),
        "max_frames": int(cfg["temporal"]["max_frames"]),
    }
