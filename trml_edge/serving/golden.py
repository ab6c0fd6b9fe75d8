"""Golden answers of a bundle: what its runtime answers, in every scenario, to fixed inputs.

``triton update`` computes them in a scratch process before the server is touched (a bundle that cannot load
or answer is refused there), and sends the same inputs to the server during the probation: an answer that
differs, beyond ``tolerance``, means the served graphs are not the bundle that was checked.

    python -m trml_edge.serving.golden BUNDLE OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

TEXT = "the update check: a calm, friendly and rather long review of the film"
SCENARIOS = ("complete", "visual_missing", "text_missing")


def golden_inputs() -> dict[str, tuple[np.ndarray | None, str | None]]:
    """Scenario -> (frames, text): 8 frames of 64x64 (inside any repository's limits) and one sentence."""
    frames = np.random.default_rng(20261207).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    return {"complete": (frames, TEXT), "visual_missing": (None, TEXT), "text_missing": (frames, None)}


def compute(bundle: str | Path) -> dict:
    """Run the bundle's runtime on the golden inputs (loading checks every sha256)."""
    from trml_edge.runtime import Pipeline
    from trml_edge.runtime.bundle import MANIFEST, sha256_file

    pipe = Pipeline(bundle)
    answers = {}
    for scenario, (frames, text) in golden_inputs().items():
        p = pipe.predict(frames, text)
        answers[scenario] = {"output": np.asarray(p.output, np.float64).reshape(-1).tolist(),
                             "virtual_modality": p.virtual_modality}
    return {"format": "trml-edge-golden", "bundle_manifest_sha256": sha256_file(Path(bundle) / MANIFEST),
            "answers": answers}


def mismatch(expected: dict, output, virtual: str, tolerance: float) -> str | None:
    """Why an answer is not the golden one (None when it is): the generated modality, or the output beyond
    ``tolerance`` (absolute, plus the same relative to the golden value)."""
    if virtual != expected["virtual_modality"]:
        return f"virtual modality {virtual!r}, expected {expected['virtual_modality']!r}"
    got = np.asarray(output, np.float64).reshape(-1)
    want = np.asarray(expected["output"], np.float64)
    if got.shape != want.shape:
        return f"output of {got.size} values, expected {want.size}"
    err = np.abs(got - want)
    if np.any(err > tolerance * (1 + np.abs(want))):
        return f"output {np.round(got, 6).tolist()}, expected {np.round(want, 6).tolist()} (max error {err.max():.3g})"
    return None


def main() -> None:
    bundle, out = sys.argv[1], Path(sys.argv[2])
    result = compute(bundle)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out)


if __name__ == "__main__":
    main()
