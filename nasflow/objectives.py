"""Turn accuracy and latency into one search score, and find the accuracy/latency Pareto front."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import ObjectivesConfig

if TYPE_CHECKING:
    from .plugin_api import CandidateResult


def score(accuracy: float, latency_ms: float | None, objectives: ObjectivesConfig) -> float:
    """MnasNet reward ACC x (LAT/T)^w (w = alpha if LAT <= T else beta), or plain accuracy.

    alpha = beta = -0.07 is MnasNet's soft constraint; alpha = 0, beta = -1 its hard one.
    `max_latency_ms` is an absolute constraint on top: slower candidates score 0.
    """
    if latency_ms is None:
        if objectives.reward == "mnasnet" or objectives.max_latency_ms is not None:
            raise ValueError("a latency is needed to score this objective")
        return accuracy
    if objectives.max_latency_ms is not None and latency_ms > objectives.max_latency_ms:
        return 0.0
    if objectives.reward == "accuracy":
        return accuracy
    target = objectives.target_ms
    exponent = objectives.alpha if latency_ms <= target else objectives.beta
    return accuracy * (latency_ms / target) ** exponent


def meets_latency_cap(latency_ms: float | None, objectives: ObjectivesConfig) -> bool:
    """Whether a latency satisfies `objectives.max_latency_ms` (always, without a cap; never, with a
    cap and no number)."""
    if objectives.max_latency_ms is None:
        return True
    return latency_ms is not None and latency_ms <= objectives.max_latency_ms


def pareto_front(rows: Sequence[dict[str, Any]], acc_key: str = "accuracy", lat_key: str = "latency_ms") -> list[dict]:
    """Rows not dominated by any other (higher-or-equal accuracy and lower-or-equal latency,
    strictly better in one), sorted by latency."""
    usable = [r for r in rows if r.get(acc_key) is not None and r.get(lat_key) is not None]
    usable.sort(key=lambda r: (r[lat_key], -r[acc_key]))
    front, best_acc = [], float("-inf")
    for row in usable:
        if row[acc_key] > best_acc:
            front.append(row)
            best_acc = row[acc_key]
    return front


# ------------------------------------------------------------------ Pareto objectives (objectives.pareto)

PARETO_METRICS = ("accuracy", "latency", "params", "macs", "energy")
"""What `objectives.pareto` entries may name; latency and energy are per device (`latency@litert`)."""

_PER_DEVICE = ("latency", "energy")


@dataclass(frozen=True)
class ParetoObjective:
    """One axis of a multi-objective search: accuracy is maximised, everything else minimised."""

    metric: str
    device: str | None = None

    @property
    def label(self) -> str:
        return f"{self.metric}@{self.device}" if self.device else self.metric

    @property
    def maximise(self) -> bool:
        return self.metric == "accuracy"

    def value(self, result: "CandidateResult") -> float | None:
        """This objective's value for a candidate, in its own unit; None when not known."""
        if self.metric == "accuracy":
            return result.accuracy
        if self.metric == "latency":
            latency = result.latency.get(self.device or "")
            return latency.ms if latency else None
        if self.metric == "energy":
            return result.energy_mj.get(self.device or "")
        return float(getattr(result, self.metric)) if getattr(result, self.metric) is not None else None

    def cost(self, result: "CandidateResult") -> float | None:
        value = self.value(result)
        return None if value is None else (-value if self.maximise else float(value))


def parse_pareto_objective(text: str) -> ParetoObjective:
    """`accuracy`, `params`, `macs`, `latency`, `latency@DEVICE`, `energy@DEVICE`; ValueError naming the entry."""
    metric, _, device = text.partition("@")
    if metric not in PARETO_METRICS:
        raise ValueError(f"unknown Pareto objective {text!r}; choose from {', '.join(PARETO_METRICS)} (latency and energy take @DEVICE)")
    if device and metric not in _PER_DEVICE:
        raise ValueError(f"Pareto objective {text!r}: only {' and '.join(_PER_DEVICE)} are per device")
    if "@" in text and not device:
        raise ValueError(f"Pareto objective {text!r} names no device after '@'")
    if metric == "energy" and not device:
        raise ValueError(f"Pareto objective {text!r}: write energy@DEVICE (energy is measured per device)")
    return ParetoObjective(metric, device or None)


def pareto_objectives(entries: Sequence[str], objective_device: str) -> list[ParetoObjective]:
    """The spec's `objectives.pareto`, with a bare `latency` bound to the objective device."""
    parsed = [parse_pareto_objective(e) for e in entries]
    return [ParetoObjective(p.metric, objective_device) if p.metric == "latency" and not p.device else p for p in parsed]


def result_costs(objectives: Sequence[ParetoObjective], result: "CandidateResult") -> tuple[float, ...] | None:
    """The Pareto costs of a result (each to minimise), or None if one is missing or it failed."""
    if not objectives or result.failed:
        return None
    costs = [o.cost(result) for o in objectives]
    return None if any(c is None for c in costs) else tuple(costs)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether cost vector `a` is no worse than `b` everywhere and better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def non_dominated_fronts(costs: Sequence[Sequence[float]]) -> list[list[int]]:
    """Indices of `costs` sorted into successive non-dominated fronts (Deb et al. 2002, fast sort)."""
    n = len(costs)
    dominated_by: list[list[int]] = [[] for _ in range(n)]
    count = [0] * n
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(costs[i], costs[j]):
                dominated_by[i].append(j)
                count[j] += 1
            elif dominates(costs[j], costs[i]):
                dominated_by[j].append(i)
                count[i] += 1
    fronts, current = [], [i for i in range(n) if count[i] == 0]
    while current:
        fronts.append(current)
        following = []
        for i in current:
            for j in dominated_by[i]:
                count[j] -= 1
                if count[j] == 0:
                    following.append(j)
        current = sorted(following)
    return fronts


def crowding_distances(costs: Sequence[Sequence[float]], front: Sequence[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each member of one front: how much room it has along the
    front (the ends get infinity so they are always kept)."""
    distance = {i: 0.0 for i in front}
    if len(front) <= 2:
        return {i: math.inf for i in front}
    for axis in range(len(costs[front[0]])):
        ordered = sorted(front, key=lambda i: (costs[i][axis], i))
        low, high = costs[ordered[0]][axis], costs[ordered[-1]][axis]
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        if high == low:
            continue
        for before, here, after in zip(ordered, ordered[1:], ordered[2:]):
            distance[here] += (costs[after][axis] - costs[before][axis]) / (high - low)
    return distance


def spread_along_front(costs: Sequence[Sequence[float]], k: int) -> list[int]:
    """`k` indices taken front by front, each front's members by descending crowding distance:
    the train stage's picks, spread along the Pareto front rather than bunched at one end."""
    picked: list[int] = []
    for front in non_dominated_fronts(costs):
        distance = crowding_distances(costs, front)
        picked += sorted(front, key=lambda i: (-distance[i], costs[i]))[: k - len(picked)]
        if len(picked) >= k:
            break
    return picked


def hypervolume_2d(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Area dominated by 2-D cost points up to `reference` (each coordinate minimised)."""
    inside = sorted((p[0], p[1]) for p in points if p[0] < reference[0] and p[1] < reference[1])
    area, best_y = 0.0, reference[1]
    for x, y in inside:
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return area
