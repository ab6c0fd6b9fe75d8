"""What every source yields, finite or live: one window of frames and text to score, or why there is none."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Window:
    source: str  # the video file, the manifest row (FILE:LINE) or the live URL
    item: int | None  # the utterance's number within its source (a cue); None for a whole clip or a live source
    time: float  # seconds from the start of the source: the window's start (finite) or the score's tick (live)
    end: float | None  # seconds: the window's end (finite); None for a live source
    frames: np.ndarray | None  # uint8 [n, H, W, 3], the frames to score; None: no video for this window
    text: str | None  # None: no text for this window
    span: tuple[float, float] | None  # times of the first and last frame used, seconds from the start
    ready: float  # time.monotonic() when the window's last input arrived (its latency is measured from here)
    error: str | None = None  # set: this input could not be read, and the row says why
