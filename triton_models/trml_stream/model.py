"""The ``trml_stream`` router: live streams scored at the cost of their new frames, on Triton's sequence batcher.

A stream is a Triton sequence: each request carries the sequence id (``CORRID``) with the start and end flags
(``START``, ``END``: the client's ``sequence_id``, ``sequence_start`` and ``sequence_end``), optional ``FRAMES``
(uint8 [k, H, W, 3], the new frames only) and optional ``TEXT`` (the current text, when it changed or
arrived). It gets ``OUTPUT`` and ``VIRTUAL_MODALITY`` for the window: the last ``max_frames`` frames of the
stream with its last text (``trml_core/streaming.py``, the same module the edge runtime's ``Pipeline.stream()``
uses).

Per-stream state (the window's frame embeddings, the text and its embedding) lives here, in this instance's
``StreamTable``: Triton's "oldest" strategy sends every request of a sequence to the same instance and never two
of one sequence in a batch. An update runs the image encoder on its new frames only and the text encoder only
when the text changed. Where the graphs run is the repository's layout (``stream.json``):

* ``fused``: in this process, each update scored by the package's own runtime (``trml_core/runtime``,
  ``Stream`` over the stream's kept state), exactly as ``Pipeline.stream()`` does locally; no BLS call.
* ``ensemble``: after the image (and text) encoder's BLS call, one call to the stream ensemble of its scenario
  (``trml_stream_complete``: temporal encoder -> head, with the stream's text embedding;
  ``trml_stream_text_missing``: temporal encoder -> generator -> head), which also returns the window's visual
  embedding to keep. The BLS calls are made one after the other (``trml_bls.call``: cheaper than concurrent
  ``async_exec`` calls on this Triton). An update without frames (a new text) runs the head (and a generator)
  on the kept embeddings. Each call is made once per batch of updates from different streams.

* A stream is freed on its end flag and after ``max_sequence_idle_microseconds`` without an update (a sweeper
  thread, so an abandoned stream is freed without further traffic).
* At most ``max_streams`` live streams per instance: a new one beyond gets UNAVAILABLE (HTTP 503, retryable).
* An update of a stream that is not live (ended, timed out, refused, never started) and a malformed update
  get INVALID_ARG (HTTP 400); a malformed update changes nothing in its stream.
* The number of live streams is the gauge ``trml_stream_live_streams`` on Triton's metrics endpoint, with
  the counter ``trml_stream_events_total`` (event = opened, ended, expired, refused), and every update is
  counted in ``trml_requests_total`` by scenario and outcome (``trml_respond``).

Imports numpy and ``triton_python_backend_utils`` only (and, fused, onnxruntime), plus ``trml_respond.py``,
``trml_bls.py`` (ensemble) and the ``trml_core`` copies that ``trml-edge triton build`` puts beside this file.
"""

import json
import os
import sys
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import trml_respond  # noqa: E402  (copied beside this file by triton build)
from trml_core import errors, graphs, preprocess, routing, streaming, tokenizer  # noqa: E402

