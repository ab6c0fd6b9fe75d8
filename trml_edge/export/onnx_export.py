"""PyTorch -> ONNX, one graph per TRML submodule, with I/O names and dynamic axes from ``graphs.py``.

We use the TorchScript-based exporter (``dynamo=False``): it needs no onnxscript, handles the CLIP towers
(including the dynamic text length, which slices the positional embedding and the causal mask) and gives
stable, readable graphs that ORT quantization and TensorRT's parser both accept.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trml_edge.errors import ExportError
from trml_edge.graphs import GRAPHS, GraphSpec
from trml_edge.model.trml import TRML, text_features

DEFAULT_OPSET = 17  # LayerNormalization is a native op from 17; TensorRT 8.6+ and ORT 1.14+ read it


class _ImageEncoder(nn.Module):
    def __init__(self, m: TRML):
        super().__init__()
        self.m = m

    def forward(self, pixels):  # (N, 3, S, S) -> (N, D)
        return self.m.encode_image(pixels)


class _TracedAttention(nn.Module):
    """``nn.MultiheadAttention`` (packed projections, batch first) written with plain ops, same weights.

    The TorchScript tracer records PyTorch's own attention with the traced sequence length baked into a
    Reshape whenever an ``attn_mask`` is passed, which would fix the text graph at one length. This module
    computes the same thing with every shape read from the input; the parity checks compare it against
    open_clip's own forward.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not (mha.batch_first and mha._qkv_same_embed_dim and mha.in_proj_weight is not None):
            raise ExportError("the text tower's attention is not open_clip's packed batch-first layout; "
                              "export it with a plain open_clip CLIP architecture")
        self.mha = mha

    def forward(self, q, k=None, v=None, need_weights=False, attn_mask=None):
        heads = self.mha.num_heads
        width = q.shape[-1]
        qkv = F.linear(q, self.mha.in_proj_weight, self.mha.in_proj_bias)  # (B, L, 3W)
        qkv = qkv.reshape(q.shape[0], q.shape[1], 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # (3, B, H, L, Dh)
        scores = (qkv[0] * (width // heads) ** -0.5) @ qkv[1].transpose(-2, -1)  # (B, H, L, L)
        if attn_mask is not None:
            scores = scores + attn_mask
        out = (scores.softmax(dim=-1) @ qkv[2]).transpose(1, 2)  # (B, L, H, Dh)
        return self.mha.out_proj(out.reshape(q.shape[0], q.shape[1], width)), None


@contextlib.contextmanager
def _traceable_text_attention(clip: nn.Module):
    blocks = list(clip.transformer.resblocks)
    saved = [b.attn for b in blocks]
    try:
        for b in blocks:
            b.attn = _TracedAttention(b.attn)
        yield
    finally:
        for b, a in zip(blocks, saved):
            b.attn = a


class _TextEncoder(nn.Module):
    """Untrimmed on purpose: the runtime trims each batch to its longest EOT before calling the graph."""

    def __init__(self, m: TRML):
        super().__init__()
        self.clip = m.clip

    def forward(self, tokens):  # (B, L) -> (B, D), any L <= context_length
        return F.normalize(text_features(self.clip, tokens), dim=-1)


class _Call(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


class _Head(nn.Module):
    def __init__(self, m: TRML):
        super().__init__()
        self.head = m.head

    def forward(self, t, v):  # (B, D), (B, D) -> (B, C); regression (B,) becomes (B, 1)
        y = self.head(t, v)
        return y.unsqueeze(-1) if y.dim() == 1 else y


def graph_module(model: TRML, name: str) -> nn.Module:
    """The TRML submodule behind graph ``name``, wrapped so its call signature matches the I/O declaration."""
    builders = {
        "image_encoder": lambda: _ImageEncoder(model),
        "text_encoder": lambda: _TextEncoder(model),
        "temporal_encoder": lambda: _Call(model.temporal),
        "gen_text_to_visual": lambda: _Call(model.gen_text_to_visual),
        "gen_visual_to_text": lambda: _Call(model.gen_visual_to_text),
        "fusion_head": lambda: _Head(model),
    }
    if name not in builders:
        raise ExportError(f"unknown graph {name!r}; choose from {', '.join(GRAPHS)}")
    return builders[name]().eval()


def example_inputs(spec: GraphSpec, dims: dict[str, int], batch: int = 2, seq: int = 8) -> tuple[torch.Tensor, ...]:
    """Small random inputs for tracing. Sizes differ per axis so the tracer cannot confuse them."""
    sizes = {"batch": batch, "frames": batch * 3, "seq": min(seq, dims["context_length"]),
             "time": min(5, dims["max_frames"])}
    g = torch.Generator().manual_seed(0)
    out = []
    for t in spec.inputs:
        shape = [sizes[d] if isinstance(d, str) else d for d in t.resolve(dims)]
        if t.dtype == "int64":  # tokens: SOT ... EOT (EOT is the largest id, as in CLIP's vocabulary)
            x = torch.randint(1, 40000, shape, generator=g)
            x[:, 0], x[:, -1] = 49406, 49407
        elif t.dtype == "bool":
            x = torch.ones(shape, dtype=torch.bool)
            x[0, shape[1] // 2 :] = False
        else:
            x = torch.randn(shape, generator=g)
            if t.name in ("t", "v", "frame_emb"):
                x = F.normalize(x, dim=-1)
        out.append(x)
    return tuple(out)


def export_graph(model: TRML, name: str, path: Path, dims: dict[str, int], opset: int = DEFAULT_OPSET) -> Path:
    """Export one graph to ``path`` (FP32). Raises ExportError with the exporter's message on failure."""
    spec = GRAPHS[name]
    module = graph_module(model, name)
    args = example_inputs(spec, dims)
    path = Path(path)
    swap = _traceable_text_attention(model.clip) if name == "text_encoder" else contextlib.nullcontext()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's fused inference kernel has no ONNX symbolic; trace the plain-op path instead
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings(), swap:
            warnings.simplefilter("ignore")  # tracer warnings about Python ints; the parity check is the judge
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=opset,
                input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                dynamic_axes=spec.dynamic_axes(), do_constant_folding=True,
            )
    except Exception as e:  # the exporter raises many types; all mean "this graph did not export"
        raise ExportError(f"exporting {name} to ONNX failed: {e}; try another --opset or report the architecture") from e
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return path
