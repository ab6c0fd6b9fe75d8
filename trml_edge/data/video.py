"""Reading and writing short mp4 clips with PyAV (no system ffmpeg needed).

``read_frames`` samples ``n`` frames uniformly over a clip and returns them padded to ``n`` with a mask,
so clips of any length batch together. Every failure becomes a ``DataError`` that names the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trml_edge.errors import DataError, require


def write_mp4(path: Path, frames: np.ndarray, fps: int = 4) -> None:
    """Write uint8 frames [n,H,W,3] (RGB) to an mp4, atomically (temporary file, then rename)."""
    av = require("av", "train")
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
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


def decode_all(path: Path, fps: float | None = None) -> np.ndarray:
    """Decode every frame of a clip (or frames at ``fps``) as uint8 [n,H,W,3] RGB."""
    av = require("av", "train")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"video not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path} has no video stream; re-encode it or remove its row")
            stream = container.streams.video[0]
            out, next_t = [], 0.0
            for frame in container.decode(stream):
                if fps is not None and frame.time is not None:
                    if frame.time + 1e-6 < next_t:
                        continue
                    next_t += 1.0 / fps
                out.append(frame.to_ndarray(format="rgb24"))
    except DataError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise DataError(f"cannot decode {path}: {e}; the file is corrupt, re-download or drop it") from e
    if not out:
        raise DataError(f"{path} has no decodable frames (zero-length clip); drop it or re-encode it")
    return np.stack(out)


def sample_uniform(frames: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n`` frames uniformly over the clip; pad short clips. Returns (frames [n,H,W,3], mask [n] bool)."""
    total = len(frames)
    if total >= n:
        idx = np.linspace(0, total - 1, n).round().astype(int)
        return frames[idx], np.ones(n, dtype=bool)
    pad = np.zeros((n - total, *frames.shape[1:]), dtype=frames.dtype)
    mask = np.zeros(n, dtype=bool)
    mask[:total] = True
    return np.concatenate([frames, pad]), mask


def read_frames(path: Path, n: int, fps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode a clip and return ``n`` frames sampled uniformly (optionally after an fps resample) and a mask."""
    return sample_uniform(decode_all(path, fps=fps), n)
