"""Serving through Triton against the in-process runtime, on one bundle, in one run, in both repository layouts.

A TRML bundle is served by the bundled tritonserver (its only backend is Python) in the two layouts of
``trml-edge triton build``, both servers up at once, and timed against ``Pipeline.predict`` on the same bundle
with the same ORT thread count:

* ``fused`` (the default here): the ``trml`` router runs every graph with ONNX Runtime in its own process;
* ``ensemble``: a Python-backend model per graph (ORT inside), an ensemble per scenario, the router's BLS calls;

* end-to-end latency per scenario (complete, visual missing, text missing), p50/p90/p99, at concurrency 1,
  runtime, fused and ensemble interleaved so their ratios are fair, and at concurrency 8, with throughput
  against the runtime's batch-1 throughput;
* where the time goes, from Triton's statistics: queue and compute per model per request;
* with ``--floor``: the ensemble repository with graph models that compute nothing (zeros of each output's
  shape), against the runtime with graphs that compute nothing (what that layout costs whatever the graphs
  cost), and what one hop costs on this server: a BLS call and an ensemble step, with trivial identity models.

Bundles: ``--arch tiny`` (the demo's tiny CLIP, INT8 encoders from the shipped ``cpu-int8`` recipe and the
shipped calibration set), ``--arch ViT-B-32`` (FP32), both with random weights (latency does not depend on
their values), or ``--bundle PATH`` for an existing bundle (the demo's int8 bundle, say).

    .venv/bin/python benchmarks/bench_serving.py --arch tiny --out bench_out/bench_serving_tiny.json
    .venv/bin/python benchmarks/bench_serving.py --arch ViT-B-32 --min-time 10 --out bench_out/bench_serving_vitb32.json
    .venv/bin/python benchmarks/bench_serving.py --stream --arch tiny --out bench_out/stream_tiny.json

Goals (reported, not asserted): the fused layout within +1 ms or +5 % of the runtime, whichever is larger, in
every scenario at concurrency 1; at concurrency 8, its throughput >= 1.5x the runtime's batch-1 throughput (tiny
bundle); a stream update with one new frame at most 0.35x (tiny) or 0.25x (ViT-B-32) of a stateless 8-frame
request through Triton; a visual-missing request >= 5x cheaper than a complete one.
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

from trml_edge.profile.report import cpu_line, environment
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


LAYOUTS = ("fused", "ensemble")


def p50_runtime(results: dict, scenario: str) -> float:
    return results[f"{scenario} runtime"]["p50_ms"] / 1e3


def cpu_seconds(srv) -> dict[str, float]:
    """CPU seconds used so far by this process (the load's client threads), the server process, and its
    Python-backend processes together (the routers and, in the ensemble layout, the graph models)."""
    from trml_edge.serving.supervisor import stubs_of

    tick = os.sysconf("SC_CLK_TCK")

    def used(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime + stime

    t = os.times()
    return {"client": t.user + t.system, "tritonserver": used(srv.proc.pid),
            "python_models": sum(used(s.pid) for s in stubs_of(srv.proc.pid))}


def stub_rss_mb(srv) -> dict[str, float]:
    """Resident memory of each Python-backend process of a server (its model instances), and of the server."""
    from trml_edge.serving.supervisor import stubs_of

    def rss(pid: int) -> float:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    out = {s.instance: rss(s.pid) for s in stubs_of(srv.proc.pid)}
    out["tritonserver"] = rss(srv.proc.pid)
    return out


def build_repos(bundle: Path, work: Path, args, stream: bool = False) -> dict[str, Path]:
    """The bundle's repository in each layout, with the benchmark's ORT threads and router settings."""
    from trml_edge.serving.repository import ModelSettings
    from trml_edge.serving.stream_repo import StreamSettings

    return {layout: build_repository(RepoConfig(
        bundle=str(bundle), out=str(work / f"repo-{layout}"), layout=layout, intra_op_threads=args.threads,
        router=ModelSettings(instances=args.router_instances, max_batch_size=8,
                             max_queue_delay_us=args.router_queue_delay_us),
        stream=StreamSettings(enabled=stream), force=True)) for layout in LAYOUTS}


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
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads, runtime and served graphs alike")
    ap.add_argument("--router-instances", type=int, default=1, help="instances of the trml router")
    ap.add_argument("--router-queue-delay-us", type=int, default=0, help="the router's dynamic-batcher delay")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--block-s", type=float, default=0.2, help="concurrency 1: each configuration runs back to back "
                                                              "for about this long per interleaved round (0: one "
                                                              "call per round)")
    ap.add_argument("--floor", action="store_true", help="also time the ensemble layout with graphs that compute "
                                                         "nothing, and the cost of one hop")
    ap.add_argument("--stream", action="store_true", help="only the stream section: a one-new-frame update of a "
                                                          "trml_stream stream vs a stateless window request")
    ap.add_argument("--max-load", type=float, default=1.5, help="wait (up to --load-wait s) until the 1-min load "
                                                                "average is below this before timing")
    ap.add_argument("--load-wait", type=float, default=600.0)
    args = ap.parse_args()
    print(cpu_line(environment(args.threads)), flush=True)  # first: a figure is never compared across machines
    if args.stream:
        return stream_main(args)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    bundle = Path(args.bundle) if args.bundle else make_bundle(args.arch, work)
    print(f"bundle {bundle} ({time.perf_counter() - t_start:.0f} s)", flush=True)
    repos = build_repos(bundle, work, args)
    pipe = Pipeline(bundle, threads=args.threads)
    size = int(pipe.bundle.preprocess["image_size"])
    reqs = {s: make_requests(s, 1, args.frames, size, seed=1) for s in SCENARIOS}

    def one(req):
        return (req.frames[0] if req.has_visual[0] else None), (req.texts[0] if req.has_text[0] else None)

    m = dict(warmup=args.warmup, min_time=args.min_time, min_runs=args.min_runs)
    results: dict[str, dict] = {}
    cpu: dict[str, dict] = {}  # CPU ms per request at concurrency > 1: client, server, its Python-backend processes
    where: dict[str, dict] = {layout: {} for layout in LAYOUTS}
    with TritonServer(repos["fused"]) as fused, TritonServer(repos["ensemble"]) as ens:
        servers = {"fused": fused, "ensemble": ens}
        clients = {layout: TritonClient(srv.url) for layout, srv in servers.items()}
        for s, req in reqs.items():  # answers agree before anything is timed
            f, t = one(req)
            ref = pipe.predict(f, t).output
            for layout, c in clients.items():
                got = c.infer(f, t).output
                if np.abs(np.asarray(got) - np.asarray(ref)).max() > 1e-4:
                    raise SystemExit(f"{s}: Triton ({layout}) {got} != runtime {ref}")
        load_start = wait_for_idle(args.max_load, args.load_wait)  # the export and the copies above load the cores
        for s, req in reqs.items():
            f, t = one(req)
            fns = {f"{s} runtime": lambda f=f, t=t: pipe.predict(f, t) and None}
            fns.update({f"{s} {layout} c1": lambda f=f, t=t, c=c: c.infer(f, t) and None
                        for layout, c in clients.items()})
            before = {layout: stats(srv.url) for layout, srv in servers.items()}
            timed = interleaved(fns, **m, block_s=args.block_s)
            runs = len(timed[f"{s} fused c1"].seconds) + m["warmup"]
            for layout, srv in servers.items():
                where[layout][s] = per_request_ms(before[layout], stats(srv.url), runs)
            for k, v in timed.items():
                results[k] = percentiles(v.seconds)
            print(f"{s}: " + ", ".join(f"{k} p50 {results[k]['p50_ms']:.2f} ms" for k in fns), flush=True)
        for s, req in reqs.items():  # the runtime's CPU per request at batch 1 (its ORT threads included)
            f, t = one(req)
            t0, n = os.times(), max(m["min_runs"], int(m["min_time"] / max(p50_runtime(results, s), 1e-4)))
            for _ in range(n):
                pipe.predict(f, t)
            t1 = os.times()
            cpu[f"{s} runtime c1"] = {"client": 1e3 * (t1.user + t1.system - t0.user - t0.system) / n}
        for conc in [x for x in args.concurrency if x > 1]:
            for layout, srv in servers.items():
                for s, req in reqs.items():
                    before = cpu_seconds(srv)
                    r = results[f"{s} {layout} c{conc}"] = triton_load(srv.url, req, conc, m["warmup"],
                                                                      m["min_time"], m["min_runs"])
                    n = r["runs"] + conc * m["warmup"]
                    cpu[f"{s} {layout} c{conc}"] = {k: 1e3 * (v - before[k]) / n for k, v in cpu_seconds(srv).items()}
                    print(f"{s} {layout} c{conc}: p50 {r['p50_ms']:.1f} ms, {r['throughput_per_s']:.1f} req/s; CPU ms "
                          "per request: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu[f"{s} {layout} c{conc}"].items()),
                          flush=True)
        load_end = list(os.getloadavg())
        memory = {layout: stub_rss_mb(srv) for layout, srv in servers.items()}
        for c in clients.values():
            c.close()
    floors = floor(repos["ensemble"], bundle, reqs, one, m, args.threads) if args.floor else None
    hops = hop_costs(work, m) if args.floor else None
    p50 = {k: v["p50_ms"] for k, v in results.items()}
    overhead, goals = {layout: {} for layout in LAYOUTS}, {}
    for layout in LAYOUTS:
        for s in SCENARIOS:
            runtime, triton = p50[f"{s} runtime"], p50[f"{s} {layout} c1"]
            allowed = max(1.0, 0.05 * runtime)
            o = overhead[layout][s] = {"triton_p50_ms": triton, "runtime_p50_ms": runtime,
                                       "overhead_ms": triton - runtime,
                                       "overhead_vs_runtime": (triton - runtime) / runtime, "allowed_ms": allowed}
            if layout == "ensemble" and floors:
                o["floor_overhead_ms"] = floors[s]["overhead_ms"]
            goals[f"{s}: {layout} within +1 ms or +5 % of the runtime"] = triton - runtime <= allowed
    ratios = {f"complete / visual_missing, {k}": p50[f"{COMPLETE} {k}"] / p50[f"{VISUAL_MISSING} {k}"]
              for k in ("runtime", "fused c1", "ensemble c1")}
    for conc in [x for x in args.concurrency if x > 1]:
        for layout in LAYOUTS:
            for s in SCENARIOS:
                r = results[f"{s} {layout} c{conc}"]["throughput_per_s"] / results[f"{s} runtime"]["throughput_per_s"]
                ratios[f"{s}: {layout} c{conc} throughput / runtime batch-1 throughput"] = r
                goals[f"{s}: {layout} c{conc} throughput >= 1.5x the runtime's batch-1"] = r >= 1.5
    goals["visual-missing >= 5x cheaper than complete (fused c1)"] = ratios["complete / visual_missing, fused c1"] >= 5
    report = {"arch": args.arch if not args.bundle else str(bundle), "frames_per_request": args.frames,
              "threads": args.threads, "router_instances": args.router_instances, "block_s": args.block_s,
              "router_queue_delay_us": args.router_queue_delay_us, "environment": environment(args.threads),
              "load_average_at_start": load_start, "load_average_at_end": load_end, "settings": m,
              "stub_rss_mb": memory, "cpu_ms_per_request": cpu,
              "results": results, "overhead": overhead, "where_the_time_goes_ms": where,
              "floor_p50_ms": floors, "hops_p50_ms": None if hops is None else {
                  k: v["p50_ms"] for k, v in hops.items()}, "ratios": ratios, "goals_met": goals,
              "seconds": time.perf_counter() - t_start}
    print(f"{'configuration':46s} {'p50':>9s} {'p90':>9s} {'p99':>9s} {'req/s':>8s} {'runs':>6s}")
    for k, v in results.items():
        print(f"{k:46s} {v['p50_ms']:9.2f} {v['p90_ms']:9.2f} {v['p99_ms']:9.2f} {v['throughput_per_s']:8.1f} "
              f"{v['runs']:6d}")
    for layout in LAYOUTS:
        for s, o in overhead[layout].items():
            print(f"{layout:8s} {s:15s} triton {o['triton_p50_ms']:.2f} ms vs runtime {o['runtime_p50_ms']:.2f} ms: "
                  f"{o['overhead_ms']:+.2f} ms ({100 * o['overhead_vs_runtime']:+.1f} %), allowed "
                  f"{o['allowed_ms']:.2f}" + (f"; graphs computing nothing {o['floor_overhead_ms']:+.2f} ms"
                                              if "floor_overhead_ms" in o else ""))
            print("   per request: " + ", ".join(f"{k} {v['compute_ms']:.2f}+{v['queue_ms']:.2f}q"
                                                 for k, v in where[layout][s].items()))
    if hops:
        print("hops (trivial models): " + ", ".join(f"{k} {v['p50_ms']:.2f} ms" for k, v in hops.items()))
    for k, v in ratios.items():
        print(f"{k:64s} {v:6.2f}x")
    for k, v in goals.items():
        print(f"goal {k}: {'met' if v else 'NOT met'}")
    for k, v in cpu.items():
        print(f"CPU ms per request, {k}: " + ", ".join(f"{a} {b:.2f}" for a, b in v.items()) +
              f" (total {sum(v.values()):.2f})")
    for layout, rss in memory.items():
        print(f"resident memory per Python-backend process, {layout}: " +
              ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()))
    print(f"load average at start {load_start}, at end {load_end}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, allow_nan=False, default=str) + "\n")
    print(f"wrote {out} ({report['seconds']:.0f} s)")


# --- streams: an update with one new frame against a stateless request with the whole window ---
# update / window request, p50, through Triton
STREAM_GOALS = {"tiny": 0.35, "trml-tiny": 0.35, "ViT-B-32": 0.25}


def image_encoder_frames(srv) -> int:
    """Frames the image encoder ran on for the stream router: ensemble layout, the image_encoder model's executed
    batch sizes summed (Triton's statistics); fused, the stream router's own counter (sent every 0.5 s)."""
    if srv.layout() == "fused":
        time.sleep(1.2)
        with urllib.request.urlopen(srv.metrics_url) as r:
            text = r.read().decode()
        return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("trml_graph_rows_total{") and 'model="trml_stream"' in line
                       and 'graph="image_encoder"' in line))
    with urllib.request.urlopen(f"http://{srv.url}/v2/models/image_encoder/stats") as r:
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
    Triton in both layouts; and the image encoder's frames per stream update."""
    from trml_edge.serving.stream_client import TritonStream

    repos = build_repos(bundle, work, args, stream=True)
    pipe = Pipeline(bundle, threads=args.threads)
    size, window = int(pipe.bundle.preprocess["image_size"]), pipe.max_frames
    pool = make_requests(COMPLETE, 1, 64, size, seed=3)  # 64 distinct frames, fed round the window
    frames, text = pool.frames[0], pool.texts[0]
    win = frames[:window]
    m = dict(warmup=args.warmup, min_time=args.min_time, min_runs=args.min_runs)
    with TritonServer(repos["fused"]) as fused, TritonServer(repos["ensemble"]) as ens:
        servers = {"fused": fused, "ensemble": ens}
        clients = {layout: TritonClient(srv.url) for layout, srv in servers.items()}
        load_before = wait_for_idle(args.max_load, args.load_wait)  # before the streams open: they time out
        streams = {"runtime": pipe.stream(), **{layout: TritonStream(c) for layout, c in clients.items()}}
        for st in streams.values():
            st.push(win, text)  # a full window: each update slides it by one frame
        step = {k: window for k in streams}

        def update(kind):
            i = step[kind] % len(frames)
            step[kind] += 1
            return streams[kind].push(frames[i:i + 1])

        for _ in range(4):  # answers agree before anything is timed
            a = update("runtime")
            for layout in LAYOUTS:
                b = update(layout)
                assert abs(float(a.output) - float(b.output)) < 1e-4 and a.virtual_modality == b.virtual_modality
        ref = float(pipe.predict(win, text).output)
        assert all(abs(float(c.infer(win, text).output) - ref) < 1e-4 for c in clients.values())
        fns = {"stream update, runtime": lambda: update("runtime") and None,
               "window request, runtime": lambda: pipe.predict(win, text) and None}
        for layout, c in clients.items():
            fns[f"stream update, {layout}"] = lambda layout=layout: update(layout) and None
            fns[f"window request, {layout}"] = lambda c=c: c.infer(win, text) and None
        timed = interleaved(fns, **m, block_s=args.block_s)
        load_after = list(os.getloadavg())
        per_update = {}
        for layout, srv in servers.items():
            n, before = 20, image_encoder_frames(srv)
            for _ in range(n):
                update(layout)
            per_update[layout] = (image_encoder_frames(srv) - before) / n
        for layout in LAYOUTS:
            streams[layout].close()
        for c in clients.values():
            c.close()
    results = {k: percentiles(v.seconds) for k, v in timed.items()}
    p50 = {k: v["p50_ms"] for k, v in results.items()}
    ratios = {side: p50[f"stream update, {side}"] / p50[f"window request, {side}"]
              for side in ("runtime", *LAYOUTS)}
    goal = STREAM_GOALS.get(args.arch)
    goals = {} if goal is None else {f"update <= {goal} x window request ({side})": ratios[side] <= goal
                                     for side in LAYOUTS}
    goals |= {f"image encoder runs once per frame sent ({layout})": n == 1.0 for layout, n in per_update.items()}
    return {"results": results, "update_over_window": ratios, "image_encoder_frames_per_update": per_update,
            "goal_ratio": goal, "goals_met": goals, "load_average_before": load_before, "load_average_after": load_after}


def stream_main(args) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    bundle = make_bundle(args.arch, work)
    report = {"arch": args.arch, "threads": args.threads, "router_instances": args.router_instances,
              "block_s": args.block_s,
              "environment": environment(args.threads),
              "settings": dict(warmup=args.warmup, min_time=args.min_time, min_runs=args.min_runs),
              **bench_stream(bundle, work, args), "seconds": time.perf_counter() - t_start}
    print(f"{'configuration':30s} {'p50':>9s} {'p90':>9s} {'p99':>9s} {'runs':>6s}")
    for k, v in report["results"].items():
        print(f"{k:30s} {v['p50_ms']:9.2f} {v['p90_ms']:9.2f} {v['p99_ms']:9.2f} {v['runs']:6d}")
    for side, r in report["update_over_window"].items():
        print(f"stream update / window request ({side}): {r:.3f}")
    print(f"image encoder frames per stream update: {report['image_encoder_frames_per_update']}")
    print(f"load average before timing {report['load_average_before']}, after {report['load_average_after']}")
    for k, ok in (report["goals_met"] or {}).items():
        print(f"goal {k}: {'met' if ok else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, allow_nan=False, default=str) + "\n")
    print(f"wrote {out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
