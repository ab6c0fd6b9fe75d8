"""Shared fixtures: a small synthetic corpus and a tiny CLIP, created by the project itself."""

from __future__ import annotations

import importlib.util
import os
from functools import cache

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """120 labelled clips (MMSA layout, real mp4 files) and a 64-pair pretraining pool."""
    from trml_edge.data.synth import SynthSpec, generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthSpec(n=120, pool=64, seed=3))
    return root


@pytest.fixture(scope="session")
def tiny_cfg():
    from trml_edge.config import TRMLConfig

    def make(**kw):
        cfg = TRMLConfig(**kw)
        cfg.head.dropout = 0.0
        return cfg

    return make


@cache
def _missing(marker: str) -> str | None:
    """Why a test with this marker cannot run here (None: it can)."""
    if marker == "trt":
        from trml_edge import tensorrt_env

        if importlib.util.find_spec("tensorrt") is None:
            return f"TensorRT is not installed: {tensorrt_env.install_advice()}"
        import tensorrt

        return tensorrt_env.tensorrt_version_problem(tensorrt.__version__)  # pip wheel or JetPack's, alike
    if marker == "gpu":
        from trml_edge.export.trt_runner import probe_gpu

        gpu, why = probe_gpu()
        return None if gpu else f"no usable NVIDIA GPU: {why}"
    return None


def pytest_collection_modifyitems(config, items):
    """Every gpu/trt test skips itself, with the reason, where its hardware or library is absent, whatever
    ``-m`` selected it (``pytest -m "not slow"`` replaces the default ``not gpu and not trt`` filter)."""
    for item in items:
        for marker in ("trt", "gpu"):
            if item.get_closest_marker(marker) is not None:
                why = _missing(marker)
                if why:
                    item.add_marker(pytest.mark.skip(reason=why))
                    break
