"""Training and evaluation end to end on real-layout corpora with broken clips: skipped, counted, reported."""

import json

import numpy as np
import pytest
from data_fixtures import GOOD, make_meld, make_mmsa

from trml_edge.config import MissingConfig, TRMLConfig
from trml_edge.data.meld import EMOTIONS
from trml_edge.errors import DataError
from trml_edge.train.loop import TrainConfig, train


def test_mmsa_corpus_trains_and_evaluates_skipping_broken_clips(tmp_path):
    from trml_edge.eval.evaluate import evaluate_run

    make_mmsa(tmp_path / "mosi")
    m = train(TrainConfig(data=str(tmp_path / "mosi"), out=str(tmp_path / "run"), epochs=2, batch_size=8),
              TRMLConfig(), progress=False)
    # train: the corrupt and the missing clip; valid: the zero-frame clip
    assert m["skipped_clips"] == {"train": 2, "valid": 1}
    assert m["train_size"] == GOOD["train"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["skipped_clips"] == {"train": 2, "valid": 1}
    res = evaluate_run(tmp_path / "run", tmp_path / "mosi", MissingConfig(rate=0.5), seed=0, split="test")
    assert res["n"] == GOOD["test"] and res["skipped_clips"] == 2  # the out-of-range label, the audio-only clip
    assert np.isfinite(res["metrics"]["mae"]) and 0 <= res["metrics"]["mae"] <= 6


def test_meld_emotion_corpus_trains_a_seven_class_head_and_evaluates(tmp_path):
    from trml_edge.data.corpus import corpus_task
    from trml_edge.eval.evaluate import evaluate_run

    make_meld(tmp_path / "meld")
    task, num_classes, names = corpus_task(tmp_path / "meld", "emotion")
    cfg = TRMLConfig()
    cfg.head.task, cfg.head.num_classes = task, num_classes
    m = train(TrainConfig(data=str(tmp_path / "meld"), out=str(tmp_path / "run"), epochs=2, batch_size=8),
              cfg, progress=False)
    assert names == EMOTIONS
    assert m["skipped_clips"] == {"train": 2, "valid": 1}
    res = evaluate_run(tmp_path / "run", tmp_path / "meld", MissingConfig(rate=0.0), split="test")
    assert res["n"] == GOOD["test"] and res["skipped_clips"] == 1  # the unknown emotion
    assert 0.0 <= res["metrics"]["acc"] <= 1.0
    with pytest.raises(DataError, match="num_classes=7"):  # a regression head does not fit MELD
        train(TrainConfig(data=str(tmp_path / "meld"), out=str(tmp_path / "bad"), epochs=2, batch_size=8),
              TRMLConfig(), progress=False)
