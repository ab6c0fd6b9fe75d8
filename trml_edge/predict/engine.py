"""Where ``predict`` scores: the torch-free runtime in this process, or a Triton server.

Both backends answer the same two calls:

* ``score(frames, text)``: one stateless request (finite sources): ``Pipeline.predict`` or the ``trml``
  router through ``TritonClient.infer``;
* ``stream()``: a new live session: ``Pipeline.stream()`` or a ``trml_stream`` sequence through
  ``TritonStream``. A session holds the window of frame embeddings; ``predict`` ends it when the camera is lost,
  so no score after a loss sees a frame from before it.

``clip_frames(n)`` says which of a window's ``n`` frames are sent: the model's own uniform pick of its window
(``routing.pick_frames``) where the window is known, so a request carries only the frames the model uses and the
answer equals ``Pipeline.predict`` on all ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trml_edge.errors import ServingError, ServingUnavailableError
from trml_edge.routing import pick_frames


@dataclass
class Scored:
    output: np.ndarray  # () score or (C,) class logits
    virtual_modality: str  # "", "visual" or "text"


class LocalEngine:
    """The bundle, run by ONNX Runtime in this process (numpy and onnxruntime only: no torch)."""

    name = "local"

    def __init__(self, bundle, threads: int = 0):
        from trml_edge.runtime import Pipeline

        self.pipe = Pipeline(bundle, threads=threads)
        self.window = self.pipe.max_frames  # frames the temporal encoder takes
        self.request_limit = self.pipe.limits.max_frames  # frames one request may carry
        self.classes = int(self.pipe.bundle.manifest["model"]["dims"]["classes"]) if not self.pipe.regression else 1

    def clip_frames(self, n: int) -> np.ndarray:
        return pick_frames(n, self.window)

    def score(self, frames: np.ndarray | None, text: str | None) -> Scored:
        p = self.pipe.predict(frames, text)
        return Scored(np.asarray(p.output), p.virtual_modality)

    def stream(self) -> LocalSession:
        return LocalSession(self.pipe.stream())

    def close(self) -> None:
        pass


class LocalSession:
    def __init__(self, stream):
        self._stream = stream

    def push(self, frames: np.ndarray | None, text: str | None) -> Scored:
        p = self._stream.push(frames=frames, text=text)
        return Scored(np.asarray(p.output), p.virtual_modality)

    def close(self) -> None:
        self._stream = None  # the state is freed with the object


class ServerEngine:
    """A running ``trml-edge serve``: ``trml`` for finite sources, ``trml_stream`` for live ones.

    Construction asks the server for the router's config (an open API), so an unreachable server or a
    repository without the routers is one error before any input is read.
    """

    name = "server"

    def __init__(self, url: str, tls: dict | None = None):
        from trml_edge.serving.client import TritonClient

        self.url = url
        self.client = TritonClient(url, **(tls or {}))
        params = _router_parameters(self.client)
        # the model's window (`triton build` writes it): a request carries the frames the router would pick of
        # the clip's, so the answer equals Pipeline.predict on all of them; a repository built before it was
        # announced gets every frame up to the request limit, and its router picks from those
        self.window = int(params["model_frames"]) if "model_frames" in params else None
        self.request_limit = int(params.get("max_frames_per_request", 512))
        self.classes = None  # known from the first answer

    def clip_frames(self, n: int) -> np.ndarray:
        return pick_frames(n, self.window or self.request_limit)

    def score(self, frames: np.ndarray | None, text: str | None) -> Scored:
        r = self.client.infer(frames, text)
        return Scored(np.asarray(r.output), r.virtual_modality)

    def stream(self) -> ServerSession:
        from trml_edge.serving.stream_client import TritonStream

        return ServerSession(TritonStream(self.client))

    def close(self) -> None:
        self.client.close()


class ServerSession:
    """One ``trml_stream`` sequence (a random 63-bit id)."""

    def __init__(self, stream):
        self._stream = stream

    def push(self, frames: np.ndarray | None, text: str | None) -> Scored:
        r = self._stream.push(frames=frames, text=text)
        return Scored(np.asarray(r.output), r.virtual_modality)

    def close(self) -> None:
        """Send the end flag, which frees the stream's state on the server. A server that cannot be reached
        frees it after its idle timeout, so that failure is reported, not raised."""
        stream, self._stream = self._stream, None
        if stream is not None and stream.started and not stream.ended:
            try:
                stream.push(end=True)
            except ServingError as e:
                raise StreamEndError(f"could not end stream {stream.sequence_id} ({e}); the server frees it "
                                     "after its idle timeout") from e


class StreamEndError(ServingError):
    """The end flag of a stream did not reach the server (its state is freed there by the idle timeout)."""


def _router_parameters(client) -> dict[str, str]:
    """The ``trml`` router's config parameters ({name: value}), through the open model-config API."""
    from trml_edge.serving.client import _lib, error_from

    _, exc = _lib(client.protocol)
    try:
        cfg = client._client().get_model_config(client.model)
    except exc as e:
        err = error_from(e)
        raise type(err)(f"{err}; is `trml-edge serve REPO` running at {client.address}, with a repository from "
                        "`trml-edge triton build`?") from None
    except OSError as e:  # HTTP: the connection itself was refused
        raise ServingUnavailableError(f"could not reach the server at {client.address} ({e}); start it with "
                                      "`trml-edge serve REPO` or give the right --url") from None
    if isinstance(cfg, dict):  # HTTP: JSON
        return {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
    return {k: v.string_value for k, v in cfg.config.parameters.items()}  # gRPC: protobuf
