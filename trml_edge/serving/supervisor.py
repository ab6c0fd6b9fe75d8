"""Keeps a running ``tritonserver``'s Python-backend models alive: a crashed stub is detected and its model
reloaded, once per crash, whatever the number of instances.

The Python backend runs every model instance in its own stub process. When a stub dies (an OOM kill, a
segfault in a native library, ``kill -9``), the backend in Triton 2.51 does not restart it: the requests that
reach that instance fail ("Stub process '<model>_0_0' is not healthy") while the model's and the server's
readiness still answer 200. The supervisor closes that gap from outside, through Triton's own model-control
API (server started with ``--model-control-mode=explicit``, docs: "Model Management", explicit mode):

1. it watches each stub process through a pidfd (Linux >= 5.3), so a death wakes it at once;
2. it judges the death. Not every stub that ends has crashed: a load of a model that is already loaded (the
   supervisor's own reload, an operator's ``load`` of changed files, an update) starts a new generation of
   stubs, one per instance, and ends the old generation once the new one serves (measured on 2.51: the old
   stubs end 1.5-3 s after the new ones start). So a dead stub is

   * **replaced** when a live stub of the same model and instance name started after it;
   * **retired** when the supervisor's own reload replaced it (its pid was recorded before the reload);
   * **unloaded** when its model is no longer loaded (an ``unload`` through the repository API, by the holder
     of the admin token): left alone;
   * **retired by a version switch** when the version it served is no longer loaded while another version of
     the model is (``triton update`` and ``rollback``), or when the repository's version record says an update
     left that version (rolled back, retired: Triton can list a crashed generation as UNLOADING for minutes);
     each version among the dead is judged on its own; and while an update holds the repository's lock
     (``REPO/.trml-update.lock``), no death is judged: the update rolls back a crash of its new version;
   * otherwise, once the model's state has settled (a model LOADING or UNLOADING is waited for), a **crash**
     of a model that is READY.

3. it reloads a crashed model *in the background*: a ``load`` whose config is the model's live config with one
   parameter changed (``trml_supervisor_reload``, a counter), which Triton treats as a new configuration: it
   starts a new generation of instances while the old one keeps its place, then swaps them (a ``load`` of a model
   that is still loaded with the same config does nothing, measured). The model never leaves the repository,
   so clients never see Triton's 404 "has no available versions" that an unload-then-load showed; the crashed
   instance answers its 500 until the swap. The healthy instances' old stubs end with the swap, and are
   retired, not read as new crashes (the loop a 2-instance model fell into: 43 reloads in 20 s after one kill).

One more trap, measured on 2.51: a generation with a crashed instance that had a request does not finish
unloading after the swap, so its healthy stubs stay alive (holding their memory: 0.2-1 GB each for a fused
router) and every later unload of that model waits behind it. The supervisor ends such a retired stub once the
new generation has served ``LINGER_S`` seconds and the old stub has been idle (no CPU time) for a second; after
that, Triton completes the old unload and later loads swap normally.

A reload that fails is retried with a capped exponential backoff (``RETRY_S``), up to ``max_attempts``; each
detection, reload and decision is one line through ``log`` and an entry of ``events``.
"""

from __future__ import annotations

import json
import os
import select
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from trml_edge.errors import ServingError
from trml_edge.serving.versions import read_state

STUB = "triton_python_backend_stub"
RELOAD_PARAMETER = "trml_supervisor_reload"  # the config parameter a background reload changes
RETRY_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # waits between failed reloads of one model
SETTLE_POLL_S = 0.25  # how often a LOADING or UNLOADING model's state is read again
LINGER_S = 10.0  # a retired stub still alive this long after the swap, and idle, is ended
LINGER_MAX_S = 60.0  # ... and ended at this age even if it is not idle


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str  # the model's name: its folder in the repository
    instance: str  # Triton's instance name, e.g. text_encoder_0_0
    start: int = 0  # start time in clock ticks after boot (/proc/PID/stat field 22): orders the generations
    version: str = ""  # the model version it serves: its folder REPO/<model>/<version>/


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
        fields = stat.rsplit(")", 1)[-1].split()  # fields[0] is field 3 of proc(5): state
        state, ppid = fields[0], int(fields[1])
        if ppid != server_pid or state in ("Z", "X"):
            continue
        argv = _read(f"/proc/{entry}/cmdline").split(b"\0")
        if not argv or not argv[0].decode(errors="replace").endswith(STUB) or len(argv) < 3:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        model_file = Path(args[1])  # REPO/<model>/<version>/model.py
        model = model_file.parent.parent.name
        instance = next((a for a in reversed(args) if a.startswith(f"{model}_")), model)
        out.append(Stub(int(entry), model, instance, int(fields[19]), model_file.parent.name))
    return out


