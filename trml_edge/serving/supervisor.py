"""Keeps a running ``tritonserver``'s Python-backend models alive: a dead stub is detected and its model reloaded.

The Python backend runs every model instance in its own stub process. When a stub dies (an OOM kill, a
segfault in a native library, ``kill -9``), the backend in Triton 2.51 does not restart it: every request to
that model fails ("Stub process '<model>_0_0' is not healthy") while the model's and the server's readiness
still answer 200. The supervisor closes that gap from outside, through Triton's own model-control API
(server started with ``--model-control-mode=explicit``, docs: "Model Management", explicit mode):

1. it watches each stub process through a pidfd (Linux >= 5.3), so a death wakes it at once;
2. it unloads the broken model (``POST /v2/repository/models/<m>/unload``): its readiness, and the server's
   under ``--strict-readiness``, now say not ready, and the ensembles that use it are unavailable too, so the
   router answers requests that need it with a retryable UNAVAILABLE;
3. it loads the model again (``.../load``), which starts fresh stubs; a plain ``load`` of a model that is
   still marked loaded is a no-op in 2.51 (measured), hence the unload first.

Healthy models are not touched. A stub that ends because its model was unloaded through the repository API (by
the holder of the admin token) is not a death: its model is no longer READY in the repository index, and the
supervisor leaves it unloaded. Each detection and reload is one line through ``log``.
"""

from __future__ import annotations

import json
import os
import select
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

STUB = "triton_python_backend_stub"


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str  # the model's name: its folder in the repository
    instance: str  # Triton's instance name, e.g. text_encoder_0_0


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def stubs_of(server_pid: int) -> list[Stub]:
    """The live Python-backend stubs the server spawned, from /proc (their command line names the model)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat").decode(errors="replace")
        if not stat:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        state, ppid = fields[0], int(fields[1])
        if ppid != server_pid or state in ("Z", "X"):
            continue
        argv = _read(f"/proc/{entry}/cmdline").split(b"\0")
        if not argv or not argv[0].decode(errors="replace").endswith(STUB) or len(argv) < 3:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        model = Path(args[1]).parent.parent.name  # REPO/<model>/<version>/model.py
        instance = next((a for a in reversed(args) if a.startswith(f"{model}_")), model)
        out.append(Stub(int(entry), model, instance))
    return out


class Supervisor:
    """``Supervisor(server_pid, request, log).start()``; ``stop()`` before the server is stopped.

    ``request(path, data)`` sends one HTTP call to the server and returns (status, body).
    """

    def __init__(self, server_pid: int, request: Callable[[str, bytes | None, float], tuple[int, bytes]],
                 log: Callable[[str], None], poll_s: float = 0.5, reload_timeout_s: float = 120.0):
        self.pid, self.request, self.log = server_pid, request, log
        self.poll_s, self.reload_timeout_s = poll_s, reload_timeout_s
        self.events: list[dict] = []  # every detection and reload, for tests and reports
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fds: dict[int, tuple[int, Stub]] = {}  # pidfd -> (fd, stub)

    def start(self) -> Supervisor:
        self._watch(stubs_of(self.pid))
        self._thread = threading.Thread(target=self._run, name="trml-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        for fd, _ in list(self._fds.values()):
            os.close(fd)
        self._fds.clear()

    def _watch(self, stubs: list[Stub]) -> None:
        known = {s.pid for _, s in self._fds.values()}
        for s in stubs:
            if s.pid in known:
                continue
            try:
                fd = os.pidfd_open(s.pid)
            except ProcessLookupError:  # gone between the scan and now: the next scan sees it missing
                continue
            self._fds[fd] = (fd, s)

    def _dead(self, timeout: float) -> list[Stub]:
        """Stubs that exited (their pidfd is readable) within ``timeout`` seconds."""
        if not self._fds:
            self._stop.wait(timeout)
            return []
        poller = select.poll()
        for fd in self._fds:
            poller.register(fd, select.POLLIN)
        dead = []
        for fd, _ in poller.poll(timeout * 1000):
            fd_, stub = self._fds.pop(fd)
            os.close(fd_)
            dead.append(stub)
        return dead

    def _run(self) -> None:
        while not self._stop.is_set():
            dead = self._dead(self.poll_s)
            if self._stop.is_set():
                return
            if not dead:
                self._watch(stubs_of(self.pid))  # instances started later (a reload) are watched too
                continue
            for model in dict.fromkeys(s.model for s in dead):
                pids = ", ".join(f"{s.instance} pid {s.pid}" for s in dead if s.model == model)
                if self.state(model) not in ("READY", None):  # unloaded on purpose, through the repository API
                    self.log(f"model {model}: its stub process ended with an unload through the repository API; "
                             "not reloading it")
                    self.events.append({"event": "unloaded", "model": model, "time": time.time()})
                    continue
                t0 = time.monotonic()
                self.log(f"model {model}: its stub process died ({pids}); reloading it")
                self.events.append({"event": "detected", "model": model, "time": time.time()})
                ok, why = self.reload(model)
                took = time.monotonic() - t0
                self.events.append({"event": "reloaded" if ok else "reload_failed", "model": model,
                                    "time": time.time(), "seconds": took, "why": why})
                self.log(f"model {model}: reloaded in {took:.2f} s" if ok else
                         f"model {model}: reload failed after {took:.2f} s: {why}")
            self._watch(stubs_of(self.pid))

    def state(self, model: str) -> str | None:
        """The model's state in Triton's repository index (READY, UNLOADING, UNAVAILABLE...), None if unknown.
        A stub that dies by itself leaves its model READY (the gap this class closes); one ended by an unload
        leaves it UNLOADING or UNAVAILABLE."""
        try:
            status, body = self.request("/v2/repository/index", b"{}", 5.0)
            models = json.loads(body) if status == 200 else []
        except (OSError, ValueError):
            return None
        states = [m.get("state") for m in models if m.get("name") == model]
        return states[0] if states else None

    def reload(self, model: str) -> tuple[bool, str]:
        """Unload then load ``model`` through the repository API; (ok, Triton's error if not)."""
        for action in ("unload", "load"):
            if self._stop.is_set():
                return False, "supervisor stopped"
            try:
                status, body = self.request(f"/v2/repository/models/{model}/{action}", b"{}", self.reload_timeout_s)
            except OSError as e:
                return False, f"{action}: {e}"
            if status != 200:
                try:
                    why = json.loads(body).get("error", body.decode(errors="replace"))
                except ValueError:
                    why = body.decode(errors="replace")
                return False, f"{action} answered {status}: {why}"
        return True, ""
