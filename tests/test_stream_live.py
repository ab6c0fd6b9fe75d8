"""The ``trml_stream`` router on a real tritonserver: streams through Triton's sequence batcher.

Every answer is checked against the runtime's own stream (``Pipeline.stream()``, itself checked against
``Pipeline.predict`` on the window in test_stream_runtime.py); the live-stream count is read from the
router's custom metric on Triton's metrics endpoint.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
import pytest

from export_fixtures import bundle, workdir
from serving_fixtures import LAYOUTS, settled
from test_serving_live import _group_rss_mb
from test_stream_runtime import PUSHES, _frames
from trml_edge.errors import RequestError, StreamLimitError
from trml_edge.runtime import Pipeline
from trml_edge.serving.client import TritonClient
from trml_edge.serving.stream_client import TritonStream

TOL = 1e-5  # the same ONNX graphs on both sides: only batching and summation order differ
BOUND = 12  # live streams per router instance in this repository
IDLE_S = 3.0  # its idle timeout


@cache
def _server(layout: str):
    import atexit

    from trml_edge.serving.repository import ModelSettings, RepoConfig, build_repository
    from trml_edge.serving.server import TritonServer
    from trml_edge.serving.stream_repo import StreamSettings

    # the stream router waits up to 20 ms to batch updates of several streams, so concurrent updates meet
    repo = build_repository(RepoConfig(
        bundle=str(bundle("fp32")), out=str(workdir() / f"repo_stream_{layout}"), layout=layout, force=True,
        router=ModelSettings(max_batch_size=8),
        stream=StreamSettings(max_streams=BOUND, idle_timeout_s=IDLE_S, max_queue_delay_us=20000)))
    srv = TritonServer(repo).start()
    atexit.register(srv.stop)
    return srv


@pytest.fixture(scope="module", params=LAYOUTS)
def srv(request):
    """The stream router of each layout: fused (graphs in the router's process) and ensemble."""
    return _server(request.param)


@pytest.fixture(scope="module")
def pipe():
    return Pipeline(bundle("fp32"))


def metric(srv, name: str, **labels) -> float:
    """One sample of the router's custom metrics (summed over instances)."""
    with urllib.request.urlopen(srv.metrics_url) as r:
        text = r.read().decode()
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total, found = total + float(m.group(2)), True
    if not found:
        raise AssertionError(f"no {name} {labels} in the metrics")
    return total


def live(srv) -> int:
    return int(metric(srv, "trml_stream_live_streams"))


def frames_encoded(srv, expect: int | None = None) -> int:
    """Frames the image encoder has run on for streams: ensemble layout, the sum of the image_encoder model's
    executed batch sizes (Triton's statistics); fused, the stream router's own counter of its in-process graph
    runs, which it sends every 0.5 s: waited for until it reaches ``expect``, or has settled."""
    if srv.layout() == "fused":
        def read():
            try:
                return int(metric(srv, "trml_graph_rows_total", model="trml_stream", graph="image_encoder"))
            except AssertionError:  # no frame encoded yet: no sample
                return 0

        return settled(read, expect)
    with urllib.request.urlopen(f"http://{srv.url}/v2/models/image_encoder/stats") as r:
        s = json.loads(r.read())["model_stats"][0]
    return sum(int(b["batch_size"]) * int(b["compute_infer"]["count"]) for b in s.get("batch_stats", []))


def _raw(srv, sid, frames=None, text=None, start=False, end=False):
    """An update built by hand with tritonclient, to send what TritonStream would refuse to send."""
    import tritonclient.http as http

    ins = []
    if text is not None:
        t = http.InferInput("TEXT", [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[text]], dtype=object))
        ins.append(t)
    if frames is not None:
        from tritonclient.utils import np_to_triton_dtype

        f = http.InferInput("FRAMES", list(frames.shape), np_to_triton_dtype(frames.dtype))
        f.set_data_from_numpy(frames)
        ins.append(f)
    c = http.InferenceServerClient(srv.url)
    try:
        return c.infer("trml_stream", ins, sequence_id=sid, sequence_start=start, sequence_end=end)
    finally:
        c.close()


def _close(got, ref) -> bool:
    return got.virtual_modality == ref.virtual_modality and abs(float(got.output) - float(ref.output)) <= TOL


