"""Building blocks of a generated Triton repository, shared by the ``trml`` router's generator
(``repository.py``) and the stream router's (``stream_repo.py``): Triton's ``ModelConfig`` protobuf, dims from
the I/O declaration, ensembles wired by tensor name, and the files every router carries (the package's leaf
modules, copied byte for byte, and the shared BLS module).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import trml_edge
from trml_edge.errors import ConfigError, ServingError, require
from trml_edge.graphs import GRAPHS, PROFILES

CORE_PACKAGE = "trml_core"
# The package's leaf modules every router needs: numpy + standard library + each other (relative imports) only.
CORE_MODULES = ("errors", "graphs", "preprocess", "routing", "tokenizer")
# What a fused-layout router adds: the torch-free runtime (numpy + onnxruntime, relative imports), which runs the
# graphs in the router's process; "runtime" is the subpackage's __init__.py.
RUNTIME_MODULES = ("streaming", "runtime", "runtime.bundle", "runtime.pipeline", "runtime.prediction", "runtime.stream")
RESPOND_MODULE = "trml_respond.py"  # triton_models/common/: what every router answers (errors, outputs, metrics)
BLS_MODULE = "trml_bls.py"  # triton_models/common/: the BLS calls of the ensemble layout's routers
BUNDLE_DIR = "bundle"  # the fused layout's copy of the bundle, in each router's version folder
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                 "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8"}


def protobuf():
    """(tritonclient's model_config_pb2, protobuf's text_format), or the extra that installs them."""
    return require("tritonclient.grpc.model_config_pb2", "serve"), require("google.protobuf.text_format", "serve")


def write_config(config, path: Path) -> None:
    _, text_format = protobuf()
    path.write_text(text_format.MessageToString(config), encoding="utf-8")


def triton_dims(shape: tuple, dims: dict[str, int], batched: bool = True) -> list[int]:
    """A spec shape as Triton dims: model dimensions as numbers, dynamic axes as -1. A batched model
    (``max_batch_size`` > 0) leaves out the batch axis, which Triton adds; an unbatched one keeps it, so the
    rank always equals the graph's (and its engine's)."""
    return [-1 if isinstance(d, str) and d in PROFILES else int(dims[d] if isinstance(d, str) else d)
            for d in (shape[1:] if batched else shape)]


def wire(name: str) -> str:
    """The ensemble tensor a graph output feeds: a generator's virtual ``x_hat`` stands in for ``x``."""
    return name[: -len("_hat")] if name.endswith("_hat") else name


def ensemble_io(steps: tuple[str, ...], keep: tuple[str, ...] = ()) -> tuple[list, list]:
    """(inputs the router feeds, outputs) of an ensemble of graph ``steps``, as TensorSpecs. The outputs are the
    last step's and the wired tensors named in ``keep`` (a router may keep an embedding)."""
    produced = {wire(t.name): t for g in steps for t in GRAPHS[g].outputs}
    inputs = {}
    for g in steps:
        for t in GRAPHS[g].inputs:
            if t.name not in produced:
                inputs.setdefault(t.name, t)
    return list(inputs.values()), [GRAPHS[steps[-1]].outputs[0], *(produced[k] for k in keep)]


def ensemble_batch(steps: tuple[str, ...], graph_max: dict[str, int]) -> int:
    """An ensemble batches no larger than its smallest step; all its steps batch, or none does."""
    batch = min(int(graph_max[g]) for g in steps)
    if batch == 0 and any(graph_max[g] for g in steps):
        raise ConfigError("the graph models must all batch (max_batch_size > 0) or none of them may")
    return batch


def ensemble_config(name: str, steps: tuple[str, ...], dims: dict[str, int], graph_max: dict[str, int],
                    keep: tuple[str, ...] = ()):
    """Triton's ModelConfig of an ensemble of graph models, wired by tensor name from the I/O declaration."""
    mc, _ = protobuf()
    batch = ensemble_batch(steps, graph_max)
    c = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=batch)
    inputs, outputs = ensemble_io(steps, keep)
    for specs, add in ((inputs, c.input.add), (outputs, c.output.add)):
        for t in specs:
            io = add()
            io.name, io.data_type = wire(t.name), getattr(mc, TRITON_DTYPES[t.dtype])
            io.dims.extend(triton_dims(t.shape, dims, batch > 0))
    for g in steps:
        step = c.ensemble_scheduling.step.add()
        step.model_name, step.model_version = g, -1
        for t in GRAPHS[g].inputs:
            step.input_map[t.name] = t.name
        for t in GRAPHS[g].outputs:
            step.output_map[t.name] = wire(t.name)
    return c


