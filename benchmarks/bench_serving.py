"""Serving through Triton against the in-process runtime, on one bundle, in one run.

An open_clip ``ViT-B-32`` TRML model with random weights (latency does not depend on the weights' values) is
exported to an FP32 bundle, served by the bundled tritonserver (Python-backend graphs with ONNX Runtime
inside, the ``trml`` BLS router), and timed against ``Pipeline.predict`` on the same bundle with the same
ORT thread count:

* end-to-end latency per scenario (complete, visual missing, text missing), p50/p90/p99, at concurrency 1
  (interleaved with the runtime, so their ratio is fair on a busy machine) and at concurrency 8, with
  throughput;
* the router's overhead: Triton at concurrency 1 against ``Pipeline.predict``, and where the time goes
  (per-model compute from Triton's statistics);
* the cost of a visual-missing request against a complete one;
* the complete request with its text and visual BLS calls issued concurrently (async) against one after
  the other (a second repository with ``--sequential-branches``).

    .venv/bin/python benchmarks/bench_serving.py --out bench_out/bench_serving.json

Goals (reported, not asserted): router overhead <= 10 % of the model compute at batch 1; a visual-missing
request >= 5x cheaper than a complete one.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from trml_edge.profile.report import environment
from trml_edge.profile.timing import interleaved, make_requests, percentiles, triton_load
from trml_edge.routing import COMPLETE, SCENARIOS, TEXT_MISSING, VISUAL_MISSING
from trml_edge.runtime import Pipeline
from trml_edge.serving.client import TritonClient
from trml_edge.serving.repository import RepoConfig, build_repository
from trml_edge.serving.server import TritonServer


def make_bundle(arch: str, work: Path) -> Path:
    import torch

    from trml_edge.config import TRMLConfig
    from trml_edge.export.exporter import export_bundle
    from trml_edge.export.recipe import ExportConfig
    from trml_edge.model.checkpoint import new_model, save_run

    out = work / f"bundle-{arch}"
    if (out / "manifest.json").is_file():
        return out
    torch.manual_seed(0)
    cfg = TRMLConfig()
    cfg.backbone.arch = arch
    save_run(work / f"run-{arch}", new_model(cfg))
    export_bundle(ExportConfig(run=str(work / f"run-{arch}"), out=str(out)))
    return out


def stats(url: str) -> dict[str, dict[str, float]]:
    """Per model: successful requests, executions and cumulative queue/compute time (ns), from Triton."""
    with urllib.request.urlopen(f"http://{url}/v2/models/stats") as r:
        doc = json.loads(r.read())
    out = {}
    for m in doc["model_stats"]:
        s = m["inference_stats"]
        out[m["name"]] = {"requests": int(s["success"]["count"]), "executions": int(m["execution_count"]),
                          "queue_ns": int(s["queue"]["ns"]),
                          "compute_ns": sum(int(s[k]["ns"]) for k in ("compute_input", "compute_infer",
                                                                      "compute_output"))}
    return out


def per_request_ms(before: dict, after: dict, requests: int) -> dict[str, dict[str, float]]:
    """Mean time per router request that each model spent queued and computing, between two snapshots."""
    out = {}
    for name in after:
        d = {k: after[name][k] - before[name][k] for k in after[name]}
        if d["requests"]:
            out[name] = {"compute_ms": d["compute_ns"] / 1e6 / requests, "queue_ms": d["queue_ns"] / 1e6 / requests,
                         "calls_per_request": d["requests"] / requests}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--out", default="bench_out/bench_serving.json")
    ap.add_argument("--work", default=None, help="folder for the run, bundle and repositories (reused)")
    ap.add_argument("--frames", type=int, default=8, help="frames per request (the model's max_frames is 8)")
    ap.add_argument("--min-time", type=float, default=4.0, help="seconds per configuration")
    ap.add_argument("--min-runs", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads, runtime and graph models alike")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    bundle = make_bundle(args.arch, work)
    print(f"bundle {bundle} ({time.perf_counter() - t_start:.0f} s)", flush=True)
    repos = {}
    for name, concurrent in (("concurrent", True), ("sequential", False)):
        repos[name] = build_repository(RepoConfig(bundle=str(bundle), out=str(work / f"repo-{name}"),
                                                  concurrent_branches=concurrent, intra_op_threads=args.threads,
                                                  force=True))
    pipe = Pipeline(bundle, threads=args.threads)
    size = int(pipe.bundle.preprocess["image_size"])
    reqs = {s: make_requests(s, 1, args.frames, size, seed=1) for s in SCENARIOS}

    def one(req):
        return (req.frames[0] if req.has_visual[0] else None), (req.texts[0] if req.has_text[0] else None)

    m = dict(warmup=args.warmup, min_time=args.min_time, min_runs=args.min_runs)
    results: dict[str, dict] = {}
    where: dict[str, dict] = {}
    with TritonServer(repos["concurrent"]) as srv, TritonServer(repos["sequential"]) as seq:
        c, cs = TritonClient(srv.url), TritonClient(seq.url)
        for s, req in reqs.items():  # answers agree before anything is timed
            f, t = one(req)
            assert abs(float(c.infer(f, t).output) - float(pipe.predict(f, t).output)) < 1e-4, s
        for s, req in reqs.items():
            f, t = one(req)
            fns = {f"{s} runtime": lambda f=f, t=t: pipe.predict(f, t) and None,
                   f"{s} triton c1": lambda f=f, t=t: c.infer(f, t) and None}
            if s == COMPLETE:
                fns[f"{s} triton c1 sequential branches"] = lambda f=f, t=t: cs.infer(f, t) and None
            before = stats(srv.url)
            timed = interleaved(fns, **m)
            runs = len(timed[f"{s} triton c1"].seconds) + m["warmup"]
            where[s] = per_request_ms(before, stats(srv.url), runs)
            for k, v in timed.items():
                results[k] = percentiles(v.seconds)
            print(f"{s}: " + ", ".join(f"{k} p50 {results[k]['p50_ms']:.1f} ms" for k in fns), flush=True)
        for conc in [x for x in args.concurrency if x > 1]:
            for s, req in reqs.items():
                results[f"{s} triton c{conc}"] = triton_load(srv.url, req, conc, m["warmup"], m["min_time"],
                                                            m["min_runs"])
                print(f"{s} c{conc}: p50 {results[f'{s} triton c{conc}']['p50_ms']:.1f} ms, "
                      f"{results[f'{s} triton c{conc}']['throughput_per_s']:.1f} req/s", flush=True)
        c.close()
        cs.close()
    p50 = {k: v["p50_ms"] for k, v in results.items()}
    ratios, overhead = {}, {}
    for s in SCENARIOS:
        runtime, triton = p50[f"{s} runtime"], p50[f"{s} triton c1"]
        graphs_ms = sum(v["compute_ms"] for k, v in where[s].items() if k != "trml")
        overhead[s] = {"triton_p50_ms": triton, "runtime_p50_ms": runtime,
                       "overhead_vs_runtime": (triton - runtime) / runtime,
                       "graph_compute_ms_per_request": graphs_ms,
                       "router_minus_graphs_ms": where[s].get("trml", {}).get("compute_ms", float("nan")) - graphs_ms}
    ratios["complete / visual_missing, triton c1"] = p50[f"{COMPLETE} triton c1"] / p50[f"{VISUAL_MISSING} triton c1"]
    ratios["complete / visual_missing, runtime"] = p50[f"{COMPLETE} runtime"] / p50[f"{VISUAL_MISSING} runtime"]
    ratios["complete / text_missing, triton c1"] = p50[f"{COMPLETE} triton c1"] / p50[f"{TEXT_MISSING} triton c1"]
    ratios["complete: sequential / concurrent branches"] = (p50[f"{COMPLETE} triton c1 sequential branches"] /
                                                            p50[f"{COMPLETE} triton c1"])
    goals = {"router overhead <= 10% of the runtime at batch 1 (complete)":
             overhead[COMPLETE]["overhead_vs_runtime"] <= 0.10,
             "visual-missing >= 5x cheaper than complete (triton c1)":
             ratios["complete / visual_missing, triton c1"] >= 5.0}
    report = {"arch": args.arch, "frames_per_request": args.frames, "threads": args.threads,
              "environment": environment(args.threads), "load_average_at_end": os.getloadavg(),
              "settings": m, "results": results, "overhead": overhead, "where_the_time_goes_ms": where,
              "ratios": ratios, "goals_met": goals, "seconds": time.perf_counter() - t_start}
    print(f"{'configuration':46s} {'p50':>9s} {'p90':>9s} {'p99':>9s} {'req/s':>8s} {'runs':>6s}")
    for k, v in results.items():
        print(f"{k:46s} {v['p50_ms']:9.1f} {v['p90_ms']:9.1f} {v['p99_ms']:9.1f} {v['throughput_per_s']:8.2f} "
              f"{v['runs']:6d}")
    for s, o in overhead.items():
        print(f"overhead {s:15s} triton {o['triton_p50_ms']:.1f} ms vs runtime {o['runtime_p50_ms']:.1f} ms: "
              f"{100 * o['overhead_vs_runtime']:+.1f} %")
    for k, v in ratios.items():
        print(f"{k:48s} {v:6.2f}x")
    for k, v in goals.items():
        print(f"goal {k}: {'met' if v else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, allow_nan=False, default=str) + "\n")
    print(f"wrote {out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
