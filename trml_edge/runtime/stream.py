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

from ..errors import RequestError
from ..routing import TEXT_MISSING, VIRTUAL_MODALITY, VISUAL_MISSING, check_frames, check_text
from ..streaming import StreamState, burst_tail
from .prediction import Prediction


class Stream:
    """One stream on a ``Pipeline``. Not thread safe: one stream per caller (streams are cheap).

    ``state``: an existing ``StreamState`` to continue (the Triton stream router keeps its streams' states in a
    ``StreamTable`` and scores each update with this class); a new, empty one by default.
    """

    def __init__(self, pipe, state: StreamState | None = None):  # pipe: a trml_edge.runtime.Pipeline
        self.pipe = pipe
        self.state = state if state is not None else StreamState(pipe.max_frames)

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
        pipe = self.pipe
        if frames is not None:
            frames = check_frames(frames, pipe.limits)[burst_tail(len(frames), pipe.max_frames)]
        if text is not None:
            text = check_text(text, pipe.limits)
        return self._update(frames, text)

    def score(self) -> Prediction:
        """The prediction over the window as it is, with nothing new (a stream's closing update)."""
        if not len(self.state.frames) and self.state.text is None:
            raise RequestError("the stream has no frames and no text yet; push some before asking for a score")
        return self._update(None, None)

    def _update(self, frames: np.ndarray | None, text: str | None) -> Prediction:
        pipe, state = self.pipe, self.state
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
