"""Routing around a missing modality, and the checks every request passes first. numpy only.

One source for the rules that the edge ``Pipeline`` and the Triton router both follow:

* both present: image_encoder -> temporal_encoder -> v, text_encoder -> t, fusion_head(t, v);
* frames missing: the image and temporal encoders never run; v := gen_text_to_visual(t);
* text missing: the text encoder never runs; t := gen_visual_to_text(v);
* both missing: MissingModalityError naming FRAMES and TEXT; there is no guessed answer.

A leaf module: it imports numpy and, relatively, its sibling leaf module ``errors`` only, so
``trml-edge triton build`` copies it byte for byte into the router's version folder (a Jetson's Triton
has no trml_edge installed) and the router keeps one source with the package.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import MissingModalityError, RequestError

COMPLETE, VISUAL_MISSING, TEXT_MISSING = "complete", "visual_missing", "text_missing"
SCENARIOS = (COMPLETE, VISUAL_MISSING, TEXT_MISSING)
ROUTES = {  # scenario -> the graphs it runs, in order
    COMPLETE: ("image_encoder", "temporal_encoder", "text_encoder", "fusion_head"),
    VISUAL_MISSING: ("text_encoder", "gen_text_to_visual", "fusion_head"),
    TEXT_MISSING: ("image_encoder", "temporal_encoder", "gen_visual_to_text", "fusion_head"),
}
VIRTUAL_MODALITY = {COMPLETE: "", VISUAL_MISSING: "visual", TEXT_MISSING: "text"}  # which embedding is generated


def route(has_visual: bool, has_text: bool) -> str:
    """The scenario of one request. Pure, so it is tested without any model or server."""
    if has_visual and has_text:
        return COMPLETE
    if has_text:
        return VISUAL_MISSING
    if has_visual:
        return TEXT_MISSING
    raise MissingModalityError("the request has neither FRAMES nor TEXT; send at least one of them")


def group_by_scenario(scenarios: list[str]) -> dict[str, list[int]]:
    """Indices of the requests of each scenario, in arrival order, so each graph runs once per group."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(scenarios):
        groups.setdefault(s, []).append(i)
    return groups


def trim_to_eot(tokens: np.ndarray) -> np.ndarray:
    """(B, L) -> (B, L'): cut at the batch's longest EOT (EOT has the largest id in CLIP's vocabulary).

    Exact for CLIP's text tower: its mask is causal and it pools at EOT, so nothing after EOT matters.
    """
    return tokens[:, : int(tokens.argmax(axis=-1).max()) + 1]


def pick_frames(n: int, max_frames: int) -> np.ndarray:
    """Indices of at most ``max_frames`` of ``n`` frames, spread uniformly (first and last kept)."""
    return np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(np.int64))


@dataclass(frozen=True)
class RequestLimits:
    """What one request may carry. Anything beyond is refused before any preprocessing."""

    max_frames: int = 512  # frames per request; more than the model takes are sub-sampled, more than this refused
    max_frame_side: int = 4096  # pixels, height or width of one frame (a 4K frame fits)
    max_text_bytes: int = 16384  # utf-8 bytes of TEXT (CLIP reads 77 tokens; this only bounds tokenizer work)


def check_frames(frames, limits: RequestLimits = RequestLimits()) -> np.ndarray:
    """FRAMES must be uint8 [n, H, W, 3] with 1 <= n <= max_frames and H, W <= max_frame_side."""
    if not isinstance(frames, np.ndarray):
        raise RequestError(f"FRAMES must be a numpy uint8 array [n, H, W, 3], got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise RequestError(f"FRAMES must be uint8 [n, H, W, 3] (RGB, 0-255), got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise RequestError(f"FRAMES must be uint8 [n, H, W, 3] (RGB), got shape {list(frames.shape)}")
    n, h, w = frames.shape[:3]
    if n == 0:
        raise RequestError("FRAMES has 0 frames; send at least one frame, or omit FRAMES for a text-only request")
    if h == 0 or w == 0:
        raise RequestError(f"FRAMES has empty frames (shape {list(frames.shape)}); send frames of at least 1x1 pixel")
    if max(h, w) > limits.max_frame_side:
        raise RequestError(f"FRAMES frames are {h}x{w} pixels, over the limit of {limits.max_frame_side} per side; "
                           "resize them before sending (the model sees a small centre crop anyway)")
    if n > limits.max_frames:
        raise RequestError(f"FRAMES has {n} frames, over the limit of {limits.max_frames} per request; "
                           "send fewer (the model samples a few frames uniformly from what it gets)")
    return frames


def check_text(text, limits: RequestLimits = RequestLimits()) -> str:
    """TEXT must be a non-empty utf-8 string within the byte limit. Bytes are decoded here."""
    if isinstance(text, (bytes, bytearray, np.bytes_)):
        if len(text) > limits.max_text_bytes:
            raise RequestError(f"TEXT is {len(text)} bytes, over the limit of {limits.max_text_bytes}; send less "
                               "text (CLIP reads only the first 77 tokens)")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(f"TEXT is not valid utf-8 ({e.reason} at byte {e.start}); encode the string "
                               "as utf-8") from None
    if not isinstance(text, str):
        raise RequestError(f"TEXT must be a string, got {type(text).__name__}")
    if len(text.encode("utf-8")) > limits.max_text_bytes:
        raise RequestError(f"TEXT is over the limit of {limits.max_text_bytes} utf-8 bytes; send less text")
    if not text.strip():
        raise RequestError("TEXT is empty; send some text, or omit TEXT for a frames-only request")
    return text


def request_rows(text: np.ndarray | None, frames: np.ndarray | None, batched: bool,
                 limits: RequestLimits = RequestLimits()) -> tuple[str, list | None, list | None]:
    """One router request's inputs, as Triton hands them (``TEXT`` an object array of bytes, ``FRAMES`` uint8;
    either None when the client left it out) -> (scenario, checked frames per row or None, texts per row or
    None). ``batched``: the router's config has a batch axis (``max_batch_size`` > 0), so each input carries
    one row per request row; else the request is one row without it. Raises ``RequestError`` (or
    ``MissingModalityError``) for a malformed request; the router answers it alone with a client error."""
    scenario = route(frames is not None, text is not None)
    texts = clips = None
    rows = None
    if text is not None:
        raw = text if batched else text[None]  # (b, 1) object array of bytes
        if raw.ndim != 2 or raw.shape[1] != 1 or raw.shape[0] < 1:
            raise RequestError(f"TEXT must be one string per request row, shape [b, 1]; got {list(raw.shape)}")
        texts = [check_text(x, limits) for x in raw[:, 0]]
        rows = len(texts)
    if frames is not None:
        arr = frames if batched else frames[None]  # (b, n, H, W, 3)
        if arr.ndim != 5:
            raise RequestError(f"FRAMES must be uint8 [n, H, W, 3] per request row; got shape {list(arr.shape)} "
                               "(with the batch axis)")
        if rows is not None and arr.shape[0] != rows:
            raise RequestError(f"TEXT has {rows} rows but FRAMES has {arr.shape[0]}; send one of each per request "
                               "row")
        clips = [check_frames(a, limits) for a in arr]
    return scenario, clips, texts
