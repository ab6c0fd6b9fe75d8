"""Export configuration: one dataclass tree, filled from a recipe TOML file and/or CLI flags.

A recipe is a file or the name of a shipped one (``cpu-int8``; ``trml-edge recipes`` lists them, from
``export/NAME.toml`` in the source tree, packaged in the wheel). It holds what a target needs::

    name = "cpu-int8"
    target = "cpu"              # cpu | tensorrt
    opset = 17
    int8_preset = "cpu"         # cpu | tensorrt
    ort_optimize = true         # cpu targets only: ORT's transformer optimizer (fused, ORT-only operators)
    [precision]                 # per graph; "default" covers graphs not listed
    default = "fp32"
    image_encoder = "int8"
    [tensorrt]
    workspace_mb = 2048
    [tensorrt.profiles.batch]   # overrides graphs.PROFILES for one dynamic axis
    min = 1
    opt = 4
    max = 16
    [budgets.int8]              # overrides parity.DEFAULT_BUDGETS for one precision
    min_cos = 0.97
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trml_edge import assets
from trml_edge.errors import ConfigError
from trml_edge.graphs import GRAPH_NAMES, PROFILES, Profile
from trml_edge.export.onnx_export import DEFAULT_OPSET
from trml_edge.export.parity import DEFAULT_BUDGETS, Budget
from trml_edge.export.precision import PRECISIONS, Int8Preset, check_precision

TARGETS = ("cpu", "tensorrt")


@dataclass
class TensorRTConfig:
    workspace_mb: int = 1024  # builder scratch memory; Orin-class boards share it with the CPU
    profiles: dict[str, Profile] = field(default_factory=dict)  # axis -> sizes, overriding graphs.PROFILES


@dataclass
class ExportConfig:
    run: str = ""  # run directory (trml_config.json + model.safetensors)
    out: str = ""  # bundle directory to create
    precision: dict[str, str] = field(default_factory=lambda: {g: "fp32" for g in GRAPH_NAMES})
    target: str = "cpu"
    int8_preset: str = "cpu"
    opset: int = DEFAULT_OPSET
    calibration: str | None = None  # calibration set directory or shipped set name (needed when any graph is INT8)
    data: str | None = None  # dataset directory: enables held-out parity inputs and the end-to-end gate
    budgets: dict[str, Budget] = field(default_factory=lambda: dict(DEFAULT_BUDGETS))
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)
    recipe: str | None = None  # recipe name, recorded in the manifest
    check_tensorrt: bool = False  # run the TensorRT lint on CPU even for target cpu
    ort_optimize: bool = False  # cpu targets: ORT's transformer optimizer on the FP32 graphs (ORT-only fused ops)
    force: bool = False  # replace an existing bundle at ``out``

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        Int8Preset.named(self.int8_preset)
        missing = set(GRAPH_NAMES) - set(self.precision)
        if missing:
            raise ConfigError(f"no precision for graphs {sorted(missing)}")
        for p in self.precision.values():
            check_precision(p)
        if "int8" in self.precision.values() and not self.calibration:
            raise ConfigError("INT8 needs a calibration set: pass --calibration DIR (build one with "
                              "`trml-edge calibrate RUN --data DIR --out calibration/NAME`, or use calibration/default)")
        if self.calibration:  # a shipped set by name (default, calibration/default) from wherever this runs
            self.calibration = str(assets.calibration(self.calibration))
        if self.ort_optimize and (self.target != "cpu" or self.check_tensorrt):
            raise ConfigError("ort_optimize fuses graphs into ONNX Runtime-only operators (com.microsoft), which "
                              "TensorRT cannot parse: use it with target = \"cpu\" only, without --check-tensorrt "
                              "(TensorRT recipes keep standard ONNX operators)")
        if self.opset < 17:
            raise ConfigError(f"opset {self.opset} is too old: LayerNormalization needs opset >= 17")
        if self.tensorrt.workspace_mb < 64:
            raise ConfigError("tensorrt.workspace_mb must be at least 64")

    def set_precision(self, precision: str) -> None:
        self.precision = {g: check_precision(precision) for g in GRAPH_NAMES}


def _take(d: dict[str, Any], keys: set[str], where: str) -> None:
    unknown = set(d) - keys
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(keys)}")


def apply_recipe(cfg: ExportConfig, path: str | Path) -> ExportConfig:
    """Read a recipe into ``cfg``: a TOML file, or a shipped recipe's name (CLI flags are applied after, so
    they win)."""
    path = assets.recipe(path)
    try:
        r = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe {path} is not valid TOML: {e}") from e
    _take(r, {"name", "description", "target", "opset", "int8_preset", "precision", "tensorrt", "budgets",
              "calibration", "ort_optimize"}, str(path))
    cfg.recipe = r.get("name", path.stem)
    cfg.target = r.get("target", cfg.target)
    cfg.opset = int(r.get("opset", cfg.opset))
    cfg.int8_preset = r.get("int8_preset", "tensorrt" if cfg.target == "tensorrt" else cfg.int8_preset)
    cfg.calibration = r.get("calibration", cfg.calibration)
    ort_opt = r.get("ort_optimize", cfg.ort_optimize)
    if not isinstance(ort_opt, bool):
        raise ConfigError(f"{path}: ort_optimize must be true or false, got {ort_opt!r}")
    cfg.ort_optimize = ort_opt
    prec = dict(r.get("precision", {}))
    _take(prec, {"default", *GRAPH_NAMES}, f"{path} [precision]")
    default = check_precision(prec.pop("default", "fp32"))
    cfg.precision = {g: check_precision(prec.get(g, default)) for g in GRAPH_NAMES}
    trt = dict(r.get("tensorrt", {}))
    _take(trt, {"workspace_mb", "profiles"}, f"{path} [tensorrt]")
    cfg.tensorrt.workspace_mb = int(trt.get("workspace_mb", cfg.tensorrt.workspace_mb))
    for axis, sizes in trt.get("profiles", {}).items():
        if axis not in PROFILES:
            raise ConfigError(f"{path}: unknown dynamic axis {axis!r}; axes are {', '.join(PROFILES)}")
        _take(sizes, {"min", "opt", "max"}, f"{path} [tensorrt.profiles.{axis}]")
        base = PROFILES[axis]
        prof = Profile(int(sizes.get("min", base.min)), int(sizes.get("opt", base.opt)), sizes.get("max", base.max))
        if not prof.min <= prof.opt <= (prof.max if prof.max is not None else prof.opt):
            raise ConfigError(f"{path}: profile {axis} needs min <= opt <= max, got {prof}")
        cfg.tensorrt.profiles[axis] = prof
    for precision, overrides in r.get("budgets", {}).items():
        if precision not in PRECISIONS:
            raise ConfigError(f"{path}: [budgets.{precision}] is not a precision ({', '.join(PRECISIONS)})")
        cfg.budgets[precision] = cfg.budgets[precision].updated(overrides, f"{path} [budgets.{precision}]")
    return cfg
