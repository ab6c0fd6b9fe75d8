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
        "CUDA shared-memory registration": lambda: c.register_cuda_shared_memory("r", b"h" * 64, 0, 64),
        "CUDA shared-memory status": lambda: c.get_cuda_shared_memory_status(),
        "CUDA shared-memory unregistration": lambda: c.unregister_cuda_shared_memory("r"),
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
        "CUDA shared-memory registration": ("/v2/cudasharedmemory/region/r/register",
                                            {"raw_handle": {"b64": base64.b64encode(b"h" * 64).decode()},
                                             "device_id": 0, "byte_size": 64}),
        "CUDA shared-memory status": ("/v2/cudasharedmemory/status", None),
        "CUDA shared-memory unregistration": ("/v2/cudasharedmemory/region/r/unregister", {}),
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
    # the server never took the upload: no such model in its repository index (asked with the token)
    status, body = srv.request("/v2/repository/index", b"{}")
    assert status == 200 and "evil" not in {m["name"] for m in json.loads(body)}
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
    m = re.search(r"HTTP http://127\.0\.0\.1:(\d+)\s+gRPC grpcs://127\.0\.0\.2:(\d+) \(TLS\)", line)
    assert m, line
    return int(m.group(1)), int(m.group(2))


def _listening(port: int) -> set[str]:
    """The addresses a TCP socket listens on at ``port``, read from the kernel (/proc/net/tcp and tcp6), not from
    us; an IPv4-mapped IPv6 address (gRPC's sockets) reads as its IPv4 address."""
    import ipaddress

    out = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state != "0A" or int(p, 16) != port:  # 0A: LISTEN
                continue
            raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, len(addr), 8))  # host-order words
            ip = ipaddress.ip_address(raw)
            out.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return out


def _refused(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=5).close()
        return False
    except ConnectionRefusedError:
        return True


def _wait_for(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.05)


