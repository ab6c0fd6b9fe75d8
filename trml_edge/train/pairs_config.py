"""The settings of ``trml-edge generators`` (``trml_edge.train.pairs``), standard library only so the CLI
shows their defaults in ``--help`` without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from trml_edge.errors import ConfigError


@dataclass
class PairsConfig:
    sources: list[str] = field(default_factory=list)  # pool directories and/or corpus directories
    out: str = ""  # generator directory (generators.safetensors + generators.json)
    # corpus sources: whose clips are pairs (train and/or valid; never test, whose inputs the evaluation scores)
    splits: list[str] = field(default_factory=lambda: ["train"])
    valid: str | None = None  # a corpus whose valid split scores the generators each epoch (held-out pairs)
    # matching objective (``trml_edge.model.losses.OBJECTIVES``): with sml alone the generated embeddings end
    # further from the real ones than the mean embedding is; sml+cosine had the lowest valid MAE downstream
    # (docs/results.md, section 6)
    objective: str = "sml+cosine"
    tau: float = 0.07  # InfoNCE temperature (objectives with sml)
    epochs: int = 20
    batch_size: int = 256  # in-batch negatives of the InfoNCE objective
    lr: float = 1e-3
    weight_decay: float = 1e-2
    seed: int = 0

    def validate(self) -> None:
        from trml_edge.data.records import SPLITS
        from trml_edge.model.losses import OBJECTIVES

        if not self.sources:
            raise ConfigError("name at least one source of unlabelled pairs (a pool or a corpus directory)")
        allowed = [s for s in SPLITS if s != "test"]
        if "test" in self.splits:
            raise ConfigError("splits must not include test: the generators must never see the test clips' inputs, "
                              f"which the evaluation scores; use {' and/or '.join(allowed)}")
        if not self.splits or any(s not in allowed for s in self.splits):
            raise ConfigError(f"splits must be one or more of {', '.join(allowed)}, comma-separated; got "
                              f"{','.join(self.splits)!r}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.epochs < 1 or self.batch_size < 2 or self.tau <= 0:
            raise ConfigError("epochs must be >= 1, batch_size >= 2 and tau > 0")
