"""TRML training: ``L = L_task + alpha * L_sml``, deterministic, resumable, single-process or DDP.

Determinism: the batch order, the missing-modality masks and dropout are drawn from ``(seed, epoch)``, so a
resumed run and a run split across ``torchrun`` processes see the same global batches as a single
uninterrupted run. Under DDP each global batch is split across ranks; the task loss is scaled so the
averaged gradient equals the full-batch gradient, and the SML loss gathers embeddings from every rank so
its in-batch negatives are the whole global batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from trml_edge.config import MissingConfig, TRMLConfig, _build, write_json_atomic
from trml_edge.data.corpus import ClipArrays, load_split
from trml_edge.errors import CheckpointError, ConfigError
from trml_edge.metrics import task_metrics
from trml_edge.missing import sample_masks
from trml_edge.model.checkpoint import WEIGHTS, new_model, save_run
from trml_edge.model.losses import OBJECTIVES, sml_loss, task_loss
from trml_edge.model.trml import TRML
from trml_edge.train.features import (SplitTensors, fuse_batch, prepare_inputs, select_train, split_tensors,
                                     train_subset_index)
from trml_edge.train.pairs import GENERATORS, init_across_gap, load_generators
from trml_edge.train.schedule import progress_bar, warmup_cosine

log = logging.getLogger(__name__)
STATE = "train_state.pt"
TRAIN_CONFIG = "train_config.json"
VALID_SEED = 7919  # fixed salt: validation masks are the same in every epoch and every run
GEN_UPDATES = ("joint", "matching", "frozen")


@dataclass
class TrainConfig:
    data: str = ""  # dataset directory
    out: str = ""  # run directory
    epochs: int = 30
    batch_size: int = 64  # global batch, split across DDP ranks
    lr: float = 2e-3  # temporal encoder, generators, head
    backbone_lr: float = 1e-5  # CLIP towers, when not frozen
    weight_decay: float = 1e-2
    seed: int = 0
    missing: MissingConfig = field(default_factory=lambda: MissingConfig(rate=0.5, modality="either"))
    max_train: int | None = None  # labelled-set size: a seeded subset of the train split
    stop_after_epoch: int | None = None  # stop as if interrupted after this epoch (tests, time-boxed runs)
    feature_cache: str | None = None  # CLIP feature cache dir (frozen backbone); None: DATA/.trml-features if built
    # True: each training sample's missing modality is drawn once, so missing data stays missing (the
    # victim-modality protocol, where only a fraction of the training set is complete). False: redrawn
    # every epoch, which is modality-dropout augmentation of complete data.
    fixed_missing: bool = False
    # stage 1 of two: this many epochs of the generators alone on the SML loss over complete pairs (no label
    # read), before the joint training; 0 skips it
    gen_warmup_epochs: int = 0
    # stage-1 pairs: "labelled" (the labelled clips that are complete) or "train_split" (those, plus the
    # train-split clips outside the labelled subset, used as unlabelled complete pairs)
    pair_data: str = "labelled"
    # the generators' start: "identity" (v_hat = t, CLIP's alignment as is), "gap" (v_hat = t shifted by
    # the mean visual-minus-text embedding of the stage-1 pairs: across the modality gap; no label read) or
    # "pairs" (the generators of ``generators``, learned from unlabelled pairs by `trml-edge generators`).
    # "gap" had the lower valid MAE over sizes 150/400/696 x 3 seeds x both protocols (1.100 against 1.109,
    # within seed noise; most at 150 clips); see docs/results.md
    gen_init: str = "gap"
    generators: str | None = None  # gen_init "pairs": a directory written by `trml-edge generators`
    # what trains the generators in the joint training: "joint" (the task loss through the generated
    # embedding, and the matching loss), "matching" (the matching loss alone: the head's gradient stops at the
    # generated embedding) or "frozen" (nothing: they stay as they start)
    gen_update: str = "matching"
    # the matching objective (trml_edge.model.losses.OBJECTIVES): "sml" is the paper's InfoNCE. "cosine" with
    # "matching" had the lower valid MAE over sizes 150/400/696 x 3 seeds x both protocols (0.643 against
    # 0.652 for sml with joint, lower in all six size x protocol groups), and it keeps a generated embedding
    # nearer the real one than the mean embedding is; see docs/results.md, section 6
    gen_loss: str = "cosine"

    def validate(self) -> None:
        self.missing.validate()
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("epochs must be >= 1 and batch_size >= 2 (SML needs in-batch negatives)")
        if self.gen_warmup_epochs < 0:
            raise ConfigError(f"gen_warmup_epochs must be >= 0, got {self.gen_warmup_epochs}")
        if self.pair_data not in ("labelled", "train_split"):
            raise ConfigError(f"pair_data must be labelled or train_split, got {self.pair_data!r}")
        if self.gen_init not in ("identity", "gap", "pairs"):
            raise ConfigError(f"gen_init must be identity, gap or pairs, got {self.gen_init!r}")
        if (self.gen_init == "pairs") != (self.generators is not None):
            raise ConfigError("generators learned from unlabelled pairs (--generators DIR) go with gen_init pairs, "
                              "and gen_init pairs needs them; give both or neither")
        if self.gen_update not in GEN_UPDATES:
            raise ConfigError(f"gen_update must be one of {', '.join(GEN_UPDATES)}, got {self.gen_update!r}")
        if self.gen_loss not in OBJECTIVES:
            raise ConfigError(f"gen_loss must be one of {', '.join(OBJECTIVES)}, got {self.gen_loss!r}")

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("stop_after_epoch")
        return d


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on GPUs)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return _dist()


class _Step(torch.nn.Module):
    """The trainable forward, wrapped as one module so DistributedDataParallel can hook it."""

    def __init__(self, model: TRML, detach_generated: bool = False):
        super().__init__()
        self.model = model
        self.detach_generated = detach_generated

    def forward(self, data: SplitTensors, idx, has_v, has_t):
        o = fuse_batch(self.model, data, idx, has_v, has_t, detach_generated=self.detach_generated)
        return o.output, o.v, o.t, o.v_hat, o.t_hat


def _gather_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """All-gather (with gradient) rows padded to ``rows`` from every rank, concatenated."""
    rank, world = _dist()
    if world == 1:
        return x
    import torch.distributed.nn.functional as dfn

    pad = x.new_zeros((rows - len(x), *x.shape[1:]))
    return torch.cat(dfn.all_gather(torch.cat([x, pad])))


def load_splits(data: str | Path, model_cfg: TRMLConfig, splits=("train", "valid")) -> dict[str, ClipArrays]:
    """Decode every clip of ``splits`` into memory (a trainable backbone needs the frames; a frozen one is
    better served by ``trml_edge.train.features.prepare_inputs``, which streams them into embeddings)."""
    from trml_edge.data.corpus import open_for_model

    records = open_for_model(Path(data), model_cfg.head.task, model_cfg.head.num_classes).records
    return {s: load_split(records, s, model_cfg.temporal.max_frames, model_cfg.preprocess.image_size)
            for s in splits}


def train(
    tcfg: TrainConfig,
    mcfg: TRMLConfig,
    clip_weights: str | Path | None = None,
    arrays: dict[str, ClipArrays] | None = None,
    inputs: dict[str, SplitTensors] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a TRML model into ``tcfg.out``; resume if that run was interrupted. Returns the metrics.

    ``arrays`` (decoded splits) and ``inputs`` (their model inputs, valid for this backbone only) let a
    caller that trains several models on one dataset decode and embed it once.
    """
    tcfg.validate()
    mcfg.validate()
    rank, world = init_distributed()
    out = Path(tcfg.out)
    state_path = out / STATE
    resume = state_path.is_file()
    if resume:
        saved = json.loads((out / TRAIN_CONFIG).read_text())
        if saved != json.loads(json.dumps(tcfg.identity())):
            raise ConfigError(f"{out} holds an interrupted run with other settings; resume it with the same "
                              "options or choose a new --out")
        mcfg = TRMLConfig.load(out / "trml_config.json")
    elif (out / WEIGHTS).is_file():
        raise CheckpointError(f"{out} already holds a finished run; choose a new --out")

    torch.manual_seed(tcfg.seed)  # model init
    model = new_model(mcfg, None if resume else clip_weights)
    st = torch.load(state_path, map_location="cpu", weights_only=True) if resume else None
    if st is not None:  # embed with the run's own CLIP weights, not the fresh initialization above
        model.load_state_dict(st["model"])
    if arrays is None:  # frozen backbone: streamed into embeddings through the feature cache, no frames kept
        arrays, inputs = prepare_inputs(model, tcfg.data, cache=tcfg.feature_cache, rank=rank, world=world)
    full_train = (arrays["train"], None if inputs is None else inputs["train"])
    arrays, inputs = select_train(arrays, inputs, tcfg.max_train, tcfg.seed)
    if inputs is None:
        inputs = {s: split_tensors(model, a) for s, a in arrays.items()}
    train_data, valid_data = inputs["train"], inputs["valid"]
    n = len(train_data)
    if st is None and tcfg.gen_init == "pairs":
        load_generators(model, tcfg.generators)
    if st is None and (tcfg.gen_warmup_epochs > 0 or tcfg.gen_init == "gap"):  # a resumed run has them in its state
        pairs = warmup_pairs(model, tcfg, train_data, *full_train)
        if len(pairs) < 2:  # every training clip misses a modality: there is no pair to start the generators from
            log.warning("no complete training pairs: the generators start as the identity, without warm-up")
        else:
            if tcfg.gen_init == "gap":
                init_generators_across_gap(model, pairs)
            if tcfg.gen_warmup_epochs > 0:
                warmup_generators(model, pairs, tcfg, mcfg.tau)

    if tcfg.gen_update == "frozen":
        for name in GENERATORS:
            getattr(model, name).requires_grad_(False)
    head_params = [p for name, p in model.named_parameters() if not name.startswith("clip.") and p.requires_grad]
    groups = [{"params": head_params, "lr": tcfg.lr}]
    if not mcfg.backbone.freeze:
        groups.append({"params": list(model.clip.parameters()), "lr": tcfg.backbone_lr})
    optim = torch.optim.AdamW(groups, weight_decay=tcfg.weight_decay)
    steps_per_epoch = math.ceil(n / tcfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, warmup_cosine(tcfg.epochs * steps_per_epoch))
    start, best, history = 0, {"score": math.inf, "epoch": -1, "state": None}, []
    if st is not None:
        optim.load_state_dict(st["optim"])
        sched.load_state_dict(st["sched"])
        start, best, history = st["epoch"] + 1, st["best"], st["history"]
        if rank == 0:
            log.info("resuming %s after epoch %d", out, st["epoch"])
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / TRAIN_CONFIG, tcfg.identity())
        mcfg.save(out / "trml_config.json")

    step = _Step(model, detach_generated=tcfg.gen_update == "matching")
    if world > 1:
        step = torch.nn.parallel.DistributedDataParallel(step)

    bar = progress_bar(progress and rank == 0)
    task = bar.add_task("train", total=tcfg.epochs, completed=start) if bar else None
    for epoch in range(start, tcfg.epochs):
        model.train()
        torch.manual_seed(tcfg.seed * 100_003 + epoch)  # dropout
        perm = np.random.default_rng([tcfg.seed, epoch]).permutation(n)
        has_v, has_t = (torch.from_numpy(m) for m in train_masks(n, tcfg, epoch))
        totals = np.zeros(3)
        for b in range(0, n, tcfg.batch_size):
            gidx = perm[b : b + tcfg.batch_size]
            parts = np.array_split(gidx, world)
            idx = parts[rank]
            out_, v, t, v_hat, t_hat = step(train_data, idx, has_v[idx], has_t[idx])
            l_task = task_loss(out_, train_data.labels[idx], mcfg.head.task, reduction="sum") * world / len(gidx)
            rows = len(parts[0])
            complete = _gather_rows((has_v[idx] & has_t[idx]).float(), rows).bool()
            l_sml = sml_loss(*(_gather_rows(x, rows) for x in (v_hat, v, t_hat, t)), complete, mcfg.tau, tcfg.gen_loss)
            loss = l_task + mcfg.alpha * l_sml
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            totals += [float(l_task.detach()) * len(gidx) / world, float(l_sml.detach()) * len(gidx), len(gidx)]
        if world > 1:  # each rank summed the task loss of its own samples
            local = torch.tensor([totals[0]], dtype=torch.float64)
            dist.all_reduce(local)
            totals[0] = float(local)
        score = validate(model, valid_data, tcfg)
        rec = {"epoch": epoch, "task_loss": float(totals[0] / totals[2]), "sml_loss": float(totals[1] / totals[2]),
               "valid_score": float(score)}
        history.append(rec)
        if improves(score, best):
            best = {"score": score, "epoch": epoch, "state": {k: v.clone() for k, v in model.state_dict().items()}}
        if bar:
            bar.update(task, advance=1, description=f"train  task {rec['task_loss']:.3f} sml {rec['sml_loss']:.3f} "
                                                     f"valid {score:.3f}")
        if rank == 0:
            _save_state(state_path, {"epoch": epoch, "model": model.state_dict(), "optim": optim.state_dict(),
                                     "sched": sched.state_dict(), "best": best, "history": history})
        if tcfg.stop_after_epoch is not None and epoch >= tcfg.stop_after_epoch and epoch < tcfg.epochs - 1:
            if bar:
                bar.stop()
            _barrier()
            return {"interrupted_after_epoch": epoch}
    if bar:
        bar.stop()

    model.load_state_dict(best["state"])
    set_fill_means(model, train_data)
    metrics = {
        "best_epoch": best["epoch"], "valid_score": best["score"], "history": history, "train_size": n,
        "skipped_clips": {s: len(a.skipped) for s, a in arrays.items()},
    }
    if rank == 0:
        save_run(out, model, metrics)
        state_path.unlink(missing_ok=True)
    _barrier()
    return metrics


