"""Built-once Triton artifacts for the serving tests: repositories of the FP32 test bundle and live servers.

A server is started on free loopback ports the first time a test asks for it and stopped when the test
process exits (the process group goes with it, Python-backend stubs included).
"""

from __future__ import annotations

import atexit
import time
from functools import cache
from pathlib import Path

from export_fixtures import bundle, synth_data, workdir

# The router waits up to 20 ms to fill a batch, so requests sent together are grouped (tested).
# Small enough that a test frame can sit just over it; real deployments keep the 4096 default.
TEST_MAX_FRAME_SIDE = 320
TEST_MAX_FRAMES = 64


LAYOUTS = ("fused", "ensemble")  # the fused layout is the python backend's default; ensemble is the GPU path's


def repository(backend: str = "python", router_max_batch: int = 8, layout: str | None = None) -> Path:
    return _repository(backend, router_max_batch, layout)  # one cache key however it is called


@cache
def _repository(backend: str, router_max_batch: int, layout: str | None) -> Path:
    from trml_edge.routing import RequestLimits
    from trml_edge.serving.repository import ModelSettings, RepoConfig, build_repository

    out = workdir() / f"repo_{backend}_rb{router_max_batch}_{layout or 'default'}"
    cfg = RepoConfig(bundle=str(bundle("fp32")), out=str(out), backend=backend, layout=layout, force=True,
                     router=ModelSettings(max_batch_size=router_max_batch, max_queue_delay_us=20000),
                     limits=RequestLimits(max_frames=TEST_MAX_FRAMES, max_frame_side=TEST_MAX_FRAME_SIDE))
    return build_repository(cfg)


def server(router_max_batch: int = 8, layout: str = "fused"):
    """A running tritonserver on the python-backend repository of the FP32 test bundle, in ``layout``."""
    return _server(router_max_batch, layout)


@cache
def _server(router_max_batch: int, layout: str):
    from trml_edge.serving.server import TritonServer

    srv = TritonServer(repository("python", router_max_batch, layout)).start()
    atexit.register(srv.stop)
    return srv


@cache
def classification_bundle() -> Path:
    """An FP32 bundle of a MELD-style classifier (7 class logits), random weights: enough for serving parity."""
    import torch

    from trml_edge.config import TRMLConfig
    from trml_edge.export.exporter import export_bundle
    from trml_edge.export.recipe import ExportConfig
    from trml_edge.model.checkpoint import new_model, save_run

    torch.manual_seed(1)
    cfg = TRMLConfig()
    cfg.head.task, cfg.head.num_classes = "classification", 7
    run = workdir() / "run_cls7"
    save_run(run, new_model(cfg))
    out = workdir() / "bundle_cls7"
    export_bundle(ExportConfig(run=str(run), out=str(out)))
    return out


def small_batch_server(kind: str = "regression", layout: str = "ensemble"):
    """A server whose graphs take at most 2 rows per call (ensemble: each graph model's max batch; fused: the
    router's chunks) and whose router waits 50 ms to batch, so a router batch of several requests reaches the
    graphs in chunks."""
    return _small_batch_server(kind, layout)


@cache
def _small_batch_server(kind: str, layout: str):
    from trml_edge.serving.repository import ModelSettings, RepoConfig, build_repository
    from trml_edge.serving.server import TritonServer

    src = bundle("fp32") if kind == "regression" else classification_bundle()
    repo = build_repository(RepoConfig(bundle=str(src), out=str(workdir() / f"repo_small_{kind}_{layout}"),
                                       force=True, layout=layout, graphs=ModelSettings(max_batch_size=2),
                                       router=ModelSettings(max_batch_size=8, max_queue_delay_us=50000)))
    srv = TritonServer(repo).start()
    atexit.register(srv.stop)
    return srv


def _proc_fields(pid: str) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, pgid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def group_members(pgid: int) -> list[int]:
    """Live pids of a process group (a server and its Python-backend stubs)."""
    import os

    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(_proc_fields(p)[2]) == pgid:
                out.append(int(p))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return out


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in a process group, in MB."""
    total = 0
    for pid in group_members(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


@cache
def sample_clips(n: int = 7) -> tuple:
    """(frames at the video's own resolution, text) of ``n`` synthetic test and valid clips, decoded from real mp4s."""
    from trml_edge.data.corpus import read_corpus
    from trml_edge.data.video import read_frames

    out = []
    for rec in [r for r in read_corpus(synth_data()) if r.split in ("test", "valid")][:n]:
        frames, mask = read_frames(rec.video, 8)
        out.append((frames[mask], rec.text))
    return tuple(out)


def send_together(url: str, reqs: list) -> list:
    """Send every (frames, text) request to the trml router at once, so its batcher hands them to one execute;
    each result is the request's OUTPUT row or the tritonclient exception that failed it."""
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    from trml_edge.serving.client import TritonClient

    tc = TritonClient(url)
    client = http.InferenceServerClient(url, concurrency=len(reqs))
    handles = [client.async_infer("trml", tc.inputs(f, t)) for f, t in reqs]
    out = []
    for h in handles:
        try:
            out.append(h.get_result().as_numpy("OUTPUT")[0])
        except InferenceServerException as e:
            out.append(e)
    client.close()
    return out


def router_batches(url: str) -> dict[int, int]:
    """Triton's statistics of the trml router: batch size -> executions of that size so far."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://{url}/v2/models/trml/stats") as r:
        s = json.loads(r.read())["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in s.get("batch_stats", [])}


def settled(read, expect: float | None = None, timeout: float = 15.0, period: float = 0.5):
    """The value of a counter that a router sends to Triton every 0.5 s, once it has arrived. With ``expect``:
    polled until it reaches ``expect`` (returned at once then; whatever it is at ``timeout`` otherwise, for the
    caller's assertion to show). Without: polled until three reads ``period`` apart agree (nothing was in flight)."""
    end = time.monotonic() + timeout
    last = [read()]
    while time.monotonic() < end:
        if expect is not None and last[-1] >= expect:
            return last[-1]
        if expect is None and len(last) >= 3 and len(set(last[-3:])) == 1:
            return last[-1]
        time.sleep(period if expect is None else 0.05)
        last.append(read())
    return last[-1]
