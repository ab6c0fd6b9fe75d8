"""Model inputs for a split: pixels and tokens, or, with a frozen backbone, CLIP embeddings computed once.

With a frozen backbone the clips are streamed: decoded a chunk at a time, embedded, and only the embeddings
are kept (``build_features``), so memory does not grow with the frames of the corpus. The embeddings go to
a store: the on-disk feature cache (``trml_edge.data.cache.FeatureCache``), reused by every later run with
the same backbone and preprocessing, or an in-memory store with the same code path when no cache is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from trml_edge.data.cache import CACHE_VERSION, DEFAULT_DIR, INDEX, FeatureCache, MemoryStore
from trml_edge.data.corpus import ClipArrays, ClipRecord, load_split, open_for_model, report_skipped, usable
from trml_edge.errors import ClipError, DataError
from trml_edge.model.backbone import tokenize
from trml_edge.model.trml import TRML
from trml_edge.preprocess import normalize

log = logging.getLogger(__name__)
RESIZE = "resize_crop-bilinear-v1"  # bump when trml_edge.preprocess.resize_crop changes its output


@dataclass
class SplitTensors:
    """Everything a training or evaluation step reads, indexed by sample."""

    labels: torch.Tensor  # (N,)
    frame_mask: torch.Tensor  # (N, T) bool
    tokens: torch.Tensor  # (N, L) int64
    frames: np.ndarray | None  # (N, T, S, S, 3) uint8, when the backbone trains
    frame_emb: torch.Tensor | None  # (N, T, D), when the backbone is frozen
    text_emb: torch.Tensor | None  # (N, D), when the backbone is frozen

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def cached(self) -> bool:
        return self.frame_emb is not None

    def subset(self, idx: np.ndarray) -> SplitTensors:
        t = torch.from_numpy(idx)
        pick = (lambda x: None if x is None else x[idx] if isinstance(x, np.ndarray) else x[t])
        return SplitTensors(*(pick(getattr(self, f)) for f in
                              ("labels", "frame_mask", "tokens", "frames", "frame_emb", "text_emb")))


@dataclass
class BuildStats:
    """What ``build_features`` did: the cache's work counter."""

    reused: int = 0  # clips whose embeddings were already in the store
    encoded: int = 0  # clips decoded and embedded now
    frames_encoded: int = 0  # frames that went through the image encoder now
    failed: int = 0  # clips that failed to decode now
    known_failures: int = 0  # clips the store remembers as broken (not retried)
    seconds: float = 0.0


def pixels(model: TRML, frames: np.ndarray) -> torch.Tensor:
    p = model.cfg.preprocess
    return torch.from_numpy(normalize(frames, p.mean, p.std))


