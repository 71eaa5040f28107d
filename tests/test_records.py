"""Measurement rows keep everything a device reported, and energy becomes a row SQL can rank by."""

from __future__ import annotations

import math

from nasflow.flows.records import measurement_rows
from nasflow.plugin_api import ENERGY_EXTRA_KEY, LatencyStats, Measurement
from nasflow.registry import Registry


def _measurement(device: str, median: float, **extra) -> Measurement:
    stats = LatencyStats(median, median * 1.1, median, 0.01, median * 0.9, runs=30, warmup=5, rel_ci=0.01)
    return Measurement(device=device, runtime="rt 1.0", artifact_format="pytorch", source="measured",
                       stats=stats, threads=1, batch_size=1, fingerprint={"cpu": "x"}, extra=extra)


def test_extra_and_energy_reach_the_registry(tmp_path):
    registry = Registry(tmp_path / "r.duckdb")
    measured = [
        _measurement("cuda", 0.5, **{ENERGY_EXTRA_KEY: 12.5, "energy_calls": 40, "timer": "cuda_events"}),
        _measurement("edgetpu", 2.0, ops_on_tpu=31, ops_on_cpu=2),
        _measurement("cuda-b", 0.4, **{ENERGY_EXTRA_KEY: 20.0}),
    ]
    rows = measurement_rows("c1", "r1", measured)
    assert [(r["device"], r["metric"]) for r in rows] == [
        ("cuda", "latency"), ("cuda", "energy"), ("edgetpu", "latency"), ("cuda-b", "latency"), ("cuda-b", "energy"),
    ]
    assert len({r["measurement_id"] for r in rows}) == len(rows)
    registry.add_measurements(rows)
    _, ranked = registry.query(
        "SELECT device, value, unit, median_ms FROM measurements WHERE metric = 'energy' ORDER BY value"
    )
    assert ranked == [("cuda", 12.5, "mJ", None), ("cuda-b", 20.0, "mJ", None)]
    stored = {m["device"]: m for m in registry.get_measurements(["c1"]) if m["metric"] == "latency"}
    assert stored["edgetpu"]["extra"] == {"ops_on_tpu": 31, "ops_on_cpu": 2}
    assert stored["cuda"]["extra"]["timer"] == "cuda_events" and stored["cuda"]["value"] == 0.5


def test_a_non_finite_energy_is_not_a_row():
    rows = measurement_rows("c1", "r1", [_measurement("cuda", 0.5, **{ENERGY_EXTRA_KEY: math.nan})])
    assert [r["metric"] for r in rows] == ["latency"]
