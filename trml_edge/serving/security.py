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

    def validate(self) -> None:
        if self.open_admin_api and self.admin_token_file is not None:
            raise ConfigError("--admin-token-file and --open-admin-api contradict each other: with the admin APIs "
                              "open there is no token; drop one of them")
        if self.admin_token_file is not None:
            parent = Path(self.admin_token_file).parent
            if not parent.is_dir():
                raise ConfigError(f"--admin-token-file {self.admin_token_file}: the folder {parent} does not exist; "
                                  "create it or choose another path")
        if self.grpc_tls is not None:
            self.grpc_tls.flags()  # every file present and readable before the server starts


def write_token_file(path: Path, token: str) -> None:
    """Write ``token`` to ``path`` with mode 0600, atomically: a reader sees the old file or the whole new one,
    and the secret is never in a file another user could read, even for a moment."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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


def exposure_notes(host: str, ports: dict[str, int], security: ServerSecurity) -> list[str]:
    """The lines ``serve`` prints about who can reach what: empty on loopback with the defaults."""
    notes = []
    if security.open_admin_api:
        notes.append("WARNING: --open-admin-api: Triton's model-repository, shared-memory, trace and logging APIs "
                     "answer anyone who reaches these ports; a model loaded with uploaded files runs its code on "
                     "this machine as this user. Use it only on a box no untrusted client can reach")
    if not is_loopback(host):
        listed = ", ".join(f"{name} {port}" for name, port in ports.items())
        tls = ("gRPC is TLS-encrypted" + (" and needs a client certificate" if security.grpc_tls.client_ca else "")
               if security.grpc_tls else "gRPC and HTTP travel unencrypted")
        admin = "open to them too" if security.open_admin_api else "restricted to the per-run admin token"
        notes.append(f"listening on {host} ({listed}): inference, health, metadata, model config and statistics "
                     f"are open to anyone who can reach these ports; the admin APIs are {admin}; {tls}. To expose "
                     "the server beyond this box, see docs/serving.md, 'Security'")
    return notes
