"""Serving through Triton against the in-process runtime, on one bundle, in one run.

A TRML bundle is served by the bundled tritonserver (Python-backend graphs with ONNX Runtime inside, one
ensemble per scenario, the ``trml`` BLS router) and timed against ``Pipeline.predict`` on the same bundle
with the same ORT thread count:

* end-to-end latency per scenario (complete, visual missing, text missing), p50/p90/p99, at concurrency 1,
  interleaved with the runtime so their ratio is fair, and at concurrency 8, with throughput against the
  runtime's batch-1 throughput;
* where the time goes, from Triton's statistics: queue and compute per model per request;
* the floor: the same repository and router with graph models that compute nothing (zeros of each output's
  shape), against the runtime with graphs that compute nothing: what serving costs whatever the graphs cost;
* what one hop costs on this server: a BLS call and an ensemble step, with trivial identity models.

Bundles: ``--arch tiny`` (the demo's tiny CLIP, INT8 encoders from the shipped ``cpu-int8`` recipe and the
shipped calibration set), ``--arch ViT-B-32`` (FP32), both with random weights (latency does not depend on
their values), or ``--bundle PATH`` for an existing bundle (the demo's int8 bundle, say).

    .venv/bin/python benchmarks/bench_serving.py --arch tiny --out bench_out/bench_serving_tiny.json
    .venv/bin/python benchmarks/bench_serving.py --arch ViT-B-32 --out bench_out/bench_serving_vitb32.json

Goals (reported, not asserted): Triton within +1 ms or +5 % of the runtime, whichever is larger, in every
scenario at concurrency 1; at concurrency 8, Triton's throughput >= 1.5x the runtime's batch-1 throughput
(tiny bundle); a visual-missing request >= 5x cheaper than a complete one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from trml_edge.profile.report import environment
from trml_edge.profile.timing import interleaved, make_requests, percentiles, triton_load
from trml_edge.routing import COMPLETE, SCENARIOS, VISUAL_MISSING
from trml_edge.runtime import Pipeline
from trml_edge.serving.client import TritonClient
from trml_edge.serving.repository import RepoConfig, build_repository
from trml_edge.serving.server import TritonServer


def make_bundle(arch: str, work: Path) -> Path:
    """A random-weights bundle: ``tiny`` with the cpu-int8 recipe (INT8 encoders), any open_clip arch in FP32."""
    import torch

    from trml_edge.config import TRMLConfig
    from trml_edge.export.exporter import export_bundle
    from trml_edge.export.recipe import ExportConfig, apply_recipe

    out = work / f"bundle-{arch}"
    if (out / "manifest.json").is_file():
        return out
    torch.manual_seed(0)
    cfg = TRMLConfig()
    tiny = arch in ("tiny", cfg.backbone.arch)
    if not tiny:
        cfg.backbone.arch = arch
    save_run_dir = work / f"run-{arch}"
    from trml_edge.model.checkpoint import new_model, save_run

    save_run(save_run_dir, new_model(cfg))
    ecfg = ExportConfig(run=str(save_run_dir), out=str(out))
    if tiny:
        from trml_edge import assets

        ecfg = apply_recipe(ecfg, assets.recipes()["cpu-int8"])
    export_bundle(ecfg)
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


IDENTITY = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X")
                                                            .as_numpy())]) for r in requests]
"""
# 3 sequential BLS calls to "identity": from a plain execute with exec() (CALLER, as the routers call), and
# from an async execute with async_exec() (ASYNC_CALLER, as they did before)
CALLER = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            for _ in range(3):
                resp = pb_utils.InferenceRequest(model_name="identity", requested_output_names=["Y"],
                                                 inputs=[pb_utils.Tensor("X", x)]).exec()
                x = pb_utils.get_output_tensor_by_name(resp, "Y").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x)]))
        return out
