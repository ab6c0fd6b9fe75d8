"""`trml-edge predict` measured: clips/s on a folder, locally and through the server, and a live camera's
latency, its loss and its return.

    .venv/bin/python benchmarks/bench_predict.py --out benchmarks/results/bench_predict_xeon.json \
        --chart docs/img/predict-timeline.png

* **folder**: ``--clips`` mp4 files of 24 frames (96x96, 4 fps, 6 s), each with an .srt of two cues (two
  utterances, 8 and 12 frames of which the model takes 8), scored by ``predict`` with ``--bundle`` (the runtime
  in this process) and ``--url`` (a real tritonserver, fused layout), for each ``--arch`` (``tiny``: random
  weights through the cpu-int8 recipe; ``ViT-B-32``: random weights, FP32). Clips/s and utterances/s from the
  run's own clock, decoding included (the decoder runs ahead in its thread).
* **live** (tiny only; needs the system Python's GStreamer RTSP server, as tests/test_predict.py): a 10 fps
  camera (tests/rtsp_server.py, 160x120) scored every 0.5 s over the last 8 frames taken at 4 fps; latency from
  the window's last frame to its score, p50/p99; then the camera is killed (``--stall`` 2 s): the time from the
  kill to the first video-missing row; and started again: the time from its start to the first complete row.
  The rows of that run are drawn as a timeline (``--chart``).

Reported, not asserted (issue 33). The CPU and the load average come first in the output and in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench_serving import make_bundle, wait_for_idle  # this folder is on sys.path when the script runs
from trml_edge.data.video import write_mp4
from trml_edge.predict.live import LiveConfig
from trml_edge.predict.runner import PredictConfig, run
from trml_edge.profile.report import cpu_line, environment
from trml_edge.serving.repository import RepoConfig, build_repository
from trml_edge.serving.server import TritonServer, free_port

ROOT = Path(__file__).resolve().parents[1]
SRT = "1\n00:00:00,000 --> 00:00:02,000\nthat was a calm and friendly talk\n\n" \
      "2\n00:00:02,500 --> 00:00:05,500\ni really did not like the ending at all\n"


def make_folder(work: Path, clips: int) -> Path:
    folder = work / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(clips):
        write_mp4(folder / f"clip{k:03d}.mp4", rng.integers(0, 255, (24, 96, 96, 3), dtype=np.uint8), fps=4)
        (folder / f"clip{k:03d}.srt").write_text(SRT)
    return folder


def bench_folder(folder: Path, clips: int, bundle: Path, url: str | None, out: Path) -> dict:
    cfg = PredictConfig(source=str(folder), bundle=None if url else bundle, url=url, out=out, progress=False)
    s = run(cfg)
    assert not s.errors, s.errors
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    lat = np.array([r["latency_ms"] for r in rows])
    return {"clips": clips, "utterances": s.predictions, "seconds": round(s.seconds, 3),
            "clips_per_s": round(clips / s.seconds, 2), "utterances_per_s": round(s.predictions / s.seconds, 2),
            "latency_ms_p50": round(float(np.median(lat)), 2)}


class Camera:
    def __init__(self, port: int):
        self.port, self.proc = port, None
        self.url = f"rtsp://127.0.0.1:{port}/cam"

    def start(self) -> float:
        self.proc = subprocess.Popen(["/usr/bin/python3", str(ROOT / "tests" / "rtsp_server.py"), str(self.port),
                                      "--fps", "10", "--size", "160x120"], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        return time.time()

    def kill(self) -> float:
        self.proc.kill()
        self.proc.wait(10)
        return time.time()


def bench_live(bundle: Path, work: Path, steady: float, away: float, after: float) -> dict:
    cam = Camera(free_port())
    rows: list[dict] = []
    stop = threading.Event()
    cfg = PredictConfig(source=cam.url, bundle=bundle, out=work / "live.jsonl", text="a calm and friendly talk",
                        live=LiveConfig(every=0.5, fps=4, stall=2.0))
    t_start = cam.start()
    th = threading.Thread(target=lambda: rows.append(run(cfg, stop, on_row=rows.append)), daemon=True)
    th.start()
    while not any(isinstance(r, dict) and r["virtual_modality"] == "" for r in rows):
        time.sleep(0.05)
    first_complete = next(r for r in rows if isinstance(r, dict) and r["virtual_modality"] == "")["wall"]
    time.sleep(steady)
    t_kill = cam.kill()
    time.sleep(away)
    t_back = cam.start()
    deadline = time.time() + 60
    while time.time() < deadline and not any(isinstance(r, dict) and r["virtual_modality"] == "" and
                                             r["wall"] > t_back for r in rows):
        time.sleep(0.05)
    time.sleep(after)
    stop.set()
    th.join(30)
    cam.kill()
    summary = rows.pop()
    steady_rows = [r for r in rows if r["virtual_modality"] == "" and first_complete + 1 < r["wall"] < t_kill]
    lat = np.array([r["latency_ms"] for r in steady_rows])
    lost = next(r for r in rows if r["virtual_modality"] == "visual" and r["wall"] > t_kill)
    back = next(r for r in rows if r["virtual_modality"] == "" and r["wall"] > t_back)
    t0 = t_start  # the chart's clock: seconds since the camera first started
    return {
        "camera": "tests/rtsp_server.py, 10 fps, 160x120 JPEG over RTP; predict --every 0.5 --fps 4 --stall 2",
        "first_complete_row_after_start_s": round(first_complete - t_start, 2),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p99": round(float(np.percentile(lat, 99)), 1),
                       "rows": len(lat)},
        "kill_to_first_video_missing_row_s": round(lost["wall"] - t_kill, 2),
        "restart_to_first_complete_row_s": round(back["wall"] - t_back, 2),
        "notes": summary.notes,
        "events_s": {"start": 0.0, "kill": round(t_kill - t0, 2), "restart": round(t_back - t0, 2)},
        "timeline": [{"t": round(r["wall"] - t0, 3), "output": r["output"], "virtual_modality": r["virtual_modality"],
                      "frames": r["frames"], "latency_ms": r["latency_ms"]} for r in rows],
    }


def chart(live: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2))
    tl = [r for r in live["timeline"] if r["output"] is not None]
    for vm, colour, label in (("", "tab:blue", "complete (camera frames + text)"),
                              ("visual", "tab:orange", "video missing: visual generated from the text")):
        pts = [(r["t"], r["output"]) for r in tl if r["virtual_modality"] == vm]
        if pts:
            ax.scatter(*zip(*pts), s=14, color=colour, label=label)
    ev = live["events_s"]
    for name, x in (("camera killed", ev["kill"]), ("camera back", ev["restart"])):
        ax.axvline(x, color="grey", ls="--", lw=1)
        ax.text(x, ax.get_ylim()[1], f" {name}", va="top", fontsize=8, color="grey")
    ax.set_xlabel("seconds since the camera started")
    ax.set_ylabel("sentiment score")
    ax.set_title(f"trml-edge predict rtsp://...: loss seen after {live['kill_to_first_video_missing_row_s']} s, "
                 f"return after {live['restart_to_first_complete_row_s']} s", fontsize=9)
    ax.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="tiny,ViT-B-32")
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path("bench_out/bench_predict.json"))
    ap.add_argument("--chart", type=Path, default=None)
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--max-load", type=float, default=1.5)
    args = ap.parse_args()
    load_start = wait_for_idle(args.max_load, 600.0)
    env = environment(0)
    print(cpu_line(env), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    folder = make_folder(work, args.clips)
    report = {"environment": env, "load_average_at_start": load_start, "folder": {}, "live": None}
    for arch in args.arch.split(","):
        bundle = make_bundle(arch, work)
        repo = build_repository(RepoConfig(bundle=str(bundle), out=str(work / f"repo-{arch}"), force=True))
        report["folder"][arch] = {"local": bench_folder(folder, args.clips, bundle, None, work / f"{arch}-l.jsonl")}
        srv = TritonServer(repo).start()
        try:
            report["folder"][arch]["server"] = bench_folder(folder, args.clips, bundle, srv.url,
                                                            work / f"{arch}-s.jsonl")
        finally:
            srv.stop()
        for how, r in report["folder"][arch].items():
            print(f"{arch:9s} folder {how:6s}: {r['clips_per_s']:6.2f} clips/s, {r['utterances_per_s']:6.2f} "
                  f"utterances/s ({r['utterances']} in {r['seconds']:.2f} s), latency p50 {r['latency_ms_p50']} ms",
                  flush=True)
    if not args.skip_live:
        live = bench_live(make_bundle("tiny", work), work, steady=12.0, away=6.0, after=4.0)
        report["live"] = live
        print(f"live (tiny): latency from a window's last frame to its score p50 {live['latency_ms']['p50']} ms, "
              f"p99 {live['latency_ms']['p99']} ms ({live['latency_ms']['rows']} rows); camera killed -> first "
              f"video-missing row {live['kill_to_first_video_missing_row_s']} s; camera back -> first complete "
              f"row {live['restart_to_first_complete_row_s']} s; {'; '.join(live['notes'])}", flush=True)
        if args.chart:
            chart(live, args.chart)
            print(f"wrote {args.chart}")
    report["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average at start {load_start}, at end {report['load_average_at_end']}; wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
