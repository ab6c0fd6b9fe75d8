"""The two virtual-modality generators learned from unlabelled pairs, before the labelled training (stage 0).

This is the paper's setting: the generators see far more paired data than the head sees labels (CLIP's
web-scale alignment against a few thousand labelled clips). A user has hours of video with transcripts and
few labelled clips; ``trml-edge generators`` learns the generators from the first, ``trml-edge train
--generators DIR`` starts the labelled training from them.

Sources of pairs, embedded once by the frozen foundation (labels are never read):

* an image/caption pool, ``images.npy`` (uint8 [N,H,W,3]) + ``captions.txt`` (the benchmark's
  ``DATA/pretrain``, a stand-in for the web): one image per pair. Its embeddings are cached in
  ``POOL/.trml-features/<fingerprint>/pool.npz``, keyed by the bytes of the images and the captions;
* a corpus of clips with transcripts, in any layout trml-edge reads, through the feature cache that
  ``trml-edge features`` builds; the clips of the chosen splits are pairs, their labels unread.

The visual target is the **normalized mean of the frame embeddings** (``mean_frame_embedding``): exactly what
the temporal encoder outputs when the labelled training starts (its attention branch starts at zero), and
the only target the pool's single images and the clips' frame sequences share (a pool image is a clip of
one frame). The temporal encoder's output is not a target here: it does not exist before the labelled
training and moves during it, where the matching loss keeps following it. A per-frame target would ask
one text to match each of several frames whose expressions jitter around the clip's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trml_edge.config import TRMLConfig, write_json_atomic
from trml_edge.data.cache import DEFAULT_DIR
from trml_edge.errors import CheckpointError, ConfigError, DataError
from trml_edge.model.backbone import tokenize
from trml_edge.model.checkpoint import new_model
from trml_edge.model.losses import matching_loss
from trml_edge.model.trml import TRML
from trml_edge.preprocess import preprocess
from trml_edge.train.pairs_config import PairsConfig
from trml_edge.train.features import fingerprint, prepare_inputs
from trml_edge.train.schedule import warmup_cosine

log = logging.getLogger(__name__)
WEIGHTS = "generators.safetensors"
META = "generators.json"
FORMAT_VERSION = 1
GENERATORS = ("gen_text_to_visual", "gen_visual_to_text")


@dataclass
class Pairs:
    """Unit text embeddings and their visual targets, row for row."""

    text: torch.Tensor  # (N, D)
    visual: torch.Tensor  # (N, D): the normalized mean frame embedding

    def __len__(self) -> int:
        return len(self.text)


def mean_frame_embedding(frame_emb: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """(B,T,D) frame embeddings + (B,T) mask -> (B,D): the normalized masked mean (the visual target)."""
    m = frame_mask.to(frame_emb.dtype).unsqueeze(-1)  # (B, T, 1)
    return F.normalize((frame_emb * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)


def clip_fingerprint(model: TRML) -> str:
    """What the generators' embeddings depend on: the CLIP weights, architecture and preprocessing."""
    return fingerprint(model, n_frames=0)[0]


def load_pool(pool: Path) -> tuple[np.ndarray, list[str]]:
    """An image/caption pool: images (memory-mapped uint8 [N,H,W,3]) and one caption per image."""
    pool = Path(pool)
    images_path, captions_path = pool / "images.npy", pool / "captions.txt"
    for p in (images_path, captions_path):
        if not p.is_file():
            raise DataError(f"{p} not found; `trml-edge data synth` writes a pool under DATA/pretrain")
    images = np.load(images_path, mmap_mode="r")
    captions = captions_path.read_text(encoding="utf-8").splitlines()
    if len(captions) != len(images):
        raise DataError(f"{pool}: {len(images)} images but {len(captions)} captions; they must pair one to one")
    return images, captions


def is_pool(path: str | Path) -> bool:
    return (Path(path) / "images.npy").is_file() and (Path(path) / "captions.txt").is_file()


def pool_signature(pool: Path, captions: list[str]) -> str:
    """What a pool's cached embeddings depend on besides the CLIP: every byte of ``images.npy`` (its header and
    pixels) and the captions. Content, not size or time: an image replaced by another of the same shape, under
    the same captions, must not reuse the old embedding. Hashing reads the file once, far cheaper than
    embedding it."""
    path = pool / "images.npy"
    h = hashlib.sha256(f"{path.stat().st_size}\0".encode())  # the length first: images and captions cannot blur
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    h.update(b"\0" + "\n".join(captions).encode("utf-8"))
    return h.hexdigest()


