"""Install and start as users do: the wheel carries the data files, the runtime works without torch, each
missing extra is one line, and (slow) the three uses run from a wheel install outside the checkout."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from export_fixtures import bundle, synth_data, trained_run
from install_fixtures import ROOT, fresh_env, one_line_error, run, wheel, wheel_requirements


def test_wheel_carries_the_data_files_once_and_declares_no_onnxruntime():
    from trml_edge.assets import SHIPPED

    whl = wheel()
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
    shipped = {n[len("trml_edge/_assets/"):] for n in names if n.startswith("trml_edge/_assets/")}
    expected = {str(f.relative_to(ROOT)) for folder, patterns in SHIPPED.items() for p in patterns
                for f in (ROOT / folder).glob(p) if f.is_file() and "__pycache__" not in f.parts}
    assert {"triton_models/trml/model.py", "export/cpu-int8.toml", "calibration/default/manifest.json"} <= expected
    assert shipped == expected
    with zipfile.ZipFile(whl) as z:  # byte for byte the source tree's files
        for rel in expected:
            assert z.read(f"trml_edge/_assets/{rel}") == (ROOT / rel).read_bytes(), rel
    # ONNX Runtime only through an extra: a hard dependency would sit beside onnxruntime-gpu or a Jetson build
    core = {r.name for r in wheel_requirements(whl, ())}
    assert not any(n.startswith("onnxruntime") for n in core) and "torch" not in core
    assert {r.name for r in wheel_requirements(whl, ("cpu",))} - core == {"onnxruntime"}
    assert {r.name for r in wheel_requirements(whl, ("gpu",))} - core == {"onnxruntime-gpu"}
    train = {r.name: r for r in wheel_requirements(whl, ("train",))}
    for name, user_build in (("torch", "2.5.0a0+872d972e41.nv24.08"), ("torch", "2.14.1+cpu"),
                             ("torchvision", "0.20.0a0+afc54f7")):  # JetPack 6.1's builds, a CPU build
        assert train[name].specifier.contains(user_build), (train[name], user_build)  # kept, not replaced


def test_runtime_only_install_works_without_torch(tmp_path):
    """`pip install 'trml-edge[cpu]'`: --help, --version, doctor and Pipeline.predict without torch; every
    command that needs an extra says which, in one line."""
    from trml_edge.runtime import Pipeline

    b = bundle("fp32")
    bin_dir, dists = fresh_env("runtime-only", ("cpu",))
    assert "torch" not in dists and "onnxruntime" in dists
    assert run(bin_dir, "python", "-c", "import torch", cwd=tmp_path).returncode != 0

    t0 = time.perf_counter()
    r = run(bin_dir, "trml-edge", "--help", cwd=tmp_path)
    help_s = time.perf_counter() - t0
    assert r.returncode == 0 and "export" in r.stdout and "triton" in r.stdout, r.stderr[-2000:]
    print(f"trml-edge --help in the runtime-only install: {help_s:.2f} s")
    r = run(bin_dir, "trml-edge", "--version", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^trml-edge:\s+\d+\.\d+", r.stdout, re.M)
    assert re.search(r"^onnxruntime:\s+\S+ \(distribution onnxruntime\)", r.stdout, re.M)
    assert re.search(r"^torch:\s+not installed \(pip install 'trml-edge\[train\]'\)", r.stdout, re.M)
    if re.search(r"^\s*│?\s*doctor\b", r.stdout + run(bin_dir, "trml-edge", "--help", cwd=tmp_path).stdout, re.M):
        d = run(bin_dir, "trml-edge", "doctor", cwd=tmp_path)
        assert d.returncode == 0 and "Traceback" not in d.stderr, d.stderr[-2000:]

    frames = np.random.default_rng(0).integers(0, 256, (5, 40, 52, 3), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    code = ("import json, sys, numpy as np; from trml_edge.runtime import Pipeline; "
            f"p = Pipeline({str(b)!r}); f = np.load('frames.npy'); "
            "out = {k: p.predict(*a).output.tolist() for k, a in "
            "(('complete', (f, 'a fine film')), ('visual_missing', (None, 'a fine film')), ('text_missing', (f, None)))}; "
            "print(json.dumps(out)); assert 'torch' not in sys.modules and 'open_clip' not in sys.modules")
    r = run(bin_dir, "python", "-c", code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)
    ref = Pipeline(b)
    for scenario, args in (("complete", (frames, "a fine film")), ("visual_missing", (None, "a fine film")),
                           ("text_missing", (frames, None))):
        np.testing.assert_allclose(got[scenario], ref.predict(*args).output, rtol=1e-5, atol=1e-6)

    cases = {"train": ("train", "--data", tmp_path, "--out", tmp_path / "run"),
             "serve": ("serve", tmp_path / "repo"),
             "profile": ("profile", b, "--out", tmp_path / "report"),
             "trt-cu13": ("build-engines", b),  # no driver here: the advice names both extras
             "video": ("predict", tmp_path / "clip.mp4", "--bundle", b)}  # decoding needs PyAV
    from trml_edge.data.video import write_mp4

    write_mp4(tmp_path / "clip.mp4", frames, fps=4)
    (tmp_path / "repo" / "trml").mkdir(parents=True)
    (tmp_path / "repo" / "trml" / "config.pbtxt").write_text('name: "trml"\n')
    for extra, args in cases.items():
        err = one_line_error(run(bin_dir, "trml-edge", *args, cwd=tmp_path))
        assert f"pip install 'trml-edge[{extra}]'" in err, (extra, err)


def test_predict_on_the_runtime_install_with_the_video_extra(tmp_path):
    """`pip install 'trml-edge[cpu,video]'`: predict scores a clip's subtitle cues with PyAV and the runtime,
    without torch, and its rows equal the checkout's."""
    from trml_edge.data.video import write_mp4

    b = bundle("fp32")
    bin_dir, dists = fresh_env("runtime-video", ("cpu", "video"))
    assert "torch" not in dists and "av" in dists
    write_mp4(tmp_path / "clip.mp4", np.random.default_rng(1).integers(0, 256, (12, 40, 52, 3), np.uint8), fps=4)
    (tmp_path / "clip.srt").write_text("1\n00:00:00,000 --> 00:00:01,500\nnot bad\n\n"
                                       "2\n00:00:01,500 --> 00:00:03,000\nquite good\n")
    code = ("import sys; from trml_edge.predict.runner import PredictConfig, run; "
            f"s = run(PredictConfig(source='clip.mp4', bundle={str(b)!r}, out='rows.jsonl')); "
            "assert s.predictions == 2 and not s.errors, s; "
            "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules")
    r = run(bin_dir, "python", "-c", code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    from trml_edge.predict.runner import PredictConfig
    from trml_edge.predict.runner import run as predict_run

    predict_run(PredictConfig(source=str(tmp_path / "clip.mp4"), bundle=b, out=tmp_path / "here.jsonl"))
    got = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    here = [json.loads(line) for line in (tmp_path / "here.jsonl").read_text().splitlines()]
    assert [r["output"] for r in got] == [r["output"] for r in here] and len(got) == 2


def test_without_any_onnxruntime_the_runtime_says_how_to_get_one(tmp_path):
    bin_dir, dists = fresh_env("no-ort", ())
    assert not any(d.startswith("onnxruntime") for d in dists)
    r = run(bin_dir, "python", "-c", "import trml_edge.runtime", cwd=tmp_path)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "MissingDependencyError" in last and "pip install 'trml-edge[cpu]'" in last and "[gpu]" in last, last
    r = run(bin_dir, "trml-edge", "--version", cwd=tmp_path)
    assert r.returncode == 0 and re.search(r"^onnxruntime:\s+not installed", r.stdout, re.M), r.stdout
    r = run(bin_dir, "trml-edge", "--help", cwd=tmp_path)  # the plain `pip install trml-edge` still starts
    assert r.returncode == 0 and "export" in r.stdout, r.stderr[-2000:]


def _wait_ready(proc: subprocess.Popen, timeout: float = 420.0) -> str:
    """The serve command's stdout up to its ready line (it prints the ports there)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode}: {''.join(seen)}{proc.stderr.read()[-3000:]}")
            time.sleep(0.2)
            continue
        seen.append(line)
        if line.startswith("tritonserver ready"):
            return line
    raise AssertionError("serve not ready in time: " + "".join(seen))


@pytest.mark.slow
def test_the_three_uses_from_a_wheel_install_outside_the_checkout(tmp_path):
    """export --recipe cpu-int8 (the shipped recipe and calibration set), triton build (the shipped templates),
    serve, and client with each scenario, answers checked against the runtime's Pipeline.predict."""
    import os

    from trml_edge.data.corpus import read_corpus
    from trml_edge.data.video import read_frames
    from trml_edge.runtime import Pipeline
    from trml_edge.serving.server import free_port

    run_dir, data = trained_run(), synth_data()
    bin_dir, dists = fresh_env("full", ("cpu", "train", "serve"))
    work = tmp_path / "work"
    work.mkdir()
    assert not any(p.name in ("export", "triton_models", "calibration") for p in work.iterdir())

    b = work / "bundle-int8"
    r = run(bin_dir, "trml-edge", "export", run_dir, "--recipe", "cpu-int8", "--out", b, cwd=work)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["recipe"] == "cpu-int8"
    calib = Path(manifest["calibration"]["path"])
    assert "_assets" in calib.parts and ROOT not in calib.parents, calib  # the wheel's shipped set
    assert {g["precision"] for g in manifest["graphs"].values()} == {"int8", "fp32"}

    repo = work / "repo"
    r = run(bin_dir, "trml-edge", "triton", "build", b, "--out", repo, cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (repo / "trml" / "1" / "model.py").read_bytes() == (ROOT / "triton_models" / "trml" / "model.py").read_bytes()

    http, grpc, metrics = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    proc = subprocess.Popen([str(bin_dir / "trml-edge"), "serve", str(repo), "--http-port", str(http), "--grpc-port",
                             str(grpc), "--metrics-port", str(metrics)], cwd=work, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_ready(proc)
        record = next(rec for rec in read_corpus(data) if rec.video is not None)
        text = record.text
        frames, mask = read_frames(record.video, 32)  # what `trml-edge client --video` sends
        ref = Pipeline(b)
        cases = {"complete": (("--text", text, "--video", record.video), (frames[mask], text), ""),
                 "visual_missing": (("--text", text), (None, text), "visual"),
                 "text_missing": (("--video", record.video), (frames[mask], None), "text")}
        for scenario, (flags, args, virtual) in cases.items():
            r = run(bin_dir, "trml-edge", "client", f"127.0.0.1:{http}", *flags, cwd=work, timeout=300)
            assert r.returncode == 0, (scenario, r.stderr[-3000:])
            got = json.loads(r.stdout.strip().splitlines()[-1])
            expected = ref.predict(*args)
            assert got["virtual_modality"] == virtual == expected.virtual_modality, scenario
            np.testing.assert_allclose(got["output"], expected.output, rtol=1e-4, atol=1e-5, err_msg=scenario)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # as Ctrl-C or a service manager stops it
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "tritonserver stopped" in out, err[-3000:]


def test_recipes_and_calibration_sets_resolve_by_name_from_any_folder(tmp_path, monkeypatch):
    """The README's forms (`--recipe cpu-int8`, `--recipe export/cpu-int8.toml`, `--calibration
    calibration/default`) name the shipped files wherever the command runs; a file that is there wins."""
    from trml_edge import assets
    from trml_edge.errors import ConfigError
    from trml_edge.export.recipe import ExportConfig, apply_recipe

    monkeypatch.chdir(tmp_path)
    shipped = ROOT / "export" / "cpu-int8.toml"
    assert assets.recipe("cpu-int8") == assets.recipe("export/cpu-int8.toml") == shipped
    with pytest.raises(ConfigError, match=r"recipe mine.toml not found.*cpu-int8.*jetson-orin-int8"):
        assets.recipe("mine.toml")
    with pytest.raises(ConfigError, match="not found"):
        assets.recipe("elsewhere/cpu-int8.toml")  # only the documented folder form is a name
    cfg = apply_recipe(ExportConfig(run="r", out="o"), "cpu-int8")
    cfg.validate()  # the recipe's calibration = "calibration/default", resolved from tmp_path
    assert Path(cfg.calibration) == ROOT / "calibration" / "default"
    assert assets.calibration("default") == ROOT / "calibration" / "default"
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "cpu-int8.toml").write_text('name = "mine"\n')
    assert apply_recipe(ExportConfig(run="r", out="o"), "export/cpu-int8.toml").recipe == "mine"
    assert assets.calibration("calibration/absent") == Path("calibration/absent")  # for the loader's own message


def test_a_local_calibration_folder_wins_over_the_shipped_set(tmp_path, monkeypatch):
    """`calibration/default` in the folder the command runs in is the user's own set: it is used, by the
    --calibration flag and by a shipped recipe that names calibration/default, rather than the shipped set."""
    from trml_edge import assets
    from trml_edge.export.recipe import ExportConfig, apply_recipe

    monkeypatch.chdir(tmp_path)
    local = tmp_path / "calibration" / "default"
    local.mkdir(parents=True)
    (local / "manifest.json").write_text('{"name": "mine"}\n')
    assert assets.calibration("calibration/default").resolve() == local
    cfg = apply_recipe(ExportConfig(run="r", out="o"), "cpu-int8")
    cfg.validate()
    assert Path(cfg.calibration).resolve() == local
    assert assets.calibration("default") == ROOT / "calibration" / "default"  # a bare name is still the shipped set


def test_version_reports_two_onnxruntime_distributions(tmp_path, monkeypatch):
    """`onnxruntime` and `onnxruntime-gpu` both installed (each provides the `onnxruntime` module; their files
    overwrite each other): `trml-edge --version` names both and says how to keep one."""
    from typer.testing import CliRunner

    from trml_edge.cli import app
    from trt_fakes import fake_dists

    fake_dists(tmp_path, monkeypatch, {"onnxruntime": "1.99.0", "onnxruntime-gpu": "1.98.0"},
               top_level={"onnxruntime": "onnxruntime", "onnxruntime-gpu": "onnxruntime"})
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("onnxruntime:"))
    assert "1.99.0 (distribution onnxruntime), 1.98.0 (distribution onnxruntime-gpu)" in line
    assert "more than one distribution provides the onnxruntime module" in line
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in line
