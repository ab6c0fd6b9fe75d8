"""`trml-edge triton build`, `serve` and `client`: thin wrappers over trml_edge.serving."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Optional

import typer

from trml_edge.cli import app

triton_app = typer.Typer(no_args_is_help=True, help="Triton Inference Server model repositories.")
app.add_typer(triton_app, name="triton")


@triton_app.command("build")
def build(
    bundle: Path = typer.Argument(..., help="export bundle (from `trml-edge export`)"),
    out: Path = typer.Option(..., "--out", help="model repository directory to create"),
    backend: str = typer.Option("python", help="how the graphs run: onnxruntime | tensorrt (needs build-engines) | "
                                               "python (ORT inside the Python backend, for a CPU-only Triton)"),
    layout: Optional[str] = typer.Option(None, help="fused: the routers run every graph with ONNX Runtime in their "
                                                    "own process (no round trip per graph step); ensemble: a Triton "
                                                    "model per graph, an ensemble per scenario [default: fused for "
                                                    "--backend python, ensemble for onnxruntime and tensorrt]"),
    instances: int = typer.Option(1, help="ensemble layout: instances of each per-graph model"),
    kind: str = typer.Option("auto", help="per-graph instance kind: cpu | gpu | auto (gpu for tensorrt)"),
    max_queue_delay_us: int = typer.Option(0, help="how long an idle per-graph model waits to fill a batch (us); "
                                                   "0 still batches the requests queued while it is busy"),
    max_batch: Optional[int] = typer.Option(None, help="per-graph max_batch_size (fused: the most rows one graph run "
                                                        "takes) [default: the bundle's TensorRT profile max of the "
                                                        "batch axis]"),
    router_instances: int = typer.Option(1, help="instances of the trml router (fused: each a process holding every "
                                                 "graph's session)"),
    router_max_batch: int = typer.Option(8, help="requests the router takes at once (0: one at a time, without "
                                                 "a batch axis in the request)"),
    router_queue_delay_us: int = typer.Option(0, help="how long an idle router waits to fill a batch (us); 0 "
                                                      "still batches the requests queued while it is busy"),
    max_frames: int = typer.Option(512, help="frames per request; more are refused (the model sub-samples)"),
    max_frame_side: int = typer.Option(4096, help="largest frame height or width in pixels; larger is refused"),
    max_text_bytes: int = typer.Option(16384, help="largest TEXT in utf-8 bytes; longer is refused"),
    threads: int = typer.Option(0, help="python backend: ORT intra-op threads per graph session (0: ORT default, "
                                        "every core)"),
    force: bool = typer.Option(False, "--force", help="replace an existing repository"),
    stream_max_streams: int = typer.Option(256, help="trml_stream: live streams per router instance; a new one "
                                                     "beyond is refused with 503 (retryable)"),
    stream_idle_timeout: float = typer.Option(30.0, help="trml_stream: seconds without an update after which a "
                                                          "stream is freed"),
    stream_queue_delay_us: int = typer.Option(0, help="trml_stream: how long an idle stream router waits to "
                                                      "batch updates of several streams (us)"),
    stream_instances: int = typer.Option(1, help="trml_stream: router instances (each a process; a stream stays on "
                                                 "one, and each holds up to --stream-max-streams)"),
    streams: bool = typer.Option(True, "--streams/--no-streams", help="write the trml_stream router (live "
                                                                       "streams on Triton's sequence batcher)"),
) -> None:
    """Generate a Triton model repository from BUNDLE: the `trml` router (and `trml_stream`), with the graphs
    inside them (fused) or one Triton model per graph chained by an ensemble per scenario (ensemble)."""
    from trml_edge.routing import RequestLimits
    from trml_edge.serving.repository import ModelSettings, RepoConfig, build_repository

    cfg = RepoConfig(
        bundle=str(bundle), out=str(out), backend=backend, layout=layout,
        graphs=ModelSettings(instances=instances, kind=kind, max_queue_delay_us=max_queue_delay_us,
                             max_batch_size=max_batch),
        router=ModelSettings(instances=router_instances, kind="cpu", max_queue_delay_us=router_queue_delay_us,
                             max_batch_size=router_max_batch),
        limits=RequestLimits(max_frames=max_frames, max_frame_side=max_frame_side, max_text_bytes=max_text_bytes),
        intra_op_threads=threads, force=force)
    from trml_edge.serving.stream_repo import StreamSettings

    cfg.stream = StreamSettings(enabled=streams, max_streams=stream_max_streams, idle_timeout_s=stream_idle_timeout,
                                max_queue_delay_us=stream_queue_delay_us, instances=stream_instances)
    repo = build_repository(cfg)
    how = ("fused layout: the routers run the graphs with ONNX Runtime in process" if cfg.resolved_layout == "fused"
           else f"ensemble layout: a {backend} model per graph, an ensemble per scenario, the trml router")
    typer.echo(f"wrote {repo} ({how}); serve it with: trml-edge serve {repo}")


@app.command()
def serve(
    repo: Path = typer.Argument(..., help="model repository (from `trml-edge triton build`)"),
    http_port: int = typer.Option(8000, help="HTTP port (0: a free one)"),
    grpc_port: int = typer.Option(8001, help="gRPC port (0: a free one)"),
    metrics_port: int = typer.Option(8002, help="metrics port (0: a free one)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0 for every interface); with gRPC TLS "
                                               "only gRPC listens there, HTTP and metrics stay on 127.0.0.1"),
    http_host: Optional[str] = typer.Option(None, help="address of the HTTP endpoint, which has no TLS [default: "
                                                       "--host, or 127.0.0.1 with gRPC TLS]"),
    metrics_host: Optional[str] = typer.Option(None, help="address of the metrics endpoint, which has no TLS "
                                                          "[default: --host, or 127.0.0.1 with gRPC TLS]"),
    tritonserver: Optional[Path] = typer.Option(None, help="tritonserver binary [default: the one bundled by "
                                                           "nvidia-pytriton]; JetPack: /opt/tritonserver/bin/"
                                                           "tritonserver"),
    backend_directory: Optional[Path] = typer.Option(None, help="Triton backends [default: beside the binary]"),
    log_file: Optional[Path] = typer.Option(None, help="server log [default: a temporary file, printed]"),
    supervise: bool = typer.Option(True, "--supervise/--no-supervise",
                                   help="reload a model whose Python-backend process died; models are loaded "
                                        "explicitly either way (the committed version's: `triton update`)"),
    admin_token_file: Optional[Path] = typer.Option(None, help="write this run's admin token here (mode 0600), "
                                                               "for your own tooling; removed when serve stops"),
    open_admin_api: bool = typer.Option(False, "--open-admin-api",
                                        help="answer the model-repository, shared-memory, trace and logging APIs "
                                             "without the token: any client could then run code on this box"),
    open_admin_api_beyond_loopback: bool = typer.Option(
        False, "--open-admin-api-beyond-loopback",
        help="with --open-admin-api and an endpoint beyond loopback: yes, everyone on that network may run code here"),
    grpc_tls_cert: Optional[Path] = typer.Option(None, help="PEM certificate: serve gRPC over TLS (with "
                                                            "--grpc-tls-key)"),
    grpc_tls_key: Optional[Path] = typer.Option(None, help="PEM private key of --grpc-tls-cert"),
    grpc_tls_client_ca: Optional[Path] = typer.Option(None, help="PEM CA certificate: mutual TLS, only clients "
                                                                 "with a certificate it signed are answered"),
) -> None:
    """Start a real tritonserver on REPO, wait until it is ready, and serve until Ctrl-C or SIGTERM.

    A model whose process dies is reloaded (the others keep serving); if tritonserver itself dies, serve
    exits with status 2 and the reason. Triton's admin APIs (model repository, shared memory, trace, logging)
    answer only requests that carry this run's secret token (see docs/serving.md, "Security")."""
    from trml_edge.errors import ConfigError
    from trml_edge.serving.security import (RESTRICTED_APIS, GrpcTLS, ServerSecurity, exposure_notes,
                                            token_visibility_note)
    from trml_edge.serving.plans import check_plan_versions
    from trml_edge.serving.server import TritonServer

    def log(line: str) -> None:
        typer.echo(f"{time.strftime('%H:%M:%S')} {line}", err=True)

    if (grpc_tls_cert is None) != (grpc_tls_key is None) or (grpc_tls_client_ca and grpc_tls_cert is None):
        raise ConfigError("gRPC TLS needs --grpc-tls-cert and --grpc-tls-key together (--grpc-tls-client-ca "
                          "adds mutual TLS to them)")
    tls = GrpcTLS(grpc_tls_cert, grpc_tls_key, grpc_tls_client_ca) if grpc_tls_cert is not None else None
    security = ServerSecurity(open_admin_api=open_admin_api, admin_token_file=admin_token_file, grpc_tls=tls,
                              open_admin_beyond_loopback=open_admin_api_beyond_loopback)
    srv = TritonServer(repo, http_port or None, grpc_port or None, metrics_port or None, tritonserver,
                       backend_directory, host, log_file, supervise=supervise, log=log, security=security,
                       http_host=http_host, metrics_host=metrics_host)  # every option checked here
    check_plan_versions(repo, tritonserver, backend_directory, log=log)
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        srv.start()
        h = srv.hosts
        grpc = f"grpcs://{h['grpc']}:{srv.grpc_port} (TLS)" if tls else f"{h['grpc']}:{srv.grpc_port}"
        typer.echo(f"tritonserver ready: HTTP http://{h['http']}:{srv.http_port}  gRPC {grpc}  "
                   f"metrics http://{h['metrics']}:{srv.metrics_port}/metrics  (log {srv.log_file})")
        groups = ", ".join(RESTRICTED_APIS)
        if open_admin_api:
            typer.echo(f"admin APIs ({groups}): OPEN to every client")
        else:
            where = (f"token in {admin_token_file}" if admin_token_file else
                     "held by serve alone; --admin-token-file PATH writes a copy")
            typer.echo(f"admin APIs ({groups}): restricted to this run's token ({where})")
        for note in exposure_notes(srv.hosts, {"http": srv.http_port, "grpc": srv.grpc_port,
                                               "metrics": srv.metrics_port}, security):
            log(note)
        visibility = token_visibility_note(security)
        if visibility:
            log(visibility)
        for note in srv.version_notes:
            log(note)
        layout = srv.layout()
        if srv.serving_version is not None:
            typer.echo(f"serving version {srv.serving_version} of the repository (`trml-edge triton versions "
                       f"{repo}`)")
        typer.echo(f"layout: {layout}" + {"fused": " (the routers run every graph in process)",
                                          "ensemble": " (a Triton model per graph, an ensemble per scenario)"}
                   .get(layout, ""))
        for m in srv.models():
            typer.echo(f"  {m['name']} v{m.get('version', '?')}: {m.get('state', '?')}")
        typer.echo("Ctrl-C or SIGTERM stops it")
        while stop["signal"] is None and srv.alive():
            time.sleep(0.2)
        if stop["signal"] is None:
            from trml_edge.errors import ServingError

            code = srv.proc.returncode if srv.proc is not None else None
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            raise ServingError(f"tritonserver stopped by itself ({how}): {srv.failure()}; its models were stopped "
                               f"with it; start serve again (log {srv.log_file})")
    finally:
        srv.stop()
        for s, h in old.items():
            signal.signal(s, h)
    typer.echo("tritonserver stopped")