"""
ASYNC_CALLER = (CALLER.replace("    def execute", "    async def execute").replace("resp = pb_utils", "resp = await pb_utils")
                .replace(").exec()", ").async_exec()"))


# A graph model that computes nothing: zeros of each declared output's shape, one row per input row.
ZERO_GRAPH = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.first = cfg["input"][0]["name"]
        self.outputs = [(o["name"], [max(int(d), 1) for d in o["dims"]],
                         pb_utils.triton_string_to_numpy(o["data_type"])) for o in cfg["output"]]

    def execute(self, requests):
        out = []
        for r in requests:
            n = len(pb_utils.get_input_tensor_by_name(r, self.first).as_numpy())
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(name, np.zeros((n, *dims), dtype))
                                                   for name, dims, dtype in self.outputs]))
        return out
"""


class NoGraphPipeline(Pipeline):
    """The runtime with graphs that compute nothing: checks, frame picking, preprocessing, tokenization and
    the arrays around the graphs, as ``Pipeline.predict`` does them."""

    def run(self, graph: str, **feeds: np.ndarray) -> np.ndarray:
        self.trace.append(graph)
        shape = self.bundle.graphs[graph]["outputs"][0]["shape"][1:]
        return np.zeros((len(next(iter(feeds.values()))), *shape), np.float32)


def floor(repo: Path, bundle: Path, reqs: dict, one, m: dict, threads: int) -> dict[str, dict]:
    """p50 of each scenario through Triton and through the runtime, both with graphs that compute nothing:
    the repository is the served one (router, ensembles, configs, batchers) with each graph's ``model.py``
    replaced by ``ZERO_GRAPH``. Their difference is the serving overhead that no faster graph removes."""
    zero = repo.parent / "repo-floor"
    shutil.rmtree(zero, ignore_errors=True)
    shutil.copytree(repo, zero, ignore=shutil.ignore_patterns("*.onnx", "*.plan", "__pycache__"))
    pipe = NoGraphPipeline(bundle, threads=threads)
    for graph in pipe.bundle.graphs:
        (zero / graph / "1" / "model.py").write_text(ZERO_GRAPH)
    out = {}
    with TritonServer(zero) as srv:
        c = TritonClient(srv.url)
        for s, req in reqs.items():
            f, t = one(req)
            timed = interleaved({"runtime": lambda f=f, t=t: pipe.predict(f, t) and None,
                                 "triton": lambda f=f, t=t: c.infer(f, t) and None}, **m)
            out[s] = {k: percentiles(v.seconds)["p50_ms"] for k, v in timed.items()}
            out[s]["overhead_ms"] = out[s]["triton"] - out[s]["runtime"]
            print(f"floor {s}: triton {out[s]['triton']:.2f} ms, runtime {out[s]['runtime']:.2f} ms "
                  f"(graphs computing nothing)", flush=True)
        c.close()
    return out


