"""The CLIP backbone, built by open_clip from an architecture name or a JSON file, weights from a local file."""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path
from typing import Any

import open_clip
import torch

from trml_edge.errors import CheckpointError, ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)  # makes the package's tiny architecture a registered name


def resolve_arch(arch: str) -> dict[str, Any]:
    """An open_clip architecture name, a JSON architecture file, or ``local-dir:PATH`` -> the config dict."""
    if arch.startswith("local-dir:"):
        cfg_path = Path(arch[len("local-dir:") :]) / "open_clip_config.json"
        if not cfg_path.is_file():
            raise ConfigError(f"{cfg_path} not found; a local-dir backbone needs open_clip_config.json")
        cfg = json.loads(cfg_path.read_text())["model_cfg"]
    elif arch.endswith(".json") or Path(arch).is_file():
        path = Path(arch)
        if not path.is_file():
            raise ConfigError(f"architecture file {path} not found; check the path")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"architecture file {path} is not valid JSON: {e}") from e
    else:
        cfg = open_clip.get_model_config(arch)
        if cfg is None:
            close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; run `trml-edge backbones` to list them"
            raise ConfigError(f"unknown open_clip architecture {arch!r}{hint}")
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ConfigError(f"architecture {arch!r} lacks {missing}; it is not an open_clip CLIP config")
    if "multimodal_cfg" in cfg:
        raise ConfigError(f"architecture {arch!r} is a captioning (CoCa) model; TRML needs a plain CLIP")
    if cfg["text_cfg"].get("hf_tokenizer_name") or cfg["text_cfg"].get("hf_model_name"):
        raise ConfigError(
            f"architecture {arch!r} uses a Hugging Face text tower; trml-edge supports CLIP's own BPE "
            "text tower, so the runtime can tokenize without a hub download"
        )
    return copy.deepcopy(cfg)


def build_clip(clip_cfg: dict[str, Any], weights: str | Path | None = None) -> open_clip.CLIP:
    """Build the CLIP model from its config dict and, optionally, load weights through open_clip."""
    cfg = copy.deepcopy(clip_cfg)
    cfg.pop("custom_text", None)
    model = open_clip.CLIP(**cfg)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise CheckpointError(f"CLIP weights file {path} not found; pass a local .safetensors/.pt file")
        try:
            open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
        except RuntimeError as e:
            raise CheckpointError(
                f"CLIP weights {path} do not fit the architecture ({e}); pass the matching --backbone"
            ) from e
    return model


def tokenizer(context_length: int):
    """CLIP's BPE tokenizer (its vocabulary ships inside open_clip, so nothing is downloaded)."""
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


def tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    return tokenizer(context_length)(texts)


def image_size(clip_cfg: dict[str, Any]) -> int:
    size = clip_cfg["vision_cfg"].get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)
