"""One exported graph, run by ONNX Runtime inside Triton's Python backend.

For CPU boxes whose Triton has no ``onnxruntime`` backend (the server bundled by ``nvidia-pytriton`` has only
the Python backend). ``trml-edge triton build --backend python`` puts this file beside the bundle's
``model.onnx`` in each graph's version folder.

Triton's dynamic batcher hands ``execute`` several requests whose non-batch dimensions agree; they are
concatenated along the batch axis, run in one ORT call, and split back, one response per request. The
ONNX file's sha256 is checked against the config's ``bundle_sha256`` parameter before the session is created,
so a repository whose graph was changed after ``triton build`` refuses to load.
"""

import hashlib
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_HERE = os.path.dirname(os.path.abspath(__file__))
LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        path = os.path.join(_HERE, params.get("onnx_file", "model.onnx"))
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        expected = params.get("bundle_sha256", "")
        if expected and h.hexdigest() != expected:
            raise pb_utils.TritonModelException(
                f"{path} has sha256 {h.hexdigest()[:12]}..., its config says {expected[:12]}...: the graph changed "
                "after `trml-edge triton build`; rebuild the repository from the bundle")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = LEVELS[params.get("graph_optimization_level", "extended")]
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        # as the edge runtime (trml_edge.runtime.bundle.session_options): an idle pool must not busy-wait, or
        # the graph models, each in its own process, take the cores from one another
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in cfg["input"]]
        self.outputs = [o["name"] for o in cfg["output"]]
        self._warm(cfg)

    def _warm(self, cfg):
        """One run on zeros of the smallest shapes, so that the first request (after a version switch too) does
        not pay ORT's first-run allocations. Best effort: a graph that refuses zeros is simply not warmed."""
        types = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32,
                 "TYPE_BOOL": np.bool_, "TYPE_UINT8": np.uint8}
        batched = int(cfg.get("max_batch_size", 0)) > 0
        try:
            feeds = {}
            for i in cfg["input"]:
                dims = [1 if int(d) < 0 else int(d) for d in i["dims"]]
                feeds[i["name"]] = np.zeros(([1] if batched else []) + dims, types[i["data_type"]])
            self.session.run(None, feeds)
        except Exception as e:  # noqa: BLE001 - warming is an optimization; the first request tells the truth
            pb_utils.Logger.log_warn(f"{cfg.get('name')}: not warmed ({type(e).__name__}: {e})")

    def execute(self, requests):
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        responses = [None] * len(requests)
        # requests whose non-batch shapes agree run together (the dynamic batcher only merges those anyway)
        groups = {}
        for i, f in enumerate(feeds):
            groups.setdefault(tuple(f[n].shape[1:] for n in self.inputs), []).append(i)
        for members in groups.values():
            sizes = [len(feeds[i][self.inputs[0]]) for i in members]
            batch = {n: np.concatenate([feeds[i][n] for i in members]) for n in self.inputs}
            try:
                outs = self.session.run(self.outputs, batch)
            except Exception as e:  # ORT raises its own exception types; each becomes this group's error
                err = pb_utils.TritonError(f"onnxruntime failed: {e}", pb_utils.TritonError.INTERNAL)
                for i in members:
                    responses[i] = pb_utils.InferenceResponse(error=err)
                continue
            start = 0
            for i, n in zip(members, sizes):
                responses[i] = pb_utils.InferenceResponse(
                    [pb_utils.Tensor(name, out[start:start + n]) for name, out in zip(self.outputs, outs)])
                start += n
        return responses
