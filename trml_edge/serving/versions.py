"""The versions of a model repository: which bundle each version holds, which one serves, and what the files on
disk say about an update that did not finish.

``REPO/trml_versions.json`` is the one record (written whole to a temporary file, then renamed)::

    {"format": "trml-edge-repository-versions", "format_version": 1, "layout": "fused" | "ensemble",
     "serving": 2,                                   # the version `serve` starts and the update committed
     "settings": {...},                              # the RepoConfig settings the repository was built with
     "rollbacks": 0,                                 # probations that failed, and rollbacks asked for
     "versions": {"1": {"state": "retired", ...}, "2": {"state": "serving", "models": [...], "bundle": {...},
                  "staged": "2026-...", "committed": "2026-..."}}}

A version's ``state`` is ``staged`` (its files are in place, it has not served), ``serving``, ``retired`` (it
served before: kept for ``triton rollback``), ``rolled_back`` (it failed its probation) or ``removed``.

What a version is, per layout:

* **fused**: ``trml/N/`` and ``trml_stream/N/`` (each with its copy of the bundle), selected by the routers'
  ``version_policy: specific [N]``. Triton loads version N+1 beside N and moves requests to it once it is ready;
  requests in flight finish on N. A request is answered by one router version, so by one bundle;
* **ensemble**: the graph models and ensembles of version N >= 2 carry the suffix ``__vN``
  (``image_encoder__v2``, ``trml_complete__v2``), version 1 none; the routers' version N names its own graph
  models in ``router.json``/``stream.json``. A new version's graph models are loaded beside the old ones
  first, then the routers switch as in the fused layout: a request's router version decides every graph it
  reaches, so no answer mixes two bundles' graphs.

The routers' ``config.pbtxt`` on disk is written at a commit only (and by ``reconcile`` when ``serve`` starts), so a
crash at any point leaves the committed version to serve.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from trml_edge.errors import ServingError

STATE_FILE = "trml_versions.json"
LOCK_FILE = ".trml-update.lock"
FORMAT = "trml-edge-repository-versions"
ROUTERS = ("trml", "trml_stream")
CONFIG_COPY = "trml_config.pbtxt"  # a router version's own config (its parameters name its bundle), in its folder


def suffix(version: int) -> str:
    """The name suffix of an ensemble-layout version's graph models and ensembles (version 1: none)."""
    return "" if int(version) == 1 else f"__v{int(version)}"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def state_path(repo: Path) -> Path:
    return Path(repo) / STATE_FILE


def read_state(repo: Path) -> dict[str, Any] | None:
    """The repository's version record, or None for a repository built before versions were recorded."""
    path = state_path(repo)
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ServingError(f"{path} cannot be read ({e}); restore it from a backup, or rebuild the repository with "
                           "`trml-edge triton build`") from None
    if state.get("format") != FORMAT:
        raise ServingError(f"{path} is not a trml-edge version record (format {state.get('format')!r})")
    return state


def write_state(repo: Path, state: dict[str, Any]) -> None:
    """Write the record whole, then rename it into place: a reader sees the old record or the new one."""
    path = state_path(repo)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(state, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def initial_state(layout: str, settings: dict[str, Any], bundle: dict[str, Any], models: list[str]) -> dict:
    """The record of a repository that ``triton build`` just made: version 1 serving."""
    return {"format": FORMAT, "format_version": 1, "layout": layout, "serving": 1, "settings": settings,
            "rollbacks": 0, "versions": {"1": {"state": "serving", "bundle": bundle, "models": models,
                                              "staged": now(), "committed": now()}}}


def serving_version(repo: Path) -> int:
    """The version that serves (1 for a repository without a version record)."""
    state = read_state(repo)
    return int(state["serving"]) if state else 1


def router_dir(repo: Path, router: str = "trml", version: int | None = None) -> Path:
    """``REPO/<router>/<version>/``, of the serving version by default."""
    return Path(repo) / router / str(serving_version(repo) if version is None else version)


def serving_models(repo: Path) -> list[str] | None:
    """The models ``serve`` loads: every model of the repository except the graph models and ensembles of the
    versions that do not serve (staged, retired, rolled back); the routers load their serving version by their
    version policy. None for a repository without a version record (every model in it)."""
    state = read_state(repo)
    if state is None:
        return None
    serving = set(state["versions"][str(state["serving"])].get("models", []))
    others = {m for k, e in state["versions"].items() if int(k) != int(state["serving"]) for m in e.get("models", [])}
    return sorted(p.name for p in Path(repo).iterdir()
                  if (p / "config.pbtxt").is_file() and (p.name in serving or p.name not in others))


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def with_version_policy(config_text: str, version: int) -> str:
    """A router's config.pbtxt text that serves exactly ``version`` (``version_policy: specific``)."""
    from trml_edge.serving.configs import protobuf

    mc, text_format = protobuf()
    cfg = text_format.Parse(config_text, mc.ModelConfig())
    cfg.version_policy.Clear()
    cfg.version_policy.specific.versions.append(int(version))
    return text_format.MessageToString(cfg)


def reconcile(repo: Path) -> tuple[int | None, list[str]]:
    """What ``serve`` does before it starts Triton: the routers' configs on disk serve the committed version
    (rewritten from that version's own copy if an update stopped between its writes), and every version left
    staged by an update that did not finish is reported, never served. (serving version, notes)."""
    state = read_state(repo)
    if state is None:
        return None, []
    serving = int(state["serving"])
    notes = []
    for router in ROUTERS:
        cfg = Path(repo) / router / "config.pbtxt"
        copy = Path(repo) / router / str(serving) / CONFIG_COPY
        if not cfg.is_file():
            continue
        if not (Path(repo) / router / str(serving)).is_dir():
            raise ServingError(f"{repo}: {router}/{serving}, the version {STATE_FILE} says serves, is missing; "
                               "restore it, or rebuild the repository with `trml-edge triton build`")
        want = with_version_policy(copy.read_text(encoding="utf-8") if copy.is_file() else cfg.read_text(), serving)
        if cfg.read_text(encoding="utf-8") != want:
            write_text_atomic(cfg, want)
            notes.append(f"{router}/config.pbtxt rewritten to serve version {serving}, the committed one")
    for v, entry in sorted(state["versions"].items(), key=lambda kv: int(kv[0])):
        if entry.get("state") == "staged":
            notes.append(f"version {v} was staged by an update that did not finish (at {entry.get('staged')}); "
                         f"ignored: version {serving} serves. Run `trml-edge triton update` again to install it")
    return serving, notes


def disk_versions(repo: Path) -> list[int]:
    """Version folders of the ``trml`` router on disk."""
    base = Path(repo) / "trml"
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()) if base.is_dir() else []
