"""`trml-edge profile`: a thin wrapper over trml_edge.profile."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from trml_edge.cli import app
from trml_edge.errors import ConfigError


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ConfigError(f"{flag} takes comma-separated integers, for example {flag} 1,8; got {text!r}") from e


@app.command("profile")
def profile_cmd(
    bundles: List[Path] = typer.Argument(..., help="export bundles to compare (for example fp32, fp16 and int8)"),
    out: Path = typer.Option(..., "--out", help="report directory: report.json, report.md, charts, recipe"),
    data: Optional[Path] = typer.Option(None, "--data", help="dataset: accuracy per scenario + recommendation"),
    url: Optional[str] = typer.Option(None, "--url", help="a live Triton server, HOST:PORT (HTTP)"),
    url_bundle: str = typer.Option("served", "--url-bundle", help="what the --url server serves (report label)"),
    batch: str = typer.Option("1,8", "--batch", help="batch sizes for the local backends"),
    concurrency: str = typer.Option("1,8", "--concurrency", help="concurrent clients for --url"),
    accuracy_budget: Optional[str] = typer.Option(
        None, "--accuracy-budget", help="e.g. acc2=0.01,mae=0.05 (regression) or acc=0.01 (classification); "
        "also f1, corr, pred (largest |prediction change|)"),
    min_time: float = typer.Option(1.0, "--min-time", help="seconds each configuration runs, at least"),
    min_runs: int = typer.Option(10, "--min-runs", help="runs each configuration makes, at least"),
    warmup: int = typer.Option(3, "--warmup"),
    threads: int = typer.Option(0, "--threads", help="intra-op threads (0: every core)"),
    torch: bool = typer.Option(True, "--torch/--no-torch", help="time PyTorch eager FP32 as the reference"),
) -> None:
    """Latency vs accuracy per bundle, backend and missing-modality scenario, and a per-graph precision
    recommendation saved as an export recipe (REPORT/recommended.toml)."""
    from trml_edge.errors import require
    from trml_edge.profile import ProfileConfig, profile

    for module in ("onnx_tool", "matplotlib"):  # before minutes of timing, not at the charts
        require(module, "profile")
    cfg = ProfileConfig(bundles=[str(b) for b in bundles], out=str(out), data=str(data) if data else None,
                        url=url, url_bundle=url_bundle, batches=_ints(batch, "--batch"),
                        concurrency=_ints(concurrency, "--concurrency"),
                        budget=accuracy_budget, min_time=min_time, min_runs=min_runs, warmup=warmup,
                        threads=threads, torch=torch)
    rep = profile(cfg)
    print_recommendation(rep, typer.echo)
    typer.echo(f"report: {out / 'report.md'}")


def print_recommendation(rep: dict, echo) -> None:
    """The recommendation with its measured latency and accuracy, one line per scenario."""
    rec = rep["recommendation"]
    if rec["status"] != "ok":
        echo(f"recommendation {rec['status']}: {rec['reason']}")
        return
    echo("recommended precision per graph: " + ", ".join(f"{g}={p}" for g, p in rec["precision"].items()))
    for r in rec["latency"]:
        acc = next(a for a in rec["accuracy"] if a["scenario"] == r["scenario"])
        echo(f"  {r['scenario']}: p50 {r['p50_ms']:.2f} ms ({r['speedup']:.2f}x vs {rec['baseline']}), "
             + ", ".join(f"delta {k} {v:+.4f}" for k, v in acc["delta"].items() if k in rep["accuracy"]["budget"]))
    echo(f"recipe: {rec['recipe']}")
