"""`trml-edge doctor` on this machine (no GPU, the CPU tritonserver bundled by nvidia-pytriton), on a machine
that lacks ONNX Runtime, PyTorch, CUDA and pytriton (the same interpreter with those imports blocked), and on
machines faked where they cannot be had here (tests/trt_fakes.py): a CUDA 12 driver with CUDA 13 builds of
cuda-bindings or TensorRT, a Jetson, a Triton server whose TensorRT folder holds two releases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trml_edge.doctor import ERROR, MISSING, OK, WARN, _guard, doctor, render

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    return doctor()


def test_reports_no_gpu_and_no_tensorrt_here(report):
    gpu = report["checks"]["gpu"]
    assert gpu["status"] == MISSING and "no NVIDIA GPU" in gpu["detail"] and gpu["fix"]
    trt = report["checks"]["tensorrt"]
    assert trt["status"] == MISSING and "tensorrt>=10.1,<12" in trt["detail"]
    # no driver here to choose by: both extras, each with the drivers it is for
    assert "'trml-edge[trt-cu13]' with an R580+ driver" in trt["fix"] and "'trml-edge[trt-cu12]'" in trt["fix"]


def test_reports_the_cpu_server_and_its_python_backend(report):
    srv = report["checks"]["tritonserver"]
    assert srv["status"] == OK
    assert "python" in srv["backends"] and "tensorrt" not in srv["backends"]
    assert srv["tensorrt"] is None and os.access(srv["binary"], os.X_OK)
    assert "nvidia-pytriton" in srv["detail"]


def test_reports_which_uses_run_here(report):
    uses = report["uses"]
    assert set(uses) == {"export", "serve", "profile"}
    for name in uses:  # the CPU halves run; the engines need the GPU machine, and each says how to get there
        assert uses[name]["runs"] == "cpu-only", (name, uses[name])
        assert uses[name]["fix"], name
    assert "python backend" in uses["serve"]["detail"]
    assert "CPUExecutionProvider" in uses["profile"]["detail"]
    assert report["checks"]["onnxruntime"]["providers"][-1] == "CPUExecutionProvider"


def test_cpu_and_memory(report):
    cpu, mem = report["checks"]["cpu"], report["checks"]["memory"]
    assert cpu["logical_cpus"] == os.cpu_count() and isinstance(cpu["isa_flags"], list)
    assert mem["total_mib"] > 0


def test_json_and_text_from_the_cli():
    from typer.testing import CliRunner

    import trml_edge.cli.doctor_cmds  # noqa: F401
    from trml_edge.cli import app

    res = CliRunner().invoke(app, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["schema"] == "trml-edge-doctor" and doc["uses"]["serve"]["runs"] == "cpu-only"
    text = CliRunner().invoke(app, ["doctor"]).output
    assert "use serve" in text and "fix:" in text


def test_a_broken_probe_is_a_line_not_a_traceback():
    def broken():
        raise OSError("the probe's device node vanished")

    entry = _guard(broken)
    assert entry["status"] == ERROR and "vanished" in entry["detail"] and entry["fix"]
    rep = doctor(tritonserver="/nonexistent/tritonserver")
    assert rep["checks"]["tritonserver"]["status"] == ERROR and rep["uses"]["serve"]["runs"] == "no"
    assert "tritonserver" in render(rep)


BLOCKER = textwrap.dedent("""
    import sys
    BLOCKED = {"onnxruntime", "torch", "open_clip", "cuda", "pytriton", "tensorrt", "onnxconverter_common"}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    from trml_edge.cli import main
    sys.argv = ["trml-edge", "doctor", "--json"]
    main()
