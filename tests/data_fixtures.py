"""Small real corpora for the dataset tests: real mp4 files (PyAV), CSVs with the real column names.

Each corpus has good clips plus one of each problem a real download shows: a corrupt mp4, a row whose mp4
is missing, a zero-frame clip, a row with an out-of-range label, an audio-only clip and a video no row
refers to. ``PROBLEMS`` says which clip has which, so tests can check that each one is reported.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from trml_edge.data.video import write_mp4

MMSA_HEADER = ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"]
MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
               "Episode", "StartTime", "EndTime"]
MELD_FOLDERS = {"train": "train_splits", "valid": "dev_splits_complete", "test": "output_repeated_splits_test"}
MELD_CSV = {"train": "train_sent_emo.csv", "valid": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
GOOD = {"train": 22, "valid": 8, "test": 8}  # good clips per split in both corpora

# texts that break naive CSV handling: commas, quotes, newlines, non-ASCII
TRICKY_TEXTS = [
    'he said "this is great", and i agree',
    "très bien, vraiment — 很好 👍",
    "first line\nsecond line, still the same row",
    "plain words",
]


def clip_frames(label: float, n: int, rng: np.random.Generator, h: int = 40, w: int = 56) -> np.ndarray:
    """n RGB frames (non-square, so resizing crops) whose brightness follows the label."""
    base = 128 + 30 * label
    frames = rng.normal(base, 10, size=(n, h, w, 3))
    frames[:, :, : w // 3, 0] += 40 * np.sign(label)  # a coloured band that also carries the label
    return np.clip(frames, 0, 255).astype(np.uint8)


def write_corrupt(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + rng.bytes(600))  # an mp4 signature, then noise


def write_zero_frames(path: Path) -> None:
    """What a recorder that stopped before its first frame leaves: a valid header, no frames."""
    write_mp4(path, np.zeros((0, 32, 32, 3), np.uint8))


def write_audio_only(path: Path) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        stream = c.add_stream("aac", rate=16000)
        for _ in range(3):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for p in stream.encode(frame):
                c.mux(p)
        for p in stream.encode():
            c.mux(p)


def make_mmsa(root: Path, seed: int = 0) -> dict:
    """A CMU-MOSI-style corpus in the MMSA raw layout. Returns {problem kind: clip id or file}."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    rows, problems = [], {}

    def add(video_id, clip_id, text, label, mode):
        rows.append([video_id, clip_id, text, f"{label}", "0", "0", "0", "Neutral", mode])
        return f"{video_id}$_${clip_id}"

    k = 0
    for mode, split_mode in (("train", "train"), ("valid", "valid"), ("test", "test")):
        for i in range(GOOD[mode]):
            label = round(float(rng.uniform(-3, 3)), 1)
            vid, cid = f"v{k // 5:03d}", str(k % 5)
            n = 12 if k == 0 else int(rng.integers(2, 8))  # one clip longer than 8 frames, to be thinned
            write_mp4(root / "Raw" / vid / f"{cid}.mp4", clip_frames(label, n, rng))
            add(vid, cid, TRICKY_TEXTS[k % len(TRICKY_TEXTS)] + f" #{k}", label, split_mode)
            k += 1
    write_corrupt(root / "Raw" / "bad" / "corrupt.mp4", rng)
    problems["corrupt"] = add("bad", "corrupt", "a corrupt clip", 1.0, "train")
    problems["missing_video"] = add("bad", "missing", "a row without its clip", -1.0, "train")
    write_zero_frames(root / "Raw" / "bad" / "empty.mp4")
    problems["empty"] = add("bad", "empty", "a zero-frame clip", 0.5, "valid")
    write_mp4(root / "Raw" / "bad" / "range.mp4", clip_frames(1.0, 3, rng))
    problems["bad_label"] = add("bad", "range", "label out of range", 4.5, "test")
    write_audio_only(root / "Raw" / "bad" / "audio.mp4")
    problems["no_video_stream"] = add("bad", "audio", "an audio-only clip", -0.5, "test")
    write_mp4(root / "Raw" / "orphan" / "0.mp4", clip_frames(0.0, 3, rng))
    problems["orphan_video"] = str(root / "Raw" / "orphan" / "0.mp4")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MMSA_HEADER)
    w.writerows(rows)
    (root / "label.csv").write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8"))  # with a BOM, as Excel saves
    return problems