FRAMES_HELP = "send --video FILE.mp4 or --frames FOLDER (of .png/.jpg images, read in name order)"


def _read_frames(video: Optional[Path], frames_dir: Optional[Path]):
    """The request's frames, uint8 [n, H, W, 3], or None; a bad file or folder is one DataError line."""
    import numpy as np

    from trml_edge.errors import ClipError, DataError

    if video is not None and frames_dir is not None:
        raise DataError("give --video or --frames, not both")
    if video is not None:
        from trml_edge.data.video import read_frames

        if not video.is_file():
            raise DataError(f"--video {video}: {'not a file' if video.exists() else 'no such file'}; {FRAMES_HELP}")
        try:
            frames, mask = read_frames(video, 32)  # spread over the clip; the router keeps the model's max_frames
        except ClipError as e:
            raise DataError(f"--video {video} is not a video this client can decode ({e.kind}); {FRAMES_HELP}") from None
        return frames[mask]
    if frames_dir is not None:
        from PIL import Image, UnidentifiedImageError

        if not frames_dir.is_dir():
            raise DataError(f"--frames {frames_dir}: {'not a folder' if frames_dir.exists() else 'no such folder'}; "
                            f"{FRAMES_HELP}")
        files = sorted(p for p in frames_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise DataError(f"--frames {frames_dir} holds no .png or .jpg frames; {FRAMES_HELP}")
        images = []
        for f in files:
            try:
                with Image.open(f) as im:
                    images.append(np.asarray(im.convert("RGB")))
            except (OSError, UnidentifiedImageError) as e:
                raise DataError(f"--frames: {f} is not a readable image ({type(e).__name__}); remove it or "
                                f"replace it; {FRAMES_HELP}") from None
        sizes = sorted({a.shape for a in images})
        if len(sizes) > 1:
            raise DataError(f"--frames {frames_dir}: the frames differ in size ({sizes[0][:2]} and {sizes[-1][:2]}); "
                            "send frames of one size, as a camera gives them")
        return np.stack(images)
    return None


@app.command()
def client(
    url: str = typer.Argument("127.0.0.1:8000", help="server: HOST:PORT (HTTP), grpc://HOST:PORT or grpcs://HOST:PORT "
                                                   "(gRPC over TLS)"),
    text: Optional[str] = typer.Option(None, help="the utterance"),
    video: Optional[Path] = typer.Option(None, help="an mp4 clip (frames decoded with PyAV)"),
    frames: Optional[Path] = typer.Option(None, "--frames", help="a folder of .png/.jpg frames, in name order"),
    model: str = typer.Option("trml", help="router model name"),
    stream: Optional[Path] = typer.Option(None, "--stream", help="a video file sent as a live stream to the "
                                                                 "trml_stream router, one update per frame taken; "
                                                                 "prints one line per update"),
    fps: float = typer.Option(1.0, help="--stream: frames taken per second of video"),
    realtime: bool = typer.Option(False, "--realtime", help="--stream: send at the video's pace, not at once"),
    tls_ca: Optional[Path] = typer.Option(None, help="grpcs://: the CA certificate (PEM) that signed the server's"),
    tls_cert: Optional[Path] = typer.Option(None, help="grpcs://: this client's certificate (PEM), for a server "
                                                       "with mutual TLS"),
    tls_key: Optional[Path] = typer.Option(None, help="grpcs://: the private key (PEM) of --tls-cert"),
) -> None:
    """Send one request with text, frames, or both; print the prediction and which modality was generated.

    With --stream VIDEO: send the video as a stream of updates (the first carries --text) and print one line
    per update: the time in the video, the score, and which modality was generated."""
    import os

    from trml_edge.serving.client import TritonClient

    # gRPC's C core prints its own lines on stderr (a failed TLS handshake, say); the error below says it in one
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    c = TritonClient(url, model, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
    try:
        if stream is not None:
            return _client_stream(c, stream, fps, text, realtime, video, frames)
        import json

        arr = _read_frames(video, frames)
        res = c.infer(arr, text)
    finally:
        c.close()
    out = res.output.tolist()
    typer.echo(json.dumps({"output": out, "virtual_modality": res.virtual_modality,
                           "frames_sent": None if arr is None else list(arr.shape)}))


def _client_stream(client, video_file: Path, fps: float, text: Optional[str], realtime: bool,
                   video: Optional[Path], frames: Optional[Path]) -> None:
    """`client --stream`: one TritonStream fed with a video's frames at ``fps``."""
    import numpy as np

    from trml_edge.errors import DataError, StreamRestartError
    from trml_edge.serving.stream_client import TritonStream, video_stream

    if video is not None or frames is not None:
        raise DataError("--stream sends its own frames: give --stream VIDEO without --video or --frames")
    t0 = time.monotonic()
    s = TritonStream(client)
    updates = 0
    for t, frame in video_stream(video_file, fps):
        if realtime:
            time.sleep(max(0.0, t - (time.monotonic() - t0)))
        try:
            res = s.push(frame[None], text if updates == 0 else None)
        except StreamRestartError as e:  # the server was updated: a new stream, from this frame on
            typer.echo(f"t={t:7.2f}s  {e}; restarting the stream from this frame", err=True)
            s = TritonStream(client)
            res = s.push(frame[None], text)
        out = np.asarray(res.output)
        score = f"{float(out):+.4f}" if out.ndim == 0 else "[" + ", ".join(f"{x:+.4f}" for x in out) + "]"
        typer.echo(f"t={t:7.2f}s  score={score}  virtual_modality={res.virtual_modality or '-'}")
        updates += 1
    s.close()  # the end flag frees the stream on the server (after an error the server's idle timeout does)
    if updates == 0:
        raise DataError(f"--stream {video_file} has no frames; give a video with at least one frame")
