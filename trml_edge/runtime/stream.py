"""A live stream scored at the cost of its new frames: ``Pipeline.stream()``.

::

    s = pipe.stream()
    s.push(frames=first_second)            # uint8 [k, H, W, 3]: text-missing until text arrives
    s.push(text="so far so good")          # the window's frames are not encoded again
    p = s.push(frames=next_frame[None])    # one image-encoder run, then temporal encoder and head
    p.output, p.virtual_modality, p.graphs

Each frame is preprocessed and encoded once, when it arrives; the window is the last ``max_frames`` frames
pushed, and the text the last text pushed (``trml_edge.streaming``, shared with the Triton stream router).
An update runs the temporal encoder on the window (only when frames arrived), the generator of a missing
modality and the head; the text encoder only when the text changes. Every result equals
``Pipeline.predict(window, text)`` up to kernel summation order.
"""

from __future__ import annotations

import numpy as np

from trml_edge.errors import RequestError
from trml_edge.routing import TEXT_MISSING, VIRTUAL_MODALITY, VISUAL_MISSING, check_frames, check_text
from trml_edge.runtime.prediction import Prediction
from trml_edge.streaming import StreamState, burst_tail


class Stream:
    """One stream on a ``Pipeline``. Not thread safe: one stream per caller (streams are cheap)."""

    def __init__(self, pipe):  # a trml_edge.runtime.Pipeline (Pipeline.stream() makes the stream)
        self.pipe = pipe
        self.state = StreamState(pipe.max_frames)

    @property
    def frames(self) -> int:
        """Frames in the window now (at most the model's ``max_frames``)."""
        return len(self.state.frames)

    @property
    def text(self) -> str | None:
        return self.state.text

    def push(self, frames: np.ndarray | None = None, text: str | None = None) -> Prediction:
        """Add new frames (uint8 [k, H, W, 3], k >= 1) and/or replace the text; the prediction over the window.

        Bad input raises RequestError before anything changes: the stream is as it was.
        """
        if frames is None and text is None:
            raise RequestError("push() got neither frames nor text; give new frames (uint8 [k, H, W, 3]), "
                               "a new text, or both")
        pipe, state = self.pipe, self.state
        if frames is not None:
            frames = check_frames(frames, pipe.limits)[burst_tail(len(frames), pipe.max_frames)]
        if text is not None:
            text = check_text(text, pipe.limits)
        scenario = state.scenario(frames is not None, text is not None)
        pipe.trace = []
        new_emb = pipe.run("image_encoder", pixels=pipe.preprocess(frames)) if frames is not None else None  # (k, D)
        t = v = None
        if state.text_changes(text):
            t = pipe.text_embedding(pipe.tokenize([text]))[0]  # (D,)
        if scenario != VISUAL_MISSING:
            v = state.v if new_emb is None else None
            if v is None:
                window = state.window(new_emb)[None]  # (1, T, D)
                v = pipe.run("temporal_encoder", frame_emb=window, frame_mask=np.ones(window.shape[:2], bool))[0]
        t_now = t if t is not None else state.t
        if scenario == VISUAL_MISSING:
            v_now = pipe.run("gen_text_to_visual", t=t_now[None])[0]
        else:
            v_now = v
        if scenario == TEXT_MISSING:
            t_now = pipe.run("gen_visual_to_text", v=v_now[None])[0]
        out = pipe.head(t_now[None], v_now[None])[0]
        state.commit(new_emb, text, t, v if scenario != VISUAL_MISSING else None)
        return Prediction(out, VIRTUAL_MODALITY[scenario], tuple(pipe.trace))
