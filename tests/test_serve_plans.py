"""`serve`'s check of a TensorRT repository before Triton loads it: the server's TensorRT (the libnvinfer its
tensorrt backend links, not the first file name in a folder) and this machine's GPU architecture against what
each plan was built with, refused in one line; what it cannot tell goes to serve's log.

The server tree, its libraries and nvidia-smi are fakes (tests/trt_fakes.py); router.json is written the way
`triton build` records the plans (each plan's TensorRT version and compute capability, from the manifest)."""

from __future__ import annotations

import json
import re

import pytest

from trml_edge import tensorrt_env
from trml_edge.errors import ServingError
from trml_edge.serving.plans import check_plan_versions
from trt_fakes import fake_nvidia_smi, fake_triton, no_nvidia_smi


def _repo(tmp_path, plans: dict[str, dict]):
    """A repository whose router records these plans (only what the check reads: a trml model and router.json)."""
    repo = tmp_path / "repo"
    (repo / "trml" / "1").mkdir(parents=True)
    (repo / "trml" / "config.pbtxt").write_text('name: "trml"\nbackend: "python"\n')
    (repo / "trml" / "1" / "router.json").write_text(json.dumps({"format": "trml-edge-triton-router",
                                                                 "tensorrt": plans}))
    return repo


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A Triton tree whose library folder holds TensorRT 10.12.0 and 10.3.0 (10.12.0 first in name order), the
    backend linking libnvinfer.so.10 -> 10.3.0; nvidia-smi shows one sm87 GPU."""
    binary = fake_triton(tmp_path, {"libnvinfer.so.10.12.0": None, "libnvinfer.so.10.3.0": None,
                                    "libnvinfer.so.10": "libnvinfer.so.10.3.0"})
    monkeypatch.setenv("LD_LIBRARY_PATH", str(binary.parents[1] / "lib"))
    monkeypatch.setattr(tensorrt_env, "_ldconfig", lambda soname: [])
    fake_nvidia_smi(tmp_path, monkeypatch, compute_cap="8.7", name="Orin")
    return binary


def test_plans_of_the_release_the_backend_loads_pass(tmp_path, server):
    repo = _repo(tmp_path, {g: {"version": "10.3.0.30", "compute_capability": "sm87"}
                            for g in ("image_encoder", "fusion_head")})
    lines = []
    assert check_plan_versions(repo, server, log=lines.append) == "10.3.0"
    assert lines == []


def test_a_plan_of_another_release_is_refused_even_when_its_file_sits_beside(tmp_path, server):
    """10.12.0 is in the folder (and sorts first), but the backend loads 10.3.0: a 10.12.0 plan cannot load."""
    repo = _repo(tmp_path, {"image_encoder": {"version": "10.3.0", "compute_capability": "sm87"},
                            "fusion_head": {"version": "10.12.0", "compute_capability": "sm87"}})
    with pytest.raises(ServingError) as e:
        check_plan_versions(repo, server)
    msg = str(e.value)
    assert "built with TensorRT fusion_head with 10.12.0, the server loads TensorRT 10.3.0" in msg
    assert "image_encoder" not in msg and "build-engines" in msg and "\n" not in msg


def test_a_plan_built_for_another_gpu_architecture_is_refused(tmp_path, server, monkeypatch):
    repo = _repo(tmp_path, {g: {"version": "10.3.0", "compute_capability": "sm87"}
                            for g in ("image_encoder", "fusion_head")})
    fake_nvidia_smi(tmp_path, monkeypatch, compute_cap="9.0", name="NVIDIA H100")  # the same plans, another GPU
    with pytest.raises(ServingError, match=re.escape("the plans of fusion_head, image_encoder were built for sm87 "
                                                     "and this machine's GPUs are sm90")):
        check_plan_versions(repo, server)


def test_what_cannot_be_told_goes_to_the_log(tmp_path, server, monkeypatch):
    lines = []
    repo = _repo(tmp_path, {"fusion_head": {"version": "10.3.0"}})  # a router.json from before the architecture
    check_plan_versions(repo, server, log=lines.append)
    assert len(lines) == 1 and "records no GPU architecture for the plans" in lines[0]
    no_nvidia_smi(tmp_path, monkeypatch)
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    monkeypatch.setattr(tensorrt_env, "LIB_DIRS", ())
    lines.clear()
    assert check_plan_versions(repo, server, log=lines.append) is None
    assert lines[0].startswith("could not tell the server's TensorRT version (libtriton_tensorrt.so links "
                               "libnvinfer.so.10, found on neither") and lines[0].endswith("built with TensorRT 10.3.0")
    assert lines[1].startswith("could not tell this machine's GPU architecture (nvidia-smi)")


def test_a_server_without_a_tensorrt_backend_is_refused(tmp_path, server):
    repo = _repo(tmp_path, {"fusion_head": {"version": "10.3.0", "compute_capability": "sm87"}})
    with pytest.raises(ServingError, match="bundled by nvidia-pytriton has no tensorrt backend"):
        check_plan_versions(repo, None)
    with pytest.raises(ServingError, match="have no tensorrt backend for the plans"):
        check_plan_versions(repo, server, backend_directory=tmp_path / "empty")
    assert check_plan_versions(_repo(tmp_path / "py", {}), None) is None  # no plans, nothing to check

