"""The pipeline flow: profile -> search -> train -> morph -> deploy, each stage switchable in the spec."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from prefect import flow

from .. import __version__
from ..data import load_dataset
from ..errors import RunInterrupted
from ..objectives import pareto_front
from ..registry import Registry
from ..spec import LoadedSpec, space_for_data
from ..train_device import resolve_device
from .context import RunContext
from .deploy import check_deploy_settings, deploy_stage
from .evaluate import make_devices, model_for, threads_per_task
from .morph import morph_stage
from .prefect_server import ApiServer, start_run_helpers, use_api_server
from .profile import profile_stage
from .runners import make_task_runner
from .search import search_stage
from .selection import with_latency
from .train import train_stage

STAGES = ("profile", "search", "train", "morph", "deploy")


@flow(name="nasflow-run", persist_result=False, validate_parameters=False)
def pipeline_flow(ctx: RunContext) -> dict[str, Any]:
    """Run every enabled stage in order; stages exchange data only through the registry."""
    spec = ctx.spec
    # Work done in this process (compression, reloads) shares the cores with the workers.
    torch.set_num_threads(threads_per_task(spec.execution.workers))
    results: dict[str, Any] = {}
    if spec.deploy.enabled:  # bad deploy settings stop the run before its first stage, not after training
        check_deploy_settings(spec, load_dataset(spec.dataset), ctx.run_id)
    if spec.profile.enabled:
        results["profile"] = profile_stage(ctx)
    if spec.search.enabled:
        reference = {r["device"]: r["reference_ms"] for r in results.get("profile", [])}
        results["search"] = search_stage.with_options(task_runner=make_task_runner(spec.execution))(ctx, reference)
    if spec.train.enabled:
        results["train"] = train_stage.with_options(task_runner=make_task_runner(spec.execution))(ctx)
    if spec.morph.enabled:
        results["morph"] = morph_stage(ctx)
    if spec.deploy.enabled:
        results["deploy"] = deploy_stage(ctx)
    return results


@dataclass
class RunSummary:
    run_id: str
    resumed: bool  # the run was in the registry before this call
    stages: dict[str, Any]
    objective_device: str
    devices: list[str]
    front: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    registry_path: str = ""
    reused: dict[str, int] = field(default_factory=dict)  # finished results taken from the registry, per stage
    warnings: list[str] = field(default_factory=list)  # said during the run, repeated for the end

    @property
    def resume_message(self) -> str | None:
        """What a resumed run reused, or None for a new run; never claims reuse that did not happen."""
        if not self.resumed:
            return None
        reused = {stage: n for stage, n in self.reused.items() if n}
        if not reused:
            return f"resumed run {self.run_id}: nothing finished was found to reuse, everything was computed now"
        what = ", ".join(f"{stage} {n}" for stage, n in reused.items())
        return f"resumed: finished work was reused from the registry ({what})"


def _prepare_while_server_starts(spec, server: ApiServer | None) -> None:
    """Use the seconds Prefect's API server takes to come up, then point Prefect at it.

    The dataset is loaded (memoised for every stage) and, while the server does not answer yet,
    each device times the profile stage's reference model once, unrecorded: a device's first
    measurement pays one-off costs (an exporter's first use, a runtime starting) that would
    otherwise delay the profile stage.
    """
    data = load_dataset(spec.dataset)
    if server is not None:
        space = space_for_data(spec, data)
        reference = model_for(space.to_arch(space.cheapest_genome()), spec.dataset)
        for cfg in spec.devices:
            if server.answers():
                break
            try:
                make_devices([cfg])[cfg.name].measure_model(reference, data.input_shape)
            except Exception:  # the profile stage checks every device and reports what fails
                pass
    use_api_server(server)


class _InterruptCrashFilter(logging.Filter):
    """Drops Prefect's "Crash detected! ... interrupt / termination signal" errors: the CLI reports
    a Ctrl-C or SIGTERM itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "aborted by an interrupt signal" not in message and "aborted by a termination signal" not in message


@contextmanager
def _quiet_interrupt_crashes():
    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    crash_filter = _InterruptCrashFilter()
    for logger in loggers:
        logger.addFilter(crash_filter)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(crash_filter)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, `timeout`, `kill`): handled like Ctrl-C, so the run is marked
    interrupted, trainings in flight stop at their next batch, and everything recorded is kept."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextmanager
