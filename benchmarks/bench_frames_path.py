"""The request path of the frames: HTTP body, gRPC, or system shared memory, against the runtime in process.

    .venv/bin/python benchmarks/bench_frames_path.py --out benchmarks/results/bench_frames_path_xeon.json

The fused router's fixed cost over ``Pipeline.predict`` is the request itself (docs/serving.md: about 0.6 ms
without frames, 0.4 ms more for 98 KB of them over HTTP). This measures what a client can take off it: the same
complete request (8 frames of 64x64, a 15-token sentence) with the frames in the HTTP body (the package's
client), over gRPC, and in a system shared-memory region the client registered once (``tritonclient.utils.
shared_memory``; registration is an admin API here, so it uses the server's token), plus the text-only request
over HTTP and gRPC; each in 0.2 s blocks within interleaved rounds, beside the runtime. Tiny INT8 bundle
(random weights), one client, fused layout. Reported, not asserted (issue 32).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_serving import make_bundle, wait_for_idle  # this folder is on sys.path when the script runs
from trml_edge.profile.report import cpu_line, environment
from trml_edge.runtime import Pipeline
from trml_edge.serving.client import TritonClient
from trml_edge.serving.repository import RepoConfig, build_repository
from trml_edge.serving.security import ADMIN_HEADER, ServerSecurity
from trml_edge.serving.server import TritonServer

TEXT = "honestly i think the acting was really not very good overall to me"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="tiny")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--block-s", type=float, default=0.2)
    ap.add_argument("--out", type=Path, default=Path("bench_out/bench_frames_path.json"))
    args = ap.parse_args()
    load = wait_for_idle(1.5, 600.0)
    env = environment(0)
    print(cpu_line(env), flush=True)
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    work = Path(tempfile.mkdtemp(prefix="bench-frames-"))
    bundle = make_bundle(args.arch, work)
    repo = build_repository(RepoConfig(bundle=str(bundle), out=str(work / "repo"), force=True))
    token = work / "token"
    srv = TritonServer(repo, security=ServerSecurity(admin_token_file=token)).start()
    headers = {ADMIN_HEADER: token.read_text().strip()}
    frames = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    pipe = Pipeline(bundle)
    http = TritonClient(srv.url)
    grpc = TritonClient(f"grpc://{srv.grpc_url}")
    raw = httpclient.InferenceServerClient(srv.url)
    batch = frames[None]
    region = shm.create_shared_memory_region("trml_frames", "/trml_bench_frames", batch.nbytes)
    shm.set_shared_memory_region(region, [batch])
    raw.register_system_shared_memory("trml_frames", "/trml_bench_frames", batch.nbytes, headers=headers)
    text_in = httpclient.InferInput("TEXT", [1, 1], "BYTES")
    text_in.set_data_from_numpy(np.array([[TEXT.encode()]], dtype=object))
    frames_in = httpclient.InferInput("FRAMES", list(batch.shape), "UINT8")
    frames_in.set_shared_memory("trml_frames", batch.nbytes)
    outs = [httpclient.InferRequestedOutput("OUTPUT"), httpclient.InferRequestedOutput("VIRTUAL_MODALITY")]

    def via_shm():
        return raw.infer("trml", [text_in, frames_in], outputs=outs).as_numpy("OUTPUT")[0]

    want = float(pipe.predict(frames, TEXT).output)
    for name, got in (("http", float(http.infer(frames, TEXT).output)), ("grpc", float(grpc.infer(frames, TEXT).output)),
                      ("shm", float(np.asarray(via_shm()).reshape(-1)[0]))):
        assert abs(got - want) < 1e-4, (name, got, want)
    configs = {
        "complete runtime": lambda: pipe.predict(frames, TEXT),
        "complete http": lambda: http.infer(frames, TEXT),
        "complete grpc": lambda: grpc.infer(frames, TEXT),
        "complete http, frames in shared memory": via_shm,
        "visual_missing runtime": lambda: pipe.predict(None, TEXT),
        "visual_missing http": lambda: http.infer(None, TEXT),
        "visual_missing grpc": lambda: grpc.infer(None, TEXT),
    }
    times: dict[str, list[float]] = {k: [] for k in configs}
    try:
        for fn in configs.values():
            for _ in range(20):
                fn()
        for _ in range(args.rounds):
            for k, fn in configs.items():
                end = time.perf_counter() + args.block_s
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
    finally:
        raw.unregister_system_shared_memory("trml_frames", headers=headers)
        shm.destroy_shared_memory_region(region)
        srv.stop()
    res = {k: {"p50_ms": round(float(np.median(v)) * 1e3, 3), "p90_ms": round(float(np.percentile(v, 90)) * 1e3, 3),
               "runs": len(v)} for k, v in times.items()}
    for k, v in res.items():
        base = res[f"{k.split(' ')[0]} runtime"]["p50_ms"]
        v["over_runtime_ms"] = round(v["p50_ms"] - base, 3)
        print(f"{k:42s} p50 {v['p50_ms']:7.3f} ms  p90 {v['p90_ms']:7.3f}  over the runtime {v['over_runtime_ms']:+.3f} ms"
              f"  ({v['runs']} runs)")
    report = {"environment": env, "load_average_at_start": load, "load_average_at_end": list(os.getloadavg()),
              "arch": args.arch, "frames_bytes": int(batch.nbytes), "results": res}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average {load} -> {report['load_average_at_end']}; wrote {args.out}")


if __name__ == "__main__":
    main()
