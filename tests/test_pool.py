"""The foundation pool (issue 18): its captions follow the face's expression, never name the background, and
the labelled set does not depend on them."""

import csv

import numpy as np
import pytest

from trml_edge.data.synth import COLORS, SynthSpec, generate, pool_caption, write_pool
from trml_edge.errors import DataError


def test_the_labelled_set_is_the_same_whatever_the_pool(tmp_path):
    generate(tmp_path / "v1", SynthSpec(n=30, pool=16, pool_captions="v1", seed=2))
    generate(tmp_path / "mixed", SynthSpec(n=30, pool=16, pool_captions="mixed", seed=2))
    assert (tmp_path / "v1/label.csv").read_bytes() == (tmp_path / "mixed/label.csv").read_bytes()
    for row in csv.DictReader(open(tmp_path / "v1/label.csv")):
        name = f"Raw/{row['video_id']}/{row['clip_id']}.mp4"
        assert (tmp_path / "v1" / name).read_bytes() == (tmp_path / "mixed" / name).read_bytes(), name
    assert (tmp_path / "v1/pretrain/captions.txt").read_text() != (tmp_path / "mixed/pretrain/captions.txt").read_text()


def test_mixed_captions_never_name_the_background_and_hold_all_three_kinds(tmp_path):
    write_pool(tmp_path / "pool", 300, 0, "mixed")
    captions = (tmp_path / "pool/captions.txt").read_text().splitlines()
    assert len(captions) == len(np.load(tmp_path / "pool/images.npy")) == 300
    assert not any(c in caption.split() for caption in captions for c in COLORS)
    coarse = sum(caption.endswith("ing face") or caption == "a neutral face" for caption in captions)
    speech = sum(" was " in caption for caption in captions)
    assert 60 < coarse < 140 and 60 < speech < 140, (coarse, speech)
    write_pool(tmp_path / "old", 50, 0, "v1")
    assert all(caption.endswith(" background") for caption in (tmp_path / "old/captions.txt").read_text().splitlines())


def test_coarse_captions_follow_the_expression():
    rng = np.random.default_rng(0)
    words = [pool_caption(e, "red", rng, "coarse") for e in (-2.5, -1.0, 0.0, 1.0, 2.5)]
    assert words == ["a scowling face", "a frowning face", "a neutral face", "a smiling face", "a beaming face"]


def test_unknown_captions_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(DataError, match="unknown pool captions 'web'"):
        generate(tmp_path / "d", SynthSpec(n=20, pool=4, pool_captions="web"))
    assert not (tmp_path / "d").exists()
