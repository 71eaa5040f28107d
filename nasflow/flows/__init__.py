"""Prefect flows, one per pipeline stage, and the pipeline flow that chains them."""

from . import _prefect_env  # noqa: F401  (must run before prefect is imported)
