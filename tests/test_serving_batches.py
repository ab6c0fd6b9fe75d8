"""What a user would notice that single requests do not show: several different requests batched together by
the router and chunked to the graphs' max batch, a classification model's logits, the gRPC client's error
mapping, and a server whose Python processes cannot exit by themselves. Real tritonserver, real bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export_fixtures import bundle
from serving_fixtures import (classification_bundle, group_members, repository, router_batches, send_together, server,
                              small_batch_server, sample_clips)
from trml_edge.errors import RequestError
from trml_edge.runtime import Pipeline
from trml_edge.serving.client import TritonClient

TOL = 1e-5


@pytest.fixture(scope="module")
def clips():
    return sample_clips()


@pytest.mark.parametrize("scenario", ["complete", "visual_missing", "text_missing"])
def test_a_batch_of_different_requests_is_chunked_and_each_gets_its_own_answer(clips, scenario):
    """7 different requests of one scenario in one router batch, graphs taking 2 rows a call: 4 chunks, the
    last one partial; every request must get the answer of its own inputs."""
    srv = small_batch_server()
    pipe = Pipeline(bundle("fp32"))
    reqs = [(None if scenario == "visual_missing" else f, None if scenario == "text_missing" else t)
            for f, t in clips]
    expected = [float(pipe.predict(f, t).output) for f, t in reqs]
    assert len({round(e, 4) for e in expected}) == len(expected)  # distinct answers, so a mix-up shows
    before = router_batches(srv.url)
    got = send_together(srv.url, reqs)
    after = router_batches(srv.url)
    assert [float(g[0]) for g in got] == pytest.approx(expected, abs=TOL)
    # the router really saw them together: some execution held more than the graphs' max batch of 2
    grew = {b: after.get(b, 0) - before.get(b, 0) for b in after}
    assert any(b > 2 and n > 0 for b, n in grew.items()), grew


def test_a_classification_bundle_serves_its_logits(clips):
    """A MELD-style bundle: OUTPUT carries the 7 class logits of each request, as the runtime computes them."""
    srv = small_batch_server("classification")
    pipe = Pipeline(classification_bundle())
    reqs = [(f, t) for f, t in clips[:3]] + [(None, clips[3][1]), (clips[4][0], None)]
    got = send_together(srv.url, reqs)
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://{srv.url}/v2/models/trml") as r:  # what clients read: the metadata
        meta = {o["name"]: o for o in json.loads(r.read())["outputs"]}
    assert meta["OUTPUT"]["shape"] == [-1, 7] and meta["OUTPUT"]["datatype"] == "FP32"
    c = TritonClient(srv.url)
    for (f, t), g in zip(reqs, got):
        ref = pipe.predict(f, t).output
        assert ref.shape == (7,) and g.shape == (7,)
        assert np.abs(g - ref).max() <= TOL
        one = c.infer(f, t)
        assert one.output.shape == (7,) and np.abs(one.output - ref).max() <= TOL
    c.close()


def test_grpc_client_maps_a_bad_request_to_a_request_error():
    c = TritonClient(f"grpc://{server().grpc_url}")
    with pytest.raises(RequestError, match="refused the request.*FRAMES") as e:
        c.infer(np.zeros((2, 8, 8), np.uint8), "fine")  # rank 3: not [n, H, W, 3]
    assert e.value.status == "StatusCode.INVALID_ARGUMENT"
    assert c.infer(None, "a fine film").virtual_modality == "visual"  # and the server keeps serving
    c.close()


SPAWNER = """
import signal, subprocess
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        # a helper process that ignores hang-ups, as a model's worker pool might: only a signal sent to the
        # whole process group reaches it when the server stops
        self.helper = subprocess.Popen(["sleep", "600"], preexec_fn=lambda: signal.signal(signal.SIGHUP,
                                                                                          signal.SIG_IGN))

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.zeros(1, np.float32))]) for _ in requests]
"""


def test_stop_ends_the_whole_process_group(tmp_path):
    """A model that starts a helper process: stop() must end it too (it is in the server's process group)."""
    import shutil

    from trml_edge.serving.server import TritonServer

    repo = tmp_path / "repo"
    shutil.copytree(repository(), repo)
    (repo / "spawner" / "1").mkdir(parents=True)
    (repo / "spawner" / "1" / "model.py").write_text(SPAWNER)
    (repo / "spawner" / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 0\ninput [{ name: "X", data_type: TYPE_FP32, dims: [1] }]\n'
        'output [{ name: "Y", data_type: TYPE_FP32, dims: [1] }]\n')
    srv = TritonServer(repo).start()
    pgid = srv.proc.pid
    try:
        members = group_members(pgid)
        helpers = [p for p in members if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"sleep\x00600")]
        assert len(helpers) == 1 and len(members) >= 5  # server, 3 stubs (trml, trml_stream, spawner), the helper
    finally:
        srv.stop(timeout=10.0)
    assert group_members(pgid) == [], "processes of the server's group survived stop()"
