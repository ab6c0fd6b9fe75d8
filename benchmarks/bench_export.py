"""Latency of the exported encoders: PyTorch eager FP32 vs ONNX Runtime FP32 vs ONNX Runtime INT8 (cpu preset).

One process, one architecture (open_clip ``ViT-B-32`` with random weights: latency does not depend on the
weights' values), every ratio measured in the same run. Each configuration is warmed up, then run until a
minimum time has passed (and at least ``--min-runs`` times); we report the median and the p90/p95/p99.

    .venv/bin/python benchmarks/bench_export.py --out bench_out/bench_export.json

Goals (reported, not asserted): ORT INT8 image encoder >= 2.5x faster than PyTorch eager at batch 1;
the trimmed text encoder >= 4x faster than the fixed-77 ORT FP32 graph on a 10-20 token sentence.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from trml_edge.config import TRMLConfig
from trml_edge.export.calibration import graph_inputs
from trml_edge.graphs import model_dims
from trml_edge.export.onnx_export import export_graph
from trml_edge.export.parity import synthetic_clips
from trml_edge.export.precision import Int8Preset, to_int8
from trml_edge.model.backbone import tokenize
from trml_edge.model.checkpoint import new_model
from trml_edge.model.trml import text_features
from trml_edge.routing import trim_to_eot

SENTENCE = "honestly i think the acting was really not very good overall to me"  # 15 tokens with SOT and EOT


def measure(fns: dict[str, object], warmup: int, min_time: float, min_runs: int) -> dict[str, dict[str, float]]:
    """Time several configurations in interleaved rounds (A, B, C, A, B, C, ...), so a change in machine load
    hits all of them alike and their ratios stay fair. Stops when every one has run ``min_runs`` times and
    for ``min_time`` seconds in total."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    while any(len(t) < min_runs or sum(t) < min_time for t in times.values()):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    out = {}
    for k, t in times.items():
        ms = np.asarray(t) * 1e3
        out[k] = {"runs": len(ms), "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                  "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99))}
    return out


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # as the runtime does
    opts.intra_op_num_threads = threads
    # no busy-waiting between runs: spinning ORT pools would steal the cores from the PyTorch timings
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--out", default="bench_out/bench_export.json")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per configuration")
    ap.add_argument("--min-runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--calibration-samples", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="threads for PyTorch and ORT alike (0: all cores)")
    args = ap.parse_args()
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = TRMLConfig()
    cfg.backbone.arch = args.arch
    model = new_model(cfg).eval()
    dims = model_dims(model.cfg.to_dict())
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    frames, mask, texts = synthetic_clips(model, args.calibration_samples, seed=0)
    with torch.no_grad():
        calib = graph_inputs(model, frames[:, :1], mask[:, :1], texts, np.arange(len(texts)) % 3)
    paths = {}
    preset = Int8Preset.named("cpu")
    for name in ("image_encoder", "text_encoder", "gen_text_to_visual", "fusion_head"):
        t0 = time.perf_counter()
        paths[name, "fp32"] = export_graph(model, name, work / f"{name}.onnx", dims)
        paths[name, "int8"] = to_int8(paths[name, "fp32"], work / f"{name}.int8.onnx", preset, calib[name])
        print(f"exported {name} fp32+int8 in {time.perf_counter() - t0:.1f}s", flush=True)
    sess = {k: session(p, threads) for k, p in paths.items()}
    m = dict(warmup=args.warmup, min_time=args.min_time, min_runs=args.min_runs)
    results: dict[str, dict] = {}
    s = dims["image"]
    rng = np.random.default_rng(0)
    for batch in (1, 8):
        pixels = rng.standard_normal((batch, 3, s, s)).astype(np.float32)
        px = torch.from_numpy(pixels)
        s32, s8 = sess["image_encoder", "fp32"], sess["image_encoder", "int8"]
        with torch.inference_mode():
            results.update(measure({
                f"image b{batch} torch fp32": lambda: model.encode_image(px),
                f"image b{batch} ort fp32": lambda: s32.run(None, {"pixels": pixels}),
                f"image b{batch} ort int8": lambda: s8.run(None, {"pixels": pixels}),
            }, **m))
        tokens77 = tokenize([SENTENCE] * batch, dims["context_length"])
        t77 = tokens77.numpy()
        st, si = sess["text_encoder", "fp32"], sess["text_encoder", "int8"]
        with torch.inference_mode():
            results.update(measure({
                f"text b{batch} torch fp32 fixed-77": lambda: F.normalize(text_features(model.clip, tokens77), dim=-1),
                f"text b{batch} torch fp32 trimmed": lambda: model.encode_text(tokens77),
                f"text b{batch} ort fp32 fixed-77": lambda: st.run(None, {"tokens": t77}),
                f"text b{batch} ort fp32 trimmed": lambda: st.run(None, {"tokens": trim_to_eot(t77)}),
                f"text b{batch} ort int8 trimmed": lambda: si.run(None, {"tokens": trim_to_eot(t77)}),
            }, **m))
        emb = F.normalize(torch.randn(batch, dims["embed"]), dim=-1).numpy()
        small = {}
        for prec in ("fp32", "int8"):
            g, h = sess["gen_text_to_visual", prec], sess["fusion_head", prec]
            small[f"generator b{batch} ort {prec}"] = lambda g=g: g.run(None, {"t": emb})
            small[f"head b{batch} ort {prec}"] = lambda h=h: h.run(None, {"t": emb, "v": emb})
        results.update(measure(small, **m))
    med = {k: v["median_ms"] for k, v in results.items()}
    ratios = {}
    for b in (1, 8):
        ratios[f"image b{b}: torch fp32 / ort int8"] = med[f"image b{b} torch fp32"] / med[f"image b{b} ort int8"]
        ratios[f"image b{b}: torch fp32 / ort fp32"] = med[f"image b{b} torch fp32"] / med[f"image b{b} ort fp32"]
        ratios[f"text b{b}: ort fp32 fixed-77 / ort fp32 trimmed"] = (
            med[f"text b{b} ort fp32 fixed-77"] / med[f"text b{b} ort fp32 trimmed"])
        ratios[f"text b{b}: ort fp32 fixed-77 / ort int8 trimmed"] = (
            med[f"text b{b} ort fp32 fixed-77"] / med[f"text b{b} ort int8 trimmed"])
        ratios[f"generator b{b}: fp32 / int8"] = med[f"generator b{b} ort fp32"] / med[f"generator b{b} ort int8"]
        ratios[f"head b{b}: fp32 / int8"] = med[f"head b{b} ort fp32"] / med[f"head b{b} ort int8"]
    goals = {
        "ort int8 image b1 >= 2.5x torch eager": ratios["image b1: torch fp32 / ort int8"] >= 2.5,
        "trimmed text >= 4x fixed-77 ort fp32 (b1)": ratios["text b1: ort fp32 fixed-77 / ort fp32 trimmed"] >= 4.0,
    }
    report = {
        "arch": args.arch, "threads": threads, "load_average_at_end": os.getloadavg(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "onnxruntime": ort.__version__, "sentence": SENTENCE,
        "sentence_tokens": int(trim_to_eot(tokenize([SENTENCE], 77).numpy()).shape[1]),
        "settings": m, "results": results, "ratios": ratios, "goals_met": goals,
    }
    print(f"{'configuration':40s} {'median':>9s} {'p90':>9s} {'p95':>9s} {'p99':>9s} {'runs':>6s}")
    for k, v in results.items():
        print(f"{k:40s} {v['median_ms']:9.2f} {v['p90_ms']:9.2f} {v['p95_ms']:9.2f} {v['p99_ms']:9.2f} {v['runs']:6d}")
    for k, v in ratios.items():
        print(f"{k:50s} {v:6.2f}x")
    for k, v in goals.items():
        print(f"goal {k}: {'met' if v else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
