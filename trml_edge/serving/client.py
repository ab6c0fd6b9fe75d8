"""A client for the ``trml`` router: one request with frames, text or both, through ``tritonclient``.

``TritonClient("127.0.0.1:8000")`` speaks HTTP (``grpc://host:8001`` speaks gRPC, ``grpcs://host:8001`` gRPC
over TLS: ``tls_ca`` is the CA that signed the server's certificate, ``tls_cert``/``tls_key`` the client's own for
a server that asks for one, ``serve --grpc-tls-client-ca``). It is safe to share between threads: each thread
gets its own connection (tritonclient's HTTP client is not thread safe).
A client error from the server (HTTP 400 / gRPC INVALID_ARGUMENT) raises ``RequestError``; a model that is
down or reloading (HTTP 503 / gRPC UNAVAILABLE, or Triton's 500 naming a dead Python-backend process, which
the server's supervisor is about to reload) raises ``ServingUnavailableError``, which is retryable; any
other failure raises ``ServingError``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trml_edge.errors import (MissingDependencyError, MissingModalityError, RequestError, ServingError,
                              ServingUnavailableError)

ROUTER = "trml"


@dataclass
class ClientResult:
    output: np.ndarray  # () regression score or (C,) class logits
    virtual_modality: str  # "", "visual" or "text"


def _lib(protocol: str):
    try:
        if protocol == "grpc":
            import tritonclient.grpc as lib
        else:
            import tritonclient.http as lib
        from tritonclient.utils import InferenceServerException
    except ImportError as e:
        raise MissingDependencyError(f"tritonclient[{protocol}] is not installed; install it with: "
                                     "pip install 'trml-edge[serve]'") from e
    return lib, InferenceServerException


def parse_url(url: str) -> tuple[str, str]:
    """'grpc://h:p' -> ('grpc', 'h:p'); 'grpcs://h:p' -> ('grpcs', 'h:p'); 'http://h:p' or 'h:p' -> ('http', 'h:p')."""
    for scheme in ("http", "grpcs", "grpc"):
        if url.startswith(f"{scheme}://"):
            return scheme, url[len(scheme) + 3 :].rstrip("/")
    if "://" in url:
        raise ServingError(f"unsupported URL {url!r}; use HOST:PORT (HTTP), grpc://HOST:PORT or grpcs://HOST:PORT "
                           "(gRPC over TLS)")
    return "http", url.rstrip("/")


def _pem(path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ServingError(f"{flag} {path}: {e.strerror}; give a readable PEM file") from None


class TritonClient:
    def __init__(self, url: str, model: str = ROUTER, timeout: float = 120.0, tls_ca: str | Path | None = None,
                 tls_cert: str | Path | None = None, tls_key: str | Path | None = None):
        scheme, self.address = parse_url(url)
        self.protocol = "grpc" if scheme == "grpcs" else scheme  # tritonclient's module
        self.tls = scheme == "grpcs"
        if not self.tls and (tls_ca or tls_cert or tls_key):
            raise ServingError(f"TLS files were given for {url!r}, which is not a grpcs:// URL; the server's gRPC "
                               "port speaks TLS only when serve has --grpc-tls-cert: use grpcs://HOST:PORT")
        if (tls_cert is None) != (tls_key is None):
            raise ServingError("a client certificate needs its key: give --tls-cert and --tls-key together")
        # read now, so a bad path is one error at construction, not a failure inside a worker thread
        self._tls = {"root_certificates": tls_ca, "private_key": tls_key, "certificate_chain": tls_cert}
        for key, flag in (("root_certificates", "--tls-ca"), ("private_key", "--tls-key"),
                          ("certificate_chain", "--tls-cert")):
            if self._tls[key] is not None:
                _pem(self._tls[key], flag)
        self.model, self.timeout = model, timeout
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()

    def _client(self):
        c = getattr(self._local, "client", None)
        if c is None:
            lib, _ = _lib(self.protocol)
            if self.protocol == "grpc" and self.tls:  # tritonclient reads the PEM files itself
                c = lib.InferenceServerClient(self.address, ssl=True, **{k: None if v is None else str(v)
                                                                         for k, v in self._tls.items()})
            elif self.protocol == "grpc":
                c = lib.InferenceServerClient(self.address)
            else:
                c = lib.InferenceServerClient(self.address, connection_timeout=self.timeout,
                                              network_timeout=self.timeout)
            self._local.client = c
            with self._lock:
                self._all.append(c)
        return c

    def inputs(self, frames: np.ndarray | None, text: str | None) -> list:
        """The request's input tensors, each with the router's batch axis of 1."""
        lib, _ = _lib(self.protocol)
        from tritonclient.utils import np_to_triton_dtype

        ins = []
        if text is not None:
            t = lib.InferInput("TEXT", [1, 1], "BYTES")
            t.set_data_from_numpy(np.array([[text.encode("utf-8")]], dtype=object))
            ins.append(t)
        if frames is not None:
            frames = np.ascontiguousarray(frames)
            f = lib.InferInput("FRAMES", [1, *frames.shape], np_to_triton_dtype(frames.dtype))
            f.set_data_from_numpy(frames[None])
            ins.append(f)
        return ins

    def infer(self, frames: np.ndarray | None = None, text: str | None = None) -> ClientResult:
        """frames: uint8 [n, H, W, 3] or None; text: a string or None. At least one is needed."""
        if frames is None and text is None:
            raise MissingModalityError("give --text, --video/--frames, or both: a request needs at least one "
                                       "modality (the server answers FRAMES/TEXT-less requests with an error)")
        lib, exc = _lib(self.protocol)
        outputs = [lib.InferRequestedOutput("OUTPUT"), lib.InferRequestedOutput("VIRTUAL_MODALITY")]
        try:
            res = self._client().infer(self.model, self.inputs(frames, text), outputs=outputs)
        except exc as e:
            raise error_from(e) from None
        except OSError as e:  # HTTP: nothing listens there (gRPC says so as UNAVAILABLE, above)
            raise self.unreachable(e) from None
        virtual = res.as_numpy("VIRTUAL_MODALITY").reshape(-1)[0]
        out = res.as_numpy("OUTPUT")[0]  # (C,)
        return ClientResult(out[0] if out.shape == (1,) else out,
                            virtual.decode("utf-8") if isinstance(virtual, bytes) else str(virtual))

    def layout(self) -> str:
        """The served repository's layout, from the router's config (an open API): "fused" or "ensemble" (a
        repository built before layouts existed is an ensemble one)."""
        _, exc = _lib(self.protocol)
        try:
            cfg = self._client().get_model_config(self.model)
        except exc as e:
            raise error_from(e) from None
        except OSError as e:
            raise self.unreachable(e) from None
        if isinstance(cfg, dict):  # HTTP: the config as JSON
            value = cfg.get("parameters", {}).get("layout", {}).get("string_value")
        else:  # gRPC: a ModelConfigResponse protobuf
            params = cfg.config.parameters
            value = params["layout"].string_value if "layout" in params else None
        return value or "ensemble"

    def unreachable(self, e: OSError) -> ServingUnavailableError:
        err = ServingUnavailableError(f"could not reach the server at {self.address} over {self.protocol.upper()} "
                                      f"({e.strerror or e}); check the address and that `trml-edge serve` is running "
                                      "there (with gRPC TLS on, serve keeps HTTP on 127.0.0.1)")
        err.status = ""
        return err

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                c.close()
            self._all.clear()


CLIENT_ERROR = ("400", "StatusCode.INVALID_ARGUMENT")
UNAVAILABLE = ("503", "StatusCode.UNAVAILABLE")
# Triton's own words while the router itself is being recovered (docs/serving.md, "Recovery"): its dead
# Python-backend process answers 500 "Stub process ... is not healthy" for the requests it had, then, while
# `trml-edge serve`'s supervisor reloads it, Triton's core answers 404 "... has no available versions" (the
# model is in the repository, no version is loaded). Neither status can be changed from the model; both
# mean "retry shortly". A model that is not in the repository at all is "... is not found": not retryable.
RELOADING = ("is not healthy", "has no available versions")


def error_from(e) -> Exception:
    """tritonclient's exception -> RequestError (the client's fault), ServingUnavailableError (retryable) or
    ServingError (the server's fault)."""
    status = str(e.status() or "")
    msg = e.message() if hasattr(e, "message") else str(e)
    if status in CLIENT_ERROR:
        err = RequestError(f"the server refused the request: {msg}")
    elif status in UNAVAILABLE and "failed to connect" in msg:  # gRPC: nothing answered (or TLS did not agree)
        err = ServingUnavailableError(f"could not reach the server (status {status}): {msg}; check the address and "
                                      "that `trml-edge serve` is running (grpcs://: that --tls-ca signed the "
                                      "server's certificate)")
    elif status in UNAVAILABLE or any(s in msg for s in RELOADING):
        err = ServingUnavailableError(f"the server is reloading a model (status {status}): {msg}; retry shortly")
    else:
        err = ServingError(f"the server failed (status {status or 'unknown'}): {msg}")
    err.status = status
    return err
