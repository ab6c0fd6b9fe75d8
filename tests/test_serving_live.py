"""A real tritonserver (the one bundled by nvidia-pytriton) serving the FP32 test bundle through the trml router.

Every answer is checked against the torch-free runtime (``Pipeline.predict``) on the same bundle; bad requests
must get client errors for themselves alone while the server keeps answering correctly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from export_fixtures import bundle, synth_data
from serving_fixtures import LAYOUTS, TEST_MAX_FRAME_SIDE, TEST_MAX_FRAMES, repository, server
from serving_fixtures import group_rss_mb as _group_rss_mb  # noqa: F401  (test_stream_live imports it here)
from trml_edge.errors import MissingModalityError, RequestError, ServingError
from trml_edge.runtime import Pipeline
from trml_edge.serving.client import TritonClient

TOL = 1e-5  # same ONNX graphs on both sides: only batching and summation order differ


@pytest.fixture(scope="module", params=LAYOUTS)
def layout(request):
    """Each test that takes it runs against both layouts: fused (the default here) and ensemble (the GPU path's)."""
    return request.param


@pytest.fixture(scope="module")
def pipe():
    return Pipeline(bundle("fp32"))


@pytest.fixture(scope="module")
def clips():
    """(frames at the video's own resolution, text) of a few synthetic test clips, decoded from real mp4 files."""
    from trml_edge.data.corpus import read_corpus
    from trml_edge.data.video import read_frames

    out = []
    for rec in [r for r in read_corpus(synth_data()) if r.split == "test"][:4]:
        frames, mask = read_frames(rec.video, 8)
        out.append((frames[mask], rec.text))
    return out


def _http():
    import tritonclient.http as http

    return http


def _raw(url, text=None, frames=None, text_shape=None):
    """A request built by hand with tritonclient, to send what our client would refuse to build."""
    http = _http()
    ins = []
    if text is not None:
        t = http.InferInput("TEXT", text_shape or [1, 1], "BYTES")
        t.set_data_from_numpy(np.array(text, dtype=object).reshape(text_shape or [1, 1]))
        ins.append(t)
    if frames is not None:
        from tritonclient.utils import np_to_triton_dtype

        f = http.InferInput("FRAMES", list(frames.shape), np_to_triton_dtype(frames.dtype))
        f.set_data_from_numpy(frames)
        ins.append(f)
    c = http.InferenceServerClient(url)
    try:
        return c.infer("trml", ins)
    finally:
        c.close()  # an open connection would hold the server's shutdown for its exit timeout


def _stats(url: str, model: str) -> dict:
    with urllib.request.urlopen(f"http://{url}/v2/models/{model}/stats") as r:
        s = json.loads(r.read())["model_stats"][0]
    return {"requests": int(s["inference_stats"]["success"]["count"]), "executions": int(s["execution_count"])}


def test_each_scenario_equals_the_runtime(pipe, clips, layout):
    c = TritonClient(server(layout=layout).url)
    for frames, text in clips:
        for f, t, virtual in [(frames, text, ""), (None, text, "visual"), (frames, None, "text")]:
            got, ref = c.infer(f, t), pipe.predict(f, t)
            assert got.virtual_modality == ref.virtual_modality == virtual
            assert abs(float(got.output) - float(ref.output)) <= TOL
    c.close()


def test_clients_read_the_layout_from_the_open_config_api(layout):
    srv = server(layout=layout)
    assert srv.layout() == layout  # from router.json, what serve prints
    for url in (srv.url, f"grpc://{srv.grpc_url}"):  # what profile --url reports, from the router's config
        c = TritonClient(url)
        assert c.layout() == layout
        c.close()


def test_large_frames_and_more_frames_than_the_model_takes(pipe, clips, layout):
    """Frames above the model size are resized and cropped, extra frames sub-sampled, as in the runtime."""
    frames, text = clips[0]
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (3 * pipe.max_frames + 1, TEST_MAX_FRAME_SIDE, 200, 3), dtype=np.uint8)
    c = TritonClient(server(layout=layout).url)
    got = c.infer(big, text)
    # independent reference: the uniform pick written out by hand, 25 frames -> 8 spread from first to last
    idx = np.round(np.arange(pipe.max_frames) * (len(big) - 1) / (pipe.max_frames - 1)).astype(int)
    ref = pipe.predict(big[idx], text)
    assert abs(float(got.output) - float(ref.output)) <= TOL
    assert abs(float(got.output) - float(pipe.predict(big[idx[:-1]], text).output)) > TOL  # the pick matters
    c.close()


