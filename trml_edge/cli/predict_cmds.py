"""`trml-edge predict`: score a file, a folder, a manifest or a live camera (trml_edge.predict)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from trml_edge.cli import app


@app.command()
def predict(
    source: str = typer.Argument(..., help="a video file, a folder of videos, a manifest (.csv/.jsonl), a live URL "
                                           "(rtsp://, rtmp://, http(s)://, udp://) or a camera (/dev/videoN)"),
    bundle: Optional[Path] = typer.Option(None, help="export bundle: score here, with the torch-free runtime"),
    url: Optional[str] = typer.Option(None, help="or a running `trml-edge serve`: HOST:PORT (HTTP), grpc://HOST:PORT "
                                                 "or grpcs://HOST:PORT"),
    out: Optional[Path] = typer.Option(None, help="rows to FILE.jsonl or FILE.csv (default: JSONL on stdout)"),
    text: Optional[str] = typer.Option(None, help="the utterance: a video file scored whole with it, or a live "
                                                  "source's fixed text"),
    subtitles: Optional[Path] = typer.Option(None, help="a video file's .srt/.vtt: one row per cue (default: the "
                                                        "sidecar with the video's name, or its subtitle track)"),
    transcript: Optional[str] = typer.Option(None, help="live: a live transcript, one utterance a line: - (stdin) "
                                                        "or a file that grows"),
    every: float = typer.Option(1.0, help="live: seconds between scores"),
    fps: float = typer.Option(4.0, help="live: frames taken per second of video (the model's window is the last "
                                        "of them)"),
    stall: float = typer.Option(2.0, help="live: seconds without a frame after which the video is lost (scores "
                                          "go on from the text)"),
    max_retries: Optional[int] = typer.Option(None, help="live: reconnect attempts in a row before giving up "
                                                         "(default: forever)"),
    buffer: int = typer.Option(0, help="live: frames held for a slow model before the oldest drop (0: two ticks)"),
    duration: Optional[float] = typer.Option(None, help="live: stop after this many seconds"),
    av_option: List[str] = typer.Option([], "--av-option", help="live: an FFmpeg option KEY=VALUE (repeatable), "
                                                                "e.g. rtsp_transport=udp, video_size=640x480"),
    classes: Optional[str] = typer.Option(None, help="classification: class names in the head's order, comma "
                                                     "separated (e.g. MELD's neutral,surprise,...)"),
    threads: int = typer.Option(0, help="--bundle: ONNX Runtime threads per graph (0: every core)"),
    tls_ca: Optional[Path] = typer.Option(None, help="grpcs://: the CA certificate (PEM) of the server's"),
    tls_cert: Optional[Path] = typer.Option(None, help="grpcs://: this client's certificate (PEM)"),
    tls_key: Optional[Path] = typer.Option(None, help="grpcs://: the private key (PEM) of --tls-cert"),
) -> None:
    """Score SOURCE and write one row per prediction: a video's utterances (its subtitle cues), every video of a
    folder, every row of a manifest, or a live camera every --every seconds. When the camera is lost, the rows go
    on from the text (virtual_modality "visual") and the camera is reconnected. Exit status: 0 all scored, 1
    some inputs failed (see their error rows), 2 a usage error. Rows and behaviour: docs/predict.md."""
    import os

    from trml_edge.errors import ConfigError
    from trml_edge.predict.live import LiveConfig
    from trml_edge.predict.runner import PredictConfig, log, run

    opts = {}
    for kv in av_option:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise ConfigError(f"--av-option {kv!r}: write it as KEY=VALUE (an FFmpeg option, e.g. rtsp_transport=udp)")
        opts[key] = value
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # gRPC's C core prints its own lines; errors say it in one
    tls = {k: v for k, v in (("tls_ca", tls_ca), ("tls_cert", tls_cert), ("tls_key", tls_key)) if v is not None}
    cfg = PredictConfig(
        source=source, bundle=bundle, url=url, out=out, text=text, subtitles=subtitles, transcript=transcript,
        classes=tuple(c.strip() for c in classes.split(",")) if classes else None,
        live=LiveConfig(every=every, fps=fps, stall=stall, max_retries=max_retries, buffer=buffer, av_options=opts),
        duration=duration, threads=threads, tls=tls)
    summary = run(cfg)
    failed = len(summary.errors)
    how = "stopped" if summary.interrupted else "done"
    line = (f"predict {how}: {summary.rows} rows ({summary.predictions} predictions, {failed} errors) from "
            f"{summary.sources} source{'s' if summary.sources != 1 else ''} in {summary.seconds:.1f} s")
    if out is not None:
        line += f"; rows in {out}"
    log(line)
    for note in summary.notes:
        log(note)
    for src, why in summary.errors[:5]:
        log(f"failed: {src}: {why}")
    if failed > 5:
        log(f"... and {failed - 5} more error rows")
    sys.exit(summary.exit_code)
