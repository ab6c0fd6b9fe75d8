"""``trml-edge data check``: what in a corpus cannot be used, and how to fix it.

Every problem has a kind, the row or file it concerns, a detail, and (per kind) the action that fixes it.
Training never dies on these: it skips the clip and counts it (``skipped_clips`` in ``metrics.json``); the
check exists so the count is no surprise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trml_edge.data.corpus import open_corpus
from trml_edge.data.records import SPLITS, Corpus
from trml_edge.errors import ClipError

FIXES = {
    "missing_video": "restore the clip file, or delete the row (training skips it)",
    "orphan_video": "add a row for the file or delete it (it is never used)",
    "corrupt": "re-download or re-encode the clip (training skips it)",
    "empty": "zero-length clip: re-download or re-encode it, or delete it and its row (training skips it)",
    "no_video_stream": "the file has no video track: replace it with the video clip (training skips it)",
    "unreadable": "check the file's permissions (training skips it)",
    "bad_label": "correct the label in the CSV (training skips the row)",
    "duplicate": "delete the repeated row (training skips it)",
    "bad_split": "set the split column to train, valid or test (training skips the row)",
    "malformed_row": "fix the row in the CSV: one value per header column, a value that holds a comma or a "
                     "quote in double quotes, a quote inside it doubled (\"\") (training skips the row)",
    "layout": "see the README section 'Real datasets' for the expected layout",
}


@dataclass
class Problem:
    kind: str  # a key of FIXES
    item: str  # clip id or file path
    detail: str
    where: str = ""  # CSV file and line, when the problem is a row


@dataclass
class CheckReport:
    root: str
    layout: str
    task: str
    class_names: tuple[str, ...]
    splits: dict[str, int] = field(default_factory=dict)  # rows per split
    usable: dict[str, int] = field(default_factory=dict)  # rows per split that training will use
    labels: dict[str, Any] = field(default_factory=dict)  # per split: min/max/mean, or class counts
    problems: list[Problem] = field(default_factory=list)
    decoded: bool = True  # whether clips were decoded (False: only file existence was checked)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "layout": self.layout, "task": self.task, "class_names": list(self.class_names),
                "splits": self.splits, "usable": self.usable, "labels": self.labels, "decoded": self.decoded,
                "problem_counts": self.counts(),
                "problems": [{"kind": p.kind, "item": p.item, "detail": p.detail, "where": p.where,
                              "fix": FIXES[p.kind]} for p in self.problems]}


def _row_kind(detail: str) -> str:
    if detail.startswith("malformed row"):
        return "malformed_row"
    if detail.startswith("duplicate"):
        return "duplicate"
    if detail.startswith("mode ") or "not train, valid or test" in detail:
        return "bad_split"
    return "bad_label"


def _label_summary(corpus: Corpus, labels: list[float]) -> dict[str, Any]:
    if not labels:
        return {}
    y = np.asarray(labels)
    if corpus.task == "regression":
        return {"min": float(y.min()), "max": float(y.max()), "mean": round(float(y.mean()), 4)}
    counts = Counter(int(v) for v in y)
    return {name: counts.get(i, 0) for i, name in enumerate(corpus.class_names)}


def check_corpus(root: Path, meld_task: str = "emotion", decode: bool = True, on_clip=None) -> CheckReport:
    """Read the corpus under ``root`` and report every problem; decodes each clip unless ``decode=False``."""
    from trml_edge.data.video import FIX as CLIP_FIX, decoded_frames

    corpus = open_corpus(Path(root), meld_task)
    report = CheckReport(str(root), corpus.layout, corpus.task, corpus.class_names, decoded=decode)
    report.problems += [Problem("layout", str(root), note) for note in corpus.notes]
    referenced = set()
    by_split: dict[str, list[float]] = {}
    for i, r in enumerate(corpus.records):
        report.splits[r.split] = report.splits.get(r.split, 0) + 1
        if r.video is not None:
            referenced.add(r.video.resolve())
        if r.problem is not None:
            report.problems.append(Problem(_row_kind(r.problem), r.clip_id, r.problem, r.where))
            continue
        if r.video is None:
            report.problems.append(Problem("missing_video", r.clip_id, r.video_note or "no clip file for this row",
                                           r.where))
            continue
        if decode:
            try:
                if decoded_frames(r.video) == 0:
                    report.problems.append(Problem("empty", r.clip_id, f"{r.video} has no frames", r.where))
                    continue
            except ClipError as e:  # the fix is the kind's FIXES entry: drop the message's own advice
                report.problems.append(Problem(e.kind, r.clip_id, str(e).replace(f"; {CLIP_FIX}", ""), r.where))
                continue
            if on_clip is not None:
                on_clip(i + 1, len(corpus.records))
        elif r.video.stat().st_size == 0:
            report.problems.append(Problem("empty", r.clip_id, f"{r.video} is 0 bytes", r.where))
            continue
        report.usable[r.split] = report.usable.get(r.split, 0) + 1
        by_split.setdefault(r.split, []).append(r.label)
    for v in corpus.videos:
        if v.resolve() not in referenced:
            report.problems.append(Problem("orphan_video", str(v), "no CSV row refers to this file"))
    report.labels = {s: _label_summary(corpus, by_split[s]) for s in SPLITS if s in by_split}
    for s in SPLITS:
        if not report.usable.get(s):
            report.problems.append(Problem("layout", s, f"the {s} split has no usable clip"))
    return report
