"""Calibration sets: each graph's inputs on a stratified sample, stored as npz + manifest.json.

The format is documented in ``calibration/README.md``. A set is tied to the model dimensions it was
built for (image size, embedding size, context length, frames per clip), not to one checkpoint: the
encoder inputs (pixels, tokens) are model independent, the downstream inputs are embeddings of the model
that built the set, which stay in the same unit-norm range for any TRML model of that size.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trml_edge.errors import ConfigError, DataError
from trml_edge.graphs import GRAPHS, model_dims
from trml_edge.model.backbone import tokenize
from trml_edge.model.trml import TRML
from trml_edge.preprocess import normalize
from trml_edge.runtime.bundle import sha256_file

log = logging.getLogger(__name__)
FORMAT = "trml-edge-calibration"
FORMAT_VERSION = 1
MIN_RECOMMENDED = 64  # below this, MinMax ranges come from too few activations to trust
SCENARIOS = ("complete", "visual_missing", "text_missing")
DIM_KEYS = ("embed", "image", "context_length", "max_frames")


def stratified_indices(labels: np.ndarray, n: int, seed: int, bins: int = 5) -> np.ndarray:
    """``n`` indices spread over label quantile bins (as evenly as the bins allow), seeded."""
    rng = np.random.default_rng(seed)
    edges = np.quantile(labels, np.linspace(0, 1, bins + 1)[1:-1])
    strata = [rng.permutation(np.flatnonzero(np.digitize(labels, edges) == b)) for b in range(bins)]
    picked, depth = [], 0
    while len(picked) < n and any(depth < len(s) for s in strata):  # round robin over the bins
        picked += [s[depth] for s in strata if depth < len(s)]
        depth += 1
    return np.sort(np.asarray(picked[:n], dtype=np.int64))


@torch.no_grad()
def graph_inputs(model: TRML, frames: np.ndarray, frame_mask: np.ndarray, texts: list[str],
                 scenarios: np.ndarray, frames_per_clip: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Every graph's inputs for these clips, computed through the PyTorch model (eval mode).

    fusion_head gets (t, v) as it sees them in each sample's scenario: real, or generated for the
    missing side. ``frames_per_clip`` limits how many frames per clip feed the image encoder's set.
    """
    model.eval()
    p = model.cfg.preprocess
    mask = torch.from_numpy(frame_mask)
    pixels = torch.from_numpy(normalize(frames, p.mean, p.std))  # (N, T, 3, S, S)
    frame_emb = model.encode_frames(pixels) * mask.unsqueeze(-1)  # (N, T, D), padded frames zeroed
    tokens = tokenize(texts, p.context_length)  # (N, L)
    t = model.encode_text(tokens)
    v = model.temporal(frame_emb, mask)
    v_hat, t_hat = model.gen_text_to_visual(t), model.gen_visual_to_text(v)
    sc = torch.from_numpy(scenarios)
    v_used = torch.where((sc == 1).unsqueeze(-1), v_hat, v)
    t_used = torch.where((sc == 2).unsqueeze(-1), t_hat, t)
    keep = frame_mask.copy()
    if frames_per_clip is not None:
        keep &= np.cumsum(frame_mask, axis=1) <= frames_per_clip
    return {
        "image_encoder": {"pixels": pixels.numpy()[keep]},
        "text_encoder": {"tokens": tokens.numpy().astype(np.int64)},
        "temporal_encoder": {"frame_emb": frame_emb.numpy(), "frame_mask": frame_mask.astype(bool)},
        "gen_text_to_visual": {"t": t.numpy()},
        "gen_visual_to_text": {"v": v.numpy()},
        "fusion_head": {"t": t_used.numpy(), "v": v_used.numpy()},
    }


def build_calibration(model: TRML, arrays, samples: int, out: Path, batch_size: int = 8, seed: int = 0,
                      frames_per_clip: int = 2, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a calibration set for ``model`` from ``arrays`` (a ClipArrays split) into ``out``."""
    out = Path(out)
    if samples < batch_size:
        raise ConfigError(f"--samples {samples} is below the batch size {batch_size}; calibration needs at least "
                          "one full batch; raise --samples or lower --batch-size")
    if samples > len(arrays):
        raise DataError(f"--samples {samples} exceeds the {len(arrays)} clips of the split; lower --samples")
    if samples < MIN_RECOMMENDED:
        log.warning("calibrating on %d samples (< %d): INT8 ranges may be unstable; use more for a release",
                    samples, MIN_RECOMMENDED)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} already holds files; choose a new calibration name or remove it")
    idx = stratified_indices(np.asarray(arrays.labels), samples, seed)
    scenarios = np.arange(len(idx)) % len(SCENARIOS)  # 0 complete, 1 visual missing, 2 text missing
    inputs = graph_inputs(model, arrays.frames[idx], arrays.frame_mask[idx], [arrays.texts[i] for i in idx],
                          scenarios, frames_per_clip)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    graphs = {}
    for name, feeds in inputs.items():
        path = tmp / f"{name}.npz"
        np.savez_compressed(path, **feeds)
        graphs[name] = {"file": path.name, "sha256": sha256_file(path),
                        "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in feeds.items()}}
    dims = model_dims(model.cfg.to_dict())
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": out.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "samples": int(len(idx)), "batch_size": batch_size, "seed": seed, "frames_per_clip": frames_per_clip,
        "dims": {k: dims[k] for k in DIM_KEYS},
        "strata": {"label_bins": 5, "labels": [float(x) for x in np.asarray(arrays.labels)[idx]],
                   "scenarios": {s: int(np.sum(scenarios == i)) for i, s in enumerate(SCENARIOS)}},
        "source": source or {},
        "graphs": graphs,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()  # empty (checked above)
    tmp.rename(out)
    return manifest


def load_calibration(path: Path, dims: dict[str, int]) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Read a calibration set, verifying its hashes and that it was built for these model dimensions."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise DataError(f"{path} is not a calibration set (no manifest.json); build one with `trml-edge calibrate`")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format") != FORMAT:
        raise DataError(f"{mpath} is not a trml-edge calibration manifest")
    wrong = {k: (manifest["dims"].get(k), dims[k]) for k in DIM_KEYS if manifest["dims"].get(k) != dims[k]}
    if wrong:
        raise DataError(f"calibration set {path} was built for other model dimensions {wrong} (set, model); "
                        "build one for this model with `trml-edge calibrate RUN --data DIR`")
    data = {}
    for name in GRAPHS:
        entry = manifest["graphs"].get(name)
        if entry is None:
            raise DataError(f"calibration set {path} has no inputs for {name}; rebuild it with `trml-edge calibrate`")
        f = path / entry["file"]
        if not f.is_file() or sha256_file(f) != entry["sha256"]:
            raise DataError(f"calibration file {f} is missing or does not match its sha256; rebuild the set")
        with np.load(f) as z:
            data[name] = {k: z[k] for k in z.files}
    return manifest, data


def identity(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """What the bundle manifest records about the calibration set used."""
    return {"name": manifest["name"], "path": str(path), "samples": manifest["samples"],
            "manifest_sha256": sha256_file(Path(path) / "manifest.json"), "created": manifest["created"]}
