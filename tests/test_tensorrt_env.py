"""What TensorRT and CUDA a machine has and needs, without either here: the driver's CUDA major, the advice on a
Jetson and on a GPU box, the pip wheels' CUDA variant, the TensorRT a Triton server loads, the plan rule, and
the environment `make target-check` builds. A Jetson, a driver, package metadata and a Triton tree are fakes
(tests/trt_fakes.py); what they stand in for is read by the code the way it reads the real thing."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from trml_edge import target_env
from trml_edge import tensorrt_env as env
from trml_edge.errors import MissingDependencyError
from trt_fakes import (JETPACK6, JETPACK60, fake_dists, fake_jetson, fake_nvidia_smi, fake_triton, no_nvidia_smi,
                        not_a_jetson)

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = (ROOT / "constraints.txt").read_text()
JETSON = {"jetson": True, "l4t": JETPACK6, "driver": None, "cuda_major": 12}
CUDA12 = {"jetson": False, "l4t": None, "driver": "550.54.15", "cuda_major": 12}
CUDA13 = {"jetson": False, "l4t": None, "driver": "580.65.06", "cuda_major": 13}


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_driver_branches_give_the_cuda_major_of_the_wheels():
    """NVIDIA's minimums: CUDA 13 builds need R580 (cuda-bindings 13: 580.65.06), TensorRT's CUDA 12 wheels R535."""
    assert env.driver_cuda_major("580.65.06") == env.driver_cuda_major("590.48.01") == 13
    assert env.driver_cuda_major("575.57.08") == env.driver_cuda_major("535.54.03") == 12
    assert env.driver_cuda_major("530.30.02") is None and env.driver_cuda_major(None) is None


def test_the_machine_is_read_from_l4t_or_the_driver(tmp_path, monkeypatch):
    fake_jetson(tmp_path, monkeypatch)
    assert env.machine() == {"jetson": True, "l4t": JETPACK6, "driver": None, "cuda_major": 12}  # JetPack 6: CUDA 12.6
    not_a_jetson(tmp_path, monkeypatch)
    fake_nvidia_smi(tmp_path, monkeypatch, driver="550.54.15")
    assert env.machine() == {"jetson": False, "l4t": None, "driver": "550.54.15", "cuda_major": 12}
    no_nvidia_smi(tmp_path, monkeypatch)
    assert env.machine()["driver"] is None and env.machine()["cuda_major"] is None


def test_the_extras_are_one_per_cuda_major_and_the_advice_names_them():
    extras = _extras()
    assert "trt" not in extras  # a bare extra would pull PyPI's `tensorrt`, which is the CUDA 13 build
    for major, name in env.EXTRAS.items():
        reqs = {r.name: r for r in map(Requirement, extras[name])}
        assert set(reqs) == {f"tensorrt-cu{major}", "cuda-bindings"}, name
        assert reqs[f"tensorrt-cu{major}"].specifier == SpecifierSet(env.TRT_RANGE)
        assert reqs["cuda-bindings"].specifier == Requirement(env.BINDINGS[major]).specifier
        assert reqs["cuda-bindings"].specifier.contains(f"{major}.9.0")  # a binding of this CUDA major...
        assert not reqs["cuda-bindings"].specifier.contains(f"{major + 1}.0.0")  # ...and never the next one
    assert "trml-edge[trt-cu12]" in env.install_advice(CUDA12) and "550.54.15" in env.install_advice(CUDA12)
    assert "trml-edge[trt-cu13]" in env.install_advice(CUDA13)
    old = env.install_advice({"jetson": False, "driver": "470.82.01", "cuda_major": None})
    assert "470.82.01 is older than R535" in old and "trt-cu12" in old and "trt-cu13" in old


def test_on_a_jetson_the_advice_is_jetpacks_tensorrt_never_a_pip_wheel():
    advice = env.install_advice(JETSON)
    assert "sudo apt install python3-libnvinfer" in advice
    assert "pip install 'cuda-bindings>=12.8,<13'" in advice and "cuda-python <13" in advice
    assert "python3 -m venv --system-site-packages" in advice
    assert "trml-edge[" not in advice  # no extra of ours installs JetPack's TensorRT
    assert "'cuda-bindings>=13,<14'" in env.install_advice({**JETSON, "cuda_major": 13})  # JetPack 7: CUDA 13


def test_on_jetpack_6_0_the_advice_is_to_move_to_6_1_not_to_reinstall_its_tensorrt(tmp_path, monkeypatch):
    """JetPack 6.0 (L4T R36.3) ships TensorRT 8.6: installing JetPack's python3-libnvinfer brings 8.6 back, so the
    advice is the JetPack that ships 10.3. JetPack 6.1 (R36.4) and later keep JetPack's TensorRT advice."""
    assert env.l4t_version(JETPACK60) == (36, 3) and env.l4t_version(JETPACK6) == (36, 4)
    assert env.l4t_version("# R36 (release)") is None and env.jetpack_tensorrt_problem("# R36 (release)") is None
    fake_jetson(tmp_path, monkeypatch, JETPACK60)
    assert env.machine() == {"jetson": True, "l4t": JETPACK60, "driver": None, "cuda_major": 12}
    for advice in (env.install_advice(), env.tensorrt_version_problem("8.6.2")):  # as the machine reads
        assert "L4T R36.3 (JetPack 6.0, whose TensorRT is 8.6, below the supported 10.1)" in advice, advice
        assert "move to JetPack 6.1 or later (L4T R36.4+, TensorRT 10.3" in advice, advice
        assert "apt install" not in advice and "trml-edge[" not in advice, advice
    r35 = env.install_advice({**JETSON, "l4t": "# R35 (release), REVISION: 5.0, GCID: 35550185", "cuda_major": None})
    assert "L4T R35.5 (JetPack 5 or older" in r35 and "move to JetPack 6.1 or later" in r35
    assert "apt install" not in r35
    for release in (JETPACK6, "# R36 (release), REVISION: 4.0, GCID: 37537400", "# R38 (release), REVISION: 2.0"):
        assert env.jetpack_tensorrt_problem(release) is None, release
        assert "sudo apt install python3-libnvinfer" in env.install_advice({**JETSON, "l4t": release}), release


