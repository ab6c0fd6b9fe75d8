"""Per-graph precision recommendation, measured: the fastest precision for each graph whose end-to-end
metrics stay within the accuracy budget in every scenario, saved as an export recipe.

The search is greedy and every step is measured, never assumed:

1. start from the most precise option of every graph (FP32 where a bundle has it) and score it end to end;
2. take the graphs in order of the time they could save (their measured per-graph latency, most precise
   option minus fastest option), and for each try its faster options, fastest first: the whole pipeline,
   with that one graph swapped in, is scored in the three scenarios; the first option within budget stays.

Each trial is kept in the report, so a rejected INT8 graph shows the scenario and delta that broke the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from trml_edge.graphs import GRAPH_NAMES
from trml_edge.runtime.bundle import Bundle

PRECISION_RANK = {"fp32": 0, "fp16": 1, "int8": 2}  # as parity.PRECISION_RANK (that module imports torch)


@dataclass(frozen=True)
class Option:
    graph: str
    precision: str
    label: str  # the bundle it comes from
    sha256: str


def export_settings(b) -> dict[str, Any]:
    """The export settings a recipe holds for all graphs at once: graphs can only be mixed (and rebuilt by one
    recipe) across bundles that agree on them."""
    m = getattr(b, "manifest", {})
    return {"ort_optimize": bool(m.get("ort_optimize", False)), "opset": int(m.get("opset", 17)),
            "target": m.get("target", "cpu")}


def mixable(bundles: dict[str, Bundle]) -> tuple[dict[str, Bundle], dict[str, str]]:
    """The bundles whose export settings agree with the largest group (ties: the first bundle's), and why
    each other bundle is left out of the search."""
    keys = {label: tuple(sorted(export_settings(b).items())) for label, b in bundles.items()}
    order = list(keys.values())
    best = max(order, key=lambda k: (order.count(k), -order.index(k)))
    keep = {label: b for label, b in bundles.items() if keys[label] == best}
    left = {label: f"exported with {dict(keys[label])}, the others with {dict(best)}: one recipe cannot "
            "rebuild both, so its graphs are timed and scored but not mixed" for label in bundles if label not in keep}
    return keep, left


def options(bundles: dict[str, Bundle]) -> dict[str, list[Option]]:
    """Per graph: the distinct graph files across the bundles (deduplicated by sha256)."""
    out: dict[str, list[Option]] = {}
    for g in GRAPH_NAMES:
        seen = {}
        for label, b in bundles.items():
            e = b.graphs[g]
            seen.setdefault(e["sha256"], Option(g, e["precision"], label, e["sha256"]))
        out[g] = sorted(seen.values(), key=lambda o: PRECISION_RANK[o.precision])
    return out


def recommend(bundles: dict[str, Bundle], graph_ms: dict[str, dict[str, float]],
              score: Callable[[dict[str, Option]], list[dict[str, Any]]],
              tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """``graph_ms[label][graph]``: the measured latency of that bundle's graph (ms, summed over the timed
    scenarios and batches); ``score(picks)`` scores a pipeline assembled from ``picks`` end to end."""
    opts = options(bundles)
    picks = {g: o[0] for g, o in opts.items()}
    trials = []

    def trial(picks_now: dict[str, Option], changed: str | None) -> list[dict[str, Any]]:
        rows = score(picks_now)
        trials.append({"changed": changed, "precision": picks_now[changed].precision if changed else None,
                       "from_bundle": picks_now[changed].label if changed else None,
                       "within_budget": all(r["within_budget"] for r in rows),
                       "scenarios": [{"scenario": r["scenario"], "delta": r["delta"],
                                      "within_budget": r["within_budget"]} for r in rows]})
        if tick:
            tick()
        return rows

    rows = trial(picks, None)
    if not all(r["within_budget"] for r in rows):
        bad = [r["scenario"] for r in rows if not r["within_budget"]]
        return {"status": "none", "reason": f"even the most precise graphs are out of budget in {', '.join(bad)}; "
                "loosen --accuracy-budget or retrain", "trials": trials}
    ms = lambda o: graph_ms[o.label][o.graph]  # noqa: E731
    order = sorted(GRAPH_NAMES, key=lambda g: ms(opts[g][0]) - min(ms(o) for o in opts[g]), reverse=True)
    for g in order:
        for o in sorted((o for o in opts[g] if ms(o) < ms(picks[g])), key=ms):
            cand = {**picks, g: o}
            cand_rows = trial(cand, g)
            if all(r["within_budget"] for r in cand_rows):
                picks, rows = cand, cand_rows
                break
    return {"status": "ok", "precision": {g: o.precision for g, o in picks.items()},
            "source": {g: o.label for g, o in picks.items()},
            "graph_ms": {g: ms(o) for g, o in picks.items()}, "accuracy": rows, "trials": trials,
            "picks": picks}


def recipe_toml(rec: dict[str, Any], bundles: dict[str, Bundle], budget: dict[str, float], name: str) -> str:
    """The recommendation as an export recipe (format: ``trml_edge.export.recipe``)."""
    picks: dict[str, Option] = rec["picks"]
    int8 = [bundles[o.label] for o in picks.values() if o.precision == "int8"]
    first = next(iter(bundles.values()))
    settings = export_settings(first)
    lines = [f"# Written by `trml-edge profile`: per graph, the fastest measured precision whose end-to-end",
             f"# metrics stayed within the budget {budget} in every scenario.",
             f'name = "{name}"',
             'description = "measured by trml-edge profile"',
             f'target = "{settings["target"]}"',
             f"opset = {settings['opset']}",
             f"ort_optimize = {'true' if settings['ort_optimize'] else 'false'}  # as the measured graphs were built"]
    if int8:
        src = int8[0].manifest
        lines.append(f'int8_preset = "{src["int8_preset"]["name"]}"')
        lines.append(f'calibration = "{src["calibration"]["path"]}"  # the set the measured INT8 graphs used')
    lines += ["", "[precision]"] + [f'{g} = "{p}"' for g, p in rec["precision"].items()]
    # the export gate checks the same budget the profile measured against (its keys acc_drop / mae_rise)
    gate = {}
    if "acc2" in budget or "acc" in budget:
        gate["acc_drop"] = budget.get("acc2", budget.get("acc"))
    if "mae" in budget:
        gate["mae_rise"] = budget["mae"]
    for p in sorted(set(rec["precision"].values()), key=PRECISION_RANK.__getitem__):
        if gate:
            lines += ["", f"[budgets.{p}]"] + [f"{k} = {v!r}" for k, v in gate.items()]
    return "\n".join(lines) + "\n"


def write_recipe(rec: dict[str, Any], bundles: dict[str, Bundle], budget: dict[str, float], path: Path) -> Path:
    path.write_text(recipe_toml(rec, bundles, budget, path.stem), encoding="utf-8")
    return path
