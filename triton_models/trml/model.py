"""The ``trml`` router: a Triton Python-backend model that routes each request around a missing modality.

Inputs ``TEXT`` (TYPE_STRING) and ``FRAMES`` (TYPE_UINT8, [n, H, W, 3]) are both optional. The router
checks each request, preprocesses it, and calls the per-graph models through BLS:

* complete: text_encoder and (image_encoder -> temporal_encoder) concurrently, then fusion_head;
* visual missing: text_encoder -> gen_text_to_visual -> fusion_head (the image encoders never run);
* text missing: image_encoder -> temporal_encoder -> gen_visual_to_text -> fusion_head.

Outputs: ``OUTPUT`` (score [1] or logits [C]) and ``VIRTUAL_MODALITY`` ("", "visual" or "text").

When Triton hands ``execute`` several requests, they are grouped by scenario and each graph is called once
per group. A malformed request gets an error response (client error, HTTP 400) for itself alone.

Self-contained: it imports numpy and ``triton_python_backend_utils`` only. The routing rules, request checks,
preprocessing and tokenizer are the package's own torch-free modules, which ``trml-edge triton build``
copies byte for byte into ``trml_core/`` beside this file, with the bundle's manifest and tokenizer vocabulary.
"""

import asyncio
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from trml_core import errors, graphs, preprocess, routing, tokenizer  # noqa: E402  (copies made by triton build)

ROUTER_FILE = "router.json"  # written by `trml-edge triton build`: graph models, limits, preprocessing


class GraphCallError(Exception):
    """A per-graph model returned an error: a server-side fault, not the client's."""


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        with open(os.path.join(_HERE, ROUTER_FILE), encoding="utf-8") as f:
            self.router = json.load(f)
        pre = self.router["preprocess"]
        self.size, self.mean, self.std = int(pre["image_size"]), pre["mean"], pre["std"]
        self.max_frames = int(pre["max_frames"])
        self.models = self.router["graph_models"]  # graph name -> Triton model name
        self.max_batch = {g: int(n) for g, n in self.router["graph_max_batch"].items()}
        self.limits = routing.RequestLimits(
            max_frames=int(params.get("max_frames_per_request", routing.RequestLimits.max_frames)),
            max_frame_side=int(params.get("max_frame_side", routing.RequestLimits.max_frame_side)),
            max_text_bytes=int(params.get("max_text_bytes", routing.RequestLimits.max_text_bytes)),
        )
        self.concurrent = params.get("concurrent_branches", "true").lower() == "true"
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

    # --- BLS ---
    async def _call(self, graph, feeds):
        """Run one graph through BLS, in chunks no larger than its max batch; returns its only output."""
        spec = graphs.GRAPHS[graph]
        n = len(next(iter(feeds.values())))
        step = max(1, self.max_batch.get(graph, n) or n)
        chunks = [{k: v[i:i + step] for k, v in feeds.items()} for i in range(0, n, step)]
        out_name = spec.outputs[0].name

        async def one(chunk):
            req = pb_utils.InferenceRequest(
                model_name=self.models[graph], requested_output_names=[out_name],
                inputs=[pb_utils.Tensor(t.name, np.ascontiguousarray(chunk[t.name])) for t in spec.inputs])
            resp = await req.async_exec()
            if resp.has_error():
                raise GraphCallError(f"model {self.models[graph]} failed: {resp.error().message()}")
            return pb_utils.get_output_tensor_by_name(resp, out_name).as_numpy()

        outs = await asyncio.gather(*(one(c) for c in chunks))
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    async def _text(self, texts):
        tokens = routing.trim_to_eot(self.tokenizer(texts))  # (R, L') int64
        return await self._call("text_encoder", {"tokens": tokens})

    async def _visual(self, frames):
        picked = [f[routing.pick_frames(len(f), self.max_frames)] for f in frames]
        t = max(len(p) for p in picked)
        mask = np.zeros((len(picked), t), dtype=bool)
        pixels = []
        for i, p in enumerate(picked):  # frames of different requests may differ in size: preprocess each
            mask[i, : len(p)] = True
            pixels.append(preprocess.preprocess(p, self.size, self.mean, self.std))  # (T_i, 3, S, S)
        emb = await self._call("image_encoder", {"pixels": np.concatenate(pixels)})  # (sum T_i, D)
        frame_emb = np.zeros((len(picked), t, emb.shape[-1]), dtype=np.float32)
        frame_emb[mask] = emb
        return await self._call("temporal_encoder", {"frame_emb": frame_emb, "frame_mask": mask})

    async def _group(self, scenario, frames, texts):
        """Every row of one scenario group -> (R, C) outputs."""
        if scenario == routing.COMPLETE:
            if self.concurrent:
                t, v = await asyncio.gather(self._text(texts), self._visual(frames))
            else:
                t = await self._text(texts)
                v = await self._visual(frames)
        elif scenario == routing.VISUAL_MISSING:
            t = await self._text(texts)
            v = await self._call("gen_text_to_visual", {"t": t})
        else:
            v = await self._visual(frames)
            t = await self._call("gen_visual_to_text", {"v": v})
        return await self._call("fusion_head", {"t": t.astype(np.float32), "v": v.astype(np.float32)})

    async def execute(self, requests):
        responses = [None] * len(requests)
        parsed = {}
        for i, request in enumerate(requests):
            try:
                parsed[i] = self._parse(request)
            except errors.DataError as e:  # the client's mistake: 400, and only this request fails
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))
            except Exception as e:  # a fault of ours while reading it: 500, still only this request
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"trml router: {type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL))
        order = sorted(parsed)
        groups = routing.group_by_scenario([parsed[i][0] for i in order])

        async def run(scenario, members):
            idx = [order[k] for k in members]
            frames = [f for i in idx for f in (parsed[i][1] or [])] or None
            texts = [x for i in idx for x in (parsed[i][2] or [])] or None
            try:
                out = await self._group(scenario, frames, texts)
            except Exception as e:  # a server-side fault: every request of this group gets it, the server stays up
                for i in idx:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"trml router: {type(e).__name__}: {e}",
                                                   pb_utils.TritonError.INTERNAL))
                return
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

        await asyncio.gather(*(run(s, m) for s, m in groups.items()))
        return responses
