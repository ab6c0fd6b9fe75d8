"""A live video source: a decoder thread, a bounded frame buffer, stall detection and reconnection.

``LiveVideo`` reads a camera or a stream (``rtsp://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``/dev/videoN``)
with PyAV in its own thread and keeps what the scorer has not taken yet in a buffer of at most ``buffer``
frames. It takes ``fps`` frames a second of video into it (by the frames' own timestamps, so a burst after a
reconnect is sampled like the rest); under backpressure (the scorer slower than the source) the oldest frames
are dropped and counted, so a slow model never builds a backlog: a score always covers the newest frames.

The source is *live* from its first frame until it is *lost*: its connection ends or fails, or it delivers no
frame for ``stall`` seconds. A loss clears the buffer and starts a new **epoch**; the scorer ends its stream at
an epoch change, so no score after a loss is ever computed from a frame from before it. While lost, the thread
reconnects with exponential backoff (``backoff_first`` doubling up to ``backoff_max``), forever unless
``max_retries`` bounds the consecutive failed attempts; a connection that delivered frames resets the count.
When frames come again (a new frame size after a reconnect included) the source is live again.

``ticks`` is the scorer's clock: every ``every`` seconds (missed ticks are skipped, never queued) one
``Tick`` with the frames taken since the previous one, the epoch, the text of the moment and the drop count.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from trml_edge.errors import ConfigError, require


@dataclass
class LiveConfig:
    every: float = 1.0  # seconds between scores
    fps: float = 4.0  # frames taken into the window per second of video (8-frame window: the last 2 s)
    stall: float = 2.0  # seconds without a frame after which the source is lost
    max_retries: int | None = None  # consecutive failed reconnects before giving up; None: forever
    buffer: int = 0  # frames held for the scorer; 0: enough for two ticks
    backoff_first: float = 0.5  # seconds before the first reconnect, doubling after each failed one
    backoff_max: float = 30.0  # the longest wait between two attempts
    open_timeout: float = 10.0  # seconds an attempt to connect may take
    av_options: dict[str, str] = field(default_factory=dict)  # FFmpeg options (rtsp_transport=udp, ...)

    def check(self) -> None:
        for name in ("every", "fps", "stall", "backoff_first", "backoff_max", "open_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.max_retries is not None and self.max_retries < 0:
            raise ConfigError(f"--max-retries must be >= 0, got {self.max_retries}")
        if self.buffer < 0:
            raise ConfigError(f"--buffer must be >= 0 frames (0: enough for two ticks), got {self.buffer}")

    @property
    def buffer_frames(self) -> int:
        return self.buffer or max(2, int(np.ceil(2 * self.fps * self.every)))


def backoff_delay(attempt: int, first: float, cap: float) -> float:
    """Seconds to wait before reconnect ``attempt`` (1, 2, ...): ``first`` doubling, capped at ``cap``."""
    return min(cap, first * 2.0 ** (attempt - 1))


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


class LiveVideo:
    """The decoder thread and its buffer. ``take``, ``check_stall`` and the properties are thread safe."""

    def __init__(self, url: str, cfg: LiveConfig, log: Callable[[str], None], on_text=None,
                 clock: Callable[[], float] = time.monotonic):
        self.url, self.cfg, self.log, self.on_text, self.clock = url, cfg, log, on_text, clock
        self._buf: deque = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = 0.0
        self.epoch = 0  # +1 at each loss
        self.live = False  # frames are arriving in this epoch
        self.why = "not connected yet"  # why the source is not live
        self.last_frame = 0.0  # clock() of the last decoded frame
        self.gave_up: str | None = None
        self.dropped_total = self.taken_total = self.losses = self.connects = 0
        self.high_water = 0  # the most frames the buffer ever held
        self._dropped = 0
        self._had_frames = False  # the current connection delivered a frame

    # --- the scorer's side ---
    def start(self) -> LiveVideo:
        self.cfg.check()
        require("av", "video")
        self.t0 = self.clock()
        self._thread = threading.Thread(target=self._run, name="predict-decoder", daemon=True)
        self._thread.start()
        return self

    def stop(self, wait: float = 2.0) -> None:
        """Ask the thread to stop; it leaves at its next frame or read timeout (a daemon: it never holds exit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(wait)

    def take(self) -> tuple[int, list[tuple[float, np.ndarray]], int, bool]:
        """(epoch, [(seconds since start, RGB frame)] taken since the last call, frames dropped since, live)."""
        with self._lock:
            frames, self._buf = list(self._buf), deque()
            dropped, self._dropped = self._dropped, 0
            return self.epoch, frames, dropped, self.live

    def check_stall(self, now: float) -> None:
        """Declare the source lost when it has been live but gave no frame for ``stall`` seconds."""
        with self._lock:
            if self.live and now - self.last_frame > self.cfg.stall:
                self._lose(f"no frame for {now - self.last_frame:.1f} s (--stall {self.cfg.stall:g})")

    # --- the decoder thread ---
    def _lose(self, why: str) -> None:  # with the lock held
        if self.live:
            self.losses += 1
            self.log(f"{self.url}: lost ({why}); scoring from the text alone until frames come again")
        self.epoch += 1
        self._buf.clear()
        self.live, self.why = False, why

    def _run(self) -> None:
        av = require("av", "video")
        failures = 0  # consecutive connections that ended without a frame
        while not self._stop.is_set():
            self._had_frames = False
            try:
                container = av.open(self.url, options=self._options(), format=self._format(),
                                    timeout=(self.cfg.open_timeout, max(self.cfg.stall, 1.0)))
            except (av.error.FFmpegError, OSError, ValueError) as e:
                why = f"cannot open it ({_reason(e)})"
            else:
                self.connects += 1
                try:
                    why = self._read(container)
                finally:
                    container.close()
            if self._stop.is_set():
                return
            with self._lock:
                self._lose(why)
            failures = 1 if self._had_frames else failures + 1
            limit = self.cfg.max_retries
            if limit is not None and failures > limit:
                n = failures - 1
                self.gave_up = (f"{self.url}: {why}; gave up after {n} reconnect attempt{'s' if n != 1 else ''} "
                                f"(--max-retries {limit})")
                self.log(self.gave_up)
                return
            delay = backoff_delay(failures, self.cfg.backoff_first, self.cfg.backoff_max)
            self.log(f"{self.url}: {why}; reconnecting in {delay:g} s (attempt {failures})")
            self._stop.wait(delay)

    def _options(self) -> dict[str, str]:
        opts = {}
        if self.url.startswith(("rtsp://", "rtsps://")):
            opts["rtsp_transport"] = "tcp"  # through NAT and firewalls; rtsp_transport=udp in --av-option
        opts.update(self.cfg.av_options)
        return opts

    def _format(self) -> str | None:
        return "v4l2" if self.url.startswith("/dev/video") and sys.platform.startswith("linux") else None

    def _read(self, container) -> str:
        """Decode until the connection ends; returns why it ended."""
        av = require("av", "video")
        if not container.streams.video:
            return "it has no video stream"
        vs = container.streams.video[0]
        subs = container.streams.subtitles[:1] if self.on_text is not None else []
        step, next_t = 1.0 / self.cfg.fps, None
        try:
            for packet in container.demux(vs, *subs):
                if self._stop.is_set():
                    return "stopped"
                if packet.stream is not vs:
                    self._subtitle(packet)
                    continue
                for frame in packet.decode():
                    now = self.clock()
                    t = float(frame.time) if frame.time is not None else now - self.t0
                    take = next_t is None or t >= next_t - 1e-6 or t < next_t - 1.0  # 1 s back: timestamps reset
                    if take:
                        next_t = t + step
                        img = frame.to_ndarray(format="rgb24")  # (H, W, 3)
                    with self._lock:
                        self.last_frame = now
                        if not self.live:
                            self.live, self.why = True, ""
                            self.log(f"{self.url}: receiving frames ({frame.width}x{frame.height})")
                        self._had_frames = True
                        if take:
                            if len(self._buf) >= self.cfg.buffer_frames:
                                self._buf.popleft()  # the oldest goes: a score covers the newest frames
                                self._dropped += 1
                                self.dropped_total += 1
                            self._buf.append((now - self.t0, img))
                            self.taken_total += 1
                            self.high_water = max(self.high_water, len(self._buf))
        except (av.error.FFmpegError, OSError, ValueError) as e:
            return f"reading it failed ({_reason(e)})"
        return "the stream ended"

    def _subtitle(self, packet) -> None:
        from trml_edge.predict.subtitles import clean_text, dialogue_text

        for sub in packet.decode():
            text = clean_text(dialogue_text(sub))
            if text:
                self.on_text(text)


@dataclass
class Tick:
    time: float  # seconds since the source was opened
    epoch: int
    frames: list[tuple[float, np.ndarray]]  # (time, RGB frame) taken since the previous tick
    text: str | None
    dropped: int
    live: bool
    why: str  # why the video is not live ("" when it is)
    at: float  # clock() of the tick


def ticks(video: LiveVideo, text: Callable[[], str | None], every: float, stop: threading.Event,
          clock: Callable[[], float] = time.monotonic) -> Iterator[Tick]:
    """A ``Tick`` every ``every`` seconds from the video's start, until ``stop`` is set or the video gives up."""
    k = 1
    while True:
        if stop.wait(max(0.0, video.t0 + k * every - clock())):
            return
        now = clock()
        k = int((now - video.t0) / every) + 1  # the next tick still ahead: a slow score skips, never queues
        video.check_stall(now)
        epoch, frames, dropped, live = video.take()
        yield Tick(now - video.t0, epoch, frames, text(), dropped, live, video.why, now)
        if video.gave_up:
            return