EMOTION_SENTIMENT = {"neutral": "neutral", "surprise": "positive", "fear": "negative", "sadness": "negative",
                     "joy": "positive", "disgust": "negative", "anger": "negative"}
CP1252_TEXT = "I don’t know, Ross."  # written with a raw cp1252 0x92 byte, as in the MELD release
MOJIBAKE_TEXT = "You’re kidding."  # written double-encoded ("Youâ€™re"), as in the MELD release


def make_meld(root: Path, seed: int = 1) -> dict:
    """A MELD corpus in the official layout. Returns {problem kind: clip id or file}."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    emotions = list(EMOTION_SENTIMENT)
    problems = {}
    for split in ("train", "valid", "test"):
        folder = root / MELD_FOLDERS[split]
        rows = []

        def add(dia, utt, text, emotion, sentiment=None):
            rows.append([str(len(rows) + 1), text, "Chandler", emotion, sentiment or EMOTION_SENTIMENT[emotion],
                         str(dia), str(utt), "3", "7", "00:14:38,127", "00:14:40,378"])
            return f"{split}/dia{dia}_utt{utt}"

        for i in range(GOOD[split]):
            emotion = emotions[i % 7]
            dia, utt = i // 4, i % 4
            label = emotions.index(emotion) - 3
            write_mp4(folder / f"dia{dia}_utt{utt}.mp4", clip_frames(label / 2, int(rng.integers(2, 7)), rng))
            text = TRICKY_TEXTS[i % len(TRICKY_TEXTS)]
            if split == "train" and i == 0:
                text = CP1252_TEXT.replace("’", "<RAW92>")
            if split == "train" and i == 1:
                text = MOJIBAKE_TEXT.encode("utf-8").decode("cp1252")
            add(dia, utt, text, emotion)
        if split == "train":
            write_corrupt(folder / "dia90_utt0.mp4", rng)
            problems["corrupt"] = add(90, 0, "corrupt", "joy")
            problems["missing_video"] = add(91, 0, "no clip", "anger")
        if split == "valid":
            write_zero_frames(folder / "dia90_utt0.mp4")
            problems["empty"] = add(90, 0, "zero frames", "neutral")
        if split == "test":
            write_mp4(folder / "dia90_utt0.mp4", clip_frames(0.0, 3, rng))
            problems["bad_label"] = add(90, 0, "unknown emotion", "excited", "positive")
            write_mp4(folder / "dia99_utt9.mp4", clip_frames(0.0, 3, rng))
            problems["orphan_video"] = str(folder / "dia99_utt9.mp4")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(MELD_HEADER)
        w.writerows(rows)
        data = buf.getvalue().encode("utf-8").replace(b"<RAW92>", b"\x92")
        (root / MELD_CSV[split]).write_bytes(data)
    return problems


def mmsa_row(vid, cid, text, label, mode="train"):
    """One label.csv line, written as given (the text is not quoted: tests put their own quoting in it)."""
    return f"{vid},{cid},{text},{label},0,0,0,Neutral,{mode}"


def mmsa_corpus(root: Path, lines: list[str], clips: list[tuple[str, str]], rng=None) -> Path:
    """An MMSA-layout corpus: label.csv from raw ``lines`` (written exactly as given) and a real 3-frame mp4
    per (video, clip)."""
    rng = rng or np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "label.csv").write_text("\n".join([",".join(MMSA_HEADER), *lines]) + "\n", encoding="utf-8")
    for vid, cid in clips:
        write_mp4(root / "Raw" / vid / f"{cid}.mp4", clip_frames(0.5, 3, rng))
    return root