def _sigterm_interrupts():
    """SIGTERM raises `Terminated` in the main thread. While a flow runs, Prefect puts its own
    handler in front, which unwinds the flow and then re-delivers the signal to this one."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_spec(loaded: LoadedSpec) -> RunSummary:
    """Run (or resume) the workflow of a validated spec and summarise it from the registry."""
    spec = loaded.spec
    ctx = RunContext(spec.run_id(), spec)
    registry = Registry(spec.registry.path)  # refuses a non-DuckDB file before any work is done
    registry.verify_readable()  # and a damaged one, before the first write rather than at it
    server = start_run_helpers()  # already started by the CLI, if it ran us
    resumed = registry.start_run(
        ctx.run_id, spec.name, spec.spec_hash(), loaded.text, spec.execution.runner, __version__,
        train_device=str(resolve_device(spec.execution.device)),
    )
    try:
        with _quiet_interrupt_crashes(), _sigterm_interrupts():
            _prepare_while_server_starts(spec, server)
            stages = pipeline_flow(ctx)
    except KeyboardInterrupt as exc:
        reason = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted by the user"
        registry.finish_run(ctx.run_id, "interrupted", reason)
        raise RunInterrupted(
            f"run {ctx.run_id} interrupted; everything recorded so far is kept in {spec.registry.path}. "
            "Run the same spec again to resume."
        ) from None
    except BaseException as exc:
        registry.finish_run(ctx.run_id, "failed", str(exc))
        raise
    registry.finish_run(ctx.run_id, "finished")
    return summarize(registry, ctx, stages, resumed)


def candidate_table(registry: Registry, run_id: str, objective_device: str, devices: list[str]) -> list[dict]:
    """One row per successful candidate of a run with its latency on each device (live model, not artifacts)."""
    rows = []
    for stage in ("search", "train", "morph"):
        rows += [r for r in registry.get_candidates(run_id, stage=stage) if r["status"] == "ok"]
    return with_latency(registry, rows, objective_device, devices)


def summarize(registry: Registry, ctx: RunContext, stages: dict[str, Any], resumed: bool) -> RunSummary:
    spec = ctx.spec
    devices = [d.name for d in spec.devices]
    table = candidate_table(registry, ctx.run_id, spec.objective_device, devices)
    counts: dict[str, int] = {}
    for stage in ("search", "train", "morph"):
        counts[stage] = len(registry.get_candidates(ctx.run_id, stage=stage))
    deployed = set((stages.get("deploy") or {}).get("artifact_ids", []))
    # finished results each stage took from the registry (train: also models trained before an
    # interruption that only needed timing)
    reused = {stage: int(result.get("reused", 0)) + int(result.get("timed", 0))
              for stage in ("search", "train", "morph", "deploy") if isinstance(result := stages.get(stage), dict)}
    return RunSummary(
        run_id=ctx.run_id,
        resumed=resumed,
        stages=stages,
        objective_device=spec.objective_device,
        devices=devices,
        front=pareto_front(table),
        counts=counts,
        # the artifacts of this run's current deploy settings, not every file it ever exported
        artifacts=[a for a in registry.get_artifacts(ctx.run_id) if a["artifact_id"] in deployed],
        registry_path=str(spec.registry.path),
        reused=reused,
        warnings=list((stages.get("search") or {}).get("warnings", [])),
    )


__all__ = ["STAGES", "RunSummary", "run_spec", "pipeline_flow"]
