"""Export bundles: ``manifest.json`` + one ONNX file per graph + tokenizer assets. Reading side (no torch).

The manifest is the bundle's table of contents. Every file it names carries a sha256 that is checked
before any session is created, so a truncated copy or an edited graph is refused with a message that
says how to get a good bundle again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# relative imports: `trml-edge triton build --layout fused` copies the runtime byte for byte beside the router
from ..errors import BundleError, require_onnxruntime
from ..graphs import GRAPH_NAMES

require_onnxruntime()  # any distribution of the onnxruntime module will do; none is a one-line fix

MANIFEST = "manifest.json"
FORMAT = "trml-edge-bundle"
FORMAT_VERSION = 1
TOKENIZER_FILE = "assets/bpe_simple_vocab_16e6.txt.gz"
REMEDY = "re-run `trml-edge export` or copy the bundle again"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ORT graph optimization levels by the names the manifest (and the Triton graph model's
# ``graph_optimization_level`` parameter) use.
ORT_LEVELS = ("basic", "extended", "all")
# Bundles written before the manifest recorded a level per graph ran (and passed parity) under this one.
LEGACY_LEVEL = "extended"


def session_options(level: str = LEGACY_LEVEL, threads: int = 0, spinning: bool = True):
    """The ORT ``SessionOptions`` of every session built from a bundle: the runtime's, the export's parity
    check and the profiler's. One function, so they cannot drift apart. ``spinning=False`` (the runtime and
    the profiler): idle intra-op pools sleep instead of busy-waiting for the next run.

    ``level`` is the graph's recorded ``graph_optimization_level``: "all" where it works; the exporter
    records "extended" for FP16 graphs with a convolution, whose session ORT 1.32 crashes creating under
    "all" (the NCHWc layout transform of an FP16 Conv).
    """
    import onnxruntime as ort

    if level not in ORT_LEVELS:
        raise BundleError(f"unknown ORT graph optimization level {level!r} (one of {', '.join(ORT_LEVELS)}); "
                          f"the manifest was edited or written by a newer trml-edge: {REMEDY}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                     "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    opts.intra_op_num_threads = threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


@dataclass
class Bundle:
    root: Path
    manifest: dict[str, Any]
    verified: bool = False
    _sessions: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def graphs(self) -> dict[str, dict[str, Any]]:
        return self.manifest["graphs"]

    @property
    def preprocess(self) -> dict[str, Any]:
        return self.manifest["preprocess"]

    @property
    def task(self) -> str:
        return self.manifest["model"]["task"]

    def path(self, graph: str) -> Path:
        if graph not in self.graphs:
            raise BundleError(f"bundle {self.root} has no graph {graph!r} (it has {', '.join(self.graphs)}); {REMEDY}")
        return self.root / self.graphs[graph]["file"]

    def verify(self) -> None:
        """Check every listed file's sha256; raise BundleError naming the first bad file."""
        entries = [(g, e["file"], e["sha256"]) for g, e in self.graphs.items()]
        tok = self.manifest["tokenizer"]
        entries.append(("tokenizer", tok["file"], tok["sha256"]))
        for what, rel, expected in entries:
            path = self.root / rel
            if not path.is_file():
                raise BundleError(f"bundle {self.root}: {what} file {rel} is missing; {REMEDY}")
            actual = sha256_file(path)
            if actual != expected:
                raise BundleError(
                    f"bundle {self.root}: {what} file {rel} has sha256 {actual[:12]}..., the manifest says "
                    f"{expected[:12]}...; the file was changed or damaged after export; {REMEDY}"
                )
        self.verified = True

    def ort_level(self, graph: str) -> str:
        """The ORT graph optimization level the exporter chose (and checked parity under) for ``graph``."""
        entry = self.graphs[graph] if graph in self.graphs else {}
        return entry.get("ort", {}).get("graph_optimization_level", LEGACY_LEVEL)

    def session(self, graph: str, providers: tuple[str, ...] = ("CPUExecutionProvider",), threads: int = 0):
        """A cached ORT session for ``graph`` (only after the bundle was verified), with the options of
        ``session_options`` at the level recorded for that graph in the manifest."""
        if not self.verified:
            raise BundleError(f"bundle {self.root} was not verified; load it with load_bundle(path)")
        key = f"{graph}|{','.join(providers)}|{threads}"
        if key not in self._sessions:
            import onnxruntime as ort

            # no spinning: the six graphs run one after another, each with its own pool, and an idle pool that
            # busy-waits takes the cores from the next graph (Pipeline.predict 2.6-7x slower with it on a
            # shared 2-core machine, docs/export.md)
            opts = session_options(self.ort_level(graph), threads, spinning=False)
            self._sessions[key] = ort.InferenceSession(str(self.path(graph)), opts, providers=list(providers))
        return self._sessions[key]


def load_bundle(path: str | Path, verify: bool = True, allow_partial: bool = False) -> Bundle:
    """Read and (by default) hash-check a bundle. ``allow_partial`` is for the exporter's own gate only."""
    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root} is not an export bundle (no {MANIFEST}); an interrupted export leaves none, "
                          f"so {REMEDY}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}); {REMEDY}") from e
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath} is not a trml-edge bundle manifest (format {manifest.get('format')!r}); {REMEDY}")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(f"bundle {root} has format_version {manifest['format_version']}, newer than this "
                          f"runtime reads ({FORMAT_VERSION}); upgrade trml-edge")
    if manifest.get("state") != "complete" and not allow_partial:
        raise BundleError(f"bundle {root} is incomplete (state {manifest.get('state')!r}): its export was "
                          f"interrupted or failed; {REMEDY}")
    unknown = set(manifest.get("graphs", {})) - set(GRAPH_NAMES)
    if unknown:
        raise BundleError(f"bundle {root} lists unknown graphs {sorted(unknown)}; upgrade trml-edge or {REMEDY}")
    bundle = Bundle(root, manifest)
    if verify:
        bundle.verify()
    return bundle
