"""``export_bundle``: run -> parity-checked bundle, as a list of small steps with a status each.

Every step (ONNX export, precision conversion, parity check, end-to-end gate, TensorRT lint) returns OK,
FAIL or SKIPPED with its duration, Model-Navigator style. The bundle is assembled in a hidden temporary
directory beside ``out`` and renamed into place only when every step passed, so an interrupted or failed
export never leaves a directory with a manifest.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from trml_edge.config import publish_dir, write_json_atomic
from trml_edge.errors import BundleError, ExportError, ParityError, TrmlEdgeError
from trml_edge.graphs import GRAPH_NAMES, GRAPHS, model_dims
from trml_edge.export.recipe import ExportConfig
from trml_edge.runtime.bundle import (FORMAT, FORMAT_VERSION, MANIFEST, TOKENIZER_FILE, load_bundle, session_options,
                                      sha256_file)

log = logging.getLogger(__name__)
OK, FAIL, SKIPPED = "OK", "FAIL", "SKIPPED"


@dataclass
class Step:
    name: str
    status: str
    seconds: float
    message: str = ""


@dataclass
class ExportResult:
    out: Path | None
    steps: list[Step] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(s.status != FAIL for s in self.steps)


def _run(steps: list[Step], name: str, fn: Callable[[], tuple[str, str] | str | None]) -> Any:
    """Run one step; its function returns a status (or (status, message)); exceptions become FAIL + re-raise."""
    t0 = time.perf_counter()
    try:
        res = fn()
    except TrmlEdgeError as e:
        steps.append(Step(name, FAIL, time.perf_counter() - t0, str(e)))
        raise
    status, msg = (res if isinstance(res, tuple) else (res or OK, ""))
    steps.append(Step(name, status, time.perf_counter() - t0, msg))
    return status


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    import trml_edge

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "trml_edge": trml_edge.__version__}


def _test_split(data: str | None, cfg):
    if not data:
        return None
    from trml_edge.data.corpus import load_split, read_corpus  # the loader behind train.loop.load_splits

    return load_split(read_corpus(Path(data)), "test", cfg.temporal.max_frames, cfg.preprocess.image_size)


def export_bundle(cfg: ExportConfig, model=None) -> ExportResult:
    """Export ``cfg.run`` into the bundle ``cfg.out``. Raises ParityError (with ``.result``) when a gate fails."""
    import open_clip
    import torch

    from trml_edge.export import calibration as cal
    from trml_edge.export.onnx_export import export_graph
    from trml_edge.export.ort_optimize import ort_level, ort_optimize
    from trml_edge.export.parity import end_to_end, graph_parity, heldout_inputs, worst_precision
    from trml_edge.export.precision import Int8Preset, to_fp16, to_int8
    from trml_edge.model.checkpoint import CONFIG, load_run
    from trml_edge.runtime.pipeline import Pipeline

    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not cfg.force:
        raise ExportError(f"{out} already exists; choose another --out or pass --force to replace it")
    result = ExportResult(None)
    steps = result.steps
    model = model if model is not None else load_run(Path(cfg.run))
    model.eval()
    mcfg = model.cfg.to_dict()
    dims = model_dims(mcfg)
    preset = Int8Preset.named(cfg.int8_preset)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "graphs").mkdir(parents=True)
    try:
        calib, calib_id = None, None
        if "int8" in cfg.precision.values():
            calib_manifest, calib = cal.load_calibration(Path(cfg.calibration), dims)
            calib_id = cal.identity(calib_manifest, Path(cfg.calibration))
        arrays = _test_split(cfg.data, model.cfg)
        with torch.no_grad():
            heldout = heldout_inputs(model, arrays)
        graphs, parity = {}, {}
        for name in GRAPH_NAMES:
            precision = cfg.precision[name]
            fp32 = tmp / "graphs" / f"{name}.fp32.onnx"
            final = tmp / "graphs" / f"{name}.onnx"
            _run(steps, f"{name}: onnx", lambda: export_graph(model, name, fp32, dims, cfg.opset) and OK)
            fusion = None
            if cfg.ort_optimize:  # validate() allows it for target cpu only: the fused ops are ORT-only
                def fuse(fp32=fp32):
                    nonlocal fusion
                    fused = fp32.with_name(fp32.stem + ".fused.onnx")
                    fusion = ort_optimize(fp32, fused)
                    fused.replace(fp32)  # the conversions below start from the fused FP32 graph
                    return OK, ", ".join(f"{k} x{v}" for k, v in fusion["fused"].items()) or "nothing matched"

                _run(steps, f"{name}: ort-optimize", fuse)
            if precision == "fp32":
                fp32.rename(final)
                _run(steps, f"{name}: convert", lambda: (SKIPPED, "fp32 needs no conversion"))
            elif precision == "fp16":
                _run(steps, f"{name}: fp16", lambda: to_fp16(fp32, final) and OK)
            else:
                _run(steps, f"{name}: int8/{preset.name}", lambda: to_int8(fp32, final, preset, calib[name]) and OK)
            fp32.unlink(missing_ok=True)

            level, level_why = ort_level(precision, final)

            def check(name=name, final=final, precision=precision, level=level):
                import onnxruntime as ort

                # the session options of the runtime, at the level the manifest records for this graph
                sess = ort.InferenceSession(str(final), session_options(level), providers=["CPUExecutionProvider"])
                res = graph_parity(model, name, sess, heldout[name], cfg.budgets[precision])
                parity[name] = {"precision": precision, "graph_optimization_level": level, **res}
                msg = f"max_abs {res['max_abs']:.2e} (<= {res['budget']['max_abs']:g}), " \
                      f"min_cos {res['min_cos']:.6f} (>= {res['budget']['min_cos']:g}), ORT level {level}"
                return (OK if res["ok"] else FAIL), msg

            _run(steps, f"{name}: parity", check)
            spec = GRAPHS[name]
            graphs[name] = {
                "file": f"graphs/{name}.onnx", "sha256": sha256_file(final), "precision": precision,
                "int8_preset": preset.name if precision == "int8" else None, "source": spec.source,
                **spec.to_dict(dims), "dynamic_axes": {t: {str(i): a for i, a in ax.items()}
                                                       for t, ax in spec.dynamic_axes().items()},
                "profile": {k: [list(s) for s in v] for k, v in spec.profile(dims, cfg.tensorrt.profiles).items()},
                # how ORT runs this graph: the level every session uses (runtime, parity, Triton's Python graph
                # model), and the transformer optimizer's fusions (None: standard ONNX operators only)
                "ort": {"graph_optimization_level": level, "level_reason": level_why, "transformer_optimizer": fusion},
            }

        if cfg.target == "tensorrt" or cfg.check_tensorrt:
            from trml_edge.export.tensorrt import lint_tensorrt

            def lint():
                problems = {g: lint_tensorrt(tmp / e["file"], g, dims, cfg.tensorrt.profiles) for g, e in graphs.items()}
                bad = {g: p for g, p in problems.items() if p}
                return (FAIL, "; ".join(f"{g}: {p[0]}" for g, p in bad.items())) if bad else OK

            _run(steps, "tensorrt: lint", lint)
        else:
            _run(steps, "tensorrt: lint", lambda: (SKIPPED, "target cpu (use --check-tensorrt)"))

        vocab = tmp / TOKENIZER_FILE
        vocab.parent.mkdir(parents=True)
        shutil.copyfile(open_clip.tokenizer.default_bpe(), vocab)
        pre = mcfg["preprocess"]
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "state": "partial",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "target": cfg.target, "recipe": cfg.recipe, "opset": cfg.opset, "versions": _versions(),
            "ort_optimize": cfg.ort_optimize,
            "model": {"run": str(cfg.run), "task": mcfg["head"]["task"], "dims": dims,
                      "trml_config_sha256": sha256_file(Path(cfg.run) / CONFIG) if cfg.run else None},
            "graphs": graphs,
            "calibration": calib_id,
            "int8_preset": asdict(preset) if calib_id else None,
            "tokenizer": {"type": "clip-bpe", "file": TOKENIZER_FILE, "sha256": sha256_file(vocab),
                          "context_length": int(pre["context_length"]), "sot_id": 49406, "eot_id": 49407},
            "preprocess": {"image_size": int(pre["image_size"]), "mean": list(pre["mean"]), "std": list(pre["std"]),
                           "context_length": int(pre["context_length"]), "max_frames": dims["max_frames"]},
            "parity": {"graphs": parity, "end_to_end": None},
            "tensorrt": {"workspace_mb": cfg.tensorrt.workspace_mb},
            "engines": {},
        }
        write_json_atomic(tmp / MANIFEST, manifest)

        if arrays is not None:
            def e2e():
                pipe = Pipeline(load_bundle(tmp, allow_partial=True))
                rows = end_to_end(model, pipe, arrays, cfg.budgets[worst_precision(cfg.precision)])
                manifest["parity"]["end_to_end"] = rows
                bad = [r["scenario"] for r in rows if not r["ok"]]
                summary = ", ".join(f"{r['scenario']} drop {r['acc_drop']:+.3f}" +
                                    (f" mae {r['mae_rise']:+.3f}" if "mae_rise" in r else "") for r in rows)
                return (FAIL, f"out of budget: {', '.join(bad)}; {summary}") if bad else (OK, summary)

            _run(steps, "end-to-end", e2e)
        else:
            _run(steps, "end-to-end", lambda: (SKIPPED, "no --data"))
        manifest["steps"] = [asdict(s) for s in steps]
        result.manifest = manifest
        failed = [s for s in steps if s.status == FAIL]
        if failed:
            err = ParityError("export out of budget: " + "; ".join(f"{s.name} ({s.message})" for s in failed) +
                              ". Nothing was written. Use a higher precision for that graph, a better calibration "
                              "set, or (knowingly) a looser [budgets] entry in the recipe")
            err.result = result
            raise err
        manifest["state"] = "complete"  # only now does load_bundle accept it (without allow_partial)
        write_json_atomic(tmp / MANIFEST, manifest)
        publish_dir(tmp, out, cfg.force, BundleError, "bundle")  # an old bundle is replaced only with force
        result.out = out
        return result
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
