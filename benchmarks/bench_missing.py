"""The paper's claim, measured: TRML against zero-fill, mean-fill, modality dropout and the upper bound.

One synthetic benchmark and one pretrained tiny CLIP (the foundation model) are shared; for every labelled
set size and seed, the three trainings of ``trml_edge.eval.experiment`` run and every method is scored at
every test missing rate on the same test masks. Reports mean +- std over seeds, and the fraction of the
zero-fill -> upper-bound MAE gap that TRML closes. Writes JSON and prints a Markdown table.

    .venv/bin/python benchmarks/bench_missing.py --out bench_out/missing
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from trml_edge.data.synth import SynthSpec, generate
from trml_edge.eval.experiment import ExperimentConfig, prepare_experiment, run_experiment
from trml_edge.train.pretrain import PretrainConfig, pretrain

METHODS = ["TRML", "zero-fill", "mean-fill", "modality dropout", "upper bound"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out/missing"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[150, 696], help="labelled training clips")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--pretrain-epochs", type=int, default=24)
    args = ap.parse_args()

    t0 = time.perf_counter()
    data, clip_dir = args.out / "data", args.out / "clip"
    if not (data / "synth.json").is_file():
        generate(data, SynthSpec(n=1200, pool=6000, seed=0))
    weights = clip_dir / "open_clip_model.safetensors"
    if not weights.is_file():
        pretrain(PretrainConfig(pool=str(data / "pretrain"), out=str(clip_dir), epochs=args.pretrain_epochs))
    base = ExperimentConfig(data=str(data), out=str(args.out), clip_weights=str(weights))
    arrays, inputs = prepare_experiment(base)

    raw = []
    for size in args.sizes:
        for seed in args.seeds:
            cfg = ExperimentConfig(data=str(data), out=str(args.out / f"n{size}_s{seed}"), clip_weights=str(weights),
                                   epochs=args.epochs, seed=seed, max_train=size, test_rates=args.rates)
            res = run_experiment(cfg, arrays=arrays, inputs=inputs, progress=False)
            raw += [{"size": size, "seed": seed, **r} for r in res["rows"]]
            print(f"size {size} seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)

    summary = summarize(raw)
    out = {"sizes": args.sizes, "seeds": args.seeds, "rates": args.rates, "epochs": args.epochs,
           "seconds": time.perf_counter() - t0, "summary": summary, "raw": raw}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_missing.json").write_text(json.dumps(out, indent=2) + "\n")
    print(markdown(summary))


def summarize(raw: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in raw:
        groups[r["size"], r["test_missing_rate"], r["method"]].append(r)
    rows = []
    for (size, rate, method), rs in sorted(groups.items()):
        row = {"size": size, "rate": rate, "method": method}
        for k in ("mae", "has0_acc2", "has0_f1", "corr"):
            v = np.array([r[k] for r in rs])
            row[k] = [float(v.mean()), float(v.std())]
        if method == "TRML":  # share of the zero-fill -> upper-bound MAE gap closed, per seed
            closed = []
            for r in rs:
                z = _find(raw, size, rate, "zero-fill", r["seed"])["mae"]
                u = _find(raw, size, rate, "upper bound", r["seed"])["mae"]
                closed.append((z - r["mae"]) / (z - u) if abs(z - u) > 1e-9 else float("nan"))
            row["gap_closed"] = [float(np.mean(closed)), float(np.std(closed))]
        rows.append(row)
    return rows


def _find(raw, size, rate, method, seed):
    return next(r for r in raw if (r["size"], r["test_missing_rate"], r["method"], r["seed"]) ==
                (size, rate, method, seed))


def markdown(summary: list[dict]) -> str:
    lines = ["| labelled | test missing | method | MAE | Has0 Acc-2 | Corr | gap closed |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    order = {m: i for i, m in enumerate(METHODS)}
    for r in sorted(summary, key=lambda r: (r["size"], r["rate"], order[r["method"]])):
        gap = f"{r['gap_closed'][0]:.2f} ± {r['gap_closed'][1]:.2f}" if "gap_closed" in r else ""
        lines.append(f"| {r['size']} | {r['rate']:.1f} | {r['method']} | {r['mae'][0]:.3f} ± {r['mae'][1]:.3f} | "
                     f"{r['has0_acc2'][0]:.3f} ± {r['has0_acc2'][1]:.3f} | {r['corr'][0]:.3f} ± {r['corr'][1]:.3f} "
                     f"| {gap} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
