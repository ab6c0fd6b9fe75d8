"""`trml-edge triton update` under load: how long it takes, what the clients see, and what memory it needs.

    .venv/bin/python benchmarks/bench_update.py --out benchmarks/results/bench_update_xeon.json

For each ``--arch`` (``tiny``: random weights through the cpu-int8 recipe; ``ViT-B-32``: random weights,
FP32), two bundles of different weights, A and B; a fused repository of A served by ``trml-edge serve``'s
server class with its supervisor; 8 clients sending the three scenarios in turn (8 frames of 96x96 and a
sentence) for the whole run; after ``--before`` seconds, ``update`` to B (``--probation`` seconds), then
``--after`` seconds more. Reported: the update's duration and its steps (from its log), failed requests, p50 and
p99 latency before, during and after the update, and the resident memory of the server's processes
(tritonserver and every Python-backend stub) sampled every 0.1 s: steady before, peak during.

Reported, not asserted (issue 34). The CPU and the load average come first.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench_serving import make_bundle, wait_for_idle  # this folder is on sys.path when the script runs
from trml_edge.profile.report import cpu_line, environment
from trml_edge.serving.client import TritonClient
from trml_edge.serving.repository import RepoConfig, build_repository
from trml_edge.serving.security import ServerSecurity
from trml_edge.serving.server import TritonServer
from trml_edge.serving.supervisor import _rss_mb, stubs_of
from trml_edge.serving.update import UpdateConfig, update


def bundle_b(arch: str, work: Path) -> Path:
    """The same architecture and recipe as ``make_bundle``, other weights (seed 1)."""
    import torch

    real = torch.manual_seed
    torch.manual_seed = lambda seed: real(seed + 1)  # make_bundle seeds 0: the second bundle gets 1
    try:
        return make_bundle(arch, work / "b")
    finally:
        torch.manual_seed = real


def server_rss_mb(srv) -> float:
    return _rss_mb(srv.proc.pid) + sum(_rss_mb(s.pid) for s in stubs_of(srv.proc.pid))


def pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 2) if xs else None


def one(arch: str, work: Path, clients: int, before: float, after: float, probation: float) -> dict:
    a = make_bundle(arch, work)
    b = bundle_b(arch, work)
    repo = build_repository(RepoConfig(bundle=str(a), out=str(work / f"repo-{arch}"), force=True))
    token = work / f"token-{arch}"
    srv = TritonServer(repo, supervise=True, security=ServerSecurity(admin_token_file=token)).start()
    frames = np.random.default_rng(0).integers(0, 256, (8, 96, 96, 3), dtype=np.uint8)
    cases = [(frames, "a calm and friendly review"), (None, "a calm and friendly review"), (frames, None)]
    results: list[tuple[float, float, bool]] = []
    memory: list[tuple[float, float]] = []
    stop = threading.Event()

    def loop(k: int) -> None:
        c, i = TritonClient(srv.url, timeout=120.0), k
        while not stop.is_set():
            t = time.monotonic()
            try:
                c.infer(*cases[i % 3])
                ok = True
            except Exception:  # noqa: BLE001 - counted
                ok = False
            results.append((t, time.monotonic() - t, ok))
            i += 1

    def sample() -> None:
        while not stop.is_set():
            memory.append((time.monotonic(), server_rss_mb(srv)))
            time.sleep(0.1)

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(clients)]
    threads.append(threading.Thread(target=sample, daemon=True))
    lines: list[str] = []
    try:
        for t in threads:
            t.start()
        time.sleep(before)
        t0 = time.monotonic()
        version = update(UpdateConfig(repo=repo, bundle=b, url=srv.url, admin_token_file=token,
                                      probation_s=probation, log=lambda line: lines.append(
                                          f"{time.monotonic() - t0:6.2f} s  {line}")))
        t1 = time.monotonic()
        time.sleep(after)
    finally:
        stop.set()
        for t in threads:
            t.join(180)
        srv.stop()

    def phase(lo: float, hi: float) -> dict:
        lat = [1000 * d for s, d, ok in results if lo <= s < hi and ok]
        return {"requests": sum(1 for s, _, _ in results if lo <= s < hi), "p50_ms": pct(lat, 50),
                "p99_ms": pct(lat, 99), "failed": sum(1 for s, _, ok in results if lo <= s < hi and not ok)}

    steady = [m for t, m in memory if t < t0]
    during = [m for t, m in memory if t0 <= t < t1]
    return {"arch": arch, "version": version, "update_s": round(t1 - t0, 2), "probation_s": probation,
            "clients": clients, "steps": lines, "failed_requests": sum(1 for *_, ok in results if not ok),
            "before": phase(0, t0), "during": phase(t0, t1), "after": phase(t1, float("inf")),
            "memory_mb": {"steady": round(float(np.median(steady)), 1) if steady else None,
                          "peak_during_update": round(max(during), 1) if during else None}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="tiny,ViT-B-32")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--before", type=float, default=10.0)
    ap.add_argument("--after", type=float, default=10.0)
    ap.add_argument("--probation", type=float, default=10.0)
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--out", type=Path, default=Path("bench_out/bench_update.json"))
    args = ap.parse_args()
    load = wait_for_idle(args.max_load, 600.0)
    env = environment(0)
    print(cpu_line(env), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-update-"))
    runs = []
    for arch in args.arch.split(","):
        r = one(arch, work, args.clients, args.before, args.after, args.probation)
        runs.append(r)
        print(f"{arch}: update {r['update_s']} s (probation {r['probation_s']:g} s), failed requests "
              f"{r['failed_requests']}; p50/p99 ms before {r['before']['p50_ms']}/{r['before']['p99_ms']}, during "
              f"{r['during']['p50_ms']}/{r['during']['p99_ms']}, after {r['after']['p50_ms']}/{r['after']['p99_ms']}; "
              f"memory steady {r['memory_mb']['steady']} MB, peak during {r['memory_mb']['peak_during_update']} MB",
              flush=True)
        for line in r["steps"]:
            print(f"    {line}")
    out = {"environment": env, "load_average_at_start": load, "load_average_at_end": list(os.getloadavg()),
           "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
