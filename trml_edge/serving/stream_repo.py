"""The ``trml_stream`` model of a Triton repository: the stateful stream router on Triton's sequence batcher.

::

    REPO/trml_stream/config.pbtxt          sequence_batching (oldest), START/END/CORRID controls, idle timeout
    REPO/trml_stream/1/model.py            triton_models/trml_stream/model.py
    REPO/trml_stream/1/trml_respond.py     triton_models/common/trml_respond.py: statuses, outputs, metrics
    REPO/trml_stream/1/trml_core/*.py      byte-identical copies of the package's torch-free modules
    REPO/trml_stream/1/stream.json         layout, graphs, preprocessing, tokenizer, the bundle's identity

fused layout (the graphs run in the router's process, with the package's runtime copied into ``trml_core``)::

    REPO/trml_stream/1/bundle/             the bundle, hard-linked to the trml router's copy

ensemble layout::

    REPO/trml_stream/1/trml_bls.py         triton_models/common/trml_bls.py: the BLS calls of both routers
    REPO/trml_stream/1/assets/...          the tokenizer vocabulary
    REPO/trml_stream_complete/             ensemble: window embeddings + t -> temporal_encoder -> fusion_head
    REPO/trml_stream_text_missing/         ensemble: window embeddings -> temporal_encoder -> gen_visual_to_text
                                           -> fusion_head

``build_repository`` calls ``add_stream_router`` once its graph models are written. The config is Triton's own
``ModelConfig`` protobuf; the I/O names and dims come from the same places as the ``trml`` router's.

Why the "oldest" strategy: it keeps every request of a stream on one instance (whose router holds the stream's
embeddings) and batches updates of different streams together, without the "direct" strategy's fixed slots
(a slot per live stream, ``max_batch_size`` of them per instance, and a queue behind them). Triton's own
candidate table is sized above the router's bound (``max_candidate_sequences``), so a stream over the bound
reaches the router and is refused at once instead of waiting in Triton's backlog.

Why two ensembles (ensemble layout): an update with new frames needs the temporal encoder, then (text missing) the
generator, then the head, a fixed chain; one ensemble call instead of two or three BLS hops (each about a millisecond
through the Python backend, docs/serving.md). The image encoder stays a BLS call of its own (its batch axis is
frames, not streams), and the ensembles also return ``v``, the window's visual embedding, which the router keeps
so that a text-only update runs the head alone.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import trml_edge
from trml_edge.errors import ConfigError
from trml_edge.graphs import GRAPH_NAMES
from trml_edge.serving.configs import (BUNDLE_DIR, RUNTIME_MODULES, add_router_io, copy_bundle, copy_router_code,
                                       ensemble_batch, ensemble_io, protobuf, write_config, write_ensemble)

STREAM_ROUTER = "trml_stream"
STREAM_FILE = "stream.json"
STREAM_CORE = ("streaming",)  # leaf modules the stream router needs on top of the trml router's
# scenario -> (ensemble model, its graphs in order): the chain after the image encoder of an update with frames
STREAM_ENSEMBLES = {
    "complete": (f"{STREAM_ROUTER}_complete", ("temporal_encoder", "fusion_head")),
    "text_missing": (f"{STREAM_ROUTER}_text_missing", ("temporal_encoder", "gen_visual_to_text", "fusion_head")),
}
KEEP = "v"  # the window's visual embedding: an ensemble output too, the router keeps it


@dataclass
class StreamSettings:
    """The stream router: how many streams it holds and for how long. Per router instance."""

    enabled: bool = True  # write trml_stream into the repository
    max_streams: int = 256  # live streams; a new one beyond is refused (503, retryable). ~16 KB each (ViT-B-32)
    idle_timeout_s: float = 30.0  # a stream without an update for this long is freed (Triton and the router)
    max_batch_size: int = 8  # updates of different streams the router takes at once
    max_queue_delay_us: int = 0  # how long an idle router waits to batch updates of several streams
    instances: int = 1  # router instances; streams are spread over them, each holds up to max_streams

    def validate(self) -> None:
        if self.max_streams < 1:
            raise ConfigError(f"--stream-max-streams must be >= 1, got {self.max_streams}")
        if not 0.001 <= self.idle_timeout_s <= 86400:
            raise ConfigError(f"--stream-idle-timeout must be between 0.001 and 86400 s, got {self.idle_timeout_s}")
        if self.max_batch_size < 1:
            raise ConfigError(f"the stream router's max batch must be >= 1, got {self.max_batch_size} (a stream "
                              "update carries a batch axis of 1)")
        if self.max_queue_delay_us < 0 or self.instances < 1:
            raise ConfigError("the stream router's queue delay must be >= 0 and its instances >= 1")

    def candidates(self) -> int:
        """Triton's ``max_candidate_sequences``: the bound plus room for refused streams until they time out."""
        return 2 * self.max_streams + 16