def test_the_stream_equals_the_runtime_stream_at_every_step(srv, pipe):
    """The 20 pushes of the runtime test, through trml_stream; the image encoder runs once per frame sent."""
    ref, before = pipe.stream(), frames_encoded(srv)
    sent = 0
    s = TritonStream(srv.url)
    for i, (k, text) in enumerate(PUSHES):
        frames = _frames(k, seed=i, h=40 + 8 * (i % 3)) if k else None
        got, want = s.push(frames, text), ref.push(frames, text)
        assert _close(got, want), (i, got, want)
        sent += min(k, pipe.max_frames)  # of a burst longer than the window only its tail is encoded
    assert _close(s.close(), want)  # the end flag alone answers for the window as it is
    assert frames_encoded(srv, before + sent) - before == sent
    assert live(srv) == 0  # the end flag freed it


def test_interleaved_streams_do_not_mix(srv, pipe):
    """Two streams updated in turn and at the same time (so their updates share router batches)."""
    def stats():
        with urllib.request.urlopen(f"http://{srv.url}/v2/models/trml_stream/stats") as r:
            s = json.loads(r.read())["model_stats"][0]
        return int(s["inference_stats"]["success"]["count"]), int(s["execution_count"])

    c = TritonClient(srv.url)
    a, b = TritonStream(c), TritonStream(c)
    ra, rb = pipe.stream(), pipe.stream()
    assert _close(a.push(_frames(3, 1), "stream a is happy"), ra.push(_frames(3, 1), "stream a is happy"))
    assert _close(b.push(None, "stream b is sad"), rb.push(None, "stream b is sad"))
    (n0, e0), barrier = stats(), threading.Barrier(2)

    def run(stream, ref, seed):
        out = []
        for j in range(8):
            # stream 2 sends only a new text every other update: batches mix the ensemble and graph-by-graph paths
            f = None if seed == 2 and j % 2 else _frames(1 + j % 2, seed * 100 + j, h=48)
            t = f"update {j} of stream {seed}" if j % 3 == 0 or f is None else None
            barrier.wait(timeout=30)
            out.append((stream.push(f, t), ref.push(f, t)))
        return out

    try:
        with ThreadPoolExecutor(2) as ex:
            results = list(ex.map(lambda args: run(*args), [(a, ra, 1), (b, rb, 2)]))
        n1, e1 = stats()
    finally:
        a.close(), b.close()
    for pairs in results:
        assert all(_close(got, want) for got, want in pairs)
    assert n1 - n0 == 16 and e1 - e0 < 16  # some updates of the two streams were in one batch
    assert results[0][-1][0].output != results[1][-1][0].output


def test_update_after_end_or_to_an_unknown_stream_is_a_client_error(srv):
    from tritonclient.utils import InferenceServerException

    f = _frames(1, 7)[None]
    _raw(srv, 4242, frames=f, start=True)
    _raw(srv, 4242, text=b"the end", end=True)
    for sid in (4242, 987654321):  # ended, never started: Triton itself refuses an update without START
        with pytest.raises(InferenceServerException) as e:
            _raw(srv, sid, frames=f)
        assert e.value.status() == "400" and "START" in e.value.message()
    s = TritonStream(srv.url)
    s.push(None, "one update", end=True)
    with pytest.raises(RequestError, match="has ended"):  # our client does not send it at all
        s.push(f[0])


def test_a_malformed_last_update_still_frees_the_stream(srv, pipe):
    """The end flag frees a stream whatever its update's answer: a malformed closing update (0 frames) gets its
    400, the live-stream gauge drops at once, and the same id starts a new stream straight away."""
    from tritonclient.utils import InferenceServerException

    sid, f = 6161, _frames(2, 11)
    assert live(srv) == 0
    _raw(srv, sid, frames=f[None], text=b"about to end badly", start=True)
    assert live(srv) == 1
    with pytest.raises(InferenceServerException) as e:
        _raw(srv, sid, frames=f[None, :0], end=True)
    assert e.value.status() == "400" and "0 frames" in e.value.message()
    assert live(srv) == 0  # freed now, not at the idle timeout
    ref = pipe.stream()
    got = _raw(srv, sid, frames=f[None, :1], start=True, end=True)  # the same id, a new stream: its first frame
    want = ref.push(f[:1])
    assert abs(float(got.as_numpy("OUTPUT")[0, 0]) - float(want.output)) <= TOL
    assert live(srv) == 0


def test_a_malformed_update_is_a_client_error_and_changes_nothing(srv, pipe):
    from tritonclient.utils import InferenceServerException

    ref, sid = pipe.stream(), 5151
    first = _frames(2, 8)
    _raw(srv, sid, frames=first[None], text=b"fine so far", start=True)
    ref.push(first, "fine so far")
    for kwargs, msg in [(dict(frames=first[None].astype(np.float32)), "UINT8"), (dict(text=b"  "), "TEXT is empty"),
                        (dict(frames=first[None, :0]), "0 frames"), (dict(), "needs new FRAMES")]:
        with pytest.raises(InferenceServerException) as e:
            _raw(srv, sid, **kwargs)
        assert e.value.status() == "400" and msg in e.value.message(), (kwargs.keys(), e.value.message())
    new = _frames(1, 9)
    res = _raw(srv, sid, frames=new[None], end=True)
    want = ref.push(new)
    assert abs(float(res.as_numpy("OUTPUT")[0, 0]) - float(want.output)) <= TOL


