"""Plain-dict registry rows built from stage results; identities are content hashes so re-runs dedupe."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from ..fingerprint import fingerprint_hash
from ..plugin_api import Measurement


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
    """Rows for `measurements` of a candidate: of its live model, or of a deployed artifact."""
    rows = []
    for m in measurements:
        rel_ci = m.stats.rel_ci if math.isfinite(m.stats.rel_ci) else None  # too few runs for an interval
        rows.append(
            {
                "measurement_id": stable_id("measurement", cand_id, m.device, m.artifact_format, m.source, artifact_id),
                "candidate_id": cand_id,
                "run_id": run_id,
                "device": m.device,
                "runtime": m.runtime,
                "artifact_format": m.artifact_format,
                "artifact_id": artifact_id,
                "source": m.source,
                "metric": "latency",
                "median_ms": m.stats.median_ms,
                "p90_ms": m.stats.p90_ms,
                "mean_ms": m.stats.mean_ms,
                "std_ms": m.stats.std_ms,
                "runs": m.stats.runs,
                "outliers": m.stats.outliers,
                "rel_ci": rel_ci,
                "threads": m.threads,
                "batch_size": m.batch_size,
                "fingerprint": m.fingerprint,
                "fingerprint_hash": fingerprint_hash(m.fingerprint),
            }
        )
    return rows
