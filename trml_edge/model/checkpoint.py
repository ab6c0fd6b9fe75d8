"""Run directories: ``model.safetensors`` + ``trml_config.json`` + ``metrics.json``.

The config holds the resolved open_clip architecture and the preprocessing, so a run rebuilds from its own
files. Weights load through safetensors only; no pickle is ever read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from trml_edge.config import TRMLConfig, write_json_atomic
from trml_edge.errors import CheckpointError
from trml_edge.model.backbone import build_clip, image_size, resolve_arch
from trml_edge.model.trml import TRML

WEIGHTS = "model.safetensors"
CONFIG = "trml_config.json"
METRICS = "metrics.json"


def new_model(cfg: TRMLConfig, clip_weights: str | Path | None = None) -> TRML:
    """Build a fresh TRML model: resolve the architecture into the config, load local CLIP weights if given."""
    if not cfg.backbone.clip_cfg:
        cfg.backbone.clip_cfg = resolve_arch(cfg.backbone.arch)
    cfg.preprocess.image_size = image_size(cfg.backbone.clip_cfg)
    cfg.preprocess.context_length = int(cfg.backbone.clip_cfg["text_cfg"].get("context_length", 77))
    return TRML(cfg, build_clip(cfg.backbone.clip_cfg, clip_weights))


def save_run(run: Path, model: TRML, metrics: dict[str, Any] | None = None) -> None:
    """Write the weights and config atomically (temporary files, then rename)."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / f".{WEIGHTS}.tmp"
    save_model(model, str(tmp))
    model.cfg.save(run / CONFIG)
    tmp.replace(run / WEIGHTS)
    if metrics is not None:
        write_json_atomic(run / METRICS, metrics)


def load_run(run: Path, map_location: str = "cpu") -> TRML:
    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"run directory {run} not found; train one with `trml-edge train`")
    for name in (CONFIG, WEIGHTS):
        if not (run / name).is_file():
            raise CheckpointError(f"{run / name} is missing; {run} is not a complete trml-edge run")
    cfg = TRMLConfig.load(run / CONFIG)
    model = TRML(cfg)
    try:
        missing, unexpected = load_model(model, str(run / WEIGHTS), strict=False, device=map_location)
    except Exception as e:  # safetensors raises several types for corrupt headers
        raise CheckpointError(f"cannot read {run / WEIGHTS}: {e}; the file is corrupt, re-train or re-copy it") from e
    if missing or unexpected:
        raise CheckpointError(
            f"{run / WEIGHTS} does not match its config (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); re-train or re-copy the run"
        )
    model.eval()
    return model


def read_metrics(run: Path) -> dict[str, Any]:
    path = Path(run) / METRICS
    return json.loads(path.read_text()) if path.is_file() else {}


def save_clip(out: Path, clip: torch.nn.Module, clip_cfg: dict[str, Any], preprocess: dict[str, Any]) -> Path:
    """Save a CLIP model in open_clip's local-dir layout (``open_clip_config.json`` + safetensors)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "open_clip_model.safetensors"
    tmp = out / ".open_clip_model.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp))
    write_json_atomic(out / "open_clip_config.json", {"model_cfg": clip_cfg, "preprocess_cfg": preprocess})
    tmp.replace(weights)
    return weights