def test_the_cuda_variant_of_the_pip_tensorrt(tmp_path, monkeypatch):
    """The names PyPI's TensorRT installs under (tensorrt-cu12 and its -libs / -bindings wheels), and a bare
    `tensorrt`, whose requirement names its variant (11.4.0.106 requires tensorrt_cu13==11.4.0.106)."""
    fake_dists(tmp_path / "a", monkeypatch, {"tensorrt-cu12": "10.13.3.9", "tensorrt_cu12_libs": "10.13.3.9",
                                             "tensorrt_cu12_bindings": "10.13.3.9"})
    wheels = env.tensorrt_wheels()
    assert wheels == dict.fromkeys(("tensorrt-cu12", "tensorrt-cu12-libs", "tensorrt-cu12-bindings"), "10.13.3.9")
    assert env.wheel_cuda_major(wheels) == 12
    fake_dists(tmp_path / "b", monkeypatch, {"tensorrt": "11.4.0.106"},
               requires={"tensorrt": ["tensorrt_cu13==11.4.0.106"]})
    assert env.wheel_cuda_major({"tensorrt": "11.4.0.106"}) == 13
    assert env.wheel_cuda_major({}) is None


def test_versions_compare_as_numbers():
    assert env.version_tuple("10.12.0.36") == (10, 12, 0) > env.version_tuple("10.3.0") == (10, 3, 0)
    assert env.version_tuple("11.4", 2) == (11, 4) and env.version_tuple("10.3.0.30.post1") == (10, 3, 0)


def test_a_plan_loads_only_on_the_release_that_built_it():
    """The exact major.minor.patch (TensorRT's default engine compatibility). There is no version-compatible
    branch: build-engines never sets the flag, and serve never enabled such plans."""
    assert env.plan_loads("10.3.0.30", "10.3.0") and env.plan_loads("10.12.0", "10.12.0.36")
    assert not env.plan_loads("10.3.0", "10.12.0") and not env.plan_loads("10.12.0", "10.3.0")
    assert not env.plan_loads("10.3.1", "10.3.0") and not env.plan_loads("10.3.0", "11.3.0")


def _two_releases(tmp_path):
    """libnvinfer 10.12.0 and 10.3.0 in one folder (10.12.0 sorts first as text), the soname link to 10.3.0,
    and an 8.6.1 beside them; the backend links libnvinfer.so.10."""
    binary = fake_triton(tmp_path, {"libnvinfer.so.10.12.0": None, "libnvinfer.so.10.3.0": None,
                                    "libnvinfer.so.10": "libnvinfer.so.10.3.0", "libnvinfer.so.8.6.1": None,
                                    "libnvinfer.so.8": "libnvinfer.so.8.6.1"})
    return binary, binary.parents[1] / "backends", binary.parents[1] / "lib"


