"""Run directories and CLIP weights from a local file."""

import json

import pytest
import torch

from trml_edge.config import TRMLConfig
from trml_edge.errors import CheckpointError, ConfigError
from trml_edge.model.backbone import build_clip, resolve_arch
from trml_edge.model.checkpoint import load_run, new_model, save_clip, save_run


def _inputs(m, b=3):
    torch.manual_seed(5)
    from trml_edge.model.backbone import tokenize

    return (torch.randn(b, 2, 3, 48, 48), torch.ones(b, 2, dtype=torch.bool),
            tokenize(["good", "bad movie", "it was fine"][:b], 77),
            torch.tensor([True, False, True]), torch.tensor([True, True, False]))


def test_round_trip_gives_bit_identical_outputs(tmp_path):
    torch.manual_seed(0)
    m = new_model(TRMLConfig()).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the init, so a silent re-init would show
    m.mean_v.fill_(0.25)
    save_run(tmp_path / "run", m, {"note": 1})
    m2 = load_run(tmp_path / "run")
    x = _inputs(m)
    with torch.no_grad():
        for fill in ("generator", "mean"):
            assert torch.equal(m(*x, fill=fill).output, m2(*x, fill=fill).output)
    assert m2.cfg.to_dict() == m.cfg.to_dict()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == {"note": 1}


def test_checkpoint_rebuilds_without_the_architecture_file(tmp_path):
    arch = json.loads((resolve_arch.__globals__["CONFIG_DIR"] / "trml-tiny.json").read_text())
    arch["vision_cfg"]["layers"] = 1
    path = tmp_path / "my-arch.json"
    path.write_text(json.dumps(arch))
    cfg = TRMLConfig()
    cfg.backbone.arch = str(path)
    save_run(tmp_path / "run", new_model(cfg))
    path.unlink()
    m = load_run(tmp_path / "run")
    assert m.cfg.backbone.clip_cfg["vision_cfg"]["layers"] == 1


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    save_run(tmp_path / "run", new_model(TRMLConfig()))
    (tmp_path / "run" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_run(tmp_path / "run")
    with pytest.raises(CheckpointError, match="not found"):
        load_run(tmp_path / "nowhere")


def test_corrupt_weights_are_a_clear_error(tmp_path):
    save_run(tmp_path / "run", new_model(TRMLConfig()))
    (tmp_path / "run" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_run(tmp_path / "run")


def test_newer_config_in_a_run_is_refused(tmp_path):
    save_run(tmp_path / "run", new_model(TRMLConfig()))
    p = tmp_path / "run" / "trml_config.json"
    d = json.loads(p.read_text())
    d["format_version"] += 1
    p.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="newer"):
        load_run(tmp_path / "run")


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_pretrained_clip_weights_load_from_a_local_file(tmp_path, fmt):
    torch.manual_seed(11)
    clip_cfg = resolve_arch("trml-tiny")
    source = build_clip(clip_cfg)
    if fmt == "safetensors":
        weights = save_clip(tmp_path / "clip", source, clip_cfg, {})
    else:
        weights = tmp_path / "clip.pt"
        torch.save({"state_dict": source.state_dict()}, weights)  # the layout open_clip training writes
    torch.manual_seed(99)  # a different init, so equality below means the file was loaded
    m = new_model(TRMLConfig(), clip_weights=weights)
    for (k, a), b in zip(source.state_dict().items(), m.clip.state_dict().values()):
        assert torch.equal(a, b), k
    fresh = new_model(TRMLConfig())
    assert not torch.equal(fresh.clip.visual.conv1.weight, source.visual.conv1.weight)


def test_local_dir_backbone_reads_open_clip_layout(tmp_path):
    clip_cfg = resolve_arch("trml-tiny")
    clip_cfg["embed_dim"] = 32
    save_clip(tmp_path / "clip", build_clip(clip_cfg), clip_cfg, {})
    cfg = TRMLConfig()
    cfg.backbone.arch = f"local-dir:{tmp_path / 'clip'}"
    assert new_model(cfg).dim == 32


def test_weights_for_another_architecture_are_refused(tmp_path):
    clip_cfg = resolve_arch("trml-tiny")
    clip_cfg["embed_dim"] = 32
    weights = save_clip(tmp_path / "clip", build_clip(clip_cfg), clip_cfg, {})
    with pytest.raises(CheckpointError, match="do not fit"):
        new_model(TRMLConfig(), clip_weights=weights)
    with pytest.raises(CheckpointError, match="not found"):
        new_model(TRMLConfig(), clip_weights=tmp_path / "nope.safetensors")
