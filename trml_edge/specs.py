"""The settings of the two steps before training, in one place: the synthetic benchmark (``SynthSpec``) and
the foundation's contrastive pretraining (``PretrainConfig``).

Standard library only, so the CLI shows these defaults in ``--help`` without importing numpy or torch;
``trml_edge.data.synth`` and ``trml_edge.train.pretrain`` use them from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SynthSpec:
    n: int = 1200  # labelled clips
    pool: int = 12000  # unlabelled image/caption pairs for the foundation pretraining (6,000 overfit: issue 18)
    pool_captions: str = "mixed"  # the pool's captions (``synth.POOL_CAPTIONS``; "v1" before issue 18); the
    # labelled set does not depend on it
    seed: int = 0


@dataclass
class PretrainConfig:
    pool: str = ""  # directory with images.npy (uint8 [n,H,W,3]) and captions.txt (one per line)
    out: str = ""
    arch: str = "trml-tiny"
    epochs: int = 12  # over a 12,000-pair pool: 4,500 steps; the towers first sit on a plateau (loss log(batch))
    batch_size: int = 32  # 64: half the steps (docs/results.md, section 0)
    lr: float = 3e-4  # 1e-3 did not leave the plateau sooner (measured over 4 epochs)
    weight_decay: float = 0.1  # on matrices only; gains, biases, embeddings and the temperature are exempt
    seed: int = 0
    pretrained: str | None = None  # start from these weights: an open_clip tag of arch, or hf-hub:ORG/NAME
    cache_dir: str | None = None  # where pretrained weights are cached [default: the Hugging Face cache]
