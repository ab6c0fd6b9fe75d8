"""The TRML configuration: one dataclass tree, serialized as ``trml_config.json`` beside the weights.

The tree holds everything needed to rebuild a model from its checkpoint alone, including the resolved
open_clip architecture and the image preprocessing, so a run directory never depends on a registry entry
or on the file the architecture was first read from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from trml_edge.errors import ConfigError

# Bump when a field changes meaning; older readers refuse newer files instead of guessing.
FORMAT_VERSION = 1

Task = Literal["regression", "classification"]
Fill = Literal["generator", "zero", "mean"]
Modality = Literal["visual", "text", "either"]


@dataclass
class PreprocessConfig:
    image_size: int = 48  # square side the image tower expects
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # CLIP's RGB mean
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)  # CLIP's RGB std
    context_length: int = 77  # text tokens the text tower was built for (exported graphs trim below it)


@dataclass
class BackboneConfig:
    arch: str = "trml-tiny"  # open_clip architecture name, or the path of a JSON architecture file
    clip_cfg: dict[str, Any] = field(default_factory=dict)  # resolved open_clip config: rebuilds without the registry
    freeze: bool = True  # frozen towers keep CLIP's alignment and let embeddings be cached


@dataclass
class TemporalConfig:
    max_frames: int = 8  # frames per clip; shorter clips are padded and masked


@dataclass
class GeneratorConfig:
    hidden_mult: int = 2  # generator MLP width, as a multiple of the embedding size


@dataclass
class HeadConfig:
    task: Task = "regression"  # regression score in [-3, 3] (MOSI/MOSEI) or class logits (MELD)
    num_classes: int = 1  # 1 for regression
    hidden: int = 128
    dropout: float = 0.1


@dataclass
class MissingConfig:
    """Which samples lose a modality. Used separately for training and for testing."""

    rate: float = 0.0  # fraction of samples with one modality removed
    modality: Modality = "either"  # which modality may go missing

    def validate(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"missing rate must be in [0, 1], got {self.rate}")
        if self.modality not in ("visual", "text", "either"):
            raise ConfigError(f"missing modality must be visual, text or either, got {self.modality!r}")


@dataclass
class TRMLConfig:
    format_version: int = FORMAT_VERSION
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    fill: Fill = "generator"  # what replaces a missing embedding: TRML's generators, or the zero/mean baselines
    alpha: float = 0.1  # weight of the semantic matching loss: L = L_task + alpha * L_sml
    tau: float = 0.07  # InfoNCE temperature of the semantic matching loss

    def validate(self) -> None:
        if self.fill not in ("generator", "zero", "mean"):
            raise ConfigError(f"fill must be generator, zero or mean, got {self.fill!r}")
        if self.head.task not in ("regression", "classification"):
            raise ConfigError(f"task must be regression or classification, got {self.head.task!r}")
        if self.head.task == "classification" and self.head.num_classes < 2:
            raise ConfigError("a classification head needs num_classes >= 2")
        if self.tau <= 0:
            raise ConfigError(f"tau must be positive, got {self.tau}")
        if self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TRMLConfig:
        version = d.get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ConfigError(
                f"trml_config.json has format_version {version}, newer than this trml-edge understands "
                f"({FORMAT_VERSION}); upgrade trml-edge to read it"
            )
        cfg = _build(cls, d, "trml_config")
        cfg.validate()
        return cfg

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> TRMLConfig:
        return cls.from_dict(read_json(path, what="TRML config"))


def _build(cls, d: Any, where: str):
    """Build a dataclass from a dict, refusing unknown keys so a typo never passes silently."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected an object, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; remove them or upgrade trml-edge")
    kwargs = {}
    for name, value in d.items():
        sub = known[name].default_factory if known[name].default_factory is not dataclasses.MISSING else None
        sub_cls = type(sub()) if sub is not None else None
        if sub_cls is not None and dataclasses.is_dataclass(sub_cls):
            kwargs[name] = _build(sub_cls, value, f"{where}.{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def read_json(path: Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found at {path}; check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} at {path} is not valid JSON ({e}); regenerate it") from e


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside ``path``, then rename, so a crash never leaves half a file.

    The file is strict JSON: a NaN or infinite float that reaches here becomes ``null``, with a warning that
    names it (writers that know why a value is undefined say so in the report itself, as
    ``trml_edge.metrics.json_ready`` does).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    found: list[str] = []
    obj = _finite_or_null(obj, "", found)
    if found:
        logging.getLogger(__name__).warning("%s: %s not finite, written as null", path, ", ".join(found[:5]))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _finite_or_null(obj: Any, where: str, found: list[str]) -> Any:
    """``obj`` with every non-finite float replaced by None; the replaced keys are appended to ``found``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        found.append(where or "value")
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v, f"{where}.{k}" if where else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v, f"{where}[{i}]", found) for i, v in enumerate(obj)]
    return obj


def publish_dir(tmp: Path, out: Path, force: bool, error: type[Exception], what: str) -> None:
    """Rename a finished directory into place (atomic on one filesystem); an existing one is replaced only with
    ``force``. ``error`` is raised, naming ``what`` was built, when ``out`` appeared meanwhile without force."""
    import os
    import shutil

    if out.exists():
        if not force:
            raise error(f"{out} appeared while the {what} was built; choose another --out")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
