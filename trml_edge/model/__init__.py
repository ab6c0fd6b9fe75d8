"""The TRML model. This package never imports training code."""

from trml_edge.model.trml import TRML, FusionOutput

__all__ = ["TRML", "FusionOutput"]
