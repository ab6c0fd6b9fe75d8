"""The research training options: fixed training masks and the generators' stage-1 warm-up."""

import numpy as np
import pytest
import torch

from trml_edge.config import MissingConfig
from trml_edge.errors import ConfigError
from trml_edge.model.checkpoint import new_model
from trml_edge.train.features import prepare_inputs, select_train, train_subset_index
from trml_edge.train.loop import TrainConfig, train, train_masks, warmup_generators, warmup_pairs


def _tcfg(data, out, **kw):
    kw.setdefault("missing", MissingConfig(rate=0.5, modality="either"))
    return TrainConfig(data=str(data), out=str(out), epochs=3, batch_size=16, seed=1, **kw)


def test_fixed_missing_draws_the_masks_once(tmp_path):
    redrawn = _tcfg("d", tmp_path, missing=MissingConfig(rate=0.9, modality="visual"))
    fixed = _tcfg("d", tmp_path, missing=MissingConfig(rate=0.9, modality="visual"), fixed_missing=True)
    a0, a1 = train_masks(100, fixed, 0), train_masks(100, fixed, 7)
    assert all(np.array_equal(x, y) for x, y in zip(a0, a1))
    b0, b1 = train_masks(100, redrawn, 0), train_masks(100, redrawn, 7)
    assert not np.array_equal(b0[0], b1[0])
    assert (~a0[0]).sum() == 90 and a0[1].all()  # the victim modality only, at the rate asked


def test_options_are_validated():
    with pytest.raises(ConfigError, match="gen_warmup_epochs"):
        TrainConfig(gen_warmup_epochs=-1).validate()
    with pytest.raises(ConfigError, match="pair_data"):
        TrainConfig(pair_data="everything").validate()


def _setup(synth_data, tiny_cfg):
    torch.manual_seed(0)
    model = new_model(tiny_cfg())
    arrays, inputs = prepare_inputs(model, synth_data)
    return model, arrays, inputs


def test_warmup_trains_only_the_generators_and_lowers_the_sml_loss(synth_data, tiny_cfg, tmp_path):
    model, arrays, inputs = _setup(synth_data, tiny_cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hist = warmup_generators(model, inputs["train"], _tcfg(synth_data, tmp_path, gen_warmup_epochs=6), tau=0.07)
    assert len(hist) == 6 and hist[-1] < hist[0]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("gen_text_to_visual.", "gen_visual_to_text.")) for k in changed)


def test_warmup_pairs_are_the_complete_labelled_clips_or_the_whole_train_split(synth_data, tiny_cfg, tmp_path):
    model, arrays, inputs = _setup(synth_data, tiny_cfg)
    total = len(arrays["train"])
    sub_arrays, sub_inputs = select_train(arrays, inputs, 30, 1)
    miss = MissingConfig(rate=0.5, modality="visual")
    lab = _tcfg(synth_data, tmp_path, missing=miss, fixed_missing=True, max_train=30)
    split = _tcfg(synth_data, tmp_path, missing=miss, fixed_missing=True, max_train=30, pair_data="train_split")
    p_lab = warmup_pairs(model, lab, sub_inputs["train"], arrays["train"], inputs["train"])
    p_all = warmup_pairs(model, split, sub_inputs["train"], arrays["train"], inputs["train"])
    assert len(p_lab) == 15  # the labelled clips that keep both modalities under the fixed mask
    assert len(p_all) == 15 + total - 30  # plus every train clip outside the labelled subset
    outside = np.setdiff1d(np.arange(total), train_subset_index(total, 30, 1))
    assert torch.equal(p_all.text_emb[15:], inputs["train"].text_emb[outside])
    # with masks redrawn every epoch every labelled clip is a complete pair
    redrawn = _tcfg(synth_data, tmp_path, max_train=30)
    assert len(warmup_pairs(model, redrawn, sub_inputs["train"], arrays["train"], inputs["train"])) == 30


def test_training_with_warmup_starts_with_matched_generators_and_resumes_exactly(synth_data, tiny_cfg, tmp_path):
    base = train(_tcfg(synth_data, tmp_path / "base"), tiny_cfg(), progress=False)
    warm = train(_tcfg(synth_data, tmp_path / "warm", gen_warmup_epochs=4), tiny_cfg(), progress=False)
    assert warm["history"][0]["sml_loss"] < base["history"][0]["sml_loss"]
    part = train(_tcfg(synth_data, tmp_path / "res", gen_warmup_epochs=4, stop_after_epoch=0), tiny_cfg(),
                 progress=False)
    assert part == {"interrupted_after_epoch": 0}
    resumed = train(_tcfg(synth_data, tmp_path / "res", gen_warmup_epochs=4), tiny_cfg(), progress=False)
    assert [h["task_loss"] for h in warm["history"]] == [h["task_loss"] for h in resumed["history"]]


def test_gap_init_moves_generated_embeddings_toward_the_real_ones(synth_data, tiny_cfg, tmp_path):
    from trml_edge.train.features import fuse_batch
    from trml_edge.train.loop import init_generators_across_gap

    model, arrays, inputs = _setup(synth_data, tiny_cfg)
    data = inputs["train"]
    idx = np.arange(len(data))
    ones = torch.ones(len(data), dtype=torch.bool)

    def cosines():
        with torch.no_grad():
            o = fuse_batch(model, data, idx, ones, ones)
        return float((o.v_hat * o.v).sum(1).mean()), float((o.t_hat * o.t).sum(1).mean()), o

    cv0, ct0, o = cosines()
    init_generators_across_gap(model, data)
    cv1, ct1, _ = cosines()
    gap = o.v.mean(0) - o.t.mean(0)
    assert torch.allclose(model.gen_text_to_visual.net[-1].bias, gap)
    assert torch.allclose(model.gen_visual_to_text.net[-1].bias, -gap)
    assert cv1 > cv0 + 0.05 and ct1 > ct0 + 0.05
    with pytest.raises(ConfigError, match="gen_init"):
        TrainConfig(gen_init="random").validate()


def test_no_complete_pair_leaves_the_generators_finite(synth_data, tiny_cfg, tmp_path):
    """Every clip misses its video for the whole run: gap init and warm-up have nothing to start from."""
    cfg = _tcfg(synth_data, tmp_path / "r", missing=MissingConfig(rate=1.0, modality="visual"), fixed_missing=True,
                gen_warmup_epochs=2)
    cfg.epochs = 1
    metrics = train(cfg, tiny_cfg(), progress=False)
    assert np.isfinite(metrics["valid_score"])
    from trml_edge.model.checkpoint import load_run

    model = load_run(tmp_path / "r")
    assert all(torch.isfinite(p).all() for p in model.gen_text_to_visual.parameters())
