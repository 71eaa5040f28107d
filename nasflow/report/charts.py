"""The report's plots as Altair (Vega-Lite) charts; data is inlined, so a page needs no server.

Every tooltip names where its numbers came from: the accuracy's source (proxy, full, supernet,
artifact) and the latency's (measured, lut, predicted, estimated) with the runtime.
"""

from __future__ import annotations

from typing import Any

import altair as alt

from .data import RunData, best_so_far, morph_edges

WIDTH, HEIGHT = 560, 320

_POINT_TOOLTIP = [
    alt.Tooltip("run:N"), alt.Tooltip("stage:N"), alt.Tooltip("arch:N"),
    alt.Tooltip("accuracy:Q", format=".4f"), alt.Tooltip("accuracy_source:N", title="accuracy from"),
    alt.Tooltip("test_accuracy:Q", format=".4f", title="test accuracy"),
    alt.Tooltip("latency_ms:Q", format=".4g", title="latency ms"), alt.Tooltip("latency_source:N", title="latency from"),
    alt.Tooltip("runtime:N"), alt.Tooltip("params:Q", format=","), alt.Tooltip("macs:Q", format=",", title="MACs"),
    alt.Tooltip("score:Q", format=".4f"),
]


def _values(rows: list[dict[str, Any]]) -> alt.Data:
    # inline values, not a DataFrame: no row limit, no pandas, and the page stays self-contained
    return alt.Data(values=rows)


def pareto_chart(runs: list[RunData], device: str) -> alt.Chart | None:
    """Every candidate with a latency on `device` (faint) and each run's Pareto front (joined)."""
    points, fronts = [], []
    for run in runs:
        points += run.points(device)
        fronts += [{**p, "on_front": True} for p in run.front(device)]
    if not points:
        return None
    compare = len(runs) > 1
    color = alt.Color("run:N" if compare else "stage:N", title="run" if compare else "stage")
    x = alt.X("latency_ms:Q", title=f"latency on {device}, ms (batch 1)", scale=alt.Scale(type="log", nice=False, padding=14))
    y = alt.Y("accuracy:Q", title="validation accuracy", scale=alt.Scale(zero=False, padding=14))
    hover = alt.selection_point(on="pointerover", nearest=True, fields=["candidate_id"], empty=False)
    every = alt.Chart(_values(points)).mark_point(filled=True, size=40).encode(
        x=x, y=y, color=color, shape=alt.Shape("accuracy_source:N", title="accuracy from"),
        opacity=alt.condition(hover, alt.value(1.0), alt.value(0.55)), tooltip=_POINT_TOOLTIP,
    ).add_params(hover)
    front = alt.Chart(_values(fronts)).mark_line(point=True, interpolate="step-after").encode(
        x=x, y=y, detail="run:N", color=alt.Color("run:N", title="front of") if compare else alt.value("#333"),
        tooltip=_POINT_TOOLTIP, order="latency_ms:Q",
    )
    title = f"Accuracy and latency on {device}: {'fronts of ' + str(len(runs)) + ' runs' if compare else 'Pareto front'}"
    return alt.layer(every, front).properties(width=WIDTH, height=HEIGHT, title=title).interactive()


