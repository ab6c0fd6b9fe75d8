"""`trml-edge serve` and `trml-edge client` as a user runs them: real processes, real tritonserver."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from serving_fixtures import group_members, repository

CLI = [sys.executable, "-m", "trml_edge"]


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == pid:
                out.append((int(p), Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def test_serve_reloads_a_dead_model_and_exits_when_tritonserver_dies(tmp_path):
    err_path = tmp_path / "serve.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([*CLI, "serve", str(repository()), "--http-port", "0", "--grpc-port", "0",
                                 "--metrics-port", "0"], stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        deadline = time.monotonic() + 300
        line = ""
        while "tritonserver ready" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, err_path.read_text()
            line = proc.stdout.readline()
        assert proc.stdout.readline().startswith("admin APIs (model-repository, shared-memory, trace, logging): "
                                                 "restricted to this run's token")
        assert proc.stdout.readline().startswith("serving version 1 of the repository")
        assert proc.stdout.readline().strip() == "layout: fused (the routers run every graph in process)"
        server = next(p for p, cmd in _children(proc.pid) if "bin/tritonserver" in cmd)
        stub = next(p for p, cmd in _children(server) if "trml_0_0" in cmd)
        os.kill(stub, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not re.search(r"model trml: reloaded in [0-9.]+ s", err_path.read_text()):
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.1)
        text = err_path.read_text()
        assert re.search(r"model trml: its stub process died \(trml_0_0 pid \d+\); reloading", text)

        os.kill(server, signal.SIGKILL)
        t0 = time.monotonic()
        rc = proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 2 and took < 5.0, (rc, took)
    last = err_path.read_text().strip().splitlines()[-1]
    assert last.startswith("error: tritonserver stopped by itself (killed by signal 9)"), last
    assert "Traceback" not in err_path.read_text()
    end = time.monotonic() + 5
    while group_members(server) and time.monotonic() < end:
        time.sleep(0.1)
    assert group_members(server) == [], "stubs of the dead server are left behind"


def test_client_bad_frames_and_video_are_one_line_each(tmp_path):
    not_video = tmp_path / "clip.mp4"
    not_video.write_text("this is not a video\n")
    empty_dir = tmp_path / "frames"
    empty_dir.mkdir()
    bad_image = tmp_path / "bad"
    bad_image.mkdir()
    (bad_image / "000.png").write_bytes(b"not a png")
    cases = [(["--frames", "/dev/null"], r"--frames /dev/null: not a folder; send --video FILE.mp4 or --frames"),
             (["--frames", "/nonexistent"], r"--frames /nonexistent: no such folder; send --video"),
             (["--frames", str(empty_dir)], r"holds no \.png or \.jpg frames; send --video"),
             (["--frames", str(bad_image)], r"000\.png is not a readable image"),
             (["--video", str(not_video)], r"--video .*clip\.mp4 is not a video this client can decode .*; send"),
             (["--video", str(tmp_path / "missing.mp4")], r"--video .*missing\.mp4: no such file")]
    for args, pattern in cases:
        res = subprocess.run([*CLI, "client", "127.0.0.1:9", "--text", "hi", *args], capture_output=True, text=True,
                             timeout=120)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, (args, res.returncode, res.stderr)
        assert re.search(pattern, lines[0]) and lines[0].startswith("error: "), (args, lines[0])
