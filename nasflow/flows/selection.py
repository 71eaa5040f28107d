"""Which recorded candidates a stage builds on: their latency on each device, the cap, the top k."""

from __future__ import annotations

from typing import Any

from ..config import ObjectivesConfig
from ..objectives import meets_latency_cap
from ..registry import Registry


def with_latency(registry: Registry, rows: list[dict], objective_device: str, devices: list[str]) -> list[dict]:
    """`rows` (candidates) with their live model's latency per device and on the objective device.

    Each row gains `latency` ({device: measurement row}), `latency_ms` and `latency_source` (of the
    objective device; None where it has no number). A number measured on the device wins over a
    predicted one for the same candidate; failed measurements (no number) are left out.
    """
    measurements = registry.get_measurements([r["candidate_id"] for r in rows]) if rows else []
    by_candidate: dict[str, dict[str, dict]] = {}
    for m in measurements:
        if m["artifact_id"] is None and m["metric"] == "latency" and m["median_ms"] is not None:
            per_device = by_candidate.setdefault(m["candidate_id"], {})
            if m["device"] not in per_device or m["source"] == "measured":
                per_device[m["device"]] = m
    for row in rows:
        per_device = by_candidate.get(row["candidate_id"], {})
        row["latency"] = {d: per_device[d] for d in devices if d in per_device}
        objective = per_device.get(objective_device)
        row["latency_ms"] = objective["median_ms"] if objective else None
        row["latency_source"] = objective["source"] if objective else None
    return rows


def best_candidates(rows: list[dict[str, Any]], k: int, objectives: ObjectivesConfig) -> list[dict]:
    """The `k` best successful rows by score, leaving out any that break `objectives.max_latency_ms`.

    Rows need `latency_ms` (see with_latency). A model over the cap scores 0 in the search, which
    would still rank it above nothing: it is never handed on as if it met the cap.
    """
    ok = [
        r for r in rows
        if r["status"] == "ok" and r.get("score") is not None and meets_latency_cap(r.get("latency_ms"), objectives)
    ]
    return sorted(ok, key=lambda r: (-r["score"], r["arch_hash"]))[:k]


def over_cap(rows: list[dict[str, Any]], objectives: ObjectivesConfig) -> int:
    """How many successful rows break `objectives.max_latency_ms` (0 when there is no cap)."""
    return sum(1 for r in rows if r["status"] == "ok" and not meets_latency_cap(r.get("latency_ms"), objectives))


def pareto_candidates(registry: Registry, rows: list[dict[str, Any]], k: int, spec) -> list[dict]:
    """The `k` rows taken from the Pareto front of `spec.objectives.pareto` (then the next fronts),
    spread along it by crowding distance; rows missing an objective's value, or over the latency
    cap, are left out. Values are on the search's own latency scale, as the strategy saw them."""
    from ..objectives import spread_along_front
    from .told import candidate_result

    usable = [r for r in rows if r["status"] == "ok" and meets_latency_cap(r.get("latency_ms"), spec.objectives)]
    by_candidate: dict[str, list[dict]] = {}
    for m in registry.get_measurements([r["candidate_id"] for r in usable]) if usable else []:
        by_candidate.setdefault(m["candidate_id"], []).append(m)
    scored = []
    for row in sorted(usable, key=lambda r: r["arch_hash"]):  # a stable order for equal costs
        result = candidate_result((), row, by_candidate.get(row["candidate_id"], []), spec.search.latency, spec.pareto)
        if result.costs is not None:
            scored.append((row, result.costs))
    picks = spread_along_front([costs for _, costs in scored], k)
    return [scored[i][0] for i in picks]