@torch.no_grad()
def embed_pool(model: TRML, pool: str | Path, batch: int = 256) -> Pairs:
    """An image/caption pool's embeddings, cached beside it (recomputed when the pool's content or the CLIP
    changes)."""
    pool = Path(pool)
    images, captions = load_pool(pool)
    sig = pool_signature(pool, captions)
    cache = pool / DEFAULT_DIR / clip_fingerprint(model)[:16] / "pool.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["signature"]) == sig:
                return Pairs(torch.from_numpy(z["text"]), torch.from_numpy(z["visual"]))
    was_training = model.training
    model.eval()
    p = model.cfg.preprocess
    visual, text = [], []
    for i in range(0, len(images), batch):
        px = preprocess(np.asarray(images[i : i + batch]), p.image_size, p.mean, p.std)  # (b, 3, S, S)
        visual.append(model.encode_image(torch.from_numpy(px)))
        text.append(model.encode_text(tokenize(captions[i : i + batch], p.context_length)))
    model.train(was_training)
    pairs = Pairs(torch.cat(text), torch.cat(visual))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".pool.{os.getpid()}.tmp.npz")
        np.savez(tmp, text=pairs.text.numpy(), visual=pairs.visual.numpy(), signature=np.array(sig))
        tmp.replace(cache)
    except OSError as e:  # a read-only pool: the embeddings were computed, they are just not kept
        log.warning("pool embeddings not cached in %s (%s); they are recomputed next time", cache.parent, e)
    return pairs


def embed_corpus(model: TRML, data: str | Path, splits: list[str] | tuple[str, ...]) -> Pairs:
    """The clips of ``splits`` as pairs (text, mean frame embedding), through the feature cache; labels unread."""
    _, inputs = prepare_inputs(model, data, splits=tuple(splits))
    parts = [inputs[s] for s in splits]
    return Pairs(torch.cat([d.text_emb for d in parts]),
                 torch.cat([mean_frame_embedding(d.frame_emb, d.frame_mask) for d in parts]))


def load_pairs(model: TRML, sources: list[str], splits: list[str]) -> tuple[Pairs, list[dict[str, Any]]]:
    """Every source's pairs, concatenated, and what each contributed."""
    if not model.cfg.backbone.freeze:
        raise ConfigError("generators are learned on the frozen foundation's embeddings; keep the backbone frozen")
    got, info = [], []
    for src in sources:
        if is_pool(src):
            p, kind = embed_pool(model, src), "pool"
        elif Path(src).is_dir():
            p, kind = embed_corpus(model, src, splits), f"corpus ({', '.join(splits)})"
        else:
            raise DataError(f"{src} is neither an image/caption pool (images.npy + captions.txt) nor a corpus "
                            "directory; give DATA/pretrain, a dataset directory, or a corpus of your own clips")
        got.append(p)
        info.append({"source": str(src), "kind": kind, "pairs": len(p)})
    return Pairs(torch.cat([p.text for p in got]), torch.cat([p.visual for p in got])), info


@torch.no_grad()
def init_across_gap(model: TRML, visual: torch.Tensor, text: torch.Tensor) -> None:
    """Start each generator at its input shifted by the mean target-minus-source embedding of the pairs.

    CLIP's image and text embeddings sit in separate cones (the modality gap): an identity generator puts a
    text embedding where the head expects a visual one. The shift is the last layer's bias (zero at
    init), so the generator's architecture and exported graph are unchanged.
    """
    gap = visual.mean(0) - text.mean(0)  # (D,)
    model.gen_text_to_visual.net[-1].bias.copy_(gap)
    model.gen_visual_to_text.net[-1].bias.copy_(-gap)


@torch.no_grad()
def match_stats(generated: torch.Tensor, real: torch.Tensor, fill: torch.Tensor) -> dict[str, float]:
    """How near generated unit embeddings are to the real ones: the mean cosine, the mean cosine of the
    mean-fill vector ``fill`` (the mean of the real embeddings of training pairs), and the real partner's
    retrieval rank among all rows (1 = best): median, R@1, R@10."""
    sims = generated @ real.T  # (N, N) cosine: every embedding is unit-norm
    rank = (sims > sims.diag().unsqueeze(1)).sum(1).float() + 1
    return {"cos_to_real": float((generated * real).sum(1).mean()),
            "cos_mean_fill": float((real @ F.normalize(fill, dim=0)).mean()),
            "median_rank": float(rank.median()), "r_at_1": float((rank <= 1).float().mean()),
            "r_at_10": float((rank <= 10).float().mean()), "n": len(real)}