def test_both_inputs_omitted_is_a_client_error_naming_both(layout):
    from tritonclient.utils import InferenceServerException

    # the router sees requests without a batch axis, so an empty one reaches it
    srv = server(router_max_batch=0, layout=layout)
    with pytest.raises(InferenceServerException) as e:
        _http().InferenceServerClient(srv.url).infer("trml", [])
    assert e.value.status() == "400" and "FRAMES" in str(e.value) and "TEXT" in str(e.value)
    # the batched router: Triton itself refuses an input-less request before any model runs, also with a 400
    with pytest.raises(InferenceServerException) as e:
        _http().InferenceServerClient(server(layout=layout).url).infer("trml", [])
    assert e.value.status() == "400"
    with pytest.raises(MissingModalityError, match="at least one"):  # our client does not send it at all
        TritonClient(server(layout=layout).url).infer(None, None)


def test_bad_requests_get_client_errors_and_the_server_keeps_serving(pipe, clips, layout):
    from tritonclient.utils import InferenceServerException

    url = server(layout=layout).url
    frames, text = clips[1]
    good = float(pipe.predict(frames, text).output)
    side = TEST_MAX_FRAME_SIDE
    bad = {
        "wrong dtype": dict(frames=frames[None].astype(np.float32), text=[[text.encode()]]),
        "wrong rank": dict(frames=frames[None, 0], text=[[text.encode()]]),
        "0 frames": dict(frames=frames[None, :0], text=[[text.encode()]]),
        "not utf-8": dict(text=[[b"caf\xe9 \xff"]]),
        "empty string": dict(text=[[b""]]),
        "frame just over the size limit": dict(frames=np.zeros((1, 1, side + 1, 8, 3), np.uint8)),
        "more frames than the request limit": dict(frames=np.zeros((1, TEST_MAX_FRAMES + 1, 8, 8, 3), np.uint8)),
        "text rows differ from frame rows": dict(frames=np.concatenate([frames[None]] * 2), text=[[text.encode()]]),
    }
    expect = {"wrong dtype": "UINT8", "wrong rank": "shape", "0 frames": "0 frames", "not utf-8": "utf-8",
              "empty string": "TEXT is empty", "frame just over the size limit": f"over the limit of {side}",
              "more frames than the request limit": f"over the limit of {TEST_MAX_FRAMES}",
              "text rows differ from frame rows": "batch size does not match"}
    c = TritonClient(url)
    for name, req in bad.items():
        with pytest.raises(InferenceServerException) as e:
            _raw(url, **req)
        assert e.value.status() == "400", (name, e.value)
        assert expect[name] in str(e.value), (name, str(e.value))
        assert abs(float(c.infer(frames, text).output) - good) <= TOL, name  # the next good request is right
    # a frame exactly at the limit is accepted
    edge = np.full((2, side, 16, 3), 128, np.uint8)
    assert abs(float(c.infer(edge, None).output) - float(pipe.predict(edge, None).output)) <= TOL
    with pytest.raises(RequestError, match="TEXT is empty"):  # our client maps a 400 to RequestError
        c.infer(None, "   ")
    c.close()


