"""A video file as utterance windows: the frames inside each cue's time span, decoded once.

Two passes over the file, so that only the frames the model will see are ever converted to RGB and held:

1. demux (no decoding): every video packet's timestamp, and the cues of the first subtitle track;
2. decode, keeping the frames each window picks (``keep(n)``: which of its ``n`` frames), and yield each
   window as soon as its last picked frame is decoded, in cue order.

A frame belongs to a cue when its presentation time ``t`` lies in ``[start, end)``. A cue that holds no frame
(shorter than a frame interval, or past the end of the video) is a window without video: ``predict`` scores
it from the text alone. Failures are ``ClipError``s naming the file (``trml_edge.data.video.open_video``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from trml_edge.data.video import FIX, open_video
from trml_edge.errors import CorruptClipError, EmptyClipError
from trml_edge.predict.subtitles import Cue, dialogue_text, track_cue
from trml_edge.predict.window import Window


@dataclass
class Layout:
    """What the demux pass found."""

    pts: np.ndarray  # (n,) int64 presentation timestamps of the video frames, sorted
    time_base: float  # seconds per timestamp unit
    duration: float  # seconds, the end of the last frame
    track: list[Cue] | None  # the first subtitle track's cues, None when the file has no subtitle track


def scan(path: Path, read_track: bool = True) -> Layout:
    """The demux pass: frame timestamps and (``read_track``) the first subtitle track's cues."""
    with open_video(path) as (_, container, stream):
        subs = container.streams.subtitles[:1] if read_track else []
        pts, cues, end = [], [], 0.0
        tb = float(stream.time_base)
        for packet in container.demux(stream, *subs):
            if packet.pts is None or packet.size == 0:
                continue  # the demuxer's flush packet
            if packet.stream is stream:
                pts.append(packet.pts)
                end = max(end, (packet.pts + (packet.duration or 0)) * tb)
                continue
            start, ptb = packet.pts * float(packet.time_base), float(packet.time_base)
            duration = packet.duration * ptb if packet.duration else None
            for sub in packet.decode():
                cues.append(track_cue(start, duration, dialogue_text(sub), f"subtitle track, cue {len(cues) + 1}"))
    if not pts:
        raise EmptyClipError(f"{path} has a video stream but no frames (a zero-length clip); {FIX}")
    cues = _close_open_cues(sorted(cues, key=lambda c: c.start), end)
    return Layout(np.unique(np.asarray(pts, np.int64)), tb, end, cues if subs else None)


def _close_open_cues(cues: list[Cue], video_end: float) -> list[Cue]:
    """A track cue without a duration lasts until the next cue starts (the last one: until the video ends)."""
    out = []
    for i, c in enumerate(cues):
        if c.end == float("inf"):
            nxt = cues[i + 1].start if i + 1 < len(cues) else max(video_end, c.start + 1e-3)
            c = Cue(c.start, nxt, c.text, c.where)
        out.append(c)
    return out


@dataclass
class Span:
    """One window to cut out of a file: an utterance (a cue) or the whole clip."""

    item: int | None
    start: float
    end: float  # may be inf: up to the end of the video
    text: str | None


def windows(path: Path, source: str, spans: list[Span], layout: Layout,
            keep: Callable[[int], np.ndarray]) -> Iterator[Window]:
    """The decode pass: a ``Window`` per span, in span order, each with the frames ``keep`` picks of its own."""
    times = layout.pts * layout.time_base  # (n,) seconds
    wanted: dict[int, list[int]] = {}  # pts -> the spans that keep that frame
    picks = []
    for k, s in enumerate(spans):
        inside = np.flatnonzero((times >= s.start - 1e-9) & (times < s.end - 1e-9))
        chosen = inside[keep(len(inside))] if len(inside) else inside
        picks.append([int(layout.pts[i]) for i in chosen])
        for i in chosen:
            wanted.setdefault(int(layout.pts[i]), []).append(k)
    got: list[list[tuple[float, np.ndarray]]] = [[] for _ in spans]
    nxt = 0  # the next span to yield

    def ready() -> Iterator[Window]:
        nonlocal nxt
        while nxt < len(spans) and len(got[nxt]) == len(picks[nxt]):
            yield _window(source, spans[nxt], got[nxt], layout.duration)
            got[nxt] = []  # its frames are no longer held
            nxt += 1

    yield from ready()
    if wanted:
        known = set(int(p) for p in layout.pts)
        with open_video(path) as (_, container, stream):
            for frame in container.decode(stream):
                if frame.pts is None or frame.pts not in known:
                    raise CorruptClipError(
                        f"{path}: a decoded frame's timestamp ({frame.pts}) is not one of its packets'; the "
                        f"file's timestamps are broken; {FIX}")
                for k in wanted.get(frame.pts, ()):
                    got[k].append((frame.pts * layout.time_base, frame.to_ndarray(format="rgb24")))
                if frame.pts in wanted:
                    yield from ready()
                    if nxt == len(spans):
                        return
    if nxt < len(spans):
        missing = sum(len(p) for p in picks[nxt:]) - sum(len(g) for g in got[nxt:])
        raise CorruptClipError(f"{path}: {missing} frames that its packets announce did not decode; the file is "
                               f"truncated or damaged; {FIX}")


def _window(source: str, span: Span, frames: list[tuple[float, np.ndarray]], duration: float) -> Window:
    end = min(span.end, duration) if span.end != float("inf") else duration
    if not frames:
        return Window(source, span.item, span.start, max(end, span.start), None, span.text, None, time.monotonic())
    frames.sort(key=lambda f: f[0])
    sizes = {f.shape for _, f in frames}
    if len(sizes) > 1:
        raise CorruptClipError(f"{source}: the frame size changes inside one utterance ({sorted(sizes)[0][:2]} and "
                               f"{sorted(sizes)[-1][:2]}); re-encode the video at one size")
    return Window(source, span.item, span.start, end, np.stack([f for _, f in frames]), span.text,
                  (frames[0][0], frames[-1][0]), time.monotonic())
