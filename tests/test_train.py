"""Training: determinism, resume after interruption, DDP equivalence, and the CLI end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from trml_edge.config import MissingConfig
from trml_edge.errors import CheckpointError, ConfigError
from trml_edge.train.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def _weights(run):
    return load_file(str(Path(run) / "model.safetensors"))


def _tcfg(data, out, **kw):
    return TrainConfig(data=str(data), out=str(out), epochs=4, batch_size=16, seed=1,
                       missing=MissingConfig(rate=0.5, modality="either"), **kw)


def test_training_is_deterministic_and_resumes_after_interruption(synth_data, tiny_cfg, tmp_path):
    full = train(_tcfg(synth_data, tmp_path / "full"), tiny_cfg(), progress=False)
    part = train(_tcfg(synth_data, tmp_path / "resumed", stop_after_epoch=1), tiny_cfg(), progress=False)
    assert part == {"interrupted_after_epoch": 1}
    assert (tmp_path / "resumed" / "train_state.pt").is_file()
    assert not (tmp_path / "resumed" / "model.safetensors").exists()  # nothing that looks finished
    resumed = train(_tcfg(synth_data, tmp_path / "resumed"), tiny_cfg(), progress=False)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["task_loss"] for h in full["history"]] == [h["task_loss"] for h in resumed["history"]]
    assert not (tmp_path / "resumed" / "train_state.pt").exists()
    # the SML and task losses were both optimised
    assert full["history"][-1]["sml_loss"] < full["history"][0]["sml_loss"]


def test_resume_with_other_settings_is_refused(synth_data, tiny_cfg, tmp_path):
    train(_tcfg(synth_data, tmp_path / "r", stop_after_epoch=0), tiny_cfg(), progress=False)
    with pytest.raises(ConfigError, match="other settings"):
        train(_tcfg(synth_data, tmp_path / "r", lr=0.5), tiny_cfg(), progress=False)
    train(_tcfg(synth_data, tmp_path / "r"), tiny_cfg(), progress=False)
    with pytest.raises(CheckpointError, match="already holds a finished run"):
        train(_tcfg(synth_data, tmp_path / "r"), tiny_cfg(), progress=False)


def _cli(*args, env=None, launcher=()):
    cmd = [sys.executable, *launcher, "-m", "trml_edge", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


COMMON = ["--epochs", "3", "--batch-size", "16", "--dropout", "0", "--seed", "2", "--train-missing-rate", "0.5"]


def _assert_ddp_matches(synth_data, tmp_path, opts) -> tuple[np.ndarray, np.ndarray]:
    """2 gloo processes under torchrun train the same function as the single run already in ``single``;
    returns both runs' test predictions.

    Compare what the model does, not raw weights: parameters with an analytically zero gradient (the key
    bias under softmax) drift by float noise amplified by Adam, while the function they compute does not.
    """
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    ddp = _cli("train", "--data", synth_data, "--out", tmp_path / "ddp", *opts, launcher=launcher)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    pa, pb = _predictions(tmp_path / "single", synth_data), _predictions(tmp_path / "ddp", synth_data)
    assert np.allclose(pa, pb, atol=2e-3), np.abs(pa - pb).max()
    ha = json.loads((tmp_path / "single" / "metrics.json").read_text())["history"]
    hb = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["history"]
    for x, y in zip(ha, hb):
        assert x["task_loss"] == pytest.approx(y["task_loss"], rel=1e-3)
        assert x["sml_loss"] == pytest.approx(y["sml_loss"], rel=1e-3)
    return pa, pb


def test_ddp_two_gloo_processes_match_single_process(synth_data, tmp_path):
    single = _cli("train", "--data", synth_data, "--out", tmp_path / "single", *COMMON)
    assert single.returncode == 0, single.stderr
    pa, pb = _assert_ddp_matches(synth_data, tmp_path, COMMON)
    # the comparison has teeth: a different seed gives clearly different weights
    other = _cli("train", "--data", synth_data, "--out", tmp_path / "other", *COMMON[:-4], "--seed", "5",
                 "--train-missing-rate", "0.5")
    assert other.returncode == 0, other.stderr
    assert np.abs(pa - _predictions(tmp_path / "other", synth_data)).max() > 20 * np.abs(pa - pb).max()


def _predictions(run, data):
    """Test-split predictions under a 50% missing protocol (generators in use)."""
    from trml_edge.eval.evaluate import TEST_SEED
    from trml_edge.missing import sample_masks
    from trml_edge.model.checkpoint import load_run
    from trml_edge.train.features import split_tensors
    from trml_edge.train.loop import load_splits, predict

    model = load_run(run)
    data_t = split_tensors(model, load_splits(data, model.cfg, splits=("test",))["test"])
    hv, ht = sample_masks(len(data_t), MissingConfig(rate=0.5), [0, TEST_SEED])
    return predict(model, data_t, torch.from_numpy(hv), torch.from_numpy(ht))


def test_cli_evaluate_fills_agree_without_missing_and_differ_with_it(synth_data, tmp_path):
    r = _cli("train", "--data", synth_data, "--out", tmp_path / "run", *COMMON)
    assert r.returncode == 0, r.stderr
    res = {}
    for rate in ("0", "0.7"):
        for fill in ("generator", "zero"):
            out = tmp_path / f"{rate}-{fill}.json"
            e = _cli("evaluate", tmp_path / "run", "--data", synth_data, "--test-missing-rate", rate,
                     "--fill", fill, "--json", out)
            assert e.returncode == 0, e.stderr
            res[rate, fill] = json.loads(out.read_text())["metrics"]
    assert res["0", "generator"] == res["0", "zero"]  # nothing missing: the fill is never used
    assert res["0.7", "generator"]["mae"] != res["0.7", "zero"]["mae"]
    assert set(res["0", "zero"]) == {"has0_acc2", "has0_f1", "non0_acc2", "non0_f1", "acc5", "acc7", "mae", "corr"}


def test_cli_reports_errors_without_a_traceback(synth_data, tmp_path):
    e = _cli("evaluate", tmp_path / "nope", "--data", tmp_path)
    assert e.returncode == 2
    assert "error: run directory" in e.stderr and "Traceback" not in e.stderr
    e = _cli("train", "--data", tmp_path, "--out", tmp_path / "r")
    assert e.returncode == 2 and "not a known corpus layout" in e.stderr
    e = _cli("train", "--data", synth_data, "--out", tmp_path / "r", "--backbone", "ViT-B-23")
    assert e.returncode == 2 and "unknown open_clip architecture" in e.stderr


def test_synthetic_benchmark_is_deterministic_and_has_its_documented_correlation(tmp_path):
    from trml_edge.data.synth import RHO, SynthSpec, generate

    generate(tmp_path / "a", SynthSpec(n=40, pool=8, seed=4))
    generate(tmp_path / "b", SynthSpec(n=40, pool=8, seed=4))
    assert (tmp_path / "a/label.csv").read_bytes() == (tmp_path / "b/label.csv").read_bytes()
    assert np.array_equal(np.load(tmp_path / "a/pretrain/images.npy"), np.load(tmp_path / "b/pretrain/images.npy"))
    import csv

    rows = list(csv.DictReader(open(tmp_path / "a/label.csv")))
    y = np.array([float(r["label"]) for r in rows])
    assert np.all(np.abs(y) <= 3) and np.allclose(y * 3, np.round(y * 3), atol=1e-3)
    big = generate(tmp_path / "c", SynthSpec(n=600, pool=8, seed=5))
    assert abs(big["empirical_corr_zv_zt"] - RHO) < 0.1


def test_pretraining_lowers_the_contrastive_loss_and_writes_open_clip_layout(synth_data, tmp_path):
    from trml_edge.config import TRMLConfig
    from trml_edge.model.backbone import build_clip, resolve_arch
    from trml_edge.model.checkpoint import new_model
    from trml_edge.train.pretrain import PretrainConfig, pretrain

    weights = pretrain(PretrainConfig(pool=str(synth_data / "pretrain"), out=str(tmp_path / "clip"), epochs=5,
                                      batch_size=16, seed=0), progress=False)
    meta = json.loads((tmp_path / "clip" / "open_clip_config.json").read_text())
    losses = meta["preprocess_cfg"]["epoch_losses"]
    assert losses[-1] < losses[0] - 0.1, losses
    cfg = TRMLConfig()
    cfg.backbone.arch = f"local-dir:{tmp_path / 'clip'}"
    m = new_model(cfg, clip_weights=weights)
    torch.manual_seed(0)
    init = build_clip(resolve_arch("trml-tiny"))
    assert not torch.equal(m.clip.visual.conv1.weight, init.visual.conv1.weight)


def test_ddp_matches_single_process_with_fixed_masks_and_generator_warmup(synth_data, tmp_path):
    """The stage-1 warm-up runs on every rank before DDP wraps the model; fixed masks feed the DDP loop."""
    opts = [*COMMON, "--fixed-missing", "--gen-warmup-epochs", "2", "--train-missing-modality", "visual"]
    single = _cli("train", "--data", synth_data, "--out", tmp_path / "single", *opts)
    assert single.returncode == 0, single.stderr
    _assert_ddp_matches(synth_data, tmp_path, opts)
