"""Corpus records and split loading.

A corpus is a list of ``ClipRecord``; a split loads into ``ClipArrays`` (decoded, resized frames with a
frame mask, texts, labels). A clip that cannot be decoded is skipped, counted and reported, never fatal.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trml_edge.errors import DataError
from trml_edge.preprocess import resize_crop

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class ClipRecord:
    clip_id: str  # unique within the corpus
    text: str
    label: float  # regression score, or class index for classification corpora
    split: str  # train | valid | test
    video: Path | None  # None when the corpus row has no video file


@dataclass
class ClipArrays:
    ids: list[str]
    texts: list[str]
    labels: np.ndarray  # (N,) float32
    frames: np.ndarray  # (N, T, S, S, 3) uint8, resized for the backbone
    frame_mask: np.ndarray  # (N, T) bool
    skipped: dict[str, str] = field(default_factory=dict)  # clip id -> why it was skipped

    def __len__(self) -> int:
        return len(self.ids)


MMSA_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")


def read_mmsa(root: Path) -> list[ClipRecord]:
    """CMU-MOSI / CMU-MOSEI in the MMSA raw layout: ``label.csv`` and ``Raw/<video_id>/<clip_id>.mp4``."""
    root = Path(root)
    path = root / "label.csv"
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MMSA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} lacks columns {missing}; expected the MMSA label.csv header")
        records = []
        for row in reader:
            split = row["mode"].strip().lower()
            split = {"dev": "valid", "val": "valid"}.get(split, split)
            video = root / "Raw" / row["video_id"] / f"{row['clip_id']}.mp4"
            try:
                label = float(row["label"])
            except ValueError as e:
                raise DataError(f"{path}: clip {row['video_id']}/{row['clip_id']} has label {row['label']!r}") from e
            records.append(ClipRecord(f"{row['video_id']}$_${row['clip_id']}", row["text"], label, split,
                                      video if video.is_file() else None))
    return records


def read_corpus(root: Path) -> list[ClipRecord]:
    """Detect the corpus layout under ``root`` and read its records."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset directory {root} not found; create one with `trml-edge data synth {root}`")
    if (root / "label.csv").is_file():
        return read_mmsa(root)
    raise DataError(
        f"{root} is not a known corpus layout: expected label.csv (CMU-MOSI/MOSEI, MMSA layout); "
        "see the README's 'Real datasets' section"
    )


def load_split(records: list[ClipRecord], split: str, n_frames: int, image_size: int) -> ClipArrays:
    """Decode and resize the frames of one split. Broken or missing clips are skipped and reported."""
    from trml_edge.data.video import read_frames

    rows = [r for r in records if r.split == split]
    if not rows:
        raise DataError(f"the corpus has no {split!r} clips; check the split column")
    ids, texts, labels, frames, masks, skipped = [], [], [], [], [], {}
    for r in rows:
        if r.video is None:
            skipped[r.clip_id] = "video file missing"
            continue
        try:
            f, m = read_frames(r.video, n_frames)
        except DataError as e:
            skipped[r.clip_id] = str(e)
            continue
        ids.append(r.clip_id)
        texts.append(r.text)
        labels.append(r.label)
        frames.append(resize_crop(f, image_size))
        masks.append(m)
    if skipped:
        log.warning("%s: skipped %d of %d clips that could not be read", split, len(skipped), len(rows))
    if not ids:
        raise DataError(f"no readable clip in the {split!r} split ({len(skipped)} skipped); run `trml-edge data check`")
    return ClipArrays(ids, texts, np.asarray(labels, np.float32), np.stack(frames), np.stack(masks), skipped)
