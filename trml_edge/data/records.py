"""The records every corpus reader produces: one ``ClipRecord`` per CSV row, a ``Corpus`` per dataset,
``ClipArrays`` per decoded split.

A leaf of the corpus readers: ``trml_edge.data.meld`` (MELD) and ``trml_edge.data.corpus`` (MMSA layout,
detection and split loading) both import it, and it imports neither, so the readers form a tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class ClipRecord:
    clip_id: str  # unique within the corpus
    text: str
    label: float  # regression score, or class index for classification corpora
    split: str  # train | valid | test
    video: Path | None  # None when the corpus row has no video file
    problem: str | None = None  # why the row cannot be used (bad label, duplicate id ...), else None
    where: str = ""  # file and line of the row, for reports
    video_note: str = ""  # why ``video`` is None (not found, a directory in its place ...), for reports


@dataclass
class ClipArrays:
    ids: list[str]
    texts: list[str]
    labels: np.ndarray  # (N,) float32
    frames: np.ndarray | None  # (N, T, S, S, 3) uint8 resized for the backbone; None when only embeddings are kept
    frame_mask: np.ndarray  # (N, T) bool
    skipped: dict[str, str] = field(default_factory=dict)  # clip id -> why it was skipped

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Corpus:
    """A corpus read from disk: its records, every video file found, and what the labels mean."""

    layout: str  # "mmsa" | "meld"
    root: Path
    records: list[ClipRecord]
    videos: list[Path]  # every clip file present, to find files that no row refers to
    task: str  # regression | classification
    class_names: tuple[str, ...] = ()  # index -> name, for classification
    label_range: tuple[float, float] | None = None  # valid regression range
    notes: list[str] = field(default_factory=list)  # layout problems that are not tied to one row

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.task == "classification" else 1


def clip_file(path: Path) -> tuple[Path | None, str]:
    """``(path, "")`` when the clip file exists, else ``(None, why not)``."""
    if path.is_file():
        return path, ""
    if path.is_dir():
        return None, f"{path} is a directory, not a clip file"
    return None, f"{path} not found"


def clip_files(folder: Path, pattern: str) -> list[Path]:
    """The clip files (not directories, not hidden files) under ``folder`` matching ``pattern``, sorted."""
    return sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith("."))
