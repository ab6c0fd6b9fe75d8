"""Image preprocessing in plain numpy, shared by training and the torch-free runtime.

CLIP-style: resize the shortest side to ``size`` (bilinear), centre-crop to ``size`` x ``size``, scale to
[0, 1] and normalize with the per-channel mean and std. One implementation, so the exported pipeline sees
exactly the pixels the model was trained on.
"""

from __future__ import annotations

import numpy as np


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = n_in / n_out
    x = (np.arange(n_out) + 0.5) * scale - 0.5  # pixel-centre aligned, like PIL/torch align_corners=False
    x = np.clip(x, 0, n_in - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (x - lo).astype(np.float32)


def resize_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [..., H, W, 3] -> uint8 [..., size, size, 3]: shortest side to ``size``, then centre crop."""
    h, w = frames.shape[-3], frames.shape[-2]
    if (h, w) == (size, size):
        return frames
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    y0, y1, wy = _axis_weights(h, nh)
    x0, x1, wx = _axis_weights(w, nw)
    top, left = (nh - size) // 2, (nw - size) // 2
    y0, y1, wy = y0[top : top + size], y1[top : top + size], wy[top : top + size]
    x0, x1, wx = x0[left : left + size], x1[left : left + size], wx[left : left + size]
    f = frames.astype(np.float32)
    rows = f[..., y0, :, :] * (1 - wy)[:, None, None] + f[..., y1, :, :] * wy[:, None, None]
    out = rows[..., :, x0, :] * (1 - wx)[:, None] + rows[..., :, x1, :] * wx[:, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def normalize(frames: np.ndarray, mean, std) -> np.ndarray:
    """uint8 [..., S, S, 3] -> float32 [..., 3, S, S], scaled to [0, 1] then normalized per channel."""
    x = frames.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.moveaxis(x, -1, -3).copy()


def preprocess(frames: np.ndarray, size: int, mean, std) -> np.ndarray:
    return normalize(resize_crop(frames, size), mean, std)
