"""Utterances from subtitles: ``.srt`` and ``.vtt`` files, and the subtitle track inside a container.

A cue is one utterance: its time span in the video and its text. ``predict`` scores each cue over the frames
inside its span, the way CMU-MOSI and MELD label utterances. Formatting is removed from the text (SRT's
``<i>``/``<font>``, WebVTT's ``<v Speaker>``/``<c.class>``/inline timestamps, ASS override blocks such as
``{\\an8}`` in tracks) and a cue's lines are joined with spaces.

Parsing never drops a cue quietly: a block that is not a cue (a timing line that does not parse, an end before
its start) comes back as a ``Problem`` with its line number, and ``predict`` writes it as an error row.
Standard library only; the container track is read with PyAV by ``clips.py``.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

from trml_edge.errors import DataError

SUBTITLE_SUFFIXES = (".srt", ".vtt")
# SRT: 00:00:01,500  WebVTT: 00:00:01.500 or 00:01.500 (hours optional); SRT writers also emit '.' at times
_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})[,.](\d{1,3})"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(?:\s+.*)?$")
_TAG = re.compile(r"<[^>]*>")  # <i>, </i>, <font color=..>, <v Bob>, <c.loud>, <00:00:01.000>
_ASS = re.compile(r"\{\\[^}]*\}")  # {\an8}, {\i1}: ASS override blocks (SRT files carry them too)


@dataclass(frozen=True)
class Cue:
    start: float  # seconds from the start of the video
    end: float
    text: str | None  # None: a cue with no words left once its formatting is removed
    where: str  # "FILE:LINE" or "track N, cue K", for error rows


@dataclass(frozen=True)
class Problem:
    where: str
    reason: str


def clean_text(raw: str) -> str | None:
    """Subtitle text -> plain words: tags and ASS blocks removed, entities decoded, lines joined; None if empty."""
    text = _ASS.sub("", raw.replace("\\N", "\n").replace("\\n", "\n"))
    text = html.unescape(_TAG.sub("", text))
    text = " ".join(text.split())
    return text or None


def _seconds(h, m, s, frac) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(frac.ljust(3, "0")) / 1000.0


def parse(text: str, name: str) -> tuple[list[Cue], list[Problem]]:
    """The cues of an SRT or WebVTT document (``name`` labels the lines in ``Cue.where``), in file order.

    One parser serves both formats: a cue is a block of lines holding a ``start --> end`` timing line, with an
    optional identifier line before it (SRT's counter, WebVTT's cue id) and its text after it. WebVTT's
    ``WEBVTT`` header and its ``NOTE``, ``STYLE`` and ``REGION`` blocks are not cues.
    """
    lines = text.lstrip("\ufeff").splitlines()
    cues, problems = [], []
    i = 0
    while i < len(lines):
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines):
            break
        start_line = i
        block = []
        while i < len(lines) and lines[i].strip():
            block.append(lines[i])
            i += 1
        head = block[0].strip()
        if (start_line == 0 and head.startswith("WEBVTT")) or head.split(" ")[0] in ("NOTE", "STYLE", "REGION"):
            continue
        timing = next((k for k, line in enumerate(block[:2]) if "-->" in line), None)
        where = f"{name}:{start_line + 1 + (timing or 0)}"
        if timing is None:
            problems.append(Problem(f"{name}:{start_line + 1}", f"a block with no 'start --> end' timing line "
                                    f"({head[:40]!r}); give each cue a timing line such as "
                                    "00:00:01,000 --> 00:00:02,500, or separate cues with one blank line"))
            continue
        m = _TIMING.match(block[timing])
        if m is None:
            problems.append(Problem(where, f"timing line {block[timing].strip()!r} does not parse; write it as "
                                    "HH:MM:SS,mmm --> HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm --> HH:MM:SS.mmm (WebVTT)"))
            continue
        start, end = _seconds(*m.groups()[:4]), _seconds(*m.groups()[4:])
        if end <= start:
            problems.append(Problem(where, f"the cue ends ({end:.3f} s) before it starts ({start:.3f} s); fix its "
                                    "timing line"))
            continue
        cues.append(Cue(start, end, clean_text("\n".join(block[timing + 1:])), where))
    return cues, problems


def read_file(path: Path) -> tuple[list[Cue], list[Problem]]:
    """Cues of an ``.srt`` or ``.vtt`` file (UTF-8, or cp1252 for a line that is not)."""
    from trml_edge.data.tables import read_text

    path = Path(path)
    if path.suffix.lower() not in SUBTITLE_SUFFIXES:
        raise DataError(f"--subtitles {path}: not a subtitle file; give an .srt or .vtt file")
    if not path.is_file():
        raise DataError(f"subtitles {path}: no such file; give an existing .srt or .vtt file")
    return parse(read_text(path), path.name)


def sidecar(video: Path) -> Path | None:
    """The subtitle file beside ``video`` with its name (``clip.srt`` or ``clip.vtt`` for ``clip.mp4``)."""
    found = [video.with_suffix(s) for s in SUBTITLE_SUFFIXES if video.with_suffix(s).is_file()]
    if len(found) > 1:
        raise DataError(f"{video} has two sidecar subtitle files ({found[0].name}, {found[1].name}); keep one, or "
                        "name the one to use with --subtitles")
    return found[0] if found else None


def track_cue(start: float, duration: float | None, raw: str, where: str) -> Cue:
    """A cue of a container's subtitle track: its packet time and duration, and the decoded dialogue."""
    end = start + duration if duration else float("inf")  # a cue without a duration lasts to the next
    return Cue(start, end, clean_text(raw), where)


def dialogue_text(sub) -> str:
    """The text of one subtitle PyAV decoded from a track (its ``AssSubtitle``: the dialogue of a text track)."""
    for attr in ("dialogue", "text"):
        value = getattr(sub, attr, b"")
        if value:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return ""
