"""Plain-dict registry rows built from stage results; identities are content hashes so re-runs dedupe."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from ..fingerprint import fingerprint_hash
from ..plugin_api import ENERGY_EXTRA_KEY, Measurement


def stable_id(*parts: Any) -> str:
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def stage_key(settings: Any) -> str:
    """Short hash of the settings a stage made a row with: part of the row's id (its cache key).

    Changing a stage's settings gives new rows beside the old ones, and later stages pick the rows
    whose key matches the current settings.
    """
    return stable_id("settings", json.dumps(settings, sort_keys=True, default=str))[:12]


def candidate_id(
    run_id: str, stage: str, arch_hash: str | None, parent_id: str | None = None, key: str | None = None
) -> str:
    """Identity of a candidate row: search rows by architecture; train and morph rows by what they
    were made from (parent, architecture) and with (`key`, their stage's settings)."""
    if key is None:  # ids of search rows (and of rows written before stage keys existed)
        return stable_id("candidate", run_id, stage, arch_hash, parent_id)
    return stable_id("candidate", run_id, stage, arch_hash, parent_id, key)


def retried(row: dict[str, Any], stored: dict[str, Any] | None) -> dict[str, Any]:
    """`row` as it supersedes `stored`, the row with the same id already recorded.

    After a failure, `row` is the next attempt: `extra.attempts` counts evaluations and
    `extra.last_error` keeps the failure. After an ok row (one completed in steps, such as a
    trained model getting its timings) the stored history carries over unchanged.
    """
    if stored is None:
        return row
    extra = dict(row.get("extra") or {})
    before = stored.get("extra") or {}
    if stored.get("status") == "failed":
        extra["attempts"] = int(before.get("attempts", 1)) + 1
        extra["last_error"] = stored.get("error")
    else:
        extra.update({k: before[k] for k in ("attempts", "last_error") if k in before})
    return {**row, "extra": extra}


def objective_failure(objective_device: str, failures: dict[str, str]) -> str | None:
    """The candidate's error when the device that drives the objective has no number, else None
    (other devices' failures are their own measurement rows)."""
    reason = failures.get(objective_device)
    if reason is None:
        return None
    return reason if reason.startswith(f"{objective_device}:") else f"{objective_device}: {reason}"


def failed_measurement_row(
    cand_id: str, run_id: str, device: str, artifact_format: str, error: str, artifact_id: str | None = None
) -> dict[str, Any]:
    """The record of a timing that failed on one device: no number, the reason in `extra.error`.

    The candidate (or artifact) it belongs to stays recorded; only this device has no latency.
    """
    return {
        "measurement_id": stable_id("measurement", cand_id, device, artifact_format, "measured", artifact_id),
        "candidate_id": cand_id,
        "run_id": run_id,
        "device": device,
        "artifact_format": artifact_format,
        "artifact_id": artifact_id,
        "source": "measured",
        "metric": "latency",
        "unit": "ms",
        "extra": {"error": error},
    }


def device_failure_rows(
    cand_id: str, run_id: str, failures: dict[str, str], artifact_format: str = "pytorch", artifact_id: str | None = None
) -> list[dict[str, Any]]:
    """failed_measurement_row for each device of `failures` ({device: reason})."""
    return [failed_measurement_row(cand_id, run_id, d, artifact_format, e, artifact_id) for d, e in failures.items()]


def checkpoint_path(work_dir: Path, run_id: str, cand_id: str) -> Path:
    return Path(work_dir) / run_id / f"{cand_id}.pt"


def measurement_rows(
    cand_id: str, run_id: str, measurements: list[Measurement], artifact_id: str | None = None
) -> list[dict]:
    """Rows for `measurements` of a candidate: of its live model, or of a deployed artifact.

    Each measurement gives its latency row, with everything the device reported in `extra`; a
    measurement that carries energy gives an `energy` row beside it, so SQL can rank by energy.
    """
    rows = []
    for m in measurements:
        rel_ci = m.stats.rel_ci if math.isfinite(m.stats.rel_ci) else None  # too few runs for an interval
        common = {
            "candidate_id": cand_id,
            "run_id": run_id,
            "device": m.device,
            "runtime": m.runtime,
            "artifact_format": m.artifact_format,
            "artifact_id": artifact_id,
            "source": m.source,
            "runs": m.stats.runs,
            "threads": m.threads,
            "batch_size": m.batch_size,
            "fingerprint": m.fingerprint,
            "fingerprint_hash": fingerprint_hash(m.fingerprint),
            "extra": m.extra or None,
        }
        rows.append({
            **common,
            "measurement_id": stable_id("measurement", cand_id, m.device, m.artifact_format, m.source, artifact_id),
            "metric": "latency",
            "unit": "ms",
            "value": m.stats.median_ms,
            "median_ms": m.stats.median_ms,
            "p90_ms": m.stats.p90_ms,
            "mean_ms": m.stats.mean_ms,
            "std_ms": m.stats.std_ms,
            "outliers": m.stats.outliers,
            "rel_ci": rel_ci,
        })
        energy = (m.extra or {}).get(ENERGY_EXTRA_KEY)
        if energy is not None and math.isfinite(float(energy)):
            rows.append({
                **common,
                "measurement_id": stable_id("measurement", cand_id, m.device, m.artifact_format, m.source, artifact_id, "energy"),
                "metric": "energy",
                "unit": "mJ",
                "value": float(energy),
            })
    return rows


class BufferedWriter:
    """Collects evaluated rows and writes them in one transaction every `max_rows` or `max_seconds`.

    Opening the DuckDB file costs tens of milliseconds, which would dominate cheap candidates if
    paid per batch; the file stays closed between flushes so readers can open it. Use it as a
    context manager: what is buffered is flushed on exit, also on Ctrl-C or an error.
    """

    def __init__(self, registry, max_rows: int = 256, max_seconds: float = 2.0, replace: bool = False):
        self.registry = registry
        self.replace = replace  # rows supersede stored ones with the same id (see Registry.add_evaluated)
        self.max_rows, self.max_seconds = max_rows, max_seconds
        self._candidates: list[dict] = []
        self._measurements: list[dict] = []
        self._log: list[dict] = []
        self._state: list[dict] = []
        self._last = time.monotonic()

    def add(
        self, candidates: list[dict], measurements: list[dict], search_log: list[dict] = (), search_state: list[dict] = ()
    ) -> None:
        self._candidates += candidates
        self._measurements += measurements
        self._log += search_log
        self._state += search_state
        if len(self._candidates) >= self.max_rows or time.monotonic() - self._last >= self.max_seconds:
            self.flush()

    def flush(self) -> None:
        if self._candidates or self._measurements or self._log or self._state:
            self.registry.add_evaluated(
                self._candidates, self._measurements, replace=self.replace, search_log=self._log, search_state=self._state
            )
        self._candidates, self._measurements, self._log, self._state = [], [], [], []
        self._last = time.monotonic()

    def __enter__(self) -> "BufferedWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