def test_the_server_tensorrt_is_the_libnvinfer_its_backend_links(tmp_path, monkeypatch):
    binary, backends, lib = _two_releases(tmp_path)
    monkeypatch.setattr(env, "_ldconfig", lambda soname: [])  # this machine's own cache: no TensorRT either way
    monkeypatch.setattr(env, "LIB_DIRS", ())
    monkeypatch.setenv("LD_LIBRARY_PATH", str(lib))
    version, how = env.server_tensorrt(backends)
    assert version == "10.3.0" and str(lib / "libnvinfer.so.10.3.0") in how and "libnvinfer.so.10 linked" in how
    (lib / "libnvinfer.so.10").unlink()  # relinked, the loader takes the other release: so does the check
    (lib / "libnvinfer.so.10").symlink_to("libnvinfer.so.10.12.0")
    assert env.server_tensorrt(backends)[0] == "10.12.0"
    monkeypatch.setenv("LD_LIBRARY_PATH", "")  # where the loader does not look, nothing is guessed
    version, why = env.server_tensorrt(backends)
    assert version is None and "links libnvinfer.so.10, found on neither LD_LIBRARY_PATH" in why
    (backends / "tensorrt" / "libnvinfer.so.10").symlink_to(lib / "libnvinfer.so.10.3.0")  # beside the backend
    assert env.server_tensorrt(backends)[0] == "10.3.0"
    assert env.server_tensorrt(tmp_path / "nowhere") == (None, f"no tensorrt backend ({tmp_path / 'nowhere'}"
                                                               "/tensorrt/libtriton_tensorrt.so does not exist)")


def test_gpu_architectures_come_from_nvidia_smi(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, compute_cap="8.7", gpus=2)
    assert env.gpu_architectures() == ["sm87", "sm87"]
    no_nvidia_smi(tmp_path, monkeypatch)
    assert env.gpu_architectures() == []


# ---- make target-check: the environment it builds -------------------------------------------------------------

def _plan(m, modules=("ensurepip", "tensorrt", "torch", "onnxruntime")):
    return target_env.plan(".venv-target", m, lambda name: name in modules, CONSTRAINTS, Path("target_check"),
                           python="/usr/bin/python3")


def _pins(text: str) -> dict[str, str]:
    """name -> pinned version for x86_64, as pip reads a constraints file (a '#' after a space starts a comment)."""
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"platform_machine": "x86_64"}):
            name = canonicalize_name(req.name)
            assert name not in pins, f"{name} is pinned twice: {raw}"
            pins[name] = str(next(iter(req.specifier)).version)
    return pins


def test_target_env_on_a_cuda13_box_uses_the_constraints_as_they_are():
    p = _plan(CUDA13)
    assert p.commands[0] == ["/usr/bin/python3", "-m", "venv", ".venv-target"]
    assert p.commands[-1][-4:] == ["-e", ".[cpu,train,serve,profile,test,trt-cu13]", "-c", "constraints.txt"]
    assert not p.files


def test_target_env_on_a_cuda12_box_swaps_the_cuda13_stack():
    p = _plan(CUDA12)
    assert p.commands[-1][-4:] == ["-e", ".[cpu,train,serve,profile,test,trt-cu12]", "-c",
                                   "target_check/constraints-cu12.txt"]
    cu12 = _pins(p.files["constraints-cu12.txt"])
    # none of the CUDA 13 libraries PyPI's torch 2.14.1 pulls stays pinned on a CUDA 12 box
    assert "cuda-toolkit" not in cu12 and not [n for n in cu12 if n.startswith("nvidia-") and n != "nvidia-pytriton"]
    assert Version(cu12["cuda-bindings"]).major == 12


