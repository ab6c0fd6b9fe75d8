"""Serving with Triton Inference Server.

* ``repository``: ``trml-edge triton build``: a model repository generated from an export bundle (one model
  per graph, plus the ``trml`` BLS router), configs built from the one I/O declaration in ``trml_edge.graphs``;
* ``server``: starts a real ``tritonserver`` (the one bundled by nvidia-pytriton, or a JetPack/system binary),
  waits for readiness, stops it with its children;
* ``client``: one request with either modality or both, through ``tritonclient``.
"""
