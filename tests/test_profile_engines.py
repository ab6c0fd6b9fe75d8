"""`profile`'s percentiles on a known list, and its tensorrt-engines backend: SKIPPED with the reason here,
timed end to end and per graph (and scoring the recommendation) on a GPU with TensorRT."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from export_fixtures import bundle, synth_data
from trml_edge.profile.timing import percentiles
from trml_edge.runtime.bundle import load_bundle


def test_percentiles_on_a_known_list():
    """1..100 ms: linear interpolation between closest ranks (rank = q/100 * (n - 1), numpy's default, the
    'type 7' definition of Hyndman & Fan) puts p50 at 50.5, p90 at 90.1, p95 at 95.05 and p99 at 99.01."""
    out = percentiles([i / 1000 for i in range(1, 101)], batch=8)
    assert out["runs"] == 100
    assert out["p50_ms"] == pytest.approx(50.5)
    assert out["p90_ms"] == pytest.approx(90.1)
    assert out["p95_ms"] == pytest.approx(95.05)
    assert out["p99_ms"] == pytest.approx(99.01)
    assert out["mean_ms"] == pytest.approx(50.5)
    assert out["throughput_per_s"] == pytest.approx(8 * 1000 / 50.5)
    small = percentiles([0.010, 0.050, 0.020, 0.040, 0.030])  # unsorted: 10..50 ms
    assert (small["p50_ms"], small["p90_ms"], small["p99_ms"]) == pytest.approx((30.0, 46.0, 49.6))


def _profile(paths, out, **kw):
    from trml_edge.profile import ProfileConfig, profile

    kw.setdefault("torch", False)
    return profile(ProfileConfig(bundles=[str(p) for p in paths], out=str(out), min_time=0.05, min_runs=3,
                                 warmup=1, batches=[1], progress=False, **kw))


def _engine_rows(rep):
    return [r for r in rep["latency"] if r["backend"] == "tensorrt-engines"]


def test_engines_row_says_why_it_is_skipped(tmp_path):
    rep = _profile([bundle("fp32")], tmp_path / "plain")
    rows = _engine_rows(rep)
    assert len(rows) == 1 and rows[0]["status"] == "SKIPPED"
    assert "no bundle has TensorRT engines" in rows[0]["reason"] and "build-engines" in rows[0]["reason"]
    assert rep["settings"]["recommendation_ranked_by"] == "ort-cpu"

    # a bundle that records engines, on a machine without TensorRT: the reason names the missing library
    b = tmp_path / "with_engines"
    shutil.copytree(bundle("fp32"), b)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["engines"] = {g: {"file": f"engines/{g}.sm90.trt10.8.plan", "tensorrt": "10.8.0.43",
                               "compute_capability": "sm90"} for g in manifest["graphs"]}
    (b / "manifest.json").write_text(json.dumps(manifest))
    rows = _engine_rows(_profile([b], tmp_path / "engines"))
    assert len(rows) == 1 and rows[0]["status"] == "SKIPPED"
    assert "have engines" in rows[0]["reason"] and "TensorRT is not installed" in rows[0]["reason"]
    assert "SKIPPED" in (tmp_path / "engines" / "report.md").read_text()


def test_stale_engines_are_named_with_the_rebuild():
    from trml_edge.profile.engines import engine_problem

    b = load_bundle(bundle("fp32"))
    b.manifest = {**b.manifest, "engines": {g: {"file": f"engines/{g}.plan", "tensorrt": "10.3.0",
                                                  "compute_capability": "sm87"} for g in b.graphs}}
    why = engine_problem(b, "10.8.0", "sm87")
    assert "TensorRT 10.3.0" in why and "build-engines" in why
    b.manifest = {**b.manifest, "engines": {"image_encoder": b.manifest["engines"]["image_encoder"]}}
    assert "no engine for text_encoder" in engine_problem(b, "10.3.0", "sm87")


@pytest.mark.gpu
@pytest.mark.trt
def test_profile_times_the_engines_end_to_end_and_per_graph(tmp_path):
    from trml_edge.export.tensorrt import build_engines
    from trml_edge.routing import ROUTES

    paths = []
    for kind in ("fp32", "fp16"):
        p = tmp_path / kind
        shutil.copytree(bundle(kind), p)
        build_engines(p, tf32=False)
        paths.append(p)
    rep = _profile(paths, tmp_path / "report", data=str(synth_data()), budget="acc2=0.05,mae=0.1", torch=True)
    ok = [r for r in _engine_rows(rep) if r["status"] == "OK"]
    assert {(r["bundle"], r["scenario"]) for r in ok} == {(p.name, s) for p in paths for s in ROUTES}
    for r in ok:
        lat = r["latency"]
        assert lat["p50_ms"] > 0 and lat["p50_ms"] <= lat["p99_ms"]
        assert set(r["graphs_run"]) <= set(lat["breakdown_ms"])  # every graph that ran has its own time
        assert lat["breakdown_within_tolerance"], lat
    engine_rows = rep["accuracy"]["engine_rows"]
    assert {(r["bundle"], r["scenario"]) for r in engine_rows} == {(p.name, s) for p in paths for s in ROUTES}
    assert np.isfinite([r["metrics"][rep["accuracy"]["headline_metric"]] for r in engine_rows]).all()
    assert rep["settings"]["recommendation_ranked_by"] == "tensorrt-engines"
    if rep["recommendation"]["status"] == "ok":
        assert rep["recommendation"]["ranked_by"] == "tensorrt-engines"


def test_engine_batches_stay_inside_the_profiles():
    """Default profiles (trml_edge/graphs.py): batch up to 64, frames up to 256; the image encoder sees
    batch x frames frames at once, so 8-frame clips fit 32 to a call and 64-frame clips 4."""
    from trml_edge.profile.engines import EnginePipeline, axis_limits

    b = load_bundle(bundle("fp32"))
    assert axis_limits(b)["batch"] == 64 and axis_limits(b)["frames"] == 256
    pipe = EnginePipeline(b, trt=None)  # nothing touches TensorRT before the first graph call
    assert pipe.max_batch(8) == 32 and pipe.max_batch(64) == 4 and pipe.max_batch(1) == 64
