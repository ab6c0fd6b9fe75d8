"""The ``trml`` router: a Triton Python-backend model that routes each request around a missing modality.

Inputs ``TEXT`` (TYPE_STRING) and ``FRAMES`` (TYPE_UINT8, [n, H, W, 3]) are both optional. The router checks
each request (``routing.request_rows``), groups the requests Triton hands ``execute`` by scenario, and runs each
group in one go. Where the graphs run is the repository's layout (``router.json``):

* ``fused`` (a Triton whose only backend is Python, the one a CPU box runs): the router loads the bundle's
  graphs with ONNX Runtime in its own process, through the package's own runtime copied beside this file
  (``trml_core/runtime``: the bundle's sha256 check, per-graph sessions and precisions, preprocessing, exact
  text trimming), and runs each group with ``Pipeline.predict_group``: the image encoder once over every frame
  of the group, the text encoder once over every text, each in chunks of at most the graph's limit. No BLS
  call, so no process round trip per graph step.
* ``ensemble`` (Triton's native backends: ``tensorrt_plan`` on a GPU box, ``onnxruntime``): each graph is its
  own Triton model, and the router makes one BLS call per group to its scenario's ensemble, which chains the
  graph models inside Triton (on a GPU the embeddings stay on the device):

  * visual missing: ensemble ``trml_visual_missing`` = text_encoder -> gen_text_to_visual -> fusion_head;
  * complete: image_encoder (a BLS call), then ensemble ``trml_complete`` = (temporal_encoder |
    text_encoder) -> fusion_head;
  * text missing: image_encoder (a BLS call), then ensemble ``trml_text_missing`` = temporal_encoder ->
    gen_visual_to_text -> fusion_head.

  The image encoder is the one graph called on its own: it runs per frame (its batch axis is every frame of
  the group) while the temporal encoder runs per clip, and an ensemble cannot regroup a batch axis. The calls
  are synchronous (``exec()`` from a plain ``execute``: about 0.5 ms cheaper a hop than ``async_exec()`` on
  this Triton; docs/serving.md, "The router, sync").

Outputs: ``OUTPUT`` (score [1] or logits [C]) and ``VIRTUAL_MODALITY`` ("", "visual" or "text").

Errors (``trml_respond``): a malformed request gets INVALID_ARG (HTTP 400) for itself alone; a model behind the
router that is down or reloading gets UNAVAILABLE (503, retryable, naming the model) for the requests that
needed it; any other fault INTERNAL (500). The server keeps serving. Every request is counted in
``trml_requests_total`` by scenario and outcome.

Self-contained: it imports numpy and ``triton_python_backend_utils`` only (and, in the fused layout,
onnxruntime). The routing rules, request checks, preprocessing, tokenizer and (fused) the runtime are the
package's own torch-free modules, which ``trml-edge triton build`` copies byte for byte into ``trml_core/``
beside this file, with ``trml_respond.py``, ``trml_bls.py`` (ensemble) and the bundle or its manifest.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import trml_respond  # noqa: E402  (copied beside this file by triton build)
from trml_core import preprocess, routing, tokenizer  # noqa: E402  (copies made by triton build)

ROUTER_FILE = "router.json"  # written by `trml-edge triton build`: layout, limits, preprocessing, graphs


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        with open(os.path.join(_HERE, ROUTER_FILE), encoding="utf-8") as f:
            self.router = json.load(f)
        self.limits = routing.RequestLimits(
            max_frames=int(params.get("max_frames_per_request", routing.RequestLimits.max_frames)),
            max_frame_side=int(params.get("max_frame_side", routing.RequestLimits.max_frame_side)),
            max_text_bytes=int(params.get("max_text_bytes", routing.RequestLimits.max_text_bytes)),
        )
        self.batched = int(cfg.get("max_batch_size", 0)) > 0  # else requests carry no batch axis
        self.counters = trml_respond.Counters(args["model_name"])
        self.gauges = trml_respond.version_gauges(args["model_name"], params)
        self.fused = self.router.get("layout") == "fused"
        if self.fused:  # the graphs in this process, run by the package's own runtime
            self.pipe = trml_respond.fused_pipeline(_HERE, self.router, self.limits)
            return
        import trml_bls  # copied beside this file in the ensemble layout only

        self.bls = trml_bls
        pre = self.router["preprocess"]
        self.size, self.mean, self.std = int(pre["image_size"]), pre["mean"], pre["std"]
        self.max_frames = int(pre["max_frames"])
        self.image = self.router["image_encoder"]  # model, input, output, max_batch
        self.ensembles = self.router["ensembles"]  # scenario -> model, inputs, output, max_batch, steps
        tok = self.router["tokenizer"]
        self.tokenizer = tokenizer.BPETokenizer(os.path.join(_HERE, tok["file"]), int(tok["context_length"]))

    # --- the graphs behind each scenario (ensemble layout: BLS calls) ---
    def _image(self, frames):
        """Frames of every clip of a group -> (frame_emb [B, T, D], frame_mask [B, T]), T = the longest clip."""
        picked = [f[routing.pick_frames(len(f), self.max_frames)] for f in frames]
        t = max(len(p) for p in picked)
        mask = np.zeros((len(picked), t), dtype=bool)
        pixels = []
        for i, p in enumerate(picked):  # frames of different requests may differ in size: preprocess each
            mask[i, : len(p)] = True
            pixels.append(preprocess.preprocess(p, self.size, self.mean, self.std))  # (T_i, 3, S, S)
        enc = self.image
        emb = self.bls.call(enc["model"], {enc["input"]: np.concatenate(pixels)}, [enc["output"]],
                            enc["max_batch"])[enc["output"]]  # (sum T_i, D)
        frame_emb = np.zeros((len(picked), t, emb.shape[-1]), dtype=np.float32)
        frame_emb[mask] = emb
        return {"frame_emb": frame_emb, "frame_mask": mask}

    def _group(self, scenario, frames, texts):
        """Every row of one scenario group -> (R, C) outputs."""
        if self.fused:  # in process, with the runtime's own code
            out = self.pipe.predict_group(scenario, frames, texts)
            return out[:, None] if out.ndim == 1 else out  # (R,) scores -> (R, 1)
        feeds = {}
        if texts is not None:
            feeds["tokens"] = routing.trim_to_eot(self.tokenizer(texts))  # (R, L') int64
        if frames is not None:
            feeds.update(self._image(frames))
        ens = self.ensembles[scenario]
        out = self.bls.call(ens["model"], {k: feeds[k] for k in ens["inputs"]}, [ens["output"]], ens["max_batch"],
                            ens["steps"])
        return out[ens["output"]]

    def execute(self, requests):
        responses = [None] * len(requests)
        parsed = {}
        for i, request in enumerate(requests):
            text = pb_utils.get_input_tensor_by_name(request, "TEXT")
            frames = pb_utils.get_input_tensor_by_name(request, "FRAMES")
            scenario = None
            try:
                scenario = routing.route(frames is not None, text is not None)
                parsed[i] = routing.request_rows(None if text is None else text.as_numpy(),
                                                 None if frames is None else frames.as_numpy(),
                                                 self.batched, self.limits)
            except Exception as e:  # malformed: 400 (a fault of ours while reading it: 500), this request only
                responses[i], outcome = trml_respond.error_response(e)
                self.counters.request(scenario, outcome)
        order = sorted(parsed)
        groups = routing.group_by_scenario([parsed[i][0] for i in order])
        for scenario, members in groups.items():  # in practice one: Triton batches requests with the same inputs
            idx = [order[k] for k in members]
            frames = [f for i in idx for f in (parsed[i][1] or [])] or None
            texts = [x for i in idx for x in (parsed[i][2] or [])] or None
            try:
                out = self._group(scenario, frames, texts)
            except Exception as e:  # a model down (503) or a fault (500): this group's requests, the server stays up
                for i in idx:
                    responses[i], outcome = trml_respond.error_response(e)
                self.counters.request(scenario, outcome, len(idx))
                continue
            row = 0
            for i in idx:
                n = len(parsed[i][2] if parsed[i][2] is not None else parsed[i][1])
                responses[i] = trml_respond.answer(out[row:row + n], scenario, self.batched)  # (b, C)
                row += n
            self.counters.request(scenario, trml_respond.OK, len(idx))
        if self.fused:
            self.counters.graph_rows(self.pipe.rows)
        return responses

    def finalize(self):
        self.counters.close()
