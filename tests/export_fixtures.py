"""Shared, built-once artifacts for the export/runtime/TensorRT tests (pytest only auto-loads conftest.py).

Builders cache their result per process, so every test module that uses them shares one tiny model,
one synthetic dataset, one quickly trained run, one calibration set and one bundle per precision.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@cache
def workdir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="trml-export-tests-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


@cache
def random_run() -> Path:
    """A TRML run with random weights (the tiny default architecture): enough for graph parity."""
    import torch

    from trml_edge.config import TRMLConfig
    from trml_edge.model.checkpoint import new_model, save_run

    torch.manual_seed(0)
    run = workdir() / "random_run"
    save_run(run, new_model(TRMLConfig()))
    return run


@cache
def synth_data() -> Path:
    from trml_edge.data.synth import SynthSpec, generate

    out = workdir() / "data"
    generate(out, SynthSpec(n=120, pool=50))
    return out


@cache
def trained_run() -> Path:
    """A quickly trained run (2 epochs on the synthetic benchmark), for end-to-end metrics."""
    from trml_edge.config import TRMLConfig
    from trml_edge.train.loop import TrainConfig, train

    logging.getLogger("trml_edge").setLevel(logging.ERROR)
    out = workdir() / "trained_run"
    train(TrainConfig(data=str(synth_data()), out=str(out), epochs=2, batch_size=32), TRMLConfig(), progress=False)
    return out


@cache
def calibration_set() -> Path:
    from trml_edge.data.corpus import load_split, read_corpus
    from trml_edge.export.calibration import build_calibration
    from trml_edge.model.checkpoint import load_run

    model = load_run(trained_run())
    arrays = load_split(read_corpus(synth_data()), "train", model.cfg.temporal.max_frames,
                        model.cfg.preprocess.image_size)
    out = workdir() / "calibration" / "synth24"
    build_calibration(model, arrays, samples=24, out=out, batch_size=8)
    return out


@cache
def bundle(kind: str) -> Path:
    """Bundles of the trained run: fp32 / fp16 (all graphs), int8-trt (tensorrt preset encoders, fp32 rest).

    fp32 and int8-trt run the end-to-end gate on the synthetic test split.
    """
    from trml_edge.export.exporter import export_bundle
    from trml_edge.export.recipe import ExportConfig

    cfg = ExportConfig(run=str(trained_run()), out=str(workdir() / f"bundle_{kind}"))
    if kind == "fp32":
        cfg.data = str(synth_data())
    elif kind == "fp16":
        cfg.set_precision("fp16")
    elif kind == "int8-trt":
        cfg.target, cfg.int8_preset, cfg.calibration = "tensorrt", "tensorrt", str(calibration_set())
        cfg.data = str(synth_data())
        cfg.precision.update(image_encoder="int8", text_encoder="int8")
        # the synthetic test split has 38 clips: one flipped decision is 2.6 points of Acc-2, more than the
        # release budget of 1 point; this 2-epoch model predicts near 0, so allow one flip (not two)
        cfg.budgets["int8"] = cfg.budgets["int8"].updated({"acc_drop": 0.03}, "test fixture")
    elif kind == "int8-cpu":
        cfg.calibration = str(calibration_set())
        cfg.precision.update(image_encoder="int8", text_encoder="int8")
    else:
        raise ValueError(kind)
    export_bundle(cfg)
    return Path(cfg.out)
