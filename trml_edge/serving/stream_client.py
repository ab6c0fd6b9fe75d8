"""A client for the ``trml_stream`` router: one live stream as a Triton sequence, and a video file sent as one.

::

    with TritonStream("127.0.0.1:8000") as s:       # a fresh random sequence id
        s.push(frames=first_frames, text="hello")    # the first update carries the start flag
        r = s.push(frames=next_frame[None])          # ClientResult: output, virtual_modality
    # leaving the block sends the end flag, which frees the stream on the server

Errors: an update the server refuses as malformed, or to a stream that is not live, raises ``RequestError``;
a new stream over the server's bound raises ``StreamLimitError`` (retryable: try again later); an update to a
stream the server no longer holds (it was updated to a new bundle, or its router restarted) raises
``StreamRestartError`` (retryable: open a new stream, send the window again); any other failure
``ServingError``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Iterator

import numpy as np

from trml_edge.errors import DataError, RequestError, StreamLimitError, StreamRestartError
from trml_edge.serving.client import ClientResult, TritonClient, _lib, error_from

STREAM_ROUTER = "trml_stream"


class TritonStream:
    """One stream through ``trml_stream``. Not thread safe: one stream per thread (a ``TritonClient`` may be
    shared: each thread gets its own connection)."""

    def __init__(self, client: TritonClient | str, sequence_id: int | None = None, model: str = STREAM_ROUTER):
        self.client = client if isinstance(client, TritonClient) else TritonClient(client, model)
        self._own = not isinstance(client, TritonClient)
        self.model = model
        self.sequence_id = int(sequence_id) if sequence_id is not None else 1 + secrets.randbelow(2 ** 63 - 1)
        if not 0 < self.sequence_id < 2 ** 64:
            raise RequestError(f"a stream's sequence id must be between 1 and 2**64 - 1, got {self.sequence_id}")
        self.started = self.ended = False

    def push(self, frames: np.ndarray | None = None, text: str | None = None, end: bool = False) -> ClientResult:
        """Send new frames (uint8 [k, H, W, 3]) and/or a new text; the prediction over the stream's window.
        ``end``: this is the stream's last update (its state is freed on the server)."""
        if self.ended:
            raise RequestError(f"stream {self.sequence_id} has ended; open a new TritonStream")
        if frames is None and text is None and not end:
            raise RequestError("a stream update needs new frames, a text, or both")
        lib, exc = _lib(self.client.protocol)
        outputs = [lib.InferRequestedOutput("OUTPUT"), lib.InferRequestedOutput("VIRTUAL_MODALITY")]
        start = not self.started
        try:
            res = self.client._client().infer(self.model, self.client.inputs(frames, text), outputs=outputs,
                                              sequence_id=self.sequence_id, sequence_start=start,
                                              sequence_end=end)
        except exc as e:
            err = stream_error(e)
            if isinstance(err, StreamRestartError):  # the server lost it: this object is done
                self.ended = True
                raise StreamRestartError(f"stream {self.sequence_id}: {err}") from None
            # a refused start opened nothing: the next push starts the stream again; any other answer means
            # the server has the stream (a malformed first update still opens it)
            self.started = self.started or not isinstance(err, StreamLimitError)
            self.ended = self.ended or end
            raise err from None
        except OSError as e:  # HTTP: nothing listens there
            raise self.client.unreachable(e) from None
        self.started, self.ended = True, end
        virtual = res.as_numpy("VIRTUAL_MODALITY").reshape(-1)[0]
        out = res.as_numpy("OUTPUT")[0]  # (C,)
        return ClientResult(out[0] if out.shape == (1,) else out,
                            virtual.decode("utf-8") if isinstance(virtual, bytes) else str(virtual))

    def close(self) -> ClientResult | None:
        """End the stream (the end flag with no new input); its last prediction, or None if it never started."""
        result = None
        if self.started and not self.ended:
            result = self.push(end=True)
        if self._own:
            self.client.close()
        return result

    def __enter__(self) -> TritonStream:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        elif self._own:  # the server frees the stream after its idle timeout
            self.client.close()


def stream_error(e) -> Exception:
    """tritonclient's exception -> StreamLimitError (503 / UNAVAILABLE: the bound is reached, retry later),
    RequestError (the client's fault) or ServingError."""
    status = str(e.status() or "")
    msg = e.message() if hasattr(e, "message") else str(e)
    if status in ("503", "StatusCode.UNAVAILABLE") and "refused" in msg:
        err = StreamLimitError(f"the server refused a new stream: {msg}")
        err.status = status
        return err
    if "START flag" in msg:  # Triton's sequence batcher: no such sequence in the model version that serves now
        err = StreamRestartError("the server no longer holds this stream (it was updated to a new bundle, or its "
                                 f"router restarted): start a new stream and send its window again ({msg})")
        err.status = status
        return err
    return error_from(e)


def video_stream(path: str | Path, fps: float) -> Iterator[tuple[float, np.ndarray]]:
    """(time in seconds, RGB uint8 [H, W, 3]) of the frames of a video file, ``fps`` of them per second of video
    (the first frame at or after each 1/fps tick). Decoded one at a time with PyAV."""
    from trml_edge.errors import require

    if not fps > 0:
        raise DataError(f"--fps must be > 0, got {fps}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--stream {path}: no such file; give a video file (for example an mp4)")
    av = require("av", "train")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise DataError(f"--stream {path} is not a video PyAV can read ({getattr(e, 'strerror', None) or e}); "
                        "give an mp4 or another video file") from None
    with container:
        if not container.streams.video:
            raise DataError(f"--stream {path} has no video stream; give a video file (for example an mp4)")
        stream = container.streams.video[0]
        tick, sent = 1.0 / fps, 0
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else sent * tick
                if t + 1e-6 >= sent * tick:
                    sent = int(t / tick + 1e-6) + 1  # the next tick after this frame
                    yield t, frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, ValueError) as e:
            raise DataError(f"--stream {path}: decoding failed ({getattr(e, 'strerror', None) or e}); the file is "
                            "damaged; re-encode it") from None
