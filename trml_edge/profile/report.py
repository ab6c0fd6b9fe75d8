"""The profile report: ``report.json`` (schema-versioned, with the environment) and ``report.md``."""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata
from typing import Any

SCHEMA = "trml-edge-profile"
SCHEMA_VERSION = 1
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "i8mm")
PACKAGES = ("trml-edge", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "onnx-tool", "torch", "matplotlib",
            "tritonclient", "nvidia-pytriton", "tensorrt")

_NUM = {"type": "number"}
_LAT = {"type": "object", "required": ["runs", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "throughput_per_s"],
        "properties": {k: _NUM for k in ("mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "throughput_per_s")}}
REPORT_SCHEMA: dict[str, Any] = {  # JSON Schema (the subset `validate` checks)
    "type": "object",
    "required": ["schema", "schema_version", "created", "settings", "environment", "matmul_peak", "bundles",
                 "latency", "accuracy", "recommendation"],
    "properties": {
        "schema": {"enum": [SCHEMA]},
        "schema_version": {"enum": [SCHEMA_VERSION]},
        "created": {"type": "string"},
        "settings": {"type": "object", "required": ["batches", "min_time_s", "min_runs", "warmup", "threads",
                                                    "breakdown_tolerance"]},
        "environment": {"type": "object", "required": ["cpu_model", "isa_flags", "physical_cores", "logical_cpus",
                                                       "threads", "load_average", "versions", "ort_providers"],
                        "properties": {"isa_flags": {"type": "array", "items": {"type": "string"}},
                                       "versions": {"type": "object"}}},
        "matmul_peak": {"type": "object", "required": ["gflops"], "properties": {"gflops": _NUM}},
        "bundles": {"type": "object"},
        "latency": {"type": "array", "items": {
            "type": "object", "required": ["backend", "bundle", "scenario", "status"],
            "properties": {"status": {"enum": ["OK", "SKIPPED", "FAIL"]},
                           "scenario": {"enum": ["complete", "visual_missing", "text_missing", "all"]},
                           "latency": _LAT, "reason": {"type": "string"},
                           "layout": {"enum": ["fused", "ensemble"]}}}},  # triton rows: the repository's layout
        "accuracy": {"type": "object", "required": ["status"],
                     "properties": {"status": {"enum": ["ok", "n/a"]}, "rows": {"type": "array"}}},
        "recommendation": {"type": "object", "required": ["status"],
                           "properties": {"status": {"enum": ["ok", "none", "n/a"]}}},
    },
}


def validate(doc: Any, schema: dict[str, Any] = REPORT_SCHEMA, where: str = "report") -> list[str]:
    """Problems of ``doc`` against a JSON-Schema subset (type, enum, required, properties, items)."""
    types = {"object": dict, "array": list, "string": str, "number": (int, float), "integer": int}
    problems = []
    if "type" in schema and not isinstance(doc, types[schema["type"]]):
        return [f"{where}: expected {schema['type']}, got {type(doc).__name__}"]
    if "enum" in schema and doc not in schema["enum"]:
        problems.append(f"{where}: {doc!r} not one of {schema['enum']}")
    if isinstance(doc, dict):
        problems += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in doc]
        for k, sub in schema.get("properties", {}).items():
            if k in doc:
                problems += validate(doc[k], sub, f"{where}.{k}")
    if isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            problems += validate(item, schema["items"], f"{where}[{i}]")
    return problems


def cpu_info() -> dict[str, Any]:
    """CPU model, the ISA flags of ``ISA_FLAGS`` it has, and its physical core count (None when unknown)."""
    cpu, flags, physical = platform.processor() or platform.machine(), set(), None
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
        m = re.search(r"^(model name|Model|Hardware)\s*:\s*(.+)$", text, re.M)
        cpu = m.group(2).strip() if m else cpu
        m = re.search(r"^(flags|Features)\s*:\s*(.+)$", text, re.M)
        flags = set(m.group(2).split()) if m else set()
        cores = {(p, c) for p, c in re.findall(r"physical id\s*:\s*(\d+).*?core id\s*:\s*(\d+)", text, re.S)}
        physical = len(cores) or None
    except OSError:
        pass
    return {"cpu_model": cpu, "machine": platform.machine(), "isa_flags": sorted(f for f in ISA_FLAGS if f in flags),
            "physical_cores": physical, "logical_cpus": os.cpu_count()}


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")  # what ORT's INT8 kernels use on x86 / Arm


def cpu_line(env: dict[str, Any]) -> str:
    """One line naming where a figure was measured: CPU model, ISA flags, CPUs and load (``environment`` or
    ``cpu_info`` plus a load)."""
    load = env.get("load_average") or list(os.getloadavg())
    return (f"CPU: {env['cpu_model']} ({env['machine']}; {' '.join(env['isa_flags']) or 'no ISA flags read'}); "
            f"{env['logical_cpus']} logical CPUs; load average {', '.join(f'{x:.2f}' for x in load)}")


def environment(threads: int) -> dict[str, Any]:
    """CPU model, ISA flags, core and thread counts, load, GPUs and package versions."""
    cpu = cpu_info()
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    import onnxruntime as ort

    return {**cpu, "threads": threads or os.cpu_count(),
            "load_average": list(os.getloadavg()), "os": platform.platform(), "python": sys.version.split()[0],
            "versions": versions, "ort_providers": ort.get_available_providers(), "gpus": _gpus()}


def _gpus() -> list[str]:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _f(x: Any, nd: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def summary_table(rep: dict[str, Any]) -> list[str]:
    """One row per bundle and scenario: local latency at the first batch size, accuracy and its delta."""
    batch = rep["settings"]["batches"][0]
    acc = rep["accuracy"]
    keys = list(acc.get("budget", {})) if acc["status"] == "ok" else []
    metric = acc.get("headline_metric")
    scores = {(r["bundle"], "ort", r["scenario"]): r for r in acc.get("rows", [])}
    scores.update({(r["bundle"], "trt", r["scenario"]): r for r in acc.get("engine_rows", [])})
    out = [f"## Summary (batch {batch}; latency in ms)\n",
           "| bundle | backend | scenario | p50 | p99 | " + (f"{metric} | " if metric else "accuracy | ") +
           "".join(f"Δ{k} | " for k in keys) + "within budget |",
           "| --- | --- | --- | --- | --- | --- | " + "".join("--- | " for _ in keys) + "--- |"]
    for r in rep["latency"]:
        if r["status"] != "OK" or r.get("batch") != batch or r["backend"] == "triton":
            continue
        s = scores.get((r["bundle"], "trt" if r["backend"] == "tensorrt-engines" else "ort", r["scenario"]))
        cells = [r["bundle"], r["backend"], r["scenario"].replace("_", " "), _f(r["latency"]["p50_ms"]),
                 _f(r["latency"]["p99_ms"])]
        if s is None:
            cells += ["n/a"] + ["n/a" for _ in keys] + ["n/a"]
        else:
            cells += [f"{s['metrics'][metric]:.4f}"] + [f"{s['delta'][k]:+.4f}" for k in keys]
            cells += ["yes" if s["within_budget"] else "**no**"]
        out.append("| " + " | ".join(cells) + " |")
    if acc["status"] != "ok":
        out.append(f"\nAccuracy n/a: {acc['reason']}")
    out.append("")
    return out


def markdown(rep: dict[str, Any]) -> str:
    env, out = rep["environment"], []
    out.append("# trml-edge profile\n")
    out.append(f"{env['cpu_model']} ({env['physical_cores']} cores, {env['logical_cpus']} logical CPUs, "
               f"{env['threads']} threads; ISA {' '.join(env['isa_flags']) or 'n/a'}); load average at start "
               f"{env['load_average'][0]:.2f}. Matmul peak measured in this run: "
               f"{rep['matmul_peak']['gflops']:.1f} GFLOP/s. Timings under load: compare ratios within this report.\n")
    out += summary_table(rep)
    out.append("## Latency (ms per call; throughput in samples/s, or requests/s for Triton)\n")
    out.append("| backend | bundle | scenario | batch | concurrency | p50 | p90 | p95 | p99 | throughput | runs |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    skipped = []
    for r in rep["latency"]:
        if r["status"] != "OK":
            skipped.append(r)
            continue
        lat = r["latency"]
        backend = f"{r['backend']} ({r['layout']} layout)" if r.get("layout") else r["backend"]
        out.append(f"| {backend} | {r['bundle']} | {r['scenario']} | {r.get('batch', 1)} | "
                   f"{r.get('concurrency', '-')} | {_f(lat['p50_ms'])} | {_f(lat['p90_ms'])} | {_f(lat['p95_ms'])} | "
                   f"{_f(lat['p99_ms'])} | {_f(lat['throughput_per_s'], 1)} | {lat['runs']} |")
    if skipped:
        out.append("\nNot measured:\n")
        out += [f"- {r['backend']} ({r['bundle']}): {r['status']}, {r['reason']}" for r in skipped]
    tol = rep["settings"]["breakdown_tolerance"]
    out.append(f"\n## Where the time goes (ONNX Runtime CPU and TensorRT engines, batch "
               f"{rep['settings']['batches'][0]}; mean ms)\n")
    out.append(f"The measured parts add up to each run's end-to-end time within {tol['relative']:.0%} of the "
               f"p50 or {tol['absolute_ms']} ms, whichever is larger (checked on the median run: "
               f"{sum(r.get('latency', {}).get('breakdown_within_tolerance', False) for r in rep['latency'])} of "
               f"{sum('breakdown_within_tolerance' in r.get('latency', {}) for r in rep['latency'])} "
               "configurations pass); `other` is the numpy glue between them. "
               "GFLOP/s per graph and its share of the matmul peak in brackets.\n")
    rows = [r for r in rep["latency"] if r["status"] == "OK" and r["backend"] in ("ort-cpu", "tensorrt-engines")
            and r.get("batch") == rep["settings"]["batches"][0]]
    for r in rows:
        parts = ", ".join(
            f"{k} {v:.2f}" + (f" ({r['graphs'][k]['gflops_per_s']:.1f}, {r['graphs'][k]['pct_of_peak']:.0f}%)"
                              if k in r.get("graphs", {}) else "")
            for k, v in r["latency"]["breakdown_ms"].items())
        out.append(f"- **{r['bundle']}, {r['backend']}, {r['scenario']}** ({r['latency']['mean_ms']:.2f} ms): {parts}")
    acc = rep["accuracy"]
    out.append("\n## Accuracy (test split; delta vs the FP32 reference on the same samples and masks, "
               "positive = worse)\n")
    if acc["status"] != "ok":
        out.append(f"n/a: {acc['reason']}")
    else:
        keys = list(acc["budget"])
        metric = acc["headline_metric"]
        out.append(f"Reference: {acc['reference']}; budget {acc['budget']}; {acc['samples']} samples.\n")
        out.append(f"| bundle | scenario | {metric} | " + " | ".join(f"Δ{k}" for k in keys) + " | within budget |")
        out.append("| --- | --- | --- | " + " | ".join("---" for _ in keys) + " | --- |")
        for r in acc["rows"] + acc.get("engine_rows", []):
            label = r["bundle"] + (" (TensorRT engines)" if r.get("backend") == "tensorrt-engines" else "")
            out.append(f"| {label} | {r['scenario']} | {r['metrics'][metric]:.4f} | " +
                       " | ".join(f"{r['delta'][k]:+.4f}" for k in keys) +
                       f" | {'yes' if r['within_budget'] else '**no**'} |")
    rec = rep["recommendation"]
    out.append("\n## Recommendation\n")
    if rec["status"] != "ok":
        out.append(f"{rec['status']}: {rec['reason']}")
    else:
        out.append(f"Recipe: `{rec['recipe']}` (`trml-edge export RUN --recipe {rec['recipe']} --data DATA "
                   f"--out BUNDLE`).\n")
        out.append(f"| graph | precision | from bundle | median ms on {rec.get('ranked_by', 'ort-cpu')} (summed over "
                   "scenarios and batches) |")
        out.append("| --- | --- | --- | --- |")
        for g, p in rec["precision"].items():
            out.append(f"| {g} | {p} | {rec['source'][g]} | {rec['graph_ms'][g]:.2f} |")
        out.append("\n| scenario | " + " | ".join(f"Δ{k}" for k in acc["budget"]) + " | p50 ms (batch 1) | "
                   "speed-up vs most precise |")
        out.append("| --- | " + " | ".join("---" for _ in acc["budget"]) + " | --- | --- |")
        lat = {r["scenario"]: r for r in rec["latency"]}
        for r in rec["accuracy"]:
            lr = lat.get(r["scenario"], {})
            out.append(f"| {r['scenario']} | " + " | ".join(f"{r['delta'][k]:+.4f}" for k in acc["budget"]) +
                       f" | {_f(lr.get('p50_ms'))} | {_f(lr.get('speedup'))}x |")
        for label, why in rec.get("left_out", {}).items():
            out.append(f"\nNot mixed: {label}: {why}.")
        rejected = [t for t in rec["trials"] if t["changed"] and not t["within_budget"]]
        if rejected:
            out.append("\nRejected (measured out of budget):\n")
            for t in rejected:
                bad = [s for s in t["scenarios"] if not s["within_budget"]]
                out.append(f"- {t['changed']} at {t['precision']}: " + "; ".join(
                    f"{s['scenario']} " + ", ".join(f"Δ{k} {v:+.4f}" for k, v in s["delta"].items()
                                                    if k in acc["budget"]) for s in bad))
    if rep.get("charts"):
        out.append("\n## Charts\n")
        out += [f"![{c}]({c})" for c in rep["charts"]]
    return "\n".join(out) + "\n"
