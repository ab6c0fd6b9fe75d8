"""`trml-edge data ...`: the synthetic benchmark (and, with the dataset readers, corpus checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from trml_edge.cli import app
from trml_edge.specs import SynthSpec

data_app = typer.Typer(no_args_is_help=True, help="Create and check datasets.")
app.add_typer(data_app, name="data")


@data_app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="directory to create"),
    n: int = typer.Option(SynthSpec.n, "--n", help="labelled clips"),
    pool: int = typer.Option(SynthSpec.pool, help="unlabelled image/caption pairs for `trml-edge pretrain`"),
    seed: int = typer.Option(0, help="random seed; the same seed gives the same files"),
) -> None:
    """Generate the built-in synthetic sentiment benchmark (MMSA layout + a pretraining pool)."""
    from trml_edge.data.synth import generate

    summary = generate(out, SynthSpec(n=n, pool=pool, seed=seed))
    typer.echo(f"wrote {out}: splits {summary['splits']}, pool {pool} pairs")


@data_app.command("check")
def check(
    data: Path = typer.Argument(..., help="dataset directory (MMSA layout for MOSI/MOSEI, or MELD's official one)"),
    meld_task: str = typer.Option("emotion", help="MELD labels to check: emotion (7 classes) or sentiment (3)"),
    decode: bool = typer.Option(True, help="decode every clip (--no-decode only checks that the files exist)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the full report to this file"),
    show: int = typer.Option(20, help="problems listed per kind"),
) -> None:
    """Report rows without a video, videos without a row, undecodable or zero-length clips, bad labels and
    split sizes. Exits with status 1 when there is a problem (training would skip those clips)."""
    from rich.console import Console
    from rich.table import Table

    from trml_edge.config import write_json_atomic
    from trml_edge.data.check import FIXES, check_corpus

    console = Console()
    with console.status("checking clips ...") as status:
        report = check_corpus(data, meld_task, decode,
                              on_clip=lambda i, n: status.update(f"checking clips ... {i}/{n}") if i % 50 == 0
                              else None)
    classes = f" ({len(report.class_names)} classes)" if report.class_names else ""
    console.print(f"{data}: {report.layout.upper()} layout, {report.task}{classes}")
    t = Table(title="splits")
    for col in ("split", "rows", "usable", "labels"):
        t.add_column(col)
    for s, n in report.splits.items():
        t.add_row(s, str(n), str(report.usable.get(s, 0)), str(report.labels.get(s, "")))
    console.print(t)
    if json_out:
        write_json_atomic(json_out, report.to_dict())
    if report.ok:
        console.print("[green]no problems found[/]")
        return
    for kind, n in report.counts().items():
        console.print(f"[red]{kind}[/]: {n} -> fix: {FIXES[kind]}")
        for p in [p for p in report.problems if p.kind == kind][:show]:
            console.print(f"  {p.item}{f' ({p.where})' if p.where else ''}: {p.detail}", markup=False)
    n = len(report.problems)
    console.print(f"{n} problem{'s' if n != 1 else ''}; training skips the affected clips and reports the count "
                  "as skipped_clips")
    raise typer.Exit(code=1)
