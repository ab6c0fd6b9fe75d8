"""`trml-edge features`: compute the CLIP feature cache of a corpus once, before training."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from trml_edge.cli import app
from trml_edge.cli.train_cmds import CACHE_DIR_HELP, PRETRAINED_HELP, clip_weights_source


@app.command()
def features(
    data: Path = typer.Argument(..., help="dataset directory"),
    run: Optional[Path] = typer.Option(None, "--run", help="take the backbone, preprocessing and frame count "
                                                           "from this run directory"),
    clip_weights: Optional[Path] = typer.Option(None, help="local CLIP weights file (instead of --run)"),
    backbone: str = typer.Option("trml-tiny", help="open_clip architecture of --clip-weights or --pretrained"),
    pretrained: Optional[str] = typer.Option(None, help=PRETRAINED_HELP + " (instead of --run)"),
    cache_dir: Optional[Path] = typer.Option(None, help=CACHE_DIR_HELP),
    frames: int = typer.Option(8, help="frames per clip (the model's temporal.max_frames), without --run"),
    cache: Optional[Path] = typer.Option(None, help="cache directory [default: DATA/.trml-features, which "
                                                    "training then uses by itself]"),
    meld_task: str = typer.Option("emotion", help="MELD only: emotion or sentiment (which rows are listed)"),
) -> None:
    """Embed every clip (per-frame image and text embeddings) into a memory-mapped cache keyed by clip id and
    by a fingerprint of the backbone weights and preprocessing. An interrupted run resumes where it stopped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from trml_edge.config import TRMLConfig
    from trml_edge.data.cache import DEFAULT_DIR, FeatureCache
    from trml_edge.data.corpus import open_corpus
    from trml_edge.model.checkpoint import load_run, new_model
    from trml_edge.errors import ConfigError
    from trml_edge.train.features import build_features, fingerprint

    if sum(x is not None for x in (run, clip_weights, pretrained)) != 1:
        raise ConfigError("give exactly one of --run RUN, --clip-weights PATH or --pretrained NAME "
                          "(with --backbone ARCH)")
    if run is not None:
        model = load_run(run)
    else:
        cfg = TRMLConfig()
        cfg.temporal.max_frames = frames
        model = new_model(cfg, clip_weights_source(cfg, backbone, clip_weights, pretrained, cache_dir))
    n_frames = model.cfg.temporal.max_frames
    corpus = open_corpus(data, meld_task)
    fp, meta = fingerprint(model, n_frames)
    store = FeatureCache(cache or data / DEFAULT_DIR, fp, meta)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("embedding clips", total=None)
        stats = build_features(model, corpus.records, store, n_frames,
                               on_chunk=lambda done, total: bar.update(task, completed=done, total=total))
    typer.echo(f"cache {store.dir} (fingerprint {fp[:16]}): {stats.encoded} clips embedded now "
               f"({stats.frames_encoded} frames), {stats.reused} reused, "
               f"{stats.failed + stats.known_failures} unreadable (skipped; `trml-edge data check {data}` lists "
               f"them), {stats.seconds:.1f} s")
