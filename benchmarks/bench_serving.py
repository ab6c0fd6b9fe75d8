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
    ap.add_argument("--stream", action="store_true", help="only the stream section: a one-new-frame update of a "
                                                          "trml_stream stream vs a stateless window request")
    ap.add_argument("--max-load", type=float, default=1.5, help="--stream: wait (up to --load-wait s) until the "
                                                                "1-min load average is below this before timing")
    ap.add_argument("--load-wait", type=float, default=600.0)
    args = ap.parse_args()
    if args.stream:
        return stream_main(args)
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



# --- streams (issue 19): an update with one new frame against a stateless request with the whole window ---
STREAM_GOALS = {"trml-tiny": 0.5, "ViT-B-32": 0.25}  # update / window request, p50, through Triton and runtime


def image_encoder_frames(url: str) -> int:
    """Frames the image_encoder model has run on: its executed batch sizes summed (Triton's statistics)."""
    with urllib.request.urlopen(f"http://{url}/v2/models/image_encoder/stats") as r:
        s = json.loads(r.read())["model_stats"][0]
    return sum(int(b["batch_size"]) * int(b["compute_infer"]["count"]) for b in s.get("batch_stats", []))


def wait_for_idle(max_load: float, wait_s: float) -> list[float]:
    """Wait until the 1-min load average is below ``max_load`` (at most ``wait_s``); the load averages then."""
    end = time.monotonic() + wait_s
    while os.getloadavg()[0] >= max_load and time.monotonic() < end:
        time.sleep(5)
    load = list(os.getloadavg())
    if load[0] >= max_load:
        print(f"WARNING: load average {load[0]:.2f} >= {max_load} after {wait_s:.0f} s; the figures are not idle",
              flush=True)
    return load


def bench_stream(bundle: Path, work: Path, args) -> dict:
    """p50 of a stream update with one new frame (window full, text unchanged) against ``Pipeline.predict`` /
    a ``trml`` request on the same 8-frame window and text, in interleaved rounds, in the runtime and through
    Triton; and Triton's count of image-encoder frames per stream update."""
    from trml_edge.serving.stream_client import TritonStream
    from trml_edge.serving.stream_repo import StreamSettings

    repo = build_repository(RepoConfig(bundle=str(bundle), out=str(work / "repo-stream"), force=True,
                                       intra_op_threads=args.threads, stream=StreamSettings()))
    pipe = Pipeline(bundle, threads=args.threads)
    size, window = int(pipe.bundle.preprocess["image_size"]), pipe.max_frames
    pool = make_requests(COMPLETE, 1, 64, size, seed=3)  # 64 distinct frames, fed round the window
    frames, text = pool.frames[0], pool.texts[0]
    m = dict(warmup=args.warmup, min_time=args.min_time, min_runs=args.min_runs)
    with TritonServer(repo) as srv:
        c = TritonClient(srv.url)
        rs, ts = pipe.stream(), TritonStream(c)
        for s in (rs, ts):
            s.push(frames[:window], text)  # a full window: each update slides it by one frame
        step = {"runtime": window, "triton": window}

        def update(kind, s):
            i = step[kind] % len(frames)
            step[kind] += 1
            return s.push(frames[i:i + 1])

        for _ in range(4):  # answers agree before anything is timed
            a, b = update("runtime", rs), update("triton", ts)
            assert abs(float(a.output) - float(b.output)) < 1e-4 and a.virtual_modality == b.virtual_modality
        win = frames[:window]
        assert abs(float(c.infer(win, text).output) - float(pipe.predict(win, text).output)) < 1e-4
        load_before = wait_for_idle(args.max_load, args.load_wait)
        timed = interleaved({"stream update, runtime": lambda: update("runtime", rs) and None,
                             "window request, runtime": lambda: pipe.predict(win, text) and None,
                             "stream update, triton": lambda: update("triton", ts) and None,
                             "window request, triton": lambda: c.infer(win, text) and None}, **m)
        load_after = list(os.getloadavg())
        n, before = 20, image_encoder_frames(srv.url)
        for _ in range(n):
            update("triton", ts)
        per_update = (image_encoder_frames(srv.url) - before) / n
        ts.close()
        c.close()
    results = {k: percentiles(v.seconds) for k, v in timed.items()}
    p50 = {k: v["p50_ms"] for k, v in results.items()}
    ratios = {side: p50[f"stream update, {side}"] / p50[f"window request, {side}"] for side in ("runtime", "triton")}
    goal = STREAM_GOALS.get(args.arch)
    return {"results": results, "update_over_window": ratios, "image_encoder_frames_per_update": per_update,
            "goal_ratio": goal, "goals_met": None if goal is None else
            {f"update <= {goal} x window request ({side})": r <= goal for side, r in ratios.items()} |
            {"image encoder runs once per frame sent (triton statistics)": per_update == 1.0},
            "load_average_before": load_before, "load_average_after": load_after}


def stream_main(args) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    bundle = make_bundle(args.arch, work)
    report = {"arch": args.arch, "threads": args.threads, "environment": environment(args.threads),
              "settings": dict(warmup=args.warmup, min_time=args.min_time, min_runs=args.min_runs),
              **bench_stream(bundle, work, args), "seconds": time.perf_counter() - t_start}
    print(f"{'configuration':30s} {'p50':>9s} {'p90':>9s} {'p99':>9s} {'runs':>6s}")
    for k, v in report["results"].items():
        print(f"{k:30s} {v['p50_ms']:9.2f} {v['p90_ms']:9.2f} {v['p99_ms']:9.2f} {v['runs']:6d}")
    for side, r in report["update_over_window"].items():
        print(f"stream update / window request ({side}): {r:.3f}")
    print(f"image encoder frames per stream update (triton statistics): "
          f"{report['image_encoder_frames_per_update']:.2f}")
    print(f"load average before timing {report['load_average_before']}, after {report['load_average_after']}")
    for k, ok in (report["goals_met"] or {}).items():
        print(f"goal {k}: {'met' if ok else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, allow_nan=False, default=str) + "\n")
    print(f"wrote {out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