""")


def test_a_machine_lacking_everything_gets_lines_and_fixes():
    res = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    doc = json.loads(res.stdout)
    checks = doc["checks"]
    for name in ("onnxruntime", "training", "tritonserver", "tensorrt", "cuda_python", "gpu"):
        assert checks[name]["status"] == MISSING, (name, checks[name])
        assert checks[name]["fix"], name
    assert {u["runs"] for u in doc["uses"].values()} == {"no"}
    assert "pip install 'trml-edge[cpu]'" in doc["uses"]["profile"]["fix"]


def test_target_check_writes_one_report_and_says_what_it_could_not_do(tmp_path, monkeypatch):
    """On this CPU machine: doctor runs, build-engines fails with the missing extra (TensorRT), the steps that
    need engines are SKIPPED with the reason, and report.md holds all of it (exit status 1: a step failed)."""
    from typer.testing import CliRunner

    import trml_edge.cli.doctor_cmds  # noqa: F401
    import trml_edge.target_check as tc
    from export_fixtures import bundle
    from trml_edge.cli import app

    monkeypatch.setattr(tc, "TESTS", tmp_path / "no-tests")  # as installed from a wheel: no tests/ beside it
    monkeypatch.chdir(tmp_path)  # no demo_out here
    out = tmp_path / "check"
    out.mkdir()
    (out / "setup.sh").write_text("#!/bin/sh\n# GPU box: driver 550.54.15, CUDA 12: trt-cu12\nset -e\n")  # by make
    res = CliRunner().invoke(app, ["doctor", "--run", "--out", str(out), "--bundle", str(bundle("fp32"))])
    assert res.exit_code == 1, res.output
    rep = json.loads((out / "report.json").read_text())
    steps = {s["name"].split(" ")[0]: s for s in rep["steps"]}
    assert steps["doctor"]["status"] == "OK"
    assert steps["build-engines"]["status"] == "FAIL" and "trml-edge[trt-cu13]" in steps["build-engines"]["detail"]
    assert steps["gpu"]["status"] == "SKIPPED" and "source checkout" in steps["gpu"]["detail"]
    assert steps["profile"]["status"] == "SKIPPED" and "no bundle has engines" in steps["profile"]["detail"]
    text = (out / "report.md").read_text()
    assert "| build-engines" in text and "use serve" in text and '"schema": "trml-edge-doctor"' in text
    assert "## Environment\n\n```sh\n#!/bin/sh\n# GPU box: driver 550.54.15, CUDA 12: trt-cu12" in text
    assert not list(bundle("fp32").glob("engines/*.plan"))


# ---- machines that cannot be had here: fakes of the driver, the bindings, package metadata, a Jetson -----------

def _claims(monkeypatch, *modules):
    """doctor sees ``modules`` as installed (their metadata is faked; nothing imports them before the check)."""
    import trml_edge.doctor as d

    real = d._has
    monkeypatch.setattr(d, "_has", lambda m: m in modules or real(m))


def _driver(tmp_path, monkeypatch, driver: str, driver_cuda: int, runtime_cuda: int, status: int):
    import trml_edge.export.trt_runner as runner
    from trt_fakes import fake_cuda, fake_nvidia_smi, not_a_jetson

    not_a_jetson(tmp_path, monkeypatch)
    fake_nvidia_smi(tmp_path, monkeypatch, driver=driver)
    cuda = fake_cuda(driver_cuda=driver_cuda, runtime_cuda=runtime_cuda, device_count_status=status)
    monkeypatch.setattr(runner, "_cuda", lambda: cuda)


def test_cuda_bindings_13_on_a_cuda_12_driver_is_an_error_not_ready_engines(tmp_path, monkeypatch):
    """The driver API answers (so the GPU check passes, as it did before), but cuda-bindings 13 carries the CUDA 13
    runtime and an R550 driver runs CUDA 12.4: the runtime fails with error 35, and engines cannot run."""
    from trt_fakes import fake_dists

    _driver(tmp_path, monkeypatch, "550.54.15", driver_cuda=12040, runtime_cuda=13000, status=35)
    fake_dists(tmp_path, monkeypatch, {"cuda-bindings": "13.5.0"})
    _claims(monkeypatch, "cuda.bindings")
    rep = doctor()
    gpu, cuda = rep["checks"]["gpu"], rep["checks"]["cuda_python"]
    assert gpu["status"] == OK and "supports CUDA 12.4" in gpu["detail"] and "driver 550.54.15" in gpu["detail"]
    assert cuda["status"] == ERROR
    assert "cuda-bindings 13.5.0 (CUDA 13)" in cuda["detail"] and "CUDA 12.4" in cuda["detail"]
    assert "error 35" in cuda["detail"]
    assert cuda["fix"].startswith("pip uninstall -y cuda-bindings cuda-python, then pip install 'trml-edge[trt-cu12]'")
    assert rep["uses"]["export"]["runs"] == "cpu-only" and rep["uses"]["profile"]["runs"] == "cpu-only"
    assert "use export    cpu-only" in render(rep)


def test_the_runtime_api_is_probed_not_only_the_driver_api(tmp_path, monkeypatch):
    """cuda-bindings of the driver's major: the runtime call itself decides (its failure is the check's error)."""
    from trt_fakes import fake_dists

    fake_dists(tmp_path, monkeypatch, {"cuda-bindings": "12.9.10"})
    _claims(monkeypatch, "cuda.bindings")
    _driver(tmp_path, monkeypatch, "575.57.08", driver_cuda=12090, runtime_cuda=12090, status=100)
    cuda = doctor()["checks"]["cuda_python"]
    assert cuda["status"] == ERROR and "cudaGetDeviceCount: cudaErrorNoDevice, error 100" in cuda["detail"]
    _driver(tmp_path, monkeypatch, "575.57.08", driver_cuda=12090, runtime_cuda=12090, status=0)
    cuda = doctor()["checks"]["cuda_python"]
    assert cuda["status"] == OK and "runtime API: CUDA 12.9, 1 device(s)" in cuda["detail"]


def test_a_tensorrt_wheel_built_for_a_newer_cuda_than_the_driver(tmp_path, monkeypatch):
    """PyPI's `tensorrt` now installs the CUDA 13 build: on an R550 driver trt.Builder fails (error 35)."""
    import sys
    from types import SimpleNamespace

    from trt_fakes import fake_dists

    wheels = dict.fromkeys(("tensorrt", "tensorrt-cu13", "tensorrt_cu13_libs", "tensorrt_cu13_bindings"), "11.4.0.106")
    fake_dists(tmp_path, monkeypatch, wheels, requires={"tensorrt": ["tensorrt_cu13==11.4.0.106"]})
    _claims(monkeypatch, "tensorrt")
    _driver(tmp_path, monkeypatch, "550.54.15", driver_cuda=12040, runtime_cuda=12040, status=0)
    trt = doctor()["checks"]["tensorrt"]
    assert trt["status"] == ERROR and "built for CUDA 13" in trt["detail"] and "runs CUDA 12.4" in trt["detail"]
    assert trt["fix"] == ("pip uninstall -y tensorrt tensorrt-cu13 tensorrt-cu13-bindings tensorrt-cu13-libs, then "
                          "pip install 'trml-edge[trt-cu12]' (this driver, 550.54.15, runs CUDA 12)")
    # the same wheel on an R580 driver is what that driver runs
    _driver(tmp_path, monkeypatch, "580.65.06", driver_cuda=13000, runtime_cuda=13000, status=0)
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="11.4.0.106"))
    trt = doctor()["checks"]["tensorrt"]
    assert trt["status"] == OK and "11.4.0.106 (pip tensorrt tensorrt-cu13" in trt["detail"]
    assert ": CUDA 13;" in trt["detail"]


