"""Secure by default: a served repository's admin APIs refuse anonymous clients, on HTTP and gRPC, with the attack
itself tried (a model upload whose code would write a file), while what clients need stays open."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from export_fixtures import bundle
from serving_fixtures import repository, server
from tls_fixtures import make_pki
from trml_edge.errors import ConfigError
from trml_edge.serving.security import (ADMIN_HEADER, GRPC_ADMIN_HEADER, GrpcTLS, ServerSecurity, exposure_notes,
                                        restriction_flags, write_token_file)

CLI = [sys.executable, "-m", "trml_edge"]


def _evil(marker: Path) -> tuple[str, bytes]:
    """(config JSON, model.py) of a Python model whose initialize writes ``marker``: the code an attacker uploads."""
    config = json.dumps({"name": "evil", "backend": "python", "max_batch_size": 0,
                         "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
                         "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}]})
    code = (f"class TritonPythonModel:\n    def initialize(self, args):\n"
            f"        open({str(marker)!r}, 'w').write('code ran in the server')\n\n"
            "    def execute(self, requests):\n        return []\n").encode()
    return config, code


def _http(url: str, path: str, body=None, headers=None) -> tuple[int, str]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(f"http://{url}{path}", data=data, method="GET" if data is None else "POST",
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _load_with_file_body(config: str, code: bytes) -> dict:
    return {"parameters": {"config": config, "file:1/model.py": base64.b64encode(code).decode()}}


def _grpc_admin_calls(c, config: str, code: bytes) -> dict:
    """Every restricted gRPC call, made anonymously: name -> a callable."""
    return {
        "load with an uploaded model.py": lambda: c.load_model("evil", config=config, files={"file:1/model.py": code}),
        "unload": lambda: c.unload_model("trml"),
        "repository index": lambda: c.get_model_repository_index(),
        "shared-memory registration": lambda: c.register_system_shared_memory("r", "/trml_edge_test", 64),
        "shared-memory status": lambda: c.get_system_shared_memory_status(),
        "trace settings": lambda: c.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}),
        "log settings": lambda: c.update_log_settings(settings={"log_verbose_level": 1}),
    }


def test_anonymous_admin_calls_are_refused_and_client_apis_stay_open(tmp_path):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from trml_edge.runtime import Pipeline
    from trml_edge.serving.client import TritonClient

    srv = server()
    marker = tmp_path / "marker"
    config, code = _evil(marker)
    anonymous = {
        "load with an uploaded model.py": ("/v2/repository/models/evil/load", _load_with_file_body(config, code)),
        "unload": ("/v2/repository/models/trml/unload", {}),
        "repository index": ("/v2/repository/index", {}),
        "shared-memory registration": ("/v2/systemsharedmemory/region/r/register",
                                       {"key": "/trml_edge_test", "offset": 0, "byte_size": 64}),
        "shared-memory status": ("/v2/systemsharedmemory/status", None),
        "trace settings": ("/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]}),
        "log settings": ("/v2/logging", {"log_verbose_level": 1}),
    }
    bodies = []
    for what, (path, body) in anonymous.items():
        status, text = _http(srv.url, path, body)
        assert status == 403 and "restricted" in text, (what, status, text)
        bodies.append(text)
    # a wrong token is no better than none
    status, _ = _http(srv.url, "/v2/repository/index", {}, {ADMIN_HEADER: "guess"})
    assert status == 403

    g = grpcclient.InferenceServerClient(srv.grpc_url)
    for what, call in _grpc_admin_calls(g, config, code).items():
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() == "StatusCode.UNAVAILABLE" and "restricted" in e.value.message(), what
        bodies.append(e.value.message())
    time.sleep(0.5)  # a load, had it been accepted, runs initialize at once
    assert not marker.exists(), "an anonymous client ran code in the server"

    # what clients need: health, metadata, model config, statistics and inference, on both protocols
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/trml", "/v2/models/trml/ready",
                 "/v2/models/trml/config", "/v2/models/trml/stats"):
        assert _http(srv.url, path)[0] == 200, path
    assert g.is_server_ready() and g.is_model_ready("trml")
    assert g.get_model_config("trml").config.name == "trml"
    assert g.get_model_metadata("trml").name == "trml"
    assert g.get_inference_statistics("trml").model_stats[0].name == "trml"
    want = Pipeline(bundle("fp32")).predict(None, "a calm and friendly review").output
    for url in (srv.url, f"grpc://{srv.grpc_url}"):
        got = TritonClient(url).infer(None, "a calm and friendly review").output
        assert np.allclose(got, want, atol=1e-5), (url, got, want)

    # the supervisor's own calls carry the secret
    status, body = srv.request("/v2/repository/index", b"{}")
    assert status == 200 and {"trml", "trml_stream"} <= {m["name"] for m in json.loads(body)}
    token = srv.admin_headers()[ADMIN_HEADER]
    assert len(token) >= 40
    assert all(token not in b for b in bodies), "a refusal leaked the secret"
    assert token not in srv.log_file.read_text(errors="replace")
    assert not any(token.encode() in p.read_bytes() for p in repository().rglob("*") if p.is_file())


def _trivial_repo(root: Path) -> Path:
    """A repository of one Python model that echoes its input."""
    (root / "echo" / "1").mkdir(parents=True)
    (root / "echo" / "config.pbtxt").write_text(
        'name: "echo"\nbackend: "python"\nmax_batch_size: 0\n'
        'input { name: "X" data_type: TYPE_FP32 dims: [1] }\noutput { name: "Y" data_type: TYPE_FP32 dims: [1] }\n'
        'instance_group { count: 1 kind: KIND_CPU }\n')
    (root / "echo" / "1" / "model.py").write_text(
        "import triton_python_backend_utils as pb_utils\n\n\nclass TritonPythonModel:\n"
        "    def execute(self, requests):\n"
        "        return [pb_utils.InferenceResponse([pb_utils.Tensor('Y', pb_utils.get_input_tensor_by_name("
        "r, 'X').as_numpy())]) for r in requests]\n")
    return root


def test_open_admin_api_lets_the_upload_run_code(tmp_path):
    """The attack the default refuses is real: with --open-admin-api the same upload runs its code."""
    from trml_edge.serving.server import TritonServer

    marker = tmp_path / "marker"
    config, code = _evil(marker)
    repo = _trivial_repo(tmp_path / "repo")
    with TritonServer(repo, supervise=True, security=ServerSecurity(open_admin_api=True)) as srv:
        assert srv.admin_headers() == {}
        argv = Path(f"/proc/{srv.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert not any(a.startswith(b"--http-restricted-api") for a in argv)
        status, text = _http(srv.url, "/v2/repository/models/evil/load", _load_with_file_body(config, code))
        assert status == 200, text
    assert marker.read_text() == "code ran in the server"


def _ports(line: str) -> tuple[int, int]:
    m = re.search(r"HTTP http://[^:]+:(\d+)\s+gRPC grpcs://[^:]+:(\d+) \(TLS\)", line)
    assert m, line
    return int(m.group(1)), int(m.group(2))


def test_serve_token_file_and_mutual_tls(tmp_path):
    """`trml-edge serve` beyond loopback: the admin token only in the 0600 file the user asked for (and working
    there, on HTTP and gRPC), gRPC only over mutual TLS, and the exposure spelt out in one line."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    pki = make_pki(tmp_path / "pki")
    token_file = tmp_path / "admin.token"
    err_path = tmp_path / "serve.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([*CLI, "serve", str(repository()), "--host", "0.0.0.0", "--http-port", "0",
                                 "--grpc-port", "0", "--metrics-port", "0", "--admin-token-file", str(token_file),
                                 "--grpc-tls-cert", str(pki["server_cert"]), "--grpc-tls-key", str(pki["server_key"]),
                                 "--grpc-tls-client-ca", str(pki["ca"])],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    out_lines = []
    try:
        deadline = time.monotonic() + 300
        while not out_lines or "tritonserver ready" not in out_lines[-1]:
            assert time.monotonic() < deadline and proc.poll() is None, err_path.read_text()
            out_lines.append(proc.stdout.readline())
        http_port, grpc_port = _ports(out_lines[-1])
        log_file = Path(re.search(r"\(log (.+)\)", out_lines[-1]).group(1))
        out_lines.append(proc.stdout.readline())
        assert "restricted to this run's token" in out_lines[-1] and str(token_file) in out_lines[-1]
        url, grpc_url = f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"

        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 40
        # explicit model control (the supervisor's): here an accepted upload would run at once
        marker = tmp_path / "marker"
        status, _ = _http(url, "/v2/repository/models/evil/load", _load_with_file_body(*_evil(marker)))
        assert status == 403
        assert _http(url, "/v2/repository/models/trml_stream/unload", {})[0] == 403
        # with the token from the file, a user's tool may manage models; the supervisor leaves an unloaded one be
        status, text = _http(url, "/v2/repository/models/trml_stream/unload", {}, {ADMIN_HEADER: token})
        assert status == 200, text
        time.sleep(2.0)
        assert _http(url, "/v2/models/trml_stream/ready")[0] != 200
        assert "model trml_stream: its stub process ended with an unload" in err_path.read_text()
        status, text = _http(url, "/v2/repository/models/trml_stream/load", {}, {ADMIN_HEADER: token})
        assert status == 200, text
        assert _http(url, "/v2/models/trml_stream/ready")[0] == 200

        tls = {"root_certificates": str(pki["ca"]), "private_key": str(pki["client_key"]),
               "certificate_chain": str(pki["client_cert"])}
        g = grpcclient.InferenceServerClient(grpc_url, ssl=True, **tls)
        with pytest.raises(InferenceServerException, match="restricted"):
            g.get_model_repository_index()
        index = g.get_model_repository_index(headers={GRPC_ADMIN_HEADER: token})
        assert "trml" in {m.name for m in index.models}

        def client(*args):
            return subprocess.run([*CLI, "client", *args, "--text", "a calm and friendly review"],
                                  capture_output=True, text=True, timeout=120)

        plain_http = client(url)
        tls_ok = client(f"grpcs://{grpc_url}", "--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client_cert"]),
                        "--tls-key", str(pki["client_key"]))
        assert plain_http.returncode == 0 and tls_ok.returncode == 0, (plain_http.stderr, tls_ok.stderr)
        assert np.allclose(json.loads(tls_ok.stdout)["output"], json.loads(plain_http.stdout)["output"], atol=1e-6)
        refused = {"no client certificate": client(f"grpcs://{grpc_url}", "--tls-ca", str(pki["ca"])),
                   "a CA that did not sign the server's": client(f"grpcs://{grpc_url}", "--tls-ca",
                                                                 str(pki["other_ca"]), "--tls-cert",
                                                                 str(pki["client_cert"]), "--tls-key",
                                                                 str(pki["client_key"])),
                   "plaintext gRPC": client(f"grpc://{grpc_url}")}
        for what, res in refused.items():
            lines = res.stderr.strip().splitlines()
            assert res.returncode == 2 and len(lines) == 1 and "could not reach the server" in lines[0], (what, res)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, err_path.read_text()
    stdout, stderr = "".join(out_lines) + rest, err_path.read_text()
    assert re.search(r"listening on 0\.0\.0\.0 \(HTTP \d+, gRPC \d+, metrics \d+\): inference, health, metadata, "
                     r"model config and statistics are open to anyone who can reach these ports; the admin APIs are "
                     r"restricted to the per-run admin token; gRPC is TLS-encrypted and needs a client certificate",
                     stderr), stderr
    for where, text in (("stdout", stdout), ("stderr", stderr), ("the server log", log_file.read_text())):
        assert token not in text, f"the admin token is in {where}"
    assert not token_file.exists(), "the dead run's token file was left behind"
    assert not marker.exists(), "an anonymous client ran code in the server"


