"""Map `execution.runner` to a Prefect task runner; nasflow never ships a scheduler of its own."""

from __future__ import annotations

import importlib.util

from ..config import ExecutionConfig

_EXTRAS = {
    "dask": ("prefect_dask", "pip install 'nasflow[dask]' (prefect-dask and dask.distributed)"),
    "ray": ("prefect_ray", "pip install 'nasflow[ray]' (prefect-ray)"),
}


def runner_problem(runner: str) -> str | None:
    """Why `runner` cannot be used in this environment, or None."""
    if runner not in _EXTRAS:
        return None
    module, how = _EXTRAS[runner]
    if importlib.util.find_spec(module) is None:
        return f"runner {runner!r} needs the {module} package, which is not installed: {how}"
    return None


def make_task_runner(execution: ExecutionConfig):
    """A fresh Prefect task runner for candidate evaluation."""
    workers = execution.workers
    if execution.runner == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if execution.runner == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        from ..reaper import exit_with_parent

        # A worker blocked on its task queue would outlive a run killed without clean-up.
        return ProcessPoolTaskRunner(max_workers=workers, initializer=exit_with_parent)
    if execution.runner == "dask":
        from prefect_dask import DaskTaskRunner

        # One single-threaded worker process per slot: torch threads inside each worker then
        # do not fight each other for the cores.
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    from prefect_ray import RayTaskRunner

    return RayTaskRunner(init_kwargs={"num_cpus": workers, "include_dashboard": False})
