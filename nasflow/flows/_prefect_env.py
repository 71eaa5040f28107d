"""Prefect settings nasflow needs, applied before Prefect is first imported (user values win)."""

import os

_DEFAULTS = {
    # nasflow draws its own progress display; Prefect's INFO lines would interleave with it.
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_LOG_PRINTS": "false",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
    # The ephemeral server's services log cancelled-flush tracebacks at shutdown: not errors of ours.
    "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
    "PREFECT_LOGGING_SERVER_LEVEL": "CRITICAL",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Prefect's client telemetry prints a notice to a terminal on a fresh PREFECT_HOME and sends
    # usage events; DO_NOT_TRACK is the switch its client reads (the setting above is the server's).
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    "PREFECT_TASKS_REFRESH_CACHE": "false",
    # dask.distributed logs cluster start/stop at INFO to stderr; only real problems should show.
    "DASK_LOGGING__DISTRIBUTED": "error",
    "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "error",
}

for _key, _value in _DEFAULTS.items():
    os.environ.setdefault(_key, _value)