def write_ensemble(repo: Path, name: str, steps: tuple[str, ...], dims: dict[str, int],
                   graph_max: dict[str, int], keep: tuple[str, ...] = ()) -> None:
    (repo / name / "1").mkdir(parents=True)  # an ensemble has no files, but Triton wants a version folder
    write_config(ensemble_config(name, steps, dims, graph_max, keep), repo / name / "config.pbtxt")


def templates_dir() -> Path:
    """The ``triton_models/`` templates: the source tree's folder, or its copy in the wheel."""
    from trml_edge import assets

    root = assets.triton_templates()
    if not (root / "trml" / "model.py").is_file():
        raise ServingError(f"the Triton templates are not at {root}; reinstall trml-edge "
                           "(pip install --force-reinstall trml-edge, or pip install -e . in a clone)")
    return root


def _package() -> Path:
    return Path(trml_edge.__file__).resolve().parent


def core_sources(extra: tuple[str, ...] = ()) -> dict[str, Path]:
    """Module name ("errors", "runtime.bundle", "runtime" for runtime/__init__.py) -> the package file that a
    router's ``trml_core/`` copy must equal byte for byte."""
    pkg, out = _package(), {}
    for m in dict.fromkeys((*CORE_MODULES, *extra)):
        path = pkg.joinpath(*m.split("."))
        out[m] = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return out


def core_path(module: str) -> Path:
    """Where ``module``'s copy goes under a router's version folder: its place in the package, under trml_core/."""
    return Path(CORE_PACKAGE) / core_sources((module,))[module].relative_to(_package())


def copy_router_code(version: Path, router: str, extra: tuple[str, ...] = (), listed_in: str = "router.json",
                     bls: bool = True) -> dict[str, str]:
    """A router's code into its version folder: its ``model.py``, the shared ``trml_respond.py``, the BLS module
    (``bls``: the ensemble layout) and the byte-identical ``trml_core/`` copies of the package's modules.
    Returns each copied module's sha256."""
    from trml_edge.runtime.bundle import sha256_file

    templates = templates_dir()
    (version / CORE_PACKAGE).mkdir(parents=True)
    shutil.copyfile(templates / router / "model.py", version / "model.py")
    shutil.copyfile(templates / "common" / RESPOND_MODULE, version / RESPOND_MODULE)
    if bls:
        shutil.copyfile(templates / "common" / BLS_MODULE, version / BLS_MODULE)
    copies = {}
    for module, src in core_sources(extra).items():
        dest = version / CORE_PACKAGE / src.relative_to(_package())
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        copies[module] = sha256_file(src)
    (version / CORE_PACKAGE / "__init__.py").write_text(
        '"""Byte-identical copies of trml_edge\'s torch-free modules, made by `trml-edge triton build`.\n\n'
        f'Do not edit: regenerate the repository instead ({listed_in} lists each file\'s sha256)."""\n',
        encoding="utf-8")
    return copies


def add_router_io(c, classes: int, ragged: bool) -> None:
    """The I/O every trml router shares: optional ``TEXT`` (one utf-8 string) and ``FRAMES`` (uint8 [n, H, W, 3]),
    ``OUTPUT`` (score or ``classes`` logits) and ``VIRTUAL_MODALITY``. ``ragged``: a batch may mix clips of
    different lengths and sizes (the router pads)."""
    mc, _ = protobuf()
    text = c.input.add()
    text.name, text.data_type, text.optional, text.allow_ragged_batch = "TEXT", mc.TYPE_STRING, True, ragged
    text.dims.append(1)
    frames = c.input.add()
    frames.name, frames.data_type, frames.optional, frames.allow_ragged_batch = "FRAMES", mc.TYPE_UINT8, True, ragged
    frames.dims.extend([-1, -1, -1, 3])
    out = c.output.add()
    out.name, out.data_type = "OUTPUT", mc.TYPE_FP32
    out.dims.append(classes)
    virtual = c.output.add()
    virtual.name, virtual.data_type = "VIRTUAL_MODALITY", mc.TYPE_STRING
    virtual.dims.append(1)


def copy_bundle(bundle, dest: Path, link_from: Path | None = None) -> None:
    """The bundle's manifest, graphs and tokenizer into ``dest``, as a bundle the runtime loads (and hash-checks).
    ``link_from``: an identical copy already in the repository, hard-linked instead of copied where the
    filesystem allows (the stream router's, so two routers do not double the repository's size)."""
    from trml_edge.runtime.bundle import MANIFEST

    files = [MANIFEST, bundle.manifest["tokenizer"]["file"], *(e["file"] for e in bundle.graphs.values())]
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if link_from is not None:
            try:
                os.link(link_from / rel, target)
                continue
            except OSError:  # no hard links here (another filesystem type): a copy is the same bytes
                pass
        shutil.copyfile(bundle.root / rel, target)
