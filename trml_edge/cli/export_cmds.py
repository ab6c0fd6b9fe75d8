"""`trml-edge export`, `calibrate` and `build-engines`: thin wrappers over trml_edge.export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from trml_edge.cli import app


def _steps_table(steps, title: str):
    from rich.table import Table

    table = Table(title=title)
    for col in ("step", "status", "seconds", "detail"):
        table.add_column(col)
    colors = {"OK": "green", "FAIL": "red", "SKIPPED": "yellow"}
    for s in steps:
        table.add_row(s.name, f"[{colors[s.status]}]{s.status}[/]", f"{s.seconds:.2f}", s.message)
    return table


def _e2e_table(rows):
    from rich.table import Table

    table = Table(title="end to end: exported pipeline vs PyTorch FP32")
    metric_keys = [k for k in ("has0_acc2", "mae", "acc", "f1") if k in rows[0]["torch"]]
    table.add_column("scenario")
    for k in metric_keys:
        table.add_column(f"{k} torch")
        table.add_column(f"{k} onnx")
    table.add_column("max |pred diff|")
    table.add_column("same decision")
    table.add_column("ok")
    for r in rows:
        cells = [r["scenario"]]
        for k in metric_keys:
            cells += [f"{r['torch'][k]:.4f}", f"{r['onnx'][k]:.4f}"]
        cells += [f"{r['pred_max_abs']:.4f}", f"{r['decision_agreement']:.3f}"]
        table.add_row(*cells, "yes" if r["ok"] else "[red]NO[/]")
    return table


@app.command("export")
def export(
    run: Path = typer.Argument(..., help="run directory to export"),
    out: Path = typer.Option(..., "--out", help="bundle directory to create"),
    precision: Optional[str] = typer.Option(None, help="fp32 | fp16 | int8 for every graph (overrides the recipe)"),
    target: Optional[str] = typer.Option(None, help="cpu | tensorrt (tensorrt implies the tensorrt INT8 preset)"),
    recipe: Optional[Path] = typer.Option(None, help="a shipped recipe's name (`trml-edge recipes`) or a .toml "
                                                     "file: per-graph precision, preset, profiles"),
    calibration: Optional[Path] = typer.Option(None, help="calibration set for INT8 (see calibration/README.md)"),
    data: Optional[Path] = typer.Option(None, help="dataset: held-out parity inputs + the end-to-end gate"),
    int8_preset: Optional[str] = typer.Option(None, help="cpu | tensorrt"),
    opset: Optional[int] = typer.Option(None, help="ONNX opset (default 17)"),
    check_tensorrt: bool = typer.Option(False, "--check-tensorrt", help="run the TensorRT lint for a cpu target"),
    force: bool = typer.Option(False, "--force", help="replace an existing bundle"),
) -> None:
    """Export RUN to a parity-checked ONNX bundle. Exits non-zero when a graph or scenario is out of budget."""
    from rich.console import Console

    from trml_edge.errors import ParityError
    from trml_edge.export.exporter import export_bundle
    from trml_edge.export.recipe import ExportConfig, apply_recipe

    cfg = ExportConfig(run=str(run), out=str(out), force=force, check_tensorrt=check_tensorrt)
    if recipe is not None:
        apply_recipe(cfg, recipe)
    if target is not None:
        cfg.target = target
        if int8_preset is None and recipe is None:
            cfg.int8_preset = "tensorrt" if target == "tensorrt" else "cpu"
    if precision is not None:
        cfg.set_precision(precision)
    if int8_preset is not None:
        cfg.int8_preset = int8_preset
    if opset is not None:
        cfg.opset = opset
    if calibration is not None:
        cfg.calibration = str(calibration)
    if data is not None:
        cfg.data = str(data)
    console = Console()
    try:
        result = export_bundle(cfg)
    except ParityError as e:
        res = getattr(e, "result", None)
        if res is not None:
            console.print(_steps_table(res.steps, f"export {run} (FAILED)"))
            if res.manifest.get("parity", {}).get("end_to_end"):
                console.print(_e2e_table(res.manifest["parity"]["end_to_end"]))
        raise
    console.print(_steps_table(result.steps, f"export {run} -> {out}"))
    if result.manifest["parity"]["end_to_end"]:
        console.print(_e2e_table(result.manifest["parity"]["end_to_end"]))
    typer.echo(f"wrote {out}")


@app.command("recipes")
def recipes_cmd() -> None:
    """List the shipped export recipes, usable by name: trml-edge export RUN --recipe NAME."""
    import tomllib

    from trml_edge import assets

    shipped = assets.recipes()
    width = max(map(len, shipped))
    for name, path in shipped.items():
        r = tomllib.loads(path.read_text(encoding="utf-8"))
        typer.echo(f"{name:{width}s}  {r.get('target', 'cpu'):8s}  {r.get('description', '')}")
    typer.echo(f"(files in {assets.root() / 'export'}; use one with: trml-edge export RUN --recipe NAME)")
    typer.echo("calibration sets (--calibration NAME): "
               + ", ".join(f"{n} ({p})" for n, p in assets.calibration_sets().items()))


@app.command("calibrate")
def calibrate(
    run: Path = typer.Argument(..., help="run directory whose model computes the downstream graph inputs"),
    data: Path = typer.Option(..., "--data", help="dataset directory (its train split is sampled)"),
    out: Path = typer.Option(..., "--out", help="calibration set directory, e.g. calibration/NAME"),
    samples: int = typer.Option(128, help="clips to sample (stratified by label and scenario)"),
    batch_size: int = typer.Option(8, help="calibration batch; fewer samples than this is refused"),
    frames_per_clip: int = typer.Option(2, help="frames per clip kept for the image encoder's inputs"),
    seed: int = typer.Option(0),
) -> None:
    """Build a calibration set: each graph's inputs as npz + manifest.json (format: calibration/README.md)."""
    from trml_edge.data.corpus import load_split, read_corpus
    from trml_edge.export.calibration import build_calibration
    from trml_edge.model.checkpoint import load_run

    model = load_run(run)
    arrays = load_split(read_corpus(data), "train", model.cfg.temporal.max_frames, model.cfg.preprocess.image_size)
    manifest = build_calibration(model, arrays, samples, out, batch_size, seed, frames_per_clip,
                                 source={"run": str(run), "data": str(data), "split": "train"})
    typer.echo(f"wrote {out}: {manifest['samples']} samples, scenarios {manifest['strata']['scenarios']}")


@app.command("build-engines")
def build_engines_cmd(
    bundle: Path = typer.Argument(..., help="export bundle (built with --target tensorrt)"),
    workspace: Optional[int] = typer.Option(None, "--workspace", help="builder workspace in MiB (default: recipe's)"),
    tf32: bool = typer.Option(True, "--tf32/--no-tf32", help="let FP32 layers use TF32 tensor cores (Ampere+); "
                              "the parity gate on this GPU judges the result with the FP32 budget"),
) -> None:
    """Lint, build and parity-check a TensorRT engine for every graph of BUNDLE on this GPU (strongly typed
    networks, TensorRT 10.1-11.x; needs the "trt-cu13" extra with an R580+ driver, "trt-cu12" with R535-R575, or
    on a Jetson JetPack's TensorRT: `trml-edge doctor` says which)."""
    from trml_edge.export.tensorrt import build_engines

    engines = build_engines(bundle, workspace, tf32=tf32)
    typer.echo(json.dumps({g: {"file": e["file"], "tensorrt": e["tensorrt"], "gpu": e["gpu"]["name"],
                               "parity_max_abs": e["parity"]["max_abs"]} for g, e in engines.items()}, indent=2))
