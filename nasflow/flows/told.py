"""What the search tells its strategy: a `CandidateResult` built from a candidate's recorded rows.

New candidates and candidates replayed from the registry go through the same function, from the
same row dicts, so a replayed strategy is told exactly what it was told the first time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..objectives import ParetoObjective, result_costs
from ..plugin_api import CandidateResult, DeviceLatency, Genome


def latencies(measurement_rows: Sequence[dict[str, Any]], search_source: str) -> dict[str, DeviceLatency]:
    """Per device, the candidate's live-model latency on the search's own scale: a row from the
    search's latency source (`measured`, `lut`, `predicted`) wins, else the first one recorded."""
    chosen: dict[str, dict] = {}
    for m in measurement_rows:
        if m.get("artifact_id") is not None or m.get("metric", "latency") != "latency" or m.get("median_ms") is None:
            continue
        held = chosen.get(m["device"])
        if held is None or (held["source"] != search_source and m["source"] == search_source):
            chosen[m["device"]] = m
    return {device: DeviceLatency(float(m["median_ms"]), m["source"]) for device, m in chosen.items()}


def energies(measurement_rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per device, the candidate's measured energy per inference (mJ), where the device reports one."""
    return {
        m["device"]: float(m["value"])
        for m in measurement_rows
        if m.get("artifact_id") is None and m.get("metric") == "energy" and m.get("value") is not None
    }


def candidate_result(
    genome: Genome,
    row: dict[str, Any],
    measurement_rows: Sequence[dict[str, Any]],
    search_source: str,
    pareto: Sequence[ParetoObjective] = (),
) -> CandidateResult:
    """The full result of one candidate (its `candidates` row and its measurement rows)."""
    ok = row.get("status") == "ok"
    result = CandidateResult(
        genome=tuple(genome),
        score=row.get("score") if ok else None,
        accuracy=row.get("accuracy") if ok else None,
        accuracy_source=row.get("accuracy_source") if ok else None,
        latency=latencies(measurement_rows, search_source),
        energy_mj=energies(measurement_rows),
        params=row.get("params"),
        macs=row.get("macs"),
        error=None if ok else (row.get("error") or "failed"),
        reused_from=(row.get("extra") or {}).get("reused_from"),
    )
    costs = result_costs(pareto, result)
    if costs is None:
        return result
    return replace(result, costs=costs)
