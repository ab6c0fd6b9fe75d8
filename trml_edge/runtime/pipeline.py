"""The edge pipeline: frames and/or text in, prediction out, routed around a missing modality.

Routing (the same rules as the Triton router):

* both present: image_encoder -> temporal_encoder -> v, text_encoder -> t, fusion_head(t, v);
* frames missing: the image and temporal encoders are never run; v := gen_text_to_visual(t);
* text missing: the text encoder is never run; t := gen_visual_to_text(v);
* both missing: MissingModalityError naming FRAMES and TEXT; there is no guessed answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trml_edge.errors import DataError, MissingModalityError
from trml_edge.preprocess import preprocess
from trml_edge.runtime.bundle import Bundle, load_bundle
from trml_edge.runtime.tokenizer import BPETokenizer

COMPLETE, VISUAL_MISSING, TEXT_MISSING = "complete", "visual_missing", "text_missing"
ROUTES = {  # scenario -> graphs run, in order
    COMPLETE: ("image_encoder", "temporal_encoder", "text_encoder", "fusion_head"),
    VISUAL_MISSING: ("text_encoder", "gen_text_to_visual", "fusion_head"),
    TEXT_MISSING: ("image_encoder", "temporal_encoder", "gen_visual_to_text", "fusion_head"),
}


def route(has_visual: bool, has_text: bool) -> str:
    """The scenario for one request. Pure, so it is tested without any model."""
    if has_visual and has_text:
        return COMPLETE
    if has_text:
        return VISUAL_MISSING
    if has_visual:
        return TEXT_MISSING
    raise MissingModalityError("the request has neither FRAMES nor TEXT; send at least one of them")


def trim_to_eot(tokens: np.ndarray) -> np.ndarray:
    """(B, L) -> (B, L'): cut at the batch's longest EOT (the largest id). Exact for CLIP's causal tower."""
    return tokens[:, : int(tokens.argmax(axis=-1).max()) + 1]


@dataclass
class Prediction:
    output: np.ndarray  # () regression score or (C,) class logits
    virtual_modality: str  # "", "visual" or "text": which embedding the generator produced
    graphs: tuple[str, ...]  # the graphs that ran, in order


class Pipeline:
    def __init__(self, bundle: Bundle | str | Path, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 threads: int = 0):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.providers, self.threads = tuple(providers), threads
        pre = self.bundle.preprocess
        self.size, self.mean, self.std = int(pre["image_size"]), pre["mean"], pre["std"]
        self.max_frames = int(pre["max_frames"])
        tok = self.bundle.manifest["tokenizer"]
        self.tokenizer = BPETokenizer(self.bundle.root / tok["file"], int(tok["context_length"]))
        self.regression = self.bundle.task == "regression"

    def run(self, graph: str, **feeds: np.ndarray) -> np.ndarray:
        return self.bundle.session(graph, self.providers, self.threads).run(None, feeds)[0]

    # --- building blocks, batched ---
    def text_embedding(self, tokens: np.ndarray) -> np.ndarray:
        """(B, L) int64 tokens -> (B, D); the batch is trimmed to its longest EOT first."""
        return self.run("text_encoder", tokens=trim_to_eot(np.ascontiguousarray(tokens, dtype=np.int64)))

    def visual_embedding(self, frames: np.ndarray, frame_mask: np.ndarray) -> np.ndarray:
        """(B, T, H, W, 3) uint8 + (B, T) bool -> (B, D). Only the real frames go through the image encoder."""
        b, t = frame_mask.shape
        pixels = preprocess(frames[frame_mask], self.size, self.mean, self.std)  # (n_real, 3, S, S)
        emb = np.zeros((b, t, self._dim()), np.float32)
        if len(pixels):
            emb[frame_mask] = self.run("image_encoder", pixels=pixels)
        return self.run("temporal_encoder", frame_emb=emb, frame_mask=frame_mask.astype(bool))

    def _dim(self) -> int:
        return int(self.bundle.graphs["image_encoder"]["outputs"][0]["shape"][-1])

    def head(self, t: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = self.run("fusion_head", t=t.astype(np.float32), v=v.astype(np.float32))  # (B, C)
        return out[:, 0] if self.regression else out

    # --- one request ---
    def predict(self, frames: np.ndarray | None, text: str | None) -> Prediction:
        """frames: uint8 [n, H, W, 3] or None; text: a string or None."""
        has_v = frames is not None and len(frames) > 0
        has_t = text is not None and text.strip() != ""
        scenario = route(has_v, has_t)
        if has_v:
            frames = np.asarray(frames)
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise DataError(f"FRAMES must be uint8 [n, H, W, 3], got {frames.dtype} {list(frames.shape)}")
            pick = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), self.max_frames)).round().astype(int))
            frames = frames[pick][None]  # (1, T, H, W, 3)
            v = self.visual_embedding(frames, np.ones(frames.shape[:2], bool))
        if has_t:
            t = self.text_embedding(self.tokenizer([text]))
        if scenario == VISUAL_MISSING:
            v = self.run("gen_text_to_visual", t=t)
        elif scenario == TEXT_MISSING:
            t = self.run("gen_visual_to_text", v=v)
        virtual = {COMPLETE: "", VISUAL_MISSING: "visual", TEXT_MISSING: "text"}[scenario]
        return Prediction(self.head(t, v)[0], virtual, ROUTES[scenario])

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
                t[ht] = self.text_embedding(self.tokenizer([x for x, keep in zip(texts[sl], ht) if keep]))
            if (~hv).any():
                v[~hv] = self.run("gen_text_to_visual", t=t[~hv])
            if (~ht).any():
                t[~ht] = self.run("gen_visual_to_text", v=v[~ht])
            outs.append(self.head(t, v))
        return np.concatenate(outs)
