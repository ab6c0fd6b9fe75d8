"""The text of a live source: fixed (``--text``), a live transcript (``--transcript -|FILE``), or the stream's own
subtitle track.

A transcript is lines of text: each new line starts a new utterance, which is the text of every score until the
next line replaces it (blank lines are skipped). ``-`` reads standard input; a file is followed as it grows, as
``tail -f`` does: its last line when ``predict`` starts is the current text, and a file that shrinks (rotated
or truncated) is read again from its start. Subtitles of the stream's track replace the text the same way.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from trml_edge.errors import ConfigError


class TextNow:
    """The current utterance, set by a reader thread (or the decoder, for a subtitle track) and read by ticks."""

    def __init__(self, text: str | None = None):
        self._text = text
        self._lock = threading.Lock()
        self.utterances = 0 if text is None else 1

    def __call__(self) -> str | None:
        with self._lock:
            return self._text

    def set(self, line: str) -> None:
        line = " ".join(line.split())
        if line:
            with self._lock:
                if line != self._text:
                    self.utterances += 1
                self._text = line


def follow(source: str, now: TextNow, stop: threading.Event, poll: float = 0.1) -> threading.Thread:
    """Start a daemon thread that feeds ``now`` with the lines of ``source`` (``-``: standard input)."""
    if source != "-":
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"--transcript {source}: no such file; give a text file that grows a line per "
                              "utterance, or - for standard input")
        pos, partial = _read_existing(path, now)  # before the first tick, so the first score has it
        target, args = _follow_file, (path, now, stop, poll, pos, partial)
    else:
        target, args = _read_stdin, (now,)
    thread = threading.Thread(target=target, args=args, name="predict-transcript", daemon=True)
    thread.start()
    return thread


def _read_stdin(now: TextNow) -> None:
    for line in sys.stdin:  # a daemon thread: it may stay blocked here until the process exits
        now.set(line)


def _read_existing(path: Path, now: TextNow) -> tuple[int, str]:
    """Set the file's last complete line as the current utterance; (bytes read, the unfinished last line)."""
    data = path.read_bytes()
    *complete, partial = data.decode("utf-8", "replace").split("\n")
    last = next((line for line in reversed(complete) if line.strip()), None)
    if last is not None:
        now.set(last)
    return len(data), partial


def _follow_file(path: Path, now: TextNow, stop: threading.Event, poll: float, pos: int, partial: str) -> None:
    while not stop.wait(poll):
        try:
            size = os.stat(path).st_size
        except OSError:
            continue  # being rotated: it comes back
        if size < pos:
            pos, partial = 0, ""  # truncated or replaced: read the new file from its start
        if size == pos:
            continue
        with open(path, "rb") as f:
            f.seek(pos)
            chunk = f.read(size - pos)
        pos += len(chunk)
        text = partial + chunk.decode("utf-8", "replace")
        *complete, partial = text.split("\n")
        for line in complete:
            now.set(line)
