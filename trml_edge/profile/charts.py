"""PNG charts of a profile report (matplotlib, Agg backend; imported only when charts are drawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCENARIO_COLORS = {"complete": "tab:blue", "visual_missing": "tab:orange", "text_missing": "tab:green"}
MARKERS = "osD^vP*X"
PARTS = ("preprocess", "tokenize", "image_encoder", "temporal_encoder", "text_encoder", "gen_text_to_visual",
         "gen_visual_to_text", "fusion_head", "other")


def _plt():
    from trml_edge.errors import require

    mpl = require("matplotlib", "profile")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto(rep: dict[str, Any], path: Path) -> Path:
    """Latency (p50, batch 1) against the headline accuracy metric: one point per bundle and scenario, with
    each scenario's Pareto front (faster and at least as accurate) as a dashed line."""
    plt = _plt()
    batch = rep["settings"]["batches"][0]
    lat = {(r["backend"], r["bundle"], r["scenario"]): r["latency"]["p50_ms"] for r in rep["latency"]
           if r["status"] == "OK" and r.get("batch") == batch and r["backend"] in ("ort-cpu", "pytorch-eager")}
    acc = rep["accuracy"]
    metric = acc.get("headline_metric")
    score = {}
    if acc["status"] == "ok":
        score = {(r["bundle"], r["scenario"]): r["metrics"][metric] for r in acc["rows"]}
    bundles = sorted({b for _, b, _ in lat}, key=lambda b: (b != "pytorch-fp32", b))
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    scen_y = {s: i for i, s in enumerate(SCENARIO_COLORS)}
    for scenario, color in SCENARIO_COLORS.items():
        pts = []
        for i, b in enumerate(bundles):
            key = next((k for k in lat if k[1] == b and k[2] == scenario), None)
            if key is None:
                continue
            y = score.get((b, scenario), scen_y[scenario]) if score else scen_y[scenario]
            ax.scatter(lat[key], y, color=color, marker=MARKERS[i % len(MARKERS)], s=60, zorder=3,
                       edgecolors="black", linewidths=0.5)
            pts.append((lat[key], y))
        if score and len(pts) > 1:
            front, best = [], float("-inf")
            for x, y in sorted(pts, key=lambda p: (p[0], -p[1])):
                if y > best:
                    front.append((x, y))
                    best = y
            ax.plot(*zip(*front), color=color, linestyle="--", linewidth=1, zorder=2)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", linestyle="--" if score else "", label=s.replace("_", " "))
               for s, c in SCENARIO_COLORS.items()]
    handles += [Line2D([], [], color="gray", marker=MARKERS[i % len(MARKERS)], linestyle="", label=b,
                       markeredgecolor="black") for i, b in enumerate(bundles)]
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"end-to-end latency, p50 (ms per call, batch {batch}, CPU; log scale)")
    if score:
        ax.set_ylabel(f"{metric} on the test split (higher is better)")
        ax.set_title("Latency vs accuracy per bundle and scenario (dashed: Pareto front)")
    else:
        ax.set_yticks(list(scen_y.values()), [s.replace("_", " ") for s in scen_y])
        ax.set_ylabel("scenario")
        ax.set_title("Latency per bundle and scenario (accuracy n/a: no --data)")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def breakdown(rep: dict[str, Any], path: Path) -> Path:
    """Stacked horizontal bars: mean time per part (graphs, preprocess, tokenize, other) per bundle and
    scenario, ONNX Runtime CPU at the first batch size."""
    plt = _plt()
    batch = rep["settings"]["batches"][0]
    rows = [r for r in rep["latency"] if r["status"] == "OK" and r.get("batch") == batch
            and r["backend"] == "ort-cpu"]
    labels = [f"{r['bundle']} | {r['scenario'].replace('_', ' ')}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.6), dpi=110)
    cmap = plt.get_cmap("tab10")
    left = [0.0] * len(rows)
    for j, part in enumerate(PARTS):
        widths = [max(r["latency"]["breakdown_ms"].get(part, 0.0), 0.0) for r in rows]
        if not any(widths):
            continue
        ax.barh(range(len(rows)), widths, left=left, color=cmap(j % 10), label=part.replace("_", " "),
                edgecolor="white", linewidth=0.5)
        left = [a + w for a, w in zip(left, widths)]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"mean time per call (ms, batch {batch})")
    ax.set_title("Where the time goes, per graph (ONNX Runtime, CPU)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
