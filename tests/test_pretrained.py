"""Pretrained CLIP by name, offline: a tiny open_clip model written into a Hugging Face cache folder in the
layout huggingface_hub reads (models--ORG--NAME/snapshots/REV/..., refs/main), then `trml-edge train
--pretrained hf-hub:ORG/NAME` with HF_HUB_OFFLINE=1 must load exactly those weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REV = "0123456789abcdef0123456789abcdef01234567"  # a commit hash, as the hub client stores snapshots
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # not CLIP's: the run must take the pretrained model's own


def _hub_repo(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` as the cached snapshot of hub model ``repo`` (the layout of huggingface_hub's cache)."""
    base = cache / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / REV
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(REV)
    return snap


def _tiny_clip_files(seed: int = 123, clip_cfg: dict | None = None) -> tuple[dict[str, bytes], dict]:
    import torch
    from safetensors.torch import save

    from trml_edge.model.backbone import build_clip, resolve_arch

    cfg = clip_cfg or resolve_arch("trml-tiny")
    torch.manual_seed(seed)
    clip = build_clip(cfg)
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    config = {"model_cfg": cfg, "preprocess_cfg": {"mean": list(MEAN), "std": list(STD)}}
    return {"open_clip_config.json": json.dumps(config).encode(), "open_clip_model.safetensors": save(state)}, state


