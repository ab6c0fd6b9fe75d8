"""The edge pipeline: frames and/or text in, prediction out, routed around a missing modality.

The routing rules and the request checks live in ``trml_edge.routing``, shared with the Triton router:
a missing modality's encoder never runs, its generator replaces it, and a request with neither modality
is refused with MissingModalityError.

``predict`` answers one request; ``predict_group`` answers several requests of one scenario at once (each graph
runs once over the whole group: the image encoder over every frame of every clip, in chunks of at most the
graph's ``chunk_rows`` where a limit is set). The Triton router of the fused layout runs its request groups
with ``predict_group``, so a served answer and a local one come from the same code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..preprocess import preprocess
from ..routing import (COMPLETE, ROUTES, TEXT_MISSING, VIRTUAL_MODALITY, VISUAL_MISSING, RequestLimits, check_frames,
                       check_text, pick_frames, route, trim_to_eot)
from ..tokenizer import BPETokenizer
from .bundle import Bundle, load_bundle
from .prediction import Prediction
from .stream import Stream

__all__ = ["COMPLETE", "ROUTES", "TEXT_MISSING", "VISUAL_MISSING", "Pipeline", "Prediction", "route", "trim_to_eot"]


class Pipeline:
    """``chunk_rows``: graph -> the most rows one session run may take (the Triton router passes the repository's
    limits, so that a large group runs in bounded chunks); a graph not named runs in one call."""

    def __init__(self, bundle: Bundle | str | Path, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 threads: int = 0, limits: RequestLimits = RequestLimits(), chunk_rows: dict[str, int] | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.providers, self.threads, self.limits = tuple(providers), threads, limits
        self.chunk_rows = {g: int(n) for g, n in (chunk_rows or {}).items() if n and int(n) > 0}
        pre = self.bundle.preprocess
        self.size, self.mean, self.std = int(pre["image_size"]), pre["mean"], pre["std"]
        self.max_frames = int(pre["max_frames"])
        tok = self.bundle.manifest["tokenizer"]
        self.tokenizer = BPETokenizer(self.bundle.root / tok["file"], int(tok["context_length"]))
        self.regression = self.bundle.task == "regression"
        self.trace: list[str] = []  # graphs run since the last reset, in order (Prediction.graphs)
        self.rows: dict[str, int] = {}  # rows each graph has run on since the pipeline was made (frames, clips...)

    def run(self, graph: str, **feeds: np.ndarray) -> np.ndarray:
        """One graph on ``feeds`` (each with the batch axis first): its first output, in chunks of at most
        ``chunk_rows[graph]`` rows."""
        self.trace.append(graph)
        session = self.bundle.session(graph, self.providers, self.threads)
        n, step = len(next(iter(feeds.values()))), self.chunk_rows.get(graph)
        self.rows[graph] = self.rows.get(graph, 0) + n
        if step is None or n <= step:
            return session.run(None, feeds)[0]
        return np.concatenate([session.run(None, {k: v[i:i + step] for k, v in feeds.items()})[0]
                               for i in range(0, n, step)])

    # --- building blocks, batched ---
    def text_embedding(self, tokens: np.ndarray) -> np.ndarray:
        """(B, L) int64 tokens -> (B, D); the batch is trimmed to its longest EOT first."""
        return self.run("text_encoder", tokens=trim_to_eot(np.ascontiguousarray(tokens, dtype=np.int64)))

    def visual_embedding(self, frames: np.ndarray, frame_mask: np.ndarray) -> np.ndarray:
        """(B, T, H, W, 3) uint8 + (B, T) bool -> (B, D). Only the real frames go through the image encoder."""
        return self._encode(self.preprocess(frames[frame_mask]), frame_mask)  # (n_real, 3, S, S) pixels

    def clip_embedding(self, clips: list[np.ndarray]) -> np.ndarray:
        """Clips of any length and frame size, uint8 [T_i, H_i, W_i, 3] each -> (B, D): every frame of every clip
        through the image encoder at once, then the temporal encoder over the clips, padded to the longest."""
        mask = np.zeros((len(clips), max(len(c) for c in clips)), bool)  # (B, T)
        for i, c in enumerate(clips):
            mask[i, : len(c)] = True
        return self._encode(np.concatenate([self.preprocess(c) for c in clips]), mask)

    def _encode(self, pixels: np.ndarray, frame_mask: np.ndarray) -> np.ndarray:
        """(n_real, 3, S, S) pixels of the real frames, in mask order + (B, T) mask -> (B, D)."""
        b, t = frame_mask.shape
        emb = np.zeros((b, t, self._dim()), np.float32)
        if len(pixels):
            emb[frame_mask] = self.run("image_encoder", pixels=pixels)
        return self.run("temporal_encoder", frame_emb=emb, frame_mask=frame_mask.astype(bool))

    def preprocess(self, frames: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 -> (n, 3, S, S) float32 pixels (a method, so a profiler can time it)."""
        return preprocess(frames, self.size, self.mean, self.std)

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """Strings -> (B, context_length) int64 tokens (a method, so a profiler can time it)."""
        return self.tokenizer(texts)

    def _dim(self) -> int:
        return int(self.bundle.graphs["image_encoder"]["outputs"][0]["shape"][-1])

    def head(self, t: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = self.run("fusion_head", t=t.astype(np.float32), v=v.astype(np.float32))  # (B, C)
        return out[:, 0] if self.regression else out

    # --- requests ---
    def predict(self, frames: np.ndarray | None, text: str | None) -> Prediction:
        """frames: uint8 [n, H, W, 3] or None; text: a string or None (None = that modality is missing).

        Malformed input (wrong dtype or shape, 0 frames, empty text, over the request limits) raises
        RequestError; more frames than the model takes are sub-sampled uniformly to ``max_frames``.
        """
        scenario = route(frames is not None, text is not None)
        frames = None if frames is None else [check_frames(frames, self.limits)]
        texts = None if text is None else [check_text(text, self.limits)]
        out = self.predict_group(scenario, frames, texts)[0]
        return Prediction(out, VIRTUAL_MODALITY[scenario], tuple(self.trace))

    def predict_group(self, scenario: str, frames: list[np.ndarray] | None, texts: list[str] | None) -> np.ndarray:
        """Several checked requests of one ``scenario`` (``routing.check_frames``/``check_text`` passed): the
        frames of each (uint8 [n_i, H_i, W_i, 3], sub-sampled here to ``max_frames``) and/or the text of each,
        in the same order -> (R,) scores or (R, C) logits. Each graph runs once over the group; ``trace`` lists
        them."""
        self.trace = []
        if frames is not None:
            v = self.clip_embedding([f[pick_frames(len(f), self.max_frames)] for f in frames])
        if texts is not None:
            t = self.text_embedding(self.tokenize(texts))
        if scenario == VISUAL_MISSING:
            v = self.run("gen_text_to_visual", t=t)
        elif scenario == TEXT_MISSING:
            t = self.run("gen_visual_to_text", v=v)
        return self.head(t, v)

    # --- a live stream: each frame encoded once, when it arrives (trml_edge/runtime/stream.py) ---
    def stream(self):
        """A new ``Stream`` on this pipeline: ``push(frames=None, text=None)`` scores the window at the cost
        of its new frames."""
        return Stream(self)

    # --- a labelled batch (evaluation): each sample routed by its own masks ---
    def predict_batch(self, frames: np.ndarray, frame_mask: np.ndarray, texts: list[str],
                      has_visual: np.ndarray, has_text: np.ndarray, batch: int = 64) -> np.ndarray:
        n = len(texts)
        for i in range(n):
            route(bool(has_visual[i]), bool(has_text[i]))  # raises for a sample with neither
        outs = []
        for b in range(0, n, batch):
            sl = slice(b, min(b + batch, n))
            hv, ht = np.asarray(has_visual[sl], bool), np.asarray(has_text[sl], bool)
            m = len(hv)
            v = np.zeros((m, self._dim()), np.float32)
            t = np.zeros((m, self._dim()), np.float32)
            if hv.any():  # encoders only run on the samples that have the modality
                v[hv] = self.visual_embedding(frames[sl][hv], frame_mask[sl][hv])
            if ht.any():
                t[ht] = self.text_embedding(self.tokenize([x for x, keep in zip(texts[sl], ht) if keep]))
            if (~hv).any():
                v[~hv] = self.run("gen_text_to_visual", t=t[~hv])
            if (~ht).any():
                t[~ht] = self.run("gen_visual_to_text", v=v[~ht])
            outs.append(self.head(t, v))
        return np.concatenate(outs)
