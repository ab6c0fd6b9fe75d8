"""The retry contract as a client that is not ours sees it (plain tritonclient, curl, a load balancer), and one bad
request among good ones in a single router batch. Real tritonserver; the dead or failing model is made so on
purpose, and held so (no supervisor reloading it), so that every assertion is deterministic.

* a model behind the router that is down (its process killed, or unloaded) is HTTP 503 / gRPC UNAVAILABLE for
  the requests that need it, never 500 / INTERNAL: a client that retries on 503 recovers by itself;
* a model that fails for any other reason is HTTP 500 / gRPC INTERNAL, naming the model: retrying cannot help;
* ``TritonClient`` maps 503 / UNAVAILABLE to the retryable ``ServingUnavailableError`` on both protocols;
* a malformed request that Triton batched with good ones fails alone.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from export_fixtures import bundle, synth_data
from serving_fixtures import classification_bundle, repository, router_batches, send_together, small_batch_server
from trml_edge.errors import RequestError, ServingError, ServingUnavailableError
from trml_edge.runtime import Pipeline
from trml_edge.serving.client import TritonClient, error_from

TOL = 1e-5
TEXT = "a calm and friendly review"


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    """An ensemble-layout server on a copy of the test repository, under explicit model control, whose
    supervisor is stopped: what breaks stays broken until the test mends it."""
    import shutil

    from trml_edge.serving.server import TritonServer

    repo = tmp_path_factory.mktemp("held") / "repo"
    shutil.copytree(repository(layout="ensemble"), repo)
    srv = TritonServer(repo, supervise=True).start()
    srv.supervisor.stop()
    srv.supervisor = None
    yield srv
    srv.stop(timeout=2.0)  # Triton waits out its exit timeout for a model whose stub was killed: not under test


@pytest.fixture(scope="module")
def clip():
    from trml_edge.data.corpus import read_corpus
    from trml_edge.data.video import read_frames

    rec = next(r for r in read_corpus(synth_data()) if r.split == "test")
    frames, mask = read_frames(rec.video, 8)
    return frames[mask]


def _plain(srv, frames=None, text=None) -> dict:
    """One request with tritonclient alone, over HTTP and gRPC: {protocol: output array or (status, message)}."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    out = {}
    for name, lib, url in (("http", httpclient, srv.url), ("grpc", grpcclient, srv.grpc_url)):
        ins = []
        if text is not None:
            t = lib.InferInput("TEXT", [1, 1], "BYTES")
            t.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
            ins.append(t)
        if frames is not None:
            f = lib.InferInput("FRAMES", [1, *frames.shape], "UINT8")
            f.set_data_from_numpy(frames[None])
            ins.append(f)
        c = lib.InferenceServerClient(url)
        try:
            out[name] = c.infer("trml", ins).as_numpy("OUTPUT")[0]
        except InferenceServerException as e:
            out[name] = (str(e.status()), e.message())
        finally:
            c.close()
    return out


UNAVAILABLE = {"http": "503", "grpc": "StatusCode.UNAVAILABLE"}
INTERNAL = {"http": "500", "grpc": "StatusCode.INTERNAL"}


def _kill(srv, model: str) -> None:
    from trml_edge.serving.supervisor import stubs_of

    (stub,) = [s for s in stubs_of(srv.proc.pid) if s.model == model]
    os.kill(stub.pid, signal.SIGKILL)
    end = time.monotonic() + 10
    while os.path.exists(f"/proc/{stub.pid}") and time.monotonic() < end:
        time.sleep(0.05)


def test_a_dead_or_unloaded_model_is_503_to_any_client_and_others_keep_serving(held, clip):
    pipe = Pipeline(bundle("fp32"))
    text_missing = float(pipe.predict(clip, None).output)
    _kill(held, "text_encoder")  # an OOM kill, say; nothing reloads it here
    for what in ("process killed", "model unloaded"):
        if what == "model unloaded":  # as while the supervisor reloads it
            status, body = held.request("/v2/repository/models/text_encoder/unload", b"{}", 60)
            assert status == 200, body
        # both need the text encoder (with its process dead, each answer waits about a second for Triton to tell)
        for frames, text in ((None, TEXT),) if what == "process killed" else ((None, TEXT), (clip, TEXT)):
            for protocol, got in _plain(held, frames, text).items():
                assert isinstance(got, tuple), (what, protocol, got)
                status, message = got
                assert status == UNAVAILABLE[protocol], (what, protocol, status, message)
                assert "text_encoder" in message and "retry shortly" in message, message
        # a scenario that does not need it is answered as before
        for protocol, got in _plain(held, clip, None).items():
            assert not isinstance(got, tuple) and abs(float(got[0]) - text_missing) <= TOL, (what, protocol, got)
        # our own client: retryable on both protocols, with the status it saw
        for url, status in ((held.url, "503"), (f"grpc://{held.grpc_url}", "StatusCode.UNAVAILABLE")):
            c = TritonClient(url)
            with pytest.raises(ServingUnavailableError) as e:
                c.infer(None, TEXT)
            c.close()  # an open connection would hold the server's shutdown for its exit timeout
            assert e.value.status == status and e.value.retryable
    status, body = held.request("/v2/repository/models/text_encoder/load", b"{}", 120)
    assert status == 200, body
    want = float(pipe.predict(None, TEXT).output)
    assert all(abs(float(g[0]) - want) <= TOL for g in _plain(held, None, TEXT).values())