def test_on_a_jetson_every_fix_is_jetpacks_tensorrt(tmp_path, monkeypatch):
    """doctor, the engine runner, build-engines and the CLI's missing-module line all say: JetPack's TensorRT,
    cuda-python <13, a venv that sees the system packages; never a pip extra of ours."""
    import sys

    from trml_edge.errors import MissingDependencyError
    from trml_edge.export.tensorrt import _trt
    from trml_edge.export.trt_runner import _cuda
    from trml_edge.versions import missing_module_message
    from trt_fakes import fake_dists, fake_jetson, no_nvidia_smi

    fake_jetson(tmp_path, monkeypatch)
    no_nvidia_smi(tmp_path, monkeypatch)
    fake_dists(tmp_path, monkeypatch, {"cuda-bindings": "13.5.0"})
    _claims(monkeypatch, "cuda.bindings")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # JetPack's python3-libnvinfer not installed

    def jetpack(text: str) -> None:
        assert "sudo apt install python3-libnvinfer" in text and "--system-site-packages" in text, text
        assert "'cuda-bindings>=12.8,<13'" in text and "trml-edge[" not in text, text

    checks = doctor()["checks"]
    assert checks["gpu"]["status"] == WARN and "R36" in checks["gpu"]["detail"]
    for name in ("gpu", "tensorrt", "cuda_python"):
        jetpack(checks[name]["fix"])
    assert checks["tensorrt"]["status"] == MISSING
    assert checks["cuda_python"]["status"] == ERROR and "13.5.0 (CUDA 13)" in checks["cuda_python"]["detail"]
    with pytest.raises(MissingDependencyError) as e:
        _trt()  # build-engines' first TensorRT step
    jetpack(str(e.value))
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(MissingDependencyError) as e:
        _cuda()  # the engine runner and the GPU probe
    jetpack(str(e.value))
    jetpack(missing_module_message("tensorrt"))
    fake_dists(tmp_path / "pip", monkeypatch, {"tensorrt-cu12": "10.3.0"})  # a PyPI wheel on the Jetson
    monkeypatch.delitem(sys.modules, "tensorrt")
    _claims(monkeypatch, "cuda.bindings", "tensorrt")
    trt = doctor()["checks"]["tensorrt"]
    assert trt["status"] == ERROR and "not built for JetPack" in trt["detail"]
    assert trt["fix"].startswith("pip uninstall -y tensorrt-cu12, then on a Jetson use JetPack's TensorRT")