@torch.no_grad()
def pair_quality(model: TRML, pairs: Pairs, fit: Pairs) -> dict[str, dict[str, float]]:
    """``match_stats`` of both generators on held-out ``pairs``; ``fit`` (the training pairs) gives the mean fill."""
    was_training = model.training
    model.eval()
    out = {"v_hat": match_stats(model.gen_text_to_visual(pairs.text), pairs.visual, fit.visual.mean(0)),
           "t_hat": match_stats(model.gen_visual_to_text(pairs.visual), pairs.text, fit.text.mean(0))}
    model.train(was_training)
    return out


def fit_generators(model: TRML, pairs: Pairs, cfg: PairsConfig, held_out: Pairs | None = None) -> list[dict]:
    """Train both generators on ``pairs`` (text -> visual target, visual target -> text) from the gap start;
    returns the loss per epoch, with ``pair_quality`` on ``held_out`` when given."""
    init_across_gap(model, pairs.visual, pairs.text)
    params = [p for name in GENERATORS for p in getattr(model, name).parameters()]
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(pairs)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, warmup_cosine(cfg.epochs * math.ceil(n / cfg.batch_size)))
    history = []
    for epoch in range(cfg.epochs):
        perm = torch.from_numpy(np.random.default_rng([cfg.seed, epoch, 5]).permutation(n))
        total = 0.0
        for b in range(0, n, cfg.batch_size):
            idx = perm[b : b + cfg.batch_size]
            if len(idx) < 2:
                continue
            t, v = pairs.text[idx], pairs.visual[idx]
            loss = 0.5 * (matching_loss(model.gen_text_to_visual(t), v, cfg.tau, cfg.objective) +
                          matching_loss(model.gen_visual_to_text(v), t, cfg.tau, cfg.objective))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        rec: dict[str, Any] = {"epoch": epoch, "loss": total / n}
        if held_out is not None:
            rec["held_out"] = pair_quality(model, held_out, pairs)
        history.append(rec)
    return history


def train_generators(cfg: PairsConfig, mcfg: TRMLConfig, clip_weights: str | Path | None) -> dict[str, Any]:
    """Learn the generators from ``cfg.sources`` under the frozen CLIP and write them to ``cfg.out``."""
    from safetensors.torch import save_file

    cfg.validate()
    torch.manual_seed(cfg.seed)
    model = new_model(mcfg, clip_weights)
    pairs, info = load_pairs(model, cfg.sources, cfg.splits)
    held_out = embed_corpus(model, cfg.valid, ["valid"]) if cfg.valid else None
    history = fit_generators(model, pairs, cfg, held_out)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k.startswith(GENERATORS)}
    tmp = out / f".{WEIGHTS}.tmp"
    save_file(state, str(tmp))
    meta = {"format_version": FORMAT_VERSION, "fingerprint": clip_fingerprint(model), "dim": model.dim,
            "generator": asdict(mcfg.generator), "clip_weights": str(clip_weights) if clip_weights else None,
            "config": asdict(cfg), "sources": info, "history": history}
    write_json_atomic(out / META, meta)
    tmp.replace(out / WEIGHTS)
    return meta


def load_generators(model: TRML, gen_dir: str | Path) -> dict[str, Any]:
    """Put the generators of ``gen_dir`` into ``model``; refused when they were learned under another CLIP."""
    from safetensors.torch import load_file

    gen_dir = Path(gen_dir)
    if not (gen_dir / WEIGHTS).is_file() or not (gen_dir / META).is_file():
        raise CheckpointError(f"{gen_dir} holds no generators ({WEIGHTS} + {META}); write them with "
                              "`trml-edge generators`")
    meta = json.loads((gen_dir / META).read_text(encoding="utf-8"))
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{gen_dir / META} is from a newer trml-edge; upgrade to read it")
    if meta["fingerprint"] != clip_fingerprint(model):
        raise CheckpointError(f"the generators in {gen_dir} were learned on another CLIP's embeddings (or another "
                              "preprocessing); learn them again with this run's --clip-weights")
    if meta["dim"] != model.dim or meta["generator"] != asdict(model.cfg.generator):
        raise CheckpointError(f"the generators in {gen_dir} have another shape (dim {meta['dim']}, "
                              f"{meta['generator']}); learn them again with this model's generator config")
    state = load_file(str(gen_dir / WEIGHTS))
    expected = {k for k in model.state_dict() if k.startswith(GENERATORS)}
    if set(state) != expected:
        raise CheckpointError(f"{gen_dir / WEIGHTS} does not hold exactly the two generators; write it again")
    model.load_state_dict(state, strict=False)
    return meta
