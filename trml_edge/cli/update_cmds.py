"""`trml-edge triton update | rollback | versions`: a running server moved to a new bundle and back
(trml_edge.serving.update)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from trml_edge.cli.serve_cmds import triton_app

URL_HELP = "the server's HTTP endpoint, HOST:PORT (as `serve` printed it)"
TOKEN_HELP = "the admin token file that `trml-edge serve --admin-token-file` wrote"
LOAD_TIMEOUT_HELP = ("seconds one model's load may take (its instances' initialize and warm-up); past it the "
                     "processes the load started are ended, and the load is tried again (--load-attempts)")
LOAD_ATTEMPTS_HELP = "tries of a load that passes --load-timeout before the switch fails (an update then rolls back)"


def _log(line: str) -> None:
    typer.echo(f"{time.strftime('%H:%M:%S')} {line}", err=True)


def _exit_on(e) -> None:
    from trml_edge.serving.update import RolledBack, UpdateRefused

    what = "refused" if isinstance(e, UpdateRefused) else "rolled back" if isinstance(e, RolledBack) else "failed"
    typer.echo(f"Error: update {what}: {e}", err=True)
    raise typer.Exit(3 if isinstance(e, RolledBack) else 2)


@triton_app.command("update")
def update(
    repo: Path = typer.Argument(..., help="the repository `serve` runs"),
    bundle: Path = typer.Argument(..., help="the new export bundle"),
    url: str = typer.Option("127.0.0.1:8000", help=URL_HELP),
    admin_token_file: Path = typer.Option(..., help=TOKEN_HELP),
    probation: float = typer.Option(30.0, help="seconds of golden requests after the switch; a failure rolls back"),
    allow_contract_change: bool = typer.Option(False, "--allow-contract-change",
                                               help="accept a new task or number of classes (clients see it)"),
    golden: Optional[Path] = typer.Option(None, help="expected answers (JSON of python -m trml_edge.serving.golden) "
                                                     "instead of the new runtime's"),
    tolerance: float = typer.Option(1e-4, help="golden answers: absolute (plus the same relative) difference "
                                                "allowed; widen it for TensorRT engines"),
    no_memory_check: bool = typer.Option(False, "--no-memory-check", help="skip the check that both versions fit"),
    load_timeout: float = typer.Option(300.0, min=1.0, help=LOAD_TIMEOUT_HELP),
    load_attempts: int = typer.Option(2, min=1, help=LOAD_ATTEMPTS_HELP),
) -> None:
    """Move the server running REPO to BUNDLE with no failed request: check the bundle before the server is
    touched, stage it as a new version, switch every router at once, watch it for --probation seconds, then
    commit, or roll back to the old version. Exit status: 0 the new bundle serves, 2 refused (nothing changed),
    3 rolled back (the old bundle serves). docs/serving.md, "Updating a running server"."""
    from trml_edge.errors import TrmlEdgeError
    from trml_edge.serving.update import UpdateConfig
    from trml_edge.serving.update import update as run_update

    cfg = UpdateConfig(repo=repo, bundle=bundle, url=url, admin_token_file=admin_token_file, probation_s=probation,
                       allow_contract_change=allow_contract_change, golden=golden, tolerance=tolerance,
                       memory_check=not no_memory_check, load_timeout_s=load_timeout, load_attempts=load_attempts,
                       log=_log)
    t0 = time.monotonic()
    try:
        version = run_update(cfg)
    except TrmlEdgeError as e:
        _exit_on(e)
    typer.echo(f"updated: version {version} ({bundle}) serves, in {time.monotonic() - t0:.1f} s")


@triton_app.command("rollback")
def rollback(
    repo: Path = typer.Argument(..., help="the repository `serve` runs"),
    url: str = typer.Option("127.0.0.1:8000", help=URL_HELP),
    admin_token_file: Path = typer.Option(..., help=TOKEN_HELP),
    probation: float = typer.Option(5.0, help="seconds of golden requests after switching back"),
    load_timeout: float = typer.Option(300.0, min=1.0, help=LOAD_TIMEOUT_HELP),
    load_attempts: int = typer.Option(2, min=1, help=LOAD_ATTEMPTS_HELP),
) -> None:
    """Switch the server back to the version that served before this one (kept on disk), the way an update
    switches: no failed request. Exit status 0 when it serves, 2 when there is none to go back to."""
    from trml_edge.errors import TrmlEdgeError
    from trml_edge.serving.update import UpdateConfig
    from trml_edge.serving.update import rollback as run_rollback

    cfg = UpdateConfig(repo=repo, bundle=None, url=url, admin_token_file=admin_token_file, probation_s=probation,
                       load_timeout_s=load_timeout, load_attempts=load_attempts, log=_log)
    try:
        version = run_rollback(cfg)
    except TrmlEdgeError as e:
        _exit_on(e)
    typer.echo(f"rolled back: version {version} serves")


@triton_app.command("versions")
def versions(
    repo: Path = typer.Argument(..., help="a repository from `trml-edge triton build`"),
    url: Optional[str] = typer.Option(None, help=f"{URL_HELP}: also say which version the server has loaded"),
    as_json: bool = typer.Option(False, "--json", help="one JSON list"),
) -> None:
    """The repository's versions: which serves, which are kept for a rollback, which were rolled back."""
    from trml_edge.serving.update import describe

    rows = describe(repo, url)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        flags = ("SERVING" if r["serving"] else r["state"]) + ("" if r["on_disk"] else ", not on disk")
        if r["loaded"] is not None:
            flags += ", loaded" if r["loaded"] else ", not loaded"
        why = f"  ({r['why']})" if r.get("why") else ""
        typer.echo(f"v{r['version']:<3} {flags:<28} {r['bundle']}  sha256 {str(r['manifest_sha256'])[:12]}  "
                   f"staged {r['staged']}{why}")
