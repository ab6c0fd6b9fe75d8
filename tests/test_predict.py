"""`trml-edge predict`: utterances of real mp4/mkv files (subtitles beside them or inside), folders and manifests with
bad inputs among them, the same folder through the runtime and through a real tritonserver, and a live RTSP camera
served by GStreamer's real RTSP server (tests/rtsp_server.py) that is stopped and started again.

The reference for every score is ``Pipeline.predict`` on frames this file decodes itself with PyAV and selects
by their own timestamps, so a wrong cue span, a wrong frame pick or a stale frame changes a number."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from export_fixtures import bundle
from trml_edge.data.video import write_mp4
from trml_edge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CUES = [(0.0, 2.0, "hello there, how are you"), (2.0, 4.5, "this is really great"), (4.5, 6.0, "so bad")]
SRT = """1
00:00:00,000 --> 00:00:02,000
hello there,
<i>how are you</i>

2
00:00:02,000 --> 00:00:04,500
this is really great

3
00:00:04,500 --> 00:00:06,000
{\\an8}so bad
"""
FPS = 4


def _frames(seed: int, n: int = 24, size=(48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, *size, 3), dtype=np.uint8)


def write_mkv_with_track(path: Path, frames: np.ndarray, cues) -> None:
    """An mkv whose subtitle track (ASS, as mkv files carry them) holds ``cues``; video at FPS."""
    import av

    c = av.open(str(path), "w")
    v = c.add_stream("mpeg4", rate=FPS)
    v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    s = c.add_stream("ass")
    s.codec_context.time_base = s.time_base = Fraction(1, 1000)
    s.codec_context.extradata = (b"[Script Info]\nScriptType: v4.00+\n\n[Events]\nFormat: Layer, Start, End, Style, "
                                 b"Name, MarginL, MarginR, MarginV, Effect, Text\n")
    packets = []
    for n, (start, end, text) in enumerate(cues):
        p = av.Packet(f"{n},0,Default,,0,0,0,,{text}".encode())
        p.pts = p.dts = int(start * 1000)
        p.duration, p.stream, p.time_base = int((end - start) * 1000), s, Fraction(1, 1000)
        packets.append(p)
    for k, f in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(f, format="rgb24")
        frame.pts = k
        for p in v.encode(frame):
            c.mux(p)
        while packets and packets[0].pts <= k * 1000 // FPS:
            c.mux(packets.pop(0))
    for p in v.encode():
        c.mux(p)
    c.close()


def decoded(path: Path) -> list[tuple[float, np.ndarray]]:
    """Every frame of the file with its presentation time, decoded here (not by trml_edge)."""
    import av

    with av.open(str(path)) as c:
        return [(float(f.time), f.to_ndarray(format="rgb24")) for f in c.decode(c.streams.video[0])]


def expected(path: Path, cues, pipe) -> list[float]:
    frames = decoded(path)
    out = []
    for start, end, text in cues:
        inside = np.stack([f for t, f in frames if start - 1e-9 <= t < end - 1e-9])
        out.append(float(pipe.predict(inside, " ".join(text.split())).output))
    return out


def predict_cli(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "trml_edge", "predict", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kw)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def pipe():
    from trml_edge.runtime import Pipeline

    return Pipeline(bundle("fp32"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict_clips")
    write_mp4(d / "a.mp4", _frames(0), fps=FPS)
    (d / "a.srt").write_text(SRT)
    write_mkv_with_track(d / "b.mkv", _frames(0), CUES)
    return d


def test_one_row_per_subtitle_cue_equal_to_pipeline_predict_on_its_frames(clips, pipe, tmp_path):
    """Three cues of an .srt beside an mp4: three rows, each the runtime's answer on the frames inside that cue's
    span and its text (formatting removed, lines joined); the same cues as a subtitle track of an mkv (the same
    frames) give the same rows."""
    want = expected(clips / "a.mp4", CUES, pipe)
    assert len(set(round(w, 4) for w in want)) == 3  # three different answers: a mixed-up cue would show
    for video in ("a.mp4", "b.mkv"):
        out = tmp_path / f"{video}.jsonl"
        r = predict_cli(clips / video, "--bundle", bundle("fp32"), "--out", out)
        assert r.returncode == 0, r.stderr
        rows = rows_of(out)
        assert [row["item"] for row in rows] == [0, 1, 2], rows
        assert [row["text"] for row in rows] == [" ".join(c[2].split()) for c in CUES]
        assert [(row["time"], row["end"]) for row in rows] == [(c[0], c[1]) for c in CUES]
        assert [row["frames"] for row in rows] == [8, 8, 6]  # 4 fps: 8 frames in 2 s, 8 of 10 in 2.5 s, 6 in 1.5 s
        assert rows[1]["span"] == [2.0, 4.25] and rows[2]["span"] == [4.5, 5.75]
        assert all(row["virtual_modality"] == "" and row["error"] is None for row in rows)
        assert np.max(np.abs(np.array([row["output"] for row in rows]) - want)) <= 1e-5, (video, rows, want)


def test_a_whole_clip_with_text_and_a_clip_without_any_text(clips, pipe, tmp_path):
    """--text scores the whole clip as one utterance (the runtime's pick of all 24 frames); a video without
    subtitles and without --text is scored as the text-missing scenario."""
    frames = np.stack([f for _, f in decoded(clips / "a.mp4")])
    out = tmp_path / "whole.csv"
    r = predict_cli(clips / "a.mp4", "--bundle", bundle("fp32"), "--text", "what a day", "--out", out)
    assert r.returncode == 0, r.stderr
    import csv

    (row,) = list(csv.DictReader(out.open()))
    assert row["item"] == "" and row["frames"] == "8" and row["virtual_modality"] == ""
    assert abs(float(row["output"]) - float(pipe.predict(frames, "what a day").output)) <= 1e-5

    shutil.copy(clips / "a.mp4", tmp_path / "quiet.mp4")
    out = tmp_path / "quiet.jsonl"
    assert predict_cli(tmp_path / "quiet.mp4", "--bundle", bundle("fp32"), "--out", out).returncode == 0
    (row,) = rows_of(out)
    assert row["virtual_modality"] == "text" and row["text"] is None
    assert abs(row["output"] - float(pipe.predict(frames, None).output)) <= 1e-5


def test_a_folder_with_a_corrupt_file_and_a_manifest_with_a_missing_one(clips, pipe, tmp_path):
    """One error row each, named and explained; everything else scored; exit status 1."""
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(clips / "a.mp4", folder / "a.mp4")
    shutil.copy(clips / "a.srt", folder / "a.srt")
    data = (clips / "a.mp4").read_bytes()
    (folder / "broken.mp4").write_bytes(data[: len(data) // 3])  # truncated mid-file
    (folder / "notes.txt").write_text("not a video")
    out = tmp_path / "folder.jsonl"
    r = predict_cli(folder, "--bundle", bundle("fp32"), "--out", out)
    assert r.returncode == 1, r.stderr
    rows = rows_of(out)
    errors = [row for row in rows if row["error"]]
    assert len(errors) == 1 and errors[0]["source"].endswith("broken.mp4"), rows
    assert "re-encode or replace the file" in errors[0]["error"]
    good = [row for row in rows if not row["error"]]
    assert len(good) == 3 and all(row["source"].endswith("a.mp4") for row in good)
    assert "1 errors" in r.stderr and "ignored files that are neither videos nor their subtitles: 1 .txt" in r.stderr

    manifest = tmp_path / "m.csv"
    manifest.write_text("video,text\n"
                        f"{clips / 'a.mp4'},what a day\n"
                        "gone.mp4,this one is missing\n"
                        ",only words here\n"
                        "x.mp4,one,two\n")
    out = tmp_path / "m.jsonl"
    r = predict_cli(manifest, "--bundle", bundle("fp32"), "--out", out)
    assert r.returncode == 1, r.stderr
    rows = rows_of(out)
    assert [row["source"] for row in rows] == ["m.csv:2", "m.csv:3", "m.csv:4", "m.csv:5"]
    assert rows[0]["error"] is None and rows[0]["virtual_modality"] == ""
    assert "gone.mp4 not found" in rows[1]["error"] and "fix the path" in rows[1]["error"]
    assert rows[2]["error"] is None and rows[2]["virtual_modality"] == "visual"  # no video: generated from text
    assert abs(rows[2]["output"] - float(pipe.predict(None, "only words here").output)) <= 1e-5
    assert "malformed row" in rows[3]["error"]
    assert "3 errors" not in r.stderr and "2 errors" in r.stderr

    jsonl = tmp_path / "m.jsonl.in.jsonl"
    jsonl.write_text(json.dumps({"video": str(clips / "a.mp4"), "start": 2.0, "end": 4.5, "text": "a span"}) + "\n"
                     + json.dumps({"text": "  "}) + "\n" + "[1, 2]\n")
    out = tmp_path / "j.jsonl"
    assert predict_cli(jsonl, "--bundle", bundle("fp32"), "--out", out).returncode == 1
    rows = rows_of(out)
    assert rows[0]["error"] is None and rows[0]["frames"] == 8 and rows[0]["span"] == [2.0, 4.25]
    inside = np.stack([f for t, f in decoded(clips / "a.mp4") if 2.0 <= t < 4.5])
    assert abs(rows[0]["output"] - float(pipe.predict(inside, "a span").output)) <= 1e-5
    assert "neither a video nor a text" in rows[1]["error"] and "not an object" in rows[2]["error"]


def test_usage_errors_are_one_line_and_exit_2(clips, tmp_path):
    for args, says in [
        (("ftp://cam.local/x", "--bundle", bundle("fp32")), "ftp:// is not a source predict reads"),
        ((clips / "a.srt", "--bundle", bundle("fp32")), "is a subtitle file; give the video"),
        ((tmp_path / "nothing.mp4", "--bundle", bundle("fp32")), "no such file or folder"),
        ((clips / "a.mp4",), "give --bundle BUNDLE"),
        ((clips / "a.mp4", "--bundle", bundle("fp32"), "--out", tmp_path / "x.txt"), "must end in .jsonl"),
        ((clips, "--bundle", bundle("fp32"), "--text", "hi"), "--text and --subtitles are for one video file"),
    ]:
        r = predict_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0] and "Traceback" not in r.stderr, (args, lines)


def test_the_same_folder_through_the_runtime_and_the_server(clips, tmp_path):
    """--bundle (ONNX Runtime here) and --url (a real tritonserver, fused router) give the same rows."""
    from trml_edge.runtime import Pipeline
    from serving_fixtures import server

    from trml_edge.predict.engine import ServerEngine

    srv = server()
    engine = ServerEngine(srv.url)  # the router announces the model's window: a long clip is sent as it is picked
    assert engine.window == Pipeline(bundle("fp32")).max_frames and engine.request_limit == 64
    engine.close()
    got = {}
    for how, where in (("local", ("--bundle", bundle("fp32"))), ("server", ("--url", srv.url))):
        out = tmp_path / f"{how}.jsonl"
        r = predict_cli(clips, *where, "--out", out)
        assert r.returncode == 0, r.stderr
        got[how] = rows_of(out)
    assert len(got["local"]) == 6  # a.mp4's three cues and b.mkv's three
    for a, b in zip(got["local"], got["server"]):
        assert (a["source"], a["item"], a["frames"], a["virtual_modality"]) == \
               (b["source"], b["item"], b["frames"], b["virtual_modality"])
        assert abs(a["output"] - b["output"]) <= 1e-5, (a, b)


# --- live: a real RTSP server ---
def _rtsp_missing() -> str | None:
    if not Path("/usr/bin/python3").exists():
        return "no /usr/bin/python3 (the system Python with python3-gi runs the RTSP server)"
    r = subprocess.run(["/usr/bin/python3", "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                        "gi.require_version('Gst', '1.0'); from gi.repository import Gst, GstRtspServer; "
                        "Gst.init(None); assert Gst.ElementFactory.find('rtpjpegpay') and "
                        "Gst.ElementFactory.find('videotestsrc')"], capture_output=True, text=True)
    if r.returncode:
        return ("GStreamer's RTSP server is not installed for the system Python: apt-get install python3-gi "
                "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good (.ci/run does)")
    return None


needs_rtsp = pytest.mark.skipif(_rtsp_missing() is not None, reason=str(_rtsp_missing()))


class Camera:
    """tests/rtsp_server.py on a fixed loopback port, started and stopped by the test."""

    def __init__(self, port: int, fps: int = 10, size: str = "64x48"):
        self.port, self.fps, self.size, self.proc = port, fps, size, None
        self.url = f"rtsp://127.0.0.1:{port}/cam"

    def start(self, size: str | None = None) -> Camera:
        self.proc = subprocess.Popen(["/usr/bin/python3", str(ROOT / "tests" / "rtsp_server.py"), str(self.port),
                                      "--fps", str(self.fps), "--size", size or self.size],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", self.proc.stderr.read()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


class Tail:
    """The rows of a growing JSONL file, read as they come; every line must be a whole row."""

    def __init__(self, path: Path):
        self.path, self.rows = path, []

    def read(self) -> list[dict]:
        if self.path.is_file():
            lines = self.path.read_text().split("\n")
            assert lines[-1] == "", "a row was written in pieces"
            self.rows = [json.loads(line) for line in lines[:-1]]
        return self.rows

    def wait(self, cond, timeout: float, what: str) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for row in self.read():
                if cond(row):
                    return row
            time.sleep(0.1)
        raise AssertionError(f"no row {what} within {timeout} s: {self.rows[-5:]}")


@needs_rtsp
def test_a_live_camera_lost_and_back(tmp_path):
    """Complete rows while the camera streams; once it stops, rows go on from the text (virtual_modality
    "visual") within --stall + 1 s, one every --every; when it comes back (at another frame size), complete rows
    again within 10 s, none scored on a frame from before the loss; a camera that hangs with its connection open
    (SIGSTOP) is lost by --stall and found again when it wakes; SIGTERM leaves whole rows and exits 0."""
    from trml_edge.serving.server import free_port

    cam = Camera(free_port()).start()
    out = tmp_path / "live.jsonl"
    every, stall = 0.5, 1.0
    proc = subprocess.Popen([sys.executable, "-m", "trml_edge", "predict", cam.url, "--bundle", str(bundle("fp32")),
                             "--text", "the camera is on", "--every", str(every), "--stall", str(stall),
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tail = Tail(out)
    try:
        tail.wait(lambda r: r["virtual_modality"] == "" and r["frames"] >= 4, 30, "complete")
        before = len(tail.read())
        cam.stop()
        lost_at = tail.read()[-1]["time"]  # the last row's time (since predict began) when the camera stopped
        first_visual = tail.wait(lambda r: r["virtual_modality"] == "visual" and r["time"] > lost_at, stall + 1
                                 + every + 3, "video-missing")
        assert first_visual["time"] - lost_at <= stall + 1 + every, (lost_at, first_visual)
        assert first_visual["text"] == "the camera is on" and first_visual["error"] is None
        pre_loss_frames = max(r["span"][1] for r in tail.rows[:before] if r["span"])
        time.sleep(3 * every + 0.2)
        visual = [r for r in tail.read() if r["time"] >= first_visual["time"]]
        assert len(visual) >= 3 and all(r["virtual_modality"] == "visual" for r in visual), visual
        gaps = np.diff([r["time"] for r in visual])
        assert np.all(np.abs(gaps - every) < 0.25), gaps  # one row every --every while the camera is away

        cam.start(size="80x60")  # it comes back at another frame size
        back = tail.wait(lambda r: r["virtual_modality"] == "" and r["time"] > first_visual["time"], 10 + every,
                         "complete after the camera came back")
        after = [r for r in tail.read() if r["time"] >= back["time"] and r["virtual_modality"] == ""]
        assert all(r["span"][0] > pre_loss_frames for r in after), (pre_loss_frames, after)

        # a camera that hangs with its connection open (no frames, no end): lost by --stall alone
        tail.wait(lambda r: r["virtual_modality"] == "" and r["time"] > back["time"] + 1, 10, "complete, again")
        cam.proc.send_signal(signal.SIGSTOP)
        hung_at = tail.read()[-1]["time"]
        hung = tail.wait(lambda r: r["virtual_modality"] == "visual" and r["time"] > hung_at, stall + 1 + every + 3,
                         "video-missing after the camera hung")
        assert hung["time"] - hung_at <= stall + 1 + every, (hung_at, hung)
        cam.proc.send_signal(signal.SIGCONT)
        tail.wait(lambda r: r["virtual_modality"] == "" and r["time"] > hung["time"], 15, "complete after it woke")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        finally:
            cam.stop()
    assert proc.returncode == 0, err
    rows = tail.read()  # every line a whole row (Tail checks)
    assert "lost 2 times" in err and "3 connections" in err, err
    assert all(r["error"] is None for r in rows), [r for r in rows if r["error"]]


@needs_rtsp
def test_a_slow_model_drops_the_oldest_frames_and_keeps_latency_bounded(tmp_path):
    """30 fps taken from a 30 fps camera into a model made slow (1 s a score, on top of its own time): the
    decoder's buffer never grows past its bound, frames are dropped and counted, every score covers the newest
    frames (latency from the window's last frame stays under a buffer's worth plus a score) and the process's
    memory stays flat."""
    from trml_edge.predict.engine import LocalEngine, LocalSession
    from trml_edge.predict.live import LiveConfig
    from trml_edge.predict.runner import PredictConfig, run
    from trml_edge.serving.server import free_port

    class Slow(LocalSession):
        def push(self, frames, text):
            time.sleep(1.0)
            return super().push(frames, text)

    class SlowEngine(LocalEngine):
        def stream(self):
            return Slow(self.pipe.stream())

    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    cam = Camera(free_port(), fps=30, size="160x120").start()
    engine = SlowEngine(bundle("fp32"))
    cfg = PredictConfig(source=cam.url, bundle=bundle("fp32"), out=tmp_path / "slow.jsonl", text="slow but sure",
                        live=LiveConfig(every=0.2, fps=30, stall=3.0), duration=14)
    rss = []
    stop = threading.Event()
    rows: list[dict] = []

    def on_row(row):
        rows.append(row)
        rss.append(rss_mb())

    try:
        summary = run(cfg, stop, engine=engine, on_row=on_row)
    finally:
        cam.stop()
    scored = [r for r in rows if r["virtual_modality"] == "" and r["error"] is None]
    assert len(scored) >= 8, rows
    buffer = cfg.live.buffer_frames  # 2 ticks of 30 fps: 12 frames
    note = next(n for n in summary.notes if n.startswith("video:"))
    assert f"buffer {buffer}," in note and int(note.split("most held ")[1].split(")")[0]) <= buffer, note
    assert sum(r["dropped"] or 0 for r in rows) > 150, note  # 30 frames a second in, 12 held per score
    lat = np.array([r["latency_ms"] for r in scored[3:]])
    print(f"slow model: latency p50 {np.median(lat):.0f} ms, max {lat.max():.0f} ms; {note}")
    assert lat.max() < 1000 * (buffer / 30 + 1.0 + 0.6), lat  # never a backlog: newest frames only
    half = len(rss) // 2
    assert max(rss[half:]) - max(rss[: half]) < 30, rss  # flat: no frames pile up


@needs_rtsp
def test_no_camera_and_no_text_says_so_and_gives_up_after_max_retries(tmp_path):
    """A camera that never answers and no text: rows say no prediction is possible and why; with --max-retries 2
    it gives up with an error row naming the limit, and exits 1."""
    from trml_edge.serving.server import free_port

    url = f"rtsp://127.0.0.1:{free_port()}/cam"  # nothing listens there
    out = tmp_path / "none.jsonl"
    r = predict_cli(url, "--bundle", bundle("fp32"), "--every", "0.5", "--max-retries", "2", "--out", out,
                    timeout=120)
    assert r.returncode == 1, r.stderr
    rows = rows_of(out)
    assert rows and all(row["output"] is None for row in rows)
    assert all("no prediction is possible: the video is not live" in row["error"] and "there is no text" in
               row["error"] for row in rows[:-1]), rows
    assert "gave up after 2 reconnect attempts (--max-retries 2)" in rows[-1]["error"], rows[-1]


def test_live_options_are_checked_before_anything_is_read():
    from trml_edge.predict.live import LiveConfig, backoff_delay
    from trml_edge.predict.runner import PredictConfig, run

    assert [backoff_delay(k, 0.5, 30.0) for k in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    for live, says in ((LiveConfig(every=0), "--every must be > 0"), (LiveConfig(stall=-1), "--stall must be > 0"),
                       (LiveConfig(max_retries=-1), "--max-retries must be >= 0")):
        with pytest.raises(ConfigError, match=says):
            run(PredictConfig(source="rtsp://127.0.0.1:9/cam", bundle=bundle("fp32"), live=live))
    with pytest.raises(ConfigError, match="not both"):
        run(PredictConfig(source="rtsp://127.0.0.1:9/cam", bundle=bundle("fp32"), text="a", transcript="-"))


def test_subtitle_problems_are_rows_not_silence(tmp_path):
    """A block whose timing line does not parse and a cue that ends before it starts: an error row each, with
    the line; the good cues are scored."""
    from trml_edge.predict.subtitles import parse

    cues, problems = parse("WEBVTT\n\nNOTE a comment\n\n00:01.000 --> 00:02.000\n<v Ann>hi <c.loud>there</c>\n\n"
                           "00:03.000 -> 00:04.000\nbroken arrow\n\n00:05.000 --> 00:04.000\nbackwards\n", "x.vtt")
    assert [(c.start, c.end, c.text) for c in cues] == [(1.0, 2.0, "hi there")]
    assert [p.where for p in problems] == ["x.vtt:8", "x.vtt:11"]
    assert "no 'start --> end' timing line" in problems[0].reason and "before it starts" in problems[1].reason

    write_mp4(tmp_path / "c.mp4", _frames(3), fps=FPS)
    (tmp_path / "c.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nfine\n\n2\n00:00:02,000 --> 00:00:01,000\n"
                                    "bad\n")
    out = tmp_path / "c.jsonl"
    r = predict_cli(tmp_path / "c.mp4", "--bundle", bundle("fp32"), "--out", out)
    assert r.returncode == 1
    rows = rows_of(out)
    assert [bool(row["error"]) for row in rows] == [True, False] and "c.srt:6" in rows[0]["error"]


def test_a_live_transcript_file_is_followed_line_by_line(tmp_path):
    """The file's last line is the text at start; each appended line is the next utterance (blank lines
    skipped, a half-written line waits for its newline); a truncated file is read again from its start."""
    from trml_edge.predict.transcript import TextNow, follow

    path = tmp_path / "live.txt"
    path.write_text("first words\nsecond words\n")
    now, stop = TextNow(), threading.Event()
    follow(str(path), now, stop, poll=0.02)
    try:
        assert now() == "second words"

        def becomes(value, timeout=5.0):
            end = time.monotonic() + timeout
            while time.monotonic() < end and now() != value:
                time.sleep(0.02)
            return now()

        with path.open("a") as f:
            f.write("\n   \nthird ")
            f.flush()
            time.sleep(0.2)
            assert now() == "second words"  # no newline yet: the line is not finished
            f.write("  words\n")
        assert becomes("third words") == "third words"
        path.write_text("after rotation\n")  # shorter than what was read: a new file
        assert becomes("after rotation") == "after rotation"
        assert now.utterances == 3  # second (the text at start), third, after rotation
    finally:
        stop.set()
    with pytest.raises(ConfigError, match="no such file"):
        follow(str(tmp_path / "none.txt"), TextNow(), stop)
