"""Which INT8 kernels ONNX Runtime runs for the image encoder on this CPU, and what each INT8 preset buys, per ISA.

    .venv/bin/python benchmarks/bench_int8_kernels.py --out benchmarks/results/bench_int8_kernels_xeon.json

The ViT-B-32 image encoder (random weights, batch 1, 224x224) is exported as the cpu-int8 recipe builds it
(ORT's transformer fusion, then static QDQ quantization with 16 calibration images), once per INT8 preset:

* ``cpu``: the shipped preset (U8 activations, S8 per-channel weights, 7-bit weights: ``reduce_range``);
* ``full-range``: the same with 8-bit weights (``reduce_range`` off: the AVX2 overflow it avoids cannot happen
  with VNNI or AMX);
* ``per-tensor``: one weight scale per tensor;
* ``no-attention``: only the weight MatMuls quantized, Q.K^T and softmax.V left in FP32;
* ``s8s8``: signed, symmetric activations (TensorRT's choice).

Each graph is timed against PyTorch eager FP32 and ORT FP32 (the fused graph), in interleaved rounds, in a child
process per ISA setting: as the machine is, and with AMX refused (a ``syscall`` shim, LD_PRELOADed, answers
ONNX Runtime's request for the AMX tile state, ``arch_prctl(ARCH_REQ_XCOMP_PERM)``, with EPERM, so MLAS falls
back to its AVX-512 VNNI kernels; the shim says on stderr when it refused). Each preset's embedding is compared
with ORT FP32's on 8 other images (cosine, max-abs): a faster preset that moves the embedding is not a win.

Reported, not asserted (issue 32). The CPU line and the load come first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/syscall.h>
long syscall(long number, ...) {
    static long (*real)(long, ...) = 0;
    static int said = 0;
    va_list ap;
    long a[6];
    va_start(ap, number);
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_arch_prctl && a[0] == 0x1023) {  /* ARCH_REQ_XCOMP_PERM */
        if (!said) { said = 1; fprintf(stderr, "amx-off shim: refused arch_prctl(ARCH_REQ_XCOMP_PERM, %ld)\n", a[1]); }
        errno = EPERM;
        return -1;
    }
    if (!real) real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
"""
PRESETS = {
    "cpu": {},
    "full-range": {"reduce_range": False},
    "per-tensor": {"per_channel": False},
    "no-attention": {"quantize_attention": False},
    "s8s8": {"activation_type": "int8", "symmetric_activations": True},
}