# --- without a server ---

def test_restriction_covers_the_admin_groups_on_both_protocols():
    flags = restriction_flags("T0K3N")
    assert flags == ["--http-restricted-api=model-repository,shared-memory,trace,logging:trml-admin-key=T0K3N",
                     "--grpc-restricted-protocol=model-repository,shared-memory,trace,logging:trml-admin-key=T0K3N"]


def test_token_file_is_private_and_atomic(tmp_path):
    path = tmp_path / "token"
    path.write_text("an older run's token\n")
    old = os.umask(0)  # even with a permissive umask, the file is never readable by others
    try:
        write_token_file(path, "s3cret")
    finally:
        os.umask(old)
    assert path.read_text() == "s3cret\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["token"]  # no temporary file left


def test_security_options_are_checked_before_the_server_starts(tmp_path):
    pki = make_pki(tmp_path / "pki")
    with pytest.raises(ConfigError, match="contradict"):
        ServerSecurity(open_admin_api=True, admin_token_file=tmp_path / "t").validate()
    with pytest.raises(ConfigError, match="does not exist; create it"):
        ServerSecurity(admin_token_file=tmp_path / "nowhere" / "t").validate()
    with pytest.raises(ConfigError, match=r"--grpc-tls-key .*missing\.key: no such file"):
        ServerSecurity(grpc_tls=GrpcTLS(pki["server_cert"], tmp_path / "missing.key")).validate()
    one_way = GrpcTLS(pki["server_cert"], pki["server_key"]).flags()
    assert one_way[:2] == ["--grpc-use-ssl", "true"] and "--grpc-root-cert" not in one_way
    mutual = GrpcTLS(pki["server_cert"], pki["server_key"], pki["ca"]).flags()
    assert mutual[:2] == ["--grpc-use-ssl-mutual", "true"] and mutual[-2:] == ["--grpc-root-cert", str(pki["ca"])]
    res = subprocess.run([*CLI, "serve", str(tmp_path), "--grpc-tls-cert", str(pki["server_cert"])],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "needs --grpc-tls-cert and --grpc-tls-key together" in res.stderr


def test_exposure_notes():
    ports = {"HTTP": 8000, "gRPC": 8001, "metrics": 8002}
    assert exposure_notes("127.0.0.1", ports, ServerSecurity()) == []
    assert exposure_notes("localhost", ports, ServerSecurity()) == []
    assert exposure_notes("::1", ports, ServerSecurity()) == []
    (line,) = exposure_notes("192.168.1.20", ports, ServerSecurity())
    assert "open to anyone who can reach these ports" in line and "restricted to the per-run admin token" in line
    assert "unencrypted" in line and "docs/serving.md" in line
    warning, line = exposure_notes("0.0.0.0", ports, ServerSecurity(open_admin_api=True))
    assert warning.startswith("WARNING: --open-admin-api") and "runs its code on this machine" in warning
    assert "the admin APIs are open to them too" in line


def test_client_tls_arguments_are_checked(tmp_path):
    from trml_edge.errors import ServingError
    from trml_edge.serving.client import TritonClient

    with pytest.raises(ServingError, match="not a grpcs:// URL"):
        TritonClient("127.0.0.1:8000", tls_ca=tmp_path / "ca.pem")
    with pytest.raises(ServingError, match="--tls-cert and --tls-key together"):
        TritonClient("grpcs://127.0.0.1:8001", tls_cert=tmp_path / "c.pem")
    with pytest.raises(ServingError, match=r"--tls-ca .*ca\.pem: No such file"):
        TritonClient("grpcs://127.0.0.1:8001", tls_ca=tmp_path / "ca.pem")
