"""Streams: a sliding window of per-frame embeddings plus the current text. numpy only.

One source for what a stream is, shared by the edge runtime (``Pipeline.stream()``) and the Triton stream
router (``trml_stream``):

* the window is the last ``max_frames`` frames pushed (fewer at the start), kept as image-encoder
  embeddings, so each frame is encoded once, when it arrives; of a burst longer than the window only its
  last ``max_frames`` frames can enter it, so only those are encoded;
* the text is the last one pushed, kept with its text-encoder embedding until a different text replaces it;
* each update is routed like a request (``routing.route``): no frames yet is visual-missing, no text yet is
  text-missing.

``StreamTable`` holds the live streams of a server: bounded in number (a new stream beyond the bound is
refused with the retryable ``StreamLimitError``) and freed on the end flag or after an idle timeout.

A leaf module (numpy and, relatively, ``errors`` and ``routing``): ``trml-edge triton build`` copies it byte for
byte beside the stream router.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from .errors import RequestError, StreamLimitError
from .routing import route


def burst_tail(n: int, max_frames: int) -> slice:
    """The frames of an ``n``-frame burst that can still be in the window after it: its last ``max_frames``."""
    return slice(max(0, n - max_frames), n)


class StreamState:
    """One stream: the window of frame embeddings (each (D,) float32) and the current text with its embedding.

    ``v`` caches the temporal encoder's output for the current window (None after new frames arrive), so an
    update that only changes the text does not run the temporal encoder again.
    """

    def __init__(self, max_frames: int):
        self.frames: deque = deque(maxlen=max_frames)  # (D,) float32 each, oldest first
        self.text: str | None = None
        self.t: np.ndarray | None = None  # (D,) text embedding of ``text``
        self.v: np.ndarray | None = None  # (D,) visual embedding of the current window, when known
        self.last_used = time.monotonic()
        self.updates = 0

    def scenario(self, new_frames: bool, new_text: bool) -> str:
        """The scenario of an update that adds frames and/or text (``routing.route``'s names)."""
        return route(new_frames or len(self.frames) > 0, new_text or self.text is not None)

    def text_changes(self, text: str | None) -> bool:
        """Whether ``text`` must be encoded: given and different from the current text."""
        return text is not None and text != self.text

    def window(self, new_emb: np.ndarray | None = None) -> np.ndarray:
        """(T, D) frame embeddings of the window after adding ``new_emb`` (k, D); the state is not changed."""
        old = list(self.frames)
        if new_emb is not None and len(new_emb):
            old = (old + list(new_emb))[-self.frames.maxlen:]
        return np.stack(old).astype(np.float32, copy=False)

    def commit(self, new_emb: np.ndarray | None, text: str | None, t: np.ndarray | None,
               v: np.ndarray | None) -> None:
        """Take an update that was computed without error: new frame embeddings, the text and its embedding
        (when the text changed), and the window's visual embedding (when it was computed)."""
        if new_emb is not None and len(new_emb):
            self.frames.extend(np.asarray(e, np.float32) for e in new_emb)
        if t is not None:
            self.text, self.t = text, np.asarray(t, np.float32)
        if v is not None:
            self.v = np.asarray(v, np.float32)
        elif new_emb is not None and len(new_emb):
            self.v = None
        self.last_used = time.monotonic()
        self.updates += 1


class StreamTable:
    """Live streams by id, at most ``max_streams`` of them; each is freed on end or after ``idle_s`` unused.

    Thread safe (a sweeper thread may call ``expire`` while requests are served).
    """

    def __init__(self, max_frames: int, max_streams: int, idle_s: float):
        if max_streams < 1 or idle_s <= 0 or max_frames < 1:
            raise ValueError("max_frames and max_streams must be >= 1 and idle_s > 0")
        self.max_frames, self.max_streams, self.idle_s = max_frames, max_streams, idle_s
        self._streams: dict = {}
        self._lock = threading.Lock()
        self.opened = self.refused = self.expired = self.ended = 0  # lifetime counts, for statistics

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, sid) -> bool:
        return sid in self._streams

    def open(self, sid) -> StreamState:
        """Register a new, empty stream ``sid`` (a START on a live id replaces it). Beyond the bound the new
        stream is refused with the retryable ``StreamLimitError`` and nothing is registered."""
        with self._lock:
            if sid not in self._streams and len(self._streams) >= self.max_streams:
                self.refused += 1
                raise StreamLimitError(
                    f"stream {sid} refused: {len(self._streams)} streams are live, the bound is "
                    f"{self.max_streams}; retry after a stream ends or times out (idle timeout "
                    f"{self.idle_s:g} s), or build the repository with a larger --stream-max-streams")
            state = self._streams[sid] = StreamState(self.max_frames)
            self.opened += 1
            return state

    def get(self, sid) -> StreamState:
        """The live stream ``sid`` (its idle clock restarts); an id that is not live is the client's error."""
        with self._lock:
            state = self._streams.get(sid)
            if state is not None:
                state.last_used = time.monotonic()
                return state
        raise RequestError(f"stream {sid} is not live: it was never started, it ended, or it was idle for "
                           f"more than {self.idle_s:g} s; start it again with the sequence start flag")

    def end(self, sid) -> bool:
        with self._lock:
            found = self._streams.pop(sid, None) is not None
            self.ended += found
            return found

    def expire(self, now: float | None = None) -> list:
        """Free every stream unused for more than ``idle_s``; returns their ids."""
        now = time.monotonic() if now is None else now
        with self._lock:
            gone = [sid for sid, s in self._streams.items() if now - s.last_used > self.idle_s]
            for sid in gone:
                del self._streams[sid]
            self.expired += len(gone)
        return gone
