"""Layout detection, the MMSA reader and split loading (the records themselves: ``trml_edge.data.records``,
re-exported here).

Two community layouts are read as they are downloaded:

* CMU-MOSI / CMU-MOSEI in the MMSA raw layout: ``label.csv`` + ``Raw/<video_id>/<clip_id>.mp4``,
  regression label in [-3, 3] (``trml_edge.data.corpus.read_mmsa``);
* MELD in its official layout: ``{train,dev,test}_sent_emo.csv`` + one clip folder per split, 7-class
  emotion or 3-class sentiment (``trml_edge.data.meld``).

A row that cannot be used (a label out of range, an unknown class, a duplicate id) becomes a record with a
``problem``: it is reported by ``trml-edge data check`` and skipped by training, never fatal. Nothing is
ever read from a pickle: MMSA's ``.pkl`` feature files are not supported.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from trml_edge.data import meld
from trml_edge.data.records import SPLITS, ClipArrays, ClipRecord, Corpus, clip_file, clip_files
from trml_edge.data.tables import read_rows
from trml_edge.errors import ClipError, DataError

log = logging.getLogger(__name__)

SPLIT_ALIASES = {"dev": "valid", "val": "valid", "validation": "valid", "valid": "valid", "train": "train",
                 "test": "test"}
MMSA_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")
MMSA_RANGE = (-3.0, 3.0)  # MOSI/MOSEI sentiment: the mean of annotations on a -3 .. 3 scale


def split_name(value: str) -> str | None:
    return SPLIT_ALIASES.get(value.strip().lower())


def read_mmsa_corpus(root: Path) -> Corpus:
    """CMU-MOSI / CMU-MOSEI in the MMSA raw layout: ``label.csv`` and ``Raw/<video_id>/<clip_id>.mp4``."""
    root = Path(root)
    path = root / "label.csv"
    raw = root / "Raw"
    records, seen, notes = [], set(), []
    if not raw.is_dir():
        notes.append(f"the clip folder {raw} is missing, so no row has its clip; unpack the videos as "
                     "Raw/<video_id>/<clip_id>.mp4 beside label.csv")
    lo, hi = MMSA_RANGE
    for line, row, problem in read_rows(path, MMSA_COLUMNS, "MMSA label.csv"):
        clip_id = f"{row['video_id']}$_${row['clip_id']}"  # MMSA's own id convention
        video, note = clip_file(raw / row["video_id"] / f"{row['clip_id']}.mp4")
        if not raw.is_dir():
            note = f"the clip folder {raw} is missing"
        label = math.nan
        try:
            label = float(row["label"])
        except ValueError:
            problem = problem or f"label {row['label']!r} is not a number"
        split = split_name(row["mode"])
        if problem is None and not (lo <= label <= hi):  # also catches NaN
            problem = f"label {label:g} is outside [{lo:g}, {hi:g}]"
        if split is None:
            problem = problem or f"mode {row['mode']!r} is not train, valid or test"
            split = row["mode"]
        if clip_id in seen and not (problem or "").startswith("malformed row"):
            problem = f"duplicate row for {row['video_id']}/{row['clip_id']}"
        seen.add(clip_id)
        records.append(ClipRecord(clip_id, row["text"], label, split, video, problem, f"{path.name}:{line}", note))
    videos = clip_files(raw, "**/*.mp4") if raw.is_dir() else []
    return Corpus("mmsa", root, records, videos, "regression", (), MMSA_RANGE, notes)


def read_mmsa(root: Path) -> list[ClipRecord]:
    return read_mmsa_corpus(root).records


def open_corpus(root: Path, meld_task: str = "emotion") -> Corpus:
    """Detect the layout under ``root`` and read it. ``meld_task`` (emotion | sentiment) picks MELD's labels."""
    root = Path(root)
    if root.is_file():
        raise DataError(f"{root} is a file; give the dataset directory that holds it ({root.parent} for "
                        "label.csv or a MELD csv)")
    if not root.is_dir():
        raise DataError(f"dataset directory {root} not found; create one with `trml-edge data synth {root}`")
    is_mmsa, is_meld = (root / "label.csv").is_file(), meld.is_meld(root)
    if is_mmsa and is_meld:
        raise DataError(f"{root} holds both an MMSA corpus (label.csv) and a MELD corpus "
                        f"({', '.join(meld.CSV_FILES.values())}); put each corpus in its own directory")
    if is_mmsa:
        return read_mmsa_corpus(root)
    if is_meld:
        return meld.read_meld_corpus(root, meld_task)
    if any(root.rglob("*.pkl")):
        raise DataError(
            f"{root} holds .pkl files but no label.csv: MMSA's pickled feature files are not supported (a pickle "
            "can run code when loaded); download the raw videos and label.csv (MMSA 'Raw' layout) instead"
        )
    raise DataError(
        f"{root} is not a known corpus layout: expected label.csv + Raw/ (CMU-MOSI/MOSEI, MMSA layout) or "
        f"{', '.join(meld.CSV_FILES.values())} (MELD); see the README section \"Real datasets\""
    )


