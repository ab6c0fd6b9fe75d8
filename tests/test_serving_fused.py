"""The fused layout: the routers run the bundle's graphs with ONNX Runtime in their own process.

What the repository holds (no server), the refusals, the runtime's group and chunk path that the router runs,
and, on a real tritonserver, a router batch of different requests in chunks of 2, a classification bundle's
logits, and the router's counters on Triton's metrics endpoint. The layout-independent contract (each scenario
equal to the runtime, malformed requests, load, streams, recovery) is tested for both layouts in the other
serving test files.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

import numpy as np
import pytest

from export_fixtures import bundle
from serving_fixtures import (classification_bundle, router_batches, sample_clips, send_together, settled,
                              small_batch_server)
from trml_edge.errors import ConfigError, RequestError
from trml_edge.graphs import GRAPH_NAMES
from trml_edge.routing import COMPLETE, TEXT_MISSING, VISUAL_MISSING
from trml_edge.runtime import Pipeline, load_bundle
from trml_edge.serving.client import TritonClient
from trml_edge.serving.repository import ModelSettings, RepoConfig, build_repository

TOL = 1e-5


@pytest.fixture(scope="module")
def clips():
    return sample_clips()


# --- the repository, no server ---

def test_layout_defaults_and_refusals(tmp_path):
    assert RepoConfig(bundle="b", out="o").resolved_layout == "fused"
    assert RepoConfig(bundle="b", out="o", backend="onnxruntime").resolved_layout == "ensemble"
    assert RepoConfig(bundle="b", out="o", backend="tensorrt").resolved_layout == "ensemble"
    for backend in ("tensorrt", "onnxruntime"):
        with pytest.raises(ConfigError, match=f"--layout fused .* cannot use --backend {backend}, whose Triton "
                                              "backend runs each graph natively"):
            build_repository(RepoConfig(bundle=str(bundle("fp32")), out=str(tmp_path / "r"), backend=backend,
                                        layout="fused"))
    for settings in (ModelSettings(instances=2), ModelSettings(kind="gpu"), ModelSettings(max_queue_delay_us=5)):
        with pytest.raises(ConfigError, match="no per-graph models.*--router-instances"):
            build_repository(RepoConfig(bundle=str(bundle("fp32")), out=str(tmp_path / "r"), graphs=settings))
    with pytest.raises(ConfigError, match="unknown layout 'both'"):
        build_repository(RepoConfig(bundle=str(bundle("fp32")), out=str(tmp_path / "r"), layout="both"))
    assert not list(tmp_path.iterdir())  # nothing written by a refused build


def test_fused_repository_holds_the_routers_and_the_bundle(tmp_path):
    from typer.testing import CliRunner

    from trml_edge.cli import _register, app
    from trml_edge.runtime.bundle import MANIFEST

    _register()
    src = bundle("int8-cpu")  # per-graph precisions differ: the copy must keep each graph as exported
    out = tmp_path / "repo"
    res = CliRunner().invoke(app, ["triton", "build", str(src), "--out", str(out), "--max-batch", "3",
                                   "--threads", "1", "--router-instances", "2"])
    assert res.exit_code == 0, res.output
    assert "fused layout" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["trml", "trml_stream", "trml_versions.json"]  # no graph
    assert json.loads((out / "trml_versions.json").read_text())["versions"]["1"]["models"] == []  # models at all
    version = out / "trml" / "1"
    router = json.loads((version / "router.json").read_text())
    assert router["layout"] == "fused" and router["threads"] == 1
    assert router["graph_max_batch"] == {g: 3 for g in GRAPH_NAMES}
    manifest = json.loads((src / MANIFEST).read_text())
    assert router["bundle"]["precision"] == {g: e["precision"] for g, e in manifest["graphs"].items()}
    copied = load_bundle(version / "bundle")  # a bundle the runtime loads, every sha256 checked
    assert copied.manifest == manifest
    for g, e in manifest["graphs"].items():
        assert (version / "bundle" / e["file"]).read_bytes() == (src / e["file"]).read_bytes(), g
    assert not (version / "trml_bls.py").exists()
    import google.protobuf.text_format as tf
    from tritonclient.grpc import model_config_pb2

    cfg = tf.Parse((out / "trml" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.parameters["layout"].string_value == "fused" and cfg.instance_group[0].count == 2
    # default chunks: the bundle's profile max of each graph's batch axis
    default = build_repository(RepoConfig(bundle=str(src), out=str(tmp_path / "d")))
    limits = json.loads((default / "trml" / "1" / "router.json").read_text())["graph_max_batch"]
    assert limits == {g: e["profile"][next(iter(e["profile"]))][2][0] for g, e in manifest["graphs"].items()}


# --- the runtime path the fused router runs ---

def test_a_group_equals_its_requests_one_by_one_and_chunks_change_nothing(clips):
    """``predict_group`` over requests of different frame sizes and lengths equals ``predict`` on each, with and
    without chunks of 2 rows; the chunked pipeline really ran the image encoder in chunks."""
    whole = Pipeline(bundle("fp32"))
    chunked = Pipeline(bundle("fp32"), chunk_rows={g: 2 for g in GRAPH_NAMES})
    calls = []
    session = chunked.bundle.session("image_encoder")

    class Counting:  # the image encoder's session, counting its runs
        def run(self, names, feeds):
            calls.append(len(feeds["pixels"]))
            return session.run(names, feeds)

    chunked.bundle._sessions[next(k for k in chunked.bundle._sessions if k.startswith("image_encoder|"))] = Counting()
    frames = [clips[0][0], clips[1][0][:3, :40, :60], clips[2][0][::2]]  # of different lengths and sizes
    texts = [t for _, t in clips[:3]]
    for scenario, f, t in ((COMPLETE, frames, texts), (VISUAL_MISSING, None, texts), (TEXT_MISSING, frames, None)):
        want = np.array([whole.predict(None if f is None else f[i], None if t is None else t[i]).output
                         for i in range(3)])
        for pipe in (whole, chunked):
            got = pipe.predict_group(scenario, f, t)
            assert np.abs(got - want).max() <= TOL, (scenario, got, want)
    picked = sum(min(len(f), chunked.max_frames) for f in frames)  # each clip sub-sampled to the model's frames
    assert picked > 2 and max(calls) == 2 and sum(calls) == 2 * picked  # two groups with frames, 2 at most a run


# --- on a real tritonserver ---

def _metric(srv, name: str, **labels) -> float:
    with urllib.request.urlopen(srv.metrics_url) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


@pytest.mark.parametrize("scenario", [COMPLETE, VISUAL_MISSING, TEXT_MISSING])
def test_seven_different_requests_in_one_batch_each_get_their_own_logits(clips, scenario):
    """A classification bundle (7 logits) behind a fused router whose graphs take 2 rows a run: 7 different
    requests sent together reach one router execution (Triton's batch statistics), and each gets the logits of
    its own inputs; the counters say which scenario they were."""
    srv = small_batch_server("classification", layout="fused")
    pipe = Pipeline(classification_bundle())
    reqs = [(None if scenario == VISUAL_MISSING else f, None if scenario == TEXT_MISSING else t) for f, t in clips]
    want = [pipe.predict(f, t).output for f, t in reqs]
    assert all(w.shape == (7,) for w in want)
    counted = _metric(srv, "trml_requests_total", model="trml", scenario=scenario, outcome="ok")
    before = router_batches(srv.url)
    got = send_together(srv.url, reqs)
    after = router_batches(srv.url)
    for g, w in zip(got, want):
        assert g.shape == (7,) and np.abs(g - w).max() <= TOL
    grew = {b: after.get(b, 0) - before.get(b, 0) for b in after}
    assert any(b > 2 and n > 0 for b, n in grew.items()), grew  # more rows together than one graph run takes
    virtual = {COMPLETE: "none", VISUAL_MISSING: "visual", TEXT_MISSING: "text"}[scenario]
    deadline = time.monotonic() + 5  # the router sends its counters every 0.5 s
    while _metric(srv, "trml_requests_total", model="trml", scenario=scenario, outcome="ok") < counted + 7:
        assert time.monotonic() < deadline, "the router did not count the requests"
        time.sleep(0.2)
    assert _metric(srv, "trml_requests_total", model="trml", scenario=scenario, virtual_modality=virtual,
                   outcome="ok") == counted + 7


def test_graph_rows_and_failures_are_counted(clips):
    """trml_graph_rows_total counts the frames the in-process image encoder ran on (at most the model's frames
    of each clip) and one text for a text-only request; a malformed request is counted as a client error of its
    scenario."""
    srv = small_batch_server("classification", layout="fused")
    c = TritonClient(srv.url)

    reads = (lambda: _metric(srv, "trml_graph_rows_total", model="trml", graph="image_encoder"),
             lambda: _metric(srv, "trml_graph_rows_total", model="trml", graph="text_encoder"),
             lambda: _metric(srv, "trml_requests_total", model="trml", scenario=VISUAL_MISSING,
                             outcome="client_error"))
    model_frames = Pipeline(classification_bundle()).max_frames
    long = np.concatenate([clips[1][0]] * model_frames)  # more frames than the model takes: sub-sampled
    frames0, text_calls0, bad0 = (settled(r) for r in reads)  # the counters the router sends every 0.5 s
    c.infer(clips[0][0], None)
    c.infer(long, None)
    c.infer(None, "only words")
    with pytest.raises(RequestError, match="TEXT is empty"):
        c.infer(None, " ")
    want = (frames0 + min(len(clips[0][0]), model_frames) + model_frames, text_calls0 + 1, bad0 + 1)
    frames1, text_calls1, bad1 = (settled(r, w) for r, w in zip(reads, want))
    assert frames1 - frames0 == min(len(clips[0][0]), model_frames) + model_frames
    assert text_calls1 - text_calls0 == 1 and bad1 - bad0 == 1
    c.close()
