"""Latency of the exported encoders: PyTorch eager FP32 vs ONNX Runtime FP32 vs ONNX Runtime INT8, as the CPU
recipes build them (``export/cpu-fp32.toml``, ``export/cpu-int8.toml``: ORT's transformer optimizer, the INT8
preset, the ORT level per graph) and as the plain export did before (unfused, ``ORT_ENABLE_EXTENDED``).

One process, one architecture (open_clip ``ViT-B-32`` with random weights: latency does not depend on the
weights' values), every ratio measured in the same run. Each configuration is warmed up, then run until a
minimum time has passed (and at least ``--min-runs`` times); we report the median and the p90/p95/p99. The
JSON names the CPU model, its ISA flags (AVX2 / AVX-512 / VNNI change the INT8 ratios) and the load average.
Each encoder's achieved GFLOP/s (FLOPs of its FP32 graph at the measured shape, ``profile.flops.graph_flops``)
is reported as a share of the FP32 matmul peak measured in the same run (``profile.flops.matmul_peak``).

    .venv/bin/python benchmarks/bench_export.py --threads 2 --out benchmarks/results/bench_export.json

Goals (issue 12; reported, not asserted): the INT8 image encoder >= 3.5x PyTorch eager at batch 1 on a VNNI CPU
(>= 3x on AVX2); the trimmed text encoder >= 4x the fixed-77 ORT FP32 graph at batch 1 (FP32 and INT8 each);
ORT FP32 ahead of PyTorch eager at batch 8.
"""

from __future__ import annotations

import argparse
import json
import os
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
from trml_edge.export.onnx_export import export_graph
from trml_edge.export.ort_optimize import ort_level, ort_optimize
from trml_edge.export.parity import synthetic_clips
from trml_edge.export.precision import Int8Preset, to_int8
from trml_edge.export.recipe import ExportConfig, apply_recipe
from trml_edge.graphs import model_dims
from trml_edge.model.backbone import tokenize
from trml_edge.model.checkpoint import new_model
from trml_edge.model.trml import text_features
from trml_edge.profile.flops import graph_flops, matmul_peak
from trml_edge.profile.report import VNNI_FLAGS, cpu_line
from trml_edge.profile.report import cpu_info as report_cpu_info
from trml_edge.routing import trim_to_eot
from trml_edge.runtime.bundle import session_options

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = "honestly i think the acting was really not very good overall to me"  # 15 tokens with SOT and EOT


def cpu_info() -> dict[str, object]:
    """The profile's CPU facts (model, ISA flags: VNNI or AMX change the INT8 ratios) under this script's keys."""
    cpu = report_cpu_info()
    return {"model": cpu["cpu_model"], "isa": cpu["isa_flags"], "vnni": bool(set(VNNI_FLAGS) & set(cpu["isa_flags"])),
            "cores": cpu["logical_cpus"], "machine": cpu["machine"]}


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


def session(path: Path, level: str, threads: int) -> ort.InferenceSession:
    # the runtime's options (runtime.bundle.session_options), without busy-waiting between runs: spinning ORT
    # pools would steal the cores from the PyTorch timings
    return ort.InferenceSession(str(path), session_options(level, threads, spinning=False),
                                providers=["CPUExecutionProvider"])