STREAM_FILE = "stream.json"  # written by `trml-edge triton build`: layout, graphs, preprocessing, tokenizer


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        with open(os.path.join(_HERE, STREAM_FILE), encoding="utf-8") as f:
            conf = json.load(f)
        pre = conf["preprocess"]
        self.size, self.mean, self.std = int(pre["image_size"]), pre["mean"], pre["std"]
        self.max_frames = int(pre["max_frames"])
        self.max_batch = {g: int(n) for g, n in conf["graph_max_batch"].items()}
        self.limits = routing.RequestLimits(
            max_frames=int(params.get("max_frames_per_request", routing.RequestLimits.max_frames)),
            max_frame_side=int(params.get("max_frame_side", routing.RequestLimits.max_frame_side)),
            max_text_bytes=int(params.get("max_text_bytes", routing.RequestLimits.max_text_bytes)),
        )
        self.batched = int(cfg.get("max_batch_size", 0)) > 0
        idle_s = int(cfg["sequence_batching"]["max_sequence_idle_microseconds"]) / 1e6
        self.table = streaming.StreamTable(self.max_frames, int(params["max_streams"]), idle_s)
        self.fused = conf.get("layout") == "fused"
        if self.fused:  # the graphs in this process, run by the package's own runtime
            from trml_core.runtime.stream import Stream

            self.pipe = trml_respond.fused_pipeline(_HERE, conf, self.limits)
            self.stream_of = lambda state: Stream(self.pipe, state)
        else:
            import trml_bls  # copied beside this file in the ensemble layout only

            self.bls = trml_bls
            self.models = conf["graph_models"]  # graph name -> Triton model name
            self.ensembles = conf["ensembles"]  # scenario -> model, inputs, outputs (head's, then v), max_batch
            tok = conf["tokenizer"]
            self.tokenizer = tokenizer.BPETokenizer(os.path.join(_HERE, tok["file"]), int(tok["context_length"]))
        self.counters = trml_respond.Counters(args["model_name"])
        self.gauges = trml_respond.version_gauges(args["model_name"], params)
        labels = {"model": args["model_name"], "instance": args.get("model_instance_name", "")}
        # the families must outlive their metrics: kept on self
        self._families = (
            pb_utils.MetricFamily(name="trml_stream_live_streams", kind=pb_utils.MetricFamily.GAUGE,
                                  description="Streams live in a trml_stream router instance"),
            pb_utils.MetricFamily(name="trml_stream_events_total", kind=pb_utils.MetricFamily.COUNTER,
                                  description="Streams opened, ended, expired (idle) and refused (over the "
                                              "bound) by a trml_stream router instance"))
        self.live = self._families[0].Metric(labels=labels)
        self.events = {e: self._families[1].Metric(labels={**labels, "event": e})
                       for e in ("opened", "ended", "expired", "refused")}
        self._counted = {e: 0 for e in self.events}
        self._live_now = -1
        self._metrics_lock = threading.Lock()
        self._publish()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, args=(min(1.0, idle_s / 4),), daemon=True)
        self._sweeper.start()

    def finalize(self):
        self._stop.set()
        self._sweeper.join(timeout=5)
        self.counters.close()

    # --- state bookkeeping ---
    def _sweep(self, period):
        while not self._stop.wait(period):
            if self.table.expire():
                self._publish()

    def _publish(self):
        t = self.table
        with self._metrics_lock:  # each metric call is a round trip to Triton: only when a value changed
            if len(t) != self._live_now:
                self._live_now = len(t)
                self.live.set(self._live_now)
            for event, total in (("opened", t.opened), ("ended", t.ended), ("expired", t.expired),
                                 ("refused", t.refused)):
                if total > self._counted[event]:
                    self.events[event].increment(total - self._counted[event])
                    self._counted[event] = total

    # --- one request ---
    @staticmethod
    def _control(request, name):
        t = pb_utils.get_input_tensor_by_name(request, name)
        if t is None:
            raise RuntimeError(f"the sequence batcher gave no {name} control; rebuild the repository")
        return t.as_numpy().reshape(-1)[0]

    def _inputs(self, request):
        """(frames [k, H, W, 3] or None, text or None) of one update; raises errors.DataError when malformed."""
        text_t = pb_utils.get_input_tensor_by_name(request, "TEXT")
        frames_t = pb_utils.get_input_tensor_by_name(request, "FRAMES")
        text = frames = None
        if text_t is not None:
            raw = text_t.as_numpy()
            raw = raw if self.batched else raw[None]
            if raw.shape != (1, 1):
                raise errors.RequestError(f"TEXT must be one string per stream update, shape [1, 1]; got "
                                          f"{list(raw.shape)}")
            text = routing.check_text(raw[0, 0], self.limits)
        if frames_t is not None:
            arr = frames_t.as_numpy()
            arr = arr if self.batched else arr[None]
            if arr.ndim != 5 or arr.shape[0] != 1:
                raise errors.RequestError(f"FRAMES must be the new frames of one stream, uint8 [1, k, H, W, 3]; "
                                          f"got shape {list(arr.shape)}")
            frames = routing.check_frames(arr[0], self.limits)
        return frames, text

    # --- BLS ---
    def _graph(self, graph, **feeds):
        """Run one graph model on batched feeds; its only output."""
        out = graphs.GRAPHS[graph].outputs[0].name
        res = self.bls.call(self.models[graph], feeds, [out], self.max_batch.get(graph, 0))
        return res[out]

    def _encode(self, updates):
        """New frame embeddings per update (or None) and text embeddings per changed text (or None)."""
        pixels, owners = [], []
        for k, (_, state, frames, text) in enumerate(updates):
            if frames is not None:
                tail = frames[streaming.burst_tail(len(frames), self.max_frames)]
                pixels.append(preprocess.preprocess(tail, self.size, self.mean, self.std))  # (k, 3, S, S)
                owners.append(k)
        texts = [(k, text) for k, (_, state, _, text) in enumerate(updates) if state.text_changes(text)]

        emb = self._graph("image_encoder", pixels=np.concatenate(pixels)) if pixels else None  # (sum k, D)
        t = None
        if texts:
            tokens = routing.trim_to_eot(self.tokenizer([x for _, x in texts]))
            t = self._graph("text_encoder", tokens=tokens)  # (changed texts, D)
        new_emb, new_t = [None] * len(updates), [None] * len(updates)
        start = 0
        for k, p in zip(owners, pixels):
            new_emb[k] = emb[start:start + len(p)]
            start += len(p)
        for row, (k, _) in enumerate(texts):
            new_t[k] = t[row]
        return new_emb, new_t

    @staticmethod
    def _windows(rows):
        """[(T_i, D)] windows -> (frame_emb [W, T, D] zero-padded, frame_mask [W, T])."""
        t_max = max(len(w) for w in rows)
        frame_emb = np.zeros((len(rows), t_max, rows[0].shape[-1]), np.float32)
        mask = np.zeros((len(rows), t_max), bool)
        for row, w in enumerate(rows):
            frame_emb[row, :len(w)], mask[row, :len(w)] = w, True
        return frame_emb, mask

    def _by_ensemble(self, scenario, ks, windows, t):
        """Updates with new frames of one scenario: one ensemble call (temporal encoder [-> generator] -> head).
        -> {k: (output (C,), the window's v (D,))}."""
        ens = self.ensembles[scenario]
        frame_emb, mask = self._windows([windows[k] for k in ks])
        feeds = {"frame_emb": frame_emb, "frame_mask": mask}
        if "t" in ens["inputs"]:
            feeds["t"] = np.stack([t[k] for k in ks]).astype(np.float32)
        res = self.bls.call(ens["model"], feeds, ens["outputs"], ens["max_batch"])
        out, v = res[ens["outputs"][0]], res[ens["outputs"][1]]
        return {k: (out[row], v[row]) for row, k in enumerate(ks)}

    def _by_graphs(self, ks, scen, windows, t, states):
        """Updates without new frames (a new text, or only the end flag), graph by graph: the window's cached v
        (or the temporal encoder), the generator of a missing modality, the head. -> {k: (output, None)}."""
        v = {k: states[k].v for k in ks if scen[k] != routing.VISUAL_MISSING}
        todo = [k for k in ks if k in v and v[k] is None]  # no cached v: never after a successful frame update
        if todo:
            out = self._graph("temporal_encoder", **dict(zip(("frame_emb", "frame_mask"),
                                                             self._windows([windows[k] for k in todo]))))
            v.update({k: out[row] for row, k in enumerate(todo)})
        t = dict(t)

        def generate(graph, rows, src, dst, feed):
            if rows:
                out = self._graph(graph, **{feed: np.stack([src[k] for k in rows]).astype(np.float32)})
                dst.update({k: out[row] for row, k in enumerate(rows)})

        generate("gen_text_to_visual", [k for k in ks if scen[k] == routing.VISUAL_MISSING], t, v, "t")
        generate("gen_visual_to_text", [k for k in ks if scen[k] == routing.TEXT_MISSING], v, t, "v")
        out = self._graph("fusion_head", t=np.stack([t[k] for k in ks]).astype(np.float32),
                          v=np.stack([v[k] for k in ks]).astype(np.float32))
        return {k: (out[row], None) for row, k in enumerate(ks)}

    def _score(self, updates):
        """updates: [(sid, state, frames, text)] of different streams -> per update (output (C,), scenario) or the
        exception that failed it; each update that succeeded is committed to its stream's state."""
        if not self.fused:
            try:
                return self._score_ensemble(updates)
            except Exception as e:  # a model down (503) or a fault (500): these updates fail, streams unchanged
                return [e] * len(updates)
        results = []
        for _, state, frames, text in updates:  # each on its own: one failure leaves the others' answers
            try:
                scenario = state.scenario(frames is not None, text is not None)  # the rule the update follows
                stream = self.stream_of(state)
                p = stream.score() if frames is None and text is None else stream.push(frames, text)
                results.append((np.atleast_1d(np.asarray(p.output, np.float32)), scenario))
            except Exception as e:
                results.append(e)
        return results

    def _score_ensemble(self, updates):
        """The ensemble layout's ``_score``: an update with new frames goes through its scenario's stream
        ensemble after the image encoder; the others (a new text, or only the end flag) graph by graph from the
        cached embeddings. All or nothing: the caller answers every update with the exception."""
        new_emb, new_t = self._encode(updates)
        n = len(updates)
        states = [state for _, state, _, _ in updates]
        scen = [state.scenario(f is not None, x is not None) for _, state, f, x in updates]
        t = {k: new_t[k] if new_t[k] is not None else states[k].t for k in range(n)}  # (D,) or None
        windows = {k: states[k].window(new_emb[k]) for k in range(n)  # (T, D) where the temporal encoder runs
                   if new_emb[k] is not None or (states[k].frames and states[k].v is None)}
        by_ens = {}
        for k in range(n):
            if new_emb[k] is not None:
                by_ens.setdefault(scen[k], []).append(k)
        rest = [k for k in range(n) if new_emb[k] is None]
        done = {}
        for s, ks in by_ens.items():
            done.update(self._by_ensemble(s, ks, windows, t))
        if rest:
            done.update(self._by_graphs(rest, scen, windows, t, states))
        results = []
        for k, (_, state, _, text) in enumerate(updates):
            out, v = done[k]
            state.commit(new_emb[k], text, new_t[k], v)
            results.append((np.asarray(out, np.float32), scen[k]))
        return results

    def execute(self, requests):
        responses = [None] * len(requests)
        updates, members, ends = [], [], []
        for i, request in enumerate(requests):
            try:
                sid = self._control(request, "CORRID")
                start, end = bool(self._control(request, "START")), bool(self._control(request, "END"))
            except Exception as e:  # a repository whose config lacks the controls: our fault
                responses[i], outcome = trml_respond.error_response(e)
                self.counters.request(None, outcome)
                continue
            if end:
                ends.append(sid)  # Triton ends the sequence whatever the answer: so does the router
            try:
                state = self.table.open(sid) if start else self.table.get(sid)
                frames, text = self._inputs(request)
                if frames is None and text is None:
                    if not end:
                        raise errors.RequestError("a stream update needs new FRAMES, a TEXT, or both (a request "
                                                  "with only the end flag closes the stream)")
                    if not len(state.frames) and state.text is None:
                        raise errors.RequestError("the stream ended before it got any FRAMES or TEXT")
                updates.append((sid, state, frames, text))
                members.append(i)
            except Exception as e:  # over the bound: 503; malformed: 400, its stream unchanged; else 500
                responses[i], outcome = trml_respond.error_response(e)
                self.counters.request(None, outcome)
        if updates:
            for i, (_, state, frames, text), result in zip(members, updates, self._score(updates)):
                if isinstance(result, Exception):  # a model down (503) or a fault (500): the stream is unchanged
                    responses[i], outcome = trml_respond.error_response(result)
                    self.counters.request(state.scenario(frames is not None, text is not None), outcome)
                    continue
                out, scenario = result
                responses[i] = trml_respond.answer(out[None], scenario, self.batched)  # (1, C)
                self.counters.request(scenario, trml_respond.OK)
        for sid in ends:
            self.table.end(sid)
        self._publish()
        if self.fused:
            self.counters.graph_rows(self.pipe.rows)
        return responses
