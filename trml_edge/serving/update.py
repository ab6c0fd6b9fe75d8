"""``trml-edge triton update``: move a running server to a new bundle with no failed request and no mixed answer,
checked before the switch and rolled back if its probation fails. ``triton rollback`` switches back the same
way; ``triton versions`` lists what is on disk and what serves.

The steps (docs/serving.md, "Updating a running server"):

1. **check**, before the server is touched: the repository has a version record (``serving/versions.py``) and
   no other update holds its lock; the new bundle loads (every sha256) and keeps the serving contract (task and
   classes; ``allow_contract_change`` to replace it); its runtime, in a scratch process, answers every scenario
   of the golden inputs (``serving/golden.py``), which become the probation's expected answers; the box has the
   memory for both versions at once (the running routers' and graph models' resident memory, scaled by the
   bundles' sizes, against MemAvailable);
2. **stage** version N+1 beside N: the new bundle's repository is built with the repository's own settings in a
   hidden folder of the repository, then each model version is renamed into place (ensemble layout: graph
   models and ensembles under the names ``<model>__vN+1``); the record says ``staged``;
3. **switch**: (ensemble) load the new graph models and ensembles beside the old; then load each router with
   its version N+1 config (``version_policy: specific [N+1]``, through the load API's config override): Triton
   starts N+1's instances (each router warms every scenario in ``initialize``), moves new requests to it once
   it is ready and lets N finish what it holds. Each load is bounded (``load_timeout_s``): a Python model
   whose ``initialize`` never returns holds Triton's load for ever (the backend waits on the stub as long as
   the stub lives), so the update ends the stub processes that load started at the bound, which makes Triton
   give the load up, tries it again (``load_attempts`` in all), then rolls back;
4. **probation** (``probation_s``): the golden requests, per scenario and one stream, every second; the
   routers' error counters; the new version's stub processes. A mismatch, an error or a dead process rolls
   back to N (the routers loaded with version N's config, which also counts the rollback in
   ``trml_update_rollbacks``), and the update fails;
5. **commit**: the routers' ``config.pbtxt`` files name N+1, the record says it serves, versions older than N-1
   are deleted, (ensemble) N's graph models are unloaded.

While an update holds the repository's lock, the supervisor of ``serve`` leaves deaths alone: the update's own
version switch ends processes, and a crash during the probation is the update's to roll back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from trml_edge.errors import BundleError, ConfigError, ServingError, TrmlEdgeError
from trml_edge.serving import versions as V
from trml_edge.serving.security import ADMIN_HEADER


class UpdateRefused(ServingError):
    """The update was refused before the server was touched: the old bundle serves, nothing changed."""


class RolledBack(ServingError):
    """The new version failed its probation, or could not be switched to: the old one serves again."""


class AdminTimeout(ServingError):
    """The server did not answer an admin call within its timeout (a load still under way)."""


@dataclass
class UpdateConfig:
    repo: Path
    bundle: Path | None  # None for a rollback
    url: str  # HOST:PORT of the server's HTTP endpoint
    admin_token_file: Path
    probation_s: float = 30.0
    allow_contract_change: bool = False
    golden: Path | None = None  # expected answers to use instead of the new runtime's (tests, audits)
    tolerance: float = 1e-4  # golden answers: absolute, plus the same relative (widen for TensorRT engines)
    memory_check: bool = True
    load_timeout_s: float = 300.0  # one model's load (its instances' initialize, warm-up included)
    load_attempts: int = 2  # a load past the bound is ended and tried again this many times in all
    log: Callable[[str], None] = field(default=lambda line: None)


# --- the server, through its admin API ---
class Admin:
    def __init__(self, url: str, token_file: Path):
        self.url = url
        try:
            self.token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"--admin-token-file {token_file}: {e.strerror}; give the file that `trml-edge serve "
                              "--admin-token-file` writes") from None

    def call(self, path: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{self.url}{path}", data=data, method="POST" if data is not None
                                     else "GET", headers={ADMIN_HEADER: self.token})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError as e:  # a timeout while reading is TimeoutError; while connecting, a URLError around one
            if isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError):
                raise AdminTimeout(f"the server at {self.url} did not answer {path} within {timeout:g} s") from None
            raise ServingError(f"could not reach the server at {self.url} ({e}); is `trml-edge serve` running "
                               "there? give its HTTP HOST:PORT with --url") from None

    def index(self) -> list[dict]:
        status, body = self.call("/v2/repository/index", {})
        if status == 403 or status == 401:
            raise ConfigError(f"the server at {self.url} refused the admin token ({status}); give the "
                              "--admin-token-file of the serve that runs there")
        if status != 200:
            raise ServingError(f"the repository index answered {status}: {body[:200]!r}")
        return json.loads(body)

    def load(self, model: str, config: dict | None = None, timeout: float = 600.0) -> None:
        body = {"parameters": {"config": json.dumps(config)}} if config is not None else {}
        status, resp = self.call(f"/v2/repository/models/{model}/load", body, timeout)
        if status != 200:
            raise ServingError(f"loading {model} failed ({status}): {_message(resp)}")

    def unload(self, model: str) -> None:
        status, resp = self.call(f"/v2/repository/models/{model}/unload", {}, 120.0)
        if status != 200:
            raise ServingError(f"unloading {model} failed ({status}): {_message(resp)}")


def _message(body: bytes) -> str:
    try:
        return json.loads(body).get("error", body.decode(errors="replace"))
    except ValueError:
        return body.decode(errors="replace")[:300]


def router_config(repo: Path, router: str, version: int, rollbacks: int) -> dict:
    """A router version's config as the load API takes it: its own copy, serving exactly ``version``, with the
    version and the rollback count as parameters (the router exports them as metrics)."""
    from google.protobuf import json_format

    from trml_edge.serving.configs import protobuf

    mc, text_format = protobuf()
    text = (repo / router / str(version) / V.CONFIG_COPY).read_text(encoding="utf-8")
    cfg = text_format.Parse(V.with_version_policy(text, version), mc.ModelConfig())
    cfg.parameters["trml_repository_version"].string_value = str(version)
    cfg.parameters["trml_update_rollbacks"].string_value = str(rollbacks)
    return json.loads(json_format.MessageToJson(cfg, preserving_proto_field_name=True))


# --- the lock the supervisor honours ---
class Lock:
    def __init__(self, repo: Path):
        self.path = repo / V.LOCK_FILE

    def __enter__(self) -> Lock:
        from trml_edge.serving.supervisor import update_running

        if update_running(self.path):
            raise UpdateRefused(f"another update or rollback runs on {self.path.parent} (pid "
                                f"{self.path.read_text().split()[0]}); wait for it to finish")
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(self.path)
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.path.read_text().split()[0] == str(os.getpid()):
                self.path.unlink()
        except (OSError, IndexError):
            pass


# --- the server process on this machine (memory, stubs, metrics) ---
def server_process(repo: Path) -> tuple[int, list[str]] | None:
    """(pid, argv) of the tritonserver serving ``repo`` on this machine, or None."""
    repo = str(Path(repo).resolve())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if argv and argv[0].endswith("tritonserver") and "--model-repository" in argv:
            i = argv.index("--model-repository")
            if i + 1 < len(argv) and str(Path(argv[i + 1]).resolve()) == repo:
                return int(entry), argv
    return None


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise ServingError("/proc/meminfo has no MemAvailable")


def graph_bytes(bundle) -> int:
    return sum((bundle.root / e["file"]).stat().st_size for e in bundle.graphs.values())


def error_count(metrics_url: str | None) -> float | None:
    """The routers' failed requests so far (``trml_requests_total`` with outcome error or unavailable)."""
    if metrics_url is None:
        return None
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("trml_requests_total{") and ('outcome="error"' in line or 'outcome="unavailable"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- the update ---
class Updater:
    def __init__(self, cfg: UpdateConfig):
        self.cfg = cfg
        self.repo = Path(cfg.repo).resolve()
        self.log = cfg.log
        self.state = V.read_state(self.repo)
        if self.state is None:
            raise UpdateRefused(f"{self.repo} has no {V.STATE_FILE}: it was built before repositories kept versions; "
                                "rebuild it with `trml-edge triton build` (and restart serve) to update it in place")
        self.admin = Admin(cfg.url, cfg.admin_token_file)
        self.serving = int(self.state["serving"])
        self.layout = self.state["layout"]
        proc = server_process(self.repo)
        self.server_pid, argv = (proc if proc else (None, []))
        port, host = _flag(argv, "--metrics-port"), _flag(argv, "--metrics-address") or "127.0.0.1"
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.metrics_url = f"http://{host}:{port}/metrics" if port else None

    # 1. check
    def check(self) -> tuple[object, dict]:
        """The new bundle (loaded, every sha256 checked) and its golden answers, or UpdateRefused."""
        from trml_edge.runtime.bundle import load_bundle

        try:
            bundle = load_bundle(self.cfg.bundle)
        except (BundleError, TrmlEdgeError, OSError) as e:
            raise UpdateRefused(f"bundle {self.cfg.bundle}: {e}") from None
        old = self.state["versions"][str(self.serving)]["bundle"]
        m = bundle.manifest["model"]
        new = {"task": m["task"], "classes": int(m["dims"].get("classes", 1))}
        if (new["task"], new["classes"]) != (old["task"], old["classes"]) and not self.cfg.allow_contract_change:
            raise UpdateRefused(f"the new bundle changes the contract clients see: a {new['task']} head with "
                                f"{new['classes']} outputs replaces a {old['task']} head with {old['classes']}; "
                                "pass --allow-contract-change if every client is ready for it")
        golden = self._golden(bundle)
        self._check_server()
        if self.cfg.memory_check:
            self._check_memory(bundle)
        return bundle, golden

    def _golden(self, bundle) -> dict:
        if self.cfg.golden is not None:
            return json.loads(Path(self.cfg.golden).read_text(encoding="utf-8"))
        with tempfile.TemporaryDirectory(prefix="trml-golden-") as d:
            out = Path(d) / "golden.json"
            r = subprocess.run([sys.executable, "-m", "trml_edge.serving.golden", str(bundle.root), str(out)],
                               capture_output=True, text=True, timeout=900)
            if r.returncode != 0 or not out.is_file():
                last = (r.stderr.strip().splitlines() or ["no output"])[-1]
                raise UpdateRefused(f"the new bundle's runtime could not answer the golden requests in a scratch "
                                    f"process: {last}")
            return json.loads(out.read_text(encoding="utf-8"))

    def _check_server(self) -> None:
        rows = self.admin.index()
        ready = {(r["name"], str(r.get("version"))) for r in rows if r.get("state") == "READY"}
        if ("trml", str(self.serving)) not in ready:
            raise UpdateRefused(f"the server at {self.cfg.url} does not serve version {self.serving} of trml, the "
                                f"one {V.STATE_FILE} says serves (ready: {sorted(ready)}); is it serving {self.repo}?")

    def _check_memory(self, bundle) -> None:
        from trml_edge.runtime.bundle import load_bundle
        from trml_edge.serving.supervisor import _rss_mb, stubs_of

        if self.server_pid is None:
            self.log(f"memory not checked: the server of {self.repo} does not run on this machine")
            return
        models = set(V.ROUTERS) | set(self.state["versions"][str(self.serving)].get("models", []))
        stubs = [s for s in stubs_of(self.server_pid) if s.model in models]
        rss = sum(_rss_mb(s.pid) for s in stubs)
        try:
            old = load_bundle(self.state["versions"][str(self.serving)]["bundle"]["path"], verify=False)
            ratio = graph_bytes(bundle) / max(graph_bytes(old), 1)
        except (TrmlEdgeError, OSError, TypeError):  # the old bundle's folder is gone: assume the same size
            ratio = 1.0
        need, have = rss * ratio, mem_available_mb()
        if need > 0.9 * have:
            raise UpdateRefused(f"not enough memory for both versions at once: the new one needs about {need:.0f} MB "
                                f"({len(stubs)} model processes of {rss:.0f} MB now, x{ratio:.2f} for the new "
                                f"bundle's graphs) and {have:.0f} MB are available; free memory, or stop serve and "
                                "rebuild the repository")
        self.log(f"memory: about {need:.0f} MB more during the switch, {have:.0f} MB available")

    # 2. stage
    def stage(self, bundle, golden: dict) -> int:
        from trml_edge.serving.repository import bundle_identity, build_repository, config_from_settings
        from trml_edge.runtime.bundle import MANIFEST, sha256_file

        known = [int(k) for k in self.state["versions"]] + V.disk_versions(self.repo)
        new = max(known) + 1
        stage = self.repo / f".stage-{new}-{os.getpid()}"
        shutil.rmtree(stage, ignore_errors=True)
        try:
            build_repository(config_from_settings(self.state["settings"], str(bundle.root), str(stage)))
            (stage / V.STATE_FILE).unlink()
            models = []
            if self.layout == "ensemble":
                models = self._rename_graph_models(stage, V.suffix(new))
            (stage / "trml" / "1" / "golden.json").write_text(json.dumps(golden, indent=2) + "\n")
            for m in models:
                (stage / m).rename(self.repo / m)
            for router in V.ROUTERS:
                if (stage / router / "1").is_dir():
                    (stage / router / "1").rename(self.repo / router / str(new))
        except BaseException:
            self._remove_version_files(new, [p.name for p in stage.iterdir()] if stage.is_dir() else [])
            shutil.rmtree(stage, ignore_errors=True)
            raise
        shutil.rmtree(stage, ignore_errors=True)
        self.state["versions"][str(new)] = {
            "state": "staged", "models": models, "staged": V.now(),
            "bundle": bundle_identity(bundle, sha256_file(bundle.root / MANIFEST))}
        V.write_state(self.repo, self.state)
        self.log(f"staged version {new} beside {self.serving}")
        return new

    def _rename_graph_models(self, stage: Path, sfx: str) -> list[str]:
        """The staged build's graph models and ensembles under their version's names, the routers' maps too."""
        from trml_edge.serving.configs import protobuf, write_config

        mc, text_format = protobuf()
        names = sorted(p.name for p in stage.iterdir() if (p / "config.pbtxt").is_file() and p.name not in V.ROUTERS)
        rename = {n: n + sfx for n in names}
        for n in names:
            cfg = text_format.Parse((stage / n / "config.pbtxt").read_text(), mc.ModelConfig())
            cfg.name = rename[n]
            for step in cfg.ensemble_scheduling.step:
                step.model_name = rename.get(step.model_name, step.model_name)
            write_config(cfg, stage / n / "config.pbtxt")
            (stage / n).rename(stage / rename[n])
        for router, file in (("trml", "router.json"), ("trml_stream", "stream.json")):
            path = stage / router / "1" / file
            if path.is_file():
                path.write_text(json.dumps(_renamed(json.loads(path.read_text()), rename), indent=2) + "\n")
        return [rename[n] for n in names]

    def _remove_version_files(self, version: int, models: list[str]) -> None:
        for router in V.ROUTERS:
            shutil.rmtree(self.repo / router / str(version), ignore_errors=True)
        for m in models:
            if m not in V.ROUTERS and m.endswith(V.suffix(version)) and V.suffix(version):
                shutil.rmtree(self.repo / m, ignore_errors=True)

    # 3. switch
    def switch(self, version: int) -> None:
        entry = self.state["versions"][str(version)]
        for m in sorted(entry.get("models", []), key=lambda n: n.startswith("trml")):  # graphs, then ensembles
            self._load(m)
        for router in V.ROUTERS:
            if (self.repo / router / str(version)).is_dir():
                t0 = time.monotonic()
                self._load(router, router_config(self.repo, router, version, int(self.state["rollbacks"])))
                self.log(f"{router}: version {version} loaded and serving ({time.monotonic() - t0:.1f} s)")

    def _load(self, model: str, config: dict | None = None) -> None:
        """One admin load, bounded by ``load_timeout_s`` and tried up to ``load_attempts`` times. At the bound,
        the processes this load started (the model's stubs that were not there before it) are ended:
        python_backend waits for a stub's ``initialize`` for as long as the stub lives and gives the load up
        once it dies, while Triton keeps serving the config it had. ServingError says what happened."""
        from trml_edge.serving.supervisor import stubs_of

        bound, attempts = self.cfg.load_timeout_s, max(1, int(self.cfg.load_attempts))
        for attempt in range(1, attempts + 1):
            before = {s.pid for s in stubs_of(self.server_pid)} if self.server_pid else set()
            try:
                self.admin.load(model, config, timeout=bound)
                return
            except AdminTimeout:
                pass
            if not self.server_pid:
                raise ServingError(f"loading {model} did not finish within --load-timeout {bound:g} s, and the "
                                   "server's processes are not visible from here (another box or container), so "
                                   "the load could not be ended: restart the server")
            started = [s for s in stubs_of(self.server_pid) if s.model == model and s.pid not in before]
            for s in started:
                try:
                    os.kill(s.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            ended = ", ".join(f"{s.instance} (pid {s.pid})" for s in started) or "none found"
            settled = self._settle(model, 60.0)
            still = "" if settled else "; Triton still reports the load under way"
            self.log(f"{model}: the load did not finish within --load-timeout {bound:g} s (attempt {attempt} of "
                     f"{attempts}); ended the processes it started: {ended}{still}")
            if not settled or attempt == attempts:
                raise ServingError(f"loading {model} did not finish within --load-timeout {bound:g} s in "
                                   f"{attempt} attempt(s) (an instance's initialize that never returned); the "
                                   f"processes the last one started were ended ({ended}){still}")

    def _settle(self, model: str, seconds: float) -> bool:
        """Wait until no version of ``model`` is LOADING in the repository index; False at the bound."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if not any(m.get("name") == model and m.get("state") == "LOADING" for m in self.admin.index()):
                    return True
            except ServingError:
                pass
            time.sleep(0.2)
        return False

    # 4. probation
    def probation(self, version: int, golden: dict, seconds: float) -> str | None:
        """None when version ``version`` answered every golden request right for ``seconds``; else why not."""
        from trml_edge.serving.client import TritonClient
        from trml_edge.serving.golden import golden_inputs, mismatch
        from trml_edge.serving.supervisor import stubs_of

        client = TritonClient(self.cfg.url, timeout=60.0)
        streams = (self.repo / "trml_stream" / str(version)).is_dir()
        inputs = golden_inputs()
        errors0 = error_count(self.metrics_url)
        watched = {s.pid: s for s in stubs_of(self.server_pid) if s.version == str(version)} \
            if self.server_pid else {}
        began = time.monotonic()
        deadline = began + seconds
        rounds = 0
        try:
            while True:
                rounds += 1
                dead = [s.instance for pid, s in watched.items() if not os.path.exists(f"/proc/{pid}")]
                if dead:
                    return f"a process of version {version} died during the probation ({', '.join(dead)})"
                for scenario, (frames, text) in inputs.items():
                    try:
                        r = client.infer(frames, text)
                    except TrmlEdgeError as e:
                        return f"the {scenario} golden request failed: {e}"
                    why = mismatch(golden["answers"][scenario], r.output, r.virtual_modality, self.cfg.tolerance)
                    if why:
                        return f"the {scenario} golden request was answered wrong: {why}"
                if streams:
                    why = self._stream_check(client, inputs["complete"], golden["answers"]["complete"])
                    if why:
                        return why
                errors = error_count(self.metrics_url)
                if errors0 is not None and errors is not None and errors > errors0:
                    return (f"the routers counted {errors - errors0:.0f} failed requests during the probation "
                            "(trml_requests_total, outcome error or unavailable)")
                if time.monotonic() >= deadline:
                    self.log(f"probation passed: {rounds} rounds of golden requests in {time.monotonic() - began:.1f} s "
                             f"(--probation {seconds:g})")
                    return None
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        finally:
            client.close()

    def _stream_check(self, client, inputs, expected) -> str | None:
        from trml_edge.serving.golden import mismatch
        from trml_edge.serving.stream_client import TritonStream

        frames, text = inputs
        try:
            with TritonStream(client) as s:
                r = s.push(frames=frames, text=text)
        except TrmlEdgeError as e:
            return f"the golden stream failed: {e}"
        why = mismatch(expected, r.output, r.virtual_modality, self.cfg.tolerance)
        return f"the golden stream was answered wrong: {why}" if why else None

    # 5. commit / roll back
    def commit(self, version: int) -> None:
        old = self.serving
        for router in V.ROUTERS:
            cfg = self.repo / router / "config.pbtxt"
            if cfg.is_file():
                copy = (self.repo / router / str(version) / V.CONFIG_COPY).read_text(encoding="utf-8")
                V.write_text_atomic(cfg, V.with_version_policy(copy, version))
        self.state["versions"][str(old)]["state"] = "retired"
        self.state["versions"][str(version)].update(state="serving", committed=V.now())
        self.state["serving"] = version
        V.write_state(self.repo, self.state)
        self.serving = version
        for m in self.state["versions"][str(old)].get("models", []):  # the old graphs: no router calls them now
            try:
                self.admin.unload(m)
            except ServingError as e:
                self.log(f"{e} (left loaded)")
        self._prune(keep={version, old, *self._previous(old)})

    def _previous(self, version: int) -> list[int]:
        older = [int(k) for k, e in self.state["versions"].items() if int(k) < version and e["state"] == "retired"]
        return [max(older)] if older else []

    def _prune(self, keep: set[int]) -> None:
        for k, e in list(self.state["versions"].items()):
            if int(k) not in keep and e["state"] in ("retired", "rolled_back", "staged"):
                self._remove_version_files(int(k), e.get("models", []))
                e["state"] = "removed"
                e["removed"] = V.now()
        V.write_state(self.repo, self.state)

    def roll_back(self, failed: int, why: str) -> None:
        """Back to the serving version: its routers loaded again (version policy and the rollback count), the
        failed version's graph models unloaded and its files deleted."""
        self.state["rollbacks"] = int(self.state["rollbacks"]) + 1
        for router in V.ROUTERS:
            if (self.repo / router / str(self.serving)).is_dir():
                self._load(router, router_config(self.repo, router, self.serving, int(self.state["rollbacks"])))
        for m in self.state["versions"][str(failed)].get("models", []):
            try:
                self.admin.unload(m)
            except ServingError:
                pass
        self.state["versions"][str(failed)].update(state="rolled_back", rolled_back=V.now(), why=why)
        V.write_state(self.repo, self.state)
        self._remove_version_files(failed, self.state["versions"][str(failed)].get("models", []))
        self.log(f"rolled back to version {self.serving}: {why}")


def _renamed(obj, rename: dict[str, str]):
    """``router.json`` / ``stream.json`` with the model names it calls replaced: the values of ``graph_models``
    and of every ``model`` key."""
    if isinstance(obj, list):
        return [_renamed(v, rename) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        if k == "graph_models" and isinstance(v, dict):
            out[k] = {g: rename.get(m, m) for g, m in v.items()}
        elif k == "model" and isinstance(v, str):
            out[k] = rename.get(v, v)
        elif k == "steps" and isinstance(v, list):
            out[k] = [rename.get(m, m) for m in v]
        else:
            out[k] = _renamed(v, rename)
    return out


def update(cfg: UpdateConfig) -> int:
    """The whole update; the new serving version. UpdateRefused (nothing changed) or RolledBack (the old
    version serves again) otherwise."""
    u = Updater(cfg)
    with Lock(u.repo):
        bundle, golden = u.check()
        new = u.stage(bundle, golden)
        try:
            u.switch(new)
        except ServingError as e:
            try:
                u.roll_back(new, f"switching to it failed: {e}")
            except ServingError as again:
                raise ServingError(f"version {new} could not be switched to ({e}), and switching back failed too "
                                   f"({again}); restart `trml-edge serve`: it serves the committed version "
                                   f"{u.serving}") from None
            raise RolledBack(f"version {new} could not be switched to ({e}); rolled back, version {u.serving} "
                             "serves") from None
        why = u.probation(new, golden, cfg.probation_s)
        if why is not None:
            u.roll_back(new, why)
            raise RolledBack(f"version {new} failed its probation: {why}; rolled back, version {u.serving} serves "
                             f"(rollbacks so far: {u.state['rollbacks']})")
        u.commit(new)
        return new


def rollback(cfg: UpdateConfig) -> int:
    """Switch back to the version that served before the serving one (kept on disk), checked as an update is
    (its golden answers, a short probation); the version now serving."""
    u = Updater(cfg)
    with Lock(u.repo):
        previous = u._previous(u.serving)
        if not previous or not (u.repo / "trml" / str(previous[0])).is_dir():
            raise UpdateRefused(f"no earlier version of {u.repo} is kept on disk (serving: {u.serving}); "
                                "`trml-edge triton versions` lists them")
        target, current = previous[0], u.serving
        golden_file = u.repo / "trml" / str(target) / "golden.json"
        golden = json.loads(golden_file.read_text()) if golden_file.is_file() else None
        u.state["rollbacks"] = int(u.state["rollbacks"]) + 1
        try:
            u.switch(target)
        except ServingError as e:
            u.switch(current)
            raise RolledBack(f"version {target} could not be switched to ({e}); version {current} serves again") \
                from None
        if golden is not None:
            why = u.probation(target, golden, cfg.probation_s)
            if why is not None:
                u.switch(current)
                raise RolledBack(f"version {target} failed its check after the rollback: {why}; version {current} "
                                 "serves again")
        u.commit(target)
        u.state["versions"][str(current)]["state"] = "rolled_back"
        V.write_state(u.repo, u.state)
        return target


def describe(repo: Path, url: str | None = None) -> list[dict]:
    """One row per version: its state, bundle and models; with ``url``, whether the server has it loaded."""
    state = V.read_state(Path(repo))
    if state is None:
        raise ServingError(f"{repo} has no {V.STATE_FILE} (built before versions were kept): version 1 only")
    loaded = None
    if url is not None:
        try:
            with urllib.request.urlopen(f"http://{url}/v2/models/trml", timeout=5) as r:
                loaded = {str(v) for v in json.loads(r.read()).get("versions", [])}
        except OSError as e:
            raise ServingError(f"could not read the trml model's metadata from {url} ({e})") from None
    rows = []
    for k, e in sorted(state["versions"].items(), key=lambda kv: int(kv[0])):
        rows.append({"version": int(k), "state": e["state"], "serving": int(k) == int(state["serving"]),
                     "on_disk": (Path(repo) / "trml" / k).is_dir(), "loaded": None if loaded is None else k in loaded,
                     "bundle": e["bundle"].get("path"), "manifest_sha256": e["bundle"].get("manifest_sha256"),
                     "staged": e.get("staged"), "committed": e.get("committed"), "why": e.get("why")})
    return rows
