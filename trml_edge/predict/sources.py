"""What ``predict`` reads: the kinds of source, and the finite ones as a stream of ``Window``s.

* a video file: one window per utterance (the cues of ``--subtitles``, of a sidecar ``.srt``/``.vtt`` with the
  video's name, or of the container's first subtitle track), or the whole clip as one window (with ``--text``,
  or with no text at all);
* a folder: every video file under it, in name order, each with its sidecar subtitles if it has them;
* a manifest (``.csv``/``.jsonl``, ``trml_edge.predict.manifest``): one window per row;
* a live URL (``rtsp://``, ``rtsps://``, ``rtmp://``, ``rtmps://``, ``http(s)://``, ``udp://``) or a camera
  device (``/dev/videoN``): ticks of ``trml_edge.predict.live``, which yields ``Window``s too.

Every bad input becomes a ``Window`` with an ``error`` (its row says why), never an exception that stops the
run and never a row left out: a file that does not decode, a manifest row naming a missing file, a subtitle
block that does not parse.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from trml_edge.errors import ConfigError, DataError
from trml_edge.predict.manifest import MANIFEST_SUFFIXES, Item, read_manifest
from trml_edge.predict.subtitles import SUBTITLE_SUFFIXES, read_file, sidecar
from trml_edge.predict.window import Window

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv",
                  ".3gp", ".ogv")
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp")
DEVICE = re.compile(r"^/dev/video\d+$")
ACCEPTED = (f"a video file ({', '.join(VIDEO_SUFFIXES[:6])}, ...), a folder of videos, a manifest (.csv or .jsonl), "
            f"a live URL ({', '.join(s + '://' for s in LIVE_SCHEMES)}) or a camera device (/dev/videoN)")
FILE, FOLDER, MANIFEST, LIVE = "file", "folder", "manifest", "live"


def source_kind(source: str) -> str:
    """file | folder | manifest | live; anything else is a ``ConfigError`` that lists what is accepted."""
    scheme = source.split("://", 1)[0].lower() if "://" in source else None
    if scheme is not None:
        if scheme in LIVE_SCHEMES:
            return LIVE
        raise ConfigError(f"source {source!r}: {scheme}:// is not a source predict reads; give {ACCEPTED}")
    if DEVICE.match(source):
        return LIVE
    path = Path(source)
    if path.is_dir():
        return FOLDER
    if not path.exists():
        hint = " (a camera is /dev/videoN)" if source.isdigit() else ""
        raise ConfigError(f"source {source!r}: no such file or folder{hint}; give {ACCEPTED}")
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return FILE
    if suffix in MANIFEST_SUFFIXES:
        return MANIFEST
    if suffix in SUBTITLE_SUFFIXES:
        raise ConfigError(f"source {source!r} is a subtitle file; give the video (its .srt/.vtt is read from "
                          "beside it, or name it with --subtitles)")
    raise ConfigError(f"source {source!r}: {suffix or 'a file without an extension'} is not a kind predict reads; "
                      f"give {ACCEPTED}")


@dataclass
class Finite:
    """A file, folder or manifest, listed: the items to score and what was found but not used."""

    kind: str
    items: list[Item]
    ignored: Counter  # file suffix -> files in a folder that are neither videos nor their subtitles


def list_finite(source: str, kind: str, text: str | None = None, subtitles: Path | None = None) -> Finite:
    """The items of a finite source. ``text``/``subtitles`` apply to a single video file only."""
    if kind != FILE and (text is not None or subtitles is not None):
        raise ConfigError(f"--text and --subtitles are for one video file; for a {kind}, put a subtitle file "
                          "beside each video (or a text column in the manifest)")
    if text is not None and subtitles is not None:
        raise ConfigError("give --text (the whole clip is one utterance) or --subtitles (one utterance a cue), "
                          "not both")
    if kind == FILE:
        return Finite(kind, [Item(source, Path(source), text, utterances=text is None)], Counter())
    if kind == MANIFEST:
        return Finite(kind, read_manifest(Path(source)), Counter())
    root = Path(source)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(x.startswith(".") for x in
                                                                          p.relative_to(root).parts))
    videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    used = {p.with_suffix(s) for p in videos for s in SUBTITLE_SUFFIXES}
    ignored = Counter(p.suffix.lower() or "(no extension)" for p in files
                      if p.suffix.lower() not in VIDEO_SUFFIXES and p not in used)
    if not videos:
        raise DataError(f"folder {source} holds no video files ({', '.join(VIDEO_SUFFIXES[:6])}, ...); give a "
                        "folder of videos, a video file or a manifest")
    return Finite(kind, [Item(str(p), p, None, utterances=True) for p in videos], ignored)


def item_windows(item: Item, clip_frames: Callable[[int], np.ndarray], subtitles: Path | None = None
                 ) -> Iterator[Window]:
    """The windows of one item, in order; what cannot be read is an error window, and the next item goes on."""
    from trml_edge.errors import ClipError
    from trml_edge.predict.clips import Span, scan, windows

    if item.problem is not None:
        yield _error(item.source, None, item.problem)
        return
    if item.video is None:  # a text-only manifest row: the video is missing, the generator makes it
        yield Window(item.source, None, 0.0, None, None, item.text, None, time.monotonic())
        return
    done = 0
    try:
        whole = not item.utterances
        subs = None if whole else (subtitles if subtitles is not None else sidecar(item.video))
        layout = scan(item.video, read_track=not whole and subs is None)
        if whole or (subs is None and not layout.track):
            spans = [Span(None, item.start or 0.0, item.end if item.end is not None else float("inf"), item.text)]
        else:
            if subs is not None:
                cues, problems = read_file(subs)
                for p in problems:
                    yield _error(item.source, None, f"{p.where}: {p.reason}")
            else:
                cues = layout.track
            if not cues:
                where = subs if subs is not None else "its subtitle track"
                yield _error(item.source, None, f"{where} holds no cue; fix it, or remove it to score the clip whole")
                return
            spans = [Span(k, c.start, c.end, c.text) for k, c in enumerate(cues)]
        for w in windows(item.video, item.source, spans, layout, clip_frames):
            done += 1
            yield w
    except (ClipError, DataError) as e:
        from trml_edge.data.video import FIX

        after = f", after {done} utterances" if done else ""
        fix = "; re-encode or replace the file, or leave it out" if isinstance(e, ClipError) else ""
        yield _error(item.source, None, f"{str(e).replace(f'; {FIX}', '')}{after}{fix}")


def _error(source: str, item: int | None, reason: str) -> Window:
    return Window(source, item, 0.0, None, None, None, None, time.monotonic(), error=reason)


def finite_windows(finite: Finite, clip_frames: Callable[[int], np.ndarray], subtitles: Path | None = None
                   ) -> Iterator[tuple[int, Window | None]]:
    """(index of the item, window) for every window of every item; (index, None) after each item's last."""
    for i, item in enumerate(finite.items):
        for w in item_windows(item, clip_frames, subtitles):
            yield i, w
        yield i, None