def test_grpc_reports_invalid_argument(layout):
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    c = grpc.InferenceServerClient(server(layout=layout).grpc_url)
    t = grpc.InferInput("TEXT", [1, 1], "BYTES")
    t.set_data_from_numpy(np.array([[b""]], dtype=object))
    with pytest.raises(InferenceServerException) as e:
        c.infer("trml", [t])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "TEXT is empty" in e.value.message()
    ok = TritonClient(f"grpc://{server(layout=layout).grpc_url}").infer(None, "a fine film")
    assert ok.virtual_modality == "visual"


def test_load_mixed_scenarios_no_failure_bounded_memory(pipe, clips, layout):
    """1000 requests at concurrency 8 over the three scenarios: every answer right, memory flat after warm-up."""
    srv = server(layout=layout)
    http = _http()
    cases = [(f, t) for frames, text in clips for f, t in [(frames, text), (None, text), (frames, None)]]
    expected = [float(pipe.predict(f, t).output) for f, t in cases]
    client = http.InferenceServerClient(srv.url, concurrency=8)
    tc = TritonClient(srv.url)

    def send(n: int, deadline: float) -> list[tuple[int, float]]:
        handles = []
        for i in range(n):
            if time.monotonic() > deadline:
                raise AssertionError(f"load test out of time after {i} requests")
            f, t = cases[i % len(cases)]
            handles.append((i % len(cases), client.async_infer("trml", tc.inputs(f, t))))
            if len(handles) >= 64:  # bounded number in flight
                yield from ((k, h.get_result().as_numpy("OUTPUT")[0, 0]) for k, h in handles)
                handles = []
        yield from ((k, h.get_result().as_numpy("OUTPUT")[0, 0]) for k, h in handles)

    deadline = time.monotonic() + 600
    list(send(120, deadline))  # warm-up
    rss_warm = _group_rss_mb(srv.proc.pid)
    before = _stats(srv.url, "trml")
    results = list(send(1000, deadline))
    after = _stats(srv.url, "trml")
    rss_after = _group_rss_mb(srv.proc.pid)
    assert len(results) == 1000
    worst = max(abs(float(v) - expected[k]) for k, v in results)
    assert worst <= TOL
    assert after["requests"] - before["requests"] == 1000  # zero failed requests on the server's own count
    # bound: growth after warm-up within 10 % or 50 MB (numpy/ORT arenas settle during warm-up)
    assert rss_after <= rss_warm + max(50.0, 0.10 * rss_warm), (rss_warm, rss_after)
    client.close()


def test_router_groups_requests_and_never_runs_a_missing_encoder(clips):
    """Ensemble layout, Triton's own statistics: one text_encoder call per scenario group, no image encoder for
    text-only requests."""
    srv = server(layout="ensemble")
    http = _http()
    frames, text = clips[2]
    tc = TritonClient(srv.url)
    client = http.InferenceServerClient(srv.url, concurrency=8)
    s0 = {m: _stats(srv.url, m) for m in ("trml", "text_encoder", "image_encoder")}
    handles = [client.async_infer("trml", tc.inputs(None, f"{text} {i}")) for i in range(48)]
    [h.get_result() for h in handles]
    s1 = {m: _stats(srv.url, m) for m in ("trml", "text_encoder", "image_encoder")}
    assert s1["image_encoder"] == s0["image_encoder"]  # 48 text-only requests: no image encoder call
    router_exec = s1["trml"]["executions"] - s0["trml"]["executions"]
    text_calls = s1["text_encoder"]["requests"] - s0["text_encoder"]["requests"]
    assert s1["trml"]["requests"] - s0["trml"]["requests"] == 48
    assert text_calls == router_exec < 48  # one text_encoder call per router execution, several requests each

    # Triton's dynamic batcher only merges requests that carry the same inputs, so a batch handed to the
    # router holds one scenario; send each scenario as a run of 16 so that batches form within each run
    runs = [(frames, text)] * 16 + [(None, text)] * 16 + [(frames, None)] * 16
    s0 = {m: _stats(srv.url, m) for m in ("trml", "text_encoder", "image_encoder")}
    handles = [client.async_infer("trml", tc.inputs(f, t)) for f, t in runs]
    [h.get_result() for h in handles]
    s1 = {m: _stats(srv.url, m) for m in ("trml", "text_encoder", "image_encoder")}
    router_exec = s1["trml"]["executions"] - s0["trml"]["executions"]
    assert router_exec < 48
    for enc in ("text_encoder", "image_encoder"):  # 32 requests need each encoder; one call per router batch
        calls = s1[enc]["requests"] - s0[enc]["requests"]
        assert calls <= router_exec and calls < 32, (enc, calls, router_exec)
    client.close()