def test_an_abandoned_stream_is_freed_after_the_idle_timeout(srv):
    from tritonclient.utils import InferenceServerException

    assert live(srv) == 0
    expired = metric(srv, "trml_stream_events_total", event="expired")
    _raw(srv, 777, frames=_frames(2, 3)[None], start=True)
    assert live(srv) == 1
    t0 = time.monotonic()
    while live(srv) and time.monotonic() - t0 < IDLE_S + 5:  # no traffic: the router's sweeper frees it
        time.sleep(0.2)
    waited = time.monotonic() - t0
    assert live(srv) == 0 and IDLE_S - 0.5 <= waited <= IDLE_S + 5, waited
    assert metric(srv, "trml_stream_events_total", event="expired") == expired + 1
    with pytest.raises(InferenceServerException) as e:  # Triton forgot it too: a client error
        _raw(srv, 777, text=b"still there?")
    assert e.value.status() == "400"


def test_streams_over_the_bound_are_refused_retryably_and_the_server_keeps_serving(srv, pipe):
    from tritonclient.utils import InferenceServerException

    assert live(srv) == 0
    c = TritonClient(srv.url)
    streams = [TritonStream(c) for _ in range(BOUND)]
    for i, s in enumerate(streams):
        s.push(None, f"stream {i}")
    assert live(srv) == BOUND
    extra = TritonStream(c)
    with pytest.raises(StreamLimitError, match=f"bound is {BOUND}.*retry") as e:
        extra.push(None, "one too many")
    assert e.value.status == "503"
    # Triton holds the refused sequence until its idle timeout; the router does not: an update is a client error
    with pytest.raises(InferenceServerException) as e:
        _raw(srv, extra.sequence_id, text=b"let me in")
    assert e.value.status() == "400" and "not live" in e.value.message()
    # the live streams keep working, and right answers come back
    ref = pipe.stream()
    ref.push(None, "stream 3")
    assert _close(streams[3].push(_frames(2, 11)), ref.push(_frames(2, 11)))
    streams[0].close()  # one ends: a new stream fits again, and the refused one may start again
    retry = TritonStream(c, sequence_id=extra.sequence_id)
    assert retry.push(None, "one too many").virtual_modality == "visual"
    assert live(srv) == BOUND
    for s in [*streams[1:], retry]:
        s.close()
    assert live(srv) == 0
    c.close()


def _script(seed: int):
    """10 updates of one stream: frames every time, bursts, a text that arrives and changes."""
    rng = np.random.default_rng(seed)
    out = []
    for j in range(10):
        k = int(rng.integers(1, 4))
        out.append((_frames(k, seed * 1000 + j, h=32), f"stream {seed} says {j // 4}" if j >= 2 else None))
    return out


@pytest.mark.timeout(600)
def test_load_200_streams_of_10_updates_at_concurrency_8(srv, pipe):
    """Every answer checked against the runtime; no stream left behind; memory flat after warm-up."""
    scripts = [_script(s) for s in range(10)]
    expected = []
    for script in scripts:
        ref = pipe.stream()
        expected.append([ref.push(f, t) for f, t in script])
    c = TritonClient(srv.url)
    deadline = time.monotonic() + 420

    def one(i):
        if time.monotonic() > deadline:
            raise AssertionError("load test out of time")
        k = i % len(scripts)
        with TritonStream(c) as s:
            return [(_close(s.push(f, t), want), k) for (f, t), want in zip(scripts[k], expected[k])]

    def run(n, first):
        with ThreadPoolExecutor(8) as ex:
            return [r for rs in ex.map(one, range(first, first + n)) for r in rs]

    run(40, 0)  # warm-up
    rss_warm = _group_rss_mb(srv.proc.pid)
    t0 = time.monotonic()
    results = run(200, 40)
    took = time.monotonic() - t0
    rss_after = _group_rss_mb(srv.proc.pid)
    assert len(results) == 2000 and all(ok for ok, _ in results)
    assert live(srv) == 0
    assert rss_after <= rss_warm + max(50.0, 0.10 * rss_warm), (rss_warm, rss_after)
    print(f"200 streams x 10 updates at concurrency 8: {took:.1f} s, RSS {rss_warm:.0f} -> {rss_after:.0f} MB")
    c.close()


def _cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "trml_edge", "client", *args], capture_output=True, text=True,
                          timeout=300)


