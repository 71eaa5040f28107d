"""Plain-dict registry rows built from stage results; identities are content hashes so re-runs dedupe."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

from ..fingerprint import fingerprint_hash
from ..plugin_api import ENERGY_EXTRA_KEY, Measurement


def stable_id(*parts: Any) -> str:
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def candidate_id(run_id: str, stage: str, arch_hash: str, parent_id: str | None = None) -> str:
    return stable_id("candidate", run_id, stage, arch_hash, parent_id)


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

    def __init__(self, registry, max_rows: int = 256, max_seconds: float = 2.0):
        self.registry = registry
        self.max_rows, self.max_seconds = max_rows, max_seconds
        self._candidates: list[dict] = []
        self._measurements: list[dict] = []
        self._last = time.monotonic()

    def add(self, candidates: list[dict], measurements: list[dict]) -> None:
        self._candidates += candidates
        self._measurements += measurements
        if len(self._candidates) >= self.max_rows or time.monotonic() - self._last >= self.max_seconds:
            self.flush()

    def flush(self) -> None:
        if self._candidates or self._measurements:
            self.registry.add_evaluated(self._candidates, self._measurements)
        self._candidates, self._measurements = [], []
        self._last = time.monotonic()

    def __enter__(self) -> "BufferedWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