def test_serve_token_file_and_mutual_tls_with_http_kept_on_loopback(tmp_path):
    """`trml-edge serve` with gRPC on another address and mutual TLS (127.0.0.2 stands for a network interface, so
    the test opens nothing beyond the box): the admin token only in the 0600 file the user asked for (and working
    there, on HTTP and gRPC), gRPC only over mutual TLS, and HTTP and metrics, which have no TLS, left on
    127.0.0.1: the kernel shows where each endpoint listens, and a plaintext HTTP client finds nothing on gRPC's
    address."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    pki = make_pki(tmp_path / "pki")
    token_file = tmp_path / "admin.token"
    err_path = tmp_path / "serve.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([*CLI, "serve", str(repository()), "--host", "127.0.0.2", "--http-port", "0",
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
        metrics_port = int(re.search(r"metrics http://127\.0\.0\.1:(\d+)/metrics", out_lines[-1]).group(1))
        log_file = Path(re.search(r"\(log (.+)\)", out_lines[-1]).group(1))
        out_lines.append(proc.stdout.readline())
        assert "restricted to this run's token" in out_lines[-1] and str(token_file) in out_lines[-1]
        url, grpc_url = f"127.0.0.1:{http_port}", f"127.0.0.2:{grpc_port}"
        # where each endpoint listens, as the kernel has it
        assert _listening(http_port) == {"127.0.0.1"} and _listening(metrics_port) == {"127.0.0.1"}
        assert _listening(grpc_port) == {"127.0.0.2"}
        assert _refused("127.0.0.2", http_port) and _refused("127.0.0.2", metrics_port)
        assert _http(url, "/v2/health/ready")[0] == 200

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
        _wait_for(lambda: "model trml_stream: its stub process ended with an unload" in err_path.read_text(), 30,
                  "the supervisor to see the unload for what it is")
        assert _http(url, "/v2/models/trml_stream/ready")[0] != 200
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
                   "plaintext gRPC": client(f"grpc://{grpc_url}"),
                   "plaintext HTTP on gRPC's address": client(f"127.0.0.2:{http_port}")}
        for what, res in refused.items():
            lines = res.stderr.strip().splitlines()
            assert res.returncode == 2 and len(lines) == 1, (what, res)
            assert "could not reach the server" in lines[0] or "failed" in lines[0], (what, lines)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, err_path.read_text()
    stdout, stderr = "".join(out_lines) + rest, err_path.read_text()
    assert "admin token: on tritonserver's command line" in stderr  # serve says who on this box can read it
    for where, text in (("stdout", stdout), ("stderr", stderr), ("the server log", log_file.read_text())):
        assert token not in text, f"the admin token is in {where}"
    assert not token_file.exists(), "the dead run's token file was left behind"
    assert not marker.exists(), "an anonymous client ran code in the server"


def _as_nobody(*argv: str, private_proc: bool = False) -> subprocess.CompletedProcess:
    """Run ``argv`` as the unprivileged account ``nobody``; with ``private_proc``, in a mount namespace of its own
    whose /proc is mounted hidepid=invisible (the hardening docs/serving.md advises), the rest of the box as is."""
    drop = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *argv]
    if not private_proc:
        return subprocess.run(drop, capture_output=True, timeout=60)
    script = 'mount -t proc -o hidepid=invisible proc /proc && exec "$@"'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", *drop],
                          capture_output=True, timeout=60)


def test_what_another_local_account_sees_of_the_admin_token():
    """The admin token is on tritonserver's command line (the one place Triton reads it). Another local account
    (``nobody``) reads it there unless /proc hides other accounts' processes (hidepid), and serve's line says which
    holds on this box; with /proc mounted hidepid=invisible the same account finds no such process."""
    import shutil

    from trml_edge.serving.security import proc_hides_processes, token_visibility_note

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to act as another local account")
    srv = server()
    token = srv.admin_headers()[ADMIN_HEADER]
    res = _as_nobody("cat", f"/proc/{srv.proc.pid}/cmdline")
    hidden, how = proc_hides_processes()
    assert (token.encode() in res.stdout) is (not hidden), (hidden, how, res.returncode)
    note = token_visibility_note(ServerSecurity())
    assert ("every local account can read" in note) is (not hidden) and how in note
    if shutil.which("unshare") is None:
        return
    probe = (f"from trml_edge.serving.security import proc_hides_processes as p; import sys; h, how = p(); "
             f"sys.stdout.write(how + '|' + open('/proc/{srv.proc.pid}/cmdline', 'rb').read().decode(errors='replace'))")
    hardened = _as_nobody(sys.executable, "-c", probe, private_proc=True)
    if b"mount:" in hardened.stderr or b"unshare:" in hardened.stderr:
        pytest.skip(f"no private /proc mount here: {hardened.stderr.decode(errors='replace').strip()}")
    assert hardened.returncode != 0 and b"No such file" in hardened.stderr, hardened  # the process is invisible
    assert token.encode() not in hardened.stdout + hardened.stderr
    mounts = _as_nobody(sys.executable, "-c", "from trml_edge.serving.security import proc_hides_processes as p; "
                        "print(p())", private_proc=True)
    assert mounts.stdout.decode().strip() == "(True, 'hidepid=invisible')", mounts


# --- without a server ---

def test_restriction_covers_the_admin_groups_on_both_protocols():
    flags = restriction_flags("T0K3N")
    assert flags == ["--http-restricted-api=model-repository,shared-memory,trace,logging:trml-admin-key=T0K3N",
                     "--grpc-restricted-protocol=model-repository,shared-memory,trace,logging:trml-admin-key=T0K3N"]


def test_token_file_is_private_and_atomic(tmp_path):
    """A reader that reads the file while serve rewrites it sees the old whole token or the new whole token, never a
    part or an empty file, and never a mode other than 0600; a link planted at the temporary path is not followed;
    a write that fails leaves the old file and no temporary file."""
    import threading

    path = tmp_path / "token"
    tokens = ["A" * 4096, "B" * 4096]  # long enough that a non-atomic write would be caught half done
    write_token_file(path, tokens[0])
    seen, bad, stop = set(), [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                text, mode = path.read_text(), stat.S_IMODE(path.stat().st_mode)
            except FileNotFoundError:
                bad.append("missing")
                continue
            seen.add(text)
            if text.strip() not in tokens or mode != 0o600:
                bad.append((len(text), oct(mode)))

    old = os.umask(0)  # even with a permissive umask, the file is never readable by others
    th = threading.Thread(target=reader)
    th.start()
    try:
        for i in range(400):
            write_token_file(path, tokens[i % 2])
    finally:
        stop.set()
        th.join()
        os.umask(old)
    assert not bad, bad[:5]
    assert seen == {t + "\n" for t in tokens}  # the reader did see both generations
    assert [p.name for p in tmp_path.iterdir()] == ["token"]  # no temporary file left
    # an attacker's link at the temporary path: refused, not followed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched")
    os.symlink(elsewhere, path.with_name(f".{path.name}.{os.getpid()}.tmp"))
    with pytest.raises(FileExistsError):
        write_token_file(path, "C" * 64)
    assert elsewhere.read_text() == "untouched" and path.read_text() == tokens[1] + "\n"
    os.unlink(path.with_name(f".{path.name}.{os.getpid()}.tmp"))
    # a write that fails half way (the target is now a folder): the temporary file is gone
    path.unlink()
    path.mkdir()
    with pytest.raises(OSError):
        write_token_file(path, "D" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "token"]


def test_token_file_problems_are_one_line_before_triton_starts(tmp_path):
    from trml_edge.serving.security import check_token_file

    folder = tmp_path / "a-folder"
    folder.mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target")
    theirs = tmp_path / "theirs"
    theirs.write_text("a token of someone else's run\n")
    cases = {folder: "is a folder; give the path of a file", link: "is a symbolic link",
             tmp_path / "nowhere" / "t": "does not exist; create it", Path("/proc/trml-edge-token"): "cannot write in /proc"}
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
        cases[theirs] = "belongs to another user (uid 65534)"
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_token_file(path)
    mine = tmp_path / "mine"
    mine.write_text("a dead run's token\n")  # our own leftover: overwritten when the server is ready
    check_token_file(mine)
    # through the CLI: exit 2 at once, with the path and the reason; no server was started
    t0 = time.monotonic()
    res = subprocess.run([*CLI, "serve", str(repository()), "--http-port", "0", "--grpc-port", "0",
                          "--metrics-port", "0", "--admin-token-file", str(folder)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "tritonserver ready" not in res.stdout, res
    (line,) = res.stderr.strip().splitlines()
    assert str(folder) in line and "is a folder" in line, line
    assert time.monotonic() - t0 < 60  # not the 300 s wait for a readiness that never came


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
    # the open admin API beyond loopback is code execution for the network: refused without the second flag
    lan = {"http": "0.0.0.0", "grpc": "0.0.0.0", "metrics": "127.0.0.1"}
    with pytest.raises(ConfigError, match="--open-admin-api on 0.0.0.0 would let anyone"):
        ServerSecurity(open_admin_api=True).validate(lan)
    ServerSecurity(open_admin_api=True, open_admin_beyond_loopback=True).validate(lan)
    ServerSecurity(open_admin_api=True).validate({"http": "127.0.0.1", "grpc": "::1", "metrics": "localhost"})
    res = subprocess.run([*CLI, "serve", str(repository()), "--host", "0.0.0.0", "--open-admin-api"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--open-admin-api-beyond-loopback" in res.stderr, res


def test_each_endpoint_binds_apart_and_gRPC_TLS_keeps_plaintext_on_loopback():
    from trml_edge.serving.security import endpoint_hosts

    assert endpoint_hosts() == {"http": "127.0.0.1", "grpc": "127.0.0.1", "metrics": "127.0.0.1"}
    assert endpoint_hosts("0.0.0.0") == {"http": "0.0.0.0", "grpc": "0.0.0.0", "metrics": "0.0.0.0"}
    assert endpoint_hosts("0.0.0.0", grpc_tls=True) == {"http": "127.0.0.1", "grpc": "0.0.0.0", "metrics": "127.0.0.1"}
    assert endpoint_hosts("0.0.0.0", http_host="10.0.0.5", grpc_tls=True) == {
        "http": "10.0.0.5", "grpc": "0.0.0.0", "metrics": "127.0.0.1"}


def test_exposure_notes():
    ports = {"http": 8000, "grpc": 8001, "metrics": 8002}
    every = {e: "0.0.0.0" for e in ports}
    loop = {e: "127.0.0.1" for e in ports}
    assert exposure_notes(loop, ports, ServerSecurity()) == []
    assert exposure_notes({e: "localhost" for e in ports}, ports, ServerSecurity()) == []
    assert exposure_notes({e: "::1" for e in ports}, ports, ServerSecurity()) == []
    notes = exposure_notes(every, ports, ServerSecurity())
    assert "open to anyone who can reach these ports" in notes[0] and "restricted to the per-run admin token" in notes[0]
    assert "HTTP 0.0.0.0:8000, gRPC 0.0.0.0:8001, metrics 0.0.0.0:8002" in notes[0]
    assert any(n.startswith("WARNING: gRPC is plaintext") for n in notes)
    assert any(n.startswith("WARNING: HTTP on 0.0.0.0:8000 is plaintext") and "TLS proxy" in n for n in notes)
    assert any(n.startswith("WARNING: metrics on 0.0.0.0:8002 are plaintext") for n in notes)
    # the hardened recipe: gRPC beyond loopback with mutual TLS, HTTP and metrics kept home, and said so
    pki_less = GrpcTLS(Path("c.pem"), Path("k.pem"), Path("ca.pem"))
    hardened = exposure_notes({"http": "127.0.0.1", "grpc": "0.0.0.0", "metrics": "127.0.0.1"}, ports,
                              ServerSecurity(grpc_tls=pki_less))
    assert "gRPC 0.0.0.0:8001" in hardened[0] and "HTTP" not in hardened[0]
    assert "gRPC is TLS-encrypted and answers only clients with a certificate the CA signed" in hardened
    assert not any("plaintext" in n for n in hardened)
    assert hardened[-1].startswith("HTTP and metrics stay on loopback because gRPC has TLS")
    # HTTP opened by name next to gRPC TLS: the plaintext warning names it
    opened = exposure_notes({"http": "10.0.0.5", "grpc": "0.0.0.0", "metrics": "127.0.0.1"}, ports,
                            ServerSecurity(grpc_tls=pki_less))
    assert any(n.startswith("WARNING: HTTP on 10.0.0.5:8000 is plaintext") for n in opened)
    warning, line, *_ = exposure_notes(every, ports, ServerSecurity(open_admin_api=True))
    assert warning.startswith("WARNING: --open-admin-api") and "runs its code on this machine" in warning
    assert "the admin APIs are open to them too" in line


def test_proc_mount_options_are_read_for_hidepid():
    from trml_edge.serving.security import proc_hides_processes

    assert proc_hides_processes("proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n") == (False, "without hidepid")
    assert proc_hides_processes("proc /proc proc rw,relatime,hidepid=2 0 0\n") == (True, "hidepid=invisible")
    assert proc_hides_processes("proc /proc proc rw,hidepid=invisible 0 0\n"
                                "proc /proc proc rw,relatime 0 0\n") == (False, "without hidepid")  # the last mount
    hidden, how = proc_hides_processes("proc /proc proc rw,hidepid=noaccess,gid=27 0 0\n")
    assert hidden and "gid=27" in how
    assert proc_hides_processes("sysfs /sys sysfs rw 0 0\n")[0] is False


def test_client_tls_arguments_are_checked(tmp_path):
    from trml_edge.errors import ServingError
    from trml_edge.serving.client import TritonClient

    with pytest.raises(ServingError, match="not a grpcs:// URL"):
        TritonClient("127.0.0.1:8000", tls_ca=tmp_path / "ca.pem")
    with pytest.raises(ServingError, match="--tls-cert and --tls-key together"):
        TritonClient("grpcs://127.0.0.1:8001", tls_cert=tmp_path / "c.pem")
    with pytest.raises(ServingError, match=r"--tls-ca .*ca\.pem: No such file"):
        TritonClient("grpcs://127.0.0.1:8001", tls_ca=tmp_path / "ca.pem")
