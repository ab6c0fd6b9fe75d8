"""Training and evaluation end to end on real-layout corpora with broken clips: skipped, counted, reported."""

import json

import pytest
from data_fixtures import GOOD, make_meld, make_mmsa

from trml_edge.config import MissingConfig, TRMLConfig
from trml_edge.data.meld import EMOTIONS
from trml_edge.errors import DataError
from trml_edge.train.loop import TrainConfig, train


def _frames_path_metrics(run, data, rate, seed=0):
    """The test split scored another way: clips decoded to frames (load_split, not the streamed feature
    store), the model's own forward on pixels and tokens, the evaluation's test masks."""
    import torch

    from trml_edge.data.corpus import load_split, open_for_model
    from trml_edge.eval.evaluate import TEST_SEED
    from trml_edge.metrics import task_metrics
    from trml_edge.missing import sample_masks
    from trml_edge.model.backbone import tokenize
    from trml_edge.model.checkpoint import load_run
    from trml_edge.preprocess import normalize

    model = load_run(run).eval()
    c = model.cfg
    arrays = load_split(open_for_model(data, c.head.task, c.head.num_classes).records, "test",
                        c.temporal.max_frames, c.preprocess.image_size)
    has_v, has_t = sample_masks(len(arrays), MissingConfig(rate=rate), [seed, TEST_SEED, int(round(rate * 1000))])
    with torch.no_grad():
        out = model(torch.from_numpy(normalize(arrays.frames, c.preprocess.mean, c.preprocess.std)),
                    torch.from_numpy(arrays.frame_mask), tokenize(arrays.texts, c.preprocess.context_length),
                    torch.from_numpy(has_v), torch.from_numpy(has_t)).output
    return task_metrics(c.head.task, out.numpy(), arrays.labels)


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
    want = _frames_path_metrics(tmp_path / "run", tmp_path / "mosi", 0.5)
    assert res["metrics"] == pytest.approx(want, abs=1e-5)  # every metric, not a range that cannot fail


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
    assert res["metrics"] == pytest.approx(_frames_path_metrics(tmp_path / "run", tmp_path / "meld", 0.0), abs=1e-6)
    with pytest.raises(DataError, match="num_classes=7"):  # a regression head does not fit MELD
        train(TrainConfig(data=str(tmp_path / "meld"), out=str(tmp_path / "bad"), epochs=2, batch_size=8),
              TRMLConfig(), progress=False)
