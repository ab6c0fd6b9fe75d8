"""Generators learned from unlabelled pairs (stage 0), and the generator options of the labelled training."""

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from trml_edge.config import MissingConfig, TRMLConfig
from trml_edge.errors import CheckpointError, ConfigError
from trml_edge.model.checkpoint import load_run, new_model
from trml_edge.model.losses import matching_loss
from trml_edge.train.loop import TrainConfig, train
from trml_edge.train.pairs import Pairs, fit_generators, load_generators, pair_quality, train_generators
from trml_edge.train.pairs_config import PairsConfig

GEN_KEYS = ("gen_text_to_visual.", "gen_visual_to_text.")


def _train_rows(data) -> int:
    with open(data / "label.csv", newline="", encoding="utf-8") as f:
        return sum(row["mode"] == "train" for row in csv.DictReader(f))


def _gen_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(GEN_KEYS)}


def _tiny_model(tiny_cfg):
    torch.manual_seed(0)
    return new_model(tiny_cfg())


def test_cosine_fit_recovers_a_relation_the_mean_fill_cannot(tiny_cfg):
    model = _tiny_model(tiny_cfg)
    g = torch.Generator().manual_seed(1)
    d = model.dim
    text = F.normalize(torch.randn(600, d, generator=g), dim=-1)
    offset = F.normalize(torch.randn(d, generator=g), dim=0)  # a common part, as CLIP's embeddings have
    visual = F.normalize(text @ torch.randn(d, d, generator=g) / d**0.5 + offset, dim=-1)
    fit, held = Pairs(text[:500], visual[:500]), Pairs(text[500:], visual[500:])
    before = pair_quality(model, held, fit)["v_hat"]
    hist = fit_generators(model, fit, PairsConfig(sources=["x"], objective="cosine", epochs=60, batch_size=100,
                                                  lr=3e-3), held)
    after = hist[-1]["held_out"]["v_hat"]
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert before["cos_to_real"] < after["cos_mean_fill"] < after["cos_to_real"] - 0.1
    assert after["median_rank"] <= 3 and before["median_rank"] > 10  # of 100 held-out pairs


def test_matching_objectives():
    v = F.normalize(torch.randn(8, 16), dim=-1)
    assert float(matching_loss(v, v, 0.07, "cosine")) == pytest.approx(0.0, abs=1e-6)
    assert float(matching_loss(-v, v, 0.07, "cosine")) == pytest.approx(2.0, abs=1e-6)
    both = matching_loss(-v, v, 0.07, "sml+cosine")
    assert float(both) == pytest.approx(float(matching_loss(-v, v, 0.07, "sml")) + 2.0, rel=1e-6)


def test_generators_from_a_pool_and_a_corpus_then_a_training_that_starts_from_them(synth_data, tiny_cfg,
                                                                                    tmp_path):
    cfg = PairsConfig(sources=[str(synth_data / "pretrain"), str(synth_data)], out=str(tmp_path / "gen"),
                      valid=str(synth_data), objective="sml+cosine", epochs=8, batch_size=32, seed=4)
    meta = train_generators(cfg, tiny_cfg(), None)
    assert [s["pairs"] for s in meta["sources"]] == [64, _train_rows(synth_data)]  # the pool's 64, the train rows
    assert meta["history"][-1]["loss"] < meta["history"][0]["loss"]
    assert (synth_data / "pretrain" / ".trml-features").is_dir()  # the pool's embeddings are cached

    # the run's CLIP is the generators' (the same seed builds the same random tiny CLIP)
    tcfg = dict(data=str(synth_data), epochs=2, batch_size=16, seed=4, gen_init="pairs", generators=cfg.out,
                missing=MissingConfig(rate=0.5, modality="either"))
    frozen = TrainConfig(out=str(tmp_path / "frozen"), gen_update="frozen", **tcfg)
    train(frozen, tiny_cfg(), progress=False)
    expected = load_file(str(tmp_path / "gen" / "generators.safetensors"))
    assert set(expected) == set(_gen_state(load_run(tmp_path / "frozen")))
    got = _gen_state(load_run(tmp_path / "frozen"))
    assert all(torch.equal(expected[k], got[k]) for k in expected)  # started from them, never updated
    joint = TrainConfig(out=str(tmp_path / "joint"), **tcfg)
    train(joint, tiny_cfg(), progress=False)
    got = _gen_state(load_run(tmp_path / "joint"))
    assert any(not torch.equal(expected[k], got[k]) for k in expected)

    torch.manual_seed(5)  # another CLIP: the generators' embeddings mean nothing to it
    with pytest.raises(CheckpointError, match="another CLIP"):
        load_generators(new_model(tiny_cfg()), cfg.out)


