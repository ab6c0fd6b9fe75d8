"""The ``trml`` router: a Triton Python-backend model that routes each request around a missing modality.

Inputs ``TEXT`` (TYPE_STRING) and ``FRAMES`` (TYPE_UINT8, [n, H, W, 3]) are both optional. The router checks
each request, preprocesses and tokenizes it, groups the requests Triton hands ``execute`` by scenario, and
makes one call per group to that scenario's ensemble, which runs the fixed chain of graph models natively
inside Triton (their embeddings never come back to the router; on a GPU they stay on the device):

* visual missing: ensemble ``trml_visual_missing`` = text_encoder -> gen_text_to_visual -> fusion_head;
* complete: image_encoder (a BLS call), then ensemble ``trml_complete`` = (temporal_encoder | text_encoder)
  -> fusion_head;
* text missing: image_encoder (a BLS call), then ensemble ``trml_text_missing`` = temporal_encoder ->
  gen_visual_to_text -> fusion_head.

The image encoder is the one graph called on its own: it runs per frame (its batch axis is every frame of
the group) while the temporal encoder runs per clip, and an ensemble cannot regroup a batch axis. The
router scatters the frame embeddings into ``[clips, T, D]`` with their mask.

The calls are synchronous (``exec()`` from a plain ``execute``): on this Triton a BLS hop through
``async_exec()`` from an ``async def execute`` costs about 0.5 ms more, and all a concurrent call could
overlap here is tokenization (docs/serving.md, "The router, sync").

Outputs: ``OUTPUT`` (score [1] or logits [C]) and ``VIRTUAL_MODALITY`` ("", "visual" or "text").

Errors: a malformed request gets INVALID_ARG (HTTP 400) for itself alone; a model behind the router that is
down or reloading gets UNAVAILABLE (503, retryable, naming the model) for the requests that needed it; any
other fault INTERNAL (500). The server keeps serving.

Self-contained: it imports numpy and ``triton_python_backend_utils`` only. The routing rules, request checks,
preprocessing and tokenizer are the package's own torch-free modules, which ``trml-edge triton build``
copies byte for byte into ``trml_core/`` beside this file with ``trml_bls.py`` (the BLS calls), the bundle's
manifest and tokenizer vocabulary.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import trml_bls  # noqa: E402  (copied beside this file by triton build)
from trml_core import errors, preprocess, routing, tokenizer  # noqa: E402  (copies made by triton build)

ROUTER_FILE = "router.json"  # written by `trml-edge triton build`: models, limits, preprocessing


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        with open(os.path.join(_HERE, ROUTER_FILE), encoding="utf-8") as f:
            self.router = json.load(f)
        pre = self.router["preprocess"]
        self.size, self.mean, self.std = int(pre["image_size"]), pre["mean"], pre["std"]
        self.max_frames = int(pre["max_frames"])
        self.image = self.router["image_encoder"]  # model, input, output, max_batch
        self.ensembles = self.router["ensembles"]  # scenario -> model, inputs, output, max_batch
        self.limits = routing.RequestLimits(
            max_frames=int(params.get("max_frames_per_request", routing.RequestLimits.max_frames)),
            max_frame_side=int(params.get("max_frame_side", routing.RequestLimits.max_frame_side)),
            max_text_bytes=int(params.get("max_text_bytes", routing.RequestLimits.max_text_bytes)),
        )
        self.batched = int(cfg.get("max_batch_size", 0)) > 0  # else requests carry no batch axis
        tok = self.router["tokenizer"]
        self.tokenizer = tokenizer.BPETokenizer(os.path.join(_HERE, tok["file"]), int(tok["context_length"]))

    # --- one request -> (scenario, rows) or an error ---
    def _parse(self, request):
        """(scenario, frames list or None, texts list or None); raises errors.DataError for a bad request."""
        text_t = pb_utils.get_input_tensor_by_name(request, "TEXT")
        frames_t = pb_utils.get_input_tensor_by_name(request, "FRAMES")
        scenario = routing.route(frames_t is not None, text_t is not None)
        texts = frames = None
        rows = None
        if text_t is not None:
            raw = text_t.as_numpy()  # (b, 1) object array of bytes
            if not self.batched:
                raw = raw[None]
            if raw.ndim != 2 or raw.shape[1] != 1 or raw.shape[0] < 1:
                raise errors.RequestError(f"TEXT must be one string per request row, shape [b, 1]; got "
                                          f"{list(raw.shape)}")
            texts = [routing.check_text(x, self.limits) for x in raw[:, 0]]
            rows = len(texts)
        if frames_t is not None:
            arr = frames_t.as_numpy()  # (b, n, H, W, 3)
            if not self.batched:
                arr = arr[None]
            if arr.ndim != 5:
                raise errors.RequestError(f"FRAMES must be uint8 [n, H, W, 3] per request row; got shape "
                                          f"{list(arr.shape)} (with the batch axis)")
            if rows is not None and arr.shape[0] != rows:
                raise errors.RequestError(f"TEXT has {rows} rows but FRAMES has {arr.shape[0]}; send one of each "
                                          "per request row")
            frames = [routing.check_frames(a, self.limits) for a in arr]
        return scenario, frames, texts

    # --- the graphs behind each scenario ---
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
        emb = trml_bls.call(enc["model"], {enc["input"]: np.concatenate(pixels)}, [enc["output"]],
                            enc["max_batch"])[enc["output"]]  # (sum T_i, D)
        frame_emb = np.zeros((len(picked), t, emb.shape[-1]), dtype=np.float32)
        frame_emb[mask] = emb
        return {"frame_emb": frame_emb, "frame_mask": mask}

    def _group(self, scenario, frames, texts):
        """Every row of one scenario group -> (R, C) outputs: one ensemble call (after the image encoder)."""
        feeds = {}
        if texts is not None:
            feeds["tokens"] = routing.trim_to_eot(self.tokenizer(texts))  # (R, L') int64
        if frames is not None:
            feeds.update(self._image(frames))
        ens = self.ensembles[scenario]
        out = trml_bls.call(ens["model"], {k: feeds[k] for k in ens["inputs"]}, [ens["output"]], ens["max_batch"],
                            ens["steps"])
        return out[ens["output"]]

    def execute(self, requests):
        responses = [None] * len(requests)
        parsed = {}
        for i, request in enumerate(requests):
            try:
                parsed[i] = self._parse(request)
            except errors.DataError as e:  # the client's mistake: 400, and only this request fails
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))
            except Exception as e:  # a fault of ours while reading it: 500, still only this request
                responses[i] = trml_bls.error_response(e)
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
                    responses[i] = trml_bls.error_response(e)
                continue
            virtual = routing.VIRTUAL_MODALITY[scenario].encode("utf-8")
            row = 0
            for i in idx:
                n = len(parsed[i][2] if parsed[i][2] is not None else parsed[i][1])
                result = out[row:row + n].astype(np.float32)  # (b, C)
                row += n
                names = np.full((n, 1), virtual, dtype=object)
                if not self.batched:
                    result, names = result[0], names[0]
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("OUTPUT", result), pb_utils.Tensor("VIRTUAL_MODALITY", names)])
        return responses
