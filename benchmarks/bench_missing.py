"""The paper's claim, measured: TRML against zero-fill, mean-fill, modality dropout, the upper bound and the
Bayes limit, under two missing-modality protocols, with a diagnosis of where the accuracy goes.

One synthetic benchmark and one pretrained tiny CLIP (the foundation model) are shared. For every labelled
set size and seed:

* protocol ``either`` (this repository's): training with 50 % of the samples missing one modality (either,
  redrawn every epoch), testing with a fraction ``rate`` of the test samples missing one modality;
* protocol ``visual r`` (the victim-modality protocol of MM-Align, EMNLP 2022): only a fraction ``r`` (the
  complete ratio) of the labelled clips keep their video, the rest miss it for the whole training (fixed
  masks); testing with the video missing in every test sample (rate 1.0) and at the training rate (1 - r).
  The zero-fill, mean-fill and upper-bound rows come from the complete-data model (all videos seen), so
  they are not available under that protocol's premise; modality dropout is the like-for-like baseline.

Every method is scored on the same test masks. The Bayes limits (``trml_edge.eval.bayes``) are added as
rows: ``Bayes limit`` from what the generator renders (a lower bound for any predictor of these clips),
``Bayes limit (latent)`` from the latents themselves. Reports mean +- std over seeds and the share of the
zero-fill -> upper-bound MAE gap that TRML closes; writes JSON and a Markdown file.

    .venv/bin/python benchmarks/bench_missing.py --out bench_out/missing          # the full grid
    .venv/bin/python benchmarks/bench_missing.py --eval-split valid ...          # choosing settings
    .venv/bin/python benchmarks/bench_missing.py --pairs pool train ...         # + TRML (pairs)

With ``--pairs``, a second TRML ("TRML (pairs)") is trained in every cell beside today's, its generators
learned first from unlabelled pairs (``trml-edge generators``: ``pool`` is DATA/pretrain, ``train`` the
training split's clips without their labels; once per seed), and the either protocol adds two test
scenarios: the video missing in every test clip and the text missing in every test clip (``--scenarios``
adds them without ``--pairs``).

The training split has 696 clips, so size 696 is the full training split.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from trml_edge.config import MissingConfig
from trml_edge.data.synth import SynthSpec, generate
from trml_edge.eval.bayes import bayes_limits, latent_r2, mixture_limit, retrieval_limit
from trml_edge.eval.experiment import ExperimentConfig, prepare_experiment, run_experiment
from trml_edge.model.losses import OBJECTIVES
from trml_edge.train.loop import GEN_UPDATES, TrainConfig
from trml_edge.train.pairs_config import PairsConfig
from trml_edge.train.pretrain import PretrainConfig, pretrain

PAIRS = "TRML (pairs)"
METHODS = ["TRML", PAIRS, "zero-fill", "mean-fill", "modality dropout", "upper bound", "Bayes limit",
           "Bayes limit (latent)"]
SCENARIOS = {"either: video missing": "visual", "either: text missing": "text"}  # --pairs: test rate 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out/missing"))
    ap.add_argument("--data", type=Path, default=None, help="dataset (default OUT/data, generated if absent)")
    ap.add_argument("--clip", type=Path, default=None,
                    help="pretrained CLIP dir (default OUT/clip, pretrained if absent)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[150, 400, 696], help="labelled training clips")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7])
    ap.add_argument("--protocols", nargs="+", default=["either", "victim"], choices=["either", "victim"])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.5], help="victim protocol: complete ratios")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--pretrain-epochs", type=int, default=PretrainConfig.epochs)
    ap.add_argument("--eval-split", default="test", choices=["test", "valid"])
    ap.add_argument("--gen-warmup-epochs", type=int, default=TrainConfig.gen_warmup_epochs)
    ap.add_argument("--pair-data", default=TrainConfig.pair_data, choices=["labelled", "train_split"])
    ap.add_argument("--gen-init", default=TrainConfig.gen_init, choices=["identity", "gap"])
    ap.add_argument("--gen-update", default=TrainConfig.gen_update, choices=list(GEN_UPDATES),
                    help="TRML: what trains its generators in the joint training")
    ap.add_argument("--gen-loss", default=TrainConfig.gen_loss, choices=list(OBJECTIVES),
                    help="TRML: the matching objective")
    ap.add_argument("--pairs", nargs="+", default=None,
                    help="also train TRML (pairs): generators from these unlabelled pairs (pool, train, or paths)")
    ap.add_argument("--pairs-objective", default=PairsConfig.objective, choices=list(OBJECTIVES))
    ap.add_argument("--pairs-tau", type=float, default=PairsConfig.tau)
    ap.add_argument("--pairs-epochs", type=int, default=PairsConfig.epochs)
    ap.add_argument("--pairs-lr", type=float, default=PairsConfig.lr)
    ap.add_argument("--pairs-gen-update", default=TrainConfig.gen_update, choices=list(GEN_UPDATES),
                    help="TRML (pairs): what trains its generators in the joint training")
    ap.add_argument("--pairs-gen-loss", default=TrainConfig.gen_loss, choices=list(OBJECTIVES),
                    help="TRML (pairs): the matching objective of the joint training")
    ap.add_argument("--pairs-alpha", type=float, default=None, help="TRML (pairs): alpha [default: --alpha]")
    ap.add_argument("--alpha", type=float, default=ExperimentConfig.alpha)
    ap.add_argument("--tau", type=float, default=ExperimentConfig.tau)
    ap.add_argument("--baselines-from", type=Path, default=None,
                    help="reuse the complete and dropout runs of an earlier --out (when only TRML's settings "
                    "change); with --pairs, its TRML runs too (when only TRML (pairs)'s settings change)")
    ap.add_argument("--scenarios", action="store_true",
                    help="add the either protocol's two test scenarios without --pairs (they come with it)")
    ap.add_argument("--bayes-n", type=int, default=20000, help="Monte Carlo samples per Bayes scenario")
    ap.add_argument("--no-diagnose", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    data = args.data or args.out / "data"
    clip_dir = args.clip or args.out / "clip"
    if not (data / "synth.json").is_file():
        generate(data, SynthSpec(n=1200, seed=0))  # the default pool
    weights = clip_dir / "open_clip_model.safetensors"
    if not weights.is_file():
        pretrain(PretrainConfig(pool=str(data / "pretrain"), out=str(clip_dir), epochs=args.pretrain_epochs))
    common = dict(data=str(data), clip_weights=str(weights), epochs=args.epochs, alpha=args.alpha, tau=args.tau,
                  gen_warmup_epochs=args.gen_warmup_epochs, pair_data=args.pair_data, gen_init=args.gen_init,
                  gen_update=args.gen_update, gen_loss=args.gen_loss,
                  eval_split=args.eval_split)
    arrays, inputs = prepare_experiment(ExperimentConfig(out=str(args.out), **common))
    limits = bayes_limits(n=args.bayes_n)
    ceilings = latent_r2(n=args.bayes_n)
    retrieval = retrieval_limit(n=len(arrays[args.eval_split]))
    print(f"Bayes limits ({time.perf_counter() - t0:.0f} s): " + json.dumps(
        {lv: {s: round(v["mae"], 3) for s, v in d.items()} for lv, d in limits.items()}), flush=True)

    raw, diagnosis, generators = [], [], {}
    for size in args.sizes:
        for seed in args.seeds:
            root = args.out / f"n{size}_s{seed}"
            base = args.baselines_from / f"n{size}_s{seed}" if args.baselines_from else None
            if args.pairs and seed not in generators:
                generators[seed] = _generators(args, data, weights, seed)
            for proto, ecfg in _protocols(args, size, seed, root, base, common):
                res = run_experiment(ecfg, arrays=arrays, inputs=inputs, progress=False)
                rows = res["rows"]
                pcfg = _pairs_experiment(args, ecfg, generators[seed]) if args.pairs else None
                if pcfg is not None:
                    rows += [dict(r, method=PAIRS) for r in
                             run_experiment(pcfg, arrays=arrays, inputs=inputs, progress=False)["rows"]
                             if r["method"] == "TRML"]
                raw += [{"size": size, "seed": seed, "protocol": proto, **r} for r in rows]
                if proto == "either" and (pcfg is not None or args.scenarios):
                    raw += [{"size": size, "seed": seed, **r} for r in _scenarios(ecfg, pcfg, arrays, inputs)]
                if proto == "either" and not args.no_diagnose:
                    diagnosis.append({"size": size, "seed": seed, **_diagnose(
                        data, arrays, inputs, Path(ecfg.reuse.get("trml", Path(ecfg.out) / "trml")), size, seed,
                        args.eval_split,
                        pcfg and (Path(pcfg.out) / "trml"), generators.get(seed))})
            print(f"size {size} seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)

    summary = summarize(raw) + bayes_rows(raw, limits)
    out = {"command": "benchmarks/bench_missing.py " + " ".join(_argv()), "sizes": args.sizes, "seeds": args.seeds,
           "rates": args.rates, "protocols": args.protocols, "ratios": args.ratios, "epochs": args.epochs,
           "eval_split": args.eval_split, "gen_warmup_epochs": args.gen_warmup_epochs, "pair_data": args.pair_data,
           "gen_init": args.gen_init, "gen_update": args.gen_update, "gen_loss": args.gen_loss,
           "alpha": args.alpha, "tau": args.tau,
           "pairs": _pairs_settings(args) if args.pairs else None, "seconds": time.perf_counter() - t0,
           "load_avg": _loadavg(),
           "bayes": limits,
           "bayes_r2": ceilings, "bayes_retrieval": retrieval, "foundation": _foundation(data, clip_dir),
           "summary": summary, "diagnosis": diagnosis, "diagnosis_summary": summarize_diagnosis(diagnosis),
           "raw": raw}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_missing.json").write_text(json.dumps(out, indent=2) + "\n")
    md = "\n\n".join([compact_markdown(summary, raw), markdown(summary),
                       diagnosis_markdown(out["diagnosis_summary"], limits, ceilings, args.eval_split, retrieval)])
    (args.out / "bench_missing.md").write_text(md + "\n")
    print(md)
    print(f"total {time.perf_counter() - t0:.0f} s")


def _foundation(data: Path, clip_dir: Path) -> dict:
    """What the foundation model was pretrained on and how (its pool's captions, its pretraining config)."""
    synth = data / "synth.json"
    spec = json.loads(synth.read_text()).get("spec", {}) if synth.is_file() else {}
    meta = json.loads((clip_dir / "open_clip_config.json").read_text()).get("preprocess_cfg", {})
    return {"clip": str(clip_dir), "pool_captions": spec.get("pool_captions", "v1"), "pool": spec.get("pool"),
            "pretrain": meta.get("pretrain"), "final_loss": (meta.get("epoch_losses") or [None])[-1]}


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").is_file() else ""


def _pairs_settings(args) -> dict:
    return {"sources": args.pairs, "objective": args.pairs_objective, "tau": args.pairs_tau,
            "epochs": args.pairs_epochs, "lr": args.pairs_lr, "gen_update": args.pairs_gen_update,
            "gen_loss": args.pairs_gen_loss, "alpha": args.alpha if args.pairs_alpha is None else args.pairs_alpha}


def _generators(args, data: Path, weights: Path, seed: int) -> Path:
    """The generators of ``--pairs`` for ``seed``, learned once (stage 0) and reused by every size."""
    from dataclasses import asdict

    from trml_edge.config import TRMLConfig
    from trml_edge.train.pairs import META, WEIGHTS, train_generators

    out = args.out / "generators" / f"s{seed}"
    sources = [str(data / "pretrain") if s == "pool" else str(data) if s == "train" else s for s in args.pairs]
    cfg = PairsConfig(sources=sources, out=str(out), splits=["train"], valid=str(data), seed=seed,
                      objective=args.pairs_objective, tau=args.pairs_tau, epochs=args.pairs_epochs, lr=args.pairs_lr)
    if (out / WEIGHTS).is_file():
        if json.loads((out / META).read_text())["config"] != asdict(cfg):
            raise SystemExit(f"{out} holds generators learned with other settings; choose another --out")
        return out
    t = time.perf_counter()
    meta = train_generators(cfg, TRMLConfig(), str(weights))
    held = meta["history"][-1]["held_out"]
    print(f"generators s{seed}: {sum(s['pairs'] for s in meta['sources'])} pairs, {time.perf_counter() - t:.0f} s; "
          "valid " + ", ".join(f"{g} cos {q['cos_to_real']:.3f} (mean fill {q['cos_mean_fill']:.3f}) rank "
                               f"{q['median_rank']:.0f}" for g, q in held.items()), flush=True)
    return out


def _pairs_experiment(args, ecfg: ExperimentConfig, gen_dir: Path) -> ExperimentConfig:
    """TRML (pairs) beside ``ecfg``'s TRML: the same baselines, its generators from ``gen_dir``."""
    from dataclasses import replace

    reuse = {n: ecfg.reuse.get(n, str(Path(ecfg.out) / n)) for n in ("complete", "dropout")}
    return replace(ecfg, out=ecfg.out + "_pairs", gen_init="pairs", generators=str(gen_dir), gen_warmup_epochs=0,
                   gen_update=args.pairs_gen_update, gen_loss=args.pairs_gen_loss, reuse=reuse,
                   alpha=args.alpha if args.pairs_alpha is None else args.pairs_alpha)


def _scenarios(ecfg: ExperimentConfig, pcfg: ExperimentConfig | None, arrays, inputs) -> list[dict]:
    """Every method with the video missing in every test clip, then with the text missing in every test clip
    (the models of the either protocol): where each missing modality costs what."""
    from trml_edge.eval.evaluate import Method, compare, methods
    from trml_edge.model.checkpoint import load_run

    run = {n: load_run(Path(ecfg.reuse.get(n, Path(ecfg.out) / n))) for n in ("trml", "complete", "dropout")}
    ms = methods(run["trml"], run["complete"], run["dropout"])
    if pcfg is not None:
        ms.append(Method(PAIRS, load_run(Path(pcfg.out) / "trml"), "generator"))
    split = ecfg.eval_split
    test_inputs = {id(m.model): inputs[split] for m in ms}
    return [{"protocol": proto, **r} for proto, modality in SCENARIOS.items()
            for r in compare(ms, arrays[split], [1.0], modality, ecfg.seed, test_inputs)]


def _modality(proto: str) -> str:
    """The modality a protocol's test clips miss."""
    return "either" if proto == "either" else SCENARIOS.get(proto, "visual")


def _protocols(args, size, seed, root, base, common):
    reuse = {} if base is None else {"complete": str(base / "either" / "complete")}
    if "either" in args.protocols:
        r = dict(reuse)
        if base is not None:
            r["dropout"] = str(base / "either" / "dropout")
            if args.pairs:
                r["trml"] = str(base / "either" / "trml")
        yield "either", ExperimentConfig(out=str(root / "either"), seed=seed, max_train=size,
                                         test_rates=args.rates, reuse=r, **common)
    if "victim" in args.protocols:
        for ratio in args.ratios:
            name = f"victim{ratio:g}"
            r = {"complete": reuse.get("complete", str(root / "either" / "complete"))}
            if base is not None:
                r["dropout"] = str(base / name / "dropout")
                if args.pairs:
                    r["trml"] = str(base / name / "trml")
            yield f"visual r={ratio:g}", ExperimentConfig(
                out=str(root / name), seed=seed, max_train=size, fixed_missing=True,
                train_missing=MissingConfig(rate=round(1 - ratio, 6), modality="visual"), test_modality="visual",
                test_rates=sorted({1.0, round(1 - ratio, 6)}), reuse=r, **common)


GENERATOR_SETS = {  # diagnosis key -> (row key prefix, what the table calls it)
    "generators": ("", "TRML"), "generators (pairs)": ("pairs ", "TRML (pairs)"),
    "generators (stage 0)": ("stage0 ", "stage 0 alone"),
}


def _diagnose(data, arrays, inputs, trml_run, size, seed, split="test", pairs_run=None, gen_dir=None):
    """Probes (test passes only: they are scored on the test split) and the generators on ``split``: TRML's,
    TRML (pairs)'s after the joint training, and its stage-0 generators alone (against the mean frame
    embedding, the target they learned)."""
    from trml_edge.eval.diagnose import embedding_probes, generator_quality
    from trml_edge.model.checkpoint import load_run
    from trml_edge.model.trml import TemporalEncoder
    from trml_edge.train.features import train_subset_index
    from trml_edge.train.pairs import load_generators

    out = {}
    if split == "test":
        out["probes"] = embedding_probes(data, arrays, inputs, train_subset_index(len(arrays["train"]), size, seed))
    out["generators"] = generator_quality(load_run(trml_run), data, arrays, inputs, split)
    if pairs_run is not None:
        model = load_run(pairs_run)
        out["generators (pairs)"] = generator_quality(model, data, arrays, inputs, split)
        model.temporal = TemporalEncoder(model.dim, model.cfg.temporal.max_frames)  # at init: the mean frame
        load_generators(model, gen_dir)
        out["generators (stage 0)"] = generator_quality(model, data, arrays, inputs, split)
    return out


def summarize(raw: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in raw:
        groups[r["protocol"], r["size"], r["test_missing_rate"], r["method"]].append(r)
    rows = []
    for (proto, size, rate, method), rs in sorted(groups.items()):
        row = {"protocol": proto, "size": size, "rate": rate, "method": method, "n_seeds": len(rs)}
        for k in ("mae", "has0_acc2", "has0_f1", "corr"):
            v = np.array([np.nan if r.get(k) is None else r[k] for r in rs], dtype=float)
            row[k] = [float(np.nanmean(v)), float(np.nanstd(v))]
        if method.startswith("TRML"):  # share of the zero-fill -> upper-bound MAE gap closed, per seed
            closed = []
            for r in rs:
                z = _find(raw, proto, size, rate, "zero-fill", r["seed"])["mae"]
                u = _find(raw, proto, size, rate, "upper bound", r["seed"])["mae"]
                closed.append((z - r["mae"]) / (z - u) if abs(z - u) > 1e-9 else float("nan"))
            row["gap_closed"] = [float(np.nanmean(closed)), float(np.nanstd(closed))]
        rows.append(row)
    return rows


def bayes_rows(raw: list[dict], limits: dict) -> list[dict]:
    """One Bayes-limit row per (protocol, size, rate), observed and latent."""
    rows = []
    for proto, size, rate in sorted({(r["protocol"], r["size"], r["test_missing_rate"]) for r in raw}):
        modality = _modality(proto)
        for method, level in (("Bayes limit", "observed"), ("Bayes limit (latent)", "latent")):
            rows.append({"protocol": proto, "size": size, "rate": rate, "method": method,
                         "mae": [mixture_limit(limits[level], rate, modality), 0.0]})
    return rows


def _find(raw, proto, size, rate, method, seed):
    return next(r for r in raw if (r["protocol"], r["size"], r["test_missing_rate"], r["method"], r["seed"]) ==
                (proto, size, rate, method, seed))


def _pm(v, d=3):
    return f"{v[0]:.{d}f} ± {v[1]:.{d}f}" if v is not None and not np.isnan(v[0]) else ""


def markdown(summary: list[dict]) -> str:
    order = {m: i for i, m in enumerate(METHODS)}
    out = []
    for proto in sorted({r["protocol"] for r in summary}, key=lambda p: (p != "either", p)):
        out += [f"### protocol: {proto}", "",
                "| labelled | test missing | method | MAE | Has0 Acc-2 | Corr | gap closed |",
                "|---:|---:|---|---:|---:|---:|---:|"]
        rows = [r for r in summary if r["protocol"] == proto]
        for r in sorted(rows, key=lambda r: (r["size"], r["rate"], order[r["method"]])):
            out.append(f"| {r['size']} | {r['rate']:.1f} | {r['method']} | {_pm(r['mae'])} | "
                       f"{_pm(r.get('has0_acc2'))} | {_pm(r.get('corr'))} | {_pm(r.get('gap_closed'), 2)} |")
        out.append("")
    return "\n".join(out)


FILLS = ["zero-fill", "mean-fill", "modality dropout"]


def paired_margin(raw: list[dict], proto: str, size: int, rate: float, method: str = "TRML"
                  ) -> tuple[str, float, float]:
    """The best fill baseline (lowest mean MAE) and its per-seed paired margin over ``method`` (positive:
    ``method`` is better), mean and std over seeds."""
    def maes(method):
        rs = sorted((r for r in raw if (r["protocol"], r["size"], r["test_missing_rate"], r["method"]) ==
                     (proto, size, rate, method)), key=lambda r: r["seed"])
        return np.array([r["mae"] for r in rs])

    best = min(FILLS, key=lambda m: maes(m).mean())
    d = maes(best) - maes(method)
    return best, float(d.mean()), float(d.std())


def compact_markdown(summary: list[dict], raw: list[dict]) -> str:
    """MAE only, one line per (protocol, size, rate); the last column is TRML's paired margin over the best
    fill baseline (mean ± std over seeds; marked when larger than twice its std)."""
    trmls = [m for m in ("TRML", PAIRS) if any(r["method"] == m for r in summary)]
    cols = trmls + ["zero-fill", "mean-fill", "modality dropout", "upper bound", "Bayes limit"]
    lines = ["| protocol | labelled | test missing | " + " | ".join(cols) + " | " +
             " | ".join(f"{m} margin over best fill" for m in trmls) + " |",
             "|---|---:|---:|" + "---:|" * len(cols) + "---|" * len(trmls)]
    index = {(r["protocol"], r["size"], r["rate"], r["method"]): r for r in summary}
    keys = sorted({(r["protocol"], r["size"], r["rate"]) for r in summary}, key=lambda k: (k[0] != "either", k))
    for proto, size, rate in keys:
        cells = []
        for m in cols:
            r = index.get((proto, size, rate, m))
            cells.append("" if r is None else (f"{r['mae'][0]:.3f}" if m.startswith("Bayes") else _pm(r["mae"])))
        margins = []
        for m in trmls:
            best, mean, std = paired_margin(raw, proto, size, rate, m)
            margins.append(f"{mean:+.3f} ± {std:.3f} vs {best}" + (" **>2σ**" if mean > 2 * std else ""))
        lines.append(f"| {proto} | {size} | {rate:.1f} | " + " | ".join(cells) + " | " + " | ".join(margins) + " |")
    return "\n".join(lines)


def summarize_diagnosis(diagnosis: list[dict]) -> list[dict]:
    out = []
    for size in sorted({d["size"] for d in diagnosis}):
        ds = [d for d in diagnosis if d["size"] == size]
        row = {"size": size, "n_seeds": len(ds)}
        for name in ds[0].get("probes", {}):
            for k in ("r2", "mae", "corr"):
                v = np.array([d["probes"][name][k] for d in ds])
                row[f"probe {name} {k}"] = [float(v.mean()), float(v.std())]
        for key, (prefix, _) in GENERATOR_SETS.items():
            if key not in ds[0]:
                continue
            for gen in ("v_hat", "t_hat"):
                for k in ds[0][key][gen]:
                    v = np.array([d[key][gen][k] for d in ds], dtype=float)
                    row[f"{prefix}{gen} {k}"] = [float(v.mean()), float(v.std())]
        out.append(row)
    return out


def diagnosis_markdown(rows: list[dict], limits: dict, ceilings: dict, split: str = "test",
                       retrieval: dict | None = None) -> str:
    if not rows:
        return ""
    lines = []
    if "probe y|both mae" in rows[0]:
        lines += ["### where the accuracy goes (test split; probes fitted on the same labelled clips)", "",
                  "| labelled | R² z_v ← visual emb | R² z_t ← text emb | R² z_v ← text emb | probe MAE y ← both | "
                  "probe MAE y ← text | probe MAE y ← visual |",
                  "|---:|---:|---:|---:|---:|---:|---:|",
                  f"| Bayes | {ceilings['z_v|visual']:.3f} | {ceilings['z_t|text']:.3f} | {ceilings['z_v|text']:.3f} | "
                  f"{limits['observed']['complete']['mae']:.3f} | {limits['observed']['visual_missing']['mae']:.3f} | "
                  f"{limits['observed']['text_missing']['mae']:.3f} |"]
        for r in rows:
            lines.append(f"| {r['size']} | {_pm(r['probe z_v|visual r2'])} | {_pm(r['probe z_t|text r2'])} | "
                         f"{_pm(r['probe z_v|text r2'])} | {_pm(r['probe y|both mae'])} | "
                         f"{_pm(r['probe y|text mae'])} | {_pm(r['probe y|visual mae'])} |")
        lines += ["", f"Bayes limits (observed): complete {limits['observed']['complete']['mae']:.3f}, text only "
                  f"{limits['observed']['visual_missing']['mae']:.3f}, visual only "
                  f"{limits['observed']['text_missing']['mae']:.3f}.", ""]
    lines += [f"### the generators ({split} split)", "",
              "| labelled | generators | direction | cos to real | cos identity (t as v) | cos mean-fill | "
              "median rank / n | R@1 | corr(probe on generated, latent) |",
              "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for prefix, label in GENERATOR_SETS.values():
            for gen, name in (("v_hat", "text→visual"), ("t_hat", "visual→text")):
                k = f"{prefix}{gen}"
                if f"{k} cos_to_real" not in r:
                    continue
                lines.append(f"| {r['size']} | {label} | {name} | {_pm(r[f'{k} cos_to_real'])} | "
                             f"{_pm(r[f'{k} cos_identity'])} | {_pm(r[f'{k} cos_mean_fill'])} | "
                             f"{r[f'{k} median_rank'][0]:.0f} / {r[f'{k} n'][0]:.0f} | {_pm(r[f'{k} r_at_1'])} | "
                             f"{_pm(r[f'{k} probe_corr_generated'])} |")
    if retrieval:
        lines += ["", "Bayes limit of the retrieval (the best any embedding can do on this process, from the "
                  "exact posterior of the latents; `trml_edge.eval.bayes.retrieval_limit`): " +
                  "; ".join(f"{name}: median rank {v['median_rank']:.0f} / {v['n']}, R@1 {v['r_at_1']:.3f}"
                            for name, v in retrieval.items()) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
