"""BLS calls from a trml router to the models behind it: the one place both routers (``trml`` and
``trml_stream``) make them.

* Outputs are asked for in CPU memory (the Python backend's ``preferred_memory`` option, python_backend
  README, "Inference Request API"): on a discrete GPU Triton's TensorRT backend otherwise hands back device
  memory, which ``as_numpy()`` refuses ("Tensor is stored in GPU and cannot be converted to NumPy",
  python_backend ``src/pb_tensor.cc``). The backend always copies an output from its engine binding into
  the buffer the response allocator gives it, so asking for CPU only chooses where that one copy lands; on a
  Jetson (integrated GPU) it is the same single copy.
* A call larger than the model's ``max_batch_size`` is sent in chunks and put back in order.
* Calls are synchronous (the Python backend's ``exec()``, from a plain ``execute``), chunks one after the
  other: on the bundled Triton 2.51 a BLS hop costs about 0.3 ms less than through ``async_exec()``, and an
  ``async def execute`` adds more (docs/serving.md, "The router, sync"). What concurrent calls could overlap
  here (tokenization, a stream's occasional text-encoder call) is worth less than that.
* A failed call raises ``GraphCallError`` with ``retryable``: True when the model is down or reloading
  (a dead Python-backend stub, a model being reloaded, a model not ready), so the router answers the
  request with UNAVAILABLE (HTTP 503, gRPC UNAVAILABLE) and a message naming the model; False for any other
  fault, answered with INTERNAL (500) (``trml_respond.error_response``).

Imports numpy and ``triton_python_backend_utils`` only; ``trml-edge triton build`` copies this file beside
each router's ``model.py`` in the ensemble layout (the fused layout makes no BLS call).
"""

import re

import numpy as np
import triton_python_backend_utils as pb_utils

# What Triton and the Python backend say when the model behind a call is down or not (yet) loaded.
_DOWN = ("is not healthy", "not ready", "unavailable", "unknown model", "is not found", "no available version",
         "failed to connect", "has been unloaded", "is unloading", "is loading")


class GraphCallError(Exception):
    """A model behind the router failed. ``retryable``: it is down or reloading (answer 503, not 500)."""

    def __init__(self, model, message, retryable, steps=()):
        # inside an ensemble the failing step is named by its dead stub ("Stub process 'text_encoder_0_0' ..."):
        # name that model, the one being reloaded; an ensemble unloaded with it names its steps instead
        stub = re.search(r"Stub process '(.+?)_\d+_\d+'", message)
        culprit = stub.group(1) if stub else model
        behind = f" (runs {', '.join(steps)})" if steps and not stub else ""
        super().__init__(f"model {culprit}{behind} {'is unavailable' if retryable else 'failed'}: {message}")
        self.model, self.retryable = culprit, retryable


def _retryable(error):
    code = error.code() if hasattr(error, "code") else None
    if code is not None and code == pb_utils.TritonError.UNAVAILABLE:
        return True
    msg = error.message().lower()
    return any(s in msg for s in _DOWN)


_CPU = None


def _cpu_memory():
    global _CPU
    if _CPU is None:
        _CPU = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
    return _CPU


def _read(model, resp, outputs, steps):
    """A response -> {output: host array}; raises GraphCallError for an error response or a missing output."""
    if resp.has_error():
        raise GraphCallError(model, resp.error().message(), _retryable(resp.error()), steps)
    out = {}
    for name in outputs:
        t = pb_utils.get_output_tensor_by_name(resp, name)
        if t is None:
            raise GraphCallError(model, f"the response has no output {name}", False)
        if not t.is_cpu():  # preferred_memory is a preference: never hand device memory to numpy
            raise GraphCallError(model, f"output {name} came back in GPU memory though CPU memory was asked "
                                        "for; report this with `trml-edge doctor --json`", False)
        out[name] = t.as_numpy()
    return out


def call(model, feeds, outputs, max_batch=0, steps=()):
    """Run ``model`` on ``feeds`` (name -> array with a leading batch axis); returns {output: array}.

    ``max_batch`` is the model's ``max_batch_size`` (0: send everything in one call); ``steps``: the models an
    ensemble runs, named in its errors. Chunks are sent one after another.
    """
    n = len(next(iter(feeds.values())))
    step = max_batch if max_batch and max_batch > 0 else n
    parts = []
    for start in list(range(0, n, step)) or [0]:
        req = pb_utils.InferenceRequest(
            model_name=model, requested_output_names=list(outputs),
            inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v[start:start + step])) for k, v in feeds.items()],
            preferred_memory=_cpu_memory())
        try:
            resp = req.exec()
        except pb_utils.TritonModelException as e:  # the call could not even be made
            raise GraphCallError(model, str(e), any(s in str(e).lower() for s in _DOWN), steps) from None
        parts.append(_read(model, resp, outputs, steps))
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in outputs}
