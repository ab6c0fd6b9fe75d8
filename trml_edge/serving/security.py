"""Who may use which of a served Triton's APIs, and how its gRPC port is encrypted.

Triton's model-repository API can load a model with uploaded files: a ``model.py`` sent to
``POST /v2/repository/models/NAME/load`` runs inside the server as the server's user (measured on the bundled
Triton 2.51, and the warning of Triton's "Secure Deployment Considerations"). ``trml-edge serve`` needs that
API for its supervisor (explicit model control: unload and load a model whose process died), so it cannot
switch it off; it restricts it instead. Triton answers a restricted API group only to a request that carries a
given header with a given value (``--http-restricted-api`` and ``--grpc-restricted-protocol``, Triton's
"Inference Protocols and APIs", "Limit Endpoint Access"):

* restricted, on HTTP and gRPC: ``model-repository`` (index, load, unload), ``shared-memory`` (registering a
  region makes the server read that memory), ``trace`` and ``logging`` (settings that change what the server
  writes to disk);
* open: ``inference``, ``health``, ``metadata``, ``model-config`` and ``statistics``, which clients,
  ``trml-edge profile --url`` and the benchmarks use.

The value is a random secret made for each run (``new_token``). The supervisor sends it; nobody else has it
unless the user asks for a copy (``--admin-token-file``: written with mode 0600). Triton takes it on its
command line, which any local user can read from ``/proc``: the secret keeps network clients out, not the
box's other accounts (docs/serving.md, "Security").

An anonymous request to a restricted API gets HTTP 403 or gRPC ``UNAVAILABLE`` ("This protocol is
restricted, expecting header ..."). gRPC metadata keys reach Triton's check with a prefix:
``triton-grpc-protocol-<key>``.

Standard library only.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from trml_edge.errors import ConfigError

ADMIN_HEADER = "trml-admin-key"  # the HTTP header the restricted APIs expect
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"  # the same key as gRPC metadata (Triton's prefix)
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
OPEN_APIS = ("inference", "health", "metadata", "model-config", "statistics")


def new_token() -> str:
    """A per-run secret: 256 random bits, url-safe (no ``:``, ``=`` or ``,``, which Triton's flag syntax uses)."""
    return secrets.token_urlsafe(32)


def restriction_flags(token: str) -> list[str]:
    """Triton's flags that restrict ``RESTRICTED_APIS`` to ``ADMIN_HEADER: token`` on HTTP and gRPC."""
    groups = ",".join(RESTRICTED_APIS)
    return [f"--http-restricted-api={groups}:{ADMIN_HEADER}={token}",
            f"--grpc-restricted-protocol={groups}:{ADMIN_HEADER}={token}"]


def _readable_file(path: Path, flag: str) -> Path:
    if not path.is_file():
        raise ConfigError(f"{flag} {path}: {'not a file' if path.exists() else 'no such file'}; give a PEM file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{flag} {path} is not readable by this user; fix its permissions")
    return path


@dataclass(frozen=True)
class GrpcTLS:
    """TLS on the gRPC port (Triton's ``--grpc-use-ssl``): the server's certificate and key (PEM), and with
    ``client_ca`` mutual TLS (``--grpc-use-ssl-mutual``): only clients with a certificate signed by that CA are
    answered at all. Triton's HTTP port has no TLS; put a reverse proxy in front of it (docs/serving.md)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def flags(self) -> list[str]:
        cert = _readable_file(Path(self.cert), "--grpc-tls-cert")
        key = _readable_file(Path(self.key), "--grpc-tls-key")
        out = ["--grpc-server-cert", str(cert.resolve()), "--grpc-server-key", str(key.resolve())]
        if self.client_ca is None:
            return ["--grpc-use-ssl", "true", *out]
        ca = _readable_file(Path(self.client_ca), "--grpc-tls-client-ca")
        return ["--grpc-use-ssl-mutual", "true", *out, "--grpc-root-cert", str(ca.resolve())]


@dataclass(frozen=True)
class ServerSecurity:
    """What ``serve`` exposes: the admin APIs restricted to a per-run secret (default) or open, where a copy of
    the secret goes, and TLS on the gRPC port."""

    open_admin_api: bool = False  # True: Triton's admin APIs answer anyone (any client can run code on the box)
    admin_token_file: Path | None = None  # write the per-run secret here, mode 0600 (for the user's own tooling)
    grpc_tls: GrpcTLS | None = None
    # open_admin_api with an endpoint beyond loopback is code execution for the whole network: a second, explicit yes
    open_admin_beyond_loopback: bool = False

    def validate(self, hosts: dict[str, str] | None = None) -> None:
        """Every option checked before the server starts; ``hosts``: where each endpoint will listen."""
        if self.open_admin_api and self.admin_token_file is not None:
            raise ConfigError("--admin-token-file and --open-admin-api contradict each other: with the admin APIs "
                              "open there is no token; drop one of them")
        exposed = sorted({h for h in (hosts or {}).values() if not is_loopback(h)})
        if self.open_admin_api and exposed and not self.open_admin_beyond_loopback:
            raise ConfigError(f"--open-admin-api on {', '.join(exposed)} would let anyone who reaches the server "
                              "upload a model whose code runs on this machine; keep the admin APIs restricted (use "
                              "--admin-token-file for your own tooling), or listen on 127.0.0.1 only; if every "
                              "client on that network is trusted, add --open-admin-api-beyond-loopback")
        if self.admin_token_file is not None:
            check_token_file(Path(self.admin_token_file))
        if self.grpc_tls is not None:
            self.grpc_tls.flags()  # every file present and readable before the server starts


def _token_tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def check_token_file(path: Path) -> None:
    """Refuse, before the server starts, a ``--admin-token-file`` that ``write_token_file`` could not write: a
    missing or unwritable folder, a folder or link or device in the file's place, another user's leftover file."""
    flag = f"--admin-token-file {path}"
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag}: the folder {parent} does not exist; create it or choose another path")
    if path.is_symlink():
        raise ConfigError(f"{flag} is a symbolic link; give the path of a regular file (a link could send the "
                          "secret somewhere else)")
    if path.is_dir():
        raise ConfigError(f"{flag} is a folder; give the path of a file, for example {path / 'admin.token'}")
    if path.exists():
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{flag} is not a regular file (a pipe, socket or device); remove it or choose "
                              "another path")
        if st.st_uid != os.geteuid():
            raise ConfigError(f"{flag} belongs to another user (uid {st.st_uid}), left by another run; remove it or "
                              "choose another path")
    tmp = _token_tmp(path)
    try:  # a trial of the very write serve makes once the server is ready
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        os.unlink(tmp)
    except FileExistsError:
        raise ConfigError(f"{flag}: a temporary file {tmp} is in the way (left by a crashed run?); remove it") from None
    except OSError as e:
        raise ConfigError(f"{flag}: cannot write in {parent} ({e.strerror}); choose a folder this user can "
                          "write") from None


def write_token_file(path: Path, token: str) -> None:
    """Write ``token`` to ``path`` with mode 0600, atomically: a reader sees the old file or the whole new one,
    and the secret is never in a file another user could read, even for a moment."""
    path = Path(path)
    tmp = _token_tmp(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_token_file(path: Path, token: str) -> None:
    """Remove the token file if it still holds this run's token (the secret is dead once the server stops)."""
    try:
        if Path(path).read_text(encoding="ascii").strip() == token:
            Path(path).unlink()
    except OSError:
        pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


LOOPBACK = "127.0.0.1"
ENDPOINT_NAMES = {"http": "HTTP", "grpc": "gRPC", "metrics": "metrics"}


def endpoint_hosts(host: str = LOOPBACK, http_host: str | None = None, metrics_host: str | None = None,
                   grpc_tls: bool = False) -> dict[str, str]:
    """The address each endpoint listens on. gRPC on ``host``; HTTP and metrics on ``host`` too, except with gRPC
    TLS on: Triton's HTTP and metrics endpoints have no TLS, so they stay on loopback unless named
    (``http_host``, ``metrics_host``), or the hardened recipe (``--host 0.0.0.0`` with gRPC TLS) would also serve
    plaintext inference and metrics on every interface."""
    default = LOOPBACK if grpc_tls else host
    return {"http": http_host or default, "grpc": host, "metrics": metrics_host or default}


def connect_host(bind: str) -> str:
    """The address a local client uses to reach an endpoint bound to ``bind`` (a wildcard means loopback)."""
    return {"0.0.0.0": LOOPBACK, "::": "::1", "": LOOPBACK}.get(bind, bind)


def exposure_notes(hosts: dict[str, str], ports: dict[str, int], security: ServerSecurity) -> list[str]:
    """The lines ``serve`` prints about who can reach what, per endpoint: empty on loopback with the defaults."""
    notes = []
    if security.open_admin_api:
        notes.append("WARNING: --open-admin-api: Triton's model-repository, shared-memory, trace and logging APIs "
                     "answer anyone who reaches these ports; a model loaded with uploaded files runs its code on "
                     "this machine as this user. Use it only on a box no untrusted client can reach")
    exposed = [e for e in ENDPOINT_NAMES if e in hosts and not is_loopback(hosts[e])]
    if not exposed:
        return notes
    listed = ", ".join(f"{ENDPOINT_NAMES[e]} {hosts[e]}:{ports[e]}" for e in exposed)
    admin = "open to them too" if security.open_admin_api else "restricted to the per-run admin token"
    what = "inference, health, metadata, model config and statistics are" if set(exposed) - {"metrics"} else \
        "the metrics are"
    notes.append(f"listening beyond loopback ({listed}): {what} open to anyone who can reach these ports; the admin "
                 f"APIs are {admin}. See docs/serving.md, 'Security'")
    tls = security.grpc_tls
    if "grpc" in exposed:
        notes.append(("gRPC is TLS-encrypted" + (" and answers only clients with a certificate the CA signed"
                                                 if tls.client_ca else "")) if tls else
                     "WARNING: gRPC is plaintext: frames, text and answers cross the network in clear; add "
                     "--grpc-tls-cert/--grpc-tls-key (and --grpc-tls-client-ca)")
    if "http" in exposed:
        notes.append(f"WARNING: HTTP on {hosts['http']}:{ports['http']} is plaintext (Triton's HTTP endpoint has no "
                     "TLS): frames, text, answers and stream ids cross the network in clear; put a TLS proxy in front "
                     "of a loopback HTTP port instead (docs/serving.md)")
    if "metrics" in exposed:
        notes.append(f"WARNING: metrics on {hosts['metrics']}:{ports['metrics']} are plaintext and need no token: "
                     "they tell anyone which models run and how often")
    if tls is not None and "grpc" in exposed:
        kept = [ENDPOINT_NAMES[e] for e in ("http", "metrics") if e not in exposed]
        if kept:
            notes.append(f"{' and '.join(kept)} stay on loopback because gRPC has TLS and they have none; "
                         "--http-host / --metrics-host open them by name")
    return notes


# /proc mount options that hide other accounts' processes (proc(5), "hidepid"): the numeric and the named forms
HIDING = {"1": "noaccess", "2": "invisible", "4": "ptraceable", "noaccess": "noaccess", "invisible": "invisible",
          "ptraceable": "ptraceable"}


def proc_hides_processes(mounts: str | None = None) -> tuple[bool, str]:
    """Whether /proc hides other accounts' processes from them (mount option ``hidepid``), read from
    ``/proc/self/mounts`` (or ``mounts``): (hidden, the mount in words: "hidepid=invisible", "without hidepid").
    With hidepid off, every local account reads any process's command line, the admin token on tritonserver's
    among them."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError as e:
            return False, f"of unknown options (/proc/self/mounts is unreadable: {e.strerror})"
    options = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "/proc" and fields[2] == "proc":
            options = fields[3].split(",")  # the last mount on /proc is the one in force
    if options is None:
        return False, "of unknown options (no proc file system on /proc)"
    values = dict(o.split("=", 1) for o in options if "=" in o)
    mode = HIDING.get(values.get("hidepid", "0"))
    if mode is None:
        return False, "without hidepid"
    gid = f", gid={values['gid']} (that group's members still see every process)" if "gid" in values else ""
    return True, f"hidepid={mode}{gid}"


def token_visibility_note(security: ServerSecurity) -> str | None:
    """The line ``serve`` prints about who on this box can read the admin token (None with the admin APIs open)."""
    if security.open_admin_api:
        return None
    hidden, how = proc_hides_processes()
    if hidden:
        return (f"admin token: on tritonserver's command line, which other accounts cannot read (/proc is mounted "
                f"{how})")
    return (f"admin token: on tritonserver's command line, which every local account can read (/proc is mounted "
            f"{how}); on a box with other accounts run serve under an account of its own with /proc mounted "
            "hidepid=invisible, or in a container (docs/serving.md, 'Security')")
