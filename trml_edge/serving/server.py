"""A real ``tritonserver`` process: found, started on loopback ports, waited for, and stopped with its children.

By default the server is the one bundled by the ``nvidia-pytriton`` wheel (Triton with the Python backend,
runs on CPU). It is prepared once per pytriton and Python version in the user's cache directory: the
wheel's ``tritonserver/`` tree is copied and the Python-backend stub for this interpreter is put into
``backends/python/``; it runs with the wheel's bundled libraries on ``LD_LIBRARY_PATH``. On Jetson or a GPU
box, ``tritonserver=PATH`` points at the JetPack or system binary (its ``backends/`` is found beside it).

The server runs in its own process group, so stopping it also ends every Python-backend stub it spawned.
With ``supervise=True`` (what ``trml-edge serve`` does) it runs under explicit model control and a
``Supervisor`` reloads any model whose Python-backend stub dies (``trml_edge.serving.supervisor``).

Secure by default (``trml_edge.serving.security``): the admin APIs (model repository, shared memory, trace,
logging) answer only requests that carry this run's secret, which ``request()`` (and so the supervisor) sends
and nothing prints; ``ServerSecurity`` opens them, writes a copy of the secret for the user, or adds TLS to gRPC.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from trml_edge.errors import ConfigError, MissingDependencyError, ServingError
from trml_edge.serving.security import (ADMIN_HEADER, ServerSecurity, connect_host, endpoint_hosts, new_token,
                                        remove_token_file, restriction_flags, write_token_file)
from trml_edge.serving.versions import LOCK_FILE

HOST = "127.0.0.1"


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trml-edge"


def bundled_tritonserver() -> tuple[Path, Path, dict[str, str]]:
    """(binary, backend directory, extra environment) of the tritonserver shipped in nvidia-pytriton."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise MissingDependencyError("no tritonserver: install the bundled one with pip install 'trml-edge[serve]', "
                                     "or pass --tritonserver PATH (for example JetPack's /opt/tritonserver/bin/"
                                     "tritonserver)")
    pkg = Path(spec.origin).parent
    src, libs = pkg / "tritonserver", pkg.parent / "nvidia_pytriton.libs"
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = src / "python_backend_stubs" / pyver / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServingError(f"nvidia-pytriton has no Python-backend stub for Python {pyver} ({stub}); use a Python "
                           "it supports, or a tritonserver of your own with --tritonserver")
    dest = _cache_root() / f"tritonserver-{importlib.metadata.version('nvidia-pytriton')}-py{pyver}"
    if not (dest / ".complete").is_file():
        tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copytree(src / "bin", tmp / "bin")
        shutil.copytree(src / "backends", tmp / "backends")
        if (src / "caches").is_dir():
            shutil.copytree(src / "caches", tmp / "caches")
        shutil.copy2(stub, tmp / "backends" / "python" / stub.name)
        (tmp / ".complete").write_text(str(src) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    env = {"LD_LIBRARY_PATH": os.pathsep.join(p for p in (str(libs), os.environ.get("LD_LIBRARY_PATH", "")) if p)}
    return dest / "bin" / "tritonserver", dest / "backends", env


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(port: int, flag: str, host: str = HOST) -> int:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ServingError(f"port {port} on {host} is in use ({e.strerror}); choose another with {flag} "
                               "or stop what is using it") from None
    return port


def _get(url: str, data: bytes | None = None, timeout: float = 2.0, headers: dict[str, str] | None = None
         ) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class TritonServer:
    """``with TritonServer(repo) as srv: ...`` starts a server on free loopback ports and stops it after."""

    def __init__(self, repo: str | Path, http_port: int | None = None, grpc_port: int | None = None,
                 metrics_port: int | None = None, tritonserver: str | Path | None = None,
                 backend_directory: str | Path | None = None, host: str = HOST, log_file: str | Path | None = None,
                 startup_timeout: float = 300.0, supervise: bool = False, log=None,
                 security: ServerSecurity | None = None, http_host: str | None = None,
                 metrics_host: str | None = None):
        self.repo = Path(repo).resolve()
        self.host, self.timeout = host, startup_timeout
        self.ports = {"http": (http_port, "--http-port"), "grpc": (grpc_port, "--grpc-port"),
                      "metrics": (metrics_port, "--metrics-port")}
        self.binary, self.backends = (Path(tritonserver) if tritonserver else None), backend_directory
        self.log_file = Path(log_file) if log_file else None
        self.proc: subprocess.Popen | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.supervise, self.log = supervise, log or (lambda line: None)
        self.supervisor = None
        self.serving_version, self.version_notes = None, []  # set at start (serving/versions.py, reconcile)
        self.security = security or ServerSecurity()
        # where each endpoint listens: gRPC on host; HTTP and metrics too, but on loopback when gRPC has TLS
        self.hosts = endpoint_hosts(host, http_host, metrics_host, self.security.grpc_tls is not None)
        self.security.validate(self.hosts)
        # the per-run admin secret: on Triton's command line and in request()'s header, never printed
        self._token = None if self.security.open_admin_api else new_token()

    @property
    def url(self) -> str:
        """HOST:PORT of the HTTP endpoint, as a client on this machine reaches it."""
        return f"{connect_host(self.hosts['http'])}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{connect_host(self.hosts['grpc'])}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{connect_host(self.hosts['metrics'])}:{self.metrics_port}/metrics"

    def _command(self) -> tuple[list[str], dict[str, str]]:
        if not (self.repo.is_dir() and any(self.repo.glob("*/config.pbtxt"))):
            raise ServingError(f"{self.repo} is not a Triton model repository (no */config.pbtxt); build one with "
                               "`trml-edge triton build BUNDLE --out REPO`")
        env = dict(os.environ)
        if self.binary is None:
            binary, backends, extra = bundled_tritonserver()
            env.update(extra)
        else:
            binary = self.binary
            if not (binary.is_file() and os.access(binary, os.X_OK)):
                raise ServingError(f"--tritonserver {binary} is not an executable file; give the path of the "
                                   "tritonserver binary (JetPack: /opt/tritonserver/bin/tritonserver)")
            backends = Path(self.backends) if self.backends else binary.resolve().parents[1] / "backends"
        # the Python-backend stub embeds the first python3 on PATH: make it this interpreter (its venv, numpy, ORT)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        for name, (port, flag) in self.ports.items():
            host = self.hosts[name]
            setattr(self, f"{name}_port", check_port(port, flag, host) if port else free_port(host))
        cmd = [str(binary), "--model-repository", str(self.repo), "--backend-directory", str(backends),
               "--http-address", self.hosts["http"], "--http-port", str(self.http_port),
               "--grpc-address", self.hosts["grpc"], "--grpc-port", str(self.grpc_port),
               "--metrics-address", self.hosts["metrics"], "--metrics-port", str(self.metrics_port),
               "--exit-on-error", "true", "--strict-readiness", "true", "--exit-timeout-secs", "10",
               "--disable-auto-complete-config"]
        # explicit model control: the supervisor reloads a broken model and `triton update` switches versions
        # through the repository API; only the committed version's models load (serving/versions.py)
        from trml_edge.serving.versions import reconcile, serving_models

        self.serving_version, self.version_notes = reconcile(self.repo)
        models = serving_models(self.repo)
        cmd += ["--model-control-mode", "explicit"]
        for m in (models if models is not None else ["*"]):
            cmd += ["--load-model", m]
        if self._token is not None:
            cmd += restriction_flags(self._token)
        if self.security.grpc_tls is not None:
            cmd += self.security.grpc_tls.flags()
        return cmd, env

    def start(self) -> TritonServer:
        cmd, env = self._command()
        if self.log_file is None:
            fd, name = tempfile.mkstemp(prefix="trml-tritonserver-", suffix=".log")
            os.close(fd)
            self.log_file = Path(name)
        self._log = open(self.log_file, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)  # own process group: stubs die with it
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_log()
                raise ServingError(f"tritonserver exited with status {self.proc.returncode} while starting: "
                                   f"{self.failure()}; fix that model or rebuild the repository with `trml-edge "
                                   f"triton build` (full log: {self.log_file})")
            try:
                ready = _get(f"http://{self.url}/v2/health/ready", timeout=1.0)[0] == 200
            except OSError:  # not listening yet
                ready = False
            if ready:
                self._token_file()
                if self.supervise:
                    from trml_edge.serving.supervisor import Supervisor

                    self.supervisor = Supervisor(self.proc.pid, self.request, self.log,
                                                 update_lock=self.repo / LOCK_FILE).start()
                return self
            time.sleep(0.25)
        self.stop()
        raise ServingError(f"tritonserver was not ready after {self.timeout:.0f} s; see {self.log_file}")

    def _token_file(self) -> None:
        """Write the token copy the user asked for; a failure stops the server (checked before it started, so
        only a change since, say a full disk, gets here) rather than leaving it up without the file."""
        path = self.security.admin_token_file
        if path is None:
            return
        try:
            write_token_file(path, self._token)
        except OSError as e:
            self.stop()
            raise ConfigError(f"--admin-token-file {path}: writing it failed ({e.strerror}); the server was stopped; "
                              "choose a path in a folder this user can write") from None

    def failure(self) -> str:
        """The log lines that say why the server or a model failed (one per model, then the server's own)."""
        text = self.log_file.read_text(errors="replace") if self.log_file and self.log_file.is_file() else ""
        models = re.findall(r"failed to load '([^']+)' version \d+: (.*?)\"?$", text, flags=re.M)
        if models:
            return "; ".join(dict.fromkeys(f"model {m} failed to load: {why}" for m, why in models))
        lines = [ln.split("] ", 1)[-1].strip('" ') for ln in text.splitlines() if ln.startswith("E")
                 or "address already in use" in ln.lower() or ln.startswith("error:")]
        lines = [ln for ln in lines if "NVML" not in ln and "DCGM" not in ln and "CudaDriver" not in ln]
        return " | ".join(dict.fromkeys(lines)) or "no error line in the log"

    def models(self) -> list[dict]:
        """Triton's repository index: name, version, state of every model."""
        status, body = self.request("/v2/repository/index", data=b"{}")
        if status != 200:
            raise ServingError(f"tritonserver answered {status} to the repository index: {body[:200]!r}")
        return json.loads(body)

    def layout(self) -> str:
        """The layout of the repository served (``router.json``): fused, ensemble, or unknown."""
        try:
            from trml_edge.serving.versions import router_dir

            return json.loads((router_dir(self.repo) / "router.json").read_text()).get("layout", "ensemble")
        except (OSError, ValueError, ServingError):
            return "unknown"

    def request(self, path: str, data: bytes | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
        """One HTTP call to the server, with this run's admin secret: (status, body)."""
        return _get(f"http://{self.url}{path}", data=data, timeout=timeout, headers=self.admin_headers())

    def admin_headers(self) -> dict[str, str]:
        """The HTTP header that opens the restricted APIs of this run (empty when they are open)."""
        return {} if self._token is None else {ADMIN_HEADER: self._token}

    def ready(self) -> bool:
        """Triton's own readiness (strict: every model ready)."""
        try:
            return self.request("/v2/health/ready", timeout=1.0)[0] == 200
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``timeout``; no child is left behind."""
        if self.supervisor is not None:  # first, or it would "reload" the models the server is stopping
            self.supervisor.stop()
            self.supervisor = None
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            # the server is gone; give its stubs a moment, then make sure none survives
            end = time.monotonic() + 5.0
            while time.monotonic() < end and _group_alive(pgid):
                time.sleep(0.1)
            if not _group_alive(pgid):
                break
        self._close_log()
        self.proc = None
        if self.security.admin_token_file is not None and self._token is not None:
            remove_token_file(self.security.admin_token_file, self._token)

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
