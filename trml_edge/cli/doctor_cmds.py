"""`trml-edge doctor`: what this machine has and which uses run here; `--run`: the whole target check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from trml_edge.cli import app


@app.command("doctor")
def doctor_cmd(
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON (for scripts)"),
    tritonserver: Optional[Path] = typer.Option(None, "--tritonserver", help="the tritonserver `serve` would be "
                                                "given (default: the one bundled by nvidia-pytriton)"),
    run: bool = typer.Option(False, "--run", help="the target check: doctor, build-engines on the bundles, the "
                             "gpu tests and a profile with the engines, into one report (--out)"),
    out: Path = typer.Option(Path("target_check"), "--out", help="--run: report directory (report.md, report.json)"),
    bundle: Optional[List[Path]] = typer.Option(None, "--bundle", help="--run: bundles to build engines for "
                                                "(default: demo_out/bundles/*)"),
    data: Optional[Path] = typer.Option(None, "--data", help="--run: dataset for the profile's accuracy "
                                        "(default: demo_out/data when present)"),
    min_time: float = typer.Option(0.5, "--min-time", help="--run: profile seconds per configuration"),
) -> None:
    """CPU and ISA, memory, GPU/driver/CUDA, TensorRT against the supported range, ONNX Runtime and its
    providers, the tritonserver and its backends, and for export, serve and profile whether each runs here
    (with the one-line fix). Never fails on a machine that lacks something: that is what it reports."""
    if run:
        from trml_edge.target_check import TargetCheckConfig, target_check

        rep = target_check(TargetCheckConfig(out=str(out), bundles=[str(b) for b in bundle or []],
                                             data=str(data) if data else None, min_time=min_time,
                                             tritonserver=str(tritonserver) if tritonserver else None))
        typer.echo(json.dumps(rep, indent=2) if as_json else rep["summary"])
        typer.echo(f"report: {out / 'report.md'}")
        if any(s["status"] == "FAIL" for s in rep["steps"]):
            raise typer.Exit(1)
        return
    from trml_edge.doctor import doctor, render

    rep = doctor(str(tritonserver) if tritonserver else None)
    typer.echo(json.dumps(rep, indent=2) if as_json else render(rep), nl=as_json)
