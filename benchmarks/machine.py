"""What every benchmark report says about the machine and the package versions behind its numbers."""

from __future__ import annotations

import os
import platform
from importlib import metadata

from nasflow import __version__ as NASFLOW_VERSION
from nasflow.fingerprint import cpu_model


def package_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(*dists: str) -> dict[str, object]:
    """CPU, cores, platform, Python and nasflow, plus the version of each distribution in `dists`."""
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nasflow": NASFLOW_VERSION,
        **{dist: package_version(dist) for dist in dists},
    }
