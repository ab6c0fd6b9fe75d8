"""`trml-edge demo`: the main job end to end on the built-in synthetic benchmark.

synthetic benchmark -> tiny CLIP pretraining -> TRML and baselines (comparison table) -> calibration ->
export fp32, fp16 and int8 with their parity gates -> Triton repository -> serve -> profile of the three
bundles against the local runtime and the live server, with the recommendation -> report.
Finished steps are reused when it is run again; the server is always shut down.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from trml_edge.cli import app
from trml_edge.specs import PretrainConfig, SynthSpec

# The demo's INT8 bundle follows the shipped CPU recipe (INT8 encoders, FP32 small graphs), with the demo's
# own calibration set in place of the recipe's; the fp32 and fp16 bundles take its other export settings.
INT8_RECIPE = Path("cpu-int8")  # by name: export/cpu-int8.toml, or its copy in the wheel


def _complete_bundle(path: Path) -> bool:
    from trml_edge.errors import BundleError
    from trml_edge.runtime import load_bundle

    try:
        load_bundle(path)
        return True
    except BundleError:
        return False


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="working directory; finished steps are reused"),
    n: int = typer.Option(SynthSpec.n, help="labelled clips in the synthetic benchmark"),
    pool: int = typer.Option(SynthSpec.pool, help="image/caption pairs for the CLIP pretraining"),
    pretrain_epochs: int = typer.Option(PretrainConfig.epochs),
    epochs: int = typer.Option(30),
    seed: int = typer.Option(0),
    calibration_samples: int = typer.Option(128, help="clips in the INT8 calibration set"),
    int8_recipe: Path = typer.Option(INT8_RECIPE, help="recipe of the int8 bundle (its calibration is replaced "
                                                       "by the demo's own set)"),
    min_time: float = typer.Option(1.0, help="profile: seconds each configuration runs, at least"),
    batch: str = typer.Option("1,8", help="profile: batch sizes of the local runtime"),
    concurrency: str = typer.Option("1,4", help="profile: concurrent clients of the live Triton server"),
) -> None:
    """The main job on the built-in default: synthetic benchmark -> CLIP pretraining -> TRML and baselines ->
    export fp32/fp16/int8 with parity gates -> Triton serving -> profile with a per-graph recommendation."""
    # PyTorch's OpenMP threads must wait passively, or they steal the cores from ONNX Runtime and Triton in
    # the profile below; this only takes effect before torch is first imported (which is below).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import time

    from rich.console import Console

    from trml_edge.cli.profile_cmds import _ints, print_recommendation
    from trml_edge.data.corpus import load_split, read_corpus
    from trml_edge.data.synth import generate
    from trml_edge.eval.experiment import ExperimentConfig, run_experiment, table
    from trml_edge.export.calibration import build_calibration
    from trml_edge.export.exporter import export_bundle
    from trml_edge.export.recipe import ExportConfig, apply_recipe
    from trml_edge.model.checkpoint import load_run
    from trml_edge.profile import ProfileConfig, profile
    from trml_edge.serving.repository import RepoConfig, build_repository
    from trml_edge.serving.server import TritonServer
    from trml_edge.train.pretrain import pretrain as run_pretrain

    console = Console()
    t0 = time.perf_counter()
    stamp = lambda: f"[dim]({time.perf_counter() - t0:.0f} s)[/]"  # noqa: E731
    data, clip_dir = out / "data", out / "clip"
    if not (data / "synth.json").is_file():
        console.print(f"[bold]1/7[/] synthetic benchmark -> {data} {stamp()}")
        generate(data, SynthSpec(n=n, pool=pool, seed=seed))
    weights = clip_dir / "open_clip_model.safetensors"
    if not weights.is_file():
        console.print(f"[bold]2/7[/] contrastive pretraining of the tiny CLIP -> {clip_dir} {stamp()}")
        run_pretrain(PretrainConfig(pool=str(data / "pretrain"), out=str(clip_dir), epochs=pretrain_epochs,
                                    seed=seed))
    console.print(f"[bold]3/7[/] training complete-modality, modality-dropout and TRML models {stamp()}")
    res = run_experiment(ExperimentConfig(data=str(data), out=str(out / "runs"), clip_weights=str(weights),
                                          epochs=epochs, seed=seed))
    from trml_edge.eval.bayes import bayes_limits, mixture_limit

    observed = bayes_limits(n=5000)["observed"]  # the synthetic process's own limit, with its observation noise
    console.print(table(res["rows"], limits={r: mixture_limit(observed, r) for r in
                                             sorted({row["test_missing_rate"] for row in res["rows"]})}))
    console.print(f"results: {out / 'runs' / 'comparison.json'}")

    run = out / "runs" / "trml"
    calib = out / "calibration"
    if not (calib / "manifest.json").is_file():
        console.print(f"[bold]4/7[/] INT8 calibration set ({calibration_samples} clips) -> {calib} {stamp()}")
        model = load_run(run)
        arrays = load_split(read_corpus(data), "train", model.cfg.temporal.max_frames,
                            model.cfg.preprocess.image_size)
        build_calibration(model, arrays, calibration_samples, calib, seed=seed,
                          source={"run": str(run), "data": str(data), "split": "train"})
    bundles = []
    for precision in ("fp32", "fp16", "int8"):
        path = out / "bundles" / precision
        bundles.append(path)
        if _complete_bundle(path):
            continue
        console.print(f"[bold]4/7[/] export {precision} with parity gates -> {path} {stamp()}")
        # all three share the int8 recipe's export settings (target, opset, ORT fusion), so the profile can
        # mix their graphs and its recommended recipe rebuilds exactly the graphs it measured
        cfg = apply_recipe(ExportConfig(run=str(run), out=str(path), data=str(data), force=True), int8_recipe)
        if precision == "int8":
            cfg.calibration = str(calib)
        else:
            cfg.set_precision(precision)
        result = export_bundle(cfg)  # raises ParityError (exit 2) when a gate fails
        summary = ", ".join(f"{r['scenario']} drop {r['acc_drop']:+.3f}"
                            for r in result.manifest["parity"]["end_to_end"])
        console.print(f"    gates OK: {summary}")

    report = out / "profile"
    if (report / "report.json").is_file():
        console.print(f"[bold]5-6/7[/] profile already done: {report / 'report.md'} (delete it to measure again)")
    else:
        served = "int8"
        console.print(f"[bold]5/7[/] Triton repository of the {served} bundle -> {out / 'triton'} {stamp()}")
        repo = build_repository(RepoConfig(bundle=str(out / "bundles" / served), out=str(out / "triton"),
                                           backend="python", force=True))
        with TritonServer(repo, log_file=out / "tritonserver.log") as srv:
            console.print(f"    serving on {srv.url} ({srv.layout()} layout) {stamp()}")
            console.print(f"[bold]6/7[/] profile: fp32, fp16, int8 x PyTorch, ONNX Runtime and Triton {stamp()}")
            profile(ProfileConfig(bundles=[str(b) for b in bundles], out=str(report), data=str(data), url=srv.url,
                                  url_bundle=served, batches=_ints(batch, "--batch"),
                                  concurrency=_ints(concurrency, "--concurrency"), min_time=min_time))
        console.print(f"    server stopped {stamp()}")
    import json

    rep = json.loads((report / "report.json").read_text())
    console.print(f"[bold]7/7[/] report: {report / 'report.md'}  ({time.perf_counter() - t0:.0f} s)")
    print_recommendation(rep, console.print)