def progress_chart(runs: list[RunData]) -> alt.Chart | None:
    """Best score so far against candidates evaluated (sample-based searches), one line per run."""
    rows = [r for run in runs for r in best_so_far(run)]
    if sum(1 for r in rows if r["score"] is not None) < 2:
        return None
    tooltip = ["run:N", "evaluated:Q", alt.Tooltip("score:Q", format=".4f"), alt.Tooltip("best_score:Q", format=".4f"),
               "arch:N", alt.Tooltip("accuracy:Q", format=".4f"), "accuracy_source:N", "status:N"]
    base = alt.Chart(_values(rows)).encode(x=alt.X("evaluated:Q", title="candidates evaluated"),
                                           color=alt.Color("run:N"))
    best = base.mark_line(interpolate="step-after").encode(y=alt.Y("best_score:Q", title="score (best so far: line)",
                                                                                 scale=alt.Scale(zero=False)),
                                                          tooltip=tooltip)
    each = base.mark_point(opacity=0.5).encode(y="score:Q", tooltip=tooltip)
    return alt.layer(best, each).properties(width=WIDTH, height=HEIGHT * 3 // 4, title="Search progress").interactive()


def search_log_chart(run: RunData) -> alt.Chart | None:
    """The strategy's logged metrics per step (losses, accuracies, entropy, expected latency)."""
    rows = [r for r in run.search_log if not r["metric"].startswith(("weight.", "choice."))]
    if not rows:
        return None
    return alt.Chart(_values(rows)).mark_line(point=True).encode(
        x=alt.X("step:Q", title="step (batch or epoch)"), y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
        tooltip=["metric:N", "step:Q", alt.Tooltip("value:Q", format=".4g")],
    ).properties(width=WIDTH // 2, height=90).facet(
        facet=alt.Facet("metric:N", title=None), columns=2,
    ).resolve_scale(y="independent").properties(title=f"{run.strategy}: what the search logged per step")


def distribution_rows(run: RunData) -> list[dict[str, Any]]:
    """Per step and decision, the most likely choice and every choice's weight (one-shot strategies)."""
    decisions = sorted({r["metric"][len("choice."):] for r in run.search_log if r["metric"].startswith("choice.")},
                       key=len, reverse=True)  # longest first: a name may be a prefix of another
    weights: dict[tuple[int, str], dict[str, float]] = {}
    for r in run.search_log:
        if not r["metric"].startswith("weight."):
            continue
        rest = r["metric"][len("weight."):]
        decision = next((d for d in decisions if rest.startswith(d + ".")), None)
        if decision is not None:
            weights.setdefault((r["step"], decision), {})[rest[len(decision) + 1:]] = r["value"]
    rows = []
    order = {d: i for i, d in enumerate(sorted(decisions, key=_natural))}
    for (step, decision), choices in sorted(weights.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        label, weight = max(choices.items(), key=lambda kv: kv[1])
        rows.append({"step": step, "decision": decision, "order": order[decision], "choice": label, "weight": weight,
                     "weights": ", ".join(f"{k} {v:.2f}" for k, v in sorted(choices.items(), key=lambda kv: -kv[1]))})
    return rows


def distribution_chart(run: RunData) -> alt.Chart | None:
    """The architecture distribution per epoch: each decision's most likely choice, shaded by its weight."""
    rows = distribution_rows(run)
    if not rows:
        return None
    return alt.Chart(_values(rows)).mark_rect().encode(
        x=alt.X("step:O", title="epoch"), y=alt.Y("decision:N", sort=alt.EncodingSortField(field="order", op="min"), title=None),
        color=alt.Color("choice:N", title="most likely"), opacity=alt.Opacity("weight:Q", scale=alt.Scale(domain=[0, 1])),
        tooltip=["step:O", "decision:N", "choice:N", alt.Tooltip("weight:Q", format=".3f"), "weights:N"],
    ).properties(width=WIDTH, height=max(120, 16 * len({r["decision"] for r in rows})),
                 title=f"{run.strategy}: architecture distribution per epoch")


def layers_chart(run: RunData, device: str) -> alt.Chart | None:
    """The chosen model block by block, each bar its LUT milliseconds on `device`."""
    layers = run.layers.get(device)
    if not layers:
        return None
    total = sum(layer.lut_ms or 0.0 for layer in layers)
    macs = sum(layer.macs for layer in layers) or 1
    rows = [{"layer": f"{layer.position:>2} {layer.token}", "position": layer.position, "kind": layer.kind,
             "lut_ms": layer.lut_ms or 0.0, "share": (layer.lut_ms or 0.0) / total if total else 0.0,
             "macs": layer.macs, "macs_share": layer.macs / macs,
             "latency": ("LUT entry" if layer.lut_ms is not None else "not in the LUT" if not layer.in_lut
                         else "executes nothing")}
            for layer in layers]
    y = alt.Y("layer:N", sort=alt.EncodingSortField(field="position", op="min"), title=None)
    tooltip = ["layer:N", "kind:N", alt.Tooltip("lut_ms:Q", format=".4g", title="LUT ms"), "latency:N",
               alt.Tooltip("share:Q", format=".1%", title="share of the LUT sum"),
               alt.Tooltip("macs:Q", format=","), alt.Tooltip("macs_share:Q", format=".1%", title="share of MACs")]
    base = alt.Chart(_values(rows))
    bars = base.mark_bar().encode(y=y, x=alt.X("lut_ms:Q", title=f"LUT latency on {device}, ms (sum {total:.4g} ms)"),
                                  color=alt.Color("kind:N", title="block kind"), tooltip=tooltip)
    unknown = base.transform_filter(alt.datum.latency != "LUT entry").mark_text(
        align="left", dx=4, color="#888").encode(y=y, x=alt.value(0), text="latency:N", tooltip=tooltip)
    title = f"The chosen model on {device}, block by block"
    return alt.layer(bars, unknown).properties(width=WIDTH, height=max(100, 18 * len(rows)), title=title)


def morph_chart(run: RunData) -> alt.Chart | None:
    """Parent -> child of each morph: MACs and accuracy before and after."""
    edges = morph_edges(run)
    if not edges:
        return None
    rows = []
    for number, edge in enumerate(edges, 1):
        for role in ("parent", "child"):
            c = edge[role]
            rows.append({"edge": number, "role": role, "stage": c["stage"], "arch": c["arch"], "macs": c["macs"],
                         "params": c["params"], "accuracy": c["accuracy"], "accuracy_source": c.get("accuracy_source"),
                         "test_accuracy": c.get("test_accuracy"), "cycle": (c.get("extra") or {}).get("cycle")})
    tooltip = ["role:N", "stage:N", "arch:N", alt.Tooltip("macs:Q", format=","), alt.Tooltip("params:Q", format=","),
               alt.Tooltip("accuracy:Q", format=".4f"), "accuracy_source:N", alt.Tooltip("test_accuracy:Q", format=".4f")]
    x = alt.X("macs:Q", title="MACs per image", scale=alt.Scale(zero=False, padding=14))
    y = alt.Y("accuracy:Q", title="validation accuracy", scale=alt.Scale(zero=False, padding=14))
    base = alt.Chart(_values(rows))
    lines = base.mark_line(strokeDash=[4, 3], color="#888").encode(x=x, y=y, detail="edge:N")
    dots = base.mark_point(filled=True, size=80).encode(x=x, y=y, color=alt.Color("role:N"), tooltip=tooltip)
    return alt.layer(lines, dots).properties(width=WIDTH, height=HEIGHT * 3 // 4,
                                             title="Morph history: parent -> child").interactive()


def _natural(text: str) -> tuple:
    """Sort key that puts layer2 before layer10."""
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))
