"""Two versions of the routers side by side on one repository: this checkout's ``trml`` and ``trml_stream``
against those at a git revision.

Both servers load the same graph models, ensembles and configs (the repository ``triton build`` writes from
this checkout); only the routers' ``model.py`` and ``trml_bls.py`` differ, taken from ``--rev``. At one
client, in interleaved rounds (new, old, new, old, ...), so drift of the machine's speed falls on both
alike: a ``trml`` request per scenario, each answer checked against the runtime first, and a ``trml_stream``
update with one new frame (window full, text unchanged), checked against the runtime's stream.

    .venv/bin/python benchmarks/bench_router_ab.py --bundle /tmp/scratch/bench_tiny/bundle-tiny --rev b0d066b \\
        --out bench_out/bench_router_ab.json

Use a bundle from ``bench_serving.py --work DIR`` (``DIR/bundle-tiny``) or any export bundle.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_serving import wait_for_idle  # this folder is on sys.path when the script runs

from trml_edge.profile.report import environment
from trml_edge.profile.timing import interleaved, make_requests, percentiles
from trml_edge.routing import COMPLETE, SCENARIOS
from trml_edge.runtime import Pipeline
from trml_edge.serving.client import TritonClient
from trml_edge.serving.repository import RepoConfig, build_repository
from trml_edge.serving.server import TritonServer
from trml_edge.serving.stream_client import TritonStream
from trml_edge.serving.stream_repo import StreamSettings

ROOT = Path(__file__).resolve().parents[1]
ROUTER_FILES = {"trml/1/model.py": "triton_models/trml/model.py",
                "trml/1/trml_bls.py": "triton_models/common/trml_bls.py",
                "trml_stream/1/model.py": "triton_models/trml_stream/model.py",
                "trml_stream/1/trml_bls.py": "triton_models/common/trml_bls.py"}


def old_repository(repo: Path, rev: str, out: Path) -> Path:
    """A copy of ``repo`` whose router files are those of git revision ``rev``."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(repo, out, symlinks=True)
    for dst, src in ROUTER_FILES.items():
        text = subprocess.run(["git", "show", f"{rev}:{src}"], cwd=ROOT, check=True, capture_output=True).stdout
        (out / dst).write_bytes(text)
    return out


def stream_updates(pipe: Pipeline, clients: dict, size: int, args) -> dict:
    """p50 of a one-new-frame update of a full window, through each server's ``trml_stream``."""
    window = pipe.max_frames
    pool = make_requests(COMPLETE, 1, 64, size, seed=3)  # 64 distinct frames, fed round the window
    frames, text = pool.frames[0], pool.texts[0]
    ref, streams, step = pipe.stream(), {name: TritonStream(c) for name, c in clients.items()}, {}
    ref.push(frames[:window], text)
    for name, st in streams.items():
        st.push(frames[:window], text)
        step[name] = window
    for i in range(window, window + 3):  # answers agree before anything is timed
        want = float(ref.push(frames[i:i + 1]).output)
        for name, st in streams.items():
            got = float(st.push(frames[i:i + 1]).output)
            step[name] += 1
            if abs(got - want) > 1e-4:
                raise SystemExit(f"stream: router {name} answers {got}, the runtime {want}")

    def update(name):
        i = step[name] % len(frames)
        step[name] += 1
        streams[name].push(frames[i:i + 1])

    timed = interleaved({name: (lambda name=name: update(name)) for name in streams}, warmup=5,
                        min_time=args.min_time, min_runs=args.min_runs)
    for st in streams.values():
        st.close()
    return {name: percentiles(v.seconds) for name, v in timed.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--rev", required=True, help="git revision of the other router")
    ap.add_argument("--out", default="bench_out/bench_router_ab.json")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--min-time", type=float, default=6.0, help="seconds per configuration")
    ap.add_argument("--min-runs", type=int, default=8)
    ap.add_argument("--max-load", type=float, default=1.5, help="wait (up to 600 s) until the 1-min load average "
                                                                "is below this before timing")
    args = ap.parse_args()
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-router-ab-"))
    repo = build_repository(RepoConfig(bundle=args.bundle, out=str(work / "new"), layout="ensemble",
                                       stream=StreamSettings()))
    old = old_repository(repo, args.rev, work / "old")
    pipe = Pipeline(args.bundle)
    size = int(pipe.bundle.preprocess["image_size"])
    results = {}
    load_start = wait_for_idle(args.max_load, 600.0)
    with TritonServer(repo) as a, TritonServer(old) as b:
        clients = {"new": TritonClient(a.url), args.rev: TritonClient(b.url)}
        for s in SCENARIOS:
            req = make_requests(s, 1, args.frames, size, seed=1)
            f = req.frames[0] if req.has_visual[0] else None
            t = req.texts[0] if req.has_text[0] else None
            ref = np.asarray(pipe.predict(f, t).output)
            for name, c in clients.items():
                got = np.asarray(c.infer(f, t).output)
                if np.abs(got - ref).max() > 1e-4:
                    raise SystemExit(f"{s}: router {name} answers {got}, the runtime {ref}")
            timed = interleaved({name: (lambda c=c, f=f, t=t: c.infer(f, t) and None) for name, c in clients.items()},
                                warmup=5, min_time=args.min_time, min_runs=args.min_runs)
            results[s] = {name: percentiles(v.seconds) for name, v in timed.items()}
            print(f"{s}: " + ", ".join(f"{name} p50 {r['p50_ms']:.2f} ms" for name, r in results[s].items()),
                  flush=True)
        results["stream update"] = stream_updates(pipe, clients, size, args)
        print("stream update: " + ", ".join(f"{name} p50 {r['p50_ms']:.2f} ms"
                                            for name, r in results["stream update"].items()), flush=True)
        for c in clients.values():
            c.close()
    report = {"bundle": args.bundle, "rev": args.rev, "environment": environment(0), "load_average_at_start":
              load_start, "load_average_at_end": os.getloadavg(), "results": results,
              "seconds": time.perf_counter() - t0}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, allow_nan=False, default=str) + "\n")
    print(f"load average at start {load_start}, at end {report['load_average_at_end']}; wrote {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