def test_server_errors_are_one_line_and_nothing_is_left_running(tmp_path):
    from trml_edge.serving.server import TritonServer

    with socket.socket() as s:  # a port in use
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServingError, match=f"port {port} .* in use.*--http-port"):
            TritonServer(repository(), http_port=port).start()
    with pytest.raises(ServingError, match="not an executable file"):
        TritonServer(repository(), tritonserver=tmp_path / "nope").start()
    with pytest.raises(ServingError, match="not a Triton model repository"):
        TritonServer(tmp_path).start()
    # a graph changed after triton build: the model that holds it refuses to load, and says so in one line
    for layout, graph, refusal in (
            ("ensemble", Path("gen_text_to_visual", "1", "model.onnx"), "model gen_text_to_visual failed to load"),
            ("fused", Path("trml", "1", "bundle", "graphs", "gen_text_to_visual.onnx"), "model trml failed to load")):
        broken = tmp_path / f"repo_{layout}"
        shutil.copytree(repository(layout=layout), broken)
        with open(broken / graph, "ab") as f:
            f.write(b"\0")
        srv = TritonServer(broken)
        with pytest.raises(ServingError, match=f"{refusal}.*gen_text_to_visual.*sha256.*triton build"):
            srv.start()
        assert srv.proc is not None and srv.proc.poll() is not None

    live = TritonServer(repository()).start()
    pgid = live.proc.pid
    assert len([p for p in os.listdir("/proc") if p.isdigit() and _pgid(p) == pgid]) >= 3  # server + 2 routers
    live.stop()
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _pgid(p) == pgid]


def _pgid(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


@pytest.mark.gpu
@pytest.mark.trt
def test_tensorrt_repository_serves_on_a_gpu(tmp_path, clips):
    """On a GPU box with TensorRT and a Triton that has the tensorrt backend (TRITONSERVER=path/to/tritonserver):
    engines built from the int8-trt bundle, served through the router, close to the ORT runtime."""
    from trml_edge.export.tensorrt import build_engines
    from trml_edge.serving.repository import RepoConfig, build_repository
    from trml_edge.serving.server import TritonServer

    binary = os.environ.get("TRITONSERVER")
    if not binary:
        pytest.skip("set TRITONSERVER to a tritonserver with the tensorrt and python backends")
    b = tmp_path / "bundle"
    shutil.copytree(bundle("int8-trt"), b)
    build_engines(b)
    repo = build_repository(RepoConfig(bundle=str(b), out=str(tmp_path / "repo"), backend="tensorrt"))
    from trml_edge.serving.plans import check_plan_versions

    check_plan_versions(repo, binary)  # the engines were just built with this machine's TensorRT
    pipe = Pipeline(b)
    with TritonServer(repo, tritonserver=binary) as srv:
        c = TritonClient(srv.url)
        for frames, text in clips:
            for f, t in [(frames, text), (None, text), (frames, None)]:
                got, ref = c.infer(f, t), pipe.predict(f, t)
                assert got.virtual_modality == ref.virtual_modality
                assert abs(float(got.output) - float(ref.output)) <= 0.15  # the int8 budget of one prediction
        c.close()
