"""What the trml routers (``trml`` and ``trml_stream``, in either repository layout) share: the response and the
error status of each request, the fused layout's in-process graphs, and the counters on Triton's metrics
endpoint.

* ``error_response``: a malformed request (``errors.DataError``) is INVALID_ARG (HTTP 400) for itself alone; a
  model that is down or reloading (an exception with ``retryable``, as ``trml_bls.GraphCallError``) or a stream
  over the live-stream bound (``errors.StreamLimitError``) is UNAVAILABLE (HTTP 503, retryable); anything else
  is a fault of ours, INTERNAL (HTTP 500).
* ``fused_pipeline``: the fused layout's graphs, run in the router's process by the package's own runtime.
* ``Counters``: ``trml_requests_total`` (by scenario, virtual modality and outcome), so an operator sees how
  often the video or the text is missing whatever the layout (the ensemble layout also has Triton's own counters
  per scenario ensemble; the fused layout has no other model), and ``trml_graph_rows_total`` (fused: the work
  of each graph). Sent to Triton from a background thread, off the request's path.

Imports numpy and ``triton_python_backend_utils`` only, plus the ``trml_core`` copies (and, fused, the runtime
and onnxruntime); ``trml-edge triton build`` copies this file beside each router's ``model.py``.
"""

import os
import threading

import numpy as np
import triton_python_backend_utils as pb_utils
from trml_core import errors, routing

OK, CLIENT_ERROR, UNAVAILABLE, ERROR = "ok", "client_error", "unavailable", "error"


def error_response(exc):
    """(the response for a request that failed with ``exc``, its outcome label)."""
    if isinstance(exc, errors.StreamLimitError):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(
            str(exc), pb_utils.TritonError.UNAVAILABLE)), UNAVAILABLE
    if getattr(exc, "retryable", False):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(
            f"{exc}; retry shortly", pb_utils.TritonError.UNAVAILABLE)), UNAVAILABLE
    if isinstance(exc, errors.DataError):  # the client's mistake: only this request fails
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(
            str(exc), pb_utils.TritonError.INVALID_ARG)), CLIENT_ERROR
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(
        f"trml router: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)), ERROR


def answer(out, scenario, batched):
    """The response for ``out`` (b, C) scores or logits of one request's rows, routed as ``scenario``."""
    names = np.full((len(out), 1), routing.VIRTUAL_MODALITY[scenario].encode("utf-8"), dtype=object)
    out = np.asarray(out, np.float32)
    if not batched:  # a router without a batch axis answers one row without it
        out, names = out[0], names[0]
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", out),
                                                      pb_utils.Tensor("VIRTUAL_MODALITY", names)])


def fused_pipeline(here, conf, limits):
    """A ``Pipeline`` on the bundle copied beside a fused-layout router (its sha256 values checked first), with the
    repository's ORT threads and per-graph chunk limits (``conf``: router.json or stream.json)."""
    from trml_core.runtime.bundle import load_bundle
    from trml_core.runtime.pipeline import Pipeline

    try:
        bundle = load_bundle(os.path.join(here, conf["bundle_dir"]))
    except errors.BundleError as e:
        raise errors.BundleError(f"{e}. In a served repository: its copy of the bundle changed after `trml-edge "
                                 "triton build`; rebuild the repository from the bundle") from None
    pipe = Pipeline(bundle, threads=int(conf["threads"]), limits=limits, chunk_rows=conf["graph_max_batch"])
    for graph in bundle.graphs:  # every session now: the model is ready when Triton says so, the first request fast
        bundle.session(graph, pipe.providers, pipe.threads)
    frames = np.zeros((2, 32, 32, 3), np.uint8)  # and every scenario run once: ORT's first run allocates its
    for f, t in ((frames, "warm up"), (None, "warm up"), (frames, None)):  # arenas; a version switch (triton
        pipe.predict(f, t)  # update) moves requests here only once this returned
    pipe.rows, pipe.trace = {}, []  # the warm-up is not served work (trml_graph_rows_total)
    return pipe


def version_gauges(model, params):
    """``trml_repository_version{model}`` (the repository version this router serves) and
    ``trml_update_rollbacks{model}`` (updates of the repository rolled back so far), from the config parameters
    ``triton update`` sets when it loads a version; keep the result on the model. One series per router, set by
    the generation that loads last (the one that serves): an old generation never deletes it, since deleting a
    series removes it for every process that holds it."""
    out = []
    for name, desc, value in (
            ("trml_repository_version", "The repository version this router serves (trml-edge triton update)",
             params.get("trml_repository_version", "1")),
            ("trml_update_rollbacks", "Updates of this repository rolled back so far (failed probations and "
             "trml-edge triton rollback)", params.get("trml_update_rollbacks", "0"))):
        family = pb_utils.MetricFamily(name=name, kind=pb_utils.MetricFamily.GAUGE, description=desc)
        metric = family.Metric(labels={"model": model})
        metric.set(float(value))
        out.append((family, metric))
    return out


class Counters:
    """Counters on Triton's metrics endpoint, kept in memory and sent by a background thread every ``period``
    seconds (and on ``close``): a metric update is a message to Triton's process, which a request should not
    wait for. Thread safe. Keep the instance on the model while it serves: a metric lives while its family does.

    * ``trml_requests_total{model, scenario, virtual_modality, outcome}``: every request a router answered, by
      scenario (which modality was missing, "none" when neither was sent), the generated (virtual) modality and
      the outcome (ok, client_error, unavailable, error);
    * ``trml_graph_rows_total{model, graph}`` (fused layout): the rows each graph ran on in the router's process
      (frames for the image encoder, clips or texts for the others); the ensemble layout's graph models have
      Triton's own statistics instead.
    """

    FAMILIES = {
        "trml_requests_total": "Requests answered by a trml router, by scenario (which modality was missing), "
                               "the generated (virtual) modality and the outcome",
        "trml_graph_rows_total": "Rows each graph ran on inside a fused-layout trml router (frames for the image "
                                 "encoder)",
    }

    def __init__(self, model, period=0.5):
        self.model = model
        self._families = {name: pb_utils.MetricFamily(name=name, kind=pb_utils.MetricFamily.COUNTER,
                                                      description=desc) for name, desc in self.FAMILIES.items()}
        self._metrics, self._counted, self._now = {}, {}, {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), name="trml-metrics", daemon=True)
        self._thread.start()

    def request(self, scenario, outcome, n=1):
        """Count ``n`` requests of ``scenario`` (None: the request could not be routed) with ``outcome``."""
        scenario = scenario or "none"
        key = ("trml_requests_total", (("scenario", scenario),
                                       ("virtual_modality", routing.VIRTUAL_MODALITY.get(scenario) or "none"),
                                       ("outcome", outcome)))
        with self._lock:
            self._now[key] = self._now.get(key, 0) + n

    def graph_rows(self, totals):
        """The rows each graph has run on so far (``Pipeline.rows``: graph -> cumulative count)."""
        with self._lock:
            for graph, total in totals.items():
                self._now[("trml_graph_rows_total", (("graph", graph),))] = total

    def flush(self):
        with self._lock:
            todo = [(k, v - self._counted.get(k, 0)) for k, v in self._now.items() if v > self._counted.get(k, 0)]
            self._counted.update({k: self._now[k] for k, _ in todo})
        for (name, labels), n in todo:
            metric = self._metrics.get((name, labels))
            if metric is None:
                metric = self._metrics[(name, labels)] = self._families[name].Metric(
                    labels={"model": self.model, **dict(labels)})
            metric.increment(n)

    def _run(self, period):
        while not self._stop.wait(period):
            self.flush()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.flush()