def test_the_matching_update_stops_the_heads_gradient_at_the_generated_embedding(synth_data, tiny_cfg, tmp_path):
    """With alpha 0 (and no weight decay) only the head's gradient can move the generators: "joint" lets it,
    "matching" does not."""
    common = dict(data=str(synth_data), epochs=2, batch_size=16, seed=1, missing=MissingConfig(rate=0.5),
                  weight_decay=0.0)
    torch.manual_seed(1)
    start = _gen_state(new_model(tiny_cfg(alpha=0.0)))

    def changed(update):
        out = tmp_path / update
        train(TrainConfig(out=str(out), gen_init="identity", gen_update=update, **common), tiny_cfg(alpha=0.0),
              progress=False)
        got = _gen_state(load_run(out))
        return any(not torch.equal(start[k], got[k]) for k in start)

    assert changed("joint") and not changed("matching")


def test_generator_options_are_validated():
    with pytest.raises(ConfigError, match="give both or neither"):
        TrainConfig(gen_init="pairs").validate()
    with pytest.raises(ConfigError, match="give both or neither"):
        TrainConfig(generators="somewhere").validate()
    with pytest.raises(ConfigError, match="gen_update"):
        TrainConfig(gen_update="sometimes").validate()
    with pytest.raises(ConfigError, match="gen_loss"):
        TrainConfig(gen_loss="mse").validate()
    with pytest.raises(ConfigError, match="objective"):
        PairsConfig(sources=["x"], objective="mse").validate()


def test_cli_generators_then_train_with_them(synth_data, tmp_path):
    from safetensors.torch import save_file

    from trml_edge.model.backbone import build_clip, resolve_arch

    torch.manual_seed(0)
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in build_clip(resolve_arch("trml-tiny")).state_dict().items()},
              str(weights))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "trml_edge", *map(str, args)], capture_output=True, text=True,
                              env=dict(os.environ), timeout=600)

    r = cli("generators", synth_data / "pretrain", "--out", tmp_path / "gen", "--clip-weights", weights,
            "--epochs", "2", "--objective", "cosine", "--valid", synth_data)
    assert r.returncode == 0, r.stderr
    assert "64 pairs" in r.stdout and "valid v_hat: cos" in r.stdout
    r = cli("train", "--data", synth_data, "--out", tmp_path / "run", "--clip-weights", weights,
            "--generators", tmp_path / "gen", "--gen-update", "frozen", "--epochs", "1", "--batch-size", "16")
    assert r.returncode == 0, r.stderr
    saved = load_run(tmp_path / "run").state_dict()
    written = load_file(str(tmp_path / "gen" / "generators.safetensors"))
    assert written and all(torch.equal(v, saved[k]) for k, v in written.items())
    r = cli("train", "--data", synth_data, "--out", tmp_path / "other", "--generators", tmp_path / "gen",
            "--epochs", "1", "--seed", "3")  # no --clip-weights: a random CLIP from another seed
    assert r.returncode == 2 and "another CLIP" in r.stderr