def test_the_server_tensorrt_is_the_one_its_backend_links(tmp_path, monkeypatch):
    """Two releases in one library folder: doctor names the one libtriton_tensorrt.so loads (serve's check uses
    the same function), not the first file name in sort order."""
    from trt_fakes import fake_triton

    binary = fake_triton(tmp_path, {"libnvinfer.so.10.12.0": None, "libnvinfer.so.10.3.0": None,
                                    "libnvinfer.so.10": "libnvinfer.so.10.3.0"})
    monkeypatch.setenv("LD_LIBRARY_PATH", str(binary.parents[1] / "lib"))
    srv = doctor(tritonserver=str(binary))["checks"]["tritonserver"]
    assert srv["status"] == OK and srv["backends"] == ["python", "tensorrt"] and srv["tensorrt"] == "10.3.0"
    assert "TensorRT: 10.3.0 (libnvinfer.so.10 linked by libtriton_tensorrt.so" in srv["detail"]


def test_a_listed_provider_that_cannot_run_a_session_is_not_reported_available(monkeypatch):
    """onnxruntime-gpu lists the CUDA provider whether or not CUDA and cuDNN load; a session then quietly runs on
    the CPU. Here the real ONNX Runtime is told it has a CUDA provider (as onnxruntime-gpu's list says on a box
    without CUDA): the probe builds a real session with it, sees the fall-back, and says so with the fix."""
    import warnings

    import onnxruntime as ort

    from trml_edge.doctor import probe_onnxruntime

    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = probe_onnxruntime({"jetson": False, "driver": "550.54.15", "cuda_major": 12})
    assert got["status"] == WARN and got["providers"] == real, got
    assert "CUDAExecutionProvider" in got["broken"] and "fell back to CPUExecutionProvider" in got["detail"]
    assert "cuDNN" in got["fix"] and "trml-edge[gpu]" in got["fix"]
    uses = doctor()["uses"]  # a CPU provider that ran is enough to profile
    assert uses["profile"]["runs"] == "cpu-only"


def test_the_onnxruntime_fix_names_an_install_that_brings_one():
    """The base install has no ONNX Runtime (so that it never overwrites onnxruntime-gpu or a Jetson build): the
    fix names the extra, or on a Jetson NVIDIA's wheel; pyproject.toml's extras hold what it names."""
    import tomllib

    from trml_edge.doctor import onnxruntime_fix

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("onnxruntime>=") for r in extras["cpu"])
    assert any(r.startswith("onnxruntime-gpu>=") for r in extras["gpu"])
    assert "pip install 'trml-edge[cpu]'" in onnxruntime_fix({"jetson": False, "driver": None})
    assert "pip install 'trml-edge[gpu]'" in onnxruntime_fix({"jetson": False, "driver": "580.65.06"})
    jetson = onnxruntime_fix({"jetson": True, "driver": None})
    assert "NVIDIA's onnxruntime-gpu wheel" in jetson and "trml-edge[" not in jetson


def test_processes_row_reads_the_proc_mount(report):
    """The row follows /proc's mount options: this container mounts it without hidepid (every account can read a
    command line); tests/test_serving_security.py shows what `nobody` reads in both cases."""
    from trml_edge.serving.security import proc_hides_processes

    row = report["checks"]["processes"]
    hidden, how = proc_hides_processes()
    assert row["hidepid"] is hidden and how in row["detail"]
    assert (row["status"], bool(row.get("fix"))) == ((OK, False) if hidden else (WARN, True))
