"""The ``trml-edge`` command line. Commands are thin: they build the same config objects as the Python API
and call the same functions. Heavy libraries are imported inside commands so ``--help`` stays fast."""

from __future__ import annotations

import logging
import sys

import typer

from trml_edge.errors import TrmlEdgeError

app = typer.Typer(name="trml-edge", no_args_is_help=True, add_completion=False,
                  help="Train TRML, export it to ONNX/TensorRT, and serve it with Triton.")


def _register() -> None:
    # Each module adds its commands to `app` (or a sub-app) on import.
    from trml_edge.cli import data_cmds, demo_cmds, train_cmds  # noqa: F401

    for optional in ("export_cmds", "serve_cmds", "features_cmds", "profile_cmds", "doctor_cmds", "predict_cmds", "update_cmds"):
        try:
            __import__(f"trml_edge.cli.{optional}")
        except ModuleNotFoundError as e:
            if e.name != f"trml_edge.cli.{optional}":
                raise


def _print_version(value: bool) -> None:
    if value:
        from trml_edge.versions import report

        for part, desc in report():
            typer.echo(f"{part + ':':14s}{desc}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="print the versions of trml-edge, ONNX Runtime, torch and tritonserver"),
) -> None:
    """Train TRML, export it to ONNX/TensorRT, and serve it with Triton."""


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        _register()
        app()
    except TrmlEdgeError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except ModuleNotFoundError as e:  # an optional dependency a command imports: say which extra, in one line
        from trml_edge.versions import missing_module_message

        message = missing_module_message(e.name)
        if message is None:
            raise
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        sys.exit(2)
