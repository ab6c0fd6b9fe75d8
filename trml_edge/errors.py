"""Typed errors. Every message says what went wrong and what to do about it.

A leaf module (standard library only): ``trml-edge triton build`` copies it, byte for byte, beside the
router's other torch-free modules, so the served router raises the same types.
"""

from __future__ import annotations


class TrmlEdgeError(Exception):
    """Base class of every error trml-edge raises on purpose."""


class ConfigError(TrmlEdgeError):
    """A configuration is malformed, unknown, or from a newer version."""


class CheckpointError(TrmlEdgeError):
    """A run directory or weights file is missing or unreadable."""


class DataError(TrmlEdgeError):
    """A dataset, clip or sample is malformed."""


class MissingModalityError(DataError):
    """A sample has neither modality, so no prediction can be made."""


class RequestError(DataError):
    """One inference request is malformed (wrong dtype, rank, size, encoding...). The client must fix it;
    a server answers it with a client-error status and keeps serving."""


class MissingDependencyError(TrmlEdgeError):
    """An optional dependency is not installed."""


class ExportError(TrmlEdgeError):
    """A graph could not be exported or converted."""


class ParityError(ExportError):
    """A converted graph or pipeline is outside its error budget."""


class ServingError(TrmlEdgeError):
    """A Triton repository cannot be built, a server cannot start, or a server answered with an error."""


class ServingUnavailableError(ServingError):
    """The server, or a model behind the router, is down or reloading (HTTP 503 / gRPC UNAVAILABLE).
    Retryable: send the request again shortly."""

    retryable = True


class StreamRestartError(ServingError):
    """The server no longer holds this stream: it was updated to a new bundle (`triton update`: a stream never
    mixes two bundles' windows) or its router restarted. Retryable: start a new stream and send its window
    again; the old window's frames are not scored by the new version."""

    retryable = True


class StreamLimitError(ServingError):
    """A new stream was refused because the live-stream bound is reached. Retryable: try again after a
    stream ends or times out (Triton answers it with UNAVAILABLE / HTTP 503)."""


class BundleError(TrmlEdgeError):
    """An export bundle is missing files or fails its hash check."""


# ONNX Runtime comes in several distributions that provide the one ``onnxruntime`` module; none is a hard dependency.
ORT_FIX = ("no ONNX Runtime is installed: pip install 'trml-edge[cpu]' (CPU) or 'trml-edge[gpu]' (onnxruntime-gpu, "
           "CUDA); on a Jetson, NVIDIA's onnxruntime-gpu wheel for its JetPack")


def require_onnxruntime() -> None:
    """Raise the one-line fix when no distribution provides the ``onnxruntime`` module."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        raise MissingDependencyError(ORT_FIX)


def require(module: str, extra: str):
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"'{module}' is not installed; install it with: pip install 'trml-edge[{extra}]'"
        ) from e


class ClipError(DataError):
    """One video clip cannot be used. ``kind`` names the problem for reports (``trml-edge data check``)."""

    kind = "unreadable"


class CorruptClipError(ClipError):
    """The file is not a decodable video (damaged, truncated, or not a video at all)."""

    kind = "corrupt"


class EmptyClipError(ClipError):
    """The file exists but holds no frames (0 bytes, no streams, or a video stream with no frames)."""

    kind = "empty"


class NoVideoStreamError(ClipError):
    """The container opens but has no video stream (for example an audio-only file)."""

    kind = "no_video_stream"
