"""What the CLIP feature cache buys: epoch time and run setup time with and without it, and peak memory
as the corpus grows. Writes JSON.

    python benchmarks/bench_cache.py --n 400 --out benchmarks/results/bench_cache.json

* epoch time: one training epoch (forward, losses, backward, step) over the train split, with the
  embeddings read from the cache vs the frozen CLIP towers run on every batch (what recomputing the
  embeddings every epoch costs); warm-up first, then repeats until ``--min-time``, median and percentiles.
* setup time: preparing a run's inputs with a cold cache (decode + embed + write), a warm cache (read only),
  and the old path (every frame decoded into memory, then embedded).
* peak memory: peak RSS of a fresh child process that prepares the inputs of corpora of growing size, for
  the old path and the streamed cache path.

The backbone is the packaged tiny CLIP at CLIP's usual 224-pixel input (patch 32), so the frames held in
memory are the size a real ViT-B/32 would see; the synthetic clips come from ``trml-edge data synth``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = (100, 200, 400)


def arch_file(work: Path) -> Path:
    from trml_edge.model.backbone import resolve_arch

    cfg = resolve_arch("trml-tiny")
    cfg["vision_cfg"].update(image_size=224, patch_size=32)
    path = work / "tiny-224.json"
    path.write_text(json.dumps(cfg))
    return path


def model_for(arch: Path):
    import torch

    from trml_edge.config import TRMLConfig
    from trml_edge.model.checkpoint import new_model

    torch.manual_seed(0)
    cfg = TRMLConfig()
    cfg.backbone.arch = str(arch)
    return new_model(cfg)


def subset_corpus(full: Path, out: Path, n: int) -> Path:
    """The first ``n`` rows of ``full`` (same clip files, linked), with every split represented."""
    with open(full / "label.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "label.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[:n])
    if not (out / "Raw").exists():
        (out / "Raw").symlink_to(full / "Raw")
    return out


def percentiles(times: list[float]) -> dict[str, float]:
    t = np.asarray(times)
    return {"median": float(np.median(t)), "p90": float(np.percentile(t, 90)), "p95": float(np.percentile(t, 95)),
            "p99": float(np.percentile(t, 99)), "runs": len(t)}


def epoch_seconds(model, data, batch_size: int, min_time: float) -> dict[str, float]:
    """Time full training epochs (after one warm-up epoch) until ``min_time`` seconds have passed."""
    import torch

    from trml_edge.config import MissingConfig
    from trml_edge.missing import sample_masks
    from trml_edge.model.losses import sml_loss, task_loss
    from trml_edge.train.features import fuse_batch

    model = copy.deepcopy(model)
    params = [p for name, p in model.named_parameters() if not name.startswith("clip.")]
    optim = torch.optim.AdamW(params, lr=1e-3)
    n = len(data)
    has_v, has_t = (torch.from_numpy(m) for m in sample_masks(n, MissingConfig(rate=0.5), [0, 1]))

    def epoch():
        model.train()
        for b in range(0, n, batch_size):
            idx = np.arange(b, min(b + batch_size, n))
            o = fuse_batch(model, data, idx, has_v[idx], has_t[idx])
            loss = task_loss(o.output, data.labels[idx], "regression") + 0.1 * sml_loss(
                o.v_hat, o.v, o.t_hat, o.t, has_v[idx] & has_t[idx], 0.07)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()

    epoch()  # warm-up
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 3:
        t0 = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - t0)
    return percentiles(times)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def child(args) -> None:
    """Prepare one corpus's train+valid inputs in this fresh process and print the peak RSS."""
    from trml_edge.train.features import prepare_inputs, split_tensors
    from trml_edge.train.loop import load_splits

    model = model_for(Path(args.arch))
    if args.child == "in-memory frames (old path)":
        arrays = load_splits(args.data, model.cfg)
        inputs = {s: split_tensors(model, a) for s, a in arrays.items()}
    else:
        _, inputs = prepare_inputs(model, args.data, cache=args.cache)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "clips": sum(len(t) for t in inputs.values())}))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the process image, so unlike ru_maxrss it does
    not inherit the high-water mark of the (large) parent that forked this child."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: an upper bound


def peak_rss(path: str, data: Path, arch: Path, cache: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", path, "--data", str(data), "--arch", str(arch), "--cache", str(cache)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"child failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=400, help="clips in the synthetic corpus (largest memory size)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--min-time", type=float, default=5.0, help="seconds of timed epochs per variant")
    p.add_argument("--work", type=Path, default=None, help="working directory [default: a temporary one]")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_cache.json"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--arch", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    import torch

    from trml_edge.config import write_json_atomic
    from trml_edge.data.synth import SynthSpec, generate
    from trml_edge.train.features import prepare_inputs, split_tensors
    from trml_edge.train.loop import load_splits

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_cache_"))
    work.mkdir(parents=True, exist_ok=True)
    full = work / "synth"
    if not (full / "label.csv").is_file():
        generate(full, SynthSpec(n=args.n, pool=10))
    arch = arch_file(work)
    model = model_for(arch)
    res = {"n_clips": args.n, "image_size": model.cfg.preprocess.image_size, "frames": model.cfg.temporal.max_frames,
           "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "cpus": os.cpu_count()}

    cache = work / "cache"
    (_, cached), res["setup_s_cold_cache"] = timed(lambda: prepare_inputs(model, full, cache=cache))
    (_, warm), res["setup_s_warm_cache"] = timed(lambda: prepare_inputs(model, full, cache=cache))
    arrays, t_decode = timed(lambda: load_splits(full, model.cfg))
    frozen_embedded, t_embed = timed(lambda: {s: split_tensors(model, a) for s, a in arrays.items()})
    res["setup_s_old_path"] = t_decode + t_embed
    if not torch.equal(cached["train"].frame_emb, warm["train"].frame_emb):
        raise RuntimeError("the warm cache returned other embeddings than the cold build; delete the work dir")

    pixel_inputs = {s: copy.copy(t) for s, t in frozen_embedded.items()}
    for s, t in pixel_inputs.items():  # the same clips, with the towers run on every batch
        t.frames, t.frame_emb, t.text_emb = arrays[s].frames, None, None
    res["train_clips"] = len(cached["train"])
    res["epoch_s_cached"] = epoch_seconds(model, cached["train"], args.batch_size, args.min_time)
    res["epoch_s_encoders_every_batch"] = epoch_seconds(model, pixel_inputs["train"], args.batch_size, args.min_time)
    res["epoch_speedup"] = res["epoch_s_encoders_every_batch"]["median"] / res["epoch_s_cached"]["median"]
    del arrays, pixel_inputs, frozen_embedded

    res["peak_rss_mb"] = []
    for n in [s for s in SIZES if s < args.n] + [args.n]:
        data = subset_corpus(full, work / f"subset{n}", n) if n < args.n else full
        row = {"corpus_clips": n}
        row["old_path"] = peak_rss("in-memory frames (old path)", data, arch, work / f"cache{n}")["peak_rss_mb"]
        row["cache_cold"] = peak_rss("streamed into the cache", data, arch, work / f"cache{n}")["peak_rss_mb"]
        row["cache_warm"] = peak_rss("streamed into the cache", data, arch, work / f"cache{n}")["peak_rss_mb"]
        res["peak_rss_mb"].append(row)
        print(json.dumps(row), flush=True)
    write_json_atomic(args.out, res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
