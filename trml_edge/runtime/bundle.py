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

from trml_edge.errors import BundleError
from trml_edge.graphs import GRAPH_NAMES

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

    def session(self, graph: str, providers: tuple[str, ...] = ("CPUExecutionProvider",), threads: int = 0):
        """A cached ORT session for ``graph`` (only after the bundle was verified)."""
        if not self.verified:
            raise BundleError(f"bundle {self.root} was not verified; load it with load_bundle(path)")
        key = f"{graph}|{','.join(providers)}|{threads}"
        if key not in self._sessions:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            # ENABLE_ALL adds CPU layout transforms that crash ORT 1.32 on FP16 convolutions; EXTENDED keeps
            # every fusion that matters here (QDQ, attention, GELU, LayerNorm).
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            opts.intra_op_num_threads = threads
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