def improves(score: float, best: dict[str, Any]) -> bool:
    """Whether an epoch's selection score (lower is better) beats ``best``. A NaN score (an undefined
    metric, such as the Pearson r of a constant prediction) never beats a number, and a number always
    beats NaN; the first epoch is taken whatever its score, so a model is always selected."""
    if best["state"] is None:
        return True
    return not math.isnan(score) and (math.isnan(best["score"]) or score < best["score"])


def train_masks(n: int, tcfg: TrainConfig, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(has_visual, has_text) of the training samples in ``epoch``: drawn once per run when
    ``fixed_missing``, else once per epoch."""
    return sample_masks(n, tcfg.missing, [tcfg.seed, 1] if tcfg.fixed_missing else [tcfg.seed, epoch, 1])


def warmup_pairs(model: TRML, tcfg: TrainConfig, train_data: SplitTensors, full_arrays: ClipArrays,
                 full_inputs: SplitTensors | None) -> SplitTensors:
    """The complete pairs stage 1 trains on (see ``TrainConfig.pair_data``); their labels are never read."""
    if tcfg.fixed_missing or tcfg.missing.rate >= 1.0:
        has_v, has_t = train_masks(len(train_data), tcfg, 0)
        pairs = train_data.subset(np.flatnonzero(has_v & has_t))
    else:  # masks redrawn every epoch: every labelled clip is seen complete in some epoch
        pairs = train_data
    if tcfg.pair_data == "labelled":
        return pairs
    chosen = train_subset_index(len(full_arrays), tcfg.max_train, tcfg.seed)
    rest = np.setdiff1d(np.arange(len(full_arrays)), chosen)
    if len(rest) == 0:
        return pairs
    full = full_inputs if full_inputs is not None else split_tensors(model, full_arrays)
    extra = full.subset(rest)
    return SplitTensors(*(None if a is None else (np.concatenate([a, b]) if isinstance(a, np.ndarray)
                                                  else torch.cat([a, b]))
                          for a, b in ((getattr(pairs, f), getattr(extra, f)) for f in
                                       ("labels", "frame_mask", "tokens", "frames", "frame_emb", "text_emb"))))


@torch.no_grad()
def init_generators_across_gap(model: TRML, pairs: SplitTensors) -> None:
    """``trml_edge.train.pairs.init_across_gap`` from the complete ``pairs``' embeddings, as the model sees them."""
    ones = torch.ones(len(pairs), dtype=torch.bool)
    vs, ts = [], []
    for b in range(0, len(pairs), 256):
        idx = np.arange(b, min(b + 256, len(pairs)))
        o = fuse_batch(model, pairs, idx, ones[idx], ones[idx])
        vs.append(o.v)
        ts.append(o.t)
    init_across_gap(model, torch.cat(vs), torch.cat(ts))


def warmup_generators(model: TRML, pairs: SplitTensors, tcfg: TrainConfig, tau: float) -> list[float]:
    """Stage 1: the two generators alone, on the SML loss over complete pairs; returns the loss per epoch.

    The encoders and the temporal encoder are held as they are (their embeddings are the targets), and no
    label is read. Every DDP rank computes the same full-batch update on the same pairs, so the ranks stay
    identical without communication and match a single process.
    """
    gens = [model.gen_text_to_visual, model.gen_visual_to_text]
    params = [p for g in gens for p in g.parameters()]
    optim = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    n = len(pairs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, warmup_cosine(tcfg.gen_warmup_epochs * math.ceil(n / tcfg.batch_size)))
    ones = torch.ones(n, dtype=torch.bool)
    history = []
    for epoch in range(tcfg.gen_warmup_epochs):
        perm = np.random.default_rng([tcfg.seed, epoch, 3]).permutation(n)
        total, count = 0.0, 0
        for b in range(0, n, tcfg.batch_size):
            idx = perm[b : b + tcfg.batch_size]
            if len(idx) < 2:
                continue
            with torch.no_grad():
                o = fuse_batch(model, pairs, idx, ones[idx], ones[idx])
            loss = sml_loss(model.gen_text_to_visual(o.t), o.v, model.gen_visual_to_text(o.v), o.t, ones[idx], tau,
                            tcfg.gen_loss)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        history.append(total / max(count, 1))
    return history


@torch.no_grad()
def validate(model: TRML, data: SplitTensors, tcfg: TrainConfig) -> float:
    """Selection score on the valid split under the training protocol: MAE, or 1 - accuracy."""
    model.eval()
    has_v, has_t = (torch.from_numpy(m) for m in sample_masks(len(data), tcfg.missing, [tcfg.seed, VALID_SEED]))
    pred = predict(model, data, has_v, has_t)
    model.train()
    m = task_metrics(model.cfg.head.task, pred, data.labels.numpy())
    return m["mae"] if model.cfg.head.task == "regression" else 1.0 - m["acc"]


@torch.no_grad()
def predict(model: TRML, data: SplitTensors, has_v, has_t, fill: str | None = None, batch: int = 256) -> np.ndarray:
    outs = []
    for b in range(0, len(data), batch):
        idx = np.arange(b, min(b + batch, len(data)))
        outs.append(fuse_batch(model, data, idx, has_v[idx], has_t[idx], fill).output)
    return torch.cat(outs).numpy()


@torch.no_grad()
def set_fill_means(model: TRML, data: SplitTensors) -> None:
    """Store the training-set means of v and t (the mean-fill baseline's replacement values)."""
    ones = torch.ones(len(data), dtype=torch.bool)
    vs, ts = [], []
    model.eval()
    for b in range(0, len(data), 256):
        idx = np.arange(b, min(b + 256, len(data)))
        o = fuse_batch(model, data, idx, ones[idx], ones[idx])
        vs.append(o.v)
        ts.append(o.t)
    model.mean_v.copy_(torch.cat(vs).mean(0))
    model.mean_t.copy_(torch.cat(ts).mean(0))


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _barrier() -> None:
    if _dist()[1] > 1:
        dist.barrier()


def train_config_from_dict(d: dict) -> TrainConfig:
    return _build(TrainConfig, d, "train_config")
