"""Export: PyTorch -> per-graph ONNX -> FP16/INT8 -> parity-checked bundle (-> TensorRT engines on the target).

This package's ``graphs`` module is torch-free (the runtime and the Triton generator read it); the other
modules import torch and are used only on the exporting machine.
"""
