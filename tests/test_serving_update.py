"""`trml-edge triton update / rollback / versions` through a real tritonserver, in the fused and the ensemble
layout, with clients sending every scenario the whole time.

Bundle A is the trained FP32 test bundle, bundle B the same architecture with random weights: every answer
tells which bundle computed it (each is checked against that bundle's own runtime), so a mixed or stale
answer cannot pass for a right one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from export_fixtures import bundle, random_run, workdir
from trml_edge.errors import StreamRestartError

FRAMES = np.random.default_rng(7).integers(0, 256, (8, 48, 64, 3), dtype=np.uint8)
CASES = [(FRAMES, "a warm and funny film"), (None, "a warm and funny film"), (FRAMES, None)]


@cache
def bundle_b() -> Path:
    from trml_edge.export.exporter import export_bundle
    from trml_edge.export.recipe import ExportConfig

    out = workdir() / "bundle_update_b"
    export_bundle(ExportConfig(run=str(random_run()), out=str(out)))
    return out


@cache
def answers(path: Path) -> list[float]:
    from trml_edge.runtime import Pipeline

    p = Pipeline(path)
    return [float(p.predict(*c).output) for c in CASES]


def which(i: int, output: float) -> str:
    a, b = answers(bundle("fp32"))[i], answers(bundle_b())[i]
    return "A" if abs(output - a) <= 1e-4 else "B" if abs(output - b) <= 1e-4 else "?"


class Load:
    """``n`` clients sending the three scenarios in turn; every answer labelled A, B or ? (neither)."""

    def __init__(self, url: str, n: int = 4):
        from trml_edge.serving.client import TritonClient

        self.url, self.stop, self.results, self.lock = url, threading.Event(), [], threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(k, TritonClient(url, timeout=60)), daemon=True)
                        for k in range(n)]

    def _loop(self, k: int, client) -> None:
        i = k
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                r = client.infer(*CASES[i % 3])
                got = (t, time.monotonic(), which(i % 3, float(r.output)), "")
            except Exception as e:  # noqa: BLE001 - every failure is recorded and asserted on
                got = (t, time.monotonic(), "failed", f"{type(e).__name__}: {e}")
            with self.lock:
                self.results.append(got)
            i += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        time.sleep(1.0)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(1.0)
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def since(self, t0: float, t1: float = float("inf")) -> Counter:
        return Counter(who for start, _, who, _ in self.results if t0 <= start < t1)

    def failures(self) -> list:
        return [r for r in self.results if r[2] == "failed"]


def start(layout: str, name: str):
    from trml_edge.serving.repository import RepoConfig, build_repository
    from trml_edge.serving.security import ServerSecurity
    from trml_edge.serving.server import TritonServer

    answers(bundle("fp32")), answers(bundle_b())  # before any client thread asks
    repo = build_repository(RepoConfig(bundle=str(bundle("fp32")), out=str(workdir() / f"repo_update_{name}"),
                                       layout=layout, force=True))
    token = workdir() / f"token_{name}"
    lines: list[str] = []
    srv = TritonServer(repo, supervise=True, log=lines.append, security=ServerSecurity(admin_token_file=token))
    srv.start()
    srv.lines = lines
    return srv, repo, token


def cli(*args, timeout=300):
    bounded = ["--load-timeout", "60"] if args[0] in ("update", "rollback") else []  # a stuck load fails fast
    return subprocess.run([sys.executable, "-m", "trml_edge", "triton", *map(str, args), *bounded],
                          capture_output=True, text=True, timeout=timeout)


def metric(srv, name: str) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(srv.metrics_url, timeout=5).read().decode()
    return {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name + "{")}


@pytest.mark.parametrize("layout", ["fused", "ensemble"])
def test_update_under_load_then_rollback(layout, tmp_path):
    """A -> B with four clients: no failed request, every answer A's or B's, every request that starts after
    `update` returned answered by B; the supervisor reloads nothing; `versions` says so; `rollback` goes back
    to A the same way."""
    srv, repo, token = start(layout, layout)
    try:
        with Load(srv.url) as load:
            t0 = time.monotonic()
            r = cli("update", repo, bundle_b(), "--url", srv.url, "--admin-token-file", token, "--probation", "2")
            t1 = time.monotonic()
            assert r.returncode == 0, r.stderr
            time.sleep(1.5)
        assert "updated: version 2" in r.stdout and "probation passed" in r.stderr, r.stderr
        assert not load.failures(), load.failures()[:3]
        assert load.since(0, t0) == Counter({"A": load.since(0, t0)["A"]}) and load.since(0, t0)["A"] > 10
        assert set(load.since(t0, t1)) <= {"A", "B"}, load.since(t0, t1)
        assert set(load.since(t1)) == {"B"}, load.since(t1)
        assert not [e for e in srv.supervisor.events if e["event"] in ("detected", "reloaded")], srv.supervisor.events
        state = json.loads((repo / "trml_versions.json").read_text())
        assert state["serving"] == 2 and state["versions"]["1"]["state"] == "retired"
        assert state["versions"]["2"]["bundle"]["path"] == str(bundle_b().resolve())
        assert "specific" in (repo / "trml" / "config.pbtxt").read_text()  # the committed version on disk
        assert "versions: 2" in (repo / "trml" / "config.pbtxt").read_text()
        if layout == "ensemble":  # B's graphs under their version's names; A's unloaded, kept for a rollback
            assert (repo / "image_encoder__v2" / "config.pbtxt").is_file() and (repo / "image_encoder").is_dir()
            ready = {m["name"] for m in srv.models() if m.get("state") == "READY"}
            assert "image_encoder__v2" in ready and "image_encoder" not in ready
        assert metric(srv, "trml_repository_version") == {'trml_repository_version{model="trml"}': 2.0,
                                                          'trml_repository_version{model="trml_stream"}': 2.0}

        v = cli("versions", repo, "--url", srv.url)
        assert v.returncode == 0, v.stderr
        lines = v.stdout.splitlines()
        assert lines[0].startswith("v1") and "retired" in lines[0] and ", not loaded" in lines[0]
        assert lines[1].startswith("v2") and "SERVING" in lines[1] and ", loaded" in lines[1]

        with Load(srv.url) as load:
            t0 = time.monotonic()
            r = cli("rollback", repo, "--url", srv.url, "--admin-token-file", token, "--probation", "1")
            t1 = time.monotonic()
            assert r.returncode == 0, r.stderr
        assert "rolled back: version 1 serves" in r.stdout
        assert not load.failures(), load.failures()[:3]
        assert set(load.since(t1)) == {"A"} and set(load.since(0, t0)) == {"B"}
        state = json.loads((repo / "trml_versions.json").read_text())
        assert state["serving"] == 1 and state["versions"]["2"]["state"] == "rolled_back"
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def fused():
    srv, repo, token = start("fused", "refusals")
    yield srv, repo, token
    srv.stop(timeout=2.0)  # a version whose stub was killed holds Triton's graceful exit for 10 s: not under test


def _unchanged(repo: Path, before: dict) -> None:
    state = json.loads((repo / "trml_versions.json").read_text())
    assert state["serving"] == before["serving"] and set(state["versions"]) == set(before["versions"])
    assert not (repo / "trml" / "2").exists() and not list(repo.glob(".stage-*"))


def test_refused_before_the_server_is_touched(fused, tmp_path):
    """A corrupt copy (a graph's bytes changed: its sha256 no longer matches), a bundle whose graph is not a
    model although its manifest's hashes match it, and a classification head for a regression server: each
    refused in one line with exit status 2, A serving throughout with no failed request, nothing on disk."""
    from trml_edge.runtime.bundle import MANIFEST, sha256_file
    from serving_fixtures import classification_bundle

    srv, repo, token = fused
    before = json.loads((repo / "trml_versions.json").read_text())
    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundle_b(), corrupt)
    graph = next(corrupt.rglob("image_encoder*.onnx"))
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))

    garbage = tmp_path / "garbage"
    shutil.copytree(bundle_b(), garbage)
    graph = next(garbage.rglob("image_encoder*.onnx"))
    graph.write_bytes(b"this is not an ONNX graph" * 100)
    manifest = json.loads((garbage / MANIFEST).read_text())
    for entry in manifest["graphs"].values():
        if (garbage / entry["file"]) == graph:
            entry["sha256"] = sha256_file(graph)
    (garbage / MANIFEST).write_text(json.dumps(manifest, indent=2))

    cases = [(corrupt, "sha256"), (garbage, "could not answer the golden requests in a scratch process"),
             (classification_bundle(), "changes the contract clients see")]
    with Load(srv.url, n=2) as load:
        for path, says in cases:
            r = cli("update", repo, path, "--url", srv.url, "--admin-token-file", token, "--probation", "1")
            err = r.stderr.strip().splitlines()
            assert r.returncode == 2 and says in err[-1] and "update refused" in err[-1], (path, r.stderr)
            _unchanged(repo, before)
    assert not load.failures() and set(load.since(0)) == {"A"}, (load.failures()[:3], load.since(0))
    r = cli("update", repo, bundle_b(), "--url", srv.url, "--admin-token-file", tmp_path / "none")
    assert r.returncode == 2 and "--admin-token-file" in r.stderr.strip().splitlines()[-1]


def test_a_bundle_that_answers_wrong_is_rolled_back_within_the_probation(fused, tmp_path):
    """The served answers do not match the golden ones (here: expected answers that are B's plus 0.5, as a
    deployment whose graphs are not the checked bundle would answer): rolled back within the probation, with a
    log line, the rollback metric and exit status 3; no failed request; A serves again, B's files are gone."""
    from trml_edge.serving.golden import compute

    srv, repo, token = fused
    golden = compute(bundle_b())
    for a in golden["answers"].values():
        a["output"] = [x + 0.5 for x in a["output"]]
    (tmp_path / "wrong.json").write_text(json.dumps(golden))
    with Load(srv.url) as load:
        t0 = time.monotonic()
        r = cli("update", repo, bundle_b(), "--url", srv.url, "--admin-token-file", token, "--probation", "5",
                "--golden", tmp_path / "wrong.json")
        t1 = time.monotonic()
    assert r.returncode == 3, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "update rolled back" in last and "answered wrong" in last and "version 1 serves" in last, last
    assert "rolled back to version 1" in r.stderr
    assert t1 - t0 < 30
    assert not load.failures(), load.failures()[:3]
    assert set(load.since(t1)) == {"A"}
    state = json.loads((repo / "trml_versions.json").read_text())
    assert state["serving"] == 1 and state["rollbacks"] == 1
    failed = max(state["versions"], key=int)
    assert state["versions"][failed]["state"] == "rolled_back" and "answered wrong" in state["versions"][failed]["why"]
    assert not (repo / "trml" / failed).exists()
    assert metric(srv, "trml_update_rollbacks") == {'trml_update_rollbacks{model="trml"}': 1.0,
                                                    'trml_update_rollbacks{model="trml_stream"}': 1.0}


def _judged(srv, events: int, pid: int, seconds: float = 30.0) -> list[str]:
    """The supervisor's events about ``pid`` since event number ``events``, once there is one (it judges a
    death once the update's lock is gone), or none after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        judged = [e["event"] for e in srv.supervisor.events[events:] if e.get("pid") == pid]
        if judged or time.monotonic() >= deadline:
            return judged
        time.sleep(0.2)


def test_a_crash_during_the_probation_is_a_rollback_not_a_supervisor_reload(fused):
    """The new version's router process is killed during its probation: the update rolls back (the
    supervisor, which sees the update's lock, reloads nothing), and A serves."""
    from trml_edge.serving.supervisor import stubs_of
    from trml_edge.serving.update import RolledBack, UpdateConfig, update

    srv, repo, token = fused
    state = json.loads((repo / "trml_versions.json").read_text())
    new = str(max(int(k) for k in state["versions"]) + 1)
    out: dict = {}

    def run():
        try:
            update(UpdateConfig(repo=repo, bundle=bundle_b(), url=srv.url, admin_token_file=token, probation_s=8))
        except RolledBack as e:
            out["error"] = str(e)

    events = len(srv.supervisor.events)
    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 60
    victim = None
    while victim is None and time.monotonic() < deadline:  # once the new version serves: its probation
        if ("trml", new, "READY") in {(m["name"], m.get("version"), m.get("state")) for m in srv.models()}:
            victim = next((s for s in stubs_of(srv.proc.pid) if s.model == "trml" and s.version == new), None)
        time.sleep(0.1)
    assert victim is not None
    time.sleep(0.5)
    os.kill(victim.pid, signal.SIGKILL)
    t.join(120)
    err = out.get("error", "")  # the death is seen by the process watch or by the golden request it breaks
    assert "failed its probation" in err and ("died during the probation (trml_0_0)" in err or "Stub process "
                                              "'trml_0_0' is not healthy" in err) and "version 1 serves" in err, out
    assert _judged(srv, events, victim.pid) == ["version_retired"], (srv.supervisor.events[events:], srv.lines[-10:])
    assert not [e for e in srv.supervisor.events[events:] if e["event"] in ("detected", "reloaded")], \
        srv.supervisor.events[events:]
    from trml_edge.serving.client import TritonClient

    assert which(0, float(TritonClient(srv.url).infer(*CASES[0]).output)) == "A"


def _update_with_a_stuck_first_stub(srv, repo, token, attempts: int) -> tuple[dict, int, float]:
    """An update (--load-timeout 8) whose first stub of the new version's ``trml`` router never finishes its
    initialize: the test stops it (SIGSTOP) once it runs its model's code (ONNX Runtime mapped: the router
    builds its sessions in initialize), as a deadlock in model code would; Triton's load then waits for it
    for ever. (what the update returned or raised, the stuck stub's pid, seconds from the stop to the end)"""
    from trml_edge.serving.supervisor import stubs_of
    from trml_edge.serving.update import RolledBack, UpdateConfig, update

    state = json.loads((repo / "trml_versions.json").read_text())
    new = str(max(int(k) for k in state["versions"]) + 1)
    out: dict = {"log": [], "new": new}

    def run():
        try:
            out["version"] = update(UpdateConfig(repo=repo, bundle=bundle_b(), url=srv.url, admin_token_file=token,
                                                 probation_s=1, load_timeout_s=8, load_attempts=attempts,
                                                 log=out["log"].append))
        except RolledBack as e:
            out["error"] = str(e)

    def in_model_code(pid: int) -> bool:
        try:
            return "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            return False

    t = threading.Thread(target=run)
    t.start()
    stuck = None
    deadline = time.monotonic() + 120
    while stuck is None and t.is_alive() and time.monotonic() < deadline:
        stub = next((s for s in stubs_of(srv.proc.pid) if s.model == "trml" and s.version == new), None)
        if stub is not None and in_model_code(stub.pid):
            os.kill(stub.pid, signal.SIGSTOP)
            stuck = stub.pid
        else:
            time.sleep(0.005)
    assert stuck is not None, out
    t0 = time.monotonic()
    t.join(180)
    assert not t.is_alive()
    ended = [line for line in out["log"] if "did not finish within --load-timeout 8 s (attempt 1 of" in line]
    assert len(ended) == 1 and f"ended the processes it started: trml_0_0 (pid {stuck})" in ended[0], out
    return out, stuck, time.monotonic() - t0


def _gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def test_a_load_that_never_finishes_is_ended_at_the_bound_and_tried_again_or_rolled_back(fused):
    """The new version's router never finishes its initialize: at --load-timeout the update ends the
    processes that load started (Triton then gives the load up) and tries once more, which here succeeds (B
    serves); with one attempt it rolls back instead. No failed request throughout, and the supervisor reloads
    nothing."""
    from trml_edge.serving.supervisor import stubs_of
    from trml_edge.serving.update import UpdateConfig, rollback

    srv, repo, token = fused
    events = len(srv.supervisor.events)
    with Load(srv.url, n=2) as load:
        out, stuck, took = _update_with_a_stuck_first_stub(srv, repo, token, attempts=2)
        t1 = time.monotonic()
        time.sleep(1.0)
    assert "error" not in out and out["version"] == int(out["new"]), out
    assert 8 <= took < 90, took  # the bound, Triton's give-up, the second load and a 1 s probation
    assert _gone(stuck)
    assert not load.failures(), load.failures()[:3]
    assert set(load.since(0)) <= {"A", "B"} and set(load.since(t1)) == {"B"}, (load.since(0), load.since(t1))
    assert rollback(UpdateConfig(repo=repo, bundle=None, url=srv.url, admin_token_file=token, probation_s=0.5)) == 1

    with Load(srv.url, n=2) as load:
        out, stuck, took = _update_with_a_stuck_first_stub(srv, repo, token, attempts=1)
    err = out.get("error", "")
    assert "could not be switched to" in err and "did not finish within --load-timeout 8 s in 1 attempt" in err \
        and f"pid {stuck}" in err and "version 1 serves" in err, out
    assert 8 <= took < 60, took
    assert _gone(stuck)
    assert not load.failures(), load.failures()[:3]
    assert set(load.since(0)) == {"A"}, load.since(0)
    state = json.loads((repo / "trml_versions.json").read_text())
    assert state["serving"] == 1 and state["versions"][out["new"]]["state"] == "rolled_back"
    assert not [s for s in stubs_of(srv.proc.pid) if s.version == out["new"]]
    assert _judged(srv, events, stuck) == ["version_retired"], (srv.supervisor.events[events:], srv.lines[-10:])
    assert not [e for e in srv.supervisor.events[events:] if e["event"] in ("detected", "reloaded")], \
        (srv.supervisor.events[events:], srv.lines[-30:])


def test_an_open_stream_across_an_update_is_told_to_restart(fused, tmp_path):
    """A stream begun on A: after the switch its next update gets StreamRestartError (retryable, says why),
    never a window scored half by A and half by B; a new stream is answered by B; `client --stream` restarts
    its stream by itself and finishes."""
    from trml_edge.data.video import write_mp4
    from trml_edge.serving.client import TritonClient
    from trml_edge.serving.stream_client import TritonStream
    from trml_edge.serving.update import UpdateConfig, update

    srv, repo, token = fused
    client = TritonClient(srv.url)
    s = TritonStream(client)
    first = s.push(frames=FRAMES[:4], text=CASES[0][1])
    write_mp4(tmp_path / "clip.mp4", FRAMES.repeat(3, axis=0), fps=4)  # 24 frames: 6 s at --realtime
    streamer = subprocess.Popen([sys.executable, "-m", "trml_edge", "client", srv.url, "--stream",
                                 str(tmp_path / "clip.mp4"), "--fps", "4", "--realtime", "--text", "live"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    version = update(UpdateConfig(repo=repo, bundle=bundle_b(), url=srv.url, admin_token_file=token, probation_s=1))
    with pytest.raises(StreamRestartError, match="no longer holds this stream"):
        s.push(frames=FRAMES[4:])
    assert StreamRestartError.retryable and s.ended
    with TritonStream(client) as again:
        r = again.push(frames=FRAMES, text=CASES[0][1])
    assert which(0, float(r.output)) == "B" and which(0, float(first.output)) != "B"
    out, err = streamer.communicate(timeout=120)
    assert streamer.returncode == 0, err
    assert "restarting the stream from this frame" in err and len(out.splitlines()) == 24, (out, err)
    # back to A for the next tests of this module
    from trml_edge.serving.update import rollback

    assert version > 1 and rollback(UpdateConfig(repo=repo, bundle=None, url=srv.url, admin_token_file=token,
                                                 probation_s=0.5)) < version


def test_a_crash_between_staging_and_switching_leaves_the_old_version_serving(tmp_path):
    """What an update killed after staging (power loss) leaves on disk: version 2 staged beside 1. `serve`
    restarted on it serves version 1, reports the staged one, and answers as A."""
    from trml_edge.serving.client import TritonClient
    from trml_edge.serving.server import TritonServer
    from trml_edge.serving.update import Updater, UpdateConfig

    srv, repo, token = start("fused", "crash")
    try:
        u = Updater(UpdateConfig(repo=repo, bundle=bundle_b(), url=srv.url, admin_token_file=token))
        b, golden = u.check()
        assert u.stage(b, golden) == 2  # ... and here the update's process dies
        assert (repo / "trml" / "2" / "router.json").is_file()
    finally:
        srv.stop()
    again = TritonServer(repo, supervise=True).start()
    try:
        assert again.serving_version == 1
        assert any("version 2 was staged by an update that did not finish" in n for n in again.version_notes)
        loaded = {(m["name"], m["version"]) for m in again.models() if m.get("state") == "READY"}
        assert ("trml", "1") in loaded and ("trml", "2") not in loaded
        assert which(0, float(TritonClient(again.url).infer(*CASES[0]).output)) == "A"
    finally:
        again.stop()
    r = cli("versions", repo)
    assert r.returncode == 0 and "v2" in r.stdout and "staged" in r.stdout.splitlines()[1]


def test_a_repository_without_versions_is_refused_with_the_fix(tmp_path):
    """A repository from before versions were recorded: update refuses in one line, naming the rebuild."""
    from trml_edge.serving.repository import RepoConfig, build_repository

    repo = build_repository(RepoConfig(bundle=str(bundle("fp32")), out=str(tmp_path / "old"), force=True))
    (repo / "trml_versions.json").unlink()
    (tmp_path / "token").write_text("x")
    r = cli("update", repo, bundle_b(), "--url", "127.0.0.1:9", "--admin-token-file", tmp_path / "token")
    assert r.returncode == 2 and "rebuild it with `trml-edge triton build`" in r.stderr.strip().splitlines()[-1]