def _cli(*args, env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "trml_edge", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_train_from_hf_hub_name_offline_loads_the_cached_weights(synth_data, tmp_path):
    import torch
    from safetensors.torch import load_file

    cache = tmp_path / "hub-cache"
    files, state = _tiny_clip_files()
    _hub_repo(cache, "test-org/tiny-clip", files)
    run = tmp_path / "run"
    r = _cli("train", "--data", synth_data, "--out", run, "--pretrained", "hf-hub:test-org/tiny-clip",
             "--cache-dir", cache, "--epochs", "1", "--batch-size", "32",
             env_extra={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "elsewhere")}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = load_file(str(run / "model.safetensors"))
    clip = {k[len("clip."):]: v for k, v in saved.items() if k.startswith("clip.")}
    assert set(clip) == set(state)
    for k, v in state.items():  # a frozen backbone keeps the pretrained weights bit for bit
        assert torch.equal(clip[k], v), k
    fresh = _tiny_clip_files(seed=7)[1]  # a random init differs, so the equality above is not trivial
    assert not all(torch.equal(fresh[k], v) for k, v in state.items())
    cfg = json.loads((run / "trml_config.json").read_text())
    assert cfg["backbone"]["arch"] == "hf-hub:test-org/tiny-clip"
    assert tuple(cfg["preprocess"]["mean"]) == MEAN and tuple(cfg["preprocess"]["std"]) == STD


def test_hf_home_cache_is_used_without_cache_dir(tmp_path):
    """The standard cache (HF_HOME/hub) is where a name is looked up when --cache-dir is not given."""
    home = tmp_path / "hf-home"
    files, state = _tiny_clip_files()
    _hub_repo(home / "hub", "test-org/tiny-clip", files)
    code = ("from trml_edge.model.backbone import fetch_pretrained; "
            "p = fetch_pretrained('trml-tiny', 'hf-hub:test-org/tiny-clip'); print(p.weights)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(home))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()).resolve() == (home / "hub" / "models--test-org--tiny-clip" / "snapshots" / REV
                                                  / "open_clip_model.safetensors").resolve()


def test_offline_miss_is_one_line_naming_the_cache_and_the_fill_command(synth_data, tmp_path):
    home = tmp_path / "empty-home"
    r = _cli("train", "--data", synth_data, "--out", tmp_path / "run", "--pretrained", "hf-hub:test-org/absent",
             "--epochs", "1", env_extra={"HF_HUB_OFFLINE": "1", "HF_HOME": str(home)}, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert str(home / "hub") in err  # the cache it looked in
    assert "HF_HUB_OFFLINE" in err and "hf download test-org/absent" in err
    assert not (tmp_path / "run").exists()


def test_non_clip_text_tower_is_refused_before_the_weights_are_fetched(tmp_path, monkeypatch):
    """Only the config is in the cache: a refusal that needed the weights would be an offline miss instead."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at each call
    from trml_edge.errors import ConfigError
    from trml_edge.model.backbone import fetch_pretrained, resolve_arch

    cfg = resolve_arch("trml-tiny")
    cfg["text_cfg"]["hf_tokenizer_name"] = "test-org/some-tokenizer"  # as SigLIP-style configs have
    cache = tmp_path / "cache"
    _hub_repo(cache, "test-org/hf-text", {"open_clip_config.json": json.dumps({"model_cfg": cfg}).encode()})
    with pytest.raises(ConfigError, match="Hugging Face text tower"):
        fetch_pretrained("trml-tiny", "hf-hub:test-org/hf-text", cache_dir=cache)
    with pytest.raises(ConfigError, match="Hugging Face text tower"):  # by architecture name: nothing fetched
        fetch_pretrained("ViT-B-16-SigLIP", "webli", cache_dir=cache)
    with pytest.raises(ConfigError, match="not an open_clip tag of 'ViT-B-32'.*laion2b_s34b_b79k"):
        fetch_pretrained("ViT-B-32", "no-such-tag", cache_dir=cache)
    assert sorted(p.name for p in cache.iterdir()) == ["models--test-org--hf-text"]  # no download was started


def test_open_clip_tag_resolves_through_the_hub_cache(tmp_path):
    """A tag (ViT-B-32 laion2b_s34b_b79k) names a hub repository in open_clip's table; it is read from the cache
    in the same layout, with the tag's own preprocessing. The weights here are a stand-in of the right name:
    only the lookup is tested, not ViT-B-32's 600 MB."""
    import open_clip

    repo = open_clip.pretrained.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")["hf_hub"].rstrip("/")
    cache = tmp_path / "cache"
    snap = _hub_repo(cache, repo, {"open_clip_model.safetensors": b"stand-in"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HUB_OFFLINE"] = "1"
    code = ("from trml_edge.model.backbone import fetch_pretrained; "
            f"p = fetch_pretrained('ViT-B-32', 'laion2b_s34b_b79k', cache_dir={str(cache)!r}); "
            "print(p.weights); print(p.arch, p.clip_cfg['vision_cfg']['patch_size'], p.mean)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    weights, desc = out.stdout.strip().splitlines()
    assert Path(weights).resolve() == (snap / "open_clip_model.safetensors").resolve()
    assert desc.startswith("ViT-B-32 32 (0.4814")


def test_pretrain_continues_from_hf_hub_weights_offline(synth_data, tmp_path):
    """`trml-edge pretrain --pretrained`: at lr 0 the saved CLIP is the cached one, with its normalization."""
    import torch
    from safetensors.torch import load_file

    cache = tmp_path / "hub-cache"
    files, state = _tiny_clip_files()
    _hub_repo(cache, "test-org/tiny-clip", files)
    out = tmp_path / "clip"
    r = _cli("pretrain", synth_data / "pretrain", "--out", out, "--pretrained", "hf-hub:test-org/tiny-clip",
             "--cache-dir", cache, "--epochs", "1", "--lr", "0", env_extra={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = load_file(str(out / "open_clip_model.safetensors"))
    assert set(saved) == set(state) and all(torch.equal(saved[k], v) for k, v in state.items())
    pp = json.loads((out / "open_clip_config.json").read_text())["preprocess_cfg"]
    assert tuple(pp["mean"]) == MEAN and tuple(pp["std"]) == STD


def test_features_from_hf_hub_weights_offline(synth_data, tmp_path):
    cache = tmp_path / "hub-cache"
    _hub_repo(cache, "test-org/tiny-clip", _tiny_clip_files()[0])
    both = _cli("features", synth_data, "--clip-weights", tmp_path / "w.safetensors", "--pretrained",
                "hf-hub:test-org/tiny-clip", env_extra={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert both.returncode == 2 and "exactly one of --run RUN, --clip-weights PATH or --pretrained" in both.stderr
    r = _cli("features", synth_data, "--pretrained", "hf-hub:test-org/tiny-clip", "--cache-dir", cache,
             "--cache", tmp_path / "feats", env_extra={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "clips embedded now" in r.stdout and any((tmp_path / "feats").iterdir())
