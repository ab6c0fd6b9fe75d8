"""The missing-modality experiment: train TRML and its baselines on one split, compare them on another.

Three trainings serve the five methods of ``trml_edge.eval.evaluate``: a complete-modality model (upper
bound, zero-fill, mean-fill), a modality-dropout model and TRML. Finished runs are reused, so an
interrupted experiment picks up where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trml_edge.config import MissingConfig, TRMLConfig, write_json_atomic
from trml_edge.metrics import json_ready
from trml_edge.data.corpus import ClipArrays
from trml_edge.eval.evaluate import compare, methods
from trml_edge.model.checkpoint import WEIGHTS, load_run, new_model
from trml_edge.train.features import SplitTensors, prepare_inputs
from trml_edge.train.loop import TrainConfig, train

DEMO_RATES = [0.0, 0.3, 0.5, 0.7]


@dataclass
class ExperimentConfig:
    data: str
    out: str
    clip_weights: str | None = None  # local CLIP weights (for example from `trml-edge pretrain`)
    backbone: str = "trml-tiny"
    epochs: int = 30
    batch_size: int = 64
    seed: int = 0
    max_train: int | None = None  # labelled-set size
    train_missing: MissingConfig = field(default_factory=lambda: MissingConfig(rate=0.5, modality="either"))
    test_rates: list[float] = field(default_factory=lambda: list(DEMO_RATES))
    test_modality: str = "either"
    alpha: float = 0.1
    tau: float = 0.07
    fixed_missing: bool = TrainConfig.fixed_missing  # training masks drawn once (victim protocol) or per epoch
    gen_warmup_epochs: int = TrainConfig.gen_warmup_epochs  # TRML's stage 1 (generators alone on SML)
    pair_data: str = TrainConfig.pair_data  # stage-1 pairs: labelled, or the whole train split without labels
    gen_init: str = TrainConfig.gen_init  # TRML's generators start as the identity, across the gap, or from pairs
    generators: str | None = TrainConfig.generators  # gen_init "pairs": generators from `trml-edge generators`
    gen_update: str = TrainConfig.gen_update  # what trains TRML's generators in the joint training
    gen_loss: str = TrainConfig.gen_loss  # TRML's matching objective
    eval_split: str = "test"  # the split the methods are compared on ("valid" for choosing settings)
    reuse: dict[str, str] = field(default_factory=dict)  # run name -> a finished run to use instead of training


def _model_cfg(cfg: ExperimentConfig, fill: str, alpha: float) -> TRMLConfig:
    m = TRMLConfig(fill=fill, alpha=alpha, tau=cfg.tau)
    m.backbone.arch = cfg.backbone
    return m


def run_experiment(cfg: ExperimentConfig, arrays: dict[str, ClipArrays] | None = None,
                   inputs: dict[str, SplitTensors] | None = None, progress: bool = True) -> dict[str, Any]:
    """Train (or reuse) the three runs and compare the five methods. ``arrays``/``inputs`` are the decoded
    splits and their embeddings under ``cfg.clip_weights`` (``prepare_experiment``), to share across calls."""
    out = Path(cfg.out)
    specs = {  # run name -> (model config, training missing protocol)
        "complete": (_model_cfg(cfg, "zero", cfg.alpha), MissingConfig(rate=0.0, modality="either")),
        "dropout": (_model_cfg(cfg, "zero", 0.0), cfg.train_missing),
        "trml": (_model_cfg(cfg, "generator", cfg.alpha), cfg.train_missing),
    }
    if arrays is None:  # every run shares the frozen backbone, so the data is embedded once
        arrays, inputs = prepare_experiment(cfg)
    models = {}
    for name, (mcfg, missing) in specs.items():
        run = Path(cfg.reuse.get(name, out / name))
        if not (run / WEIGHTS).is_file():
            # the baselines never use their generators: keep them out of TRML's generator settings (the complete
            # model's matching loss still reaches its temporal encoder through t_hat, so it keeps the paper's
            # SML, as before the defaults changed: the baselines do not move with TRML's objective)
            stage1 = {"gen_warmup_epochs": 0, "gen_init": "identity", "gen_update": "joint", "gen_loss": "sml"}
            if name == "trml":
                stage1 = {"gen_warmup_epochs": cfg.gen_warmup_epochs, "pair_data": cfg.pair_data,
                          "gen_init": cfg.gen_init, "generators": cfg.generators, "gen_update": cfg.gen_update,
                          "gen_loss": cfg.gen_loss}
            tcfg = TrainConfig(data=cfg.data, out=str(run), epochs=cfg.epochs, batch_size=cfg.batch_size,
                               seed=cfg.seed, missing=missing, max_train=cfg.max_train,
                               fixed_missing=cfg.fixed_missing and name != "complete", **stage1)
            train(tcfg, mcfg, cfg.clip_weights, arrays=arrays, inputs=inputs, progress=progress)
        models[name] = load_run(run)
    ms = methods(models["trml"], models["complete"], models["dropout"])
    split = cfg.eval_split
    test_inputs = {id(m): inputs[split] for m in models.values()} if inputs else None
    rows = compare(ms, arrays[split], cfg.test_rates, cfg.test_modality, cfg.seed, test_inputs)
    result = {"config": asdict(cfg), "n_train": len(arrays["train"]) if cfg.max_train is None
              else min(cfg.max_train, len(arrays["train"])), "n_test": len(arrays[split]), "rows": rows}
    write_json_atomic(out / "comparison.json", {**result, "rows": [_json_row(r) for r in rows]})
    return result


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A comparison row for strict JSON: an undefined metric is null, and ``undefined`` says why."""
    values, why = json_ready(row)
    return {**values, "undefined": why} if why else values


def prepare_experiment(cfg: ExperimentConfig) -> tuple[dict[str, ClipArrays], dict[str, SplitTensors] | None]:
    probe = new_model(_model_cfg(cfg, "generator", cfg.alpha), cfg.clip_weights)
    arrays, inputs = prepare_inputs(probe, cfg.data, splits=("train", "valid", "test"))
    return arrays, inputs if probe.cfg.backbone.freeze else None


def table(rows: list[dict[str, Any]], title: str = "missing-modality comparison (test split)",
          limits: dict[float, float] | None = None):
    """A rich table: one line per method and test missing rate; ``limits`` adds a "Bayes limit" MAE line per rate
    (``trml_edge.eval.bayes``: the best MAE any predictor can reach on the synthetic benchmark's process)."""
    from rich.table import Table

    regression = "mae" in rows[0]
    cols = (["mae", "corr", "has0_acc2", "has0_f1", "non0_acc2", "acc7"] if regression else ["acc", "f1"])
    t = Table(title=title)
    t.add_column("test missing")
    t.add_column("method")
    for c in cols:
        t.add_column(c.replace("_", " "), justify="right")
    rows = list(rows)
    for rate, mae in (limits or {}).items() if regression else ():
        last_of_rate = max(i for i, r in enumerate(rows) if r["test_missing_rate"] == rate)
        rows.insert(last_of_rate + 1, {"method": "Bayes limit", "test_missing_rate": rate, "mae": mae})
    last = None
    for r in rows:
        rate = f"{r['test_missing_rate']:.1f}" if r["test_missing_rate"] != last else ""
        if r["test_missing_rate"] != last and last is not None:
            t.add_section()
        last = r["test_missing_rate"]
        t.add_row(rate, r["method"], *(f"{r[c]:.3f}" if r.get(c) is not None else "" for c in cols))
    return t
