"""The torch-free edge runtime: bundle loader, CLIP BPE tokenizer and the routing pipeline.

Imports numpy and onnxruntime only (plus the package's pure-numpy preprocessing); never torch or open_clip.
"""

from trml_edge.runtime.bundle import Bundle, load_bundle
from trml_edge.runtime.pipeline import Pipeline, Prediction
from trml_edge.runtime.stream import Stream
from trml_edge.tokenizer import BPETokenizer  # a leaf module, shared with the Triton router

__all__ = ["Bundle", "BPETokenizer", "Pipeline", "Prediction", "Stream", "load_bundle"]