def test_the_baselines_do_not_move_with_trmls_generator_settings(synth_data, tmp_path):
    """The complete model's matching loss reaches its temporal encoder, so the baselines keep the paper's SML
    and joint update whatever TRML is given; TRML gets what it was asked for."""
    import json

    from trml_edge.eval.experiment import ExperimentConfig, run_experiment

    cfg = ExperimentConfig(data=str(synth_data), out=str(tmp_path / "exp"), epochs=1, batch_size=16, max_train=40,
                           test_rates=[0.5], gen_update="frozen", gen_loss="sml+cosine")
    run_experiment(cfg, progress=False)
    got = {name: json.loads((tmp_path / "exp" / name / "train_config.json").read_text())
           for name in ("complete", "dropout", "trml")}
    assert {(g["gen_update"], g["gen_loss"]) for n, g in got.items() if n != "trml"} == {("joint", "sml")}
    assert (got["trml"]["gen_update"], got["trml"]["gen_loss"]) == ("frozen", "sml+cosine")


def test_the_test_split_is_never_a_source_of_pairs(synth_data, tmp_path):
    """The evaluation scores the test clips: generators that learned from their inputs would be scored on
    what they were fitted to. Refused in the config (the Python API) and so on the command line, in one line."""
    for splits in (["test"], ["train", "test"], ["valid", "test"]):
        with pytest.raises(ConfigError, match=r"must not include test: .*never see the test clips' inputs.*"
                                              r"use train and/or valid"):
            PairsConfig(sources=[str(synth_data)], splits=splits).validate()
    with pytest.raises(ConfigError, match="got 'trian'"):
        PairsConfig(sources=[str(synth_data)], splits=["trian"]).validate()
    PairsConfig(sources=[str(synth_data)], splits=["train", "valid"]).validate()
    with pytest.raises(ConfigError, match="must not include test"):
        train_generators(PairsConfig(sources=[str(synth_data)], out=str(tmp_path / "api"), splits=["test"]),
                         TRMLConfig(), None)
    assert not (tmp_path / "api").exists()

    r = subprocess.run([sys.executable, "-m", "trml_edge", "generators", str(synth_data), "--out",
                        str(tmp_path / "gen"), "--splits", "train,test"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "must not include test" in lines[0] and "use train and/or valid" in lines[0], lines
    assert not (tmp_path / "gen").exists()


def test_the_pool_cache_follows_the_images_content(tiny_cfg, tmp_path):
    """An image replaced by another of the same shape, under the same captions and file name, is embedded
    again; an unchanged pool reads the cache (the cached file is not rewritten)."""
    from trml_edge.data.synth import write_pool
    from trml_edge.train.pairs import embed_pool

    write_pool(tmp_path / "pool", 8, seed=0)
    model = _tiny_model(tiny_cfg)
    first = embed_pool(model, tmp_path / "pool")
    (cache,) = (tmp_path / "pool" / ".trml-features").glob("*/pool.npz")
    stamp = (cache.stat().st_ino, cache.stat().st_mtime_ns)

    again = embed_pool(model, tmp_path / "pool")
    assert (cache.stat().st_ino, cache.stat().st_mtime_ns) == stamp  # read, not recomputed
    assert torch.equal(again.visual, first.visual) and torch.equal(again.text, first.text)

    images = np.load(tmp_path / "pool" / "images.npy")
    size = (tmp_path / "pool" / "images.npy").stat().st_size
    write_pool(tmp_path / "other", 8, seed=1)
    images[3] = np.load(tmp_path / "other" / "images.npy")[5]  # another face, same shape, same captions
    np.save(tmp_path / "pool" / "images.npy", images)
    assert (tmp_path / "pool" / "images.npy").stat().st_size == size
    changed = embed_pool(model, tmp_path / "pool")
    assert (cache.stat().st_ino, cache.stat().st_mtime_ns) != stamp  # recomputed and written again
    assert not torch.allclose(changed.visual[3], first.visual[3], atol=1e-4)
    assert torch.allclose(changed.visual[[0, 1, 2, 4, 5, 6, 7]], first.visual[[0, 1, 2, 4, 5, 6, 7]], atol=1e-6)
    assert torch.equal(changed.text, first.text)  # the captions did not change
    shutil.rmtree(tmp_path / "pool" / ".trml-features")
    assert torch.equal(embed_pool(model, tmp_path / "pool").visual, changed.visual)  # what a fresh run computes
