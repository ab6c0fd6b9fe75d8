"""``trml-edge profile``: latency against accuracy per precision, backend and missing-modality scenario, and a
measured per-graph precision recommendation saved as an export recipe.

Modules: ``timing`` (interleaved rounds, percentiles, per-graph breakdown), ``flops`` (FLOPs per graph and
the matmul peak), ``accuracy`` (metrics and deltas vs PyTorch FP32, shared with the export gate),
``recommend`` (the search and the recipe), ``report`` and ``charts`` (the outputs), ``run`` (the matrix).
"""

from trml_edge.profile.run import ProfileConfig, profile

__all__ = ["ProfileConfig", "profile"]