def hop_costs(work: Path, m: dict) -> dict[str, dict]:
    """p50 of: one Python-backend model over HTTP; a model making 3 sequential BLS calls to it, with exec()
    and with async_exec(); an ensemble of 3 steps of it. Trivial models, so the numbers are the server's own
    cost per hop."""
    repo = work / "hops"
    io = ('input [{ name: "X", data_type: TYPE_FP32, dims: [4] }]\n'
          'output [{ name: "Y", data_type: TYPE_FP32, dims: [4] }]\n')
    for name, code in (("identity", IDENTITY), ("bls3", CALLER), ("bls3_async", ASYNC_CALLER)):
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        (repo / name / "1" / "model.py").write_text(code)
        (repo / name / "config.pbtxt").write_text(f'backend: "python"\nmax_batch_size: 8\n{io}')
    (repo / "ens3" / "1").mkdir(parents=True, exist_ok=True)
    steps = "".join(f'{{ model_name: "identity", model_version: -1, input_map {{ key: "X" value: "{a}" }} '
                    f'output_map {{ key: "Y" value: "{b}" }} }},' for a, b in (("X", "a"), ("a", "b"), ("b", "Y")))
    (repo / "ens3" / "config.pbtxt").write_text(f'platform: "ensemble"\nmax_batch_size: 8\n{io}'
                                                f'ensemble_scheduling {{ step [ {steps.rstrip(",")} ] }}\n')
    import tritonclient.http as http

    x = np.ones((1, 4), np.float32)
    with TritonServer(repo) as srv:
        c = http.InferenceServerClient(srv.url)

        def call(model):
            inp = http.InferInput("X", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            c.infer(model, [inp])

        timed = interleaved({k: (lambda k=k: call(k)) for k in ("identity", "bls3", "bls3_async", "ens3")}, **m)
        c.close()
    return {k: percentiles(v.seconds) for k, v in timed.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="tiny", help="tiny (INT8 encoders) or an open_clip architecture (FP32)")
    ap.add_argument("--bundle", default=None, help="an existing bundle instead of a random-weights one")
    ap.add_argument("--out", default="bench_out/bench_serving.json")
    ap.add_argument("--work", default=None, help="folder for the run, bundle and repositories (reused)")
    ap.add_argument("--frames", type=int, default=8, help="frames per request (the model's max_frames is 8)")
    ap.add_argument("--min-time", type=float, default=4.0, help="seconds per configuration")
    ap.add_argument("--min-runs", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads, runtime and graph models alike")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--stream", action="store_true", help="only the stream section: a one-new-frame update of a "
                                                          "trml_stream stream vs a stateless window request")
    ap.add_argument("--max-load", type=float, default=1.5, help="wait (up to --load-wait s) until the 1-min load "
                                                                "average is below this before timing")
    ap.add_argument("--load-wait", type=float, default=600.0)
    args = ap.parse_args()
    if args.stream:
        return stream_main(args)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    bundle = Path(args.bundle) if args.bundle else make_bundle(args.arch, work)
    print(f"bundle {bundle} ({time.perf_counter() - t_start:.0f} s)", flush=True)
    repo = build_repository(RepoConfig(bundle=str(bundle), out=str(work / "repo"), intra_op_threads=args.threads,
                                       force=True))
    pipe = Pipeline(bundle, threads=args.threads)
    size = int(pipe.bundle.preprocess["image_size"])
    reqs = {s: make_requests(s, 1, args.frames, size, seed=1) for s in SCENARIOS}

    def one(req):
        return (req.frames[0] if req.has_visual[0] else None), (req.texts[0] if req.has_text[0] else None)

    m = dict(warmup=args.warmup, min_time=args.min_time, min_runs=args.min_runs)
    load_start = wait_for_idle(args.max_load, args.load_wait)  # the export and the copies above load the cores
    results: dict[str, dict] = {}
    where: dict[str, dict] = {}
    with TritonServer(repo) as srv:
        c = TritonClient(srv.url)
        for s, req in reqs.items():  # answers agree before anything is timed
            f, t = one(req)
            got, ref = c.infer(f, t).output, pipe.predict(f, t).output
            if np.abs(np.asarray(got) - np.asarray(ref)).max() > 1e-4:
                raise SystemExit(f"{s}: Triton {got} != runtime {ref}")
        for s, req in reqs.items():
            f, t = one(req)
            fns = {f"{s} runtime": lambda f=f, t=t: pipe.predict(f, t) and None,
                   f"{s} triton c1": lambda f=f, t=t: c.infer(f, t) and None}
            before = stats(srv.url)
            timed = interleaved(fns, **m)
            runs = len(timed[f"{s} triton c1"].seconds) + m["warmup"]
            where[s] = per_request_ms(before, stats(srv.url), runs)
            for k, v in timed.items():
                results[k] = percentiles(v.seconds)
            print(f"{s}: " + ", ".join(f"{k} p50 {results[k]['p50_ms']:.2f} ms" for k in fns), flush=True)
        for conc in [x for x in args.concurrency if x > 1]:
            for s, req in reqs.items():
                results[f"{s} triton c{conc}"] = triton_load(srv.url, req, conc, m["warmup"], m["min_time"],
                                                            m["min_runs"])
                print(f"{s} c{conc}: p50 {results[f'{s} triton c{conc}']['p50_ms']:.1f} ms, "
                      f"{results[f'{s} triton c{conc}']['throughput_per_s']:.1f} req/s", flush=True)
        c.close()
    floors = floor(repo, bundle, reqs, one, m, args.threads)
    hops = hop_costs(work, m)
    p50 = {k: v["p50_ms"] for k, v in results.items()}
    overhead, goals = {}, {}
    for s in SCENARIOS:
        runtime, triton = p50[f"{s} runtime"], p50[f"{s} triton c1"]
        allowed = max(1.0, 0.05 * runtime)
        overhead[s] = {"triton_p50_ms": triton, "runtime_p50_ms": runtime, "overhead_ms": triton - runtime,
                       "overhead_vs_runtime": (triton - runtime) / runtime, "allowed_ms": allowed,
                       "graph_compute_ms_per_request": sum(v["compute_ms"] for k, v in where[s].items()
                                                           if k in pipe.bundle.graphs)}
        overhead[s]["floor_overhead_ms"] = floors[s]["overhead_ms"]
        goals[f"{s}: Triton within +1 ms or +5 % of the runtime"] = triton - runtime <= allowed
    ratios = {"complete / visual_missing, triton c1": p50[f"{COMPLETE} triton c1"] /
              p50[f"{VISUAL_MISSING} triton c1"],
              "complete / visual_missing, runtime": p50[f"{COMPLETE} runtime"] / p50[f"{VISUAL_MISSING} runtime"]}
    for conc in [x for x in args.concurrency if x > 1]:
        for s in SCENARIOS:
            r = results[f"{s} triton c{conc}"]["throughput_per_s"] / results[f"{s} runtime"]["throughput_per_s"]
            ratios[f"{s}: triton c{conc} throughput / runtime batch-1 throughput"] = r
            goals[f"{s}: triton c{conc} throughput >= 1.5x the runtime's batch-1"] = r >= 1.5
    goals["visual-missing >= 5x cheaper than complete (triton c1)"] = \
        ratios["complete / visual_missing, triton c1"] >= 5.0
    report = {"arch": args.arch if not args.bundle else str(bundle), "frames_per_request": args.frames,
              "threads": args.threads, "environment": environment(args.threads),
              "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(), "settings": m,
              "results": results, "overhead": overhead, "where_the_time_goes_ms": where,
              "floor_p50_ms": floors, "hops_p50_ms": {
                  k: v["p50_ms"] for k, v in hops.items()}, "ratios": ratios, "goals_met": goals,
              "seconds": time.perf_counter() - t_start}
    print(f"{'configuration':46s} {'p50':>9s} {'p90':>9s} {'p99':>9s} {'req/s':>8s} {'runs':>6s}")
    for k, v in results.items():
        print(f"{k:46s} {v['p50_ms']:9.2f} {v['p90_ms']:9.2f} {v['p99_ms']:9.2f} {v['throughput_per_s']:8.1f} "
              f"{v['runs']:6d}")
    for s, o in overhead.items():
        print(f"overhead {s:15s} triton {o['triton_p50_ms']:.2f} ms vs runtime {o['runtime_p50_ms']:.2f} ms: "
              f"{o['overhead_ms']:+.2f} ms ({100 * o['overhead_vs_runtime']:+.1f} %), allowed {o['allowed_ms']:.2f}; "
              f"with graphs computing nothing {o['floor_overhead_ms']:+.2f} ms")
        print("   per request: " + ", ".join(f"{k} {v['compute_ms']:.2f}+{v['queue_ms']:.2f}q"
                                             for k, v in where[s].items()))
    print("hops (trivial models): " + ", ".join(f"{k} {v['p50_ms']:.2f} ms" for k, v in hops.items()))
    for k, v in ratios.items():
        print(f"{k:64s} {v:6.2f}x")
    for k, v in goals.items():
        print(f"goal {k}: {'met' if v else 'NOT met'}")
    print(f"load average at start {load_start}, at end {report['load_average_at_end']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, allow_nan=False, default=str) + "\n")
    print(f"wrote {out} ({report['seconds']:.0f} s)")


# --- streams (issue 19): an update with one new frame against a stateless request with the whole window ---
# update / window request, p50, through Triton and runtime
STREAM_GOALS = {"tiny": 0.5, "trml-tiny": 0.5, "ViT-B-32": 0.25}


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
        load_before = wait_for_idle(args.max_load, args.load_wait)  # before the streams open: they time out
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
