"""Reading and writing short mp4 clips with PyAV (no system ffmpeg needed).

``read_frames`` samples ``n`` frames from a clip, either uniformly over its whole length or at a fixed
rate (``fps``), and returns them padded to ``n`` with a mask, so clips of any length batch together.
Only the sampled frames are kept (and resized as they are decoded when ``size`` is given), so a long
full-resolution clip never sits in memory whole. Every failure is a ``ClipError`` subclass naming the
file and what to do about it.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from trml_edge.errors import (ClipError, CorruptClipError, DataError, EmptyClipError, NoVideoStreamError,
                              require)
from trml_edge.preprocess import resize_crop

FIX = "re-download or re-encode it, or delete its row; `trml-edge data check` lists every such clip"


def write_mp4(path: Path, frames: np.ndarray, fps: int = 4) -> None:
    """Write uint8 frames [n,H,W,3] (RGB) to an mp4, atomically (temporary file, then rename)."""
    av = require("av", "video")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise DataError(f"write_mp4 needs uint8 frames [n,H,W,3], got {frames.dtype} {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}  # near-lossless: the synthetic expressions are a few pixels wide
        container.start_encoding()  # writes the header even when there are no frames
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


def _reason(e: Exception) -> str:
    """An FFmpeg/OS error in words: its ``strerror`` ("Invalid data found when processing input"), without
    the raw errno and the file name the message already gives."""
    return getattr(e, "strerror", None) or str(e)


@contextmanager
def open_video(path: Path):
    """Open ``path`` and yield (av, container, video stream), turning every failure into a ClipError."""
    av = require("av", "video")
    path = Path(path)
    if not path.is_file():
        raise ClipError(f"video not found: {path}; restore the file or delete its row")
    if path.stat().st_size == 0:
        raise EmptyClipError(f"{path} is empty (0 bytes, a zero-length clip); {FIX}")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise CorruptClipError(f"cannot open {path} ({_reason(e)}); the file is damaged or not a video; {FIX}") from e
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams})
            if not kinds:
                raise EmptyClipError(f"{path} holds no streams (a zero-length clip); {FIX}")
            raise NoVideoStreamError(f"{path} has no video stream (only {', '.join(kinds)}); {FIX}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield av, container, stream
    except ClipError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise CorruptClipError(f"cannot decode {path} ({_reason(e)}); the file is damaged; {FIX}") from e
    finally:
        container.close()


def count_frames(path: Path) -> int:
    """Frames in the clip's video stream, counted from its packets (demuxing only, no decoding)."""
    with open_video(path) as (_, container, stream):
        return sum(1 for p in container.demux(stream) if p.size > 0)


def decoded_frames(path: Path) -> int:
    """Decode the whole clip, keeping nothing; returns how many frames decoded (raises ClipError)."""
    return _decode(Path(path), lambda i, t: False, None)[1]


def _decode(path: Path, keep, size: int | None) -> tuple[list[np.ndarray], int]:
    """Decode every frame; keep those for which ``keep(i, time)`` is true (resized). Returns (kept, total)."""
    kept, total = [], 0
    with open_video(path) as (_, container, stream):
        for i, frame in enumerate(container.decode(stream)):
            total = i + 1
            if keep(i, frame.time):
                img = frame.to_ndarray(format="rgb24")  # (H, W, 3)
                kept.append(resize_crop(img, size) if size else img)
    return kept, total


def _uniform_indices(total: int, n: int) -> np.ndarray:
    if total >= n:
        return np.linspace(0, total - 1, n).round().astype(int)
    return np.arange(total)


def read_frames(path: Path, n: int, fps: float | None = None, size: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``n`` frames of a clip; returns (frames [n,H,W,3] uint8, mask [n] bool), padding at the end.

    * ``fps=None``: ``n`` frames spread uniformly over the whole clip (a shorter clip keeps all its frames).
    * ``fps=r``: one frame every ``1/r`` seconds from the start; a clip longer than ``n / r`` seconds is
      thinned uniformly to ``n`` of those frames.

    ``size`` resizes (shortest side, centre crop) each kept frame as it is decoded.
    """
    path = Path(path)
    if n < 1:
        raise DataError(f"read_frames needs n >= 1 frames, got {n}")
    if fps is not None and fps <= 0:
        raise DataError(f"fps must be positive, got {fps}")
    if fps is None:
        total = count_frames(path)
        for _ in range(2):  # a second pass only when the packet count and the decoded count disagree
            want = set(_uniform_indices(total, n).tolist())
            kept, decoded = _decode(path, lambda i, t: i in want, size)
            if decoded == total:
                break
            total = decoded
    else:
        keep = _every(fps)
        kept, decoded = _decode(path, keep, size)
        kept = [kept[i] for i in _uniform_indices(len(kept), n)]
    if not kept:
        raise EmptyClipError(f"{path} has a video stream but no decodable frames (a zero-length clip); {FIX}")
    return pad_frames(np.stack(kept), n)


def _every(fps: float):
    """A ``keep(i, time)`` predicate that takes one frame every ``1 / fps`` seconds."""
    step, next_t = 1.0 / fps, [0.0]

    def keep(i: int, t: float | None) -> bool:
        t = i / 30.0 if t is None else t  # no timestamps: assume 30 fps, the common camera rate
        if t + 1e-6 < next_t[0]:
            return False
        next_t[0] = (int((t + 1e-6) / step) + 1) * step
        return True

    return keep


def pad_frames(frames: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (or uniformly thin) frames [k,H,W,3] to exactly ``n``; returns (frames, mask [n] bool)."""
    frames = frames[_uniform_indices(len(frames), n)]
    mask = np.zeros(n, dtype=bool)
    mask[: len(frames)] = True
    if len(frames) < n:
        frames = np.concatenate([frames, np.zeros((n - len(frames), *frames.shape[1:]), frames.dtype)])
    return frames, mask


def sample_uniform(frames: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n`` frames uniformly over decoded frames; pad short clips. Returns (frames, mask [n] bool)."""
    return pad_frames(frames, n)


def decode_all(path: Path, fps: float | None = None) -> np.ndarray:
    """Decode every frame of a clip (or one every ``1/fps`` seconds) as uint8 [n,H,W,3] RGB."""
    kept, _ = _decode(Path(path), _every(fps) if fps else (lambda i, t: True), None)
    if not kept:
        raise EmptyClipError(f"{path} has no decodable frames (a zero-length clip); {FIX}")
    return np.stack(kept)
