"""One crash, one reload, with any number of instances: the supervisor on a real tritonserver.

A load of a model that is already loaded (the supervisor's own reload, an operator's ``load`` with the admin
token, an update) starts a new generation of stub processes and ends the old one; those ends are not crashes.
Here, through the real server:

* a fused repository with two ``trml`` and two ``trml_stream`` instances: one SIGKILL of each gives exactly one
  reload each, within 15 s, and none in the 30 s after, while clients keep sending (every request after the
  recovery succeeds, and equals the runtime's answer); an operator's load of changed files with the token in
  that window causes no reload either;
* a stub that dies while its model is LOADING (a second instance still initializing) is reloaded once the load
  has settled, not taken for an unload.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from export_fixtures import bundle, workdir
from serving_fixtures import sample_clips
from trml_edge.runtime import Pipeline
from trml_edge.serving.supervisor import stubs_of

TOL = 1e-5
RELOAD_S, QUIET_S = 15.0, 30.0


def _wait(cond, timeout: float, what: str, poll: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(poll)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


def _kill_one(srv, model: str):
    """SIGKILL one of ``model``'s stubs, and wait until it is gone; the stub."""
    victim = sorted((s for s in stubs_of(srv.proc.pid) if s.model == model), key=lambda s: s.instance)[-1]
    os.kill(victim.pid, signal.SIGKILL)
    _wait(lambda: not os.path.exists(f"/proc/{victim.pid}") or "Z" in Path(f"/proc/{victim.pid}/stat").read_text()
          .rsplit(")", 1)[-1].split()[0], 10, "the killed stub to end")
    return victim


@pytest.fixture(scope="module")
def two_instance_repo() -> Path:
    from trml_edge.serving.repository import ModelSettings, RepoConfig, build_repository
    from trml_edge.serving.stream_repo import StreamSettings

    cfg = RepoConfig(bundle=str(bundle("fp32")), out=str(workdir() / "repo_two_instances"), force=True,
                     router=ModelSettings(instances=2, max_batch_size=8))
    cfg.stream = StreamSettings(instances=2)
    return build_repository(cfg)


def test_one_kill_is_one_reload_with_two_instances_and_an_admin_load_is_none(two_instance_repo):
    from trml_edge.serving.client import TritonClient
    from trml_edge.serving.server import TritonServer
    from trml_edge.serving.stream_client import TritonStream

    clips = sample_clips()[:3]
    pipe = Pipeline(bundle("fp32"))
    cases = [(f, t) for f, t in clips] + [(None, t) for _, t in clips] + [(f, None) for f, _ in clips]
    want = [float(pipe.predict(f, t).output) for f, t in cases]
    lines: list[str] = []
    srv = TritonServer(two_instance_repo, supervise=True, log=lines.append).start()
    results: list[tuple[float, str, object]] = []  # (time, kind, output or exception)
    lock, stop = threading.Lock(), threading.Event()

    def clients(k: int) -> None:
        c, i = TritonClient(srv.url, timeout=30.0), k
        while not stop.is_set():
            f, t = cases[i % len(cases)]
            try:
                got = float(c.infer(f, t).output)
                got = got if abs(got - want[i % len(cases)]) <= TOL else AssertionError(f"case {i}: {got}")
            except Exception as e:  # judged below: only before the recovery may a request fail
                got = e
            with lock:
                results.append((time.monotonic(), "trml", got))
            i += 1
        c.close()

    def streams() -> None:  # short streams, one after another: a stream is never split across a reload here
        c = TritonClient(srv.url, timeout=30.0)
        while not stop.is_set():
            try:
                with TritonStream(c) as s:
                    for f, t in clips:
                        s.push(f[:2], t)
                got = 0.0
            except Exception as e:
                got = e
            with lock:
                results.append((time.monotonic(), "stream", got))
        c.close()

    threads = [threading.Thread(target=clients, args=(k,)) for k in range(3)] + [threading.Thread(target=streams)]
    events = srv.supervisor.events
    try:
        for th in threads:
            th.start()
        time.sleep(2.0)  # under load first
        recovered = {}
        for model in ("trml", "trml_stream"):
            _kill_one(srv, model)
            ev = _wait(lambda: [e for e in events if e["model"] == model and e["event"] == "reloaded"], RELOAD_S,
                       f"{model} reloaded after one of its two instances was killed")
            recovered[model] = time.monotonic()
            assert ev[0]["since_death"] < RELOAD_S
        t_quiet = time.monotonic()
        time.sleep(5.0)
        # an operator's load of changed files, with the token: a new generation of stubs, not a crash
        os.utime(two_instance_repo / "trml" / "1" / "model.py")
        before = {s.pid for s in stubs_of(srv.proc.pid) if s.model == "trml"}
        status, body = srv.request("/v2/repository/models/trml/load", b"{}", 120)
        assert status == 200, body
        _wait(lambda: not before & {s.pid for s in stubs_of(srv.proc.pid)}, 20,
              f"the old generation to end ({before} -> {stubs_of(srv.proc.pid)}, {events})")
        time.sleep(max(0.0, t_quiet + QUIET_S - time.monotonic()))
    finally:
        stop.set()
        for th in threads:
            th.join(60)
        srv.stop(timeout=2.0)
    kinds = [(e["model"], e["event"]) for e in events]
    assert kinds.count(("trml", "reloaded")) == 1 and kinds.count(("trml_stream", "reloaded")) == 1, kinds
    assert [k for k in kinds if k[1] in ("detected", "reload_failed", "unloaded")] == [
        ("trml", "detected"), ("trml_stream", "detected")], kinds
    assert ("trml", "replaced") in kinds  # the healthy instance's and the operator's old stubs, seen for what they are
    assert sum("reloading it" in ln for ln in lines) == 2, lines
    after = [(tm, kind, r) for tm, kind, r in results if tm > max(recovered.values()) + 0.5]
    assert len([r for _, kind, r in after if kind == "trml"]) > 50 and any(kind == "stream" for _, kind, _ in after)
    bad = [(kind, repr(r)[:200]) for _, kind, r in after if isinstance(r, Exception)]
    assert not bad, bad  # every request after the recovery, the operator's load included, succeeded