def build(model, name: str, dims, work: Path, calib, recipes: dict[str, ExportConfig]) -> dict[str, tuple[Path, str]]:
    """variant -> (graph, ORT level): the plain export as before (unfused, EXTENDED), each recipe's graph as
    export_bundle builds it, and the graph fused by ORT's transformer optimizer (``ort_optimize = true``)."""
    files: dict[tuple[bool, str, str], Path] = {}

    def graph(fused: bool, precision: str, preset: str) -> Path:  # the export steps, each file built once
        key = (fused, precision, preset if precision == "int8" else "")
        if key not in files:
            if not fused and precision == "fp32":
                files[key] = export_graph(model, name, work / f"{name}.onnx", dims)
            elif precision == "fp32":
                files[key] = work / f"{name}.fused.onnx"
                ort_optimize(graph(False, "fp32", ""), files[key])
            else:
                files[key] = to_int8(graph(fused, "fp32", ""), work / f"{name}.{'fused.' * fused}int8.{preset}.onnx",
                                     Int8Preset.named(preset), calib)
        return files[key]

    out = {"fp32 plain": (graph(False, "fp32", ""), "extended"), "int8 plain": (graph(False, "int8", "cpu"), "extended")}
    for tag, cfg in recipes.items():
        precision = cfg.precision.get(name, "fp32")
        path = graph(cfg.ort_optimize, precision, cfg.int8_preset)
        out[f"{precision} {tag}"] = (path, ort_level(precision, path)[0])
    for precision in ("fp32", "int8"):
        path = graph(True, precision, "cpu")
        out[f"{precision} fused"] = (path, ort_level(precision, path)[0])
    return out


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
    print(cpu_line({**report_cpu_info(), 'load_average': list(os.getloadavg())}), flush=True)  # first
    threads = args.threads or os.cpu_count() or 1
    load_start = os.getloadavg()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = TRMLConfig()
    cfg.backbone.arch = args.arch
    model = new_model(cfg).eval()
    dims = model_dims(model.cfg.to_dict())
    recipes = {r: apply_recipe(ExportConfig(run="-", out="-"), ROOT / "export" / f"{r}.toml")
               for r in ("cpu-fp32", "cpu-int8")}
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    frames, mask, texts = synthetic_clips(model, args.calibration_samples, seed=0)
    with torch.no_grad():
        calib = graph_inputs(model, frames[:, :1], mask[:, :1], texts, np.arange(len(texts)) % 3)
    graphs = {}
    for name in ("image_encoder", "text_encoder", "gen_text_to_visual", "fusion_head"):
        t0 = time.perf_counter()
        graphs[name] = build(model, name, dims, work, calib[name], recipes)
        print(f"built {name}: {', '.join(graphs[name])} in {time.perf_counter() - t0:.1f}s", flush=True)
    sess = {(n, v): session(p, lvl, threads) for n, vs in graphs.items() for v, (p, lvl) in vs.items()}
    levels = {n: {v: lvl for v, (_, lvl) in vs.items()} for n, vs in graphs.items()}
    # the FP32 matmul peak, measured before and after each batch size's timings: best of all (a busy machine
    # only lowers a measurement, so the best is the closest to what the cores can do)
    peaks = [matmul_peak(threads)]
    m = dict(warmup=args.warmup, min_time=args.min_time, min_runs=args.min_runs)
    results: dict[str, dict] = {}
    flops: dict[str, float] = {}
    s = dims["image"]
    rng = np.random.default_rng(0)
    img, txt = graphs["image_encoder"], graphs["text_encoder"]
    for batch in (1, 8):
        pixels = rng.standard_normal((batch, 3, s, s)).astype(np.float32)
        px = torch.from_numpy(pixels)
        flops[f"image b{batch}"] = graph_flops(img["fp32 plain"][0], {"pixels": pixels.shape})["flops"]
        variants = ("fp32 plain", "fp32 cpu-fp32", "fp32 fused", "int8 plain", "int8 cpu-int8", "int8 fused") \
            if batch == 1 else ("fp32 plain", "fp32 cpu-fp32", "int8 cpu-int8")
        fns = {f"image b{batch} torch fp32": lambda: model.encode_image(px)}
        for v in variants:
            fns[f"image b{batch} ort {v}"] = lambda x=sess["image_encoder", v]: x.run(None, {"pixels": pixels})
        with torch.inference_mode():
            results.update(measure(fns, **m))
        tokens77 = tokenize([SENTENCE] * batch, dims["context_length"])
        t77 = tokens77.numpy()
        tt = trim_to_eot(t77)
        flops[f"text b{batch} fixed-77"] = graph_flops(txt["fp32 plain"][0], {"tokens": t77.shape})["flops"]
        flops[f"text b{batch} trimmed"] = graph_flops(txt["fp32 plain"][0], {"tokens": tt.shape})["flops"]
        fns = {f"text b{batch} torch fp32 fixed-77": lambda: F.normalize(text_features(model.clip, tokens77), dim=-1),
               f"text b{batch} torch fp32 trimmed": lambda: model.encode_text(tokens77)}
        for v in ("fp32 plain", "fp32 cpu-fp32"):
            fns[f"text b{batch} ort {v} fixed-77"] = lambda x=sess["text_encoder", v]: x.run(None, {"tokens": t77})
        for v in (("fp32 plain", "fp32 cpu-fp32", "fp32 fused", "int8 plain", "int8 cpu-int8", "int8 fused")
                  if batch == 1 else ("fp32 cpu-fp32", "int8 cpu-int8")):
            # trimming is part of the timed call, as in the runtime
            fns[f"text b{batch} ort {v} trimmed"] = lambda x=sess["text_encoder", v]: x.run(None, {"tokens": trim_to_eot(t77)})
        with torch.inference_mode():
            results.update(measure(fns, **m))
        emb = F.normalize(torch.randn(batch, dims["embed"]), dim=-1).numpy()
        small = {}
        for v in ("fp32 cpu-fp32", "int8 plain"):  # the small graphs stay FP32 in the recipes; INT8 for comparison
            g, h = sess["gen_text_to_visual", v], sess["fusion_head", v]
            small[f"generator b{batch} ort {v}"] = lambda g=g: g.run(None, {"t": emb})
            small[f"head b{batch} ort {v}"] = lambda h=h: h.run(None, {"t": emb, "v": emb})
        results.update(measure(small, **m))
        peaks.append(matmul_peak(threads))
    peak = max(peaks, key=lambda p: p["gflops"])
    peak["all_gflops"] = [p["gflops"] for p in peaks]
    med = {k: v["median_ms"] for k, v in results.items()}
    ratios = {}
    for b in (1, 8):
        ratios[f"image b{b}: torch fp32 / ort int8 cpu-int8"] = med[f"image b{b} torch fp32"] / med[f"image b{b} ort int8 cpu-int8"]
        ratios[f"image b{b}: torch fp32 / ort fp32 cpu-fp32"] = med[f"image b{b} torch fp32"] / med[f"image b{b} ort fp32 cpu-fp32"]
        ratios[f"image b{b}: torch fp32 / ort fp32 plain"] = med[f"image b{b} torch fp32"] / med[f"image b{b} ort fp32 plain"]
        for v in ("fp32 cpu-fp32", "int8 cpu-int8"):
            ratios[f"text b{b}: ort fp32 plain fixed-77 / ort {v} trimmed"] = (
                med[f"text b{b} ort fp32 plain fixed-77"] / med[f"text b{b} ort {v} trimmed"])
            ratios[f"text b{b}: ort fp32 cpu-fp32 fixed-77 / ort {v} trimmed"] = (
                med[f"text b{b} ort fp32 cpu-fp32 fixed-77"] / med[f"text b{b} ort {v} trimmed"])
        ratios[f"text b{b}: torch fp32 trimmed / ort fp32 cpu-fp32 trimmed"] = (
            med[f"text b{b} torch fp32 trimmed"] / med[f"text b{b} ort fp32 cpu-fp32 trimmed"])
        ratios[f"generator b{b}: fp32 / int8"] = med[f"generator b{b} ort fp32 cpu-fp32"] / med[f"generator b{b} ort int8 plain"]
        ratios[f"head b{b}: fp32 / int8"] = med[f"head b{b} ort fp32 cpu-fp32"] / med[f"head b{b} ort int8 plain"]
    for p in ("fp32", "int8"):  # what each lever buys at batch 1 (> 1: it pays)
        recipe = f"{p} cpu-{p}"
        ratios[f"image b1: ort {p} plain / {recipe} (recipe vs before)"] = med[f"image b1 ort {p} plain"] / med[f"image b1 ort {recipe}"]
        ratios[f"image b1: ort {p} {recipe} / fused (ORT transformer optimizer)"] = (
            med[f"image b1 ort {recipe}"] / med[f"image b1 ort {p} fused"])
        ratios[f"text b1: ort {p} plain / {recipe} trimmed (recipe vs before)"] = (
            med[f"text b1 ort {p} plain trimmed"] / med[f"text b1 ort {recipe} trimmed"])
        ratios[f"text b1: ort {p} {recipe} / fused trimmed (ORT transformer optimizer)"] = (
            med[f"text b1 ort {recipe} trimmed"] / med[f"text b1 ort {p} fused trimmed"])
    efficiency = {}  # achieved GFLOP/s (FP32 graph's FLOPs / median time) and its share of the FP32 matmul peak
    for key, fl in flops.items():
        enc, b, shape = key.split(" ")[0], key.split(" ")[1], " ".join(key.split(" ")[2:])
        for v in ("fp32 cpu-fp32", "int8 cpu-int8"):
            rk = f"{enc} {b} ort {v}" + (f" {shape}" if shape else "")
            if rk in med:
                gf = fl / (med[rk] / 1e3) / 1e9
                efficiency[rk] = {"gflop": fl / 1e9, "gflops": gf, "share_of_fp32_matmul_peak": gf / peak["gflops"]}
    cpu = cpu_info()
    image_goal = 3.5 if cpu["vnni"] else 3.0
    goals = {
        f"ort int8 image b1 >= {image_goal}x torch eager ({'VNNI' if cpu['vnni'] else 'no VNNI'})":
            ratios["image b1: torch fp32 / ort int8 cpu-int8"] >= image_goal,
        "trimmed text fp32 >= 4x fixed-77 ort fp32, same graph (b1)":
            ratios["text b1: ort fp32 cpu-fp32 fixed-77 / ort fp32 cpu-fp32 trimmed"] >= 4.0,
        "trimmed text int8 >= 4x fixed-77 ort fp32, same graph (b1)":
            ratios["text b1: ort fp32 cpu-fp32 fixed-77 / ort int8 cpu-int8 trimmed"] >= 4.0,
        "ort fp32 image ahead of torch eager (b8)": ratios["image b8: torch fp32 / ort fp32 cpu-fp32"] > 1.0,
        "ort fp32 text ahead of torch eager, trimmed (b8)": ratios["text b8: torch fp32 trimmed / ort fp32 cpu-fp32 trimmed"] > 1.0,
    }
    report = {
        "arch": args.arch, "threads": threads, "cpu": cpu,
        "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
        "torch": torch.__version__, "onnxruntime": ort.__version__, "sentence": SENTENCE,
        "sentence_tokens": int(trim_to_eot(tokenize([SENTENCE], 77).numpy()).shape[1]),
        "recipes": {k: {"ort_optimize": c.ort_optimize, "int8_preset": c.int8_preset} for k, c in recipes.items()},
        "ort_levels": levels, "matmul_peak": peak, "settings": m, "results": results, "ratios": ratios,
        "efficiency": efficiency, "goals_met": goals,
    }
    print(f"{'configuration':48s} {'median':>9s} {'p90':>9s} {'p95':>9s} {'p99':>9s} {'runs':>6s}")
    for k, v in results.items():
        print(f"{k:48s} {v['median_ms']:9.2f} {v['p90_ms']:9.2f} {v['p95_ms']:9.2f} {v['p99_ms']:9.2f} {v['runs']:6d}")
    for k, v in ratios.items():
        print(f"{k:64s} {v:6.2f}x")
    for k, v in efficiency.items():
        print(f"{k:48s} {v['gflops']:7.1f} GFLOP/s = {100 * v['share_of_fp32_matmul_peak']:5.1f}% of the FP32 matmul peak")
    for k, v in goals.items():
        print(f"goal {k}: {'met' if v else 'NOT met'}")
    print(f"FP32 matmul peak: {peak['gflops']:.1f} GFLOP/s (best of {', '.join(f'{g:.1f}' for g in peak['all_gflops'])})")
    print(f"cpu: {cpu['model']}, {' '.join(cpu['isa'])}; load average {load_start} -> {report['load_average_at_end']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
