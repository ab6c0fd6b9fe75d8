"""The CLIP feature cache: same training as without it, reused across runs, invalidated by another backbone
or preprocessing, resumable after an interruption, and built by `trml-edge features`."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from data_fixtures import GOOD, make_mmsa
from safetensors.torch import load_file

from trml_edge.config import TRMLConfig
from trml_edge.data.cache import DEFAULT_DIR, INDEX, FeatureCache, MemoryStore
from trml_edge.data.corpus import open_corpus
from trml_edge.model.backbone import build_clip, resolve_arch
from trml_edge.model.checkpoint import new_model, save_clip
from trml_edge.model.trml import TRML
from trml_edge.train.features import build_features, fingerprint, prepare_inputs
from trml_edge.train.loop import TrainConfig, train


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mosi")
    make_mmsa(root)
    return root


@pytest.fixture
def data(corpus_dir, tmp_path):
    """A private copy: some tests damage or edit it."""
    shutil.copytree(corpus_dir, tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def encoded(monkeypatch):
    """Frames that went through the real image encoder (a counter around TRML.encode_image)."""
    frames = []
    real = TRML.encode_image

    def counting(self, pixels):
        frames.append(len(pixels))
        return real(self, pixels)

    monkeypatch.setattr(TRML, "encode_image", counting)
    return frames


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """Two different CLIP weight files of the tiny architecture."""
    root = tmp_path_factory.mktemp("clips")
    cfg = resolve_arch("trml-tiny")
    paths = []
    for seed in (11, 12):
        torch.manual_seed(seed)
        paths.append(save_clip(root / f"clip{seed}", build_clip(cfg), cfg, {}))
    return paths


def _tcfg(data, out, **kw):
    return TrainConfig(data=str(data), out=str(out), epochs=2, batch_size=8, seed=3, **kw)


def _same_weights(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cached_training_equals_uncached_and_a_second_run_encodes_nothing(data, tmp_path, encoded):
    cache = tmp_path / "cache"
    plain = train(_tcfg(data, tmp_path / "plain"), TRMLConfig(), progress=False)
    n_plain = sum(encoded)
    encoded.clear()
    first = train(_tcfg(data, tmp_path / "first", feature_cache=str(cache)), TRMLConfig(), progress=False)
    assert sum(encoded) == n_plain > 0  # building the cache encodes exactly the frames the plain run did
    assert _same_weights(tmp_path / "plain", tmp_path / "first")
    assert first["history"] == plain["history"]
    # Damage every clip without changing its size: a run that decoded any clip would now skip it.
    for mp4 in (data / "Raw").rglob("*.mp4"):
        mp4.write_bytes(bytes(mp4.stat().st_size))
    encoded.clear()
    second = train(_tcfg(data, tmp_path / "second", feature_cache=str(cache)), TRMLConfig(), progress=False)
    assert sum(encoded) == 0  # no image-encoder work at all
    assert _same_weights(tmp_path / "first", tmp_path / "second")
    assert second["skipped_clips"] == first["skipped_clips"] == {"train": 2, "valid": 1}
    # without the cache, the damaged clips are now unreadable
    with pytest.raises(Exception, match="no readable clip"):
        train(_tcfg(data, tmp_path / "nocache"), TRMLConfig(), progress=False)


def test_another_backbone_or_frame_count_invalidates_the_cache(data, tmp_path, encoded, clip_files):
    cache = tmp_path / "cache"
    a, b = (new_model(TRMLConfig(), w) for w in clip_files)
    assert fingerprint(a, 8)[0] != fingerprint(b, 8)[0]
    other_norm = new_model(TRMLConfig(), clip_files[0])
    other_norm.cfg.preprocess.mean = (0.5, 0.5, 0.5)  # same weights, other pixel normalization
    assert fingerprint(other_norm, 8)[0] != fingerprint(a, 8)[0]
    prepare_inputs(a, data, cache=cache)
    assert sum(encoded) > 0
    encoded.clear()
    _, inputs_b = prepare_inputs(b, data, cache=cache)  # other weights: recomputed, never the stale entries
    assert sum(encoded) > 0
    encoded.clear()
    _, inputs_a = prepare_inputs(a, data, cache=cache)  # the first backbone's entries are still valid
    assert sum(encoded) == 0
    assert not torch.equal(inputs_a["train"].frame_emb, inputs_b["train"].frame_emb)
    four = TRMLConfig()
    four.temporal.max_frames = 4  # another frame sampling: another fingerprint
    prepare_inputs(new_model(four, clip_files[0]), data, cache=cache)
    assert sum(encoded) > 0
    assert len([d for d in cache.iterdir() if (d / INDEX).is_file()]) == 3


def test_interrupted_build_resumes_and_matches_a_fresh_build(data, tmp_path, encoded):
    model = new_model(TRMLConfig())
    records = open_corpus(data).records
    fp, meta = fingerprint(model, 8)

    def stop_after_first_chunk(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_features(model, records, FeatureCache(tmp_path / "c", fp, meta), 8, chunk=8,
                       on_chunk=stop_after_first_chunk)
    index = json.loads((tmp_path / "c" / fp[:16] / INDEX).read_text())
    assert len(index["clips"]) + len(index["failed"]) == 8  # the finished chunk was kept
    encoded.clear()
    resumed = FeatureCache(tmp_path / "c", fp, meta)
    stats = build_features(model, records, resumed, 8, chunk=8)
    assert stats.reused == len(index["clips"]) and stats.encoded > 0
    fresh = MemoryStore()
    build_features(model, records, fresh, 8, chunk=8)
    ids = sorted(fresh.clips)
    assert sorted(resumed.clips) == ids and len(ids) == sum(GOOD.values())  # every good clip, once
    assert set(resumed.failed) == set(fresh.failed) and len(fresh.failed) == 3  # corrupt, zero-frame, audio-only
    for x, y in zip(resumed.gather(ids, 8, model.dim), fresh.gather(ids, 8, model.dim)):
        assert (x == y).all()


def test_an_edited_row_is_embedded_again(data, tmp_path):
    model = new_model(TRMLConfig())
    fp, meta = fingerprint(model, 8)
    build_features(model, open_corpus(data).records, FeatureCache(tmp_path / "c", fp, meta), 8)
    text = (data / "label.csv").read_text(encoding="utf-8-sig").replace("plain words #3,", "other words #3,")
    (data / "label.csv").write_text(text, encoding="utf-8")
    stats = build_features(model, open_corpus(data).records, FeatureCache(tmp_path / "c", fp, meta), 8)
    assert stats.encoded == 1 and stats.reused > 0


def test_features_cli_builds_the_default_cache_that_training_then_uses(data, tmp_path, encoded, clip_files):
    r = subprocess.run([sys.executable, "-m", "trml_edge", "features", str(data), "--clip-weights",
                        str(clip_files[0]), "--backbone", "trml-tiny"], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert (data / DEFAULT_DIR).is_dir() and "0 reused" in r.stdout
    m = train(_tcfg(data, tmp_path / "run"), TRMLConfig(), clip_weights=clip_files[0], progress=False)
    assert sum(encoded) == 0  # training found the cache by itself
    assert m["skipped_clips"] == {"train": 2, "valid": 1}


def test_resumed_training_embeds_with_the_runs_clip_weights(data, tmp_path, clip_files):
    full = _tcfg(data, tmp_path / "full")
    train(full, TRMLConfig(), clip_weights=clip_files[1], progress=False)
    part = _tcfg(data, tmp_path / "part", stop_after_epoch=0)
    assert train(part, TRMLConfig(), clip_weights=clip_files[1], progress=False) == {"interrupted_after_epoch": 0}
    train(_tcfg(data, tmp_path / "part"), TRMLConfig(), clip_weights=clip_files[1], progress=False)
    assert _same_weights(tmp_path / "full", tmp_path / "part")
