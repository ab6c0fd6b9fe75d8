"""`trml-edge pretrain | train | evaluate | demo | backbones`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from trml_edge.cli import app
from trml_edge.specs import PretrainConfig
from trml_edge.train.pairs_config import PairsConfig

MODALITY_HELP = "which modality may go missing: visual, text or either"


PRETRAINED_HELP = ("pretrained CLIP weights by name: an open_clip tag of --backbone (`trml-edge backbones "
                   "--pretrained` lists them) or hf-hub:ORG/NAME (its architecture comes with it), through the "
                   "Hugging Face cache; HF_HUB_OFFLINE=1 reads the cache only")
CACHE_DIR_HELP = "cache of --pretrained downloads [default: the Hugging Face cache, HF_HOME/hub]"


def clip_weights_source(cfg, backbone: str, clip_weights: Optional[Path], pretrained: Optional[str],
                        cache_dir: Optional[Path]):
    """The CLIP weights a command starts from: a local file, or pretrained weights by name (whose
    architecture and preprocessing are written into ``cfg``)."""
    from trml_edge.errors import ConfigError

    cfg.backbone.arch = backbone
    if pretrained is None:
        return clip_weights
    if clip_weights is not None:
        raise ConfigError("give --clip-weights FILE or --pretrained NAME, not both")
    from trml_edge.model.backbone import fetch_pretrained

    found = fetch_pretrained(backbone, pretrained, cache_dir)
    found.apply(cfg)
    return found.weights


@app.command()
def backbones(
    pretrained: bool = typer.Option(False, "--pretrained", help="also list each architecture's pretrained tags"),
) -> None:
    """List the open_clip architecture names usable as --backbone (and their --pretrained tags)."""
    import open_clip

    from trml_edge.model import backbone  # noqa: F401  (registers the packaged tiny architecture)

    if not pretrained:
        typer.echo("\n".join(open_clip.list_models()))
        return
    for arch in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(arch)
        typer.echo(f"{arch}: {', '.join(tags) if tags else '-'}")


@app.command()
def pretrain(
    pool: Path = typer.Argument(..., help="directory with images.npy and captions.txt (DATA/pretrain)"),
    out: Path = typer.Option(..., "--out", help="output directory (open_clip local-dir layout)"),
    backbone: str = typer.Option("trml-tiny", help="open_clip architecture name or JSON file"),
    pretrained: Optional[str] = typer.Option(None, help="start from " + PRETRAINED_HELP),
    cache_dir: Optional[Path] = typer.Option(None, help=CACHE_DIR_HELP),
    epochs: int = typer.Option(PretrainConfig.epochs),
    batch_size: int = typer.Option(PretrainConfig.batch_size, help="contrastive batch"),
    lr: float = typer.Option(PretrainConfig.lr),
    seed: int = typer.Option(0),
) -> None:
    """Short contrastive CLIP pretraining on image/caption pairs (stands in for CLIP's web-scale pretraining)."""
    from trml_edge.train.pretrain import pretrain as run

    weights = run(PretrainConfig(pool=str(pool), out=str(out), arch=backbone, epochs=epochs,
                                 batch_size=batch_size, lr=lr, seed=seed, pretrained=pretrained,
                                 cache_dir=str(cache_dir) if cache_dir else None))
    typer.echo(f"CLIP weights: {weights}")


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    out: Path = typer.Option(..., "--out", help="run directory; an interrupted run there is resumed"),
    backbone: str = typer.Option("trml-tiny", help="open_clip architecture name, JSON file or local-dir:PATH"),
    clip_weights: Optional[Path] = typer.Option(None, help="local file of pretrained CLIP weights"),
    pretrained: Optional[str] = typer.Option(None, help=PRETRAINED_HELP),
    cache_dir: Optional[Path] = typer.Option(None, help=CACHE_DIR_HELP),
    freeze_backbone: bool = typer.Option(True, help="keep the CLIP towers frozen"),
    train_missing_rate: float = typer.Option(0.5, help="fraction of training samples missing a modality"),
    train_missing_modality: str = typer.Option("either", help=MODALITY_HELP),
    fill: str = typer.Option("generator", help="generator (TRML), zero or mean"),
    alpha: float = typer.Option(0.1, help="weight of the semantic matching loss"),
    tau: float = typer.Option(0.07, help="InfoNCE temperature"),
    dropout: float = typer.Option(0.1, help="fusion-head dropout (0 makes DDP match one process exactly)"),
    epochs: int = typer.Option(30),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(2e-3),
    seed: int = typer.Option(0),
    max_train: Optional[int] = typer.Option(None, help="use a seeded subset of this many training clips"),
    feature_cache: Optional[Path] = typer.Option(
        None, help="CLIP feature cache directory (frozen backbone); default DATA/.trml-features if built"),
    meld_task: str = typer.Option("emotion", help="MELD labels: emotion (7 classes) or sentiment (3)"),
    fixed_missing: Optional[bool] = typer.Option(
        None, help="draw each sample's missing modality once (missing data stays missing) "
        "instead of once per epoch (modality dropout) [default: TrainConfig's]"),
    gen_warmup_epochs: Optional[int] = typer.Option(
        None, help="stage 1: epochs of the generators alone on the SML loss over complete "
        "pairs, before the joint training (0: none) [default: TrainConfig's]"),
    pair_data: Optional[str] = typer.Option(
        None, help="stage-1 pairs: labelled, or train_split (adds the train clips outside "
        "--max-train as unlabelled pairs) [default: TrainConfig's]"),
    gen_init: Optional[str] = typer.Option(
        None, help="generators start as the identity, gap: shifted by the mean visual-minus-text embedding "
        "of the complete pairs, or pairs: from --generators [default: TrainConfig's; pairs with --generators]"),
    generators: Optional[Path] = typer.Option(
        None, help="start the generators from this directory, learned from unlabelled pairs by "
        "`trml-edge generators` under the same --clip-weights"),
    gen_update: Optional[str] = typer.Option(
        None, help="what trains the generators here: joint (task and matching loss), matching (the matching "
        "loss alone) or frozen [default: TrainConfig's]"),
    gen_loss: Optional[str] = typer.Option(
        None, help="matching objective: sml (the paper's InfoNCE), cosine or sml+cosine [default: TrainConfig's]"),
) -> None:
    """Train TRML (L = L_task + alpha * L_sml). Runs under torchrun for DistributedDataParallel."""
    from trml_edge.config import MissingConfig, TRMLConfig
    from trml_edge.data.corpus import corpus_task
    from trml_edge.train.loop import TrainConfig, train as run

    mcfg = TRMLConfig(fill=fill, alpha=alpha, tau=tau)
    mcfg.head.task, mcfg.head.num_classes, _ = corpus_task(data, meld_task)
    weights = clip_weights_source(mcfg, backbone, clip_weights, pretrained, cache_dir)
    mcfg.backbone.freeze = freeze_backbone
    mcfg.head.dropout = dropout
    if generators is not None and gen_init is None:
        gen_init = "pairs"
    tcfg = TrainConfig(data=str(data), out=str(out), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                       missing=MissingConfig(rate=train_missing_rate, modality=train_missing_modality),
                       max_train=max_train, feature_cache=str(feature_cache) if feature_cache else None,
                       generators=str(generators) if generators else None,
                       **{k: v for k, v in (("fixed_missing", fixed_missing), ("gen_warmup_epochs", gen_warmup_epochs),
                                            ("pair_data", pair_data), ("gen_init", gen_init),
                                            ("gen_update", gen_update), ("gen_loss", gen_loss)) if v is not None})
    metrics = run(tcfg, mcfg, weights)
    if "best_epoch" in metrics:
        typer.echo(f"best epoch {metrics['best_epoch']}, valid score {metrics['valid_score']:.4f}; "
                   f"skipped clips {metrics['skipped_clips']}; run in {out}")