def test_constraints_resolve_with_both_extras_and_leave_the_cpu_setup_alone():
    """Each CUDA major's constraints pin one version per name, inside the ranges pyproject.toml asks for the
    trt extra and the train extra's torch; `make setup` reads constraints.txt as it always did (no #cu12 line in
    force, the CUDA 13 torch stack kept)."""
    extras = _extras()
    for major in (12, 13):
        pins = _pins(target_env.constraints_for(CONSTRAINTS, major))
        for req in map(Requirement, extras[env.EXTRAS[major]] + extras["train"]):
            name = canonicalize_name(req.name)
            if name in pins:
                assert req.specifier.contains(pins[name], prereleases=True), (major, req, pins[name])
        assert {f"tensorrt-cu{major}", "cuda-bindings", "torch", "torchvision"} <= set(pins), major
        assert Version(pins["cuda-bindings"]).major == major
    assert target_env.constraints_for(CONSTRAINTS, 13) == CONSTRAINTS
    setup = _pins(CONSTRAINTS)
    assert Version(setup["torch"]).release[:2] == (2, 14) and Version(setup["cuda-bindings"]).major == 13


def test_target_env_on_a_jetson_keeps_jetpacks_builds():
    p = _plan(JETSON)
    assert p.commands[0] == ["/usr/bin/python3", "-m", "venv", "--system-site-packages", ".venv-target"]
    install = p.commands[2]
    assert install[-3:] == ["-e", ".[profile,serve,test,train]", "cuda-bindings>=12.8,<13"]  # NVIDIA's torch and ORT
    assert "-c" not in install and not any("tensorrt" in a or "trt-cu" in a for a in install)
    assert p.commands[3] == [".venv-target/bin/python", "-c", "import tensorrt, cuda.bindings.runtime"]
    bare = _plan(JETSON, modules=("ensurepip", "tensorrt"))  # no torch, no ONNX Runtime on the system
    assert bare.commands[2][-2] == ".[cpu,profile,serve,test]"


@pytest.mark.parametrize("machine, modules, says", [
    (JETSON, ("ensurepip",), "sudo apt install python3-libnvinfer"),
    ({**JETSON, "l4t": "# R39 (release), REVISION: 0.0", "cuda_major": None}, ("ensurepip", "tensorrt"),
     "JetPack 6 is R36"),
    ({**JETSON, "l4t": JETPACK60}, ("ensurepip", "tensorrt"), "move to JetPack 6.1 or later"),
    ({**JETSON, "l4t": "# R35 (release), REVISION: 5.0", "cuda_major": None}, ("ensurepip", "tensorrt"),
     "move to JetPack 6.1 or later"),
    ({"jetson": False, "l4t": None, "driver": None, "cuda_major": None}, ("ensurepip",), "no NVIDIA driver here"),
    ({"jetson": False, "l4t": None, "driver": "470.82.01", "cuda_major": None}, ("ensurepip",), "older than R535"),
    (CUDA13, (), "sudo apt install python3-venv"),
])
def test_target_env_refuses_with_the_fix(machine, modules, says):
    with pytest.raises(MissingDependencyError, match=re.escape(says)):
        _plan(machine, modules)


def test_target_env_writes_the_script_or_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # where make runs it: constraints.txt and the project are here
    out = tmp_path / "tc" / "setup.sh"
    monkeypatch.setattr(env, "machine", lambda: CUDA12)
    assert target_env.main(["--venv", ".venv-x", "--out", str(out)]) == 0
    script = out.read_text()
    assert script.startswith("#!/bin/sh\n") and "\nset -e\n" in script and "driver 550.54.15, CUDA 12" in script
    assert f"-c {tmp_path}/tc/constraints-cu12.txt" in script and "trt-cu12" in script
    assert (tmp_path / "tc" / "constraints-cu12.txt").read_text() == target_env.constraints_for(CONSTRAINTS, 12)
    assert subprocess.run(["sh", "-n", str(out)]).returncode == 0  # valid shell
    monkeypatch.setattr(env, "machine", lambda: {"jetson": False, "l4t": None, "driver": None, "cuda_major": None})
    assert target_env.main(["--out", str(out)]) == 2
    assert not out.exists()  # the refusal leaves no script of the earlier run to be executed
    assert "error: no NVIDIA driver here" in capsys.readouterr().err


def test_make_target_check_builds_the_environment_before_it_checks():
    steps = subprocess.run(["make", "--no-print-directory", "-n", "target-check", "PY=python3"], cwd=ROOT,
                           capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert [s.split()[:3] for s in steps] == [["python3", "-m", "trml_edge.target_env"],
                                              ["sh", "-e", "target_check/setup.sh"],
                                              [".venv-target/bin/trml-edge", "doctor", "--run"]]
