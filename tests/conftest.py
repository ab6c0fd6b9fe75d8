"""Shared fixtures: a small synthetic corpus and a tiny CLIP, created by the project itself."""

from __future__ import annotations

import os

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
