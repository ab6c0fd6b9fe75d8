"""MELD in its official layout.

``train_sent_emo.csv``, ``dev_sent_emo.csv`` and ``test_sent_emo.csv`` (columns ``Sr No., Utterance,
Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID, Season, Episode, StartTime, EndTime``) and one
folder of clips per split, each clip named ``dia{Dialogue_ID}_utt{Utterance_ID}.mp4``. The folders default
to the names of the official archives (``train_splits``, ``dev_splits_complete``,
``output_repeated_splits_test``); another layout is described by a ``meld_layout.json`` in the dataset
root, for example ``{"folders": {"test": "test_splits"}}``. Files and folders are looked for in the root
and one level below it (the archives unpack into ``train/``, ``dev/`` ...).

Dialogue ids restart in every split, so a clip id is ``<split>/dia<D>_utt<U>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from trml_edge.data.records import ClipRecord, Corpus, clip_file, clip_files
from trml_edge.data.tables import read_rows
from trml_edge.errors import ConfigError, DataError

# class index order of MELD's own baselines
EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
SENTIMENTS = ("neutral", "positive", "negative")
TASKS = {"emotion": EMOTIONS, "sentiment": SENTIMENTS}
CSV_FILES = {"train": "train_sent_emo.csv", "valid": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
COLUMNS = ("Utterance", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
LAYOUT_FILE = "meld_layout.json"


@dataclass
class MeldLayout:
    folders: dict[str, str] = field(default_factory=lambda: {
        "train": "train_splits", "valid": "dev_splits_complete", "test": "output_repeated_splits_test"})
    csv_files: dict[str, str] = field(default_factory=lambda: dict(CSV_FILES))

    @classmethod
    def load(cls, root: Path) -> MeldLayout:
        """The default layout, overridden by ``meld_layout.json`` in ``root`` if there is one."""
        layout = cls()
        path = Path(root) / LAYOUT_FILE
        if not path.is_file():
            return layout
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); fix or delete it") from e
        if not isinstance(d, dict) or set(d) - {"folders", "csv_files"}:
            raise ConfigError(f"{path}: expected an object with 'folders' and/or 'csv_files', got {d!r}")
        for key in ("folders", "csv_files"):
            given = d.get(key, {})
            if not isinstance(given, dict) or set(given) - set(CSV_FILES):
                raise ConfigError(f"{path}: '{key}' maps split names (train, valid, test) to names, got {given!r}")
            getattr(layout, key).update(given)
        return layout


def class_names(task: str) -> tuple[str, ...]:
    if task not in TASKS:
        raise ConfigError(f"MELD task must be emotion (7 classes) or sentiment (3 classes), got {task!r}")
    return TASKS[task]


def _find(root: Path, name: str, want_dir: bool) -> Path | None:
    for p in [root / name, *sorted(root.glob(f"*/{name}"))]:
        if (p.is_dir() if want_dir else p.is_file()):
            return p
    return None


def is_meld(root: Path) -> bool:
    layout = MeldLayout.load(root)
    return any(_find(Path(root), f, False) for f in layout.csv_files.values())


def read_meld_corpus(root: Path, task: str = "emotion") -> Corpus:
    root = Path(root)
    names = class_names(task)
    index = {n: i for i, n in enumerate(names)}
    column = "Emotion" if task == "emotion" else "Sentiment"
    layout = MeldLayout.load(root)
    records, videos, notes = [], [], []
    for split, csv_name in layout.csv_files.items():
        path = _find(root, csv_name, False)
        if path is None:
            raise DataError(f"MELD {split} labels {csv_name} not found under {root}; download it from the MELD "
                            f"release or set its name in {root / LAYOUT_FILE}")
        folder = _find(root, layout.folders[split], True)
        if folder is None:
            notes.append(f"MELD {split} clip folder {layout.folders[split]!r} not found under {root}; unpack "
                         f"its archive there or set its name in {LAYOUT_FILE}")
        else:
            videos += clip_files(folder, "*.mp4")
        seen = set()
        for line, row, problem in read_rows(path, COLUMNS, "MELD"):
            dia, utt = row["Dialogue_ID"], row["Utterance_ID"]
            if problem is None and not (dia.isdigit() and utt.isdigit()):
                problem = f"Dialogue_ID {dia!r} / Utterance_ID {utt!r} are not integers"
            name = f"dia{dia}_utt{utt}"
            value = row[column].strip().lower()
            label = float(index.get(value, -1))
            if value not in index:
                problem = problem or f"{column} {row[column]!r} is not one of {', '.join(names)}"
            if name in seen and not (problem or "").startswith("malformed row"):
                problem = f"duplicate row for {name}"
            seen.add(name)
            if folder is not None:
                video, note = clip_file(folder / f"{name}.mp4")
            else:
                video, note = None, f"the MELD {split} clip folder {layout.folders[split]!r} is missing"
            records.append(ClipRecord(f"{split}/{name}", row["Utterance"], label, split, video, problem,
                                      f"{path.name}:{line}", note))
    return Corpus("meld", root, records, videos, "classification", names, None, notes)

