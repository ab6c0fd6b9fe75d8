"""`trml-edge data ...`: the synthetic benchmark (and, with the dataset readers, corpus checks)."""

from __future__ import annotations

from pathlib import Path

import typer

from trml_edge.cli import app

data_app = typer.Typer(no_args_is_help=True, help="Create and check datasets.")
app.add_typer(data_app, name="data")


@data_app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="directory to create"),
    n: int = typer.Option(1200, "--n", help="labelled clips"),
    pool: int = typer.Option(6000, help="unlabelled image/caption pairs for `trml-edge pretrain`"),
    seed: int = typer.Option(0, help="random seed; the same seed gives the same files"),
) -> None:
    """Generate the built-in synthetic sentiment benchmark (MMSA layout + a pretraining pool)."""
    from trml_edge.data.synth import SynthSpec, generate

    summary = generate(out, SynthSpec(n=n, pool=pool, seed=seed))
    typer.echo(f"wrote {out}: splits {summary['splits']}, pool {pool} pairs")
