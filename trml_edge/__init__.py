"""trml-edge: TRML robust multimodal models, trained, quantized and served at the edge."""

__version__ = "0.1.0"
