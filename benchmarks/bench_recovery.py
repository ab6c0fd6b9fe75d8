"""What one crash of the router costs under load, by instance count: failed requests, time to recovery, reloads.

A fused repository of a random-weights tiny bundle (FP32) is served by the bundled tritonserver under
``trml-edge serve``'s supervisor, with ``--router-instances N`` for each N asked. Eight clients send the three
scenarios in turn; after a warm-up one router stub is killed with SIGKILL, and for ``--watch`` seconds after:

* failed requests, with their kinds (Triton's 500 from the dead process; any 404 would mean the model left the
  repository, which the supervisor's background reload avoids);
* the time from the kill to the reload's end, and to the last failure;
* the reloads in the whole window (one is right, more is the reload loop this benchmark was written to catch);
* whether a stub of the replaced generation had to be ended (and its memory).

    .venv/bin/python benchmarks/bench_recovery.py --instances 1 2 --out bench_out/bench_recovery.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from trml_edge.profile.report import cpu_line, environment
from trml_edge.serving.client import TritonClient
from trml_edge.serving.repository import ModelSettings, RepoConfig, build_repository
from trml_edge.serving.server import TritonServer
from trml_edge.serving.supervisor import stubs_of


def make_bundle(work: Path) -> Path:
    import torch

    from trml_edge.config import TRMLConfig
    from trml_edge.export.exporter import export_bundle
    from trml_edge.export.recipe import ExportConfig
    from trml_edge.model.checkpoint import new_model, save_run

    torch.manual_seed(0)
    save_run(work / "run", new_model(TRMLConfig()))
    export_bundle(ExportConfig(run=str(work / "run"), out=str(work / "bundle")))
    return work / "bundle"


def one(bundle: Path, work: Path, instances: int, clients: int, warmup: float, watch: float) -> dict:
    repo = build_repository(RepoConfig(bundle=str(bundle), out=str(work / f"repo{instances}"), force=True,
                                       router=ModelSettings(instances=instances, max_batch_size=8)))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (8, 96, 96, 3), dtype=np.uint8)
    cases = [(frames, "a calm and friendly review"), (None, "a calm and friendly review"), (frames, None)]
    lines: list[str] = []
    srv = TritonServer(repo, supervise=True, log=lines.append).start()
    results: list[tuple[float, bool, str]] = []
    stop, lock = threading.Event(), threading.Lock()

    def loop(k: int) -> None:
        c, i = TritonClient(srv.url, timeout=60.0), k
        while not stop.is_set():
            try:
                c.infer(*cases[i % 3])
                ok, what = True, ""
            except Exception as e:  # counted, by kind
                ok, what = False, str(e)[:160]
            with lock:
                results.append((time.monotonic(), ok, what))
            i += 1
        c.close()

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    try:
        for th in threads:
            th.start()
        time.sleep(warmup)
        victim = sorted((s for s in stubs_of(srv.proc.pid) if s.model == "trml"), key=lambda s: s.instance)[0]
        t_kill = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        time.sleep(watch)
    finally:
        stop.set()
        for th in threads:
            th.join(60)
        events = list(srv.supervisor.events)
        srv.stop(timeout=2.0)
    after = [(t - t_kill, ok, w) for t, ok, w in results if t >= t_kill]
    failed = [(t, w) for t, ok, w in after if not ok]
    reloads = [e for e in events if e["event"] == "reloaded"]
    before = [t for t, ok, _ in results if t < t_kill]
    rate = len(before) / warmup if before else 0.0
    return {
        "instances": instances, "clients": clients, "requests_after_kill": len(after),
        "requests_per_s_before": rate, "failed": len(failed),
        "failure_kinds": dict(Counter(w.split(":")[0] + ": " + w.split(":", 1)[-1][:70] for _, w in failed)),
        "not_found_404": sum("no available versions" in w for _, w in failed),
        "reloads": len(reloads), "reload_s": [round(e["seconds"], 3) for e in reloads],
        "kill_to_reloaded_s": round(reloads[0]["since_death"], 3) if reloads else None,
        "kill_to_last_failure_s": round(max(t for t, _ in failed), 3) if failed else None,
        "ended_lingering": [{"seconds": round(e["seconds"], 1), "rss_mb": round(e["rss_mb"])}
                            for e in events if e["event"] == "ended_lingering"],
        "supervisor_log": lines,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--watch", type=float, default=30.0, help="seconds watched after the kill")
    ap.add_argument("--out", type=Path, default=Path("bench_out/bench_recovery.json"))
    args = ap.parse_args()
    env = environment(0)
    print(cpu_line(env), flush=True)
    work = Path(tempfile.mkdtemp(prefix="trml-bench-recovery-"))
    bundle = make_bundle(work)
    runs = []
    for n in args.instances:
        r = one(bundle, work, n, args.clients, args.warmup, args.watch)
        runs.append(r)
        print(f"{n} instance(s): {r['failed']} of {r['requests_after_kill']} requests failed after the kill "
              f"({r['requests_per_s_before']:.0f} req/s before); reloads {r['reloads']} "
              f"(kill to reloaded {r['kill_to_reloaded_s']} s, to the last failure {r['kill_to_last_failure_s']} s); "
              f"404s {r['not_found_404']}; ended lingering {r['ended_lingering']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "environment_after": environment(0)["load_average"],
                                    "runs": runs}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