SLOW_MODEL = '''
import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        marker = json.loads(args["model_config"])["parameters"]["slow_marker"]["string_value"]
        if args["model_instance_name"].endswith("_1") and os.path.exists(marker):
            time.sleep(4.0)  # the second instance takes its time: the model stays LOADING meanwhile

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X")
                                                            .as_numpy())]) for r in requests]
'''


def test_a_stub_that_dies_while_its_model_loads_is_reloaded(tmp_path):
    from trml_edge.serving.server import TritonServer

    marker = tmp_path / "slow"
    (tmp_path / "repo" / "slow" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "slow" / "config.pbtxt").write_text(
        'name: "slow"\nbackend: "python"\nmax_batch_size: 0\n'
        'input { name: "X" data_type: TYPE_FP32 dims: [1] }\noutput { name: "Y" data_type: TYPE_FP32 dims: [1] }\n'
        'instance_group { count: 2 kind: KIND_CPU }\n'
        f'parameters {{ key: "slow_marker" value: {{ string_value: "{marker}" }} }}\n')
    (tmp_path / "repo" / "slow" / "1" / "model.py").write_text(SLOW_MODEL)
    lines: list[str] = []
    with TritonServer(tmp_path / "repo", supervise=True, log=lines.append) as srv:
        events = srv.supervisor.events
        assert srv.request("/v2/repository/models/slow/unload", b"{}", 60)[0] == 200
        _wait(lambda: any(e["event"] == "unloaded" for e in events), 20, "the unload to be seen as one")
        marker.touch()
        loader = threading.Thread(target=srv.request, args=("/v2/repository/models/slow/load", b"{}", 120))
        loader.start()
        _wait(lambda: {s.instance for s in stubs_of(srv.proc.pid) if s.model == "slow"} == {"slow_0_0", "slow_0_1"},
              10, "both new stubs")
        time.sleep(1.0)  # the supervisor's scan has seen them; instance 1 is still in its initialize
        assert srv.supervisor.state("slow") == "LOADING"
        (fast,) = [s for s in stubs_of(srv.proc.pid) if s.instance == "slow_0_0"]
        os.kill(fast.pid, signal.SIGKILL)
        loader.join(60)
        _wait(lambda: any(e["event"] == "reloaded" for e in events), 30, "a reload of the model once it loaded")
        assert [e["event"] for e in events if e["event"] != "unloaded"] == ["detected", "reloaded"], events
        assert any("slow: its stub process died (slow_0_0" in ln for ln in lines), lines
        # and it serves again, on both instances
        import numpy as np
        import tritonclient.http as httpclient

        c = httpclient.InferenceServerClient(srv.url)
        x = httpclient.InferInput("X", [1], "FP32")
        x.set_data_from_numpy(np.array([3.0], np.float32))
        assert [float(c.infer("slow", [x]).as_numpy("Y")[0]) for _ in range(4)] == [3.0] * 4
        c.close()
