"""The CLIP backbone, built by open_clip from an architecture name or a JSON file; weights from a local file,
or pretrained by name (an open_clip tag such as ``laion2b_s34b_b79k``, or ``hf-hub:ORG/NAME``) through
open_clip's own download functions and the standard Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE`` or
``cache_dir``; ``HF_HUB_OFFLINE=1`` uses the cache alone)."""

from __future__ import annotations

import copy
import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from trml_edge.errors import CheckpointError, ConfigError

HF_HUB_PREFIX = "hf-hub:"
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
    check_plain_clip(cfg, arch)
    return copy.deepcopy(cfg)


def check_plain_clip(cfg: dict[str, Any], name: str) -> None:
    """Refuse what is not a plain CLIP with CLIP's own BPE text tower (the runtime tokenizes without torch)."""
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ConfigError(f"architecture {name!r} lacks {missing}; it is not an open_clip CLIP config")
    if "multimodal_cfg" in cfg:
        raise ConfigError(f"architecture {name!r} is a captioning (CoCa) model; TRML needs a plain CLIP")
    if cfg["text_cfg"].get("hf_tokenizer_name") or cfg["text_cfg"].get("hf_model_name"):
        raise ConfigError(
            f"architecture {name!r} uses a Hugging Face text tower; trml-edge supports CLIP's own BPE "
            "text tower, so the runtime can tokenize without a hub download"
        )


@dataclass
class Pretrained:
    """Pretrained CLIP weights found by name, in the cache, with what rebuilds the model around them."""

    arch: str  # recorded as backbone.arch: the open_clip architecture, or hf-hub:ORG/NAME
    clip_cfg: dict[str, Any]  # the architecture the weights fit
    weights: Path  # the cached weights file
    mean: tuple[float, float, float] | None  # the RGB normalization the weights were trained with
    std: tuple[float, float, float] | None

    def apply(self, cfg) -> None:
        """Write the architecture and preprocessing into a ``TRMLConfig`` (the weights go to ``new_model``)."""
        cfg.backbone.arch = self.arch
        cfg.backbone.clip_cfg = copy.deepcopy(self.clip_cfg)
        if self.mean is not None:
            cfg.preprocess.mean = tuple(float(x) for x in self.mean)
        if self.std is not None:
            cfg.preprocess.std = tuple(float(x) for x in self.std)


def _hub_cache(cache_dir: str | Path | None) -> str:
    from huggingface_hub import constants

    return str(cache_dir) if cache_dir else constants.HF_HUB_CACHE


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _hub_file(name: str, repo: str, filename: str | None, cache_dir: str | Path | None) -> Path:
    """One file of a hub repository through open_clip's download function: from the cache, or downloaded into
    it. A miss is one line naming the cache and the command that fills it."""
    from open_clip.pretrained import download_pretrained_from_hf

    try:
        return Path(download_pretrained_from_hf(repo, filename=filename, cache_dir=str(cache_dir) if cache_dir else None))
    except (OSError, RuntimeError) as e:  # open_clip wraps the hub's errors in FileNotFoundError
        cache = _hub_cache(cache_dir)
        what = f"{filename} of {repo} is" if filename else f"the weights of {repo} are"
        how = ("the hub is offline (HF_HUB_OFFLINE=1)" if _hub_offline()
               else f"the download failed ({str(e).splitlines()[0][:160]})")
        fill = f"hf download {repo} --include 'open_clip_*'" + (f" --cache-dir {cache_dir}" if cache_dir else "")
        raise CheckpointError(f"pretrained CLIP {name}: {what} not in the Hugging Face cache {cache} and "
                              f"{how}; fill the cache once where there is internet: {fill} (or run this command "
                              "there without HF_HUB_OFFLINE)") from e


def fetch_pretrained(arch: str, pretrained: str, cache_dir: str | Path | None = None) -> Pretrained:
    """Pretrained CLIP weights by name: ``pretrained`` is an open_clip tag of ``arch`` (``trml-edge backbones
    --pretrained`` lists them) or ``hf-hub:ORG/NAME``. The architecture is checked before the weights are
    fetched, so a model trml-edge cannot run is refused without downloading its weights."""
    from open_clip import pretrained as oc_pretrained

    if pretrained.startswith(HF_HUB_PREFIX):
        repo = pretrained[len(HF_HUB_PREFIX):].strip("/")
        if repo.count("/") != 1:
            raise ConfigError(f"--pretrained {pretrained}: give hf-hub:ORG/NAME")
        path = _hub_file(pretrained, repo, "open_clip_config.json", cache_dir)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is not valid JSON ({e}); delete it from the cache and fetch it again") from e
        if "model_cfg" not in doc:
            raise ConfigError(f"{pretrained}: its open_clip_config.json has no model_cfg; it is not an open_clip model")
        clip_cfg, pp = doc["model_cfg"], doc.get("preprocess_cfg", {})
        check_plain_clip(clip_cfg, pretrained)  # before the weights are fetched
        weights = _hub_file(pretrained, repo, None, cache_dir)
        return Pretrained(pretrained, copy.deepcopy(clip_cfg), weights, pp.get("mean"), pp.get("std"))

    clip_cfg = resolve_arch(arch)  # refuses a non-CLIP architecture by name, before any download
    tag_cfg = oc_pretrained.get_pretrained_cfg(arch, pretrained)
    if not tag_cfg:
        tags = oc_pretrained.list_pretrained_tags_by_model(arch)
        hint = f"its tags: {', '.join(tags)}" if tags else "open_clip has no pretrained weights for it"
        raise ConfigError(f"--pretrained {pretrained!r} is not an open_clip tag of {arch!r}; {hint} (or give "
                          "hf-hub:ORG/NAME, or a local file with --clip-weights)")
    if tag_cfg.get("quick_gelu", False) != clip_cfg.get("quick_gelu", False):
        clip_cfg["quick_gelu"] = tag_cfg.get("quick_gelu", False)  # the activation the weights were trained with
    name = f"{arch} {pretrained}"
    if tag_cfg.get("hf_hub"):
        hub = tag_cfg["hf_hub"]  # "ORG/NAME/" (open_clip's default file names) or "ORG/NAME/FILE"
        repo, filename = (hub.rstrip("/"), None) if hub.endswith("/") else os.path.split(hub)
        weights = _hub_file(name, repo, filename, cache_dir)
    else:  # an open_clip URL download into cache_dir (default ~/.cache/clip)
        cache = str(cache_dir) if cache_dir else os.path.expanduser("~/.cache/clip")
        try:
            weights = Path(oc_pretrained.download_pretrained(tag_cfg, cache_dir=cache))
        except OSError as e:  # urllib's URLError is an OSError
            raise CheckpointError(f"pretrained CLIP {name}: not in the cache {cache} and its download from "
                                  f"{tag_cfg['url']} failed ({e}); run this command once where there is "
                                  "internet") from e
    return Pretrained(arch, clip_cfg, weights, tag_cfg.get("mean"), tag_cfg.get("std"))


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
