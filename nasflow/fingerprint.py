"""Describe the machine and runtime a latency was measured on, and hash that description."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from typing import Any

from . import __version__

CPUINFO = "/proc/cpuinfo"


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """Marketing name of the CPU ('model name' in /proc/cpuinfo), else what platform reports."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass  # not Linux, or /proc hidden: fall back below
    return platform.processor() or platform.machine() or "unknown"


def base_fingerprint(runtime: str, runtime_version: str, threads: int, **extra: Any) -> dict:
    """Fields every device fingerprint carries; backends add their own through `extra`."""
    fp: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count() or 0,
        "machine": platform.machine(),
        "os": platform.system(),
        "python": platform.python_version(),
        "runtime": runtime,
        "runtime_version": runtime_version,
        "threads": threads,
        "nasflow_version": __version__,
    }
    fp.update(extra)
    return fp


def fingerprint_hash(fp: dict) -> str:
    """16 hex digits of the SHA-256 of the fingerprint as canonical (sorted-key) JSON."""
    # default=str so tuples/paths in `extra` hash stably instead of failing.
    text = json.dumps(fp, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