def build(work: Path, samples: int) -> dict:
    """The graphs (FP32 fused and one INT8 per preset), the held-out images, and PyTorch's timing."""
    import torch

    from trml_edge.config import TRMLConfig
    from trml_edge.export.calibration import graph_inputs
    from trml_edge.export.onnx_export import export_graph
    from trml_edge.export.ort_optimize import ort_optimize
    from trml_edge.export.parity import synthetic_clips
    from trml_edge.export.precision import Int8Preset, to_int8
    from trml_edge.graphs import model_dims
    from trml_edge.model.checkpoint import new_model

    torch.manual_seed(0)
    cfg = TRMLConfig()
    cfg.backbone.arch = "ViT-B-32"
    model = new_model(cfg).eval()
    dims = model_dims(model.cfg.to_dict())
    frames, mask, texts = synthetic_clips(model, samples, seed=0)
    with torch.no_grad():
        calib = graph_inputs(model, frames[:, :1], mask[:, :1], texts, np.arange(len(texts)) % 3)["image_encoder"]
    plain = export_graph(model, "image_encoder", work / "image.onnx", dims)
    fused = work / "image.fused.onnx"
    ort_optimize(plain, fused)
    graphs = {"fp32": str(fused)}
    skipped = {}
    for name, change in PRESETS.items():
        preset = dataclasses.replace(Int8Preset.cpu(), name=name, **change)
        try:
            preset.validate()
        except Exception as e:  # noqa: BLE001 - reported
            skipped[name] = str(e)
            continue
        t0 = time.perf_counter()
        graphs[name] = str(to_int8(fused, work / f"image.int8.{name}.onnx", preset, calib))
        print(f"built int8 {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    rng = np.random.default_rng(1)
    s = dims["image"]
    held = rng.standard_normal((8, 3, s, s)).astype(np.float32)
    np.save(work / "held.npy", held)
    pixels = rng.standard_normal((1, 3, s, s)).astype(np.float32)
    np.save(work / "pixels.npy", pixels)
    torch.set_num_threads(os.cpu_count() or 1)
    px = torch.from_numpy(pixels)
    with torch.inference_mode():
        for _ in range(3):
            model.encode_image(px)
        times = []
        while len(times) < 10 or sum(times) < 3.0:
            t0 = time.perf_counter()
            model.encode_image(px)
            times.append(time.perf_counter() - t0)
    return {"graphs": graphs, "skipped": skipped, "torch_ms": float(np.median(times) * 1e3),
            "torch_runs": len(times)}


def child(work: Path, graphs: dict, min_time: float, out: Path) -> None:
    """Time every graph in interleaved rounds (this process's ISA setting), and compare embeddings."""
    import onnxruntime as ort

    from trml_edge.runtime.bundle import session_options

    threads = os.cpu_count() or 1
    sess = {k: ort.InferenceSession(p, session_options("all", threads,  # the recipe's level (ort_level)
                                                       spinning=False), providers=["CPUExecutionProvider"])
            for k, p in graphs.items()}
    pixels, held = np.load(work / "pixels.npy"), np.load(work / "held.npy")
    feed = {k: {s.get_inputs()[0].name: pixels} for k, s in sess.items()}
    for k, s in sess.items():
        for _ in range(3):
            s.run(None, feed[k])
    times = {k: [] for k in sess}
    while any(len(t) < 10 or sum(t) < min_time for t in times.values()):
        for k, s in sess.items():
            t0 = time.perf_counter()
            s.run(None, feed[k])
            times[k].append(time.perf_counter() - t0)
    name = sess["fp32"].get_inputs()[0].name
    ref = np.concatenate([sess["fp32"].run(None, {name: held[i:i + 1]})[0] for i in range(len(held))])
    result = {}
    for k, t in times.items():
        ms = np.asarray(t) * 1e3
        emb = np.concatenate([sess[k].run(None, {name: held[i:i + 1]})[0] for i in range(len(held))])
        cos = np.sum(emb * ref, -1) / (np.linalg.norm(emb, axis=-1) * np.linalg.norm(ref, axis=-1))
        result[k] = {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "runs": len(ms),
                     "min_cosine_vs_fp32": float(cos.min()), "max_abs_vs_fp32": float(np.abs(emb - ref).max())}
    out.write_text(json.dumps(result, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out/bench_int8_kernels.json"))
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--calibration-samples", type=int, default=16)
    ap.add_argument("--child", nargs=3, metavar=("WORK", "GRAPHS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        work, graphs, out = args.child
        return child(Path(work), json.loads(Path(graphs).read_text()), args.min_time, Path(out))

    from trml_edge.profile.report import cpu_info, cpu_line

    cpu = cpu_info()
    load_start = list(os.getloadavg())
    print(cpu_line({**cpu, "load_average": load_start}), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    built = build(work, args.calibration_samples)
    (work / "graphs.json").write_text(json.dumps(built["graphs"]))
    shim_src, shim = work / "amx_off.c", work / "amx_off.so"
    shim_src.write_text(SHIM)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(shim_src), "-ldl"], check=True)
    settings = {"as is": {}, "AMX refused": {"LD_PRELOAD": str(shim)}}
    if "amx_int8" not in cpu["isa_flags"]:
        settings = {"as is": {}}  # no AMX here: nothing to refuse
    runs = {}
    for label, env in settings.items():
        out = work / f"{label.replace(' ', '_')}.json"
        r = subprocess.run([sys.executable, __file__, "--min-time", str(args.min_time), "--child", str(work),
                            str(work / "graphs.json"), str(out)], env={**os.environ, **env}, capture_output=True,
                           text=True, timeout=1800)
        if r.returncode:
            raise SystemExit(f"{label}: {r.stderr[-2000:]}")
        runs[label] = {"timings": json.loads(out.read_text()),
                       "shim_refused": "amx-off shim: refused" in r.stderr}
        if env and not runs[label]["shim_refused"]:
            print(f"WARNING: {label}: the shim never saw ONNX Runtime's AMX request", flush=True)
    torch_ms = built["torch_ms"]
    print(f"PyTorch eager FP32, batch 1: {torch_ms:.2f} ms ({built['torch_runs']} runs)")
    print(f"{'setting':12s} {'graph':13s} {'median ms':>9s} {'p90 ms':>8s} {'x torch':>8s} {'x ort fp32':>10s} "
          f"{'min cos':>8s} {'max abs':>8s}")
    for label, run in runs.items():
        t = run["timings"]
        for k, v in t.items():
            v["x_torch"] = torch_ms / v["median_ms"]
            v["x_ort_fp32"] = t["fp32"]["median_ms"] / v["median_ms"]
            print(f"{label:12s} {k:13s} {v['median_ms']:9.2f} {v['p90_ms']:8.2f} {v['x_torch']:8.2f} "
                  f"{v['x_ort_fp32']:10.2f} {v['min_cosine_vs_fp32']:8.4f} {v['max_abs_vs_fp32']:8.4f}")
    for name, why in built["skipped"].items():
        print(f"preset {name} skipped: {why}")
    report = {"cpu": cpu, "load_average_at_start": load_start, "load_average_at_end": list(os.getloadavg()),
              "torch_eager_fp32_ms": torch_ms, "presets": {k: PRESETS[k] for k in built["graphs"] if k in PRESETS},
              "skipped": built["skipped"], "runs": runs, "goal": "ort int8 image b1 >= 3.5x torch eager (VNNI)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average {load_start} -> {report['load_average_at_end']}; wrote {args.out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
