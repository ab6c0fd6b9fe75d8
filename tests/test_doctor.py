"""`trml-edge doctor` on this machine (no GPU, the CPU tritonserver bundled by nvidia-pytriton), and on a
machine that lacks ONNX Runtime, PyTorch, CUDA and pytriton (the same interpreter with those imports blocked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from trml_edge.doctor import ERROR, MISSING, OK, _guard, doctor, render


@pytest.fixture(scope="module")
def report():
    return doctor()


def test_reports_no_gpu_and_no_tensorrt_here(report):
    gpu = report["checks"]["gpu"]
    assert gpu["status"] == MISSING and "no NVIDIA GPU" in gpu["detail"] and gpu["fix"]
    trt = report["checks"]["tensorrt"]
    assert trt["status"] == MISSING and "tensorrt>=10.1,<12" in trt["detail"] and "trml-edge[trt]" in trt["fix"]


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
    assert "pip install" in doc["uses"]["profile"]["fix"]


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
    res = CliRunner().invoke(app, ["doctor", "--run", "--out", str(out), "--bundle", str(bundle("fp32"))])
    assert res.exit_code == 1, res.output
    rep = json.loads((out / "report.json").read_text())
    steps = {s["name"].split(" ")[0]: s for s in rep["steps"]}
    assert steps["doctor"]["status"] == "OK"
    assert steps["build-engines"]["status"] == "FAIL" and "trml-edge[trt]" in steps["build-engines"]["detail"]
    assert steps["gpu"]["status"] == "SKIPPED" and "source checkout" in steps["gpu"]["detail"]
    assert steps["profile"]["status"] == "SKIPPED" and "no bundle has engines" in steps["profile"]["detail"]
    text = (out / "report.md").read_text()
    assert "| build-engines" in text and "use serve" in text and '"schema": "trml-edge-doctor"' in text
    assert not list(bundle("fp32").glob("engines/*.plan"))
