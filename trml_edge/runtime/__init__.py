"""The torch-free edge runtime: bundle loader, CLIP BPE tokenizer and the routing pipeline.

Imports numpy and onnxruntime only (plus the package's pure-numpy preprocessing); never torch or open_clip.
Its imports within the package are relative, so that `trml-edge triton build --layout fused` can copy it byte
for byte beside the Triton router, which then runs the graphs in its own process with this very code.
"""

from ..tokenizer import BPETokenizer  # a leaf module, shared with the Triton router
from .bundle import Bundle, load_bundle
from .pipeline import Pipeline, Prediction
from .stream import Stream

__all__ = ["Bundle", "BPETokenizer", "Pipeline", "Prediction", "Stream", "load_bundle"]