@torch.no_grad()
def embed_arrays(model: TRML, arrays: ClipArrays, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame image embeddings (N, T, D) and text embeddings (N, D), computed once in eval mode."""
    was_training = model.training
    model.eval()
    tokens = tokenize(arrays.texts, model.cfg.preprocess.context_length)
    frame_emb, text_emb = [], []
    for i in range(0, len(arrays), batch):
        fr = arrays.frames[i : i + batch]  # (b, T, S, S, 3)
        mask = torch.from_numpy(arrays.frame_mask[i : i + batch])
        emb = model.encode_frames(pixels(model, fr))  # (b, T, D)
        frame_emb.append(emb * mask.unsqueeze(-1))  # padded frames carry no embedding
        text_emb.append(model.encode_text(tokens[i : i + batch]))
    model.train(was_training)
    return torch.cat(frame_emb), torch.cat(text_emb)


def split_tensors(model: TRML, arrays: ClipArrays, embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> SplitTensors:
    """Inputs for a split. A frozen backbone gets its embeddings computed now (or taken from ``embeddings``)."""
    labels = torch.from_numpy(arrays.labels)
    mask = torch.from_numpy(arrays.frame_mask)
    tokens = tokenize(arrays.texts, model.cfg.preprocess.context_length)
    if model.cfg.backbone.freeze:
        frame_emb, text_emb = embeddings if embeddings is not None else embed_arrays(model, arrays)
        return SplitTensors(labels, mask, tokens, None, frame_emb, text_emb)
    if arrays.frames is None:
        raise DataError("these clips were loaded as embeddings only; a trainable backbone needs the frames "
                        "(load them with trml_edge.train.loop.load_splits)")
    return SplitTensors(labels, mask, tokens, arrays.frames, None, None)


def fuse_batch(model: TRML, data: SplitTensors, idx: np.ndarray, has_visual, has_text, fill=None,
               detach_generated: bool = False):
    """Run the model on samples ``idx`` with the given modality masks (``TRML.fuse`` for the rest)."""
    mask = data.frame_mask[idx]
    if data.cached:
        frame_emb, t = data.frame_emb[idx], data.text_emb[idx]
    else:
        frame_emb = model.encode_frames(pixels(model, data.frames[idx]))
        t = model.encode_text(data.tokens[idx])
    return model.fuse(frame_emb, mask, t, has_visual, has_text, fill, detach_generated)


# --- the streamed, cached path (frozen backbone) ---

def fingerprint(model: TRML, n_frames: int, fps: float | None = None) -> tuple[str, dict]:
    """sha256 over the CLIP weights, the architecture, the preprocessing and the frame sampling."""
    meta = {"cache_version": CACHE_VERSION, "clip_cfg": model.cfg.backbone.clip_cfg,
            "preprocess": asdict(model.cfg.preprocess), "n_frames": n_frames, "fps": fps, "resize": RESIZE}
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=list).encode())
    for name, tensor in sorted(model.clip.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest(), meta


def signature(r: ClipRecord) -> str:
    """What a stored embedding was computed from: the text and the video file's size."""
    size = r.video.stat().st_size if r.video is not None else -1
    return hashlib.sha1(f"{size}\0{r.text}".encode()).hexdigest()[:16]


def open_store(model: TRML, data: str | Path, cache: str | Path | None, n_frames: int, writable: bool = True):
    """The feature cache in ``cache``; with ``cache=None`` the one in ``DATA/.trml-features`` if it was built
    for this backbone (by ``trml-edge features``), else an in-memory store."""
    fp, meta = fingerprint(model, n_frames)
    if cache is None:
        default = Path(data) / DEFAULT_DIR
        if not (default / fp[:16] / INDEX).is_file():
            return MemoryStore()
        cache = default
        writable = writable and os.access(default / fp[:16], os.W_OK)  # a dataset may be mounted read-only
        log.info("using the feature cache in %s", default)
    return FeatureCache(Path(cache), fp, meta, writable=writable)


@torch.no_grad()
def embed_chunk(model: TRML, frames: np.ndarray, mask: np.ndarray, texts: list[str], batch: int = 64
                ) -> tuple[np.ndarray, np.ndarray]:
    """frames (b,T,S,S,3) uint8 + mask (b,T) -> per-frame embeddings (b,T,D) (0 where padded), text (b,D).

    Only real frames go through the image encoder; padding is never encoded.
    """
    was_training = model.training
    model.eval()
    real = frames[mask]  # (F, S, S, 3)
    emb = [model.encode_image(pixels(model, real[i : i + batch])) for i in range(0, len(real), batch)]
    frame_emb = np.zeros((*mask.shape, model.dim), np.float32)  # (b, T, D)
    frame_emb[mask] = torch.cat(emb).numpy()
    tokens = tokenize(texts, model.cfg.preprocess.context_length)
    text_emb = torch.cat([model.encode_text(tokens[i : i + batch]) for i in range(0, len(texts), batch)]).numpy()
    model.train(was_training)
    return frame_emb, text_emb


def build_features(model: TRML, records: list[ClipRecord], store: MemoryStore, n_frames: int,
                   fps: float | None = None, chunk: int = 64, on_chunk=None) -> BuildStats:
    """Embed every usable record the store lacks, a chunk of clips at a time; returns what was done."""
    from trml_edge.data.video import read_frames

    t0 = time.perf_counter()
    stats, todo = BuildStats(), []
    size = model.cfg.preprocess.image_size
    for r in records:
        if r.problem is not None or r.video is None:
            continue
        sig = signature(r)
        if store.lookup(r.clip_id, sig):
            stats.reused += 1
        elif store.failure(r.clip_id, sig):
            stats.known_failures += 1
        else:
            todo.append((r, sig))
    for start in range(0, len(todo), chunk):
        ids, sigs, texts, frames, masks, failures = [], [], [], [], [], {}
        for r, sig in todo[start : start + chunk]:
            try:
                f, m = read_frames(r.video, n_frames, fps, size)  # (T, S, S, 3), (T,)
            except ClipError as e:
                failures[r.clip_id] = (sig, e.kind, str(e))
                continue
            ids.append(r.clip_id)
            sigs.append(sig)
            texts.append(r.text)
            frames.append(f)
            masks.append(m)
        if ids:
            mask = np.stack(masks)
            frame_emb, text_emb = embed_chunk(model, np.stack(frames), mask, texts)
            stats.frames_encoded += int(mask.sum())
        else:
            frame_emb = mask = text_emb = None
        store.add_chunk(ids, sigs, frame_emb, mask, text_emb, failures)
        stats.encoded += len(ids)
        stats.failed += len(failures)
        if on_chunk is not None:
            on_chunk(min(start + chunk, len(todo)), len(todo))
    stats.seconds = time.perf_counter() - t0
    return stats


def split_from_store(model: TRML, records: list[ClipRecord], split: str, store: MemoryStore, n_frames: int
                     ) -> tuple[ClipArrays, SplitTensors]:
    """A split's labels, texts and stored embeddings (no frames), skipping what could not be embedded."""
    rows, skipped = usable(records, split)
    total = len(rows) + len(skipped)  # every row of the split, counted once
    keep = []
    for r in rows:
        sig = signature(r)
        if store.lookup(r.clip_id, sig):
            keep.append(r)
        else:
            failure = store.failure(r.clip_id, sig)
            if failure is None:
                raise DataError(f"clip {r.clip_id} is missing from the feature store; run `trml-edge features` "
                                "again (or train without --feature-cache)")
            skipped[r.clip_id] = failure[1]
    report_skipped(split, skipped, total)
    if not keep:
        raise DataError(f"no readable clip in the {split!r} split ({len(skipped)} skipped); run `trml-edge data check`")
    ids, texts = [r.clip_id for r in keep], [r.text for r in keep]
    frame_emb, mask, text_emb = store.gather(ids, n_frames, model.dim)
    labels = np.asarray([r.label for r in keep], np.float32)
    arrays = ClipArrays(ids, texts, labels, None, mask, skipped)
    tokens = tokenize(texts, model.cfg.preprocess.context_length)
    return arrays, SplitTensors(torch.from_numpy(labels), torch.from_numpy(mask), tokens, None,
                                torch.from_numpy(frame_emb), torch.from_numpy(text_emb))


def prepare_inputs(model: TRML, data: str | Path, splits=("train", "valid"), cache: str | Path | None = None,
                   rank: int = 0, world: int = 1) -> tuple[dict[str, ClipArrays], dict[str, SplitTensors]]:
    """(arrays, inputs) for ``splits`` of the corpus in ``data``.

    Frozen backbone: clips are streamed into embeddings through the feature cache (``cache``, or
    ``DATA/.trml-features`` if built for this backbone, else in memory); ``arrays`` then hold no frames.
    Trainable backbone: every split's frames are decoded into memory. Under DDP, rank 0 builds the cache
    and the other ranks read it.
    """
    corpus = open_for_model(data, model.cfg.head.task, model.cfg.head.num_classes)
    n_frames = model.cfg.temporal.max_frames
    if not model.cfg.backbone.freeze:
        arrays = {s: load_split(corpus.records, s, n_frames, model.cfg.preprocess.image_size) for s in splits}
        return arrays, {s: split_tensors(model, a) for s, a in arrays.items()}
    records = [r for r in corpus.records if r.split in splits]
    store = open_store(model, data, cache, n_frames, writable=rank == 0)
    shared = store.persistent and world > 1
    if rank == 0 or not shared:
        stats = build_features(model, records, store, n_frames,
                               on_chunk=lambda done, total: log.info("embedded %d/%d clips", done, total))
        log.info("features: %d clips embedded, %d reused from the cache, %d failed to decode (%.1f s)",
                 stats.encoded, stats.reused, stats.failed + stats.known_failures, stats.seconds)
    if shared:
        torch.distributed.barrier()  # rank 0 has finished writing
        if rank > 0:
            store = open_store(model, data, cache, n_frames, writable=False)
    out = {s: split_from_store(model, corpus.records, s, store, n_frames) for s in splits}
    return {s: a for s, (a, _) in out.items()}, {s: t for s, (_, t) in out.items()}


def train_subset_index(total: int, n: int | None, seed: int) -> np.ndarray:
    """The sorted indices of the seeded labelled subset of ``n`` among ``total`` training clips (all if None)."""
    if n is None or n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng([seed, 104729]).permutation(total)[:n])


def select_train(arrays: dict[str, ClipArrays], inputs: dict[str, SplitTensors] | None, n: int | None, seed: int
                 ) -> tuple[dict[str, ClipArrays], dict[str, SplitTensors] | None]:
    """Keep a seeded subset of ``n`` training clips (the same subset whatever the input path)."""
    train = arrays["train"]
    if n is None or n >= len(train):
        return arrays, inputs
    idx = train_subset_index(len(train), n, seed)
    sub = ClipArrays([train.ids[i] for i in idx], [train.texts[i] for i in idx], train.labels[idx],
                     None if train.frames is None else train.frames[idx], train.frame_mask[idx], train.skipped)
    if inputs is not None:
        inputs = dict(inputs, train=inputs["train"].subset(idx))
    return dict(arrays, train=sub), inputs
