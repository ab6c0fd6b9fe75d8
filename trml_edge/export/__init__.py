"""Export: PyTorch -> per-graph ONNX -> FP16/INT8 -> parity-checked bundle (-> TensorRT engines on the target).

The graph I/O declaration these modules export against is ``trml_edge.graphs`` (torch-free, shared with the
runtime and the Triton generator). The modules here import torch and are used only on the exporting machine.
"""
