"""Live scoring: ticks of a ``LiveVideo`` in, one row a tick out, through one engine session per epoch.

A session (``Pipeline.stream()`` locally, a ``trml_stream`` sequence on a server) keeps the window of frame
embeddings, so a tick costs only its new frames. The rules that keep every row honest:

* **a loss ends the session.** The source starts a new epoch at each loss; at the first tick of a new epoch
  the session is ended (the server frees its state) and a new one begins, with the text alone until frames
  come again. No score after a loss is computed from a frame from before it;
* **nothing new, nothing sent.** A tick with no new frame and an unchanged text has the window and text of the
  previous score, so its row repeats that score; its latency, measured from the window's last frame, grows,
  which shows how old the frames are (until ``--stall`` declares the source lost);
* **no video and no text** is a row that says so, with no prediction; the next tick tries again;
* an engine error (a server that is down, a refused update) is that tick's error row; the session is ended
  and the next tick starts a new one, with new frames only.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

import numpy as np

from trml_edge.errors import TrmlEdgeError
from trml_edge.predict.engine import Scored, StreamEndError
from trml_edge.predict.live import Tick
from trml_edge.predict.rows import make_row, output_value


class FrameTimes:
    """The times of the frames in a session's window: the model's last ``size`` frames, or, where the model's
    window is not known (a server that does not announce it), every frame pushed since the session began."""

    def __init__(self, size: int | None):
        self.size = size
        self.times: deque = deque(maxlen=size) if size else deque(maxlen=2)
        self.count = 0

    def add(self, times: list[float]) -> None:
        if not self.size and times and not self.count:
            self.times.append(times[0])  # the first frame of the session: the start of the span
        self.times.extend(times if self.size else times[-1:])
        self.count += len(times)

    def frames(self) -> int:
        return min(self.count, self.size) if self.size else self.count

    def span(self) -> tuple[float, float] | None:
        return (self.times[0], self.times[-1]) if self.count else None


class LiveScorer:
    def __init__(self, engine, source: str, classes: tuple[str, ...] | None, log: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic):
        self.engine, self.source, self.classes, self.log, self.clock = engine, source, classes, log, clock
        self.cap = engine.window or engine.request_limit  # the most frames one update carries
        self.session = None
        self.epoch: int | None = None
        self.sessions = 0  # sessions opened, for the summary
        self._new(None)

    def _new(self, epoch: int | None) -> None:
        """End the session (its frames must never score again) and get ready for a new one."""
        if self.session is not None:
            try:
                self.session.close()
            except StreamEndError as e:
                self.log(str(e))
        self.session, self.epoch = None, epoch
        self.sent_text: str | None = None
        self.last: Scored | None = None
        self.window = FrameTimes(self.engine.window)

    def close(self) -> None:
        self._new(None)

    def row(self, tick: Tick, t0: float) -> dict:
        """The row of one tick. ``t0``: the clock() of the source's start (row times are seconds since)."""
        if tick.epoch != self.epoch:
            self._new(tick.epoch)
        new_text = tick.text if tick.text is not None and tick.text != self.sent_text else None
        error = None
        if tick.frames or new_text is not None:
            try:
                self.last = self._push(tick.frames, new_text)
            except TrmlEdgeError as e:
                error = f"{type(e).__name__}: {e}"
                self._new(self.epoch)  # the next tick starts a new session, with new frames only
        elif self.last is None:
            video = f"the video is not live ({tick.why})" if not tick.live else "no frame has arrived yet"
            error = f"no prediction is possible: {video} and there is no text"
        return self._row(tick, t0, error)

    def _push(self, frames: list[tuple[float, np.ndarray]], text: str | None) -> Scored:
        """Send the tick's new frames (one update per frame size) and its new text (with the first update)."""
        if self.session is None:
            self.session = self.engine.stream()
            self.sessions += 1
        if not frames:
            result = self.session.push(None, text)
        for i, group in enumerate(_same_size(frames[-self.cap:])):
            result = self.session.push(np.stack([f for _, f in group]), text if i == 0 else None)  # (k, H, W, 3)
            self.window.add([t for t, _ in group])
        if text is not None:
            self.sent_text = text
        return result

    def _row(self, tick: Tick, t0: float, error: str | None) -> dict:
        now = self.clock() - t0
        span = self.window.span()
        if error is not None or self.last is None:
            return make_row(self.source, None, tick.time, None, None, None, tick.text, 0, None, None, tick.dropped,
                            time.time(), error)
        latency = (now - span[1]) if span is not None else (now - tick.time)
        return make_row(self.source, None, tick.time, None, output_value(self.last.output, self.classes),
                        self.last.virtual_modality, self.sent_text, self.window.frames(), span, 1000.0 * latency,
                        tick.dropped, time.time())


def _same_size(frames: list[tuple[float, np.ndarray]]) -> list[list[tuple[float, np.ndarray]]]:
    """Consecutive frames of one size together (a stream's frame size may change; one update has one size)."""
    groups: list[list] = []
    for t, f in frames:
        if groups and groups[-1][-1][1].shape == f.shape:
            groups[-1].append((t, f))
        else:
            groups.append([(t, f)])
    return groups
