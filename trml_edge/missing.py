"""Missing-modality protocols: which samples lose which modality. numpy only (the runtime uses it too)."""

from __future__ import annotations

import numpy as np

from trml_edge.config import MissingConfig


def sample_masks(n: int, cfg: MissingConfig, seed) -> tuple[np.ndarray, np.ndarray]:
    """Exactly ``round(rate * n)`` samples lose one modality. Returns (has_visual, has_text), bool (n,).

    ``seed`` may be an int or a sequence (for example ``[seed, epoch]``), so every epoch and every test rate
    gets its own reproducible draw.
    """
    cfg.validate()
    rng = np.random.default_rng(seed)
    has_v = np.ones(n, dtype=bool)
    has_t = np.ones(n, dtype=bool)
    k = int(round(cfg.rate * n))
    idx = rng.permutation(n)[:k]
    if cfg.modality == "visual":
        has_v[idx] = False
    elif cfg.modality == "text":
        has_t[idx] = False
    else:
        drop_visual = rng.random(k) < 0.5
        has_v[idx[drop_visual]] = False
        has_t[idx[~drop_visual]] = False
    return has_v, has_t