def stream_config(dims: dict[str, int], cfg, settings: StreamSettings, manifest_sha: str, model_frames: int):
    """Triton's ModelConfig of ``trml_stream``."""
    mc, _ = protobuf()
    c = mc.ModelConfig(name=STREAM_ROUTER, backend="python", max_batch_size=settings.max_batch_size)
    add_router_io(c, dims["classes"], ragged=True)
    seq = c.sequence_batching
    seq.max_sequence_idle_microseconds = int(round(settings.idle_timeout_s * 1e6))
    seq.oldest.max_candidate_sequences = settings.candidates()
    seq.oldest.max_queue_delay_microseconds = settings.max_queue_delay_us
    kinds = mc.ModelSequenceBatching.Control
    for name, kind in (("START", kinds.CONTROL_SEQUENCE_START), ("END", kinds.CONTROL_SEQUENCE_END)):
        ctl = seq.control_input.add()
        ctl.name = name
        flag = ctl.control.add()
        flag.kind = kind
        flag.int32_false_true.extend([0, 1])
    corrid = seq.control_input.add()
    corrid.name = "CORRID"
    cid = corrid.control.add()
    cid.kind, cid.data_type = kinds.CONTROL_SEQUENCE_CORRID, mc.TYPE_UINT64
    group = c.instance_group.add()
    group.count, group.kind = settings.instances, mc.ModelInstanceGroup.KIND_CPU
    params = {"max_streams": settings.max_streams, "max_frames_per_request": cfg.limits.max_frames,
              "model_frames": model_frames, "max_frame_side": cfg.limits.max_frame_side, "max_text_bytes": cfg.limits.max_text_bytes,
              "bundle_manifest_sha256": manifest_sha, "layout": cfg.resolved_layout}
    for k, v in params.items():
        c.parameters[k].string_value = str(v)
    return c


def stream_ensemble_io(steps: tuple[str, ...]) -> tuple[list, list]:
    """(inputs the router feeds, outputs: the head's and ``v``) of a stream ensemble, as TensorSpecs."""
    return ensemble_io(steps, (KEEP,))


def add_stream_router(tmp: Path, cfg, bundle, graph_max: dict[str, int], router_bundle: Path | None = None) -> None:
    """Write ``trml_stream`` into the repository being assembled at ``tmp`` (graph models already there).
    ``graph_max``: each graph's max batch (fused: its chunk limit); ``router_bundle``: the fused ``trml`` router's
    bundle copy, hard-linked rather than copied a second time."""
    from trml_edge.runtime.bundle import MANIFEST, sha256_file

    settings = getattr(cfg, "stream", None) or StreamSettings()
    if not settings.enabled:
        return
    settings.validate()
    fused = cfg.resolved_layout == "fused"
    version = tmp / STREAM_ROUTER / "1"
    copies = copy_router_code(version, STREAM_ROUTER, (*STREAM_CORE, *RUNTIME_MODULES) if fused else STREAM_CORE,
                              listed_in=STREAM_FILE, bls=not fused)
    manifest = bundle.manifest
    tok = manifest["tokenizer"]
    manifest_sha = sha256_file(bundle.root / MANIFEST)
    conf = {
        "format": "trml-edge-triton-stream-router", "format_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "trml_edge": trml_edge.__version__,
        "layout": cfg.resolved_layout,
        "bundle": {"path": str(bundle.root.resolve()), "manifest_sha256": manifest_sha},
        "task": manifest["model"]["task"], "dims": manifest["model"]["dims"], "preprocess": manifest["preprocess"],
        "tokenizer": {"file": tok["file"], "sha256": tok["sha256"], "context_length": tok["context_length"]},
        "graph_max_batch": {g: int(graph_max[g]) for g in GRAPH_NAMES},
        "stream": asdict(settings), "core_modules": copies,
    }
    if fused:
        copy_bundle(bundle, version / BUNDLE_DIR, link_from=router_bundle)
        conf.update(bundle_dir=BUNDLE_DIR, threads=cfg.intra_op_threads)
    else:
        (version / Path(tok["file"]).parent).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle.root / tok["file"], version / tok["file"])
        conf.update(graph_models={g: g for g in GRAPH_NAMES},
                    ensembles={s: {"model": name, "inputs": [t.name for t in stream_ensemble_io(steps)[0]],
                                   "outputs": [t.name for t in stream_ensemble_io(steps)[1]],
                                   "max_batch": ensemble_batch(steps, graph_max)}
                               for s, (name, steps) in STREAM_ENSEMBLES.items()})
    (version / STREAM_FILE).write_text(json.dumps(conf, indent=2) + "\n", encoding="utf-8")
    write_config(stream_config(manifest["model"]["dims"], cfg, settings, manifest_sha,
                               int(bundle.preprocess["max_frames"])),
                 tmp / STREAM_ROUTER / "config.pbtxt")
    if not fused:
        for name, steps in STREAM_ENSEMBLES.values():
            write_ensemble(tmp, name, steps, manifest["model"]["dims"], graph_max, (KEEP,))