def read_corpus(root: Path, meld_task: str = "emotion") -> list[ClipRecord]:
    """Detect the corpus layout under ``root`` and read its records."""
    return open_corpus(root, meld_task).records


def corpus_task(root: Path, meld_task: str = "emotion") -> tuple[str, int, tuple[str, ...]]:
    """(task, num_classes, class_names) of the corpus under ``root``: what the model's head must be.

    MOSI/MOSEI: ``("regression", 1, ())``; MELD: ``("classification", 7 | 3, class names)`` for
    ``meld_task`` emotion | sentiment.
    """
    corpus = open_corpus(Path(root), meld_task)
    return corpus.task, corpus.num_classes, corpus.class_names


def meld_task_for(task: str, num_classes: int) -> str:
    """Which MELD labels a model head reads: 7 classes -> emotion, 3 -> sentiment."""
    for name, classes in meld.TASKS.items():
        if task == "classification" and num_classes == len(classes):
            return name
    return "emotion"


def check_head(corpus: Corpus, task: str, num_classes: int) -> None:
    """Refuse a model head that does not fit the corpus labels, saying which head does."""
    if (task, num_classes) != (corpus.task, corpus.num_classes):
        want = ("task=regression, num_classes=1" if corpus.task == "regression" else
                f"task=classification, num_classes={corpus.num_classes} ({', '.join(corpus.class_names)})")
        raise DataError(f"{corpus.root} is a {corpus.layout.upper()} {corpus.task} corpus but the model head is "
                        f"task={task}, num_classes={num_classes}; build the model with {want} "
                        "(trml_edge.data.corpus.corpus_task tells it)")


def open_for_model(root: Path, task: str, num_classes: int) -> Corpus:
    """The corpus under ``root`` read for a model head (MELD's label set follows the head's class count)."""
    corpus = open_corpus(root, meld_task_for(task, num_classes))
    check_head(corpus, task, num_classes)
    return corpus


def usable(records: list[ClipRecord], split: str) -> tuple[list[ClipRecord], dict[str, str]]:
    """The split's records that can be decoded, and {clip id: reason} for those that cannot."""
    rows = [r for r in records if r.split == split]
    if not rows:
        raise DataError(f"the corpus has no {split!r} clips; check the split column (mode / the MELD csv files)")
    keep, skipped = [], {}
    for r in rows:
        if r.problem is not None:
            skipped[r.clip_id] = r.problem
        elif r.video is None:
            skipped[r.clip_id] = "video file missing"
        else:
            keep.append(r)
    return keep, skipped


def load_split(records: list[ClipRecord], split: str, n_frames: int, image_size: int) -> ClipArrays:
    """Decode and resize the frames of one split, all in memory. Broken or missing clips are skipped.

    With a frozen backbone prefer ``trml_edge.train.features.prepare_inputs``, which streams clips into
    embeddings and keeps no frames.
    """
    from trml_edge.data.video import read_frames

    rows, skipped = usable(records, split)
    total = len(rows) + len(skipped)  # every row of the split, counted once
    ids, texts, labels, frames, masks = [], [], [], [], []
    for r in rows:
        try:
            f, m = read_frames(r.video, n_frames, size=image_size)
        except ClipError as e:
            skipped[r.clip_id] = str(e)
            continue
        ids.append(r.clip_id)
        texts.append(r.text)
        labels.append(r.label)
        frames.append(f)
        masks.append(m)
    report_skipped(split, skipped, total)
    if not ids:
        raise DataError(f"no readable clip in the {split!r} split ({len(skipped)} skipped); run `trml-edge data check`")
    return ClipArrays(ids, texts, np.asarray(labels, np.float32), np.stack(frames), np.stack(masks), skipped)


def report_skipped(split: str, skipped: dict[str, str], total: int) -> None:
    """Log how many of the split's ``total`` rows were skipped, and the first one (its reason without the
    clip message's own pointer to ``data check``, which this line gives once)."""
    from trml_edge.data.video import FIX

    if skipped:
        clip, why = next(iter(skipped.items()))
        log.warning("%s: skipped %d of %d clips (first: %s: %s); `trml-edge data check` lists them all",
                    split, len(skipped), total, clip, why.replace(f"; {FIX}", ""))
