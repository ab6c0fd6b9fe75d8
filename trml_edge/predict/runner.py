"""``trml-edge predict``: a source in, one row per prediction out, through one engine.

``run(PredictConfig)`` is what the command calls (and what a Python caller may call): it checks the options,
opens the engine (``--bundle``: the runtime here; ``--url``: the server), then

* **finite sources** (file, folder, manifest): their windows are decoded in a background thread, at most a few
  ahead, while the engine scores the previous one (``TritonClient.infer`` / ``Pipeline.predict``); a progress
  bar with clips/s and the time left on a terminal;
* **live sources**: a ``LiveVideo`` and its ticks, scored by a ``LiveScorer`` (``trml_stream`` /
  ``Pipeline.stream()``), one line per score on the terminal.

Ctrl-C and SIGTERM stop it between two rows: the row being scored is written, the live session is ended, the
output file holds whole rows only. Exit status: 0 when every input was scored (a live run stopped by a signal
or ``--duration`` included), 1 when some input failed (its error rows say which) or a live source was given up
after ``--max-retries``; usage errors raise ``TrmlEdgeError`` before anything is read (the CLI exits 2).
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from trml_edge.errors import ConfigError, TrmlEdgeError, require
from trml_edge.predict.live import LiveConfig
from trml_edge.predict.rows import RowWriter, make_row, output_value, terminal_line
from trml_edge.predict.sources import LIVE, list_finite, source_kind


@dataclass
class PredictConfig:
    source: str
    bundle: Path | None = None  # the runtime, in this process
    url: str | None = None  # or a server: HOST:PORT (HTTP), grpc://HOST:PORT, grpcs://HOST:PORT
    out: Path | None = None  # .jsonl or .csv; None: JSONL on standard output
    text: str | None = None  # the utterance (a video file or a live source)
    subtitles: Path | None = None  # one video file: its cues
    transcript: str | None = None  # live: "-" (standard input) or a file that grows a line per utterance
    classes: tuple[str, ...] | None = None  # classification: the class names, in the head's order
    live: LiveConfig = field(default_factory=LiveConfig)
    duration: float | None = None  # live: stop after this many seconds
    threads: int = 0  # --bundle: ONNX Runtime intra-op threads (0: every core)
    tls: dict = field(default_factory=dict)  # --url grpcs://: tls_ca, tls_cert, tls_key
    progress: bool | None = None  # finite: the progress bar (None: on a terminal)


@dataclass
class Summary:
    rows: int = 0
    predictions: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (source, reason) of each error row
    sources: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    gave_up: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.errors or self.gave_up else 0


def log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


def _check(cfg: PredictConfig, kind: str) -> None:
    if (cfg.bundle is None) == (cfg.url is None):
        raise ConfigError("give --bundle BUNDLE (score here, with the runtime) or --url HOST:PORT (score on a "
                          "running `trml-edge serve`), one of them")
    if kind == LIVE:
        if cfg.subtitles is not None:
            raise ConfigError("--subtitles is for a video file; a live source takes --text, --transcript, or its "
                              "own subtitle track")
        if cfg.text is not None and cfg.transcript is not None:
            raise ConfigError("give --text (one fixed utterance) or --transcript (a line per utterance), not both")
        if cfg.duration is not None and not cfg.duration > 0:
            raise ConfigError(f"--duration must be > 0 seconds, got {cfg.duration}")
        cfg.live.check()
    elif cfg.transcript is not None or cfg.duration is not None:
        raise ConfigError("--transcript and --duration are for a live source (rtsp://..., /dev/videoN); a file's "
                          "text comes from --text, its subtitles or a manifest's text column")


def _engine(cfg: PredictConfig):
    from trml_edge.predict.engine import LocalEngine, ServerEngine

    if cfg.bundle is not None:
        return LocalEngine(cfg.bundle, cfg.threads)
    return ServerEngine(cfg.url, cfg.tls)


class _Signals:
    """SIGINT and SIGTERM set ``stop`` (in the main thread only; elsewhere they keep their handlers)."""

    def __init__(self, stop: threading.Event):
        self.stop, self.old = stop, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.old[s] = signal.signal(s, lambda *_: self.stop.set())
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


def run(cfg: PredictConfig, stop: threading.Event | None = None, engine=None,
        on_row: Callable[[dict], None] | None = None) -> Summary:
    """Score ``cfg.source``; rows go to ``cfg.out``. ``stop``: set it to end the run between two rows;
    ``engine``: an engine already open (its ``close`` is the caller's); ``on_row``: called with every row."""
    kind = source_kind(cfg.source)
    _check(cfg, kind)
    stop = stop or threading.Event()
    writer = RowWriter(cfg.out)
    own = engine is None
    engine = engine or _engine(cfg)
    summary = Summary()
    t_start = time.monotonic()

    def emit(row: dict) -> None:
        writer.write(row)
        summary.rows += 1
        if row["error"]:
            summary.errors.append((row["source"], row["error"]))
        else:
            summary.predictions += 1
        if on_row is not None:
            on_row(row)

    try:
        with _Signals(stop):
            if kind == LIVE:
                _run_live(cfg, engine, emit, stop, summary)
            else:
                _run_finite(cfg, kind, engine, emit, stop, summary)
    except BrokenPipeError:  # standard output closed by the reader (| head): stop as if asked to
        summary.interrupted = True
    finally:
        writer.close()
        if own:
            engine.close()
    summary.seconds = time.monotonic() - t_start
    summary.interrupted = summary.interrupted or stop.is_set()
    return summary


# --- finite sources ---
def _prefetch(gen, stop: threading.Event, depth: int = 4):
    """Run the generator ``gen`` in a thread, at most ``depth`` items ahead; yields its items."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()

    def work():
        try:
            for x in gen:
                while not stop.is_set():
                    try:
                        q.put(x, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as e:  # handed to the consumer, which raises it
            q.put(e)

    threading.Thread(target=work, name="predict-decode", daemon=True).start()
    while True:
        x = q.get()
        if x is end:
            return
        if isinstance(x, BaseException):
            raise x
        yield x


def _run_finite(cfg: PredictConfig, kind: str, engine, emit, stop: threading.Event, summary: Summary) -> None:
    from trml_edge.predict.sources import finite_windows

    finite = list_finite(cfg.source, kind, cfg.text, cfg.subtitles)
    if any(item.video is not None for item in finite.items):
        require("av", "video")  # before the first row: one line naming the extra, not an error per file
    summary.sources = len(finite.items)
    if finite.ignored:
        what = ", ".join(f"{n} {suffix}" for suffix, n in sorted(finite.ignored.items()))
        summary.notes.append(f"ignored files that are neither videos nor their subtitles: {what}")
    progress = _progress(cfg, len(finite.items))
    try:
        task = progress.add_task("clips", total=len(finite.items)) if progress else None
        for _, w in _prefetch(finite_windows(finite, engine.clip_frames, cfg.subtitles), stop):
            if w is None:  # an item is done
                if progress:
                    progress.advance(task)
                continue
            emit(_finite_row(w, engine, cfg.classes))
            if stop.is_set():
                return
    finally:
        if progress:
            progress.stop()


def _finite_row(w, engine, classes) -> dict:
    if w.error is not None:
        return make_row(w.source, w.item, w.time, w.end, None, None, w.text, 0, None, None, None, time.time(),
                        w.error)
    frames = w.frames  # already the frames clip_frames picked
    if frames is None and w.text is None:
        return make_row(w.source, w.item, w.time, w.end, None, None, None, 0, None, None, None, time.time(),
                        "no prediction is possible: no frame lies in this span and it has no text")
    try:
        scored = engine.score(frames, w.text)
    except TrmlEdgeError as e:
        return make_row(w.source, w.item, w.time, w.end, None, None, w.text, 0 if frames is None else len(frames),
                        w.span, None, None, time.time(), f"{type(e).__name__}: {e}")
    latency = 1000.0 * (time.monotonic() - w.ready)
    return make_row(w.source, w.item, w.time, w.end, output_value(scored.output, classes), scored.virtual_modality,
                    w.text, 0 if frames is None else len(frames), w.span, latency, None, time.time())


def _progress(cfg: PredictConfig, total: int):
    """A rich progress bar on standard error (clips done, clips/s, time left), or None off a terminal."""
    from rich.console import Console

    console = Console(stderr=True)
    show = console.is_terminal if cfg.progress is None else cfg.progress
    if not show or total < 1:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TextColumn("clips"),
                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                 console=console, transient=False)
    p.start()
    return _RateProgress(p)


class _RateProgress:
    """rich's Progress with a clips/s column updated as items finish."""

    def __init__(self, p):
        self.p, self.t0 = p, time.monotonic()

    def add_task(self, name: str, total: int):
        return self.p.add_task(name, total=total, rate="")

    def advance(self, task) -> None:
        self.p.advance(task)
        done = self.p.tasks[0].completed
        self.p.update(task, rate=f"{done / max(time.monotonic() - self.t0, 1e-9):.2f} clips/s")

    def stop(self) -> None:
        self.p.stop()


# --- live sources ---
def _run_live(cfg: PredictConfig, engine, emit, stop: threading.Event, summary: Summary) -> None:
    from trml_edge.predict.live import LiveVideo, ticks
    from trml_edge.predict.livescore import LiveScorer
    from trml_edge.predict.transcript import TextNow, follow

    text = TextNow(cfg.text)
    track = cfg.text is None and cfg.transcript is None  # the stream's own subtitle track, if it has one
    if cfg.transcript is not None:
        follow(cfg.transcript, text, stop)
    summary.sources = 1
    video = LiveVideo(cfg.source, cfg.live, log, on_text=text.set if track else None).start()
    log(f"reading {cfg.source}: a score every {cfg.live.every:g} s over the last frames "
        f"({cfg.live.fps:g} taken a second), {engine.name} engine; Ctrl-C stops")
    scorer = LiveScorer(engine, cfg.source, cfg.classes, log)
    until = None if cfg.duration is None else video.t0 + cfg.duration
    try:
        for tick in ticks(video, text, cfg.live.every, stop):
            row = scorer.row(tick, video.t0)
            emit(row)
            print(terminal_line(row), file=sys.stderr, flush=True)
            if until is not None and time.monotonic() >= until:
                break
        if video.gave_up:
            summary.gave_up = video.gave_up
            emit(make_row(cfg.source, None, time.monotonic() - video.t0, None, None, None, text(), 0, None, None,
                          None, time.time(), video.gave_up))
    finally:
        scorer.close()
        video.stop()
        summary.notes.append(
            f"video: {video.connects} connections, lost {video.losses} times; frames taken {video.taken_total}, "
            f"dropped {video.dropped_total} (buffer {cfg.live.buffer_frames}, most held {video.high_water}); "
            f"{scorer.sessions} sessions")