def test_the_fused_routers_death_is_500_naming_it_then_served_without_a_404(tmp_path, clip):
    """Fused layout: no model stands in front of the router, so its dead process gets Triton's own 500 (the one
    status a plain client sees that cannot be a 503); the supervisor's background reload then swaps in a new
    process without the model ever leaving the repository: every answer meanwhile is an answer or that 500,
    never Triton's 404 "has no available versions", and after the reload every request is answered."""
    import shutil
    import threading

    from trml_edge.serving.server import TritonServer
    from trml_edge.serving.supervisor import Supervisor

    repo = tmp_path / "repo"
    shutil.copytree(repository(layout="fused"), repo)
    srv = TritonServer(repo, supervise=True).start()
    srv.supervisor.stop()  # held: the test reloads it itself, with the supervisor's own method
    srv.supervisor = None
    try:
        want = float(Pipeline(bundle("fp32")).predict(clip, TEXT).output)
        _kill(srv, "trml")
        for protocol, got in _plain(srv, clip, TEXT).items():
            assert isinstance(got, tuple), (protocol, got)
            status, message = got
            assert status == INTERNAL[protocol] and "Stub process 'trml_0_0' is not healthy" in message, got
        for url in (srv.url, f"grpc://{srv.grpc_url}"):
            c = TritonClient(url)
            with pytest.raises(ServingUnavailableError):  # our client: retryable, whatever the protocol
                c.infer(clip, TEXT)
            c.close()
        seen, stop = [], threading.Event()

        def plain_loop():
            while not stop.is_set():
                seen.extend(_plain(srv, None, TEXT).values())

        th = threading.Thread(target=plain_loop)
        th.start()
        try:
            ok, why = Supervisor(srv.proc.pid, srv.request, lambda line: None).reload("trml")
            assert ok, why
        finally:
            stop.set()
            th.join(60)
        assert seen
        for got in seen:
            assert not isinstance(got, tuple) or (got[0] in INTERNAL.values() and "is not healthy" in got[1]), got
        for protocol, got in _plain(srv, clip, TEXT).items():
            assert not isinstance(got, tuple) and abs(float(got[0]) - want) <= TOL, (protocol, got)
    finally:
        srv.stop(timeout=2.0)


FAULTY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError("deliberate fault for the test"))
                for _ in requests]
"""


def test_a_model_that_fails_is_500_naming_it_never_503(held):
    """A graph model that answers with an error while its process is fine: a fault, not a reason to retry."""
    code = held.repo / "gen_text_to_visual" / "1" / "model.py"
    good = code.read_text()
    code.write_text(FAULTY)  # the generator now fails every request, its process alive
    status, text = held.request("/v2/repository/models/gen_text_to_visual/load", b"{}", 120)
    assert status == 200, text
    try:
        for protocol, got in _plain(held, None, TEXT).items():  # visual missing: the generator runs
            assert isinstance(got, tuple), (protocol, got)
            status, message = got
            assert status == INTERNAL[protocol], (protocol, status, message)
            assert "gen_text_to_visual" in message and "deliberate fault" in message, message
            assert "retry" not in message
        for url in (held.url, f"grpc://{held.grpc_url}"):
            c = TritonClient(url)
            with pytest.raises(ServingError) as e:
                c.infer(None, TEXT)
            c.close()
            assert not isinstance(e.value, ServingUnavailableError), e.value
    finally:  # back to the repository's own model
        code.write_text(good)
        status, text = held.request("/v2/repository/models/gen_text_to_visual/load", b"{}", 120)
        assert status == 200, text


def test_the_client_maps_each_protocols_statuses():
    """Deterministic: tritonclient's exception as each protocol raises it -> the client's error types."""
    from tritonclient.utils import InferenceServerException

    cases = [("503", "model text_encoder is unavailable", ServingUnavailableError),
             ("StatusCode.UNAVAILABLE", "model text_encoder is unavailable", ServingUnavailableError),
             ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ServingUnavailableError),
             ("400", "TEXT is empty", RequestError), ("StatusCode.INVALID_ARGUMENT", "TEXT is empty", RequestError),
             ("500", "trml router: GraphCallError: model x failed", ServingError),
             ("StatusCode.INTERNAL", "trml router: GraphCallError: model x failed", ServingError),
             ("500", "Stub process 'trml_0_0' is not healthy", ServingUnavailableError),
             ("404", "Request for unknown model: 'trml' has no available versions", ServingUnavailableError),
             ("404", "Request for unknown model: 'trlm' is not found", ServingError)]
    for status, message, kind in cases:
        err = error_from(InferenceServerException(message, status=status))
        assert type(err) is kind, (status, message, type(err))
        assert err.status == status


@pytest.mark.parametrize("layout", ["ensemble", "fused"])
def test_one_bad_request_in_a_batch_fails_alone(layout):
    """Four good text-only requests and an empty one sent together reach one router execution (Triton's batch
    statistics show a batch of 5; the router waits 50 ms to fill one): the bad one gets 400, each good one its
    own answer."""
    from tritonclient.utils import InferenceServerException

    srv = small_batch_server("regression" if layout == "ensemble" else "classification", layout=layout)
    pipe = Pipeline(bundle("fp32") if layout == "ensemble" else classification_bundle())
    texts = ["a warm and lovely film", "dull and far too long", " ", "it was fine, i guess", "brilliant acting"]
    for attempt in range(3):  # Triton may split them if one arrives late; the batch statistics tell
        before = router_batches(srv.url)
        results = send_together(srv.url, [(None, t) for t in texts])
        after = router_batches(srv.url)
        if after.get(5, 0) > before.get(5, 0):
            break
    else:
        pytest.fail(f"the five requests never shared a router execution: {after}")
    for t, got in zip(texts, results):
        if not t.strip():
            assert isinstance(got, InferenceServerException) and got.status() == "400", got
            assert "TEXT is empty" in got.message()
        else:
            want = np.atleast_1d(pipe.predict(None, t).output)
            assert not isinstance(got, Exception) and np.abs(got - want).max() <= TOL, (t, got, want)
