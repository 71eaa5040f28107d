"""Turn accuracy and latency into one search score, and find the accuracy/latency Pareto front."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import ObjectivesConfig


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
