"""Manifests: a ``.csv`` or ``.jsonl`` file listing the inputs to score, one prediction a row.

A row names a video and/or a text. Columns (JSONL: keys), with paths relative to the manifest's folder:

* ``video`` and/or ``text``, and optionally ``start`` and ``end`` (seconds: score only that span of the video);
* or the corpora's own files, as the data readers take them: an MMSA ``label.csv`` (``video_id``, ``clip_id``,
  ``text``: the clip ``Raw/<video_id>/<clip_id>.mp4``) or a MELD ``*_sent_emo.csv`` (``Utterance``,
  ``Dialogue_ID``, ``Utterance_ID``: the clip ``dia<D>_utt<U>.mp4`` in its split's clip folder).

A row that cannot be scored (a malformed line, a video that does not exist, a row with neither a video nor a
text) is an ``Item`` with a ``problem``, which ``predict`` writes as an error row; the other rows are scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trml_edge.errors import DataError

MANIFEST_SUFFIXES = (".csv", ".jsonl")
COLUMNS_HELP = ("give a 'video' and/or a 'text' column (optional 'start', 'end' in seconds), or an MMSA label.csv "
                "or MELD *_sent_emo.csv as the data readers take them; see docs/predict.md")


@dataclass(frozen=True)
class Item:
    """One finite input: a manifest row, or a video file of a folder."""

    source: str  # what its rows are labelled with: the video file, or the manifest row FILE:LINE
    video: Path | None
    text: str | None
    start: float | None = None
    end: float | None = None
    problem: str | None = None
    utterances: bool = False  # a video file of its own: one window per cue of its subtitles (a manifest row: one)


def _jsonl_rows(path: Path) -> list[tuple[int, dict, str | None]]:
    from trml_edge.data.tables import read_lines

    rows = []
    for n, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append((n, {}, f"not a JSON object ({e.msg} at column {e.colno}); write one object a line"))
            continue
        if not isinstance(obj, dict):
            rows.append((n, {}, f"a JSON {type(obj).__name__}, not an object; write one object a line"))
            continue
        rows.append((n, {k: "" if v is None else str(v) for k, v in obj.items()}, None))
    return rows


def _meld_folder(path: Path) -> Path:
    """The clip folder of a MELD csv's split (the official archive names, or ``meld_layout.json``)."""
    from trml_edge.data.meld import MeldLayout

    layout = MeldLayout.load(path.parent)
    split = next((s for s, name in layout.csv_files.items() if name == path.name), None)
    if split is None:
        return path.parent
    for p in [path.parent / layout.folders[split], *sorted(path.parent.glob(f"*/{layout.folders[split]}"))]:
        if p.is_dir():
            return p
    return path.parent


def _span(row: dict) -> tuple[float | None, float | None, str | None]:
    out = []
    for key in ("start", "end"):
        raw = row.get(key, "").strip()
        try:
            out.append(float(raw) if raw else None)
        except ValueError:
            return None, None, f"{key} {raw!r} is not a number of seconds"
    start, end = out
    if start is not None and end is not None and end <= start:
        return None, None, f"end {end:g} s is not after start {start:g} s"
    return start, end, None


def read_manifest(path: Path) -> list[Item]:
    """The manifest's rows as ``Item``s, in file order."""
    from trml_edge.data.tables import read_rows

    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path}: no such file")
    rows = _jsonl_rows(path) if path.suffix.lower() == ".jsonl" else read_rows(path, (), "predict manifest")
    columns = set().union(*(r.keys() for _, r, _ in rows)) if rows else set()
    mmsa, meld = {"video_id", "clip_id"} <= columns, {"Utterance", "Dialogue_ID", "Utterance_ID"} <= columns
    if not rows:
        raise DataError(f"manifest {path} has no rows; {COLUMNS_HELP}")
    if not (mmsa or meld or columns & {"video", "text"}):
        raise DataError(f"manifest {path} has none of the columns predict reads (found {sorted(columns)}); "
                        f"{COLUMNS_HELP}")
    root, meld_dir = path.parent, _meld_folder(path) if meld else None
    items = []
    for line, row, problem in rows:
        source = f"{path.name}:{line}"
        text = (row.get("Utterance") if meld else row.get("text", "")) or ""
        if mmsa:
            rel = f"Raw/{row['video_id']}/{row['clip_id']}.mp4" if row.get("video_id") else ""
        elif meld:
            rel = f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}.mp4"
        else:
            rel = row.get("video", "").strip()
        video = None
        if rel:
            video = Path(rel) if Path(rel).is_absolute() else (meld_dir if meld else root) / rel
        start, end, bad_span = _span(row)
        if problem is None and bad_span:
            problem = f"{bad_span}; fix the row"
        if problem is None and video is not None and not video.is_file():
            problem = (f"video {video} {'is a folder' if video.is_dir() else 'not found'}; fix the path "
                       f"(relative to {root}) or remove the row")
        if problem is None and video is None and not text.strip():
            problem = "the row has neither a video nor a text, so no prediction is possible; fill one of them"
        if problem is None and video is None and (start is not None or end is not None):
            problem = "start/end are given without a video; add the video or drop them"
        items.append(Item(source, video, text.strip() or None, start, end, problem))
    return items