@app.command()
def generators(
    sources: list[Path] = typer.Argument(..., help="unlabelled pairs: image/caption pools (images.npy + "
                                         "captions.txt, such as DATA/pretrain) and/or corpus directories "
                                         "(their clips and transcripts; labels are not read)"),
    out: Path = typer.Option(..., "--out", help="generator directory, for `trml-edge train --generators`"),
    backbone: str = typer.Option("trml-tiny", help="open_clip architecture name, JSON file or local-dir:PATH"),
    clip_weights: Optional[Path] = typer.Option(None, help="local file of pretrained CLIP weights"),
    pretrained: Optional[str] = typer.Option(None, help=PRETRAINED_HELP),
    cache_dir: Optional[Path] = typer.Option(None, help=CACHE_DIR_HELP),
    splits: str = typer.Option("train", help="corpus sources: the splits whose clips are pairs, comma-separated: "
                        "train and/or valid (test is refused: the evaluation scores its clips)"),
    valid: Optional[Path] = typer.Option(None, help="a corpus whose valid split scores the generators after "
                                         "each epoch (cosine to the real embedding, retrieval rank)"),
    objective: str = typer.Option(PairsConfig.objective, help="sml (the paper's InfoNCE), cosine or sml+cosine"),
    tau: float = typer.Option(PairsConfig.tau, help="InfoNCE temperature"),
    epochs: int = typer.Option(PairsConfig.epochs),
    batch_size: int = typer.Option(PairsConfig.batch_size),
    lr: float = typer.Option(PairsConfig.lr),
    seed: int = typer.Option(0),
) -> None:
    """Learn the two MMI generators from unlabelled pairs on the frozen CLIP's embeddings (stage 0)."""
    from trml_edge.config import TRMLConfig
    from trml_edge.train.pairs import train_generators

    cfg = PairsConfig(sources=[str(s) for s in sources], out=str(out), splits=[s.strip() for s in splits.split(",")],
                      valid=str(valid) if valid else None, objective=objective, tau=tau, epochs=epochs,
                      batch_size=batch_size, lr=lr, seed=seed)
    cfg.validate()  # before --pretrained downloads anything (train_generators validates it again)
    mcfg = TRMLConfig()
    weights = clip_weights_source(mcfg, backbone, clip_weights, pretrained, cache_dir)
    meta = train_generators(cfg, mcfg, weights)
    last = meta["history"][-1]
    line = f"{sum(s['pairs'] for s in meta['sources'])} pairs, final loss {last['loss']:.4f}"
    if "held_out" in last:
        q = last["held_out"]
        line += "".join(f"; valid {g}: cos {q[g]['cos_to_real']:.3f} (mean fill {q[g]['cos_mean_fill']:.3f}), "
                        f"median rank {q[g]['median_rank']:.0f}/{q[g]['n']}" for g in ("v_hat", "t_hat"))
    typer.echo(f"generators: {out} ({line})")


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="run directory"),
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    test_missing_rate: float = typer.Option(0.0, help="fraction of test samples missing a modality"),
    test_missing_modality: str = typer.Option("either", help=MODALITY_HELP),
    fill: Optional[str] = typer.Option(None, help="override the run's fill: generator, zero or mean"),
    split: str = typer.Option("test"),
    seed: int = typer.Option(0, help="seed of the test masks"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the metrics to this file"),
) -> None:
    """Evaluate a run under a test-time missing-modality protocol (MMSA metric definitions)."""
    from trml_edge.config import MissingConfig, write_json_atomic
    from trml_edge.eval.evaluate import evaluate_run

    res = evaluate_run(run, data, MissingConfig(rate=test_missing_rate, modality=test_missing_modality),
                       fill, seed, split)
    typer.echo(json.dumps(res, indent=2))
    if json_out:
        write_json_atomic(json_out, res)