def test_client_streams_a_video_file(srv, pipe, tmp_path):
    """`trml-edge client URL --stream VIDEO --fps 2 --text T` on an mp4 written by PyAV: one line per update,
    each equal to the runtime's stream over the same frames."""
    import av

    from trml_edge.data.video import write_mp4

    rng = np.random.default_rng(3)
    clip = rng.integers(0, 256, (12, 48, 64, 3), dtype=np.uint8)
    path = tmp_path / "clip.mp4"
    write_mp4(path, clip, fps=4)  # 12 frames at 4 fps: 3 s of video
    with av.open(str(path)) as c:  # the decoded frames and their times, read independently of the client
        decoded = [(float(f.time), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    taken = [(t, f) for t, f in decoded if abs(t * 2 - round(t * 2)) < 1e-6]  # 2 per second: t = 0, 0.5, ...
    assert len(taken) == 6
    ref = pipe.stream()
    want = [ref.push(f[None], "a stream from a file" if i == 0 else None) for i, (_, f) in enumerate(taken)]
    res = _cli(srv.url, "--stream", str(path), "--fps", "2", "--text", "a stream from a file")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == len(taken)
    for line, (t, _), w in zip(lines, taken, want):
        m = re.match(r"t=\s*(\S+)s\s+score=(\S+)\s+virtual_modality=(\S+)$", line)
        assert m, line
        assert abs(float(m.group(1)) - t) < 0.01
        assert abs(float(m.group(2)) - float(w.output)) <= 5e-5 + TOL  # printed with 4 decimals
        assert m.group(3) == (w.virtual_modality or "-")
    assert live(srv) == 0  # the client ended its stream
    # without text the stream is text-missing throughout
    res = _cli(srv.url, "--stream", str(path), "--fps", "1")
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 3
    assert all(line.endswith("virtual_modality=text") for line in res.stdout.splitlines())
    # a file that is not a video: one line naming it, exit status 2
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    res = _cli(srv.url, "--stream", str(bad))
    assert res.returncode == 2 and str(bad) in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_stream_router_config_and_build_options(tmp_path):
    """No server: the generated config carries the build options; --no-streams leaves the stream models out;
    a bad option is a one-line ConfigError before anything is written."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from trml_edge.errors import ConfigError
    from trml_edge.serving.repository import RepoConfig, build_repository
    from trml_edge.serving.stream_repo import STREAM_ENSEMBLES, StreamSettings

    repo = build_repository(RepoConfig(bundle=str(bundle("fp32")), out=str(tmp_path / "r"), layout="ensemble",
                                       stream=StreamSettings(max_streams=5, idle_timeout_s=7.5)))
    c = text_format.Parse((repo / "trml_stream" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    seq = c.sequence_batching
    assert seq.max_sequence_idle_microseconds == 7_500_000 and seq.oldest.max_candidate_sequences > 5
    assert {x.name for x in seq.control_input} == {"START", "END", "CORRID"}
    assert c.parameters["max_streams"].string_value == "5"
    assert {i.name: i.optional for i in c.input} == {"TEXT": True, "FRAMES": True}
    for name, steps in STREAM_ENSEMBLES.values():
        e = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert [s.model_name for s in e.ensemble_scheduling.step] == list(steps)
        assert {o.name for o in e.output} == {"output", "v"}
    # fused: no ensembles, and the stream router's bundle is the trml router's files, hard-linked
    fused = build_repository(RepoConfig(bundle=str(bundle("fp32")), out=str(tmp_path / "fused")))
    assert sorted(p.name for p in fused.iterdir() if p.is_dir()) == ["trml", "trml_stream"]
    conf = json.loads((fused / "trml_stream" / "1" / "stream.json").read_text())
    assert conf["layout"] == "fused" and "ensembles" not in conf
    for f in (fused / "trml" / "1" / "bundle").rglob("*"):
        twin = fused / "trml_stream" / "1" / "bundle" / f.relative_to(fused / "trml" / "1" / "bundle")
        assert f.is_dir() or f.stat().st_ino == twin.stat().st_ino, f
    off = build_repository(RepoConfig(bundle=str(bundle("fp32")), out=str(tmp_path / "off"),
                                      stream=StreamSettings(enabled=False)))
    assert not [p for p in off.iterdir() if p.name.startswith("trml_stream")] and (off / "trml").is_dir()
    with pytest.raises(ConfigError, match="--stream-max-streams must be >= 1"):
        build_repository(RepoConfig(bundle=str(bundle("fp32")), out=str(tmp_path / "bad"),
                                    stream=StreamSettings(max_streams=0)))
    assert not (tmp_path / "bad").exists()