def successor(dead: Stub, live: list[Stub]) -> Stub | None:
    """The live stub that took ``dead``'s place: same model and instance, started after it (a later load)."""
    later = [s for s in live if s.model == dead.model and s.instance == dead.instance and s.pid != dead.pid
             and (s.start, s.pid) > (dead.start, dead.pid) and s.version == dead.version]
    return min(later, key=lambda s: (s.start, s.pid)) if later else None


@dataclass
class _Case:
    """A model with dead stubs that no later load has replaced yet: being judged, reloaded or retried."""

    dead: list[Stub]
    since: float  # monotonic time of the first death
    attempts: int = 0
    next_at: float = 0.0
    detected: bool = False  # the crash line was written
    settle_until: float = field(default=0.0)


class Supervisor:
    """``Supervisor(server_pid, request, log).start()``; ``stop()`` before the server is stopped.

    ``request(path, data, timeout)`` sends one HTTP call to the server (with the admin token) and returns
    (status, body).
    """

    def __init__(self, server_pid: int, request: Callable[[str, bytes | None, float], tuple[int, bytes]],
                 log: Callable[[str], None], poll_s: float = 0.5, reload_timeout_s: float = 120.0,
                 max_attempts: int = len(RETRY_S) + 1, update_lock: Path | None = None):
        self.pid, self.request, self.log = server_pid, request, log
        self.update_lock = update_lock  # while `triton update` holds it, deaths are judged after the update
        self.poll_s, self.reload_timeout_s, self.max_attempts = poll_s, reload_timeout_s, max_attempts
        self.events: list[dict] = []  # every judgement and reload, for tests and reports
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fds: dict[int, Stub] = {}  # pidfd -> the stub it watches
        self._retired: dict[int, _Retired] = {}  # pid -> a stub the supervisor's own reload replaced
        self._cases: dict[str, _Case] = {}  # model -> its unresolved deaths
        self._generation = 0

    def start(self) -> Supervisor:
        self._watch(stubs_of(self.pid))
        self._thread = threading.Thread(target=self._run, name="trml-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        for fd in list(self._fds):
            os.close(fd)
        self._fds.clear()

    def _event(self, event: str, model: str, **extra) -> None:
        self.events.append({"event": event, "model": model, "time": time.time(), **extra})

    def _watch(self, stubs: list[Stub]) -> None:
        # a retired pid that is gone is forgotten long before the kernel could give it to a new process
        self._retired = {p: r for p, r in self._retired.items() if os.path.exists(f"/proc/{p}")}
        known = {s.pid for s in self._fds.values()}
        for s in stubs:
            if s.pid in known or s.pid in self._retired:
                continue
            try:
                fd = os.pidfd_open(s.pid)
            except ProcessLookupError:  # gone between the scan and now: a later load replaced it, or it crashed
                continue
            self._fds[fd] = s

    def _dead(self, timeout: float) -> list[Stub]:
        """Stubs that exited (their pidfd is readable) within ``timeout`` seconds."""
        if not self._fds:
            self._stop.wait(timeout)
            return []
        poller = select.poll()
        for fd in self._fds:
            poller.register(fd, select.POLLIN)
        dead = []
        for fd, _ in poller.poll(max(0.0, timeout) * 1000):
            stub = self._fds.pop(fd)
            os.close(fd)
            dead.append(stub)
        return dead

    def _run(self) -> None:
        while not self._stop.is_set():
            due = min((c.next_at for c in self._cases.values()), default=None)
            wait = self.poll_s if due is None else min(self.poll_s, due - time.monotonic())
            dead = self._dead(wait)
            if self._stop.is_set():
                return
            for stub in dead:
                if self._retired.pop(stub.pid, None) is not None:  # replaced by our own reload: expected
                    continue
                case = self._cases.setdefault(stub.model, _Case([], time.monotonic()))
                case.dead.append(stub)
            self._watch(stubs_of(self.pid))  # instances started later (a reload, a load) are watched too
            self._end_lingering()
            now = time.monotonic()
            for model in [m for m, c in self._cases.items() if c.next_at <= now]:
                if self._stop.is_set():
                    return
                self._judge(model, self._cases[model])

    def _judge(self, model: str, case: _Case) -> None:
        """Decide what the unresolved deaths of ``model`` were, and reload it if they were a crash."""
        if update_running(self.update_lock):  # the update switches versions and rolls back a crash itself
            case.next_at = time.monotonic() + SETTLE_POLL_S
            return
        live = stubs_of(self.pid)
        replaced = [s for s in case.dead if successor(s, live) is not None]
        for s in replaced:  # a later load took their place: an operator's, an update's, or ours
            self._event("replaced", model, instance=s.instance, pid=s.pid)
        case.dead = [s for s in case.dead if s not in replaced]
        if not case.dead:
            del self._cases[model]
            return
        done = self._update_versions()
        for version in sorted({s.version for s in case.dead}):  # each version judged on its own
            if version in done or self.status(model, version)[0] == "RETIRED":  # an update's (see _update_versions)
                for s in [s for s in case.dead if s.version == version]:
                    self._event("version_retired", model, instance=s.instance, pid=s.pid, version=s.version)
                case.dead = [s for s in case.dead if s.version != version]
        if not case.dead:
            del self._cases[model]
            return
        versions = {s.version for s in case.dead}
        state, reason = self.status(model, versions.pop() if len(versions) == 1 else None)
        if state in ("LOADING", "UNLOADING"):  # a load or unload is under way: judge once it is over
            case.settle_until = case.settle_until or time.monotonic() + self.reload_timeout_s
            if time.monotonic() < case.settle_until:
                case.next_at = time.monotonic() + SETTLE_POLL_S
                return
        if state is None:  # the index did not answer (a busy server): ask again shortly
            case.next_at = time.monotonic() + SETTLE_POLL_S
            return
        pids = ", ".join(f"{s.instance} pid {s.pid}" for s in case.dead)
        if state != "READY":
            del self._cases[model]
            if reason in (None, "", "unloaded"):  # unloaded on purpose, through the repository API
                self.log(f"model {model}: its stub process ended with an unload through the repository API "
                         f"({pids}); not reloading it")
                self._event("unloaded", model)
            else:  # a load (not ours) failed: the operator's to fix, not a crash to reload in a loop
                self.log(f"model {model}: its stub process ended ({pids}) and the model is {state}: {reason}; "
                         "not reloading it (load it again once fixed)")
                self._event("unavailable", model, why=reason)
            return
        if not case.detected:
            case.detected = True
            self.log(f"model {model}: its stub process died ({pids}); reloading it")
            self._event("detected", model, instances=[s.instance for s in case.dead])
        self._reload(model, case)

    def _reload(self, model: str, case: _Case) -> None:
        before = {s.pid for s in stubs_of(self.pid) if s.model == model}
        before |= {s.pid for s in self._fds.values() if s.model == model}
        t0 = time.monotonic()
        ok, why = self.reload(model)
        took = time.monotonic() - t0
        case.attempts += 1
        if ok:
            now = time.monotonic()  # the old generation ends with the swap: expected, not a crash
            self._retired.update({pid: _Retired(model, now, _cpu_ticks(pid), now) for pid in before})
            del self._cases[model]
            self._event("reloaded", model, seconds=took, since_death=time.monotonic() - case.since,
                        attempts=case.attempts)
            self.log(f"model {model}: reloaded in {took:.2f} s")
            return
        self._event("reload_failed", model, seconds=took, why=why, attempts=case.attempts)
        if case.attempts >= self.max_attempts:
            del self._cases[model]
            self.log(f"model {model}: reload failed {case.attempts} times, the last after {took:.2f} s: {why}; "
                     "giving up: fix the model and load it through the repository API, or restart serve")
            return
        wait = RETRY_S[min(case.attempts - 1, len(RETRY_S) - 1)]
        case.next_at = time.monotonic() + wait
        self.log(f"model {model}: reload failed after {took:.2f} s: {why}; retrying in {wait:g} s")

    def _end_lingering(self) -> None:
        """End the retired stubs that Triton keeps after the swap (see the module's docstring)."""
        now = time.monotonic()
        for pid, r in list(self._retired.items()):
            age = now - r.since
            if age < LINGER_S or now - r.checked < 1.0:
                continue
            ticks = _cpu_ticks(pid)
            idle = ticks is not None and ticks == r.ticks
            r.ticks, r.checked = ticks, now
            if ticks is None or not (idle or age >= LINGER_MAX_S):
                continue
            rss = _rss_mb(pid)
            try:
                os.kill(pid, 9)
            except (ProcessLookupError, PermissionError):
                continue
            self.log(f"model {r.model}: ended pid {pid} of the generation its reload replaced {age:.0f} s ago, which "
                     f"Triton kept alive ({rss:.0f} MB)")
            self._event("ended_lingering", r.model, pid=pid, seconds=age, rss_mb=rss)

    def _update_versions(self) -> set[str]:
        """The versions an update or rollback has left (rolled back, retired, removed: the record of the
        repository, serving/versions.py): a death of one of their stubs is the update's, never a crash, even
        while Triton still lists that version (a crashed generation can stay UNLOADING for a long time)."""
        if self.update_lock is None:
            return set()
        try:
            state = read_state(Path(self.update_lock).parent)
        except ServingError:  # an unreadable record: judged by Triton's index alone
            return set()
        if state is None:
            return set()
        return {k for k, e in state["versions"].items()
                if k != str(state["serving"]) and e.get("state") in ("rolled_back", "retired", "removed")}

    def status(self, model: str, version: str | None = None) -> tuple[str | None, str | None]:
        """(state, reason) of ``model`` in Triton's repository index: READY, LOADING, UNLOADING, UNAVAILABLE
        (reason "unloaded" after an unload, Triton's error after a failed load); (None, None) if the index
        cannot be read. A stub that dies by itself leaves its model READY (the gap this class closes).
        With ``version``: that version's state, or RETIRED when it is no longer loaded while another version of
        the model is (a version switch)."""
        try:
            status, body = self.request("/v2/repository/index", b"{}", 5.0)
            models = json.loads(body) if status == 200 else None
        except (OSError, ValueError):
            return None, None
        if models is None:
            return None, None
        rows = [m for m in models if m.get("name") == model]
        if not rows:
            return "UNAVAILABLE", "unloaded"  # no longer in the index at all
        if version:
            mine = [r for r in rows if str(r.get("version")) == version]
            others = [r for r in rows if str(r.get("version")) != version and r.get("state") in ("READY", "LOADING")]
            if (not mine or mine[0].get("state") not in ("READY", "LOADING", "UNLOADING")) and others:
                return "RETIRED", None
            if mine:
                rows = mine
        rank = {"READY": 0, "LOADING": 1, "UNLOADING": 2}  # a model with several versions: the most alive one
        row = min(rows, key=lambda r: rank.get(r.get("state"), 3))
        return row.get("state"), row.get("reason")

    def state(self, model: str) -> str | None:
        return self.status(model)[0]

    def reload(self, model: str) -> tuple[bool, str]:
        """Load ``model`` again in the background: its live config with ``RELOAD_PARAMETER`` changed, so Triton
        starts new instances and swaps them in; (ok, Triton's error if not)."""
        try:
            status, body = self.request(f"/v2/models/{model}/config", None, 10.0)
            if status != 200:
                return False, f"config answered {status}: {_error(body)}"
            config = json.loads(body)
            self._generation += 1
            config.setdefault("parameters", {})[RELOAD_PARAMETER] = {"string_value": str(self._generation)}
            data = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
            if self._stop.is_set():
                return False, "supervisor stopped"
            status, body = self.request(f"/v2/repository/models/{model}/load", data, self.reload_timeout_s)
        except (OSError, ValueError) as e:
            return False, f"load: {e}"
        if status != 200:
            return False, f"load answered {status}: {_error(body)}"
        return True, ""


@dataclass
class _Retired:
    """A stub of a generation that a reload of the supervisor's replaced: its end is expected."""

    model: str
    since: float  # monotonic time of the swap
    ticks: int | None  # its CPU time (user + system clock ticks) when last read
    checked: float


def update_running(lock: Path | None) -> bool:
    """Whether ``triton update`` (or ``rollback``) holds the repository's lock: the file names a live pid."""
    if lock is None:
        return False
    try:
        pid = int(Path(lock).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return os.path.exists(f"/proc/{pid}")


def _cpu_ticks(pid: int) -> int | None:
    fields = _read(f"/proc/{pid}/stat").decode(errors="replace").rsplit(")", 1)[-1].split()
    return int(fields[11]) + int(fields[12]) if len(fields) > 12 else None  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in _read(f"/proc/{pid}/status").decode(errors="replace").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _error(body: bytes) -> str:
    try:
        return json.loads(body).get("error", body.decode(errors="replace"))
    except ValueError:
        return body.decode(errors="replace")
